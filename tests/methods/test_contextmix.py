"""ContextMix (numpy transform and pure functions) and BatchCompose: issue 4 acceptance.

Most properties are checked with *coordinate-coded* partners: partner pixel (y, x) holds the value
``1 + y * W + x`` and the host is 0, so every output pixel says whether it came from the partner
and from which partner pixel. The expected nearest source index is recomputed here in floating
point (pixel centres), independently of the integer formula in the module.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from albu_defects import BatchCompose, ContextMix
from albu_defects.methods.contextmix.functional import (
    bboxes_into_box,
    draw_boxes,
    mix_weights,
    nearest_source_index,
    occlude_bboxes,
    paste_resized,
    soft_labels,
)

KEY = "contextmix_metadata"


def coded_partner(height: int, width: int) -> np.ndarray:
    """uint16 partner whose pixel (y, x) holds 1 + y * width + x (never 0)."""
    return (1 + np.arange(height * width, dtype=np.int64).reshape(height, width)).astype(np.uint16)


def float_nearest(dst: int, src: int) -> np.ndarray:
    """Nearest source index of each destination pixel centre, in floating point."""
    return np.minimum(np.floor((np.arange(dst) + 0.5) * src / dst), src - 1).astype(int)


def read_only(*arrays: np.ndarray) -> None:
    for array in arrays:
        array.setflags(write=False)


def run(transform: ContextMix, seed: int = 0, compose_kwargs: dict | None = None, **data):
    return A.Compose([transform], seed=seed, **(compose_kwargs or {}))(**data)


# ------------------------------------------------------------------------------ pure functions
@given(
    height=st.integers(1, 60),
    width=st.integers(1, 60),
    draws=st.lists(st.floats(0, 1, exclude_max=True), min_size=3, max_size=3),
    alpha=st.floats(0.1, 4.0),
    box=st.sampled_from(["beta", "square", "fixed"]),
    box_size=st.floats(0.05, 1.0),
    min_side=st.integers(1, 6),
)
def test_sample_boxes_lie_inside_and_respect_min_side(height, width, draws, alpha, box, box_size, min_side):
    x0, y0, x1, y1 = draw_boxes(
        height, width, np.array(draws), alpha=alpha, box=box, box_size=box_size, min_box_side=min_side
    )
    assert 0 <= y0 <= y1 <= height and 0 <= x0 <= x1 <= width
    empty = y1 == y0 or x1 == x0
    assert empty == (y1 == y0 and x1 == x0)  # an empty box is empty in both directions
    if not empty:
        assert y1 - y0 >= min_side and x1 - x0 >= min_side
    weights = mix_weights(np.array([x0, y0, x1, y1]), height, width)
    assert np.isclose(weights.sum(), 1.0) and weights[1] == (y1 - y0) * (x1 - x0) / (height * width)


def test_box_kinds_follow_the_paper_variants():
    draws = np.array([[0.3, 0.5, 0.5]])
    fixed = draw_boxes(100, 200, draws, box="fixed", box_size=0.25, min_box_side=1)[0]
    assert (fixed[3] - fixed[1], fixed[2] - fixed[0]) == (50, 100)  # 25 % of the area, image aspect (h, w)
    square = draw_boxes(100, 200, draws, box="square", min_box_side=1)[0]
    assert square[2] - square[0] == square[3] - square[1]  # centred, so not clipped here
    # alpha = 1 makes lam uniform: u = 0.36 -> lam = 0.36 -> sides sqrt(0.64) = 0.8 of the image
    beta = draw_boxes(100, 200, np.array([0.36, 0.5, 0.5]), box="beta", min_box_side=1)
    assert (beta[3] - beta[1], beta[2] - beta[0]) == (80, 160)
    # boxes below min_box_side are skipped (empty), as the paper's code skips sides <= 2 px
    tiny = draw_boxes(100, 200, np.array([0.9999, 0.5, 0.5]), min_box_side=3)
    assert tiny[2] == tiny[0] and tiny[3] == tiny[1]


def test_one_hot_weights_and_soft_labels():
    box = np.array([0, 0, 10, 6])  # 60 of 100 pixels from the partner
    assert mix_weights(box, 10, 10, "one-hot").tolist() == [0.0, 1.0]
    assert mix_weights(np.array([0, 0, 5, 10]), 10, 10, "one-hot").tolist() == [1.0, 0.0]  # tie -> host
    soft = soft_labels(1, 3, np.array([0.25, 0.75]), 4, label_smoothing=0.2)
    assert soft.dtype == np.float32 and np.isclose(soft.sum(), 1.0)
    np.testing.assert_allclose(soft, [0.05, 0.05 + 0.25 * 0.8, 0.05, 0.05 + 0.75 * 0.8], rtol=1e-6)


def test_nearest_index_matches_pixel_centres():
    for src in (1, 2, 7, 64, 255):
        for dst in (1, 3, 8, 100):
            np.testing.assert_array_equal(nearest_source_index(np.arange(dst), src, dst), float_nearest(dst, src))


@pytest.mark.parametrize("channels", [None, 1, 3, 5])
@pytest.mark.parametrize("interpolation", [cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_AREA])
def test_paste_resized_keeps_layout_and_outside(channels, interpolation):
    shape = (20, 30) if channels is None else (20, 30, channels)
    host = np.full(shape, 7, np.float32)
    partner = np.random.default_rng(0).random((9, 13, *shape[2:])).astype(np.float32)
    read_only(host, partner)
    out = paste_resized(host, partner, (3, 2, 20, 12), interpolation)  # (x_min, y_min, x_max, y_max)
    assert out.shape == host.shape and out.dtype == host.dtype
    outside = np.ones((20, 30), bool)
    outside[2:12, 3:20] = False
    assert (out[outside] == 7).all()
    assert out[2:12, 3:20].min() >= 0 and out[2:12, 3:20].max() <= 1


# ------------------------------------------------------------------- the transform, pixels
@given(
    host_hw=st.tuples(st.integers(4, 40), st.integers(4, 40)),
    partner_hw=st.tuples(st.integers(1, 50), st.integers(1, 50)),
    layout=st.sampled_from(["gray", "one", "rgb", "many"]),
    seed=st.integers(0, 2**31 - 1),
    alpha=st.sampled_from([0.5, 1.0, 2.0]),
    box=st.sampled_from(["beta", "square", "fixed"]),
)
def test_output_pixels_come_from_host_outside_and_resized_partner_inside(host_hw, partner_hw, layout, seed, alpha, box):
    channels = {"gray": (), "one": (1,), "rgb": (3,), "many": (5,)}[layout]
    host = np.zeros(host_hw + channels, np.uint16)
    coded = coded_partner(*partner_hw)
    partner = np.broadcast_to(coded[..., None], partner_hw + channels).copy() if channels else coded
    host_mask = np.zeros(host_hw, np.int32)
    partner_mask = (coded % 5).astype(np.int32)
    read_only(host, partner, host_mask, partner_mask)
    transform = ContextMix(alpha=alpha, box=box, min_box_side=1, p=1.0)
    out = run(transform, seed, image=host, mask=host_mask, **{KEY: [{"image": partner, "mask": partner_mask}]})
    image = out["image"]
    assert image.shape == host.shape and image.dtype == host.dtype
    assert out["mask"].shape == host_mask.shape and out["mask"].dtype == host_mask.dtype

    x0, y0, x1, y1 = transform.params["box"]
    from_partner = (image if image.ndim == 2 else image[..., 0]) > 0
    # lambda_B is the exact fraction of output pixels that came from the partner
    assert np.isclose(out["mix_weights"][1], from_partner.mean(), atol=1e-6)
    assert np.isclose(out["mix_weights"].sum(), 1.0, atol=1e-6)
    # pixels outside the box are the host's, the box is the nearest-resized partner
    inside = np.zeros(host_hw, bool)
    inside[y0:y1, x0:x1] = True
    assert (from_partner == inside).all()
    if y1 > y0:
        rows = float_nearest(y1 - y0, partner_hw[0])
        cols = float_nearest(x1 - x0, partner_hw[1])
        expected = coded[rows[:, None], cols[None, :]]
        for c in range(image.shape[2] if image.ndim == 3 else 1):
            plane = image if image.ndim == 2 else image[..., c]
            np.testing.assert_array_equal(plane[y0:y1, x0:x1], expected)
        np.testing.assert_array_equal(out["mask"][y0:y1, x0:x1], partner_mask[rows[:, None], cols[None, :]])
    assert (out["mask"][~inside] == 0).all()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("shape", [(24, 32), (24, 32, 1), (24, 32, 3), (24, 32, 6)])
@pytest.mark.parametrize("interpolation", [cv2.INTER_NEAREST, cv2.INTER_LINEAR])
def test_dtype_and_shape_are_kept(dtype, shape, interpolation):
    rng = np.random.default_rng(1)
    scale = 1.0 if dtype == np.float32 else 200.0  # float32 images hold values in [0, 1]
    host = (rng.random(shape) * scale).astype(dtype)
    partner = (rng.random((17, 45, *shape[2:])) * scale).astype(dtype)
    out = run(
        ContextMix(p=1.0, interpolation=interpolation, min_box_side=1), 3, image=host, **{KEY: [{"image": partner}]}
    )
    assert out["image"].shape == shape and out["image"].dtype == dtype
    assert out["mix_weights"].dtype == np.float32 and out["mix_weights"].shape == (2,)


def test_same_seed_same_output_and_partner_choice_uses_the_seed():
    rng = np.random.default_rng(2)
    host = rng.integers(0, 255, (30, 40, 3), np.uint8)
    partners = [{"image": rng.integers(0, 255, (20 + k, 25, 3), np.uint8)} for k in range(4)]
    outs = [run(ContextMix(p=0.7), 11, image=host, **{KEY: partners}) for _ in range(2)]
    np.testing.assert_array_equal(outs[0]["image"], outs[1]["image"])
    np.testing.assert_array_equal(outs[0]["mix_weights"], outs[1]["mix_weights"])
    # several partners: over many calls every one of them is picked
    compose = A.Compose([ContextMix(p=1.0, min_box_side=1)], seed=5)
    seen = set()
    for _ in range(40):
        compose(image=host, **{KEY: partners})
        seen.add(compose.transforms[0].params["partner_image"].shape[0])
    assert seen == {20, 21, 22, 23}


def test_skipped_call_returns_the_same_keys():
    host = np.zeros((10, 10), np.uint8)
    partner = {"image": np.ones((5, 5), np.uint8), "label": 2}
    out = run(ContextMix(p=0.0, num_classes=3, label_smoothing=0.3), 0, image=host, label=1, **{KEY: [partner]})
    assert (out["image"] == 0).all()
    assert out["mix_weights"].tolist() == [1.0, 0.0]
    np.testing.assert_allclose(out["soft_label"], [0.1, 0.8, 0.1], rtol=1e-6)
    applied = run(ContextMix(p=1.0, num_classes=3), 0, image=host, label=1, **{KEY: [partner]})
    assert set(applied) == set(out)
    w = applied["mix_weights"]
    np.testing.assert_allclose(applied["soft_label"], [0, w[0], w[1]], rtol=1e-6)


def test_one_hot_label_mode():
    host = np.zeros((20, 20), np.uint8)
    partner = {"image": np.ones((8, 8), np.uint8), "label": 0}
    for seed in range(10):
        out = run(ContextMix(p=1.0, num_classes=2, label_mode="one-hot"), seed, image=host, label=1, **{KEY: [partner]})
        share = (out["image"] > 0).mean()
        expected = [1.0, 0.0] if share > 0.5 else [0.0, 1.0]  # label 1 is the host's
        assert out["soft_label"].tolist() == expected
        assert out["mix_weights"].tolist() == ([0.0, 1.0] if share > 0.5 else [1.0, 0.0])


# ------------------------------------------------------------------- bboxes and keypoints
def rect_mask(hw, rects, value=1):
    mask = np.zeros(hw, np.uint8)
    for x_min, y_min, x_max, y_max in rects:
        mask[y_min:y_max, x_min:x_max] = value
    return mask


@given(
    seed=st.integers(0, 2**31 - 1),
    host_rect=st.tuples(st.integers(0, 30), st.integers(0, 20), st.integers(1, 18), st.integers(1, 18)),
    partner_rect=st.tuples(st.integers(0, 20), st.integers(0, 30), st.integers(1, 16), st.integers(1, 16)),
    min_visibility=st.sampled_from([0.0, 0.3, 0.7]),
)
def test_bboxes_follow_the_pixels(seed, host_rect, partner_rect, min_visibility):
    host_hw, partner_hw = (40, 50), (46, 36)
    hx, hy, hw_, hh = host_rect
    host_box = [hx, hy, min(hx + hw_, 50), min(hy + hh, 40)]
    px, py, pw, ph = partner_rect
    partner_box = [px, py, min(px + pw, 36), min(py + ph, 46)]
    host_mask = rect_mask(host_hw, [host_box], 1)
    partner_mask = rect_mask(partner_hw, [partner_box], 2)
    host = np.zeros(host_hw, np.uint8)
    bbox_params = A.BboxParams("pascal_voc", label_fields=["cls"], min_visibility=min_visibility)
    transform = ContextMix(p=1.0, min_box_side=1)
    out = run(
        transform,
        seed,
        {"bbox_params": bbox_params},
        image=host,
        mask=host_mask,
        bboxes=[host_box],
        cls=["host"],
        **{
            KEY: [
                {
                    "image": np.ones(partner_hw, np.uint8),
                    "mask": partner_mask,
                    "bboxes": [partner_box],
                    "cls": ["partner"],
                }
            ]
        },
    )
    boxes = {label: np.array(box) for box, label in zip(out["bboxes"], out["cls"], strict=True)}
    for box in boxes.values():
        assert 0 <= box[0] <= box[2] <= 50 and 0 <= box[1] <= box[3] <= 40
    # host box: the tight box of its visible pixels, or dropped under the visibility threshold
    visible = out["mask"] == 1
    area = (host_box[2] - host_box[0]) * (host_box[3] - host_box[1])
    if visible.sum() == 0 or visible.sum() / area < min_visibility:
        assert "host" not in boxes
    else:
        ys, xs = np.nonzero(visible)
        np.testing.assert_allclose(boxes["host"], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1e-4)
    # partner box: scaled into the pasted box, within a pixel of its pasted pixels
    x0, y0, x1, y1 = transform.params["box"]
    pasted = out["mask"] == 2
    assert ("partner" in boxes) == (y1 > y0)
    if y1 == y0:
        return
    box = boxes["partner"]
    assert x0 - 1e-4 <= box[0] and box[2] <= x1 + 1e-4 and y0 - 1e-4 <= box[1] and box[3] <= y1 + 1e-4
    if pasted.any():
        ys, xs = np.nonzero(pasted)
        np.testing.assert_allclose(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1.0)


def test_occlusion_rule_clips_side_strips_and_keeps_holes():
    hw = (100, 100)
    # box (x 10..50, y 10..50) normalised; the paste covers its left half over its full height
    bboxes = np.array([[0.1, 0.1, 0.5, 0.5, 7.0]])
    left = occlude_bboxes(bboxes, (0, 0, 30, 60), hw)
    np.testing.assert_allclose(left, [[0.3, 0.1, 0.5, 0.5, 7.0]], rtol=1e-6)
    hole = occlude_bboxes(bboxes, (20, 20, 40, 40), hw)  # a hole in the middle: box unchanged
    np.testing.assert_allclose(hole, bboxes, rtol=1e-6)
    assert occlude_bboxes(bboxes, (0, 0, 100, 100), hw).shape == (0, 5)  # fully covered: dropped
    assert occlude_bboxes(bboxes, (0, 0, 40, 60), hw, min_visibility=0.3).shape == (0, 5)  # 25 % visible
    moved = bboxes_into_box(np.array([[0.0, 0.0, 1.0, 0.5]]), (20, 10, 60, 30), hw)
    np.testing.assert_allclose(moved, [[0.2, 0.1, 0.6, 0.2]], rtol=1e-6)


def test_keypoints_are_removed_under_the_box_and_partner_points_land_on_their_pixels():
    host_hw, partner_hw = (40, 60), (30, 24)
    coded = coded_partner(*partner_hw)
    host_points = [(x + 0.5, y + 0.5) for y in range(0, 40, 3) for x in range(0, 60, 3)]
    partner_points = [(x + 0.5, y + 0.5) for y in range(0, 30, 2) for x in range(0, 24, 2)]
    for seed in range(8):
        transform = ContextMix(p=1.0, min_box_side=1)
        out = run(
            transform,
            seed,
            {"keypoint_params": A.KeypointParams("xy", label_fields=["who"], remove_invisible=False)},
            image=np.zeros(host_hw, np.uint16),
            keypoints=host_points,
            who=["host"] * len(host_points),
            **{KEY: [{"image": coded, "keypoints": partner_points, "who": ["partner"] * len(partner_points)}]},
        )
        x0, y0, x1, y1 = transform.params["box"]
        sy, sx = partner_hw[0] / (y1 - y0), partner_hw[1] / (x1 - x0)
        kept = [tuple(p) for p, who in zip(out["keypoints"], out["who"], strict=True) if who == "host"]
        assert kept == [p for p in host_points if not (x0 <= p[0] < x1 and y0 <= p[1] < y1)]
        moved = [p for p, who in zip(out["keypoints"], out["who"], strict=True) if who == "partner"]
        assert len(moved) == len(partner_points)
        for (x, y), (px, py) in zip(moved, partner_points, strict=True):
            assert x0 <= x < x1 and y0 <= y < y1
            value = int(out["image"][int(y), int(x)]) - 1  # which partner pixel is shown there
            assert abs(value // partner_hw[1] - py) <= sy / 2 + 1 and abs(value % partner_hw[1] - px) <= sx / 2 + 1


def test_masks_target_pastes_every_partner_mask():
    host = np.zeros((16, 16), np.uint8)
    masks = [np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8)]
    partner = {
        "image": np.ones((4, 4), np.uint8),
        "masks": [np.full((4, 4), 3, np.uint8), np.full((4, 4), 4, np.uint8)],
    }
    transform = ContextMix(p=1.0, min_box_side=1)
    out = run(transform, 2, image=host, masks=masks, **{KEY: [partner]})
    x0, y0, x1, y1 = transform.params["box"]
    for value, mask in zip((3, 4), out["masks"], strict=True):
        assert (mask[y0:y1, x0:x1] == value).all() and mask.sum() == value * (y1 - y0) * (x1 - x0)


# ------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"alpha": 0}, "alpha"),
        ({"box": "circle"}, "box"),
        ({"box_size": 1.5}, "box_size"),
        ({"label_mode": "hard"}, "label_mode"),
        ({"min_box_side": 0}, "min_box_side"),
        ({"num_classes": 0}, "num_classes"),
        ({"label_smoothing": 2}, "label_smoothing"),
        ({"interpolation": 99}, "interpolation"),
    ],
)
def test_bad_options_raise_value_error_naming_them(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        ContextMix(**kwargs)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({KEY: []}, KEY),
        ({KEY: [{"mask": np.zeros((4, 4), np.uint8)}]}, "image"),
        ({KEY: [{"image": np.zeros((4, 4), np.uint16)}]}, "dtype"),
        ({KEY: [{"image": np.zeros((4, 4, 3), np.uint8)}]}, "channels"),
        ({KEY: [{"image": np.zeros((4, 4), np.uint8)}], "mask": np.zeros((10, 10), np.uint8)}, "mask"),
        (
            {
                KEY: [{"image": np.zeros((4, 4), np.uint8), "mask": np.zeros((4, 4), bool)}],
                "mask": np.zeros((10, 10), np.uint8),
            },
            "dtype",
        ),
        (
            {
                KEY: [{"image": np.zeros((4, 4), np.uint8), "mask": np.zeros((5, 4), np.uint8)}],
                "mask": np.zeros((10, 10), np.uint8),
            },
            "mask",
        ),
    ],
)
def test_bad_partners_raise_value_error_naming_them(data, fragment):
    with pytest.raises(ValueError, match=fragment):
        run(ContextMix(p=1.0), 0, image=np.zeros((10, 10), np.uint8), **data)


def test_missing_labels_and_annotations_raise():
    host = np.zeros((10, 10), np.uint8)
    partner = {"image": np.zeros((4, 4), np.uint8)}
    with pytest.raises(ValueError, match="label"):
        run(ContextMix(p=1.0, num_classes=3), 0, image=host, label=1, **{KEY: [partner]})
    with pytest.raises(ValueError, match="label"):
        run(ContextMix(p=0.0, num_classes=3), 0, image=host, **{KEY: [partner]})
    with pytest.raises(ValueError, match="num_classes"):
        run(ContextMix(p=1.0, num_classes=3), 0, image=host, label=5, **{KEY: [{**partner, "label": 0}]})
    with pytest.raises(ValueError, match="bboxes"):
        run(
            ContextMix(p=1.0),
            0,
            {"bbox_params": A.BboxParams("pascal_voc")},
            image=host,
            bboxes=[[1, 1, 3, 3, 0]],
            **{KEY: [partner]},
        )


# ------------------------------------------------------------------------------ YAML and batch
def test_compose_yaml_round_trip_reproduces_output(tmp_path):
    bbox_params = A.BboxParams("pascal_voc", label_fields=["cls"], min_visibility=0.2)
    compose = A.Compose(
        [ContextMix(alpha=0.7, box="square", num_classes=3, label_smoothing=0.1, p=0.9)],
        bbox_params=bbox_params,
        seed=4,
    )
    path = tmp_path / "pipeline.yaml"
    A.save(compose, str(path), data_format="yaml")
    loaded = A.load(str(path), data_format="yaml")
    loaded.set_random_seed(4)  # albumentations 2.0 does not save the seed
    rng = np.random.default_rng(0)
    data = {
        "image": rng.integers(0, 255, (30, 30, 3), np.uint8),
        "bboxes": [[2, 2, 20, 20]],
        "cls": ["a"],
        "label": 2,
        KEY: [
            {"image": rng.integers(0, 255, (12, 40, 3), np.uint8), "bboxes": [[1, 1, 9, 9]], "cls": ["b"], "label": 0}
        ],
    }
    for _ in range(3):
        a, b = compose(**data), loaded(**data)
        for key in ("image", "mix_weights", "soft_label"):
            np.testing.assert_array_equal(a[key], b[key])
        assert a["bboxes"] == b["bboxes"] and a["cls"] == b["cls"]


def make_batch(size: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        "images": rng.integers(0, 255, (size, 24, 32, 3), np.uint8),
        "masks": rng.integers(0, 4, (size, 24, 32), np.uint8),
        "labels": rng.integers(0, 4, size),
        "bboxes": [[[2, 2, 10 + k, 12]] for k in range(size)],
        "cls": [[f"box{k}"] for k in range(size)],
    }


def test_batch_compose_pairs_by_permutation_and_pastes_the_partner():
    batch = make_batch(7)  # odd batch size
    read_only(batch["images"], batch["masks"])
    compose = BatchCompose(
        [ContextMix(p=1.0, num_classes=4, min_box_side=1)],
        bbox_params=A.BboxParams("pascal_voc", label_fields=["cls"]),
        seed=3,
    )
    out = compose(**batch)
    assert sorted(out["partner_indices"][:, 0].tolist()) == list(range(7))
    assert out["images"].shape == batch["images"].shape and out["images"].dtype == np.uint8
    assert out["mix_weights"].shape == (7, 2) and out["soft_label"].shape == (7, 4)
    np.testing.assert_allclose(out["mix_weights"].sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(out["soft_label"].sum(1), 1.0, atol=1e-6)
    assert len(out["bboxes"]) == 7 and len(out["cls"]) == 7
    assert "contextmix_metadata" not in out
    for i in range(7):
        j = out["partner_indices"][i, 0]
        changed = (out["images"][i] != batch["images"][i]).any(axis=2)
        weight = out["mix_weights"][i, 1]
        expected_label = np.zeros(4)
        expected_label[batch["labels"][i]] += out["mix_weights"][i, 0]
        expected_label[batch["labels"][j]] += weight
        np.testing.assert_allclose(out["soft_label"][i], expected_label, atol=1e-6)
        if changed.any():  # the changed pixels lie in one box of area lambda_B * H * W
            ys, xs = np.nonzero(changed)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            assert (y1 - y0) * (x1 - x0) <= round(weight * 24 * 32)


def test_batch_compose_reproduces_and_round_trips_yaml(tmp_path):
    batch = make_batch(6, seed=1)
    params = A.BboxParams("pascal_voc", label_fields=["cls"])
    compose = BatchCompose([ContextMix(p=0.8, num_classes=4), A.HorizontalFlip(p=0.5)], bbox_params=params, seed=9)
    again = BatchCompose([ContextMix(p=0.8, num_classes=4), A.HorizontalFlip(p=0.5)], bbox_params=params, seed=9)
    path = tmp_path / "batch.yaml"
    A.save(compose, str(path), data_format="yaml")
    assert "albu_defects.BatchCompose" in path.read_text()
    loaded = A.load(str(path), data_format="yaml")
    assert isinstance(loaded, BatchCompose) and loaded.num_partners == 1
    loaded.set_random_seed(9)
    for _ in range(2):
        outs = [c(**batch) for c in (compose, again, loaded)]
        for other in outs[1:]:
            for key in ("images", "masks", "mix_weights", "soft_label", "partner_indices", "labels"):
                np.testing.assert_array_equal(outs[0][key], other[key])
            assert outs[0]["bboxes"] == other["bboxes"]


def test_batch_compose_partner_region_is_the_resized_partner():
    size, hw = 4, (20, 28)
    images = np.stack([np.full(hw, 10 * (k + 1), np.uint8) for k in range(size)])  # flat, distinct images
    compose = BatchCompose([ContextMix(p=1.0, min_box_side=1)], seed=0)
    for _ in range(5):
        out = compose(images=list(images))
        assert isinstance(out["images"], list)
        for i in range(size):
            j = out["partner_indices"][i, 0]
            from_partner = out["images"][i] == 10 * (j + 1)
            if i != j:
                assert np.isclose(from_partner.mean(), out["mix_weights"][i, 1], atol=1e-6)
                assert ((out["images"][i] == 10 * (i + 1)) | from_partner).all()


def test_batch_compose_is_generic_and_checks_its_batch():
    batch = make_batch(4)
    # A.Mosaic is another batch-aware transform: it gets 3 batch-mates through its own metadata key
    mosaic = BatchCompose([A.Mosaic(target_size=(24, 32), p=1.0)], num_partners=3, seed=0)
    assert mosaic.metadata_keys == ["mosaic_metadata"]
    out = mosaic(images=batch["images"], masks=batch["masks"])
    assert out["images"].shape == batch["images"].shape and out["partner_indices"].shape == (4, 3)
    skipped = BatchCompose([ContextMix(p=1.0)], p=0.0)(images=batch["images"])
    np.testing.assert_array_equal(skipped["images"], batch["images"])
    compose = BatchCompose([ContextMix(p=1.0)])
    with pytest.raises(ValueError, match="labels"):
        compose(images=batch["images"], labels=[1, 2])
    with pytest.raises(ValueError, match="images"):
        compose(images=[])
    with pytest.raises(ValueError, match="labels"):
        compose(images=batch["images"], label=[1, 2, 3, 4])
    with pytest.raises(ValueError, match="contextmix_metadata"):
        compose(images=batch["images"], contextmix_metadata=[[]] * 4)
    with pytest.raises(ValueError, match="transforms"):
        BatchCompose(ContextMix())
    with pytest.raises(ValueError, match="num_partners"):
        BatchCompose([ContextMix()], num_partners=0)


def test_readme_yaml_example_loads(tmp_path):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## ContextMix", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "readme.yaml"
    path.write_text(example)
    loaded = A.load(str(path), data_format="yaml")
    assert isinstance(loaded, BatchCompose) and isinstance(loaded.transforms[0], ContextMix)
    loaded.set_random_seed(0)
    out = loaded(**{k: v for k, v in make_batch(3).items() if k in ("images", "labels")})
    assert out["soft_label"].shape == (3, 6)


def test_annotations_and_partner_dicts_are_not_modified():
    import copy

    host_boxes, host_points = [[1, 1, 8, 8]], [[2.0, 3.0]]
    partner = {
        "image": np.ones((6, 9), np.uint8),
        "mask": np.ones((6, 9), np.uint8),
        "bboxes": [[0, 0, 4, 4]],
        "cls": ["p"],
        "keypoints": [[1.0, 1.0]],
        "label": 1,
    }
    read_only(partner["image"], partner["mask"])
    snapshot = copy.deepcopy(partner)
    compose = A.Compose(
        [ContextMix(p=1.0, num_classes=2, min_box_side=1)],
        bbox_params=A.BboxParams("pascal_voc", label_fields=["cls"]),
        keypoint_params=A.KeypointParams("xy"),
        seed=1,
    )
    compose(
        image=np.zeros((12, 12), np.uint8),
        mask=np.zeros((12, 12), np.uint8),
        bboxes=host_boxes,
        cls=["h"],
        keypoints=host_points,
        label=0,
        **{KEY: [partner]},
    )
    assert host_boxes == [[1, 1, 8, 8]] and host_points == [[2.0, 3.0]]
    assert partner.keys() == snapshot.keys()
    for key, value in snapshot.items():
        assert np.array_equal(partner[key], value) if isinstance(value, np.ndarray) else partner[key] == value
