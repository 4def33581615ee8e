"""The :class:`DefectBank` container: per-class entries, defect-free images, draws and statistics.

Building (:mod:`.build`), the on-disk format (:mod:`.storage`) and loading by path
(:mod:`.registry`) live beside it; the class keeps thin public methods for them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from albu_defects.core.validation import check_image

from . import build, statistics, storage
from .entry import DEFAULT_MARGIN, DefectEntry, SkippedSource, check_margin, readonly
from .io import read_image

__all__ = ["DefectBank"]


class DefectBank:
    """Per-class real defect crops, with the defect-free images indexed as injection targets.

    Build one with :meth:`from_folder` or :meth:`from_arrays`, keep it with :meth:`save` and
    :meth:`load`. Class ids and layouts: :mod:`albu_defects.bank`; the on-disk format:
    :mod:`albu_defects.bank.storage`. The constructor takes ready entries (``entry_id`` must be each entry's index).
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
        self._margin = check_margin(margin)
        self._entries = tuple(entries)
        self._by_class = _group_by_class(classes, self._entries)
        self._free = tuple(
            readonly(check_image(f, f"free_images[{i}]")) if isinstance(f, np.ndarray) else os.fspath(f)
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
        mine = (self._classes, self._margin, self._skipped, self._entries, len(self._free))
        theirs = (other._classes, other._margin, other._skipped, other._entries, len(other._free))
        return mine == theirs and all(map(_same_image, self._free, other._free))

    __hash__ = None  # type: ignore[assignment]

    def __reduce_ex__(self, protocol: Any) -> Any:
        # A saved bank travels as its folder path: DataLoader workers load it themselves, once.
        if self._path is not None:
            from .registry import resolve_bank  # (registry builds on this module)

            return resolve_bank, (str(self._path),)
        return super().__reduce_ex__(protocol)

    # -- classes and draws -------------------------------------------------------------------------

    def class_id(self, cls: int | str) -> int:
        """The id (1..K) of a class given by name or id; ``ValueError`` if the bank has no such class."""
        return _class_id(self._classes, cls)

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

    def draw(self, cls: int | str, rng: np.random.Generator) -> DefectEntry:
        """A uniformly random entry of a class (by id or name), drawn from ``rng``."""
        group = self._nonempty(cls)
        return group[int(_check_rng(rng).integers(len(group)))]

    def draw_blobs(self, cls: int | str, rng: np.random.Generator) -> DefectEntry:
        """A random entry of a class restricted to a random non-empty subset of its blobs.

        Draws an entry uniformly, then a number of blobs uniformly in 1..num_blobs, then which ones.
        The crop is tightened to the kept blobs plus the bank's margin (see :meth:`DefectEntry.with_blobs`);
        when every blob is drawn that is the entry itself, returned as is (no re-labelling of its blobs).
        """
        entry = self.draw(cls, rng)
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

    # -- statistics (computed in :mod:`.statistics`) ----------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        """Per class name: ``{"entries": n, "images": distinct source images, "blobs": total blobs}``."""
        return statistics.class_counts(self._classes, self._by_class)

    def stats(self) -> list[dict[str, Any]]:
        """Per-class statistics rows, then a ``class="free"`` row (keys: :func:`~albu_defects.bank.statistics.class_stats`)."""
        return statistics.class_stats(self._classes, self._by_class, self.num_free)

    def class_sets(self) -> dict[tuple[int, ...], int]:
        """How many source images hold each set of classes (sorted class ids; ``()`` = defect-free).

        The lookup table of real class configurations (Guided-Crop draws from it).
        """
        return statistics.class_sets(self._entries, self.num_free)

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
        """Build a bank from image+mask files (layouts: :mod:`albu_defects.bank`).

        ``mask_threshold``: Magnetic Tile masks are defect where ``> mask_threshold`` (generic masks
        are class indices, read exactly). ``classes``: keep and order only these class names (in the
        generic layout, an image holding only other classes is neither an entry nor defect-free). ``class_names``: the generic layout's mask value ->
        name mapping. ``strict``: raise on the first bad source instead of skipping it with a
        warning. ``verify_free``: also read the Magnetic Tile defect-free images (and masks) to check
        them (they are only listed otherwise). ``workers``: reader threads (default: CPUs, at most 8).
        """
        return cls(
            **build.build_from_folder(
                root, layout, mask_threshold, classes, class_names, margin, strict, verify_free, workers, progress
            )
        )

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
        no label are the defect-free images (:meth:`save` stores them in the bank). The bank owns
        copies of every crop and free image: later in-place edits of the caller's arrays never reach it. Malformed arguments raise ``ValueError``; a labelled image with an
        empty mask is skipped with a counted warning (``strict=True``: raises).
        """
        return cls(
            **build.build_from_arrays(images, masks, labels, class_names, mask_threshold, margin, strict, progress)
        )

    # -- saving and loading ------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], *, copy_free: bool = False) -> Path:
        """Write the bank folder (format: :mod:`~albu_defects.bank.storage`) and return its absolute path.

        Defect-free arrays are stored in the bank; defect-free files are referenced by absolute path,
        or copied in with ``copy_free=True`` (self-contained bank). An existing bank at ``path`` is
        replaced, and only its own files (anything else in the folder stays); a non-empty folder
        that is not a bank is refused; an interrupted save leaves the old bank or the new one (see
        :mod:`~albu_defects.bank.storage`). Afterwards this bank refers to the saved copy: ``path``
        is set (so it pickles as that path) and stored defect-free images are read from the bank
        folder.
        """
        from .registry import remember  # (registry builds on this module)

        self._path, self._free = storage.write_bank(self, path, copy_free)
        remember(self._path, self)
        return self._path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DefectBank:
        """Read a bank folder written by :meth:`save` (no pickles; paths confined to the folder).

        Prefer :func:`~albu_defects.resolve_bank` in transforms: it loads each folder once per process.
        """
        return cls(**storage.read_bank(path))


def _class_id(classes: tuple[str, ...], cls: Any) -> int:
    """:meth:`DefectBank.class_id`: the id of a class name, or a checked int id."""
    if isinstance(cls, str):
        if cls not in classes:
            raise ValueError(f"unknown defect class {cls!r}; this bank's classes are {list(classes)}")
        return classes.index(cls) + 1
    if isinstance(cls, (bool, np.bool_)) or not isinstance(cls, (int, np.integer)):
        raise ValueError(f"a class must be a class name or an int id, got {cls!r}")
    if cls == 0:
        raise ValueError(f"class id 0 is background / defect-free; defect classes are 1..{len(classes)}")
    if not 1 <= cls <= len(classes):
        raise ValueError(f"unknown class id {cls}; this bank's classes are 1..{len(classes)} {classes}")
    return int(cls)


def _group_by_class(classes: tuple[str, ...], entries: tuple[DefectEntry, ...]) -> tuple[tuple[DefectEntry, ...], ...]:
    """The entries of each class (checked: entries, their ids and their classes), in class-id order."""
    by_class: list[list[DefectEntry]] = [[] for _ in classes]
    for index, entry in enumerate(entries):
        if not isinstance(entry, DefectEntry):
            raise ValueError(f"entries[{index}] must be a DefectEntry, got {type(entry).__name__}")
        if entry.entry_id != index:
            raise ValueError(f"entries[{index}] has entry_id {entry.entry_id}; entry ids must be their index")
        if not 1 <= entry.class_id <= len(classes) or classes[entry.class_id - 1] != entry.class_name:
            raise ValueError(f"entries[{index}] has class {entry.class_id} {entry.class_name!r}, unknown here")
        by_class[entry.class_id - 1].append(entry)
    return tuple(tuple(group) for group in by_class)


def _same_image(a: str | np.ndarray, b: str | np.ndarray) -> bool:
    """Two defect-free images (paths or arrays) are the same: equal paths, or arrays of one dtype and values."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


def _check_rng(rng: Any) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}"
        )
    return rng
