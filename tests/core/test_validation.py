"""core.validation: image and mask checks, dtype helpers."""

from __future__ import annotations

import numpy as np
import pytest

from albu_defects.core.validation import as_bool_mask, check_class_mask, check_image, clip_to_dtype, dtype_max


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ([[1, 2]], "numpy array"),
        (np.zeros((4,), np.uint8), "shape (H, W)"),
        (np.zeros((4, 4), np.int32), "dtype int32"),
        (np.zeros((4, 4), np.float64), "dtype float64"),
        (np.full((4, 4), np.nan, np.float32), "NaN"),
    ],
)
def test_check_image_rejects_bad_input_by_name(bad, fragment):
    with pytest.raises(ValueError, match="picture") as info:
        check_image(bad, "picture")
    assert fragment in str(info.value)


def test_mask_checks():
    assert as_bool_mask(np.array([[0, 3]], np.uint8)).tolist() == [[False, True]]
    assert as_bool_mask(np.ones((2, 3, 1), bool), (2, 3)).shape == (2, 3)
    with pytest.raises(ValueError, match="must match the image size"):
        as_bool_mask(np.ones((2, 3), bool), (3, 3))
    with pytest.raises(ValueError, match="bool or integer"):
        as_bool_mask(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="class id 7"):
        check_class_mask(np.full((2, 2), 7, np.uint8), (2, 2), num_classes=5)


def test_dtype_helpers():
    assert dtype_max(np.uint8) == 255 and dtype_max(np.uint16) == 65535 and dtype_max(np.float32) == 1.0
    assert clip_to_dtype(np.array([-3.0, 2.5, 300.0]), np.uint8).tolist() == [0, 2, 255]
    out = clip_to_dtype(np.array([np.inf, -2.0]), np.float32)
    assert out.dtype == np.float32 and np.isfinite(out).all() and out[1] == -2.0
