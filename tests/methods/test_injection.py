"""The injection core on its own: channels, resizing, transforming, fitting, placement, injection."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from albu_defects import DefectBank
from albu_defects.core.geometry import dilate_mask, mask_bbox, placement_overlap, random_top_left
from albu_defects.core.validation import dtype_max
from albu_defects.methods.injection.functional import (
    crop_to_defect,
    fit_to_target,
    inject_defect,
    match_channels,
    relative_scale,
    resize_defect,
    source_top_left,
    transform_defect,
    write_class,
)
from albu_defects.methods.injection.plan import choose_entry, plan_injection

DTYPES = (np.uint8, np.uint16, np.float32)


def _image(rng: np.random.Generator, hw: tuple[int, int], dtype, channels: int | None) -> np.ndarray:
    shape = hw if channels is None else (*hw, channels)
    if np.dtype(dtype).kind == "f":
        return rng.random(shape, dtype=np.float32)
    return rng.integers(0, int(dtype_max(dtype)) + 1, shape, dtype=dtype)


def _readonly(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.setflags(write=False)


def _blob_mask(hw: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros(hw, bool)
    y0, x0, y1, x1 = box
    mask[y0:y1, x0:x1] = True
    return mask


def _bank(dtype=np.uint8, channels: int | None = None, hw=(60, 80), classes=2, seed=0) -> DefectBank:
    """A small synthetic bank: per class three images with a rectangular defect of that class, plus a free image."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for k in range(1, classes + 1):
        for j in range(3):
            mask = np.zeros(hw, np.uint8)
            y, x = 5 + 7 * j, 10 + 5 * k
            mask[y : y + 6 + 2 * j, x : x + 9 + k] = k
            images.append(_image(rng, hw, dtype, channels))
            masks.append(mask)
    images.append(_image(rng, hw, dtype, channels))
    masks.append(np.zeros(hw, np.uint8))
    return DefectBank.from_arrays(images, masks, class_names=[f"c{k}" for k in range(1, classes + 1)])


# ------------------------------------------------------------------------------------ channels and dtypes
def test_match_channels_reshapes_broadcasts_gray_and_rejects_the_rest():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb_target = np.zeros((5, 5, 3), np.uint8)
    out = match_channels(gray, rgb_target)
    assert out.shape == (3, 4, 3) and all(np.array_equal(out[..., c], gray) for c in range(3))
    assert match_channels(gray, np.zeros((5, 5, 1), np.uint8)).shape == (3, 4, 1)
    assert match_channels(gray[..., None], np.zeros((5, 5), np.uint8)).shape == (3, 4)
    with pytest.raises(ValueError, match="3 channels but the image is single-channel"):
        match_channels(np.zeros((3, 4, 3), np.uint8), np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match="3 channels but the image has 4"):
        match_channels(np.zeros((3, 4, 3), np.uint8), np.zeros((5, 5, 4), np.uint8))
    with pytest.raises(ValueError, match="dtype uint8 but the image has float32"):
        match_channels(gray, np.zeros((5, 5), np.float32))


# ------------------------------------------------------------------------------------ resizing
@given(
    mask=hnp.arrays(bool, st.tuples(st.integers(1, 30), st.integers(1, 30))),
    out_hw=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    dtype=st.sampled_from(DTYPES),
    channels=st.sampled_from([None, 1, 3]),
)
def test_resize_defect_keeps_dtype_channels_and_never_loses_the_defect(mask, out_hw, dtype, channels):
    crop = _image(np.random.default_rng(0), mask.shape, dtype, channels)
    new_crop, new_mask = resize_defect(crop, mask, out_hw)
    assert new_crop.dtype == crop.dtype and new_crop.ndim == crop.ndim
    assert new_crop.shape[:2] == out_hw and new_mask.shape == out_hw and new_mask.dtype == bool
    if channels is not None:
        assert new_crop.shape[2] == channels
    assert new_mask.any() == mask.any()


def test_relative_scale_maps_source_onto_target():
    assert relative_scale((512, 1024), (256, 256)) == (0.5, 0.25)


# ------------------------------------------------------------------------------------ cropping, transforming, fitting
def test_crop_to_defect_cuts_box_plus_context():
    crop = np.arange(400, dtype=np.uint16).reshape(20, 20)
    mask = _blob_mask((20, 20), (5, 6, 9, 12))
    new_crop, new_mask, offset = crop_to_defect(crop, mask, 2)
    assert offset == (3, 4) and new_crop.shape == (8, 10)
    assert np.array_equal(new_crop, crop[3:11, 4:14]) and new_mask.sum() == mask.sum()
    with pytest.raises(ValueError, match="empty"):
        crop_to_defect(crop, np.zeros((20, 20), bool), 2)


def _apply(transform):
    def run(crop, mask):
        out = transform(image=crop, mask=mask)
        return out["image"], out["mask"]

    return run


def test_transform_defect_identity_flip_shift_and_fallback():
    rng = np.random.default_rng(1)
    crop = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    mask = _blob_mask((20, 30), (4, 5, 12, 20))
    same, same_mask, shift = transform_defect(crop, mask, _apply(A.NoOp()), context=1)
    assert shift == (0.0, 0.0) and np.array_equal(same, crop[3:13, 4:21]) and same_mask.sum() == mask.sum()
    flipped, flipped_mask, _ = transform_defect(crop, mask, _apply(A.HorizontalFlip(p=1)), context=1)
    assert np.array_equal(flipped[flipped_mask], crop[4:12, 5:20][:, ::-1].ravel())
    _, moved_mask, shift = transform_defect(
        crop, mask, _apply(A.Affine(translate_px={"x": 7, "y": -3}, p=1)), context=1
    )
    assert shift == (-3.0, 7.0) and moved_mask.sum() == mask.sum()
    _, gone_mask, shift = transform_defect(crop, mask, lambda c, m: (c, np.zeros_like(m)), context=1)
    assert shift == (0.0, 0.0) and gone_mask.sum() == mask.sum()  # fell back to the untransformed defect
    with pytest.raises(ValueError, match="dtype"):
        transform_defect(crop, mask, lambda c, m: (c.astype(np.float32), m), context=1)


@given(
    size=st.tuples(st.integers(2, 60), st.integers(2, 60)),
    target=st.tuples(st.integers(1, 40), st.integers(1, 40)),
)
def test_fit_to_target_shrinks_until_the_defect_fits(size, target):
    crop = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    mask = np.ones(size, bool)
    new_crop, new_mask, factor = fit_to_target(crop, mask, target, context=1)
    x0, y0, x1, y1 = mask_bbox(new_mask)
    assert y1 - y0 <= target[0] and x1 - x0 <= target[1]
    assert new_crop.shape[2] == 3 and new_crop.dtype == np.uint8
    fits = size[0] <= target[0] and size[1] <= target[1]
    assert (factor == 1.0) == fits and (new_crop.shape[:2] == size) == fits
    assert 0 < factor <= 1.0


# ------------------------------------------------------------------------------------ placement
@given(
    box=st.tuples(st.integers(0, 10), st.integers(0, 10), st.integers(1, 20), st.integers(1, 20)),
    target=st.tuples(st.integers(1, 50), st.integers(1, 50)),
    seed=st.integers(0, 2**16),
)
def test_random_top_left_keeps_the_defect_inside(box, target, seed):
    y0, x0, h, w = box
    mask = _blob_mask((y0 + h + 3, x0 + w + 3), (y0, x0, y0 + h, x0 + w))
    if h > target[0] or w > target[1]:
        with pytest.raises(ValueError, match="does not fit"):
            random_top_left(mask, target, np.random.default_rng(seed))
        return
    ty, tx = random_top_left(mask, target, np.random.default_rng(seed))
    assert ty + y0 >= 0 and ty + y0 + h <= target[0] and tx + x0 >= 0 and tx + x0 + w <= target[1]


def test_source_top_left_keeps_relative_position_and_clamps():
    mask = _blob_mask((12, 12), (2, 2, 10, 10))  # centre (6, 6)
    ty, tx = source_top_left(mask, (100, 200), (0.5, 0.25))
    assert (ty + 6, tx + 6) == (50, 50)
    ty, tx = source_top_left(mask, (100, 200), (0.5, 0.25), shift=(3, -4))
    assert (ty + 6, tx + 6) == (53, 46)
    ty, tx = source_top_left(mask, (100, 200), (1.0, 0.0))  # clamped: the defect stays inside
    assert ty + 10 == 100 and tx + 2 == 0


# ------------------------------------------------------------------------------------ injection
@given(
    dtype=st.sampled_from(DTYPES),
    channels=st.sampled_from([None, 1, 3, 4]),
    target=st.tuples(st.integers(4, 40), st.integers(4, 40)),
    crop_hw=st.tuples(st.integers(1, 20), st.integers(1, 20)),
    top_left=st.tuples(st.integers(-15, 40), st.integers(-15, 40)),
    class_id=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_paste_injection_labels_exactly_the_pasted_pixels(dtype, channels, target, crop_hw, top_left, class_id, seed):
    rng = np.random.default_rng(seed)
    image = _image(rng, target, dtype, channels)
    crop = _image(rng, crop_hw, dtype, channels)
    mask = rng.random(crop_hw) < 0.5
    class_mask = np.zeros(target, np.uint8)
    class_mask[0, 0] = 9  # an existing label elsewhere survives unless covered
    _readonly(image, crop, mask, class_mask)
    before = (image.copy(), crop.copy(), mask.copy(), class_mask.copy())
    result = inject_defect(image, crop, mask, top_left, class_mask=class_mask, class_id=class_id, method="paste")
    assert all(np.array_equal(a, b) for a, b in zip(before, (image, crop, mask, class_mask), strict=True))
    assert result.image.dtype == image.dtype and result.image.shape == image.shape
    expected = np.zeros(target, bool)
    overlap = placement_overlap(target, crop_hw, top_left)
    if overlap is not None:
        expected[overlap.target] = mask[overlap.source]
    assert np.array_equal(result.label, expected)
    assert result.bbox == mask_bbox(expected)
    assert np.all(result.class_mask[expected] == class_id)
    assert np.array_equal(result.class_mask[~expected], class_mask[~expected])
    assert np.array_equal(result.image[~expected], image[~expected])
    if overlap is not None:
        placed = np.zeros_like(image)
        placed[overlap.target] = crop[overlap.source]
        assert np.array_equal(result.image[expected], placed[expected])


def test_inject_defect_rejects_bad_arguments():
    image = np.zeros((10, 10), np.uint8)
    crop, mask = np.zeros((3, 3), np.uint8), np.ones((3, 3), bool)
    with pytest.raises(ValueError, match="method"):
        inject_defect(image, crop, mask, (0, 0), method="blend")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="blend_margin"):
        inject_defect(image, crop, mask, (0, 0), blend_margin=-1)
    with pytest.raises(ValueError, match="mask is"):
        inject_defect(image, crop, np.ones((2, 3), bool), (0, 0))
    with pytest.raises(ValueError, match="agree in channels"):
        inject_defect(image, np.zeros((3, 3, 3), np.uint8), mask, (0, 0))


def test_write_class_checks_the_mask_dtype():
    label = np.zeros((4, 4), bool)
    label[1, 1] = True
    assert write_class(np.zeros((4, 4, 1), np.uint16), label, 300)[1, 1, 0] == 300
    assert write_class(np.zeros((4, 4), bool), label, 1)[1, 1]
    with pytest.raises(ValueError, match="bool mask can only hold class 1"):
        write_class(np.zeros((4, 4), bool), label, 2)
    with pytest.raises(ValueError, match="does not fit the mask dtype uint8"):
        write_class(np.zeros((4, 4), np.uint8), label, 300)
    with pytest.raises(ValueError, match="integer"):
        write_class(np.zeros((4, 4), np.float32), label, 1)


# ------------------------------------------------------------------------------------ planning with a bank
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", [None, 3])
def test_plan_injection_matches_the_target_and_fits(dtype, channels):
    bank = _bank(dtype, None)  # a gray bank
    rng = np.random.default_rng(3)
    target = _image(rng, (30, 40), dtype, channels)
    for size_mode in ("relative", "absolute"):
        for placement in ("random", "source"):
            plan = plan_injection(
                bank, 2, target, rng, size_mode=size_mode, placement=placement, poisson_p=0.0, blend_margin=2
            )
            assert plan.crop.dtype == target.dtype and plan.crop.ndim == target.ndim
            assert plan.method == "paste" and plan.entry.class_id == 2 and plan.class_id == 2
            result = inject_defect(target, plan.crop, plan.mask, plan.top_left, method="paste")
            assert result.label.sum() == plan.mask.sum()  # the whole defect lies inside the target
            if size_mode == "relative":
                assert plan.scale == pytest.approx((30 / 60, 40 / 80), rel=0.2)
            else:
                assert plan.scale == (1.0, 1.0)


def test_plan_injection_relative_keeps_share_absolute_keeps_pixels():
    bank = _bank(np.uint8, None, hw=(60, 80))
    entry = bank.entries_of(1)[0]
    for size_mode, target_hw, expected in (("relative", (120, 160), 2 * entry.area_px), ("absolute", (120, 160), 1)):
        plan = plan_injection(
            bank, 1, np.zeros(target_hw, np.uint8), np.random.default_rng(0), entry=entry, size_mode=size_mode
        )
        area = int(plan.mask.sum())
        if size_mode == "relative":
            assert area == 4 * entry.area_px  # twice the size on both axes
        else:
            assert area == entry.area_px and expected == 1


def test_choose_entry_absolute_names_class_target_and_closest_defect():
    bank = _bank(np.uint8, None)
    rng = np.random.default_rng(0)
    for _ in range(20):
        entry = choose_entry(bank, 1, (7, 100), "absolute", rng)
        _, y0, _, y1 = mask_bbox(entry.mask)
        assert y1 - y0 <= 7
    with pytest.raises(ValueError, match=r"no 'c1' defect \(class 1\) fits images\[3\] \(5x5\).*closest is 6x10"):
        choose_entry(bank, 1, (5, 5), "absolute", rng, "images[3]")


def test_plan_injection_with_blend_margin_keeps_context_for_poisson():
    bank = _bank(np.uint8, None)
    plan = plan_injection(
        bank, 1, np.zeros((60, 80), np.uint8), np.random.default_rng(0), size_mode="absolute", blend_margin=3
    )
    region = dilate_mask(np.pad(plan.mask, 3), 3)
    assert region.sum() > plan.mask.sum()
    x0, y0, x1, y1 = mask_bbox(plan.mask)
    h, w = plan.mask.shape
    assert min(y0, x0, h - y1, w - x1) >= 3  # context of blend_margin + 1 where the source allows it


# ------------------------------------------------------------------------------------ Poisson injection
@settings(max_examples=20)
@given(
    dtype=st.sampled_from(DTYPES),
    channels=st.sampled_from([None, 1, 3]),
    target=st.tuples(st.integers(12, 40), st.integers(12, 40)),
    crop_hw=st.tuples(st.integers(3, 16), st.integers(3, 16)),
    top_left=st.tuples(st.integers(-6, 30), st.integers(-6, 30)),
    margin=st.integers(0, 3),
    mode=st.sampled_from(["normal", "mixed"]),
    seed=st.integers(0, 2**16),
)
def test_poisson_injection_changes_nothing_beyond_the_blend_margin(
    dtype, channels, target, crop_hw, top_left, margin, mode, seed
):
    rng = np.random.default_rng(seed)
    image = _image(rng, target, dtype, channels)
    crop = _image(rng, crop_hw, dtype, channels)
    mask = np.zeros(crop_hw, bool)
    mask[1:-1, 1:-1] = rng.random((crop_hw[0] - 2, crop_hw[1] - 2)) < 0.7
    class_mask = np.zeros(target, np.uint16)
    _readonly(image, crop, mask, class_mask)
    before = (image.copy(), crop.copy(), mask.copy())
    result = inject_defect(
        image,
        crop,
        mask,
        top_left,
        class_mask=class_mask,
        class_id=4,
        method="poisson",
        blend_margin=margin,
        poisson_mode=mode,
    )
    assert all(np.array_equal(a, b) for a, b in zip(before, (image, crop, mask), strict=True))
    assert result.image.dtype == image.dtype and result.image.shape == image.shape
    expected = np.zeros(target, bool)
    overlap = placement_overlap(target, crop_hw, top_left)
    if overlap is not None:
        expected[overlap.target] = mask[overlap.source]
    assert np.array_equal(result.label, expected)  # the label is the defect's own mask, never grown
    assert np.array_equal(result.class_mask != 0, expected) and set(np.unique(result.class_mask)) <= {0, 4}
    changed = np.any((result.image != image).reshape(*target, -1), axis=-1)
    assert not changed[~dilate_mask(expected, margin)].any()


def test_poisson_injection_through_a_solver_that_touches_its_box_keeps_the_rest():
    """OpenCV's solver changes its whole bounding box; only the blend region may be taken from it."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    crop = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[5:35, 5:10] = mask[5:10, 5:35] = True  # an L: its box holds many pixels outside it
    result = inject_defect(image, crop, mask, (10, 10), method="poisson", blend_margin=1, poisson_method="opencv")
    changed = np.any(result.image != image, axis=-1)
    assert changed.any() and not changed[~dilate_mask(result.label, 1)].any()


def test_poisson_on_gray_stored_as_colour_equals_the_per_channel_solve():
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    crop = rng.integers(0, 256, (20, 20), dtype=np.uint8)
    mask = np.zeros((20, 20), bool)
    mask[4:16, 3:17] = True
    as_rgb = np.repeat(gray[..., None], 3, axis=2)
    crop_rgb = np.repeat(crop[..., None], 3, axis=2)
    colour = inject_defect(as_rgb, crop_rgb, mask, (9, 11), method="poisson", blend_margin=2).image
    single = inject_defect(gray, crop, mask, (9, 11), method="poisson", blend_margin=2).image
    assert all(np.array_equal(colour[..., c], single) for c in range(3))
    tinted = as_rgb.copy()
    tinted[..., 2] //= 2  # not gray any more: every channel is solved on its own
    out = inject_defect(tinted, crop_rgb, mask, (9, 11), method="poisson", blend_margin=2).image
    assert np.array_equal(out[..., 0], single) and not np.array_equal(out[..., 2], single)
