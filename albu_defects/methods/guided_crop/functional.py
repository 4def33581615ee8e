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
   subset of its blobs (:meth:`DefectBank.draw_blobs`); only the blob pixels are pasted.
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
    ``image``; ``mask``: the class-index mask (0 background, ``k`` = ``bank.classes[k-1]``) or
    multi-hot (H, W, K) mask, the input mask moved by the global stage with the pasted blob pixels
    written over it (a pasted pixel shows its blob's class only; the mask is created as uint8, or
    uint16 beyond 255 classes, when no ``mask`` is passed); every mask target (``mask`` and extra
    mask targets of ``additional_targets``) is rendered from its own input in ``apply_to_mask``;
    ``class_vector`` (:data:`CLASS_VECTOR_KEY`): float32 of length K, 1 for every class present in
    the output mask (a crop hidden entirely behind another one is not present); ``anomaly_mask``
    (when passed) moved by the global stage, minus the pasted blob pixels; ``bboxes``: the input boxes moved
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

import weakref
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import cv2
import numpy as np

from albu_defects.bank import (
    DefectBank,
    DefectEntry,
)
from albu_defects.blending import paste_into
from albu_defects.core.class_weights import ClassWeights
from albu_defects.core.color import JITTER_LIMITS, ColorJitterFactors, check_jitter, color_jitter, sample_color_jitter
from albu_defects.core.geometry import Box, placement_overlap, random_top_left
from albu_defects.core.labels import CLASS_VECTOR_KEY, class_vector, is_multi_hot, paint_classes
from albu_defects.core.parallel import cached_per_object
from albu_defects.core.validation import (
    check_choice,
    check_int,
    check_probability,
    clip_unit_range,
    image_hw,
    num_channels,
)
from albu_defects.methods.injection.functional import match_channels, relative_scale, scale_defect

from .stage import (
    BlobBoxes,
    GlobalStage,
    apply_global_stage,
    blob_boxes,
    draw_global_stage,
    empty_borders,
    stage_geometry,
)

__all__ = [
    "CLASS_VECTOR_KEY",
    "BlobLayer",
    "ConfigurationTable",
    "GuidedCropOptions",
    "GuidedCropPlan",
    "GuidedCropResult",
    "PlacedDefect",
    "blob_owner_map",
    "class_probabilities",
    "configuration_table",
    "paste_defects",
    "plan_guided_crop",
    "render_blob_layer",
    "render_guided_crop",
    "render_mask",
    "render_labels",
    "draw_configuration",
    "entry_at_scale",
]

#: ``size_mode`` of Guided-Crop: ``"relative"`` scales each crop by (image size / its source image's
#: size), as DLI's ``size_mode="relative"``; ``"absolute"`` pastes it at the bank's pixel size.
SIZE_MODES: tuple[str, ...] = ("relative", "absolute")


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
    size_mode: Literal["relative", "absolute"] = "absolute"

    @classmethod
    def of(cls, source: Any) -> GuidedCropOptions:
        """The options held by ``source`` (a :class:`GuidedCropPaste`, or its schema) as attributes of the same names."""
        return cls(**{name: getattr(source, name) for name in cls._fields})

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
        check_choice(self.size_mode, SIZE_MODES, "size_mode")
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
    :class:`ClassWeights` (its current probabilities, read by class name: every bank class must be one
    of its classes). Classes without entries get 0.
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
        values = weights.probabilities_of(bank.classes)
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


def draw_configuration(
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


# --------------------------------------------------------------------------- one sample
class GuidedCropPlan(NamedTuple):
    """Everything drawn for one sample: defects in paint order (back first) and the global stage."""

    classes: tuple[int, ...]  # class id of each defect as drawn (primary first)
    defects: tuple[PlacedDefect, ...]  # paint order: the last one is in front
    stage: GlobalStage
    order: tuple[int, ...] = ()  # defects[j] is the drawn defect order[j] (the random priority)


class GuidedCropResult(NamedTuple):
    """One rendered sample: image, class-index mask, blob boxes (pixels) and their classes, the multi-label vector."""

    image: np.ndarray
    mask: np.ndarray
    bboxes: list[Box]  # (x_min, y_min, x_max, y_max) of each visible blob, ends exclusive
    bbox_classes: list[int]  # the class id of each box
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
    classes = draw_configuration(table, probabilities, options.max_defects, rng)
    defects = []
    for class_id in classes:
        entry = bank.draw_blobs(class_id, rng)
        if options.size_mode == "relative":
            entry = entry_at_scale(entry, hw)
        top_left = random_top_left(entry.mask, hw, rng, cover_if_larger=True)
        defects.append(PlacedDefect(entry, top_left, sample_color_jitter(rng, *options.crop_jitter)))
    priority = rng.permutation(len(defects))  # paint order: the highest priority is pasted last
    ordered = tuple(defects[i] for i in priority)
    stage = draw_global_stage(hw, empty_borders(image, options.border_threshold), options, rng)
    return GuidedCropPlan(classes, ordered, stage, tuple(int(i) for i in priority))


def entry_at_scale(entry: DefectEntry, target_hw: tuple[int, int]) -> DefectEntry:
    """``entry`` as it would be in its source image resized to ``target_hw`` (``size_mode="relative"``).

    Crop and mask are scaled by ``relative_scale(entry.source_hw, target_hw)`` with the injection
    core's :func:`~albu_defects.methods.injection.functional.scale_defect` (pixels by area or linear;
    the mask by coverage, never vanishing), so a bank built at native resolution pastes defects at
    the size they have in resized training images. Blobs are re-labelled on the scaled mask. The
    entry itself when the sizes match.
    """
    target_hw = (int(target_hw[0]), int(target_hw[1]))
    if tuple(entry.source_hw) == target_hw:
        return entry
    scale = relative_scale(entry.source_hw, target_hw)
    crop, mask, _ = scale_defect(entry.crop, entry.mask, scale)
    (h, w), (th, tw) = mask.shape, target_hw
    top = min(max(0, round(entry.bbox[1] * scale[0])), th - h)  # where the scaled crop sits in the scaled source
    left = min(max(0, round(entry.bbox[0] * scale[1])), tw - w)
    return DefectEntry(
        entry_id=entry.entry_id,
        class_id=entry.class_id,
        class_name=entry.class_name,
        source_id=entry.source_id,
        source_hw=target_hw,
        bbox=(left, top, left + w, top + h),
        crop=crop,
        mask=mask,
        blob_subset=entry.blob_subset,
    )


class BlobLayer(NamedTuple):
    """Where the plan's visible blobs land after the global stage: what every target is rendered from.

    ``owner`` ((H, W)) holds blob ids (0 = no blob), ``blob_classes[id]`` the class of blob ``id``,
    ``boxes`` the boxes of the visible pieces of each blob.
    """

    owner: np.ndarray
    blob_classes: np.ndarray
    boxes: BlobBoxes


def render_blob_layer(hw: tuple[int, int], plan: GuidedCropPlan) -> BlobLayer:
    """The :class:`BlobLayer` of ``plan`` on an image of size ``hw`` (depends on the plan and size only)."""
    owner, blob_classes, windows = blob_owner_map(hw, plan.defects)
    owner = stage_geometry(owner, plan.stage)
    return BlobLayer(owner, blob_classes, blob_boxes(owner, blob_classes, windows, plan.stage))


def class_mask_dtype(num_classes: int) -> np.dtype:
    return np.dtype(np.uint8) if num_classes <= 255 else np.dtype(np.uint16)


def composite_mask(
    owner: np.ndarray, blob_classes: np.ndarray, base: np.ndarray | None, num_classes: int
) -> np.ndarray:
    """``base`` (a class-index or multi-hot mask; zeros if ``None``) with each owned pixel set to its blob's class.

    A pasted pixel shows its blob's class only (see :func:`albu_defects.core.labels.paint_classes`).
    """
    index_dtype = base is not None and base.ndim == 2 and base.dtype != bool and np.issubdtype(base.dtype, np.integer)
    if index_dtype and num_classes > np.iinfo(base.dtype).max:
        raise ValueError(f"mask has dtype {base.dtype}, too small for class ids up to {num_classes}; use a wider dtype")
    if owner.dtype == np.uint8 and num_classes <= 255:
        table = np.zeros(256, np.uint8)
        table[: blob_classes.size] = blob_classes
        pasted = cv2.LUT(owner, table)  # a gather over the image, much faster than fancy indexing
    else:
        pasted = blob_classes[owner]
    if base is None:
        return pasted.astype(class_mask_dtype(num_classes), copy=False)
    return paint_classes(base, pasted)


def render_labels(
    hw: tuple[int, int], plan: GuidedCropPlan, num_classes: int, mask: np.ndarray | None = None
) -> tuple[np.ndarray, BlobBoxes, np.ndarray]:
    """The labels of ``plan`` on an image of size ``hw``: ``(mask, blob boxes and classes, class vector)``.

    ``mask`` (class-index (H, W) / (H, W, 1) or multi-hot (H, W, K), or ``None`` for zeros) is moved
    by the global stage and the visible blob pixels are written over it.
    """
    layer = render_blob_layer(hw, plan)
    final = render_mask(layer, plan, num_classes, mask, hw)
    return final, layer.boxes, class_vector(final, num_classes)


def render_mask(
    layer: BlobLayer, plan: GuidedCropPlan, num_classes: int, mask: np.ndarray | None, hw: tuple[int, int]
) -> np.ndarray:
    """``mask`` (or zeros when ``None``) moved by the plan's global stage, the layer's blobs written over it.

    Keeps the mask's shape: (H, W), (H, W, 1) or multi-hot (H, W, K).
    """
    if mask is None:
        return composite_mask(layer.owner, layer.blob_classes, None, num_classes)
    moved = stage_geometry(mask if is_multi_hot(mask) else mask.reshape(hw), plan.stage)
    return composite_mask(layer.owner, layer.blob_classes, moved, num_classes).reshape(mask.shape)


def render_guided_crop(
    image: np.ndarray, plan: GuidedCropPlan, num_classes: int, mask: np.ndarray | None = None
) -> GuidedCropResult:
    """Paste ``plan``'s defects on ``image`` and apply its global stage; the mask is ``mask`` (or zeros) updated."""
    final_mask, boxes, vector = render_labels(image_hw(image), plan, num_classes, mask)
    image = clip_unit_range(apply_global_stage(paste_defects(image, plan.defects), plan.stage))
    return GuidedCropResult(image, final_mask, boxes.boxes, boxes.classes, vector)
