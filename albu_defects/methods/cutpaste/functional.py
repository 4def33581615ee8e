"""CutPaste (Li et al., CVPR 2021): cut a patch, colour-jitter it, paste it elsewhere in the same image.

Two variants, with the paper's defaults:

- ``"normal"``: a rectangle of area ``U(0.02, 0.15)`` of the image and aspect (width / height) from
  ``U(0.3, 1)`` or ``U(1, 3.3)`` (50/50), pasted at a random location;
- ``"scar"``: a thin rectangle, width 2-16 and height 10-25 pixels (integers, inclusive), rotated by
  ``U(-45, 45)`` degrees about its centre, pasted at a random location.

Both jitter the patch by 0.1 in brightness, contrast, saturation and hue (:mod:`albu_defects.core.color`;
saturation and hue are skipped on grayscale). The anomaly mask is exactly the set of pasted pixels:
the rectangle, or for a scar its rotated footprint (the pixel centres inside the rotated rectangle).
The paste is hard (:func:`albu_defects.paste`), so every pixel outside the footprint keeps its value.

Known bugs of public implementations avoided here: the scar's target range is computed from its
*rotated* extent, so it always lands whole (never clipped at the right or bottom edge); height and
width are never swapped (aspect is width / height); the mask is the footprint itself, not a
thresholded soft alpha (which changes pixels outside the mask); the jitter is linear and unclipped
for float32, so it works on normalised images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import field_validator

from albu_defects.blending import paste
from albu_defects.core.color import ColorJitterFactors, check_jitter, color_jitter, sample_color_jitter
from albu_defects.core.transform import input_image
from albu_defects.core.validation import check_image, check_range, image_hw
from albu_defects.methods.anomaly.transform import ANOMALY_MASK_KEY, AnomalyInitSchema, AnomalyTransform

__all__ = [
    "CutPaste",
    "cut_paste",
    "cutpaste_patch_size",
    "max_scar_extent",
    "rotated_footprint",
    "sample_aspect_ratio",
    "scar_extent",
]


# --------------------------------------------------------------------------- geometry
def _extent(height: float, width: float, angle: float) -> tuple[float, float]:
    theta = math.radians(angle)
    cos, sin = abs(math.cos(theta)), abs(math.sin(theta))
    return height * cos + width * sin, width * cos + height * sin


def scar_extent(height: int, width: int, angle: float) -> tuple[int, int]:
    """``(rows, cols)`` of the smallest canvas holding a ``height`` x ``width`` rectangle rotated by ``angle`` degrees."""
    rows, cols = _extent(height, width, angle)
    return max(1, math.ceil(rows - 1e-6)), max(1, math.ceil(cols - 1e-6))


def max_scar_extent(
    height_range: Sequence[int], width_range: Sequence[int], rotation_range: Sequence[float]
) -> tuple[int, int]:
    """The largest :func:`scar_extent` over all sizes and angles of the ranges (the image must be at least this)."""
    height, width = int(max(height_range)), int(max(width_range))  # the extent grows with both sides
    low, high = float(min(rotation_range)), float(max(rotation_range))
    # h|cos| + w|sin| peaks at +-atan(w/h) + k*180 degrees, w|cos| + h|sin| at +-atan(h/w) + k*180
    peaks = [math.degrees(math.atan2(width, height)), math.degrees(math.atan2(height, width))]
    angles = [low, high] + [s * a + k * 180.0 for a in peaks for s in (1, -1) for k in range(-2, 3)]
    extents = [scar_extent(height, width, a) for a in angles if low <= a <= high]
    return max(e[0] for e in extents), max(e[1] for e in extents)


def _rotation_maps(height: int, width: int, angle: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each pixel of the rotated canvas, where it samples the unrotated patch, and whether it is inside it."""
    rows, cols = scar_extent(height, width, angle)
    theta = math.radians(angle)
    cos, sin = np.float32(math.cos(theta)), np.float32(math.sin(theta))
    oy = np.arange(rows, dtype=np.float32)[:, None] - np.float32((rows - 1) / 2)
    ox = np.arange(cols, dtype=np.float32)[None, :] - np.float32((cols - 1) / 2)
    # inverse rotation of the canvas offsets, back onto the patch centred at ((h - 1) / 2, (w - 1) / 2)
    map_x = cos * ox + sin * oy + np.float32((width - 1) / 2)
    map_y = -sin * ox + cos * oy + np.float32((height - 1) / 2)
    inside = (map_x >= -0.5) & (map_x < width - 0.5) & (map_y >= -0.5) & (map_y < height - 0.5)
    return map_x, map_y, inside


def rotated_footprint(height: int, width: int, angle: float) -> np.ndarray:
    """Bool mask, on the :func:`scar_extent` canvas, of the pixel centres inside the rotated rectangle."""
    if angle == 0:
        return np.ones((height, width), bool)
    return _rotation_maps(height, width, angle)[2]


def _rotate_patch(patch: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    if angle == 0:
        return patch, np.ones(patch.shape[:2], bool)
    map_x, map_y, inside = _rotation_maps(patch.shape[0], patch.shape[1], angle)
    rotated = cv2.remap(patch, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return rotated.reshape(*inside.shape, *patch.shape[2:]), inside


def cutpaste_patch_size(image_hw: tuple[int, int], area_ratio: float, aspect_ratio: float) -> tuple[int, int]:
    """``(height, width)`` of a patch of ``area_ratio`` of the image and ``aspect_ratio`` = width / height, clipped to it."""
    area = area_ratio * image_hw[0] * image_hw[1]
    height = int(np.clip(round(math.sqrt(area / aspect_ratio)), 1, image_hw[0]))
    width = int(np.clip(round(math.sqrt(area * aspect_ratio)), 1, image_hw[1]))
    return height, width


def sample_aspect_ratio(aspect_ratio_range: Sequence[float], rng: np.random.Generator) -> float:
    """CutPaste's aspect draw: 50/50 from ``U(low, 1)`` or ``U(1, high)`` when the range spans 1, else ``U(low, high)``."""
    low, high = float(aspect_ratio_range[0]), float(aspect_ratio_range[1])
    pick_low = rng.random() < 0.5
    if low < 1.0 < high:
        return float(rng.uniform(low, 1.0) if pick_low else rng.uniform(1.0, high))
    return float(rng.uniform(low, high))


# --------------------------------------------------------------------------- the operation
def cut_paste(
    image: np.ndarray,
    source: tuple[int, int, int, int],
    target_top_left: tuple[int, int],
    angle: float = 0.0,
    jitter: ColorJitterFactors | None = None,
) -> np.ndarray:
    """Cut ``source=(y, x, height, width)``, jitter it, rotate it by ``angle`` degrees, paste it whole at ``target_top_left``.

    ``target_top_left`` is the corner of the rotated canvas (:func:`scar_extent`), which must lie
    entirely inside the image. Returns a new image; only the pixels of :func:`rotated_footprint`
    at the target change.
    """
    check_image(image, "image")
    H, W = image_hw(image)
    y, x, height, width = (int(v) for v in source)
    if height < 1 or width < 1 or y < 0 or x < 0 or y + height > H or x + width > W:
        raise ValueError(f"source {source} (y, x, height, width) must lie inside the {H}x{W} image")
    rows, cols = scar_extent(height, width, angle)
    ty, tx = int(target_top_left[0]), int(target_top_left[1])
    if ty < 0 or tx < 0 or ty + rows > H or tx + cols > W:
        raise ValueError(
            f"target_top_left {target_top_left} puts the {rows}x{cols} pasted patch outside the {H}x{W} image"
        )
    patch = image[y : y + height, x : x + width]
    patch = color_jitter(patch, *(jitter or ColorJitterFactors()))
    rotated, footprint = _rotate_patch(patch, angle)
    return paste(image, rotated, footprint, (ty, tx))


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
        label: ``anomaly_label`` when applied (0 when skipped).
        mask_class_id: value written into ``mask`` on the pasted pixels.

    Targets: image, mask (pasted pixels merged in), masks/bboxes/keypoints (unchanged). Outputs
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

        @field_validator("area_ratio_range")
        @classmethod
        def _area(cls, value: tuple[float, float]) -> tuple[float, float]:
            return check_range(value, "area_ratio_range", 0.0, 1.0, exclusive_min=True)

        @field_validator("aspect_ratio_range")
        @classmethod
        def _aspect(cls, value: tuple[float, float]) -> tuple[float, float]:
            return check_range(value, "aspect_ratio_range", 0.0, exclusive_min=True)

        @field_validator("scar_width_range", "scar_height_range")
        @classmethod
        def _scar_side(cls, value: tuple[int, int], info: Any) -> tuple[int, int]:
            check_range(value, info.field_name, 1.0)
            return value

        @field_validator("rotation_range")
        @classmethod
        def _rotation(cls, value: tuple[float, float]) -> tuple[float, float]:
            return check_range(value, "rotation_range", -180.0, 180.0)

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
        mask_class_id: int = 1,
        p: float = 0.5,
    ):
        super().__init__(p=p)
        self.variant = variant
        self.area_ratio_range = area_ratio_range
        self.aspect_ratio_range = aspect_ratio_range
        self.scar_width_range = scar_width_range
        self.scar_height_range = scar_height_range
        self.rotation_range = rotation_range
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue
        self.label = label
        self.mask_class_id = mask_class_id

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

    def sample(self, params: dict[str, Any], data: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image = input_image(data)
        H, W = image_hw(image)
        if self.variant == "normal":
            ratio = float(rng.uniform(*self.area_ratio_range))
            height, width = cutpaste_patch_size((H, W), ratio, sample_aspect_ratio(self.aspect_ratio_range, rng))
            angle = 0.0
        else:
            width = int(rng.integers(self.scar_width_range[0], self.scar_width_range[1] + 1))
            height = int(rng.integers(self.scar_height_range[0], self.scar_height_range[1] + 1))
            angle = float(rng.uniform(*self.rotation_range))
        rows, cols = scar_extent(height, width, angle)
        source = (int(rng.integers(0, H - height + 1)), int(rng.integers(0, W - width + 1)), height, width)
        target = (int(rng.integers(0, H - rows + 1)), int(rng.integers(0, W - cols + 1)))
        jitter = sample_color_jitter(rng, self.brightness, self.contrast, self.saturation, self.hue)
        anomaly = np.zeros((H, W), bool)
        anomaly[target[0] : target[0] + rows, target[1] : target[1] + cols] = rotated_footprint(height, width, angle)
        return {"source": source, "target": target, "angle": angle, "jitter": jitter, ANOMALY_MASK_KEY: anomaly}

    def apply(
        self,
        img: np.ndarray,
        source: tuple[int, int, int, int],
        target: tuple[int, int],
        angle: float,
        jitter: ColorJitterFactors,
        **params: Any,
    ) -> np.ndarray:
        return cut_paste(img, source, target, angle, jitter)
