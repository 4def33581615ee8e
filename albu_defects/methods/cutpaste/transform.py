"""The CutPaste transform: draws a patch, a target and a jitter, and calls :func:`.functional.cut_paste`."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import field_validator

from albu_defects.core.color import ColorJitterFactors, check_jitter, sample_color_jitter
from albu_defects.core.geometry import Box
from albu_defects.core.transform import input_image, store_options
from albu_defects.core.validation import check_range, image_hw, range_within
from albu_defects.methods.anomaly.transform import FOOTPRINT_PARAM, AnomalyInitSchema, AnomalyTransform

from .functional import (
    cut_paste,
    cutpaste_patch_size,
    draw_aspect_ratio,
    max_scar_extent,
    rotated_footprint,
    scar_extent,
)

__all__ = [
    "SCAR_DRAWS",
    "CutPaste",
]

#: Scar draws tried for one whose rotated footprint is not empty (then it is taken unrotated).
SCAR_DRAWS = 20


# --------------------------------------------------------------------------- the transform
class CutPaste(AnomalyTransform):
    """CutPaste pseudo-anomaly (Li et al., CVPR 2021): ``variant="normal"`` or ``"scar"``.

    Args:
        variant: ``"normal"`` (a rectangle) or ``"scar"`` (a thin rotated rectangle).
        area_ratio_range: ``"normal"`` patch area as a fraction of the image.
        aspect_ratio_range: ``"normal"`` width / height; when it spans 1, half the draws come from
            ``(low, 1)`` and half from ``(1, high)``, as in the paper.
        scar_width_range, scar_height_range: ``"scar"`` size in pixels (integers, inclusive).
        rotation_range: ``"scar"`` rotation in degrees.
        brightness, contrast, saturation, hue: colour jitter strengths (a number ``x`` draws a
            factor from ``[1 - x, 1 + x]``, hue a shift from ``[-x, x]`` turns; a pair is a range).
        label: ``anomaly_label`` when applied and a pixel really changed (else the incoming one, or 0).
        mask_class_id: class written into ``mask`` on the pasted pixels (its channel of a multi-hot
            mask); ``None`` (default) leaves ``mask`` untouched: a pseudo-anomaly is no defect class.

    Targets: image, mask (pasted pixels written in under ``mask_class_id`` only), masks/bboxes/keypoints (unchanged). Outputs
    ``anomaly_label`` and ``anomaly_mask``. Raises ``ValueError`` when the image is smaller than the
    largest scar the ranges allow.
    """

    class InitSchema(AnomalyInitSchema):
        variant: Literal["normal", "scar"]
        area_ratio_range: tuple[float, float]
        aspect_ratio_range: tuple[float, float]
        scar_width_range: tuple[int, int]
        scar_height_range: tuple[int, int]
        rotation_range: tuple[float, float]
        brightness: float | tuple[float, float]
        contrast: float | tuple[float, float]
        saturation: float | tuple[float, float]
        hue: float | tuple[float, float]

        _area = field_validator("area_ratio_range")(range_within(0.0, 1.0, exclusive_min=True))
        _aspect = field_validator("aspect_ratio_range")(range_within(0.0, exclusive_min=True))

        @field_validator("scar_width_range", "scar_height_range")
        @classmethod
        def _scar_side(cls, value: tuple[int, int], info: Any) -> tuple[int, int]:
            check_range(value, info.field_name, 1.0)
            return value

        _rotation = field_validator("rotation_range")(range_within(-180.0, 180.0))

        @field_validator("brightness", "contrast", "saturation", "hue")
        @classmethod
        def _jitter(cls, value: Any, info: Any) -> Any:
            check_jitter(info.field_name, value)
            return value

    def __init__(
        self,
        variant: Literal["normal", "scar"] = "normal",
        area_ratio_range: tuple[float, float] = (0.02, 0.15),
        aspect_ratio_range: tuple[float, float] = (0.3, 3.3),
        scar_width_range: tuple[int, int] = (2, 16),
        scar_height_range: tuple[int, int] = (10, 25),
        rotation_range: tuple[float, float] = (-45.0, 45.0),
        brightness: float | tuple[float, float] = 0.1,
        contrast: float | tuple[float, float] = 0.1,
        saturation: float | tuple[float, float] = 0.1,
        hue: float | tuple[float, float] = 0.1,
        label: int = 1,
        mask_class_id: int | None = None,
        p: float = 0.5,
    ):
        super().__init__(p=p)
        store_options(self, locals())

    def check_inputs(self, data: dict[str, Any]) -> None:
        super().check_inputs(data)
        if self.variant != "scar":
            return
        image = input_image(data)
        hw = image_hw(image)
        rows, cols = max_scar_extent(self.scar_height_range, self.scar_width_range, self.rotation_range)
        need = (max(rows, max(self.scar_height_range)), max(cols, max(self.scar_width_range)))
        if hw[0] < need[0] or hw[1] < need[1]:
            raise ValueError(
                f"image is {hw[0]}x{hw[1]} pixels but scars (scar_height_range={list(self.scar_height_range)}, "
                f"scar_width_range={list(self.scar_width_range)}, rotation_range={list(self.rotation_range)}) "
                f"need up to {need[0]}x{need[1]}: use a larger image or smaller scar ranges"
            )

    def draw_params(self, params: dict[str, Any], data: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image = input_image(data)
        H, W = image_hw(image)
        if self.variant == "normal":
            ratio = float(rng.uniform(*self.area_ratio_range))
            height, width = cutpaste_patch_size((H, W), ratio, draw_aspect_ratio(self.aspect_ratio_range, rng))
            angle = 0.0
        else:
            height, width, angle = self._draw_scar(rng)
        rows, cols = scar_extent(height, width, angle)
        y, x = int(rng.integers(0, H - height + 1)), int(rng.integers(0, W - width + 1))
        source = (x, y, x + width, y + height)
        target = (int(rng.integers(0, H - rows + 1)), int(rng.integers(0, W - cols + 1)))
        jitter = sample_color_jitter(rng, self.brightness, self.contrast, self.saturation, self.hue)
        anomaly = np.zeros((H, W), bool)
        anomaly[target[0] : target[0] + rows, target[1] : target[1] + cols] = rotated_footprint(height, width, angle)
        return {"source": source, "target": target, "angle": angle, "jitter": jitter, FOOTPRINT_PARAM: anomaly}

    def _draw_scar(self, rng: np.random.Generator) -> tuple[int, int, float]:
        """A scar's height, width and angle whose rotated footprint holds a pixel centre.

        A 1-2 px side rotated between pixel centres can cover none; such a draw is redrawn (up to
        :data:`SCAR_DRAWS` times, then the scar is taken unrotated): an empty scar is no anomaly.
        """
        for _ in range(SCAR_DRAWS):
            width = int(rng.integers(self.scar_width_range[0], self.scar_width_range[1] + 1))
            height = int(rng.integers(self.scar_height_range[0], self.scar_height_range[1] + 1))
            angle = float(rng.uniform(*self.rotation_range))
            if rotated_footprint(height, width, angle).any():
                return height, width, angle
        return height, width, 0.0

    def apply(
        self,
        img: np.ndarray,
        source: Box,
        target: tuple[int, int],
        angle: float,
        jitter: ColorJitterFactors,
        **params: Any,
    ) -> np.ndarray:
        return cut_paste(img, source, target, angle, jitter)
