"""Reading a bank's ``entries.npz``: only the members the index describes, each allocated only once checked.

A hostile archive cannot make a load allocate more than the file really holds: the member count is
read from the zip's end record before :mod:`zipfile` parses a directory of any size, and each member
must be stored uncompressed with exactly the dtype and length the index describes.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from albu_defects.core.files import UnsafeFile, open_inside

from .index import INDEX_FILE, Corrupt
from .io import read_npy_header

__all__ = ["read_arrays"]

# The end record of a zip archive: signature, disk numbers, member counts, directory size and offset, comment length.
_END = struct.Struct("<4s4H2LH")
_MAX_MEMBERS = 8


def _count_members(handle: BinaryIO, size: int) -> int:
    """The member count a zip's end record states (read before zipfile parses a directory of any size)."""
    tail_size = min(size, _END.size + 65535)
    handle.seek(size - tail_size)
    tail = handle.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _END.size > len(tail):
        raise ValueError("is not a zip archive (no end record)")
    return _END.unpack_from(tail, at)[4]


def read_arrays(
    root: Path, relative: str, expected: dict[str, tuple[np.dtype, int]], corrupt: Corrupt
) -> dict[str, np.ndarray]:
    """The npz members the index describes, each checked against its dtype and length before it is read."""
    try:
        handle = open_inside(root, relative)
    except UnsafeFile as error:
        raise corrupt(relative, str(error).removeprefix(f"{relative} ")) from None
    with handle:
        try:
            size = handle.seek(0, 2)
            if _count_members(handle, size) > _MAX_MEMBERS:
                raise ValueError(f"holds more than the {_MAX_MEMBERS} members a bank writes")
            handle.seek(0)
            with zipfile.ZipFile(handle) as archive:
                return _read_members(archive, expected, size)
        except (ValueError, zipfile.BadZipFile, EOFError, OSError, NotImplementedError, RuntimeError) as error:
            raise corrupt(relative, str(error)) from None


def _read_members(
    archive: zipfile.ZipFile, expected: dict[str, tuple[np.dtype, int]], size: int
) -> dict[str, np.ndarray]:
    """Each member read into an array allocated only once its header and the file's real size agree with the index."""
    names = [info.filename for info in archive.infolist()]
    wanted = {f"{name}.npy" for name in expected}
    extra = sorted(set(names) - wanted)
    if extra or len(set(names)) != len(names):
        raise ValueError(f"member {extra[0] if extra else 'names repeat'} is not described by {INDEX_FILE}")
    arrays = {}
    for name, (dtype, count) in expected.items():
        if f"{name}.npy" not in names:
            raise ValueError(f"{name} is missing")
        info = archive.getinfo(f"{name}.npy")
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            raise ValueError(f"{name} is compressed or encrypted; a bank stores its arrays uncompressed")
        if info.compress_size != info.file_size or info.header_offset + info.file_size > size:
            raise ValueError(f"{name} claims {info.file_size} bytes, more than the archive holds")
        with archive.open(info) as member:
            try:
                shape, fortran, stored = read_npy_header(member)
            except ValueError as error:
                raise ValueError(f"{name} is not a bank array ({error})") from None
            if stored.newbyteorder("=") != dtype.newbyteorder("="):
                raise ValueError(f"{name} has dtype {stored}, the index describes {dtype}")
            if shape != (count,) or fortran:
                raise ValueError(f"{name} has shape {shape}; the index describes ({count},)")
            data_start = info.file_size - count * dtype.itemsize
            if data_start != member.tell():
                raise ValueError(
                    f"{name} holds {info.file_size - member.tell()} bytes of data; the index describes {count * dtype.itemsize}"
                )
            array = np.empty(count, stored)
            view = memoryview(array).cast("B")
            filled = 0
            while filled < view.nbytes:
                read = member.readinto(view[filled:])
                if not read:
                    raise ValueError(f"{name} is truncated")
                filled += read
            member.read(1)  # reach the end: zipfile checks the CRC there
        arrays[name] = array.astype(dtype, copy=False)
    return arrays
