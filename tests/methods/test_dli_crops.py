"""DLI on random crops (issue 15): ``size_mode="absolute_crop"``.

Training on random crops of images at the bank's resolution needs defects at their real pixel
scale: ``"relative"`` halves every defect for 128 px crops of a 256 px bank, and ``"absolute"``
refuses defects larger than the crop (the large Fray / Uneven ones of Magnetic Tile). The new mode
keeps the pixel scale and cuts a defect larger than the image to an image-sized window of it.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest

from albu_defects import DefectBank, DynamicLabelInjection, InjectDefect
from albu_defects.methods.injection.functional import cut_to_target

BIG = np.s_[20:220, 60:160]  # class 1: 200x100, larger than a 128 px crop along the rows
SMALL = np.s_[230:240, 10:20]  # class 2: 10x10
STILL = A.NoOp(p=1.0)  # no defect transform (its affine rescales), so pixel counts are exact


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 200, (256, 256), dtype=np.uint8)  # never the base value 250


@pytest.fixture(scope="module")
def bank(source) -> DefectBank:
    mask = np.zeros((256, 256), np.uint8)
    mask[BIG], mask[SMALL] = 1, 2
    return DefectBank.from_arrays([source], [mask], class_names=["big", "small"])


def _inject(bank, size_mode, class_name, seed, n=3):
    crops = [np.full((128, 128), 250, np.uint8) for _ in range(n)]
    masks = [np.zeros((128, 128), np.uint8) for _ in range(n)]
    dli = DynamicLabelInjection(
        bank, classes=[class_name], fill="all", poisson_p=0.0, size_mode=size_mode, defect_transform=STILL, seed=seed
    )
    return dli(images=crops, masks=masks)


def _found_at_scale(source: np.ndarray, image: np.ndarray, label: np.ndarray) -> bool:
    """The labelled pixels are a window of ``source`` at its own scale (an exact template match)."""
    rows, cols = np.nonzero(label)
    window = image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scores = cv2.matchTemplate(source, window, cv2.TM_SQDIFF)  # float32 sums: the best match, then exact
    y, x = np.unravel_index(int(scores.argmin()), scores.shape)
    found = source[y : y + window.shape[0], x : x + window.shape[1]]
    return bool(np.array_equal(found, window))


def test_absolute_crop_keeps_the_pixel_scale_and_cuts_a_defect_larger_than_the_crop(bank, source):
    full = 0
    for seed in range(4):
        out = _inject(bank, "absolute_crop", "big", seed)
        for image, mask in zip(out["images"], out["masks"], strict=True):
            label = mask == 1
            # a window of at most 128 of the 200 rows of the 200x100 defect, never shrunk: whole rows
            assert 100 <= int(label.sum()) <= 128 * 100 and int(label.sum()) % 100 == 0
            full += int(label.sum()) == 128 * 100
            np.testing.assert_array_equal(label, image != 250)  # cut-paste: the label is exactly what changed
            assert _found_at_scale(source, image, label)
        small = _inject(bank, "absolute_crop", "small", seed)
        assert all(int((m == 2).sum()) == 100 for m in small["masks"])  # fits: unchanged, 10x10
    assert full > 0  # windows that lie inside the defect paste a full 128-row cut


def test_the_other_size_modes_halve_or_refuse_on_crops(bank):
    out = _inject(bank, "relative", "big", 0)
    assert all(int((m == 1).sum()) == 100 * 50 for m in out["masks"])  # halved on each axis: 128 / 256
    assert all(int((m == 2).sum()) == 25 for m in _inject(bank, "relative", "small", 0)["masks"])
    with pytest.raises(ValueError, match="absolute_crop"):
        _inject(bank, "absolute", "big", 0)


def test_cut_to_target_windows_cover_every_part_of_a_long_defect_over_draws():
    h, w = 12, 300
    crop = np.arange(h * w, dtype=np.uint16).reshape(h, w)  # every pixel tells where it came from
    mask = np.zeros((h, w), bool)
    mask[2:10, 5:295] = True
    seen = np.zeros((h, w), bool)
    rng = np.random.default_rng(0)
    for _ in range(100):
        new_crop, new_mask = cut_to_target(crop, mask, (64, 64), 1, rng)
        rows, cols = np.nonzero(new_mask)
        assert rows.max() - rows.min() + 1 <= 64 and cols.max() - cols.min() + 1 <= 64
        origin = np.divmod(new_crop[new_mask].astype(np.int64), w)  # positions in the original crop
        assert mask[origin].all()  # only real defect pixels, at their own scale (neighbours stay neighbours)
        assert 8 <= new_mask.sum() <= 8 * 64 and new_mask.sum() % 8 == 0  # whole columns of the 8-px-high bar
        seen[origin] = True
    assert seen[mask].all()
    # a defect that fits is returned as is, without drawing
    state = rng.bit_generator.state
    same_crop, same_mask = cut_to_target(crop[:, :50], mask[:, :50], (64, 64), 1, rng)
    assert same_crop is not None and np.array_equal(same_mask, mask[:, :50])
    assert rng.bit_generator.state == state


def test_inject_defect_accepts_absolute_crop_in_a_compose(bank):
    pipeline = A.Compose(
        [InjectDefect(bank, classes=["big"], poisson_p=0.0, size_mode="absolute_crop", defect_transform=STILL, p=1.0)],
        seed=0,
    )
    out = pipeline(image=np.full((128, 128), 250, np.uint8), mask=np.zeros((128, 128), np.uint8))
    assert 100 <= int((out["mask"] == 1).sum()) <= 128 * 100
    with pytest.raises(ValueError, match="size_mode"):
        InjectDefect(bank, size_mode="crop")
