"""Guided-Crop (Orti, Moreno-Noguer, Puig): paste real defect blobs on a defect-free image, classes loss-guided.

One synthetic sample, as in section III.C of the paper:

1. **Configuration.** A primary class is drawn from the class probabilities (uniform, the bank's
   inverse frequency, fixed numbers, or live loss-guided :class:`~albu_defects.ClassWeights`). The
   other classes come from the *lookup table* of real class configurations
   (:meth:`DefectBank.class_sets`: which sets of classes occur together in one image, and how
   often): a configuration holding the primary class is drawn in proportion to its image count,
   its classes are kept (at most ``max_defects``, the primary first), and the number of defects is
   drawn uniformly from ``len(classes)..max_defects``; extra defects take classes of that
   configuration in proportion to their probabilities. On Magnetic Tile (one class per image) this
   gives 1 to 3 defects, all of the primary class.
2. **Blob crops.** For each defect, a random source image of its class and a random non-empty
   subset of its blobs (:meth:`DefectBank.sample_blobs`); only the blob pixels are pasted.
3. **Crop jitter and displacement.** Each crop is colour-jittered (:mod:`albu_defects.core.color`) and
   placed uniformly at random over the whole image: its blobs' box lands inside the image when it
   fits, and covers the image along an axis where it does not.
4. **Priority.** The crops get a random priority and are pasted back to front, so where they
   overlap the front crop wins, in the image and in the mask. Nothing outside the pasted blob
   pixels changes at this point (:func:`paste_defects`).
5. **Global stage** (:func:`apply_global_stage`): random horizontal and vertical flips, then a
   circular shift (a scroll: pixels leaving one side come back on the other) on each axis whose
   base image has no empty border on either side (:func:`empty_borders`; otherwise the empty band
   would land inside the image), then a colour jitter of the whole image.

Outputs of :class:`GuidedCropPaste`
    ``image``; ``mask``: the class-index mask (0 background, ``k`` = ``bank.classes[k-1]``), the
    input mask moved by the global stage with the pasted blob pixels written over it (created as
    uint8, or uint16 beyond 255 classes, when no ``mask`` is passed); ``class_vector``
    (:data:`CLASS_VECTOR_KEY`): float32 of length K, 1 for every class present in the output mask
    (a crop hidden entirely behind another one is not present); ``bboxes``: the input boxes moved
    by the global stage (a box the scroll wraps around an edge becomes two boxes, its labels copied),
    followed by one box per pasted blob around its visible pixels (two or four when the scroll
    wraps it). ``masks`` and ``keypoints`` follow the global stage.

Labels of the new boxes
    With ``label_fields`` in ``A.BboxParams``, every label field of a new box holds the class id
    (``bbox_label="id"``, default) or the class name (``bbox_label="name"``; a field that already
    holds numbers cannot take names: ``ValueError``). Without ``label_fields``, every extra column
    of the input boxes holds the class id; when the input has no boxes, new boxes get one extra
    column, the class id.

Images that already hold defects
    With ``skip_defective=True`` (default) a sample whose ``mask`` has any nonzero pixel is returned
    unchanged (the paper pastes on defect-free images only); without a ``mask`` the image is taken
    as defect-free. ``skip_defective=False`` pastes anyway, over the existing defects.

Class weights and YAML
    ``weights`` (``"uniform"``, ``"inverse_frequency"`` or K numbers) is serialized with the
    pipeline. ``class_weights`` (a :class:`~albu_defects.ClassWeights`) is runtime state: pass it to
    the constructor or assign ``transform.class_weights = weights`` after ``A.load``; it overrides
    ``weights`` while set, is read on every call (live across DataLoader workers) and is never
    written to YAML. The bank is serialized as its folder path (:func:`bank_reference`).

Dtypes and channels
    uint8, uint16 and float32; (H, W), (H, W, 1) and (H, W, C). The bank's crops must have the
    image's dtype and channel count (gray crops fit (H, W) and (H, W, 1) images), else
    ``ValueError``. ``border_threshold`` is a fraction of the dtype's white level (255, 65535, 1.0).
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import cv2
import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema
from pydantic import field_validator, model_validator

from albu_defects.bank import (
    DefectBank,
    DefectEntry,
    bank_reference,
    check_bank_arg,
    resolve_bank,
)
from albu_defects.blending import paste_into
from albu_defects.core.class_weights import ClassWeights
from albu_defects.core.color import JITTER_LIMITS, ColorJitterFactors, check_jitter, color_jitter, sample_color_jitter
from albu_defects.core.geometry import mask_bbox, placement_overlap, random_top_left
from albu_defects.core.parallel import cached_per_object, ordered_map
from albu_defects.core.transform import DefectTransform, input_image
from albu_defects.core.validation import (
    check_class_mask,
    check_image,
    check_int,
    check_probability,
    dtype_max,
    image_hw,
    num_channels,
)
from albu_defects.methods.injection.functional import match_channels

__all__ = [
    "CLASS_VECTOR_KEY",
    "Borders",
    "ConfigurationTable",
    "GlobalStage",
    "GuidedCropOptions",
    "GuidedCropPaste",
    "GuidedCropPlan",
    "GuidedCropResult",
    "PlacedDefect",
    "SynthesizedSample",
    "apply_global_stage",
    "blob_boxes",
    "blob_owner_map",
    "class_probabilities",
    "configuration_table",
    "empty_borders",
    "plan_guided_crop",
    "paste_defects",
    "render_guided_crop",
    "render_labels",
    "present_classes",
    "sample_configuration",
    "sample_global_stage",
    "stage_bboxes",
    "stage_geometry",
    "stage_keypoints",
    "synthesize",
]

#: Output key of the multi-label vector (float32, length K) of the classes present in the output mask.
CLASS_VECTOR_KEY = "class_vector"
#: An image side has an empty border when one of its outermost lines (this fraction of the side, at
#: least one line) has a mean at or below ``border_threshold`` times the white level.
BORDER_DEPTH_FRACTION = 0.02

Box = tuple[int, int, int, int, int]  # pixel (x_min, y_min, x_max, y_max, class_id), ends exclusive


# --------------------------------------------------------------------------- options
class GuidedCropOptions(NamedTuple):
    """Every knob of one Guided-Crop draw (the arguments of :class:`GuidedCropPaste` of the same names).

    Jitter strengths follow :func:`~albu_defects.sample_color_jitter`: a number ``x`` draws a factor
    in ``[1 - x, 1 + x]`` (hue: a shift in ``[-x, x]`` turns), a pair is a ``(low, high)`` range.
    ``crop_*`` jitter each crop, the others the whole image at the end.
    """

    max_defects: int = 3
    crop_brightness: float | tuple[float, float] = 0.2
    crop_contrast: float | tuple[float, float] = 0.2
    crop_saturation: float | tuple[float, float] = 0.1
    crop_hue: float | tuple[float, float] = 0.0
    brightness: float | tuple[float, float] = 0.1
    contrast: float | tuple[float, float] = 0.1
    saturation: float | tuple[float, float] = 0.0
    hue: float | tuple[float, float] = 0.0
    flip_p: float = 0.5
    shift_limit: float = 0.5
    border_threshold: float = 0.1

    def checked(self) -> GuidedCropOptions:
        """These options, validated (``ValueError`` naming the argument)."""
        max_defects = check_int(self.max_defects, "max_defects", 1, "(the paper uses up to 3)")
        for prefix in ("crop_", ""):
            for kind in JITTER_LIMITS:
                check_jitter(kind, getattr(self, prefix + kind), prefix + kind)
        check_probability(self.flip_p, "flip_p")
        if not 0.0 <= float(self.shift_limit) <= 1.0:
            raise ValueError(f"shift_limit must lie in [0, 1] (a fraction of the image side), got {self.shift_limit}")
        if not 0.0 <= float(self.border_threshold) <= 1.0:
            raise ValueError(
                f"border_threshold must lie in [0, 1] (a fraction of the white level), got {self.border_threshold}"
            )
        return self._replace(max_defects=max_defects)

    @property
    def crop_jitter(self) -> tuple[Any, Any, Any, Any]:
        return self.crop_brightness, self.crop_contrast, self.crop_saturation, self.crop_hue

    @property
    def image_jitter(self) -> tuple[Any, Any, Any, Any]:
        return self.brightness, self.contrast, self.saturation, self.hue


# --------------------------------------------------------------------------- the lookup table
class ConfigurationTable(NamedTuple):
    """The bank's real class configurations: which class sets occur in one image, and how often."""

    configurations: tuple[tuple[int, ...], ...]  # sorted class ids, defect-free () left out
    counts: np.ndarray  # images per configuration (float64)
    available: np.ndarray  # bool (K,): the class has entries in the bank
    images: np.ndarray  # source images per class (float64 (K,))
    crop_kinds: frozenset[tuple[str, int]]  # (dtype name, channels) of the bank's crops


_TABLES: dict[int, tuple[weakref.ref, ConfigurationTable]] = {}


def configuration_table(bank: DefectBank) -> ConfigurationTable:
    """The lookup table of ``bank`` (computed once per bank object)."""
    return cached_per_object(_TABLES, bank, _configuration_table)


def _configuration_table(bank: DefectBank) -> ConfigurationTable:
    sets = {config: count for config, count in bank.class_sets().items() if config}
    if not sets:
        raise ValueError("the bank holds no defects; Guided-Crop needs at least one defect entry")
    counts = bank.counts()
    return ConfigurationTable(
        configurations=tuple(sets),
        counts=np.array(list(sets.values()), np.float64),
        available=np.array([counts[name]["entries"] > 0 for name in bank.classes]),
        images=np.array([counts[name]["images"] for name in bank.classes], np.float64),
        crop_kinds=frozenset((e.crop.dtype.name, num_channels(e.crop)) for e in bank.entries),
    )


def class_probabilities(
    weights: ClassWeights | Sequence[float] | np.ndarray | str | None, bank: DefectBank
) -> np.ndarray:
    """Class probabilities (float64, length K, summing to 1) from any accepted ``weights``.

    ``None`` or ``"uniform"``: equal over the classes that have entries; ``"inverse_frequency"``:
    proportional to 1 / (images of the class); K non-negative numbers (normalized); or a
    :class:`ClassWeights` (its current probabilities). Classes without entries get 0.
    """
    k = len(bank.classes)
    table = configuration_table(bank)
    if weights is None or (isinstance(weights, str) and weights == "uniform"):
        values = table.available.astype(np.float64)
    elif isinstance(weights, str) and weights == "inverse_frequency":
        values = np.divide(1.0, table.images, out=np.zeros(k), where=table.images > 0)
    elif isinstance(weights, str):
        raise ValueError(
            f"weights must be 'uniform', 'inverse_frequency', K numbers or a ClassWeights, got {weights!r}"
        )
    elif isinstance(weights, ClassWeights):
        if weights.num_classes != k:
            raise ValueError(
                f"class_weights has {weights.num_classes} classes but the bank has {k} {list(bank.classes)}; "
                "create it with ClassWeights(bank.classes)"
            )
        values = weights.probabilities
    else:
        try:
            values = np.asarray(weights, np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"weights must be K={k} numbers, got {weights!r}") from None
        if values.shape != (k,) or not np.isfinite(values).all() or (values < 0).any():
            raise ValueError(
                f"weights must be {k} finite numbers >= 0 (one per class {list(bank.classes)}), got {weights!r}"
            )
    values = np.where(table.available, values, 0.0)
    total = values.sum()
    if not total > 0:
        raise ValueError(
            f"weights give zero probability to every class with defects in the bank "
            f"({[c for c, a in zip(bank.classes, table.available, strict=True) if a]})"
        )
    return values / total


def sample_configuration(
    table: ConfigurationTable, probabilities: np.ndarray, max_defects: int, rng: np.random.Generator
) -> tuple[int, ...]:
    """The class id of each defect to paste (primary class first), drawn as the module docstring says."""
    weights = np.where(table.available, np.asarray(probabilities, np.float64), 0.0)
    if not weights.sum() > 0:
        raise ValueError("the class probabilities give zero weight to every class with defects in the bank")
    primary = int(rng.choice(weights.size, p=weights / weights.sum())) + 1
    holding = [i for i, config in enumerate(table.configurations) if primary in config]
    counts = table.counts[holding]
    config = table.configurations[holding[int(rng.choice(len(holding), p=counts / counts.sum()))]]
    others = [c for c in config if c != primary]
    rng.shuffle(others)
    chosen = [primary, *others][:max_defects]
    count = int(rng.integers(len(chosen), max_defects + 1))
    if count > len(chosen):
        shares = weights[np.array(chosen) - 1]
        shares = shares / shares.sum() if shares.sum() > 0 else np.full(len(chosen), 1.0 / len(chosen))
        chosen += [int(c) for c in rng.choice(chosen, size=count - len(chosen), p=shares)]
    return tuple(chosen)


# --------------------------------------------------------------------------- placement and compositing
class PlacedDefect(NamedTuple):
    """One blob crop to paste: the entry restricted to its blobs, where its crop's corner lands, its jitter."""

    entry: DefectEntry
    top_left: tuple[int, int]
    jitter: ColorJitterFactors


def paste_defects(image: np.ndarray, defects: Sequence[PlacedDefect]) -> np.ndarray:
    """Jitter each crop and hard-paste its blob pixels, back to front (the last defect is in front).

    A new image; only the pasted blob pixels differ from ``image``.
    """
    out = image.copy()
    for defect in defects:
        crop = color_jitter(match_channels(defect.entry.crop, image), *defect.jitter)
        paste_into(out, crop, defect.entry.mask, defect.top_left)
    return out


def blob_owner_map(
    hw: tuple[int, int], defects: Sequence[PlacedDefect]
) -> tuple[np.ndarray, np.ndarray, list[tuple[slice, slice] | None]]:
    """Which pasted blob shows at each pixel (0 = none), painted back to front like :func:`paste_defects`.

    Returns ``(owner, blob_classes, windows)``: ``owner`` ((H, W), uint8 when there are fewer than
    256 blobs, else int32) holds blob ids 1..B, ``blob_classes[id]`` is the class id of blob ``id``
    (``blob_classes[0] = 0``) and ``windows[id]`` the image window its crop covers (``None`` when it
    lies outside).
    """
    total = sum(d.entry.num_blobs for d in defects)
    owner = np.zeros(hw, np.uint8 if total < 256 else np.int32)
    blob_classes = [0]
    windows: list[tuple[slice, slice] | None] = [None]
    for defect in defects:
        entry = defect.entry
        first = len(blob_classes)
        overlap = placement_overlap(hw, entry.hw, defect.top_left)
        blob_classes += [entry.class_id] * entry.num_blobs
        windows += [None if overlap is None else overlap.target] * entry.num_blobs
        if overlap is None:
            continue
        labels = entry.blob_labels[overlap.source]
        np.copyto(owner[overlap.target], labels.astype(owner.dtype) + (first - 1), where=labels > 0, casting="unsafe")
    return owner, np.array(blob_classes, np.int64), windows


# --------------------------------------------------------------------------- the global stage
class Borders(NamedTuple):
    """Which sides of an image have an empty (dark) border band."""

    top: bool
    bottom: bool
    left: bool
    right: bool


def empty_borders(image: np.ndarray, threshold: float = 0.1) -> Borders:
    """Detect empty bands: a side is empty when one of its outermost lines is dark on average.

    The outermost ``max(1, ceil(BORDER_DEPTH_FRACTION * side))`` rows (columns) of each side are
    checked; a line is empty when its mean over pixels and channels is ``<= threshold`` times the
    dtype's white level.
    """
    check_image(image, "image")
    h, w = image_hw(image)
    limit = float(threshold) * dtype_max(image.dtype)
    depth_y, depth_x = max(1, math.ceil(BORDER_DEPTH_FRACTION * h)), max(1, math.ceil(BORDER_DEPTH_FRACTION * w))
    pixels = image if image.ndim == 3 else image[..., None]

    def rows_empty(band: np.ndarray) -> bool:
        return bool((band.mean(axis=(1, 2), dtype=np.float64) <= limit).any())

    def cols_empty(band: np.ndarray) -> bool:
        return bool((band.mean(axis=(0, 2), dtype=np.float64) <= limit).any())

    return Borders(
        top=rows_empty(pixels[:depth_y]),
        bottom=rows_empty(pixels[h - depth_y :]),
        left=cols_empty(pixels[:, :depth_x]),
        right=cols_empty(pixels[:, w - depth_x :]),
    )


class GlobalStage(NamedTuple):
    """The whole-image step: flips, then a circular shift ``(dy, dx)`` in pixels, then a colour jitter."""

    hflip: bool = False
    vflip: bool = False
    shift: tuple[int, int] = (0, 0)
    jitter: ColorJitterFactors = ColorJitterFactors()


def sample_global_stage(
    image_hw: tuple[int, int], borders: Borders, options: GuidedCropOptions, rng: np.random.Generator
) -> GlobalStage:
    """Flips with ``flip_p`` each; a shift of up to ``shift_limit`` of the side on each axis whose ends are not empty."""
    hflip = bool(rng.random() < options.flip_p)
    vflip = bool(rng.random() < options.flip_p)
    fractions = rng.uniform(-options.shift_limit, options.shift_limit, size=2)
    dy = 0 if borders.top or borders.bottom else round(float(fractions[0]) * image_hw[0])
    dx = 0 if borders.left or borders.right else round(float(fractions[1]) * image_hw[1])
    jitter = sample_color_jitter(rng, *options.image_jitter)
    return GlobalStage(hflip, vflip, (dy % image_hw[0], dx % image_hw[1]), jitter)


def stage_geometry(array: np.ndarray, stage: GlobalStage) -> np.ndarray:
    """``array`` ((H, W) or (H, W, C)) flipped and circularly shifted by ``stage`` (a new array)."""
    out = array
    if stage.hflip:
        out = out[:, ::-1]
    if stage.vflip:
        out = out[::-1]
    if stage.shift != (0, 0):
        return np.roll(out, stage.shift, axis=(0, 1))
    return out.copy() if out is array else np.ascontiguousarray(out)


def apply_global_stage(image: np.ndarray, stage: GlobalStage) -> np.ndarray:
    """:func:`stage_geometry`, then the stage's colour jitter (a new image, same dtype and shape)."""
    moved = stage_geometry(image, stage)
    if stage.jitter == ColorJitterFactors():
        return moved
    return color_jitter(moved, *stage.jitter)


def _axis_pieces(start: int, stop: int, side: int, flip: bool, shift: int) -> list[tuple[int, int]]:
    if flip:
        start, stop = side - stop, side - start
    if shift == 0:
        return [(start, stop)]
    begin = (start + shift) % side
    end = begin + (stop - start)
    return [(begin, end)] if end <= side else [(begin, side), (0, end - side)]


def blob_boxes(
    owner: np.ndarray,
    blob_classes: np.ndarray,
    windows: Sequence[tuple[slice, slice] | None],
    stage: GlobalStage,
) -> list[Box]:
    """Pixel boxes ``(x_min, y_min, x_max, y_max, class_id)`` of the visible pixels of each blob.

    ``owner`` is the owner map after ``stage`` (:func:`stage_geometry`), ``windows`` the blobs'
    windows before it (:func:`blob_owner_map`). A blob the shift wraps around an edge gets one box per
    piece; a blob hidden entirely gets none.
    """
    h, w = owner.shape
    boxes: list[Box] = []
    for blob, window in enumerate(windows):
        if window is None:
            continue
        rows = _axis_pieces(window[0].start, window[0].stop, h, stage.vflip, stage.shift[0])
        cols = _axis_pieces(window[1].start, window[1].stop, w, stage.hflip, stage.shift[1])
        for y0, y1 in rows:
            for x0, x1 in cols:
                box = mask_bbox(owner[y0:y1, x0:x1] == blob)
                if box is not None:
                    boxes.append((x0 + box[1], y0 + box[0], x0 + box[3], y0 + box[2], int(blob_classes[blob])))
    return boxes


def _roll_axis(boxes: np.ndarray, low: int, high: int, fraction: float) -> np.ndarray:
    """Normalized boxes shifted circularly by ``fraction`` along one axis; wrapped boxes split in two."""
    if fraction == 0 or not len(boxes):
        return boxes
    size = boxes[:, high] - boxes[:, low]
    whole = size >= 1.0
    begin = np.mod(boxes[:, low] + fraction, 1.0)
    end = begin + size
    moved = boxes.copy()
    moved[:, low] = np.where(whole, boxes[:, low], begin)
    moved[:, high] = np.where(whole, boxes[:, high], np.minimum(end, 1.0))
    wrapped = ~whole & (end > 1.0 + 1e-9)
    pieces = boxes[wrapped].copy()
    pieces[:, low] = 0.0
    pieces[:, high] = end[wrapped] - 1.0
    return np.concatenate([moved, pieces]) if len(pieces) else moved


def stage_bboxes(bboxes: np.ndarray, stage: GlobalStage, image_hw: tuple[int, int]) -> np.ndarray:
    """Normalized albumentations boxes ``(N, 4+k)`` moved by the stage's flips and shift (extra columns kept)."""
    out = np.array(bboxes, copy=True)
    if not out.size:
        return out
    if stage.hflip:
        out[:, [0, 2]] = 1.0 - out[:, [2, 0]]
    if stage.vflip:
        out[:, [1, 3]] = 1.0 - out[:, [3, 1]]
    out = _roll_axis(out, 0, 2, stage.shift[1] / image_hw[1])
    return _roll_axis(out, 1, 3, stage.shift[0] / image_hw[0])


def stage_keypoints(keypoints: np.ndarray, stage: GlobalStage, image_hw: tuple[int, int]) -> np.ndarray:
    """Albumentations keypoints ``(N, 4+k)`` (x, y, ... in pixels) moved by the stage (flips as A.HorizontalFlip)."""
    from albumentations.augmentations.geometric import functional as fgeometric

    out = np.array(keypoints, copy=True)
    if not out.size:
        return out
    if stage.hflip:
        out = fgeometric.keypoints_hflip(out, image_hw[1])
    if stage.vflip:
        out = fgeometric.keypoints_vflip(out, image_hw[0])
    out[:, 0] = np.mod(out[:, 0] + stage.shift[1], image_hw[1])
    out[:, 1] = np.mod(out[:, 1] + stage.shift[0], image_hw[0])
    return out


# --------------------------------------------------------------------------- one sample
class GuidedCropPlan(NamedTuple):
    """Everything drawn for one sample: defects in paint order (back first) and the global stage."""

    classes: tuple[int, ...]  # class id of each defect as drawn (primary first)
    defects: tuple[PlacedDefect, ...]  # paint order: the last one is in front
    stage: GlobalStage
    order: tuple[int, ...] = ()  # defects[j] is the drawn defect order[j] (the random priority)


class GuidedCropResult(NamedTuple):
    """One rendered sample: image, class-index mask, blob boxes (pixels) and the multi-label vector."""

    image: np.ndarray
    mask: np.ndarray
    bboxes: list[Box]
    class_vector: np.ndarray


def check_bank_matches(table: ConfigurationTable, image: np.ndarray) -> None:
    """``ValueError`` unless the bank's crops have the image's dtype and channel count."""
    kind = (image.dtype.name, num_channels(image))
    if kind not in table.crop_kinds and (image.dtype.name, 1) not in table.crop_kinds:  # gray crops are repeated
        have = ", ".join(f"{d} with {c} channel(s)" for d, c in sorted(table.crop_kinds))
        raise ValueError(
            f"image is {image.dtype} with {kind[1]} channel(s) but the bank's crops are {have}: "
            "convert the image, or build the bank from data of the same dtype and channels"
        )


def plan_guided_crop(
    bank: DefectBank,
    image: np.ndarray,
    probabilities: np.ndarray,
    rng: np.random.Generator,
    options: GuidedCropOptions | None = None,
) -> GuidedCropPlan:
    """Draw one sample's configuration, blob crops, placements, jitters, priorities and global stage."""
    options = GuidedCropOptions() if options is None else options
    table = configuration_table(bank)
    check_bank_matches(table, image)
    hw = image_hw(image)
    classes = sample_configuration(table, probabilities, options.max_defects, rng)
    defects = []
    for class_id in classes:
        entry = bank.sample_blobs(class_id, rng)
        top_left = random_top_left(entry.mask, hw, rng, cover_if_larger=True)
        defects.append(PlacedDefect(entry, top_left, sample_color_jitter(rng, *options.crop_jitter)))
    priority = rng.permutation(len(defects))  # paint order: the highest priority is pasted last
    ordered = tuple(defects[i] for i in priority)
    stage = sample_global_stage(hw, empty_borders(image, options.border_threshold), options, rng)
    return GuidedCropPlan(classes, ordered, stage, tuple(int(i) for i in priority))


def _class_vector(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 (K,): 1 for every class id 1..K present in a class-index mask."""
    values = mask.ravel()
    if not values.any():
        return np.zeros(num_classes, np.float32)
    if values.dtype in (np.uint8, np.uint16):
        counts = np.bincount(values, minlength=num_classes + 1)
    else:
        present = np.unique(values)
        counts = np.zeros(num_classes + 1, np.int64)
        counts[present[(present >= 1) & (present <= num_classes)]] = 1
    return (counts[1 : num_classes + 1] > 0).astype(np.float32)


def present_classes(boxes: Sequence[Box], owner: np.ndarray, base: np.ndarray | None, num_classes: int) -> np.ndarray:
    """The multi-label vector of a composite: visible blobs (they have boxes) plus base classes left uncovered."""
    vector = np.zeros(num_classes, np.float32)
    for box in boxes:
        vector[box[4] - 1] = 1.0
    if base is not None and base.any():
        uncovered = np.where(owner == 0, base, 0)
        vector = np.maximum(vector, _class_vector(uncovered, num_classes))
    return vector


def _mask_dtype(num_classes: int) -> np.dtype:
    return np.dtype(np.uint8) if num_classes <= 255 else np.dtype(np.uint16)


def composite_mask(
    owner: np.ndarray, blob_classes: np.ndarray, base: np.ndarray | None, num_classes: int
) -> np.ndarray:
    """The class-index mask: ``base`` (zeros if ``None``) with each owned pixel set to its blob's class."""
    dtype = _mask_dtype(num_classes) if base is None else base.dtype
    if np.issubdtype(dtype, np.integer) and num_classes > np.iinfo(dtype).max:
        raise ValueError(f"mask has dtype {dtype}, too small for class ids up to {num_classes}; use a wider dtype")
    if owner.dtype == np.uint8 and dtype == np.uint8:
        table = np.zeros(256, np.uint8)
        table[: blob_classes.size] = blob_classes
        pasted = cv2.LUT(owner, table)  # a gather over the image, much faster than fancy indexing
    else:
        pasted = blob_classes.astype(dtype)[owner]
    if base is None:
        return pasted
    out = base.copy()
    np.copyto(out, pasted, where=owner > 0)
    return out


def render_labels(
    hw: tuple[int, int], plan: GuidedCropPlan, num_classes: int, mask: np.ndarray | None = None
) -> tuple[np.ndarray, list[Box], np.ndarray]:
    """The labels of ``plan`` on an image of size ``hw``: ``(class mask, blob boxes, class vector)``.

    ``mask`` ((H, W) class indices, or ``None`` for zeros) is moved by the global stage and the
    visible blob pixels are written over it.
    """
    owner, blob_classes, windows = blob_owner_map(hw, plan.defects)
    owner = stage_geometry(owner, plan.stage)
    base = None if mask is None else stage_geometry(mask.reshape(hw), plan.stage)
    boxes = blob_boxes(owner, blob_classes, windows, plan.stage)
    return (
        composite_mask(owner, blob_classes, base, num_classes),
        boxes,
        present_classes(boxes, owner, base, num_classes),
    )


def render_guided_crop(
    image: np.ndarray, plan: GuidedCropPlan, num_classes: int, mask: np.ndarray | None = None
) -> GuidedCropResult:
    """Paste ``plan``'s defects on ``image`` and apply its global stage; the mask is ``mask`` (or zeros) updated."""
    final_mask, boxes, vector = render_labels(image_hw(image), plan, num_classes, mask)
    return GuidedCropResult(
        apply_global_stage(paste_defects(image, plan.defects), plan.stage), final_mask, boxes, vector
    )


# --------------------------------------------------------------------------- the transform
class GuidedCropPaste(DefectTransform):
    """Guided-Crop: paste real defect blobs on a defect-free image, classes guided by per-class loss.

    Args:
        bank: a :class:`~albu_defects.DefectBank` or the folder of a saved one (serialized as the path).
        max_defects: at most this many defects (crops) per image.
        weights: class probabilities when no ``class_weights`` is set: ``"uniform"``,
            ``"inverse_frequency"`` (1 / images of the class) or K numbers (one per bank class).
        class_weights: live :class:`~albu_defects.ClassWeights` (runtime state, never serialized;
            can be assigned later: ``transform.class_weights = weights``).
        crop_brightness, crop_contrast, crop_saturation, crop_hue: colour jitter of each crop.
        brightness, contrast, saturation, hue: colour jitter of the whole image at the end.
        flip_p: probability of a horizontal flip, and of a vertical flip (each).
        shift_limit: circular shift of up to this fraction of the side, on axes without empty borders.
        border_threshold: a border line whose mean is at or below this fraction of the white level is empty.
        skip_defective: return samples whose ``mask`` already holds defects unchanged.
        bbox_label: what the label fields of new boxes hold: ``"id"`` (class id) or ``"name"``.
        p: probability of applying the transform.

    Targets: image, mask, masks, bboxes, keypoints; adds ``class_vector`` (and ``mask`` when not
    given). See the module docstring for every output, label handling and the YAML rules.
    """

    class InitSchema(BaseTransformInitSchema):
        bank: Any
        max_defects: int
        weights: Literal["uniform", "inverse_frequency"] | list[float]
        class_weights: Any
        crop_brightness: float | tuple[float, float]
        crop_contrast: float | tuple[float, float]
        crop_saturation: float | tuple[float, float]
        crop_hue: float | tuple[float, float]
        brightness: float | tuple[float, float]
        contrast: float | tuple[float, float]
        saturation: float | tuple[float, float]
        hue: float | tuple[float, float]
        flip_p: float
        shift_limit: float
        border_threshold: float
        skip_defective: bool
        bbox_label: Literal["id", "name"]

        @field_validator("bank")
        @classmethod
        def _bank(cls, value: Any) -> Any:
            value = check_bank_arg(value)
            resolve_bank(value)  # a clear ValueError now rather than in a worker
            return value

        @field_validator("class_weights")
        @classmethod
        def _class_weights(cls, value: Any) -> Any:
            if value is not None and not isinstance(value, ClassWeights):
                raise ValueError(f"class_weights must be a ClassWeights or None, got {type(value).__name__}")
            return value

        @model_validator(mode="after")
        def _options(self) -> Any:
            GuidedCropOptions(**{name: getattr(self, name) for name in GuidedCropOptions._fields}).checked()
            bank = resolve_bank(self.bank)
            class_probabilities(self.weights, bank)
            if self.class_weights is not None:
                class_probabilities(self.class_weights, bank)
            return self

    def __init__(
        self,
        bank: str | DefectBank,
        max_defects: int = 3,
        weights: Literal["uniform", "inverse_frequency"] | list[float] = "uniform",
        class_weights: ClassWeights | None = None,
        crop_brightness: float | tuple[float, float] = 0.2,
        crop_contrast: float | tuple[float, float] = 0.2,
        crop_saturation: float | tuple[float, float] = 0.1,
        crop_hue: float | tuple[float, float] = 0.0,
        brightness: float | tuple[float, float] = 0.1,
        contrast: float | tuple[float, float] = 0.1,
        saturation: float | tuple[float, float] = 0.0,
        hue: float | tuple[float, float] = 0.0,
        flip_p: float = 0.5,
        shift_limit: float = 0.5,
        border_threshold: float = 0.1,
        skip_defective: bool = True,
        bbox_label: Literal["id", "name"] = "id",
        p: float = 0.5,
    ):
        super().__init__(p=p)
        self.bank = bank
        self.max_defects = max_defects
        self.weights = weights
        self.class_weights = class_weights
        self.crop_brightness = crop_brightness
        self.crop_contrast = crop_contrast
        self.crop_saturation = crop_saturation
        self.crop_hue = crop_hue
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue
        self.flip_p = flip_p
        self.shift_limit = shift_limit
        self.border_threshold = border_threshold
        self.skip_defective = skip_defective
        self.bbox_label = bbox_label

    # -- serialization: the bank as its path, the live weights left out --------------------------
    def get_transform_init_args(self) -> dict[str, Any]:
        args = super().get_transform_init_args()
        args.pop("class_weights", None)
        if isinstance(self.bank, DefectBank) and self.bank.path is not None:
            args["bank"] = str(self.bank.path)
        return args

    def to_dict_private(self) -> dict[str, Any]:
        state = super().to_dict_private()
        state["bank"] = bank_reference(self.bank)  # an unsaved bank cannot be serialized: ValueError
        return state

    # -- helpers -----------------------------------------------------------------------------------
    @property
    def options(self) -> GuidedCropOptions:
        return GuidedCropOptions(**{name: getattr(self, name) for name in GuidedCropOptions._fields})

    def resolved_bank(self, refresh: bool = False) -> DefectBank:
        """The bank object (a path is loaded once per process; ``refresh`` checks the folder again)."""
        if isinstance(self.bank, DefectBank):
            return self.bank
        cached = getattr(self, "_bank_cache", None)
        if refresh or cached is None or cached[0] != self.bank:
            cached = (self.bank, resolve_bank(self.bank))
            self._bank_cache = cached
        return cached[1]

    def current_probabilities(self, bank: DefectBank | None = None) -> np.ndarray:
        """The class probabilities the next call draws from (live ``class_weights`` if set, else ``weights``)."""
        bank = self.resolved_bank() if bank is None else bank
        return class_probabilities(self.class_weights if self.class_weights is not None else self.weights, bank)

    @staticmethod
    def _input_mask(data: dict[str, Any], hw: tuple[int, int], num_classes: int) -> np.ndarray | None:
        mask = data.get("mask")
        if mask is None:
            return None
        if isinstance(mask, np.ndarray) and mask.dtype == bool:
            raise ValueError("mask must be an integer class-index mask (0 = background, k = bank class k), not bool")
        # class ids beyond the bank's would silently drop out of class_vector
        return check_class_mask(mask, hw, "mask", num_classes=num_classes)

    # -- the hook ----------------------------------------------------------------------------------
    def sample(self, params: dict[str, Any], data: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image = input_image(data)
        hw = image_hw(image)
        bank = self.resolved_bank(refresh=True)
        mask = self._input_mask(data, hw, len(bank.classes))
        if self.skip_defective and mask is not None and mask.any():
            return {"skip": True}
        plan = plan_guided_crop(bank, image, self.current_probabilities(bank), rng, self.options)
        final_mask, boxes, vector = render_labels(hw, plan, len(bank.classes), mask)
        return {"skip": False, "plan": plan, "final_mask": final_mask, "blob_boxes": boxes, CLASS_VECTOR_KEY: vector}

    def apply(
        self, img: np.ndarray, skip: bool = True, plan: GuidedCropPlan | None = None, **params: Any
    ) -> np.ndarray:
        if skip or plan is None:
            return img
        return apply_global_stage(paste_defects(img, plan.defects), plan.stage)

    def apply_to_mask(
        self, mask: np.ndarray, skip: bool = True, final_mask: np.ndarray | None = None, **params: Any
    ) -> np.ndarray:
        if skip or final_mask is None:
            return mask
        return final_mask.reshape(mask.shape)

    def apply_to_masks(self, masks: Any, skip: bool = True, plan: GuidedCropPlan | None = None, **params: Any) -> Any:
        if skip or plan is None:
            return masks
        moved = [stage_geometry(np.asarray(m), plan.stage) for m in masks]
        return np.stack(moved) if isinstance(masks, np.ndarray) else moved

    def apply_to_keypoints(
        self, keypoints: np.ndarray, skip: bool = True, plan: GuidedCropPlan | None = None, **params: Any
    ) -> np.ndarray:
        if skip or plan is None:
            return keypoints
        return stage_keypoints(keypoints, plan.stage, params["shape"][:2])

    def apply_to_bboxes(
        self,
        bboxes: np.ndarray,
        skip: bool = True,
        plan: GuidedCropPlan | None = None,
        blob_boxes: Sequence[Box] = (),
        **params: Any,
    ) -> np.ndarray:
        if skip or plan is None:
            return bboxes
        h, w = params["shape"][:2]
        existing = np.asarray(bboxes)
        moved = stage_bboxes(existing, plan.stage, (h, w)) if existing.size else None
        if not blob_boxes:
            return moved if moved is not None else bboxes
        label_fields = self.processor_label_fields("bboxes")
        columns = existing.shape[1] if existing.ndim == 2 and existing.size else 4 + (len(label_fields) or 1)
        rows = np.zeros((len(blob_boxes), columns), np.float64)
        bank = self.resolved_bank()
        user_columns = columns - len(label_fields)
        for i, (x0, y0, x1, y1, class_id) in enumerate(blob_boxes):
            rows[i, :4] = (x0 / w, y0 / h, x1 / w, y1 / h)
            rows[i, 4:user_columns] = class_id
            for j, field in enumerate(label_fields):
                name = bank.classes[class_id - 1]
                rows[i, user_columns + j] = self._encode_label(field, class_id, name, moved is not None)
        if moved is None:
            return rows.astype(existing.dtype if existing.dtype.kind == "f" else np.float32)
        return np.concatenate([moved, rows.astype(moved.dtype)])

    def _encode_label(self, field: str, class_id: int, class_name: str, boxes_came_in: bool) -> float:
        """The encoded value of a new box's label in ``field``, registered with the Compose's label encoder.

        albumentations 2.0 encodes a field per call: numbers pass through as they are, anything else
        through a persistent label encoder. A field whose labels are numbers in this call (or in its
        first call ever) takes class ids only; otherwise the encoder learns the id or the name.
        """
        manager = getattr(self.get_processor("bboxes"), "label_manager", None)
        metadata_by_field = getattr(manager, "metadata", None)
        if metadata_by_field is None:  # another albumentations: labels are the class id
            return float(class_id)
        metadata = metadata_by_field["bboxes"].get(field)
        if metadata is None:  # no box ever came in: this call defines the field (open to ids and names)
            from albumentations.core.label_manager import LabelEncoder, LabelMetadata

            encoder = LabelEncoder()
            encoder.is_numerical = False
            metadata = LabelMetadata(input_type=list, is_numerical=False, encoder=encoder)
            metadata_by_field["bboxes"][field] = metadata
        encoder = metadata.encoder
        numeric = metadata.is_numerical or encoder is None or (boxes_came_in and encoder.is_numerical)
        if numeric:
            if self.bbox_label == "name":
                raise ValueError(
                    f"label field {field!r} holds numbers, so new boxes cannot be labelled by class name; "
                    "use bbox_label='id' or string labels"
                )
            return float(class_id)
        encoder.is_numerical = False  # the flag describes the last call's labels; none came in this one
        label: int | str = class_name if self.bbox_label == "name" else int(class_id)
        encoder.update([label])
        return float(encoder.classes_[label])

    # -- outputs -----------------------------------------------------------------------------------
    def extra_outputs(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        if params.get("skip", True):
            return self.default_outputs(data)
        outputs: dict[str, Any] = {CLASS_VECTOR_KEY: params[CLASS_VECTOR_KEY]}
        if data.get("mask") is None:
            outputs["mask"] = params["final_mask"]
        return outputs

    def default_outputs(self, data: dict[str, Any]) -> dict[str, Any]:
        num_classes = len(self.resolved_bank().classes)
        mask = data.get("mask")
        if isinstance(mask, np.ndarray) and mask.dtype != bool and np.issubdtype(mask.dtype, np.integer):
            return {CLASS_VECTOR_KEY: _class_vector(mask, num_classes)}
        outputs: dict[str, Any] = {CLASS_VECTOR_KEY: np.zeros(num_classes, np.float32)}
        image = input_image(data)
        if mask is None and image is not None:
            outputs["mask"] = np.zeros(image_hw(image), _mask_dtype(num_classes))
        return outputs


# --------------------------------------------------------------------------- offline synthesis
class SynthesizedSample(NamedTuple):
    """One synthetic image from :func:`synthesize`."""

    index: int
    image: np.ndarray
    mask: np.ndarray  # class-index mask (uint8, or uint16 beyond 255 classes)
    class_vector: np.ndarray  # float32 (K,)
    classes: tuple[str, ...]  # names of the classes present in the mask
    bboxes: list[Box]  # pixel (x_min, y_min, x_max, y_max, class_id) of each visible blob
    base_index: int  # which of bank.free_images it was pasted on


def synthesize_one(
    bank: DefectBank, index: int, probabilities: np.ndarray, seed: int, options: GuidedCropOptions
) -> SynthesizedSample:
    """Sample ``index`` of the stream ``seed``: depends on nothing else, so any thread order gives the same data."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    base_index = int(rng.integers(bank.num_free))
    base = bank.load_free(base_index)
    result = render_guided_crop(base, plan_guided_crop(bank, base, probabilities, rng, options), len(bank.classes))
    names = tuple(bank.classes[k] for k in np.flatnonzero(result.class_vector))
    return SynthesizedSample(index, result.image, result.mask, result.class_vector, names, result.bboxes, base_index)


def _synthesis_setup(
    bank: DefectBank | str | os.PathLike[str], n: int, weights: Any, seed: int, workers: int | None, options: dict
) -> tuple[DefectBank, np.ndarray, int, GuidedCropOptions, int]:
    bank = resolve_bank(bank)
    check_int(n, "n", 0, "(how many images to synthesize)")
    if bank.num_free == 0:
        raise ValueError("the bank has no defect-free images to paste on (build it from data with defect-free images)")
    unknown = sorted(set(options) - set(GuidedCropOptions._fields))
    if unknown:
        raise ValueError(f"unknown Guided-Crop options {unknown}; known: {list(GuidedCropOptions._fields)}")
    checked = GuidedCropOptions(**options).checked()
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    workers = check_int(workers, "workers", 1)
    return bank, class_probabilities(weights, bank), check_int(seed, "seed"), checked, workers


def synthesize(
    bank: DefectBank | str | os.PathLike[str],
    n: int,
    weights: ClassWeights | Sequence[float] | str | None = None,
    seed: int = 0,
    *,
    workers: int | None = None,
    progress: bool = True,
    **options: Any,
) -> Iterator[SynthesizedSample]:
    """Yield ``n`` Guided-Crop images pasted on the bank's defect-free images, in order (index 0..n-1).

    ``weights``: as :func:`class_probabilities` (a :class:`ClassWeights` is read once, at the start).
    ``options``: the :class:`GuidedCropOptions` fields (``max_defects``, jitters, ``flip_p``,
    ``shift_limit``, ``border_threshold``). Sample ``i`` depends only on ``(seed, i)``, the bank and
    the options, so the output is the same for any number of ``workers`` (threads; OpenCV and
    numpy release the GIL).
    """
    bank, probabilities, seed, checked, workers = _synthesis_setup(bank, n, weights, seed, workers, options)
    return ordered_map(
        lambda i: synthesize_one(bank, i, probabilities, seed, checked), int(n), workers, "Guided-Crop", progress
    )


def _write_encoded(path: Path, image: np.ndarray) -> None:
    """Encode ``image`` by the file's suffix (OpenCV defaults: PNG zlib level 1) and write it in one go."""
    ok, encoded = cv2.imencode(path.suffix, image)
    if not ok:
        raise ValueError(f"could not encode {path} ({image.dtype} {image.shape})")
    path.write_bytes(encoded.tobytes())


def synthesize_to_folder(
    bank: DefectBank | str | os.PathLike[str],
    out: str | os.PathLike[str],
    n: int,
    weights: ClassWeights | Sequence[float] | str | None = None,
    seed: int = 0,
    *,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    **options: Any,
) -> Path:
    """Write ``n`` synthetic images and masks under ``out`` and a manifest; returns ``out/manifest.json``.

    Layout: ``images/000000.png`` (uint8 / uint16 PNG; float32 images as ``.tiff``), ``masks/000000.png``
    (the class-index mask), ``manifest.json`` (bank, seed, n, class names, probabilities, options and
    one item per image: files, base image, class names, class vector, blob boxes in pixels) and
    ``manifest.csv`` (``index,image,mask,classes`` with classes joined by ``;``). Image and mask are
    written in the worker threads. A non-empty ``out`` is refused unless ``overwrite=True``.
    """
    import csv
    import json

    bank, probabilities, seed, checked, workers = _synthesis_setup(bank, n, weights, seed, workers, options)
    root = Path(out)
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and not overwrite)):
        raise ValueError(f"out {root} exists and is not an empty folder; pass overwrite=True (--overwrite) to reuse it")
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    digits = max(6, len(str(max(int(n) - 1, 0))))

    def work(index: int) -> dict[str, Any]:
        sample = synthesize_one(bank, index, probabilities, seed, checked)
        image = sample.image
        suffix = ".tiff" if image.dtype == np.float32 else ".png"
        if image.ndim == 3 and image.shape[2] in (3, 4):
            image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
        image_name = f"images/{index:0{digits}d}{suffix}"
        mask_name = f"masks/{index:0{digits}d}.png"
        # cv2.imencode + one buffered write: cv2.imwrite measured ~2 ms slower per file here (OpenCV 5)
        _write_encoded(root / image_name, image)
        _write_encoded(root / mask_name, sample.mask)
        base = bank.free_images[sample.base_index]
        return {
            "index": index,
            "image": image_name,
            "mask": mask_name,
            "base": base if isinstance(base, str) else f"free_images[{sample.base_index}]",
            "classes": list(sample.classes),
            "class_vector": [int(v) for v in sample.class_vector],
            "bboxes": [list(box) for box in sample.bboxes],
        }

    items = list(ordered_map(work, int(n), workers, "Guided-Crop synth", progress))
    manifest = {
        "format": "albu-defects-guided-crop",
        "bank": str(bank.path) if bank.path is not None else None,
        "n": int(n),
        "seed": seed,
        "classes": list(bank.classes),
        "probabilities": [float(p) for p in probabilities],
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in checked._asdict().items()},
        "bbox_format": "pascal_voc pixels: x_min, y_min, x_max, y_max, class_id",
        "items": items,
    }
    path = root / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "image", "mask", "classes"])
        for item in items:
            writer.writerow([item["index"], item["image"], item["mask"], ";".join(item["classes"])])
    return path
