"""Issue 11: inputs whole pipelines hand our transforms (breaks 6, 7, 8 and 9).

Each test of a numbered break failed on 72696d0: keys rejected by ``A.Compose(strict=True)``,
``images=`` raising ``KeyError``, five or more channels crashing ``cv2.resize``, and printing or
recording a pipeline that holds an unsaved in-memory bank.
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

import albu_defects as ad

from .label_helpers import (
    assert_labels_match_mask,
    classes_in_mask,
    free_tile,
    sample_folder,
)

K = 5


# ============================================================================ break 6: strict=True
def _tile_inputs() -> dict:
    tile = free_tile()
    return {"image": tile.image, "mask": tile.class_mask}


STRICT_CASES = {
    "CropLiq-object_mask": (
        lambda bank: ad.CropLiq(region="mask", p=1),
        lambda: {**_tile_inputs(), "object_mask": np.ones(free_tile().image.shape, np.uint8)},
    ),
    "CropLiq-own-object-key": (
        lambda bank: ad.CropLiq(region="mask", object_mask_key="roi", p=1),
        lambda: {**_tile_inputs(), "roi": np.ones(free_tile().image.shape, bool)},
    ),
    "InjectDefect-label": (
        lambda bank: ad.InjectDefect(bank, label_key="label", p=1),
        lambda: {**_tile_inputs(), "label": 0},
    ),
    "InjectDefect-class_vector": (
        lambda bank: ad.InjectDefect(bank, p=1),
        lambda: {**_tile_inputs(), "class_vector": np.zeros(K, np.float32)},
    ),
    "GuidedCropPaste-class_vector": (
        lambda bank: ad.GuidedCropPaste(bank, p=1),
        lambda: {**_tile_inputs(), "class_vector": np.zeros(K, np.float32)},
    ),
    "CutPaste-anomaly_mask": (
        lambda bank: ad.CutPaste(p=1),
        lambda: {**_tile_inputs(), "anomaly_mask": np.zeros(free_tile().image.shape, bool)},
    ),
    "CutPaste-class_vector": (
        lambda bank: ad.CutPaste(p=1, mask_class_id=2),
        lambda: {**_tile_inputs(), "class_vector": np.zeros(K, np.float32)},
    ),
    "AnomalySynthesis-anomaly_mask": (
        lambda bank: ad.AnomalySynthesis([ad.CropLiq(), ad.CutPaste()]),
        lambda: {**_tile_inputs(), "anomaly_mask": np.zeros(free_tile().image.shape, bool)},
    ),
    "ContextMix-class_vector": (
        lambda bank: ad.ContextMix(p=1),
        lambda: {
            **_tile_inputs(),
            "class_vector": np.zeros(K, np.float32),
            "contextmix_metadata": [_tile_inputs()],
        },
    ),
}


@pytest.mark.parametrize("name", list(STRICT_CASES))
def test_break6_strict_compose_accepts_every_key_a_transform_reads(name, mt_bank):
    build, inputs = STRICT_CASES[name]
    data = inputs()
    out = A.Compose([build(mt_bank)], strict=True, seed=0)(**data)
    assert set(data) <= set(out)


# ============================================================================ break 7: images=
def test_break7_contextmix_takes_images():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 100, (32, 40, 3), dtype=np.uint8)
    partner = np.full((20, 20, 3), 255, np.uint8)
    stack = np.stack([frame, frame])
    out = A.Compose([ad.ContextMix(p=1, min_box_side=1)], seed=0)(
        images=stack, contextmix_metadata=[{"image": partner}]
    )
    assert out["images"].shape == stack.shape and out["images"].dtype == np.uint8
    np.testing.assert_array_equal(out["images"][0], out["images"][1])  # one draw for all frames
    pasted = (out["images"][0] == 255).all(axis=2)
    assert abs(pasted.mean() - float(out["mix_weights"][1])) < 1e-6


def test_break7_inject_defect_takes_images(mt_bank):
    tile = free_tile()
    stack = np.stack([tile.image, tile.image])
    out = A.Compose([ad.InjectDefect(mt_bank, p=1)], seed=0)(images=stack, mask=tile.class_mask)
    assert out["images"].shape == stack.shape
    np.testing.assert_array_equal(out["images"][0], out["images"][1])
    assert (out["images"][0] != tile.image).any()
    assert_labels_match_mask(out, K)
    assert classes_in_mask(out["mask"])


# ============================================================================ break 8: channels
@pytest.mark.parametrize("poisson_p", [0.0, 1.0])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_break8_inject_defect_rescales_defects_into_five_channel_images(mt_bank, float_bank, dtype, poisson_p):
    tile = free_tile()
    gray = tile.image[:100, :90] if dtype == np.uint8 else (tile.image[:100, :90] / 255.0).astype(np.float32)
    image = np.ascontiguousarray(np.repeat(gray[..., None], 6, axis=2))
    bank, classes = (mt_bank, None) if dtype == np.uint8 else (float_bank, ["spot"])  # both shrink their defects
    for seed in range(3):
        transform = ad.InjectDefect(bank, classes=classes, poisson_p=poisson_p, size_mode="relative", p=1)
        out = A.Compose([transform], seed=seed)(image=image, mask=np.zeros(image.shape[:2], np.uint8))
        assert out["image"].shape == image.shape and out["image"].dtype == image.dtype
        assert out["mask"].any()


def test_break8_dli_rescales_defects_into_five_channel_images(mt_bank):
    tile = free_tile()
    image = np.ascontiguousarray(np.repeat(tile.image[:100, :90, None], 5, axis=2))
    masks = [np.zeros(image.shape[:2], np.uint8)] * 2
    out = ad.DynamicLabelInjection(mt_bank, seed=0)(images=[image, image], masks=masks)
    assert all(im.shape == image.shape for im in out["images"])
    assert all(m.any() for m in out["masks"])


# ============================================================================ break 9: unsaved banks
def test_break9_pipeline_with_an_unsaved_bank_prints_and_records_but_does_not_save(tmp_path):
    bank = ad.DefectBank.from_folder(sample_folder(), progress=False)  # never saved
    transform = ad.GuidedCropPaste(bank, p=1)
    text = repr(A.Compose([transform]))
    assert "GuidedCropPaste" in text and "unsaved" in text.lower()
    tile = free_tile()
    replay = A.ReplayCompose([transform])
    replay.set_random_seed(0)
    recorded = replay(image=tile.image)
    again = A.ReplayCompose.replay(recorded["replay"], image=tile.image)
    np.testing.assert_array_equal(again["image"], recorded["image"])
    with pytest.raises(ValueError, match="save"):
        A.save(A.Compose([transform]), str(tmp_path / "p.yaml"), data_format="yaml")
    assert not (tmp_path / "p.yaml").exists() or "GuidedCropPaste" not in (tmp_path / "p.yaml").read_text()
    for other in (ad.InjectDefect(bank, p=1), ad.DynamicLabelInjection(bank)):
        assert "unsaved" in repr(A.Compose([other])).lower()
