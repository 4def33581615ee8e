"""Reading image and mask files: one colour order and one read-error path for every reader of the package."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

from albu_defects.core.files import UnsafeFile, open_regular
from albu_defects.core.validation import check_image

__all__ = [
    "IMAGE_SUFFIXES",
    "SourceProblem",
    "decode_npy",
    "jpeg_is_complete",
    "read_image",
    "read_mask",
    "read_npy_header",
    "read_source",
]

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

    Only a regular file is opened (a FIFO or a device is refused, never waited on). A truncated or
    corrupt file is refused rather than decoded into fill: OpenCV's ``imread`` turns a JPEG cut short
    into an image whose missing part is grey, so the bytes are decoded with ``imdecode`` and a JPEG
    must run to its end-of-image marker. Raises ``ValueError`` ("could not be read") when the file
    cannot be read, or holds an unsupported dtype or shape.
    """
    path = os.fspath(path)
    try:
        with open_regular(path) as handle:
            data = handle.read()
    except UnsafeFile as error:
        raise ValueError(f"{name} {path} could not be read: it {error.problem}") from None
    except OSError as error:
        raise ValueError(f"{name} {path} could not be read: {error}") from None
    if path.lower().endswith(".npy"):
        try:
            image = decode_npy(data)
        except ValueError as error:
            raise ValueError(f"{name} {path} could not be read: {error}") from None
    else:
        if data.startswith(_JPEG_START) and not jpeg_is_complete(data):
            raise ValueError(
                f"{name} {path} could not be read: the JPEG is truncated or corrupt (no end-of-image marker)"
            )
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
        if image is None:
            raise ValueError(f"{name} {path} could not be read (empty, truncated, corrupt or not an image)")
        if image.ndim == 3 and image.shape[2] == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        elif image.ndim == 3 and image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return check_image(image, f"{name} {path}")


def read_npy_header(stream: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of the .npy array starting at ``stream`` (nothing after the header is read).

    Object dtypes are refused: their data is a pickle, and nothing here ever unpickles.
    """
    version = np.lib.format.read_magic(stream)
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise ValueError(f"unknown .npy format version {version}")
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(stream)
    if dtype.hasobject:
        raise ValueError(f"has dtype {dtype}: it holds Python objects, which are never loaded")
    return shape, fortran_order, dtype


def decode_npy(data: bytes) -> np.ndarray:
    """The array of an .npy file's bytes, after checking its header describes exactly the data that follows."""
    stream = io.BytesIO(data)
    shape, fortran_order, dtype = read_npy_header(stream)
    count = math.prod(shape)
    if count * dtype.itemsize != len(data) - stream.tell():
        raise ValueError(
            f"holds {len(data) - stream.tell()} bytes of data, its header describes {count * dtype.itemsize}"
        )
    flat = np.frombuffer(data, dtype, count, offset=stream.tell())
    return flat.reshape(shape, order="F" if fortran_order else "C").copy()


_JPEG_START = b"\xff\xd8"
#: JPEG markers without a length field: TEM, RST0-7, SOI, EOI.
_STANDALONE = frozenset([0x01, *range(0xD0, 0xDA)])


def jpeg_is_complete(data: bytes) -> bool:
    """Whether a JPEG stream runs from its start to its end-of-image marker (a truncated file stops short).

    Walks the marker segments by their lengths, and the entropy-coded data after each start-of-scan
    to the next real marker (``FF 00`` is a stuffed byte, ``FF D0``-``FF D7`` are restart markers),
    so an EOI inside an embedded thumbnail (an APP1 segment) does not count. Bytes after the EOI
    (camera trailers) are fine.
    """
    end = len(data)
    at = 2
    while at + 1 < end:
        if data[at] != 0xFF:  # stray bytes between segments (decoders skip them, with a warning)
            at = data.find(b"\xff", at)
            if at < 0:
                return False
            continue
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        if marker == 0xD9:
            return True
        if marker in _STANDALONE:
            at += 2
            continue
        if at + 4 > end:
            return False
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
        if marker != 0xDA:
            continue
        while True:  # entropy-coded data: up to the next 0xFF that starts a real marker
            at = data.find(b"\xff", at)
            if at < 0 or at + 1 >= end:
                return False
            following = data[at + 1]
            if following == 0x00 or 0xD0 <= following <= 0xD7:
                at += 2
            elif following == 0xFF:
                at += 1
            else:
                break
    return False


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
