"""Self-supervised anomaly detection on Magnetic Tile: learn from defect-free tiles only, score real defects.

The pretext task of CutPaste (Li et al.) and CropLiq (Le and Kim), in one transform:
``AnomalySynthesis([CropLiq(), CutPaste()])`` turns each defect-free tile into a normal sample
(label 0), a liquified patch (1) or a pasted patch (2), and a tiny CNN learns the 3-way task. It
never sees a real defect. Then every held-out defect-free tile and every real defect tile gets an
anomaly score, and the example reports the AUROC of real defects against defect-free tiles:

- ``gde``: a Gaussian density estimate on the CNN's features (fit on the training tiles), the
  scoring of the CutPaste paper: the Mahalanobis distance to the normal features;
- ``classifier``: 1 - the classifier's probability of "normal".

    python examples/anomaly_selfsupervised.py --quick      # about a minute on 2 cores
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
    auroc,
    data_name,
    default_data,
    load_tiles,
    parser,
    report,
    settings,
    to_float,
)
from torch.utils.data import DataLoader, Dataset

from albu_defects import AnomalySynthesis, CropLiq, CutPaste
from albu_defects.pytorch import worker_init_fn


class PretextSet(Dataset):
    """Defect-free tiles turned into (image, anomaly label) by the pipeline, anew every epoch."""

    def __init__(self, images: np.ndarray, pipeline: A.Compose) -> None:
        self.images, self.pipeline = images, pipeline

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        out = self.pipeline(image=self.images[index])
        return torch.from_numpy(np.ascontiguousarray(out["image"]))[None], int(out["anomaly_label"])


@torch.no_grad()
def embed(model: TinyCNN, images: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D), probability of "normal" (N,)) of uint8 (N, H, W) tiles."""
    model.eval()
    features, normal = [], []
    for start in range(0, len(images), 128):
        x = to_float(torch.from_numpy(images[start : start + 128]).to(device))
        f = model.features(x)
        features.append(f.cpu().numpy().astype(np.float64))
        normal.append(model.classifier(f).softmax(1)[:, 0].cpu().numpy())
    return np.concatenate(features), np.concatenate(normal)


def gaussian_scores(train_features: np.ndarray, features: np.ndarray, shrinkage: float = 0.1) -> np.ndarray:
    """Mahalanobis distance of ``features`` to a Gaussian fit on ``train_features`` (shrunk covariance)."""
    mean = train_features.mean(0)
    centred = train_features - mean
    covariance = centred.T @ centred / max(len(train_features) - 1, 1)
    covariance = (1 - shrinkage) * covariance + shrinkage * np.trace(covariance) / len(mean) * np.eye(len(mean))
    inverse = np.linalg.pinv(covariance)
    delta = features - mean
    return np.einsum("nd,de,ne->n", delta, inverse, delta)


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    run = settings(
        args,
        full={"size": 128, "epochs": 40, "batch": 64, "free": None, "defects": None, "lr": 3e-3},
        quick={"size": 64, "epochs": 25, "free": 400, "defects": 40},
        tiny={"size": 32, "epochs": 1, "batch": 16, "free": 12, "defects": 2},
    )
    torch.manual_seed(args.seed)
    timer = Timer()
    root = args.data or default_data()
    free = load_tiles(root, run["size"], classes=("Free",), per_class=run["free"], seed=args.seed)
    defects = load_tiles(root, run["size"], classes=CLASS_NAMES[1:], per_class=run["defects"], seed=args.seed)
    order = np.random.default_rng(args.seed).permutation(len(free))
    n_test = int(0.25 * len(free))
    train_images, test_images = free.images[order[n_test:]], free.images[order[:n_test]]
    honest = n_test > 0
    if not honest:  # the 12 bundled samples hold 3 defect-free tiles: a smoke run only
        test_images = train_images
    note = "" if honest else " (too few defect-free tiles to hold some out: scored on the training tiles)"
    print(
        f"data: {data_name(root)}: {len(train_images)} "
        f"defect-free training tiles; test: {len(test_images)} defect-free + {len(defects)} real defect tiles{note} "
        f"| {run['mode']} run: {run['epochs']} epochs at {run['size']} px"
    )

    # 0 normal, 1 CropLiq, 2 CutPaste, equally likely; flips first so the anomaly is the last change.
    pipeline = A.Compose(
        [A.HorizontalFlip(), A.VerticalFlip(), AnomalySynthesis([CropLiq(), CutPaste(variant="normal")])],
        seed=args.seed,
    )
    workers = 1 if args.workers is None else args.workers
    loader = DataLoader(
        PretextSet(train_images, pipeline),
        batch_size=run["batch"],
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        worker_init_fn=worker_init_fn if workers else None,
        generator=torch.Generator().manual_seed(args.seed),
        drop_last=len(train_images) > run["batch"],
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = TinyCNN(3).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=run["lr"], weight_decay=1e-4)
    steps = max(1, run["epochs"] * len(loader))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=run["lr"], total_steps=steps)
    for epoch in range(run["epochs"]):
        model.train()
        correct = seen = 0
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            logits = model(to_float(images))
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
        if run["mode"] != "tiny" and (epoch + 1) % max(1, run["epochs"] // 5) == 0:
            print(f"epoch {epoch + 1}: pretext accuracy {correct / max(seen, 1):.3f} (chance 0.333)")

    train_features, _ = embed(model, train_images, device)
    test = np.concatenate([test_images, defects.images])
    is_defect = np.r_[np.zeros(len(test_images), bool), np.ones(len(defects), bool)]
    features, normal = embed(model, test, device)
    scores = gaussian_scores(train_features, features)
    gde, classifier = auroc(scores, is_defect), auroc(1.0 - normal, is_defect)
    free_scores, defect_scores = scores[~is_defect], scores[is_defect]
    per_class = []
    for k in np.unique(defects.labels):
        of_class = defect_scores[defects.labels == k]
        positive = np.r_[np.zeros(len(free_scores), bool), np.ones(len(of_class), bool)]
        per_class.append(f"{CLASS_NAMES[k]} {auroc(np.r_[free_scores, of_class], positive):.2f}")
    report("auroc", gde, f"(gde; classifier {classifier:.3f}; per class: {', '.join(per_class)}; {timer})")


if __name__ == "__main__":
    main()
