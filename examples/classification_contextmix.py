"""Defect classification on Magnetic Tile with ContextMix and a soft-target loss.

Six classes (defect-free + five defects), tiles resized small, a tiny CNN. ContextMix (Kim et al.)
runs as a batch op in the training loop, after ``.to(device)``, the way it belongs on a GPU: every
image gets a whole batch-mate resized into a random box, and its target becomes the two one-hot
labels weighted by their exact pixel shares. The loss is cross-entropy against those soft targets.
The per-sample pipeline (flips) runs in DataLoader workers seeded by ``worker_init_fn``.

    python examples/classification_contextmix.py --quick           # about a minute on 2 cores
    python examples/classification_contextmix.py --quick --no-mix  # the same without ContextMix
    python examples/classification_contextmix.py --quick --label-mode defect_area  # labels by visible defect

Prints the validation balanced accuracy (mean per-class recall: the classes are imbalanced).
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F
from _common import (
    CLASS_NAMES,
    Timer,
    TinyCNN,
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
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from albu_defects.pytorch import TensorContextMix, worker_init_fn


class TileDataset(Dataset):
    """(1, S, S) uint8 image tensors and class ids (and (S, S) masks when given); ``transform`` is an albumentations pipeline."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        transform: A.Compose | None = None,
        masks: np.ndarray | None = None,
    ) -> None:
        self.images, self.labels, self.transform, self.masks = images, labels, transform, masks

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        data = {"image": self.images[index]}
        if self.masks is not None:
            data["mask"] = self.masks[index]
        if self.transform is not None:
            data = self.transform(**data)
        image = torch.from_numpy(np.ascontiguousarray(data["image"]))[None]
        if self.masks is None:
            return image, int(self.labels[index])
        return image, int(self.labels[index]), torch.from_numpy(np.ascontiguousarray(data["mask"]))


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, num_classes: int) -> tuple[float, float]:
    """(balanced accuracy, accuracy) over ``loader``."""
    model.eval()
    predictions, labels = [], []
    for images, targets in loader:
        predictions.append(model(to_float(images.to(device))).argmax(1).cpu())
        labels.append(targets)
    pred, true = torch.cat(predictions).numpy(), torch.cat(labels).numpy()
    recalls = [float((pred[true == k] == k).mean()) for k in range(num_classes) if (true == k).any()]
    return float(np.mean(recalls)), float((pred == true).mean())


def main() -> None:
    args = parser(__doc__.split("\n\n")[0])
    args.add_argument("--no-mix", action="store_true", help="train without ContextMix (the baseline)")
    args.add_argument(
        "--label-mode",
        choices=["area", "defect_area"],
        default="area",
        help="ContextMix labels by image area (the paper) or by the defect pixels each image still shows",
    )
    args = args.parse_args()
    run = settings(
        args,
        full={"size": 96, "epochs": 40, "batch": 32, "per_class": None, "lr": 3e-3},
        quick={"size": 64, "epochs": 80, "per_class": 150},
        tiny={"size": 32, "epochs": 1, "batch": 8, "per_class": 4},
    )
    torch.manual_seed(args.seed)
    timer = Timer()
    root = args.data or default_data()
    tiles = load_tiles(root, run["size"], per_class=run["per_class"], seed=args.seed)
    train_index, val_index, honest = split(tiles.labels, 0.25, args.seed)
    print(describe(root, tiles, honest), f"| {run['mode']} run: {run['epochs']} epochs at {run['size']} px")

    num_classes = len(CLASS_NAMES)
    augment = A.Compose([A.HorizontalFlip(), A.VerticalFlip()], seed=args.seed)
    by_defect = args.label_mode == "defect_area"  # the masks weigh the labels (they are moved with the image)
    train_masks = tiles.masks[train_index] if by_defect else None
    train_set = TileDataset(tiles.images[train_index], tiles.labels[train_index], augment, train_masks)
    val_set = TileDataset(tiles.images[val_index], tiles.labels[val_index])
    # Balanced classes per epoch: defect-free tiles outnumber the rarest defect ~30 to 1.
    counts = np.bincount(train_set.labels, minlength=num_classes).astype(np.float64)
    sampler = WeightedRandomSampler(
        torch.from_numpy(1.0 / counts[train_set.labels]),
        num_samples=len(train_set),
        generator=torch.Generator().manual_seed(args.seed),
    )
    workers = 1 if args.workers is None else args.workers
    train_loader = DataLoader(
        train_set,
        batch_size=run["batch"],
        sampler=sampler,
        num_workers=workers,
        worker_init_fn=worker_init_fn if workers else None,  # a distinct augmentation stream per worker
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(args.seed),
        drop_last=len(train_set) > run["batch"],
    )
    val_loader = DataLoader(val_set, batch_size=128)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = TinyCNN(num_classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=run["lr"], weight_decay=1e-4)
    steps = run["epochs"] * len(train_loader)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=run["lr"], total_steps=max(steps, 1))
    # The batch op: one box per batch, as in the paper; p=0.5 keeps half the batches clean.
    mix = TensorContextMix(
        num_classes=num_classes, p=0.0 if args.no_mix else 0.5, label_mode=args.label_mode, seed=args.seed
    )

    for epoch in range(run["epochs"]):
        model.train()
        total = 0.0
        for images, labels, *masks in train_loader:
            images, labels = images.to(device), labels.to(device)
            if masks:  # label_mode="defect_area": the op counts the defect pixels each image keeps
                images, targets, _ = mix(images, labels, masks=masks[0].to(device))
            else:
                images, targets = mix(images, labels)  # uint8 in, uint8 out; targets (N, 6) soft labels
            loss = soft_cross_entropy(model(to_float(images)), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(labels)
        if run["mode"] != "tiny" and (epoch + 1) % max(1, run["epochs"] // 4) == 0:
            balanced, _ = evaluate(model, val_loader, device, num_classes)
            print(f"epoch {epoch + 1}: train loss {total / len(train_set):.3f}, val balanced accuracy {balanced:.3f}")

    balanced, accuracy = evaluate(model, val_loader, device, num_classes)
    method = "no mixing" if args.no_mix else f"ContextMix, label_mode={args.label_mode}"
    report("balanced_accuracy", balanced, f"(accuracy {accuracy:.3f}, {len(val_set)} val images, {method}, {timer})")


if __name__ == "__main__":
    main()
