"""Exact solvers of the masked Perez system behind :func:`albu_defects.blending.poisson_blend`
(the system and its crop grid: :mod:`.grid`).

Every solver here reaches a relative residual ``||A f - b|| / ||b||`` of at most
``RESIDUAL_BOUND``; :func:`solve` picks the cheapest for the region:

- a banded Cholesky factorization (LAPACK) for small regions and for thin or scattered ones, with
  the unknowns in row-major order or, when that leaves the band wide, in reverse Cuthill-McKee
  order (a thin crack across a large box: band 200 -> 30, 10x faster);
- conjugate gradients for large compact regions (:mod:`.pcg`), preconditioned by a fast
  sine/cosine-transform Poisson solve on the crop's box deflated by a bilinear coarse space (6
  iterations on Magnetic Tile regions of 10k-30k pixels);
- a DCT-II solve when the mask covers the whole image (pure Neumann problem);
- sparse LU as the last resort.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import numpy as np
import scipy.fft
import scipy.sparse
import scipy.sparse.csgraph
import scipy.sparse.linalg
from scipy.linalg import lapack

from albu_defects.blending.grid import RESIDUAL_BOUND, Sides, axis_transform, border_sides, single_threaded_blas
from albu_defects.blending.pcg import solve_pcg

__all__ = ["RESIDUAL_BOUND", "SOLVERS", "solve"]

#: The solver names :func:`solve` accepts ("auto" picks one).
SOLVERS: tuple[str, ...] = ("auto", "banded", "pcg", "splu")


def solve(
    mask: np.ndarray, neumann: Sides, rhs: np.ndarray, *, mean: np.ndarray | None = None, solver: str = "auto"
) -> np.ndarray:
    """Solve the masked system on an (h, w) crop for every channel of ``rhs`` (h, w, C).

    Returns the float64 solution on the crop grid (meaningful on the mask). A mask covering the
    whole image (every pixel masked, every side on the border) has no Dirichlet pixel: its
    solution is unique up to a constant per channel, pinned to ``mean``. ``solver`` forces one
    method (for tests); a conjugate-gradient run that stalls falls back to a direct solve.
    """
    if mask.all() and all(neumann):
        return _solve_whole_image(rhs, mean)
    system = ordering = None
    if solver == "auto":
        solver, system, ordering = _choose(mask, neumann)
    if solver == "pcg":
        with single_threaded_blas():
            x = solve_pcg(mask, neumann, rhs)
        if x is not None:
            return x
        solver = "banded"
    system = system or _MaskedSystem(mask, neumann)
    if solver == "banded":
        ordering = ordering or system.ordering()
        if (ordering.band + 1) * system.n <= _BANDED_MAX_ENTRIES:
            x = _solve_banded(system, ordering, rhs)
            if x is not None:
                return x
    return _solve_splu(system, rhs)


# ---- solver choice ----------------------------------------------------------------------------

#: The banded factor holds (band + 1) n doubles; above this it is not built.
_BANDED_MAX_ENTRIES = 5_000_000
#: LAPACK's banded Cholesky works on blocks beyond this band (threaded BLAS), column by column below.
_UNTHREADED_BAND = 32
#: Regions under this many pixels always take the banded Cholesky.
_PCG_MIN_PIXELS = 2_000


def _choose(mask: np.ndarray, neumann: Sides) -> tuple[str, _MaskedSystem | None, _Ordering | None]:
    """ "banded" or "pcg" (with the banded system and ordering when built), by cost models fitted
    on Magnetic Tile regions (single thread): the banded Cholesky costs about
    ``n (1.8e-4 + 1e-7 band^2)`` ms, the deflated PCG about ``1.7e-4 (box pixels) + 1.2`` ms."""
    n = int(np.count_nonzero(mask))
    if n < _PCG_MIN_PIXELS:
        return "banded", None, None
    system = ordering = None
    band = _row_major_band(mask)
    if _narrowable(band, n):
        system = _MaskedSystem(mask, neumann)
        ordering = system.ordering()
        band = ordering.band
    banded_ms = n * (1.8e-4 + 1e-7 * band * band)
    pcg_ms = 1.7e-4 * mask.size + 1.2
    if banded_ms <= pcg_ms and (band + 1) * n <= _BANDED_MAX_ENTRIES:
        return "banded", system, ordering
    return "pcg", None, None


def _row_major_band(mask: np.ndarray) -> int:
    """Bandwidth of the system with the unknowns in row-major order: the largest number of unknowns
    between two vertical neighbours."""
    # int32 counts and a masked max over whole rows: 9x faster than gathering the pairs (0.06 ms
    # instead of 0.5 ms on a 55k-pixel crop, where it was a tenth of the PCG solve).
    index = np.cumsum(mask.ravel(), dtype=np.int32).reshape(mask.shape)
    down = mask[:-1] & mask[1:]
    return int(np.max(index[1:] - index[:-1], where=down, initial=1))


def _narrowable(band: int, n: int) -> bool:
    """A row-major band wider than a compact region of ``n`` pixels would have (rows crossing several
    separate runs of pixels: thin, branched or scattered regions), which another order may narrow."""
    return band > 24 and band * band > 4 * n


class _Ordering(NamedTuple):
    """Where each unknown (row-major masked pixel) goes in the banded matrix, and its bandwidth."""

    position: np.ndarray | None  # None: row-major
    band: int


class _MaskedSystem:
    """The matrix of the masked system as graph data: unknowns are the masked pixels in row-major
    order, each with its diagonal (in-image neighbour count) and its edges to masked neighbours."""

    def __init__(self, mask: np.ndarray, neumann: Sides):
        self.mask = mask
        index = np.cumsum(mask.ravel()).reshape(mask.shape) - 1
        self.n = int(index[-1, -1]) + 1 if mask.size else 0
        if any(neumann):
            diag = np.full(mask.shape, 4.0)
            for side in border_sides(mask.shape, neumann):
                diag[side] -= 1.0
            self.diag = diag[mask]
        else:
            self.diag = np.full(self.n, 4.0)
        # Every edge once, first < second: right neighbours (the next unknown) and lower ones.
        right = index[:, :-1][mask[:, :-1] & mask[:, 1:]]
        down = mask[:-1] & mask[1:]
        self.first = np.concatenate([right, index[:-1][down]])
        self.second = np.concatenate([right + 1, index[1:][down]])

    def matrix(self) -> scipy.sparse.csc_matrix:
        n, first, second = self.n, self.first, self.second
        rows = np.concatenate([np.arange(n), first, second])
        cols = np.concatenate([np.arange(n), second, first])
        values = np.concatenate([self.diag, -np.ones(2 * first.size)])
        return scipy.sparse.csc_matrix((values, (rows, cols)), shape=(n, n))

    def ordering(self) -> _Ordering:
        """Row-major order, or reverse Cuthill-McKee where it narrows a wide band (thin, branched or
        scattered regions, whose rows hold several separate runs of pixels)."""
        position = None
        band = int((self.second - self.first).max(initial=1))
        if _narrowable(band, self.n):
            graph = scipy.sparse.csr_matrix((np.ones(self.first.size), (self.first, self.second)), shape=(self.n,) * 2)
            order = scipy.sparse.csgraph.reverse_cuthill_mckee(graph, symmetric_mode=False)
            rcm = np.empty(self.n, np.int64)
            rcm[order] = np.arange(self.n)
            rcm_band = int(np.abs(rcm[self.second] - rcm[self.first]).max(initial=1))
            if rcm_band < band:
                position, band = rcm, rcm_band
        return _Ordering(position, band)


def _solve_banded(system: _MaskedSystem, ordering: _Ordering, rhs: np.ndarray) -> np.ndarray | None:
    """Exact solve by banded Cholesky (LAPACK ``pbsv``, lower band storage): every channel at once."""
    position, band = ordering
    ab = np.zeros((band + 1, system.n), order="F")  # LAPACK's layout: no copy on the way in
    flat = ab.reshape(-1, order="F")  # a view: ab[i, j] is flat[j (band + 1) + i]
    b = rhs[system.mask]
    if position is None:  # row-major: the unknowns keep their order
        ab[0] = system.diag
        flat[system.first * (band + 1) + (system.second - system.first)] = -1.0  # ab[i - j, j] = A[i, j], i > j
    else:
        ab[0, position] = system.diag
        first, second = position[system.first], position[system.second]
        flat[np.minimum(first, second) * (band + 1) + np.abs(second - first)] = -1.0
        b = b[np.argsort(position)]
    # Up to a band of 32 LAPACK factorizes column by column on vectors too short for OpenBLAS to
    # thread, so the thread limit (about 20 us) is only paid for wider bands.
    with single_threaded_blas() if band > _UNTHREADED_BAND else contextlib.nullcontext():
        _, x, info = lapack.dpbsv(ab, b, lower=1, overwrite_ab=1, overwrite_b=1)
    if info != 0:  # pragma: no cover - the matrix is SPD whenever a Dirichlet pixel exists
        return None
    out = np.zeros_like(rhs)
    out[system.mask] = x if position is None else x[position]
    return out


def _solve_splu(system: _MaskedSystem, rhs: np.ndarray) -> np.ndarray:
    """Sparse LU: the last resort when PCG stalls and the banded factor would be too large."""
    x = scipy.sparse.linalg.splu(system.matrix(), permc_spec="MMD_AT_PLUS_A").solve(rhs[system.mask])
    out = np.zeros_like(rhs)
    out[system.mask] = x.reshape(system.n, -1)
    return out


def _solve_whole_image(rhs: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    """Pure Neumann problem on the whole image, solved exactly by a DCT-II; its solution is unique up
    to a constant per channel, pinned to ``mean`` (0 when not given)."""
    h, w = rhs.shape[:2]
    eig = axis_transform(h, True, True).eigenvalues[:, None] + axis_transform(w, True, True).eigenvalues[None, :]
    eig[0, 0] = 1.0
    coeffs = scipy.fft.dctn(rhs, type=2, axes=(0, 1))
    coeffs /= eig[:, :, None]
    coeffs[0, 0] = 0.0
    x = scipy.fft.idctn(coeffs, type=2, axes=(0, 1))
    return x - x.mean(axis=(0, 1)) + (0.0 if mean is None else mean)
