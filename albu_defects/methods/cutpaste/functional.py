"""CutPaste (Li et al., CVPR 2021): cut a patch, colour-jitter it, paste it elsewhere in the same image.

Two variants, with the paper's defaults:

- ``"normal"``: a rectangle of area ``U(0.02, 0.15)`` of the image and aspect (width / height) from
  ``U(0.3, 1)`` or ``U(1, 3.3)`` (50/50), pasted at a random location;
- ``"scar"``: a thin rectangle, width 2-16 and height 10-25 pixels (integers, inclusive), rotated by
  ``U(-45, 45)`` degrees about its centre, pasted at a random location.

Both jitter the patch by 0.1 in brightness, contrast, saturation and hue (:mod:`albu_defects.core.color`;
saturation and hue are skipped on grayscale). The anomaly mask is exactly the set of pasted pixels:
the rectangle, or for a scar its rotated footprint (the pixel centres inside the rotated rectangle).
The paste is hard (:func:`albu_defects.paste`), so every pixel outside the footprint keeps its value.

Known bugs of public implementations avoided here: the scar's target range is computed from its
*rotated* extent, so it always lands whole (never clipped at the right or bottom edge); height and
width are never swapped (aspect is width / height); the mask is the footprint itself, not a
thresholded soft alpha (which changes pixels outside the mask); the jitter is linear and unclipped
for float32, so it works on normalised images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from albu_defects.blending import paste
from albu_defects.core.color import ColorJitterFactors, color_jitter
from albu_defects.core.geometry import Box, box_slices
from albu_defects.core.validation import check_image, image_hw

__all__ = [
    "cut_paste",
    "cutpaste_patch_size",
    "max_scar_extent",
    "rotated_footprint",
    "draw_aspect_ratio",
    "scar_extent",
]


# --------------------------------------------------------------------------- geometry
def _extent(height: float, width: float, angle: float) -> tuple[float, float]:
    theta = math.radians(angle)
    cos, sin = abs(math.cos(theta)), abs(math.sin(theta))
    return height * cos + width * sin, width * cos + height * sin


def scar_extent(height: int, width: int, angle: float) -> tuple[int, int]:
    """``(rows, cols)`` of the smallest canvas holding a ``height`` x ``width`` rectangle rotated by ``angle`` degrees."""
    rows, cols = _extent(height, width, angle)
    return max(1, math.ceil(rows - 1e-6)), max(1, math.ceil(cols - 1e-6))


def max_scar_extent(
    height_range: Sequence[int], width_range: Sequence[int], rotation_range: Sequence[float]
) -> tuple[int, int]:
    """The largest :func:`scar_extent` over all sizes and angles of the ranges (the image must be at least this)."""
    height, width = int(max(height_range)), int(max(width_range))  # the extent grows with both sides
    low, high = float(min(rotation_range)), float(max(rotation_range))
    # h|cos| + w|sin| peaks at +-atan(w/h) + k*180 degrees, w|cos| + h|sin| at +-atan(h/w) + k*180
    peaks = [math.degrees(math.atan2(width, height)), math.degrees(math.atan2(height, width))]
    angles = [low, high] + [s * a + k * 180.0 for a in peaks for s in (1, -1) for k in range(-2, 3)]
    extents = [scar_extent(height, width, a) for a in angles if low <= a <= high]
    return max(e[0] for e in extents), max(e[1] for e in extents)


def _rotation_maps(height: int, width: int, angle: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each pixel of the rotated canvas, where it samples the unrotated patch, and whether it is inside it."""
    rows, cols = scar_extent(height, width, angle)
    theta = math.radians(angle)
    cos, sin = np.float32(math.cos(theta)), np.float32(math.sin(theta))
    oy = np.arange(rows, dtype=np.float32)[:, None] - np.float32((rows - 1) / 2)
    ox = np.arange(cols, dtype=np.float32)[None, :] - np.float32((cols - 1) / 2)
    # inverse rotation of the canvas offsets, back onto the patch centred at ((h - 1) / 2, (w - 1) / 2)
    map_x = cos * ox + sin * oy + np.float32((width - 1) / 2)
    map_y = -sin * ox + cos * oy + np.float32((height - 1) / 2)
    inside = (map_x >= -0.5) & (map_x < width - 0.5) & (map_y >= -0.5) & (map_y < height - 0.5)
    return map_x, map_y, inside


def rotated_footprint(height: int, width: int, angle: float) -> np.ndarray:
    """Bool mask, on the :func:`scar_extent` canvas, of the pixel centres inside the rotated rectangle."""
    if angle == 0:
        return np.ones((height, width), bool)
    return _rotation_maps(height, width, angle)[2]


def _rotate_patch(patch: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    if angle == 0:
        return patch, np.ones(patch.shape[:2], bool)
    map_x, map_y, inside = _rotation_maps(patch.shape[0], patch.shape[1], angle)
    rotated = cv2.remap(patch, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return rotated.reshape(*inside.shape, *patch.shape[2:]), inside


def cutpaste_patch_size(image_hw: tuple[int, int], area_ratio: float, aspect_ratio: float) -> tuple[int, int]:
    """``(height, width)`` of a patch of ``area_ratio`` of the image and ``aspect_ratio`` = width / height, clipped to it."""
    area = area_ratio * image_hw[0] * image_hw[1]
    height = int(np.clip(round(math.sqrt(area / aspect_ratio)), 1, image_hw[0]))
    width = int(np.clip(round(math.sqrt(area * aspect_ratio)), 1, image_hw[1]))
    return height, width


def draw_aspect_ratio(aspect_ratio_range: Sequence[float], rng: np.random.Generator) -> float:
    """CutPaste's aspect draw: 50/50 from ``U(low, 1)`` or ``U(1, high)`` when the range spans 1, else ``U(low, high)``."""
    low, high = float(aspect_ratio_range[0]), float(aspect_ratio_range[1])
    pick_low = rng.random() < 0.5
    if low < 1.0 < high:
        return float(rng.uniform(low, 1.0) if pick_low else rng.uniform(1.0, high))
    return float(rng.uniform(low, high))


# --------------------------------------------------------------------------- the operation
def cut_paste(
    image: np.ndarray,
    source: Box,
    target_top_left: tuple[int, int],
    angle: float = 0.0,
    jitter: ColorJitterFactors | None = None,
) -> np.ndarray:
    """Cut the ``source`` box, jitter it, rotate it by ``angle`` degrees, paste it whole at ``target_top_left``.

    ``source`` is a box ``(x_min, y_min, x_max, y_max)``; ``target_top_left=(row, col)`` is the corner of the rotated canvas (:func:`scar_extent`), which must lie
    entirely inside the image. Returns a new image; only the pixels of :func:`rotated_footprint`
    at the target change.
    """
    check_image(image, "image")
    H, W = image_hw(image)
    x0, y0, x1, y1 = (int(v) for v in source)
    if not (0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H):
        raise ValueError(
            f"source {source} (x_min, y_min, x_max, y_max) must be a non-empty box inside the {H}x{W} image"
        )
    height, width = y1 - y0, x1 - x0
    rows, cols = scar_extent(height, width, angle)
    ty, tx = int(target_top_left[0]), int(target_top_left[1])
    if ty < 0 or tx < 0 or ty + rows > H or tx + cols > W:
        raise ValueError(
            f"target_top_left {target_top_left} puts the {rows}x{cols} pasted patch outside the {H}x{W} image"
        )
    patch = image[box_slices(source)]
    patch = color_jitter(patch, *(jitter or ColorJitterFactors()))
    rotated, footprint = _rotate_patch(patch, angle)
    return paste(image, rotated, footprint, (ty, tx))
