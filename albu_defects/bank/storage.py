"""The on-disk format of a defect bank: writing a bank folder and reading one back (no pickles, no surprises).

A bank folder holds::

    index.json     {"format": "albu-defects-bank", "version": 2, "classes": [...], "margin": int,
                    "build": {...}, "arrays": "data-<id>/entries.npz", "mask_bits": int,
                    "entries": [{"source_id", "class_id", "source_hw": [h, w],
                                 "bbox": [x_min, y_min, x_max, y_max], "shape": [h, w(, c)], "dtype", "offset"}],
                    "free": [{"file": "data-<id>/free/000000.png"} | {"external": "/abs/path.jpg"}],
                    "skipped": [{"source_id", "reason", "detail"}]}
    data-<id>/     entries.npz: uncompressed, "crops_<dtype>" (every crop of that dtype, flattened and
                   concatenated in entry order; an entry's crop starts at its "offset", right where
                   the previous one of that dtype ends) and "masks_packed" (np.packbits of every
                   entry's boolean mask, flattened, in order); free/: the stored defect-free images
                   (arrays as .npy, copied files as is)

``bbox`` is the crop's box in its source image (the package's box convention, ends exclusive), so
a defect's relative position can be kept. Blobs and areas are recomputed from the masks at load.
Version 1 (albu-defects 0.1.0) wrote ``bbox`` as ``[y0, x0, y1, x1]`` and kept ``entries.npz`` and
``free/`` beside the index; such banks still load (every path in an index is relative to the folder)
and are written as version 2 when saved again. The crops live in the bank, so it stays valid when
the dataset moves. Defect-free images found by :meth:`~albu_defects.DefectBank.from_folder` stay
referenced by absolute path (``"external"``) unless ``save(..., copy_free=True)`` copies them in;
arrays given to :meth:`~albu_defects.DefectBank.from_arrays` are always stored in the bank.

Saving (:func:`write_bank`) never loses a file:
    - It replaces only a folder that is provably a bank (its ``index.json`` parses as this format
      and names only files a save writes); any other non-empty folder is refused with a ValueError.
    - It deletes only the files the previous index named; anything else in the folder stays.
    - Each save writes a new ``data-<id>/`` beside the old one, then switches ``index.json`` to it
      with one atomic rename (the commit), then deletes the old files: whenever it is interrupted,
      the folder holds the old bank or the new one, complete. A journal
      (``.albu-defects-save-<id>.json``, written first) lists what the save may leave behind; the next
      save into the folder removes exactly those files. One save at a time (a ``flock`` on the folder).
    - A path that is a symbolic link is followed: the bank behind it is updated, the link stays.

Loading (:func:`read_bank`) reads nothing but what the index describes, and refuses everything else
with one ValueError naming the bank and the field: files are opened only if regular (a FIFO is
refused, never waited on) and never through a symbolic link; ``index.json`` must be at most
:data:`MAX_INDEX_BYTES`, strict JSON (no NaN / Infinity), with integers where integers belong (not
``1.0``, not ``true``); entries must tile each crop buffer exactly; ``entries.npz`` may hold only the
members the index describes, stored uncompressed with exactly the described dtype and length, so a
load allocates what the file really holds and nothing more. Nothing is ever unpickled.
The index is parsed and checked in :mod:`~albu_defects.bank.index`, ``entries.npz`` read in
:mod:`~albu_defects.bank.arrays`; this module saves and assembles a load.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
import warnings
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from albu_defects.core.files import InsideChecker, UnsafeFile, load_json, open_inside, open_regular
from albu_defects.core.writing import (
    create_file,
    folder_lock,
    fsync_dir,
    fsync_files,
    read_journals,
    remove_files,
    write_journal,
)

from .arrays import read_arrays
from .entry import DefectBankWarning, DefectEntry
from .index import (
    ARRAYS_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    FREE_DIR,
    INDEX_FILE,
    MAX_INDEX_BYTES,
    READABLE_VERSIONS,
    Corrupt,
    free_path,
    is_int,
    parse_index,
    read_index,
)

if TYPE_CHECKING:
    import os

    from .bank import DefectBank

__all__ = ["ARRAYS_FILE", "FORMAT_NAME", "FORMAT_VERSION", "INDEX_FILE", "MAX_INDEX_BYTES", "read_bank", "write_bank"]

#: The files a save writes (0.1.0: entries.npz and free/ beside the index; now inside data-<id>/); a
#: save deletes only files the previous index names *and* that have one of these names.
_OWN_FILE = re.compile(r"(data-[0-9a-f]{8,32}/)?(entries\.npz|free/[0-9]{6,}\.[a-z0-9]{1,5})")
_INDEX_TMP = re.compile(r"\.index\.json\.[0-9a-f]{8,32}\.tmp")
_SAVE_JOURNAL = "save"


# --------------------------------------------------------------------------------------------------
# Writing


def write_bank(bank: DefectBank, path: str | os.PathLike[str], copy_free: bool) -> tuple[Path, tuple[str, ...]]:
    """Write ``bank`` into the folder ``path``; returns the folder and what the bank's free images become.

    See the module docstring for what a save may replace and how it survives interruptions. Stored
    free images come back as paths inside the folder, external ones as they were.
    """
    target = Path(path).absolute().resolve()  # through links: the bank behind a link is updated
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} exists and is not a folder; choose a folder path for the bank")
    target.mkdir(parents=True, exist_ok=True)
    with folder_lock(target, "a defect bank into"):
        _recover(target)
        old_files = _own_files(target)
        _report_legacy_temporaries(target)
        generation = uuid.uuid4().hex[:16]
        data = f"data-{generation}"
        arrays, index, copies = _plan(bank, data, copy_free)
        try:  # strict JSON, as a load reads it: a NaN in build_info would make the bank unloadable
            index_text = json.dumps(index, indent=1, allow_nan=False)
        except ValueError as error:
            raise ValueError(f"bank.build_info must hold finite numbers only ({error}); fix it before saving") from None
        index_tmp = f".index.json.{generation}.tmp"
        stored = [index["arrays"], *(ref["file"] for ref in index["free"] if "file" in ref)]
        written = [*stored, index_tmp]
        journal = write_journal(
            target, f"{_SAVE_JOURNAL}-{generation}", {"written": written, "obsolete": sorted(old_files)}
        )
        try:
            (target / data).mkdir()
            if copies:
                (target / data / FREE_DIR).mkdir()
            create_file(target / index["arrays"], lambda handle: np.savez(handle, **arrays), durable=False)
            for name, source in copies:
                _store_free(target / name, source, name)
            fsync_files(target / name for name in stored)  # all on disk before the index names them
            fsync_dir(target / data)
            if copies:
                fsync_dir(target / data / FREE_DIR)
            create_file(target / index_tmp, index_text.encode("utf-8"))
            (target / index_tmp).replace(target / INDEX_FILE)  # the commit: the new bank, complete
            fsync_dir(target)
        except BaseException:
            remove_files(target, written)
            journal.unlink()
            raise
        remove_files(target, sorted(old_files - set(written)))
        journal.unlink()
        fsync_dir(target)
    return target, tuple(str(target / ref["file"]) if "file" in ref else ref["external"] for ref in index["free"])


def _plan(bank: DefectBank, data: str, copy_free: bool) -> tuple[dict[str, np.ndarray], dict[str, Any], list]:
    """The arrays, the index and the free images to store ((name, array or source path)) of a save."""
    buffers: dict[str, list[np.ndarray]] = defaultdict(list)
    offsets: dict[str, int] = defaultdict(int)
    entries = []
    for entry in bank.entries:
        dtype = entry.crop.dtype.name
        entries.append(
            {
                "source_id": entry.source_id,
                "class_id": entry.class_id,
                "source_hw": list(entry.source_hw),
                "bbox": list(entry.bbox),
                "shape": list(entry.crop.shape),
                "dtype": dtype,
                "offset": offsets[dtype],
            }
        )
        buffers[dtype].append(entry.crop.ravel())
        offsets[dtype] += entry.crop.size
    arrays = {f"crops_{dtype}": np.concatenate(parts) for dtype, parts in buffers.items()}
    masks = [e.mask.ravel() for e in bank.entries]
    arrays["masks_packed"] = np.packbits(np.concatenate(masks)) if masks else np.zeros(0, np.uint8)

    free_refs: list[dict[str, str]] = []
    copies: list[tuple[str, np.ndarray | Path]] = []
    stored_root = bank.path
    for i, item in enumerate(bank.free_images):
        if isinstance(item, np.ndarray):
            name = f"{data}/{FREE_DIR}/{i:06d}.npy"
            copies.append((name, item))
            free_refs.append({"file": name})
            continue
        source = Path(item)
        inside = stored_root is not None and source.resolve().is_relative_to(stored_root)
        if copy_free or inside:  # files already stored in a bank always move with it
            name = f"{data}/{FREE_DIR}/{i:06d}{source.suffix.lower()}"
            copies.append((name, source))
            free_refs.append({"file": name})
        else:
            free_refs.append({"external": str(source.resolve())})
    index = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "classes": list(bank.classes),
        "margin": bank.margin,
        "build": bank.build_info,
        "arrays": f"{data}/{ARRAYS_FILE}",
        "mask_bits": int(sum(m.size for m in masks)),
        "entries": entries,
        "free": free_refs,
        "skipped": [s._asdict() for s in bank.skipped],
    }
    return arrays, index, copies


def _store_free(path: Path, source: np.ndarray | Path, name: str) -> None:
    if isinstance(source, np.ndarray):
        create_file(
            path, lambda handle: np.save(handle, np.ascontiguousarray(source), allow_pickle=False), durable=False
        )
        return
    try:
        with open_regular(source) as handle:
            create_file(path, lambda out: shutil.copyfileobj(handle, out, 1 << 20), durable=False)
    except (OSError, UnsafeFile) as error:
        raise ValueError(f"defect-free image {source} could not be stored as {name}: {error}") from error


def _current_index(root: Path) -> dict[str, Any] | None:
    """The folder's index if it is ours (format and version), ``None`` if absent; ValueError if anything else."""
    try:
        with open_inside(root, INDEX_FILE, limit=MAX_INDEX_BYTES) as handle:
            index = load_json(handle.read(), INDEX_FILE, keep_non_finite=True)
    except UnsafeFile as error:
        if not (root / INDEX_FILE).exists() and not (root / INDEX_FILE).is_symlink():
            return None
        raise ValueError(str(error)) from None
    if not (isinstance(index, dict) and index.get("format") == FORMAT_NAME and is_int(index.get("version"))):
        raise ValueError(f"{INDEX_FILE} is not an {FORMAT_NAME} index")
    if index["version"] not in READABLE_VERSIONS:
        raise ValueError(f"{INDEX_FILE} has format version {index['version']}, which this version does not know")
    return index


def _referenced(index: dict[str, Any]) -> set[str]:
    """The files an index of ours names (arrays and stored free images); ValueError if one is not a save's name."""
    free = index.get("free") if isinstance(index.get("free"), list) else []
    refs = [index.get("arrays"), *(ref["file"] for ref in free if isinstance(ref, dict) and "file" in ref)]
    for ref in refs:
        if not (isinstance(ref, str) and _OWN_FILE.fullmatch(ref)):
            raise ValueError(f"{INDEX_FILE} names {ref!r}, which is not a file a bank save writes")
    return set(refs)


def _own_files(target: Path) -> set[str]:
    """The files of the bank already in ``target`` (a save may delete them), after checking it is one.

    An empty folder has none. A folder holding anything but a bank of ours is refused.
    """
    try:
        index = _current_index(target)
        owned = set() if index is None else _referenced(index)
    except ValueError as error:
        raise ValueError(
            f"{target} is not a defect bank ({error}); refusing to replace it: save the bank into a new or "
            "empty folder, or into a folder written by DefectBank.save"
        ) from None
    if index is None and any(not p.name.startswith(".albu-defects-") for p in target.iterdir()):
        raise ValueError(
            f"{target} is a non-empty folder that is not a defect bank (it has no {INDEX_FILE}); refusing to "
            "write into it: save the bank into a new or empty folder"
        )
    return owned


def _recover(target: Path) -> None:
    """Remove what interrupted saves left: every file their journals list that the current index does not name."""
    journals = read_journals(target, _SAVE_JOURNAL)
    if not journals:
        return
    try:
        index = _current_index(target)
        keep = set() if index is None else _referenced(index)
    except ValueError:
        return  # not provably ours any more: touch nothing (the save below refuses the folder)
    for journal, content in journals:
        if content is not None:
            listed = [f for key in ("written", "obsolete") for f in content.get(key, []) if isinstance(f, str)]
            ours = [f for f in listed if (_OWN_FILE.fullmatch(f) or _INDEX_TMP.fullmatch(f)) and f not in keep]
            remove_files(target, ours)
        journal.unlink()
    fsync_dir(target)


def _report_legacy_temporaries(target: Path) -> None:
    """0.1.0 saved through ``.<name>.tmp-*`` / ``.<name>.old-*`` folders that a kill could leave behind: name them."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(tmp|old)-[0-9a-f]{{8}}")
    stale = sorted(p.name for p in target.parent.iterdir() if pattern.fullmatch(p.name))
    if stale:
        warnings.warn(
            f"{target.parent} holds folders left by interrupted saves of albu-defects 0.1.0: {', '.join(stale)} "
            "(an older copy of the bank, or a partial one); delete them when you no longer need them",
            DefectBankWarning,
            stacklevel=4,
        )


# --------------------------------------------------------------------------------------------------
# Reading


def read_bank(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a bank folder: the keyword arguments of ``DefectBank(...)``. See the module docstring.

    A load that fails while the index changed under it (a save switched the bank to new files and
    removed the old ones meanwhile) is retried once.
    """
    root = Path(path).absolute().resolve()
    for attempt in (1, 2):
        stamp = _index_stamp(root)
        try:
            return _read_folder(root)
        except ValueError:
            if attempt == 2 or _index_stamp(root) == stamp:
                raise
    raise AssertionError("unreachable")


def _index_stamp(root: Path) -> tuple[int, int, int] | None:
    try:
        info = (root / INDEX_FILE).lstat()
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


def _read_folder(root: Path) -> dict[str, Any]:
    corrupt = Corrupt(root)
    index = read_index(root, corrupt)
    layout = parse_index(index, corrupt)
    arrays = read_arrays(root, layout["arrays"], layout["expected"], corrupt)
    masks = np.unpackbits(arrays.pop("masks_packed"), count=layout["mask_bits"]).view(bool)
    entries = []
    mask_offset = 0
    for entry_id, meta in enumerate(layout["entries"]):
        shape, hw = meta["shape"], meta["shape"][0] * meta["shape"][1]
        crop = arrays[f"crops_{meta['dtype']}"][meta["offset"] : meta["offset"] + int(np.prod(shape))]
        try:
            entries.append(
                DefectEntry(
                    entry_id=entry_id,
                    class_id=meta["class_id"],
                    class_name=layout["classes"][meta["class_id"] - 1],
                    source_id=meta["source_id"],
                    source_hw=meta["source_hw"],
                    bbox=meta["bbox"],
                    crop=crop.reshape(shape),
                    mask=masks[mask_offset : mask_offset + hw].reshape(shape[:2]),
                )
            )
        except ValueError as error:
            raise corrupt(f"entries[{entry_id}]", str(error)) from None
        mask_offset += hw
    with InsideChecker(root) as inside:
        free = [free_path(inside, i, ref, corrupt) for i, ref in enumerate(layout["free"])]
    return {
        "classes": layout["classes"],
        "entries": entries,
        "free_images": free,
        "margin": layout["margin"],
        "skipped": layout["skipped"],
        "build_info": layout["build"],
        "path": root,
    }
