"""ContextMix (Kim et al.): paste a whole partner image, resized into a random box, over the host.

Paper ("ContextMix: A context-aware data augmentation method for industrial visual inspection
systems", section 3, eq. 2-4, Algorithm 1): draw ``lam ~ Beta(alpha, alpha)``, a box of area
``(1 - lam) * H * W`` around a uniform random centre, clipped to the image; resize the *whole*
partner image B to the clipped box ``(h, w)`` and paste it. With the clipped box the labels mix as
``lambda_A = 1 - h*w / (H*W)`` for the host and ``lambda_B * eps_B = h*w / (H*W)`` for the partner,
which is exactly the fraction of output pixels that came from each image. The reference code uses
nearest interpolation, one box for the whole batch, and skips mixing when a box side is <= 2 px.
Section 5.5 variants: square boxes, fixed-size boxes (75 %), one-hot labels (the larger side wins).

Defect-aware labels (``label_mode="defect_area"``, ours; no peer has it): with masks, the labels mix by
the defect pixels each image still shows in the output instead of by image area, so a defect
covered by the box or shrunk to nothing carries no label mass (:func:`defect_mix_weights`).

Conventions shared by every function here:

- a *box* is ``(x_min, y_min, x_max, y_max)`` in pixels, ends exclusive (the package's box
  convention, :mod:`albu_defects.core.geometry`); an empty box (``x_max == x_min`` or
  ``y_max == y_min``) means "no mixing" and weights ``(1, 0)``;
- boxes come from explicit uniform draws (:func:`draw_boxes`), so the numpy transform and the
  torch batch op (:mod:`albu_defects.pytorch`) share one piece of box math;
- nearest resizing samples source pixel ``floor((i + 0.5) * src / dst)`` (pixel centres, like
  ``cv2.INTER_NEAREST_EXACT`` and torch ``"nearest-exact"``), computed in integers
  (:func:`nearest_source_index`) so masks keep their class ids exactly;
- bboxes are albumentations' internal format (normalised ``x_min, y_min, x_max, y_max`` plus extra
  columns), keypoints are pixels ``x, y`` plus extra columns (albumentations 2.0: ``z, angle,
  scale, ...``); no input is ever modified.

The transform :class:`~albu_defects.methods.contextmix.transform.ContextMix` draws a box and a partner and
calls these.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, Literal

import cv2
import numpy as np
from scipy import special

from albu_defects.core.geometry import NEAREST_FLAGS, nearest_source_index, resize_image
from albu_defects.core.validation import (
    check_choice,
    check_int,
    check_matching_images,
    check_probability,
    image_hw,
)

__all__ = [
    "BOX_KINDS",
    "LABEL_MODES",
    "NEAREST_FLAGS",
    "bboxes_into_box",
    "box_lambda",
    "check_box_options",
    "defect_mix_weights",
    "drop_keypoints_in_box",
    "keypoints_into_box",
    "mix_weights",
    "nearest_source_index",
    "occlude_bboxes",
    "paste_resized",
    "resize_image",
    "draw_boxes",
    "soft_labels",
    "visible_defect_pixels",
]

BOX_KINDS: tuple[str, ...] = ("beta", "square", "fixed")
LABEL_MODES: tuple[str, ...] = ("area", "one-hot", "defect_area")
BoxKind = Literal["beta", "square", "fixed"]
LabelMode = Literal["area", "one-hot", "defect_area"]
#: ``label_mode="defect_area"``: a defect counts when at least this many of its pixels show (or all of them do).
MIN_VISIBLE_PIXELS = 4


# --------------------------------------------------------------------------------------- boxes
def check_box_options(alpha: float, box: str, box_size: float, min_box_side: int) -> None:
    """Raise a ValueError naming the first bad box option (shared by the numpy and torch classes)."""
    if not float(alpha) > 0:
        raise ValueError(f"alpha must be > 0 (the Beta(alpha, alpha) parameter), got {alpha}")
    check_choice(box, BOX_KINDS, "box")
    if not 0.0 < float(box_size) <= 1.0:
        raise ValueError(f"box_size must lie in (0, 1] (the box's share of the image area), got {box_size}")
    check_int(min_box_side, "min_box_side", 1, "(pixels)")


def box_lambda(u: np.ndarray | float, alpha: float = 1.0, box: BoxKind = "beta", box_size: float = 0.75) -> np.ndarray:
    """The host's share ``lam`` before clipping, from a uniform draw ``u`` in [0, 1).

    ``"beta"`` and ``"square"``: ``lam ~ Beta(alpha, alpha)`` by its inverse CDF (so any source of
    uniforms, numpy or torch, gives the same boxes); ``"fixed"``: ``lam = 1 - box_size``.
    """
    u = np.asarray(u, dtype=np.float64)
    if box == "fixed":
        return np.full(u.shape, 1.0 - float(box_size))
    lam = np.asarray(special.betaincinv(float(alpha), float(alpha), u), dtype=np.float64)
    # betaincinv underflows to NaN for denormal u (the quantile there is 0 to double precision).
    return np.clip(np.where(np.isfinite(lam), lam, np.where(u < 0.5, 0.0, 1.0)), 0.0, 1.0)


def draw_boxes(
    height: int,
    width: int,
    draws: np.ndarray,
    *,
    alpha: float = 1.0,
    box: BoxKind = "beta",
    box_size: float = 0.75,
    min_box_side: int = 3,
) -> np.ndarray:
    """Boxes ``(..., 4)`` = ``(x_min, y_min, x_max, y_max)`` (int64) from uniform ``draws`` of shape ``(..., 3)``.

    ``draws[..., 0]`` gives ``lam`` (:func:`box_lambda`), ``draws[..., 1:3]`` the centre row and
    column. The unclipped box covers ``(1 - lam)`` of the image: ``"beta"`` and ``"fixed"`` keep the
    image's aspect ratio (sides ``floor(H * sqrt(1 - lam))`` and ``floor(W * sqrt(1 - lam))``),
    ``"square"`` has both sides ``floor(sqrt((1 - lam) * H * W))`` (at most the shorter image side).
    The box is centred on the drawn pixel and clipped to the image (so it may be smaller and, near
    an edge, no longer square); a clipped box with a side below ``min_box_side`` becomes empty (no
    mixing), as the paper's code skips boxes with a side <= 2 px.
    """
    check_box_options(alpha, box, box_size, min_box_side)
    if height < 1 or width < 1:
        raise ValueError(f"the image must be at least 1x1 pixels, got {height}x{width}")
    draws = np.asarray(draws, dtype=np.float64)
    if draws.shape[-1:] != (3,):
        raise ValueError(f"draws must have shape (..., 3) (lam, centre y, centre x), got {draws.shape}")
    if draws.size and not ((draws >= 0).all() and (draws < 1).all()):
        raise ValueError("draws must be uniform numbers in [0, 1)")
    cut = np.clip(1.0 - box_lambda(draws[..., 0], alpha, box, box_size), 0.0, 1.0)
    if box == "square":
        side = np.minimum(np.floor(np.sqrt(cut * height * width)), min(height, width)).astype(np.int64)
        cut_h = cut_w = side
    else:
        cut_h = np.floor(height * np.sqrt(cut)).astype(np.int64)
        cut_w = np.floor(width * np.sqrt(cut)).astype(np.int64)
    centre_y = np.minimum(np.floor(draws[..., 1] * height), height - 1).astype(np.int64)
    centre_x = np.minimum(np.floor(draws[..., 2] * width), width - 1).astype(np.int64)
    y0 = np.clip(centre_y - cut_h // 2, 0, height)
    y1 = np.clip(centre_y - cut_h // 2 + cut_h, 0, height)
    x0 = np.clip(centre_x - cut_w // 2, 0, width)
    x1 = np.clip(centre_x - cut_w // 2 + cut_w, 0, width)
    too_small = ((y1 - y0) < min_box_side) | ((x1 - x0) < min_box_side)
    return np.stack([x0, y0, np.where(too_small, x0, x1), np.where(too_small, y0, y1)], axis=-1)


def _box_ints(box: Sequence[int] | np.ndarray, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """``box`` as four ints, checked to lie inside an image of size ``hw``."""
    if len(box) != 4:
        raise ValueError(f"box must be (x_min, y_min, x_max, y_max), got {box!r}")
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= y0 <= y1 <= hw[0] and 0 <= x0 <= x1 <= hw[1]):
        raise ValueError(
            f"box {(x0, y0, x1, y1)} (x_min, y_min, x_max, y_max) must lie inside the {hw[0]}x{hw[1]} image "
            "with x_min <= x_max and y_min <= y_max"
        )
    return x0, y0, x1, y1


# ------------------------------------------------------------------------------------- labels
def mix_weights(boxes: np.ndarray, height: int, width: int, label_mode: LabelMode = "area") -> np.ndarray:
    """Label weights ``(..., 2)`` = ``(lambda_A, lambda_B)`` (float64) of pasted ``boxes``.

    ``"area"`` (eq. 4): ``lambda_B = h*w / (H*W)``, the exact fraction of output pixels that came
    from the partner, and ``lambda_A = 1 - lambda_B``. ``"one-hot"`` (section 5.5): weight 1 for
    the image that covers more of the output (the host on a tie), 0 for the other. ``"defect_area"``
    needs the masks (:func:`defect_mix_weights`); here it gives the area weights it falls back to.
    """
    check_choice(label_mode, LABEL_MODES, "label_mode")
    boxes = np.asarray(boxes)
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    total = int(height) * int(width)
    partner = area / total
    host = (total - area) / total
    if label_mode == "one-hot":
        partner = (partner > host).astype(np.float64)
        host = 1.0 - partner
    return np.stack([host, partner], axis=-1)


def check_min_visible_pixels(value: int) -> int:
    """``min_visible_pixels`` as an int >= 1, else ``ValueError`` (shared by the numpy and torch classes)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"min_visible_pixels must be an integer >= 1 (pixels), got {value!r}")
    return int(value)


def visible_defect_pixels(
    host_defect: np.ndarray, partner_defect: np.ndarray, box: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Defect pixels of one mixed sample: ``(visible, total)``, each int64 ``(2,)`` = (host, partner).

    ``host_defect`` / ``partner_defect`` are bool (H, W) maps of each image's defect pixels (the
    partner at its own size). ``visible``: the host's defect pixels outside ``box`` and the partner's
    defect pixels after its nearest resize into ``box`` (exactly the defect pixels each image shows in
    the mixed mask); ``total``: each image's defect pixels before mixing.
    """
    x0, y0, x1, y1 = _box_ints(box, host_defect.shape[:2])
    host_total = int(np.count_nonzero(host_defect))
    partner_total = int(np.count_nonzero(partner_defect))
    if y1 == y0 or x1 == x0:
        return np.array([host_total, 0]), np.array([host_total, partner_total])
    covered = int(np.count_nonzero(host_defect[y0:y1, x0:x1]))
    pasted = int(np.count_nonzero(resize_image(partner_defect, (y1 - y0, x1 - x0), cv2.INTER_NEAREST)))
    return np.array([host_total - covered, pasted]), np.array([host_total, partner_total])


def defect_mix_weights(
    visible: np.ndarray,
    total: np.ndarray,
    area_weights: np.ndarray,
    min_visible_pixels: int = MIN_VISIBLE_PIXELS,
) -> np.ndarray:
    """Defect-aware label weights ``(..., 2)`` (float64, summing to 1) from visible defect pixels.

    ``visible`` / ``total`` (``(..., 2)`` ints, host then partner; see :func:`visible_defect_pixels`)
    and ``area_weights`` (:func:`mix_weights`'s ``"area"`` weights of the same boxes). Rules, in order:

    1. An image's defect *counts* when at least ``min_visible_pixels`` of its defect pixels show,
       or all of them do (so a defect that was tiny to begin with still counts when nothing hides it).
    2. When a defect counts, the weights are the counted pixels' shares: ``v_A / (v_A + v_B)`` and
       ``v_B / (v_A + v_B)``; an image whose defect is hidden or shrunk away, or that has none, gets 0.
    3. When no defect counts, the mixed image shows no defect: the images that had none (defect-free,
       ``total == 0``) share the weight by area, so a defect-free image paired with a hidden defect
       takes all of it.
    4. Otherwise (both images had defects and both are hidden, or the defect-free image is covered
       entirely) the weights fall back to area: the only case where a hidden defect keeps label mass,
       since neither label says "defect-free".

    Without mixing (an empty box) this gives ``(1, 0)``, as the area rule does.
    """
    visible = np.asarray(visible, dtype=np.int64)
    total = np.asarray(total, dtype=np.int64)
    area_weights = np.asarray(area_weights, dtype=np.float64)
    counted = np.where((visible > 0) & (visible >= np.minimum(int(min_visible_pixels), total)), visible, 0)
    kept = counted.sum(axis=-1, keepdims=True)
    by_defect = counted / np.maximum(kept, 1)
    free_area = np.where(total == 0, area_weights, 0.0)
    free_sum = free_area.sum(axis=-1, keepdims=True)
    by_free = free_area / np.where(free_sum > 0, free_sum, 1.0)
    return np.where(kept > 0, by_defect, np.where(free_sum > 0, by_free, area_weights))


def _class_id(label: Any, num_classes: int, name: str) -> int:
    try:
        value = operator.index(label)
    except TypeError:
        raise ValueError(f"{name} must be an integer class id, got {label!r}") from None
    if not 0 <= value < num_classes:
        raise ValueError(f"{name} is {value} but must lie in [0, num_classes) = [0, {num_classes})")
    return value


def soft_labels(
    label_a: Any, label_b: Any, weights: np.ndarray, num_classes: int, label_smoothing: float = 0.0
) -> np.ndarray:
    """Soft target (float32, ``(num_classes,)``): ``w_A * onehot(a) + w_B * onehot(b)``.

    Each one-hot vector is smoothed first (``1 - s + s/K`` on the class, ``s/K`` elsewhere, as
    timm), so the result still sums to 1.
    """
    label_smoothing = check_probability(label_smoothing, "label_smoothing")
    off = label_smoothing / num_classes
    target = np.full(num_classes, off, dtype=np.float64)
    target[_class_id(label_a, num_classes, "label")] += weights[0] * (1.0 - label_smoothing)
    target[_class_id(label_b, num_classes, "the partner's label")] += weights[1] * (1.0 - label_smoothing)
    return target.astype(np.float32)


# -------------------------------------------------------------------------------------- pixels
def paste_resized(
    host: np.ndarray, partner: np.ndarray, box: Sequence[int], interpolation: int = cv2.INTER_NEAREST
) -> np.ndarray:
    """A copy of ``host`` with the whole ``partner`` resized into ``box`` (eq. 4's ``x~``).

    Works for images and masks alike (same dtype and channel layout required; sizes may differ).
    Pixels outside the box are the host's; an empty box returns an unchanged copy.
    """
    check_matching_images(host, partner, "host", "partner")
    x0, y0, x1, y1 = _box_ints(box, image_hw(host))
    out = host.copy()
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = resize_image(partner, (y1 - y0, x1 - x0), interpolation)
    return out


# -------------------------------------------------------------------------------- annotations
def bboxes_into_box(bboxes: np.ndarray, box: Sequence[int], hw: tuple[int, int]) -> np.ndarray:
    """Partner bboxes (normalised to the partner image) scaled into ``box`` of an ``hw`` host.

    Boxes are first clipped to the partner image (only its pixels are pasted); boxes with no area
    left are dropped. Extra columns (labels) are kept. Returns normalised host coordinates.
    """
    bboxes = np.asarray(bboxes, dtype=np.float64)
    x0, y0, x1, y1 = _box_ints(box, hw)
    if bboxes.size == 0 or y1 == y0 or x1 == x0:
        return bboxes[:0].astype(np.float32) if bboxes.ndim == 2 else np.zeros((0, 4), np.float32)
    clipped = np.clip(bboxes[:, :4], 0.0, 1.0)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    out = bboxes[keep].copy()
    height, width = hw
    out[:, [0, 2]] = (x0 + clipped[keep][:, [0, 2]] * (x1 - x0)) / width
    out[:, [1, 3]] = (y0 + clipped[keep][:, [1, 3]] * (y1 - y0)) / height
    return out.astype(np.float32)


def _snap(pixels: np.ndarray, tolerance: float = 1e-3) -> np.ndarray:
    """Pixel coordinates within ``tolerance`` of an integer, made that integer.

    Normalised float32 boxes come back as e.g. 22.0000004 px; without snapping, a box edge that
    meets the pasted box's edge would count as a sliver left visible.
    """
    nearest = np.rint(pixels)
    return np.where(np.abs(pixels - nearest) < tolerance, nearest, pixels)


def occlude_bboxes(
    bboxes: np.ndarray, box: Sequence[int], hw: tuple[int, int], min_visibility: float = 0.0, min_area: float = 0.0
) -> np.ndarray:
    """Host bboxes (normalised) after ``box`` is pasted over them: dropped or clipped to what shows.

    Visibility rule: a box keeps ``visible = area - area(box ∩ pasted box)`` pixels; it is dropped
    when nothing is visible, or ``visible / area < min_visibility``, or ``visible < min_area``
    (pixels); the transform takes both thresholds from the Compose's ``BboxParams``, as
    albumentations' dropout transforms do. A kept box is shrunk to the bounding box of its visible
    part (which changes it only when the paste covers a whole side strip of it).
    """
    bboxes = np.asarray(bboxes, dtype=np.float64)
    x0, y0, x1, y1 = _box_ints(box, hw)
    if bboxes.size == 0 or y1 == y0 or x1 == x0:
        return bboxes.astype(np.float32)
    height, width = hw
    bx0, bx1 = _snap(bboxes[:, 0] * width), _snap(bboxes[:, 2] * width)
    by0, by1 = _snap(bboxes[:, 1] * height), _snap(bboxes[:, 3] * height)
    area = (bx1 - bx0) * (by1 - by0)
    overlap = np.clip(np.minimum(bx1, x1) - np.maximum(bx0, x0), 0, None) * np.clip(
        np.minimum(by1, y1) - np.maximum(by0, y0), 0, None
    )
    visible = area - overlap
    with np.errstate(divide="ignore", invalid="ignore"):
        visibility = np.where(area > 0, visible / np.where(area > 0, area, 1.0), 0.0)
    keep = (visible > 0) & (visibility >= min_visibility) & (visible >= min_area)
    # The visible part's bounding box shrinks along x only when the paste spans the box's full height
    # and reaches one of its vertical sides (and the same for y).
    spans_y = (y0 <= by0) & (y1 >= by1)
    spans_x = (x0 <= bx0) & (x1 >= bx1)
    new_bx0 = np.where(spans_y & (x0 <= bx0), np.maximum(bx0, x1), bx0)
    new_bx1 = np.where(spans_y & (x1 >= bx1), np.minimum(bx1, x0), bx1)
    new_by0 = np.where(spans_x & (y0 <= by0), np.maximum(by0, y1), by0)
    new_by1 = np.where(spans_x & (y1 >= by1), np.minimum(by1, y0), by1)
    out = bboxes.copy()
    out[:, 0], out[:, 2] = new_bx0 / width, new_bx1 / width
    out[:, 1], out[:, 3] = new_by0 / height, new_by1 / height
    return out[keep].astype(np.float32)


def keypoints_into_box(keypoints: np.ndarray, box: Sequence[int], partner_hw: tuple[int, int]) -> np.ndarray:
    """Partner keypoints (pixels of the partner image) scaled into ``box`` (pixels of the host).

    Points outside the partner image are dropped (they are not in the pasted content). ``x, y`` are
    scaled and offset; column 4 (albumentations' keypoint ``scale``) is multiplied by the larger of
    the two scale factors, as albumentations' ``Resize`` does; other columns are kept.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    x0, y0, x1, y1 = (int(v) for v in box)
    if keypoints.size == 0 or y1 == y0 or x1 == x0:
        # no point lands in an empty box (keypoints[:0], not a reshape: the partner may have points)
        return (keypoints[:0] if keypoints.ndim == 2 else np.zeros((0, 2))).astype(np.float32)
    ph, pw = partner_hw
    inside = (keypoints[:, 0] >= 0) & (keypoints[:, 0] < pw) & (keypoints[:, 1] >= 0) & (keypoints[:, 1] < ph)
    out = keypoints[inside].copy()
    scale_x, scale_y = (x1 - x0) / pw, (y1 - y0) / ph
    out[:, 0] = x0 + out[:, 0] * scale_x
    out[:, 1] = y0 + out[:, 1] * scale_y
    if out.shape[1] > 4:
        out[:, 4] *= max(scale_x, scale_y)
    return out.astype(np.float32)


def drop_keypoints_in_box(keypoints: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """Host keypoints (pixels) that stay visible: those outside ``[x0, x1) x [y0, y1)``."""
    keypoints = np.asarray(keypoints)
    x0, y0, x1, y1 = (int(v) for v in box)
    if keypoints.size == 0:
        return keypoints
    covered = (keypoints[:, 0] >= x0) & (keypoints[:, 0] < x1) & (keypoints[:, 1] >= y0) & (keypoints[:, 1] < y1)
    return keypoints[~covered]
