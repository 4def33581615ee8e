"""Drawing helpers for the demo picture and ``albu-defects preview``: tiles, overlays, grids.

Everything renders to uint8 BGR with OpenCV alone (no plotting library), so the demo runs on a
bare install.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from albu_defects.core.validation import dtype_max

__all__ = [
    "CLASS_COLORS",
    "class_color",
    "draw_bboxes",
    "draw_mask_outline",
    "label_tile",
    "make_grid",
    "overlay_class_mask",
    "to_display",
    "write_picture",
]

#: BGR colours for class ids 1, 2, ... (cycled); class 0 (background) is never drawn.
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (40, 40, 230),  # red
    (40, 200, 40),  # green
    (230, 120, 30),  # blue
    (30, 200, 230),  # yellow
    (200, 40, 200),  # magenta
    (200, 200, 40),  # cyan
    (30, 130, 250),  # orange
)

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_color(class_id: int) -> tuple[int, int, int]:
    """BGR colour of a class id (1-based)."""
    return CLASS_COLORS[(int(class_id) - 1) % len(CLASS_COLORS)]


def to_display(image: np.ndarray, height: int | None = None) -> np.ndarray:
    """Any supported image as uint8 BGR, optionally resized to ``height`` (nearest keeps pixels honest)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        scale = 255.0 / dtype_max(image.dtype)
        image = np.clip(image.astype(np.float32) * scale, 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] > 3:
        image = np.ascontiguousarray(image[..., :3])
    if height is not None and image.shape[0] != height:
        width = max(1, round(image.shape[1] * height / image.shape[0]))
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(image)


def _fit_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    mask = mask.astype(np.int32, copy=False)
    if mask.shape != hw:
        mask = cv2.resize(mask.astype(np.float32), (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST).astype(np.int32)
    return mask


def draw_mask_outline(
    tile: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = CLASS_COLORS[0], thickness: int = 1
) -> np.ndarray:
    """Outline the nonzero region of ``mask`` (resized to the tile) on a BGR tile, in place; returns it."""
    binary = (_fit_mask(mask, tile.shape[:2]) != 0).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(tile, contours, -1, color, thickness)
    return tile


def overlay_class_mask(tile: np.ndarray, class_mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Tint each class of an (H, W) class-index mask in its colour and outline it; returns a new tile."""
    class_mask = _fit_mask(class_mask, tile.shape[:2])
    out = tile.astype(np.float32)
    for class_id in np.unique(class_mask):
        if class_id == 0:
            continue
        region = class_mask == class_id
        out[region] = (1 - alpha) * out[region] + alpha * np.array(class_color(class_id), np.float32)
    out = out.astype(np.uint8)
    for class_id in np.unique(class_mask):
        if class_id != 0:
            draw_mask_outline(out, class_mask == class_id, class_color(class_id))
    return out


def draw_bboxes(
    tile: np.ndarray,
    bboxes_xyxy: Sequence[Sequence[float]],
    scale: float = 1.0,
    color: tuple[int, int, int] = (0, 255, 255),
) -> np.ndarray:
    """Draw pixel boxes ``(x_min, y_min, x_max, y_max)`` (scaled by ``scale``) on a tile, in place."""
    for box in bboxes_xyxy:
        x0, y0, x1, y1 = (round(float(v) * scale) for v in box[:4])
        cv2.rectangle(tile, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), color, 1)
    return tile


def label_tile(tile: np.ndarray, text: str, bar_height: int = 18) -> np.ndarray:
    """A copy of ``tile`` with ``text`` written on a dark bar above it."""
    bar = np.full((bar_height, tile.shape[1], 3), 32, np.uint8)
    cv2.putText(bar, text, (3, bar_height - 5), _FONT, 0.4, (235, 235, 235), 1, cv2.LINE_AA)
    return np.vstack([bar, tile])


def make_grid(rows: Sequence[Sequence[np.ndarray]], gap: int = 6, title: str | None = None) -> np.ndarray:
    """Stack rows of BGR tiles (rows may differ in length and tile sizes) into one picture."""
    rendered = []
    for row in rows:
        height = max(t.shape[0] for t in row)
        padded = []
        for tile in row:
            pad = np.full((height - tile.shape[0], tile.shape[1], 3), 255, np.uint8)
            padded.extend([np.vstack([tile, pad]), np.full((height, gap, 3), 255, np.uint8)])
        rendered.append(np.hstack(padded[:-1]))
    width = max(r.shape[1] for r in rendered)
    blocks = []
    if title:
        bar = np.full((28, width, 3), 255, np.uint8)
        cv2.putText(bar, title, (4, 20), _FONT, 0.6, (20, 20, 20), 1, cv2.LINE_AA)
        blocks.append(bar)
    for r in rendered:
        blocks.append(np.hstack([r, np.full((r.shape[0], width - r.shape[1], 3), 255, np.uint8)]))
        blocks.append(np.full((gap, width, 3), 255, np.uint8))
    return np.vstack(blocks[:-1])


def write_picture(path: str | os.PathLike[str], picture: np.ndarray) -> Path:
    """Write a BGR picture as .png (maximum compression: demo pictures stay small) or .jpg; returns the path.

    Raises ``ValueError`` for another suffix or when the file cannot be written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in {".png", ".jpg", ".jpeg"}:
        raise ValueError(f"cannot write {path}: the picture must be a .png or .jpg file")
    options = [cv2.IMWRITE_PNG_COMPRESSION, 9] if suffix == ".png" else [cv2.IMWRITE_JPEG_QUALITY, 92]
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), picture, options):
        raise ValueError(f"could not write {path}: is its folder writable?")
    return path
