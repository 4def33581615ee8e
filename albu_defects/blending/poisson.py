"""Blending core: hard cut-paste and Poisson blending of a masked source onto a target.

Conventions shared by every function here: ``source`` and ``mask`` have the same height and
width; ``top_left=(y, x)`` places them on ``target`` and may be negative or run past the far edges
(only the overlap is used); the result is a new array with the target's shape and dtype, and no
input is ever modified.

Poisson blending (Perez, Gangnet and Blake, 2003) has two implementations here. The *exact* one
sets up the discrete Poisson equation on exactly the masked pixels and solves it with
:mod:`albu_defects.blending.solver` (banded Cholesky for small, thin or scattered regions,
deflated conjugate gradients for large compact ones). The *OpenCV* one calls
``cv2.seamlessClone`` behind guards against its measured defects. ``auto`` picks OpenCV only
where its result is faithful; see :func:`poisson_blend`.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import cv2
import numpy as np

from albu_defects.blending.grid import RESIDUAL_BOUND, border_sides, laplacian
from albu_defects.blending.solver import solve
from albu_defects.core.geometry import dilate_mask, grow_box, mask_bbox, placement_overlap
from albu_defects.core.validation import (
    as_bool_mask,
    check_choice,
    check_image,
    check_matching_images,
    clip_to_dtype,
    image_hw,
)

__all__ = [
    "AUTO_OPENCV_MIN_KEPT",
    "AUTO_OPENCV_MIN_PIXELS",
    "OPENCV_EROSION",
    "RESIDUAL_BOUND",
    "local_contrast",
    "paste",
    "paste_into",
    "poisson_blend",
    "poisson_solve",
]

#: ``cv2.seamlessClone`` erodes the mask by this many pixels (3x3 kernel, 3 iterations) before it uses the source.
OPENCV_EROSION = 3
#: ``auto`` considers OpenCV only for images of at least this many channels (OpenCV solves every
#: channel; the exact solver's one channel takes under half of OpenCV's three-channel call, measured) ...
AUTO_OPENCV_MIN_CHANNELS = 3
#: ... and regions of at least this many pixels ...
AUTO_OPENCV_MIN_PIXELS = 4000
#: ... that keep at least this fraction of their pixels through OpenCV's 3-px erosion ...
AUTO_OPENCV_MIN_KEPT = 0.8
#: ... and, after the call, keep at least this fraction of the source's core-versus-band contrast.
AUTO_OPENCV_MIN_CONTRAST = 0.75

Mode = Literal["normal", "mixed"]
Method = Literal["auto", "opencv", "exact"]
#: The values of ``mode`` and ``method`` (the same as the literals above).
POISSON_MODES: tuple[str, ...] = ("normal", "mixed")
POISSON_METHODS: tuple[str, ...] = ("auto", "opencv", "exact")


class BlendInputs(NamedTuple):
    """Validated blend inputs: the source and mask cut down to the part that lands on the target."""

    target: np.ndarray
    source: np.ndarray  # only the overlapping window
    mask: np.ndarray  # bool, same window
    window: tuple[slice, slice]  # where ``source`` lands on ``target``


def check_blend_inputs(
    target: np.ndarray, source: np.ndarray, mask: np.ndarray, top_left: tuple[int, int]
) -> BlendInputs | None:
    """Validate a blend call and clip it to the target; ``None`` when nothing of the mask lands on it."""
    check_image(target, "target")
    check_image(source, "source")
    check_matching_images(target, source, "target", "source")
    mask = as_bool_mask(mask, image_hw(source), "mask")
    if len(top_left) != 2:
        raise ValueError(f"top_left must be (y, x), got {top_left!r}")
    overlap = placement_overlap(image_hw(target), image_hw(source), top_left)
    if overlap is None:
        return None
    window_mask = mask[overlap.source]
    if not window_mask.any():
        return None
    return BlendInputs(target, source[overlap.source], window_mask, overlap.target)


def paste(target: np.ndarray, source: np.ndarray, mask: np.ndarray, top_left: tuple[int, int]) -> np.ndarray:
    """Hard cut-paste: copy the ``mask`` pixels of ``source`` onto ``target`` at ``top_left=(y, x)``.

    Returns a new array (target's shape and dtype); pixels outside the mask are the target's.
    """
    inputs = check_blend_inputs(target, source, mask, top_left)
    out = target.copy()
    if inputs is not None:
        _copy_masked(out, inputs)
    return out


def paste_into(target: np.ndarray, source: np.ndarray, mask: np.ndarray, top_left: tuple[int, int]) -> None:
    """:func:`paste` writing into ``target`` itself (a writable array), for several pastes on one copy."""
    inputs = check_blend_inputs(target, source, mask, top_left)
    if inputs is not None:
        _copy_masked(target, inputs)


def _copy_masked(out: np.ndarray, inputs: BlendInputs) -> None:
    window = out[inputs.window]
    mask = inputs.mask if window.ndim == 2 else inputs.mask[..., None]
    np.copyto(window, inputs.source, where=mask)  # much faster than boolean fancy indexing


# --------------------------------------------------------------------------------------------
# The exact Perez system on the masked pixels
# --------------------------------------------------------------------------------------------


class _Region(NamedTuple):
    """The masked region cut out of the target: its bounding box grown by 1 px where the image allows.

    All arrays are (h, w[, C]) float64 in one frame, possibly transposed (``transposed``) so that
    rows run along the region's shorter side (this keeps the banded factorization narrow).
    ``neumann`` says, per side (top, bottom, left, right) of that frame, whether the region touches
    the image border there (natural boundary condition) instead of having a Dirichlet ring.
    """

    crop: tuple[slice, slice]  # in target coordinates
    transposed: bool
    mask: np.ndarray  # (h, w) bool
    target: np.ndarray  # (h, w, C)
    source: np.ndarray  # (h, w, C); edge-replicated where the crop leaves the source window
    neumann: tuple[bool, bool, bool, bool]


def _as_hwc(image: np.ndarray) -> np.ndarray:
    return image[:, :, None] if image.ndim == 2 else image


def _replicate_edges(image: np.ndarray, pads: tuple[int, int, int, int]) -> np.ndarray:
    """``image`` (h, w, C) grown by (top, bottom, left, right) pixels repeating its edge (OpenCV's
    border copy: ten times faster than ``np.pad`` on these small crops)."""
    out = cv2.copyMakeBorder(np.ascontiguousarray(image), *pads, cv2.BORDER_REPLICATE)
    return out.reshape(*out.shape[:2], image.shape[2])


def _region(inputs: BlendInputs) -> _Region:
    target = _as_hwc(inputs.target)
    height, width = target.shape[:2]
    wy, wx = inputs.window
    bx0, by0, bx1, by1 = mask_bbox(inputs.mask)  # type: ignore[misc]  # the mask is never empty here
    ty0, tx0, ty1, tx1 = wy.start + by0, wx.start + bx0, wy.start + by1, wx.start + bx1
    cx0, cy0, cx1, cy1 = grow_box((tx0, ty0, tx1, ty1), 1, (height, width))
    mask = np.zeros((cy1 - cy0, cx1 - cx0), bool)
    mask[ty0 - cy0 : ty1 - cy0, tx0 - cx0 : tx1 - cx0] = inputs.mask[by0:by1, bx0:bx1]
    # Source on the crop; rows/columns of the crop beyond the source window repeat its edge, so the
    # source gradient across the source's own edge is zero.
    source = _as_hwc(inputs.source)
    sy0, sx0 = cy0 - wy.start, cx0 - wx.start
    sy1, sx1 = sy0 + mask.shape[0], sx0 + mask.shape[1]
    inner = source[max(sy0, 0) : min(sy1, source.shape[0]), max(sx0, 0) : min(sx1, source.shape[1])]
    pads = (max(-sy0, 0), max(sy1 - source.shape[0], 0), max(-sx0, 0), max(sx1 - source.shape[1], 0))
    src = _replicate_edges(inner, pads) if any(pads) else inner
    neumann = (ty0 == 0, ty1 == height, tx0 == 0, tx1 == width)
    transposed = mask.shape[1] > mask.shape[0]
    if transposed:
        mask, neumann = mask.T, (neumann[2], neumann[3], neumann[0], neumann[1])

    def in_frame(image: np.ndarray) -> np.ndarray:  # float64, C order, transposed if the frame is: one copy
        return np.array(image.transpose(1, 0, 2) if transposed else image, dtype=np.float64, order="C")

    return _Region(
        (slice(cy0, cy1), slice(cx0, cx1)),
        transposed,
        np.ascontiguousarray(mask),
        in_frame(target[cy0:cy1, cx0:cx1]),
        in_frame(src),
        neumann,
    )


def _guidance_divergence(region: _Region, mode: Mode) -> np.ndarray:
    """Per crop pixel, the sum over its in-image neighbours q of the guidance v_pq, (h, w, C)
    (meaningful on the mask)."""
    src = region.source
    if mode == "normal":  # v_pq = g_p - g_q: the (negated) Laplacian of the source
        return laplacian(src, border_sides(region.mask.shape, region.neumann))
    tgt = region.target
    div = np.zeros_like(src)
    # Each unordered edge once: down and right; v_qp = -v_pq, so it adds to p and subtracts from q.
    for axis in (0, 1):
        lo = (slice(None, -1), slice(None)) if axis == 0 else (slice(None), slice(None, -1))
        hi = (slice(1, None), slice(None)) if axis == 0 else (slice(None), slice(1, None))
        v = src[lo] - src[hi]
        dt = tgt[lo] - tgt[hi]
        np.copyto(v, dt, where=np.abs(dt) > np.abs(v))  # Perez's mixed gradients, per edge and channel
        div[lo] += v
        div[hi] -= v
    return div


def _rhs_grid(region: _Region, mode: Mode) -> np.ndarray:
    """Right-hand side on the crop grid: guidance divergence plus the Dirichlet values next to each
    pixel (meaningful on the mask)."""
    outside = region.target * ~region.mask[:, :, None]
    # On a masked pixel the Laplacian of ``outside`` is minus the sum of its unmasked neighbours.
    if mode == "normal":  # both terms are Laplacians: one filter pass over their difference
        rhs = laplacian(np.subtract(region.source, outside, out=outside), [])
        for side in border_sides(region.mask.shape, region.neumann):
            rhs[side] -= region.source[side]
        return rhs
    return _guidance_divergence(region, mode) - laplacian(outside, [])


def _solve_region(region: _Region, mode: Mode, solver: str = "auto") -> np.ndarray:
    """Solve the Perez system on ``region``; the float64 solution on the crop grid (h, w, C).

    ``solver`` ("auto", "banded", "pcg" or "splu") is for tests; "auto" picks the cheaper exact one.
    """
    rhs = _rhs_grid(region, mode)
    mean = region.target.mean(axis=(0, 1)) if region.mask.all() else None  # pins a pure Neumann solve
    return solve(region.mask, region.neumann, rhs, mean=mean, solver=solver)


def _exact_crop(inputs: BlendInputs, mode: Mode, solver: str = "auto") -> tuple[_Region, np.ndarray]:
    region = _region(inputs)
    return region, _solve_region(region, mode, solver)


def _untranspose(region: _Region, grid: np.ndarray) -> np.ndarray:
    return grid.transpose(1, 0, 2) if region.transposed else grid


def poisson_solve(
    target: np.ndarray,
    source: np.ndarray,
    mask: np.ndarray,
    top_left: tuple[int, int],
    *,
    mode: Mode = "normal",
) -> np.ndarray:
    """The exact Perez solution as float64, before rounding and clipping: target's (H, W[, C]) shape.

    Pixels outside the mask hold the target's values. See :func:`poisson_blend` for the equation.
    """
    check_choice(mode, POISSON_MODES, "mode")
    inputs = check_blend_inputs(target, source, mask, top_left)
    out = target.astype(np.float64)
    if inputs is None:
        return out
    region, x = _exact_crop(inputs, mode)
    _write_masked(out, region, x)
    return out


def _write_masked(out: np.ndarray, region: _Region, values: np.ndarray) -> None:
    """Write ``values`` (crop grid, region frame) into ``out`` on the masked pixels only."""
    mask = _untranspose(region, region.mask[:, :, None])[:, :, 0]
    vals = _untranspose(region, values)
    view = _as_hwc(out)[region.crop]
    np.copyto(view, vals, casting="unsafe", where=mask[:, :, None])  # faster than boolean indexing


# --------------------------------------------------------------------------------------------
# The OpenCV path
# --------------------------------------------------------------------------------------------


def _opencv_erosion(mask: np.ndarray) -> np.ndarray:
    """The part of ``mask`` whose source gradients ``cv2.seamlessClone`` keeps (3 x 3x3 erosions)."""
    kernel = np.ones((3, 3), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel, iterations=OPENCV_EROSION, borderValue=0) > 0


def _opencv_unusable(inputs: BlendInputs) -> str | None:
    """Why ``cv2.seamlessClone`` cannot blend these inputs faithfully, or ``None`` if it can."""
    if inputs.target.dtype != np.uint8:
        return (
            f"cv2.seamlessClone only handles uint8 images (it returns garbage for {inputs.target.dtype}); "
            "use method='exact' or 'auto'"
        )
    x0, y0, x1, y1 = mask_bbox(inputs.mask)  # type: ignore[misc]
    if y1 - y0 < 3 or x1 - x0 < 3:
        return (
            f"cv2.seamlessClone crashes on masks whose bounding box is under 3 px on a side "
            f"(got {y1 - y0}x{x1 - x0}); use method='exact' or 'auto'"
        )
    height, width = inputs.target.shape[:2]
    if y1 - y0 + 2 > height or x1 - x0 + 2 > width:
        return (
            "cv2.seamlessClone needs a 1-px margin around the mask's bounding box inside the target, "
            "and this region spans the whole target; use method='exact' or 'auto'"
        )
    if not _opencv_erosion(inputs.mask[y0:y1, x0:x1]).any():
        return (
            "cv2.seamlessClone erodes the mask by 3 px before it reads the source, and nothing of this "
            "mask survives (it is under 7 px wide), so the source would vanish; use method='exact' or 'auto'"
        )
    return None


def _opencv_blend(inputs: BlendInputs, mode: Mode) -> np.ndarray:
    """``cv2.seamlessClone`` on our own copies, every channel, placed exactly; raises what it cannot do."""
    reason = _opencv_unusable(inputs)
    if reason is not None:
        raise ValueError(reason)
    target = _as_hwc(inputs.target)
    height, width, channels = target.shape
    wy, wx = inputs.window
    bx0, by0, bx1, by1 = mask_bbox(inputs.mask)  # type: ignore[misc]
    bh, bw = by1 - by0, bx1 - bx0
    # Source and mask get a 1-px margin (cv2 zeroes the mask's outer frame); the mask is our own
    # uint8 0/255 copy (cv2 writes into it, and reads a 0/1 mask as 1/255).
    src_pad = np.zeros((bh + 2, bw + 2, channels), np.uint8)
    src_pad[1:-1, 1:-1] = _as_hwc(inputs.source)[by0:by1, bx0:bx1]
    mask_pad = np.zeros((bh + 2, bw + 2), np.uint8)
    mask_pad[1:-1, 1:-1] = inputs.mask[by0:by1, bx0:bx1] * np.uint8(255)
    # The destination is cropped to the box plus a 1-px margin, shifted inwards at the image border
    # (cv2 rejects a source larger than the destination).
    ty0, tx0 = wy.start + by0, wx.start + bx0
    cy0, cx0 = min(max(ty0 - 1, 0), height - bh - 2), min(max(tx0 - 1, 0), width - bw - 2)
    cy1, cx1 = cy0 + bh + 2, cx0 + bw + 2
    dst = target[cy0:cy1, cx0:cx1]
    # cv2 places the box's top-left at (center - size // 2).
    center = (tx0 - cx0 + bw // 2, ty0 - cy0 + bh // 2)
    flag = cv2.NORMAL_CLONE if mode == "normal" else cv2.MIXED_CLONE
    blended = np.empty(dst.shape, np.uint8)
    for first in range(0, channels, 3):
        group = [min(first + k, channels - 1) for k in range(3)]  # cv2 wants exactly 3 channels
        out = cv2.seamlessClone(
            np.ascontiguousarray(src_pad[:, :, group]),
            np.ascontiguousarray(dst[:, :, group]),
            mask_pad.copy(),
            center,
            flag,
        )
        take = list(range(first, min(first + 3, channels)))
        blended[:, :, take] = out[:, :, : len(take)]
    result = inputs.target.copy()
    _as_hwc(result)[cy0:cy1, cx0:cx1] = blended
    return result


# --------------------------------------------------------------------------------------------
# Local contrast and the auto rule
# --------------------------------------------------------------------------------------------


def local_contrast(image: np.ndarray, mask: np.ndarray, ring: int = 3) -> float:
    """|mean over ``mask`` - mean over the ``ring``-px band just outside it| (channels averaged).

    The band is the mask grown by ``ring`` px (square neighbourhood) minus the mask, clipped to the
    image. A defect keeps its visibility after blending when this stays close to the source's own.
    """
    check_image(image, "image")
    inside = as_bool_mask(mask, image_hw(image), "mask")
    if int(ring) < 1:
        raise ValueError(f"ring must be at least 1 px, got {ring}")
    if not inside.any():
        raise ValueError("mask is empty: local contrast needs at least one pixel inside it")
    band = dilate_mask(inside, int(ring)) & ~inside
    if not band.any():
        raise ValueError("mask covers the whole image: there is no ring around it to compare with")
    return _core_contrast(image, inside, band)


def _core_contrast(image: np.ndarray, core: np.ndarray, band: np.ndarray) -> float:
    """|mean over ``core`` - mean over ``band``|, channels averaged (both non-empty bool masks)."""
    values = _as_hwc(image).astype(np.float64)
    return float(np.abs(values[core].mean(axis=0) - values[band].mean(axis=0)).mean())


def _auto_uses_opencv(inputs: BlendInputs, mode: Mode) -> bool:
    """The static half of the auto rule (see :func:`poisson_blend`)."""
    if mode != "normal" or _as_hwc(inputs.target).shape[2] < AUTO_OPENCV_MIN_CHANNELS:
        return False
    if _opencv_unusable(inputs) is not None:
        return False
    height, width = inputs.target.shape[:2]
    wy, wx = inputs.window
    x0, y0, x1, y1 = mask_bbox(inputs.mask)  # type: ignore[misc]
    if wy.start + y0 < 1 or wx.start + x0 < 1 or wy.start + y1 > height - 1 or wx.start + x1 > width - 1:
        return False  # Perez has a natural condition on the image border; cv2 pins the box frame
    n = int(inputs.mask.sum())
    if n < AUTO_OPENCV_MIN_PIXELS:
        return False
    kept = int(_opencv_erosion(inputs.mask[y0:y1, x0:x1]).sum())
    return kept >= AUTO_OPENCV_MIN_KEPT * n


def _opencv_kept_contrast(inputs: BlendInputs, result: np.ndarray) -> bool:
    """The dynamic half of the auto rule: did cv2 keep the source's contrast between the mask's
    eroded core and the band around it (where its erosion replaces source gradients)?"""
    x0, y0, x1, y1 = mask_bbox(inputs.mask)  # type: ignore[misc]
    mask = inputs.mask[y0:y1, x0:x1]
    core = _opencv_erosion(mask)
    band = mask & ~core
    if not band.any():
        return True
    source = _as_hwc(inputs.source)[y0:y1, x0:x1]
    wy, wx = inputs.window
    blended = _as_hwc(result)[wy.start + y0 : wy.start + y1, wx.start + x0 : wx.start + x1]
    wanted = _core_contrast(source, core, band)
    return _core_contrast(blended, core, band) >= AUTO_OPENCV_MIN_CONTRAST * wanted


def poisson_blend(
    target: np.ndarray,
    source: np.ndarray,
    mask: np.ndarray,
    top_left: tuple[int, int],
    *,
    mode: Mode = "normal",
    method: Method = "auto",
) -> np.ndarray:
    """Poisson-blend the ``mask`` pixels of ``source`` into ``target`` at ``top_left=(y, x)``.

    ``source`` and ``mask`` share their height and width; the placement may run off any edge of
    the target (only the overlap is used). Images are uint8, uint16 or float32, (H, W), (H, W, 1)
    or (H, W, C); masks bool or integer (nonzero = inside). Returns a new array with the target's
    shape and dtype, rounded and clipped to the dtype's range (float32 unclipped but finite).

    ``method="exact"`` solves the discrete Poisson equation of Perez et al. (2003) on exactly the
    masked pixels: for every masked pixel p, ``sum over its 4 in-image neighbours q of
    (f_p - f_q) = sum of v_pq``, with ``f_q`` the target's value for q outside the mask (Dirichlet)
    and neighbours outside the image left out (natural Neumann condition on the border). The
    guidance is ``v_pq = g_p - g_q`` (source gradients; zero across the source's own edge) or, with
    ``mode="mixed"``, whichever of the source and target differences is larger, per edge and
    channel. The relative residual is at most ``RESIDUAL_BOUND`` (1e-6). A mask covering the whole
    target has no Dirichlet pixel; its mean is then pinned to the target's mean. Pixels outside the
    mask are the target's.

    ``method="opencv"`` calls ``cv2.seamlessClone`` (NORMAL_CLONE or MIXED_CLONE) on private copies
    (it writes into its mask), converts gray images to 3 channels and back, blends more than 3
    channels 3 at a time, and places the region exactly. It is not the masked Perez problem: it
    erodes the mask by 3 px before it reads the source, solves on the whole bounding box (pixels
    there outside the mask change too) and truncates. It raises ``ValueError`` for what it cannot
    do: non-uint8 images, masks under 3 px on a side, regions spanning the whole target, and masks
    that its erosion deletes entirely (features under 7 px wide).

    ``method="auto"`` uses OpenCV only where it is faithful and may be faster: images of at least
    ``AUTO_OPENCV_MIN_CHANNELS`` (3) channels (on one channel the exact solve takes under half of
    cv2's time), normal mode (cv2's MIXED_CLONE mixes over
    the whole bounding box), uint8, a region at least 1 px away from
    the target's border, of at least ``AUTO_OPENCV_MIN_PIXELS`` (4,000) pixels, that keeps at least
    ``AUTO_OPENCV_MIN_KEPT`` (80 %) of its pixels through OpenCV's 3-px erosion; and after the call,
    the contrast between the mask's eroded core and the band around it must be at least 75 % of the
    source's own. Everything else, and every failed check, is solved exactly, so a small or thin
    defect never vanishes while its mask says it is there.
    """
    check_choice(mode, POISSON_MODES, "mode")
    check_choice(method, POISSON_METHODS, "method")
    inputs = check_blend_inputs(target, source, mask, top_left)
    if inputs is None:
        return target.copy()
    if method == "opencv" or (method == "auto" and _auto_uses_opencv(inputs, mode)):
        result = _opencv_blend(inputs, mode)
        if method == "opencv" or _opencv_kept_contrast(inputs, result):
            return result
    region, x = _exact_crop(inputs, mode)
    out = target.copy()
    _write_masked(out, region, clip_to_dtype(x, target.dtype))
    return out
