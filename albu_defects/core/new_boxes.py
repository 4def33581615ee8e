"""The boxes a transform adds for the objects it pasted, and their bbox label fields: written here once.

Used by every transform that pastes labelled objects (InjectDefect, PoissonPaste, GuidedCropPaste).
A new box goes into albumentations' internal rows (normalized ``x_min, y_min, x_max, y_max``, then
the extra columns, then one column per label field of the calling Compose). Label fields are
encoded the way the Compose's label manager encodes them, so the user gets back labels of the
field's own type:

- a label given in :attr:`NewBox.labels` is used as it is (a string into a numeric field raises);
- otherwise ``label_by`` decides: ``"id"``, the class id; ``"name"``, the class name (a numeric
  field raises: it cannot hold a name); ``"auto"``, the class name (or the id when there is none)
  for fields that hold strings, the class id for numeric fields and fields no box came into yet.

A field is numeric when its labels were numbers on its first call, or when boxes came in this call
and they were numbers; a field no box ever came into is opened for names and ids alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from .geometry import Box

__all__ = [
    "LabelBy",
    "NewBox",
    "append_boxes",
    "encoded_box_label",
]

LabelBy = Literal["auto", "id", "name"]


class NewBox(NamedTuple):
    """A box a transform adds for an object it pasted: where, its class, and the labels of its box.

    ``box`` is ``(x_min, y_min, x_max, y_max)`` in pixels. A bbox label field gets ``labels[field]``
    when given (a value in the field's own type), else what ``label_by`` of :func:`append_boxes` says.
    """

    box: Box
    class_id: int
    class_name: str | None = None
    labels: Mapping[str, Any] = {}


def append_boxes(
    transform: Any,
    bboxes: np.ndarray,
    new: Sequence[NewBox],
    hw: tuple[int, int],
    *,
    label_by: LabelBy = "auto",
    class_column: bool = False,
) -> np.ndarray:
    """``bboxes`` (albumentations' normalized rows, as ``apply_to_bboxes`` gets them) with a row per new box.

    ``transform`` is the calling :class:`~albu_defects.core.transform.DefectTransform` (its Compose's
    processor and label fields). Extra columns that are not label fields get the class id; with no
    box coming in, ``class_column=True`` adds one such column when the Compose has no label field
    (so the class is not lost). Label fields get their encoded label (see the module docstring).
    """
    if not new:
        return bboxes
    h, w = hw
    processor = transform.get_processor("bboxes")
    label_fields = transform.processor_label_fields("bboxes")
    came_in = bboxes.ndim == 2 and bboxes.size > 0
    extra = 1 if class_column and not label_fields else 0
    columns = bboxes.shape[1] if came_in else 4 + (len(label_fields) or extra)
    first_label = columns - len(label_fields)
    metadata = getattr(getattr(processor, "label_manager", None), "metadata", {}).get("bboxes", {})
    known = {field: field in metadata for field in label_fields}  # before this call's new boxes open any
    rows = np.zeros((len(new), columns), np.float64)
    for row, item in zip(rows, new, strict=True):
        x0, y0, x1, y1 = item.box
        row[:4] = (x0 / w, y0 / h, x1 / w, y1 / h)
        row[4:first_label] = item.class_id
        for j, field in enumerate(label_fields):
            row[first_label + j] = encoded_box_label(
                processor, field, item, label_by, boxes_came_in=came_in, field_known=known[field]
            )
    added = rows.astype(bboxes.dtype if bboxes.dtype.kind == "f" else np.float32)
    return added if not came_in else np.concatenate([bboxes, added], axis=0)


def encoded_box_label(
    processor: Any,
    field: str,
    item: NewBox,
    label_by: LabelBy = "auto",
    *,
    boxes_came_in: bool = True,
    field_known: bool | None = None,
) -> float:
    """The encoded value of a new box's label in the bbox label field ``field`` (see the module docstring).

    ``field_known``: whether the field held labels before this call's new boxes (default: whether
    the label manager knows it now).
    """
    manager = getattr(processor, "label_manager", None)
    metadata_by_field = getattr(manager, "metadata", None)
    given = field in item.labels
    if metadata_by_field is None:  # an albumentations without label encoders: labels are numbers
        return float(item.labels[field]) if given else float(item.class_id)
    metadata = metadata_by_field["bboxes"].get(field)
    opened = metadata is None if field_known is None else not field_known
    if metadata is None:  # no box ever came in: this call defines the field (open to ids and names)
        from albumentations.core.label_manager import LabelEncoder, LabelMetadata

        encoder = LabelEncoder()
        encoder.is_numerical = False
        metadata = LabelMetadata(input_type=list, is_numerical=False, encoder=encoder)
        metadata_by_field["bboxes"][field] = metadata
    encoder = metadata.encoder
    numeric = metadata.is_numerical or encoder is None or (boxes_came_in and encoder.is_numerical)
    if given:
        label = item.labels[field]
    elif label_by == "name" or (label_by == "auto" and not numeric and not opened):
        label = item.class_name if item.class_name is not None else item.class_id
    else:
        label = int(item.class_id)
    if numeric:
        if isinstance(label, (str, bytes)):
            fix = "use bbox_label='id' or string labels" if label_by == "name" and not given else "give a number"
            raise ValueError(
                f"bbox label field {field!r} holds numbers in this call, so a new box cannot be labelled "
                f"{label!r}: {fix}"
            )
        return float(label)
    encoder.is_numerical = False  # the flag describes the last call's labels; none came in this one
    encoder.update([label])
    return float(encoder.classes_[label])
