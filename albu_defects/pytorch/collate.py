"""DataLoader ``collate_fn`` wrappers: :class:`ContextMixCollate` (collate, then mix) here and :class:`DLICollate` (inject, then collate) in :mod:`.dli_collate`.

Both change a batch's images, so every other field of every sample either follows (is updated
exactly as the pixels were) or is refused with a ``ValueError`` naming it; nothing is passed
through stale. What they share (fields, layouts, boxes) is in :mod:`.fields`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from albu_defects.core.labels import CLASS_VECTOR_KEY, classes_present
from albu_defects.methods.contextmix.functional import _snap, bboxes_into_box, occlude_bboxes

from .contextmix import TensorContextMix
from .dli_collate import DLICollate
from .fields import (
    BBOX_FORMATS,
    PixelLayout,
    SampleCollate,
    _boxes_present,
    _check_samples,
    _collate_keeping_lists,
    _concat_like,
    _Fields,
    _from_nchw,
    _from_pixels,
    _image_layout,
    _is_int,
    _is_text,
    _is_vector,
    _pixel_layout,
    _read_boxes,
    _refusal,
    _select,
    _to_nchw,
    _to_pixels,
    _write_boxes,
)
from .workers import reseed_in_worker

__all__ = [
    "BBOX_FORMATS",
    "ContextMixCollate",
    "DLICollate",
]


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


class ContextMixCollate(SampleCollate):
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
        super().__init__(
            collate_fn, image_key, label_key, mask_key, bbox_key, bbox_format, bbox_label_fields, passthrough_keys
        )
        self.contextmix = TensorContextMix(**contextmix_kwargs)

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
