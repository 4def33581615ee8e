"""Hard cut-paste: placement, clipping, validation, no mutation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from albu_defects import paste


@given(y=st.integers(-12, 20), x=st.integers(-12, 20), channels=st.sampled_from([None, 1, 3, 5]))
def test_paste_copies_masked_pixels_only(y, x, channels):
    shape_t, shape_s = (16, 18), (9, 7)
    if channels:
        shape_t, shape_s = (*shape_t, channels), (*shape_s, channels)
    rng = np.random.default_rng(0)
    target = rng.integers(0, 255, shape_t, dtype=np.uint8)
    source = rng.integers(0, 255, shape_s, dtype=np.uint8)
    mask = rng.random(shape_s[:2]) > 0.4
    target.setflags(write=False)
    source.setflags(write=False)
    out = paste(target, source, mask, (y, x))
    expected = target.copy()
    for i, j in zip(*np.nonzero(mask), strict=True):
        if 0 <= y + i < 16 and 0 <= x + j < 18:
            expected[y + i, x + j] = source[i, j]
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == target.dtype


def test_paste_rejects_mismatched_inputs():
    target = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="dtype"):
        paste(target, np.zeros((2, 2, 3), np.uint16), np.ones((2, 2), bool), (0, 0))
    with pytest.raises(ValueError, match="channels"):
        paste(target, np.zeros((2, 2), np.uint8), np.ones((2, 2), bool), (0, 0))
    with pytest.raises(ValueError, match="must match the image size"):
        paste(target, np.zeros((2, 2, 3), np.uint8), np.ones((3, 2), bool), (0, 0))
