"""CropLiq: a liquify distortion of a random patch of the object, with the patch border held fixed.

After H. X. Le, H. Kim, "CropLiq - Data Augmentation on Self-Supervised Learning for Industrial
Anomaly Detection": pick a random rectangle inside the object and liquify it while keeping its
boundary in place, so the patch stays connected to its surroundings (a dent, break or crack).

The warp is a pull map on the patch crop only, ``out[p] = crop[p + D(p)]`` (``cv2.remap``, bilinear),
and every displacement field ``D`` here is

- **exactly zero on and outside the patch border**: it is multiplied by the window
  ``W(x, y) = b(u) b(v)``, ``b(t) = 16 t^2 (1 - t)^2``, ``u = x / (w - 1)``, ``v = y / (h - 1)``,
  which is 0 with zero slope on the border rows and columns (pixels outside the crop are never
  written at all);
- **fold-free**: the field is scaled by the largest ``a <= 1`` for which
  ``det(I + a grad D) >= MIN_JACOBIAN_DET`` (0.2) at every corner of every pixel cell (``grad`` by
  the forward and backward differences along the cell's edges: the exact condition for the
  piecewise-bilinear warp between pixel centres not to fold), so the map ``p -> p + a D(p)`` keeps
  its orientation everywhere and maps the patch onto itself.

The anomaly mask is the set of pixels moved by more than ``move_threshold`` pixels (0.5 by
default). Pixels moved by less are left exactly as they were, so every changed pixel is in the mask.

Warp kinds (``r`` = half the patch's shorter side, centres drawn in the middle 40% of the patch):

- ``push``: a forward push ``D = -W g v`` by a Gaussian brush ``g`` (sigma 0.25-0.5 r), ``|v| = strength r``;
- ``swirl``: a rotation by ``strength * pi * W g`` around the centre (brush sigma 0.5-1 r);
- ``bloat`` / ``pinch``: ``D = -/+ strength W g (p - c)`` (brush sigma 0.5-1 r);
- ``strokes``: the sum of 2-4 random strokes of the kinds above, with smaller brushes anywhere in
  the middle 60%.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, NamedTuple

import cv2
import numpy as np

from albu_defects.core.geometry import Box, box_hw, box_slices, mask_bbox
from albu_defects.core.validation import check_image, image_hw, num_channels

__all__ = [
    "FOREGROUND_THUMBNAIL_SIDE",
    "MIN_JACOBIAN_DET",
    "MIN_PATCH_SIDE",
    "WARP_KINDS",
    "Region",
    "bbox_to_pixels",
    "bloat_field",
    "fold_free_scale",
    "foreground_mask",
    "liquify",
    "moved_pixels",
    "patch_window",
    "push_field",
    "draw_patch",
    "draw_warp_field",
    "swirl_field",
    "warp_patch",
]

#: Smallest patch side (pixels): below it the window leaves almost nothing to move.
MIN_PATCH_SIDE = 8
#: Floor on det(I + grad D) of every warp: the local area never shrinks below 20% nor flips.
MIN_JACOBIAN_DET = 0.2
#: Warp kinds ``CropLiq(warp=...)`` accepts besides ``"random"`` (one of these per call).
WARP_KINDS: tuple[str, ...] = ("push", "swirl", "bloat", "pinch", "strokes")
#: Draws tried before giving up on a warp that moves nothing by more than the threshold.
MAX_DRAWS = 10
_MIN_SIGMA = 1.5  # brush sigma floor (pixels): keeps the field smooth at the pixel scale

Field2D = tuple[np.ndarray, np.ndarray]  # (dx, dy), float32 (h, w)


# --------------------------------------------------------------------------- displacement fields
def _bump(t: np.ndarray) -> np.ndarray:
    return 16.0 * t * t * (1.0 - t) * (1.0 - t)


@lru_cache(maxsize=32)
def patch_window(h: int, w: int) -> np.ndarray:
    """``W = b(v) b(u)``: 1 at the patch centre, exactly 0 (with zero slope) on its border; float32 (h, w).

    Cached (strokes draw several brushes on one patch) and read-only.
    """
    if h < 3 or w < 3:
        raise ValueError(f"a liquify patch needs at least 3x3 pixels, got {h}x{w}")
    by = _bump(np.arange(h, dtype=np.float32) / np.float32(h - 1))
    bx = _bump(np.arange(w, dtype=np.float32) / np.float32(w - 1))
    window = by[:, None] * bx[None, :]
    window.setflags(write=False)
    return window


def _brush(h: int, w: int, center: tuple[float, float], sigma: float | None) -> np.ndarray:
    """Separable Gaussian brush around ``center=(y, x)`` times the window (no brush when ``sigma`` is None)."""
    weight = patch_window(h, w)
    if sigma is None:
        return weight
    scale = np.float32(-0.5 / (sigma * sigma))
    gy = np.exp(scale * (np.arange(h, dtype=np.float32) - np.float32(center[0])) ** 2)
    gx = np.exp(scale * (np.arange(w, dtype=np.float32) - np.float32(center[1])) ** 2)
    return weight * gy[:, None] * gx[None, :]


def _offsets(h: int, w: int, center: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """``p - c`` as broadcastable (1, w) x-offsets and (h, 1) y-offsets."""
    ox = np.arange(w, dtype=np.float32)[None, :] - np.float32(center[1])
    oy = np.arange(h, dtype=np.float32)[:, None] - np.float32(center[0])
    return ox, oy


def push_field(
    h: int, w: int, center: tuple[float, float], direction: float, distance: float, sigma: float | None
) -> Field2D:
    """Forward push: content near ``center`` moves ``distance`` px towards angle ``direction`` (radians)."""
    weight = _brush(h, w, center, sigma)
    return (
        np.float32(-distance * np.cos(direction)) * weight,
        np.float32(-distance * np.sin(direction)) * weight,
    )


def swirl_field(h: int, w: int, center: tuple[float, float], angle: float, sigma: float | None) -> Field2D:
    """Swirl: each pixel is rotated about ``center`` by ``angle * W g`` radians (sign = direction)."""
    turn = np.float32(angle) * _brush(h, w, center, sigma)
    cos, sin = np.cos(turn), np.sin(turn)
    ox, oy = _offsets(h, w, center)
    return (cos - 1.0) * ox - sin * oy, sin * ox + (cos - 1.0) * oy


def bloat_field(h: int, w: int, center: tuple[float, float], amount: float, sigma: float | None) -> Field2D:
    """Bloat (``amount > 0``: magnify around ``center``) or pinch (``amount < 0``): ``D = -amount W g (p - c)``."""
    weight = np.float32(-amount) * _brush(h, w, center, sigma)
    ox, oy = _offsets(h, w, center)
    return weight * ox, weight * oy


def fold_free_scale(dx: np.ndarray, dy: np.ndarray, min_det: float = MIN_JACOBIAN_DET) -> float:
    """The largest ``a`` in [0, 1] with ``det(I + s grad D) >= min_det`` at every cell corner for every ``s`` in [0, a].

    At a cell corner, with ``p, q`` the differences of ``dx, dy`` along the cell's x-edge and ``r, s``
    along its y-edge (the mapped edges' cross product is the bilinear cell's determinant, extreme at
    the corners), ``det = 1 + a t + a^2 d`` with ``t = p + s``, ``d = p s - q r``: a quadratic in ``a``
    that starts at 1. Its smallest positive
    root of ``det = min_det`` is ``1 / z`` for the largest root ``z`` of ``k z^2 + t z + d = 0``
    (``k = 1 - min_det > 0``), ``z = (sqrt(t^2 - 4 k d) - t) / (2 k)``; the answer is ``1 / max z``
    over all corners (1 when no ``z`` exceeds 1), times 0.999 against rounding.
    """
    if not 0.0 < min_det < 1.0:
        raise ValueError(f"min_det must lie in (0, 1), got {min_det}")
    k = np.float32(1.0 - min_det)
    dxx, dyx = np.diff(dx, axis=1), np.diff(dy, axis=1)
    dxy, dyy = np.diff(dx, axis=0), np.diff(dy, axis=0)
    largest = -np.inf  # of sqrt(disc) - t, i.e. 2 k z
    for rows in (slice(None, -1), slice(1, None)):  # top / bottom x-edge of each cell
        p, q = dxx[rows], dyx[rows]
        for cols in (slice(None, -1), slice(1, None)):  # left / right y-edge
            r, s = dxy[:, cols], dyy[:, cols]
            t = p + s
            disc = t * t - (4.0 * k) * (p * s - q * r)
            # a corner with disc < 0 never reaches min_det: -inf keeps it out of the maximum
            value = np.where(disc >= 0, np.sqrt(np.maximum(disc, 0)) - t, -np.inf)
            largest = max(largest, float(value.max()))
    z = largest / (2.0 * float(k))
    return 1.0 if z <= 1.0 else 0.999 / z


def _draw_stroke(
    kind: str,
    h: int,
    w: int,
    strength: float,
    rng: np.random.Generator,
    center_span: float,
    sigma_range: tuple[float, float],
) -> Field2D:
    radius = min(h, w) / 2.0
    low, high = 0.5 - center_span / 2.0, 0.5 + center_span / 2.0
    center = (float(rng.uniform(low, high) * (h - 1)), float(rng.uniform(low, high) * (w - 1)))
    sigma = max(_MIN_SIGMA, float(rng.uniform(*sigma_range)) * radius)
    if kind == "push":
        return push_field(h, w, center, float(rng.uniform(0.0, 2.0 * np.pi)), strength * radius, sigma)
    if kind == "swirl":
        sign = 1.0 if rng.random() < 0.5 else -1.0
        return swirl_field(h, w, center, sign * strength * np.pi, sigma)
    if kind in ("bloat", "pinch"):
        return bloat_field(h, w, center, strength if kind == "bloat" else -strength, sigma)
    raise ValueError(f"warp must be one of {', '.join(WARP_KINDS)}, got {kind!r}")


def draw_warp_field(
    h: int, w: int, kind: str, strength_range: tuple[float, float], rng: np.random.Generator
) -> Field2D:
    """Draw a fold-free displacement field ``(dx, dy)`` of ``kind`` for an ``h`` x ``w`` patch.

    Zero on the border rows and columns; scaled by :func:`fold_free_scale` so
    ``det(I + grad D) >= MIN_JACOBIAN_DET`` everywhere.
    """
    if kind == "strokes":
        strokes = [
            _draw_stroke(
                str(rng.choice(WARP_KINDS[:-1])), h, w, float(rng.uniform(*strength_range)), rng, 0.6, (0.2, 0.4)
            )
            for _ in range(int(rng.integers(2, 5)))
        ]
        dx, dy = sum(s[0] for s in strokes), sum(s[1] for s in strokes)
    else:
        sigma_range = (0.25, 0.5) if kind == "push" else (0.5, 1.0)
        dx, dy = _draw_stroke(kind, h, w, float(rng.uniform(*strength_range)), rng, 0.4, sigma_range)
    scale = np.float32(fold_free_scale(dx, dy))
    dx, dy = dx * scale, dy * scale
    for field in (dx, dy):  # already 0 there by the window; made explicit against any rounding
        field[[0, -1], :] = 0.0
        field[:, [0, -1]] = 0.0
    return dx, dy


# --------------------------------------------------------------------------- the warp
def moved_pixels(dx: np.ndarray, dy: np.ndarray, move_threshold: float) -> np.ndarray:
    """Boolean mask of the pixels a field moves by more than ``move_threshold`` pixels."""
    return dx * dx + dy * dy > np.float32(move_threshold) ** 2


def warp_patch(patch: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Pull warp ``out[p] = patch[p + D(p)]`` (bilinear); same shape and dtype, any channel count."""
    h, w = patch.shape[:2]
    map_x = np.arange(w, dtype=np.float32)[None, :] + dx
    map_y = np.arange(h, dtype=np.float32)[:, None] + dy
    warped = cv2.remap(np.ascontiguousarray(patch), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return warped.reshape(patch.shape)


def liquify(
    image: np.ndarray, top_left: tuple[int, int], dx: np.ndarray, dy: np.ndarray, move_threshold: float = 0.5
) -> np.ndarray:
    """A copy of ``image`` with the patch at ``top_left=(y, x)`` (the size of ``dx``) warped by ``(dx, dy)``.

    Only pixels moved by more than ``move_threshold`` are written (:func:`moved_pixels`); every
    other pixel, inside or outside the patch, keeps its exact value.
    """
    check_image(image, "image")
    h, w = dx.shape
    y, x = int(top_left[0]), int(top_left[1])
    H, W = image_hw(image)
    if dy.shape != dx.shape or y < 0 or x < 0 or y + h > H or x + w > W:
        raise ValueError(f"a {h}x{w} patch at (y={y}, x={x}) must lie inside the {H}x{W} image (dx, dy same shape)")
    out = image.copy()
    moved = moved_pixels(dx, dy, move_threshold)
    if moved.any():
        window = out[y : y + h, x : x + w]
        warped = warp_patch(image[y : y + h, x : x + w], dx, dy)
        np.copyto(window, warped, where=moved if window.ndim == 2 else moved[..., None])
    return out


# --------------------------------------------------------------------------- regions and patches
class Region(NamedTuple):
    """Where a patch may go: the whole ``box`` (``mask`` None) or the ``mask`` pixels inside it."""

    box: Box  # (x_min, y_min, x_max, y_max), ends exclusive
    area: int
    mask: np.ndarray | None = None  # bool (H, W)
    integral: np.ndarray | None = None  # summed-area table of mask[box], (bh + 1, bw + 1)

    @classmethod
    def from_box(cls, box: Box) -> Region:
        x0, y0, x1, y1 = (int(v) for v in box)
        return cls((x0, y0, x1, y1), max(0, y1 - y0) * max(0, x1 - x0))

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> Region | None:
        """The region of a boolean mask, or ``None`` when it is empty."""
        box = mask_bbox(mask)
        if box is None:
            return None
        integral = cv2.integral(mask[box_slices(box)].astype(np.uint8))
        return cls(box, int(np.count_nonzero(mask)), mask, integral)

    def valid_origins(self, h: int, w: int) -> np.ndarray | None:
        """Boolean map of the top-left corners (relative to ``box``) where an h x w patch lies inside, or None."""
        bh, bw = box_hw(self.box)
        if h > bh or w > bw:
            return None
        if self.integral is None:
            return np.ones((bh - h + 1, bw - w + 1), bool)
        s = self.integral
        inside = s[h:, w:] - s[:-h, w:] - s[h:, :-w] + s[:-h, :-w]
        return inside == h * w

    def fits(self, h: int, w: int) -> bool:
        if self.integral is None:
            return h <= box_hw(self.box)[0] and w <= box_hw(self.box)[1]
        origins = self.valid_origins(h, w)
        return origins is not None and bool(origins.any())

    def place(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int] | None:
        """A uniformly random top-left ``(row, col)`` (image coordinates) of an h x w patch inside, or None."""
        x0, y0, x1, y1 = self.box
        if self.integral is None:
            if h > y1 - y0 or w > x1 - x0:
                return None
            return y0 + int(rng.integers(0, y1 - y0 - h + 1)), x0 + int(rng.integers(0, x1 - x0 - w + 1))
        origins = self.valid_origins(h, w)
        count = 0 if origins is None else int(np.count_nonzero(origins))
        if count == 0:
            return None
        if count >= origins.size // 8:  # mostly valid: rejection sampling, still uniform, no index list
            for _ in range(64):
                oy, ox = int(rng.integers(origins.shape[0])), int(rng.integers(origins.shape[1]))
                if origins[oy, ox]:
                    return y0 + oy, x0 + ox
        oy, ox = divmod(int(np.flatnonzero(origins)[rng.integers(count)]), origins.shape[1])
        return y0 + oy, x0 + ox


def bbox_to_pixels(bbox: Any, hw: tuple[int, int]) -> Box:
    """The pixels fully inside a normalized ``(x_min, y_min, x_max, y_max)`` box, as a pixel box."""
    H, W = hw
    x_min, y_min, x_max, y_max = (float(v) for v in list(bbox)[:4])
    eps = 1e-4  # normalized boxes carry float32 rounding
    x0, y0 = max(0, int(np.ceil(x_min * W - eps))), max(0, int(np.ceil(y_min * H - eps)))
    x1, y1 = min(W, int(np.floor(x_max * W + eps))), min(H, int(np.floor(y_max * H + eps)))
    return x0, y0, x1, y1


#: Side (pixels) of the thumbnail the automatic foreground estimate works on.
FOREGROUND_THUMBNAIL_SIDE = 64


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """Automatic object estimate: Otsu threshold of a grey thumbnail, largest component, holes filled.

    Works on a thumbnail whose longer side is at most 64 pixels (area averaging doubles as the
    denoising blur), then scales the mask back up. The foreground side of the threshold is the one
    covering less of the image border (objects sit inside the frame). Returns a bool (H, W) mask,
    empty when the image is flat.
    """
    check_image(image, "image")
    hw = image_hw(image)
    scale = min(1.0, FOREGROUND_THUMBNAIL_SIDE / max(hw))
    channels = num_channels(image)
    if channels == 3:
        gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)  # grey first: one channel to shrink
    elif channels == 1:
        gray = np.ascontiguousarray(image.reshape(hw))
    else:
        gray = image.astype(np.float32).mean(axis=2)
    if scale < 1.0:
        size = (max(1, round(hw[1] * scale)), max(1, round(hw[0] * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    gray = gray.astype(np.float32)
    low, high = float(gray.min()), float(gray.max())
    if high <= low:
        return np.zeros(hw, bool)
    gray8 = np.rint((gray - low) * (255.0 / (high - low))).astype(np.uint8)
    _, binary = cv2.threshold(gray8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    border = np.concatenate([binary[0], binary[-1], binary[:, 0], binary[:, -1]])
    if border.mean() > 0.5:
        binary = 1 - binary
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count <= 1:
        return np.zeros(hw, bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    component = (labels == largest).astype(np.uint8)
    # background, framed so the border connects
    outside = cv2.copyMakeBorder(1 - component, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=1)
    cv2.floodFill(outside, None, (0, 0), 2)
    filled = (outside[1:-1, 1:-1] != 2).astype(np.uint8)  # the component plus its holes
    if scale < 1.0:
        filled = cv2.resize(filled, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)
    return filled.astype(bool)


def draw_patch(
    region: Region,
    area_range: tuple[float, float],
    aspect_range: tuple[float, float],
    rng: np.random.Generator,
    min_side: int = MIN_PATCH_SIDE,
) -> Box | None:
    """A random patch (a box) lying inside ``region``, or ``None`` if not even min_side fits.

    Area is a fraction of the region's area drawn from ``area_range``; aspect (w / h) is
    log-uniform in ``aspect_range``. A patch that does not fit is shrunk (aspect kept) until it does.
    """
    ratio = float(rng.uniform(*area_range))
    aspect = float(np.exp(rng.uniform(np.log(aspect_range[0]), np.log(aspect_range[1]))))
    area = ratio * region.area
    region_h, region_w = box_hw(region.box)
    h = int(np.clip(round(np.sqrt(area / aspect)), min_side, max(min_side, region_h)))
    w = int(np.clip(round(np.sqrt(area * aspect)), min_side, max(min_side, region_w)))
    while True:
        origin = region.place(h, w, rng)
        if origin is not None:
            return origin[1], origin[0], origin[1] + w, origin[0] + h
        if h == min_side and w == min_side:
            return None
        h, w = max(min_side, int(h * 0.8)), max(min_side, int(w * 0.8))
