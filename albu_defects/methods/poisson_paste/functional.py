"""Poisson copy-paste: pure functions that place objects into an image and write their labels.

An *object* is a donor's pixels (``crop``: the host's dtype, (h, w) or (h, w, C)) with a boolean
``mask`` of its own pixels, as :class:`PastedObject` holds it once prepared (cut to its mask plus
``context`` pixels, flipped, scaled) and placed (``top_left=(row, col)`` on the host). Everything here
is a pure function of its arguments; randomness comes from an explicit ``np.random.Generator`` and no
input is ever modified.

Pixels
    :func:`paste_objects` puts the objects on the image one after another (a later object covers an
    earlier one), each by cut-paste or by Poisson blending of exactly its mask's pixels (dilated by
    ``blend_margin``), through :func:`albu_defects.methods.injection.functional.inject_defect` and so
    the blending core's exact solver. No pixel farther than ``blend_margin`` from an object's mask
    changes. float32 results are clipped to [0, 1] (albumentations' convention).

Labels
    The pixels of an object that land on the host are its label: :func:`write_class_mask` writes its
    class there (a class-index mask: the id; a multi-hot (H, W, K) mask: its channel on, the others
    off), :func:`write_masks` writes the donor's own values into each of ``masks``, and
    :func:`visible_boxes` gives each object's box from the pixels still visible at the end (the front
    object wins; a fully covered object has none).

Placement
    :func:`draw_top_left` draws uniformly among the positions where the whole object mask lies inside
    the image and, given a region, on region pixels only (:func:`region_positions`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import cv2
import numpy as np

from albu_defects.core.geometry import Box, box_hw, mask_bbox, placement_overlap, translate_box
from albu_defects.core.labels import paint_classes
from albu_defects.core.validation import image_hw
from albu_defects.methods.injection.functional import crop_to_defect, inject_defect, match_channels, resize_defect

__all__ = [
    "PastedObject",
    "draw_top_left",
    "host_box_visibility",
    "object_map",
    "paste_objects",
    "prepare_object",
    "region_positions",
    "visible_boxes",
    "write_class_mask",
    "write_masks",
]


class PastedObject(NamedTuple):
    """One object ready to paste: pixels, own mask, where, how, and its labels.

    ``masks`` holds the donor's value planes for each host ``masks`` entry (same h, w as ``crop``),
    ``None`` when the host has none; ``labels`` the values of its new box's label fields; ``donor``
    the index of the donor it came from (for logs).
    """

    crop: np.ndarray
    mask: np.ndarray
    top_left: tuple[int, int]
    method: str
    class_id: int | None
    masks: tuple[np.ndarray, ...] | None
    labels: Mapping[str, Any]
    donor: int


# --------------------------------------------------------------------------------------------- geometry
def _window(arrays: Sequence[np.ndarray], box: Box) -> list[np.ndarray]:
    x0, y0, x1, y1 = box
    return [a[y0:y1, x0:x1] for a in arrays]


def _resize_nearest(plane: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    out = cv2.resize(plane, (int(hw[1]), int(hw[0])), interpolation=cv2.INTER_NEAREST)
    return out.reshape(out.shape[:2] + plane.shape[2:])


def prepare_object(
    crop: np.ndarray,
    mask: np.ndarray,
    planes: Sequence[np.ndarray],
    target_hw: tuple[int, int],
    *,
    scale: float = 1.0,
    hflip: bool = False,
    vflip: bool = False,
    context: int = 1,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """An object cut to its mask plus ``context`` px, flipped, scaled by ``scale``, shrunk to fit ``target_hw``.

    ``planes`` (label planes of the donor, same h, w) follow the same geometry with nearest
    resampling; pixels are resampled by area (shrinking) or linearly, the mask by coverage (see
    :func:`~albu_defects.methods.injection.functional.resize_defect`: it never vanishes). The scale is
    isotropic and lowered to whatever makes the mask's box fit the target. Raises ``ValueError`` on
    an empty mask.
    """
    mask = np.asarray(mask, bool)
    crop, mask, (oy, ox) = crop_to_defect(crop, mask, context)
    h, w = image_hw(crop)
    planes = _window(planes, (ox, oy, ox + w, oy + h))
    if hflip or vflip:
        axes = tuple(a for a, flip in ((0, vflip), (1, hflip)) if flip)
        crop, mask = np.flip(crop, axes), np.flip(mask, axes)
        planes = [np.flip(p, axes) for p in planes]
    bh, bw = box_hw(mask_bbox(mask))  # type: ignore[arg-type]
    factor = min(float(scale), target_hw[0] / bh, target_hw[1] / bw)
    while True:  # ends: the factor falls geometrically, and a 1x1 object fits any image
        size = (max(1, round(h * factor)), max(1, round(w * factor)))
        new_crop, new_mask = resize_defect(np.ascontiguousarray(crop), mask, size)
        box = mask_bbox(new_mask)
        if box_hw(box)[0] <= target_hw[0] and box_hw(box)[1] <= target_hw[1]:  # type: ignore[arg-type]
            break
        factor *= min(target_hw[0] / box_hw(box)[0], target_hw[1] / box_hw(box)[1]) * 0.999  # type: ignore[arg-type]
    new_planes = [_resize_nearest(np.ascontiguousarray(p), image_hw(new_crop)) for p in planes]
    final_crop, final_mask, (cy, cx) = crop_to_defect(new_crop, new_mask, context)
    fh, fw = image_hw(final_crop)
    return final_crop, final_mask, _window(new_planes, (cx, cy, cx + fw, cy + fh))


def region_positions(mask: np.ndarray, region: np.ndarray | None, hw: tuple[int, int]) -> np.ndarray:
    """Bool map of the ``top_left`` positions (of the mask's box) where the whole ``mask`` lies inside the image
    and on ``region`` pixels (anywhere inside the image when ``region`` is ``None``).

    Entry ``[r, c]`` is the position whose mask box starts at row ``r``, column ``c`` of the image;
    the map is empty when the box is larger than the image.
    """
    x0, y0, x1, y1 = mask_bbox(mask)  # type: ignore[misc]
    tight = np.asarray(mask[y0:y1, x0:x1], np.float32)
    rows, cols = hw[0] - (y1 - y0) + 1, hw[1] - (x1 - x0) + 1
    if rows <= 0 or cols <= 0:
        return np.zeros((0, 0), bool)
    if region is None:
        return np.ones((rows, cols), bool)
    outside = (~np.asarray(region, bool)).astype(np.float32)
    # correlation with the mask, anchored at its top-left: the object pixels off the region, per position
    off_region = cv2.filter2D(outside, -1, tight, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT)
    return off_region[:rows, :cols] < 0.5


def draw_top_left(
    mask: np.ndarray, region: np.ndarray | None, hw: tuple[int, int], rng: np.random.Generator
) -> tuple[int, int] | None:
    """A uniformly drawn ``top_left=(row, col)`` of ``mask`` (its array, not its box) from :func:`region_positions`;
    ``None`` when there is none."""
    positions = region_positions(mask, region, hw)
    count = int(np.count_nonzero(positions))
    if count == 0:
        return None
    row, col = divmod(int(np.flatnonzero(positions)[rng.integers(count)]), positions.shape[1])
    x0, y0, _, _ = mask_bbox(mask)  # type: ignore[misc]
    return row - y0, col - x0


# --------------------------------------------------------------------------------------------- pixels
def paste_objects(
    image: np.ndarray,
    objects: Sequence[PastedObject],
    *,
    poisson_mode: str = "normal",
    poisson_method: str = "exact",
    blend_margin: int = 0,
) -> np.ndarray:
    """``image`` with the objects pasted in order (a new array; see the module docstring)."""
    out = image
    for obj in objects:
        out = inject_defect(
            out,
            match_channels(obj.crop, out, "object"),
            obj.mask,
            obj.top_left,
            method=obj.method,  # type: ignore[arg-type]
            blend_margin=blend_margin,
            poisson_mode=poisson_mode,
            poisson_method=poisson_method,
        ).image
    if out is image:
        return image.copy()
    if out.dtype == np.float32:  # Poisson overshoot; pixels no object touched keep their values
        changed = out != image
        out[changed] = np.clip(out[changed], 0.0, 1.0)
    return out


# --------------------------------------------------------------------------------------------- labels
def object_map(objects: Sequence[PastedObject], hw: tuple[int, int]) -> np.ndarray:
    """int32 (H, W): ``k + 1`` where object ``k`` is visible at the end (later objects on top), 0 elsewhere."""
    owner = np.zeros(hw, np.int32)
    for k, obj in enumerate(objects):
        overlap = placement_overlap(hw, obj.mask.shape, obj.top_left)
        if overlap is not None:
            owner[overlap.target][obj.mask[overlap.source]] = k + 1
    return owner


def visible_boxes(objects: Sequence[PastedObject], owner: np.ndarray) -> list[Box | None]:
    """Each object's box ``(x_min, y_min, x_max, y_max)`` over its visible pixels of ``owner`` (:func:`object_map`)."""
    boxes: list[Box | None] = []
    hw = owner.shape
    for k, obj in enumerate(objects):
        overlap = placement_overlap(hw, obj.mask.shape, obj.top_left)
        box = None if overlap is None else mask_bbox(owner[overlap.target] == k + 1)
        boxes.append(None if box is None else translate_box(box, (overlap.target[0].start, overlap.target[1].start)))
    return boxes


def host_box_visibility(boxes: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Share of each normalized ``(x_min, y_min, x_max, y_max, ...)`` row's pixels no object covers (1 for empty boxes)."""
    h, w = owner.shape
    covered = np.concatenate([np.zeros((1, w + 1)), np.pad(np.cumsum(np.cumsum(owner > 0, 0), 1), ((0, 0), (1, 0)))])
    out = np.ones(len(boxes))
    for i, row in enumerate(np.asarray(boxes, np.float64).reshape(len(boxes), -1)):
        x0, x1 = (int(np.clip(round(v * w), 0, w)) for v in (row[0], row[2]))
        y0, y1 = (int(np.clip(round(v * h), 0, h)) for v in (row[1], row[3]))
        area = (x1 - x0) * (y1 - y0)
        if area > 0:
            inside = covered[y1, x1] - covered[y0, x1] - covered[y1, x0] + covered[y0, x0]
            out[i] = 1.0 - inside / area
    return out


def write_class_mask(mask: np.ndarray, objects: Sequence[PastedObject], owner: np.ndarray) -> np.ndarray:
    """A copy of the host ``mask`` with each object's class on its visible pixels (the front object wins).

    ``mask``: a class-index mask ((H, W) or (H, W, 1), integer or bool) or a multi-hot (H, W, K); the
    writing rules are the label model's (:func:`~albu_defects.core.labels.paint_classes`). Raises
    ``ValueError`` for a class id the mask cannot hold.
    """
    ids = np.array([0] + [int(obj.class_id) for obj in objects], np.int64)  # type: ignore[arg-type]
    return paint_classes(mask, ids[owner])


def write_masks(masks: Sequence[np.ndarray], objects: Sequence[PastedObject], owner: np.ndarray) -> list[np.ndarray]:
    """Copies of the host ``masks`` with each object's own plane values on its visible pixels."""
    out = []
    hw = owner.shape
    for index, host in enumerate(masks):
        new = np.array(host, copy=True)
        for k, obj in enumerate(objects):
            overlap = placement_overlap(hw, obj.mask.shape, obj.top_left)
            if overlap is None:
                continue
            where = owner[overlap.target] == k + 1
            values = obj.masks[index][overlap.source]  # type: ignore[index]
            new[overlap.target][where] = values.reshape(values.shape[:2] + new.shape[2:])[where]
        out.append(new)
    return out
