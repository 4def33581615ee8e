"""Blending: hard paste and exact Poisson blending of a patch into an image.

:mod:`.poisson` (the public functions, the OpenCV path and the ``auto`` rule) sets up the masked
Perez system on the region's crop (:mod:`.grid`); :mod:`.solver` solves it exactly, by banded
Cholesky or by the deflated conjugate gradients of :mod:`.pcg`.
"""

from .poisson import (
    AUTO_OPENCV_MIN_CHANNELS,
    AUTO_OPENCV_MIN_KEPT,
    AUTO_OPENCV_MIN_PIXELS,
    OPENCV_EROSION,
    POISSON_METHODS,
    POISSON_MODES,
    RESIDUAL_BOUND,
    local_contrast,
    paste,
    paste_into,
    poisson_blend,
    poisson_solve,
)

__all__ = [
    "AUTO_OPENCV_MIN_CHANNELS",
    "AUTO_OPENCV_MIN_KEPT",
    "AUTO_OPENCV_MIN_PIXELS",
    "OPENCV_EROSION",
    "POISSON_METHODS",
    "POISSON_MODES",
    "RESIDUAL_BOUND",
    "local_contrast",
    "paste",
    "paste_into",
    "poisson_blend",
    "poisson_solve",
]
