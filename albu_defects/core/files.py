"""Safe reading: open only regular files, never through a link inside a folder; strict JSON.

A bank folder or a synthesis output folder is something users save over, share and download, so
every reader of the package goes through these few functions (the writers: :mod:`.writing`):

- :func:`open_regular` opens a path only if it is a regular file (``O_NONBLOCK``: a FIFO would
  block ``open()`` forever), optionally capped in size; :func:`open_inside` also refuses any
  symbolic link on the way from a folder to a file inside it (``O_NOFOLLOW`` on each component),
  so a folder's own files can never lead outside it; :class:`InsideChecker` checks many such files
  without opening them. Problems raise :class:`UnsafeFile`, a ``ValueError`` whose message says
  what the path is (a FIFO, a directory, a symbolic link...).
- :func:`load_json`: strict JSON (no NaN / Infinity unless kept as :class:`NonFinite` markers so the
  caller can name the field; nesting bounded by the interpreter's recursion limit, as a ValueError).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from pathlib import PurePosixPath
from typing import Any, BinaryIO

__all__ = [
    "DIRECTORY_FLAG",
    "DIR_FD",
    "InsideChecker",
    "NonFinite",
    "UnsafeFile",
    "folder_fd",
    "load_json",
    "open_inside",
    "open_regular",
    "READ_FLAGS",
    "relative_parts",
]

#: Flags of every read-only open (files and folders) in the package's readers and writers.
READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
DIRECTORY_FLAG = getattr(os, "O_DIRECTORY", 0)
_LINK_ERRORS = (errno.ELOOP, errno.EMLINK, errno.ENOTDIR)  # what O_NOFOLLOW gives on a link (Linux, BSD)


class UnsafeFile(ValueError):
    """A file that must not be read: missing, not a regular file, reached through a link, or too large.

    ``path`` is the path as the caller gave it and ``problem`` what is wrong ("is a FIFO (named pipe),
    not a regular file"); the message is both.
    """

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path} {problem}")
        self.path = path
        self.problem = problem


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symbolic link"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _checked(fd: int, shown: str, limit: int | None) -> BinaryIO:
    """The open descriptor ``fd`` as a binary file, if it is a regular file of at most ``limit`` bytes."""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile(shown, f"is {_kind(info.st_mode)}, not a regular file")
        if limit is not None and info.st_size > limit:
            raise UnsafeFile(shown, f"holds {info.st_size} bytes, more than the {limit} allowed")
        return os.fdopen(fd, "rb")  # (O_NONBLOCK changes nothing for a regular file's reads)
    except BaseException:
        os.close(fd)
        raise


def _open_error(error: OSError, shown: str) -> UnsafeFile:
    if isinstance(error, FileNotFoundError):
        return UnsafeFile(shown, "does not exist")
    return UnsafeFile(shown, f"could not be opened ({error.strerror or error})")


def open_regular(path: str | os.PathLike[str], *, limit: int | None = None) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file (links are followed); else :class:`UnsafeFile`.

    ``O_NONBLOCK`` makes opening a FIFO return at once (then it is refused) instead of waiting
    forever for a writer. ``limit``: the most bytes the file may hold.
    """
    shown = os.fspath(path)
    try:
        fd = os.open(shown, READ_FLAGS | _NONBLOCK)
    except OSError as error:
        raise _open_error(error, shown) from None
    return _checked(fd, shown, limit)


def relative_parts(relative: Any) -> tuple[str, ...]:
    """The components of a plain relative POSIX path (no ``..``, ``.``, absolute part, backslash or drive)."""
    if not isinstance(relative, str) or not relative:
        raise UnsafeFile(repr(relative), "is not a relative file path")
    parts = PurePosixPath(relative).parts
    if (
        relative.startswith("/")
        or "\\" in relative
        or ":" in relative
        or "\x00" in relative
        or any(part in ("..", ".") for part in relative.split("/"))
    ):
        raise UnsafeFile(repr(relative), "is not a path inside the folder")
    return parts


DIR_FD = os.open in os.supports_dir_fd and bool(_NOFOLLOW)  # False on Windows: check paths with lstat instead


class _Walk(OSError):
    """A component ``part`` of a path inside a folder could not be opened; ``kind``: what it is, when not a folder."""

    def __init__(self, part: str, error: OSError, kind: str | None = None) -> None:
        super().__init__(error.errno, error.strerror)
        self.part = part
        self.kind = kind


def _failed(folder: int, part: str, error: OSError) -> _Walk:
    """The :class:`_Walk` for ``part`` in the open folder ``folder`` (telling a link from a missing file)."""
    kind = None
    if error.errno in _LINK_ERRORS:
        with contextlib.suppress(OSError):
            kind = _kind(os.stat(part, dir_fd=folder, follow_symlinks=False).st_mode)
    return _Walk(part, error, kind)


def folder_fd(root: str | os.PathLike[str], folders: tuple[str, ...]) -> int:
    """A descriptor of ``root/folders...``, each folder opened without following a link (raises :class:`_Walk`)."""
    try:
        fd = os.open(root, READ_FLAGS | DIRECTORY_FLAG)
    except OSError as error:
        raise _Walk(os.fspath(root), error) from None
    for part in folders:
        try:
            inner = os.open(part, READ_FLAGS | DIRECTORY_FLAG | _NOFOLLOW, dir_fd=fd)
        except OSError as error:
            failed = _failed(fd, part, error)
            os.close(fd)
            raise failed from None
        os.close(fd)
        fd = inner
    return fd


def _walk_error(failed: _Walk, relative: str) -> UnsafeFile:
    if failed.kind == "a symbolic link":
        return UnsafeFile(relative, f"is reached through a symbolic link ({failed.part}); links are not followed")
    if failed.kind is not None:
        return UnsafeFile(relative, f"cannot be opened: {failed.part} is {failed.kind}")
    return _open_error(failed, relative)


def open_inside(root: str | os.PathLike[str], relative: str, *, limit: int | None = None) -> BinaryIO:
    """Open ``root/relative`` for reading; no component of ``relative`` may be a link, the file must be regular.

    ``root`` itself may be reached through links (the user named it). Raises :class:`UnsafeFile`.
    """
    parts = relative_parts(relative)
    if not DIR_FD:
        InsideChecker(root).check(relative)
        return open_regular(os.path.join(root, *parts), limit=limit)
    try:
        folder = folder_fd(root, parts[:-1])
    except _Walk as failed:
        raise _walk_error(failed, relative) from None
    try:
        fd = os.open(parts[-1], READ_FLAGS | _NOFOLLOW | _NONBLOCK, dir_fd=folder)
    except OSError as error:
        raise _walk_error(_failed(folder, parts[-1], error), relative) from None
    finally:
        os.close(folder)
    return _checked(fd, relative, limit)


class InsideChecker:
    """Checks that files are regular files inside ``root``, reached without links, without opening them.

    One ``lstat`` per file, each folder on the way opened once: what a load needs for a thousand
    stored images. ``check`` raises :class:`UnsafeFile`; ``close`` (or ``with``) releases the folders.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)
        self._folders: dict[tuple[str, ...], int] = {}

    def check(self, relative: Any) -> None:
        parts = relative_parts(relative)
        if not DIR_FD:
            path = self.root
            for part in parts[:-1]:
                path = os.path.join(path, part)
                if os.path.islink(path):
                    raise UnsafeFile(relative, f"is reached through a symbolic link ({part}); links are not followed")
            try:
                mode = os.lstat(os.path.join(path, parts[-1])).st_mode
            except OSError as error:
                raise _open_error(error, relative) from None
        else:
            try:
                if parts[:-1] not in self._folders:
                    self._folders[parts[:-1]] = folder_fd(self.root, parts[:-1])
                mode = os.stat(parts[-1], dir_fd=self._folders[parts[:-1]], follow_symlinks=False).st_mode
            except _Walk as failed:
                raise _walk_error(failed, relative) from None
            except OSError as error:
                raise _open_error(error, relative) from None
        if stat.S_ISLNK(mode):
            raise UnsafeFile(relative, f"is reached through a symbolic link ({parts[-1]}); links are not followed")
        if not stat.S_ISREG(mode):
            raise UnsafeFile(relative, f"is {_kind(mode)}, not a regular file")

    def close(self) -> None:
        for fd in self._folders.values():
            os.close(fd)
        self._folders.clear()

    def __enter__(self) -> InsideChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NonFinite(str):
    """``NaN``, ``Infinity`` or ``-Infinity`` met in a JSON text (kept as a marker so the caller can name the field)."""

    __slots__ = ()


def _keep_constant(name: str) -> NonFinite:
    return NonFinite(name)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def load_json(data: bytes, what: str, *, keep_non_finite: bool = False) -> Any:
    """Parse strict JSON (UTF-8; ``NaN`` / ``Infinity`` refused, or kept as :class:`NonFinite`); ``ValueError`` naming ``what``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} is not UTF-8 text ({error})") from None
    try:
        return json.loads(text, parse_constant=_keep_constant if keep_non_finite else _reject_constant)
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply to be read") from None
    except ValueError as error:  # JSONDecodeError, the constant, or an integer too long to convert
        raise ValueError(f"{what} is not valid JSON ({error})") from None
