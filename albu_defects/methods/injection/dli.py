"""Dynamic Label Injection (Caruso et al.): balance a batch's defect classes by injecting real defects.

Given a batch holding defect-free and defective images, DLI injects defects from a
:class:`~albu_defects.DefectBank` into the defect-free images, one per image, choosing each time
the class that is currently rarest in the batch (Algorithm 1 of the paper): (a) pick the rarest
class ``c*`` (ties broken at random), (b) draw a defect of class ``c*`` from the bank, (c)
transform it (flips + affine by default), (d) choose Poisson blending with probability
``poisson_p``, else cut-paste, (e) inject it and update the counts. The shared mechanics (scaling,
placement, blending, labels) are :mod:`albu_defects.methods.injection.functional`'s.

Class counts
    The count of class ``c`` is the number of images in the batch that hold ``c`` (an image holding
    several classes counts once for each): the paper's ``|{I_d : M_d in {0, c}}|`` for single-class
    images. Only the balanced classes (``classes``, default every bank class) are counted and
    chosen; images holding any class are never modified.

Fill
    ``fill="all"`` (default; what the reference code does) injects into every defect-free image,
    rarest class first, so classes fill round-robin. ``fill="balance"`` (the paper's text) stops as
    soon as every balanced class has the same count (a batch already uniform, including one with no
    defect at all, is left unchanged); with enough defect-free images this ends with
    ``max - min == 0``. When there are not enough, every usable defect-free image is injected and
    the lowest counts rise as evenly as possible (water-filling). ``max_inject_fraction`` caps the
    injections at ``floor(max_inject_fraction * number of defect-free images)``, so some images of
    the batch stay defect-free; which ones get injected is drawn at random.

Inputs (``dli(images=..., masks=..., labels=None)``)
    ``images``: a list (or tuple) of N arrays, sizes may differ, or an (N, H, W) / (N, H, W, C)
    stack; uint8, uint16 or float32. ``masks``, one per image, either *class-index* masks ((H, W) or
    (H, W, 1) integer; 0 background, ``k`` = bank class ``k``; bool for a one-class bank) given as a
    list or an (N, H, W[, 1]) stack, or *one-hot* masks as the reference code uses: an
    (N, K, H, W) array, a list of (K, H, W) arrays, or a list of per-image lists of K (H, W) masks,
    with K the bank's number of classes (channel ``k - 1`` = class ``k``; nonzero = present).
    ``labels`` (optional), one per image: an int class id (0 = defect-free) or a multi-hot vector
    of length K, as a list, tuple or array. Given labels decide which images are defect-free; each
    image's mask classes must be among its label's classes (``ValueError`` otherwise). A labelled
    image with an empty mask (e.g. the four MT_Uneven images whose masks are blank) counts as
    holding its class and is not injected.

Outputs
    A dict with the same keys in the same formats (untouched images and masks are the input
    objects; injected ones are new arrays; stacks are copied), plus ``labels`` (the given ones
    updated, or, when none were given, an (N, K) uint8 multi-hot array derived from the masks),
    ``injections`` (per image ``None`` or a dict: ``class_id``, ``class_name``, ``entry_id``,
    ``source_id``, ``method`` "poisson" | "paste", ``bbox`` (y0, x0, y1, x1) of the injected label,
    ``top_left``, ``scale``), and ``class_counts_before`` / ``class_counts_after`` ({class name:
    count} over the balanced classes). Injected one-hot masks get 1 (True for bool) on the defect.
    Other keys pass through unchanged; per-image ``bboxes``/``keypoints`` and single-image keys are
    rejected (use :class:`InjectDefect` per sample).

Inside ``A.Compose``
    A DLI may sit in an ``A.Compose`` (for the seed, YAML, or batch transforms after it). Compose
    stacks list inputs, so the images must then share one size, and its shape check needs
    ``is_check_shapes=False`` for one-hot masks. Called directly, DLI has neither restriction.

Errors (``ValueError``)
    A balanced class with no bank entries; a defect larger than a target in ``size_mode="absolute"``
    (names the class, the image and the closest defect); mask class ids unknown to the bank; an image
    and its mask of different sizes; dtype or channel mismatches between bank and images (a gray
    bank into colour images is repeated over the channels; see :mod:`albu_defects.methods.injection.functional`).

Reproducibility
    Every random draw comes from the compose's generators (``seed`` here, or the enclosing
    ``A.Compose(seed=...)``); the nested ``defect_transform`` draws from the same generators.
    Inputs are never modified.

:class:`InjectDefect` is the per-sample form for a Dataset's ``A.Compose``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema
from pydantic import Field, field_validator

from albu_defects.bank import DefectBank, DefectEntry, bank_reference, check_bank_arg, resolve_bank
from albu_defects.blending import POISSON_METHODS, POISSON_MODES
from albu_defects.core.transform import DefectCompose, DefectTransform
from albu_defects.core.validation import check_choice, check_image, check_int, check_probability, image_hw

from .functional import (
    PLACEMENTS,
    SIZE_MODES,
    InjectionPlan,
    apply_plan,
    placed_bbox,
    placed_label,
    plan_injection,
    write_class,
)

__all__ = [
    "DynamicLabelInjection",
    "InjectDefect",
    "default_defect_transform",
    "fill_plan",
    "water_fill",
]

FILLS: tuple[str, ...] = ("all", "balance")
_SINGLE_KEYS = ("image", "mask", "bboxes", "keypoints")


# =========================================================================================== fill
def fill_plan(counts: Sequence[int], available: int, fill: str, rng: np.random.Generator) -> list[int]:
    """The classes to inject, in order: each time the currently rarest one (ties drawn from ``rng``).

    ``counts`` are the balanced classes' counts (indices into it are returned); ``available`` is
    how many images may be injected. ``fill="all"`` uses them all; ``"balance"`` stops once every
    count is equal.
    """
    check_choice(fill, FILLS, "fill")
    current = np.asarray(counts, np.int64).copy()
    chosen: list[int] = []
    if current.size == 0:
        return chosen
    for _ in range(int(available)):
        low = current.min()
        if fill == "balance" and current.max() == low:
            break
        ties = np.flatnonzero(current == low)
        k = int(ties[rng.integers(len(ties))]) if len(ties) > 1 else int(ties[0])
        chosen.append(k)
        current[k] += 1
    return chosen


def water_fill(counts: Sequence[int], injections: int) -> list[int]:
    """Sorted class counts after ``injections`` rarest-first injections (what :func:`fill_plan` reaches)."""
    current = sorted(int(c) for c in counts)
    for _ in range(int(injections)):
        current[0] += 1
        current.sort()
    return current


# =========================================================================================== defect transform
def default_defect_transform() -> A.Compose:
    """Flips and a mild affine (scale 0.9-1.1, shift +-6.25 %, rotation +-10 degrees), as the reference code."""
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.Affine(
                scale=(0.9, 1.1),
                translate_percent=(-0.0625, 0.0625),
                rotate=(-10, 10),
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.5,
            ),
        ]
    )


def _as_transform(value: Any, name: str = "defect_transform") -> Any:
    """A transform from itself, its serialized dict, or ``None`` (the default)."""
    if value is None:
        return default_defect_transform()
    if isinstance(value, dict):
        try:
            return A.from_dict({"transform": value})
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{name} is not a serialized Albumentations transform: {error}") from error
    if isinstance(value, (A.BasicTransform, A.BaseCompose)):
        return value
    raise ValueError(f"{name} must be an Albumentations transform (or its to_dict form), got {type(value).__name__}")


def _transform_fn(transform: Any, rng: np.random.Generator, py_random: random.Random) -> Callable:
    """The transform as a ``(crop, mask) -> (crop, mask)`` function drawing from the given generators."""
    transform.set_random_state(rng, py_random)

    def run(crop: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = transform(image=crop, mask=mask)
        return _same_layout(out["image"], crop), _same_layout(out["mask"], mask)

    return run


def _same_layout(out: Any, given: np.ndarray) -> Any:
    """``out`` as (h, w) when ``given`` was: AlbumentationsX hands 2-D arrays to a Compose nested in
    another as (h, w, 1) and does not squeeze them back."""
    if isinstance(out, np.ndarray) and given.ndim == 2 and out.ndim == 3 and out.shape[2] == 1:
        return out[..., 0]
    return out


# =========================================================================================== shared parameters
def _class_ids(bank: DefectBank, classes: Sequence[str | int] | None, name: str = "classes") -> list[int]:
    """Bank class ids of ``classes`` (all when ``None``); every one must have entries."""
    ids = list(range(1, len(bank.classes) + 1)) if classes is None else [bank.class_id(c) for c in classes]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{name} holds duplicates: {list(classes or [])}")
    if not ids:
        raise ValueError(f"{name} is empty; give at least one defect class (or None for all)")
    empty = [bank.classes[k - 1] for k in ids if not bank.entries_of(k)]
    if empty:
        raise ValueError(
            f"defect class(es) {empty} have no entries in the bank, so nothing can be injected for them; "
            f"pass {name}= without them (classes with entries: "
            f"{[c for k, c in enumerate(bank.classes, 1) if bank.entries_of(k)]})"
        )
    return ids


class UnsavedBank(str):
    """Stands for a never-saved bank in ``to_dict``: ``repr`` works, YAML refuses it with this text.

    (``yaml.safe_dump`` cannot represent a ``str`` subclass and quotes it in its error.)
    """


def _bank_arg(bank: DefectBank | str) -> str:
    """The serialized ``bank`` argument: the bank's folder, or an :class:`UnsavedBank` marker."""
    if isinstance(bank, DefectBank) and bank.path is None:
        return UnsavedBank(
            f"{bank!r} was never saved, so a pipeline holding it cannot be serialized: call bank.save(path) "
            "first, or pass the path"
        )
    return bank_reference(bank)


def _blending(transform: Any) -> dict[str, Any]:
    """The blending arguments of :func:`~albu_defects.methods.injection.functional.apply_plan` held by a DLI transform."""
    return {
        "blend_margin": transform.blend_margin,
        "poisson_mode": transform.poisson_mode,
        "poisson_method": transform.poisson_method,
    }


def _yaml_classes(classes: Sequence[str | int] | None) -> list[str | int] | None:
    if classes is None:
        return None
    if isinstance(classes, (str, int)):
        classes = [classes]
    out: list[str | int] = []
    for c in classes:
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, (str, int, np.integer)):
            raise ValueError(f"classes must be class names or int ids, got {c!r}")
        out.append(c if isinstance(c, str) else int(c))
    return out


# =========================================================================================== batch parsing
def _container(value: Any) -> str:
    return "array" if isinstance(value, np.ndarray) else ("tuple" if isinstance(value, tuple) else "list")


def _rebuild(kind: str, items: list[Any], original: Any) -> Any:
    if kind == "array":
        return np.stack(items) if items else original.copy()
    return tuple(items) if kind == "tuple" else list(items)


def _images(images: Any) -> tuple[list[np.ndarray], str]:
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
        check_image(image, f"images[{i}]")
    return items, _container(images)


def _mask_classes(mask: np.ndarray, name: str, num_classes: int) -> frozenset[int]:
    """Class ids present in a class-index mask (checked against the bank)."""
    if mask.dtype == bool:
        present = {1} if mask.any() else set()
    elif not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"{name} must be an integer class-index mask (0 = background), got dtype {mask.dtype}")
    else:
        values = mask[mask != 0]  # defects are small: look only at their pixels
        if values.size and values.min() < 0:
            raise ValueError(f"{name} holds negative class ids; 0 is background and k > 0 is class k")
        present = {int(v) for v in np.unique(values)}
    unknown = sorted(v for v in present if v > num_classes)
    if unknown:
        raise ValueError(
            f"{name} holds class id(s) {unknown} unknown to the bank, which has classes 1..{num_classes}; "
            "masks must use the bank's class ids (0 = background)"
        )
    return frozenset(present)


class _Masks:
    """The batch's masks in one of the accepted formats, with each image's mask classes."""

    def __init__(self, masks: Any, images: list[np.ndarray], num_classes: int) -> None:
        n = len(images)
        if isinstance(masks, np.ndarray):
            if masks.ndim not in (3, 4):
                raise ValueError(
                    f"masks as one array must be (N, H, W), (N, H, W, 1) or one-hot (N, K, H, W), got {masks.shape}"
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
        self.formats: list[str] = []  # per image: "index" | "onehot" | "onehot_list"
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
            return "index", _mask_classes(plane, name, k)
        if item.ndim == 3 and item.shape[1:] == hw:
            if item.shape[0] != k:
                raise ValueError(
                    f"{name} looks one-hot with {item.shape[0]} channels but the bank has {k} classes "
                    "(one channel per class, channel k-1 = class k, no background channel)"
                )
            return "onehot", frozenset(int(c) + 1 for c in np.flatnonzero(item.reshape(k, -1).any(axis=1)))
        raise ValueError(
            f"{name} has shape {item.shape}, which matches neither a class-index mask of its image's size {hw} "
            f"nor a one-hot ({k}, {hw[0]}, {hw[1]}) mask"
        )

    def injected(self, index: int, label: np.ndarray, class_id: int) -> Any:
        """Image ``index``'s mask with ``class_id`` written on ``label`` (a new object)."""
        item = self.items[index]
        fmt = self.formats[index]
        if fmt == "index":
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
        return _rebuild(self.kind, items, self.original)


class _Labels:
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
            return frozenset(int(c) + 1 for c in np.flatnonzero(vector))
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


# =========================================================================================== DLI
class DynamicLabelInjection(DefectCompose):
    """Dynamic Label Injection: balance a batch by injecting bank defects into its defect-free images.

    Call it on a batch: ``dli(images=[...], masks=[...], labels=None)``; see the module docstring
    for the formats, the fill rules and the outputs.

    Args:
        bank: a :class:`~albu_defects.DefectBank` or the path of a saved one (serialized as the
            path; a bank that was never saved cannot be written to YAML).
        classes: the defect classes to balance (names or ids); ``None`` = every bank class.
        poisson_p: probability of Poisson blending per injection (else cut-paste).
        poisson_mode: "mixed" (the reference code's default: per-edge stronger gradient) or "normal".
        poisson_method: solver of :func:`albu_defects.blending.poisson_blend`: "auto", "opencv", "exact".
        blend_margin: pixels the Poisson blending region extends past the defect's mask (2 = the
            reference's 5x5 max-pool); the label is never grown.
        fill: "all" (every defect-free image, as the reference code) or "balance" (stop at uniform).
        max_inject_fraction: at most this fraction of the batch's defect-free images is injected.
        defect_transform: an Albumentations transform (or its ``to_dict_private()`` form) applied to
            each defect crop + mask on a padded canvas; default :func:`default_defect_transform`.
        placement: "random" (anywhere the defect fits) or "source" (its relative position in its
            source image, plus the transform's shift).
        size_mode: "relative" (scale by target size / source size) or "absolute" (keep pixel size).
        p: probability of injecting at all for a batch.
        seed: seed of this compose's generators (an enclosing ``A.Compose(seed=...)`` overrides it).

    Setting ``dli.timings = {}`` accumulates seconds per phase ("sampling", "transform",
    "poisson", "paste") over calls (for benchmarks).
    """

    def __init__(
        self,
        bank: DefectBank | str,
        classes: Sequence[str | int] | None = None,
        poisson_p: float = 0.5,
        poisson_mode: Literal["normal", "mixed"] = "mixed",
        poisson_method: Literal["auto", "opencv", "exact"] = "auto",
        blend_margin: int = 2,
        fill: Literal["all", "balance"] = "all",
        max_inject_fraction: float = 1.0,
        defect_transform: Any = None,
        placement: Literal["random", "source"] = "random",
        size_mode: Literal["relative", "absolute"] = "relative",
        p: float = 1.0,
        seed: int | None = None,
    ) -> None:
        transform = _as_transform(defect_transform)
        super().__init__(transforms=[transform], p=check_probability(p, "p"), seed=seed)
        self.bank = check_bank_arg(bank)
        self.classes = _yaml_classes(classes)
        self.poisson_p = check_probability(poisson_p, "poisson_p")
        self.poisson_mode = check_choice(poisson_mode, POISSON_MODES, "poisson_mode")
        self.poisson_method = check_choice(poisson_method, POISSON_METHODS, "poisson_method")
        self.blend_margin = check_int(blend_margin, "blend_margin", 0, "(pixels around the defect Poisson may blend)")
        self.fill = check_choice(fill, FILLS, "fill")
        self.max_inject_fraction = check_probability(max_inject_fraction, "max_inject_fraction")
        self.defect_transform = transform
        self.placement = check_choice(placement, PLACEMENTS, "placement")
        self.size_mode = check_choice(size_mode, SIZE_MODES, "size_mode")
        self.timings: MutableMapping[str, float] | None = None
        self._available_keys.update({"images", "masks", "labels"})
        _class_ids(resolve_bank(self.bank), self.classes)  # fail early on unknown or empty classes

    # ------------------------------------------------------------------ albumentations plumbing
    def set_random_seed(self, seed: int | None) -> None:
        super().set_random_seed(seed)
        # the nested transform draws from this compose's generators (not a copy of the same seed)
        self.set_random_state(self.random_generator, self.py_random)

    def to_dict_private(self) -> dict[str, Any]:
        return self._init_args(_bank_arg(self.bank))

    def _init_args(self, bank: str) -> dict[str, Any]:
        return {
            "__class_fullname__": self.get_class_fullname(),
            "bank": bank,
            "classes": self.classes,
            "poisson_p": self.poisson_p,
            "poisson_mode": self.poisson_mode,
            "poisson_method": self.poisson_method,
            "blend_margin": self.blend_margin,
            "fill": self.fill,
            "max_inject_fraction": self.max_inject_fraction,
            "defect_transform": self.defect_transform.to_dict_private(),
            "placement": self.placement,
            "size_mode": self.size_mode,
            "p": self.p,
        }

    # ------------------------------------------------------------------ the call
    def run(self, data: dict[str, Any], force_apply: bool = False) -> dict[str, Any]:
        misplaced = [key for key in _SINGLE_KEYS if data.get(key) is not None]
        if misplaced:
            raise ValueError(
                f"DynamicLabelInjection works on batches (images=, masks=, labels=) and cannot update {misplaced}; "
                "use InjectDefect inside a per-sample A.Compose for single images with bboxes or keypoints"
            )
        if data.get("images") is None or data.get("masks") is None:
            raise ValueError("DynamicLabelInjection needs images=[...] and masks=[...] (one mask per image)")
        bank = resolve_bank(self.bank)
        class_ids = _class_ids(bank, self.classes)
        k = len(bank.classes)
        images, image_kind = _images(data["images"])
        masks = _Masks(data["masks"], images, k)
        labels = _Labels(data["labels"], len(images), k) if data.get("labels") is not None else None
        held = masks.classes
        if labels is not None:
            for i, (from_mask, from_label) in enumerate(zip(masks.classes, labels.classes, strict=True)):
                if not from_mask <= from_label:
                    raise ValueError(
                        f"labels[{i}] says classes {sorted(from_label) or 'none (defect-free)'} but masks[{i}] "
                        f"holds class(es) {sorted(from_mask)}; labels must agree with masks"
                    )
            held = labels.classes
        before = {bank.classes[c - 1]: sum(c in s for s in held) for c in class_ids}
        free = [i for i, s in enumerate(held) if not s]
        applied = bool(force_apply) or self.py_random.random() < self.p
        injections: list[dict[str, Any] | None] = [None] * len(images)
        new_images: dict[int, np.ndarray] = {}
        new_masks: dict[int, Any] = {}
        injected: dict[int, int] = {}
        if applied and free:
            rng = self.random_generator
            transform = _transform_fn(self.defect_transform, rng, self.py_random)
            available = min(len(free), math.floor(self.max_inject_fraction * len(free) + 1e-9))
            chosen = fill_plan(list(before.values()), available, self.fill, rng)
            targets = [free[int(j)] for j in rng.permutation(len(free))[: len(chosen)]]
            entries = self._entry_sequences(bank, class_ids, chosen, rng)
            for index, k_index in zip(targets, chosen, strict=True):
                class_id = class_ids[k_index]
                plan = plan_injection(
                    bank,
                    class_id,
                    images[index],
                    rng,
                    entry=entries[k_index].pop() if entries.get(k_index) else None,
                    defect_transform=transform,
                    size_mode=self.size_mode,  # type: ignore[arg-type]
                    placement=self.placement,  # type: ignore[arg-type]
                    poisson_p=self.poisson_p,
                    blend_margin=self.blend_margin,
                    timings=self.timings,
                    target_name=f"images[{index}]",
                )
                result = apply_plan(images[index], plan, **_blending(self), timings=self.timings)
                new_images[index] = result.image
                new_masks[index] = masks.injected(index, result.label, class_id)
                injected[index] = class_id
                injections[index] = {**plan.log(), "bbox": result.bbox}
        after_sets = [frozenset({injected[i]}) if i in injected else s for i, s in enumerate(held)]
        after = {bank.classes[c - 1]: sum(c in s for s in after_sets) for c in class_ids}
        out = dict(data)
        if image_kind == "array":
            stacked = data["images"].copy()
            for i, image in new_images.items():
                stacked[i] = image
            out["images"] = stacked
        else:
            out["images"] = _rebuild(image_kind, [new_images.get(i, im) for i, im in enumerate(images)], None)
        out["masks"] = masks.output(new_masks)
        if labels is not None:
            out["labels"] = labels.output(injected)
        else:
            out["labels"] = derived_labels(
                [frozenset({injected[i]}) if i in injected else s for i, s in enumerate(masks.classes)], k
            )
        out["injections"] = injections
        out["class_counts_before"] = before
        out["class_counts_after"] = after
        return out

    def _entry_sequences(
        self, bank: DefectBank, class_ids: list[int], chosen: list[int], rng: np.random.Generator
    ) -> dict[int, list[DefectEntry]]:
        """Relative size mode: per class, entries drawn without replacement (cycling when a class runs out)."""
        if self.size_mode != "relative":
            return {}
        sequences: dict[int, list[DefectEntry]] = {}
        for k_index in sorted(set(chosen)):
            need = chosen.count(k_index)
            group = bank.entries_of(class_ids[k_index])
            order: list[DefectEntry] = []
            while len(order) < need:
                order.extend(group[int(j)] for j in rng.permutation(len(group)))
            sequences[k_index] = order[:need][::-1]  # popped from the end
        return sequences


# =========================================================================================== InjectDefect
class InjectDefect(DefectTransform):
    """Inject ``n`` real defects of one class (drawn from ``class_weights``) into a defect-free image.

    The per-sample form of DLI for a Dataset's ``A.Compose``. Targets: ``image``; ``mask`` (a
    class-index mask: the class id is written on each defect's pixels); ``bboxes`` (each defect's
    box is appended; label fields get the class id, or its name for string label fields; other
    extra columns the class id); ``keypoints`` unchanged. The label key ``label_key`` (an int class
    id, 0 = defect-free, or a multi-hot vector) is updated, or, when absent, output as a multi-hot
    uint8 vector derived from the mask. ``masks`` (instance masks) are rejected: which instance a
    new defect is cannot be known.

    Images that already hold defects (nonzero mask, or a nonzero label) are left untouched unless
    ``only_defect_free=False``; then the new defect is pasted on top (its pixels take its class).
    An int label cannot hold two classes: injecting another class into an image labelled with one
    raises a ``ValueError`` (use multi-hot labels).

    Args:
        bank, poisson_p, poisson_mode, poisson_method, blend_margin, defect_transform, placement,
        size_mode: as in :class:`DynamicLabelInjection`.
        classes: the classes to draw from (names or ids; ``None`` = all).
        class_weights: one weight per class of ``classes`` (``None`` = uniform).
        n: number of defects, an int or an inclusive ``(low, high)`` range.
        only_defect_free: skip images that already hold defects.
        label_key: the data key of the per-image label.
    """

    class InitSchema(BaseTransformInitSchema):
        bank: Any
        classes: list[str | int] | None
        class_weights: list[float] | None
        n: int | tuple[int, int] = Field(description="defects per image")
        poisson_p: float = Field(ge=0, le=1)
        poisson_mode: Literal["normal", "mixed"]
        poisson_method: Literal["auto", "opencv", "exact"]
        blend_margin: int = Field(ge=0)
        defect_transform: Any
        placement: Literal["random", "source"]
        size_mode: Literal["relative", "absolute"]
        only_defect_free: bool
        label_key: str

        @field_validator("n")
        @classmethod
        def _n(cls, value: Any) -> Any:
            low, high = (value, value) if isinstance(value, int) else value
            if not 1 <= low <= high:
                raise ValueError(f"n must be an int >= 1 or a (low, high) range with 1 <= low <= high, got {value}")
            return value

        @field_validator("class_weights")
        @classmethod
        def _weights(cls, value: Any) -> Any:
            if value is not None and (not value or any(w < 0 for w in value) or sum(value) <= 0):
                raise ValueError(f"class_weights must be non-negative with a positive sum, got {value}")
            return value

    def __init__(
        self,
        bank: DefectBank | str,
        classes: Sequence[str | int] | None = None,
        class_weights: Sequence[float] | None = None,
        n: int | tuple[int, int] = 1,
        poisson_p: float = 0.5,
        poisson_mode: Literal["normal", "mixed"] = "mixed",
        poisson_method: Literal["auto", "opencv", "exact"] = "auto",
        blend_margin: int = 2,
        defect_transform: Any = None,
        placement: Literal["random", "source"] = "random",
        size_mode: Literal["relative", "absolute"] = "relative",
        only_defect_free: bool = True,
        label_key: str = "label",
        p: float = 0.5,
    ) -> None:
        super().__init__(p=p)
        self.bank = check_bank_arg(bank)
        self.classes = _yaml_classes(classes)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.n = n
        self.poisson_p = poisson_p
        self.poisson_mode = poisson_mode
        self.poisson_method = poisson_method
        self.blend_margin = blend_margin
        self.defect_transform = _as_transform(defect_transform)
        self.placement = placement
        self.size_mode = size_mode
        self.only_defect_free = only_defect_free
        self.label_key = label_key
        ids = _class_ids(resolve_bank(self.bank), self.classes)
        if self.class_weights is not None and len(self.class_weights) != len(ids):
            raise ValueError(f"class_weights has {len(self.class_weights)} weights for {len(ids)} classes")

    def to_dict_private(self) -> dict[str, Any]:
        out = super().to_dict_private()
        out["bank"] = _bank_arg(self.bank)
        out["defect_transform"] = self.defect_transform.to_dict_private()
        if isinstance(out.get("n"), tuple):
            out["n"] = list(out["n"])
        return out

    def check_inputs(self, data: dict[str, Any]) -> None:
        super().check_inputs(data)
        if data.get("masks") is not None:
            raise ValueError(
                "InjectDefect updates a class-index `mask`; `masks` (instance masks) cannot be updated "
                "consistently: pass a class-index mask as mask="
            )

    # ------------------------------------------------------------------ sampling
    def _held_classes(self, data: dict[str, Any], k: int) -> frozenset[int]:
        held: set[int] = set()
        mask = data.get("mask")
        if mask is not None:
            plane = mask[..., 0] if mask.ndim == 3 else mask
            held |= _mask_classes(plane, "mask", k)
        label = data.get(self.label_key)
        if label is not None:
            held |= _label_classes(label, k, self.label_key)
        return frozenset(held)

    def sample(self, params: dict[str, Any], data: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        bank = resolve_bank(self.bank)
        ids = _class_ids(bank, self.classes)
        image = data["image"]
        held = self._held_classes(data, len(bank.classes))
        if held and self.only_defect_free:
            return {"plans": [], "class_id": 0}
        weights = np.asarray(self.class_weights if self.class_weights is not None else [1.0] * len(ids), float)
        class_id = ids[int(rng.choice(len(ids), p=weights / weights.sum()))]
        label = data.get(self.label_key)
        if label is not None and np.ndim(label) == 0 and int(label) not in (0, class_id):
            raise ValueError(
                f"{self.label_key}={int(label)} is one class id and cannot also hold injected class {class_id}; "
                "use a multi-hot label or only_defect_free=True"
            )
        low, high = (self.n, self.n) if isinstance(self.n, int) else self.n
        count = int(rng.integers(low, high + 1))
        py_random = getattr(self, "py_random", None) or random.Random(int(rng.integers(2**31)))
        transform = _transform_fn(self.defect_transform, rng, py_random)
        plans = [
            plan_injection(
                bank,
                class_id,
                image,
                rng,
                defect_transform=transform,
                size_mode=self.size_mode,  # type: ignore[arg-type]
                placement=self.placement,  # type: ignore[arg-type]
                poisson_p=self.poisson_p,
                blend_margin=self.blend_margin,
            )
            for _ in range(count)
        ]
        return {"plans": plans, "class_id": class_id}

    # ------------------------------------------------------------------ targets
    def apply(self, img: np.ndarray, plans: list[InjectionPlan], **params: Any) -> np.ndarray:
        for plan in plans:
            img = apply_plan(img, plan, **_blending(self)).image
        return img

    def apply_to_mask(self, mask: np.ndarray, plans: list[InjectionPlan], **params: Any) -> np.ndarray:
        for plan in plans:
            mask = write_class(mask, placed_label(plan.mask, plan.top_left, image_hw(mask)), plan.class_id)
        return mask

    def apply_to_bboxes(self, bboxes: np.ndarray, plans: list[InjectionPlan], **params: Any) -> np.ndarray:
        if not plans:
            return bboxes
        h, w = params["shape"][:2]
        return _append_boxes(self, bboxes, plans, (int(h), int(w)))

    def apply_to_keypoints(self, keypoints: np.ndarray, **params: Any) -> np.ndarray:
        return keypoints

    # ------------------------------------------------------------------ outputs
    def extra_outputs(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        k = len(resolve_bank(self.bank).classes)
        class_id = int(params.get("class_id", 0))
        label = data.get(self.label_key)
        if not params.get("plans"):
            return {self.label_key: self._label_of(data, k)}
        if label is None:
            vector = derived_labels([self._held_classes(data, k) | {class_id}], k)[0]
            return {self.label_key: vector}
        if np.ndim(label) == 0:
            return {self.label_key: type(label)(class_id) if isinstance(label, (int, np.integer)) else class_id}
        vector = np.array(label, copy=True)
        vector[class_id - 1] = 1
        return {self.label_key: vector}

    def default_outputs(self, data: dict[str, Any]) -> dict[str, Any]:
        return {self.label_key: self._label_of(data, len(resolve_bank(self.bank).classes))}

    def _label_of(self, data: dict[str, Any], k: int) -> Any:
        label = data.get(self.label_key)
        if label is not None:
            return label
        return derived_labels([self._held_classes(data, k)], k)[0]


def _label_classes(label: Any, k: int, name: str) -> frozenset[int]:
    if np.ndim(label) == 0:
        value = int(label)
        if not 0 <= value <= k:
            raise ValueError(f"{name}={value}; class ids are 0 (defect-free) and 1..{k}")
        return frozenset() if value == 0 else frozenset({value})
    vector = np.asarray(label)
    if vector.shape != (k,):
        raise ValueError(
            f"{name} must be an int class id or a multi-hot vector of length {k}, got shape {vector.shape}"
        )
    return frozenset(int(c) + 1 for c in np.flatnonzero(vector))


def _append_boxes(
    transform: InjectDefect, bboxes: np.ndarray, plans: list[InjectionPlan], hw: tuple[int, int]
) -> np.ndarray:
    """``bboxes`` (normalized albumentations rows) with one row per injected defect appended."""
    h, w = hw
    processor = transform.get_processor("bboxes")
    label_fields = transform.processor_label_fields("bboxes")
    columns = bboxes.shape[1] if bboxes.ndim == 2 and bboxes.size else 4 + len(label_fields)
    rows = []
    for plan in plans:
        box = placed_bbox(plan.mask, plan.top_left, hw)
        if box is None:
            continue
        y0, x0, y1, x1 = box
        row = np.full(columns, float(plan.class_id))
        row[:4] = (x0 / w, y0 / h, x1 / w, y1 / h)
        first_label = columns - len(label_fields)
        for j, field in enumerate(label_fields):
            row[first_label + j] = _encoded_label(processor, field, plan)
        rows.append(row)
    if not rows:
        return bboxes
    added = np.asarray(rows, dtype=bboxes.dtype if bboxes.dtype.kind == "f" else np.float32)
    if bboxes.size == 0:
        return added
    return np.concatenate([bboxes, added], axis=0)


def _encoded_label(processor: Any, field: str, plan: InjectionPlan) -> float:
    """The encoded value of the injected class in a bbox label field (its name for string fields)."""
    manager = getattr(processor, "label_manager", None)
    if manager is None:
        return float(plan.class_id)
    metadata = manager.metadata.get("bboxes", {}).get(field)
    if metadata is None:
        return float(manager.process_field("bboxes", field, [plan.class_id]).ravel()[0])
    if metadata.is_numerical:
        return float(plan.class_id)
    return float(manager.process_field("bboxes", field, [plan.entry.class_name]).ravel()[0])
