"""CropLiq: fixed-border fold-free liquify of a patch inside the object region."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from albu_defects import CropLiq
from albu_defects.methods.cropliq.functional import (
    MIN_JACOBIAN_DET,
    WARP_KINDS,
    Region,
    bbox_to_pixels,
    draw_patch,
    draw_warp_field,
    fold_free_scale,
    foreground_mask,
    liquify,
    push_field,
)

DTYPES = [np.uint8, np.uint16, np.float32]
CHANNELS = [None, 1, 3, 5]  # (H, W), (H, W, 1), colour, C > 3


def random_image(shape: tuple[int, ...], dtype: type, seed: int = 0) -> np.ndarray:
    """Smooth-ish random image (a warp of pure noise would change almost every pixel, hiding nothing)."""
    rng = np.random.default_rng(seed)
    small = rng.random((max(2, shape[0] // 8), max(2, shape[1] // 8), *shape[2:]), dtype=np.float32)
    image = cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC).reshape(shape)
    image = np.clip(image, 0, 1) * 0.7 + 0.3 * rng.random(shape, dtype=np.float32)
    scale = {np.uint8: 255, np.uint16: 65535, np.float32: 1.0}[dtype]
    return (image * scale).astype(dtype)


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    diff = a != b
    return diff.any(axis=2) if diff.ndim == 3 else diff


def corner_determinants(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """det of the warp p -> p + D(p) at the four corners of every pixel cell, by finite differences."""
    ux, vx = dx[:, 1:] - dx[:, :-1], dy[:, 1:] - dy[:, :-1]  # d/dx along rows
    uy, vy = dx[1:, :] - dx[:-1, :], dy[1:, :] - dy[:-1, :]  # d/dy along columns
    dets = []
    for row in (0, 1):
        for col in (0, 1):
            a, c = 1 + ux[row : row + ux.shape[0] - 1], vx[row : row + vx.shape[0] - 1]
            b, d = uy[:, col : col + uy.shape[1] - 1], 1 + vy[:, col : col + vy.shape[1] - 1]
            dets.append(a * d - b * c)
    return np.stack(dets)


# ----------------------------------------------------------------------------- the field
@given(
    kind=st.sampled_from(WARP_KINDS),
    h=st.integers(8, 90),
    w=st.integers(8, 90),
    strength=st.tuples(st.floats(0.05, 1.0), st.floats(0.05, 1.0)).map(sorted),
    seed=st.integers(0, 2**32 - 1),
)
def test_field_is_zero_on_the_border_and_fold_free(kind, h, w, strength, seed):
    dx, dy = draw_warp_field(h, w, kind, tuple(strength), np.random.default_rng(seed))
    assert dx.shape == dy.shape == (h, w) and dx.dtype == np.float32
    for field in (dx, dy):
        assert not field[[0, -1], :].any() and not field[:, [0, -1]].any()
    dets = corner_determinants(dx.astype(np.float64), dy.astype(np.float64))
    assert dets.min() > 0
    assert dets.min() >= MIN_JACOBIAN_DET - 1e-3
    gxy, gxx = np.gradient(dx.astype(np.float64))  # central differences agree
    gyy, gyx = np.gradient(dy.astype(np.float64))
    assert ((1 + gxx) * (1 + gyy) - gxy * gyx).min() > 0


def test_fold_free_scale_is_what_keeps_a_strong_push_from_folding():
    dx, dy = push_field(40, 40, (20.0, 20.0), 0.3, distance=25.0, sigma=4.0)
    assert corner_determinants(dx, dy).min() < 0  # unscaled, this push folds
    scale = fold_free_scale(dx, dy)
    assert 0 < scale < 1
    assert corner_determinants(scale * dx, scale * dy).min() >= MIN_JACOBIAN_DET - 1e-4
    # the largest safe scale: a little more and the floor is crossed
    assert corner_determinants(1.05 * scale * dx, 1.05 * scale * dy).min() < MIN_JACOBIAN_DET
    gentle = push_field(40, 40, (20.0, 20.0), 0.3, distance=1.0, sigma=10.0)
    assert fold_free_scale(*gentle) == 1.0


@pytest.mark.parametrize("kind", WARP_KINDS)
def test_every_warp_kind_actually_moves_pixels(kind):
    rng = np.random.default_rng(1)
    moved = [np.hypot(*draw_warp_field(64, 64, kind, (0.3, 0.6), rng)).max() for _ in range(10)]
    assert min(moved) > 1.0


# ----------------------------------------------------------------------------- the warp
@given(
    dtype=st.sampled_from(DTYPES),
    channels=st.sampled_from(CHANNELS),
    y=st.integers(0, 20),
    x=st.integers(0, 20),
    size=st.integers(8, 40),
    kind=st.sampled_from(WARP_KINDS),
    seed=st.integers(0, 1000),
)
def test_liquify_changes_only_moved_pixels_inside_the_patch(dtype, channels, y, x, size, kind, seed):
    shape = (64, 70) if channels is None else (64, 70, channels)
    image = random_image(shape, dtype, seed)
    image.setflags(write=False)
    dx, dy = draw_warp_field(size, size + 3, kind, (0.3, 0.6), np.random.default_rng(seed))
    out = liquify(image, (y, x), dx, dy, move_threshold=0.5)
    assert out.dtype == image.dtype and out.shape == image.shape
    diff = changed(out, image)
    inside = np.zeros(diff.shape, bool)
    inside[y + 1 : y + size - 1, x + 1 : x + size + 2] = True  # the patch without its border ring
    assert not (diff & ~inside).any()  # outside the patch and on its border: exactly unchanged
    moved = np.zeros(diff.shape, bool)
    moved[y : y + size, x : x + size + 3] = np.hypot(dx, dy) > 0.5
    assert not (diff & ~moved).any()


def test_liquify_rejects_a_patch_outside_the_image():
    dx = np.zeros((10, 10), np.float32)
    with pytest.raises(ValueError, match="inside the 12x12 image"):
        liquify(np.zeros((12, 12), np.uint8), (5, 0), dx, dx)


# ----------------------------------------------------------------------------- regions
@given(
    seed=st.integers(0, 10_000),
    area=st.tuples(st.floats(0.01, 1.0), st.floats(0.01, 1.0)).map(sorted),
    aspect=st.tuples(st.floats(0.2, 5.0), st.floats(0.2, 5.0)).map(sorted),
)
def test_sampled_patch_lies_inside_the_region(seed, area, aspect):
    rng = np.random.default_rng(seed)
    blobs = cv2.GaussianBlur(rng.random((80, 90), dtype=np.float32), (0, 0), 6) > 0.5
    region = Region.from_mask(blobs)
    if region is None or not region.fits(8, 8):
        return
    patch = draw_patch(region, tuple(area), tuple(aspect), rng)
    assert patch is not None
    x0, y0, x1, y1 = patch  # a box: (x_min, y_min, x_max, y_max)
    assert y1 - y0 >= 8 and x1 - x0 >= 8
    assert blobs[y0:y1, x0:x1].all()
    box = Region.from_box((7, 5, 60, 50))
    x0, y0, x1, y1 = draw_patch(box, tuple(area), tuple(aspect), rng)
    assert y0 >= 5 and y1 <= 50 and x0 >= 7 and x1 <= 60


def test_bbox_to_pixels_keeps_whole_pixels_only():
    assert bbox_to_pixels([0.1, 0.2, 0.5, 0.75], (40, 50)) == (5, 8, 25, 30)
    assert bbox_to_pixels([0.11, 0.0, 0.29, 1.0], (10, 100)) == (11, 0, 29, 10)


def disc_image(size: int = 160, radius: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < radius**2
    image = np.where(disc, 180, 40) + rng.normal(0, 12, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8), disc


def test_foreground_mask_finds_the_object():
    image, disc = disc_image()
    found = foreground_mask(image)
    assert (found & disc).sum() / (found | disc).sum() > 0.9
    assert not foreground_mask(np.full((30, 30), 7, np.uint8)).any()  # flat: nothing found


# ----------------------------------------------------------------------------- the transform
def run(transform, seed=0, **data):
    return A.Compose([transform], seed=seed, bbox_params=A.BboxParams(format="pascal_voc", label_fields=[]))(**data)


@given(
    dtype=st.sampled_from(DTYPES),
    channels=st.sampled_from(CHANNELS),
    region=st.sampled_from(["auto", "image", "mask", "bbox"]),
    warp=st.sampled_from(["random", *WARP_KINDS]),
    seed=st.integers(0, 10_000),
)
def test_cropliq_outputs(dtype, channels, region, warp, seed):
    shape = (72, 80) if channels is None else (72, 80, channels)
    image = random_image(shape, dtype, seed)
    object_mask = np.zeros((72, 80), np.uint8)
    object_mask[10:60, 20:70] = 1
    mask = np.zeros((72, 80), np.uint8)
    mask[:5, :5] = 3  # an existing label away from the object
    for array in (image, object_mask, mask):
        array.setflags(write=False)
    before = image.copy()
    out = run(
        CropLiq(region=region, warp=warp, mask_class_id=2, label=4, p=1.0),
        seed,
        image=image,
        mask=mask,
        object_mask=object_mask,
        bboxes=[[20, 10, 70, 60]],
    )
    np.testing.assert_array_equal(image, before)
    assert out["image"].dtype == image.dtype and out["image"].shape == image.shape
    anomaly = out["anomaly_mask"]
    assert anomaly.dtype == bool and anomaly.shape == (72, 80) and anomaly.any()
    assert out["anomaly_label"] == 4
    assert not (changed(out["image"], image) & ~anomaly).any()
    if region in ("mask", "bbox"):
        assert not (anomaly & (object_mask == 0)).any()  # the patch lies inside the object
    expected = mask.copy()
    expected[anomaly] = 2
    np.testing.assert_array_equal(out["mask"], expected)
    np.testing.assert_array_equal(out["object_mask"], object_mask)


def test_cropliq_auto_region_stays_on_the_object():
    image, disc = disc_image()
    for seed in range(8):
        out = run(CropLiq(region="auto", p=1.0), seed, image=image)
        assert out["anomaly_mask"].any() and not (out["anomaly_mask"] & ~disc).any()
    flat = np.full((40, 40), 90, np.uint8)  # no object found: the whole image is used, and a warp moves
    out = run(CropLiq(region="auto", p=1.0), 0, image=flat)  # only equal pixels: no anomaly to label
    assert out["anomaly_label"] == 0 and not out["anomaly_mask"].any()
    np.testing.assert_array_equal(out["image"], flat)
    speck = np.full((60, 60), 20, np.uint8)
    speck[30:34, 30:34] = 250  # an "object" too small for an 8x8 patch: the whole image is used
    for seed in range(5):
        out = run(CropLiq(region="auto", p=1.0), seed, image=speck)
        moved = changed(out["image"], speck)
        assert not (moved & ~out["anomaly_mask"]).any()
        assert (out["anomaly_label"] != 0) == bool(out["anomaly_mask"].any()) == bool(moved.any())


def test_cropliq_on_the_bundled_samples(samples):
    for s in samples[::3]:
        out = run(CropLiq(p=1.0), 1, image=s.image, mask=s.class_mask)
        assert out["anomaly_mask"].any()
        assert not (changed(out["image"], s.image) & ~out["anomaly_mask"]).any()
        np.testing.assert_array_equal(out["mask"], s.class_mask)  # no mask_class_id: the mask is untouched


def test_cropliq_bbox_choice_first_and_largest():
    image = random_image((100, 100), np.uint8)
    bboxes = [[0, 0, 30, 30], [40, 40, 100, 100]]
    for choice, box in (("first", (0, 0, 30, 30)), ("largest", (40, 40, 100, 100))):
        for seed in range(4):
            out = run(CropLiq(region="bbox", bbox_choice=choice, p=1.0), seed, image=image, bboxes=bboxes)
            inside = np.zeros((100, 100), bool)
            inside[box[1] : box[3], box[0] : box[2]] = True
            assert out["anomaly_mask"].any() and not (out["anomaly_mask"] & ~inside).any()


def test_cropliq_passes_geometry_through_and_has_no_mask_when_none_given():
    image = random_image((64, 64, 3), np.uint8)
    compose = A.Compose(
        [CropLiq(p=1.0)],
        seed=3,
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]),
        keypoint_params=A.KeypointParams(format="xy"),
    )
    out = compose(image=image, bboxes=[[3, 4, 30, 40]], labels=[1], keypoints=[[5.5, 6.5]])
    np.testing.assert_allclose(out["bboxes"], [[3, 4, 30, 40]])
    np.testing.assert_allclose(out["keypoints"], [[5.5, 6.5]])
    assert "mask" not in out


def test_cropliq_skipped_by_p_still_writes_the_anomaly_keys():
    image = random_image((40, 50), np.uint8)
    out = run(CropLiq(p=0.0), 0, image=image)
    assert out["anomaly_label"] == 0 and out["anomaly_mask"].shape == (40, 50) and not out["anomaly_mask"].any()
    np.testing.assert_array_equal(out["image"], image)


def test_cropliq_merges_into_a_bool_mask_and_keeps_a_declared_object_mask():
    image = random_image((64, 64), np.float32)
    object_mask = np.ones((64, 64), bool)
    compose = A.Compose(
        [CropLiq(region="mask", mask_class_id=1, p=1.0)], seed=2, additional_targets={"object_mask": "mask"}
    )
    out = compose(image=image, mask=np.zeros((64, 64), bool), object_mask=object_mask)
    np.testing.assert_array_equal(out["mask"], out["anomaly_mask"])
    np.testing.assert_array_equal(out["object_mask"], object_mask)  # read, never written


def test_cropliq_is_reproducible_and_round_trips_through_yaml(tmp_path):
    image = random_image((96, 96, 3), np.uint8)
    transform = CropLiq(area_range=[0.05, 0.2], warp="strokes", strength_range=[0.4, 0.8], p=1.0)
    outs = [A.Compose([transform], seed=11)(image=image)["image"] for _ in range(2)]
    np.testing.assert_array_equal(*outs)
    other = A.Compose([transform], seed=12)(image=image)["image"]
    assert not np.array_equal(outs[0], other)
    compose = A.Compose([transform], seed=5)
    A.save(compose, tmp_path / "p.yaml", data_format="yaml")
    assert "albu_defects.CropLiq" in (tmp_path / "p.yaml").read_text()
    loaded = A.load(tmp_path / "p.yaml", data_format="yaml")
    loaded.set_random_seed(5)
    for _ in range(3):
        np.testing.assert_array_equal(compose(image=image)["image"], loaded(image=image)["image"])


@pytest.mark.parametrize(
    ("kwargs", "data", "fragment"),
    [
        ({}, {"image": np.zeros((6, 40), np.uint8)}, "image is 6x40"),
        ({"region": "bbox"}, {"image": np.zeros((40, 40), np.uint8)}, "bboxes"),
        ({"region": "mask"}, {"image": np.zeros((40, 40), np.uint8)}, "'object_mask'"),
        ({"region": "mask"}, {"image": np.zeros((40, 40), np.uint8), "object_mask": np.zeros((40, 40), bool)}, "empty"),
        (
            {"region": "mask", "object_mask_key": "part"},
            {"image": np.zeros((40, 40), np.uint8), "part": np.eye(40, dtype=bool)},
            "too small",
        ),
        ({"region": "mask"}, {"image": np.zeros((40, 40), np.uint8), "object_mask": np.ones((30, 40), bool)}, "match"),
        ({"move_threshold": 80.0}, {"image": np.zeros((40, 40), np.uint8)}, "move_threshold"),
    ],
)
def test_cropliq_rejects_bad_inputs(kwargs, data, fragment):
    with pytest.raises(ValueError, match=fragment):
        A.Compose([CropLiq(p=1.0, **kwargs)], seed=0)(**data)


def test_cropliq_rejects_a_bbox_too_small_for_a_patch():
    compose = A.Compose([CropLiq(region="bbox", p=1.0)], bbox_params=A.BboxParams(format="pascal_voc"))
    with pytest.raises(ValueError, match="bbox"):
        compose(image=np.zeros((40, 40), np.uint8), bboxes=[[2, 2, 7, 30]])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"area_range": (0.0, 0.1)}, "area_range"),
        ({"area_range": (0.3, 0.1)}, "area_range"),
        ({"aspect_range": (-1.0, 2.0)}, "aspect_range"),
        ({"strength_range": (0.5, 1.5)}, "strength_range"),
        ({"warp": "melt"}, "warp"),
        ({"region": "everywhere"}, "region"),
        ({"move_threshold": 0.0}, "move_threshold"),
        ({"label": 0}, "label"),
        ({"mask_class_id": 0}, "mask_class_id"),
    ],
)
def test_cropliq_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CropLiq(**kwargs)
