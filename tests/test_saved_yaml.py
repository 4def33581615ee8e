"""Pipelines saved to YAML by albu-defects 0.1.0 (commit 72696d0) load and run with this version.

The files in tests/fixtures/saved_0_1_0 were written by its make.py under 0.1.0: every exported
transform and compose, with a bank (also written by 0.1.0) referred to by the relative path ``bank``.
"""

import json
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest

import albu_defects as ad
from albu_defects.core.geometry import box_slices

FIXTURES = Path(__file__).parent / "fixtures" / "saved_0_1_0"
SIDE = 96


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(FIXTURES)  # the files refer to the bank as "bank", relative to their folder
    return FIXTURES


def names(transform) -> list[str]:
    """Class names of a loaded pipeline, depth first."""
    found = [type(transform).__name__]
    for child in getattr(transform, "transforms", None) or []:
        found += names(child)
    return found


def test_saved_bank_loads(saved):
    bank = ad.resolve_bank("bank")
    assert bank.classes == ad.MAGNETIC_TILE_CLASSES
    assert bank.num_free == 3 and len(bank) == 9
    # 0.1.0 wrote format version 1, with boxes as (y0, x0, y1, x1): they load in today's order
    assert json.loads((saved / "bank" / "index.json").read_text())["version"] == 1
    images = [cv2.resize(s.image, (SIDE, SIDE), interpolation=cv2.INTER_AREA) for s in ad.load_samples()]
    for entry in bank.entries:  # the box places the crop in its 96x96 source image (the make.py arrays)
        x_min, y_min, x_max, y_max = entry.bbox
        assert 0 <= x_min < x_max <= SIDE and 0 <= y_min < y_max <= SIDE
        source = images[int(entry.source_id.removeprefix("array_"))]
        np.testing.assert_array_equal(entry.crop, source[box_slices(entry.bbox)])


def test_per_sample_pipeline(saved):
    pipeline = A.load("per_sample.yaml", data_format="yaml")
    assert names(pipeline) == [
        "Compose",
        "InjectDefect",
        "GuidedCropPaste",
        "AnomalySynthesis",
        "CropLiq",
        "CutPaste",
        "CutPaste",
        "HorizontalFlip",
    ]
    defect_transform = pipeline.transforms[0].defect_transform
    assert names(defect_transform) == ["Compose", "HorizontalFlip", "VerticalFlip", "Affine"]
    bank = ad.resolve_bank("bank")
    image = np.array(bank.load_free(0))
    for seed in range(3):
        pipeline.set_random_seed(seed)
        out = pipeline(image=image, mask=np.zeros_like(image), bboxes=[], labels=[])
        assert out["image"].shape == image.shape and out["image"].dtype == image.dtype
        classes = set(np.unique(out["mask"]).tolist()) - {0}
        assert classes, "InjectDefect (p=1) and GuidedCropPaste (p=1) paste defects"
        assert set(np.flatnonzero(out[ad.CLASS_VECTOR_KEY]) + 1) <= classes | {1}  # anomalies write class 1
        assert len(out["bboxes"]) == len(out["labels"]) >= 1
        assert out[ad.ANOMALY_LABEL_KEY] in (0, 1, 2, 3)


def test_batch_pipeline(saved):
    pipeline = A.load("batch.yaml", data_format="yaml")
    assert names(pipeline) == ["BatchCompose", "ContextMix", "VerticalFlip"]
    bank = ad.resolve_bank("bank")
    images = [np.array(bank.load_free(i)) for i in range(3)]
    pipeline.set_random_seed(0)
    out = pipeline(
        images=images,
        masks=[np.zeros_like(im) for im in images],
        labels=[0, 1, 2],
        bboxes=[[], [(10, 10, 30, 40)], []],
        box_labels=[[], [1], []],
    )
    assert out["mix_weights"].shape == (3, 2)
    assert np.allclose(out["mix_weights"].sum(axis=1), 1.0)
    assert out["soft_label"].shape == (3, 6)
    assert [im.shape for im in out["images"]] == [im.shape for im in images]


def test_dli_pipeline(saved):
    dli = A.load("dli.yaml", data_format="yaml")
    assert isinstance(dli, ad.DynamicLabelInjection) and dli.fill == "balance"
    bank = ad.resolve_bank("bank")
    images = [np.array(bank.load_free(i % 3)) for i in range(6)]
    masks = [np.zeros(im.shape, np.uint8) for im in images]
    masks[0][40:50, 40:50] = 3  # one Crack already present
    out = dli(images=images, masks=masks)
    after = out["class_counts_after"]
    assert max(after.values()) == min(after.values()) == 1
    injected = [i for i, record in enumerate(out["injections"]) if record is not None]
    assert len(injected) == 4
    for i in injected:
        assert set(np.unique(out["masks"][i]).tolist()) == {0, out["injections"][i]["class_id"]}
