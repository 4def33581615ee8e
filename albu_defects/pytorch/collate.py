"""DataLoader ``collate_fn`` wrappers: :class:`ContextMixCollate` (collate, then mix) and :class:`DLICollate` (inject, then collate).

Both change a batch's images, so every other field of every sample either follows (is updated
exactly as the pixels were) or is refused with a ``ValueError`` naming it; nothing is passed
through stale. Shared here: reading a sample's fields and layouts (numpy (H, W[, C]) as
albumentations returns them, torch (C, H, W) as ``ToTensorV2`` does), boxes in the samples' own
format, and a default collation that keeps ragged boxes as per-sample lists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch.utils.data import default_collate

from albu_defects.bank import resolve_bank
from albu_defects.core.labels import ANOMALY_LABEL_KEY, ANOMALY_MASK_KEY, CLASS_VECTOR_KEY, classes_present, relabel
from albu_defects.core.validation import check_choice
from albu_defects.methods.contextmix.functional import _snap, bboxes_into_box, occlude_bboxes
from albu_defects.methods.injection.dli import DynamicLabelInjection

from .contextmix import TensorContextMix
from .workers import reseed_in_worker

__all__ = [
    "BBOX_FORMATS",
    "ContextMixCollate",
    "DLICollate",
]


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
class _MixPlan(NamedTuple):
    """What :class:`ContextMixCollate` does with each field of the batch's samples."""

    fields: _Fields
    layout: PixelLayout  # of the images
    hw: tuple[int, int]
    label: str  # "class" | "vector" | "none" (a mask in the label position is one of ``pixels``)
    pixels: dict[Any, PixelLayout | list[PixelLayout]]  # per-pixel fields: mixed like the images
    class_vector: bool  # re-derived from the mixed mask
    boxes: bool
    defect_mask: Any = None  # label_mode="defect_area": the field whose defects weigh the labels


class ContextMixCollate:
    """DataLoader ``collate_fn``: collate a batch and mix it with :class:`TensorContextMix`; every field follows.

    Samples are dicts or tuples ``(image, label, *rest)``. Per field:

    - **image** (``image_key`` / position 0): numpy (H, W) or (H, W, C) (albumentations' layout,
      e.g. a pipeline without ``ToTensorV2``; collated to (N, H, W[, C])) or torch (C, H, W) / (H, W)
      (``ToTensorV2``); uint8 or float. Mixed, returned in the samples' layout. A torch tensor that
      looks (H, W, C) or a numpy array that looks (C, H, W) is refused (an axis would be mixed as
      if it were the width).
    - **label** (``label_key`` / position 1): an int class id -> soft targets (N, num_classes);
      a one-hot / multi-hot vector (numpy or torch (K,)) -> ``lambda_A * y + lambda_B * y[perm]``;
      a mask -> mixed as a mask. A dict sample without it gets none; ``mix_weights`` (N, 2) is
      always added to dict batches.
    - **per-pixel fields** (any other field holding one value per image pixel: masks (H, W),
      (H, W, K) or (K, H, W), weight maps, a list of instance masks): mixed with the same pairing
      and boxes, nearest, in their own layout and dtype.
    - ``class_vector`` (the image-level label of the label model): re-derived from the mixed
      ``mask_key`` mask (a class-index or multi-hot mask); refused without one.
    - ``label_mode="defect_area"``: the labels are weighed by the defect pixels each sample still shows
      in its ``mask_key`` mask (a class-index or multi-hot mask; for tuple samples ``mask_key`` is
      its position, e.g. ``2`` for ``(image, label, mask)``), exactly as
      :class:`~albu_defects.pytorch.TensorContextMix` with ``masks``; refused without that mask.
    - ``bbox_key`` (dict samples): boxes in ``bbox_format`` (required) with their label fields
      ``bbox_label_fields``: the host's boxes covered by the pasted box are dropped or clipped,
      the partner's are scaled into the box, and each label field follows its boxes. Without a
      ``collate_fn`` they stay per-sample lists (boxes are ragged).
    - strings and ``None`` (ids, paths) and the fields in ``passthrough_keys`` are passed through.
    - anything else is refused with a ``ValueError`` naming it (an int or array the wrapper cannot
      tell from a label would otherwise come back stale).

    ``collate_fn`` (default ``default_collate``) must keep the fields (a dict with the same keys,
    or a sequence with the same positions) as tensors (N, ...). Other arguments go to
    :class:`~albu_defects.pytorch.TensorContextMix`. In DataLoader workers every worker gets its own stream (the op is
    re-seeded by :func:`reseed_pipeline` from the worker's seed, ``seed`` when set, and the rank),
    so a seeded DataLoader reproduces the boxes.
    """

    def __init__(
        self,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        *,
        image_key: str = "image",
        label_key: str = "label",
        mask_key: str | int = "mask",
        bbox_key: str = "bboxes",
        bbox_format: str | None = None,
        bbox_label_fields: Sequence[str] = (),
        passthrough_keys: Sequence[Any] = (),
        **contextmix_kwargs: Any,
    ):
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
        self.contextmix = TensorContextMix(**contextmix_kwargs)
        self._worker_seed: int | None = None

    def __call__(self, samples: list[Any]) -> Any:
        samples = _check_samples(samples, "ContextMixCollate")
        plan = self._plan(samples)
        self._worker_seed = reseed_in_worker(self.contextmix, self._worker_seed)
        perm, boxes = self.contextmix.draw(len(samples), *plan.hw)
        if plan.boxes:
            samples = [self._mixed_boxes(samples, i, int(perm[i]), boxes[i], plan.hw) for i in range(len(samples))]
        ragged = [self.bbox_key, *self.bbox_label_fields] if plan.boxes else []
        batch = self.collate_fn(samples) if self.collate_fn is not None else _collate_keeping_lists(samples, ragged)
        return self._mix(batch, plan, perm, boxes, len(samples))

    # -- what happens to each field ------------------------------------------------------------
    def _plan(self, samples: list[Any]) -> _MixPlan:
        fields = _Fields(samples, "ContextMixCollate", "(image, label, ...)")
        image_field, label_field = (self.image_key, self.label_key) if fields.is_dict else (0, 1)
        if image_field not in fields.keys:
            raise ValueError(f"the samples have no {self.image_key!r} key (set image_key)")
        layout, hw = _image_layout(samples[0][image_field], f"sample 0 {fields.name(image_field)}")
        for i, sample in enumerate(samples):
            if tuple(sample[image_field].shape) != tuple(samples[0][image_field].shape):
                raise ValueError(
                    f"sample {i}'s image is {tuple(sample[image_field].shape)} but sample 0's is "
                    f"{tuple(samples[0][image_field].shape)}; a batch needs one image size"
                )
        boxes = _boxes_present(
            fields,
            samples,
            self.bbox_key,
            self.bbox_label_fields,
            self.bbox_format,
            "the boxes follow the mixed images",
        )
        label, pixels, class_vector = "none", {}, False
        for key in fields.keys:
            values = fields.values(samples, key)
            if key == image_field or (key in self.passthrough_keys and key != label_field):
                continue
            if key == label_field:
                label = self._label_kind(values, fields, key, hw)
                if label == "mask":
                    pixels[key], label = _pixel_layout(values[0], hw), "none"
                continue
            if boxes and key in (self.bbox_key, *self.bbox_label_fields):
                continue
            if fields.is_dict and key == CLASS_VECTOR_KEY:
                class_vector = True
                continue
            if all(_is_text(v) for v in values):
                continue
            layouts = [_pixel_layout(v, hw) for v in values]
            if layouts[0] is not None and all(lay == layouts[0] for lay in layouts) and _same_shape(values):
                pixels[key] = layouts[0]
                continue
            if all(isinstance(v, (list, tuple)) and v for v in values) and _same_shape(values):
                inner = [_pixel_layout(item, hw) for item in values[0]]
                if all(lay is not None for lay in inner) and all(
                    _same_shape(list(col)) for col in zip(*values, strict=True)
                ):
                    pixels[key] = inner  # type: ignore[assignment]
                    continue
            bad = next(v for v in values if not _is_text(v))
            raise _refusal("ContextMixCollate", fields, key, bad, hw, "mix")
        if label == "class" and self.contextmix.num_classes is None:
            raise ValueError("the samples' labels are class ids: pass num_classes to turn them into soft targets")
        if class_vector and not (fields.is_dict and self.mask_key in pixels):
            raise ValueError(
                f"the samples carry {CLASS_VECTOR_KEY!r} but no {self.mask_key!r} mask to re-derive it from after "
                "mixing (set mask_key, or drop the class vector)"
            )
        defect_mask = None
        if self.contextmix.label_mode == "defect_area":
            defect_mask = self.mask_key
            if defect_mask not in pixels or isinstance(pixels[defect_mask], list):
                where = (
                    f"a mask under mask_key {self.mask_key!r}"
                    if fields.is_dict
                    else "mask_key set to the mask's position"
                )
                raise ValueError(
                    "label_mode='defect_area' weighs the labels by the defect pixels of each sample's mask: the samples "
                    f"need {where} (a class-index or multi-hot mask of the image's size)"
                )
        return _MixPlan(fields, layout, hw, label, pixels, class_vector, boxes, defect_mask)

    def _label_kind(self, values: list[Any], fields: _Fields, key: Any, hw: tuple[int, int]) -> str:
        if all(_is_text(v) for v in values):  # no label (``None``), or a name in that tuple position
            return "none"
        if all(_is_int(v) for v in values):
            return "class"
        if all(_is_vector(v) for v in values) and _same_shape(values):
            return "vector"
        layouts = [_pixel_layout(v, hw) for v in values]
        if layouts[0] is not None and all(lay == layouts[0] for lay in layouts) and _same_shape(values):
            return "mask"
        bad = next(v for v in values if not (_is_int(v) or _is_vector(v)))
        got = tuple(bad.shape) if isinstance(bad, (np.ndarray, torch.Tensor)) else f"{type(bad).__name__} {bad!r}"
        raise ValueError(
            f"ContextMixCollate: the label ({fields.name(key)}) must be an int class id, a one-hot / multi-hot "
            f"vector (a numpy array or tensor of length K: lists are transposed by collation) or a mask of the "
            f"image's size, the same kind in every sample; got {got}"
        )

    # -- boxes: per sample, before collation ------------------------------------------------------
    def _mixed_boxes(self, samples: list[Any], i: int, partner: int, box: np.ndarray, hw: tuple[int, int]) -> Any:
        host, source = samples[i], samples[partner]
        fmt = str(self.bbox_format)
        host_coords, host_extras = _read_boxes(host[self.bbox_key], f"sample {i} {self.bbox_key!r}")
        part_coords, part_extras = _read_boxes(source[self.bbox_key], f"sample {partner} {self.bbox_key!r}")
        scale = np.array([hw[1], hw[0], hw[1], hw[0]], np.float64)
        # The shared box functions of the numpy transform take normalised rows with extra columns;
        # the row number rides along as one, so the label fields can follow their boxes.
        host_rows = np.column_stack([_to_pixels(host_coords, fmt, hw) / scale, np.arange(len(host_coords))])
        part_rows = np.column_stack([_to_pixels(part_coords, fmt, hw) / scale, np.arange(len(part_coords))])
        kept = occlude_bboxes(host_rows, box, hw)
        added = bboxes_into_box(part_rows, box, hw)
        kept_index, added_index = kept[:, 4].astype(np.int64).tolist(), added[:, 4].astype(np.int64).tolist()
        pixels = _snap(np.concatenate([kept[:, :4], added[:, :4]]).astype(np.float64) * scale)
        out = dict(host)
        out[self.bbox_key] = _write_boxes(
            host[self.bbox_key],
            _from_pixels(pixels, fmt, hw),
            [host_extras[j] for j in kept_index] + [part_extras[j] for j in added_index],
        )
        for field in self.bbox_label_fields:
            out[field] = _concat_like(
                host[field],
                [_select(host[field], kept_index, field), _select(source[field], added_index, field)],
            )
        return out

    # -- the batch: images, labels and per-pixel fields, after collation --------------------------------
    def _mix(self, batch: Any, plan: _MixPlan, perm: torch.Tensor, boxes: np.ndarray, n: int) -> Any:
        fields = plan.fields
        if fields.is_dict:
            if not isinstance(batch, Mapping) or any(k not in batch for k in fields.keys):
                raise ValueError("collate_fn must return a dict with the samples' keys for dict samples")
            out: Any = dict(batch)
        else:
            if not isinstance(batch, Sequence) or isinstance(batch, (str, bytes)) or len(batch) != len(fields.keys):
                raise ValueError(
                    f"the collated batch must be (images, labels, ...) with the samples' {len(fields.keys)} "
                    f"positions, got {type(batch).__name__}"
                )
            out = list(batch)
        image_field, label_field = (self.image_key, self.label_key) if fields.is_dict else (0, 1)
        images = _to_nchw(_collated(batch[image_field], n, fields.name(image_field)), plan.layout)
        labels = None if plan.label == "none" else _collated(batch[label_field], n, fields.name(label_field))
        masks = None
        if plan.defect_mask is not None:
            layout = plan.pixels[plan.defect_mask]
            masks = _to_nchw(_collated(batch[plan.defect_mask], n, fields.name(plan.defect_mask)), layout)
        mixed, targets, *mixed_masks = self.contextmix.apply(images, labels, perm, boxes, masks=masks)
        out[image_field] = _from_nchw(mixed, plan.layout)
        if labels is not None:
            out[label_field] = targets
        if mixed_masks:  # mixed once, with the weights
            out[plan.defect_mask] = _from_nchw(mixed_masks[0], plan.pixels[plan.defect_mask])
        for key, layout in plan.pixels.items():
            if key == plan.defect_mask:
                continue
            value = batch[key]
            if isinstance(layout, list):
                if not isinstance(value, (list, tuple)) or len(value) != len(layout):
                    raise ValueError(f"collate_fn must keep {fields.name(key)} as a list of {len(layout)} tensors")
                out[key] = type(value)(
                    self._mix_pixels(v, lay, perm, boxes, n, fields.name(key))
                    for v, lay in zip(value, layout, strict=True)
                )
            else:
                out[key] = self._mix_pixels(value, layout, perm, boxes, n, fields.name(key))
        if plan.class_vector:
            vectors = _collated(batch[CLASS_VECTOR_KEY], n, repr(CLASS_VECTOR_KEY))
            masks = _from_nchw(_to_nchw(out[self.mask_key], plan.pixels[self.mask_key]), "hwc").cpu()
            present = np.stack([classes_present(masks[i].numpy(), vectors.shape[-1]) for i in range(n)])
            out[CLASS_VECTOR_KEY] = (
                torch.as_tensor(present, device=vectors.device).to(vectors.dtype).reshape(vectors.shape)
            )
        if fields.is_dict:
            out["mix_weights"] = torch.from_numpy(self.contextmix.last_weights).to(mixed.device)
            return out
        if len(out) == 1:  # (images,) -> (mixed, weights)
            out.append(targets)
        return tuple(out)

    def _mix_pixels(
        self, value: Any, layout: PixelLayout, perm: torch.Tensor, boxes: np.ndarray, n: int, name: str
    ) -> torch.Tensor:
        mixed = self.contextmix.apply_to_mask(_to_nchw(_collated(value, n, name), layout), perm, boxes)
        return _from_nchw(mixed, layout)


def _same_shape(values: list[Any]) -> bool:
    shapes = {tuple(v.shape) if isinstance(v, (np.ndarray, torch.Tensor)) else len(v) for v in values}
    return len(shapes) == 1


def _collated(value: Any, n: int, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim < 1 or value.shape[0] != n:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"collate_fn must turn {name} into a tensor of {n} samples (N, ...), got {got}")
    return value


# ------------------------------------------------------------------------------------------ DLI
class _InjectPlan(NamedTuple):
    """What :class:`DLICollate` does with each field of the batch's samples."""

    fields: _Fields
    image: Any
    mask: Any
    label: Any  # None when the samples have none
    hw: tuple[int, int]
    boxes: bool
    class_vector: bool
    anomaly: bool  # the samples carry an ``anomaly_mask`` (and maybe its ``anomaly_label``)


class DLICollate:
    """DataLoader ``collate_fn``: Dynamic Label Injection on one batch's samples, then ``collate_fn``.

    Samples are dicts, or tuples ``(image, mask[, label, *rest])``. Per field, of every sample DLI
    injects a defect into (the others come back exactly as given):

    - **image** (``image_key`` / position 0): numpy (H, W[, C]) or torch (C, H, W) / (H, W)
      (``ToTensorV2``); the injected image comes back in the sample's type, layout and dtype.
    - **mask** (``mask_key`` / position 1): a class-index mask ((H, W) or (H, W, 1); 0 = background)
      or a multi-hot one ((H, W, K) or (K, H, W); channel k-1 = class k), numpy or torch: the
      defect's pixels get its class.
    - **label** (``label_key`` / position 2, optional): an int class id (0 = defect-free), a
      multi-hot vector (K,) or a one-hot vector with a background entry first (K + 1,): set to the
      injected class, in the sample's type.
    - ``class_vector`` (K,): re-derived from the new mask.
    - ``bbox_key`` (dict samples): boxes in ``bbox_format`` (required when samples carry boxes): the
      defect's box is appended, and its class (``bbox_label="id"``, or ``"name"``) to each label
      field in ``bbox_label_fields`` and to any extra columns of the rows. Without a
      ``collate_fn`` the boxes stay per-sample lists (injection makes them ragged).
    - ``log_key`` (dict samples; ``None`` to skip) is added: ``{"class_id": int (0 = not injected),
      "entry_id": int (-1), "method": str (""), "bbox": int64 (4,) (x_min, y_min, x_max, y_max; -1)}``.
    - strings and ``None`` and the fields in ``passthrough_keys`` pass through; any other field
      (per-pixel data such as a weight map, or a number that may be a label) is refused with a
      ``ValueError`` naming it: DLI cannot tell how a pasted defect changes it.

    ``dli`` holds its bank as a path (or a saved bank, which pickles as its path), so each worker
    receives a few bytes and loads the bank once (:func:`albu_defects.resolve_bank` caches it per
    process). In a worker, the DLI is re-seeded by :func:`reseed_pipeline` (the worker's seed,
    ``dli.seed`` when set, and the rank), so workers, epochs and ranks draw different injections and
    a seeded DataLoader reproduces them.
    """

    def __init__(
        self,
        dli: DynamicLabelInjection,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        *,
        image_key: str = "image",
        mask_key: str = "mask",
        label_key: str = "label",
        log_key: str | None = "dli",
        bbox_key: str = "bboxes",
        bbox_format: str | None = None,
        bbox_label_fields: Sequence[str] = (),
        bbox_label: Literal["id", "name"] = "id",
        passthrough_keys: Sequence[Any] = (),
    ) -> None:
        if not isinstance(dli, DynamicLabelInjection):
            raise ValueError(f"dli must be a DynamicLabelInjection, got {type(dli).__name__}")
        if collate_fn is not None and not callable(collate_fn):
            raise ValueError(f"collate_fn must be callable or None, got {type(collate_fn).__name__}")
        self.dli = dli
        self.collate_fn = collate_fn
        self.image_key = image_key
        self.mask_key = mask_key
        self.label_key = label_key
        self.log_key = log_key
        self.bbox_key = bbox_key
        self.bbox_format = bbox_format
        self.bbox_label_fields = _check_box_options(bbox_format, bbox_label_fields)
        self.bbox_label = check_choice(bbox_label, ("id", "name"), "bbox_label")
        self.passthrough_keys = tuple(passthrough_keys)
        self._worker_seed: int | None = None

    def _plan(self, samples: list[Any]) -> _InjectPlan:
        fields = _Fields(samples, "DLICollate", "(image, mask[, label, ...])", same_keys=False)
        image, mask, label = (self.image_key, self.mask_key, self.label_key) if fields.is_dict else (0, 1, 2)
        for i, sample in enumerate(samples):
            if not (fields.has(sample, image) and fields.has(sample, mask)):
                where = f"{image!r} or {mask!r}; set image_key/mask_key" if fields.is_dict else "an image and a mask"
                raise ValueError(f"sample {i} lacks {where}")
        if label not in fields.keys:
            label = None
        if label is not None and all(_is_text(v) for v in fields.values(samples, label)):
            label = None  # no label: ``None``, or a name in that tuple position
        _, hw = _image_layout(samples[0][image], f"sample 0 {fields.name(image)}")
        boxes = _boxes_present(
            fields, samples, self.bbox_key, self.bbox_label_fields, self.bbox_format, "injected defects get boxes"
        )
        anomaly = fields.is_dict and ANOMALY_MASK_KEY in fields.keys and ANOMALY_MASK_KEY not in self.passthrough_keys
        label_keys = (CLASS_VECTOR_KEY, ANOMALY_MASK_KEY, ANOMALY_LABEL_KEY) if anomaly else (CLASS_VECTOR_KEY,)
        for key in fields.keys:
            values = fields.values(samples, key)
            if key in (image, mask, label) or key in self.passthrough_keys or all(_is_text(v) for v in values):
                continue
            if (boxes and key in (self.bbox_key, *self.bbox_label_fields)) or (fields.is_dict and key == self.log_key):
                continue
            if fields.is_dict and key in label_keys:
                continue
            bad = next(v for v in values if not _is_text(v))
            raise _refusal("DLICollate", fields, key, bad, hw, "inject")
        class_vector = fields.is_dict and CLASS_VECTOR_KEY in fields.keys and label != CLASS_VECTOR_KEY
        return _InjectPlan(fields, image, mask, label, hw, boxes, class_vector, anomaly)

    def __call__(self, samples: list[Any]) -> Any:
        samples = _check_samples(samples, "DLICollate")
        plan = self._plan(samples)
        self._worker_seed = reseed_in_worker(self.dli, self._worker_seed)
        bank = resolve_bank(self.dli.bank)
        k = len(bank.classes)
        images, masks, labels = [], [], []
        for i, sample in enumerate(samples):
            name = f"sample {i}"
            images.append(_numpy_image(sample[plan.image], f"{name} image"))
            masks.append(_dli_mask(sample[plan.mask], images[-1].shape[:2], f"{name} mask"))
            if plan.label is not None and plan.fields.has(sample, plan.label) and not _is_text(sample[plan.label]):
                labels.append(_dli_label(sample[plan.label], k, f"{name} label"))
        # Labels tell DLI which samples hold defects their masks do not show; all or none of them.
        out = self.dli(images=images, masks=masks, labels=labels if len(labels) == len(samples) else None)
        rebuilt = []
        for i, sample in enumerate(samples):
            injection = out["injections"][i]
            rebuilt.append(sample if injection is None else self._injected(sample, plan, out, i, bank))
            if plan.fields.is_dict and self.log_key is not None:
                rebuilt[-1] = {**rebuilt[-1], self.log_key: _log_record(injection)}
        if self.collate_fn is not None:
            return self.collate_fn(rebuilt)
        return _collate_keeping_lists(rebuilt, [self.bbox_key, *self.bbox_label_fields] if plan.boxes else [])

    def _injected(self, sample: Any, plan: _InjectPlan, out: dict[str, Any], i: int, bank: Any) -> Any:
        injection = out["injections"][i]
        class_id = int(injection["class_id"])
        new = dict(sample) if plan.fields.is_dict else list(sample)
        new[plan.image] = _like_image(out["images"][i], sample[plan.image])
        new[plan.mask] = _like_mask(out["masks"][i], sample[plan.mask], plan.hw)
        # The label model: label keys are re-derived from the new mask (DLI injects only into
        # samples without defects, so the defect's pixels are the mask's nonzero ones).
        defect = out["masks"][i].any(axis=2)
        present = classes_present(out["masks"][i], len(bank.classes))
        if plan.label is not None and plan.fields.has(sample, plan.label) and not _is_text(sample[plan.label]):
            new[plan.label] = _like_label(sample[plan.label], present)
        if plan.class_vector and sample.get(CLASS_VECTOR_KEY) is not None:
            new[CLASS_VECTOR_KEY] = _like_label(sample[CLASS_VECTOR_KEY], present)
        if plan.anomaly and sample.get(ANOMALY_MASK_KEY) is not None:  # the real defect hides the anomaly under it
            anomaly = _as_numpy(sample[ANOMALY_MASK_KEY])
            hidden = anomaly * ~defect.reshape(anomaly.shape[:2] + (1,) * (anomaly.ndim - 2))
            new[ANOMALY_MASK_KEY] = _like_array(hidden, sample[ANOMALY_MASK_KEY])
            if anomaly.any() and not hidden.any() and ANOMALY_LABEL_KEY in new:
                new[ANOMALY_LABEL_KEY] = _like_array(np.asarray(0), sample[ANOMALY_LABEL_KEY])
        if plan.boxes and injection["bbox"] is not None and sample.get(self.bbox_key) is not None:
            x0, y0, x1, y1 = (int(v) for v in injection["bbox"])
            value = class_id if self.bbox_label == "id" else bank.classes[class_id - 1]
            coords, extras = _read_boxes(sample[self.bbox_key], f"sample {i} {self.bbox_key!r}")
            width = _box_columns(sample[self.bbox_key]) - 4
            coords = np.concatenate(
                [coords, _from_pixels(np.array([[x0, y0, x1, y1]]), str(self.bbox_format), plan.hw)]
            )
            new[self.bbox_key] = _write_boxes(sample[self.bbox_key], coords, [*extras, (value,) * width])
            for field in self.bbox_label_fields:
                new[field] = _concat_like(sample[field], [sample[field], [value]])
        return new if plan.fields.is_dict else type(sample)(new) if isinstance(sample, list) else tuple(new)


def _numpy_image(image: Any, name: str) -> np.ndarray:
    """A sample's image as numpy (H, W[, C]) (a view of a CPU tensor's memory)."""
    layout, _ = _image_layout(image, name)
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().numpy()
        return array.transpose(1, 2, 0) if layout == "chw" else array
    return image


def _like_image(new: np.ndarray, original: Any) -> Any:
    if isinstance(original, torch.Tensor):
        chw = new.transpose(2, 0, 1) if original.ndim == 3 else new
        return torch.from_numpy(np.ascontiguousarray(chw)).to(original.device)
    return new


def _dli_mask(mask: Any, hw: tuple[int, int], name: str) -> np.ndarray:
    """A sample's mask in the label model's (H, W, C) layout (class-index (H, W, 1) or multi-hot (H, W, K))."""
    if _pixel_layout(mask, hw) is None:
        got = tuple(mask.shape) if isinstance(mask, (np.ndarray, torch.Tensor)) else type(mask).__name__
        raise ValueError(f"{name} must be a class-index or multi-hot mask of the image's size {hw}, got {got}")
    return _hwc(mask, hw)


def _like_mask(new: np.ndarray, original: Any, hw: tuple[int, int]) -> Any:
    """DLI's (H, W, C) mask in the type, layout and dtype of the sample's ``original`` one."""
    layout = _pixel_layout(original, hw)
    return _like_array(new[..., 0] if layout == "hw" else new.transpose(2, 0, 1) if layout == "chw" else new, original)


def _dli_label(label: Any, k: int, name: str) -> Any:
    """A sample's label for DLI: an int, or a multi-hot (K,) vector; a (K + 1,) one-hot vector becomes an int."""
    if _is_int(label):
        return int(label)
    if _is_vector(label):
        vector = _as_numpy(label)
        if vector.shape == (k,):
            return vector
        if vector.shape == (k + 1,) and np.count_nonzero(vector) == 1:
            return int(np.flatnonzero(vector)[0])
        raise ValueError(
            f"{name} is a vector of {vector.shape[0]} entries; the bank has {k} classes: give a multi-hot vector "
            f"of {k} or a one-hot vector of {k + 1} (entry 0 = defect-free)"
        )
    raise ValueError(f"{name} must be an int class id or a label vector (numpy or torch), got {label!r}")


def _like_array(new: np.ndarray, original: Any) -> Any:
    """``new`` in the type, dtype and device of ``original`` (a tensor, an array or a Python / numpy scalar)."""
    if isinstance(original, torch.Tensor):
        return torch.as_tensor(np.asarray(new), device=original.device).to(original.dtype)
    if isinstance(original, np.ndarray):
        return np.asarray(new, dtype=original.dtype)
    value = np.asarray(new).item()
    return type(original)(value) if isinstance(original, (int, float, np.number)) else value


def _hwc(mask: Any, hw: tuple[int, int]) -> np.ndarray:
    """A class-index or multi-hot mask (any layout, numpy or torch) as numpy (H, W, C): the label model's layout."""
    array = _as_numpy(mask)
    layout = _pixel_layout(array, hw)
    return array[..., None] if layout == "hw" else array.transpose(1, 2, 0) if layout == "chw" else array


def _like_label(original: Any, present: np.ndarray) -> Any:
    """A label re-derived from ``present`` (bool (K,)) in the form of the sample's ``original`` label.

    An int class id, a (K,) vector (``class_vector`` or multi-hot) or a (K + 1,) one-hot vector
    whose entry 0 means defect-free (which :func:`albu_defects.core.labels.relabel` extends).
    """
    value = int(original) if _is_int(original) else _as_numpy(original)
    if np.ndim(value) == 1 and value.shape[0] == present.shape[0] + 1:
        value = relabel(int(np.argmax(value)), present)  # the id, then back to one-hot
        return _like_array(np.eye(present.shape[0] + 1)[value], original)
    return _like_array(np.asarray(relabel(value, present)), original)


def _log_record(injection: dict[str, Any] | None) -> dict[str, Any]:
    if injection is None:
        return {"class_id": 0, "entry_id": -1, "method": "", "bbox": np.full(4, -1, np.int64)}
    bbox = injection["bbox"] if injection["bbox"] is not None else (-1, -1, -1, -1)
    return {
        "class_id": int(injection["class_id"]),
        "entry_id": int(injection["entry_id"]),
        "method": str(injection["method"]),
        "bbox": np.asarray(bbox, np.int64),
    }
