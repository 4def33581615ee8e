"""The ContextMix transform: draws a box and a partner, and calls :mod:`.functional` in ``apply_*``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import cv2
import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema
from pydantic import Field

from albu_defects.core.labels import ANOMALY_MASK_KEY, check_label_mask, is_multi_hot
from albu_defects.core.partners import encode_partner_labels, partner_annotations, partner_labels
from albu_defects.core.transform import DefectTransform, input_image, store_options
from albu_defects.core.validation import (
    as_bool_mask,
    check_image,
    check_mask_shape,
    check_matching_images,
    check_unit_range,
    image_hw,
)

from .functional import (
    MIN_VISIBLE_PIXELS,
    BoxKind,
    LabelMode,
    bboxes_into_box,
    defect_mix_weights,
    draw_boxes,
    drop_keypoints_in_box,
    keypoints_into_box,
    mix_weights,
    occlude_bboxes,
    paste_resized,
    soft_labels,
    visible_defect_pixels,
)

__all__ = [
    "ContextMix",
]


# ---------------------------------------------------------------------------------- transform
class ContextMix(DefectTransform):
    """ContextMix: paste a whole partner image, resized into a random box, and mix labels by area or by defect.

    Partners arrive through ``data[metadata_key]``, a list of dicts (the way ``A.Mosaic`` takes its
    extra samples); one is picked at random per call. Each dict holds ``image`` (same dtype and
    channels as the host; any size) and, whenever the host has the matching target, ``mask`` /
    ``masks`` (same count), ``bboxes`` (in the Compose's ``BboxParams`` format, with its label
    fields), ``keypoints`` (the Compose's ``KeypointParams`` format) and ``label``. A host target
    without its partner counterpart raises ``ValueError`` (an empty list is fine): a partner defect
    must never be pasted without its label. :class:`albu_defects.BatchCompose` fills the key from a
    batch.

    Targets: the image gets the partner resized into the box (``interpolation``, default nearest
    as in the paper); masks get the partner mask resized with nearest (class ids exact); partner
    bboxes and keypoints are scaled into the box; host bboxes under the box are clipped to their
    visible part or dropped (see :func:`occlude_bboxes`; thresholds are the Compose's
    ``BboxParams.min_visibility`` and ``min_area``); host keypoints inside the box are removed.

    Outputs: ``mix_weights`` (float32 ``[lambda_A, lambda_B]``, see :func:`mix_weights` and, for
    ``label_mode="defect_area"``, :func:`defect_mix_weights`) and, when
    ``num_classes`` is set, ``soft_label`` (float32 ``(num_classes,)``) built from the host's
    integer ``label`` (data key ``label``) and the partner's (its dict's ``label``), both required
    then. When skipped (``p``, or a clipped box with a side below ``min_box_side``) the image is
    untouched and the outputs are ``[1, 0]`` and the host's own (smoothed) one-hot label, so a
    DataLoader always sees the same keys.

    Args:
        alpha: Beta(alpha, alpha) parameter of the host's area share (paper: 1).
        box: ``"beta"`` (paper), ``"square"`` or ``"fixed"`` (area share ``box_size``), see
            :func:`draw_boxes`.
        box_size: the box's share of the image area for ``box="fixed"`` (paper: 0.75).
        interpolation: OpenCV flag used to resize the partner image (masks always use nearest).
        label_mode: ``"area"`` (eq. 4), ``"one-hot"`` (the larger area wins) or ``"defect_area"``: by
            the defect pixels each image still shows (the host's nonzero ``mask`` pixels outside the
            box, the partner's inside it after resizing; a defect counts from ``min_visible_pixels``
            pixels, or when all of it shows), so a covered or vanished defect carries no label mass;
            needs ``mask`` (class-index or multi-hot) on the host and every partner. Rules, and the
            fallback when no defect shows: :func:`defect_mix_weights`.
        min_visible_pixels: ``label_mode="defect_area"``: the fewest pixels of a defect that must show for
            it to count (default 4, a 2x2 block).
        min_box_side: clipped boxes with a side below this many pixels skip mixing (paper: 3).
        num_classes: number of classes of ``label``; enables ``soft_label``.
        label_smoothing: label smoothing applied to each one-hot vector before mixing.
        metadata_key: data key holding the list of partner dicts.
        p: probability of applying the transform.
    """

    class InitSchema(BaseTransformInitSchema):
        alpha: float = Field(gt=0)
        box: BoxKind
        box_size: float = Field(gt=0, le=1)
        interpolation: Literal[
            cv2.INTER_NEAREST,
            cv2.INTER_NEAREST_EXACT,
            cv2.INTER_LINEAR,
            cv2.INTER_CUBIC,
            cv2.INTER_AREA,
            cv2.INTER_LANCZOS4,
        ]
        label_mode: LabelMode
        min_visible_pixels: int = Field(ge=1)
        min_box_side: int = Field(ge=1)
        num_classes: int | None = Field(ge=1)
        label_smoothing: float = Field(ge=0, le=1)
        metadata_key: str = Field(min_length=1)

    def __init__(
        self,
        alpha: float = 1.0,
        box: BoxKind = "beta",
        box_size: float = 0.75,
        interpolation: int = cv2.INTER_NEAREST,
        label_mode: LabelMode = "area",
        min_visible_pixels: int = MIN_VISIBLE_PIXELS,
        min_box_side: int = 3,
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
        metadata_key: str = "contextmix_metadata",
        p: float = 0.5,
    ):
        super().__init__(p=p)
        store_options(self, locals())

    @property
    def targets_as_params(self) -> list[str]:
        # Declared so albumentations checks them and ``Compose(strict=True)`` accepts the keys.
        return [self.metadata_key] + (["label"] if self.num_classes is not None else [])

    # ------------------------------------------------------------------ drawing parameters
    def draw_params(self, params: dict[str, Any], data: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        host = input_image(data)
        hw = image_hw(host)
        partners = data.get(self.metadata_key)
        if not isinstance(partners, Sequence) or isinstance(partners, (str, bytes)) or len(partners) == 0:
            raise ValueError(
                f"{self.metadata_key} must be a non-empty list of partner dicts (each with an 'image'), "
                f"got {type(partners).__name__}"
            )
        index = int(rng.integers(len(partners)))
        draws = rng.random(3)
        name = f"{self.metadata_key}[{index}]"
        partner = partners[index]
        if not isinstance(partner, Mapping) or "image" not in partner:
            raise ValueError(f"{name} must be a dict with an 'image' array, got {type(partner).__name__}")
        partner_image = check_unit_range(check_image(partner["image"], f"{name}['image']"), f"{name}['image']")
        if partner_image.ndim == 2 and host.ndim == 3 and host.shape[2] == 1:
            # AlbumentationsX hands a 2-D host to the transform as (H, W, 1); its gray partners stay 2-D
            partner_image = partner_image[..., None]
        check_matching_images(host, partner_image, "image", f"{name}['image']")
        partner_hw = image_hw(partner_image)

        box = draw_boxes(
            hw[0],
            hw[1],
            draws,
            alpha=self.alpha,
            box=self.box,
            box_size=self.box_size,
            min_box_side=self.min_box_side,
        )
        weights = mix_weights(box, hw[0], hw[1], self.label_mode)
        if self.label_mode == "defect_area" and data.get("mask") is None:
            raise ValueError(
                "label_mode='defect_area' weighs the labels by the defect pixels of 'mask': pass the host's mask "
                "(class-index or multi-hot) and one for every partner, or use label_mode='area'"
            )
        out: dict[str, Any] = {
            "box": tuple(int(v) for v in box),
            "partner_image": partner_image,
            "mix_weights": weights.astype(np.float32),
            "partner_mask": None,
            "partner_masks": None,
            "partner_bboxes": None,
            "partner_keypoints": None,
        }
        if data.get("mask") is not None:
            out["partner_mask"] = _partner_mask(partner.get("mask"), data["mask"], partner_hw, f"{name}['mask']")
            if self.label_mode == "defect_area":
                visible, total = visible_defect_pixels(
                    _defect_map(data["mask"]), _defect_map(out["partner_mask"]), out["box"]
                )
                weights = defect_mix_weights(visible, total, weights, self.min_visible_pixels)
                out["mix_weights"] = weights.astype(np.float32)
        if data.get("masks") is not None and len(data["masks"]) > 0:
            out["partner_masks"] = _partner_masks(partner.get("masks"), data["masks"], partner_hw, name)
        if data.get(ANOMALY_MASK_KEY) is not None:  # the partner's pseudo-anomalies, if it has any
            anomaly = partner.get(ANOMALY_MASK_KEY)
            name_a = f"{name}['{ANOMALY_MASK_KEY}']"
            out["partner_anomaly"] = (
                np.zeros(partner_hw, bool) if anomaly is None else as_bool_mask(anomaly, partner_hw, name_a)
            )
        if data.get("bboxes") is not None:
            # the partner's rows, scaled into the box in apply_* (their labels encoded there: see encode_partner_labels)
            out["partner_bboxes"] = partner_annotations(self, partner, "bboxes", name, np.asarray(data["bboxes"]))
            out["partner_bbox_labels"] = partner_labels(self, partner, "bboxes")
        if data.get("keypoints") is not None:
            out["partner_keypoints"] = partner_annotations(
                self, partner, "keypoints", name, np.asarray(data["keypoints"])
            )
            out["partner_keypoint_labels"] = partner_labels(self, partner, "keypoints")
        if self.num_classes is not None:
            if partner.get("label") is None:
                raise ValueError(f"{name} has no 'label' but num_classes is set: give every partner its class id")
            out["soft_label"] = soft_labels(
                self._host_label(data), partner["label"], weights, self.num_classes, self.label_smoothing
            )
        return out

    def _host_label(self, data: dict[str, Any]) -> Any:
        if data.get("label") is None:
            raise ValueError("num_classes is set, so the host needs an integer class id under the data key 'label'")
        return data["label"]

    # ------------------------------------------------------------------ targets
    def apply(self, img: np.ndarray, box: tuple[int, int, int, int], partner_image: np.ndarray, **params: Any):
        return paste_resized(img, partner_image, box, self.interpolation)

    def apply_to_mask(self, mask: np.ndarray, box: tuple[int, int, int, int], partner_mask: Any = None, **params: Any):
        return paste_resized(mask, partner_mask, box, cv2.INTER_NEAREST)

    def apply_to_anomaly_mask(
        self, anomaly_mask: np.ndarray, box: tuple[int, int, int, int], partner_anomaly: Any = None, **params: Any
    ) -> np.ndarray:
        return paste_resized(anomaly_mask, partner_anomaly, box, cv2.INTER_NEAREST)

    def rewrites_mask(self, params: dict[str, Any]) -> bool:
        x_min, y_min, x_max, y_max = params["box"]
        return x_max > x_min and y_max > y_min

    def apply_to_masks(self, masks: Any, box: tuple[int, int, int, int], partner_masks: Any = None, **params: Any):
        pasted = [paste_resized(m, pm, box, cv2.INTER_NEAREST) for m, pm in zip(masks, partner_masks, strict=True)]
        return np.stack(pasted) if isinstance(masks, np.ndarray) else pasted

    def apply_to_bboxes(
        self, bboxes: np.ndarray, box: tuple[int, int, int, int], partner_bboxes: Any = None, **params: Any
    ):
        processor = self.get_processor("bboxes")
        min_visibility = float(processor.params.min_visibility) if processor is not None else 0.0
        min_area = float(processor.params.min_area) if processor is not None else 0.0
        hw = tuple(params["shape"][:2])
        kept = occlude_bboxes(bboxes, box, hw, min_visibility, min_area)
        if partner_bboxes is not None:
            partner_bboxes = encode_partner_labels(
                self, "bboxes", partner_bboxes, params.get("partner_bbox_labels", {})
            )
            partner_bboxes = bboxes_into_box(partner_bboxes, box, hw)
        return _concat_rows(kept, partner_bboxes, bboxes.dtype)

    def apply_to_keypoints(
        self, keypoints: np.ndarray, box: tuple[int, int, int, int], partner_keypoints: Any = None, **params: Any
    ):
        if partner_keypoints is not None:
            labels = params.get("partner_keypoint_labels", {})
            partner_keypoints = encode_partner_labels(self, "keypoints", partner_keypoints, labels)
            partner_keypoints = keypoints_into_box(partner_keypoints, box, image_hw(params["partner_image"]))
        return _concat_rows(drop_keypoints_in_box(keypoints, box), partner_keypoints, keypoints.dtype)

    # ------------------------------------------------------------------ outputs
    def extra_outputs(self, params: dict[str, Any], data: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        out = {"mix_weights": params["mix_weights"]}
        if "soft_label" in params:
            out["soft_label"] = params["soft_label"]
        return out

    def default_outputs(self, data: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"mix_weights": np.array([1.0, 0.0], dtype=np.float32)}
        if self.num_classes is not None:
            host = self._host_label(data)
            out["soft_label"] = soft_labels(host, host, np.array([1.0, 0.0]), self.num_classes, self.label_smoothing)
        return out


def _partner_mask(
    mask: Any, host_mask: np.ndarray, partner_hw: tuple[int, int], name: str, instance: bool = False
) -> np.ndarray:
    """A partner's mask (``instance``: one of its ``masks``), checked against the host's and laid out like it."""
    if mask is None:
        raise ValueError(f"the host has a mask but {name} is missing: give every partner its mask")
    if instance:
        check_mask_shape(mask, partner_hw, name)
    else:
        check_label_mask(mask, partner_hw, name)
        if is_multi_hot(mask) != is_multi_hot(host_mask) or (
            is_multi_hot(mask) and mask.shape[2] != host_mask.shape[2]
        ):
            raise ValueError(
                f"{name} has shape {mask.shape} but the host mask {host_mask.shape}: both class-index, or both "
                "multi-hot with the same classes"
            )
    if mask.dtype != host_mask.dtype:
        raise ValueError(f"{name} has dtype {mask.dtype} but the host mask has {host_mask.dtype}; convert one")
    # Same layout as the host mask ((H, W), (H, W, 1) or (H, W, K)) so the paste is a plain copy.
    return mask if is_multi_hot(mask) else mask.reshape(mask.shape[:2] + host_mask.shape[2:])


def _partner_masks(
    masks: Any, host_masks: Sequence[np.ndarray], partner_hw: tuple[int, int], name: str
) -> list[np.ndarray]:
    """A partner's ``masks``, one per host mask, each checked by :func:`_partner_mask`."""
    if masks is None or len(masks) != len(host_masks):
        got = "none" if masks is None else len(masks)
        raise ValueError(f"the host has {len(host_masks)} masks but {name}['masks'] has {got}: they must match")
    return [
        _partner_mask(mask, host_masks[k], partner_hw, f"{name}['masks'][{k}]", instance=True)
        for k, mask in enumerate(masks)
    ]


def _defect_map(mask: np.ndarray) -> np.ndarray:
    """Bool (H, W): the pixels of a class-index ((H, W), (H, W, 1)) or multi-hot ((H, W, K)) mask that hold a defect."""
    return mask.any(axis=2) if mask.ndim == 3 else mask != 0


def _concat_rows(kept: np.ndarray, added: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    """Host rows that survive plus the partner's rows (either may be empty)."""
    if added is None or len(added) == 0:
        return kept.astype(dtype, copy=False)
    if len(kept) == 0:
        return np.asarray(added).astype(dtype, copy=False)
    return np.concatenate([kept, added], axis=0).astype(dtype, copy=False)
