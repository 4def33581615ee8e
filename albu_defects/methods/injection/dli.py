"""Dynamic Label Injection (Caruso et al.): balance a batch's defect classes by injecting real defects.

Given a batch holding defect-free and defective images, DLI injects defects from a
:class:`~albu_defects.DefectBank` into the defect-free images, one per image, choosing each time
the class that is currently rarest in the batch (Algorithm 1 of the paper): (a) pick the rarest
class ``c*`` (ties broken at random), (b) draw a defect of class ``c*`` from the bank, (c)
transform it (flips + affine by default), (d) choose Poisson blending with probability
``poisson_p``, else cut-paste, (e) inject it and update the counts. The shared mechanics (scaling,
placement, blending, labels) are in :mod:`albu_defects.methods.injection.functional` and
:mod:`~albu_defects.methods.injection.plan`.

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
    list or an (N, H, W[, 1]) stack; *multi-hot* (H, W, K) masks (the label model's, channel ``k - 1``
    = class ``k``) as a list or an (N, H, W, K) stack; or *one-hot* masks as the reference code uses: an
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
    ``source_id``, ``method`` "poisson" | "paste", ``bbox`` (x_min, y_min, x_max, y_max) of the injected label,
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
    ``A.Compose(seed=...)``); the nested ``defect_transform`` draws from its own stream, seeded from
    this compose's seed (:mod:`albu_defects.core.seeds`).
    Inputs are never modified.

:class:`InjectDefect` is the per-sample form for a Dataset's ``A.Compose``.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field

from albu_defects.bank import DefectBank, resolve_bank
from albu_defects.core.transform import DefectCompose
from albu_defects.core.validation import clip_unit_range, validated_options

from .arguments import (
    InjectionOptions,
    as_defect_transform,
    bank_argument,
    blending_options,
    class_ids_of,
    defect_transform_fn,
    serialized_bank,
    yaml_classes,
)
from .balance import BalanceOptions, apply_batch, class_counts, plan_batch
from .batch import BatchLabels, BatchMasks, derived_labels, parse_images, rebuild

__all__ = [
    "DynamicLabelInjection",
]

_SINGLE_KEYS = ("image", "mask", "bboxes", "keypoints")


class BalanceSchema(InjectionOptions):
    """DynamicLabelInjection's options (those it shares with InjectDefect, then its own), validated once."""

    fill: Literal["all", "balance"]
    max_inject_fraction: float = Field(ge=0, le=1)
    p: float = Field(ge=0, le=1)


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
        placement: "source" (default: its relative position in its source image, plus the
            transform's shift) or "random" (anywhere the defect fits). "source" segmented better in
            the efficacy benchmark (mean IoU 0.412 against 0.325, higher on 3 of 3 seeds, Magnetic Tile).
        size_mode: "relative" (scale by target size / source size: images resized from the bank's
            resolution), "absolute" (keep pixel size; only defects that fit the image) or
            "absolute_crop" (keep pixel size; a defect larger than the image is cut to an
            image-sized window of it: random crops of images at the bank's resolution).
        p: probability of injecting at all for a batch.
        seed: seed of this compose's generators (an enclosing ``A.Compose(seed=...)`` overrides it).
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
        placement: Literal["random", "source"] = "source",
        size_mode: Literal["relative", "absolute", "absolute_crop"] = "relative",
        p: float = 1.0,
        seed: int | None = None,
        *,
        _replayed_draw: Mapping[str, Any] | None = None,
    ) -> None:
        options = validated_options(
            BalanceSchema,
            poisson_p=poisson_p,
            poisson_mode=poisson_mode,
            poisson_method=poisson_method,
            blend_margin=blend_margin,
            fill=fill,
            max_inject_fraction=max_inject_fraction,
            placement=placement,
            size_mode=size_mode,
            p=p,
        )
        transform = as_defect_transform(defect_transform)
        super().__init__(transforms=[transform], p=options.pop("p"), seed=seed)
        self.bank = bank_argument(bank)
        self.classes = yaml_classes(classes)
        self.defect_transform = transform
        for name, value in options.items():
            setattr(self, name, value)
        # ReplayCompose: the last call's draw is recorded (get_dict_with_id) and handed back to replay it
        self._last_draw: dict[str, Any] | None = None
        self._replayed_draw = None if _replayed_draw is None else dict(_replayed_draw)
        self._available_keys.update({"images", "masks", "labels"})
        class_ids_of(resolve_bank(self.bank), self.classes)  # fail early on unknown or empty classes

    # ------------------------------------------------------------------ albumentations plumbing
    def to_dict_private(self) -> dict[str, Any]:
        return self._init_args(serialized_bank(self.bank))

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

    def set_deterministic(self, flag: bool, save_key: str = "replay") -> None:
        # not handed to the nested defect transform: it runs many times a call, and DLI's own draw
        # (the call seed, recorded below) replays all of them
        self.deterministic, self.save_key = flag, save_key

    def get_dict_with_id(self) -> dict[str, Any]:
        dictionary = super().get_dict_with_id()
        dictionary["_replayed_draw"] = self._last_draw
        return dictionary

    def _draw_call(self, force_apply: bool) -> tuple[bool, np.random.Generator, random.Random]:
        """Whether this call injects, and the generators it draws the rest from.

        Under ``ReplayCompose`` the generators' states are recorded (:meth:`get_dict_with_id`) and a
        replay draws from copies of them: the same plan, defect transforms included.
        """
        if self.replay_mode and self._replayed_draw is not None:
            draw = self._replayed_draw
            return bool(draw["applied"]), copy.deepcopy(draw["random_generator"]), copy.deepcopy(draw["py_random"])
        applied = bool(force_apply) or self.py_random.random() < self.p
        if getattr(self, "deterministic", False):
            self._last_draw = {
                "applied": applied,
                "random_generator": copy.deepcopy(self.random_generator),
                "py_random": copy.deepcopy(self.py_random),
            }
        return applied, self.random_generator, self.py_random

    def _record_draw(self, data: dict[str, Any]) -> None:
        """Under ReplayCompose, mark the recorded call applied (its params say so; the draw itself is in the dict)."""
        record = data.get(getattr(self, "save_key", "replay")) if getattr(self, "deterministic", False) else None
        if isinstance(record, MutableMapping) and not self.replay_mode and self._last_draw is not None:
            record[id(self)] = {"applied": self._last_draw["applied"]}

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
        class_ids = class_ids_of(bank, self.classes)
        k = len(bank.classes)
        images, image_kind = parse_images(data["images"])
        masks = BatchMasks(data["masks"], images, k)
        labels = BatchLabels(data["labels"], len(images), k) if data.get("labels") is not None else None
        held = masks.classes
        if labels is not None:
            for i, (from_mask, from_label) in enumerate(zip(masks.classes, labels.classes, strict=True)):
                if not from_mask <= from_label:
                    raise ValueError(
                        f"labels[{i}] says classes {sorted(from_label) or 'none (defect-free)'} but masks[{i}] "
                        f"holds class(es) {sorted(from_mask)}; labels must agree with masks"
                    )
            held = labels.classes
        applied, rng, py_random = self._draw_call(force_apply)
        self._record_draw(data)
        plans = {}
        if applied:
            transform = defect_transform_fn(self.defect_transform, rng, py_random)
            plans = plan_batch(bank, class_ids, held, images, rng, self.options, transform)
        results = apply_batch(images, plans, **blending_options(self))
        new_images = {i: clip_unit_range(r.image) for i, r in results.items()}  # float32: Poisson may overshoot
        new_masks = {i: masks.injected(i, r.label, plans[i].class_id) for i, r in results.items()}
        injected = {i: plan.class_id for i, plan in plans.items()}
        injections: list[dict[str, Any] | None] = [None] * len(images)
        for i, result in results.items():
            injections[i] = {**plans[i].log(), "bbox": result.bbox}
        after_sets = [frozenset({injected[i]}) if i in injected else s for i, s in enumerate(held)]
        out = dict(data)
        if image_kind == "array":
            stacked = data["images"].copy()
            for i, image in new_images.items():
                stacked[i] = image
            out["images"] = stacked
        else:
            out["images"] = rebuild(image_kind, [new_images.get(i, im) for i, im in enumerate(images)], None)
        out["masks"] = masks.output(new_masks)
        if labels is not None:
            out["labels"] = labels.output(injected)
        else:
            out["labels"] = derived_labels(
                [frozenset({injected[i]}) if i in injected else s for i, s in enumerate(masks.classes)], k
            )
        names = [bank.classes[c - 1] for c in class_ids]
        out["injections"] = injections
        out["class_counts_before"] = dict(zip(names, class_counts(held, class_ids), strict=True))
        out["class_counts_after"] = dict(zip(names, class_counts(after_sets, class_ids), strict=True))
        return out

    @property
    def options(self) -> BalanceOptions:
        """The planning options (:func:`~albu_defects.methods.injection.balance.plan_batch`)."""
        return BalanceOptions(**{name: getattr(self, name) for name in BalanceOptions._fields})
