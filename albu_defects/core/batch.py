"""BatchCompose: run per-sample transforms over a whole batch, handing each sample its batch-mates.

Multi-sample transforms (``ContextMix``, ``A.Mosaic``, ...) take their extra samples through a
*metadata key* of the per-sample call. :class:`BatchCompose` supplies them from the batch itself:
it pairs every sample with random batch-mates by random permutations (one permutation per partner,
as the ContextMix paper's ``shuffle_index``; a sample may draw itself, as in the paper's code), puts
the partners' *inputs* under every metadata key its transforms declare, runs an inner ``A.Compose``
per sample, and returns the batch. It knows nothing about any one transform: any transform with a
``metadata_key`` attribute gets partners.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import numpy as np
from pydantic import BaseModel, Field, field_validator

from .transform import IS_ALBUMENTATIONS_X, DefectCompose
from .validation import int_at_least, validated_options

__all__ = ["BatchCompose"]

#: Batch keys and the per-sample keys they feed.
_BATCH_TO_SAMPLE = {"images": "image", "masks": "mask", "bboxes": "bboxes", "keypoints": "keypoints", "labels": "label"}
_SAMPLE_TO_BATCH = {value: key for key, value in _BATCH_TO_SAMPLE.items()}


def metadata_keys(transforms: Sequence[Any]) -> list[str]:
    """``metadata_key`` of every transform, nested composes included, in order, without repeats."""
    keys: list[str] = []
    for transform in transforms:
        nested = getattr(transform, "transforms", None)
        found = metadata_keys(nested) if isinstance(transform, A.BaseCompose) and nested else []
        key = getattr(transform, "metadata_key", None)
        for candidate in ([key] if isinstance(key, str) else []) + found:
            if candidate not in keys:
                keys.append(candidate)
    return keys


def _gather(values: list[Any], like: Any = None) -> Any:
    """Per-sample values as one array when they stack (equal shapes), else as a list.

    ``like`` is the batch input the values replace: a list input stays a list.
    """
    if isinstance(like, (list, tuple)):
        return list(values)
    arrays = [np.asarray(v) if isinstance(v, (np.ndarray, np.generic, int, float, bool)) else None for v in values]
    if values and all(a is not None for a in arrays) and len({(a.shape, a.dtype) for a in arrays}) == 1:
        return np.stack(arrays)
    return list(values)


class BatchComposeSchema(BaseModel):
    """BatchCompose's own options (its transforms and processors are checked by ``A.Compose``)."""

    num_partners: int
    p: float = Field(ge=0, le=1)

    _num_partners = field_validator("num_partners", mode="before")(int_at_least(1))


class BatchCompose(DefectCompose):
    """Apply per-sample transforms to a batch, giving each sample random batch-mates as partners.

    Call it with the whole batch as keyword arguments: ``images`` (a list of (H, W[, C]) arrays or
    one (N, H, W[, C]) array), and optionally ``masks`` (one mask per sample), ``bboxes`` and
    ``keypoints`` (one list per sample, in the formats of ``bbox_params`` / ``keypoint_params``),
    ``labels`` (one class id per sample, handed to the transforms as ``label``), and any other
    per-sample field (a sequence of length N, e.g. the bbox label fields). Sample ``i`` becomes
    ``image``, ``mask``, ``bboxes``, ``keypoints``, ``label`` and those fields; for every metadata
    key of the inner transforms it receives a list of ``num_partners`` partner dicts holding the
    partners' *inputs* under the same per-sample keys.

    Returns a dict with the same batch keys, each in its input's container (a list stays a list;
    an array comes back as one stacked array when the outputs agree in shape, else as a list),
    every key the transforms add per sample, stacked where possible (e.g. ContextMix's
    ``mix_weights`` -> (N, 2), ``soft_label`` -> (N, num_classes)), and ``partner_indices``
    (N, num_partners): which batch-mates each sample received. Metadata keys are not returned.

    Randomness: the pairing draws from its own stream, derived from ``seed``; each inner transform
    gets its own seed derived from ``seed`` (:mod:`albu_defects.core.seeds`), so the same seed gives
    the same batch output and two inner transforms never draw alike.
    ``p`` is the probability of transforming the batch at all; a skipped batch is returned as given
    (with ``partner_indices`` of each sample itself) and carries none of the transforms' extra keys,
    so prefer the transforms' own ``p`` (ContextMix then still returns its keys).

    Serializes with ``A.save``/``A.load`` together with its inner transforms (albumentations 2.0
    does not save seeds: call :func:`albu_defects.seed_pipeline` after loading).

    Args:
        transforms: per-sample transforms (albumentations or albu-defects), run in order.
        bbox_params: ``A.BboxParams`` (or its dict) of the ``bboxes`` field.
        keypoint_params: ``A.KeypointParams`` (or its dict) of the ``keypoints`` field.
        additional_targets: extra per-sample targets, as ``A.Compose`` takes them (e.g.
            ``{"anomaly_mask": "mask"}``, so built-ins after an anomaly transform move its mask); the
            batch passes one entry per sample under the same key.
        num_partners: how many batch-mates every sample receives (1 for ContextMix; 3 for a 2x2
            ``A.Mosaic``).
        p: probability of transforming the batch.
        is_check_shapes: check that each sample's image and mask agree in size.
        seed: random seed (pairing and transforms).
    """

    def __init__(
        self,
        transforms: Sequence[Any],
        bbox_params: dict[str, Any] | A.BboxParams | None = None,
        keypoint_params: dict[str, Any] | A.KeypointParams | None = None,
        additional_targets: dict[str, str] | None = None,
        num_partners: int = 1,
        p: float = 1.0,
        is_check_shapes: bool = True,
        seed: int | None = None,
    ):
        if isinstance(transforms, (A.BasicTransform, A.BaseCompose)) or not isinstance(transforms, Sequence):
            raise ValueError("transforms must be a list of transforms, e.g. [albu_defects.ContextMix(p=1)]")
        validated_options(BatchComposeSchema, num_partners=num_partners, p=p)
        self._compose = A.Compose(
            list(transforms),
            bbox_params=bbox_params,
            keypoint_params=keypoint_params,
            additional_targets=additional_targets,
            is_check_shapes=is_check_shapes,
        )
        super().__init__(transforms=list(transforms), p=p, seed=seed)
        self.add_targets(additional_targets)  # albumentations keeps them as ``additional_targets``
        self.num_partners = int(num_partners)
        self.is_check_shapes = is_check_shapes
        self.metadata_keys = metadata_keys(self.transforms)

    def set_random_seed(self, seed: int | None) -> None:
        """Seed the pairing stream, the inner per-sample compose and (each its own) every inner transform."""
        inner = getattr(self, "_compose", None)
        if inner is not None:
            inner.set_random_seed(seed)  # it hands ``seed`` to the transforms; DefectCompose re-seeds them below
        super().set_random_seed(seed)
        # the pairing gets its own stream, independent of the compose's should-apply draws
        self.random_generator = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])

    def to_dict_private(self) -> dict[str, Any]:
        data = super().to_dict_private()
        processors = self._compose.processors
        data.update(
            {
                "bbox_params": processors["bboxes"].params.to_dict_private() if "bboxes" in processors else None,
                "keypoint_params": (
                    processors["keypoints"].params.to_dict_private() if "keypoints" in processors else None
                ),
                "additional_targets": dict(self.additional_targets) or None,
                "num_partners": self.num_partners,
                "is_check_shapes": self.is_check_shapes,
            }
        )
        return data

    # ------------------------------------------------------------------ call
    def run(self, batch: dict[str, Any], force_apply: bool = False) -> dict[str, Any]:
        fields = self._check_batch(batch)
        size = len(batch["images"])
        per_sample = [{fields[key]: batch[key][i] for key in fields} for i in range(size)]

        if not (force_apply or self.py_random.random() < self.p):
            result = {key: _gather(list(batch[key]), batch[key]) for key in fields}
            result["partner_indices"] = np.tile(np.arange(size)[:, None], (1, self.num_partners))
            return result

        partner_indices = np.stack([self.random_generator.permutation(size) for _ in range(self.num_partners)], axis=1)
        outputs = []
        for i, sample in enumerate(per_sample):
            data = dict(sample)
            for key in self.metadata_keys:
                data[key] = [dict(per_sample[j]) for j in partner_indices[i]]
            if IS_ALBUMENTATIONS_X:  # pragma: no cover - the inner Compose is a new root: seed it from this stream
                data["invocation_seed"] = int(self.random_generator.integers(2**63))
            try:
                output = self._compose(**data)
            except ValueError as error:  # say which sample: the per-sample message names image, mask, ...
                raise ValueError(f"images[{i}] (sample {i} of the batch): {error}") from error
            for key in self.metadata_keys:
                output.pop(key, None)
            outputs.append(output)

        keys = set(outputs[0])
        if any(set(output) != keys for output in outputs):
            raise ValueError("the transforms returned different keys for different samples; give them default outputs")
        to_batch_key = {sample_key: batch_key for batch_key, sample_key in fields.items()}
        result: dict[str, Any] = {}
        for key in outputs[0]:
            batch_key = to_batch_key.get(key, key)
            result[batch_key] = _gather([output[key] for output in outputs], batch.get(batch_key))
        result["partner_indices"] = partner_indices
        return result

    def _check_batch(self, batch: dict[str, Any]) -> dict[str, str]:
        """Validate the batch; returns ``{batch key: per-sample key}`` of the fields present."""
        images = batch.get("images")
        if images is None or isinstance(images, (str, bytes)) or not hasattr(images, "__len__"):
            raise ValueError("images must be a list of (H, W[, C]) arrays or an (N, H, W[, C]) array")
        size = len(images)
        if size == 0:
            raise ValueError("images is empty: a batch needs at least one sample")
        fields: dict[str, str] = {}
        for key, value in batch.items():
            if value is None:
                continue
            per_sample_key = _BATCH_TO_SAMPLE.get(key, key)
            if key in _SAMPLE_TO_BATCH and _SAMPLE_TO_BATCH[key] != key:
                raise ValueError(f"{key!r} is a per-sample key; pass the batch field {_SAMPLE_TO_BATCH[key]!r} instead")
            if key in self.metadata_keys or key == "partner_indices":
                raise ValueError(f"{key!r} is filled by BatchCompose from the batch; do not pass it")
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != size:
                got = len(value) if hasattr(value, "__len__") else type(value).__name__
                raise ValueError(f"{key} must hold one entry per sample ({size} for {size} images), got {got}")
            fields[key] = per_sample_key
        if self.is_check_shapes and batch.get("masks") is not None:
            for i in range(size):
                image_hw, mask_hw = np.shape(images[i])[:2], np.shape(batch["masks"][i])[:2]
                if image_hw != mask_hw:
                    raise ValueError(f"masks[{i}] is {mask_hw} but images[{i}] is {image_hw}: sizes must match")
        return fields
