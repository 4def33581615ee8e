"""DataLoader ``collate_fn`` :class:`DLICollate`: Dynamic Label Injection on one batch's samples, then collate."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from albu_defects.bank import resolve_bank
from albu_defects.core.labels import ANOMALY_LABEL_KEY, ANOMALY_MASK_KEY, CLASS_VECTOR_KEY, classes_present, relabel
from albu_defects.core.validation import check_choice
from albu_defects.methods.injection.dli import DynamicLabelInjection

from .fields import (
    SampleCollate,
    _as_numpy,
    _box_columns,
    _boxes_present,
    _check_samples,
    _collate_keeping_lists,
    _concat_like,
    _Fields,
    _from_pixels,
    _image_layout,
    _is_int,
    _is_text,
    _is_vector,
    _pixel_layout,
    _read_boxes,
    _refusal,
    _write_boxes,
)
from .workers import reseed_in_worker

__all__ = ["DLICollate"]


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


class DLICollate(SampleCollate):
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
        super().__init__(
            collate_fn, image_key, label_key, mask_key, bbox_key, bbox_format, bbox_label_fields, passthrough_keys
        )
        self.dli = dli
        self.log_key = log_key
        self.bbox_label = check_choice(bbox_label, ("id", "name"), "bbox_label")

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
