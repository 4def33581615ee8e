"""Shared geometry: where a placed patch overlaps an image, mask boxes, dilation, blobs.

Every method that pastes a patch (blending, DLI / InjectDefect, Guided-Crop, CutPaste) places it
with its top-left corner at ``(y, x)`` on a target, possibly partly outside it. The overlap
arithmetic lives here once.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

__all__ = [
    "Overlap",
    "connected_components",
    "dilate_mask",
    "grow_box",
    "mask_bbox",
    "placement_overlap",
    "random_top_left",
]


class Overlap(NamedTuple):
    """Matching windows of a target and a patch placed on it."""

    target: tuple[slice, slice]
    source: tuple[slice, slice]


def placement_overlap(
    target_hw: tuple[int, int], source_hw: tuple[int, int], top_left: tuple[int, int]
) -> Overlap | None:
    """Windows where a ``source_hw`` patch with its corner at ``top_left=(y, x)`` overlaps the target.

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
    """A uniformly random ``top_left`` for a patch whose ``mask`` box must lie inside the target.

    Along an axis where the mask's box is larger than the target, ``cover_if_larger=True`` draws a
    position where the box covers the target; otherwise that raises ``ValueError``. Draws y, then x.
    """
    box = mask_bbox(mask)
    if box is None:
        raise ValueError("mask is empty: there is nothing to place")
    corner = []
    for axis in (0, 1):
        start, size, side = box[axis], box[axis + 2] - box[axis], int(target_hw[axis])
        if size > side and not cover_if_larger:
            h, w = box[2] - box[0], box[3] - box[1]
            raise ValueError(f"a {h}x{w} defect does not fit a {target_hw[0]}x{target_hw[1]} image")
        low, high = min(0, side - size), max(0, side - size)
        corner.append(int(rng.integers(low, high + 1)) - start)
    return corner[0], corner[1]


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box ``(y0, x0, y1, x1)`` (ends exclusive) of the nonzero pixels, or ``None`` if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def grow_box(box: tuple[int, int, int, int], margin: int, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """``box=(y0, x0, y1, x1)`` (ends exclusive) grown by ``margin`` pixels on every side, clipped to ``hw``."""
    y0, x0, y1, x1 = box
    return max(y0 - margin, 0), max(x0 - margin, 0), min(y1 + margin, int(hw[0])), min(x1 + margin, int(hw[1]))


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
