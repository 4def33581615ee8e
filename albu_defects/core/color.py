"""Colour jitter (brightness, contrast, saturation, hue) with explicit factors, for any supported dtype.

:func:`color_jitter` applies given factors (a pure function: same factors, same output);
:func:`sample_color_jitter` draws factors from ranges with a ``np.random.Generator``. CutPaste uses
both on its patch and Guided-Crop on each crop and on the whole image; any method that recolours a
patch reuses them.

Conventions (torchvision's ``ColorJitter`` factors, applied in the fixed order brightness, contrast,
saturation, hue):

- brightness ``b``: ``x * b``; contrast ``c``: ``(x - m) * c + m`` with ``m`` the mean grey level of
  the image; saturation ``s``: ``(x - g) * s + g`` with ``g`` the per-pixel grey level; hue ``h`` in
  [-0.5, 0.5] turns: a rotation of the chroma plane of YIQ by ``2 pi h``.
- Every step is linear, so the four compose into one affine colour map applied in one pass, and it
  works on any value range: uint8 and uint16 are rounded and clipped to the dtype once at the end
  (no clipping between steps, unlike torchvision); float32 is never clipped (it may be normalised
  or HDR), which is why a normalised float image does not break the jitter.
- Saturation and hue need colour: they are skipped on grayscale (H, W), (H, W, 1) and on any channel
  count other than 3. Channels are taken as RGB (the albumentations convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np

from .validation import check_image, clip_to_dtype, num_channels

__all__ = [
    "JITTER_LIMITS",
    "ColorJitterFactors",
    "check_jitter",
    "color_jitter",
    "jitter_affine",
    "jitter_range",
    "sample_color_jitter",
]

#: RGB -> luma weights (ITU-R BT.601), as torchvision's ``rgb_to_grayscale``.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
#: RGB -> YIQ and back, for the hue rotation.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float64)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


class ColorJitterFactors(NamedTuple):
    """Explicit jitter factors: 1.0 (0.0 for hue) leaves the image unchanged."""

    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0


def _is_color(image: np.ndarray) -> bool:
    return image.ndim == 3 and image.shape[2] == 3


def _hue_matrix(hue: float) -> np.ndarray:
    """3x3 RGB matrix rotating the chroma (I, Q) plane by ``2 pi hue``; the luma is kept."""
    angle = 2.0 * np.pi * hue
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    return (_YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ).astype(np.float32)


def jitter_affine(
    brightness: float, contrast: float, saturation: float, hue: float, mean_gray: float
) -> tuple[np.ndarray, float]:
    """The four jitter steps composed into one colour map ``x -> M x + c`` (``M`` 3x3, ``c`` the same for every channel).

    brightness ``b`` then contrast ``k`` give ``k b x + (1 - k) b m`` (``m`` the mean grey level of
    ``x``); saturation and hue are linear maps that keep grey (``M 1 = 1``), so the offset passes
    through them unchanged.
    """
    saturate = saturation * np.eye(3) + (1.0 - saturation) * np.outer(np.ones(3), _LUMA)
    matrix = brightness * contrast * (_hue_matrix(hue).astype(np.float64) @ saturate)
    return matrix, (1.0 - contrast) * brightness * mean_gray


def color_jitter(
    image: np.ndarray, brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0, hue: float = 0.0
) -> np.ndarray:
    """Return a jittered copy of ``image`` (same shape and dtype); the input is never modified.

    ``brightness``, ``contrast`` and ``saturation`` are non-negative factors (1 = unchanged),
    ``hue`` a shift in [-0.5, 0.5] turns (0 = unchanged). Saturation and hue are skipped unless the
    image has exactly 3 channels. The steps are composed into one affine colour map
    (:func:`jitter_affine`), applied without clipping in between.
    """
    check_image(image, "image")
    for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite factor >= 0 (1 = unchanged), got {value}")
    if not (np.isfinite(hue) and -0.5 <= hue <= 0.5):
        raise ValueError(f"hue must be a shift in [-0.5, 0.5] turns (0 = unchanged), got {hue}")
    image = np.ascontiguousarray(image)
    channels = num_channels(image)
    if contrast == 1.0:
        means = np.zeros(channels)
    elif channels <= 4:
        means = np.array(cv2.mean(image)[:channels])  # far faster than ndarray.mean on integer images
    else:
        means = image.reshape(-1, channels).mean(axis=0)
    if _is_color(image):
        matrix, offset = jitter_affine(brightness, contrast, saturation, hue, float(_LUMA @ means))
        affine = np.hstack([matrix, np.full((3, 1), offset)])
        # cv2.transform rounds and saturates uint8 / uint16; float32 can overflow to inf near its
        # maximum, which clip_to_dtype maps back to finite values (as on the grayscale path)
        out = cv2.transform(image, affine).reshape(image.shape)
        return clip_to_dtype(out, np.float32) if out.dtype == np.float32 else out
    mean_gray = float(means.mean())
    gain, offset = brightness * contrast, (1.0 - contrast) * brightness * mean_gray
    if image.dtype == np.uint8:  # the same float32 arithmetic on the 256 levels, applied as a lookup table
        table = clip_to_dtype(np.arange(256, dtype=np.float32) * np.float32(gain) + np.float32(offset), np.uint8)
        return cv2.LUT(image, table).reshape(image.shape)
    with np.errstate(over="ignore", invalid="ignore"):  # float32 near its maximum: clip_to_dtype keeps it finite
        return clip_to_dtype(image.astype(np.float32) * np.float32(gain) + np.float32(offset), image.dtype)


def jitter_range(
    value: float | Sequence[float], name: str, *, center: float, bounds: tuple[float, float]
) -> tuple[float, float]:
    """A jitter strength as a ``(low, high)`` range of factors.

    A scalar ``x`` means ``[center - x, center + x]`` with the low end raised to ``bounds[0]`` (a
    factor never goes below 0, as in torchvision); a pair is taken as is. Either must end up
    within ``bounds`` with ``low <= high`` (so a hue strength above 0.5 is rejected).
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be >= 0 or a (low, high) pair, got {value}")
        low, high = max(center - float(value), bounds[0]), center + float(value)
    else:
        pair = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else None
        if pair is None or len(pair) != 2:
            raise ValueError(f"{name} must be a number or a (low, high) pair, got {value!r}")
        low, high = float(pair[0]), float(pair[1])
    if not (bounds[0] <= low <= high <= bounds[1]):
        raise ValueError(f"{name} range ({low}, {high}) must satisfy {bounds[0]} <= low <= high <= {bounds[1]}")
    return low, high


#: Per jitter kind, the factor that leaves the image unchanged and the bounds of its range.
JITTER_LIMITS: dict[str, tuple[float, tuple[float, float]]] = {
    "brightness": (1.0, (0.0, np.inf)),
    "contrast": (1.0, (0.0, np.inf)),
    "saturation": (1.0, (0.0, np.inf)),
    "hue": (0.0, (-0.5, 0.5)),
}


def check_jitter(kind: str, value: float | Sequence[float], name: str | None = None) -> tuple[float, float]:
    """:func:`jitter_range` of a ``kind`` in :data:`JITTER_LIMITS` (its centre and bounds); ``name`` in errors."""
    center, bounds = JITTER_LIMITS[kind]
    return jitter_range(value, name or kind, center=center, bounds=bounds)


def sample_color_jitter(
    rng: np.random.Generator,
    brightness: float | Sequence[float] = 0.1,
    contrast: float | Sequence[float] = 0.1,
    saturation: float | Sequence[float] = 0.1,
    hue: float | Sequence[float] = 0.1,
) -> ColorJitterFactors:
    """Draw uniform jitter factors, torchvision style: ``0.1`` means a factor in [0.9, 1.1] (hue: [-0.1, 0.1])."""
    ranges = (
        check_jitter("brightness", brightness),
        check_jitter("contrast", contrast),
        check_jitter("saturation", saturation),
        check_jitter("hue", hue),
    )
    return ColorJitterFactors(*(float(rng.uniform(low, high)) for low, high in ranges))
