"""Dynamic Label Injection as pure functions: plan a batch's injections, then apply them.

:func:`plan_batch` takes what each image holds (its set of class ids), the bank, a generator and the
options, and returns which image gets which defect, where and how (one
:class:`~albu_defects.methods.injection.plan.InjectionPlan` per injected image); :func:`apply_batch`
renders those plans on the images. :class:`~albu_defects.DynamicLabelInjection` parses the batch
formats, calls the two and rebuilds the outputs; the algorithm (the paper's Algorithm 1) is here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np

from albu_defects.bank import DefectBank, DefectEntry
from albu_defects.core.validation import check_choice

from .functional import DefectTransformFn, InjectionResult, Placement, SizeMode
from .plan import InjectionPlan, apply_plan, plan_injection

__all__ = [
    "FILLS",
    "BalanceOptions",
    "apply_batch",
    "class_counts",
    "fill_plan",
    "plan_batch",
]

FILLS: tuple[str, ...] = ("all", "balance")


class BalanceOptions(NamedTuple):
    """How DLI plans a batch (the documented defaults of :class:`~albu_defects.DynamicLabelInjection`)."""

    fill: Literal["all", "balance"] = "all"
    max_inject_fraction: float = 1.0
    size_mode: SizeMode = "relative"
    placement: Placement = "source"
    poisson_p: float = 0.5
    blend_margin: int = 2


def class_counts(held: Sequence[frozenset[int]], class_ids: Sequence[int]) -> list[int]:
    """Per balanced class, how many images hold it (an image holding several classes counts for each)."""
    return [sum(c in present for present in held) for c in class_ids]


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


def entry_sequences(
    bank: DefectBank, class_ids: Sequence[int], chosen: Sequence[int], rng: np.random.Generator
) -> dict[int, list[DefectEntry]]:
    """Per chosen class, its entries drawn without replacement (cycling when a class runs out), popped from the end."""
    sequences: dict[int, list[DefectEntry]] = {}
    for k_index in sorted(set(chosen)):
        need = list(chosen).count(k_index)
        group = bank.entries_of(class_ids[k_index])
        order: list[DefectEntry] = []
        while len(order) < need:
            order.extend(group[int(j)] for j in rng.permutation(len(group)))
        sequences[k_index] = order[:need][::-1]
    return sequences


def plan_batch(
    bank: DefectBank,
    class_ids: Sequence[int],
    held: Sequence[frozenset[int]],
    images: Sequence[np.ndarray],
    rng: np.random.Generator,
    options: BalanceOptions | None = None,
    defect_transform: DefectTransformFn | None = None,
) -> dict[int, InjectionPlan]:
    """The batch's injections: image index -> its plan (images holding any class are never chosen).

    ``held[i]`` is the set of class ids image ``i`` holds; ``class_ids`` are the balanced classes.
    Rarest class first (:func:`fill_plan`) over at most ``floor(max_inject_fraction * free)`` of the
    defect-free images, drawn at random; except in ``"absolute"`` size mode each class's entries are
    drawn without replacement. Every random draw comes from ``rng`` (and the ``defect_transform``'s own).
    """
    options = BalanceOptions() if options is None else options
    free = [i for i, present in enumerate(held) if not present]
    if not free:
        return {}
    available = min(len(free), math.floor(options.max_inject_fraction * len(free) + 1e-9))
    chosen = fill_plan(class_counts(held, class_ids), available, options.fill, rng)
    targets = [free[int(j)] for j in rng.permutation(len(free))[: len(chosen)]]
    # "absolute" draws among the entries that fit each image; the other modes draw without replacement
    entries = entry_sequences(bank, class_ids, chosen, rng) if options.size_mode != "absolute" else {}
    plans: dict[int, InjectionPlan] = {}
    for index, k_index in zip(targets, chosen, strict=True):
        plans[index] = plan_injection(
            bank,
            class_ids[k_index],
            images[index],
            rng,
            entry=entries[k_index].pop() if entries.get(k_index) else None,
            defect_transform=defect_transform,
            size_mode=options.size_mode,
            placement=options.placement,
            poisson_p=options.poisson_p,
            blend_margin=options.blend_margin,
            target_name=f"images[{index}]",
        )
    return plans


def apply_batch(
    images: Sequence[np.ndarray],
    plans: dict[int, InjectionPlan],
    *,
    blend_margin: int = 2,
    poisson_mode: str = "mixed",
    poisson_method: str = "auto",
) -> dict[int, InjectionResult]:
    """Each planned image with its defect injected (:func:`apply_plan`); the others are not touched."""
    return {
        index: apply_plan(
            images[index], plan, blend_margin=blend_margin, poisson_mode=poisson_mode, poisson_method=poisson_method
        )
        for index, plan in plans.items()
    }
