"""core.geometry: placement overlaps, mask boxes, dilation, connected components."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from albu_defects.core.geometry import connected_components, dilate_mask, mask_bbox, placement_overlap


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
    assert mask_bbox(mask) == (2, 3, 9, 11)
    count, labels = connected_components(mask)
    assert count == 2 and set(np.unique(labels)) == {0, 1, 2}
    grown = dilate_mask(mask, 1)
    assert grown[1:5, 2:7].all() and grown.sum() == 4 * 5 + 3 * 3  # two separate grown blobs
    assert dilate_mask(mask, 0) is not mask
