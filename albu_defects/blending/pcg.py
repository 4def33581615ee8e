"""Conjugate gradients for large compact regions of the masked Perez system (see :mod:`.grid`).

Preconditioned by a fast Poisson solve on the crop's box, deflated by a bilinear coarse space on
6 x 6 px cells: 6-7 box solves on Magnetic Tile regions of 10k-30k pixels, where the box solve
alone needs 25-40 (4 x 4 px cells save one iteration but their coarse factor costs more than it
on wide regions). The box solve is a periodic one by OpenCV's DFT when every
side of the crop has a Dirichlet ring (the ring keeps the wrap-around out of the mask: as few
iterations as sine transforms, at half their cost), else sine/cosine transforms matching the
image-border sides. With the periodic box, the coarse correction's right-hand side is read off the
box solution's leak across the mask's boundary (:class:`_LeakPreconditioner`) instead of a
product by the matrix and a restriction over the grid.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import scipy.fft
from scipy.linalg import lapack

from albu_defects.blending.grid import RESIDUAL_BOUND, Sides, axis_transform, border_sides, laplacian

#: The iterations stop at half the bound, then check the bound on the true residual (the recurrence
#: drifts from it by far less than that margin). A tenth took 8.18 box solves per Magnetic Tile
#: region of 10k px or more instead of 7.53, for pixels 1e-4 grey levels closer to the direct solvers'.
CG_TOLERANCE = RESIDUAL_BOUND / 2


def _box_length(n: int, neumann_start: bool, neumann_end: bool) -> tuple[int, int]:
    """FFT-friendly transform length for ``n`` crop pixels and where the crop starts in it.

    The extra pixels go on a Dirichlet side (a Neumann side must stay on the image border); a crop
    with both ends on the border keeps its exact length.
    """
    if neumann_start and neumann_end:
        return n, 0
    size = scipy.fft.next_fast_len(n, real=True)
    return size, (size - n if neumann_end else 0)


def _periodic_eigenvalues(n: int) -> np.ndarray:
    """Eigenvalues of the periodic path-graph (cycle) Laplacian of length ``n``, in DFT order."""
    return 2 - 2 * np.cos(2 * np.pi * np.arange(n) / n)


def _ccs_multiplier(values: np.ndarray) -> np.ndarray:
    """A real, even spectrum multiplier (M, N) laid out like OpenCV's packed (CCS) real DFT, so that
    multiplying a packed spectrum by it elementwise multiplies every complex coefficient."""
    m, n = values.shape
    out = np.empty((m, n))
    half = (n - 1) // 2  # complex columns 1..half: (Re, Im) pairs
    out[:, 1 : 2 * half + 1] = np.repeat(values[:, 1 : half + 1], 2, axis=1)
    # Columns 0 and n/2 are real sequences over the rows, packed the same way along the column.
    rows = np.concatenate([[0], np.repeat(np.arange(1, (m - 1) // 2 + 1), 2), [m // 2] * (m % 2 == 0)]).astype(int)
    out[:, 0] = values[rows, 0]
    if n % 2 == 0:
        out[:, n - 1] = values[rows, n // 2]
    return out


#: Box solves keep their inverse eigenvalues for this many box sizes (same-size boxes recur in a batch).
_BOX_CACHE = 64


@functools.lru_cache(maxsize=_BOX_CACHE)
def _trig_inverse(bh: int, bw: int, neumann: Sides) -> np.ndarray:
    """Inverse eigenvalues (float32, read-only) of the trig-transform box Laplacian."""
    (top, bottom, left, right) = neumann
    eig = axis_transform(bh, top, bottom).eigenvalues[:, None] + axis_transform(bw, left, right).eigenvalues[None, :]
    if eig[0, 0] <= 0:  # all four sides on the image border: the constant mode is free
        eig[0, 0] = eig[1:, 0].min(initial=1.0) if bh > 1 else eig[0, 1:].min(initial=1.0)
    return _read_only((1.0 / eig).astype(np.float32))


@functools.lru_cache(maxsize=_BOX_CACHE)
def _periodic_inverse(bh: int, bw: int) -> np.ndarray:
    """Inverse eigenvalues of the periodic box Laplacian, divided by the box size (the inverse DFT then
    needs no scaling pass), in OpenCV's packed layout; float32, read-only. The constant mode
    (eigenvalue 0) gets the smallest non-zero eigenvalue, which keeps the preconditioner definite."""
    ey, ex = _periodic_eigenvalues(bh), _periodic_eigenvalues(bw)
    eig = ey[:, None] + ex[None, :]
    eig[0, 0] = min(ey[1:].min(initial=np.inf), ex[1:].min(initial=np.inf))
    return _read_only(_ccs_multiplier(1.0 / (eig * (bh * bw))).astype(np.float32))


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


class _TrigBoxSolver:
    """Fast Poisson solve on the crop's box (grown to FFT-friendly sides), masked: one trig transform
    per axis chosen by its boundary conditions, in float32 (it is only a preconditioner)."""

    def __init__(self, crop_mask: np.ndarray, neumann: Sides):
        (h, w), (top, bottom, left, right) = crop_mask.shape, neumann
        (bh, oy), (bw, ox) = _box_length(h, top, bottom), _box_length(w, left, right)
        self.ty, self.tx = axis_transform(bh, top, bottom), axis_transform(bw, left, right)
        self.inverse = _trig_inverse(bh, bw, neumann)
        self.buffer = np.zeros((bh, bw), np.float32)
        self.window = (slice(oy, oy + h), slice(ox, ox + w))
        self.crop = (slice(0, h), slice(0, w))
        self.crop_mask = crop_mask.astype(np.float32)
        same = self.ty.forward is self.tx.forward and self.ty.kind == self.tx.kind
        self.both = (
            (scipy.fft.dctn, scipy.fft.idctn) if self.ty.forward is scipy.fft.dct else (scipy.fft.dstn, scipy.fft.idstn)
        )
        self.both_axes = same

    def __call__(self, residual: np.ndarray, out: np.ndarray) -> None:
        """Write the masked box solution of ``residual`` into the crop part of ``out`` (solve grid)."""
        buf = self.buffer
        buf[self.window] = residual[self.crop]
        ty, tx = self.ty, self.tx
        if self.both_axes:
            forward, inverse = self.both
            z = forward(buf, type=ty.kind)
            z *= self.inverse
            z = inverse(z, type=ty.kind, overwrite_x=True)
        else:
            z = ty.forward(buf, type=ty.kind, axis=0)
            z = tx.forward(z, type=tx.kind, axis=1, overwrite_x=True)
            z *= self.inverse
            z = tx.inverse(z, type=tx.kind, axis=1, overwrite_x=True)
            z = ty.inverse(z, type=ty.kind, axis=0, overwrite_x=True)
        np.multiply(z[self.window], self.crop_mask, out=out[self.crop])


def _dft_size(n: int) -> int:
    """The smallest length >= ``n`` that OpenCV's real DFT handles fastest: a multiple of 4 with no
    prime factor above 5 (odd lengths cost 1.3-1.9x as much per pixel, measured: 243 px take longer
    than 256)."""
    size = cv2.getOptimalDFTSize(n)
    while size % 4:
        size = cv2.getOptimalDFTSize(size + 1)
    return size


class _PeriodicBoxSolver:
    """Fast Poisson solve on the crop's box with periodic sides (OpenCV's real DFT, float32), masked.

    Only for crops with a Dirichlet ring on every side: the ring and the padding to a DFT-friendly
    size separate the mask from its periodic copies, so the wrap-around costs no iterations, and a
    real DFT is about twice as fast as scipy's sine transform.
    """

    def __init__(self, crop_mask: np.ndarray):
        h, w = crop_mask.shape
        bh, bw = _dft_size(h), _dft_size(w)
        self.inverse = _periodic_inverse(bh, bw)
        # One buffer, transformed in place (less memory to bring back into cache on every call):
        # its padding beyond the crop is zeroed again before each forward transform.
        self.buffer = np.empty((bh, bw), np.float32)
        self.padding = ((slice(h, None), slice(None)), (slice(0, h), slice(w, None)))
        self.crop = (slice(0, h), slice(0, w))
        self.crop_mask = crop_mask.astype(np.float32)

    def solve_box(self, residual: np.ndarray) -> tuple[np.ndarray, float]:
        """The box solution of ``residual`` on the whole (unmasked) box (valid until the next call),
        and the residual's sum over the box (the constant mode, which the box solve does not invert)."""
        buffer = self.buffer
        buffer[self.crop] = residual[self.crop]
        for part in self.padding:
            buffer[part] = 0.0
        cv2.dft(buffer, buffer)
        total = float(buffer[0, 0])
        np.multiply(buffer, self.inverse, out=buffer)
        return cv2.dft(buffer, buffer, flags=cv2.DFT_INVERSE | cv2.DFT_REAL_OUTPUT), total

    def __call__(self, residual: np.ndarray, out: np.ndarray) -> None:
        """Write the masked box solution of ``residual`` into the crop part of ``out`` (solve grid)."""
        z, _ = self.solve_box(residual)
        np.multiply(z[self.crop], self.crop_mask, out=out[self.crop])


def _box_solver(crop_mask: np.ndarray, neumann: Sides) -> _TrigBoxSolver | _PeriodicBoxSolver:
    """The box solve for a crop: periodic when no side lies on the image border, else trig transforms."""
    return _TrigBoxSolver(crop_mask, neumann) if any(neumann) else _PeriodicBoxSolver(crop_mask)


#: The 4-neighbour cross, for the mask's boundary pixels (those with a neighbour off the mask).
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


class _Operator:
    """``A x`` on the solve grid for ``x`` that is zero outside the mask: :func:`laplacian`, masked
    (float64 or float32 grids alike: the Laplacian keeps the dtype).

    Off the mask the Laplacian of such an ``x`` is nonzero only on the ring of pixels next to it, so
    masking is a scatter of zeros on that ring (a few hundred pixels) instead of a pass over the grid.
    """

    def __init__(self, mask: np.ndarray, crop_shape: tuple[int, int], neumann: Sides):
        self.mask = mask
        self.sides = border_sides(crop_shape, neumann)
        mask8 = mask.view(np.uint8)
        self.ring = np.flatnonzero(cv2.dilate(mask8, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0) > mask8)

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        y = laplacian(x, self.sides, out)
        y.ravel()[self.ring] = 0.0
        return y


#: Cell side of the coarse level of the preconditioner (pixels between neighbouring coarse nodes).
_COARSE_CELL = 6


@functools.lru_cache(maxsize=_BOX_CACHE)
def _interpolation(cells: int, k: int, dtype: type = np.float64) -> np.ndarray:
    """The 1-D linear interpolation from ``cells + 1`` nodes ``k`` px apart onto ``cells k`` pixels
    (read-only: cached, sizes recur)."""
    u = np.arange(k) / k
    matrix = np.zeros((cells, k, cells + 1))
    index = np.arange(cells)
    matrix[index, :, index] = 1 - u
    matrix[index, :, index + 1] = u
    return _read_only(matrix.reshape(cells * k, cells + 1).astype(dtype))


@functools.lru_cache(maxsize=_BOX_CACHE)
def _interpolation_t(cells: int, k: int, dtype: type = np.float64) -> np.ndarray:
    """The transpose of :func:`_interpolation`, C-contiguous (the right factor of the prolongation)."""
    return _read_only(np.ascontiguousarray(_interpolation(cells, k, dtype).T))


class _CoarseSolver:
    """Exact solve of the Galerkin coarse problem for bilinear basis functions on k x k cells.

    Coarse node (i, j) sits on fine pixel (i k, j k); its basis function is the bilinear hat
    (1 - |y/k - i|)(1 - |x/k - j|) restricted to the mask, so the prolongation ``P`` interpolates
    the nodes bilinearly and masks, and ``P^T`` sums hat-weighted fine values. The coarse matrix
    ``P^T A P`` couples each cell's 4 corners (9-point): the sum, over the image's edges, of the
    products of the hats' differences (mask-mask edges) plus ``h_I(p) h_J(p)`` per edge from a
    mask pixel p to a Dirichlet pixel. Within a cell the hats are products of 1-D linear hats, so
    each term is a separable weighted sum of per-pixel edge counts. Smooth basis functions make a
    much better coarse space than piecewise-constant blocks of the same size (6 instead of 10
    iterations on Magnetic Tile at k = 4). The solve grid is a multiple of ``k`` in both directions.
    """

    def __init__(self, operator: _Operator, k: int):
        cy, cx = operator.mask.shape[0] // k, operator.mask.shape[1] // k
        self.k, self.cells = k, (cy, cx)
        u = np.arange(k) / k
        self.hats = np.stack([1 - u, u])  # the two 1-D hats of a cell at its pixels, (2, k)
        self.interpolate_y, self.interpolate_x_t = _interpolation(cy, k), _interpolation_t(cx, k)
        self.interpolate_y_t, self.interpolate_x = _interpolation_t(cy, k), _interpolation(cx, k)
        # Edge weights per pixel: mask-mask edges to the right and down, Dirichlet edges. Small
        # integers, summed below with hat products of a few digits: float32 keeps the coarse matrix
        # to float32 precision, like the preconditioner that uses it, at half the memory traffic.
        # The mask as float32 multiplies the float64 grids too (numpy casts it on the fly): no float64 copy.
        self.maskf = mask32 = operator.mask.astype(np.float32)
        pairs = (self.hats[:, None, :] * self.hats[None, :, :]).reshape(4, k).astype(np.float32)  # (a, c) at u
        right = np.zeros_like(mask32)
        np.multiply(mask32[:, :-1], mask32[:, 1:], out=right[:, :-1])
        down = np.zeros_like(mask32)
        np.multiply(mask32[:-1], mask32[1:], out=down[:-1])
        dirichlet = operator(mask32)
        # Per cell, edge counts weighted by products of two hats: rows[(a, c)] over right edges
        # (hats of corner rows a and c, along the cell's rows), cols[(b, d)] over down edges, and
        # dirs[(a, c), (b, d)] over Dirichlet edges.
        right_per_row = (right.reshape(-1, k) @ np.ones(k, np.float32)).reshape(cy, k, cx)
        rows = np.matmul(pairs, right_per_row).transpose(0, 2, 1).astype(np.float64)  # (cy, cx, 4)
        cols = (down.reshape(cy, k, cx, k).sum(axis=1) @ pairs.T).astype(np.float64)  # (cy, cx, 4)
        along_x = (dirichlet.reshape(-1, k) @ pairs.T).reshape(cy, k, cx * 4)
        dirs = (
            np.matmul(pairs, along_x).reshape(cy, 4, cx, 4).transpose(0, 2, 1, 3).astype(np.float64)
        )  # (cy, cx, 4, 4)
        # Across an edge the hats of a cell's first corner row (or column) change by -1/k, those of
        # the second by +1/k: the product of two changes is +-1/k^2.
        same, across = 1.0 / (k * k), -1.0 / (k * k)
        ends, mixed = [0, 3], 1  # flat indices of the hat pairs (0, 0) and (1, 1); (0, 1)
        rows_end, cols_end = rows[..., ends], cols[..., ends]  # (cy, cx, 2): per corner row / column
        dirs_end = dirs[:, :, ends]  # (cy, cx, 2, 4)
        # Each cell adds to its four corners (a, b), its two east and two south couplings and its
        # diagonal: all at once per kind, then four shifted sums.
        corner = (rows_end[..., :, None] + cols_end[..., None, :]) * same + dirs_end[..., ends]  # (cy, cx, a, b)
        east_of = rows_end * across + (cols[..., mixed] * same)[..., None] + dirs_end[..., mixed]  # (cy, cx, a)
        south_of = (rows[..., mixed] * same)[..., None] + cols_end * across + dirs[:, :, mixed][..., ends]  # (.., b)
        centre = np.zeros((cy + 1, cx + 1))
        east = np.zeros((cy + 1, cx))  # node (i, j) with (i, j + 1)
        south = np.zeros((cy, cx + 1))  # node (i, j) with (i + 1, j)
        for a in (0, 1):
            east[a : a + cy] += east_of[..., a]
            south[:, a : a + cx] += south_of[..., a]
            for b in (0, 1):
                centre[a : a + cy, b : b + cx] += corner[..., a, b]
        # node (i, j) with (i + 1, j + 1), and (i, j + 1) with (i + 1, j): equal by symmetry
        diagonal = (rows[..., mixed] + cols[..., mixed]) * across + dirs[..., mixed, mixed]
        stencil = (centre, east, south, diagonal)
        # Nodes that barely touch the mask can have linearly dependent masked hats: if they make the
        # coarse matrix (nearly) singular, keep only nodes with a pixel's worth of hat weight.
        self.ok = self._factor(stencil, centre > 0) or self._factor(stencil, self._restrict(mask32) >= 1.0)
        self.banded_solve = lapack.dpbtrs

    def _factor(self, stencil: tuple[np.ndarray, ...], present: np.ndarray) -> bool:
        """Banded Cholesky of the coarse matrix over the whole node grid in row-major order (LAPACK's
        lower band storage, band = nodes per row + 1): the nodes not ``present`` are decoupled
        identity rows, so the band is filled by shifted copies of the stencil, with no reindexing.
        ``False`` when the matrix is singular or nearly so (a pivot under 1e-10 of its diagonal)."""
        centre, east, south, diagonal = stencil
        if not present.any():
            return False
        ny, nx = present.shape
        band = nx + 1
        ab = np.zeros((ny * nx, band + 1))  # transposed: (n, band + 1) in C order is LAPACK's (band + 1, n)
        layers = ab.reshape(ny, nx, band + 1)
        layers[..., 0] = np.where(present, centre, 1.0)
        layers[:, :-1, 1] = east * (present[:, :-1] & present[:, 1:])  # A[(i, j + 1), (i, j)]
        layers[:-1, 1:, nx - 1] = diagonal * (present[:-1, 1:] & present[1:, :-1])  # A[(i + 1, j), (i, j + 1)]
        layers[:-1, :, nx] = south * (present[:-1] & present[1:])  # A[(i + 1, j), (i, j)]
        layers[:-1, :-1, nx + 1] = diagonal * (present[:-1, :-1] & present[1:, 1:])  # A[(i + 1, j + 1), (i, j)]
        factor, info = lapack.dpbtrf(ab.T, lower=1)
        if info != 0 or (factor[0] ** 2 < 1e-10 * ab[:, 0]).any():
            return False
        self.present, self.factor = present, factor
        return True

    def _restrict(self, fine: np.ndarray) -> np.ndarray:
        """``P^T fine`` for fine values that are zero off the mask: (cy + 1, cx + 1) node values, by the
        transposes of the prolongation's two products."""
        return self.interpolate_y_t @ (fine @ self.interpolate_x)

    def _prolong(self, nodes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``P nodes`` before masking: bilinear interpolation of (cy + 1, cx + 1) node values, into
        ``out`` (a solve grid) when given: two products by the 1-D interpolation matrices (dense, two
        entries per row, yet faster than any sparse form at these sizes)."""
        along_y = self.interpolate_y @ nodes  # (cy k, cx + 1)
        return np.matmul(along_y, self.interpolate_x_t, out=out)

    def __call__(self, residual: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``Q residual = P (P^T A P)^-1 P^T residual``, masked; into ``out`` (a solve grid, which may be
        ``residual`` itself) when given."""
        restricted = self._restrict(residual)
        restricted[~self.present] = 0.0  # decoupled nodes stay zero
        solved, _ = self.banded_solve(self.factor, restricted.ravel(), lower=1, overwrite_b=1)
        fine = self._prolong(solved.reshape(restricted.shape), out)
        np.multiply(fine, self.maskf, out=fine)
        return fine

    def single(self) -> _CoarseSolver:
        """The same coarse solve on float32 grids (factor and solve too)."""
        other = object.__new__(_CoarseSolver)
        other.__dict__.update(self.__dict__)
        other.hats = self.hats.astype(np.float32)
        (cy, cx), k = self.cells, self.k
        other.interpolate_y, other.interpolate_x_t = (
            _interpolation(cy, k, np.float32),
            _interpolation_t(cx, k, np.float32),
        )
        other.interpolate_y_t, other.interpolate_x = (
            _interpolation_t(cy, k, np.float32),
            _interpolation(cx, k, np.float32),
        )
        other.factor, other.banded_solve = self.factor.astype(np.float32, order="F"), lapack.spbtrs
        return other


class _LeakPreconditioner:
    """The same ``z = (I - Q A) B r`` as :class:`_Preconditioner` for the periodic box solve, with
    ``P^T A B r`` read off the box solution instead of computed over the grid.

    With ``u`` the unmasked box solution and ``L`` the periodic box Laplacian, ``L u = r - mean(r)``
    (the box solve leaves the constant mode out), and on a masked pixel p,
    ``A (mask u)(p) = (L u)(p) + sum of u(q) over p's neighbours q off the mask``: the masked box
    solution differs from ``u`` by what leaked out of the mask. Hence
    ``P^T A (mask u) = P^T r - mean(r) P^T mask + P^T s``, ``s`` that leak summed along the mask's
    boundary edges, where ``P^T r = 0``: the deflated iteration keeps every residual orthogonal to
    the coarse space. A gather and a small sum over the boundary edges replace a product by ``A``
    and a restriction over the whole grid (a fifth of an iteration); the iterations are the same.
    """

    def __init__(self, box: _PeriodicBoxSolver, coarse: _CoarseSolver, mask: np.ndarray, grid: tuple[int, int]):
        # The coarse solve in float64 (LAPACK's banded solve is no faster in float32, and the
        # restricted leak comes as float64); the prolongation onto the float32 box grid in float32.
        coarse32 = coarse.single()
        self.box, self.coarse32, self.factor = box, coarse32, coarse.factor
        self.work = np.empty(grid, np.float32)
        width, box_width, k = mask.shape[1], box.buffer.shape[1], coarse32.k
        # Boundary edges (p, q): p masked, q its neighbour off the mask (inside the crop: its ring).
        mask8 = mask.view(np.uint8)
        boundary = np.flatnonzero(mask8 > cv2.erode(mask8, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0))
        neighbours = boundary + np.array([-width, width, -1, 1])[:, None]  # (4, boundary pixels), crop frame
        off = ~mask.ravel()[neighbours]
        p, q = np.broadcast_to(boundary, neighbours.shape)[off], neighbours[off]
        q += (q // width) * (box_width - width)  # crop frame -> box frame (same top-left corner)
        # P^T over the edges: each edge's p spreads to its cell's four nodes by the bilinear hats.
        present = coarse32.present
        py, px = np.divmod(p, width)
        (cell_y, in_y), (cell_x, in_x) = np.divmod(py, k), np.divmod(px, k)
        hats = coarse32.hats  # (first / second node, in-cell offset)
        corner_weights = (hats.T[:, None, :, None] * hats.T[None, :, None, :]).reshape(
            k * k, 4
        )  # (in-cell pixel, corner)
        weights = corner_weights[in_y * k + in_x]  # (edges, 4)
        nodes_wide = present.shape[1]
        corners = (cell_y * nodes_wide + cell_x)[:, None] + np.array([0, 1, nodes_wide, nodes_wide + 1])
        keep = present.ravel()[corners] & (weights > 0)
        self.edge_node, self.edge_weight = corners[keep], weights[keep]
        self.edge_source = np.broadcast_to(q[:, None], keep.shape)[keep]
        self.nodes = present.size
        self.mask_restricted = (coarse32._restrict(coarse32.maskf) * present).ravel().astype(np.float64)

    def __call__(self, residual: np.ndarray, out: np.ndarray) -> None:
        box, coarse = self.box, self.coarse32
        u, total = box.solve_box(residual)
        leak = self.edge_weight * u.ravel()[self.edge_source]
        restricted = np.bincount(self.edge_node, leak, minlength=self.nodes)
        restricted -= (total / box.buffer.size) * self.mask_restricted
        solved, _ = lapack.dpbtrs(self.factor, restricted, lower=1, overwrite_b=1)
        fine = coarse._prolong(solved.astype(np.float32).reshape(coarse.present.shape), self.work)
        # z = mask (u - P nodes) on the crop, zero on the rest of the grid (as it came).
        crop = box.crop
        np.subtract(u[crop], fine[crop], out=fine[crop])
        np.multiply(fine[crop], box.crop_mask, out=out[crop])


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Inner product of two grids by BLAS ``dot``: call inside :func:`single_threaded_blas` (threaded,
    it is 100x slower on busy cores)."""
    return float(np.dot(a.ravel(), b.ravel()))


def solve_pcg(mask: np.ndarray, neumann: Sides, rhs: np.ndarray, max_iter: int = 100) -> np.ndarray | None:
    """Deflated conjugate gradients on the masked grid, channel by channel; ``None`` if it stalls.

    Two-level preconditioner: the fast box solve ``B``, then a coarse correction (``(I - Q A) B``
    with ``Q`` the exact coarse solve), started from ``x0 = Q b`` so that every residual stays
    orthogonal to the coarse space (the "A-DEF2" variant of Tang, Nabben and Vuik, 2009, which then
    equals the symmetric coarse-box-coarse preconditioner at one coarse solve and one product per
    iteration). The box solve alone needs 25-40 iterations on large Magnetic Tile regions, because
    its solution leaks into the box pixels outside the mask; the bilinear coarse level removes the
    smooth part of that leak and brings it to 7-8. The set-up is shared by all channels.
    """
    h, w = mask.shape
    k = _COARSE_CELL
    grid = (-(-h // k) * k, -(-w // k) * k)  # padded to whole coarse cells
    on_grid = np.zeros(grid, bool)
    on_grid[:h, :w] = mask
    operator = _Operator(on_grid, (h, w), neumann)
    coarse = _CoarseSolver(operator, k)
    if not coarse.ok:
        return None
    box = _box_solver(mask, neumann)
    if isinstance(box, _PeriodicBoxSolver):
        preconditioner = _LeakPreconditioner(box, coarse, mask, grid)
    else:
        preconditioner = _Preconditioner(box, operator, coarse.single(), grid)
    out = np.empty_like(rhs)
    for channel in range(rhs.shape[2]):
        b = np.zeros(grid)
        np.multiply(rhs[:, :, channel], mask, out=b[:h, :w])
        x = _cg(b, operator, preconditioner, coarse, max_iter)
        if x is None:
            return None
        out[:, :, channel] = x[:h, :w]
    return out


class _Preconditioner:
    """``z = (I - Q A) B r`` in float32: the box solve ``B`` is float32 already, so its product by
    ``A`` and the coarse correction are computed at that precision too (half the memory traffic);
    the iteration itself stays float64."""

    def __init__(self, box, operator: _Operator, coarse32: _CoarseSolver, grid: tuple[int, int]):
        self.box, self.operator, self.coarse32 = box, operator, coarse32
        self.boxed = np.zeros(grid, np.float32)
        self.work = np.empty(grid, np.float32)

    def __call__(self, residual: np.ndarray, out: np.ndarray) -> None:
        self.box(residual, self.boxed)
        correction = self.coarse32(self.operator(self.boxed, out=self.work), out=self.work)
        np.subtract(self.boxed, correction, out=out)


def _cg(
    b: np.ndarray, apply_a: _Operator, precondition: _Preconditioner, coarse: _CoarseSolver, max_iter: int
) -> np.ndarray | None:
    """The deflated PCG iteration of :func:`solve_pcg` for one channel (grids are float64, masked)."""
    bound = RESIDUAL_BOUND * RESIDUAL_BOUND * _dot(b, b)
    goal = bound / (RESIDUAL_BOUND / CG_TOLERANCE) ** 2
    z = np.zeros_like(b)  # the preconditioned residual
    work = np.empty_like(b)
    x = coarse(b)
    r = b - apply_a(x, out=work)
    p, rz = None, 0.0
    for _ in range(max_iter):
        # The stop is tested before preconditioning: the residual that meets it needs no box solve.
        if _dot(r, r) <= goal:
            true_r = b - apply_a(x, out=work)
            if _dot(true_r, true_r) <= bound:
                return x
            goal /= 100  # the recurrence drifted from the true residual: go on a little further
        precondition(r, z)
        rz_before, rz = rz, _dot(r, z)
        if p is None:
            p = z.copy()
        else:
            cv2.scaleAdd(p, (1.0 / rz_before) * rz, z, dst=p)  # beta = rz / rz_before
        ap = apply_a(p, out=work)
        pap = _dot(p, ap)
        if not (pap > 0 and rz > 0):
            return None
        alpha = rz / pap
        cv2.scaleAdd(p, alpha, x, dst=x)
        cv2.scaleAdd(ap, -alpha, r, dst=r)
    return None
