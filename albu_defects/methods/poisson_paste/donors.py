"""PoissonPaste's donors: reading and checking the objects ``data[metadata_key]`` offers, and the paste region."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from albu_defects.core.geometry import Box, box_slices
from albu_defects.core.labels import CLASS_VECTOR_KEY
from albu_defects.core.partners import partner_annotations
from albu_defects.core.validation import as_bool_mask, check_image, check_mask_shape, image_hw
from albu_defects.methods.cropliq.functional import bbox_to_pixels
from albu_defects.methods.injection.functional import match_channels

__all__ = ["Candidate", "donor_candidates", "donor_planes", "paste_region"]


class Candidate(NamedTuple):
    """One object a call may paste: a donor's pixels and the part of its mask that is this object."""

    donor: int
    image: np.ndarray
    mask: np.ndarray
    planes: list[np.ndarray]
    class_id: int | None
    labels: dict[str, Any]


def donor_candidates(transform: Any, data: dict[str, Any], host: np.ndarray) -> list[Candidate]:
    """Every object the donors offer, checked against what the host needs (see the class docstring)."""
    key = transform.metadata_key
    donors = data.get(key)
    if not isinstance(donors, Sequence) or isinstance(donors, (str, bytes)):
        raise ValueError(f"{key} must be a list of donor dicts (each with an 'image' and a 'mask'), got {donors!r}")
    needs_class = data.get("mask") is not None or CLASS_VECTOR_KEY in data or transform.num_classes is not None
    host_masks = data.get("masks")
    fields = transform.processor_label_fields("bboxes") if data.get("bboxes") is not None else []
    out = []
    for index, donor in enumerate(donors):
        name = f"{key}[{index}]"
        if not isinstance(donor, Mapping) or "image" not in donor or "mask" not in donor:
            raise ValueError(f"{name} must be a dict with an 'image' and a 'mask', got {type(donor).__name__}")
        image = check_image(donor["image"], f"{name}['image']")
        if image.dtype != host.dtype:
            raise ValueError(f"{name}['image'] has dtype {image.dtype} but the image has {host.dtype}: convert it")
        match_channels(image[:1, :1], host, f"{name}['image']")  # the channels rule, on one pixel
        donor_hw = image_hw(image)
        mask = as_bool_mask(donor["mask"], donor_hw, f"{name}['mask']")
        planes = []
        if host_masks is not None and len(host_masks) > 0:
            planes = donor_planes(donor, host_masks, donor_hw, name)
        boxes: list[Box | None] = [None]
        if donor.get("bboxes") is not None:
            host_boxes = np.asarray(data["bboxes"]) if data.get("bboxes") is not None else np.zeros((0, 4))
            rows = partner_annotations(transform, donor, "bboxes", name, host_boxes)
            boxes = [bbox_to_pixels(row, donor_hw) for row in rows]
        for j, box in enumerate(boxes):
            what = name if box is None else f"{name}['bboxes'][{j}]"
            part = mask if box is None else _inside(mask, box)
            if not part.any():
                raise ValueError(f"{what} holds no pixel of {name}['mask']: there is no object to paste")
            class_id = _entry(donor.get("class_id"), j, box, f"{name}['class_id']")
            if class_id is not None:
                class_id = transform.check_class_id(class_id, data, f"{name}['class_id']")
            elif needs_class:
                raise ValueError(
                    f"{name} has no 'class_id', but the host has a mask or a class_vector (or num_classes is "
                    "set): give every donor the class id of its object"
                )
            labels = {f: _entry(donor[f], j, box, f"{name}[{f!r}]") for f in fields if f in donor}
            missing = [f for f in fields if f not in labels]
            if missing and class_id is None:
                raise ValueError(f"{name} lacks the bbox label fields {missing} and has no 'class_id' to fill them")
            out.append(Candidate(index, image, part, planes, class_id, labels))
    return out


def donor_planes(
    donor: Mapping[str, Any], host_masks: Sequence[np.ndarray], donor_hw: tuple[int, int], name: str
) -> list[np.ndarray]:
    """The donor's own ``masks``, one per host mask, of the donor's size and the host masks' dtypes."""
    planes = donor.get("masks")
    if planes is None or len(planes) != len(host_masks):
        got = "none" if planes is None else len(planes)
        raise ValueError(f"the host has {len(host_masks)} masks but {name}['masks'] has {got}: they must match")
    out = []
    for k, (plane, host_plane) in enumerate(zip(planes, host_masks, strict=True)):
        plane = check_mask_shape(plane, donor_hw, f"{name}['masks'][{k}]")
        if plane.dtype != np.asarray(host_plane).dtype:
            raise ValueError(
                f"{name}['masks'][{k}] has dtype {plane.dtype} but the host's masks[{k}] has "
                f"{np.asarray(host_plane).dtype}; convert one"
            )
        out.append(plane)
    return out


def paste_region(transform: Any, data: dict[str, Any], hw: tuple[int, int]) -> np.ndarray | None:
    """The bool (H, W) region objects are pasted in (``None``: anywhere), from ``transform.region``."""
    if transform.region == "image":
        return None
    if transform.region == "mask":
        key = transform.object_mask_key
        if data.get(key) is None:
            raise ValueError(f"region='mask' needs the region mask under the data key {key!r} (object_mask_key)")
        return as_bool_mask(data[key], hw, key)
    if data.get("bboxes") is None:
        raise ValueError("region='bbox' needs bboxes: pass bboxes=... (with bbox_params in A.Compose)")
    region = np.zeros(hw, bool)
    for row in np.asarray(data["bboxes"], np.float64).reshape(len(data["bboxes"]), -1) if len(data["bboxes"]) else ():
        region[box_slices(bbox_to_pixels(row, hw))] = True
    return region


def _inside(mask: np.ndarray, box: Box) -> np.ndarray:
    """``mask`` with everything outside ``box`` cleared."""
    part = np.zeros_like(mask)
    part[box_slices(box)] = mask[box_slices(box)]
    return part


def _entry(value: Any, index: int, box: Box | None, name: str) -> Any:
    """A donor's value for its object ``index``: one entry per box when it has boxes, else the value itself
    (or the only entry of a one-element list)."""
    if value is None or isinstance(value, (str, bytes)) or np.ndim(value) == 0:
        return value
    values = list(value)
    if box is None:
        if len(values) != 1:
            raise ValueError(f"{name} holds {len(values)} values but the donor has no bboxes: give one value")
        return values[0]
    if index >= len(values):
        raise ValueError(f"{name} holds {len(values)} values but the donor has more bboxes: give one per box")
    return values[index]
