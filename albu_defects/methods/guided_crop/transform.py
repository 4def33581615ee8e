"""The GuidedCropPaste transform: draws a plan (:func:`.functional.plan_guided_crop`) and renders it in ``apply_*``."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema
from pydantic import field_validator, model_validator

from albu_defects.bank import (
    DefectBank,
    resolve_bank,
)
from albu_defects.core.class_weights import ClassWeights
from albu_defects.core.labels import CLASS_VECTOR_KEY, check_label_mask, class_vector, is_multi_hot
from albu_defects.core.new_boxes import NewBox, append_boxes
from albu_defects.core.transform import DefectTransform, input_image, store_options
from albu_defects.core.validation import image_hw, options_schema
from albu_defects.methods.injection.arguments import bank_argument, serialized_bank

from .functional import (
    BlobLayer,
    GuidedCropOptions,
    GuidedCropPlan,
    class_mask_dtype,
    class_probabilities,
    composite_mask,
    paste_defects,
    plan_guided_crop,
    render_blob_layer,
    render_mask,
)
from .stage import apply_global_stage, stage_bboxes, stage_geometry, stage_keypoints

__all__ = [
    "GuidedCropPaste",
]


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
        size_mode: ``"absolute"`` (default): crops keep the bank's pixel size (right when the images
            have the bank's resolution, or are crops of such images); ``"relative"``: each crop is
            scaled by (image size / its source image's size), as DLI's ``size_mode="relative"``, so
            a bank built at native resolution pastes defects at the size they have in *resized*
            training images (identity when the sizes match).
        skip_defective: return samples whose ``mask`` already holds defects unchanged.
        bbox_label: what the label fields of new boxes hold: ``"id"`` (class id) or ``"name"``.
        p: probability of applying the transform.

    Targets: image (or ``images``), mask (class-index or multi-hot; extra mask targets alike), masks,
    bboxes, keypoints; ``anomaly_mask`` moved; adds ``class_vector`` (and ``mask`` when not given). See :mod:`albu_defects.methods.guided_crop.functional` for every output, label handling and the YAML
    rules.
    """

    class InitSchema(BaseTransformInitSchema, options_schema(GuidedCropOptions, "GuidedCropSchema")):
        # the drawing options (max_defects, the jitters, flip_p, ...) come from GuidedCropOptions
        bank: Any
        weights: Literal["uniform", "inverse_frequency"] | list[float]
        class_weights: Any
        skip_defective: bool
        bbox_label: Literal["id", "name"]

        @field_validator("bank")
        @classmethod
        def _bank(cls, value: Any) -> Any:
            value = bank_argument(value)
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
            GuidedCropOptions.of(self).checked()
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
        size_mode: Literal["relative", "absolute"] = "absolute",
        skip_defective: bool = True,
        bbox_label: Literal["id", "name"] = "id",
        p: float = 0.5,
    ):
        super().__init__(p=p)
        store_options(self, locals())

    # -- serialization: the bank as its path, the live weights left out --------------------------
    def get_transform_init_args(self) -> dict[str, Any]:
        args = super().get_transform_init_args()
        args.pop("class_weights", None)
        args["bank"] = serialized_bank(self.bank)  # the path, or a placeholder for an unsaved bank
        return args

    def to_dict_private(self) -> dict[str, Any]:
        state = super().to_dict_private()
        state["bank"] = serialized_bank(self.bank)  # an unsaved bank: a marker that prints but never saves
        return state

    # -- helpers -----------------------------------------------------------------------------------
    @property
    def options(self) -> GuidedCropOptions:
        return GuidedCropOptions.of(self)

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

    def known_num_classes(self, data: dict[str, Any]) -> int | None:
        return len(self.resolved_bank().classes)

    def rewrites_mask(self, params: dict[str, Any]) -> bool:
        return not params.get("skip", True)

    def check_inputs(self, data: dict[str, Any]) -> None:
        super().check_inputs(data)
        mask = data.get("mask")
        if mask is None:
            return
        if mask.dtype == bool and not is_multi_hot(mask):
            raise ValueError("mask must be an integer class-index mask (0 = background, k = bank class k), not bool")
        # class ids beyond the bank's would silently drop out of class_vector
        check_label_mask(mask, image_hw(input_image(data)), "mask", num_classes=self.known_num_classes(data))

    # -- the hook: the plan and where its blobs land; every target is rendered in apply_* -----------
    def draw_params(self, params: dict[str, Any], data: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image = input_image(data)
        bank = self.resolved_bank(refresh=True)
        mask = data.get("mask")
        if self.skip_defective and mask is not None and mask.any():
            return {"skip": True}
        plan = plan_guided_crop(bank, image, self.current_probabilities(bank), rng, self.options)
        return {"skip": False, "plan": plan, "layer": render_blob_layer(image_hw(image), plan)}

    def apply(
        self, img: np.ndarray, skip: bool = True, plan: GuidedCropPlan | None = None, **params: Any
    ) -> np.ndarray:
        if skip or plan is None:
            return img
        return apply_global_stage(paste_defects(img, plan.defects), plan.stage)

    def apply_to_mask(
        self,
        mask: np.ndarray,
        skip: bool = True,
        plan: GuidedCropPlan | None = None,
        layer: BlobLayer | None = None,
        **params: Any,
    ) -> np.ndarray:
        if skip or plan is None or layer is None:
            return mask
        return render_mask(layer, plan, len(self.resolved_bank().classes), mask, image_hw(mask))

    def apply_to_anomaly_mask(
        self, anomaly_mask: np.ndarray, skip: bool = True, plan: GuidedCropPlan | None = None, **params: Any
    ) -> np.ndarray:
        if skip or plan is None:
            return anomaly_mask
        moved = stage_geometry(anomaly_mask, plan.stage)
        moved[params["layer"].owner != 0] = False  # a pasted real defect hides the anomaly beneath it
        return moved

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
        layer: BlobLayer | None = None,
        **params: Any,
    ) -> np.ndarray:
        if skip or plan is None or layer is None:
            return bboxes
        h, w = params["shape"][:2]
        existing = np.asarray(bboxes)
        moved = stage_bboxes(existing, plan.stage, (h, w)) if existing.size else None
        blob_boxes = layer.boxes
        if not blob_boxes.boxes:
            return moved if moved is not None else bboxes
        bank = self.resolved_bank()
        new = [NewBox(box, class_id, bank.classes[class_id - 1]) for box, class_id in zip(*blob_boxes, strict=True)]
        base = moved if moved is not None else existing
        return append_boxes(self, base, new, (h, w), label_by=self.bbox_label, class_column=True)

    # -- outputs -----------------------------------------------------------------------------------
    def extra_outputs(self, params: dict[str, Any], data: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        if params.get("skip", True):
            return self.default_outputs(data)
        num_classes = len(self.resolved_bank().classes)
        outputs: dict[str, Any] = {}
        if data.get("mask") is None:  # created: the blobs on an empty class-index mask
            outputs["mask"] = composite_mask(params["layer"].owner, params["layer"].blob_classes, None, num_classes)
        if data.get(CLASS_VECTOR_KEY) is None:  # filled from the output mask by DefectTransform
            outputs[CLASS_VECTOR_KEY] = np.zeros(num_classes, np.float32)
        return outputs

    def default_outputs(self, data: dict[str, Any]) -> dict[str, Any]:
        num_classes = len(self.resolved_bank().classes)
        mask = data.get("mask")
        if isinstance(mask, np.ndarray) and (mask.dtype != bool or is_multi_hot(mask)):
            return {CLASS_VECTOR_KEY: class_vector(mask, num_classes)}
        outputs: dict[str, Any] = {CLASS_VECTOR_KEY: np.zeros(num_classes, np.float32)}
        image = input_image(data)
        if mask is None and image is not None:
            outputs["mask"] = np.zeros(image_hw(image), class_mask_dtype(num_classes))
        return outputs
