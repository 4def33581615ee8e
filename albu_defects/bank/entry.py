"""A bank entry: all pixels of one defect class in one source image, cut out with a margin."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from albu_defects.core.geometry import (
    Box,
    box_slices,
    connected_components,
    grow_box,
    image_box,
    mask_bbox,
    translate_box,
)
from albu_defects.core.validation import check_image, check_int

__all__ = ["DEFAULT_MARGIN", "DefectBankWarning", "DefectEntry", "SkippedSource", "check_margin", "readonly"]

#: Pixels of context kept around each defect's bounding box (Poisson blending needs a frame).
DEFAULT_MARGIN = 8


class DefectBankWarning(UserWarning):
    """Issued (once per kind of problem, with the count and the names) when a bank skips sources."""


class SkippedSource(NamedTuple):
    """A source image left out of the bank: its id, a short reason code and a human detail."""

    source_id: str
    reason: str
    detail: str


def readonly(array: np.ndarray) -> np.ndarray:
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
    width) marks the defect's own pixels. ``bbox = (x_min, y_min, x_max, y_max)`` (the package's box
    convention, :mod:`albu_defects.core.geometry`) places the crop in its source
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
    bbox: Box
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
        x0, y0, x1, y1 = (int(v) for v in self.bbox)
        sh, sw = (int(v) for v in self.source_hw)
        if (y1 - y0, x1 - x0) != hw or not (0 <= y0 < y1 <= sh and 0 <= x0 < x1 <= sw):
            raise ValueError(
                f"bbox {self.bbox} (x_min, y_min, x_max, y_max) of entry {self.source_id!r} must be a {hw[0]}x{hw[1]} box inside its "
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
        set_(self, "bbox", (x0, y0, x1, y1))
        set_(self, "crop", readonly(crop))
        set_(self, "mask", readonly(mask))
        if self.blob_subset is not None:
            set_(self, "blob_subset", tuple(int(b) for b in self.blob_subset))
        set_(self, "blob_labels", readonly(labels.astype(_blob_dtype(count))))
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
        box = image_box(self.hw)
        if margin is not None:
            if int(margin) < 0:
                raise ValueError(f"margin must be >= 0, got {margin}")
            box = grow_box(mask_bbox(mask), int(margin), self.hw)  # type: ignore[arg-type]  # never empty
        window = box_slices(box)
        return DefectEntry(
            entry_id=self.entry_id,
            class_id=self.class_id,
            class_name=self.class_name,
            source_id=self.source_id,
            source_hw=self.source_hw,
            bbox=translate_box(box, (self.bbox[1], self.bbox[0])),
            crop=self.crop[window],
            mask=mask[window],
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


def check_margin(margin: int) -> int:
    """``margin`` as an int >= 0 (pixels of context around each defect), else ``ValueError``."""
    return check_int(margin, "margin", 0, "(pixels of context around each defect)")
