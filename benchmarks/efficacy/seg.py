"""Segmentation task: the DLI paper's setup on Magnetic Tile, one arm at a time.

Per seed: a stratified 80/20 split (a new draw per seed, as the paper), a defect bank built from the
training split only at the training resolution (``DefectBank.from_arrays``), a U-Net with one sigmoid
mask per defect class trained with BCE + Dice (the paper's baseline loss) for a fixed number of
steps; every arm gets the same model, steps, batch size, split and seed. Then the paper's metric on
the validation split: per-class IoU = TP / (TP + FP + FN) summed over all validation images, mean
over the defect classes, and the share of defect-free validation images with any false-positive pixel.

Arms (what each adds to the baseline's flips):
- ``dli_all``: ``DynamicLabelInjection(fill="all", poisson_p=0.5)`` on every batch, as the reference
  code runs it (every defect-free image of the batch gets a defect, rarest class first).
- ``dli_balance``: ``fill="balance"`` (the paper's text: inject only until the batch's classes are
  even), so most batches keep defect-free images; the training-friendly setting.
- ``dli_all_source``: ``dli_all`` with ``placement="source"``: each defect where it sat in its own
  image (relative position) instead of anywhere it fits (the reference code's choice).
- ``guided_crop``: ``GuidedCropPaste(p=0.5)`` on defect-free tiles with a live ``ClassWeights``
  updated every ``guide_every`` steps from the per-class *training* loss (mean BCE over the class's
  target pixels in the batches since the last update). Never the validation loss: validation
  must not leak into training.
- GPU-scale arms: ``dli_paste_only`` (poisson_p=0), ``dli_poisson_only`` (poisson_p=1),
  ``dli_guided`` (Guided-Crop in the Dataset and DLI fill="all" in the collate).
- Training on random crops (half the side, after the flips; validation on whole tiles):
  ``baseline_crops`` and ``dli_balance_crops`` (``fill="balance"`` with ``size_mode="absolute_crop"``:
  defects at the bank's pixel scale, those longer than the crop cut to it).
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F

import albu_defects as ad
from albu_defects.pytorch import DLICollate

from . import common, metrics, models
from .data import Dataset, stratified_split

TASK = "seg"

ARMS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "dli_all": {"dli": {"fill": "all", "poisson_p": 0.5}},
    "dli_balance": {"dli": {"fill": "balance", "poisson_p": 0.5}},
    "dli_all_source": {"dli": {"fill": "all", "poisson_p": 0.5, "placement": "source"}},
    "guided_crop": {"guided_crop": {"p": 0.5}},
    "dli_paste_only": {"dli": {"fill": "all", "poisson_p": 0.0}},
    "dli_poisson_only": {"dli": {"fill": "all", "poisson_p": 1.0}},
    "dli_guided": {"dli": {"fill": "all", "poisson_p": 0.5}, "guided_crop": {"p": 0.5}},
    "baseline_crops": {"crop": 0.5},
    "dli_balance_crops": {"crop": 0.5, "dli": {"fill": "balance", "poisson_p": 0.5, "size_mode": "absolute_crop"}},
}

DEFAULT_ARMS = {
    "cpu": ["baseline", "dli_all", "dli_balance", "dli_all_source", "guided_crop"],
    "gpu": list(ARMS),
    "tiny": list(ARMS),
}

CONFIGS: dict[str, dict[str, Any]] = {
    # 128 px resized tiles, a 0.49M-parameter U-Net (5 levels), batch 8, 6,000 steps (~60 epochs), one
    # thread: ~27 min a run at a load average of 4-9 on the 2 shared cores (pilot), ~15 min when quiet.
    "cpu": {
        "size": 128,
        "val_fraction": 0.2,
        "model": "unet",
        "model_options": {"width": 8, "depth": 5},
        "batch": 8,
        "steps": 6000,
        "lr": 5e-3,
        "warmup": 200,
        "guide_every": 500,
        "eval_every": 1000,
        "workers": 0,
        "threshold": 0.5,
    },
    # The paper's 256 px and light ResNet-18 encoder, about ten minutes on one GPU.
    "gpu": {
        "size": 256,
        "val_fraction": 0.2,
        "model": "light_resnet_unet",
        "model_options": {},
        "batch": 16,
        "steps": 6000,
        "lr": 1e-3,
        "warmup": 200,
        "guide_every": 1000,
        "eval_every": 2000,
        "workers": 8,
        "threshold": 0.5,
    },
    # Seconds, for the test (bundled samples).
    "tiny": {
        "size": 32,
        "val_fraction": 0.34,
        "model": "unet",
        "model_options": {"width": 4, "depth": 3},
        "batch": 4,
        "steps": 3,
        "lr": 1e-3,
        "warmup": 0,
        "guide_every": 2,
        "eval_every": 2,
        "workers": 0,
        "threshold": 0.5,
    },
}

#: What the papers report (Magnetic Tile; different networks, resolutions and budgets from ours).
PAPER = {
    "metric": "mean_iou",
    "source": "DLI paper Table 1/2 (mean IoU, 5 seeds, average of three light UNet encoders, 256 px)",
    "values": {
        "baseline": "0.754 +- 0.014",
        "dli_all": "0.800 +- 0.022",
        "dli_paste_only": "0.791",
        "dli_poisson_only": "0.788",
        "guided_crop": "n/a",
    },
    "per_class": {
        "guided_crop": {
            "source": "Guided-Crop paper Table I (CAN network, 300x400, 500 synthetic images), IoU %",
            "values": {"Blowhole": 30.1, "Break": 39.5, "Crack": 57.7, "Fray": 35.9, "Uneven": 60.5},
        },
        "note": "DLI gives per-class IoU only in its Figure 3 (no numbers in the text)",
    },
}

#: The arm every other is compared with, seed by seed.
REFERENCE = "baseline"
METRICS = ("mean_iou", "free_fp_share", "binary_iou")


def multi_hot(mask: np.ndarray, label: int, num_classes: int) -> np.ndarray:
    """(K,) uint8: the classes in ``mask`` plus the image's own class (a few MT_Uneven masks are blank)."""
    vector = np.zeros(num_classes, np.uint8)
    for k in np.unique(mask):
        if k:
            vector[int(k) - 1] = 1
    if label:
        vector[label - 1] = 1
    return vector


def one_hot_masks(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) class-index masks as (N, K, H, W) float32 targets, channel k-1 = class k."""
    classes = torch.arange(1, num_classes + 1, device=masks.device).view(1, -1, 1, 1)
    return (masks.long()[:, None] == classes).float()


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice over the batch per class, averaged over the classes present in the batch.

    As segmentation_models_pytorch's multilabel DiceLoss: classes absent from the batch are left
    out (BCE already pushes their predictions down).
    """
    probs = logits.sigmoid()
    dims = (0, 2, 3)
    inter = (probs * targets).sum(dims)
    total = probs.sum(dims) + targets.sum(dims)
    dice = (2 * inter + smooth) / (total + smooth)
    present = targets.sum(dims) > 0
    return (1 - dice)[present].mean() if present.any() else logits.sum() * 0.0


def build_bank(train: Dataset, folder: Path) -> tuple[ad.DefectBank, int]:
    """The training split's defects at the training resolution, saved in ``folder``; (bank, images skipped).

    Labelled images with blank masks (four MT_Uneven tiles) are skipped by the bank (its warning is
    silenced here; ``bank.skipped`` names them).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ad.DefectBankWarning)
        bank = ad.DefectBank.from_arrays(
            list(train.images), list(train.masks), [int(v) for v in train.labels], list(train.class_names)
        )
    skipped = len(bank.skipped)
    bank.save(folder)
    return ad.DefectBank.load(folder), skipped


class GuideLoss:
    """Per-class mean BCE over each class's target pixels in the training batches since the last read."""

    def __init__(self, num_classes: int) -> None:
        self.sums, self.counts = np.zeros(num_classes), np.zeros(num_classes)
        self.last = np.ones(num_classes)

    def add(self, pixel_bce: torch.Tensor, targets: torch.Tensor) -> None:
        with torch.no_grad():
            self.sums += (pixel_bce * targets).sum((0, 2, 3)).double().cpu().numpy()
            self.counts += targets.sum((0, 2, 3)).double().cpu().numpy()

    def read(self) -> np.ndarray:
        seen = self.counts > 0
        losses = np.where(seen, self.sums / np.maximum(self.counts, 1), np.nan)
        # a class not seen since the last update keeps its previous loss
        self.last = np.where(seen, losses, self.last)
        self.sums[:], self.counts[:] = 0, 0
        return self.last.copy()


@torch.no_grad()
def evaluate(model: torch.nn.Module, val: Dataset, device: torch.device, threshold: float) -> dict[str, Any]:
    """The paper's summed per-class IoU, the defect-free false-positive share and a class-agnostic IoU."""
    model.eval()
    k = val.num_classes
    counts = np.zeros((k, 3), np.int64)
    binary = np.zeros(3, np.int64)
    flagged = []
    for start in range(0, len(val), 32):
        x = common.to_float(torch.from_numpy(val.images[start : start + 32]).to(device))
        predicted = (model(x).sigmoid() > threshold).cpu().numpy()
        truth = one_hot_masks(torch.from_numpy(val.masks[start : start + 32]), k).numpy().astype(bool)
        counts += metrics.confusion_counts(truth, predicted)
        binary += metrics.confusion_counts(truth.any(1, keepdims=True), predicted.any(1, keepdims=True))[0]
        flagged.append(predicted.reshape(len(predicted), -1).any(1))
    iou = metrics.iou_from_counts(counts)
    is_free = val.labels == 0
    return {
        "metrics": {
            "mean_iou": float(np.nanmean(iou)) if not np.isnan(iou).all() else 0.0,
            "free_fp_share": float(np.concatenate(flagged)[is_free].mean()) if is_free.any() else float("nan"),
            "binary_iou": float(metrics.iou_from_counts(binary[None])[0]),
        },
        "per_class": {"iou": {name: float(v) for name, v in zip(val.class_names, iou, strict=True)}},
        "counts": {name: c.tolist() for name, c in zip(val.class_names, counts, strict=True)},
        "val_free_images": int(is_free.sum()),
        "val_free_flagged": int(np.concatenate(flagged)[is_free].sum()),
    }


def check_arm(arm: str) -> None:
    if arm not in ARMS:
        raise SystemExit(f"unknown seg arm {arm!r}; one of {', '.join(ARMS)}")


def run(config: dict[str, Any], arm: str, seed: int, dataset: Dataset, show_progress: bool = True) -> dict[str, Any]:
    """Train and evaluate one (arm, seed); returns metrics, per-class values and run facts."""
    check_arm(arm)
    spec = ARMS[arm]
    started = time.perf_counter()
    common.seed_everything(seed)
    device = common.device_of(config)
    train_index, val_index = stratified_split(dataset.labels, config["val_fraction"], seed)
    train, val = dataset.subset(train_index), dataset.subset(val_index)
    k = dataset.num_classes

    with tempfile.TemporaryDirectory(prefix="efficacy-bank-") as folder:
        needs_bank = "dli" in spec or "guided_crop" in spec
        bank, skipped = build_bank(train, Path(folder) / "bank") if needs_bank else (None, 0)
        transforms: list[Any] = []
        weights = None
        if "guided_crop" in spec:
            weights = ad.ClassWeights(bank.classes)
            transforms.append(ad.GuidedCropPaste(bank=bank, class_weights=weights, p=spec["guided_crop"]["p"]))
        transforms += [A.HorizontalFlip(), A.VerticalFlip()]
        if "crop" in spec:  # crops of the whole tiles; the bank holds whole-tile defects (absolute_crop cuts them)
            side = round(config["size"] * spec["crop"])
            transforms.append(A.RandomCrop(side, side))
        pipeline = A.Compose(transforms, seed=seed)

        def sample(index: int) -> dict[str, Any]:
            out = pipeline(image=train.images[index], mask=train.masks[index])
            return {
                "image": out["image"],
                "mask": out["mask"],
                # a crop may cut the tile's defect away: then its label comes from the cropped mask only
                "label": multi_hot(out["mask"], 0 if "crop" in spec else int(train.labels[index]), k),
            }

        collate = None
        if "dli" in spec:
            usable = [c for c in bank.classes if bank.entries_of(c)]
            dli = ad.DynamicLabelInjection(
                bank,
                classes=usable,
                fill=spec["dli"]["fill"],
                poisson_p=spec["dli"]["poisson_p"],
                size_mode=spec["dli"].get("size_mode", "relative"),
                placement=spec["dli"].get("placement", "random"),
                seed=seed,
            )
            collate = DLICollate(dli, log_key=None)
        batches = common.endless_batches(
            common.ArrayDataset(len(train), sample), config["batch"], seed, config["workers"], collate
        )

        model = models.build(config["model"], 1, k, **config["model_options"])
        model = common.channels_last(model).to(device)
        optimizer, schedule = common.optimiser(model, config["lr"], config["steps"], config["warmup"])
        guide = GuideLoss(k)
        curve, val_curve, guide_history, defect_share = [], [], [], []
        running = 0.0
        train_started = time.perf_counter()
        bar = common.progress(config["steps"], f"seg/{arm}/seed{seed}", show_progress)
        model.train()
        for step in range(config["steps"]):
            batch = next(batches)
            x = common.to_float(batch["image"].to(device))
            targets = one_hot_masks(batch["mask"].to(device), k)
            logits = model(x)
            pixel_bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
            loss = pixel_bce.mean() + dice_loss(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            defect_share.append(float((batch["label"].sum(1) > 0).float().mean()))
            running += loss.item()
            if weights is not None:
                guide.add(pixel_bce.detach(), targets)
                if (step + 1) % config["guide_every"] == 0 and step + 1 < config["steps"]:
                    probabilities = weights.update(guide.read())
                    guide_history.append([round(float(p), 4) for p in probabilities])
            if (step + 1) % max(1, config["steps"] // 20) == 0:
                curve.append(round(running / max(1, config["steps"] // 20), 5))
                running = 0.0
            if config["eval_every"] and (step + 1) % config["eval_every"] == 0 and step + 1 < config["steps"]:
                # watched only (the curve is recorded); the model at the last step is the one reported
                progress_iou = evaluate(model, val, device, config["threshold"])["metrics"]["mean_iou"]
                val_curve.append([step + 1, round(progress_iou, 4)])
                bar.write(f"seg/{arm}/seed{seed} step {step + 1}: validation mean IoU {progress_iou:.3f}")
                model.train()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        bar.close()
        batches.close()  # stops DataLoader workers (they hold the ClassWeights) before it is closed
        train_s = time.perf_counter() - train_started
        result = evaluate(model, val, device, config["threshold"])
        if weights is not None:
            weights.close()
    result.update(
        {
            "steps": config["steps"],
            "train_s": train_s,
            "wall_s": time.perf_counter() - started,
            "parameters": models.count_parameters(model),
            "split": {"train": len(train), "val": len(val), "val_counts": val.counts()},
            "bank": None if bank is None else {"entries": len(bank), "free": int(bank.num_free), "skipped": skipped},
            "train_defect_share": float(np.mean(defect_share)),
            "loss_curve": curve,
            "val_iou_curve": val_curve,
            "guide_probabilities": guide_history,
        }
    )
    return result
