"""The bank's ``index.json``: the format's constants, and the index parsed with every field checked.

The format and what a load refuses: :mod:`albu_defects.bank.storage`. Every check here raises the one
ValueError of a failed load (:class:`Corrupt`: the bank, the field, the problem).
"""

from __future__ import annotations

import json
import stat
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from albu_defects.core.files import InsideChecker, NonFinite, UnsafeFile, load_json, open_inside, relative_parts
from albu_defects.core.validation import SUPPORTED_IMAGE_DTYPES

from .entry import DEFAULT_MARGIN, SkippedSource

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INDEX_FILE",
    "Corrupt",
    "free_path",
    "is_int",
    "parse_index",
    "read_index",
    "show",
]

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
_ENTRY_KEYS = ("source_id", "class_id", "source_hw", "bbox", "shape", "dtype", "offset")


class Corrupt:
    """Makes the one ValueError of a failed load: the bank's path, the field, the problem."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, field: str, problem: str) -> ValueError:
        return ValueError(f"corrupt defect bank {self.root}: {field}: {problem}")


def is_int(value: Any) -> bool:
    """Whether ``value`` is a JSON integer (``1.0`` and ``true`` are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _json_text(value: Any) -> str:
    """``value`` as JSON text, with NaN / Infinity markers shown bare and huge integers by their length."""
    if isinstance(value, NonFinite):
        return str(value)
    if is_int(value) and abs(value) > 10**12:
        return f"<an integer of {len(str(abs(value)))} digits>"
    if isinstance(value, list):
        return "[" + ", ".join(_json_text(v) for v in value[:8]) + (", ...]" if len(value) > 8 else "]")
    if isinstance(value, dict):
        items = [f"{json.dumps(str(k))}: {_json_text(v)}" for k, v in list(value.items())[:8]]
        return "{" + ", ".join(items) + (", ...}" if len(value) > 8 else "}")
    return repr(value) if isinstance(value, float) else json.dumps(value)


def show(value: Any) -> str:
    text = _json_text(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_index(root: Path, corrupt: Corrupt) -> Any:
    """The parsed ``index.json`` of the bank folder ``root`` (a regular file inside it, size-capped, strict JSON)."""
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


def _int_field(value: Any, field: str, corrupt: Corrupt, low: int, high: int) -> int:
    if not is_int(value):
        raise corrupt(field, f"must be an integer, got {show(value)}")
    if not low <= value <= high:
        raise corrupt(field, f"must lie in [{low}, {high}], got {show(value)}")
    return value


def _ints(value: Any, field: str, corrupt: Corrupt, lengths: tuple[int, ...], low: int, high: int) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) not in lengths or not all(is_int(v) for v in value):
        counts = " or ".join(map(str, lengths))
        raise corrupt(field, f"must be a list of {counts} integers, got {show(value)}")
    if not all(low <= v <= high for v in value):
        raise corrupt(field, f"values must lie in [{low}, {high}], got {show(value)}")
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


def parse_index(index: Any, corrupt: Corrupt) -> dict[str, Any]:
    """Every field of the index checked; the entries with the crop buffers and the mask bits they tile."""
    if not isinstance(index, dict):
        raise corrupt(INDEX_FILE, f"must hold a JSON object, got {type(index).__name__}")
    if index.get("format") != FORMAT_NAME:
        raise corrupt("format", f"is {show(index.get('format'))}, not {FORMAT_NAME!r}")
    version = index.get("version")
    if not is_int(version) or version not in READABLE_VERSIONS:
        raise corrupt("version", f"{show(version)} is not supported (this version reads {READABLE_VERSIONS})")
    classes = index.get("classes")
    if not (isinstance(classes, list) and all(isinstance(c, str) and c for c in classes)):
        raise corrupt("classes", f"must be a list of class names, got {show(classes)}")
    if len(set(classes)) != len(classes) or "free" in classes:
        raise corrupt("classes", f"must be distinct names other than 'free', got {show(classes)}")
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
        raise corrupt("entries", f"must be a list, got {show(entries_meta)}")
    if not isinstance(free, list):
        raise corrupt("free", f"must be a list, got {show(free)}")
    entries = []
    lengths: dict[str, int] = defaultdict(int)
    mask_bits = 0
    for i, meta in enumerate(entries_meta):
        entry = _parse_entry(meta, f"entries[{i}]", len(classes), version, lengths, corrupt)
        lengths[entry["dtype"]] += int(np.prod(entry["shape"]))
        mask_bits += entry["shape"][0] * entry["shape"][1]
        entries.append(entry)
    stated = index.get("mask_bits")
    if not is_int(stated) or stated != mask_bits:
        raise corrupt("mask_bits", f"is {show(stated)}, but the entries' masks hold {mask_bits} pixels")
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


def _parse_skipped(skipped: Any, corrupt: Corrupt) -> list[SkippedSource]:
    if not isinstance(skipped, list):
        raise corrupt("skipped", f"must be a list, got {show(skipped)}")
    parsed = []
    for i, item in enumerate(skipped):
        fields = SkippedSource._fields
        if not (isinstance(item, dict) and all(isinstance(item.get(k), str) for k in fields)):
            raise corrupt(
                f"skipped[{i}]", f"must be an object with string fields {', '.join(fields)}, got {show(item)}"
            )
        parsed.append(SkippedSource(*(item[k] for k in fields)))
    return parsed


_DTYPES = {dtype.name: dtype for dtype in SUPPORTED_IMAGE_DTYPES}


def _parse_entry(
    meta: Any, field: str, num_classes: int, version: int, lengths: dict[str, int], corrupt: Corrupt
) -> dict[str, Any]:
    """One entry of the index, every field checked; ``lengths``: how far each crop buffer is tiled so far."""
    if not isinstance(meta, dict):
        raise corrupt(field, f"must be an object, got {show(meta)}")
    for key in _ENTRY_KEYS:
        if key not in meta:
            raise corrupt(f"{field}.{key}", "is missing")
    if not isinstance(meta["source_id"], str):
        raise corrupt(f"{field}.source_id", f"must be a string, got {show(meta['source_id'])}")
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
        raise corrupt(f"{field}.dtype", f"{show(dtype)} is not one of {', '.join(_DTYPES)}")
    offset = meta["offset"]
    if not is_int(offset):
        raise corrupt(f"{field}.offset", f"must be an integer, got {show(offset)}")
    if offset != lengths[dtype]:
        raise corrupt(
            f"{field}.offset",
            f"is {show(offset)}, but crops are stored one after another: this one must start at {lengths[dtype]}",
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


def free_path(inside: InsideChecker, i: int, ref: Any, corrupt: Corrupt) -> str:
    """A defect-free image's path: a regular file inside the bank (no links), or an external absolute path."""
    field = f"free[{i}]"
    if not (isinstance(ref, dict) and len(ref) == 1 and set(ref) <= {"file", "external"}):
        raise corrupt(field, f"must be {{'file': relative path}} or {{'external': absolute path}}, got {show(ref)}")
    if "file" in ref:
        try:
            inside.check(ref["file"])
        except UnsafeFile as error:
            raise corrupt(field, str(error)) from None
        return str(Path(inside.root).joinpath(*relative_parts(ref["file"])))
    external = ref["external"]
    if not (isinstance(external, str) and Path(external).is_absolute()):
        raise corrupt(field, f"an external image must be an absolute path, got {show(external)}")
    try:  # may be missing (the dataset moved: an error when it is read), but never a FIFO or a folder
        mode = Path(external).stat().st_mode
    except OSError:
        return external
    if not stat.S_ISREG(mode):
        raise corrupt(field, f"{external} is not a regular file")
    return external
