"""Guided-Crop's global stage: flips, a circular shift on axes without empty borders, a colour jitter.

Step 5 of a Guided-Crop sample (see :mod:`albu_defects.methods.guided_crop.functional`), and how it
moves every target: the image and masks (:func:`stage_geometry`), boxes (:func:`stage_bboxes`; a box
the shift wraps around an edge becomes two), keypoints (:func:`stage_keypoints`), and the pasted
blobs' pixel boxes (:func:`blob_boxes`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from albu_defects.core.color import ColorJitterFactors, color_jitter, sample_color_jitter
from albu_defects.core.geometry import Box, mask_bbox, translate_box
from albu_defects.core.validation import check_image, dtype_max, image_hw

if TYPE_CHECKING:
    from .functional import GuidedCropOptions

__all__ = [
    "BORDER_DEPTH_FRACTION",
    "Borders",
    "GlobalStage",
    "apply_global_stage",
    "BlobBoxes",
    "blob_boxes",
    "empty_borders",
    "draw_global_stage",
    "stage_bboxes",
    "stage_geometry",
    "stage_keypoints",
]

#: An image side has an empty border when one of its outermost lines (this fraction of the side, at
#: least one line) has a mean at or below ``border_threshold`` times the white level.
BORDER_DEPTH_FRACTION = 0.02


class BlobBoxes(NamedTuple):
    """The pixel boxes of the visible pasted blobs and, in a separate list, their class ids."""

    boxes: list[Box]  # (x_min, y_min, x_max, y_max), ends exclusive
    classes: list[int]


class Borders(NamedTuple):
    """Which sides of an image have an empty (dark) border band."""

    top: bool
    bottom: bool
    left: bool
    right: bool


def empty_borders(image: np.ndarray, threshold: float = 0.1) -> Borders:
    """Detect empty bands: a side is empty when one of its outermost lines is dark on average.

    The outermost ``max(1, ceil(BORDER_DEPTH_FRACTION * side))`` rows (columns) of each side are
    checked; a line is empty when its mean over pixels and channels is ``<= threshold`` times the
    dtype's white level.
    """
    check_image(image, "image")
    h, w = image_hw(image)
    limit = float(threshold) * dtype_max(image.dtype)
    depth_y, depth_x = max(1, math.ceil(BORDER_DEPTH_FRACTION * h)), max(1, math.ceil(BORDER_DEPTH_FRACTION * w))
    pixels = image if image.ndim == 3 else image[..., None]

    def rows_empty(band: np.ndarray) -> bool:
        return bool((band.mean(axis=(1, 2), dtype=np.float64) <= limit).any())

    def cols_empty(band: np.ndarray) -> bool:
        return bool((band.mean(axis=(0, 2), dtype=np.float64) <= limit).any())

    return Borders(
        top=rows_empty(pixels[:depth_y]),
        bottom=rows_empty(pixels[h - depth_y :]),
        left=cols_empty(pixels[:, :depth_x]),
        right=cols_empty(pixels[:, w - depth_x :]),
    )


class GlobalStage(NamedTuple):
    """The whole-image step: flips, then a circular shift ``(dy, dx)`` in pixels, then a colour jitter."""

    hflip: bool = False
    vflip: bool = False
    shift: tuple[int, int] = (0, 0)
    jitter: ColorJitterFactors = ColorJitterFactors()


def draw_global_stage(
    image_hw: tuple[int, int], borders: Borders, options: GuidedCropOptions, rng: np.random.Generator
) -> GlobalStage:
    """Flips with ``flip_p`` each; a shift of up to ``shift_limit`` of the side on each axis whose ends are not empty."""
    hflip = bool(rng.random() < options.flip_p)
    vflip = bool(rng.random() < options.flip_p)
    fractions = rng.uniform(-options.shift_limit, options.shift_limit, size=2)
    dy = 0 if borders.top or borders.bottom else round(float(fractions[0]) * image_hw[0])
    dx = 0 if borders.left or borders.right else round(float(fractions[1]) * image_hw[1])
    jitter = sample_color_jitter(rng, *options.image_jitter)
    return GlobalStage(hflip, vflip, (dy % image_hw[0], dx % image_hw[1]), jitter)


def stage_geometry(array: np.ndarray, stage: GlobalStage) -> np.ndarray:
    """``array`` ((H, W) or (H, W, C)) flipped and circularly shifted by ``stage`` (a new array)."""
    out = array
    if stage.hflip:
        out = out[:, ::-1]
    if stage.vflip:
        out = out[::-1]
    if stage.shift != (0, 0):
        return np.roll(out, stage.shift, axis=(0, 1))
    return out.copy() if out is array else np.ascontiguousarray(out)


def apply_global_stage(image: np.ndarray, stage: GlobalStage) -> np.ndarray:
    """:func:`stage_geometry`, then the stage's colour jitter (a new image, same dtype and shape)."""
    moved = stage_geometry(image, stage)
    if stage.jitter == ColorJitterFactors():
        return moved
    return color_jitter(moved, *stage.jitter)


def _axis_pieces(start: int, stop: int, side: int, flip: bool, shift: int) -> list[tuple[int, int]]:
    if flip:
        start, stop = side - stop, side - start
    if shift == 0:
        return [(start, stop)]
    begin = (start + shift) % side
    end = begin + (stop - start)
    return [(begin, end)] if end <= side else [(begin, side), (0, end - side)]


def blob_boxes(
    owner: np.ndarray,
    blob_classes: np.ndarray,
    windows: Sequence[tuple[slice, slice] | None],
    stage: GlobalStage,
) -> BlobBoxes:
    """Pixel boxes ``(x_min, y_min, x_max, y_max)`` of the visible pixels of each blob, and the blobs' class ids.

    ``owner`` is the owner map after ``stage`` (:func:`stage_geometry`), ``windows`` the blobs'
    windows before it (:func:`blob_owner_map`). A blob the shift wraps around an edge gets one box per
    piece; a blob hidden entirely gets none.
    """
    h, w = owner.shape
    found = BlobBoxes([], [])
    for blob, window in enumerate(windows):
        if window is None:
            continue
        rows = _axis_pieces(window[0].start, window[0].stop, h, stage.vflip, stage.shift[0])
        cols = _axis_pieces(window[1].start, window[1].stop, w, stage.hflip, stage.shift[1])
        for y0, y1 in rows:
            for x0, x1 in cols:
                box = mask_bbox(owner[y0:y1, x0:x1] == blob)
                if box is not None:
                    found.boxes.append(translate_box(box, (y0, x0)))
                    found.classes.append(int(blob_classes[blob]))
    return found


def _roll_axis(boxes: np.ndarray, low: int, high: int, fraction: float) -> np.ndarray:
    """Normalized boxes shifted circularly by ``fraction`` along one axis; wrapped boxes split in two."""
    if fraction == 0 or not len(boxes):
        return boxes
    size = boxes[:, high] - boxes[:, low]
    whole = size >= 1.0
    begin = np.mod(boxes[:, low] + fraction, 1.0)
    end = begin + size
    moved = boxes.copy()
    moved[:, low] = np.where(whole, boxes[:, low], begin)
    moved[:, high] = np.where(whole, boxes[:, high], np.minimum(end, 1.0))
    wrapped = ~whole & (end > 1.0 + 1e-9)
    pieces = boxes[wrapped].copy()
    pieces[:, low] = 0.0
    pieces[:, high] = end[wrapped] - 1.0
    return np.concatenate([moved, pieces]) if len(pieces) else moved


def stage_bboxes(bboxes: np.ndarray, stage: GlobalStage, image_hw: tuple[int, int]) -> np.ndarray:
    """Normalized albumentations boxes ``(N, 4+k)`` moved by the stage's flips and shift (extra columns kept)."""
    out = np.array(bboxes, copy=True)
    if not out.size:
        return out
    if stage.hflip:
        out[:, [0, 2]] = 1.0 - out[:, [2, 0]]
    if stage.vflip:
        out[:, [1, 3]] = 1.0 - out[:, [3, 1]]
    out = _roll_axis(out, 0, 2, stage.shift[1] / image_hw[1])
    return _roll_axis(out, 1, 3, stage.shift[0] / image_hw[0])


def stage_keypoints(keypoints: np.ndarray, stage: GlobalStage, image_hw: tuple[int, int]) -> np.ndarray:
    """Albumentations keypoints ``(N, 4+k)`` (x, y, ... in pixels) moved by the stage (flips as A.HorizontalFlip)."""
    from albumentations.augmentations.geometric import functional as fgeometric

    out = np.array(keypoints, copy=True)
    if not out.size:
        return out
    if stage.hflip:
        out = fgeometric.keypoints_hflip(out, image_hw[1])
    if stage.vflip:
        out = fgeometric.keypoints_vflip(out, image_hw[0])
    out[:, 0] = np.mod(out[:, 0] + stage.shift[1], image_hw[1])
    out[:, 1] = np.mod(out[:, 1] + stage.shift[0], image_hw[0])
    return out
