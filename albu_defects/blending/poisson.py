"""Blending core: hard cut-paste and Poisson blending of a masked source onto a target.

Conventions shared by every function here: ``source`` and ``mask`` have the same height and
width; ``top_left=(y, x)`` places them on ``target`` and may be negative or run past the far edges
(only the overlap is used); the result is a new array with the target's shape and dtype, and no
input is ever modified.

Poisson blending (Perez, Gangnet and Blake, 2003) has two implementations here. The *exact* one
solves the discrete Poisson equation on exactly the masked pixels with a direct banded Cholesky
factorization (small or thin regions) or a conjugate-gradient solver preconditioned by a fast
sine/cosine-transform Poisson solve on the region's bounding box (large compact regions). The
*OpenCV* one calls ``cv2.seamlessClone`` behind guards against its measured defects. ``auto``
picks OpenCV only where its result is faithful; see :func:`poisson_blend`.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple

import cv2
import numpy as np
import scipy.fft
import scipy.sparse
import scipy.sparse.linalg
from scipy.linalg import lapack
from threadpoolctl import ThreadpoolController

# (row, col)-ordered extents under their old names until issue 14 moves this module to boxes
from albu_defects.core.geometry import dilate_mask, placement_overlap
from albu_defects.core.geometry import grow_extent_rc as grow_box
from albu_defects.core.geometry import mask_extent_rc as mask_bbox
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

#: Relative residual ``||A x - b|| / ||b||`` every exact solve reaches (checked, else a fallback solver runs).
RESIDUAL_BOUND = 1e-6
#: ``cv2.seamlessClone`` erodes the mask by this many pixels (3x3 kernel, 3 iterations) before it uses the source.
OPENCV_EROSION = 3
#: ``auto`` considers OpenCV only for regions of at least this many pixels ...
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


def _region(inputs: BlendInputs) -> _Region:
    target = _as_hwc(inputs.target)
    height, width = target.shape[:2]
    wy, wx = inputs.window
    by0, bx0, by1, bx1 = mask_bbox(inputs.mask)  # type: ignore[misc]  # the mask is never empty here
    ty0, tx0, ty1, tx1 = wy.start + by0, wx.start + bx0, wy.start + by1, wx.start + bx1
    cy0, cx0, cy1, cx1 = grow_box((ty0, tx0, ty1, tx1), 1, (height, width))
    mask = np.zeros((cy1 - cy0, cx1 - cx0), bool)
    mask[ty0 - cy0 : ty1 - cy0, tx0 - cx0 : tx1 - cx0] = inputs.mask[by0:by1, bx0:bx1]
    # Source on the crop; rows/columns of the crop beyond the source window repeat its edge, so the
    # source gradient across the source's own edge is zero.
    source = _as_hwc(inputs.source)
    sy0, sx0 = cy0 - wy.start, cx0 - wx.start
    sy1, sx1 = sy0 + mask.shape[0], sx0 + mask.shape[1]
    inner = source[max(sy0, 0) : min(sy1, source.shape[0]), max(sx0, 0) : min(sx1, source.shape[1])]
    pads = ((max(-sy0, 0), max(sy1 - source.shape[0], 0)), (max(-sx0, 0), max(sx1 - source.shape[1], 0)), (0, 0))
    src = np.pad(inner.astype(np.float64), pads, mode="edge") if any(map(any, pads)) else inner.astype(np.float64)
    tgt = target[cy0:cy1, cx0:cx1].astype(np.float64)
    neumann = (ty0 == 0, ty1 == height, tx0 == 0, tx1 == width)
    transposed = mask.shape[1] > mask.shape[0]
    if transposed:
        mask, tgt, src = mask.T, tgt.transpose(1, 0, 2), src.transpose(1, 0, 2)
        neumann = (neumann[2], neumann[3], neumann[0], neumann[1])
    return _Region(
        (slice(cy0, cy1), slice(cx0, cx1)),
        transposed,
        np.ascontiguousarray(mask),
        np.ascontiguousarray(tgt),
        np.ascontiguousarray(src),
        neumann,
    )


def _neighbour_sum(grid: np.ndarray) -> np.ndarray:
    """Sum of the 4 neighbours of every pixel, zero outside the grid (the crop is the whole image here)."""
    out = np.zeros_like(grid)
    out[1:] += grid[:-1]
    out[:-1] += grid[1:]
    out[:, 1:] += grid[:, :-1]
    out[:, :-1] += grid[:, 1:]
    return out


def _guidance_divergence(region: _Region, mode: Mode) -> np.ndarray:
    """Per crop pixel, the sum over its in-image neighbours q of the guidance v_pq, (h, w, C)."""
    src = region.source
    if mode == "normal":  # v_pq = g_p - g_q: the (negated) Laplacian of the source
        counts = _neighbour_sum(np.ones(src.shape[:2]))[:, :, None]
        return counts * src - _neighbour_sum(src)
    tgt = region.target
    div = np.zeros_like(src)
    # Each unordered edge once: down and right; v_qp = -v_pq, so it adds to p and subtracts from q.
    for axis in (0, 1):
        lo = (slice(None, -1), slice(None)) if axis == 0 else (slice(None), slice(None, -1))
        hi = (slice(1, None), slice(None)) if axis == 0 else (slice(None), slice(1, None))
        ds = src[lo] - src[hi]
        dt = tgt[lo] - tgt[hi]
        v = np.where(np.abs(dt) > np.abs(ds), dt, ds)  # Perez's mixed gradients, per edge and channel
        div[lo] += v
        div[hi] -= v
    return div


def _rhs_grid(region: _Region, mode: Mode) -> np.ndarray:
    """Right-hand side on the crop grid: guidance divergence plus the Dirichlet values next to each pixel."""
    outside = region.target * ~region.mask[:, :, None]
    return _guidance_divergence(region, mode) + _neighbour_sum(outside)


def _diag_grid(shape: tuple[int, int]) -> np.ndarray:
    """Number of in-image neighbours of every crop pixel (the crop's ring lies inside the image)."""
    return _neighbour_sum(np.ones(shape))


def _relative_residual(x: np.ndarray, rhs: np.ndarray, diag: np.ndarray, mask: np.ndarray) -> float:
    """Largest per-channel ``||A x - b|| / ||b||`` (0 where ``b`` is 0 and so is the residual)."""
    apply_a = _MaskedLaplacian(mask, diag)
    worst = 0.0
    for channel in range(x.shape[2]):
        b = rhs[:, :, channel] * apply_a.maskf
        res = apply_a(np.ascontiguousarray(x[:, :, channel]) * apply_a.maskf) - b
        rn, bn = math.sqrt(_dot(res, res)), math.sqrt(_dot(b, b))
        worst = max(worst, rn / bn if bn > 0 else rn)
    return worst


# ---- direct banded Cholesky ------------------------------------------------------------------


_BLAS_LOCK = threading.Lock()
_BLAS_STATE: dict[str, Any] = {"controller": None, "users": 0, "limiter": None}


def _blas_controller() -> ThreadpoolController:
    """The BLAS libraries of this process (numpy's and scipy's), found once by threadpoolctl (~2 ms)."""
    if _BLAS_STATE["controller"] is None:
        _BLAS_STATE["controller"] = ThreadpoolController().select(user_api="blas")
    return _BLAS_STATE["controller"]


@contextmanager
def _single_threaded_blas():
    """Run BLAS/LAPACK single-threaded: these factorizations are small, and OpenBLAS threads only slow
    them down (5x measured on 2 busy cores). Process-wide while active, so it is reference-counted:
    the first caller in limits every BLAS library to one thread, the last one out restores them."""
    with _BLAS_LOCK:
        if _BLAS_STATE["users"] == 0:
            _BLAS_STATE["limiter"] = _blas_controller().limit(limits=1)
        _BLAS_STATE["users"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_STATE["users"] -= 1
            if _BLAS_STATE["users"] == 0:
                _BLAS_STATE["limiter"].restore_original_limits()
                _BLAS_STATE["limiter"] = None


def _bandwidth(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Row-major unknown index of each masked pixel (meaningless elsewhere), the mask of vertical
    masked pairs, and the bandwidth of the Laplacian in that order (largest vertical index gap)."""
    index = np.cumsum(mask.ravel()).reshape(mask.shape) - 1
    down = mask[:-1] & mask[1:]
    offsets = index[1:][down] - index[:-1][down]
    return index, down, int(offsets.max()) if offsets.size else 1


def _solve_banded(region: _Region, rhs: np.ndarray, diag: np.ndarray, index: np.ndarray, down: np.ndarray, band: int):
    """Exact solve by banded Cholesky (LAPACK ``pbtrf``/``pbtrs``): one factorization, every channel."""
    mask = region.mask
    n = int(mask.sum())
    ab = np.zeros((band + 1, n))
    ab[band] = diag[mask]
    right = mask[:, :-1] & mask[:, 1:]
    ab[band - 1, index[:, 1:][right]] = -1.0
    below = index[1:][down]
    ab[band - (below - index[:-1][down]), below] = -1.0
    b = rhs[mask]
    with _single_threaded_blas():
        factor, info = lapack.dpbtrf(ab, lower=0, overwrite_ab=1)
        if info != 0:  # pragma: no cover - the matrix is SPD whenever a Dirichlet pixel exists
            return None
        x, info = lapack.dpbtrs(factor, b, lower=0, overwrite_b=1)
    if info != 0:  # pragma: no cover
        return None
    out = np.zeros_like(rhs)
    out[mask] = x
    return out


def _solve_splu(region: _Region, rhs: np.ndarray, diag: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Sparse LU: the last resort when PCG stalls and the banded factor would be too large."""
    mask = region.mask
    n = int(mask.sum())
    rows, cols = [np.arange(n)], [np.arange(n)]
    vals = [diag[mask]]
    for pair, a, b in (
        (mask[:, :-1] & mask[:, 1:], index[:, :-1], index[:, 1:]),
        (mask[:-1] & mask[1:], index[:-1], index[1:]),
    ):
        i, j = a[pair], b[pair]
        rows += [i, j]
        cols += [j, i]
        vals += [-np.ones(i.size), -np.ones(i.size)]
    matrix = scipy.sparse.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    x = scipy.sparse.linalg.splu(matrix, permc_spec="MMD_AT_PLUS_A").solve(rhs[mask])
    out = np.zeros_like(rhs)
    out[mask] = x.reshape(n, -1)
    return out


# ---- conjugate gradients with a fast-transform preconditioner ----------------------------------


class _Transform(NamedTuple):
    """A 1-D real trig transform diagonalising the path-graph Laplacian with given end conditions."""

    forward: object
    inverse: object
    kind: int
    eigenvalues: np.ndarray


def _axis_transform(n: int, neumann_start: bool, neumann_end: bool) -> _Transform:
    """DST-II (Dirichlet, half-sample), DCT-IV/DST-IV (mixed) or DCT-II (Neumann) of length ``n``."""
    k = np.arange(n)
    if neumann_start and neumann_end:
        return _Transform(scipy.fft.dct, scipy.fft.idct, 2, 2 - 2 * np.cos(np.pi * k / n))
    if neumann_start:
        return _Transform(scipy.fft.dct, scipy.fft.idct, 4, 2 - 2 * np.cos(np.pi * (k + 0.5) / n))
    if neumann_end:
        return _Transform(scipy.fft.dst, scipy.fft.idst, 4, 2 - 2 * np.cos(np.pi * (k + 0.5) / n))
    return _Transform(scipy.fft.dst, scipy.fft.idst, 2, 2 - 2 * np.cos(np.pi * (k + 1) / n))


def _box_length(n: int, neumann_start: bool, neumann_end: bool) -> tuple[int, int]:
    """FFT-friendly transform length for ``n`` crop pixels and where the crop starts in it.

    The extra pixels go on a Dirichlet side (a Neumann side must stay on the image border); a crop
    with both ends on the border keeps its exact length.
    """
    if neumann_start and neumann_end:
        return n, 0
    size = scipy.fft.next_fast_len(n, real=True)
    return size, (size - n if neumann_end else 0)


class _BoxSolver:
    """Fast Poisson solve on the crop's box (grown to FFT-friendly sides): one trig transform per
    axis chosen by its boundary conditions, in float32 (it is only a preconditioner)."""

    def __init__(self, shape: tuple[int, int], neumann: tuple[bool, bool, bool, bool]):
        (h, w), (top, bottom, left, right) = shape, neumann
        (bh, oy), (bw, ox) = _box_length(h, top, bottom), _box_length(w, left, right)
        self.ty, self.tx = _axis_transform(bh, top, bottom), _axis_transform(bw, left, right)
        eig = self.ty.eigenvalues[:, None] + self.tx.eigenvalues[None, :]
        if eig[0, 0] <= 0:  # all four sides on the image border: the constant mode is free
            eig[0, 0] = eig[1:, 0].min(initial=1.0) if bh > 1 else eig[0, 1:].min(initial=1.0)
        self.inverse = (1.0 / eig).astype(np.float32)
        self.buffer = np.zeros((bh, bw), np.float32)
        self.window = (slice(oy, oy + h), slice(ox, ox + w))

    def __call__(self, residual: np.ndarray) -> np.ndarray:
        buf = self.buffer
        buf[self.window] = residual
        ty, tx = self.ty, self.tx
        z = ty.forward(buf, type=ty.kind, axis=0)
        z = tx.forward(z, type=tx.kind, axis=1, overwrite_x=True)
        z *= self.inverse
        z = tx.inverse(z, type=tx.kind, axis=1, overwrite_x=True)
        z = ty.inverse(z, type=ty.kind, axis=0, overwrite_x=True)
        return z[self.window].astype(np.float64)


_CROSS = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], np.float64)


class _MaskedLaplacian:
    """``A x`` on a 2-D grid for ``x`` that is zero outside the mask (cv2 does the neighbour sum)."""

    def __init__(self, mask: np.ndarray, diag: np.ndarray):
        self.maskf = mask.astype(np.float64)
        self.diag = diag * self.maskf

    def __call__(self, x: np.ndarray) -> np.ndarray:
        nsum = cv2.filter2D(x, -1, _CROSS, borderType=cv2.BORDER_CONSTANT)
        nsum *= self.maskf
        y = self.diag * x
        y -= nsum
        return y


#: Block side of the coarse level of the preconditioner.
_COARSE_BLOCK = 4


class _CoarseSolver:
    """Exact solve of the Galerkin coarse problem on k x k blocks of the region (banded Cholesky).

    With piecewise-constant aggregation R, the coarse matrix R A R^T holds minus the number of
    fine edges between two blocks off the diagonal, and on it the edges leaving the block plus
    its pixels' Dirichlet neighbours. The grid is a multiple of k in both directions.
    """

    def __init__(self, mask: np.ndarray, diag: np.ndarray, k: int):
        height, width = mask.shape
        hb, wb = height // k, width // k
        self.k, self.fine_size, self.coarse_size = k, (width, height), (wb, hb)
        self.maskf = mask.astype(np.float64)
        self.present = mask.reshape(hb, k, wb, k).any(axis=(1, 3))
        dirichlet = (diag - _neighbour_sum(self.maskf)) * self.maskf
        diag_c = dirichlet.reshape(hb, k, wb, k).sum(axis=(1, 3))
        right = (mask[:, k - 1 : -1 : k] & mask[:, k::k]).reshape(hb, k, wb - 1).sum(axis=1).astype(np.float64)
        down = (mask[k - 1 : -1 : k] & mask[k::k]).reshape(hb - 1, wb, k).sum(axis=2).astype(np.float64)
        diag_c[:, :-1] += right
        diag_c[:, 1:] += right
        diag_c[:-1] += down
        diag_c[1:] += down
        index, below, band = _bandwidth(self.present)
        n = int(self.present.sum())
        ab = np.zeros((band + 1, n))
        ab[band] = diag_c[self.present]
        pair = self.present[:, :-1] & self.present[:, 1:]
        ab[band - 1, index[:, 1:][pair]] = -right[pair]
        lower = index[1:][below]
        ab[band - (lower - index[:-1][below]), lower] = -down[below]
        self.factor, info = lapack.dpbtrf(ab, lower=0, overwrite_ab=1)
        self.ok = info == 0
        self.grid = np.zeros((hb, wb))

    def __call__(self, residual: np.ndarray) -> np.ndarray:
        sums = cv2.resize(residual, self.coarse_size, interpolation=cv2.INTER_AREA)  # block means, exact
        solved, _ = lapack.dpbtrs(self.factor, sums[self.present] * float(self.k * self.k), lower=0, overwrite_b=1)
        self.grid[self.present] = solved
        fine = cv2.resize(self.grid, self.fine_size, interpolation=cv2.INTER_NEAREST)  # exact replication
        fine *= self.maskf
        return fine


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Inner product without BLAS (numpy's threaded ddot is 100x slower on busy cores)."""
    return float(np.einsum("ij,ij->", a, b))


def _solve_pcg(region: _Region, rhs: np.ndarray, diag: np.ndarray, tol: float, max_iter: int):
    """Deflated conjugate gradients on the masked grid, channel by channel; ``None`` if it stalls.

    Two-level preconditioner: the fast box solve, then a coarse correction (``(I - Q A) B`` with
    ``Q`` the exact coarse solve), started from ``x0 = Q b`` so that every residual stays orthogonal
    to the coarse space (the "A-DEF2" variant of Tang, Nabben and Vuik, 2009, which then equals the
    symmetric coarse-box-coarse preconditioner at one coarse solve and one product per iteration).
    The box solve alone needs 25-40 iterations on large Magnetic Tile regions, because its solution
    leaks into the box pixels outside the mask; the coarse level removes those smooth modes and
    brings it to about 10. The set-up is shared by all channels.
    """
    h, w = region.mask.shape
    k = _COARSE_BLOCK
    grid = (-(-h // k) * k, -(-w // k) * k)  # padded to whole coarse blocks
    mask = np.zeros(grid, bool)
    mask[:h, :w] = region.mask
    diag_g = np.zeros(grid)
    diag_g[:h, :w] = diag
    apply_a = _MaskedLaplacian(mask, diag_g)
    box = _BoxSolver((h, w), region.neumann)
    coarse = _CoarseSolver(mask, diag_g, k)
    if not coarse.ok:  # pragma: no cover - R A R^T is SPD whenever A is
        return None
    box_mask = apply_a.maskf[:h, :w]

    def precondition(res: np.ndarray) -> np.ndarray:
        y = np.zeros(grid)
        y[:h, :w] = box(res[:h, :w])
        y[:h, :w] *= box_mask
        y -= coarse(apply_a(y))
        return y

    out = np.zeros_like(rhs)
    for channel in range(rhs.shape[2]):
        b = np.zeros(grid)
        b[:h, :w] = rhs[:, :, channel]
        b *= apply_a.maskf
        goal = tol * tol * _dot(b, b)
        x = coarse(b)
        r = b - apply_a(x)
        z = precondition(r)
        p = z.copy()
        rz = _dot(r, z)
        for _ in range(max_iter):
            if _dot(r, r) <= goal:
                break
            ap = apply_a(p)
            pap = _dot(p, ap)
            alpha = rz / pap if pap > 0 else 0.0
            x += alpha * p
            r -= alpha * ap
            z = precondition(r)
            rz_new = _dot(r, z)
            beta = rz_new / rz if rz > 0 else 0.0
            p *= beta
            p += z
            rz = rz_new
        else:
            return None
        out[:, :, channel] = x[:h, :w]
    return out


def _solve_whole_image(region: _Region, rhs: np.ndarray) -> np.ndarray:
    """The mask covers the whole target: no Dirichlet pixel, a pure Neumann problem, solved exactly
    by a DCT-II. Its solution is unique up to a constant: the mean is pinned to the target's mean."""
    h, w = region.mask.shape
    eig = _axis_transform(h, True, True).eigenvalues[:, None] + _axis_transform(w, True, True).eigenvalues[None, :]
    eig[0, 0] = 1.0
    coeffs = scipy.fft.dctn(rhs, type=2, axes=(0, 1))
    coeffs /= eig[:, :, None]
    coeffs[0, 0] = 0.0
    x = scipy.fft.idctn(coeffs, type=2, axes=(0, 1))
    return x - x.mean(axis=(0, 1)) + region.target.mean(axis=(0, 1))


# Solver choice, calibrated on Magnetic Tile regions (2 cores, single-threaded LAPACK): banded
# Cholesky costs about 0.1 + 8e-5 n + n band^2 / 7e6 ms; the deflated PCG about
# 0.5 + 3.5e-4 (box pixels) ms (10-12 iterations). Both are exact to RESIDUAL_BOUND; the cheaper
# one runs. The banded factor holds (band + 1) n doubles, capped at _BANDED_MAX_ENTRIES.
_BANDED_MAX_ENTRIES = 5_000_000


def _prefer_banded(n: int, band: int, box_pixels: int) -> bool:
    if (band + 1) * n > _BANDED_MAX_ENTRIES:
        return False
    banded_ms = 0.1 + 8e-5 * n + n * band * band / 7e6
    pcg_ms = 0.5 + 3.5e-4 * box_pixels
    return banded_ms <= pcg_ms


def _solve_region(region: _Region, mode: Mode, solver: str = "auto") -> np.ndarray:
    """Solve the Perez system on ``region``; the float64 solution on the crop grid (h, w, C).

    ``solver`` ("auto", "banded", "pcg" or "splu") is for tests; "auto" picks the cheaper exact one.
    A PCG that stalls or misses the residual bound falls back to a direct solve.
    """
    mask = region.mask
    rhs = _rhs_grid(region, mode)
    diag = _diag_grid(mask.shape)
    if mask.all() and all(region.neumann):
        return _solve_whole_image(region, rhs)
    index, down, band = _bandwidth(mask)
    n = int(mask.sum())
    if solver == "auto":
        solver = "banded" if _prefer_banded(n, band, mask.size) else "pcg"
    if solver == "pcg":
        with _single_threaded_blas():
            x = _solve_pcg(region, rhs, diag, tol=RESIDUAL_BOUND / 10, max_iter=200)
        if x is not None and _relative_residual(x, rhs, diag, mask) <= RESIDUAL_BOUND:
            return x
        solver = "banded" if (band + 1) * n <= _BANDED_MAX_ENTRIES else "splu"
    if solver == "banded":
        x = _solve_banded(region, rhs, diag, index, down, band)
        if x is not None:
            return x
    return _solve_splu(region, rhs, diag, index)


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
    view[mask] = vals[mask].astype(out.dtype, copy=False)


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
    y0, x0, y1, x1 = mask_bbox(inputs.mask)  # type: ignore[misc]
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
    by0, bx0, by1, bx1 = mask_bbox(inputs.mask)  # type: ignore[misc]
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
    if mode != "normal" or _opencv_unusable(inputs) is not None:
        return False
    height, width = inputs.target.shape[:2]
    wy, wx = inputs.window
    y0, x0, y1, x1 = mask_bbox(inputs.mask)  # type: ignore[misc]
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
    y0, x0, y1, x1 = mask_bbox(inputs.mask)  # type: ignore[misc]
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

    ``method="auto"`` uses OpenCV only where it is faithful: normal mode (cv2's MIXED_CLONE mixes over
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
