"""Building a bank's entries from image+mask files or arrays: the folder layouts, the cut, skipped sources.

The two builders return the keyword arguments of ``DefectBank(...)``;
:meth:`~albu_defects.DefectBank.from_folder` and :meth:`~albu_defects.DefectBank.from_arrays` call them.
Layouts, class ids and the handling of bad sources are described in :mod:`albu_defects.bank`.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from albu_defects.core.files import load_json, open_regular
from albu_defects.core.geometry import box_slices, grow_box, mask_bbox
from albu_defects.core.parallel import ordered_map, progress_bar
from albu_defects.core.validation import check_image
from albu_defects.data import MAGNETIC_TILE_CLASSES

from .entry import DefectBankWarning, DefectEntry, SkippedSource, check_margin
from .io import IMAGE_SUFFIXES, SourceProblem, read_mask, read_source

__all__ = ["build_from_arrays", "build_from_folder"]

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


def _check_sizes(image: np.ndarray, mask: np.ndarray, source_id: str) -> None:
    if image.shape[:2] != mask.shape[:2]:
        raise SourceProblem(
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
        box = grow_box(box, margin, (h, w))
        window = box_slices(box)
        # Copies, never views: a crop of whole rows would otherwise share the caller's memory.
        cuts.append((int(value), box, image[window].copy(), mask[window].copy()))
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
    problem: SourceProblem | None = None


@dataclass
class _Outcome:
    source_id: str
    source_hw: tuple[int, int] = (0, 0)
    cuts: list[_Cut] = field(default_factory=list)
    free: bool = False
    problem: SourceProblem | None = None


class _Builder:
    """Collects outcomes, reports problems, and makes the bank."""

    def __init__(self, *, strict: bool, origin: str) -> None:
        self.strict = strict
        self.origin = origin
        self.skipped: list[SkippedSource] = []

    def skip(self, source_id: str, problem: SourceProblem) -> None:
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
                stacklevel=5,
            )

    def finish(
        self,
        classes: Sequence[str],
        cuts: Sequence[tuple[str, tuple[int, int], _Cut]],
        free: Sequence[str | np.ndarray],
        margin: int,
        build_info: Mapping[str, Any],
    ) -> dict[str, Any]:
        """``DefectBank`` keyword arguments; ``cuts`` are (source_id, source_hw, cut) with the cut's value already a bank class id."""
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
            warnings.warn(message + "; drawing from them raises", DefectBankWarning, stacklevel=4)
        return {
            "classes": classes,
            "entries": entries,
            "free_images": free,
            "margin": margin,
            "skipped": self.skipped,
            "build_info": dict(build_info),
        }


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
                problem = SourceProblem("missing_image", f"{source_id}: mask {masks[stem][0]} has no image beside it")
                sources.append(_Source(source_id, None, None, class_name, problem))
            elif len(images[stem]) > 1:
                files = ", ".join(p.name for p in images[stem])
                problem = SourceProblem("ambiguous", f"{source_id}: several images share the stem: {files}")
                sources.append(_Source(source_id, None, None, class_name, problem))
            elif stem not in masks and class_name is not None:
                problem = SourceProblem("missing_mask", f"{source_id}: image {images[stem][0]} has no mask {stem}.png")
                sources.append(_Source(source_id, images[stem][0], None, class_name, problem))
            else:
                mask = masks[stem][0] if stem in masks else None
                sources.append(_Source(source_id, images[stem][0], mask, class_name))
    return chosen, sources


#: The largest classes.txt / classes.json read (a list of names is a few kB).
MAX_CLASS_FILE_BYTES = 1 << 20


def _class_names_file(root: Path) -> dict[int, str] | None:
    """The names in ``ROOT/classes.txt`` or ``ROOT/classes.json`` (regular files, strict UTF-8 JSON), or ``None``."""
    txt, js = root / "classes.txt", root / "classes.json"
    for path in (txt, js):
        if not os.path.lexists(path):
            continue
        with open_regular(path, limit=MAX_CLASS_FILE_BYTES) as handle:  # a FIFO is refused, not waited on
            data = handle.read()
        if path == txt:
            try:
                lines = data.decode("utf-8").splitlines()
            except UnicodeDecodeError as error:
                raise ValueError(f"{path} is not UTF-8 text ({error})") from None
            return dict(enumerate((line.strip() for line in lines if line.strip()), 1))
        return _class_mapping(load_json(data, str(path)), str(path))
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
                _Source(stem, None, None, None, SourceProblem("missing_image", f"{stem}: mask has no image"))
            )
        elif stem not in masks:
            problem = SourceProblem("missing_mask", f"{stem}: image {images[stem][0]} has no mask in masks/")
            sources.append(_Source(stem, images[stem][0], None, None, problem))
        elif len(images[stem]) > 1 or len(masks[stem]) > 1:
            files = ", ".join(p.name for p in images[stem] + masks[stem])
            sources.append(_Source(stem, None, None, None, SourceProblem("ambiguous", f"{stem}: {files}")))
        else:
            sources.append(_Source(stem, images[stem][0], masks[stem][0]))
    return sources


def _run_parallel(
    work: Callable[[_Source], _Outcome], sources: Sequence[_Source], workers: int | None, progress: bool, desc: str
) -> list[_Outcome]:
    workers = max(1, min(8, os.cpu_count() or 1) if workers is None else int(workers))
    return list(ordered_map(lambda i: work(sources[i]), len(sources), workers, desc, progress))


def build_from_folder(
    root: str | os.PathLike[str],
    layout: str,
    mask_threshold: float,
    classes: Sequence[str] | None,
    class_names: Sequence[str] | Mapping[int, str] | None,
    margin: int,
    strict: bool,
    verify_free: bool,
    workers: int | None,
    progress: bool,
) -> dict[str, Any]:
    """The work of :meth:`~albu_defects.DefectBank.from_folder` (same arguments): ``DefectBank`` keyword arguments."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"root {root} is not a folder")
    margin = check_margin(margin)
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
                image = read_source(source.image, "image")  # type: ignore[arg-type]
                outcome.source_hw = (int(image.shape[0]), int(image.shape[1]))
                if source.mask is None:  # a defect-free image without a mask file
                    outcome.free = True
                    return outcome
                mask = read_mask(source.mask)  # type: ignore[arg-type]
                _check_sizes(image, mask, source.source_id)
                binary = mask > mask_threshold
                if source.class_name is None:
                    if binary.any():
                        raise SourceProblem(
                            "free_not_empty",
                            f"{source.source_id}: {int(binary.sum())} mask pixels > {mask_threshold}",
                        )
                    outcome.free = True
                    return outcome
                outcome.cuts = _cut_defects(image, binary, [True], margin)
                if not outcome.cuts:
                    raise SourceProblem(
                        "empty_mask", f"{source.source_id}: no mask pixel above mask_threshold={mask_threshold}"
                    )
                outcome.cuts = [(index[source.class_name], *cut[1:]) for cut in outcome.cuts]
            except SourceProblem as problem:
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
                image = read_source(source.image, "image")  # type: ignore[arg-type]
                mask = read_mask(source.mask)  # type: ignore[arg-type]
                _check_sizes(image, mask, source.source_id)
                outcome.source_hw = (int(image.shape[0]), int(image.shape[1]))
                if not np.issubdtype(mask.dtype, np.integer):
                    raise SourceProblem("unsupported", f"{source.source_id}: class-index masks must be integer")
                values = _nonzero_values(mask)
                if mapping is not None and (unknown := [v for v in values if v not in mapping]):
                    raise SourceProblem(
                        "unknown_class",
                        f"{source.source_id}: mask values {unknown[:10]} are not in the class mapping "
                        f"{mapping} (binary 0/255 masks: class_names={{255: 'name'}})",
                    )
                outcome.free = not values
                outcome.cuts = _cut_defects(image, mask, values, margin)
            except SourceProblem as problem:
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


def build_from_arrays(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    labels: Sequence[int] | None,
    class_names: Sequence[str] | None,
    mask_threshold: float,
    margin: int,
    strict: bool,
    progress: bool,
) -> dict[str, Any]:
    """The work of :meth:`~albu_defects.DefectBank.from_arrays` (same arguments): ``DefectBank`` keyword arguments."""
    for name, seq in (("images", images), ("masks", masks)):
        if isinstance(seq, np.ndarray) and seq.ndim < 3:
            raise ValueError(f"{name} must be a sequence of arrays (a list, or an (N, H, W[, C]) stack), not one array")
    if len(images) != len(masks):
        raise ValueError(f"images and masks must have the same length, got {len(images)} and {len(masks)}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"labels must have one class id per image, got {len(labels)} for {len(images)} images")
    margin = check_margin(margin)
    builder = _Builder(strict=strict, origin="DefectBank.from_arrays")
    cuts: list[tuple[str, tuple[int, int], _Cut]] = []
    free: list[np.ndarray] = []
    top = 0
    for i in progress_bar(range(len(images)), desc="DefectBank", unit="img", disable=not progress):
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
                problem = SourceProblem("empty_mask", f"{source_id}: labels[{i}]={label} but its mask is empty")
                builder.skip(source_id, problem)
                continue
            found = [(int(label), *cut[1:]) for cut in _cut_defects(image, binary, [True] if label else [], margin)]
        if not found:
            free.append(image.copy())  # owned: a later in-place edit of the caller's array stays out
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
