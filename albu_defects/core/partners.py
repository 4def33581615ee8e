"""The annotations of extra samples a transform takes through a metadata key (ContextMix's partners, PoissonPaste's donors).

Their ``bboxes`` / ``keypoints`` come in the calling Compose's format with its label fields; these
functions convert them as the Compose converts the host's (:func:`partner_annotations`) and encode
their labels in ``apply_*`` (:func:`partner_labels`, :func:`encode_partner_labels`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .transform import DefectTransform

__all__ = ["encode_partner_labels", "partner_annotations", "partner_labels"]


def partner_annotations(
    transform: DefectTransform, partner: Mapping[str, Any], key: str, name: str, host: np.ndarray
) -> np.ndarray:
    """A partner sample's ``key`` ("bboxes" or "keypoints") in albumentations' internal format, like ``host``.

    For transforms that take extra samples through a metadata key (ContextMix's partners,
    PoissonPaste's donors): the rows are given in the calling Compose's format with its label
    fields, and converted by its processor (outside a Compose they are already internal). Raises
    ``ValueError`` when they are missing, lack label fields, or have other columns than ``host``.
    """
    if partner.get(key) is None:
        raise ValueError(f"the host has {key} but {name} has none: pass its {key} (an empty list if it has none)")
    processor = transform.get_processor(key)
    if processor is None:  # standalone call: annotations are already in the internal format
        converted = np.asarray(partner[key], dtype=np.float64)
    else:
        label_fields = transform.processor_label_fields(key)
        missing = [field for field in label_fields if field not in partner]
        if missing:
            raise ValueError(f"{name} has {key} but lacks their label fields {missing}")
        temp = {"image": partner["image"], key: partner[key], **{field: partner[field] for field in label_fields}}
        # A 2.0's preprocess() records whether the input was a list; keep the host's record intact.
        record = getattr(processor, "is_sequence_input", None)  # AlbumentationsX keeps no such record
        saved = dict(record) if record is not None else None
        try:
            processor.preprocess(temp)
        finally:
            if record is not None:
                record.clear()
                record.update(saved)
        converted = np.asarray(temp[key], dtype=np.float64)
    columns = host.shape[1] if host.ndim == 2 and host.size else None
    if converted.size == 0:
        return converted.reshape(0, columns or (4 if key == "bboxes" else 2))
    if converted.ndim != 2:
        raise ValueError(f"{name}['{key}'] must be a list of rows, got shape {converted.shape}")
    if columns is not None and converted.shape[1] != columns:
        raise ValueError(
            f"{name}['{key}'] has {converted.shape[1]} columns after conversion but the host's have {columns}: "
            "give partners the same extra columns and label fields as the host"
        )
    return converted


def partner_labels(transform: DefectTransform, partner: Mapping[str, Any], key: str) -> dict[str, list[Any]]:
    """A partner's raw values of the Compose's ``key`` label fields, for :func:`encode_partner_labels`."""
    return {field: list(partner[field]) for field in transform.processor_label_fields(key) if field in partner}


def encode_partner_labels(
    transform: DefectTransform, key: str, rows: np.ndarray, labels: Mapping[str, Sequence[Any]]
) -> np.ndarray:
    """``rows`` (from :func:`partner_annotations`) with their label columns encoded by this call's Compose.

    Called in ``apply_*``, so a ``ReplayCompose.replay`` encodes the recorded partner's labels with
    its own label encoder (albumentations 2.0.8 knows a label field only after it has encoded a
    non-empty one: a replay onto a host without rows could not decode the recorded codes).
    """
    manager = getattr(transform.get_processor(key), "label_manager", None)
    fields = transform.processor_label_fields(key)
    if manager is None or not fields or rows.size == 0:
        return rows
    rows = np.array(rows, copy=True)
    first = rows.shape[1] - len(fields)
    for j, field in enumerate(fields):
        if field in labels:
            encoded = manager.process_field(key, field, list(labels[field]))
            rows[:, first + j] = np.asarray(encoded, np.float64).reshape(-1)
    return rows
