"""The on-disk format of a defect bank: writing a bank folder and reading one back (no pickles).

A bank folder holds::

    index.json     {"format": "albu-defects-bank", "version": 2, "classes": [...], "margin": int,
                    "build": {...}, "arrays": "entries.npz", "mask_bits": int,
                    "entries": [{"source_id", "class_id", "source_hw": [h, w],
                                 "bbox": [x_min, y_min, x_max, y_max], "shape": [h, w(, c)], "dtype", "offset"}],
                    "free": [{"file": "free/000000.png"} | {"external": "/abs/path.jpg"}],
                    "skipped": [{"source_id", "reason", "detail"}]}
    entries.npz    uncompressed, read with allow_pickle=False: "crops_<dtype>" (every crop of that
                   dtype, flattened and concatenated; an entry's crop starts at its "offset") and
                   "masks_packed" (np.packbits of every entry's boolean mask, flattened, in order)
    free/          defect-free images stored in the bank (arrays as .npy, copied files as is)

``bbox`` is the crop's box in its source image (the package's box convention, ends exclusive), so
a defect's relative position can be kept. Version 1 (albu-defects 0.1.0) wrote it as ``[y0, x0, y1,
x1]``; such banks still load (and are written as version 2 when saved again). Blobs and areas are recomputed from the masks at load. There are no
pickles, and every relative path in the index must stay inside the bank folder (``..``, absolute
paths and symlinks that escape are rejected), so loading a bank from elsewhere never runs code or
reads outside it (except ``"external"`` free images, read as images only). The crops live in the
bank, so it stays valid when the dataset moves. Defect-free images found by
:meth:`~albu_defects.DefectBank.from_folder` stay referenced by absolute path unless
``save(..., copy_free=True)`` copies them in (then the bank is self-contained); arrays given to
:meth:`~albu_defects.DefectBank.from_arrays` are always stored in the bank.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from albu_defects.core.validation import SUPPORTED_IMAGE_DTYPES

from .entry import DEFAULT_MARGIN, DefectEntry, SkippedSource

if TYPE_CHECKING:
    from .bank import DefectBank

__all__ = ["ARRAYS_FILE", "FORMAT_NAME", "FORMAT_VERSION", "INDEX_FILE", "read_bank", "write_bank"]

FORMAT_NAME = "albu-defects-bank"
FORMAT_VERSION = 2
#: Versions :func:`read_bank` reads; version 1 stored ``bbox`` as ``[y0, x0, y1, x1]``.
READABLE_VERSIONS = (1, 2)
INDEX_FILE = "index.json"
ARRAYS_FILE = "entries.npz"
FREE_DIR = "free"


def write_bank(bank: DefectBank, path: str | os.PathLike[str], copy_free: bool) -> tuple[Path, tuple[str, ...]]:
    """Write ``bank`` as the folder ``path``; returns the folder and what the bank's free images become.

    Written to a staging folder first, then swapped in, so a failure leaves any bank at ``path`` intact.
    Stored free images come back as paths inside the folder, external ones as they were. See
    :meth:`~albu_defects.DefectBank.save`.
    """
    target = Path(path).absolute()
    if target.exists():
        if not target.is_dir():
            raise ValueError(f"{target} exists and is not a folder")
        if any(target.iterdir()) and not (target / INDEX_FILE).is_file():
            raise ValueError(f"{target} is a non-empty folder that is not a defect bank; refusing to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    staging.mkdir()  # (not mkdtemp: the bank gets the usual permissions)
    try:
        free_refs = _write_folder(bank, staging, copy_free)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    final = target.resolve()
    return final, tuple(str(final / ref["file"]) if "file" in ref else ref["external"] for ref in free_refs)


def _write_folder(bank: DefectBank, folder: Path, copy_free: bool) -> list[dict[str, str]]:
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
    mask_bits = int(sum(m.size for m in masks))
    arrays["masks_packed"] = np.packbits(np.concatenate(masks)) if masks else np.zeros(0, np.uint8)
    np.savez(folder / ARRAYS_FILE, **arrays)

    free_refs: list[dict[str, str]] = []
    stored_root = bank.path
    for i, item in enumerate(bank.free_images):
        if isinstance(item, np.ndarray):
            name = f"{FREE_DIR}/{i:06d}.npy"
            (folder / FREE_DIR).mkdir(exist_ok=True)
            np.save(folder / name, np.ascontiguousarray(item), allow_pickle=False)
            free_refs.append({"file": name})
            continue
        source = Path(item)
        inside = stored_root is not None and source.resolve().is_relative_to(stored_root)
        if copy_free or inside:  # files already stored in a bank always move with it
            name = f"{FREE_DIR}/{i:06d}{source.suffix.lower()}"
            (folder / FREE_DIR).mkdir(exist_ok=True)
            try:
                shutil.copyfile(source, folder / name)
            except OSError as error:
                raise ValueError(f"defect-free image {i} ({source}) could not be copied: {error}") from error
            free_refs.append({"file": name})
        else:
            free_refs.append({"external": str(source.resolve())})
    index = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "classes": list(bank.classes),
        "margin": bank.margin,
        "build": bank.build_info,
        "arrays": ARRAYS_FILE,
        "mask_bits": mask_bits,
        "entries": entries,
        "free": free_refs,
        "skipped": [s._asdict() for s in bank.skipped],
    }
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=1), encoding="utf-8")
    return free_refs


def read_bank(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a bank folder written by :func:`write_bank`: the keyword arguments of ``DefectBank(...)``."""
    root = Path(path).resolve()
    index_path = root / INDEX_FILE
    if not index_path.is_file():
        raise ValueError(f"{root} is not a defect bank: {INDEX_FILE} is missing (build one with DefectBank.save)")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"corrupt defect bank {root}: {INDEX_FILE} is not valid JSON ({error})") from error

    def expect(condition: bool, what: str) -> None:
        if not condition:
            raise ValueError(f"corrupt defect bank {root}: {what}")

    expect(isinstance(index, dict) and index.get("format") == FORMAT_NAME, f"{INDEX_FILE} is not a {FORMAT_NAME}")
    version = index.get("version")
    expect(version in READABLE_VERSIONS, f"format version {version!r} is not supported")
    classes = index.get("classes")
    expect(isinstance(classes, list) and all(isinstance(c, str) for c in classes), "classes must be names")
    entries_meta, free_meta = index.get("entries"), index.get("free")
    expect(isinstance(entries_meta, list) and isinstance(free_meta, list), "entries and free must be lists")
    arrays_path = _inside(root, index.get("arrays"))
    with np.load(arrays_path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    packed = arrays.get("masks_packed")
    mask_bits = index.get("mask_bits")
    expect(isinstance(mask_bits, int) and packed is not None and packed.dtype == np.uint8, "masks_packed missing")
    expect(packed.size == (mask_bits + 7) // 8, "masks_packed has the wrong size")
    masks = np.unpackbits(packed, count=mask_bits).view(bool)

    entries = []
    mask_offset = 0
    for entry_id, meta in enumerate(entries_meta):
        try:
            dtype, shape, offset = str(meta["dtype"]), tuple(int(v) for v in meta["shape"]), int(meta["offset"])
            buffer = arrays.get(f"crops_{dtype}")
            expect(np.dtype(dtype) in SUPPORTED_IMAGE_DTYPES and buffer is not None, f"entry {entry_id}: dtype")
            expect(buffer.dtype == np.dtype(dtype) and buffer.ndim == 1, f"crops_{dtype} has the wrong dtype")
            expect(len(shape) in (2, 3) and min(shape) >= 1, f"entry {entry_id}: bad shape {shape}")
            size, hw = int(np.prod(shape)), shape[0] * shape[1]
            expect(offset >= 0 and offset + size <= buffer.size, f"entry {entry_id}: crop outside crops_{dtype}")
            expect(mask_offset + hw <= masks.size, f"entry {entry_id}: mask outside masks_packed")
            class_id = int(meta["class_id"])
            expect(1 <= class_id <= len(classes), f"entry {entry_id}: class id {class_id} out of range")
            entries.append(
                DefectEntry(
                    entry_id=entry_id,
                    class_id=class_id,
                    class_name=classes[class_id - 1],
                    source_id=str(meta["source_id"]),
                    source_hw=tuple(meta["source_hw"]),
                    bbox=_stored_box(meta["bbox"], version),
                    crop=buffer[offset : offset + size].reshape(shape),
                    mask=masks[mask_offset : mask_offset + hw].reshape(shape[:2]),
                )
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"corrupt defect bank {root}: entry {entry_id} is malformed ({error!r})") from error
        except ValueError as error:
            if str(error).startswith("corrupt defect bank"):
                raise
            raise ValueError(f"corrupt defect bank {root}: entry {entry_id}: {error}") from error
        mask_offset += hw
    expect(mask_offset == masks.size, "masks_packed holds more mask pixels than the entries use")

    free: list[str] = []
    for i, ref in enumerate(free_meta):
        expect(isinstance(ref, dict) and len(ref) == 1, f"free[{i}] must be {{'file': ...}} or {{'external': ...}}")
        if "file" in ref:
            free.append(str(_inside(root, ref["file"])))
        else:
            external = ref.get("external")
            expect(isinstance(external, str) and Path(external).is_absolute(), f"free[{i}] external must be absolute")
            free.append(external)
    skipped = [SkippedSource(str(s["source_id"]), str(s["reason"]), str(s["detail"])) for s in index.get("skipped", [])]
    return {
        "classes": classes,
        "entries": entries,
        "free_images": free,
        "margin": int(index.get("margin", DEFAULT_MARGIN)),
        "skipped": skipped,
        "build_info": index.get("build") or {},
        "path": root,
    }


def _stored_box(values: Any, version: int) -> tuple[int, ...]:
    """An entry's ``bbox`` as read: version 1 stored ``[y0, x0, y1, x1]``, version 2 the box itself."""
    values = tuple(int(v) for v in values)
    if version == 1 and len(values) == 4:
        return values[1], values[0], values[3], values[2]
    return values


def _inside(root: Path, relative: Any) -> Path:
    """``root / relative`` after checking that it stays inside ``root`` (no .., no absolute, no escaping link)."""
    if not isinstance(relative, str) or not relative:
        raise ValueError(f"corrupt defect bank {root}: a file reference must be a non-empty relative path")
    posix = PurePosixPath(relative)
    if posix.is_absolute() or "\\" in relative or ".." in posix.parts or ":" in relative:
        raise ValueError(f"defect bank {root} refers to {relative!r}, outside the bank folder; refusing to read it")
    resolved = (root / posix).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ValueError(f"defect bank {root} refers to {relative!r}, which resolves outside the bank folder")
    return resolved
