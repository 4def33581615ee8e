"""Shared plumbing of the examples: options, Magnetic Tile loading and splitting, small metrics.

Not part of the library: each example imports it from its own folder (``python examples/x.py``).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("ALBUMENTATIONS_NO_TELEMETRY", "1")

from albu_defects.data import MAGNETIC_TILE_CLASSES, sample_root

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Set to 1 to run every example on tiny settings (what the test does), like ``--tiny``.
TINY_ENV = "ALBU_DEFECTS_EXAMPLES_TINY"
#: Class names by id: 0 is defect-free, 1..5 the Magnetic Tile defect classes.
CLASS_NAMES = ("Free", *MAGNETIC_TILE_CLASSES)


def default_data() -> Path:
    """``../shared/data/magnetic_tile`` beside the checkout (or a parent folder) when present, else the bundled samples."""
    if os.environ.get("ALBU_DEFECTS_MT_ROOT"):
        return Path(os.environ["ALBU_DEFECTS_MT_ROOT"])
    for parent in REPO_ROOT.parents:
        candidate = parent / "shared" / "data" / "magnetic_tile"
        if (candidate / "MT_Free").is_dir():
            return candidate
    return sample_root()


def parser(description: str) -> argparse.ArgumentParser:
    """The options every example shares."""
    args = argparse.ArgumentParser(description=description)
    args.add_argument(
        "--data",
        type=Path,
        default=None,
        help="Magnetic Tile folder (MT_<Class>/Imgs); default: "
        "../shared/data/magnetic_tile when present, else the 12 bundled samples",
    )
    args.add_argument("--quick", action="store_true", help="a short run (about a minute on 2 CPU cores)")
    args.add_argument("--tiny", action="store_true", help=f"a smoke run of a few seconds (also: {TINY_ENV}=1)")
    args.add_argument("--seed", type=int, default=0, help="random seed (0)")
    args.add_argument("--workers", type=int, default=None, help="DataLoader worker processes")
    args.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    return args


def settings(args: argparse.Namespace, full: dict, quick: dict, tiny: dict) -> dict:
    """The run's settings: ``tiny`` with ``--tiny`` (or the env variable), ``quick`` with ``--quick``, else ``full``."""
    if args.tiny or os.environ.get(TINY_ENV) == "1":
        run = {**full, **quick, **tiny, "mode": "tiny"}
    else:
        run = {**full, **quick, "mode": "quick"} if args.quick else {**full, "mode": "full"}
    if args.epochs is not None:
        run["epochs"] = args.epochs
    return run


@dataclass
class Tiles:
    """Images resized to ``size``, their class-index masks, and one class id per image."""

    images: np.ndarray  # (N, S, S) uint8
    masks: np.ndarray  # (N, S, S) uint8, class ids 0..5
    labels: np.ndarray  # (N,) int64, 0 = defect-free
    names: list[str]

    def subset(self, index: np.ndarray) -> Tiles:
        return Tiles(self.images[index], self.masks[index], self.labels[index], [self.names[i] for i in index])

    def __len__(self) -> int:
        return len(self.labels)


def load_tiles(
    root: Path,
    size: int,
    classes: tuple[str, ...] = CLASS_NAMES,
    per_class: int | None = None,
    seed: int = 0,
) -> Tiles:
    """Read Magnetic Tile images of ``classes`` (at most ``per_class`` each, drawn with ``seed``) resized to ``size``.

    Masks are thresholded at 127 and resized with nearest neighbour, then written with the class id.
    """
    rng = np.random.default_rng(seed)
    images, masks, labels, names = [], [], [], []
    for name in classes:
        paths = sorted((root / f"MT_{name}" / "Imgs").glob("*.jpg"))
        if per_class is not None and len(paths) > per_class:
            paths = [paths[i] for i in sorted(rng.choice(len(paths), per_class, replace=False))]
        class_id = CLASS_NAMES.index(name)
        for path in paths:
            image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            mask = cv2.imread(str(path.with_suffix(".png")), cv2.IMREAD_GRAYSCALE)
            if image is None or mask is None:
                raise SystemExit(f"cannot read {path} or its mask")
            images.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))
            binary = cv2.resize((mask > 127).astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
            masks.append(binary * np.uint8(class_id))
            labels.append(class_id)
            names.append(f"{name}/{path.stem}")
    if not images:
        raise SystemExit(f"no Magnetic Tile images found in {root} (expected MT_<Class>/Imgs/*.jpg)")
    return Tiles(np.stack(images), np.stack(masks), np.asarray(labels, np.int64), names)


def split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Stratified train/validation indices; ``(train, val, honest)``.

    When no class has enough images for a validation part (the 12 bundled samples), validation
    falls back to the training images and ``honest`` is False (the examples say so).
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = int(len(members) * val_fraction)
        val += members[:n_val].tolist()
        train += members[n_val:].tolist()
    if not val:
        return np.asarray(sorted(train)), np.asarray(sorted(train)), False
    return np.asarray(sorted(train)), np.asarray(sorted(val)), True


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` (bool) samples (ties count half)."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs positive and negative samples")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):  # average ranks over ties
        stop = start
        while stop + 1 < len(scores) and sorted_scores[stop + 1] == sorted_scores[start]:
            stop += 1
        ranks[order[start : stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def data_name(root: Path) -> str:
    return "bundled samples" if Path(root).resolve() == sample_root().resolve() else str(root)


def describe(root: Path, tiles: Tiles, honest: bool) -> str:
    """One line: where the data came from, images per class, and whether validation is held out."""
    counts = ", ".join(f"{CLASS_NAMES[k]} {int((tiles.labels == k).sum())}" for k in np.unique(tiles.labels))
    where = data_name(root)
    note = "" if honest else " (too few images to hold some out: evaluated on the training images)"
    return f"data: {where}: {len(tiles)} images ({counts}){note}"


class TinyCNN(nn.Module):
    """Three conv blocks and a global average pool (``features``), then a linear classifier."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]

        self.features = nn.Sequential(
            *block(1, width),
            *block(width, 2 * width),
            *block(2 * width, 4 * width),
            nn.Conv2d(4 * width, 4 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 1, H, W) (or (N, H, W)) images as normalized float32 (N, 1, H, W)."""
    images = images[:, None] if images.ndim == 3 else images
    return images.float().div(255.0).sub_(0.5).div_(0.25)


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __str__(self) -> str:
        return f"{time.perf_counter() - self.start:.1f} s"


def report(name: str, value: float, detail: str = "") -> None:
    """The metric line every example ends with (the test reads it): ``result: name=value detail``."""
    print(f"result: {name}={value:.4f}" + (f" {detail}" if detail else ""), flush=True)
