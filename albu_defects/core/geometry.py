"""Shared geometry: the box convention, where a placed patch overlaps an image, mask boxes, dilation, blobs.

Two kinds of coordinates, one convention each, used by every module of the package:

- A **box** is ``(x_min, y_min, x_max, y_max)`` in integer pixels, ends exclusive (pascal_voc order;
  :data:`Box`): the pixels ``x_min <= x < x_max``, ``y_min <= y < y_max``. Boxes are what the package
  returns and takes wherever a region is meant: :func:`mask_bbox`, :func:`grow_box`, a bank entry's
  ``bbox``, DLI's ``injections[i]["bbox"]``, Guided-Crop's blob boxes and synthesis manifest,
  CropLiq's patch and region, CutPaste's ``source``, ContextMix's boxes (numpy and torch). A box
  with ``x_max == x_min`` or ``y_max == y_min`` is empty. :func:`box_slices` turns a box into the
  ``(rows, cols)`` slices that index an array.
- An **array position or offset** (e.g. the ``top_left`` where a patch is placed, a shift) stays in
  numpy order, ``(row, col)`` = ``(y, x)``, as array indices are.

Every method that pastes a patch (blending, DLI / InjectDefect, Guided-Crop, CutPaste) places it
with its top-left corner at ``top_left=(row, col)`` on a target, possibly partly outside it; the
overlap arithmetic lives here once (:func:`placement_overlap`).
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

__all__ = [
    "Box",
    "Overlap",
    "box_center",
    "box_hw",
    "box_slices",
    "connected_components",
    "dilate_mask",
    "grow_box",
    "NEAREST_FLAGS",
    "image_box",
    "mask_bbox",
    "nearest_source_index",
    "placement_overlap",
    "random_top_left",
    "resize_image",
    "translate_box",
]

#: ``(x_min, y_min, x_max, y_max)``: integer pixels, ends exclusive.
Box = tuple[int, int, int, int]


def box_slices(box: Box) -> tuple[slice, slice]:
    """The ``(rows, cols)`` slices of a box, to index an array: ``array[box_slices(box)]``."""
    x_min, y_min, x_max, y_max = (int(v) for v in box)
    return slice(y_min, y_max), slice(x_min, x_max)


def image_box(hw: tuple[int, int]) -> Box:
    """The box of a whole image of size ``hw=(height, width)``: ``(0, 0, width, height)``."""
    return 0, 0, int(hw[1]), int(hw[0])


def box_hw(box: Box) -> tuple[int, int]:
    """``(height, width)`` of a box."""
    return int(box[3]) - int(box[1]), int(box[2]) - int(box[0])


def box_center(box: Box) -> tuple[float, float]:
    """The centre of a box as an array position ``(row, col)`` (floats: half-pixels for even sides)."""
    return (int(box[1]) + int(box[3])) / 2.0, (int(box[0]) + int(box[2])) / 2.0


def translate_box(box: Box, offset: tuple[int, int]) -> Box:
    """``box`` moved by an array offset ``(row, col)``: from a window's coordinates into its image's."""
    dy, dx = int(offset[0]), int(offset[1])
    return int(box[0]) + dx, int(box[1]) + dy, int(box[2]) + dx, int(box[3]) + dy


class Overlap(NamedTuple):
    """Matching windows (``(rows, cols)`` slices) of a target and a patch placed on it."""

    target: tuple[slice, slice]
    source: tuple[slice, slice]


def placement_overlap(
    target_hw: tuple[int, int], source_hw: tuple[int, int], top_left: tuple[int, int]
) -> Overlap | None:
    """Windows where a ``source_hw`` patch with its corner at ``top_left=(row, col)`` overlaps the target.

    ``top_left`` may be negative or run past the far edges; only the overlap is returned, or
    ``None`` when the patch lies entirely outside.
    """
    (th, tw), (sh, sw) = target_hw, source_hw
    y, x = int(top_left[0]), int(top_left[1])
    ty0, tx0 = max(y, 0), max(x, 0)
    ty1, tx1 = min(y + sh, th), min(x + sw, tw)
    if ty0 >= ty1 or tx0 >= tx1:
        return None
    return Overlap(
        target=(slice(ty0, ty1), slice(tx0, tx1)),
        source=(slice(ty0 - y, ty1 - y), slice(tx0 - x, tx1 - x)),
    )


def random_top_left(
    mask: np.ndarray, target_hw: tuple[int, int], rng: np.random.Generator, *, cover_if_larger: bool = False
) -> tuple[int, int]:
    """A uniformly random ``top_left=(row, col)`` for a patch whose ``mask`` box must lie inside the target.

    Along an axis where the mask's box is larger than the target, ``cover_if_larger=True`` draws a
    position where the box covers the target; otherwise that raises ``ValueError``. Draws the row,
    then the column.
    """
    box = mask_bbox(mask)
    if box is None:
        raise ValueError("mask is empty: there is nothing to place")
    h, w = box_hw(box)
    corner = []
    for start, size, side in ((box[1], h, int(target_hw[0])), (box[0], w, int(target_hw[1]))):
        if size > side and not cover_if_larger:
            raise ValueError(f"a {h}x{w} defect does not fit a {target_hw[0]}x{target_hw[1]} image")
        low, high = min(0, side - size), max(0, side - size)
        corner.append(int(rng.integers(low, high + 1)) - start)
    return corner[0], corner[1]


def mask_bbox(mask: np.ndarray) -> Box | None:
    """Tight box ``(x_min, y_min, x_max, y_max)`` (ends exclusive) of the nonzero pixels, or ``None`` if empty."""
    if mask.ndim == 2 and mask.dtype in (np.bool_, np.uint8) and mask.size:
        # OpenCV's scan of an 8-bit mask: 3-10x faster than two numpy reductions (called per injection)
        x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
        return None if w == 0 else (x, y, x + w, y + h)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def grow_box(box: Box, margin: int, hw: tuple[int, int]) -> Box:
    """``box`` grown by ``margin`` pixels on every side, clipped to an image of size ``hw=(height, width)``."""
    x_min, y_min, x_max, y_max = box
    return (
        max(x_min - margin, 0),
        max(y_min - margin, 0),
        min(x_max + margin, int(hw[1])),
        min(y_max + margin, int(hw[0])),
    )


def dilate_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Boolean mask grown by ``radius`` pixels (a square structuring element, like a max-pool)."""
    mask = np.asarray(mask) != 0
    if radius <= 0:
        return mask.copy()
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def connected_components(mask: np.ndarray, connectivity: int = 8) -> tuple[int, np.ndarray]:
    """Label the nonzero blobs of ``mask``: ``(count, labels)`` with labels 1..count, 0 = background."""
    count, labels = cv2.connectedComponents((np.asarray(mask) != 0).astype(np.uint8), connectivity=connectivity)
    return int(count) - 1, labels.astype(np.int32, copy=False)


# ---- resizing -----------------------------------------------------------------------------------
#: Interpolations that use the exact integer nearest rule of :func:`nearest_source_index`.
NEAREST_FLAGS = (cv2.INTER_NEAREST, cv2.INTER_NEAREST_EXACT)


def nearest_source_index(dst_index: np.ndarray, src_len: int | np.ndarray, dst_len: int | np.ndarray) -> np.ndarray:
    """Source index of destination pixel(s) ``dst_index`` when resizing ``src_len`` to ``dst_len``.

    ``floor((i + 0.5) * src / dst)`` in integer arithmetic (exact, always in ``[0, src_len)``);
    broadcasts, so per-sample lengths may be arrays.
    """
    dst_index = np.asarray(dst_index, dtype=np.int64)
    return ((2 * dst_index + 1) * np.asarray(src_len, dtype=np.int64)) // (2 * np.asarray(dst_len, dtype=np.int64))


def resize_image(image: np.ndarray, hw: tuple[int, int], interpolation: int = cv2.INTER_NEAREST) -> np.ndarray:
    """``image`` resized to ``hw``, keeping its dtype and layout ((H, W), (H, W, 1), (H, W, C>4)).

    Nearest flags use :func:`nearest_source_index` (any dtype, class ids exact); other OpenCV flags
    call ``cv2.resize`` (in chunks of 4 channels, which every OpenCV interpolation supports).
    """
    h, w = int(hw[0]), int(hw[1])
    if h < 1 or w < 1:
        raise ValueError(f"cannot resize to {h}x{w}: both sides must be >= 1")
    if interpolation in NEAREST_FLAGS:
        rows = nearest_source_index(np.arange(h), image.shape[0], h)
        cols = nearest_source_index(np.arange(w), image.shape[1], w)
        return image[rows[:, None], cols[None, :]]
    if image.ndim == 2:
        return cv2.resize(image, (w, h), interpolation=interpolation)
    chunks = [
        cv2.resize(image[..., start : start + 4], (w, h), interpolation=interpolation).reshape(h, w, -1)
        for start in range(0, image.shape[2], 4)
    ]
    return np.concatenate(chunks, axis=2) if len(chunks) > 1 else chunks[0]
