"""core.geometry: placement overlaps, mask boxes, dilation, connected components."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from albu_defects.core.geometry import (
    box_center,
    box_hw,
    box_slices,
    connected_components,
    dilate_mask,
    grow_box,
    image_box,
    mask_bbox,
    placement_overlap,
    random_top_left,
    translate_box,
)


@given(
    th=st.integers(1, 30),
    tw=st.integers(1, 30),
    sh=st.integers(1, 30),
    sw=st.integers(1, 30),
    y=st.integers(-40, 40),
    x=st.integers(-40, 40),
)
def test_placement_overlap_matches_brute_force(th, tw, sh, sw, y, x):
    target = np.zeros((th, tw), np.int32)
    source = np.arange(1, sh * sw + 1, dtype=np.int32).reshape(sh, sw)
    expected = target.copy()
    for i in range(sh):
        for j in range(sw):
            if 0 <= y + i < th and 0 <= x + j < tw:
                expected[y + i, x + j] = source[i, j]
    overlap = placement_overlap((th, tw), (sh, sw), (y, x))
    if overlap is None:
        assert not expected.any()
    else:
        target[overlap.target] = source[overlap.source]
        np.testing.assert_array_equal(target, expected)


def test_mask_bbox_dilate_and_components():
    mask = np.zeros((10, 12), bool)
    assert mask_bbox(mask) is None
    mask[2:4, 3:6] = True
    mask[8, 10] = True
    assert mask_bbox(mask) == (3, 2, 11, 9)  # (x_min, y_min, x_max, y_max), ends exclusive
    count, labels = connected_components(mask)
    assert count == 2 and set(np.unique(labels)) == {0, 1, 2}
    grown = dilate_mask(mask, 1)
    assert grown[1:5, 2:7].all() and grown.sum() == 4 * 5 + 3 * 3  # two separate grown blobs
    assert dilate_mask(mask, 0) is not mask


# ------------------------------------------------------------------ the box convention
def test_boxes_are_x_min_y_min_x_max_y_max_with_exclusive_ends():
    image = np.arange(6 * 8).reshape(6, 8)
    mask = np.zeros((6, 8), bool)
    mask[1:4, 2:7] = True  # rows 1..3, columns 2..6
    box = mask_bbox(mask)
    assert box == (2, 1, 7, 4)
    assert box_slices(box) == (slice(1, 4), slice(2, 7))
    np.testing.assert_array_equal(image[box_slices(box)], image[1:4, 2:7])
    assert box_hw(box) == (3, 5)
    assert box_center(box) == (2.5, 4.5)  # an array position: (row, col)
    assert image_box((6, 8)) == (0, 0, 8, 6)
    assert translate_box(box, (10, 20)) == (22, 11, 27, 14)  # an offset is (row, col)
    assert grow_box(box, 2, (6, 8)) == (0, 0, 8, 6)  # clipped to the image
    assert grow_box(box, 1, (6, 8)) == (1, 0, 8, 5)


@given(h=st.integers(1, 12), w=st.integers(1, 12), seed=st.integers(0, 1000))
def test_random_top_left_keeps_the_mask_box_inside(h, w, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((h, w)) < 0.3
    if not mask.any():
        return
    x0, y0, x1, y1 = mask_bbox(mask)
    row, col = random_top_left(mask, (12, 14), rng)  # (row, col)
    assert row + y0 >= 0 and row + y1 <= 12 and col + x0 >= 0 and col + x1 <= 14
