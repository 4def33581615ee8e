"""The crop grid of the masked Perez system, shared by its solvers (:mod:`.solver`, :mod:`.pcg`).

The system lives on a crop grid of shape (h, w): for every masked pixel p, ``sum over p's
in-image 4-neighbours q of (f_p - f_q) = b_p``, the values of unmasked neighbours being already
folded into ``b`` (Dirichlet). ``neumann`` flags the crop sides (top, bottom, left, right) that lie
on the image border: pixels there miss the neighbour beyond it (natural condition). The other
sides of the crop are never masked (the crop is the mask's bounding box grown by 1 px).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import cv2
import numpy as np
import scipy.fft
from threadpoolctl import ThreadpoolController

#: Relative residual ``||A x - b|| / ||b||`` every exact solve reaches (checked, else a fallback solver runs).
RESIDUAL_BOUND = 1e-6
#: Per crop side (top, bottom, left, right): does it lie on the image border?
Sides = tuple[bool, bool, bool, bool]


def border_sides(shape: tuple[int, int], neumann: Sides) -> list[tuple]:
    """Index of each crop side that lies on the image border (top, bottom, left, right)."""
    h, w = shape
    sides = ((0, slice(0, w)), (h - 1, slice(0, w)), (slice(0, h), 0), (slice(0, h), w - 1))
    return [side for side, on_border in zip(sides, neumann, strict=True) if on_border]


_LAPLACE = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], np.float64)


def laplacian(grid: np.ndarray, sides: list[tuple], out: np.ndarray | None = None) -> np.ndarray:
    """Graph Laplacian of the image on a crop grid ((h, w) or (h, w, C)): 4 f_p minus p's neighbours
    (zero outside the grid), one neighbour fewer on each of ``sides`` (the image border). Right for
    every pixel off the crop's other sides (the Dirichlet ring, never masked)."""
    y = cv2.filter2D(grid, -1, _LAPLACE, dst=out, borderType=cv2.BORDER_CONSTANT).reshape(grid.shape)
    for side in sides:
        y[side] -= grid[side]
    return y


class Transform(NamedTuple):
    """A 1-D real trig transform diagonalising the path-graph Laplacian with given end conditions."""

    forward: Callable[..., np.ndarray]
    inverse: Callable[..., np.ndarray]
    kind: int
    eigenvalues: np.ndarray


def axis_transform(n: int, neumann_start: bool, neumann_end: bool) -> Transform:
    """DST-II (Dirichlet, half-sample), DCT-IV/DST-IV (mixed) or DCT-II (Neumann) of length ``n``."""
    k = np.arange(n)
    if neumann_start and neumann_end:
        return Transform(scipy.fft.dct, scipy.fft.idct, 2, 2 - 2 * np.cos(np.pi * k / n))
    if neumann_start:
        return Transform(scipy.fft.dct, scipy.fft.idct, 4, 2 - 2 * np.cos(np.pi * (k + 0.5) / n))
    if neumann_end:
        return Transform(scipy.fft.dst, scipy.fft.idst, 4, 2 - 2 * np.cos(np.pi * (k + 0.5) / n))
    return Transform(scipy.fft.dst, scipy.fft.idst, 2, 2 - 2 * np.cos(np.pi * (k + 1) / n))


_BLAS_LOCK = threading.Lock()
_BLAS_STATE: dict[str, Any] = {"libraries": None, "users": 0, "saved": []}


def _blas_libraries() -> list:
    """threadpoolctl's controllers of this process's BLAS libraries (numpy's and scipy's), found once (~2 ms)."""
    if _BLAS_STATE["libraries"] is None:
        _BLAS_STATE["libraries"] = ThreadpoolController().select(user_api="blas").lib_controllers
    return _BLAS_STATE["libraries"]


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run BLAS/LAPACK single-threaded: these factorizations are small, and OpenBLAS threads only slow
    them down (5x measured on 2 busy cores). Process-wide while active, so it is reference-counted:
    the first caller in limits every BLAS library to one thread, the last one out restores them
    (through the libraries' own thread-count calls: 4 us, where a threadpoolctl limiter takes 14)."""
    with _BLAS_LOCK:
        if _BLAS_STATE["users"] == 0:
            libraries = _blas_libraries()
            _BLAS_STATE["saved"] = [library.get_num_threads() for library in libraries]
            for library in libraries:
                library.set_num_threads(1)
        _BLAS_STATE["users"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_STATE["users"] -= 1
            if _BLAS_STATE["users"] == 0:
                for library, threads in zip(_blas_libraries(), _BLAS_STATE["saved"], strict=True):
                    library.set_num_threads(threads)
