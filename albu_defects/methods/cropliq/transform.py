"""The CropLiq transform: draws a patch and a fold-free warp, and calls :func:`.functional.liquify`."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from albu_defects.core.geometry import box_hw, box_slices, image_box
from albu_defects.core.transform import input_image, store_options
from albu_defects.core.validation import as_bool_mask, image_hw, range_within
from albu_defects.methods.anomaly.transform import FOOTPRINT_PARAM, AnomalyInitSchema, AnomalyTransform

from .functional import (
    MAX_DRAWS,
    MIN_PATCH_SIDE,
    WARP_KINDS,
    Field2D,
    Region,
    bbox_to_pixels,
    draw_patch,
    draw_warp_field,
    foreground_mask,
    liquify,
    moved_pixels,
)

__all__ = [
    "CropLiq",
]


# --------------------------------------------------------------------------- the transform
class CropLiq(AnomalyTransform):
    """Liquify a random patch of the object, its border held fixed (CropLiq, Le & Kim).

    Args:
        region: where the patch goes. ``"bbox"``: inside one of the ``bboxes`` (see
            ``bbox_choice``); ``"mask"``: inside the object mask passed under the data key
            ``object_mask_key`` (bool or integer, nonzero = object; it is returned unchanged);
            ``"auto"``: inside an automatic foreground estimate (:func:`foreground_mask`: Otsu +
            largest component), or the whole image when not even an 8x8 patch fits in it;
            ``"image"``: anywhere.
        area_range: patch area as a fraction of the region's area.
        aspect_range: patch width / height (log-uniform).
        warp: ``"push"``, ``"swirl"``, ``"bloat"``, ``"pinch"``, ``"strokes"`` or ``"random"`` (one
            of those five per call).
        strength_range: warp strength in (0, 1]: push distance as a fraction of the patch
            half-size, swirl angle as a fraction of pi, bloat/pinch factor. Folds are prevented by
            scaling down (:func:`fold_free_scale`), so high strengths saturate.
        move_threshold: pixels moved by more than this (in pixels) form the anomaly mask; the others
            keep their exact values.
        object_mask_key: data key of the object mask for ``region="mask"``.
        bbox_choice: ``"random"``, ``"first"`` or ``"largest"`` box for ``region="bbox"``.
        label: ``anomaly_label`` when applied and a pixel really changed (else the incoming one, or 0).
        mask_class_id: class written into ``mask`` on the anomaly pixels (its channel of a multi-hot
            mask); ``None`` (default) leaves ``mask`` untouched: a pseudo-anomaly is no defect class.

    Targets: image, mask (anomaly written in under ``mask_class_id`` only), masks/bboxes/keypoints (unchanged). Outputs
    ``anomaly_label`` and ``anomaly_mask`` (see :mod:`albu_defects.methods.anomaly.transform`). Raises ``ValueError`` for
    an image under 8x8 pixels, ``region="bbox"`` without boxes, a missing or empty object mask, or a
    region too small for an 8x8 patch.
    """

    class InitSchema(AnomalyInitSchema):
        region: Literal["auto", "bbox", "mask", "image"]
        area_range: tuple[float, float]
        aspect_range: tuple[float, float]
        warp: Literal["random", "push", "swirl", "bloat", "pinch", "strokes"]
        strength_range: tuple[float, float]
        move_threshold: float = Field(gt=0)
        object_mask_key: str = Field(min_length=1)
        bbox_choice: Literal["random", "first", "largest"]

        _area = field_validator("area_range")(range_within(0.0, 1.0, exclusive_min=True))
        _aspect = field_validator("aspect_range")(range_within(0.0, exclusive_min=True))
        _strength = field_validator("strength_range")(range_within(0.0, 1.0, exclusive_min=True))

    def __init__(
        self,
        region: Literal["auto", "bbox", "mask", "image"] = "auto",
        area_range: tuple[float, float] = (0.02, 0.15),
        aspect_range: tuple[float, float] = (0.5, 2.0),
        warp: Literal["random", "push", "swirl", "bloat", "pinch", "strokes"] = "random",
        strength_range: tuple[float, float] = (0.3, 0.6),
        move_threshold: float = 0.5,
        object_mask_key: str = "object_mask",
        bbox_choice: Literal["random", "first", "largest"] = "random",
        label: int = 1,
        mask_class_id: int | None = None,
        p: float = 0.5,
    ):
        super().__init__(p=p)
        store_options(self, locals())

    def read_keys(self) -> tuple[str, ...]:
        return (*super().read_keys(), self.object_mask_key)

    def own_keys(self) -> tuple[str, ...]:
        return (*super().own_keys(), self.object_mask_key)  # read, handed back untouched

    def object_region(self, image: np.ndarray, data: dict[str, Any], rng: np.random.Generator) -> Region:
        """The region of this call (validated: at least an 8x8 patch fits in it)."""
        hw = image_hw(image)
        side = MIN_PATCH_SIDE
        if hw[0] < side or hw[1] < side:
            raise ValueError(f"image is {hw[0]}x{hw[1]} pixels; CropLiq needs at least {side}x{side}")
        whole = Region.from_box(image_box(hw))
        if self.region == "image":
            return whole
        if self.region == "auto":  # whole image when no object is found (checked by the caller's draw)
            return Region.from_mask(foreground_mask(image)) or whole
        if self.region == "bbox":
            bboxes = data.get("bboxes")
            if bboxes is None or len(bboxes) == 0:
                raise ValueError("region='bbox' needs bboxes: pass bboxes=... (with bbox_params in A.Compose)")
            boxes = [bbox_to_pixels(b, hw) for b in bboxes]
            if self.bbox_choice == "first":
                box = boxes[0]
            elif self.bbox_choice == "largest":
                box = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
            else:
                box = boxes[int(rng.integers(len(boxes)))]
            found = Region.from_box(box)
            if not found.fits(side, side):
                raise ValueError(
                    f"the chosen bbox covers {box_hw(box)[0]}x{box_hw(box)[1]} whole pixels; "
                    f"bboxes for CropLiq must be at least {side}x{side}"
                )
            return found
        key = self.object_mask_key
        if data.get(key) is None:
            raise ValueError(f"region='mask' needs the object mask under the data key {key!r} (object_mask_key)")
        found = Region.from_mask(as_bool_mask(data[key], hw, key))
        if found is None:
            raise ValueError(f"the object mask {key!r} is empty: it must mark the object with nonzero pixels")
        if not found.fits(side, side):
            raise ValueError(f"no {side}x{side} patch fits inside the object mask {key!r}: the object is too small")
        return found

    def draw_params(self, params: dict[str, Any], data: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image = input_image(data)
        region = self.object_region(image, data, rng)
        for _ in range(MAX_DRAWS):
            patch = draw_patch(region, self.area_range, self.aspect_range, rng)
            if patch is None:  # only an automatic estimate can be this small: fall back to the image
                region = Region.from_box(image_box(image_hw(image)))
                patch = draw_patch(region, self.area_range, self.aspect_range, rng)
            kind = str(rng.choice(WARP_KINDS)) if self.warp == "random" else self.warp
            dx, dy = draw_warp_field(*box_hw(patch), kind, self.strength_range, rng)
            moved = moved_pixels(dx, dy, self.move_threshold)
            if moved.any():
                break
        else:
            raise ValueError(
                f"{MAX_DRAWS} warps in a row moved no pixel by more than move_threshold={self.move_threshold}: "
                "raise strength_range or area_range, or lower move_threshold"
            )
        anomaly = np.zeros(image_hw(image), bool)
        anomaly[box_slices(patch)] = moved
        return {"top_left": (patch[1], patch[0]), "displacement": (dx, dy), FOOTPRINT_PARAM: anomaly}

    def apply(self, img: np.ndarray, top_left: tuple[int, int], displacement: Field2D, **params: Any) -> np.ndarray:
        return liquify(img, top_left, *displacement, move_threshold=self.move_threshold)
