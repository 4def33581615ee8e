"""The defect bank: per-class defect crops cut from real image+mask data, for injection methods.

Dynamic Label Injection, Guided-Crop and the defect injection transform all draw real defects from
one :class:`DefectBank`. A bank holds, for every defect class, one :class:`DefectEntry` per source
image holding that class: the pixels of the defect's bounding box plus a ``margin`` (clipped to the
image), the boolean mask of the defect's own pixels in that crop, and its blobs (8-connected
components). Whole images are never kept in memory; defect-free images are *indexed* (paths, or the
arrays handed to :meth:`DefectBank.from_arrays`) so they can serve as injection targets.

Class ids
    ``bank.classes`` is a tuple of defect-class names; class id ``k`` (1-based) is
    ``bank.classes[k - 1]`` and 0 is background / defect-free, matching class-index masks.
    For the Magnetic Tile layout the order is :data:`~albu_defects.data.MAGNETIC_TILE_CLASSES`
    (Blowhole, Break, Crack, Fray, Uneven -> 1..5) when exactly those classes are present, else the
    sorted folder names. ``classes=`` restricts and orders the classes in every constructor.

Pixels
    Images keep the dtype and channels they are read with (uint8, uint16 or float32; (H, W) or
    (H, W, C)). Files are read with ``cv2.IMREAD_UNCHANGED`` (``.npy`` with ``allow_pickle=False``)
    and colour files are converted from OpenCV's BGR(A) to RGB(A), the order albumentations expects.
    Entry arrays are read-only: copy them before writing.

Folder layouts (:meth:`DefectBank.from_folder`)
    ``"magnetic_tile"``: ``ROOT/MT_<Class>/Imgs/<name>.jpg`` with its mask ``<name>.png``; the folder
    names the class, ``MT_Free`` holds the defect-free images. ``"generic"``: ``ROOT/images/<stem>.*``
    with ``ROOT/masks/<stem>.*``; masks are class-index masks (0 background, value ``k`` = class
    ``k``), named by ``class_names`` (a list: value ``k`` -> ``class_names[k-1]``, or a dict
    ``{value: name}``), else by ``ROOT/classes.txt`` (one name per line) or ``ROOT/classes.json``
    (a list or a ``{"value": name}`` object), else ``class_<k>``. Images whose mask is all zero are
    the defect-free images. ``"auto"`` picks whichever layout ``ROOT`` has. Binary masks (0/255,
    possibly anti-aliased) are thresholded with ``mask_threshold`` (a pixel ``> mask_threshold`` is
    defect) in the Magnetic Tile layout; use ``class_names={255: "name"}`` for binary masks in the
    generic layout.

Bad input
    Every problem with a source (missing mask or image, image/mask size mismatch, unreadable file,
    unsupported dtype, a defect-class image with an empty mask, unknown class values) skips that
    source, is recorded in ``bank.skipped`` (kept when saved) and is reported by one
    :class:`DefectBankWarning` per kind, with the count and the names; ``strict=True`` raises a
    ``ValueError`` instead. A class left without defects is warned about at build, and sampling it
    raises a ``ValueError`` naming it. Unknown layouts and unknown class names raise.

On-disk format (:meth:`DefectBank.save` / :meth:`DefectBank.load`), a folder holding::

    index.json     {"format": "albu-defects-bank", "version": 1, "classes": [...], "margin": int,
                    "build": {...}, "arrays": "entries.npz", "mask_bits": int,
                    "entries": [{"source_id", "class_id", "source_hw": [h, w],
                                 "bbox": [y0, x0, y1, x1], "shape": [h, w(, c)], "dtype", "offset"}],
                    "free": [{"file": "free/000000.png"} | {"external": "/abs/path.jpg"}],
                    "skipped": [{"source_id", "reason", "detail"}]}
    entries.npz    uncompressed, read with allow_pickle=False: "crops_<dtype>" (every crop of that
                   dtype, flattened and concatenated; an entry's crop starts at its "offset") and
                   "masks_packed" (np.packbits of every entry's boolean mask, flattened, in order)
    free/          defect-free images stored in the bank (arrays as .npy, copied files as is)

``bbox`` is the crop's box in source coordinates (ends exclusive), so a defect's relative position
can be kept. Blobs and areas are recomputed from the masks at load. There are no pickles, and every
relative path in the index must stay inside the bank folder (``..``, absolute paths and symlinks
that escape are rejected), so loading a bank from elsewhere never runs code or reads outside it
(except ``"external"`` free images, read as images only). The crops live in the bank, so it stays
valid when the dataset moves. Defect-free images found by :meth:`~DefectBank.from_folder` stay
referenced by absolute path unless ``save(..., copy_free=True)`` copies them in (then the bank is
self-contained); arrays given to :meth:`~DefectBank.from_arrays` are always stored in the bank.

Pipelines and DataLoader workers
    A transform takes ``bank="path/to/bank"`` (a string, so the pipeline serializes to YAML) and calls
    :func:`resolve_bank`, which loads each bank folder at most once per process (cached by absolute
    path; reloaded when its index changes). :func:`bank_reference` gives the string a transform should
    serialize. A bank with a ``path`` (loaded, or saved) pickles as that path only, so DataLoader
    workers receive a few bytes and load the bank themselves, once.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import cv2
import numpy as np
from tqdm.auto import tqdm

from albu_defects.core.geometry import connected_components, grow_box, mask_bbox
from albu_defects.core.parallel import ordered_map
from albu_defects.core.validation import SUPPORTED_IMAGE_DTYPES, check_image, check_int
from albu_defects.data import MAGNETIC_TILE_CLASSES

__all__ = [
    "DefectBank",
    "DefectBankWarning",
    "DefectEntry",
    "SkippedSource",
    "bank_reference",
    "check_bank_arg",
    "format_stats",
    "read_image",
    "resolve_bank",
]

FORMAT_NAME = "albu-defects-bank"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
ARRAYS_FILE = "entries.npz"
FREE_DIR = "free"
#: Pixels of context kept around each defect's bounding box (Poisson blending needs a frame).
DEFAULT_MARGIN = 8
#: File types read as images or masks.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy")
_MT_FREE = "Free"
_MT_IMAGE_SUFFIXES = tuple(s for s in IMAGE_SUFFIXES if s != ".png")  # .png are the masks there

_REASONS = {
    "missing_mask": "image(s) without a mask file",
    "missing_image": "mask file(s) without an image",
    "ambiguous": "stem(s) with more than one image or mask file",
    "unreadable": "file(s) that could not be read",
    "unsupported": "file(s) of an unsupported dtype or shape",
    "size_mismatch": "image(s) whose mask has a different size",
    "empty_mask": "defect-class image(s) whose mask is empty (no pixel above the threshold)",
    "unknown_class": "mask(s) holding class values that no class name maps",
    "free_not_empty": "defect-free image(s) whose mask is not empty",
}


class DefectBankWarning(UserWarning):
    """Issued (once per kind of problem, with the count and the names) when a bank skips sources."""


class SkippedSource(NamedTuple):
    """A source image left out of the bank: its id, a short reason code and a human detail."""

    source_id: str
    reason: str
    detail: str


def _readonly(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def _blob_dtype(count: int) -> type:
    return np.uint8 if count < 256 else (np.uint16 if count < 65536 else np.int32)


@dataclass(frozen=True, eq=False)
class DefectEntry:
    """All pixels of one defect class in one source image, cut out with a margin.

    ``crop`` holds the source pixels of ``bbox`` (the defect's bounding box plus the bank's margin,
    clipped to the image; dtype and channels as read, colour in RGB); ``mask`` (bool, same height and
    width) marks the defect's own pixels. ``bbox = (y0, x0, y1, x1)`` places the crop in its source
    image of size ``source_hw`` (ends exclusive). ``blob_labels`` labels the 8-connected blobs of
    ``mask`` 1..``num_blobs`` (0 elsewhere). ``area_fraction`` is the defect's pixel count divided by
    the source image's. ``blob_subset`` is ``None`` for a whole entry, or the blob labels of the whole
    entry that a :meth:`with_blobs` restriction kept. Arrays are read-only.
    """

    entry_id: int
    class_id: int
    class_name: str
    source_id: str
    source_hw: tuple[int, int]
    bbox: tuple[int, int, int, int]
    crop: np.ndarray
    mask: np.ndarray
    blob_subset: tuple[int, ...] | None = None
    blob_labels: np.ndarray = field(init=False)
    num_blobs: int = field(init=False)
    area_fraction: float = field(init=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        crop = check_image(self.crop, f"crop of entry {self.source_id!r}")
        mask = np.asarray(self.mask)
        if mask.dtype != bool:
            mask = mask != 0
        hw = (int(crop.shape[0]), int(crop.shape[1]))
        if mask.shape != hw:
            raise ValueError(f"mask of entry {self.source_id!r} is {mask.shape}, but its crop is {hw}")
        y0, x0, y1, x1 = (int(v) for v in self.bbox)
        sh, sw = (int(v) for v in self.source_hw)
        if (y1 - y0, x1 - x0) != hw or not (0 <= y0 < y1 <= sh and 0 <= x0 < x1 <= sw):
            raise ValueError(
                f"bbox {self.bbox} of entry {self.source_id!r} must be a {hw[0]}x{hw[1]} box inside its "
                f"{sh}x{sw} source image"
            )
        if int(self.class_id) < 1:
            raise ValueError(f"class_id of entry {self.source_id!r} must be >= 1 (0 is background)")
        count, labels = connected_components(mask, connectivity=8)
        if count == 0:
            raise ValueError(f"entry {self.source_id!r} has an empty mask; a bank entry must hold a defect")
        set_(self, "entry_id", int(self.entry_id))
        set_(self, "class_id", int(self.class_id))
        set_(self, "source_hw", (sh, sw))
        set_(self, "bbox", (y0, x0, y1, x1))
        set_(self, "crop", _readonly(crop))
        set_(self, "mask", _readonly(mask))
        if self.blob_subset is not None:
            set_(self, "blob_subset", tuple(int(b) for b in self.blob_subset))
        set_(self, "blob_labels", _readonly(labels.astype(_blob_dtype(count))))
        set_(self, "num_blobs", count)
        set_(self, "area_fraction", float(np.count_nonzero(mask)) / float(sh * sw))

    @property
    def hw(self) -> tuple[int, int]:
        """(height, width) of the crop."""
        return int(self.crop.shape[0]), int(self.crop.shape[1])

    @property
    def area_px(self) -> int:
        """Number of defect pixels."""
        return int(np.count_nonzero(self.mask))

    @property
    def relative_bbox(self) -> tuple[float, float, float, float]:
        """``bbox`` as fractions of the source size: (y0/H, x0/W, y1/H, x1/W)."""
        (y0, x0, y1, x1), (h, w) = self.bbox, self.source_hw
        return y0 / h, x0 / w, y1 / h, x1 / w

    def with_blobs(self, blob_ids: Iterable[int], margin: int | None = None) -> DefectEntry:
        """This entry restricted to some of its blobs (labels in ``1..num_blobs``).

        The mask keeps only those blobs. With ``margin=None`` the crop and bbox stay the same; with an
        int they are tightened to the kept blobs' box plus ``margin`` (clipped to the crop, which is
        the same as clipping to the source when ``margin`` is at most the bank's margin). The result
        keeps ``entry_id`` and records the kept labels in ``blob_subset``.
        """
        ids = sorted({int(b) for b in blob_ids})
        if not ids or ids[0] < 1 or ids[-1] > self.num_blobs:
            raise ValueError(f"blob_ids must be a non-empty subset of 1..{self.num_blobs}, got {ids}")
        if self.blob_subset is not None:
            raise ValueError("with_blobs applies to whole entries; this one is already restricted")
        mask = np.isin(self.blob_labels, ids)
        y0, x0, y1, x1 = 0, 0, *self.hw
        if margin is not None:
            if int(margin) < 0:
                raise ValueError(f"margin must be >= 0, got {margin}")
            box = mask_bbox(mask)  # never empty: ids are real blobs
            y0, x0, y1, x1 = grow_box(box, int(margin), self.hw)  # type: ignore[arg-type]
        sy, sx = self.bbox[0], self.bbox[1]
        return DefectEntry(
            entry_id=self.entry_id,
            class_id=self.class_id,
            class_name=self.class_name,
            source_id=self.source_id,
            source_hw=self.source_hw,
            bbox=(sy + y0, sx + x0, sy + y1, sx + x1),
            crop=self.crop[y0:y1, x0:x1],
            mask=mask[y0:y1, x0:x1],
            blob_subset=tuple(ids),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DefectEntry):
            return NotImplemented
        same_arrays = all(
            a.dtype == b.dtype and np.array_equal(a, b) for a, b in ((self.crop, other.crop), (self.mask, other.mask))
        )
        return same_arrays and (
            self.entry_id,
            self.class_id,
            self.class_name,
            self.source_id,
            self.source_hw,
            self.bbox,
            self.blob_subset,
        ) == (
            other.entry_id,
            other.class_id,
            other.class_name,
            other.source_id,
            other.source_hw,
            other.bbox,
            other.blob_subset,
        )

    def __repr__(self) -> str:
        subset = "" if self.blob_subset is None else f", blob_subset={self.blob_subset}"
        return (
            f"DefectEntry(entry_id={self.entry_id}, class={self.class_name!r} ({self.class_id}), "
            f"source_id={self.source_id!r}, bbox={self.bbox}, crop={self.crop.shape} {self.crop.dtype}, "
            f"blobs={self.num_blobs}, area={100 * self.area_fraction:.3g}%{subset})"
        )


# --------------------------------------------------------------------------------------------------
# Reading files


class _SourceProblem(Exception):
    """A source to skip: carries the reason code and a detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def read_image(path: str | os.PathLike[str], name: str = "image") -> np.ndarray:
    """Read an image as stored (``cv2.IMREAD_UNCHANGED``; ``.npy`` without pickles), colour as RGB(A).

    Raises ``ValueError`` when the file cannot be read or holds an unsupported dtype or shape.
    """
    path = os.fspath(path)
    if path.lower().endswith(".npy"):
        try:
            image = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"{name} {path} could not be read: {error}") from error
    else:
        image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ValueError(f"{name} {path} could not be read (missing, empty or not an image)")
        if image.ndim == 3 and image.shape[2] == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        elif image.ndim == 3 and image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return check_image(image, f"{name} {path}")


def _read_source(path: Path, what: str) -> np.ndarray:
    try:
        return read_image(path, what)
    except ValueError as error:
        reason = "unreadable" if "could not be read" in str(error) else "unsupported"
        raise _SourceProblem(reason, str(error)) from error


def _read_mask(path: Path) -> np.ndarray:
    """A 2-D integer or float mask; a colour mask must have equal channels."""
    mask = _read_source(path, "mask")
    if mask.ndim == 3:
        if not all(np.array_equal(mask[..., 0], mask[..., c]) for c in range(1, mask.shape[2])):
            raise _SourceProblem("unsupported", f"mask {path} has {mask.shape[2]} different channels; save it as one")
        mask = mask[..., 0]
    return mask


def _check_sizes(image: np.ndarray, mask: np.ndarray, source_id: str) -> None:
    if image.shape[:2] != mask.shape[:2]:
        raise _SourceProblem(
            "size_mismatch",
            f"{source_id}: image is {image.shape[0]}x{image.shape[1]} but mask is {mask.shape[0]}x{mask.shape[1]}",
        )


# One defect class of one image, before it becomes an entry: (class value, bbox, crop, mask).
_Cut = tuple[int, tuple[int, int, int, int], np.ndarray, np.ndarray]


def _cut_defects(image: np.ndarray, label_mask: np.ndarray, values: Iterable[int], margin: int) -> list[_Cut]:
    """Crop of the bounding box (+ margin, clipped) of each class value of ``label_mask``."""
    h, w = label_mask.shape
    cuts = []
    for value in values:
        mask = label_mask == value
        box = mask_bbox(mask)
        if box is None:
            continue
        y0, x0, y1, x1 = grow_box(box, margin, (h, w))
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        cuts.append((int(value), (y0, x0, y1, x1), crop, np.ascontiguousarray(mask[y0:y1, x0:x1])))
    return cuts


def _nonzero_values(label_mask: np.ndarray) -> list[int]:
    if label_mask.dtype == np.uint8 or label_mask.dtype == bool:
        counts = np.bincount(label_mask.ravel().view(np.uint8) if label_mask.dtype == bool else label_mask.ravel())
        return [int(v) for v in np.flatnonzero(counts) if v > 0]
    return [int(v) for v in np.unique(label_mask) if v > 0]


# --------------------------------------------------------------------------------------------------
# Building


@dataclass
class _Source:
    """One source image found in a folder."""

    source_id: str
    image: Path | None
    mask: Path | None
    class_name: str | None = None  # Magnetic Tile: the folder's class (None = free)
    problem: _SourceProblem | None = None


@dataclass
class _Outcome:
    source_id: str
    source_hw: tuple[int, int] = (0, 0)
    cuts: list[_Cut] = field(default_factory=list)
    free: bool = False
    problem: _SourceProblem | None = None


class _Builder:
    """Collects outcomes, reports problems, and makes the bank."""

    def __init__(self, *, strict: bool, origin: str) -> None:
        self.strict = strict
        self.origin = origin
        self.skipped: list[SkippedSource] = []

    def skip(self, source_id: str, problem: _SourceProblem) -> None:
        if self.strict:
            raise ValueError(f"{self.origin}: {problem.detail} (strict=True; pass strict=False to skip and warn)")
        self.skipped.append(SkippedSource(source_id, problem.reason, problem.detail))

    def warn_skipped(self) -> None:
        by_reason: dict[str, list[str]] = defaultdict(list)
        for item in self.skipped:
            by_reason[item.reason].append(item.source_id)
        for reason, ids in by_reason.items():
            names = ", ".join(ids[:20]) + (f", ... ({len(ids) - 20} more)" if len(ids) > 20 else "")
            warnings.warn(
                f"{self.origin}: skipped {len(ids)} {_REASONS.get(reason, reason)}: {names} "
                "(all listed in bank.skipped)",
                DefectBankWarning,
                stacklevel=4,
            )

    def finish(
        self,
        classes: Sequence[str],
        cuts: Sequence[tuple[str, tuple[int, int], _Cut]],
        free: Sequence[str | np.ndarray],
        margin: int,
        build_info: Mapping[str, Any],
    ) -> DefectBank:
        """``cuts`` are (source_id, source_hw, cut) with the cut's value already a bank class id."""
        order = sorted(range(len(cuts)), key=lambda i: (cuts[i][2][0], cuts[i][0]))
        entries = []
        for entry_id, i in enumerate(order):
            source_id, source_hw, (class_id, bbox, crop, mask) = cuts[i]
            entries.append(
                DefectEntry(entry_id, class_id, classes[class_id - 1], source_id, source_hw, bbox, crop, mask)
            )
        self.warn_skipped()
        present = {e.class_id for e in entries}
        empty = [name for k, name in enumerate(classes, 1) if k not in present]
        if empty:
            message = f"{self.origin}: {len(empty)} class(es) have no defects: {', '.join(empty)}"
            if self.strict:
                raise ValueError(message + " (strict=True)")
            warnings.warn(message + "; sampling them raises", DefectBankWarning, stacklevel=3)
        return DefectBank(classes, entries, free, margin=margin, skipped=self.skipped, build_info=dict(build_info))


def _check_margin(margin: int) -> int:
    return check_int(margin, "margin", 0, "(pixels of context around each defect)")


def _restrict(available: Sequence[str], classes: Sequence[str] | None, what: str) -> list[str]:
    """The bank's classes: ``available`` or the requested subset, in the requested order."""
    if classes is None:
        return list(available)
    if isinstance(classes, str):
        classes = [classes]
    classes = [str(c) for c in classes]
    unknown = [c for c in classes if c not in available]
    if unknown:
        raise ValueError(f"classes {unknown} not found in {what}; available classes: {list(available)}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes holds duplicates: {classes}")
    return classes


def _files_by_stem(folder: Path, suffixes: Sequence[str]) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes:
            found[path.stem].append(path)
    return found


def _detect_layout(root: Path) -> str:
    has_mt = any(p.is_dir() and p.name.startswith("MT_") for p in root.iterdir())
    has_generic = (root / "images").is_dir() and (root / "masks").is_dir()
    if has_mt and has_generic:
        raise ValueError(f"{root} holds both MT_<Class> folders and images/ + masks/; pass layout= explicitly")
    if has_mt:
        return "magnetic_tile"
    if has_generic:
        return "generic"
    raise ValueError(
        f"unknown layout in {root}: expected MT_<Class>/Imgs/<name>.jpg + .png folders (layout='magnetic_tile') "
        "or images/ + masks/ with matching stems (layout='generic')"
    )


def _magnetic_tile_sources(root: Path, classes: Sequence[str] | None) -> tuple[list[str], list[_Source]]:
    folders = {p.name.removeprefix("MT_"): p for p in sorted(root.iterdir()) if p.is_dir() and p.name.startswith("MT_")}
    available = [name for name in folders if name != _MT_FREE]
    if set(available) == set(MAGNETIC_TILE_CLASSES):
        available = list(MAGNETIC_TILE_CLASSES)
    else:
        available.sort()
    if classes is not None and _MT_FREE in ([classes] if isinstance(classes, str) else list(classes)):
        raise ValueError("'Free' names the defect-free folder MT_Free, not a defect class; leave it out of classes")
    chosen = _restrict(available, classes, f"{root} (MT_<Class> folders)")
    sources: list[_Source] = []
    for name in [*chosen, _MT_FREE]:
        if name not in folders:
            continue
        folder = folders[name] / "Imgs" if (folders[name] / "Imgs").is_dir() else folders[name]
        prefix = folders[name].name
        images = _files_by_stem(folder, _MT_IMAGE_SUFFIXES)
        masks = _files_by_stem(folder, (".png",))
        for stem in sorted(set(images) | set(masks)):
            source_id = f"{prefix}/{stem}"
            class_name = None if name == _MT_FREE else name
            if stem not in images:
                problem = _SourceProblem("missing_image", f"{source_id}: mask {masks[stem][0]} has no image beside it")
                sources.append(_Source(source_id, None, None, class_name, problem))
            elif len(images[stem]) > 1:
                files = ", ".join(p.name for p in images[stem])
                problem = _SourceProblem("ambiguous", f"{source_id}: several images share the stem: {files}")
                sources.append(_Source(source_id, None, None, class_name, problem))
            elif stem not in masks and class_name is not None:
                problem = _SourceProblem("missing_mask", f"{source_id}: image {images[stem][0]} has no mask {stem}.png")
                sources.append(_Source(source_id, images[stem][0], None, class_name, problem))
            else:
                mask = masks[stem][0] if stem in masks else None
                sources.append(_Source(source_id, images[stem][0], mask, class_name))
    return chosen, sources


def _class_names_file(root: Path) -> dict[int, str] | None:
    txt, js = root / "classes.txt", root / "classes.json"
    if txt.is_file():
        names = [line.strip() for line in txt.read_text(encoding="utf-8").splitlines() if line.strip()]
        return dict(enumerate(names, 1))
    if js.is_file():
        try:
            return _class_mapping(json.loads(js.read_text(encoding="utf-8")), str(js))
        except json.JSONDecodeError as error:
            raise ValueError(f"{js} is not valid JSON: {error}") from error
    return None


def _class_mapping(class_names: Any, what: str = "class_names") -> dict[int, str]:
    """Mask value -> class name, from a list (value k -> item k-1) or a {value: name} mapping."""
    if isinstance(class_names, Mapping):
        items = list(class_names.items())
    elif isinstance(class_names, Sequence) and not isinstance(class_names, str):
        items = list(enumerate(class_names, 1))
    else:
        raise ValueError(f"{what} must be a list of names (value k -> item k-1) or a {{value: name}} mapping")
    mapping: dict[int, str] = {}
    for value, name in items:
        try:
            value = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: mask value {value!r} is not an integer") from None
        if value < 1 or not isinstance(name, str) or not name:
            raise ValueError(f"{what}: mask values must be >= 1 and names non-empty strings, got {value}: {name!r}")
        mapping[value] = name
    if len(set(mapping.values())) != len(mapping):
        raise ValueError(f"{what} maps several mask values to one name: {mapping}")
    return mapping


def _generic_sources(root: Path) -> list[_Source]:
    images = _files_by_stem(root / "images", IMAGE_SUFFIXES)
    masks = _files_by_stem(root / "masks", IMAGE_SUFFIXES)
    sources = []
    for stem in sorted(set(images) | set(masks)):
        if stem not in images:
            sources.append(
                _Source(stem, None, None, None, _SourceProblem("missing_image", f"{stem}: mask has no image"))
            )
        elif stem not in masks:
            problem = _SourceProblem("missing_mask", f"{stem}: image {images[stem][0]} has no mask in masks/")
            sources.append(_Source(stem, images[stem][0], None, None, problem))
        elif len(images[stem]) > 1 or len(masks[stem]) > 1:
            files = ", ".join(p.name for p in images[stem] + masks[stem])
            sources.append(_Source(stem, None, None, None, _SourceProblem("ambiguous", f"{stem}: {files}")))
        else:
            sources.append(_Source(stem, images[stem][0], masks[stem][0]))
    return sources


def _run_parallel(
    work: Callable[[_Source], _Outcome], sources: Sequence[_Source], workers: int | None, progress: bool, desc: str
) -> list[_Outcome]:
    workers = max(1, min(8, os.cpu_count() or 1) if workers is None else int(workers))
    return list(ordered_map(lambda i: work(sources[i]), len(sources), workers, desc, progress))


# --------------------------------------------------------------------------------------------------
# The bank


class DefectBank:
    """Per-class real defect crops, with the defect-free images indexed as injection targets.

    Build one with :meth:`from_folder` or :meth:`from_arrays`, keep it with :meth:`save` and
    :meth:`load`. See the module docstring for class ids, layouts and the on-disk format.
    The constructor takes ready entries (``entry_id`` must be each entry's index).
    """

    def __init__(
        self,
        classes: Sequence[str],
        entries: Sequence[DefectEntry],
        free_images: Sequence[str | os.PathLike[str] | np.ndarray] = (),
        *,
        margin: int = DEFAULT_MARGIN,
        skipped: Sequence[SkippedSource] = (),
        build_info: Mapping[str, Any] | None = None,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        classes = tuple(classes)
        if not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be distinct non-empty names, got {classes}")
        if "free" in classes:
            raise ValueError("'free' is reserved for the defect-free images (bank.stats()); rename that class")
        self._classes = classes
        self._margin = _check_margin(margin)
        by_class: list[list[DefectEntry]] = [[] for _ in classes]
        for index, entry in enumerate(entries):
            if not isinstance(entry, DefectEntry):
                raise ValueError(f"entries[{index}] must be a DefectEntry, got {type(entry).__name__}")
            if entry.entry_id != index:
                raise ValueError(f"entries[{index}] has entry_id {entry.entry_id}; entry ids must be their index")
            if not 1 <= entry.class_id <= len(classes) or classes[entry.class_id - 1] != entry.class_name:
                raise ValueError(f"entries[{index}] has class {entry.class_id} {entry.class_name!r}, unknown here")
            by_class[entry.class_id - 1].append(entry)
        self._entries = tuple(entries)
        self._by_class = tuple(tuple(group) for group in by_class)
        self._free = tuple(
            _readonly(check_image(f, f"free_images[{i}]")) if isinstance(f, np.ndarray) else os.fspath(f)
            for i, f in enumerate(free_images)
        )
        self._skipped = tuple(SkippedSource(*s) for s in skipped)
        self.build_info: dict[str, Any] = dict(build_info or {})
        self._path = None if path is None else Path(path).resolve()

    # -- basic views -------------------------------------------------------------------------------

    @property
    def classes(self) -> tuple[str, ...]:
        """Defect-class names; class id ``k`` is ``classes[k - 1]`` (0 = background / defect-free)."""
        return self._classes

    @property
    def entries(self) -> tuple[DefectEntry, ...]:
        """Every entry, ordered by class id then source id; ``entries[i].entry_id == i``."""
        return self._entries

    @property
    def margin(self) -> int:
        """Pixels of context kept around each defect's bounding box."""
        return self._margin

    @property
    def free_images(self) -> tuple[str | np.ndarray, ...]:
        """Defect-free images: absolute paths (read them with :meth:`load_free`) or read-only arrays."""
        return self._free

    @property
    def num_free(self) -> int:
        """Number of defect-free images."""
        return len(self._free)

    @property
    def skipped(self) -> tuple[SkippedSource, ...]:
        """Sources left out at build, with the reason (e.g. defect images whose mask is empty)."""
        return self._skipped

    @property
    def path(self) -> Path | None:
        """The bank folder this bank was loaded from or last saved to (``None`` if never saved)."""
        return self._path

    @property
    def nbytes(self) -> int:
        """Bytes held in memory by the entries' arrays and the in-memory defect-free images."""
        total = sum(e.crop.nbytes + e.mask.nbytes + e.blob_labels.nbytes for e in self._entries)
        return total + sum(f.nbytes for f in self._free if isinstance(f, np.ndarray))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        where = f", path={str(self._path)!r}" if self._path else ""
        return f"DefectBank(classes={self._classes}, entries={len(self)}, free={self.num_free}{where})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DefectBank):
            return NotImplemented
        if (self._classes, self._margin, self._skipped, len(self._entries), len(self._free)) != (
            other._classes,
            other._margin,
            other._skipped,
            len(other._entries),
            len(other._free),
        ):
            return False
        for a, b in zip(self._free, other._free, strict=True):
            if isinstance(a, np.ndarray) != isinstance(b, np.ndarray):
                return False
            if isinstance(a, np.ndarray) and not (a.dtype == b.dtype and np.array_equal(a, b)):
                return False
            if not isinstance(a, np.ndarray) and a != b:
                return False
        return all(a == b for a, b in zip(self._entries, other._entries, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __reduce_ex__(self, protocol: Any) -> Any:
        # A saved bank travels as its folder path: DataLoader workers load it themselves, once.
        if self._path is not None:
            return resolve_bank, (str(self._path),)
        return super().__reduce_ex__(protocol)

    # -- classes and sampling ----------------------------------------------------------------------

    def class_id(self, cls: int | str) -> int:
        """The id (1..K) of a class given by name or id; ``ValueError`` if the bank has no such class."""
        if isinstance(cls, str):
            if cls not in self._classes:
                raise ValueError(f"unknown defect class {cls!r}; this bank's classes are {list(self._classes)}")
            return self._classes.index(cls) + 1
        if isinstance(cls, (bool, np.bool_)) or not isinstance(cls, (int, np.integer)):
            raise ValueError(f"a class must be a class name or an int id, got {cls!r}")
        if cls == 0:
            raise ValueError(f"class id 0 is background / defect-free; defect classes are 1..{len(self._classes)}")
        if not 1 <= cls <= len(self._classes):
            raise ValueError(f"unknown class id {cls}; this bank's classes are 1..{len(self._classes)} {self._classes}")
        return int(cls)

    def entries_of(self, cls: int | str) -> tuple[DefectEntry, ...]:
        """Every entry of one class (possibly empty)."""
        return self._by_class[self.class_id(cls) - 1]

    def _nonempty(self, cls: int | str) -> tuple[DefectEntry, ...]:
        group = self.entries_of(cls)
        if not group:
            k = self.class_id(cls)
            raise ValueError(
                f"defect class {self._classes[k - 1]!r} (id {k}) has no entries in this bank; "
                f"classes with entries: {[c for c, g in zip(self._classes, self._by_class, strict=True) if g]}"
            )
        return group

    def sample(self, cls: int | str, rng: np.random.Generator) -> DefectEntry:
        """A uniformly random entry of a class (by id or name), drawn from ``rng``."""
        group = self._nonempty(cls)
        return group[int(_check_rng(rng).integers(len(group)))]

    def sample_blobs(self, cls: int | str, rng: np.random.Generator) -> DefectEntry:
        """A random entry of a class restricted to a random non-empty subset of its blobs.

        Draws an entry uniformly, then a number of blobs uniformly in 1..num_blobs, then which ones.
        The crop is tightened to the kept blobs plus the bank's margin (see :meth:`DefectEntry.with_blobs`);
        when every blob is drawn that is the entry itself, returned as is (no re-labelling of its blobs).
        """
        entry = self.sample(cls, rng)
        count = int(rng.integers(1, entry.num_blobs + 1))
        if count == entry.num_blobs:
            return entry
        ids = rng.choice(np.arange(1, entry.num_blobs + 1), size=count, replace=False)
        return entry.with_blobs(ids.tolist(), margin=self._margin)

    def load_free(self, index: int) -> np.ndarray:
        """The ``index``-th defect-free image as an array (read from disk when it is a path).

        Arrays held in memory come back read-only; copy before writing.
        """
        if not -self.num_free <= int(index) < self.num_free:
            raise ValueError(f"free image index {index} out of range: the bank has {self.num_free} defect-free images")
        item = self._free[int(index)]
        return item if isinstance(item, np.ndarray) else read_image(item, f"defect-free image {index}")

    # -- statistics --------------------------------------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        """Per class name: ``{"entries": n, "images": distinct source images, "blobs": total blobs}``."""
        return {
            name: {
                "entries": len(group),
                "images": len({e.source_id for e in group}),
                "blobs": sum(e.num_blobs for e in group),
            }
            for name, group in zip(self._classes, self._by_class, strict=True)
        }

    def stats(self) -> list[dict[str, Any]]:
        """Per-class statistics: one row per class, then a row with ``class="free"``.

        Keys: ``class`` (name), ``images`` (source images), ``area_pct_mean`` and ``area_pct_std``
        (defect area as a % of its source image, over images; population std), ``blobs_mean``,
        ``blobs_max``. A class without entries has NaN means and ``blobs_max`` 0; the free row has
        ``images`` = the defect-free count and zero area and blobs.
        """
        rows = []
        for name, group in zip(self._classes, self._by_class, strict=True):
            area = np.array([100.0 * e.area_fraction for e in group])
            blobs = np.array([e.num_blobs for e in group])
            rows.append(
                {
                    "class": name,
                    "images": len({e.source_id for e in group}),
                    "area_pct_mean": float(area.mean()) if group else float("nan"),
                    "area_pct_std": float(area.std()) if group else float("nan"),
                    "blobs_mean": float(blobs.mean()) if group else float("nan"),
                    "blobs_max": int(blobs.max()) if group else 0,
                }
            )
        rows.append(
            {
                "class": "free",
                "images": self.num_free,
                "area_pct_mean": 0.0,
                "area_pct_std": 0.0,
                "blobs_mean": 0.0,
                "blobs_max": 0,
            }
        )
        return rows

    def class_sets(self) -> dict[tuple[int, ...], int]:
        """How many source images hold each set of classes (sorted class ids; ``()`` = defect-free).

        The lookup table of real class configurations (Guided-Crop draws from it).
        """
        per_source: dict[str, set[int]] = defaultdict(set)
        for entry in self._entries:
            per_source[entry.source_id].add(entry.class_id)
        table = Counter(tuple(sorted(ids)) for ids in per_source.values())
        if self.num_free:
            table[()] = self.num_free
        return dict(sorted(table.items()))

    # -- building ----------------------------------------------------------------------------------

    @classmethod
    def from_folder(
        cls,
        root: str | os.PathLike[str],
        *,
        layout: str = "auto",
        mask_threshold: float = 127,
        classes: Sequence[str] | None = None,
        class_names: Sequence[str] | Mapping[int, str] | None = None,
        margin: int = DEFAULT_MARGIN,
        strict: bool = False,
        verify_free: bool = False,
        workers: int | None = None,
        progress: bool = True,
    ) -> DefectBank:
        """Build a bank from image+mask files (layouts in the module docstring).

        ``mask_threshold``: Magnetic Tile masks are defect where ``> mask_threshold`` (generic masks
        are class indices, read exactly). ``classes``: keep and order only these class names (in the
        generic layout, an image holding only other classes is neither an entry nor defect-free). ``class_names``: the generic layout's mask value ->
        name mapping. ``strict``: raise on the first bad source instead of skipping it with a
        warning. ``verify_free``: also read the Magnetic Tile defect-free images (and masks) to check
        them (they are only listed otherwise). ``workers``: reader threads (default: CPUs, at most 8).
        """
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"root {root} is not a folder")
        margin = _check_margin(margin)
        if layout == "auto":
            layout = _detect_layout(root)
        origin = f"DefectBank.from_folder({str(root)!r})"
        builder = _Builder(strict=strict, origin=origin)
        info = {"root": str(root.resolve()), "layout": layout, "mask_threshold": mask_threshold, "margin": margin}
        if layout == "magnetic_tile":
            if class_names is not None:
                raise ValueError("class_names applies to the generic layout; Magnetic Tile folders name the classes")
            chosen, sources = _magnetic_tile_sources(root, classes)
            index = {name: k for k, name in enumerate(chosen, 1)}

            def work(source: _Source) -> _Outcome:
                outcome = _Outcome(source.source_id)
                try:
                    if source.problem is not None:
                        raise source.problem
                    if source.class_name is None and not verify_free:
                        outcome.free = True
                        return outcome
                    image = _read_source(source.image, "image")  # type: ignore[arg-type]
                    outcome.source_hw = (int(image.shape[0]), int(image.shape[1]))
                    if source.mask is None:  # a defect-free image without a mask file
                        outcome.free = True
                        return outcome
                    mask = _read_mask(source.mask)  # type: ignore[arg-type]
                    _check_sizes(image, mask, source.source_id)
                    binary = mask > mask_threshold
                    if source.class_name is None:
                        if binary.any():
                            raise _SourceProblem(
                                "free_not_empty",
                                f"{source.source_id}: {int(binary.sum())} mask pixels > {mask_threshold}",
                            )
                        outcome.free = True
                        return outcome
                    outcome.cuts = _cut_defects(image, binary, [True], margin)
                    if not outcome.cuts:
                        raise _SourceProblem(
                            "empty_mask", f"{source.source_id}: no mask pixel above mask_threshold={mask_threshold}"
                        )
                    outcome.cuts = [(index[source.class_name], *cut[1:]) for cut in outcome.cuts]
                except _SourceProblem as problem:
                    outcome.problem = problem
                return outcome

            outcomes = _run_parallel(work, sources, workers, progress, "DefectBank")
            class_list = chosen
        elif layout == "generic":
            if not ((root / "images").is_dir() and (root / "masks").is_dir()):
                raise ValueError(f"layout 'generic' needs {root}/images and {root}/masks folders")
            mapping = _class_mapping(class_names) if class_names is not None else _class_names_file(root)
            sources = _generic_sources(root)

            def work(source: _Source) -> _Outcome:
                outcome = _Outcome(source.source_id)
                try:
                    if source.problem is not None:
                        raise source.problem
                    image = _read_source(source.image, "image")  # type: ignore[arg-type]
                    mask = _read_mask(source.mask)  # type: ignore[arg-type]
                    _check_sizes(image, mask, source.source_id)
                    outcome.source_hw = (int(image.shape[0]), int(image.shape[1]))
                    if not np.issubdtype(mask.dtype, np.integer):
                        raise _SourceProblem("unsupported", f"{source.source_id}: class-index masks must be integer")
                    values = _nonzero_values(mask)
                    if mapping is not None and (unknown := [v for v in values if v not in mapping]):
                        raise _SourceProblem(
                            "unknown_class",
                            f"{source.source_id}: mask values {unknown[:10]} are not in the class mapping "
                            f"{mapping} (binary 0/255 masks: class_names={{255: 'name'}})",
                        )
                    outcome.free = not values
                    outcome.cuts = _cut_defects(image, mask, values, margin)
                except _SourceProblem as problem:
                    outcome.problem = problem
                return outcome

            outcomes = _run_parallel(work, sources, workers, progress, "DefectBank")
            if mapping is None:
                top = max((c[0] for o in outcomes for c in o.cuts), default=0)
                mapping = {k: f"class_{k}" for k in range(1, top + 1)}
            by_value = dict(sorted(mapping.items()))
            class_list = _restrict(list(by_value.values()), classes, f"the class mapping of {root}")
            index = {value: class_list.index(name) + 1 for value, name in by_value.items() if name in class_list}
            for outcome in outcomes:
                outcome.cuts = [(index[c[0]], *c[1:]) for c in outcome.cuts if c[0] in index]
        else:
            raise ValueError(f"unknown layout {layout!r}; use 'auto', 'magnetic_tile' or 'generic'")

        source_paths = {s.source_id: s.image for s in sources}
        cuts, free = [], []
        for outcome in outcomes:
            if outcome.problem is not None:
                builder.skip(outcome.source_id, outcome.problem)
            elif outcome.free:
                free.append(str(Path(source_paths[outcome.source_id]).resolve()))  # type: ignore[arg-type]
            else:
                cuts += [(outcome.source_id, outcome.source_hw, cut) for cut in outcome.cuts]
        if not cuts and not free and not builder.skipped:
            raise ValueError(f"no images found under {root} (layout {layout!r})")
        return builder.finish(class_list, cuts, free, margin, info)

    @classmethod
    def from_arrays(
        cls,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        labels: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        *,
        mask_threshold: float = 0,
        margin: int = DEFAULT_MARGIN,
        strict: bool = False,
        progress: bool = False,
    ) -> DefectBank:
        """Build a bank from arrays in memory.

        Without ``labels``, ``masks`` are class-index masks (0 background, ``k`` = class ``k``; a bool
        mask is class 1). With ``labels`` (one class id per image, 0 = defect-free), each mask is
        binary: pixels ``> mask_threshold`` are defects of that image's class. ``class_names`` names
        ids 1..K (default ``class_<k>`` up to the largest id seen). Images with an all-zero mask and
        no label are the defect-free images, kept by reference as read-only views (:meth:`save`
        stores them in the bank). Malformed arguments raise ``ValueError``; a labelled image with an
        empty mask is skipped with a counted warning (``strict=True``: raises).
        """
        for name, seq in (("images", images), ("masks", masks)):
            if isinstance(seq, np.ndarray) and seq.ndim < 3:
                raise ValueError(
                    f"{name} must be a sequence of arrays (a list, or an (N, H, W[, C]) stack), not one array"
                )
        if len(images) != len(masks):
            raise ValueError(f"images and masks must have the same length, got {len(images)} and {len(masks)}")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"labels must have one class id per image, got {len(labels)} for {len(images)} images")
        margin = _check_margin(margin)
        builder = _Builder(strict=strict, origin="DefectBank.from_arrays")
        cuts: list[tuple[str, tuple[int, int], _Cut]] = []
        free: list[np.ndarray] = []
        top = 0
        for i in tqdm(range(len(images)), desc="DefectBank", unit="img", disable=not progress):
            image = check_image(images[i], f"images[{i}]")
            mask = masks[i]
            if not isinstance(mask, np.ndarray):
                raise ValueError(f"masks[{i}] must be a numpy array, got {type(mask).__name__}")
            if mask.ndim == 3 and mask.shape[2] == 1:
                mask = mask[..., 0]
            if mask.shape != image.shape[:2]:
                raise ValueError(f"masks[{i}] is {mask.shape} but images[{i}] is {image.shape[:2]}; they must match")
            hw = (int(image.shape[0]), int(image.shape[1]))
            source_id = f"array_{i}"
            if labels is None:
                if mask.dtype != bool and not np.issubdtype(mask.dtype, np.integer):
                    raise ValueError(f"masks[{i}] must be a bool or integer class-index mask, got {mask.dtype}")
                if mask.dtype != bool and mask.size and mask.min() < 0:
                    raise ValueError(f"masks[{i}] holds negative class ids")
                found = _cut_defects(image, mask, _nonzero_values(mask), margin)
            else:
                label = labels[i]
                if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)) or label < 0:
                    raise ValueError(f"labels[{i}] must be a class id >= 0 (0 = defect-free), got {label!r}")
                binary = mask if mask.dtype == bool else mask > mask_threshold
                if label == 0 and binary.any():
                    raise ValueError(f"labels[{i}] is 0 (defect-free) but masks[{i}] holds defect pixels")
                if label > 0 and not binary.any():
                    problem = _SourceProblem("empty_mask", f"{source_id}: labels[{i}]={label} but its mask is empty")
                    builder.skip(source_id, problem)
                    continue
                found = [(int(label), *cut[1:]) for cut in _cut_defects(image, binary, [True] if label else [], margin)]
            if not found:
                free.append(image)
                continue
            top = max(top, *(cut[0] for cut in found))
            cuts += [(source_id, hw, cut) for cut in found]
        if class_names is None:
            class_list = [f"class_{k}" for k in range(1, top + 1)]
        else:
            class_list = [str(name) for name in class_names]
            if top > len(class_list):
                raise ValueError(f"class id {top} appears but class_names names only {len(class_list)} classes")
        return builder.finish(class_list, cuts, free, margin, {"source": "arrays", "mask_threshold": mask_threshold})

    # -- saving and loading ------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], *, copy_free: bool = False) -> Path:
        """Write the bank folder (format in the module docstring) and return its absolute path.

        Defect-free arrays are stored in the bank; defect-free files are referenced by absolute path,
        or copied in with ``copy_free=True`` (self-contained bank). An existing bank at ``path`` is
        replaced; a non-empty folder that is not a bank is refused. Afterwards this bank refers to
        the saved copy: ``path`` is set (so it pickles as that path) and stored defect-free images
        are read from the bank folder.
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
            free_refs = self._write(staging, copy_free)
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
        self._free = tuple(str(final / ref["file"]) if "file" in ref else ref["external"] for ref in free_refs)
        self._path = final
        _remember(final, self)
        return final

    def _write(self, folder: Path, copy_free: bool) -> list[dict[str, str]]:
        buffers: dict[str, list[np.ndarray]] = defaultdict(list)
        offsets: dict[str, int] = defaultdict(int)
        entries = []
        for entry in self._entries:
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
        masks = [e.mask.ravel() for e in self._entries]
        mask_bits = int(sum(m.size for m in masks))
        arrays["masks_packed"] = np.packbits(np.concatenate(masks)) if masks else np.zeros(0, np.uint8)
        np.savez(folder / ARRAYS_FILE, **arrays)

        free_refs: list[dict[str, str]] = []
        stored_root = self._path
        for i, item in enumerate(self._free):
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
            "classes": list(self._classes),
            "margin": self._margin,
            "build": self.build_info,
            "arrays": ARRAYS_FILE,
            "mask_bits": mask_bits,
            "entries": entries,
            "free": free_refs,
            "skipped": [s._asdict() for s in self._skipped],
        }
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=1), encoding="utf-8")
        return free_refs

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DefectBank:
        """Read a bank folder written by :meth:`save` (no pickles; paths confined to the folder).

        Prefer :func:`resolve_bank` in transforms: it loads each folder once per process.
        """
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
        expect(index.get("version") == FORMAT_VERSION, f"format version {index.get('version')!r} is not supported")
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
                        bbox=tuple(meta["bbox"]),
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
                expect(
                    isinstance(external, str) and Path(external).is_absolute(), f"free[{i}] external must be absolute"
                )
                free.append(external)
        skipped = [
            SkippedSource(str(s["source_id"]), str(s["reason"]), str(s["detail"])) for s in index.get("skipped", [])
        ]
        return cls(
            classes,
            entries,
            free,
            margin=int(index.get("margin", DEFAULT_MARGIN)),
            skipped=skipped,
            build_info=index.get("build") or {},
            path=root,
        )


def _check_rng(rng: Any) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}"
        )
    return rng


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


# --------------------------------------------------------------------------------------------------
# Loading once per process


_CACHE: dict[Path, tuple[tuple[int, int, int], DefectBank]] = {}
_CACHE_LOCK = threading.Lock()


def _index_stamp(root: Path) -> tuple[int, int, int]:
    stat = (root / INDEX_FILE).stat()
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _remember(root: Path, bank: DefectBank) -> None:
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


def format_stats(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows of :meth:`DefectBank.stats` as a markdown table (images, area % mean +- std, blobs)."""
    lines = ["| class | images | area % (mean +- std) | blobs mean | blobs max |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['class']} | {row['images']} | {row['area_pct_mean']:.2f} +- {row['area_pct_std']:.2f} "
            f"| {row['blobs_mean']:.2f} | {row['blobs_max']} |"
        )
    return "\n".join(lines)
