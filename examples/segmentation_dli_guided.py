"""Defect segmentation on Magnetic Tile: Guided-Crop in the Dataset, Dynamic Label Injection in the DataLoader.

- A defect bank is built from the *training* split at the training resolution (so pasted defects
  keep their real size and no validation defect leaks into training).
- ``GuidedCropPaste`` sits in the per-sample pipeline: with probability 0.5 it pastes real defect
  blobs on a defect-free tile, drawing the class from a ``ClassWeights``.
- ``DLICollate(DynamicLabelInjection(...))`` balances each batch: it injects defects of the batch's
  rarest classes into its remaining defect-free tiles (Poisson blending or cut-paste).
- Every few epochs the per-class validation loss is fed back with ``weights.update(...)``: the
  classes the model is worst at get pasted more, and the running (persistent) DataLoader worker sees
  the new probabilities at once (shared memory).

A tiny U-Net is trained with cross-entropy + Dice. Prints the validation mean IoU over the five
defect classes.

    python examples/segmentation_dli_guided.py --quick      # about a minute on 2 cores
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F
from _common import (
    CLASS_NAMES,
    Timer,
    default_data,
    describe,
    load_tiles,
    parser,
    report,
    settings,
    split,
    to_float,
)
from torch import nn
from torch.utils.data import DataLoader, Dataset

from albu_defects import ClassWeights, DefectBank, DynamicLabelInjection, GuidedCropPaste
from albu_defects.pytorch import DLICollate, worker_init_fn

DEFECTS = CLASS_NAMES[1:]


def multi_hot(mask: np.ndarray, label: int) -> np.ndarray:
    """The DLI label of a sample: its mask's classes (and its own class: a few Uneven masks are blank)."""
    vector = np.zeros(len(DEFECTS), np.uint8)
    classes = {int(k) for k in np.unique(mask) if k} | ({label} if label else set())
    for k in classes:
        vector[k - 1] = 1
    return vector


class SegmentationSet(Dataset):
    """Samples as dicts: image (H, W) uint8, mask (H, W) uint8 class ids, label (K,) multi-hot."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, labels: np.ndarray, transform: A.Compose | None):
        self.images, self.masks, self.labels, self.transform = images, masks, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        image, mask = self.images[index], self.masks[index]
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        # Guided-Crop may have pasted defects: the label follows the mask.
        return {"image": image, "mask": mask, "label": multi_hot(mask, int(self.labels[index]))}


class TinyUNet(nn.Module):
    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()

        def double(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
            )

        self.enc1, self.enc2, self.enc3 = double(1, width), double(width, 2 * width), double(2 * width, 4 * width)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2), double(4 * width, 2 * width)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2), double(2 * width, width)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(e3), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


def loss_fn(logits: torch.Tensor, masks: torch.Tensor, class_weight: torch.Tensor) -> torch.Tensor:
    """Weighted cross-entropy + soft Dice over the defect classes present in the batch."""
    ce = F.cross_entropy(logits, masks, weight=class_weight)
    probs = logits.softmax(1)[:, 1:]
    one_hot = F.one_hot(masks, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()
    present = one_hot.sum((0, 2, 3)) > 0
    inter = (probs * one_hot).sum((0, 2, 3))
    dice = (2 * inter + 1) / (probs.sum((0, 2, 3)) + one_hot.sum((0, 2, 3)) + 1)
    return ce + (1 - dice[present]).mean() if present.any() else ce


@torch.no_grad()
def validate(
    model: nn.Module, images: np.ndarray, masks: np.ndarray, device: torch.device
) -> tuple[np.ndarray, np.ndarray, float]:
    """Per defect class: (mean pixel cross-entropy on that class's pixels, IoU; NaN where absent),
    and the IoU of "defect" against background, whatever the class."""
    model.eval()
    num_classes = len(CLASS_NAMES)
    loss_sum, pixels = np.zeros(num_classes), np.zeros(num_classes)
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    defect_inter = defect_union = 0.0
    for start in range(0, len(images), 64):
        x = to_float(torch.from_numpy(images[start : start + 64]).to(device))
        y = torch.from_numpy(masks[start : start + 64]).long().to(device)
        logits = model(x)
        pixel_loss = F.cross_entropy(logits, y, reduction="none")
        pred = logits.argmax(1)
        for k in range(1, num_classes):
            truth, guess = y == k, pred == k
            loss_sum[k] += float(pixel_loss[truth].sum())
            pixels[k] += float(truth.sum())
            inter[k] += float((truth & guess).sum())
            union[k] += float((truth | guess).sum())
        defect_inter += float(((y > 0) & (pred > 0)).sum())
        defect_union += float(((y > 0) | (pred > 0)).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class_loss = (loss_sum / pixels)[1:]
        per_class_iou = np.where(pixels > 0, inter / union, np.nan)[1:]
    return per_class_loss, per_class_iou, defect_inter / max(defect_union, 1.0)


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    run = settings(
        args,
        full={"size": 96, "epochs": 60, "batch": 16, "per_class": None, "update_every": 10, "lr": 5e-3},
        quick={"size": 64, "epochs": 25, "per_class": 100, "update_every": 5},
        tiny={"size": 32, "epochs": 2, "batch": 8, "per_class": 5, "update_every": 1},
    )
    torch.manual_seed(args.seed)
    timer = Timer()
    root = args.data or default_data()
    tiles = load_tiles(root, run["size"], per_class=run["per_class"], seed=args.seed)
    train_index, val_index, honest = split(tiles.labels, 0.25, args.seed)
    train, val = tiles.subset(train_index), tiles.subset(val_index)
    print(describe(root, tiles, honest), f"| {run['mode']} run: {run['epochs']} epochs at {run['size']} px")

    with tempfile.TemporaryDirectory() as folder:
        with warnings.catch_warnings(record=True) as skipped:  # labelled tiles with blank masks are skipped
            warnings.simplefilter("always")
            # The training split's defects at the training resolution; masks are binary per label.
            bank = DefectBank.from_arrays(list(train.images), list(train.masks), list(train.labels), DEFECTS)
        bank_path = str(bank.save(Path(folder) / "bank"))  # transforms hold the path: cheap to send to workers
        print(f"bank: {len(bank)} defects, {bank.num_free} defect-free tiles ({len(skipped)} warning(s) at build)")

        weights = ClassWeights(bank.classes)  # uniform until the first update
        augment = A.Compose(
            [GuidedCropPaste(bank=bank_path, class_weights=weights, p=0.5), A.HorizontalFlip(), A.VerticalFlip()],
            seed=args.seed,
        )
        usable = [c for c in bank.classes if bank.entries_of(c)]
        dli = DynamicLabelInjection(bank_path, classes=usable, poisson_p=0.5, max_inject_fraction=0.5, seed=args.seed)
        workers = 1 if args.workers is None else args.workers
        loader = DataLoader(
            SegmentationSet(train.images, train.masks, train.labels, augment),
            batch_size=run["batch"],
            shuffle=True,
            collate_fn=DLICollate(dli),  # balances every batch's classes in the worker
            num_workers=workers,
            persistent_workers=workers > 0,  # the worker keeps reading the live ClassWeights
            worker_init_fn=worker_init_fn if workers else None,
            generator=torch.Generator().manual_seed(args.seed),
            drop_last=len(train) > run["batch"],
        )

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = TinyUNet(len(CLASS_NAMES)).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=run["lr"], weight_decay=1e-4)
        steps = max(1, run["epochs"] * len(loader))
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=run["lr"], total_steps=steps)
        class_weight = torch.tensor([0.5] + [1.0] * len(DEFECTS), device=device)
        injected = 0
        for epoch in range(run["epochs"]):
            model.train()
            for batch in loader:
                injected += int((batch["dli"]["class_id"] != 0).sum())
                logits = model(to_float(batch["image"].to(device)))
                loss = loss_fn(logits, batch["mask"].long().to(device), class_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
            if (epoch + 1) % run["update_every"] == 0 and epoch + 1 < run["epochs"]:
                per_class_loss, iou, _ = validate(model, val.images, val.masks, device)
                # Classes absent from validation keep the highest loss seen (pasted as often as the worst).
                worst = 1.0 if np.isnan(per_class_loss).all() else np.nanmax(per_class_loss)
                filled = np.where(np.isnan(per_class_loss), worst, per_class_loss)
                probabilities = weights.update(filled)  # seen by the worker's next batches
                shown = ", ".join(f"{c} {p:.2f}" for c, p in zip(DEFECTS, probabilities, strict=True))
                print(f"epoch {epoch + 1}: val mIoU {np.nanmean(iou):.3f}; Guided-Crop class probabilities: {shown}")

        _, iou, defect_iou = validate(model, val.images, val.masks, device)
        weights.close()
    per_class = ", ".join(f"{c} {v:.2f}" for c, v in zip(DEFECTS, iou, strict=True) if not np.isnan(v))
    detail = f"(per class: {per_class}; defect IoU {defect_iou:.3f}; {len(val)} val images, {injected} DLI injections, {timer})"
    report("mean_iou", float(np.nanmean(iou)) if not np.isnan(iou).all() else 0.0, detail)


if __name__ == "__main__":
    main()
