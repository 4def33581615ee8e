"""Colour jitter never creates inf (issue 12 item 10): float32 images near the float32 maximum."""

from __future__ import annotations

import albumentations as A
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


@pytest.mark.parametrize("seed", range(3))
def test_a_jittering_transform_refuses_a_float32_image_outside_the_unit_range(seed):
    """float32 images lie in [0, 1] (the label model): one near the float32 maximum is refused with a
    clear ValueError, never jittered into ``inf`` (CutPaste jitters its patch with colour_jitter)."""
    image = np.full((32, 32, 3), BIG, np.float32)
    image[:16] = 0.0
    transform = A.Compose([ad.CutPaste(brightness=0.5, contrast=0.5, p=1.0)], seed=seed)
    with pytest.raises(ValueError, match=r"float32.*\[0, 1\]"):  # the base jittered it into inf
        transform(image=image)
