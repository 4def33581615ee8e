"""Inputs for the contract suite (images, masks, boxes, banks) and the checks shared by the specs.

Everything random here is drawn by hypothesis (sizes, dtypes, layouts, which targets, options) or
from a numpy generator seeded by a hypothesis-drawn integer (pixel content), so every failing
example is reproducible and shrinks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from hypothesis import strategies as st

DTYPES: tuple[type, ...] = (np.uint8, np.uint16, np.float32)
#: Channel layouts: ``None`` = (H, W); ``c`` = (H, W, c).
LAYOUTS: tuple[int | None, ...] = (None, 1, 3, 4)
CONTENT_KINDS = ("noise", "blocks", "constant")
VIEWS = ("contiguous", "strided", "reversed")
MASK_DTYPES: tuple[type, ...] = (np.uint8, np.uint16, np.int32)
#: Classes of the test banks (class ids 1..3).
BANK_CLASSES = ("scratch", "dent", "spot")
#: Bank defect pixels lie in [DEFECT_LOW, 1] x white, their context at CONTEXT_LEVEL x white; "dark"
#: targets lie in [0, DARK_HIGH] x white, so a pasted defect pixel always differs from the target.
DEFECT_LOW, CONTEXT_LEVEL, DARK_HIGH = 0.8, 0.5, 0.3
#: Boxes are pascal_voc with one label field, keypoints xy.
LABEL_FIELD = "cls"


def white(dtype: Any) -> float:
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if dtype.kind == "u" else 1.0


def to_dtype(unit: np.ndarray, dtype: Any) -> np.ndarray:
    """Values in [0, 1] (fractions of white) as an image of ``dtype``."""
    if np.dtype(dtype).kind == "u":
        return np.rint(unit * white(dtype)).astype(dtype)
    return unit.astype(np.float32)


@dataclass(frozen=True)
class ImageKind:
    """What one example's images look like (drawn by :func:`image_kinds`)."""

    dtype: Any
    channels: int | None
    hw: tuple[int, int]
    seed: int
    content: str
    view: str = "contiguous"  # or "strided" / "reversed": a non-contiguous view of the same values
    mask_dtype: Any = np.uint8
    mask_3d: bool = False  # masks as (H, W, 1)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.hw if self.channels is None else (*self.hw, self.channels)

    def rng(self, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, salt])

    def arrange(self, array: np.ndarray) -> np.ndarray:
        """``array``'s values in this kind's memory layout (contiguous, or a strided or reversed view)."""
        if self.view == "strided":
            base = np.zeros((2 * array.shape[0], 2 * array.shape[1], *array.shape[2:]), array.dtype)
            base[::2, ::2] = array
            return base[::2, ::2]
        if self.view == "reversed":
            return np.ascontiguousarray(array[:, ::-1])[:, ::-1]
        return array

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """An (H, W) class-index mask in this kind's mask dtype, layout and memory layout."""
        mask = mask.astype(self.mask_dtype)
        return self.arrange(mask[..., None] if self.mask_3d else mask)

    def image(
        self, low: float = 0.0, high: float = 1.0, salt: int = 0, hw: tuple[int, int] | None = None
    ) -> np.ndarray:
        """An image of this kind with values in [low, high] x white (float32: [0, 1], albumentations' range)."""
        rng = self.rng(salt)
        h, w = hw or self.hw
        shape = (h, w) if self.channels is None else (h, w, self.channels)
        if self.content == "constant":
            unit = np.full(shape, rng.random())
        elif self.content == "blocks":  # flat plateaus with sharp edges
            cell = int(rng.integers(2, 9))
            small = rng.random(((h + cell - 1) // cell, (w + cell - 1) // cell, *shape[2:]))
            unit = np.repeat(np.repeat(small, cell, axis=0), cell, axis=1)[:h, :w]
        else:
            unit = rng.random(shape)
        return self.arrange(to_dtype(low + (high - low) * unit, self.dtype))


@st.composite
def image_kinds(
    draw: Any,
    min_side: int = 8,
    max_side: int = 48,
    dtypes: Sequence[Any] = DTYPES,
    layouts: Sequence[int | None] = LAYOUTS,
    contents: Sequence[str] = CONTENT_KINDS,
) -> ImageKind:
    return ImageKind(
        dtype=draw(st.sampled_from(dtypes)),
        channels=draw(st.sampled_from(layouts)),
        hw=(draw(st.integers(min_side, max_side)), draw(st.integers(min_side, max_side))),
        seed=draw(st.integers(0, 2**32 - 1)),
        content=draw(st.sampled_from(contents)),
        view=draw(st.sampled_from(VIEWS)),
        mask_dtype=draw(st.sampled_from(MASK_DTYPES)),
        mask_3d=draw(st.booleans()),
    )


def rectangles_mask(
    rng: np.random.Generator, hw: tuple[int, int], count: int, classes: int = len(BANK_CLASSES), dtype: Any = np.uint8
) -> np.ndarray:
    """A class-index mask with ``count`` random rectangles of random classes 1..classes."""
    mask = np.zeros(hw, dtype)
    h, w = hw
    for _ in range(count):
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        y1, x1 = int(rng.integers(y0 + 1, h + 1)), int(rng.integers(x0 + 1, w + 1))
        mask[y0:y1, x0:x1] = rng.integers(1, classes + 1)
    return mask


def boxes(rng: np.random.Generator, hw: tuple[int, int], count: int, min_size: int = 1) -> list[list[float]]:
    """``count`` pascal_voc boxes with integer corners inside an image of size ``hw``."""
    h, w = hw
    out = []
    for _ in range(count):
        x0, y0 = int(rng.integers(0, w - min_size + 1)), int(rng.integers(0, h - min_size + 1))
        x1, y1 = int(rng.integers(x0 + min_size, w + 1)), int(rng.integers(y0 + min_size, h + 1))
        out.append([float(x0), float(y0), float(x1), float(y1)])
    return out


def keypoints(rng: np.random.Generator, hw: tuple[int, int], count: int) -> list[list[float]]:
    h, w = hw
    return [[float(rng.uniform(0, w - 1)), float(rng.uniform(0, h - 1))] for _ in range(count)]


# ----------------------------------------------------------------------------------------- banks
def bank_sources(dtype: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Six 32x40 gray sources (two per class; one holds two classes, one several blobs) and a free image.

    Defect pixels are bright ([DEFECT_LOW, 1] x white), their surroundings mid-gray (CONTEXT_LEVEL),
    so a pasted defect and any pasted context are told apart from a "dark" target.
    """
    rng = np.random.default_rng(1234)
    images, masks = [], []
    for k in range(1, len(BANK_CLASSES) + 1):
        for j in range(2):
            mask = np.zeros((32, 40), np.uint8)
            y, x = 3 + 9 * j, 4 + 10 * k
            mask[y : y + 4 + 2 * k, x : x + 3 + j + k] = k
            if j == 1:
                mask[24:28, 3:9] = k  # a second blob
            if k == 1 and j == 0:
                mask[20:26, 30:36] = 2  # and a second class
            unit = np.full((32, 40), CONTEXT_LEVEL) + rng.uniform(-0.05, 0.05, (32, 40))
            unit[mask > 0] = rng.uniform(DEFECT_LOW, 1.0, int((mask > 0).sum()))
            images.append(to_dtype(unit, dtype))
            masks.append(mask)
    images.append(to_dtype(np.full((32, 40), CONTEXT_LEVEL), dtype))
    masks.append(np.zeros((32, 40), np.uint8))
    return images, masks


@dataclass
class Banks:
    """One saved gray bank per dtype (gray defects are repeated into colour images)."""

    root: Path
    paths: dict[str, str] = field(default_factory=dict)

    def path(self, dtype: Any) -> str:
        name = np.dtype(dtype).name
        if name not in self.paths:
            from albu_defects import DefectBank

            images, masks = bank_sources(dtype)
            bank = DefectBank.from_arrays(images, masks, class_names=list(BANK_CLASSES))
            self.paths[name] = str(bank.save(self.root / f"bank_{name}"))
        return self.paths[name]


# ----------------------------------------------------------------------------------------- checks
def changed(after: np.ndarray, before: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels where any channel differs."""
    diff = np.asarray(after) != np.asarray(before)
    return diff.reshape(diff.shape[0], diff.shape[1], -1).any(axis=2)


def plane(mask: np.ndarray) -> np.ndarray:
    """An (H, W) view of an (H, W) or (H, W, 1) mask."""
    mask = np.asarray(mask)
    return mask[..., 0] if mask.ndim == 3 else mask


def is_multi_hot(mask: np.ndarray) -> bool:
    """An (H, W, K > 1) mask: one channel per class (channel k - 1 = class k)."""
    return np.ndim(mask) == 3 and np.shape(mask)[2] > 1


def classes_in(mask: np.ndarray) -> set[int]:
    """Class ids of a class-index ((H, W), (H, W, 1)) or multi-hot ((H, W, K)) mask."""
    if is_multi_hot(mask):
        mask = np.asarray(mask)
        return {int(c) + 1 for c in np.flatnonzero(mask.reshape(-1, mask.shape[2]).any(axis=0))}
    return {int(v) for v in np.unique(plane(mask)) if v != 0}


def labelled(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels holding any class."""
    mask = np.asarray(mask)
    return mask.any(axis=2) if is_multi_hot(mask) else plane(mask) != 0


def holds_class(mask: np.ndarray, class_id: int) -> np.ndarray:
    """(H, W) bool: pixels holding class ``class_id``."""
    mask = np.asarray(mask)
    return mask[..., class_id - 1] != 0 if is_multi_hot(mask) else plane(mask) == class_id


def to_multi_hot(index_mask: np.ndarray, num_classes: int, dtype: Any = np.uint8) -> np.ndarray:
    """A class-index mask as a multi-hot (H, W, K) mask of ``dtype``."""
    index = plane(index_mask)
    return np.stack([index == c for c in range(1, num_classes + 1)], axis=2).astype(dtype)


def written(mask: np.ndarray, region: np.ndarray, class_id: int) -> np.ndarray:
    """``mask`` with ``class_id`` written on the bool (H, W) ``region`` (a multi-hot pixel keeps that class only)."""
    out = np.array(mask, copy=True)
    if is_multi_hot(out):
        out[region] = 0
        out[region, class_id - 1] = 1
    else:
        plane(out)[region] = class_id
    return out


def classes_of_label(label: Any, num_classes: int) -> set[int]:
    """Class ids held by an int label (0 = none) or a multi-hot vector."""
    if np.ndim(label) == 0:
        return set() if int(label) == 0 else {int(label)}
    vector = np.asarray(label)
    assert vector.shape == (num_classes,), f"label vector has shape {vector.shape}, expected ({num_classes},)"
    return {int(c) + 1 for c in np.flatnonzero(vector)}


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask.astype(bool)
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def check_injection_pixels(
    image_before: np.ndarray,
    image_after: np.ndarray,
    mask_before: np.ndarray,
    mask_after: np.ndarray,
    *,
    poisson: bool,
    blend_margin: int,
    disjoint: bool,
    what: str,
) -> None:
    """Pixel rules of injecting real defects (DLI, InjectDefect), from the outputs alone.

    - every changed image pixel lies within ``blend_margin`` of a newly labelled pixel (cut-paste:
      on one), so no pixel changes without a label;
    - cut-paste onto a target whose values the defect pixels never take (``disjoint``): every newly
      labelled pixel changed in the image, so no label lands where nothing was pasted. (With Poisson
      blending the whole labelled region is blended, which the outputs cannot show pixel by pixel.)
    """
    image_changed = changed(image_after, image_before)
    relabelled = changed(mask_after, mask_before)
    allowed = dilate(relabelled, blend_margin) if poisson else relabelled
    outside = image_changed & ~allowed
    assert not outside.any(), f"{what}: {int(outside.sum())} image pixels changed away from the new labels"
    if not poisson and disjoint:
        ghost = relabelled & ~image_changed
        assert not ghost.any(), f"{what}: {int(ghost.sum())} newly labelled pixels show no change in the image"


# ----------------------------------------------------------------------------------------- comparing
def freeze(value: Any) -> Any:
    """Make every array inside ``value`` (dicts, lists, tuples) read-only; returns ``value``."""
    if isinstance(value, np.ndarray):
        value.setflags(write=False)
    elif isinstance(value, Mapping):
        for item in value.values():
            freeze(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            freeze(item)
    return value


def _is_numeric_rows(value: Any) -> bool:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return array.dtype != object


def assert_same(actual: Any, expected: Any, path: str = "output", approx: bool = False) -> None:
    """Deep equality of outputs: arrays exactly (dtype and values), containers element by element.

    ``approx``: numbers and numeric rows (boxes, keypoints, their labels) within 1e-3, and a list of
    rows equals an array of the same rows (albumentations converts formats and containers of those).
    """
    if approx and _is_numeric_rows(actual) and _is_numeric_rows(expected):
        a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
        if a.size == 0 and e.size == 0:
            return
        assert a.shape == e.shape, f"{path}: shape {a.shape} != {e.shape}"
        assert np.allclose(a, e, atol=1e-3), f"{path}: {a.tolist()} != {e.tolist()}"
        return
    if isinstance(expected, np.ndarray) or isinstance(actual, np.ndarray):
        if isinstance(actual, np.ndarray) and isinstance(expected, np.ndarray):
            assert actual.dtype == expected.dtype, f"{path}: dtype {actual.dtype} != {expected.dtype}"
            assert actual.shape == expected.shape, f"{path}: shape {actual.shape} != {expected.shape}"
            same = np.array_equal(actual, expected, equal_nan=actual.dtype.kind == "f")
            assert same, f"{path}: values differ at {int((actual != expected).sum())} positions"
            return
        # a list of arrays against a stacked array (albumentations may stack or unstack a list input)
        assert isinstance(actual, (list, tuple, np.ndarray)) and isinstance(expected, (list, tuple, np.ndarray)), (
            f"{path}: {type(actual).__name__} != {type(expected).__name__}"
        )
        assert len(actual) == len(expected), f"{path}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{path}[{i}]", approx)
        return
    if isinstance(expected, Mapping):
        assert isinstance(actual, Mapping), f"{path}: {type(actual).__name__} is not a mapping"
        assert set(actual) == set(expected), f"{path}: keys {sorted(actual)} != {sorted(expected)}"
        for key in expected:
            assert_same(actual[key], expected[key], f"{path}[{key!r}]", approx)
        return
    if isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)), f"{path}: {type(actual).__name__} is not a sequence"
        assert len(actual) == len(expected), f"{path}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{path}[{i}]", approx)
        return
    if approx and isinstance(expected, (int, float, np.number)) and isinstance(actual, (int, float, np.number)):
        assert abs(float(actual) - float(expected)) <= 1e-3, f"{path}: {actual} != {expected}"
        return
    assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def differs(a: Any, b: Any) -> bool:
    try:
        assert_same(a, b)
    except AssertionError:
        return True
    return False
