"""The InjectDefect transform: inject real bank defects into one sample (the per-sample form of DLI)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema
from pydantic import Field, field_validator

from albu_defects.bank import DefectBank, resolve_bank
from albu_defects.core.labels import (
    CLASS_VECTOR_KEY,
    check_label_mask,
    class_ids,
    class_vector,
    classes_present,
    relabel,
    write_class,
)
from albu_defects.core.new_boxes import NewBox, append_boxes
from albu_defects.core.transform import DefectTransform, input_image, store_options
from albu_defects.core.validation import count_range_at_least, image_hw

from .arguments import (
    InjectionOptions,
    as_defect_transform,
    bank_argument,
    blending_options,
    class_ids_of,
    defect_transform_fn,
    serialized_bank,
    yaml_classes,
)
from .functional import placed_bbox, placed_label
from .plan import InjectionPlan, apply_plan, plan_injection

__all__ = [
    "InjectDefect",
]


# =========================================================================================== InjectDefect
class InjectDefect(DefectTransform):
    """Inject ``n`` real defects of one class (drawn from ``class_weights``) into a defect-free image.

    The per-sample form of DLI for a Dataset's ``A.Compose``. Targets: ``image`` (or the frames of
    ``images``, all injected alike); ``mask`` (a class-index mask, or a multi-hot (H, W, K) mask: the
    class is written on each defect's pixels, which then show that class only); ``bboxes`` (each
    defect's box is appended; label fields get the class id, or its name for string label fields;
    other extra columns the class id); ``keypoints`` unchanged; ``anomaly_mask`` loses the injected
    pixels. ``masks`` (instance masks) are rejected: which instance a new defect is cannot be known.

    The image-level label under ``label_key`` (default ``class_vector``; the label model of
    :mod:`albu_defects.core.labels`) is re-derived from the output mask in its own format (a float32
    or uint8 vector, or an int class id), so a class the injected defect covers leaves it; without a
    mask it is the input's classes plus the injected one. When absent it is written as a float32
    ``class_vector`` (K = the bank's classes). An int label cannot hold two classes: a
    ``ValueError`` says to use a vector.

    Images that already hold defects (nonzero mask, or a nonzero label) are left untouched unless
    ``only_defect_free=False``; then the new defect is pasted on top.

    Args:
        bank, poisson_p, poisson_mode, poisson_method, blend_margin, defect_transform, placement,
        size_mode: as in :class:`DynamicLabelInjection`.
        classes: the classes to draw from (names or ids; ``None`` = all).
        class_weights: one weight per class of ``classes`` (``None`` = uniform).
        n: number of defects, an int or an inclusive ``(low, high)`` range.
        only_defect_free: skip images that already hold defects.
        label_key: the data key of the per-image label (0.1.0 wrote a uint8 ``label``; its YAML files
            name ``label_key: label`` and keep working).
    """

    class InitSchema(BaseTransformInitSchema, InjectionOptions):
        bank: Any
        classes: list[str | int] | None
        class_weights: list[float] | None
        n: int | tuple[int, int] = Field(description="defects per image")
        defect_transform: Any
        only_defect_free: bool
        label_key: str

        _n = field_validator("n")(count_range_at_least(1))

        @field_validator("class_weights")
        @classmethod
        def _weights(cls, value: Any) -> Any:
            if value is not None and (not value or any(w < 0 for w in value) or sum(value) <= 0):
                raise ValueError(f"class_weights must be non-negative with a positive sum, got {value}")
            return value

    def __init__(
        self,
        bank: DefectBank | str,
        classes: Sequence[str | int] | None = None,
        class_weights: Sequence[float] | None = None,
        n: int | tuple[int, int] = 1,
        poisson_p: float = 0.5,
        poisson_mode: Literal["normal", "mixed"] = "mixed",
        poisson_method: Literal["auto", "opencv", "exact"] = "auto",
        blend_margin: int = 2,
        defect_transform: Any = None,
        placement: Literal["random", "source"] = "random",
        size_mode: Literal["relative", "absolute", "absolute_crop"] = "relative",
        only_defect_free: bool = True,
        label_key: str = CLASS_VECTOR_KEY,
        p: float = 0.5,
    ) -> None:
        super().__init__(p=p)
        store_options(self, locals())
        # stored in their YAML form: the bank as its reference, classes as names or ids, the transform built
        self.bank = bank_argument(bank)
        self.classes = yaml_classes(classes)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.defect_transform = as_defect_transform(defect_transform)
        ids = class_ids_of(resolve_bank(self.bank), self.classes)
        if self.class_weights is not None and len(self.class_weights) != len(ids):
            raise ValueError(f"class_weights has {len(self.class_weights)} weights for {len(ids)} classes")

    def get_transform_init_args(self) -> dict[str, Any]:
        args = super().get_transform_init_args()
        args["bank"] = serialized_bank(self.bank)  # the path, or a placeholder for an unsaved bank
        return args

    def to_dict_private(self) -> dict[str, Any]:
        out = super().to_dict_private()
        out["bank"] = serialized_bank(self.bank)
        out["defect_transform"] = self.defect_transform.to_dict_private()
        if isinstance(out.get("n"), tuple):
            out["n"] = list(out["n"])
        return out

    def check_inputs(self, data: dict[str, Any]) -> None:
        super().check_inputs(data)
        if data.get("masks") is not None:
            raise ValueError(
                "InjectDefect updates a class-index or multi-hot `mask`; `masks` (instance masks) cannot be updated "
                "consistently: pass the class mask as mask="
            )
        if data.get("mask") is not None:
            check_label_mask(data["mask"], image_hw(input_image(data)), "mask", self.known_num_classes(data))

    # ------------------------------------------------------------------ the label model
    def known_num_classes(self, data: dict[str, Any]) -> int | None:
        return len(resolve_bank(self.bank).classes)

    def label_keys(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.label_key, CLASS_VECTOR_KEY)))

    def rewrites_mask(self, params: dict[str, Any]) -> bool:
        return bool(params.get("plans"))

    def _held_classes(self, data: dict[str, Any], k: int) -> frozenset[int]:
        held: set[int] = set()
        mask = data.get("mask")
        if mask is not None:
            held |= class_ids(classes_present(mask, k))
        label = data.get(self.label_key)
        if label is not None:
            held |= _label_classes(label, k, self.label_key)
        return frozenset(held)

    # ------------------------------------------------------------------ drawing parameters
    def draw_params(self, params: dict[str, Any], data: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        bank = resolve_bank(self.bank)
        ids = class_ids_of(bank, self.classes)
        image = input_image(data)
        held = self._held_classes(data, len(bank.classes))
        if held and self.only_defect_free:
            return {"plans": [], "class_id": 0}
        weights = np.asarray(self.class_weights if self.class_weights is not None else [1.0] * len(ids), float)
        class_id = ids[int(rng.choice(len(ids), p=weights / weights.sum()))]
        low, high = (self.n, self.n) if isinstance(self.n, int) else self.n
        count = int(rng.integers(low, high + 1))
        py_random = getattr(self, "py_random", None) or random.Random(int(rng.integers(2**31)))
        transform = defect_transform_fn(self.defect_transform, rng, py_random)
        plans = [
            plan_injection(
                bank,
                class_id,
                image,
                rng,
                defect_transform=transform,
                size_mode=self.size_mode,  # type: ignore[arg-type]
                placement=self.placement,  # type: ignore[arg-type]
                poisson_p=self.poisson_p,
                blend_margin=self.blend_margin,
            )
            for _ in range(count)
        ]
        return {"plans": plans, "class_id": class_id}

    # ------------------------------------------------------------------ targets
    def apply(self, img: np.ndarray, plans: list[InjectionPlan], **params: Any) -> np.ndarray:
        for plan in plans:
            img = apply_plan(img, plan, **blending_options(self)).image
        return img

    def apply_to_mask(self, mask: np.ndarray, plans: list[InjectionPlan], **params: Any) -> np.ndarray:
        for plan in plans:
            mask = write_class(mask, placed_label(plan.mask, plan.top_left, image_hw(mask)), plan.class_id)
        return mask

    def apply_to_anomaly_mask(self, anomaly_mask: np.ndarray, plans: list[InjectionPlan], **params: Any) -> np.ndarray:
        out = anomaly_mask.copy()
        for plan in plans:
            out[placed_label(plan.mask, plan.top_left, image_hw(out))] = False  # the real defect hides it
        return out

    def apply_to_bboxes(self, bboxes: np.ndarray, plans: list[InjectionPlan], **params: Any) -> np.ndarray:
        if not plans:
            return bboxes
        hw = (int(params["shape"][0]), int(params["shape"][1]))
        placed = ((plan, placed_bbox(plan.mask, plan.top_left, hw)) for plan in plans)
        new = [NewBox(box, plan.class_id, plan.entry.class_name) for plan, box in placed if box is not None]
        return append_boxes(self, bboxes, new, hw)

    def apply_to_keypoints(self, keypoints: np.ndarray, **params: Any) -> np.ndarray:
        return keypoints

    # ------------------------------------------------------------------ outputs
    def extra_outputs(self, params: dict[str, Any], data: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        k = len(resolve_bank(self.bank).classes)
        label = data.get(self.label_key)
        if not params.get("plans") or result.get("mask") is not None:
            # untouched, or re-derived from the output mask by DefectTransform (the label model)
            return {self.label_key: self._label_of(data, k)}
        # no mask: the input's classes plus the injected one, where a defect landed
        landed = any(placed_bbox(p.mask, p.top_left, params["shape"][:2]) is not None for p in params["plans"])
        present = np.zeros(k, bool)
        for c in self._held_classes(data, k) | ({int(params["class_id"])} if landed else set()):
            present[c - 1] = True
        return {self.label_key: relabel(np.zeros(k, np.float32) if label is None else label, present, self.label_key)}

    def default_outputs(self, data: dict[str, Any]) -> dict[str, Any]:
        return {self.label_key: self._label_of(data, len(resolve_bank(self.bank).classes))}

    def _label_of(self, data: dict[str, Any], k: int) -> Any:
        label = data.get(self.label_key)
        if label is not None:
            return label
        mask = data.get("mask")
        return np.zeros(k, np.float32) if mask is None else class_vector(mask, k)


def _label_classes(label: Any, k: int, name: str) -> frozenset[int]:
    if np.ndim(label) == 0:
        value = int(label)
        if not 0 <= value <= k:
            raise ValueError(f"{name}={value}; class ids are 0 (defect-free) and 1..{k}")
        return frozenset() if value == 0 else frozenset({value})
    vector = np.asarray(label)
    if vector.shape != (k,):
        raise ValueError(
            f"{name} must be an int class id or a multi-hot vector of length {k}, got shape {vector.shape}"
        )
    return class_ids(vector)
