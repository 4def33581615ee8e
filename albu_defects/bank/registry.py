"""Banks by path: load each bank folder once per process, and the string a pipeline serializes.

A transform takes ``bank="path/to/bank"`` (a string, so the pipeline serializes to YAML) and calls
:func:`resolve_bank`, which loads each bank folder at most once per process (cached by absolute
path; reloaded when its index changes). :func:`bank_reference` gives the string a transform should
serialize. A bank with a ``path`` (loaded, or saved) pickles as that path only, so DataLoader
workers receive a few bytes and load the bank themselves, once.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from .bank import DefectBank
from .storage import INDEX_FILE

__all__ = ["bank_reference", "check_bank_arg", "remember", "resolve_bank"]


_CACHE: dict[Path, tuple[tuple[int, int, int], DefectBank]] = {}
_CACHE_LOCK = threading.Lock()


def _index_stamp(root: Path) -> tuple[int, int, int]:
    stat = (root / INDEX_FILE).stat()
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def remember(root: Path, bank: DefectBank) -> None:
    """Cache ``bank`` as the bank of the folder ``root`` (just saved there)."""
    with _CACHE_LOCK:
        _CACHE[root] = (_index_stamp(root), bank)


def resolve_bank(bank: DefectBank | str | os.PathLike[str]) -> DefectBank:
    """A :class:`DefectBank` given itself or its folder path; each folder loads at most once per process.

    The cache is keyed by the resolved absolute path and reloads when the folder's index changes
    (the bank was saved again).
    """
    bank = check_bank_arg(bank)
    if isinstance(bank, DefectBank):
        return bank
    root = Path(bank).resolve()
    try:
        stamp = _index_stamp(root)
    except OSError:
        raise ValueError(
            f"{root} is not a defect bank: {INDEX_FILE} is missing (build one with DefectBank.save)"
        ) from None
    with _CACHE_LOCK:
        cached = _CACHE.get(root)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        loaded = DefectBank.load(root)
        _CACHE[root] = (stamp, loaded)
        return loaded


def bank_reference(bank: DefectBank | str | os.PathLike[str]) -> str:
    """The YAML-safe string a transform should serialize for its ``bank`` argument (the folder path)."""
    bank = check_bank_arg(bank)
    if isinstance(bank, DefectBank):
        if bank.path is None:
            raise ValueError("this DefectBank has no folder to refer to; save it first with bank.save(path)")
        return str(bank.path)
    return bank


def check_bank_arg(bank: Any) -> DefectBank | str:
    """A transform's ``bank`` argument as it is kept: a :class:`DefectBank` as is, a path as a string.

    Raises ``ValueError`` for anything else. Loading (:func:`resolve_bank`) and serializing
    (:func:`bank_reference`) start from it.
    """
    if isinstance(bank, DefectBank):
        return bank
    if isinstance(bank, (str, os.PathLike)):
        return os.fspath(bank)
    raise ValueError(f"bank must be a DefectBank or the path of a saved bank, got {type(bank).__name__}")
