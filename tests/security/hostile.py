"""Hostile and corrupt defect banks (issue 12 items 3-6), each built from scratch in a temp folder.

Every bank is written in the documented on-disk format (``index.json`` + ``entries.npz`` + ``free/``,
as albu-defects 0.1.0 writes it; see the ``albu_defects.bank`` docstring), without the library, then
damaged by one :class:`Case`. ``fields`` are the words a good error names (one of them must appear
in the message, with the bank's path). Nothing here depends on how the library saves banks.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INDEX = "index.json"
ARRAYS = "entries.npz"


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=True)
    return buffer.getvalue()


def npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """An .npy header claiming ``shape`` (what follows it is up to the caller)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def write_npz(path: Path, members: dict[str, bytes], deflated: tuple[str, ...] = ()) -> None:
    """An npz (a zip of ``<name>.npy`` members), stored unless named in ``deflated``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, data in members.items():
            kind = zipfile.ZIP_DEFLATED if name in deflated else zipfile.ZIP_STORED
            archive.writestr(f"{name}.npy", data, compress_type=kind)


@dataclass(frozen=True)
class Places:
    """Where a case may put things: ``outside`` (beside the bank; nothing there may be read),
    ``external`` (where external defect-free images live), ``cache`` (shared by the session)."""

    outside: Path
    external: Path
    cache: Path


@dataclass
class Spec:
    """A bank before it is written: crops (uint8 2-D), masks, class ids, sources; free arrays."""

    classes: list[str]
    crops: list[np.ndarray]
    masks: list[np.ndarray]
    class_ids: list[int]
    source_hw: list[tuple[int, int]]
    bboxes: list[tuple[int, int, int, int]]
    free: list[np.ndarray]

    def index(self) -> dict[str, Any]:
        entries, offset = [], 0
        for i, crop in enumerate(self.crops):
            entries.append(
                {
                    "source_id": f"src_{i}",
                    "class_id": self.class_ids[i],
                    "source_hw": list(self.source_hw[i]),
                    "bbox": list(self.bboxes[i]),
                    "shape": list(crop.shape),
                    "dtype": crop.dtype.name,
                    "offset": offset,
                }
            )
            offset += crop.size
        return {
            "format": "albu-defects-bank",
            "version": 1,
            "classes": list(self.classes),
            "margin": 2,
            "build": {"source": "arrays", "mask_threshold": 0},
            "arrays": ARRAYS,
            "mask_bits": int(sum(m.size for m in self.masks)),
            "entries": entries,
            "free": [{"file": f"free/{i:06d}.npy"} for i in range(len(self.free))],
            "skipped": [{"source_id": "bad_0", "reason": "empty_mask", "detail": "bad_0: empty"}],
        }

    def members(self) -> dict[str, bytes]:
        crops = np.concatenate([c.ravel() for c in self.crops])
        masks = np.packbits(np.concatenate([m.ravel() for m in self.masks]))
        return {"crops_uint8": npy_bytes(crops), "masks_packed": npy_bytes(masks)}

    def write(self, root: Path) -> Path:
        root.mkdir(parents=True)
        write_npz(root / ARRAYS, self.members())
        if self.free:
            (root / "free").mkdir()
            for i, image in enumerate(self.free):
                np.save(root / f"free/{i:06d}.npy", image, allow_pickle=False)
        write_index(root, self.index())
        return root


def small_spec() -> Spec:
    """Two defects of two classes (10x12 and 14x16 uint8 crops) and one defect-free 30x30 image."""
    rng = np.random.default_rng(0)
    mask_a = np.zeros((10, 12), bool)
    mask_a[2:8, 3:9] = True
    mask_b = np.zeros((14, 16), bool)
    mask_b[1:5, 1:5] = mask_b[8:12, 9:14] = True
    return Spec(
        classes=["scratch", "dent"],
        crops=[rng.integers(0, 256, (10, 12), dtype=np.uint8), rng.integers(0, 256, (14, 16), dtype=np.uint8)],
        masks=[mask_a, mask_b],
        class_ids=[1, 2],
        source_hw=[(40, 50), (40, 50)],
        bboxes=[(2, 3, 12, 15), (20, 30, 34, 46)],
        free=[rng.integers(0, 256, (30, 30), dtype=np.uint8)],
    )


def read_index(root: Path) -> dict[str, Any]:
    return json.loads((root / INDEX).read_text(encoding="utf-8"))


def write_index(root: Path, index: Any) -> None:
    (root / INDEX).write_text(json.dumps(index, indent=1, allow_nan=True), encoding="utf-8")


def edit_index(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path, Places], None]:
    """A case that edits the parsed index and writes it back."""

    def make(root: Path, places: Places) -> None:
        index = read_index(root)
        edit(index)
        write_index(root, index)

    return make


def set_field(path: str, value: Any) -> Callable[[Path, Places], None]:
    """A case that sets one field, e.g. ``"entries.0.offset"``."""

    def edit(index: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = index
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return edit_index(edit)


def raw_field(path: str, literal: str) -> Callable[[Path, Places], None]:
    """A case that writes ``literal`` (raw JSON text, e.g. ``Infinity``) as the value of one field."""
    marker = "__RAW_VALUE__"

    def make(root: Path, places: Places) -> None:
        set_field(path, marker)(root, places)
        text = (root / INDEX).read_text(encoding="utf-8").replace(f'"{marker}"', literal)
        (root / INDEX).write_text(text, encoding="utf-8")

    return make


def fifo(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()
    os.mkfifo(path)


def _fifo_arrays(root: Path, places: Places) -> None:
    fifo(root / ARRAYS)


def _fifo_free(name: str) -> Callable[[Path, Places], None]:
    def make(root: Path, places: Places) -> None:
        fifo(root / "free" / name)
        set_field("free.0", {"file": f"free/{name}"})(root, places)

    return make


def _fifo_external(root: Path, places: Places) -> None:
    target = places.external / "target.png"  # an external image may live anywhere
    fifo(target)
    set_field("free.0", {"external": str(target)})(root, places)


def _fifo_index(root: Path, places: Places) -> None:
    fifo(root / INDEX)


def _replace_members(change: Callable[[dict[str, bytes]], None], deflated: tuple[str, ...] = ()):
    def make(root: Path, places: Places) -> None:
        with zipfile.ZipFile(root / ARRAYS) as archive:
            members = {info.filename.removesuffix(".npy"): archive.read(info) for info in archive.infolist()}
        change(members)
        write_npz(root / ARRAYS, members, deflated)

    return make


#: How far a hostile deflated member expands (the memory budget is 512 MB above the baseline).
BOMB_BYTES = 1 << 30


def zip_bomb_member(path: Path, name: str = "junk", size: int = BOMB_BYTES) -> None:
    """Append a deflated .npy member of ``size`` zero bytes (about 1 MB on disk) to the npz at ``path``."""
    header = npy_header("|u1", (size,))
    with (
        zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED, allowZip64=True, compresslevel=1) as archive,
        archive.open(f"{name}.npy", "w", force_zip64=True) as member,
    ):
        member.write(header)
        chunk = bytes(1 << 24)
        for _ in range(size // len(chunk)):
            member.write(chunk)


def _extra_deflated(root: Path, places: Places) -> None:
    bomb = places.cache / "bomb.npz"
    if not bomb.exists():  # built once per session (seconds), copied into each bank
        partial = places.cache / "bomb.npz.partial"
        partial.write_bytes((root / ARRAYS).read_bytes())
        zip_bomb_member(partial)
        partial.rename(bomb)
    (root / ARRAYS).write_bytes(bomb.read_bytes())


def _huge_header(name: str) -> Callable[[dict[str, bytes]], None]:
    def change(members: dict[str, bytes]) -> None:
        members[name] = npy_header("|u1", (1 << 34,)) + bytes(64)  # claims 16 GiB, holds 64 bytes

    return change


def _overlapping(count: int, side: int, deflate_masks: bool) -> Callable[[Path, Places], None]:
    """``count`` entries that all point at one ``side`` x ``side`` crop (each with its own mask bits).

    Deflated, the masks of 2000 512x512 entries take 65 kB on disk and 500 MB once unpacked.
    """

    def make(root: Path, places: Places) -> None:
        index = read_index(root)
        entry = {
            "source_id": "one",
            "class_id": 1,
            "source_hw": [side, side],
            "bbox": [0, 0, side, side],
            "shape": [side, side],
            "dtype": "uint8",
            "offset": 0,
        }
        index["entries"] = [dict(entry, source_id=f"copy_{i}") for i in range(count)]
        index["mask_bits"] = count * side * side
        cached = places.cache / f"overlapping_{count}_{side}_{int(deflate_masks)}.npz"
        if not cached.exists():
            packed = np.zeros(count * side * side // 8, np.uint8)
            packed[:: side * side // 8] = 0x80  # one defect pixel per entry (its first)
            members = {"crops_uint8": npy_bytes(np.zeros(side * side, np.uint8)), "masks_packed": npy_bytes(packed)}
            write_npz(cached.with_suffix(".partial"), members, ("masks_packed",) if deflate_masks else ())
            cached.with_suffix(".partial").rename(cached)
        (root / ARRAYS).write_bytes(cached.read_bytes())
        write_index(root, index)

    return make


def _symlink_out(name: str, directory: bool = False) -> Callable[[Path, Places], None]:
    def make(root: Path, places: Places) -> None:
        source = root / name
        target = places.outside / f"moved_{source.name}"
        source.rename(target)
        source.symlink_to(target, target_is_directory=directory)

    return make


def _index_symlink_out(root: Path, places: Places) -> None:
    target = places.outside / "index.json"
    target.write_text((root / INDEX).read_text(encoding="utf-8"), encoding="utf-8")
    (root / INDEX).unlink()
    (root / INDEX).symlink_to(target)


def _garbage_npz(root: Path, places: Places) -> None:
    (root / ARRAYS).write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())


def _truncated_npz(root: Path, places: Places) -> None:
    data = (root / ARRAYS).read_bytes()
    (root / ARRAYS).write_bytes(data[: len(data) // 2])


def _object_array(members: dict[str, bytes]) -> None:
    members["masks_packed"] = npy_bytes(np.array([{"evil": 1}, print], dtype=object))


def _truncated_member(members: dict[str, bytes]) -> None:
    members["crops_uint8"] = members["crops_uint8"][:-40]


def _not_npy(members: dict[str, bytes]) -> None:
    members["crops_uint8"] = b"this is not an npy file" * 10


def _extra_dtype(members: dict[str, bytes]) -> None:
    members["crops_float64"] = npy_bytes(np.zeros(10))


def _directory(name: str) -> Callable[[Path, Places], None]:
    def make(root: Path, places: Places) -> None:
        (root / name).unlink()
        (root / name).mkdir()

    return make


def _sparse_index(root: Path, places: Places) -> None:
    with open(root / INDEX, "r+b") as handle:  # valid JSON followed by 1 GiB of NULs (a sparse file)
        handle.truncate(1 << 30)


def _deep_index(root: Path, places: Places) -> None:
    (root / INDEX).write_text("[" * 200_000 + "]" * 200_000, encoding="utf-8")


def _deep_build(root: Path, places: Places) -> None:
    index = read_index(root)
    text = json.dumps(index).replace('"build": {', '"build": {"deep": ' + "[" * 50_000 + "]" * 50_000 + ", ", 1)
    (root / INDEX).write_text(text, encoding="utf-8")


def _not_utf8(root: Path, places: Places) -> None:
    (root / INDEX).write_bytes(b'{"format": "\xff\xfe"}')


def _delete(path: str) -> Callable[[Path, Places], None]:
    def edit(index: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = index
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[last]

    return edit_index(edit)


@dataclass(frozen=True)
class Case:
    make: Callable[[Path, Places], None]
    fields: tuple[str, ...]
    item: str  # the issue-12 item it reproduces


CASES: dict[str, Case] = {
    # 3. non-regular files must never be opened (a FIFO blocks open() forever)
    "fifo_entries_npz": Case(_fifo_arrays, ("entries.npz",), "3"),
    "fifo_free_png": Case(_fifo_free("x.png"), ("free[0]",), "3"),
    "fifo_free_npy": Case(_fifo_free("x.npy"), ("free[0]",), "3"),
    "fifo_external_free": Case(_fifo_external, ("free[0]",), "3"),
    "fifo_index_json": Case(_fifo_index, ("index.json",), "3"),
    # 4. allocations bounded by what the index describes
    "npz_extra_deflated_member": Case(_extra_deflated, ("junk",), "4"),
    "npz_extra_member_huge_header": Case(_replace_members(_huge_header("junk")), ("junk",), "4"),
    "npz_crops_huge_header": Case(_replace_members(_huge_header("crops_uint8")), ("crops_uint8",), "4"),
    "entries_share_one_crop_deflated": Case(_overlapping(2000, 512, True), ("entries[1].offset", "masks_packed"), "4"),
    "entries_share_one_crop": Case(_overlapping(200, 64, False), ("entries[1].offset",), "4"),
    "npz_extra_dtype_member": Case(_replace_members(_extra_dtype), ("crops_float64",), "4"),
    "index_json_1gib": Case(_sparse_index, ("index.json",), "4"),
    # 5. symlinks out of the folder
    "index_json_symlink_out": Case(_index_symlink_out, ("index.json",), "5"),
    "entries_npz_symlink_out": Case(_symlink_out(ARRAYS), ("entries.npz",), "5"),
    "free_file_symlink_out": Case(_symlink_out("free/000000.npy"), ("free[0]", "free/000000.npy"), "5"),
    "free_folder_symlink_out": Case(_symlink_out("free", directory=True), ("free[0]", "free/000000.npy"), "5"),
    # 6. every corrupt bank: one ValueError naming the bank and the field
    "npz_garbage": Case(_garbage_npz, ("entries.npz",), "6"),
    "npz_truncated": Case(_truncated_npz, ("entries.npz",), "6"),
    "npz_object_array": Case(_replace_members(_object_array), ("masks_packed",), "6"),
    "npz_member_truncated": Case(_replace_members(_truncated_member), ("crops_uint8",), "6"),
    "npz_member_not_npy": Case(_replace_members(_not_npy), ("crops_uint8",), "6"),
    "npz_members_deflated": Case(
        _replace_members(lambda m: None, deflated=("crops_uint8", "masks_packed")), ("crops_uint8",), "6"
    ),
    "entries_npz_is_a_folder": Case(_directory(ARRAYS), ("entries.npz",), "6"),
    "index_json_is_a_folder": Case(_directory(INDEX), ("index.json",), "6"),
    "index_json_not_utf8": Case(_not_utf8, ("index.json",), "6"),
    "index_json_deeply_nested": Case(_deep_index, ("index.json",), "6"),
    "build_deeply_nested": Case(_deep_build, ("index.json", "build"), "6"),
    "offset_infinity": Case(raw_field("entries.0.offset", "Infinity"), ("entries[0].offset",), "6"),
    "offset_nan": Case(raw_field("entries.0.offset", "NaN"), ("entries[0].offset",), "6"),
    "offset_float": Case(set_field("entries.1.offset", 120.0), ("entries[1].offset",), "6"),
    "offset_fraction": Case(set_field("entries.0.offset", 0.5), ("entries[0].offset",), "6"),
    "offset_negative": Case(set_field("entries.0.offset", -1), ("entries[0].offset",), "6"),
    "offset_huge": Case(set_field("entries.0.offset", 10**30), ("entries[0].offset",), "6"),
    "class_id_true": Case(set_field("entries.0.class_id", True), ("entries[0].class_id",), "6"),
    "class_id_float": Case(set_field("entries.0.class_id", 1.0), ("entries[0].class_id",), "6"),
    "class_id_out_of_range": Case(set_field("entries.0.class_id", 7), ("entries[0].class_id",), "6"),
    "source_hw_huge": Case(set_field("entries.0.source_hw", [10**400, 10**400]), ("entries[0].source_hw",), "6"),
    "source_hw_float": Case(set_field("entries.0.source_hw", [40.5, 50]), ("entries[0].source_hw",), "6"),
    "source_hw_infinity": Case(raw_field("entries.0.source_hw", "[Infinity, 50]"), ("entries[0].source_hw",), "6"),
    "source_hw_too_small": Case(
        set_field("entries.0.source_hw", [5, 5]), ("entries[0].bbox", "entries[0].source_hw"), "6"
    ),
    "bbox_short": Case(set_field("entries.0.bbox", [1, 2, 3]), ("entries[0].bbox",), "6"),
    "shape_huge": Case(set_field("entries.0.shape", [10**6, 10**6]), ("entries[0].shape",), "6"),
    "shape_bool": Case(set_field("entries.0.shape", [True, 12]), ("entries[0].shape",), "6"),
    "dtype_object": Case(set_field("entries.0.dtype", "object"), ("entries[0].dtype",), "6"),
    "dtype_garbage": Case(set_field("entries.0.dtype", "no such dtype"), ("entries[0].dtype",), "6"),
    "source_id_not_a_string": Case(set_field("entries.0.source_id", {"x": 1}), ("entries[0].source_id",), "6"),
    "entry_not_an_object": Case(set_field("entries.0", 1), ("entries[0]",), "6"),
    "entry_without_bbox": Case(_delete("entries.0.bbox"), ("entries[0].bbox",), "6"),
    "entries_not_a_list": Case(set_field("entries", {}), ("entries",), "6"),
    "classes_duplicated": Case(set_field("classes", ["scratch", "scratch"]), ("classes",), "6"),
    "classes_reserved_name": Case(set_field("classes", ["free", "dent"]), ("classes",), "6"),
    "classes_not_strings": Case(set_field("classes", [1, 2]), ("classes",), "6"),
    "format_wrong": Case(set_field("format", "something-else"), ("format",), "6"),
    "version_true": Case(set_field("version", True), ("version",), "6"),
    "mask_bits_wrong": Case(set_field("mask_bits", 400), ("mask_bits", "masks_packed"), "6"),
    "mask_bits_true": Case(set_field("mask_bits", True), ("mask_bits",), "6"),
    "arrays_not_a_string": Case(set_field("arrays", 5), ("arrays",), "6"),
    "margin_string": Case(set_field("margin", "8"), ("margin",), "6"),
    "margin_negative": Case(set_field("margin", -1), ("margin",), "6"),
    "margin_float": Case(set_field("margin", 1.5), ("margin",), "6"),
    "margin_true": Case(set_field("margin", True), ("margin",), "6"),
    "margin_null": Case(set_field("margin", None), ("margin",), "6"),
    "skipped_not_a_list": Case(set_field("skipped", 5), ("skipped",), "6"),
    "skipped_item_not_an_object": Case(set_field("skipped.0", 1), ("skipped[0]",), "6"),
    "skipped_item_without_reason": Case(_delete("skipped.0.reason"), ("skipped[0]",), "6"),
    "build_not_an_object": Case(set_field("build", [1]), ("build",), "6"),
    "build_a_string": Case(set_field("build", "abc"), ("build",), "6"),
    "build_nan": Case(raw_field("build.mask_threshold", "NaN"), ("build",), "6"),
    "free_item_two_keys": Case(
        set_field("free.0", {"file": "free/000000.npy", "external": "/x.png"}), ("free[0]",), "6"
    ),
    "free_external_relative": Case(set_field("free.0", {"external": "x.png"}), ("free[0]",), "6"),
    "free_not_a_list": Case(set_field("free", {}), ("free",), "6"),
}
