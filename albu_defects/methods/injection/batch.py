"""DLI's batch formats: parsing the images, masks and labels of a batch, and rebuilding them in the same formats."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from albu_defects.core.labels import check_class_ids, class_ids, classes_present, write_class
from albu_defects.core.validation import check_image, check_unit_range, image_hw

__all__ = [
    "BatchLabels",
    "BatchMasks",
    "derived_labels",
    "mask_classes",
    "parse_images",
    "rebuild",
]


def _container(value: Any) -> str:
    return "array" if isinstance(value, np.ndarray) else ("tuple" if isinstance(value, tuple) else "list")


def rebuild(kind: str, items: list[Any], original: Any) -> Any:
    if kind == "array":
        return np.stack(items) if items else original.copy()
    return tuple(items) if kind == "tuple" else list(items)


def parse_images(images: Any) -> tuple[list[np.ndarray], str]:
    if isinstance(images, np.ndarray):
        if images.ndim not in (3, 4):
            raise ValueError(
                f"images as one array must be an (N, H, W) or (N, H, W, C) stack, got shape {images.shape}; "
                "for a single image use InjectDefect"
            )
        items = list(images)
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        raise ValueError(f"images must be a list of arrays or an (N, H, W[, C]) array, got {type(images).__name__}")
    for i, image in enumerate(items):
        check_unit_range(check_image(image, f"images[{i}]"), f"images[{i}]")
    return items, _container(images)


def mask_classes(mask: np.ndarray, name: str, num_classes: int) -> frozenset[int]:
    """Class ids present in a class-index mask (checked against the bank)."""
    return class_ids(classes_present(check_class_ids(mask, name, num_classes), num_classes))


class BatchMasks:
    """The batch's masks in one of the accepted formats, with each image's mask classes."""

    def __init__(self, masks: Any, images: list[np.ndarray], num_classes: int) -> None:
        n = len(images)
        if isinstance(masks, np.ndarray):
            if masks.ndim not in (3, 4):
                raise ValueError(
                    f"masks as one array must be (N, H, W), (N, H, W, 1), multi-hot (N, H, W, K) or one-hot (N, K, H, W), "
                    f"got {masks.shape}"
                )
            items: list[Any] = list(masks)
        elif isinstance(masks, (list, tuple)):
            items = list(masks)
        else:
            raise ValueError(f"masks must be a list of arrays or an array, got {type(masks).__name__}")
        if len(items) != n:
            raise ValueError(f"masks must have one entry per image: got {len(items)} masks for {n} images")
        self.kind = _container(masks)
        self.original = masks
        self.items = items
        self.num_classes = num_classes
        self.formats: list[str] = []  # per image: "index" | "multihot" | "onehot" | "onehot_list"
        self.classes: list[frozenset[int]] = []
        for i, (item, image) in enumerate(zip(items, images, strict=True)):
            fmt, present = self._parse(item, image_hw(image), f"masks[{i}]")
            self.formats.append(fmt)
            self.classes.append(present)
        if len(set(self.formats)) > 1:
            raise ValueError("masks mix class-index and one-hot entries; use one format for the whole batch")

    def _parse(self, item: Any, hw: tuple[int, int], name: str) -> tuple[str, frozenset[int]]:
        k = self.num_classes
        if isinstance(item, (list, tuple)):
            if len(item) != k:
                raise ValueError(f"{name} is a list of {len(item)} per-class masks but the bank has {k} classes")
            present = set()
            for c, plane in enumerate(item, 1):
                if not isinstance(plane, np.ndarray) or plane.shape != hw:
                    got = getattr(plane, "shape", type(plane).__name__)
                    raise ValueError(f"{name}[{c - 1}] must be an array of the image size {hw}, got {got}")
                if plane.any():
                    present.add(c)
            return "onehot_list", frozenset(present)
        if not isinstance(item, np.ndarray):
            raise ValueError(f"{name} must be a numpy array, got {type(item).__name__}")
        if item.ndim == 2 or (item.ndim == 3 and item.shape[2] == 1 and item.shape[:2] == hw):
            plane = item if item.ndim == 2 else item[..., 0]
            if plane.shape != hw:
                raise ValueError(
                    f"{name} is {plane.shape[0]}x{plane.shape[1]} but its image is {hw[0]}x{hw[1]}; they must match"
                )
            return "index", mask_classes(plane, name, k)
        if item.ndim == 3 and item.shape[:2] == hw:  # multi-hot (H, W, K), the label model's own layout
            if item.shape[2] != k:
                raise ValueError(
                    f"{name} looks multi-hot with {item.shape[2]} channels but the bank has {k} classes "
                    "(one channel per class, channel k-1 = class k, no background channel)"
                )
            return "multihot", class_ids(classes_present(item, k))
        if item.ndim == 3 and item.shape[1:] == hw:
            if item.shape[0] != k:
                raise ValueError(
                    f"{name} looks one-hot with {item.shape[0]} channels but the bank has {k} classes "
                    "(one channel per class, channel k-1 = class k, no background channel)"
                )
            return "onehot", class_ids(item.reshape(k, -1).any(axis=1))
        raise ValueError(
            f"{name} has shape {item.shape}, which matches neither a class-index mask of its image's size {hw} "
            f"nor a multi-hot ({hw[0]}, {hw[1]}, {k}) or one-hot ({k}, {hw[0]}, {hw[1]}) mask"
        )

    def injected(self, index: int, label: np.ndarray, class_id: int) -> Any:
        """Image ``index``'s mask with ``class_id`` written on ``label`` (a new object)."""
        item = self.items[index]
        fmt = self.formats[index]
        if fmt in ("index", "multihot"):
            return write_class(item, label, class_id)
        if fmt == "onehot":
            out = item.copy()
            out[class_id - 1][label] = 1
            return out
        planes = [np.array(p, copy=True) for p in item]  # "onehot_list"
        planes[class_id - 1][label] = 1
        return tuple(planes) if isinstance(item, tuple) else planes

    def output(self, replaced: dict[int, Any]) -> Any:
        items = [replaced.get(i, item) for i, item in enumerate(self.items)]
        if self.kind == "array":
            out = self.original.copy()
            for i, item in replaced.items():
                out[i] = item
            return out
        return rebuild(self.kind, items, self.original)


class BatchLabels:
    """Given per-image labels: int class ids or multi-hot vectors."""

    def __init__(self, labels: Any, n: int, num_classes: int) -> None:
        self.original = labels
        self.kind = _container(labels) if isinstance(labels, (np.ndarray, list, tuple)) else None
        if self.kind is None:
            raise ValueError(f"labels must be a list, tuple or array with one label per image, got {type(labels)}")
        if len(labels) != n:
            raise ValueError(f"labels must have one entry per image: got {len(labels)} for {n} images")
        self.num_classes = num_classes
        array = labels if isinstance(labels, np.ndarray) else None
        self.multi_hot = (array is not None and array.ndim == 2) or (
            array is None and n > 0 and all(isinstance(v, np.ndarray) and v.ndim == 1 for v in labels)
        )
        self.classes: list[frozenset[int]] = []
        for i, value in enumerate(labels):
            self.classes.append(self._parse(value, f"labels[{i}]"))

    def _parse(self, value: Any, name: str) -> frozenset[int]:
        k = self.num_classes
        if self.multi_hot:
            vector = np.asarray(value)
            if vector.shape != (k,):
                raise ValueError(f"{name} is a multi-hot vector of shape {vector.shape}; the bank has {k} classes")
            return class_ids(vector)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an int class id (0 = defect-free) or a multi-hot vector, got {value!r}")
        if not 0 <= int(value) <= k:
            raise ValueError(f"{name} = {int(value)}; class ids are 0 (defect-free) and 1..{k} (the bank's classes)")
        return frozenset() if int(value) == 0 else frozenset({int(value)})

    def output(self, injected: dict[int, int]) -> Any:
        if not injected:
            return self.original.copy() if isinstance(self.original, np.ndarray) else self.original
        if isinstance(self.original, np.ndarray):
            out = self.original.copy()
            for i, c in injected.items():
                if self.multi_hot:
                    out[i] = 0
                    out[i, c - 1] = 1
                else:
                    out[i] = c
            return out
        items = list(self.original)
        for i, c in injected.items():
            if self.multi_hot:
                vector = np.zeros_like(np.asarray(items[i]))
                vector[c - 1] = 1
                items[i] = vector
            else:
                items[i] = c
        return tuple(items) if self.kind == "tuple" else items


def derived_labels(class_sets: Sequence[frozenset[int]], num_classes: int) -> np.ndarray:
    """(N, K) uint8 multi-hot labels from per-image class sets."""
    out = np.zeros((len(class_sets), num_classes), np.uint8)
    for i, present in enumerate(class_sets):
        for c in present:
            out[i, c - 1] = 1
    return out
