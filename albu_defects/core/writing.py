"""Safe writing: durable new files, removals that never follow a link, one writer per folder, journals.

Every writer of the package (a bank save, a synthesis run) goes through these functions:

- :func:`create_file` writes a new file (``O_EXCL``: never over an existing one) and flushes it to
  disk; :func:`fsync_dir` makes renames durable; :func:`remove_files` deletes a list of files
  (never following links) and the folders they leave empty.
- Concurrency and interruptions: :func:`folder_lock` holds an exclusive ``flock`` on a folder for
  one writer at a time (released by the kernel when the writer dies, even by SIGKILL); a journal
  (:func:`write_journal` / :func:`read_journals`), written before anything else, names every file an
  interrupted writer may have left, so the next writer can remove exactly those.
- Output sets: :func:`replace_output` swaps a run's files for a new run's with the manifests
  removed first and written last, so a manifest present always describes exactly the files beside
  it; :func:`recover_output` cleans up after an interrupted one.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from .files import DIR_FD, DIRECTORY_FLAG, READ_FLAGS, folder_fd, load_json, open_inside, relative_parts

try:
    import fcntl
except ImportError:  # Windows: no flock; writers are not serialized there
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "create_file",
    "folder_lock",
    "fsync_dir",
    "fsync_files",
    "read_journals",
    "recover_output",
    "remove_files",
    "replace_output",
    "write_journal",
]

JOURNAL_PREFIX = ".albu-defects-"


def create_file(path: Path, write: bytes | Callable[[BinaryIO], Any], *, durable: bool = True) -> None:
    """Create ``path`` (it must not exist) with ``write`` (bytes, or a function writing to the file).

    ``durable``: flush it to disk (``fsync``) before returning, so a rename that publishes it later
    cannot survive a power loss without its data. An interruption of the process (even SIGKILL)
    never loses written data either way: the page cache survives the process.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    with os.fdopen(os.open(path, flags, 0o666), "wb") as handle:
        if isinstance(write, bytes):
            handle.write(write)
        else:
            write(handle)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())


def _each(work: Callable[[Any], Any], items: list, workers: int = 8) -> None:
    """``work(item)`` for every item, several at a time when there are many: the filesystem batches
    concurrent metadata updates and flushes (measured here: a few hundred ``fsync`` 3-5x faster, ``unlink``
    of flushed files 17x faster than one after another)."""
    if len(items) < 2 * workers:
        for item in items:
            work(item)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(work, items))


def fsync_files(paths: Iterable[Path]) -> None:
    """Flush files to disk (several at a time, see :func:`_each`)."""

    def flush(path: Path) -> None:
        fd = os.open(path, READ_FLAGS)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    _each(flush, list(paths))


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames, new and removed files) to disk; a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(path, READ_FLAGS | DIRECTORY_FLAG)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_files(root: Path, relatives: Iterable[str]) -> None:
    """Delete ``root/relative`` for each, then the folders left empty; never through a link, never a folder.

    Missing files are fine (an interrupted writer may not have made them); a link is removed itself,
    never what it points to, and a path that leads through a linked folder is left alone. Folders are
    removed only when empty, up to (not including) ``root``: anything else a user put there stays.
    """
    remover = _Remover(root)
    try:
        files = [relative_parts(relative) for relative in relatives]
        for parts in files:
            remover.open_folder(parts[:-1])
        _each(lambda parts: remover(parts, os.unlink), files)
        for folder in sorted({parts[:i] for parts in files for i in range(1, len(parts))}, key=len, reverse=True):
            remover.open_folder(folder[:-1])
            remover(folder, os.rmdir)
    finally:
        remover.close()
    fsync_dir(root)


class _Remover:
    """Removes paths inside ``root`` without following links, each folder on the way opened once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._folders: dict[tuple[str, ...], int | None] = {}

    def open_folder(self, parts: tuple[str, ...]) -> None:
        """Open ``root/parts`` (no links on the way) for the removals in it; a missing or linked one stays closed."""
        if DIR_FD and parts not in self._folders:
            try:
                self._folders[parts] = folder_fd(self.root, parts)
            except OSError:  # missing, or a link: nothing of ours is behind it
                self._folders[parts] = None

    def __call__(self, parts: tuple[str, ...], remove: Callable[..., None]) -> None:
        """``remove(last part)`` (``os.unlink`` or ``os.rmdir``) in its opened folder; errors leave it alone."""
        if not DIR_FD:  # (Windows) check the folders on the way
            if not any(os.path.islink(self.root.joinpath(*parts[:i])) for i in range(1, len(parts))):
                with contextlib.suppress(OSError):
                    remove(self.root.joinpath(*parts))
            return
        folder = self._folders.get(parts[:-1])
        if folder is not None:
            with contextlib.suppress(OSError):  # missing, or (rmdir) not empty
                remove(parts[-1], dir_fd=folder)

    def close(self) -> None:
        for fd in self._folders.values():
            if fd is not None:
                os.close(fd)
        self._folders.clear()


@contextlib.contextmanager
def folder_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (one writer at a time); ``ValueError`` if another process holds it."""
    if fcntl is None:
        yield
        return
    fd = os.open(folder, READ_FLAGS | DIRECTORY_FLAG)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another process is writing {what} {folder}; wait until it is done") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def write_journal(folder: Path, name: str, content: dict[str, Any]) -> Path:
    """Write ``folder/.albu-defects-<name>.json`` durably, before the writer it describes touches anything."""
    path = folder / f"{JOURNAL_PREFIX}{name}.json"
    create_file(path, json.dumps(content).encode("utf-8"))
    fsync_dir(folder)
    return path


def read_journals(folder: Path, kind: str) -> list[tuple[Path, dict[str, Any] | None]]:
    """The journals ``.albu-defects-<kind>-*.json`` in ``folder``: (path, content or ``None`` if unreadable)."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(f"{JOURNAL_PREFIX}{kind}-") and entry.name.endswith(".json"):
                try:
                    with open_inside(folder, entry.name, limit=1 << 24) as handle:
                        content = load_json(handle.read(), entry.name)
                except ValueError:
                    content = None
                found.append((Path(entry.path), content if isinstance(content, dict) else None))
    return sorted(found)


def recover_output(root: Path, kind: str, manifests: tuple[str, ...]) -> None:
    """Undo what an interrupted :func:`replace_output` of ``kind`` left in ``root`` (see there).

    Without its last manifest, ``root`` holds files of an interrupted run (or a mix of the previous
    run's and a new one's) that no manifest describes: every file the journal names is removed. With
    it, the previous run (or a completed new one) is intact: only the staging folder goes.
    """
    for journal, content in read_journals(root, kind):
        if content is not None:
            listed = [name for key in ("previous", "new") for name in content.get(key, []) if isinstance(name, str)]
            if not (root / manifests[-1]).exists():
                remove_files(root, [*listed, *manifests])
            staging = content.get("staging")
            if isinstance(staging, str) and staging.startswith(f".{kind}-") and "/" not in staging:
                remove_files(root / staging, [*content.get("new", []), *manifests])
                with contextlib.suppress(OSError):
                    (root / staging).rmdir()
        journal.unlink()
    fsync_dir(root)


def replace_output(
    root: Path,
    kind: str,
    previous: set[str],
    candidates: list[str],
    manifests: tuple[str, ...],
    produce: Callable[[Path], list[str]],
) -> None:
    """Replace the files ``previous`` (a run's output, its manifests included) in ``root`` with a new run's.

    ``produce(folder)`` writes the new files (each one of ``candidates``) and then ``manifests``, in
    order, under ``folder``, and returns the files it wrote. Without a previous run that folder is
    ``root`` itself (the manifests come last, so they describe files already there). With one it is a
    hidden staging folder, and then comes the commit: the manifests are removed last-first, the old
    files the new run does not replace deleted, the new files renamed into place and the manifests
    renamed in, the last one last. So a manifest present in ``root`` always describes exactly the
    files beside it (the old run's until the commit, the new run's after it), and an interrupted run
    leaves at worst no manifest and a journal from which :func:`recover_output` removes every file it
    may have left.
    """
    generation = uuid.uuid4().hex[:16]
    staging = root / f".{kind}-{generation}" if previous else root
    journal = write_journal(
        root, f"{kind}-{generation}", {"staging": staging.name, "previous": sorted(previous), "new": candidates}
    )
    if staging != root:
        staging.mkdir()
    try:
        produced = produce(staging)
        fsync_dir(staging)
    except BaseException:
        remove_files(staging, [*candidates, *manifests])
        if staging != root:
            staging.rmdir()
        journal.unlink()
        raise
    if staging != root:
        _commit(root, staging, previous, produced, manifests)
    journal.unlink()
    fsync_dir(root)


def _commit(root: Path, staging: Path, previous: set[str], produced: list[str], manifests: tuple[str, ...]) -> None:
    """Swap the staged run in for the previous one (see :func:`replace_output`), then remove the staging folder."""
    for name in reversed(manifests):
        with contextlib.suppress(FileNotFoundError):
            (root / name).unlink()
    fsync_dir(root)
    remove_files(root, sorted(previous - set(produced) - set(manifests)))
    folders = set()
    for name in produced:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, root / name)
        folders.add((root / name).parent)
    for folder in folders:
        fsync_dir(folder)
    for name in manifests:
        os.replace(staging / name, root / name)
        fsync_dir(root)
    remove_files(staging, produced)
    with contextlib.suppress(OSError):
        staging.rmdir()
