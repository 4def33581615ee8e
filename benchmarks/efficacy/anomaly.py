"""Anomaly-detection task: learn from defect-free tiles only, score held-out defect-free vs real defects.

Per seed: the defect-free tiles are split 80/20 (a new draw per seed); a small CNN learns the
pretext task of each arm on the training 80 % (flips, then ``AnomalySynthesis``: normal vs the
arm's pseudo-anomalies, equally likely); it never sees a real defect. Scoring, as the CutPaste
paper: a Gaussian density on the CNN's pooled features fitted on the training tiles, anomaly score
= Mahalanobis distance. Metric: image AUROC of the held-out defect-free tiles against each defect
class (every defect tile is a test tile: none is used in training), their mean, and against all
defect tiles together; the classifier's own score (1 - p(normal)) is kept as a second figure.

Arms: ``cutpaste_normal`` (2-way), ``cutpaste_scar`` (2-way), ``cutpaste_3way`` (normal vs CutPaste
vs scar), ``cropliq`` (2-way), ``cropliq_cutpaste_3way`` (normal vs CropLiq vs CutPaste, the CropLiq
paper's task).
"""

from __future__ import annotations

import time
from typing import Any

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F

import albu_defects as ad

from . import common, metrics, models
from .data import Dataset, stratified_split

TASK = "anomaly"

ARMS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "cutpaste_normal": [("CutPaste", {"variant": "normal"})],
    "cutpaste_scar": [("CutPaste", {"variant": "scar"})],
    "cutpaste_3way": [("CutPaste", {"variant": "normal"}), ("CutPaste", {"variant": "scar"})],
    "cropliq": [("CropLiq", {})],
    "cropliq_cutpaste_3way": [("CropLiq", {}), ("CutPaste", {"variant": "normal"})],
}

DEFAULT_ARMS = {scale: list(ARMS) for scale in ("cpu", "gpu", "tiny")}

CONFIGS: dict[str, dict[str, Any]] = {
    # 128 px, a 0.1M-parameter CNN, 800 steps of 32 (34 epochs of ~760 tiles), one thread: ~4 min a run.
    "cpu": {
        "size": 128,
        "val_fraction": 0.2,
        "model": "small_cnn",
        "model_options": {"width": 16},
        "batch": 32,
        "steps": 800,
        "lr": 3e-3,
        "warmup": 50,
        "shrinkage": 0.1,
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
        "shrinkage": 0.1,
        "workers": 8,
    },
    "tiny": {
        "size": 32,
        "val_fraction": 0.34,
        "model": "small_cnn",
        "model_options": {"width": 4},
        "batch": 2,
        "steps": 3,
        "lr": 1e-3,
        "warmup": 0,
        "shrinkage": 0.1,
        "workers": 0,
    },
}

PAPER = {
    "metric": "mean_auroc",
    "source": "CutPaste paper (MVTec AD, image AUROC, from scratch): not Magnetic Tile",
    "values": {"cutpaste_3way": "0.952", "cropliq_cutpaste_3way": "gains over CutPaste (no MT figure)"},
}

#: The arm every other is compared with, seed by seed.
REFERENCE = "cutpaste_3way"  # the CropLiq paper's claim: CropLiq + CutPaste beats CutPaste
METRICS = ("mean_auroc", "auroc_all", "classifier_auroc_all")

_TRANSFORMS = {"CutPaste": ad.CutPaste, "CropLiq": ad.CropLiq}


def check_arm(arm: str) -> None:
    if arm not in ARMS:
        raise SystemExit(f"unknown anomaly arm {arm!r}; one of {', '.join(ARMS)}")


def pretext_pipeline(arm: str, seed: int) -> A.Compose:
    """Flips, then normal (label 0) or one of the arm's pseudo-anomalies (labels 1..), equally likely."""
    transforms = [_TRANSFORMS[name](**options) for name, options in ARMS[arm]]
    return A.Compose([A.HorizontalFlip(), A.VerticalFlip(), ad.AnomalySynthesis(transforms)], seed=seed)


def gaussian_scores(train_features: np.ndarray, features: np.ndarray, shrinkage: float) -> np.ndarray:
    """Mahalanobis distance of ``features`` to a Gaussian fit on ``train_features`` (shrunk covariance)."""
    mean = train_features.mean(0)
    centred = train_features - mean
    covariance = centred.T @ centred / max(len(train_features) - 1, 1)
    scale = np.trace(covariance) / len(mean)
    covariance = (1 - shrinkage) * covariance + shrinkage * max(scale, 1e-12) * np.eye(len(mean))
    delta = features - mean
    return np.einsum("nd,de,ne->n", delta, np.linalg.pinv(covariance), delta)


@torch.no_grad()
def embed(model: torch.nn.Module, images: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(pooled features (N, D) float64, probability of "normal" (N,))."""
    model.eval()
    features, normal = [], []
    for start in range(0, len(images), 64):
        f = model.features(common.to_float(torch.from_numpy(images[start : start + 64]).to(device)))
        features.append(f.cpu().double().numpy())
        normal.append(model.classifier(f).softmax(1)[:, 0].cpu().numpy())
    return np.concatenate(features), np.concatenate(normal)


def scores_by_class(
    free_scores: np.ndarray, defect_scores: np.ndarray, defect_labels: np.ndarray, class_names: tuple[str, ...]
) -> dict[str, float]:
    """AUROC of held-out defect-free tiles (negatives) vs each defect class (positives); NaN for absent classes."""
    out = {}
    for k, name in enumerate(class_names, start=1):
        of_class = defect_scores[defect_labels == k]
        if len(of_class) == 0 or len(free_scores) == 0:
            out[name] = float("nan")
            continue
        positive = np.r_[np.zeros(len(free_scores), bool), np.ones(len(of_class), bool)]
        out[name] = metrics.auroc(np.r_[free_scores, of_class], positive)
    return out


def run(config: dict[str, Any], arm: str, seed: int, dataset: Dataset, show_progress: bool = True) -> dict[str, Any]:
    check_arm(arm)
    started = time.perf_counter()
    common.seed_everything(seed)
    device = common.device_of(config)
    free_index = np.flatnonzero(dataset.labels == 0)
    train_part, test_part = stratified_split(np.zeros(len(free_index), np.int64), config["val_fraction"], seed)
    train_free = dataset.images[free_index[train_part]]
    test_free = dataset.images[free_index[test_part]]
    defects = dataset.subset(np.flatnonzero(dataset.labels > 0))
    pipeline = pretext_pipeline(arm, seed)
    num_outputs = 1 + len(ARMS[arm])

    def sample(index: int) -> tuple[torch.Tensor, int]:
        out = pipeline(image=train_free[index])
        return torch.from_numpy(np.ascontiguousarray(out["image"])), int(out[ad.ANOMALY_LABEL_KEY])

    batches = common.endless_batches(
        common.ArrayDataset(len(train_free), sample), config["batch"], seed, config["workers"]
    )
    model = models.build(config["model"], 1, num_outputs, **config["model_options"])
    model = common.channels_last(model).to(device)
    optimizer, schedule = common.optimiser(model, config["lr"], config["steps"], config["warmup"])
    curve, running, correct, seen = [], 0.0, 0, 0
    train_started = time.perf_counter()
    bar = common.progress(config["steps"], f"anomaly/{arm}/seed{seed}", show_progress)
    model.train()
    for step in range(config["steps"]):
        images, labels = next(batches)
        images, labels = images.to(device), labels.to(device)
        logits = model(common.to_float(images))
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running += loss.item()
        if step >= config["steps"] // 2:  # pretext accuracy over the second half
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
        if (step + 1) % max(1, config["steps"] // 20) == 0:
            curve.append(round(running / max(1, config["steps"] // 20), 5))
            running = 0.0
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    batches.close()  # stops DataLoader workers, if any
    train_s = time.perf_counter() - train_started

    train_features, _ = embed(model, train_free, device)
    test_images = np.concatenate([test_free, defects.images])
    features, normal = embed(model, test_images, device)
    gde = gaussian_scores(train_features, features, config["shrinkage"])
    n_free = len(test_free)
    is_defect = np.r_[np.zeros(n_free, bool), np.ones(len(defects), bool)]
    per_class = scores_by_class(gde[:n_free], gde[n_free:], defects.labels, dataset.class_names)
    classifier = scores_by_class(1 - normal[:n_free], 1 - normal[n_free:], defects.labels, dataset.class_names)
    present = [v for v in per_class.values() if not np.isnan(v)]
    return {
        "metrics": {
            "mean_auroc": float(np.mean(present)) if present else float("nan"),
            "auroc_all": metrics.auroc(gde, is_defect) if 0 < n_free < len(is_defect) else float("nan"),
            "classifier_auroc_all": metrics.auroc(1 - normal, is_defect)
            if 0 < n_free < len(is_defect)
            else float("nan"),
        },
        "per_class": {"auroc": per_class, "classifier_auroc": classifier},
        "pretext_accuracy": correct / max(seen, 1),
        "steps": config["steps"],
        "train_s": train_s,
        "wall_s": time.perf_counter() - started,
        "parameters": models.count_parameters(model),
        "split": {"train_free": len(train_free), "test_free": n_free, "test_defects": len(defects)},
        "loss_curve": curve,
    }
