"""The default defect transform of DLI and InjectDefect: random flips and a mild affine warp as one
albumentations transform, :class:`FlipAffine`.

0.1.0 used ``A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.Affine(..., p=0.5)])``.
The defect transform runs once per injected defect, and that Compose's per-call bookkeeping cost as
much as its flips and warp; :class:`FlipAffine` draws the same numbers in the same order and calls
the same OpenCV functions with the same matrix, so seeded injections are unchanged, pixel for
pixel (under albumentations 2.0; AlbumentationsX draws a Compose's numbers differently).
"""

from __future__ import annotations

import random
from typing import Any, ClassVar

import albumentations as A
import cv2
import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema
from albumentations.core.type_definitions import Targets
from pydantic import Field, model_validator

from albu_defects.core.transform import IS_ALBUMENTATIONS_X, store_options

if IS_ALBUMENTATIONS_X:  # pragma: no cover - exercised by the AlbumentationsX CI step
    from albumentations.core.transform_params import SampledParams

__all__ = ["FlipAffine", "affine_matrix", "flip_affine"]

Range = tuple[float, float]
_EYE = np.eye(3)
_EYE_TOLERANCE = 1e-8 + 1e-5 * np.abs(_EYE)  # np.allclose's default atol + rtol * |b|, precomputed


def affine_matrix(
    shape: tuple[int, int], translate: tuple[int, int], scale: tuple[float, float], angle: float
) -> np.ndarray:
    """3x3 forward matrix of ``A.Affine`` (no shear) about the centre of an (h, w) image: scale, rotate
    by ``angle`` degrees, translate by ``translate=(x, y)`` pixels.

    The products are albumentations' own, in its order (``create_affine_transformation_matrix``),
    so the matrix is the same to the last bit and so are the warped pixels.
    """
    cx, cy = shape[1] / 2 - 0.5, shape[0] / 2 - 0.5
    rad = np.deg2rad(angle % 360)
    to_corner = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]])
    scaling = np.array([[scale[0], 0, 0], [0, scale[1], 0], [0, 0, 1]])
    rotation = np.array([[np.cos(rad), np.sin(rad), 0], [-np.sin(rad), np.cos(rad), 0], [0, 0, 1]])
    shear = np.array([[1, np.tan(np.deg2rad(-0.0)), 0], [np.tan(np.deg2rad(-0.0)), 1, 0], [0, 0, 1]])
    shift = np.array([[1, 0, translate[0]], [0, 1, translate[1]], [0, 0, 1]])
    to_centre = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]])
    matrix = to_centre @ shift @ shear @ rotation @ scaling @ to_corner
    matrix[2] = [0, 0, 1]
    return matrix


def flip_affine(
    image: np.ndarray, hflip: bool, vflip: bool, matrix: np.ndarray | None, interpolation: int
) -> np.ndarray:
    """Flip ``image`` left-right and/or up-down, then warp it by ``matrix`` (3x3, forward; ``None``: no
    warp) into the same size, reflecting at the border (``BORDER_REFLECT_101``). Keeps dtype and shape."""
    out = cv2.flip(image, 1) if hflip else image
    out = cv2.flip(out, 0) if vflip else out
    if matrix is not None and not (np.abs(matrix - _EYE) <= _EYE_TOLERANCE).all():  # np.allclose, as albumentations
        h, w = image.shape[:2]
        warped = [
            cv2.warpAffine(chunk, matrix[:2], (w, h), flags=interpolation, borderMode=cv2.BORDER_REFLECT_101)
            for chunk in _channel_groups(out)
        ]
        out = warped[0] if len(warped) == 1 else np.dstack(warped)
    if image.ndim == 3 and out.ndim == 2:
        out = out[..., None]
    return out if out is not image else image.copy()


def _channel_groups(image: np.ndarray) -> list[np.ndarray]:
    """The channel groups OpenCV warps one call each, as albumentations makes them: the whole image up
    to 4 channels, else groups of 4 with a remainder of 2 split in single channels (OpenCV's kernels
    differ by channel count, so the grouping decides the last bit of the result)."""
    if image.ndim == 2 or image.shape[2] <= 4:
        return [image]
    groups = []
    for first in range(0, image.shape[2], 4):
        if image.shape[2] - first == 2:
            groups += [image[:, :, first : first + 1], image[:, :, first + 1 : first + 2]]
        else:
            groups.append(image[:, :, first : first + 4])
    return groups


class FlipAffine(A.DualTransform):
    """Horizontal flip, vertical flip, then an affine warp (scale, translation, rotation), each with its
    own probability; image and mask targets (the mask warped nearest-neighbour).

    ``A.Compose([A.HorizontalFlip(p=hflip_p), A.VerticalFlip(p=vflip_p), A.Affine(scale=scale,
    translate_percent=translate_percent, rotate=rotate, border_mode=cv2.BORDER_REFLECT_101,
    p=affine_p)])`` in one transform, at a fraction of its per-call cost: the defaults are the
    defect transform of DLI and InjectDefect. Under albumentations 2.0 it draws what that Compose
    drew, in its order (one number for the Compose itself, one per step, then the translation,
    shear, scale and rotation of the affine), so seeded runs give the same pixels.
    """

    _targets: ClassVar[tuple[Targets, ...]] = (Targets.IMAGE, Targets.MASK)

    class InitSchema(BaseTransformInitSchema):
        scale: Range
        translate_percent: Range
        rotate: Range
        hflip_p: float = Field(ge=0, le=1)
        vflip_p: float = Field(ge=0, le=1)
        affine_p: float = Field(ge=0, le=1)

        @model_validator(mode="after")
        def _ranges(self) -> FlipAffine.InitSchema:
            for name in ("scale", "translate_percent", "rotate"):
                low, high = getattr(self, name)
                if low > high:
                    raise ValueError(f"{name} must be a (low, high) range with low <= high, got {(low, high)}")
            if self.scale[0] <= 0:
                raise ValueError(f"scale must be positive, got {self.scale}")
            return self

    def __init__(
        self,
        scale: Range = (0.9, 1.1),
        translate_percent: Range = (-0.0625, 0.0625),
        rotate: Range = (-10, 10),
        hflip_p: float = 0.5,
        vflip_p: float = 0.5,
        affine_p: float = 0.5,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        store_options(self, locals())

    def draw(self, shape: tuple[int, ...], draws: random.Random) -> dict[str, Any]:
        """This call's flips and matrix (``None``: no warp), drawn from ``draws`` in the Compose's order."""
        draws.random()  # the Compose's own draw (its p was 1): kept, so seeded runs are unchanged
        hflip = draws.random() < self.hflip_p
        vflip = draws.random() < self.vflip_p
        if not draws.random() < self.affine_p:
            return {"hflip": hflip, "vflip": vflip, "matrix": None}
        h, w = shape[:2]
        translate = (int(draws.uniform(*self.translate_percent) * w), int(draws.uniform(*self.translate_percent) * h))
        draws.uniform(0.0, 0.0), draws.uniform(0.0, 0.0)  # the affine's shear (none)
        scale = (draws.uniform(*self.scale), draws.uniform(*self.scale))
        angle = draws.uniform(*self.rotate)
        return {"hflip": hflip, "vflip": vflip, "matrix": affine_matrix((h, w), translate, scale, angle)}

    if IS_ALBUMENTATIONS_X:  # pragma: no cover - exercised by the AlbumentationsX CI step

        def sample_parameters(self, params: dict[str, Any], data: dict[str, Any], targets: Any, sampling: Any) -> Any:
            return SampledParams(params=self.draw(params["shape"], self.py_random))

    else:

        def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
            return self.draw(params["shape"], self.py_random)

    def apply(self, img: np.ndarray, hflip: bool, vflip: bool, matrix: np.ndarray | None, **params: Any) -> np.ndarray:
        return flip_affine(img, hflip, vflip, matrix, cv2.INTER_LINEAR)

    def apply_to_mask(
        self, mask: np.ndarray, hflip: bool, vflip: bool, matrix: np.ndarray | None, **params: Any
    ) -> np.ndarray:
        return flip_affine(mask, hflip, vflip, matrix, cv2.INTER_NEAREST)
