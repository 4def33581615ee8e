"""What the collate wrappers share: reading a sample's fields and layouts (numpy (H, W[, C]) as
albumentations returns them, torch (C, H, W) as ``ToTensorV2`` does), boxes in the samples' own
format, and a default collation that keeps ragged boxes as per-sample lists."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import default_collate

from albu_defects.core.validation import check_choice

__all__ = ["BBOX_FORMATS", "SampleCollate"]


# ========================================================================== collate wrappers
#: Where the two axes of a per-pixel value of a sample sit: (H, W), (H, W, C) or (C, H, W).
PixelLayout = Literal["hw", "hwc", "chw"]
#: Box formats of samples' ``bboxes`` (albumentations' names; "albumentations" = normalised pascal_voc).
BBOX_FORMATS: tuple[str, ...] = ("pascal_voc", "coco", "yolo", "albumentations")
#: Channel counts that make a 3-D image's layout unambiguous (gray, RGB, RGBA).
_IMAGE_CHANNELS = (1, 3, 4)


def _check_samples(samples: Any, wrapper: str) -> list[Any]:
    if not isinstance(samples, Sequence) or isinstance(samples, (str, bytes)):
        raise ValueError(f"{wrapper} takes the list of samples of one batch, got {type(samples).__name__}")
    if len(samples) == 0:
        raise ValueError(f"{wrapper} got an empty batch: a batch needs at least one sample (check the batch sampler)")
    return list(samples)


class _Fields:
    """The fields of one batch's samples: the keys of dict samples or the positions of tuple samples.

    ``same_keys``: every sample must have the same fields (mixing pairs samples up); otherwise the
    fields are the union, and :meth:`values` gives those of the samples that have the field.
    """

    def __init__(self, samples: list[Any], wrapper: str, tuple_form: str, same_keys: bool = True) -> None:
        first = samples[0]
        if isinstance(first, Mapping):
            self.is_dict = True
        elif isinstance(first, (list, tuple)):
            self.is_dict = False
        else:
            raise ValueError(f"{wrapper}: sample 0 must be a dict or an {tuple_form} tuple, got {type(first).__name__}")
        kind = Mapping if self.is_dict else (list, tuple)
        self.keys: list[Any] = []
        for i, sample in enumerate(samples):
            if not isinstance(sample, kind):
                raise ValueError(
                    f"{wrapper}: sample {i} is a {type(sample).__name__} but sample 0 a {type(first).__name__}"
                )
            keys = list(sample) if self.is_dict else list(range(len(sample)))
            if same_keys and i and keys != self.keys and (not self.is_dict or set(keys) != set(self.keys)):
                shown = sorted(map(str, keys)) if self.is_dict else f"{len(keys)} positions"
                expected = sorted(map(str, self.keys)) if self.is_dict else f"{len(self.keys)}"
                raise ValueError(
                    f"{wrapper}: sample {i} has {shown} but sample 0 has {expected}; every sample needs the same fields"
                )
            self.keys += [key for key in keys if key not in self.keys]

    def values(self, samples: list[Any], key: Any) -> list[Any]:
        """The value of ``key`` in every sample that has it."""
        if self.is_dict:
            return [sample[key] for sample in samples if key in sample]
        return [sample[key] for sample in samples if key < len(sample)]

    def has(self, sample: Any, key: Any) -> bool:
        return key in sample if self.is_dict else key < len(sample)

    def name(self, key: Any) -> str:
        return repr(key) if self.is_dict else f"position {key}"


def _image_layout(image: Any, name: str) -> tuple[PixelLayout, tuple[int, int]]:
    """The layout and (H, W) of a sample's image: numpy (H, W[, C]) or torch (C, H, W) / (H, W)."""
    if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim in (2, 3):
        shape = tuple(int(v) for v in image.shape)
        if image.ndim == 2:
            return "hw", (shape[0], shape[1])
        if isinstance(image, torch.Tensor):
            if shape[2] in _IMAGE_CHANNELS and shape[0] not in _IMAGE_CHANNELS:
                raise ValueError(
                    f"{name} is a torch tensor of shape {shape}, which looks (H, W, C); torch images are read as "
                    "(C, H, W) (ToTensorV2's layout): permute it (image.permute(2, 0, 1)) or pass the numpy array"
                )
            return "chw", (shape[1], shape[2])
        if shape[0] in _IMAGE_CHANNELS and shape[2] not in _IMAGE_CHANNELS:
            raise ValueError(
                f"{name} is a numpy array of shape {shape}, which looks (C, H, W); numpy images are read as "
                "(H, W[, C]) (albumentations' layout): transpose it (image.transpose(1, 2, 0)) or pass a torch tensor"
            )
        return "hwc", (shape[0], shape[1])
    got = tuple(image.shape) if isinstance(image, (np.ndarray, torch.Tensor)) else type(image).__name__
    raise ValueError(f"{name} must be a numpy (H, W[, C]) array or a torch (C, H, W) / (H, W) tensor, got {got}")


def _pixel_layout(value: Any, hw: tuple[int, int]) -> PixelLayout | None:
    """The layout of ``value`` when it holds one value per pixel of an ``hw`` image, else ``None``.

    (C, H, W) wins for torch tensors (``ToTensorV2(transpose_mask=True)``), (H, W, C) for numpy
    arrays and for torch tensors that only fit it (``ToTensorV2`` keeps masks (H, W, C)).
    """
    if not isinstance(value, (np.ndarray, torch.Tensor)):
        return None
    shape = tuple(int(v) for v in value.shape)
    if shape == hw:
        return "hw"
    if len(shape) == 3:
        chw, hwc = shape[1:] == hw, shape[:2] == hw
        if chw and (isinstance(value, torch.Tensor) or not hwc):
            return "chw"
        if hwc:
            return "hwc"
    return None


def _to_nchw(batch: torch.Tensor, layout: PixelLayout) -> torch.Tensor:
    """A collated (N, *sample) tensor as an (N, C, H, W) view."""
    return batch[:, None] if layout == "hw" else batch.permute(0, 3, 1, 2) if layout == "hwc" else batch


def _from_nchw(batch: torch.Tensor, layout: PixelLayout) -> torch.Tensor:
    return batch[:, 0] if layout == "hw" else batch.permute(0, 2, 3, 1) if layout == "hwc" else batch


def _as_numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _is_text(value: Any) -> bool:
    return value is None or isinstance(value, (str, bytes))


def _is_int(value: Any) -> bool:
    """An integer class id: a Python / numpy int or a 0-d integer array or tensor (not a bool)."""
    if isinstance(value, torch.Tensor):
        return value.ndim == 0 and not (
            value.dtype.is_floating_point or value.is_complex() or value.dtype == torch.bool
        )
    if isinstance(value, np.ndarray):
        return value.ndim == 0 and np.issubdtype(value.dtype, np.integer)
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_vector(value: Any) -> bool:
    return isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 1 and value.shape[0] >= 1


def _refusal(wrapper: str, fields: _Fields, key: Any, value: Any, hw: tuple[int, int], change: str) -> ValueError:
    """The error for a field the wrapper cannot keep true, saying how to resolve it."""
    shape = tuple(value.shape) if isinstance(value, (np.ndarray, torch.Tensor)) else None
    what = f"{type(value).__name__}" + (f" of shape {shape}" if shape is not None else "")
    if shape is not None and len(shape) >= 2 and change == "mix":
        reason = f"per-pixel data that does not match the {hw[0]}x{hw[1]} image"
    elif shape is not None and len(shape) >= 2:
        reason = "per-pixel data it cannot update when it pastes a defect"
    else:
        reason = "a value it cannot tell how to update"
    hint = f"passthrough_keys=[{key!r}]"
    return ValueError(
        f"{wrapper}: field {fields.name(key)} ({what}) is {reason}; it would come back stale. Drop it, or name it "
        f"in {hint} if {'mixing images' if change == 'mix' else 'pasting a defect'} leaves it true (an id, a path)"
    )


# ---------------------------------------------------------------------------------------- boxes
def _check_box_options(bbox_format: str | None, bbox_label_fields: Sequence[str] | str) -> tuple[str, ...]:
    if bbox_format is not None:
        check_choice(bbox_format, BBOX_FORMATS, "bbox_format")
    fields = (bbox_label_fields,) if isinstance(bbox_label_fields, str) else tuple(bbox_label_fields)
    if not all(isinstance(f, str) for f in fields):
        raise ValueError(f"bbox_label_fields must be sample keys (strings), got {bbox_label_fields!r}")
    return fields


def _to_pixels(coords: np.ndarray, fmt: str, hw: tuple[int, int]) -> np.ndarray:
    """(M, 4) boxes in ``fmt`` as (x_min, y_min, x_max, y_max) pixels (float64)."""
    h, w = hw
    c = np.asarray(coords, np.float64).reshape(-1, 4)
    if fmt == "coco":
        return np.column_stack([c[:, 0], c[:, 1], c[:, 0] + c[:, 2], c[:, 1] + c[:, 3]])
    if fmt == "yolo":
        cx, cy, bw, bh = c[:, 0] * w, c[:, 1] * h, c[:, 2] * w, c[:, 3] * h
        return np.column_stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
    if fmt == "albumentations":
        return c * np.array([w, h, w, h], np.float64)
    return c


def _from_pixels(pixels: np.ndarray, fmt: str, hw: tuple[int, int]) -> np.ndarray:
    """(M, 4) (x_min, y_min, x_max, y_max) pixel boxes in ``fmt``."""
    h, w = hw
    p = np.asarray(pixels, np.float64).reshape(-1, 4)
    if fmt == "coco":
        return np.column_stack([p[:, 0], p[:, 1], p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]])
    if fmt == "yolo":
        return np.column_stack(
            [(p[:, 0] + p[:, 2]) / 2 / w, (p[:, 1] + p[:, 3]) / 2 / h, (p[:, 2] - p[:, 0]) / w, (p[:, 3] - p[:, 1]) / h]
        )
    if fmt == "albumentations":
        return p / np.array([w, h, w, h], np.float64)
    return p


def _read_boxes(value: Any, name: str) -> tuple[np.ndarray, list[tuple[Any, ...]]]:
    """A sample's boxes as (M, 4) coordinates and each row's extra columns (labels kept in the rows)."""
    rows = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
    if isinstance(rows, np.ndarray) and rows.size == 0:
        return np.zeros((0, 4)), []
    try:
        rows = list(rows)
        coords = np.array([[float(v) for v in list(row)[:4]] for row in rows], np.float64).reshape(-1, 4)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of boxes with 4 numbers first, got {value!r}") from None
    if any(len(row) < 4 for row in rows):
        raise ValueError(f"{name} holds a box with fewer than 4 numbers: {value!r}")
    return coords, [tuple(list(row)[4:]) for row in rows]


def _box_columns(value: Any) -> int:
    """Numbers per box row of a sample's boxes (4, or more with label columns); 4 when it cannot tell."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return int(value.shape[1]) if value.ndim == 2 else 4
    rows = list(value)
    return len(rows[0]) if rows else 4


def _write_boxes(like: Any, coords: np.ndarray, extras: list[tuple[Any, ...]]) -> Any:
    """Boxes in the container type of ``like`` (list of tuples, numpy array or tensor)."""
    rows = [tuple(float(v) for v in c) + e for c, e in zip(coords, extras, strict=True)]
    if isinstance(like, (np.ndarray, torch.Tensor)):
        array = np.array(rows, dtype=np.float64).reshape(-1, _box_columns(like))
        if isinstance(like, torch.Tensor):
            return torch.as_tensor(array, dtype=like.dtype, device=like.device)
        return array.astype(like.dtype, copy=False)
    return type(like)(rows) if isinstance(like, tuple) else rows


def _select(values: Any, index: Sequence[int], name: str) -> list[Any] | np.ndarray | torch.Tensor:
    """``values[index]`` of a label field (a list, tuple, numpy array or tensor)."""
    if isinstance(values, torch.Tensor):
        return values[torch.as_tensor(list(index), dtype=torch.long, device=values.device)]
    if isinstance(values, np.ndarray):
        return values[np.asarray(index, dtype=np.int64)]
    if isinstance(values, (list, tuple)):
        return [values[i] for i in index]
    raise ValueError(f"{name} must be a list, array or tensor with one label per box, got {type(values).__name__}")


def _concat_like(like: Any, parts: Sequence[Any]) -> Any:
    """Label-field pieces joined in the container type of ``like``."""
    if isinstance(like, torch.Tensor):
        return torch.cat([torch.as_tensor(p, dtype=like.dtype, device=like.device).reshape(-1) for p in parts])
    if isinstance(like, np.ndarray):
        return np.concatenate([np.asarray(p, dtype=like.dtype).reshape(-1) for p in parts])
    joined = [v for part in parts for v in list(part)]
    return tuple(joined) if isinstance(like, tuple) else joined


def _check_label_fields(sample: Mapping[str, Any], bbox_key: str, fields: Sequence[str], index: int) -> int:
    """The number of boxes of ``sample``, checked against each label field's length."""
    count = len(_read_boxes(sample[bbox_key], f"sample {index} {bbox_key!r}")[0])
    for field in fields:
        if field not in sample:
            raise ValueError(f"sample {index} has {bbox_key!r} but not its label field {field!r}")
        if len(sample[field]) != count:
            raise ValueError(
                f"sample {index} has {count} boxes but {len(sample[field])} entries in label field {field!r}"
            )
    return count


def _boxes_present(
    fields: _Fields, samples: list[Any], bbox_key: str, label_fields: Sequence[str], fmt: str | None, purpose: str
) -> bool:
    """Whether dict samples carry boxes under ``bbox_key``; they then need a format and matching label fields."""
    if not fields.is_dict or all(s.get(bbox_key) is None for s in samples):
        return False
    if fmt is None:
        raise ValueError(
            f"the samples carry {bbox_key!r}: pass bbox_format (and bbox_label_fields) so {purpose}, or drop them"
        )
    for i, sample in enumerate(samples):
        if sample.get(bbox_key) is not None:
            _check_label_fields(sample, bbox_key, label_fields, i)
    return True


def _collate_keeping_lists(samples: list[Any], keep: Sequence[Any]) -> Any:
    """``default_collate``, except that the fields in ``keep`` (ragged boxes and labels) stay per-sample lists."""
    if not keep or not isinstance(samples[0], Mapping):
        return default_collate(samples)
    return {
        key: [s[key] for s in samples] if key in keep else default_collate([s[key] for s in samples])
        for key in samples[0]
    }


# ----------------------------------------------------------------------------------- ContextMix


class SampleCollate:
    """What both collate wrappers keep: the wrapped ``collate_fn``, the sample keys, the box options."""

    def __init__(
        self,
        collate_fn: Callable[[list[Any]], Any] | None,
        image_key: str,
        label_key: str,
        mask_key: str,
        bbox_key: str,
        bbox_format: str | None,
        bbox_label_fields: Sequence[str],
        passthrough_keys: Sequence[Any],
    ) -> None:
        if collate_fn is not None and not callable(collate_fn):
            raise ValueError(f"collate_fn must be callable or None, got {type(collate_fn).__name__}")
        self.collate_fn = collate_fn
        self.image_key = image_key
        self.label_key = label_key
        self.mask_key = mask_key
        self.bbox_key = bbox_key
        self.bbox_format = bbox_format
        self.bbox_label_fields = _check_box_options(bbox_format, bbox_label_fields)
        self.passthrough_keys = tuple(passthrough_keys)
        self._worker_seed: int | None = None
