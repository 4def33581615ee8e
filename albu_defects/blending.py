"""Blending core: hard cut-paste (and, next, Poisson blending) of a masked source onto a target.

Conventions shared by every function here: ``source`` and ``mask`` have the same height and
width; ``top_left=(y, x)`` places them on ``target`` and may be negative or run past the far edges
(only the overlap is used); the result is a new array with the target's shape and dtype, and no
input is ever modified.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .geometry import placement_overlap
from .validation import as_bool_mask, check_image, image_hw

__all__ = ["paste"]


class BlendInputs(NamedTuple):
    """Validated blend inputs: the source and mask cut down to the part that lands on the target."""

    target: np.ndarray
    source: np.ndarray  # only the overlapping window
    mask: np.ndarray  # bool, same window
    window: tuple[slice, slice]  # where ``source`` lands on ``target``


def _channels(image: np.ndarray) -> int:
    return 1 if image.ndim == 2 else int(image.shape[2])


def check_blend_inputs(
    target: np.ndarray, source: np.ndarray, mask: np.ndarray, top_left: tuple[int, int]
) -> BlendInputs | None:
    """Validate a blend call and clip it to the target; ``None`` when nothing of the mask lands on it."""
    check_image(target, "target")
    check_image(source, "source")
    if source.dtype != target.dtype:
        raise ValueError(f"source has dtype {source.dtype} but target has {target.dtype}; convert one to match")
    if _channels(source) != _channels(target) or (source.ndim == 3) != (target.ndim == 3):
        raise ValueError(
            f"source has shape {source.shape} and target {target.shape}: they must agree in channels "
            "(both (H, W), both (H, W, 1), or both (H, W, C) with the same C)"
        )
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
        window = out[inputs.window]
        mask = inputs.mask if window.ndim == 2 else inputs.mask[..., None]
        np.copyto(window, inputs.source, where=mask)  # much faster than boolean fancy indexing
    return out
