"""Planning one injection: draw a bank entry, adapt, scale, transform and place it (:func:`plan_injection`); then apply it."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any, NamedTuple

import numpy as np

from albu_defects.bank import DefectBank, DefectEntry
from albu_defects.core.geometry import box_center, box_hw, mask_bbox, random_top_left
from albu_defects.core.parallel import cached_per_object
from albu_defects.core.validation import check_choice, image_hw

from .functional import (
    PLACEMENTS,
    SIZE_MODES,
    DefectTransformFn,
    InjectionResult,
    Placement,
    SizeMode,
    crop_to_defect,
    cut_to_target,
    fit_to_target,
    inject_defect,
    match_channels,
    relative_scale,
    scale_defect,
    source_top_left,
    transform_defect,
)

__all__ = [
    "InjectionPlan",
    "apply_plan",
    "choose_entry",
    "plan_injection",
]


class InjectionPlan(NamedTuple):
    """One prepared injection: the defect as it will be placed, where, and how.

    ``crop``/``mask`` are the transformed, scaled defect (the crop matches the target's channels and
    dtype); ``top_left`` places them; ``method`` is ``"poisson"`` or ``"paste"``; ``entry`` is the
    bank entry it came from; ``scale`` the (y, x) factors applied to the crop (size mode times any
    shrink to fit).
    """

    class_id: int
    entry: DefectEntry
    crop: np.ndarray
    mask: np.ndarray
    top_left: tuple[int, int]
    method: str
    scale: tuple[float, float]

    def log(self) -> dict[str, Any]:
        """A plain-Python record (no arrays) for logs: class, bank entry, method, placement, scale."""
        return {
            "class_id": self.class_id,
            "class_name": self.entry.class_name,
            "entry_id": self.entry.entry_id,
            "source_id": self.entry.source_id,
            "method": self.method,
            "top_left": (int(self.top_left[0]), int(self.top_left[1])),
            "scale": (round(float(self.scale[0]), 6), round(float(self.scale[1]), 6)),
        }


_DEFECT_BOXES: dict[int, tuple[weakref.ref[DefectEntry], tuple[int, int]]] = {}


def _defect_hw(entry: DefectEntry) -> tuple[int, int]:
    """Height and width of an entry's mask box (cached per entry object while it lives)."""
    return cached_per_object(_DEFECT_BOXES, entry, _mask_box_hw)


def _mask_box_hw(entry: DefectEntry) -> tuple[int, int]:
    return box_hw(mask_bbox(entry.mask))  # type: ignore[arg-type]


#: Bytes of scaled defects kept per process (least recently used first out).
SCALED_CACHE_BYTES = 64 << 20


class _ScaledDefects:
    """:func:`scale_defect` of bank entries, kept: DLI and InjectDefect draw the same entries again and
    again into images of one size, and resizing a full-resolution crop (and its coverage mask) is
    a sixth of an injection's CPU time. Keyed by the entry (held weakly: a new object under a
    reused id misses), the scale and the crop's layout; the arrays are read-only, so no caller can
    change what the next draw gets."""

    def __init__(self, budget: int):
        self.budget, self.used = budget, 0
        self.items: OrderedDict[tuple, tuple[weakref.ref, np.ndarray, np.ndarray, tuple[float, float]]] = OrderedDict()
        self.lock = threading.Lock()

    def __call__(
        self, entry: DefectEntry, crop: np.ndarray, mask: np.ndarray, scale: tuple[float, float]
    ) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
        key = (id(entry), scale, crop.shape, crop.dtype.str)
        with self.lock:
            hit = self.items.get(key)
            if hit is not None and hit[0]() is entry:
                self.items.move_to_end(key)
                return hit[1], hit[2], hit[3]
        new_crop, new_mask, applied = scale_defect(crop, mask, scale)
        if new_crop is crop or new_mask is mask:  # nothing resized: the entry's own arrays
            return new_crop, new_mask, applied
        new_crop.flags.writeable = new_mask.flags.writeable = False
        with self.lock:
            old = self.items.pop(key, None)
            self.used += new_crop.nbytes + new_mask.nbytes - (0 if old is None else old[1].nbytes + old[2].nbytes)
            self.items[key] = (weakref.ref(entry), new_crop, new_mask, applied)
            while self.used > self.budget and self.items:
                _, (_, c, m, _) = self.items.popitem(last=False)
                self.used -= c.nbytes + m.nbytes
        return new_crop, new_mask, applied


_scaled_defect = _ScaledDefects(SCALED_CACHE_BYTES)


def choose_entry(
    bank: DefectBank,
    class_id: int,
    target_hw: tuple[int, int],
    size_mode: SizeMode,
    rng: np.random.Generator,
    target_name: str = "the image",
) -> DefectEntry:
    """Draw a bank entry of ``class_id`` for a target of ``target_hw``.

    ``"relative"`` and ``"absolute_crop"``: uniformly among the class's entries. ``"absolute"``:
    uniformly among those whose defect box fits the target; ``ValueError`` naming the class, the
    target size and the smallest defect when none does.
    """
    if size_mode != "absolute":
        return bank.draw(class_id, rng)
    entries = bank.entries_of(class_id)
    if not entries:
        bank.draw(class_id, rng)  # raises the bank's "no entries" error
    th, tw = target_hw
    fitting = [e for e in entries if _defect_hw(e)[0] <= th and _defect_hw(e)[1] <= tw]
    if not fitting:
        smallest = min(entries, key=lambda e: max(_defect_hw(e)[0] - th, 0) + max(_defect_hw(e)[1] - tw, 0))
        sh, sw = _defect_hw(smallest)
        raise ValueError(
            f"no {bank.classes[class_id - 1]!r} defect (class {class_id}) fits {target_name} ({th}x{tw}) with "
            f"size_mode='absolute': the closest is {sh}x{sw} px (entry {smallest.entry_id}, {smallest.source_id}); "
            "use size_mode='absolute_crop' (cuts it to the image) or 'relative', larger images, or leave this class out"
        )
    return fitting[int(rng.integers(len(fitting)))]


def plan_injection(
    bank: DefectBank,
    class_id: int,
    target: np.ndarray,
    rng: np.random.Generator,
    *,
    defect_transform: DefectTransformFn | None = None,
    size_mode: SizeMode = "relative",
    placement: Placement = "random",
    poisson_p: float = 0.5,
    blend_margin: int = 0,
    entry: DefectEntry | None = None,
    target_name: str = "the image",
) -> InjectionPlan:
    """Draw and prepare one injection of class ``class_id`` into ``target``.

    Steps: draw a bank entry (:func:`choose_entry`); adapt its channels (:func:`match_channels`);
    scale it (``size_mode``); apply ``defect_transform`` on a padded canvas
    (:func:`transform_defect`); shrink it to fit the target if needed (:func:`fit_to_target`); place
    it (``placement``); choose Poisson with probability ``poisson_p``, else cut-paste. ``entry``
    forces the bank entry (it must be of ``class_id``); ``target_name`` names the target in errors.
    """
    check_choice(size_mode, SIZE_MODES, "size_mode")
    check_choice(placement, PLACEMENTS, "placement")
    target_hw = image_hw(target)
    context = int(blend_margin) + 1  # Poisson reads source gradients one pixel past its region
    if entry is None:
        entry = choose_entry(bank, class_id, target_hw, size_mode, rng, target_name)
    elif entry.class_id != class_id:
        raise ValueError(f"entry {entry.entry_id} is of class {entry.class_id}, not {class_id}")
    crop = match_channels(entry.crop, target, f"bank entry {entry.entry_id} ({entry.source_id})")
    mask = entry.mask
    scale = relative_scale(entry.source_hw, target_hw) if size_mode == "relative" else (1.0, 1.0)
    if scale != (1.0, 1.0):
        crop, mask, scale = _scaled_defect(entry, crop, mask, scale)
    if defect_transform is not None:
        crop, mask, shift = transform_defect(crop, mask, defect_transform, context)
    else:
        crop, mask, _ = crop_to_defect(crop, mask, context)
        shift = (0.0, 0.0)
    if size_mode == "absolute_crop":
        crop, mask = cut_to_target(crop, mask, target_hw, context, rng)
    crop, mask, factor = fit_to_target(crop, mask, target_hw, context)
    if placement == "random":
        top_left = random_top_left(mask, target_hw, rng)
    else:
        cy, cx = box_center(mask_bbox(entry.mask))  # type: ignore[arg-type]
        sx, sy = entry.bbox[0], entry.bbox[1]
        sh, sw = entry.source_hw
        center = ((sy + cy) / sh, (sx + cx) / sw)
        top_left = source_top_left(mask, target_hw, center, (shift[0] * factor, shift[1] * factor))
    method = "poisson" if rng.random() < poisson_p else "paste"
    return InjectionPlan(
        class_id=int(class_id),
        entry=entry,
        crop=np.ascontiguousarray(crop),
        mask=np.ascontiguousarray(mask),
        top_left=top_left,
        method=method,
        scale=(scale[0] * factor, scale[1] * factor),
    )


def apply_plan(
    image: np.ndarray,
    plan: InjectionPlan,
    *,
    blend_margin: int = 0,
    poisson_mode: str = "mixed",
    poisson_method: str = "auto",
    class_mask: np.ndarray | None = None,
) -> InjectionResult:
    """:func:`inject_defect` of a plan from :func:`plan_injection` (its crop, mask, place, method and class)."""
    return inject_defect(
        image,
        match_channels(plan.crop, image),  # (h, w) <-> (h, w, 1) when a pipeline reshapes 2-D images
        plan.mask,
        plan.top_left,
        class_mask=class_mask,
        class_id=plan.class_id,
        method=plan.method,  # type: ignore[arg-type]
        blend_margin=blend_margin,
        poisson_mode=poisson_mode,
        poisson_method=poisson_method,
    )
