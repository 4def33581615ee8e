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
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import struct
import uuid
import warnings
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from albu_defects.core.files import (
    InsideChecker,
    NonFinite,
    UnsafeFile,
    create_file,
    folder_lock,
    fsync_dir,
    fsync_files,
    load_json,
    open_inside,
    open_regular,
    read_journals,
    relative_parts,
    remove_files,
    write_journal,
)
from albu_defects.core.validation import SUPPORTED_IMAGE_DTYPES

from .entry import DEFAULT_MARGIN, DefectBankWarning, DefectEntry, SkippedSource
from .io import read_npy_header

if TYPE_CHECKING:
    import os

    from .bank import DefectBank

__all__ = ["ARRAYS_FILE", "FORMAT_NAME", "FORMAT_VERSION", "INDEX_FILE", "MAX_INDEX_BYTES", "read_bank", "write_bank"]

FORMAT_NAME = "albu-defects-bank"
FORMAT_VERSION = 2
#: Versions :func:`read_bank` reads; version 1 stored ``bbox`` as ``[y0, x0, y1, x1]``.
READABLE_VERSIONS = (1, 2)
INDEX_FILE = "index.json"
ARRAYS_FILE = "entries.npz"
FREE_DIR = "free"
#: The largest index.json a load reads (about 300,000 entries).
MAX_INDEX_BYTES = 64 << 20
#: The largest image side, margin and channel count an index may state.
MAX_SIDE = (1 << 31) - 1
MAX_MARGIN = 1 << 16
MAX_CHANNELS = 64
#: The files a save writes (0.1.0: entries.npz and free/ beside the index; now inside data-<id>/); a
#: save deletes only files the previous index names *and* that have one of these names.
_OWN_FILE = re.compile(r"(data-[0-9a-f]{8,32}/)?(entries\.npz|free/[0-9]{6,}\.[a-z0-9]{1,5})")
_INDEX_TMP = re.compile(r"\.index\.json\.[0-9a-f]{8,32}\.tmp")
_SAVE_JOURNAL = "save"
_ENTRY_KEYS = ("source_id", "class_id", "source_hw", "bbox", "shape", "dtype", "offset")


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
    if not (isinstance(index, dict) and index.get("format") == FORMAT_NAME and _is_int(index.get("version"))):
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


class _Corrupt:
    """Makes the one ValueError of a failed load: the bank's path, the field, the problem."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, field: str, problem: str) -> ValueError:
        return ValueError(f"corrupt defect bank {self.root}: {field}: {problem}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_text(value: Any) -> str:
    """``value`` as JSON text, with NaN / Infinity markers shown bare and huge integers by their length."""
    if isinstance(value, NonFinite):
        return str(value)
    if _is_int(value) and abs(value) > 10**12:
        return f"<an integer of {len(str(abs(value)))} digits>"
    if isinstance(value, list):
        return "[" + ", ".join(_json_text(v) for v in value[:8]) + (", ...]" if len(value) > 8 else "]")
    if isinstance(value, dict):
        items = [f"{json.dumps(str(k))}: {_json_text(v)}" for k, v in list(value.items())[:8]]
        return "{" + ", ".join(items) + (", ...}" if len(value) > 8 else "}")
    return repr(value) if isinstance(value, float) else json.dumps(value)


def _show(value: Any) -> str:
    text = _json_text(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
    corrupt = _Corrupt(root)
    index = _read_index(root, corrupt)
    layout = _parse_index(index, corrupt)
    arrays = _read_arrays(root, layout["arrays"], layout["expected"], corrupt)
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
        free = [_free_path(inside, i, ref, corrupt) for i, ref in enumerate(layout["free"])]
    return {
        "classes": layout["classes"],
        "entries": entries,
        "free_images": free,
        "margin": layout["margin"],
        "skipped": layout["skipped"],
        "build_info": layout["build"],
        "path": root,
    }


def _read_index(root: Path, corrupt: _Corrupt) -> Any:
    if not (root / INDEX_FILE).exists() and not (root / INDEX_FILE).is_symlink():
        raise ValueError(f"{root} is not a defect bank: {INDEX_FILE} is missing (build one with DefectBank.save)")
    try:
        with open_inside(root, INDEX_FILE, limit=MAX_INDEX_BYTES) as handle:
            data = handle.read()
    except UnsafeFile as error:
        raise corrupt(INDEX_FILE, str(error).removeprefix(f"{INDEX_FILE} ")) from None
    try:
        return load_json(data, INDEX_FILE, keep_non_finite=True)
    except ValueError as error:
        raise corrupt(INDEX_FILE, str(error).removeprefix(f"{INDEX_FILE} ")) from None


def _int_field(value: Any, field: str, corrupt: _Corrupt, low: int, high: int) -> int:
    if not _is_int(value):
        raise corrupt(field, f"must be an integer, got {_show(value)}")
    if not low <= value <= high:
        raise corrupt(field, f"must lie in [{low}, {high}], got {_show(value)}")
    return value


def _ints(value: Any, field: str, corrupt: _Corrupt, lengths: tuple[int, ...], low: int, high: int) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) not in lengths or not all(_is_int(v) for v in value):
        counts = " or ".join(map(str, lengths))
        raise corrupt(field, f"must be a list of {counts} integers, got {_show(value)}")
    if not all(low <= v <= high for v in value):
        raise corrupt(field, f"values must lie in [{low}, {high}], got {_show(value)}")
    return tuple(value)


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is plain JSON data: finite numbers, strings, bools, null, lists and objects, at most 16 deep."""
    if depth > 16 or isinstance(value, NonFinite):
        return False
    if isinstance(value, float):
        return bool(np.isfinite(value))
    if isinstance(value, list):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(_plain(v, depth + 1) for v in value.values())
    return value is None or isinstance(value, (str, int))


def _parse_index(index: Any, corrupt: _Corrupt) -> dict[str, Any]:
    """Every field of the index checked; the entries with the crop buffers and the mask bits they tile."""
    if not isinstance(index, dict):
        raise corrupt(INDEX_FILE, f"must hold a JSON object, got {type(index).__name__}")
    if index.get("format") != FORMAT_NAME:
        raise corrupt("format", f"is {_show(index.get('format'))}, not {FORMAT_NAME!r}")
    version = index.get("version")
    if not _is_int(version) or version not in READABLE_VERSIONS:
        raise corrupt("version", f"{_show(version)} is not supported (this version reads {READABLE_VERSIONS})")
    classes = index.get("classes")
    if not (isinstance(classes, list) and all(isinstance(c, str) and c for c in classes)):
        raise corrupt("classes", f"must be a list of class names, got {_show(classes)}")
    if len(set(classes)) != len(classes) or "free" in classes:
        raise corrupt("classes", f"must be distinct names other than 'free', got {_show(classes)}")
    margin = _int_field(index.get("margin", DEFAULT_MARGIN), "margin", corrupt, 0, MAX_MARGIN)
    build = index.get("build", {})
    if not (isinstance(build, dict) and _plain(build)):
        raise corrupt("build", "must be an object of plain JSON values (finite numbers, at most 16 levels deep)")
    skipped = _parse_skipped(index.get("skipped", []), corrupt)
    arrays = index.get("arrays")
    try:
        relative_parts(arrays)
    except UnsafeFile as error:
        raise corrupt("arrays", str(error)) from None
    entries_meta, free = index.get("entries"), index.get("free")
    if not isinstance(entries_meta, list):
        raise corrupt("entries", f"must be a list, got {_show(entries_meta)}")
    if not isinstance(free, list):
        raise corrupt("free", f"must be a list, got {_show(free)}")
    entries = []
    lengths: dict[str, int] = defaultdict(int)
    mask_bits = 0
    for i, meta in enumerate(entries_meta):
        entry = _parse_entry(meta, f"entries[{i}]", len(classes), version, lengths, corrupt)
        lengths[entry["dtype"]] += int(np.prod(entry["shape"]))
        mask_bits += entry["shape"][0] * entry["shape"][1]
        entries.append(entry)
    stated = index.get("mask_bits")
    if not _is_int(stated) or stated != mask_bits:
        raise corrupt("mask_bits", f"is {_show(stated)}, but the entries' masks hold {mask_bits} pixels")
    expected = {f"crops_{dtype}": (np.dtype(dtype), count) for dtype, count in lengths.items()}
    expected["masks_packed"] = (np.dtype(np.uint8), (mask_bits + 7) // 8)
    return {
        "classes": classes,
        "margin": margin,
        "build": build,
        "skipped": skipped,
        "arrays": arrays,
        "entries": entries,
        "free": free,
        "mask_bits": mask_bits,
        "expected": expected,
    }


def _parse_skipped(skipped: Any, corrupt: _Corrupt) -> list[SkippedSource]:
    if not isinstance(skipped, list):
        raise corrupt("skipped", f"must be a list, got {_show(skipped)}")
    parsed = []
    for i, item in enumerate(skipped):
        fields = SkippedSource._fields
        if not (isinstance(item, dict) and all(isinstance(item.get(k), str) for k in fields)):
            raise corrupt(
                f"skipped[{i}]", f"must be an object with string fields {', '.join(fields)}, got {_show(item)}"
            )
        parsed.append(SkippedSource(*(item[k] for k in fields)))
    return parsed


_DTYPES = {dtype.name: dtype for dtype in SUPPORTED_IMAGE_DTYPES}


def _parse_entry(
    meta: Any, field: str, num_classes: int, version: int, lengths: dict[str, int], corrupt: _Corrupt
) -> dict[str, Any]:
    """One entry of the index, every field checked; ``lengths``: how far each crop buffer is tiled so far."""
    if not isinstance(meta, dict):
        raise corrupt(field, f"must be an object, got {_show(meta)}")
    for key in _ENTRY_KEYS:
        if key not in meta:
            raise corrupt(f"{field}.{key}", "is missing")
    if not isinstance(meta["source_id"], str):
        raise corrupt(f"{field}.source_id", f"must be a string, got {_show(meta['source_id'])}")
    class_id = _int_field(meta["class_id"], f"{field}.class_id", corrupt, 1, max(num_classes, 1))
    sh, sw = _ints(meta["source_hw"], f"{field}.source_hw", corrupt, (2,), 1, MAX_SIDE)
    box = _ints(meta["bbox"], f"{field}.bbox", corrupt, (4,), 0, MAX_SIDE)
    y0, x0, y1, x1 = box if version == 1 else (box[1], box[0], box[3], box[2])
    if not (y0 < y1 <= sh and x0 < x1 <= sw):
        raise corrupt(f"{field}.bbox", f"{list(box)} must be a non-empty box inside source_hw {[sh, sw]}")
    shape = _ints(meta["shape"], f"{field}.shape", corrupt, (2, 3), 1, MAX_SIDE)
    if shape[:2] != (y1 - y0, x1 - x0) or (len(shape) == 3 and shape[2] > MAX_CHANNELS):
        raise corrupt(
            f"{field}.shape",
            f"{list(shape)} must be the bbox's {y1 - y0}x{x1 - x0} (with at most {MAX_CHANNELS} channels)",
        )
    dtype = meta["dtype"]
    if not (isinstance(dtype, str) and dtype in _DTYPES):
        raise corrupt(f"{field}.dtype", f"{_show(dtype)} is not one of {', '.join(_DTYPES)}")
    offset = meta["offset"]
    if not _is_int(offset):
        raise corrupt(f"{field}.offset", f"must be an integer, got {_show(offset)}")
    if offset != lengths[dtype]:
        raise corrupt(
            f"{field}.offset",
            f"is {_show(offset)}, but crops are stored one after another: this one must start at {lengths[dtype]}",
        )
    return {
        "source_id": meta["source_id"],
        "class_id": class_id,
        "source_hw": (sh, sw),
        "bbox": (x0, y0, x1, y1),
        "shape": shape,
        "dtype": dtype,
        "offset": offset,
    }


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


def _read_arrays(
    root: Path, relative: str, expected: dict[str, tuple[np.dtype, int]], corrupt: _Corrupt
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


def _free_path(inside: InsideChecker, i: int, ref: Any, corrupt: _Corrupt) -> str:
    """A defect-free image's path: a regular file inside the bank (no links), or an external absolute path."""
    field = f"free[{i}]"
    if not (isinstance(ref, dict) and len(ref) == 1 and set(ref) <= {"file", "external"}):
        raise corrupt(field, f"must be {{'file': relative path}} or {{'external': absolute path}}, got {_show(ref)}")
    if "file" in ref:
        try:
            inside.check(ref["file"])
        except UnsafeFile as error:
            raise corrupt(field, str(error)) from None
        return str(Path(inside.root).joinpath(*relative_parts(ref["file"])))
    external = ref["external"]
    if not (isinstance(external, str) and Path(external).is_absolute()):
        raise corrupt(field, f"an external image must be an absolute path, got {_show(external)}")
    try:  # may be missing (the dataset moved: an error when it is read), but never a FIFO or a folder
        mode = Path(external).stat().st_mode
    except OSError:
        return external
    if not stat.S_ISREG(mode):
        raise corrupt(field, f"{external} is not a regular file")
    return external
