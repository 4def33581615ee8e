"""DataLoader ``collate_fn`` wrappers: :class:`ContextMixCollate` (collate, then mix) and :class:`DLICollate` (inject, then collate)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from albu_defects.core.labels import CLASS_VECTOR_KEY, relabel
from albu_defects.methods.injection.dli import DynamicLabelInjection

from .contextmix import TensorContextMix
from .workers import reseed_in_worker

__all__ = [
    "ContextMixCollate",
    "DLICollate",
]


# ========================================================================== collate wrappers
class ContextMixCollate:
    """DataLoader ``collate_fn``: collate with ``collate_fn`` (default ``default_collate``), then mix.

    The collated batch must be a sequence ``(images, labels, *rest)`` (returned as
    ``(mixed, targets, *rest)``) or a mapping with ``image_key`` and ``label_key`` (``label_key``
    may be absent: ``targets`` then holds the weights), returned with those keys replaced and
    ``mix_weights`` (N, 2) added. Images must be (N, C, H, W) tensors (e.g. from ``ToTensorV2``).
    Other arguments go to :class:`~albu_defects.pytorch.TensorContextMix`.

    In worker processes every worker gets its own stream: the op gets a generator seeded by
    :func:`reseed_pipeline` (the worker's seed, ``seed`` when set, and the rank), so workers, epochs
    and ranks do not repeat each other's boxes, and a seeded DataLoader reproduces them.
    """

    def __init__(
        self,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        *,
        image_key: str = "image",
        label_key: str = "label",
        **contextmix_kwargs: Any,
    ):
        if collate_fn is not None and not callable(collate_fn):
            raise ValueError(f"collate_fn must be callable or None, got {type(collate_fn).__name__}")
        self.collate_fn = collate_fn or default_collate
        self.image_key = image_key
        self.label_key = label_key
        self.contextmix = TensorContextMix(**contextmix_kwargs)
        self._worker_seed: int | None = None

    def __call__(self, samples: list[Any]) -> Any:
        self._worker_seed = reseed_in_worker(self.contextmix, self._worker_seed)
        batch = self.collate_fn(samples)
        if isinstance(batch, Mapping):
            if self.image_key not in batch:
                raise ValueError(f"the collated batch has no {self.image_key!r} key (set image_key)")
            out = dict(batch)
            mixed, targets = self.contextmix(batch[self.image_key], batch.get(self.label_key))
            out[self.image_key] = mixed
            out[self.label_key] = targets
            out["mix_weights"] = torch.from_numpy(self.contextmix.last_weights).to(mixed.device)
            return out
        if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)) and len(batch) >= 1:
            images = batch[0]
            labels = batch[1] if len(batch) > 1 else None
            mixed, targets = self.contextmix(images, labels)
            return (mixed, targets, *batch[2:])
        raise ValueError(f"the collated batch must be (images, labels, ...) or a dict, got {type(batch).__name__}")


def _to_numpy_image(image: Any) -> tuple[np.ndarray, bool]:
    """A sample's image as a numpy (H, W[, C]) array; ``True`` when it was a (C, H, W) / (H, W) tensor."""
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().numpy()
        if array.ndim == 3:
            array = np.ascontiguousarray(array.transpose(1, 2, 0))
        return array, True
    return image, False


def _to_numpy(value: Any) -> tuple[Any, bool]:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy(), True
    return value, False


def _label_value(value: Any) -> Any:
    """An int for scalar labels (Python, numpy or 0-d tensor), else a 1-D numpy multi-hot vector."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return int(value)
    return value


class DLICollate:
    """DataLoader ``collate_fn``: Dynamic Label Injection on one batch's samples, then ``collate_fn``.

    Samples are dicts with ``image_key``, ``mask_key`` and optionally ``label_key``, or sequences
    ``(image, mask[, label, ...])``. Images are numpy (H, W[, C]) arrays or torch (C, H, W) / (H, W)
    tensors (e.g. after ``ToTensorV2``); masks numpy or torch class-index (H, W) or one-hot (K, H, W)
    masks; labels ints (0 = defect-free) or multi-hot vectors. Every value comes back in its own
    type and layout, then ``collate_fn`` (default ``torch.utils.data.default_collate``) collates.
    Dict samples also get ``log_key`` (set ``None`` to skip): ``{"class_id": int (0 = not
    injected), "entry_id": int (-1), "method": str (""), "bbox": int64 (4,) (x_min, y_min, x_max, y_max; -1)}``,
    which collates into tensors and lists.

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
    ) -> None:
        if not isinstance(dli, DynamicLabelInjection):
            raise ValueError(f"dli must be a DynamicLabelInjection, got {type(dli).__name__}")
        if collate_fn is not None and not callable(collate_fn):
            raise ValueError(f"collate_fn must be callable or None, got {type(collate_fn).__name__}")
        self.dli = dli
        self.collate_fn = collate_fn or default_collate
        self.image_key = image_key
        self.mask_key = mask_key
        self.label_key = label_key
        self.log_key = log_key
        self._worker_seed: int | None = None

    def _fields(self, sample: Any, index: int) -> tuple[Any, Any, Any]:
        if isinstance(sample, Mapping):
            if self.image_key not in sample or self.mask_key not in sample:
                raise ValueError(
                    f"sample {index} lacks {self.image_key!r} or {self.mask_key!r}; set image_key/mask_key"
                )
            return sample[self.image_key], sample[self.mask_key], sample.get(self.label_key)
        if isinstance(sample, (list, tuple)) and len(sample) >= 2:
            return sample[0], sample[1], sample[2] if len(sample) > 2 else None
        raise ValueError(f"sample {index} must be a dict or an (image, mask[, label, ...]) tuple, got {type(sample)}")

    def __call__(self, samples: list[Any]) -> Any:
        self._worker_seed = reseed_in_worker(self.dli, self._worker_seed)
        images, masks, labels, image_tensor, mask_tensor = [], [], [], [], []
        for i, sample in enumerate(samples):
            image, mask, label = self._fields(sample, i)
            image, was_tensor = _to_numpy_image(image)
            images.append(image)
            image_tensor.append(was_tensor)
            mask, was_tensor = _to_numpy(mask)
            masks.append(mask)
            mask_tensor.append(was_tensor)
            labels.append(label)
        have_labels = all(label is not None for label in labels)
        out = self.dli(images=images, masks=masks, labels=[_label_value(v) for v in labels] if have_labels else None)
        rebuilt = []
        for i, sample in enumerate(samples):
            image, mask = out["images"][i], out["masks"][i]
            if image is not images[i] and image_tensor[i]:
                image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1) if image.ndim == 3 else image))
            elif image is images[i]:
                image = self._fields(sample, i)[0]
            if mask is not masks[i] and mask_tensor[i]:
                mask = torch.from_numpy(np.ascontiguousarray(mask))
            elif mask is masks[i]:
                mask = self._fields(sample, i)[1]
            label = labels[i]
            if have_labels and out["injections"][i] is not None:
                label = _relabel(labels[i], out["labels"][i])
            rebuilt.append(self._rebuild(sample, image, mask, label, out["injections"][i]))
        return self.collate_fn(rebuilt)

    def _rebuild(self, sample: Any, image: Any, mask: Any, label: Any, injection: dict[str, Any] | None) -> Any:
        if isinstance(sample, Mapping):
            new = dict(sample)
            new[self.image_key] = image
            new[self.mask_key] = mask
            if label is not None:
                new[self.label_key] = label
            vector = sample.get(CLASS_VECTOR_KEY)
            if injection is not None and vector is not None and self.label_key != CLASS_VECTOR_KEY:
                # the label model: an injected (formerly defect-free) sample now holds the injected class only
                present = np.zeros(np.shape(vector)[0], bool)
                present[int(injection["class_id"]) - 1] = True
                new[CLASS_VECTOR_KEY] = _relabel(vector, relabel(_to_numpy(vector)[0], present))
            if self.log_key is not None:
                new[self.log_key] = _log_record(injection)
            return new
        rest = list(sample[2:])
        if rest and label is not None:
            rest[0] = label
        return type(sample)([image, mask, *rest]) if isinstance(sample, list) else (image, mask, *rest)


def _relabel(original: Any, new: Any) -> Any:
    """``new`` (an int or a multi-hot vector) in the type of the sample's ``original`` label."""
    if isinstance(original, torch.Tensor):
        return torch.as_tensor(np.asarray(new), dtype=original.dtype)
    if isinstance(original, np.ndarray):
        return np.asarray(new, dtype=original.dtype)
    if isinstance(original, np.integer):
        return type(original)(new)
    return new if not isinstance(new, np.integer) else int(new)


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
