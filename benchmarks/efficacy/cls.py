"""Classification task: the six Magnetic Tile folders (defect-free + five defects) as image classes.

Per seed: a stratified 80/20 split, the same small CNN, steps and batch for every arm, flips for
every arm, soft-target cross-entropy; macro F1 and balanced accuracy on the validation split.

Arms (batch ops applied after the flips, with probability ``mix_p`` per batch, one box per batch):
- ``cutmix``: a partner *crop* at the same place (Yun et al.), labels mixed by area; written here
  (timm / torchvision do not install beside torch 2.13).
- ``contextmix``: ``albu_defects.pytorch.TensorContextMix`` (the whole partner resized into the box),
  labels mixed by area (the paper's rule).
- ``contextmix_defect``: ContextMix with defect-aware labels (``label_mode="defect_area"``: mixed by
  the visible defect pixels each image keeps, counted on the class-index masks, which are flipped
  with the image and given to the op; the masks are not a training target here).
"""

from __future__ import annotations

import time
from typing import Any

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F

from albu_defects.pytorch import TensorContextMix

from . import common, metrics, models
from .data import Dataset, stratified_split

TASK = "cls"

ARMS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "cutmix": {"mix": "cutmix"},
    "contextmix": {"mix": "contextmix", "label_mode": "area"},
    "contextmix_defect": {"mix": "contextmix", "label_mode": "defect_area"},
}

#: Arms that need a library feature that is not there yet: arm -> what it needs (none today).
NEEDS: dict[str, str] = {}

DEFAULT_ARMS = {
    "cpu": ["baseline", "cutmix", "contextmix", "contextmix_defect"],
    "gpu": ["baseline", "cutmix", "contextmix", "contextmix_defect"],
    "tiny": ["baseline", "cutmix", "contextmix", "contextmix_defect"],
}

CONFIGS: dict[str, dict[str, Any]] = {
    # 128 px, a 0.1M-parameter CNN, 1,000 steps of 32 (30 epochs), one thread: ~5 min a run here.
    "cpu": {
        "size": 128,
        "val_fraction": 0.2,
        "model": "small_cnn",
        "model_options": {"width": 16},
        "batch": 32,
        "steps": 1000,
        "lr": 3e-3,
        "warmup": 50,
        "mix_p": 0.5,
        "mix_alpha": 1.0,
        "workers": 0,
    },
    "gpu": {
        "size": 256,
        "val_fraction": 0.2,
        "model": "resnet",
        "model_options": {"width": 32},
        "batch": 64,
        "steps": 4000,
        "lr": 2e-3,
        "warmup": 200,
        "mix_p": 0.5,
        "mix_alpha": 1.0,
        "workers": 8,
    },
    "tiny": {
        "size": 32,
        "val_fraction": 0.34,
        "model": "small_cnn",
        "model_options": {"width": 4},
        "batch": 4,
        "steps": 3,
        "lr": 1e-3,
        "warmup": 0,
        "mix_p": 1.0,
        "mix_alpha": 1.0,
        "workers": 0,
    },
}

PAPER = {
    "metric": "macro_f1",
    "source": "ContextMix paper (private MLCC set, 10 classes, ResNet-18, 150 epochs): macro F1; not Magnetic Tile",
    "values": {"cutmix": "0.901 +- 0.004", "baseline": "n/a", "contextmix": "best of the compared (figure only)"},
}

#: The arm every other is compared with, seed by seed.
REFERENCE = "baseline"
METRICS = ("macro_f1", "balanced_accuracy", "accuracy")


def cutmix(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, alpha: float, p: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix on a batch (one box per batch, partners by a random permutation): images and soft targets.

    lam ~ Beta(alpha, alpha); a box of area ``1 - lam`` centred uniformly and clipped to the image;
    the label weight is the exact pixel share of the box (``lam = 1 - box / HW``).
    """
    targets = F.one_hot(labels, num_classes).float()
    if rng.random() >= p:
        return images, targets
    n, _, h, w = images.shape
    cut = (1.0 - rng.beta(alpha, alpha)) ** 0.5
    cy, cx = rng.random() * h, rng.random() * w
    y0, y1 = int(np.clip(cy - cut * h / 2, 0, h)), int(np.clip(cy + cut * h / 2, 0, h))
    x0, x1 = int(np.clip(cx - cut * w / 2, 0, w)), int(np.clip(cx + cut * w / 2, 0, w))
    perm = torch.from_numpy(rng.permutation(n)).to(images.device)
    mixed = images.clone()
    mixed[:, :, y0:y1, x0:x1] = images[perm][:, :, y0:y1, x0:x1]
    share = (y1 - y0) * (x1 - x0) / (h * w)
    return mixed, (1 - share) * targets + share * targets[perm]


def check_arm(arm: str) -> None:
    if arm not in ARMS:
        raise SystemExit(f"unknown cls arm {arm!r}; one of {', '.join(ARMS)}")
    if arm in NEEDS:
        raise SystemExit(f"cls arm {arm!r} {NEEDS[arm]}")


@torch.no_grad()
def evaluate(model: torch.nn.Module, val: Dataset, device: torch.device, class_names: tuple[str, ...]) -> dict:
    model.eval()
    predictions = []
    for start in range(0, len(val), 64):
        x = common.to_float(torch.from_numpy(val.images[start : start + 64]).to(device))
        predictions.append(model(x).argmax(1).cpu().numpy())
    predicted = np.concatenate(predictions)
    scores = metrics.classification_scores(val.labels, predicted, len(class_names))
    return {
        "metrics": {name: scores[name] for name in METRICS},
        "per_class": {
            "f1": {c: float(v) for c, v in zip(class_names, scores["f1"], strict=True)},
            "recall": {c: float(v) for c, v in zip(class_names, scores["recall"], strict=True)},
        },
        "confusion": metrics.confusion_matrix(val.labels, predicted, len(class_names)).tolist(),
    }


def run(config: dict[str, Any], arm: str, seed: int, dataset: Dataset, show_progress: bool = True) -> dict[str, Any]:
    check_arm(arm)
    spec = ARMS[arm]
    started = time.perf_counter()
    common.seed_everything(seed)
    device = common.device_of(config)
    class_names = ("Free", *dataset.class_names)
    num_classes = len(class_names)
    train_index, val_index = stratified_split(dataset.labels, config["val_fraction"], seed)
    train, val = dataset.subset(train_index), dataset.subset(val_index)
    pipeline = A.Compose([A.HorizontalFlip(), A.VerticalFlip()], seed=seed)
    with_masks = spec.get("label_mode") == "defect_area"  # the masks weigh the mixed labels

    def sample(index: int) -> tuple[torch.Tensor, ...]:
        if with_masks:
            out = pipeline(image=train.images[index], mask=train.masks[index])
            as_tensor = torch.from_numpy(np.ascontiguousarray(out["image"]))
            return as_tensor, int(train.labels[index]), torch.from_numpy(np.ascontiguousarray(out["mask"]))
        image = pipeline(image=train.images[index])["image"]
        return torch.from_numpy(np.ascontiguousarray(image)), int(train.labels[index])

    batches = common.endless_batches(common.ArrayDataset(len(train), sample), config["batch"], seed, config["workers"])
    mix_rng = np.random.default_rng(seed)
    contextmix = None
    if spec.get("mix") == "contextmix":
        contextmix = TensorContextMix(
            alpha=config["mix_alpha"],
            num_classes=num_classes,
            p=config["mix_p"],
            mode="batch",
            label_mode=spec["label_mode"],
            seed=seed,
        )
    model = models.build(config["model"], 1, num_classes, **config["model_options"])
    model = common.channels_last(model).to(device)
    optimizer, schedule = common.optimiser(model, config["lr"], config["steps"], config["warmup"])
    curve, running = [], 0.0
    train_started = time.perf_counter()
    bar = common.progress(config["steps"], f"cls/{arm}/seed{seed}", show_progress)
    model.train()
    for step in range(config["steps"]):
        images, labels, *masks = next(batches)
        images, labels = images[:, None].to(device), labels.to(device)
        if spec.get("mix") == "cutmix":
            images, targets = cutmix(images, labels, num_classes, config["mix_alpha"], config["mix_p"], mix_rng)
        elif contextmix is not None and masks:
            images, targets, _ = contextmix(images, labels, masks=masks[0].to(device))
        elif contextmix is not None:
            images, targets = contextmix(images, labels)
        else:
            targets = F.one_hot(labels, num_classes).float()
        logits = model(common.to_float(images))
        loss = -(targets * F.log_softmax(logits, 1)).sum(1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running += loss.item()
        if (step + 1) % max(1, config["steps"] // 20) == 0:
            curve.append(round(running / max(1, config["steps"] // 20), 5))
            running = 0.0
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    batches.close()  # stops DataLoader workers, if any
    train_s = time.perf_counter() - train_started
    result = evaluate(model, val, device, class_names)
    result.update(
        {
            "steps": config["steps"],
            "train_s": train_s,
            "wall_s": time.perf_counter() - started,
            "parameters": models.count_parameters(model),
            "split": {"train": len(train), "val": len(val), "val_counts": val.counts()},
            "loss_curve": curve,
        }
    )
    return result
