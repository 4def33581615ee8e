"""Issue 11, "What to build": multi-hot (H, W, K) masks everywhere, and the float32 [0, 1] rule.

- (H, W, K) masks, channel ``k - 1`` = class ``k``: geometric transforms move them; injecting
  transforms write the injected class into its channel (the pasted pixels show that class only);
  ``class_vector`` follows the channels.
- float32 images hold values in [0, 1] (albumentations' convention): our outputs stay in it (colour
  jitter and Poisson overshoot are clipped), and an input outside it (e.g. after ``A.Normalize``)
  raises a ``ValueError`` that says to move ``Normalize`` after our transforms.
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

import albu_defects as ad

from .label_helpers import assert_labels_match_mask, classes_in_mask, free_tile

K = 5


def multi_hot(index_mask: np.ndarray, num_classes: int, dtype=np.uint8) -> np.ndarray:
    out = np.zeros((*index_mask.shape, num_classes), dtype)
    for c in range(1, num_classes + 1):
        out[..., c - 1] = index_mask == c
    return out


def background_with_a_defect(hw: tuple[int, int], num_classes: int = K) -> np.ndarray:
    """A multi-hot mask with classes 2 and 3 overlapping in one block (a multi-label pixel)."""
    mask = np.zeros((*hw, num_classes), np.uint8)
    mask[10:30, 10:30, 1] = 1
    mask[20:40, 20:40, 2] = 1
    return mask


# ============================================================================ (H, W, K) masks
@pytest.mark.parametrize("dtype", [np.uint8, bool])
def test_guided_crop_moves_and_writes_multi_hot_masks(mt_bank, dtype):
    tile = free_tile()
    mask = background_with_a_defect(tile.image.shape).astype(dtype)
    for seed in range(4):
        transform = ad.GuidedCropPaste(bank=mt_bank, skip_defective=False, p=1)
        out = A.Compose([transform], seed=seed)(image=tile.image, mask=mask)
        index = A.Compose([ad.GuidedCropPaste(bank=mt_bank, skip_defective=False, p=1)], seed=seed)(
            image=tile.image, mask=np.zeros(tile.image.shape, np.uint8)
        )["mask"]
        assert out["mask"].shape == mask.shape and out["mask"].dtype == mask.dtype
        pasted = index != 0
        np.testing.assert_array_equal(out["mask"][pasted], multi_hot(index, K, dtype)[pasted])  # front wins
        assert out["mask"][~pasted].any()  # the input's classes, moved by the flips and scroll
        assert_labels_match_mask(out, K)


def test_inject_defect_writes_its_class_channel(mt_bank):
    tile = free_tile()
    mask = np.zeros((*tile.image.shape, K), np.uint8)
    out = A.Compose([ad.InjectDefect(mt_bank, p=1)], seed=0)(image=tile.image, mask=mask)
    assert out["mask"].shape == mask.shape
    (injected,) = classes_in_mask(out["mask"])
    assert_labels_match_mask(out, K)
    assert out["class_vector"][injected - 1] == 1


@pytest.mark.parametrize("transform", [ad.CutPaste, ad.CropLiq])
def test_anomaly_transforms_write_a_named_class_into_its_channel(transform):
    image = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    mask = background_with_a_defect((48, 48))
    out = A.Compose([transform(p=1)], seed=0)(image=image, mask=mask)
    np.testing.assert_array_equal(out["mask"], mask)  # no mask_class_id: the mask is untouched
    out = A.Compose([transform(p=1, mask_class_id=4)], seed=0)(image=image, mask=mask)
    anomaly = out["anomaly_mask"]
    np.testing.assert_array_equal(out["mask"][anomaly], multi_hot(np.full(int(anomaly.sum()), 4), K))
    np.testing.assert_array_equal(out["mask"][~anomaly], mask[~anomaly])
    assert_labels_match_mask(out, K)


def test_contextmix_pastes_multi_hot_partner_masks():
    rng = np.random.default_rng(0)
    host = rng.integers(0, 100, (32, 32), dtype=np.uint8)
    host_mask = background_with_a_defect((32, 32))
    partner_mask = np.zeros((16, 16, K), np.uint8)
    partner_mask[..., 4] = 1
    partner = {"image": np.full((16, 16), 255, np.uint8), "mask": partner_mask}
    out = A.Compose([ad.ContextMix(p=1, min_box_side=1)], seed=1)(
        image=host, mask=host_mask, class_vector=np.zeros(K, np.float32), contextmix_metadata=[partner]
    )
    from_partner = out["image"] == 255
    assert from_partner.any()
    np.testing.assert_array_equal(out["mask"][from_partner], np.eye(K, dtype=np.uint8)[[4] * int(from_partner.sum())])
    assert_labels_match_mask(out, K)


def test_dli_takes_multi_hot_masks_per_image(mt_bank):
    tile = free_tile()
    masks = [np.zeros((*tile.image.shape, K), np.uint8) for _ in range(2)]
    out = ad.DynamicLabelInjection(mt_bank, seed=0)(images=[tile.image] * 2, masks=masks)
    for mask, label in zip(out["masks"], out["labels"], strict=True):
        assert mask.shape == masks[0].shape
        assert classes_in_mask(mask) == {int(c) + 1 for c in np.flatnonzero(label)}


def test_a_multi_hot_mask_of_the_wrong_class_count_is_a_clear_error(mt_bank):
    tile = free_tile()
    mask = np.zeros((*tile.image.shape, 3), np.uint8)
    with pytest.raises(ValueError, match="mask"):
        A.Compose([ad.InjectDefect(mt_bank, p=1)], seed=0)(image=tile.image, mask=mask)


# ============================================================================ float32 in [0, 1]
def _unit_image(shape, seed=0, low=0.0, high=1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def test_float_outputs_stay_in_unit_range_despite_jitter_and_blending(float_bank):
    bright = _unit_image((48, 48, 3), low=0.9, high=1.0)
    dark = _unit_image((48, 48), low=0.0, high=0.05)
    cases = [
        (ad.CutPaste(p=1, brightness=(1.5, 1.5), contrast=(2.0, 2.0)), bright),
        (ad.CutPaste(p=1, brightness=(0.0, 0.1), contrast=(3.0, 3.0)), dark),
        (ad.GuidedCropPaste(float_bank, p=1, brightness=(1.5, 1.5), crop_contrast=(2.0, 2.0)), dark),
        (ad.InjectDefect(float_bank, classes=["spot"], poisson_p=1.0, p=1), dark),
    ]
    for transform, image in cases:
        for seed in range(5):
            out = A.Compose([transform], seed=seed)(image=image)
            assert out["image"].dtype == np.float32
            assert float(out["image"].min()) >= 0.0 and float(out["image"].max()) <= 1.0, type(transform).__name__


@pytest.mark.parametrize(
    "make",
    [
        lambda bank: ad.CutPaste(p=1),
        lambda bank: ad.CropLiq(p=1),
        lambda bank: ad.GuidedCropPaste(bank, p=1),
        lambda bank: ad.InjectDefect(bank, classes=["spot"], p=1),
        lambda bank: ad.ContextMix(p=1),
    ],
    ids=["CutPaste", "CropLiq", "GuidedCropPaste", "InjectDefect", "ContextMix"],
)
def test_float_input_outside_unit_range_says_to_move_normalize(float_bank, make):
    image = _unit_image((48, 48))
    normalized = A.Normalize(mean=0.5, std=0.1)(image=image)["image"]
    data = {"image": normalized, "contextmix_metadata": [{"image": normalized}]}
    with pytest.raises(ValueError, match="Normalize"):
        A.Compose([make(float_bank)], seed=0)(**data)
    assert (
        A.Compose([make(float_bank), A.Normalize(mean=0.5, std=0.1)], seed=0)(
            image=image, contextmix_metadata=[{"image": image}]
        )["image"].min()
        < 0
    )  # Normalize after our transforms: fine


def test_sync_labels_does_not_read_images_so_it_may_follow_normalize():
    image = A.Normalize(mean=0.5, std=0.1)(image=_unit_image((16, 16)))["image"]
    mask = np.zeros((16, 16), np.uint8)
    out = A.Compose([ad.SyncLabels(num_classes=2)])(image=image, mask=mask)
    np.testing.assert_array_equal(out["image"], image)
    np.testing.assert_array_equal(out["class_vector"], np.zeros(2, np.float32))


def test_dli_rejects_normalized_batches(float_bank):
    image = A.Normalize(mean=0.5, std=0.1)(image=_unit_image((40, 40)))["image"]
    with pytest.raises(ValueError, match="Normalize"):
        ad.DynamicLabelInjection(float_bank, classes=["spot"])(images=[image], masks=[np.zeros((40, 40), np.uint8)])
