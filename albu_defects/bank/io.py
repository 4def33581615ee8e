"""Reading image and mask files: one colour order and one read-error path for every reader of the package."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from albu_defects.core.validation import check_image

__all__ = ["IMAGE_SUFFIXES", "SourceProblem", "read_image", "read_mask", "read_source"]

#: File types read as images or masks.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy")


class SourceProblem(Exception):
    """A source to skip: carries the reason code and a detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def read_image(path: str | os.PathLike[str], name: str = "image") -> np.ndarray:
    """Read an image as stored (``cv2.IMREAD_UNCHANGED``; ``.npy`` without pickles), colour as RGB(A).

    Raises ``ValueError`` when the file cannot be read or holds an unsupported dtype or shape.
    """
    path = os.fspath(path)
    if path.lower().endswith(".npy"):
        try:
            image = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"{name} {path} could not be read: {error}") from error
    else:
        image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ValueError(f"{name} {path} could not be read (missing, empty or not an image)")
        if image.ndim == 3 and image.shape[2] == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        elif image.ndim == 3 and image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return check_image(image, f"{name} {path}")


def read_source(path: Path, what: str) -> np.ndarray:
    """:func:`read_image` for the bank builder: a problem becomes a :class:`SourceProblem` (the source is skipped)."""
    try:
        return read_image(path, what)
    except ValueError as error:
        reason = "unreadable" if "could not be read" in str(error) else "unsupported"
        raise SourceProblem(reason, str(error)) from error


def read_mask(path: Path) -> np.ndarray:
    """A 2-D integer or float mask; a colour mask must have equal channels."""
    mask = read_source(path, "mask")
    if mask.ndim == 3:
        if not all(np.array_equal(mask[..., 0], mask[..., c]) for c in range(1, mask.shape[2])):
            raise SourceProblem("unsupported", f"mask {path} has {mask.shape[2]} different channels; save it as one")
        mask = mask[..., 0]
    return mask
