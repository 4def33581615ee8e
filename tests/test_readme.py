"""The README: every Python block runs, its YAML loads, its picture, examples and citations exist.

Blocks run in order, each in a fresh namespace holding the stand-ins below (a README block says
"your Dataset" where these stand in), in one temporary working directory (the quick start saves
``banks/mt`` there, which later blocks use).
"""

from __future__ import annotations

import re
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

import albu_defects  # noqa: E402
from albu_defects import load_samples  # noqa: E402
from albu_defects.core.geometry import mask_bbox  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
README = (REPO_ROOT / "README.md").read_text()
SIZE = 64


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, re.S | re.M)


class TrainSet(Dataset):
    """(uint8 (1, S, S) image, class id) items, augmented by an albumentations pipeline."""

    def __init__(self) -> None:
        self.samples = load_samples()
        self.pipeline = A.Compose([A.HorizontalFlip()], seed=0)

    def __len__(self) -> int:
        return 16

    def __getitem__(self, index: int):
        sample = self.samples[index % len(self.samples)]
        image = cv2.resize(sample.image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        image = self.pipeline(image=image)["image"]
        return torch.from_numpy(np.ascontiguousarray(image))[None], sample.class_id


def stand_ins() -> dict:
    samples = load_samples()
    images = [cv2.resize(s.image, (SIZE, SIZE), interpolation=cv2.INTER_AREA) for s in samples]
    masks = [cv2.resize(s.class_mask, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST) for s in samples]
    labels = [s.class_id for s in samples]
    bboxes = []
    for mask in masks:
        box = mask_bbox(mask > 0)
        bboxes.append([] if box is None else [list(box)])
    return {
        "image": next(s for s in samples if s.class_name == "Free").image,
        "images": images,
        "masks": masks,
        "labels": labels,
        "bboxes": bboxes,
        "class_labels": [[label] * len(b) for label, b in zip(labels, bboxes, strict=True)],
        "train_set": TrainSet(),
        "dataset": [{"image": i, "mask": m, "label": label} for i, m, label in zip(images, masks, labels, strict=True)],
        "model": nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6)),
        "device": torch.device("cpu"),
        "epochs": 15,
        "train_one_epoch": lambda model, loader: next(iter(loader)),
        "per_class_val_loss": [0.3, 0.1, 0.6, 0.2, 0.1],
    }


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_every_python_block_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = blocks("python")
    assert len(code) >= 7  # quick start, YAML, bank, DataLoader, DLI, Guided-Crop, ContextMix, anomaly
    for index, block in enumerate(code):
        namespace = stand_ins()
        try:
            exec(compile(block, f"README python block {index + 1}", "exec"), namespace)
        except Exception as error:  # name the block that broke
            pytest.fail(f"README python block {index + 1} failed: {type(error).__name__}: {error}\n{block}")
        if "pipeline.yaml" in block:  # the YAML example: a bank path round trip
            loaded = namespace["loaded"]
            assert isinstance(loaded.transforms[0], albu_defects.GuidedCropPaste)
            assert loaded.transforms[0].bank == "banks/mt"
        if "quick start" in block.lower() or "class_vector" in block:
            out = namespace["out"]
            assert len(out["bboxes"]) == len(out["labels"]) and out["mask"].shape == out["image"].shape
    # the trimmed YAML of the "Save and load" section loads as the pipeline it describes
    trimmed = next(b for b in blocks("yaml") if "albu_defects.GuidedCropPaste" in b)
    (tmp_path / "trimmed.yaml").write_text(trimmed)
    loaded = A.load(str(tmp_path / "trimmed.yaml"), data_format="yaml")
    assert [type(t).__name__ for t in loaded.transforms] == ["GuidedCropPaste", "HorizontalFlip", "CutPaste"]
    assert loaded.transforms[0].weights == "inverse_frequency" and loaded.transforms[2].p == 0.2
    loaded.set_random_seed(0)
    out = loaded(image=np.full((64, 64), 128, np.uint8), mask=np.zeros((64, 64), np.uint8))
    assert out["image"].shape == (64, 64)


def test_demo_picture_examples_and_citations():
    picture = REPO_ROOT / "examples" / "demo.png"
    assert "](examples/demo.png)" in README
    assert picture.stat().st_size < 1_000_000
    image = cv2.imread(str(picture))
    assert image is not None and image.shape[0] > 1000 and image.shape[1] > 1000
    for script in ("classification_contextmix.py", "segmentation_dli_guided.py", "anomaly_selfsupervised.py"):
        assert f"`{script}`" in README and (REPO_ROOT / "examples" / script).is_file()
    assert "(benchmarks/RESULTS.md)" in README
    citations = README.split("## Citations", 1)[1]
    for work in (
        "Surface defect saliency of magnetic tile",
        "Poisson image editing",
        "Dynamic Label Injection for Imbalanced Industrial",
        "CropLiq - Data Augmentation on Self-Supervised Learning",
        "CutPaste: Self-Supervised Learning for Anomaly Detection",
        "Comparison of two-level preconditioners",
        "Guided-Crop Image Augmentation for Small Defect",
        "ContextMix: A context-aware data augmentation",
    ):
        assert work in citations.replace("\n  ", " "), work
