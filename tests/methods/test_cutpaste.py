"""CutPaste: exact footprint masks, whole scars, untouched surroundings, dtypes, YAML."""

from __future__ import annotations

import math

import albumentations as A
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from albu_defects import CutPaste
from albu_defects.core.color import ColorJitterFactors
from albu_defects.methods.cutpaste.functional import (
    cut_paste,
    cutpaste_patch_size,
    draw_aspect_ratio,
    max_scar_extent,
    rotated_footprint,
    scar_extent,
)

DTYPES = [np.uint8, np.uint16, np.float32]
CHANNELS = [None, 1, 3, 5]


def random_image(shape: tuple[int, ...], dtype: type, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = {np.uint8: 255, np.uint16: 65535, np.float32: 1.0}[dtype]
    return (rng.random(shape) * scale).astype(dtype)


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    diff = a != b
    return diff.any(axis=2) if diff.ndim == 3 else diff


# ----------------------------------------------------------------------------- geometry
@given(height=st.integers(1, 30), width=st.integers(1, 30), angle=st.floats(-180, 180))
def test_rotated_footprint_is_the_whole_rotated_rectangle(height, width, angle):
    footprint = rotated_footprint(height, width, angle)
    assert footprint.shape == scar_extent(height, width, angle)
    # pixel centres inside a rotated h x w rectangle: its area, up to about one perimeter
    assert abs(int(footprint.sum()) - height * width) <= height + width + 2
    theta = math.radians(angle)
    bound_rows = height * abs(math.cos(theta)) + width * abs(math.sin(theta))
    assert bound_rows - 1e-6 <= footprint.shape[0] < bound_rows + 1  # the tight canvas


@given(
    heights=st.tuples(st.integers(1, 30), st.integers(1, 30)).map(sorted),
    widths=st.tuples(st.integers(1, 30), st.integers(1, 30)).map(sorted),
    angles=st.tuples(st.floats(-180, 180), st.floats(-180, 180)).map(sorted),
)
def test_max_scar_extent_bounds_every_draw(heights, widths, angles):
    rows, cols = max_scar_extent(heights, widths, angles)
    for angle in np.linspace(angles[0], angles[1], 181):
        for h in range(heights[0], heights[1] + 1, 3):
            r, c = scar_extent(h, widths[1], float(angle))
            assert r <= rows and c <= cols
    fine = [scar_extent(heights[1], widths[1], float(a)) for a in np.linspace(angles[0], angles[1], 5001)]
    assert rows <= max(r for r, _ in fine) + 1 and cols <= max(c for _, c in fine) + 1  # and tight


def test_cutpaste_patch_size_and_aspect_draws():
    assert cutpaste_patch_size((100, 200), 0.1, 2.0) == (32, 63)  # area 2000, width / height = 2
    assert cutpaste_patch_size((10, 10), 0.9, 20.0) == (2, 10)  # clipped to the image
    h, w = cutpaste_patch_size((100, 100), 0.15, 3.3)
    assert w > h and abs(h * w - 1500) < h + w  # width / height, never swapped
    rng = np.random.default_rng(0)
    draws = np.array([draw_aspect_ratio((0.3, 3.3), rng) for _ in range(2000)])
    assert 0.45 < (draws < 1).mean() < 0.55 and draws.min() >= 0.3 and draws.max() <= 3.3
    assert all(2 <= draw_aspect_ratio((2, 3), rng) <= 3 for _ in range(50))


@given(
    height=st.integers(2, 14),
    width=st.integers(2, 14),
    angle=st.floats(-60, 60),
    source=st.tuples(st.integers(0, 8), st.integers(0, 8)),
    seed=st.integers(0, 1000),
)
def test_cut_paste_changes_exactly_the_footprint(height, width, angle, source, seed):
    image = random_image((48, 50, 3), np.float32, seed)  # distinct values: every pasted pixel differs
    image.setflags(write=False)
    target = (28, 28)  # disjoint from every source window
    y, x = source
    out = cut_paste(image, (x, y, x + width, y + height), target, angle, ColorJitterFactors())
    rows, cols = scar_extent(height, width, angle)
    footprint = np.zeros((48, 50), bool)
    footprint[28 : 28 + rows, 28 : 28 + cols] = rotated_footprint(height, width, angle)
    np.testing.assert_array_equal(changed(out, image), footprint)
    if angle == 0:
        np.testing.assert_array_equal(
            out[28 : 28 + height, 28 : 28 + width], image[source[0] :, source[1] :][:height, :width]
        )


def test_cut_paste_rejects_placements_outside_the_image():
    image = np.zeros((20, 20), np.uint8)
    with pytest.raises(ValueError, match="source"):
        cut_paste(image, (0, 15, 4, 25), (0, 0))  # a 10x4 box below the image
    with pytest.raises(ValueError, match="source"):
        cut_paste(image, (4, 0, 4, 10), (0, 0))  # an empty box
    with pytest.raises(ValueError, match="target_top_left"):
        cut_paste(image, (0, 0, 4, 10), (12, 0))


# ----------------------------------------------------------------------------- the transform
@given(
    variant=st.sampled_from(["normal", "scar"]),
    dtype=st.sampled_from(DTYPES),
    channels=st.sampled_from(CHANNELS),
    size=st.tuples(st.integers(34, 90), st.integers(34, 90)),
    seed=st.integers(0, 10_000),
)
def test_cutpaste_outputs(variant, dtype, channels, size, seed):
    shape = size if channels is None else (*size, channels)
    image = random_image(shape, dtype, seed)
    mask = np.zeros(size, np.uint8)
    mask[:3, :3] = 4
    image.setflags(write=False)
    mask.setflags(write=False)
    before = image.copy()
    out = A.Compose([CutPaste(variant=variant, label=2, mask_class_id=7, p=1.0)], seed=seed)(image=image, mask=mask)
    np.testing.assert_array_equal(image, before)
    assert out["image"].dtype == image.dtype and out["image"].shape == image.shape
    anomaly = out["anomaly_mask"]
    assert anomaly.shape == size and anomaly.any() and out["anomaly_label"] == 2
    assert not (changed(out["image"], image) & ~anomaly).any()  # outside the footprint: exactly unchanged
    expected = mask.copy()
    expected[anomaly] = 7
    np.testing.assert_array_equal(out["mask"], expected)
    ys, xs = np.nonzero(anomaly)
    box_area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    if variant == "normal":
        assert anomaly.sum() == box_area  # a full rectangle
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert 0.02 * size[0] * size[1] - h - w - 1 <= h * w <= 0.15 * size[0] * size[1] + h + w + 1
    else:
        assert 2 * 10 - 14 <= anomaly.sum() <= 16 * 25 + 43


@given(
    height=st.integers(10, 25),
    width=st.integers(2, 16),
    angle=st.floats(-45, 45),
    seed=st.integers(0, 10_000),
)
def test_scar_always_lands_whole(height, width, angle, seed):
    """Even on an image exactly the size of the rotated scar, the footprint is never clipped."""
    rows, cols = scar_extent(height, width, angle)
    shape = (max(rows, height), max(cols, width))
    transform = CutPaste(
        variant="scar",
        scar_height_range=(height, height),
        scar_width_range=(width, width),
        rotation_range=(angle, angle),
        p=1.0,
    )
    out = A.Compose([transform], seed=seed)(image=random_image(shape, np.uint8, seed))
    assert out["anomaly_mask"].sum() == rotated_footprint(height, width, angle).sum()


def test_scar_target_uses_the_rotated_extent_near_the_far_edges():
    transform = CutPaste(variant="scar", scar_height_range=(25, 25), scar_width_range=(16, 16), p=1.0)
    rows, cols = max_scar_extent((25, 25), (16, 16), (-45, 45))
    image = random_image((rows, cols), np.uint8)
    for seed in range(40):
        out = A.Compose([transform], seed=seed)(image=image)
        ys, xs = np.nonzero(out["anomaly_mask"])
        assert abs(int(out["anomaly_mask"].sum()) - 25 * 16) <= 25 + 16 + 2
        assert ys.max() < rows and xs.max() < cols


def test_cutpaste_on_grayscale_and_normalised_float():
    gray = random_image((64, 64), np.uint8)
    for variant in ("normal", "scar"):
        out = A.Compose([CutPaste(variant=variant, p=1.0)], seed=1)(image=gray)
        assert out["image"].shape == (64, 64) and out["anomaly_mask"].any()
    normalised = (random_image((64, 64, 3), np.float32) - 0.5) / 0.25  # values about -2..2
    with pytest.raises(ValueError, match=r"A\.Normalize"):  # float32 images hold [0, 1]: normalise afterwards
        A.Compose([CutPaste(p=1.0)], seed=2)(image=normalised)
    bright = 0.9 + 0.1 * random_image((64, 64, 3), np.float32)
    out = A.Compose([CutPaste(brightness=(1.5, 1.5), p=1.0)], seed=2)(image=bright)
    assert out["image"].max() == 1.0 and out["image"].min() >= 0.0  # the jitter's overshoot is clipped


def test_cutpaste_bool_mask_geometry_and_skip():
    image = random_image((50, 60, 3), np.uint8)
    compose = A.Compose(
        [CutPaste(mask_class_id=1, p=1.0)],
        seed=4,
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=[]),
        keypoint_params=A.KeypointParams(format="xy"),
    )
    out = compose(image=image, mask=np.zeros((50, 60), bool), bboxes=[[1, 2, 30, 40]], keypoints=[[3.0, 4.0]])
    np.testing.assert_array_equal(out["mask"], out["anomaly_mask"])
    np.testing.assert_allclose(out["bboxes"], [[1, 2, 30, 40]])
    np.testing.assert_allclose(out["keypoints"], [[3.0, 4.0]])
    skipped = A.Compose([CutPaste(p=0.0)])(image=image)
    assert skipped["anomaly_label"] == 0 and not skipped["anomaly_mask"].any()
    assert "mask" not in A.Compose([CutPaste(p=1.0)])(image=image)


def test_cutpaste_is_reproducible_and_round_trips_through_yaml(tmp_path):
    image = random_image((80, 80, 3), np.uint8)
    for variant in ("normal", "scar"):
        transform = CutPaste(variant=variant, rotation_range=[-30, 60], p=1.0)
        outs = [A.Compose([transform], seed=9)(image=image)["image"] for _ in range(2)]
        np.testing.assert_array_equal(*outs)
        assert not np.array_equal(outs[0], A.Compose([transform], seed=10)(image=image)["image"])
        compose = A.Compose([transform], seed=3)
        path = tmp_path / f"{variant}.yaml"
        A.save(compose, path, data_format="yaml")
        assert "albu_defects.CutPaste" in path.read_text()
        loaded = A.load(path, data_format="yaml")
        loaded.set_random_seed(3)
        for _ in range(3):
            a, b = compose(image=image), loaded(image=image)
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["anomaly_mask"], b["anomaly_mask"])


def test_cutpaste_rejects_an_image_smaller_than_the_scar():
    with pytest.raises(ValueError, match=r"image is 20x40 .*scar_height_range"):
        A.Compose([CutPaste(variant="scar", p=1.0)])(image=np.zeros((20, 40), np.uint8))
    with pytest.raises(ValueError, match="mask_class_id=300"):
        A.Compose([CutPaste(mask_class_id=300, p=1.0)])(
            image=np.zeros((40, 40), np.uint8), mask=np.zeros((40, 40), np.uint8)
        )


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"variant": "patch"}, "variant"),
        ({"area_ratio_range": (0.2, 0.1)}, "area_ratio_range"),
        ({"aspect_ratio_range": (0.0, 1.0)}, "aspect_ratio_range"),
        ({"scar_width_range": (0, 4)}, "scar_width_range"),
        ({"scar_height_range": (5.5, 8)}, "scar_height_range"),
        ({"rotation_range": (-200, 0)}, "rotation_range"),
        ({"hue": 0.7}, "hue"),
        ({"brightness": -0.1}, "brightness"),
        ({"label": 0}, "label"),
    ],
)
def test_cutpaste_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CutPaste(**kwargs)
