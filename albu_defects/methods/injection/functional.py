"""Injection core: put one real defect (crop + its own mask) into an image and its class-index mask.

Shared by :class:`~albu_defects.DynamicLabelInjection` (batch balancing) and
:class:`~albu_defects.InjectDefect` (per sample); any method that moves a labelled defect into
another image can use it. Everything here is a pure function of its arguments (randomness comes
from an explicit ``np.random.Generator``); no input is ever modified.

Conventions
    A *defect* is a ``crop`` ((h, w) or (h, w, C); uint8, uint16 or float32) with a boolean
    ``mask`` of the same height and width marking the defect's own pixels. Pixels of the crop around
    the mask are *context*: Poisson blending reads source gradients there. ``top_left=(y, x)``
    places the crop on the target, possibly partly outside it (only the overlap is used), as in
    :mod:`albu_defects.blending`.

Labels
    The label of an injected defect is exactly the part of its ``mask`` that lands on the target:
    :func:`inject_defect` writes ``class_id`` there in the class-index mask and nowhere else.
    ``blend_margin`` widens only the *blending* region of Poisson injection (the mask dilated by
    that many pixels, a square structuring element, like the 5x5 max-pool of the reference DLI code
    for ``blend_margin=2``); the label is never grown. Cut-paste copies exactly the mask's pixels.
    So every pixel farther than ``blend_margin`` from the label (``dilate_mask(label, blend_margin)``)
    keeps its value, whatever the blending method.

Sizes
    ``size_mode="relative"`` scales a crop by (target height / source height, target width /
    source width), the per-axis factors that map the defect's source image onto the target, so a
    defect keeps its share and position of the image when the data were resized (as the reference
    code does by resizing everything to 256x256). ``"absolute"`` keeps its pixel size. A defect
    whose (transformed) extent is larger than the target is shrunk, isotropically, until it fits;
    the factor is recorded in the plan. In ``"absolute"`` mode only bank entries whose defect fits
    the target untransformed are drawn, and :func:`choose_entry` raises a ``ValueError`` naming the
    class, the target size and the smallest defect when none fits. ``"absolute_crop"`` (for training
    on random crops of images at the bank's resolution) keeps the pixel size and draws among every
    entry; a defect larger than the target is cut to a target-sized window of it around a random
    defect pixel (:func:`cut_to_target`), as a random crop of its source image would cut it.

Placement
    ``"random"``: uniformly among the positions where the whole defect (its mask's box) lies inside
    the target. ``"source"``: where it was in its source image, in relative coordinates (the centre
    of its mask at the same fraction of the target's height and width), moved by whatever shift the
    defect transform applied, then clamped so the defect lies inside the target.

Colour and dtype
    :func:`match_channels` adapts a crop to the target: a single-channel crop is repeated over the
    target's channels (an explicit, lossless gray-to-colour broadcast); a colour crop into a target
    with a different number of channels, and any dtype mismatch, raise a ``ValueError`` saying what
    to convert (no silent rescaling of pixel values).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import cv2
import numpy as np

from albu_defects import blending
from albu_defects.core.geometry import (
    Box,
    box_center,
    box_hw,
    box_slices,
    dilate_mask,
    grow_box,
    mask_bbox,
    placement_overlap,
    resize_image,
    translate_box,
)
from albu_defects.core.labels import write_class
from albu_defects.core.validation import check_choice, check_image, check_int, image_hw, num_channels

__all__ = [
    "PLACEMENTS",
    "SIZE_MODES",
    "DefectTransformFn",
    "InjectionResult",
    "crop_to_defect",
    "cut_to_target",
    "fit_to_target",
    "inject_defect",
    "match_channels",
    "placed_bbox",
    "placed_label",
    "poisson_inject",
    "relative_scale",
    "resize_defect",
    "source_top_left",
    "transform_defect",
    "write_class",
]

Placement = Literal["random", "source"]
SizeMode = Literal["relative", "absolute", "absolute_crop"]
Method = Literal["poisson", "paste"]
PLACEMENTS: tuple[str, ...] = ("random", "source")
SIZE_MODES: tuple[str, ...] = ("relative", "absolute", "absolute_crop")
METHODS: tuple[str, ...] = ("poisson", "paste")

#: A defect transform: ``(crop, mask_uint8) -> (crop, mask_uint8)``, drawing its randomness itself.
DefectTransformFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

#: How many times a defect transform is re-drawn when it moves the whole defect off its canvas.
TRANSFORM_RETRIES = 10
#: The canvas a defect is transformed on: its crop padded to this many times its diagonal (room to
#: rotate and scale up without cutting the defect).
CANVAS_DIAGONALS = 1.25


class InjectionResult(NamedTuple):
    """What :func:`inject_defect` returns.

    ``image``: the new image; ``class_mask``: the new class-index mask (``None`` if none was given);
    ``label``: bool (H, W), the injected defect's pixels on the target; ``bbox``: their tight box
    ``(x_min, y_min, x_max, y_max)`` (ends exclusive), ``None`` if nothing landed on the target.
    """

    image: np.ndarray
    class_mask: np.ndarray | None
    label: np.ndarray
    bbox: Box | None


# --------------------------------------------------------------------------------------- channels
def match_channels(crop: np.ndarray, target: np.ndarray, what: str = "defect") -> np.ndarray:
    """``crop`` with the target's channel layout; see the module docstring for what is converted.

    (h, w) <-> (h, w, 1) is a reshape; a single-channel crop into a C-channel target is repeated
    over the channels. Raises ``ValueError`` on a dtype mismatch or a colour crop whose channels
    differ from the target's.
    """
    if crop.dtype != target.dtype:
        raise ValueError(
            f"{what} has dtype {crop.dtype} but the image has {target.dtype}: build the bank from images of "
            f"the same dtype, or inject before converting the images (e.g. before Normalize/ToFloat)"
        )
    crop_c = num_channels(crop)
    if target.ndim == 2:
        if crop_c != 1:
            raise ValueError(
                f"{what} has {crop_c} channels but the image is single-channel (H, W): convert the bank or the "
                "images to one channel layout (colour defects are never silently turned gray)"
            )
        return crop if crop.ndim == 2 else crop[..., 0]
    target_c = target.shape[2]
    if crop_c == target_c:
        return crop if crop.ndim == 3 else crop[..., None]
    if crop_c == 1:
        plane = crop if crop.ndim == 2 else crop[..., 0]
        return np.repeat(plane[..., None], target_c, axis=2)
    raise ValueError(
        f"{what} has {crop_c} channels but the image has {target_c}: convert the bank or the images so they agree"
    )


# --------------------------------------------------------------------------------------- resizing
def relative_scale(source_hw: tuple[int, int], target_hw: tuple[int, int]) -> tuple[float, float]:
    """Per-axis factors mapping a source image onto a target: (target h / source h, target w / source w)."""
    return float(target_hw[0]) / float(source_hw[0]), float(target_hw[1]) / float(source_hw[1])


def resize_defect(crop: np.ndarray, mask: np.ndarray, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize a defect to ``out_hw`` (at least 1x1): pixels by area (shrinking) or linear; the mask by coverage.

    A pixel of the new mask is defect when at least half of it was; a defect never vanishes: when no
    pixel reaches half, the most-covered pixels are kept. The crop keeps its dtype and channels.
    """
    out_hw = (max(1, int(out_hw[0])), max(1, int(out_hw[1])))
    if out_hw == image_hw(crop):
        return crop, np.asarray(mask, bool)
    shrinking = out_hw[0] <= crop.shape[0] and out_hw[1] <= crop.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    new_crop = resize_image(crop, out_hw, interpolation)
    coverage = resize_image(np.asarray(mask, np.float32), out_hw, interpolation)
    new_mask = coverage >= 0.5
    if not new_mask.any() and np.asarray(mask).any():
        new_mask = coverage >= coverage.max()
    return new_crop, new_mask


def scale_defect(
    crop: np.ndarray, mask: np.ndarray, scale: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Scale a defect by ``(sy, sx)``; returns the crop, mask and the factors actually applied (rounded sizes)."""
    h, w = image_hw(crop)
    out_hw = (max(1, round(h * scale[0])), max(1, round(w * scale[1])))
    new_crop, new_mask = resize_defect(crop, mask, out_hw)
    return new_crop, new_mask, (out_hw[0] / h, out_hw[1] / w)


# --------------------------------------------------------------------------------------- cropping
def crop_to_defect(crop: np.ndarray, mask: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Cut a defect down to its mask's box plus ``context`` pixels (clipped); returns crop, mask, offset.

    ``offset=(y, x)`` is where the new crop's corner was in the old one. Raises ``ValueError`` on an
    empty mask.
    """
    box = mask_bbox(mask)
    if box is None:
        raise ValueError("the defect's mask is empty")
    box = grow_box(box, context, image_hw(crop))
    window = box_slices(box)
    return crop[window], mask[window], (box[1], box[0])


def cut_to_target(
    crop: np.ndarray, mask: np.ndarray, target_hw: tuple[int, int], context: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a defect whose mask's box exceeds ``target_hw`` to a target-sized window (``"absolute_crop"``).

    Along each axis where the defect is longer than the target, the window has the target's length
    and holds a defect pixel drawn uniformly from the mask, its start uniform among the starts that
    hold it (it may reach past the defect's end, as a random crop of the source image would); along
    an axis where the defect fits, the window spans it whole. So every part of a large defect shows
    up, at its real pixel scale, cut as random crops cut real defects. The mask keeps the window's
    pixels; the crop is cut to them plus ``context`` (real pixels, for Poisson's gradients). A defect
    that fits is returned as is, and no random number is drawn.
    """
    x0, y0, x1, y1 = mask_bbox(mask)  # type: ignore[misc]
    th, tw = int(target_hw[0]), int(target_hw[1])
    if y1 - y0 <= th and x1 - x0 <= tw:
        return crop, mask
    rows, cols = np.nonzero(mask)
    pick = int(rng.integers(len(rows)))
    top, bottom = (y0, y1) if y1 - y0 <= th else _window(int(rows[pick]), th, rng)
    left, right = (x0, x1) if x1 - x0 <= tw else _window(int(cols[pick]), tw, rng)
    window = np.zeros(mask.shape, bool)
    window[max(top, 0) : bottom, max(left, 0) : right] = True
    new_crop, new_mask, _ = crop_to_defect(crop, np.asarray(mask, bool) & window, context)
    return new_crop, new_mask


def _window(position: int, length: int, rng: np.random.Generator) -> tuple[int, int]:
    """``(start, stop)`` of a ``length``-long window holding ``position``, its start drawn uniformly."""
    start = position - int(rng.integers(length))
    return start, start + length


def transform_defect(
    crop: np.ndarray, mask: np.ndarray, transform: DefectTransformFn, context: int
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Apply a defect transform on a padded canvas, then cut back to the defect plus ``context``.

    The crop is padded (reflected; the mask with zeros) to a square of :data:`CANVAS_DIAGONALS`
    times its diagonal, so rotating and scaling do not cut the defect. ``transform`` gets
    ``(canvas, mask as uint8 0/1)`` and returns the same. Returns the new crop and mask and the
    displacement ``(dy, dx)`` of the mask's centre (what a shift in the transform did). When the
    transform leaves no defect pixel, it is re-drawn up to :data:`TRANSFORM_RETRIES` times, then
    the defect is used untransformed (displacement 0). Raises ``ValueError`` if the transform
    changes the dtype or the channel layout.
    """
    h, w = image_hw(crop)
    side = math.ceil(math.hypot(h, w) * CANVAS_DIAGONALS) + 2
    pad_y, pad_x = max(0, (side - h + 1) // 2), max(0, (side - w + 1) // 2)
    borders = (pad_y, pad_y, pad_x, pad_x)
    canvas = cv2.copyMakeBorder(crop, *borders, cv2.BORDER_REFLECT_101)
    if crop.ndim == 3 and canvas.ndim == 2:
        canvas = canvas[..., None]
    canvas_mask = cv2.copyMakeBorder(np.asarray(mask, np.uint8), *borders, cv2.BORDER_CONSTANT, value=0)
    center = box_center(mask_bbox(mask))  # type: ignore[arg-type]
    before = (pad_y + center[0], pad_x + center[1])
    for _ in range(TRANSFORM_RETRIES):
        out, out_mask = transform(canvas, canvas_mask)
        if not isinstance(out, np.ndarray) or out.dtype != crop.dtype or out.ndim != crop.ndim:
            raise ValueError(
                f"defect_transform must return an image of the crop's dtype {crop.dtype} and {crop.ndim} dims, "
                f"got {getattr(out, 'dtype', type(out).__name__)} with shape {getattr(out, 'shape', None)}"
            )
        if crop.ndim == 3 and out.shape[2] != crop.shape[2]:
            raise ValueError(f"defect_transform changed the channels from {crop.shape[2]} to {out.shape[2]}")
        out_mask = np.asarray(out_mask)
        if out_mask.ndim == 3:
            out_mask = out_mask[..., 0]
        if out_mask.shape != image_hw(out):
            raise ValueError(f"defect_transform returned a mask of shape {out_mask.shape} for an image {out.shape}")
        out_mask = out_mask != 0
        if out_mask.any():
            new_crop, new_mask, (oy, ox) = crop_to_defect(out, out_mask, context)
            center = box_center(mask_bbox(new_mask))  # type: ignore[arg-type]  # small: the cut-down crop
            after = (oy + center[0], ox + center[1])
            return new_crop, new_mask, (after[0] - before[0], after[1] - before[1])
    new_crop, new_mask, _ = crop_to_defect(crop, np.asarray(mask, bool), context)
    return new_crop, new_mask, (0.0, 0.0)


def fit_to_target(
    crop: np.ndarray, mask: np.ndarray, target_hw: tuple[int, int], context: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Shrink a defect isotropically until its mask's box fits in ``target_hw``; returns crop, mask, factor.

    A defect that already fits is returned as is (factor 1.0). The result is cut to the mask plus
    ``context``.
    """
    th, tw = int(target_hw[0]), int(target_hw[1])
    if th < 1 or tw < 1:
        raise ValueError(f"cannot fit a defect into an empty {th}x{tw} image")
    factor = 1.0
    while True:  # ends: every round shrinks the crop, and a 1x1 defect fits any image
        bh, bw = box_hw(mask_bbox(mask))  # type: ignore[arg-type]
        if bh <= th and bw <= tw:
            return crop, mask, factor
        step = min(th / bh, tw / bw)
        h, w = image_hw(crop)
        out_hw = (max(1, math.floor(h * step)), max(1, math.floor(w * step)))
        if out_hw == (h, w):
            out_hw = (max(1, h - 1), max(1, w - 1))
        factor *= out_hw[0] / h
        crop, mask = resize_defect(crop, mask, out_hw)
        crop, mask, _ = crop_to_defect(crop, mask, context)


# --------------------------------------------------------------------------------------- placement
def source_top_left(
    mask: np.ndarray,
    target_hw: tuple[int, int],
    relative_center: tuple[float, float],
    shift: tuple[float, float] = (0.0, 0.0),
) -> tuple[int, int]:
    """``top_left`` putting the mask's centre at ``relative_center`` (fractions of the target) plus ``shift`` px.

    ``relative_center`` and ``shift`` are ``(row, col)``.

    Clamped so the mask's box lies inside the target (raises ``ValueError`` when it cannot).
    """
    x0, y0, x1, y1 = mask_bbox(mask)  # type: ignore[misc]
    th, tw = int(target_hw[0]), int(target_hw[1])
    if y1 - y0 > th or x1 - x0 > tw:
        raise ValueError(f"a {y1 - y0}x{x1 - x0} defect does not fit a {th}x{tw} image")
    cy = relative_center[0] * th + shift[0]
    cx = relative_center[1] * tw + shift[1]
    y = round(cy - (y0 + y1) / 2.0)
    x = round(cx - (x0 + x1) / 2.0)
    return int(min(max(y, -y0), th - y1)), int(min(max(x, -x0), tw - x1))


# --------------------------------------------------------------------------------------- injection
def _gray_in_colour(image: np.ndarray) -> bool:
    """True for an (H, W, C > 1) image whose channels are all equal."""
    if image.ndim != 3 or image.shape[2] < 2:
        return False
    first = image[..., 0]
    return all(np.array_equal(first, image[..., c]) for c in range(1, image.shape[2]))


def placed_label(mask: np.ndarray, top_left: tuple[int, int], hw: tuple[int, int]) -> np.ndarray:
    """Bool (H, W) label of a defect ``mask`` placed at ``top_left=(y, x)`` on an ``hw`` image (only the overlap)."""
    label = np.zeros(hw, bool)
    overlap = placement_overlap(hw, mask.shape, top_left)
    if overlap is not None:
        label[overlap.target] = mask[overlap.source]
    return label


def placed_bbox(mask: np.ndarray, top_left: tuple[int, int], hw: tuple[int, int]) -> Box | None:
    """Tight box ``(x_min, y_min, x_max, y_max)`` of :func:`placed_label`, found in the placed window; ``None`` if empty."""
    overlap = placement_overlap(hw, mask.shape, top_left)
    if overlap is None:
        return None
    box = mask_bbox(mask[overlap.source])
    if box is None:
        return None
    return translate_box(box, (overlap.target[0].start, overlap.target[1].start))


def poisson_inject(
    image: np.ndarray,
    crop: np.ndarray,
    mask: np.ndarray,
    top_left: tuple[int, int],
    blend_margin: int,
    poisson_mode: str,
    poisson_method: str,
) -> np.ndarray:
    """``image`` with the part of ``mask`` that lands on it, dilated by ``blend_margin``, Poisson-blended from ``crop``.

    Only pixels of that region are taken from the blend (see :func:`inject_defect`).
    """
    hw = image_hw(image)
    visible = np.zeros_like(mask)  # the part of the defect that lands on the target
    overlap = placement_overlap(hw, mask.shape, top_left)
    if overlap is not None:
        visible[overlap.source] = mask[overlap.source]
    region = dilate_mask(visible, int(blend_margin)) if blend_margin else visible
    if _gray_in_colour(image) and _gray_in_colour(crop):
        # gray stored as colour (e.g. Magnetic Tile read as RGB): every channel solves the same
        # equation, so solve one and repeat it (the same result, a third of the work)
        one = blending.poisson_blend(
            image[..., :1], crop[..., :1], region, top_left, mode=poisson_mode, method=poisson_method
        )
        blended = np.repeat(one, image.shape[2], axis=2)
    else:
        blended = blending.poisson_blend(image, crop, region, top_left, mode=poisson_mode, method=poisson_method)
    out = image.copy()
    window = placement_overlap(hw, region.shape, top_left)
    if window is not None:
        keep = region[window.source]
        keep = keep if image.ndim == 2 else keep[..., None]
        np.copyto(out[window.target], blended[window.target], where=keep)
    return out


def inject_defect(
    image: np.ndarray,
    crop: np.ndarray,
    mask: np.ndarray,
    top_left: tuple[int, int],
    *,
    class_mask: np.ndarray | None = None,
    class_id: int = 1,
    method: Method = "paste",
    blend_margin: int = 0,
    poisson_mode: str = "mixed",
    poisson_method: str = "auto",
) -> InjectionResult:
    """Inject a defect (``crop`` + bool ``mask``) into ``image`` at ``top_left=(y, x)``.

    ``method="paste"`` copies the mask's pixels; ``"poisson"`` Poisson-blends the part of the mask
    that lands on the target, dilated by ``blend_margin`` (``poisson_mode`` "normal" or "mixed"
    gradients, ``poisson_method`` as in
    :func:`albu_defects.blending.poisson_blend`), and only pixels of that region are taken from the
    blend (a solver that touches its whole bounding box, like OpenCV's, cannot change anything
    else). ``crop`` must match ``image`` in dtype and channels (see :func:`match_channels`). When
    ``class_mask`` is given, ``class_id`` is written on the label. Inputs are never modified.
    """
    check_choice(method, METHODS, "method")
    check_int(blend_margin, "blend_margin", 0, "(pixels)")
    check_image(image, "image")
    hw = image_hw(image)
    mask = np.asarray(mask, bool)
    if mask.shape != image_hw(crop):
        raise ValueError(f"mask is {mask.shape} but the crop is {image_hw(crop)}; they must match")
    label = placed_label(mask, top_left, hw)
    bbox = placed_bbox(mask, top_left, hw)
    if method == "paste":
        out = blending.paste(image, crop, mask, top_left)
    else:
        out = poisson_inject(image, crop, mask, top_left, int(blend_margin), poisson_mode, poisson_method)
    new_mask = None if class_mask is None else write_class(class_mask, label, int(class_id))
    return InjectionResult(out, new_mask, label, bbox)
