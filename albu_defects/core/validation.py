"""Input checks and dtype helpers shared by every module.

Every public function and transform validates its inputs here, so a bad array is rejected with
the same clear ``ValueError`` (naming the argument and saying what to fix) wherever it enters.
"""

from __future__ import annotations

import functools
import typing
from typing import Any

import cv2
import numpy as np

__all__ = [
    "SUPPORTED_IMAGE_DTYPES",
    "as_bool_mask",
    "check_choice",
    "check_class_mask",
    "check_image",
    "check_int",
    "check_mask_shape",
    "check_matching_images",
    "check_probability",
    "check_range",
    "check_unit_range",
    "count_range_at_least",
    "clip_to_dtype",
    "clip_unit_range",
    "dtype_max",
    "image_hw",
    "num_channels",
    "int_at_least",
    "options_schema",
    "range_within",
    "validated_options",
]

#: Image dtypes every transform accepts (and returns unchanged).
SUPPORTED_IMAGE_DTYPES: tuple[np.dtype, ...] = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


def _describe(array: Any) -> str:
    if isinstance(array, np.ndarray):
        return f"array of shape {array.shape} and dtype {array.dtype}"
    return f"{type(array).__name__}"


def check_image(image: Any, name: str = "image", *, min_side: int = 1) -> np.ndarray:
    """Return ``image`` if it is an (H, W) or (H, W, C) array of a supported dtype, else raise.

    float32 images must be finite (NaN or inf would silently poison blends and labels).
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {_describe(image)}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] < 1):
        raise ValueError(f"{name} must have shape (H, W) or (H, W, C), got {image.shape}")
    if image.dtype not in SUPPORTED_IMAGE_DTYPES:
        supported = ", ".join(str(d) for d in SUPPORTED_IMAGE_DTYPES)
        raise ValueError(f"{name} has dtype {image.dtype}; supported dtypes are {supported} (convert it first)")
    if image.shape[0] < min_side or image.shape[1] < min_side:
        raise ValueError(f"{name} is {image.shape[0]}x{image.shape[1]} pixels; at least {min_side}x{min_side} needed")
    if image.dtype == np.float32 and not np.isfinite(image).all():
        raise ValueError(f"{name} holds NaN or infinite values; clean it before augmenting")
    return image


#: float32 images hold values in [0, 1] (albumentations' convention); inputs may overshoot it by this much
#: (rounding of upstream float arithmetic) and are still accepted.
UNIT_RANGE_TOLERANCE = 1e-4


def check_unit_range(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Return ``image`` unless it is float32 with values outside [0, 1], the range of albumentations' float images.

    Pixel values outside it are not an image our transforms can blend, jitter or clip consistently:
    typically the data were normalised (``A.Normalize``) before an albu-defects transform.
    """
    if image.dtype == np.float32 and image.size:
        low, high = float(image.min()), float(image.max())
        if low < -UNIT_RANGE_TOLERANCE or high > 1.0 + UNIT_RANGE_TOLERANCE:
            raise ValueError(
                f"{name} is float32 with values in [{low:.4g}, {high:.4g}], but float32 images must lie in [0, 1] "
                "(albumentations' convention): put A.Normalize (and any step that leaves [0, 1]) after the "
                "albu-defects transforms, or scale the image to [0, 1]"
            )
    return image


def clip_unit_range(image: np.ndarray) -> np.ndarray:
    """A float32 ``image`` clipped to [0, 1] (a new array only when a value lies outside); other dtypes as they are."""
    if image.dtype == np.float32 and image.size and (float(image.min()) < 0.0 or float(image.max()) > 1.0):
        return np.clip(image, 0.0, 1.0)
    return image


def num_channels(image: np.ndarray) -> int:
    """Channel count of an (H, W) (1) or (H, W, C) (C) array."""
    return 1 if image.ndim == 2 else int(image.shape[2])


def check_matching_images(image: np.ndarray, other: np.ndarray, name: str, other_name: str) -> None:
    """Raise unless ``other`` can be written into ``image``: same dtype and same channel layout.

    Both must already be valid images (see :func:`check_image`); their sizes may differ.
    """
    if other.dtype != image.dtype:
        raise ValueError(f"{other_name} has dtype {other.dtype} but {name} has {image.dtype}; convert one to match")
    if num_channels(image) != num_channels(other) or image.ndim != other.ndim:
        raise ValueError(
            f"{other_name} has shape {other.shape} and {name} {image.shape}: they must agree in channels "
            "(both (H, W), both (H, W, 1), or both (H, W, C) with the same C)"
        )


def image_hw(image: np.ndarray) -> tuple[int, int]:
    """(height, width) of an (H, W) or (H, W, C) array."""
    return int(image.shape[0]), int(image.shape[1])


def check_mask_shape(mask: Any, hw: tuple[int, int], name: str = "mask") -> np.ndarray:
    """Return ``mask`` if it is an (H, W) or (H, W, 1) array whose size is ``hw``, else raise."""
    if not isinstance(mask, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {_describe(mask)}")
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"{name} must have shape (H, W) or (H, W, 1), got {mask.shape}")
    if tuple(mask.shape) != tuple(hw):
        raise ValueError(f"{name} is {mask.shape[0]}x{mask.shape[1]} but must match the image size {hw[0]}x{hw[1]}")
    return mask


def as_bool_mask(mask: Any, hw: tuple[int, int] | None = None, name: str = "mask") -> np.ndarray:
    """A boolean (H, W) view of a bool or integer mask (nonzero = inside), checked against ``hw``."""
    if not isinstance(mask, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {_describe(mask)}")
    if hw is None:
        hw = (mask.shape[0], mask.shape[1]) if mask.ndim >= 2 else (-1, -1)
    mask = check_mask_shape(mask, hw, name)
    if mask.dtype == bool:
        return mask
    if not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"{name} must be bool or integer (nonzero = inside), got dtype {mask.dtype}")
    return mask != 0


def check_class_mask(mask: Any, hw: tuple[int, int], name: str = "mask", num_classes: int | None = None) -> np.ndarray:
    """Return an (H, W) class-index mask (0 = background, k = class k) of integer dtype, else raise."""
    mask = check_mask_shape(mask, hw, name)
    if mask.dtype == bool or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"{name} must be an integer class-index mask (0 = background), got dtype {mask.dtype}")
    if mask.size and mask.min() < 0:
        raise ValueError(f"{name} holds negative class ids; 0 is background and k > 0 is class k")
    if num_classes is not None and mask.size and int(mask.max()) > num_classes:
        raise ValueError(f"{name} holds class id {int(mask.max())} but only classes 1..{num_classes} are known")
    return mask


def check_probability(value: float, name: str) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return float(value)


def int_at_least(minimum: int, hint: str = "") -> Any:
    """A pydantic ``mode="before"`` field check that runs :func:`check_int` (so a schema rejects bools as we do)."""

    def check(value: Any, info: Any) -> int:
        return check_int(value, info.field_name, minimum, hint)

    return check


def range_within(minimum: float = -np.inf, maximum: float = np.inf, *, exclusive_min: bool = False) -> Any:
    """A pydantic field check that runs :func:`check_range` (a ``(low, high)`` pair within the bounds) on the field."""

    def check(value: Any, info: Any) -> tuple[float, float]:
        return check_range(value, info.field_name, minimum, maximum, exclusive_min=exclusive_min)

    return check


def count_range_at_least(minimum: int) -> Any:
    """A pydantic field check for a count given as an int or an inclusive ``(low, high)`` range, ``minimum <= low``."""

    def check(value: Any, info: Any) -> Any:
        low, high = (value, value) if isinstance(value, int) else value
        if not minimum <= low <= high:
            raise ValueError(
                f"{info.field_name} must be an int >= {minimum} or a (low, high) range with "
                f"{minimum} <= low <= high, got {value}"
            )
        return value

    return check


def options_schema(options: type, name: str) -> type:
    """A pydantic model with the fields of the NamedTuple ``options``, each required and of its annotated type.

    So a transform whose pure function takes an options tuple declares those options once: its
    ``InitSchema`` extends this model (the tuple's own ``checked()`` stays the one range check).
    """
    from pydantic import create_model  # imported here, as in validated_options

    hints = typing.get_type_hints(options)
    return create_model(name, **{field: (hints[field], ...) for field in options._fields})


def validated_options(schema: type, **values: Any) -> dict[str, Any]:
    """``values`` checked by a pydantic ``schema``, exactly as albumentations checks a transform's InitSchema.

    For classes that albumentations does not validate itself (composes such as
    :class:`~albu_defects.DynamicLabelInjection`), so that every transform's options go through one
    path: a pydantic schema, whose errors become one ``ValueError`` naming each bad argument.
    """
    from pydantic import ValidationError  # imported here: the bank and the CLI import this module

    try:
        return dict(schema(**values).model_dump())
    except ValidationError as error:
        raise ValueError(str(error)) from error


def check_choice(value: Any, allowed: tuple[Any, ...], name: str) -> Any:
    """Return ``value`` if it is one of ``allowed``, else raise a ``ValueError`` naming ``name`` and the choices."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_int(value: Any, name: str, minimum: int = 0, hint: str = "") -> int:
    """Return ``value`` as an int if it is a Python or numpy integer ``>= minimum`` (never a bool), else raise.

    ``hint`` (e.g. ``"(pixels)"``) follows the requirement in the message.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}{' ' + hint if hint else ''}, got {value!r}")
    return int(value)


def check_range(
    value: Any, name: str, minimum: float = -np.inf, maximum: float = np.inf, *, exclusive_min: bool = False
) -> tuple[float, float]:
    """Return ``value`` as a ``(low, high)`` pair of finite floats with ``minimum <= low <= high <= maximum``.

    With ``exclusive_min`` the low end must be strictly above ``minimum`` (e.g. a size ratio > 0).
    """
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {value!r}") from None
    low_ok = low > minimum if exclusive_min else low >= minimum
    if not (np.isfinite(low) and np.isfinite(high) and low_ok and low <= high <= maximum):
        bound = f"{minimum} < low" if exclusive_min else f"{minimum} <= low"
        raise ValueError(f"{name}=({low}, {high}) must satisfy {bound} <= high <= {maximum}")
    return low, high


def dtype_max(dtype: np.dtype | type) -> float:
    """The white level of an image dtype: 255 (uint8), 65535 (uint16), 1.0 (float32)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    return 1.0


@functools.lru_cache(maxsize=16)
def _integer_range(dtype: np.dtype) -> tuple[int, int]:
    """(min, max) of an integer dtype (``np.iinfo`` costs a few microseconds a call)."""
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


_OPENCV_DEPTHS = {np.dtype(np.uint8): cv2.CV_8U, np.dtype(np.uint16): cv2.CV_16U}


def _opencv_shaped(values: np.ndarray) -> bool:
    """An array OpenCV takes as one image with a scalar operand: (H, W) or (H, W, C <= 4), C order, of
    at least 64 pixels (OpenCV reads a 1 x 1 to 4 x 1 array as a scalar; small ones gain nothing)."""
    shaped = values.ndim == 2 or (values.ndim == 3 and values.shape[2] <= 4)
    return shaped and values.shape[0] * values.shape[1] >= 64 and values.flags.c_contiguous


def clip_to_dtype(values: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """Cast float ``values`` to ``dtype``: rounded and clipped for integers, finite for float32.

    float32 is left unclipped (images may be normalised or HDR) but never NaN or infinite.
    """
    dtype = np.dtype(dtype)
    if dtype in _OPENCV_DEPTHS and values.dtype in (np.float32, np.float64) and _opencv_shaped(values):
        # OpenCV's saturating cast rounds half to even like np.rint: one pass instead of four.
        return cv2.add(values, 0.0, dtype=_OPENCV_DEPTHS[dtype]).reshape(values.shape)
    if dtype.kind in "ui":
        low, high = _integer_range(dtype)
        rounded = np.rint(values)
        np.minimum(np.maximum(rounded, low, out=rounded), high, out=rounded)  # np.clip, without its overhead
        return rounded.astype(dtype)
    finite = np.nan_to_num(values, nan=0.0, posinf=np.finfo(np.float32).max, neginf=np.finfo(np.float32).min)
    return finite.astype(dtype, copy=False)
