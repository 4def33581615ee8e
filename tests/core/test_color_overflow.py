"""Colour jitter never creates inf (issue 12 item 10): float32 images near the float32 maximum."""

from __future__ import annotations

import numpy as np
import pytest

import albu_defects as ad

BIG = np.float32(np.finfo(np.float32).max * np.float32(0.9))


@pytest.mark.parametrize(
    "factors",
    [{"brightness": 1.5}, {"contrast": 3.0}, {"saturation": 2.0, "contrast": 1.5}, {"hue": 0.3, "brightness": 1.2}],
    ids=["brightness", "contrast", "saturation", "hue"],
)
@pytest.mark.parametrize("channels", [3, 1, None], ids=["rgb", "hw1", "hw"])
def test_color_jitter_of_float32_near_its_maximum_stays_finite(factors, channels):
    shape = (6, 7) if channels is None else (6, 7, channels)
    image = np.full(shape, BIG, np.float32)
    image[0, 0] = 0.0  # a dark pixel: contrast pushes it far below 0
    original = image.copy()
    try:
        out = ad.color_jitter(image, **factors)
    except ValueError as error:  # refusing such an image outright is fine too, if it says why
        message = str(error)
        out = None
    if out is None:
        assert "float32" in message or "range" in message, message
    else:
        assert out.dtype == np.float32 and out.shape == image.shape
        assert np.isfinite(out).all(), f"colour jitter gave inf: {out.ravel()[:6]}"
    np.testing.assert_array_equal(image, original)
