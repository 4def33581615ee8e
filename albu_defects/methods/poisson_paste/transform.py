"""The PoissonPaste transform: draws donor objects and where they go, and calls :mod:`.functional` in ``apply_*``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema
from pydantic import Field, field_validator

from albu_defects.core.labels import CLASS_VECTOR_KEY, class_vector
from albu_defects.core.new_boxes import NewBox, append_boxes
from albu_defects.core.transform import DefectTransform, input_image, store_options
from albu_defects.core.validation import check_int, count_range_at_least, image_hw, range_within
from albu_defects.methods.injection.functional import match_channels

from .donors import donor_candidates, paste_region
from .functional import (
    PastedObject,
    draw_top_left,
    host_box_visibility,
    object_map,
    paste_objects,
    prepare_object,
    visible_boxes,
    write_class_mask,
    write_masks,
)

__all__ = [
    "PoissonPaste",
]


class PoissonPaste(DefectTransform):
    """Copy-paste objects you supply into the image, blended by the exact Poisson solver (or pasted).

    Donors arrive through ``data[metadata_key]`` (default ``"paste_metadata"``), a list of dicts
    (the way ``A.Mosaic`` and :class:`~albu_defects.ContextMix` take extra samples); each call pastes
    ``n`` objects drawn from them with replacement (an empty list pastes nothing). A donor dict holds:

    - ``image``: the donor's pixels, the host's dtype, the host's channels or one channel (repeated
      over the host's channels); any size;
    - ``mask``: bool or integer, the donor's height and width, nonzero on the object's pixels;
    - ``class_id`` (int >= 1): the class written into the host ``mask`` where the object lands;
      needed when the host has a ``mask``, a ``class_vector`` or ``num_classes`` is set;
    - the Compose's bbox label fields (e.g. ``"labels": "scratch"``): the labels of the object's new
      box; a field the donor lacks gets ``class_id``;
    - ``masks``: one plane per host ``masks`` entry (same dtype), whose values are written where the
      object lands; needed when the host has ``masks`` (a pasted object must never go unlabelled);
    - ``bboxes`` (optional; the Compose's bbox format, normalized without ``BboxParams``): each box
      makes the part of ``mask`` inside it one object, so a whole annotated image can be a donor; then
      ``class_id`` and the label fields may be lists with one entry per box.

    Per object: an isotropic scale drawn from ``scale_range`` (shrunk further, if needed, to fit the
    image), horizontal / vertical flips with ``hflip_p`` / ``vflip_p``, and a position drawn uniformly
    among those where the whole object mask lies inside the image and, with ``region``, on region
    pixels only: ``"mask"``: the nonzero pixels of the data key ``object_mask_key`` (returned
    unchanged); ``"bbox"``: the pixels of the input ``bboxes``. An object that fits nowhere is left
    out (so is every object when the region is empty). Blending: ``"poisson"`` (exact Perez
    equation on the object's mask dilated by ``blend_margin``, ``poisson_mode`` normal or mixed
    gradients, ``poisson_method`` ``"exact"`` or ``"auto"`` as
    :func:`albu_defects.poisson_blend`), ``"paste"`` (the mask's pixels copied), or ``"random"``
    (Poisson with probability ``poisson_p``, per object). No pixel farther than ``blend_margin``
    from a pasted object changes; float32 results stay in [0, 1].

    Targets: image; ``mask`` (a class-index mask, (H, W) or (H, W, 1): the object's class id on its
    visible pixels; a multi-hot (H, W, K) mask: its class channel on, the others off); ``masks`` (the
    donor's planes); ``bboxes`` (one box per pasted object over its visible pixels, label fields
    filled; input boxes that the objects cover entirely, or beyond the Compose's ``min_visibility``,
    are dropped); keypoints unchanged. Later objects cover earlier ones (the front object wins).
    Labels (README "Labels"): ``class_vector`` (float32 (K,)) is re-derived from the final mask
    when the input has one or ``num_classes`` is set (without a mask: the input's classes plus those
    pasted).

    Args:
        n: objects per call, an int or an inclusive ``(low, high)`` range.
        blend: ``"poisson"``, ``"paste"`` or ``"random"``.
        poisson_p: probability of Poisson blending per object with ``blend="random"``.
        poisson_mode: ``"normal"`` (source gradients) or ``"mixed"`` (the larger of source and host).
        poisson_method: ``"exact"`` (the masked Perez solve) or ``"auto"`` (OpenCV where it is faithful).
        blend_margin: pixels the Poisson region extends beyond the object's mask, so the object's own outline is
            blended in rather than pinned to the host (0: the mask itself, and no pixel outside it changes).
        scale_range: ``(low, high)`` object scale factor, drawn uniformly.
        hflip_p, vflip_p: probabilities of flipping an object left-right, up-down.
        region: ``"image"``, ``"mask"`` or ``"bbox"`` (see above).
        object_mask_key: data key of the region mask for ``region="mask"``.
        num_classes: number of classes K; makes ``class_vector`` an output of every call.
        metadata_key: data key holding the list of donor dicts.
        p: probability of applying the transform.
    """

    class InitSchema(BaseTransformInitSchema):
        n: int | tuple[int, int] = Field(description="objects per call")
        blend: Literal["poisson", "paste", "random"]
        poisson_p: float = Field(ge=0, le=1)
        poisson_mode: Literal["normal", "mixed"]
        poisson_method: Literal["exact", "auto"]
        blend_margin: int = Field(ge=0)
        scale_range: tuple[float, float]
        hflip_p: float = Field(ge=0, le=1)
        vflip_p: float = Field(ge=0, le=1)
        region: Literal["image", "mask", "bbox"]
        object_mask_key: str = Field(min_length=1)
        num_classes: int | None = Field(ge=1)
        metadata_key: str = Field(min_length=1)

        _n = field_validator("n")(count_range_at_least(0))
        _scale = field_validator("scale_range")(range_within(0.0, exclusive_min=True))

    def __init__(
        self,
        n: int | tuple[int, int] = 1,
        blend: Literal["poisson", "paste", "random"] = "poisson",
        poisson_p: float = 0.5,
        poisson_mode: Literal["normal", "mixed"] = "normal",
        poisson_method: Literal["exact", "auto"] = "exact",
        blend_margin: int = 2,
        scale_range: tuple[float, float] = (1.0, 1.0),
        hflip_p: float = 0.0,
        vflip_p: float = 0.0,
        region: Literal["image", "mask", "bbox"] = "image",
        object_mask_key: str = "object_mask",
        num_classes: int | None = None,
        metadata_key: str = "paste_metadata",
        p: float = 0.5,
    ):
        super().__init__(p=p)
        store_options(self, locals())

    @property
    def targets_as_params(self) -> list[str]:
        # Declared so albumentations checks them and ``Compose(strict=True)`` accepts the keys.
        return [self.metadata_key] + ([self.object_mask_key] if self.region == "mask" else [])

    def to_dict_private(self) -> dict[str, Any]:
        out = super().to_dict_private()
        for key in ("n", "scale_range"):
            if isinstance(out.get(key), tuple):
                out[key] = list(out[key])  # YAML has no tuples
        return out

    # ------------------------------------------------------------------ drawing parameters
    def draw_params(self, params: dict[str, Any], data: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        host = input_image(data)
        hw = image_hw(host)
        candidates = donor_candidates(self, data, host)
        region = paste_region(self, data, hw)
        low, high = (self.n, self.n) if isinstance(self.n, int) else self.n
        count = int(rng.integers(low, high + 1)) if candidates else 0
        objects = []
        for _ in range(count):
            pick = candidates[int(rng.integers(len(candidates)))]
            scale = float(rng.uniform(*self.scale_range))
            hflip, vflip = (bool(v) for v in rng.random(2) < (self.hflip_p, self.vflip_p))
            method = self.blend
            if method == "random":
                method = "poisson" if rng.random() < self.poisson_p else "paste"
            crop, mask, planes = prepare_object(
                pick.image,
                pick.mask,
                pick.planes,
                hw,
                scale=scale,
                hflip=hflip,
                vflip=vflip,
                context=self.blend_margin + 1,  # Poisson reads source gradients one pixel beyond its region
            )
            top_left = draw_top_left(mask, region, hw, rng)
            if top_left is None:
                continue
            crop = match_channels(crop, host, f"{self.metadata_key}[{pick.donor}]['image']")
            objects.append(
                PastedObject(crop, mask, top_left, method, pick.class_id, tuple(planes), pick.labels, pick.donor)
            )
        return {"objects": objects, "owner": object_map(objects, hw)}

    def check_class_id(self, class_id: Any, data: dict[str, Any], name: str) -> int:
        """A donor's class id, an int in 1..K when K is known (``num_classes`` or an incoming class_vector)."""
        class_id = check_int(class_id, name, 1, "(0 is background)")
        k = self._num_classes(data)
        if k is not None and class_id > k:
            raise ValueError(f"{name}={class_id} but there are only {k} classes (num_classes / class_vector)")
        return int(class_id)

    def _num_classes(self, data: dict[str, Any]) -> int | None:
        """K: ``num_classes``, else the length of an incoming ``class_vector``; ``None`` when neither is there."""
        incoming = data.get(CLASS_VECTOR_KEY)
        if incoming is not None and np.ndim(incoming) != 1:
            raise ValueError(f"{CLASS_VECTOR_KEY} must be a vector (K,), got shape {np.shape(incoming)}")
        if incoming is not None and self.num_classes is not None and len(incoming) != self.num_classes:
            raise ValueError(f"{CLASS_VECTOR_KEY} has {len(incoming)} classes but num_classes={self.num_classes}")
        return self.num_classes if self.num_classes is not None else None if incoming is None else len(incoming)

    # ------------------------------------------------------------------ targets
    def apply(self, img: np.ndarray, objects: Sequence[PastedObject] = (), **params: Any) -> np.ndarray:
        if not objects:
            return img
        return paste_objects(
            img,
            objects,
            poisson_mode=self.poisson_mode,
            poisson_method=self.poisson_method,
            blend_margin=self.blend_margin,
        )

    def apply_to_mask(
        self, mask: np.ndarray, objects: Sequence[PastedObject] = (), owner: np.ndarray | None = None, **params: Any
    ) -> np.ndarray:
        if not objects or owner is None:
            return mask
        return write_class_mask(mask, objects, owner)

    def apply_to_masks(
        self, masks: Any, objects: Sequence[PastedObject] = (), owner: np.ndarray | None = None, **params: Any
    ) -> Any:
        if not objects or owner is None:
            return masks
        written = write_masks(masks, objects, owner)
        return np.stack(written) if isinstance(masks, np.ndarray) else written

    def apply_to_bboxes(
        self, bboxes: np.ndarray, objects: Sequence[PastedObject] = (), owner: np.ndarray | None = None, **params: Any
    ) -> np.ndarray:
        if not objects or owner is None:
            return bboxes
        processor = self.get_processor("bboxes")
        min_visibility = float(processor.params.min_visibility) if processor is not None else 0.0
        if len(bboxes):
            visible = host_box_visibility(bboxes, owner)
            bboxes = bboxes[(visible > 0) & (visible >= min_visibility)]
        new = [
            NewBox(box, obj.class_id or 0, labels=obj.labels)
            for obj, box in zip(objects, visible_boxes(objects, owner), strict=True)
            if box is not None
        ]
        return append_boxes(self, bboxes, new, owner.shape)

    def apply_to_keypoints(self, keypoints: np.ndarray, **params: Any) -> np.ndarray:
        return keypoints

    # ------------------------------------------------------------------ outputs
    def known_num_classes(self, data: dict[str, Any]) -> int | None:
        return self._num_classes(data)

    def rewrites_mask(self, params: dict[str, Any]) -> bool:
        return bool(params.get("objects"))

    def extra_outputs(self, params: dict[str, Any], data: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        k = self._num_classes(data)
        if k is None:
            return {}
        if result.get("mask") is not None:  # the label model re-derives it from the final mask
            return {CLASS_VECTOR_KEY: class_vector(result["mask"], k)}
        vector = self._incoming_vector(data, k)
        objects, owner = params.get("objects", ()), params.get("owner")
        for obj, box in zip(objects, visible_boxes(objects, owner), strict=True):
            if box is not None and obj.class_id is not None:
                vector[obj.class_id - 1] = 1.0
        return {CLASS_VECTOR_KEY: vector}

    def default_outputs(self, data: dict[str, Any]) -> dict[str, Any]:
        if self.num_classes is None or CLASS_VECTOR_KEY in data:
            return {}
        mask = data.get("mask")
        k = self.num_classes
        return {CLASS_VECTOR_KEY: class_vector(mask, k) if mask is not None else np.zeros(k, np.float32)}

    @staticmethod
    def _incoming_vector(data: dict[str, Any], k: int) -> np.ndarray:
        incoming = data.get(CLASS_VECTOR_KEY)
        return np.zeros(k, np.float32) if incoming is None else np.asarray(incoming, np.float32).copy()
