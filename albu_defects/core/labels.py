"""The label model: which classes a mask holds, writing a class into a mask, and the image-level label keys.

One place for every albu-defects transform (issue 11). Pixel labels are the truth:

- ``mask`` is a *class-index* mask, (H, W) or (H, W, 1) of integers (or bool: class 1), 0 background
  and ``k`` = class ``k``; or a *multi-hot* mask, (H, W, K) with K > 1 (bool, integer or float;
  nonzero = present), channel ``k - 1`` = class ``k``, so a pixel may hold several classes.
- ``class_vector`` (:data:`CLASS_VECTOR_KEY`) is THE image-level defect label: float32 (K,), 1 where
  class ``k`` is present in the mask. Every albu-defects transform that changes mask content or
  geometry re-derives the label keys present in its input from its output mask
  (:func:`relabel`), keeping each key's own format (a float32 vector, a uint8 vector, an int id).
- ``anomaly_mask`` (:data:`ANOMALY_MASK_KEY`, bool (H, W)) is the union of pseudo-anomaly pixels and
  ``anomaly_label`` (:data:`ANOMALY_LABEL_KEY`, int) the label of the pseudo-anomaly present, the
  normal label (0 unless configured) when the anomaly mask is empty.

albumentations' own transforms do not know these keys: :class:`~albu_defects.SyncLabels`
(:mod:`albu_defects.core.sync_labels`), last in a pipeline, re-derives them from the final masks.

Writing a class (:func:`paint_classes`, :func:`write_class`) *replaces* what the pixel showed: a
pasted defect or a named pseudo-anomaly hides the defect beneath it, in both mask kinds (the other
channels of a multi-hot pixel are cleared).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "ANOMALY_LABEL_KEY",
    "ANOMALY_MASK_KEY",
    "CLASS_VECTOR_KEY",
    "carried_anomaly_mask",
    "check_class_ids",
    "check_label_mask",
    "class_vector",
    "class_ids",
    "classes_present",
    "is_multi_hot",
    "label_num_classes",
    "mask_num_classes",
    "paint_classes",
    "relabel",
    "relabel_from_mask",
    "write_class",
]

#: The image-level defect label: float32 (K,), 1 where class k is present in the final mask.
CLASS_VECTOR_KEY = "class_vector"
#: Bool (H, W): the union of pseudo-anomaly pixels.
ANOMALY_MASK_KEY = "anomaly_mask"
#: Int: the label of the pseudo-anomaly present (the normal label when the anomaly mask is empty).
ANOMALY_LABEL_KEY = "anomaly_label"


def carried_anomaly_mask(anomaly_mask: Any) -> Any:
    """``anomaly_mask`` as it travels when a Compose declares it a mask target: uint8, 1 = anomaly.

    OpenCV's warps (``A.Affine``, ``A.Resize``, ``A.PadIfNeeded``, ...) refuse bool arrays, so a bool
    mask would break the built-ins that move it; :class:`~albu_defects.SyncLabels`, last in the
    pipeline, hands it back as bool.
    """
    if isinstance(anomaly_mask, np.ndarray) and anomaly_mask.dtype == bool:
        return anomaly_mask.view(np.uint8)
    return anomaly_mask


def is_multi_hot(mask: Any) -> bool:
    """True for an (H, W, K) mask with K > 1 (one channel per class); (H, W, 1) is a class-index mask."""
    return getattr(mask, "ndim", 0) == 3 and mask.shape[2] > 1


def mask_num_classes(mask: Any) -> int | None:
    """K of a multi-hot mask (its channels); ``None`` for a class-index mask (its values do not say K)."""
    return int(mask.shape[2]) if is_multi_hot(mask) else None


def check_label_mask(mask: Any, hw: tuple[int, int], name: str = "mask", num_classes: int | None = None) -> Any:
    """Return ``mask`` if it is a class-index or multi-hot mask of size ``hw`` (see the module docstring), else raise.

    A class-index mask must be bool or integer without negative ids, and with ids up to
    ``num_classes`` when given (a larger id would silently drop out of ``class_vector``); a
    multi-hot mask must have ``num_classes`` channels when given.
    """
    if not isinstance(mask, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(mask).__name__}")
    if mask.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape (H, W), (H, W, 1) or multi-hot (H, W, K), got {mask.shape}")
    if tuple(mask.shape[:2]) != tuple(hw):
        raise ValueError(f"{name} is {mask.shape[0]}x{mask.shape[1]} but must match the image size {hw[0]}x{hw[1]}")
    if is_multi_hot(mask):
        if num_classes is not None and mask.shape[2] != num_classes:
            raise ValueError(
                f"{name} is multi-hot with {mask.shape[2]} channels but there are {num_classes} classes "
                "(one channel per class, channel k-1 = class k, no background channel)"
            )
        if mask.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be a bool, integer or float multi-hot mask, got dtype {mask.dtype}")
        return mask
    return check_class_ids(mask, name, num_classes)


def check_class_ids(mask: np.ndarray, name: str = "mask", num_classes: int | None = None) -> np.ndarray:
    """Return a class-index ``mask`` if it is bool or integer, without negative ids and (when
    ``num_classes`` is given) without ids above it; else raise a ``ValueError`` naming the bad ids."""
    if mask.dtype != bool and not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"{name} must be an integer class-index mask (0 = background), got dtype {mask.dtype}")
    if mask.dtype != bool and mask.size:
        low, high = int(mask.min()), int(mask.max())
        if low < 0:
            raise ValueError(f"{name} holds negative class ids; 0 is background and k > 0 is class k")
        if num_classes is not None and high > num_classes:
            unknown = [int(v) for v in np.unique(mask[mask > num_classes])]
            raise ValueError(
                f"{name} holds class id(s) {unknown} unknown to the bank, which has classes 1..{num_classes}; "
                "use the bank's class ids (0 = background)"
            )
    return mask


def classes_present(mask: Any, num_classes: int) -> np.ndarray:
    """Bool (K,): which classes 1..K the mask holds (numpy arrays or CPU torch tensors).

    Raises ``ValueError`` when the mask holds a class beyond K (it would silently drop out of the label).
    """
    mask = np.asarray(mask)
    if is_multi_hot(mask):
        if mask.shape[2] != num_classes:
            raise ValueError(f"the multi-hot mask has {mask.shape[2]} channels but there are {num_classes} classes")
        return mask.reshape(-1, num_classes).any(axis=0)
    values = mask.reshape(-1)
    present = np.zeros(num_classes, bool)
    if values.dtype == bool:
        if values.any():
            if num_classes < 1:
                raise ValueError("a bool mask holds class 1 but there are no classes")
            present[0] = True
        return present
    if values.dtype in (np.uint8, np.uint16):
        counts = np.bincount(values, minlength=num_classes + 1)
        found = np.flatnonzero(counts[1:]) + 1
    else:
        found = np.unique(values[values != 0])
    if found.size and (found.min() < 0 or found.max() > num_classes):
        bad = [int(v) for v in found if v < 0 or v > num_classes]
        raise ValueError(f"the mask holds class id(s) {bad} outside 1..{num_classes}; fix the mask or num_classes")
    present[found.astype(np.int64) - 1] = True
    return present


def class_ids(present: Any) -> frozenset[int]:
    """The class ids k (1..K) whose entry of a presence vector or multi-hot label (K,) is nonzero."""
    return frozenset(int(c) + 1 for c in np.flatnonzero(np.asarray(present)))


def class_vector(mask: Any, num_classes: int) -> np.ndarray:
    """The ``class_vector`` of a mask: float32 (K,), 1 where class k is present."""
    return classes_present(mask, num_classes).astype(np.float32)


def relabel(label: Any, present: np.ndarray, name: str = CLASS_VECTOR_KEY) -> Any:
    """``label`` re-derived from ``present`` (bool (K,)) in the label's own format.

    A vector keeps its dtype and length (a list comes back as an array); an int class id (0 =
    defect-free) stays an int of the same type, and raises ``ValueError`` when the mask now holds
    several classes (an int cannot say that: use a ``class_vector``).
    """
    present = np.asarray(present, bool)
    if np.ndim(label) == 0:
        ids = np.flatnonzero(present) + 1
        if ids.size > 1:
            raise ValueError(
                f"{name} is one class id but the mask now holds classes {ids.tolist()}; "
                f"use a multi-hot vector (e.g. the float32 '{CLASS_VECTOR_KEY}') for images with several classes"
            )
        value = int(ids[0]) if ids.size else 0
        return type(label)(value) if isinstance(label, (int, np.integer)) and not isinstance(label, bool) else value
    vector = np.asarray(label)
    if vector.shape != present.shape:
        raise ValueError(
            f"{name} has shape {vector.shape} but there are {present.size} classes: give one entry per class"
        )
    return present.astype(vector.dtype)


def label_num_classes(label: Any) -> int | None:
    """K of a multi-hot label (its length); ``None`` for an int class id."""
    return None if np.ndim(label) == 0 else int(np.shape(label)[0])


def relabel_from_mask(label: Any, mask: Any, num_classes: int | None = None, name: str = CLASS_VECTOR_KEY) -> Any:
    """``label`` re-derived from the classes ``mask`` holds, in the label's own format (:func:`relabel`).

    K is the label's length, else the mask's channels, else ``num_classes``, else (an int label of a
    class-index mask) the largest id in the mask.
    """
    k = label_num_classes(label) or mask_num_classes(mask) or num_classes
    if k is None:
        values = np.asarray(mask)
        k = max(1, int(values.max())) if values.size else 1
    return relabel(label, classes_present(mask, k), name)


def paint_classes(mask: np.ndarray, class_map: np.ndarray) -> np.ndarray:
    """A copy of ``mask`` with class ``class_map[y, x]`` written wherever it is nonzero (it hides what was there).

    ``class_map`` is an (H, W) integer map (0 = keep the mask's pixel). A class-index mask takes the
    id (``ValueError`` when it does not fit its dtype; a bool mask holds class 1 only); a multi-hot
    mask gets that pixel's channels cleared and channel ``id - 1`` set (1, or ``True``).
    """
    out = mask.copy()
    painted = class_map != 0
    if not painted.any():
        return out
    top = int(class_map.max())
    if is_multi_hot(out):
        if top > out.shape[2]:
            raise ValueError(f"class {top} has no channel in the {out.shape[2]}-channel multi-hot mask")
        out[painted] = 0
        rows, cols = np.nonzero(painted)
        out[rows, cols, class_map[rows, cols].astype(np.int64) - 1] = 1
        return out
    _check_holds(out, top)
    plane = out[..., 0] if out.ndim == 3 else out
    np.copyto(plane, class_map.astype(plane.dtype, copy=False), where=painted)
    return out


def _check_holds(mask: np.ndarray, top: int) -> None:
    """``ValueError`` unless the class-index ``mask`` can hold class ids up to ``top``."""
    if mask.dtype == bool:
        if top != 1:
            raise ValueError(f"a bool mask can only hold class 1, not class {top}; use an integer mask")
    elif not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"a class-index mask must be integer (or bool), got dtype {mask.dtype}")
    elif top > np.iinfo(mask.dtype).max:
        raise ValueError(f"class id {top} does not fit the mask dtype {mask.dtype}; use a wider mask dtype")


def write_class(mask: np.ndarray, region: np.ndarray, class_id: int) -> np.ndarray:
    """A copy of ``mask`` with class ``class_id`` written on the bool (H, W) ``region`` (see :func:`paint_classes`)."""
    if is_multi_hot(mask) or class_id < 0:
        class_map = np.zeros(region.shape, np.uint8 if class_id < 256 else np.int64)
        class_map[region] = class_id
        return paint_classes(mask, class_map)
    out = mask.copy()  # a class-index mask: one write, no class map (once per injected defect)
    if class_id != 0 and region.any():
        _check_holds(out, int(class_id))
        np.copyto(out[..., 0] if out.ndim == 3 else out, class_id, where=region, casting="unsafe")
    return out
