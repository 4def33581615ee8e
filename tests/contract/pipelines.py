"""Random pipelines for the composition suite: what is drawn, how it is built, what must hold at the end.

A :class:`PipelineCase` is one example: 2-5 body steps drawn from every exported per-sample
transform (one :data:`RECIPES` entry each) and albumentations built-ins (flips, ``Affine``,
``RandomCrop``, ``PadIfNeeded``, ``ColorJitter``), some wrapped in ``A.Sequential`` / ``A.OneOf``;
then ``SyncLabels`` (always when a built-in that can drop mask pixels follows one of ours, as the
label model documents, sometimes otherwise) and a tail of ``Normalize`` and/or ``ToTensorV2``. The
inputs (gray or RGB, uint8 / uint16 / float32, contiguous or not) carry a ``mask`` (class-index
(H, W) or (H, W, 1), or multi-hot (H, W, K)), ``masks``, an extra mask target ``roi`` declared
through ``additional_targets``, ``bboxes`` and ``keypoints``, as drawn, plus every key the drawn
transforms document as input (partners, ``object_mask``, a host ``label``, an incoming
``class_vector`` or ``anomaly_mask``).

Every step's shape effect is known when it is drawn (crops and pads always apply), so each
example knows the size of its output. Recipes only choose options that are valid where the step
sits (a CutPaste scar only where it fits, ``region="mask"``/``"bbox"`` only before anything moved
the object mask or boxes).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import albumentations as A
import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

import albu_defects as ad
from albu_defects import IS_ALBUMENTATIONS_X

from .compat import bbox_params, keypoint_params, rows
from .data import (
    BANK_CLASSES,
    DTYPES,
    LABEL_FIELD,
    MASK_DTYPES,
    Banks,
    ImageKind,
    boxes,
    image_kinds,
    keypoints,
    rectangles_mask,
    white,
)

K = len(BANK_CLASSES)
#: Labels of input boxes: boxes added by a transform carry class ids 1..K.
HOST_BOX_LABEL = 100
#: The extra mask target, declared as ``additional_targets={ROI: "mask"}``.
ROI = "roi"
MASK_FORMATS = ("none", "index", "multihot")
#: Exported classes that run on a batch (``images``/``masks``), drawn by the batch strategies.
BATCH_TRANSFORMS = ("DynamicLabelInjection", "BatchCompose")
#: The final label re-deriving transform of the label model (appended, never drawn as a body step).
SYNC = "SyncLabels"


# ============================================================================================ steps
@dataclass(frozen=True)
class Step:
    """One entry of a pipeline: how to build it (fresh for every pipeline) and what it does to labels."""

    label: str  # printed in failing examples
    make: Callable[[Banks], Any]
    ours: bool = False
    moves: bool = False  # moves pixels geometrically
    drops: bool = False  # may drop mask pixels (crops, Affine)
    resizes: bool = False  # changes the image size (always applied)
    anomaly: bool = False  # writes the anomaly keys
    writes: frozenset[int] = frozenset()  # class ids it may write into ``mask``
    p: float = 1.0
    children: tuple[Step, ...] = ()  # a Sequential / OneOf wrapper's steps

    def __repr__(self) -> str:
        return self.label

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis prints failing examples with this
        printer.text(repr(self))

    def leaves(self) -> list[Step]:
        return [leaf for child in self.children for leaf in child.leaves()] if self.children else [self]


def builtin(label: str, factory: Callable[[], Any], **flags: Any) -> Step:
    return Step(label, lambda banks: factory(), **flags)


def wrap(kind: str, children: list[Step], p: float) -> Step:
    """``A.Sequential`` or ``A.OneOf`` over ``children`` (flags are the union of theirs)."""
    cls = A.Sequential if kind == "Sequential" else A.OneOf
    leaves = [leaf for child in children for leaf in child.leaves()]
    return Step(
        f"{kind}({', '.join(map(repr, children))}, p={p})",
        lambda banks: cls([child.make(banks) for child in children], p=p),
        ours=any(s.ours for s in leaves),
        moves=any(s.moves for s in leaves),
        drops=any(s.drops for s in leaves),
        resizes=any(s.resizes for s in leaves),
        anomaly=any(s.anomaly for s in leaves),
        writes=frozenset().union(*(s.writes for s in leaves)),
        p=p,
        children=tuple(children),
    )


@dataclass
class State:
    """What the strategy knows while it draws the steps in order."""

    kind: ImageKind
    hw: tuple[int, int]
    targets: set[str]  # "mask", "masks", ROI, "bboxes", "keypoints"
    mask_format: str
    inputs: dict[str, Any] = field(default_factory=dict)  # input keys the drawn transforms read
    moved: bool = False  # a step so far moves pixels or boxes
    boxes_added: bool = False  # a step so far may add (possibly tiny) boxes
    partners: bool = False  # ContextMix is drawn: partners are built at the end
    donors: bool = False  # PoissonPaste is drawn: donors are built at the end
    creates_mask: bool = False  # a step so far creates a mask when none is passed (GuidedCropPaste)
    partner_masks: bool = False  # partners carry a mask even though the inputs have none
    independence: bool = False  # the independence property: every decision has p=0.5
    batch: bool = False  # steps of a BatchCompose: no per-sample extra inputs
    bbox_min: int = 1  # smallest input box side (CropLiq region="bbox" needs 8)
    anomaly_before: bool = False  # an anomaly step is drawn before this point

    def p(self, draw: Any, default: float = 0.5) -> float:
        return 0.5 if self.independence else draw(st.sampled_from([default, 1.0]))


# ============================================================================================ recipes
def _bank(cls: type, options: dict[str, Any], dtype: Any, p: float) -> Callable[[Banks], Any]:
    return lambda banks: cls(banks.path(dtype), p=p, **options)


def _mask_class_id(draw: Any) -> dict[str, Any]:
    """Pseudo-anomalies enter ``mask`` only under a class id the user names (none by default)."""
    return draw(st.sampled_from([{}, {"mask_class_id": 2}]))


def _written(options: dict[str, Any]) -> frozenset[int]:
    return frozenset([options["mask_class_id"]]) if "mask_class_id" in options else frozenset()


def recipe_contextmix(draw: Any, state: State) -> Step | None:
    options: dict[str, Any] = {"box": draw(st.sampled_from(["beta", "square", "fixed"])), "min_box_side": 1}
    if not state.batch and draw(st.booleans()):
        options["num_classes"] = 4
        state.inputs.setdefault("label", draw(st.integers(0, 3)))
    state.partners = not state.batch  # a BatchCompose fills the partners itself
    state.partner_masks |= state.creates_mask  # the host has a mask by then: so must the partners
    state.boxes_added = True
    p = state.p(draw)
    return Step(
        f"ContextMix({options}, p={p})",
        lambda banks: ad.ContextMix(p=p, **options),
        ours=True,
        moves=True,
        writes=frozenset(range(1, K + 1)),
        p=p,
    )


def recipe_inject(draw: Any, state: State) -> Step | None:
    if "masks" in state.targets or min(state.hw) < 16:
        return None  # InjectDefect documents class-index masks only (no instance masks)
    options = {
        "n": draw(st.sampled_from([1, [1, 2]])),
        "poisson_p": draw(st.sampled_from([0.0, 1.0])),
        "placement": draw(st.sampled_from(["random", "source"])),
    }
    state.boxes_added = True
    p = state.p(draw)
    return Step(
        f"InjectDefect({options}, p={p})",
        _bank(ad.InjectDefect, options, state.kind.dtype, p),
        ours=True,
        writes=frozenset(range(1, K + 1)),
        p=p,
    )


def recipe_guided(draw: Any, state: State) -> Step | None:
    options: dict[str, Any] = {
        "max_defects": draw(st.sampled_from([1, 3])),
        "weights": draw(st.sampled_from(["uniform", "inverse_frequency"])),
        "skip_defective": draw(st.booleans()),
    }
    stage = draw(st.booleans())  # the global stage: flips, scroll, jitter
    if not stage:
        options.update(flip_p=0.0, shift_limit=0.0, brightness=0.0, contrast=0.0)
    state.boxes_added = True
    p = state.p(draw)
    return Step(
        f"GuidedCropPaste({options}, p={p})",
        _bank(ad.GuidedCropPaste, options, state.kind.dtype, p),
        ours=True,
        moves=stage,
        writes=frozenset(range(1, K + 1)),
        p=p,
    )


def _object_mask(draw: Any, state: State) -> None:
    if "object_mask" in state.inputs:
        return
    h, w = state.hw
    y0, x0 = draw(st.integers(0, h - 8)), draw(st.integers(0, w - 8))
    y1, x1 = draw(st.integers(y0 + 8, h)), draw(st.integers(x0 + 8, w))
    mask = np.zeros(state.hw, draw(st.sampled_from([bool, np.uint8])))
    mask[y0:y1, x0:x1] = 1
    state.inputs["object_mask"] = mask


def recipe_cropliq(draw: Any, state: State) -> Step | None:
    regions = ["auto", "image"]
    if not state.moved and not state.batch:  # the object mask and boxes are inputs: nothing may have moved them
        regions.append("mask")
        if "bboxes" in state.targets and not state.boxes_added:
            regions.append("bbox")
    options: dict[str, Any] = {
        "region": draw(st.sampled_from(regions)),
        "warp": draw(st.sampled_from(["random", "push", "swirl", "bloat", "pinch", "strokes"])),
        **_mask_class_id(draw),
    }
    if options["region"] == "mask":
        _object_mask(draw, state)
    if options["region"] == "bbox":
        state.bbox_min = 8
    p = state.p(draw)
    return Step(
        f"CropLiq({options}, p={p})",
        lambda banks: ad.CropLiq(p=p, **options),
        ours=True,
        anomaly=True,
        writes=_written(options),
        p=p,
    )


def recipe_cutpaste(draw: Any, state: State) -> Step | None:
    variants = ["normal", "scar"] if min(state.hw) >= 34 else ["normal"]
    options: dict[str, Any] = {"variant": draw(st.sampled_from(variants)), **_mask_class_id(draw)}
    p = state.p(draw)
    return Step(
        f"CutPaste({options}, p={p})",
        lambda banks: ad.CutPaste(p=p, **options),
        ours=True,
        anomaly=True,
        writes=_written(options),
        p=p,
    )


def recipe_poisson_paste(draw: Any, state: State) -> Step | None:
    if state.batch:
        return None  # its donors carry a class id, which batch-mates (what BatchCompose hands over) do not
    options: dict[str, Any] = {
        "n": draw(st.sampled_from([1, [1, 2]])),
        "blend": draw(st.sampled_from(["poisson", "paste", "random"])),
        "scale_range": draw(st.sampled_from([(1.0, 1.0), (0.5, 1.5)])),
        "hflip_p": draw(st.sampled_from([0.0, 0.5])),
    }
    if draw(st.booleans()):
        options["num_classes"] = K
    if not state.moved and draw(st.booleans()):
        options["region"] = "mask"
        _object_mask(draw, state)
    state.donors = True
    state.boxes_added = True
    p = state.p(draw)
    return Step(
        f"PoissonPaste({options}, p={p})",
        lambda banks: ad.PoissonPaste(p=p, **options),
        ours=True,
        writes=frozenset(range(1, K + 1)),
        p=p,
    )


def recipe_synthesis(draw: Any, state: State) -> Step | None:
    scar = min(state.hw) >= 34 and draw(st.booleans())
    normal_p = draw(st.sampled_from([None, 0.0, 0.5]))

    def make(banks: Banks) -> Any:
        children = [ad.CropLiq(region="image"), ad.CutPaste()] + ([ad.CutPaste(variant="scar")] if scar else [])
        return ad.AnomalySynthesis(children, normal_p=normal_p)

    return Step(f"AnomalySynthesis(scar={scar}, normal_p={normal_p})", make, ours=True, anomaly=True)


#: How to draw each exported per-sample transform as a pipeline step (None: it cannot sit here).
#: A new exported transform fails ``test_every_exported_transform_is_drawn`` until it has a recipe.
RECIPES: dict[str, Callable[[Any, State], Step | None]] = {
    "ContextMix": recipe_contextmix,
    "InjectDefect": recipe_inject,
    "GuidedCropPaste": recipe_guided,
    "CropLiq": recipe_cropliq,
    "CutPaste": recipe_cutpaste,
    "AnomalySynthesis": recipe_synthesis,
    "PoissonPaste": recipe_poisson_paste,
}


def builtin_step(draw: Any, state: State) -> Step:
    """One albumentations built-in, valid for the state's dtype and size."""
    names = ["HorizontalFlip", "VerticalFlip", "RandomCrop", "PadIfNeeded"]
    names.append("Affine")
    if np.dtype(state.kind.dtype) != np.uint16:  # ColorJitter supports uint8 and float32 only
        names.append("ColorJitter")
    name = draw(st.sampled_from(names))
    h, w = state.hw
    if name in ("HorizontalFlip", "VerticalFlip"):
        p = state.p(draw)
        cls = getattr(A, name)
        return builtin(f"{name}(p={p})", lambda: cls(p=p), moves=True, p=p)
    if name == "Affine":
        p = state.p(draw)
        return builtin(
            f"Affine(p={p})",
            lambda: A.Affine(scale=(0.8, 1.2), rotate=(-30, 30), translate_percent=(-0.1, 0.1), p=p),
            moves=True,
            drops=True,
            p=p,
        )
    if name == "RandomCrop":
        size = (draw(st.integers(max(16, h // 2), h)), draw(st.integers(max(16, w // 2), w)))
        state.hw = size
        return builtin(f"RandomCrop{size}", lambda: A.RandomCrop(*size, p=1.0), moves=True, drops=True, resizes=True)
    if name == "PadIfNeeded":
        size = (draw(st.integers(h, h + 12)), draw(st.integers(w, w + 12)))
        state.hw = size
        return builtin(f"PadIfNeeded{size}", lambda: A.PadIfNeeded(*size, p=1.0), moves=True, resizes=True)
    p = state.p(draw)
    return builtin(f"ColorJitter(p={p})", lambda: A.ColorJitter(p=p), p=p)


# ============================================================================================ cases
@dataclass
class PipelineCase:
    """One example: the steps, the call's inputs, and how to build the Compose."""

    kind: ImageKind
    steps: list[Step]
    inputs: dict[str, Any]
    mask_format: str
    hw: tuple[int, int]  # the output size
    tail: tuple[str, ...]  # "Normalize", "ToTensorV2"
    additional_targets: dict[str, str]

    def __repr__(self) -> str:
        from .specs import _summary

        return (
            f"PipelineCase(steps={self.steps}, tail={self.tail}, kind={self.kind!r}, mask_format={self.mask_format!r}, "
            f"inputs={_summary(self.inputs)}, additional_targets={self.additional_targets})"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    @property
    def leaves(self) -> list[Step]:
        return [leaf for step in self.steps for leaf in step.leaves()]

    def build(self, banks: Banks, seed: int | None, *, replay: bool = False, strict: bool = False) -> Any:
        """The pipeline as ``A.Compose`` (``A.ReplayCompose`` with ``replay``), each transform seeded by
        ``albu_defects.seed_pipeline`` (``seed=None``: left as ``Compose`` seeds it, unseeded)."""
        from albumentations.pytorch import ToTensorV2

        transforms = [step.make(banks) for step in self.steps]
        if "Normalize" in self.tail:
            transforms.append(A.Normalize())
        if "ToTensorV2" in self.tail:
            transforms.append(ToTensorV2())
        params: dict[str, Any] = {"additional_targets": dict(self.additional_targets) or None}
        if "bboxes" in self.inputs:
            params["bbox_params"] = bbox_params(label_fields=[LABEL_FIELD])
        if "keypoints" in self.inputs:
            params["keypoint_params"] = keypoint_params()
        # albumentations 2.0.8's ReplayCompose takes no ``strict``
        pipeline = A.ReplayCompose(transforms, **params) if replay else A.Compose(transforms, strict=strict, **params)
        if seed is not None:
            ad.seed_pipeline(pipeline, seed)
        return pipeline

    def with_inputs(self, **inputs: Any) -> PipelineCase:
        return replace(self, inputs={**self.inputs, **inputs})


def class_mask(kind: ImageKind, rng: np.random.Generator, hw: tuple[int, int], mask_format: str) -> np.ndarray:
    """A class-index mask of ``kind`` (classes 1..K), or its multi-hot (H, W, K) form."""
    index = rectangles_mask(rng, hw, int(rng.integers(0, 3)))
    if mask_format == "multihot":
        return kind.arrange(np.stack([index == k for k in range(1, K + 1)], axis=-1).astype(kind.mask_dtype))
    return kind.mask(index)


def multi_hot(classes: set[int]) -> np.ndarray:
    vector = np.zeros(K, np.float32)
    for c in classes:
        vector[c - 1] = 1.0
    return vector


def _partners(draw: Any, case: PipelineCase, count: int, with_mask: bool) -> list[dict[str, Any]]:
    """ContextMix partners: the host's dtype and channels, any size, every target the host carries."""
    kind, inputs = case.kind, case.inputs
    partners = []
    for i in range(count):
        hw = (draw(st.integers(8, 48)), draw(st.integers(8, 48)))
        rng = np.random.default_rng([kind.seed, 100 + i])
        partner: dict[str, Any] = {"image": kind.image(0.0, 1.0, salt=100 + i, hw=hw)}
        for key in ("mask", ROI):
            if key in inputs:
                partner[key] = class_mask(kind, rng, hw, case.mask_format)
            elif key == "mask" and with_mask:  # the host's mask is the uint8 one GuidedCropPaste creates
                partner[key] = rectangles_mask(rng, hw, int(rng.integers(0, 3)))
        if "masks" in inputs:
            partner["masks"] = np.stack([kind.mask(rng.integers(0, 2, hw)) for _ in range(len(inputs["masks"]))])
        if "bboxes" in inputs:
            n = int(rng.integers(0, 3))
            partner["bboxes"] = boxes(rng, hw, n)
            partner[LABEL_FIELD] = [HOST_BOX_LABEL + 50 + j for j in range(n)]
        if "keypoints" in inputs:
            partner["keypoints"] = keypoints(rng, hw, int(rng.integers(0, 3)))
        if "label" in inputs:
            partner["label"] = int(rng.integers(0, 4))
        partners.append(partner)
    return partners


def _donors(draw: Any, case: PipelineCase, count: int) -> list[dict[str, Any]]:
    """PoissonPaste donors: bright objects (class ids 1..K) of the host's dtype, gray or the host's channels."""
    kind, inputs = case.kind, case.inputs
    donors = []
    for i in range(count):
        hw = (draw(st.integers(2, 16)), draw(st.integers(2, 16)))
        gray = kind.channels is not None and draw(st.booleans())  # a one-channel donor into a colour host
        rng = np.random.default_rng([kind.seed, 200 + i])
        donor: dict[str, Any] = {"image": kind.image(0.75, 1.0, salt=200 + i, hw=hw)}
        if gray:
            donor["image"] = np.ascontiguousarray(np.asarray(donor["image"])[..., 0])
        donor["mask"] = rectangles_mask(rng, hw, int(rng.integers(1, 3)), classes=1).astype(bool)
        donor["class_id"] = draw(st.integers(1, K))
        if "masks" in inputs:
            donor["masks"] = np.stack([np.ones(hw, kind.mask_dtype)] * len(inputs["masks"]))
        donors.append(donor)
    return donors


@st.composite
def pipeline_cases(
    draw: Any,
    *,
    min_steps: int = 2,
    max_steps: int = 5,
    independence: bool = False,
    require_mask: bool = False,
    tails: bool = True,
    max_side: int = 48,
    batch: bool = False,
) -> PipelineCase:
    """A random pipeline and its inputs (see the module docstring).

    ``independence``: every decision has p=0.5, no size changes are wrapped, for the seed-independence
    property. ``require_mask``: always a ``mask`` (and the extra target ``roi``). ``batch``: steps for
    a ``BatchCompose`` (a class-index ``mask``, maybe boxes, no per-sample extra inputs).
    """
    kind = draw(image_kinds(min_side=24, max_side=max_side, dtypes=DTYPES, layouts=(None, 1, 3)))
    kind = replace(kind, mask_dtype=draw(st.sampled_from(MASK_DTYPES)))
    formats = ("index",) if batch else MASK_FORMATS[1:] if require_mask else MASK_FORMATS
    mask_format = draw(st.sampled_from(formats))
    targets: set[str] = set()
    if mask_format != "none":
        targets.add("mask")
        if not batch and (require_mask or draw(st.booleans())):
            targets.add(ROI)
    if not batch and draw(st.booleans()):
        targets.add("masks")
    if draw(st.booleans()):
        targets.add("bboxes")
    if not batch and draw(st.booleans()):
        targets.add("keypoints")
    state = State(kind, kind.hw, targets, mask_format, independence=independence, batch=batch)

    ours = [name for name in RECIPES if name in ad.__all__]
    steps: list[Step] = []
    count = draw(st.integers(min_steps, max_steps))
    first_ours = draw(st.integers(0, count - 1))  # at least one of ours
    for index in range(count):
        step = None
        if index == first_ours:  # the first recipe that fits here (CutPaste always does)
            for name in draw(st.permutations(ours)):
                step = RECIPES[name](draw, state)
                if step is not None:
                    break
        elif draw(st.booleans()):
            step = RECIPES[draw(st.sampled_from(ours))](draw, state)
        if step is None:
            step = builtin_step(draw, state)
        state.creates_mask |= step.label.startswith("GuidedCropPaste")
        state.moved |= step.moves
        state.anomaly_before |= step.anomaly
        steps.append(step)

    # wrap a run of steps in A.Sequential, or a step that does not change the size in A.OneOf: a built-in,
    # or an anomaly step of ours (a OneOf that skips it skips its keys: SyncLabels(anomaly_keys=True) writes them)
    skipped_anomaly = False
    if len(steps) >= 2 and draw(st.booleans()):
        start = draw(st.integers(0, len(steps) - 1))
        step = steps[start]
        single = not step.resizes and not step.children and (not step.ours or step.anomaly)
        if draw(st.booleans()) and single:
            skipped_anomaly = step.anomaly
            steps[start] = wrap("OneOf", [steps[start]], p=0.5 if independence else draw(st.sampled_from([0.5, 1.0])))
        else:
            stop = draw(st.integers(start + 1, min(len(steps), start + 2)))
            steps[start:stop] = [wrap("Sequential", steps[start:stop], p=1.0)]

    flat = [leaf for step in steps for leaf in step.leaves()]
    first = next(i for i, s in enumerate(flat) if s.ours)
    first_anomaly = next((i for i, s in enumerate(flat) if s.anomaly), None)
    # the label model: built-ins move the anomaly mask only when it is declared a mask target (then it
    # travels as uint8 and SyncLabels, last, hands it back as bool)
    declare_anomaly = first_anomaly is not None and any(s.moves and not s.ours for s in flat[first_anomaly + 1 :])
    needs_sync = declare_anomaly or skipped_anomaly or any(s.drops for s in flat[first + 1 :])
    if SYNC in ad.__all__ and (needs_sync or draw(st.booleans())):
        sync = f"{SYNC}(anomaly_keys=True)" if skipped_anomaly else SYNC
        steps.append(Step(sync, lambda banks: ad.SyncLabels(anomaly_keys=skipped_anomaly), ours=True))
    tail: tuple[str, ...] = draw(st.sampled_from([(), ("Normalize",), ("Normalize", "ToTensorV2"), ("ToTensorV2",)]))
    if not tails:
        tail = ()

    # the inputs
    rng = kind.rng(1)
    inputs: dict[str, Any] = {"image": kind.image()}
    additional: dict[str, str] = {}
    if "mask" in targets:
        inputs["mask"] = class_mask(kind, rng, kind.hw, mask_format)
    if ROI in targets:
        inputs[ROI] = class_mask(kind, kind.rng(2), kind.hw, mask_format)
        additional[ROI] = "mask"
    if "masks" in targets:
        inputs["masks"] = np.stack([kind.mask(kind.rng(3 + i).integers(0, 2, kind.hw)) for i in range(2)])
        if not IS_ALBUMENTATIONS_X and draw(st.booleans()):
            inputs["masks"] = list(inputs["masks"])  # albumentations 2.0.8 also takes a list
    if "bboxes" in targets:
        n = draw(st.integers(1 if state.bbox_min > 1 else 0, 3))
        inputs["bboxes"] = boxes(kind.rng(7), kind.hw, n, state.bbox_min)
        inputs[LABEL_FIELD] = [HOST_BOX_LABEL + i for i in range(n)]
    if "keypoints" in targets:
        inputs["keypoints"] = keypoints(kind.rng(8), kind.hw, draw(st.integers(0, 3)))
    inputs.update(state.inputs)
    if not batch and any(s.ours for s in flat) and "mask" in inputs and draw(st.booleans()):
        inputs["class_vector"] = multi_hot(classes_of_mask(inputs["mask"]))  # an incoming image-level label
    if (
        first_anomaly is not None
        and not batch
        and not any(s.moves for s in flat[:first_anomaly])
        and draw(st.booleans())
    ):
        # an incoming (empty) anomaly mask; declared a mask target it is uint8, as the README says (a OneOf may
        # skip every step of ours before a built-in warp, and OpenCV refuses bool)
        inputs["anomaly_mask"] = np.zeros(kind.hw, np.uint8 if declare_anomaly else bool)
    if declare_anomaly:
        additional["anomaly_mask"] = "mask"
        if IS_ALBUMENTATIONS_X and "mask" not in inputs:
            inputs.pop("anomaly_mask", None)  # X's rule: an extra mask target needs `mask` (README, Labels)
    case = PipelineCase(kind, steps, inputs, mask_format, state.hw, tail, additional)
    if state.partners:
        case = case.with_inputs(contextmix_metadata=_partners(draw, case, draw(st.integers(1, 2)), state.partner_masks))
    if state.donors:
        case = case.with_inputs(paste_metadata=_donors(draw, case, draw(st.integers(1, 3))))
    return case


# ============================================================================================ outputs
def to_numpy(value: Any) -> Any:
    """``value`` with every torch tensor (ToTensorV2) turned into a numpy array, containers kept."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):
        return value.detach().cpu().numpy()
    if isinstance(value, dict):
        return {k: to_numpy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_numpy(v) for v in value]
    if isinstance(value, tuple):
        return tuple(to_numpy(v) for v in value)
    return value


def classes_of_mask(mask: Any) -> set[int]:
    """Classes present in a class-index mask ((H, W) or (H, W, 1)) or a multi-hot (H, W, K) one."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] > 1:
        return {int(c) + 1 for c in np.flatnonzero(mask.reshape(-1, mask.shape[2]).any(axis=0))}
    return {int(v) for v in np.unique(mask) if v != 0}


def image_of(case: PipelineCase, out: dict[str, Any]) -> np.ndarray:
    """The output image as (H, W[, C]) numpy, whatever the tail did."""
    image = out["image"]
    if "ToTensorV2" in case.tail:
        assert hasattr(image, "permute"), f"ToTensorV2 returned {type(image).__name__}"
        image = image.detach().cpu().numpy()
        assert image.ndim == 3, f"ToTensorV2 image of shape {image.shape}"
        image = np.moveaxis(image, 0, -1)
        if case.kind.channels is None:
            image = image[..., 0]
    return np.asarray(image)


def check_outputs(case: PipelineCase, out: dict[str, Any]) -> None:
    """Types, sizes and dtypes of every output, then the labels against the final masks."""
    kind = case.kind
    missing = sorted(set(case.inputs) - set(out))
    assert not missing, f"input keys {missing} are missing from the output"
    image = image_of(case, out)
    expected_dtype = np.float32 if "Normalize" in case.tail else np.dtype(kind.dtype)
    channels = () if kind.channels is None else (kind.channels,)
    assert image.dtype == expected_dtype, f"image dtype {image.dtype}, expected {np.dtype(expected_dtype)}"
    assert image.shape == (*case.hw, *channels), f"image shape {image.shape}, expected {(*case.hw, *channels)}"
    if image.dtype == np.float32 and "Normalize" not in case.tail:
        low, high = float(image.min()), float(image.max())
        assert low >= 0.0 and high <= 1.0, f"a float32 image left [0, 1]: values in [{low:.4f}, {high:.4f}]"
    numpy_out = to_numpy(out)
    for key in ("mask", ROI):
        if key not in case.inputs:
            continue
        before, after = np.asarray(case.inputs[key]), numpy_out[key]
        assert isinstance(after, np.ndarray), f"{key} came back as {type(after).__name__}"
        assert after.dtype == before.dtype, f"{key}: dtype {before.dtype} became {after.dtype}"
        assert after.shape == (*case.hw, *before.shape[2:]), f"{key}: shape {after.shape} for an output of {case.hw}"
    if "masks" in case.inputs:
        for i, m in enumerate(numpy_out["masks"]):
            assert np.asarray(m).shape[:2] == case.hw, f"masks[{i}] has shape {np.asarray(m).shape}"
    check_labels(case, numpy_out)
    check_annotations(case, numpy_out)


def check_labels(case: PipelineCase, out: dict[str, Any]) -> None:
    """Every image-level label key agrees with the final masks (the label model)."""
    leaves = case.leaves
    if "class_vector" in out:  # (also without a mask: a transform that knows K writes the class it added)
        vector = np.asarray(out["class_vector"])
        assert vector.dtype == np.float32 and vector.shape == (K,), (
            f"class_vector is {vector.dtype} {vector.shape}, expected float32 ({K},)"
        )
        assert set(np.unique(vector).tolist()) <= {0.0, 1.0}, f"class_vector {vector} is not multi-hot"
    if "mask" in out:
        present = classes_of_mask(out["mask"])
        allowed = classes_of_mask(case.inputs["mask"]) if "mask" in case.inputs else set()
        allowed |= set().union(*(s.writes for s in leaves))
        stray = present - allowed
        assert not stray, f"the final mask holds classes {sorted(stray)} that no input or step put there"
        if "class_vector" in out:
            said = {int(c) + 1 for c in np.flatnonzero(out["class_vector"])}
            assert said == present, (
                f"class_vector says classes {sorted(said)} but the final mask holds {sorted(present)}"
            )
    if "anomaly_label" in out or "anomaly_mask" in out:
        assert "anomaly_label" in out and "anomaly_mask" in out, "one anomaly key without the other"
        label, anomaly = out["anomaly_label"], np.asarray(out["anomaly_mask"])
        assert isinstance(label, (int, np.integer)) and not isinstance(label, bool), f"anomaly_label {label!r}"
        assert anomaly.dtype == bool and anomaly.ndim == 2, f"anomaly_mask is {anomaly.dtype} {anomaly.shape}"
        assert (int(label) != 0) == bool(anomaly.any()), (
            f"anomaly_label {label} but the anomaly mask holds {int(anomaly.sum())} pixels"
        )
    if "mix_weights" in out:
        weights = np.asarray(out["mix_weights"], np.float64)
        assert weights.shape == (2,) and abs(weights.sum() - 1) < 1e-6 and (weights >= 0).all(), (
            f"mix_weights {weights}"
        )
    if "soft_label" in out:
        soft = np.asarray(out["soft_label"], np.float64)
        assert soft.shape == (4,) and abs(soft.sum() - 1) < 1e-5, f"soft_label {soft} does not sum to 1"


def check_annotations(case: PipelineCase, out: dict[str, Any]) -> None:
    """Boxes and keypoints stay inside the image; with only exact moves, a transform's boxes hold their class."""
    h, w = case.hw
    if "bboxes" in case.inputs:
        found = rows(out["bboxes"], 4)
        labels = np.asarray(out.get(LABEL_FIELD, []), np.float64).ravel()
        assert len(labels) == len(found), f"{len(found)} boxes but {len(labels)} labels"
        inside = (found[:, 0] >= -1e-3) & (found[:, 1] >= -1e-3) & (found[:, 2] <= w + 1e-3) & (found[:, 3] <= h + 1e-3)
        assert inside.all(), f"boxes {found[~inside].tolist()} leave the {w}x{h} image"
        exact = not any(s.drops or s.label.startswith("ContextMix") for s in case.leaves)
        if exact and case.mask_format == "index" and "mask" in out:
            plane = np.asarray(out["mask"]).reshape(h, w)
            for box, cls in zip(found, labels, strict=True):
                if cls < HOST_BOX_LABEL:  # a box a transform added for a defect it pasted
                    x0, y0, x1, y1 = np.rint(box).astype(int)
                    assert (plane[y0:y1, x0:x1] == int(cls)).any(), f"box {box.tolist()} holds no pixel of class {cls}"
    if "keypoints" in case.inputs:
        points = rows(out["keypoints"], 2)
        # AlbumentationsX's built-ins keep a point within half a pixel outside (its pixel-centre convention)
        slack = 0.5 if IS_ALBUMENTATIONS_X else 0.0
        inside = (points[:, :2] >= -slack).all(axis=1) & (points[:, 0] <= w + slack) & (points[:, 1] <= h + slack)
        assert inside.all(), f"keypoints {points[~inside].tolist()} leave the {w}x{h} image"


def other_mask(case: PipelineCase) -> np.ndarray:
    """Another valid mask of the case's format (for the extra-target property)."""
    return class_mask(case.kind, case.kind.rng(99), case.kind.hw, case.mask_format)


def inputs_copy(inputs: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(inputs)


@st.composite
def incoming_anomaly_cases(draw: Any) -> PipelineCase:
    """One of our steps that moves no pixel, on a dark flat image carrying an anomaly from an earlier step.

    The image is dark (below every bank defect and partner), so every pixel the step pastes changes.
    """
    kind = draw(image_kinds(min_side=24, max_side=48, dtypes=DTYPES, layouts=(None, 3)))
    kind = replace(kind, content="constant")
    mask_format = draw(st.sampled_from(MASK_FORMATS))
    targets = {"mask"} if mask_format != "none" else set()
    state = State(kind, kind.hw, targets, mask_format)
    ours = [name for name in RECIPES if name in ad.__all__]
    step = RECIPES[draw(st.sampled_from(ours))](draw, state)
    # a step that moves the host's pixels (Guided-Crop's global stage) moves the anomaly too: not this property
    assume(step is not None and not (step.moves and not step.label.startswith("ContextMix")))
    state.partners = step.label.startswith("ContextMix")
    h, w = kind.hw
    y0, x0 = draw(st.integers(0, h - 4)), draw(st.integers(0, w - 4))
    anomaly = np.zeros(kind.hw, bool)
    anomaly[y0 : draw(st.integers(y0 + 4, h)), x0 : draw(st.integers(x0 + 4, w))] = True
    inputs: dict[str, Any] = {"image": kind.image(0.05, 0.1), "anomaly_mask": anomaly, "anomaly_label": 1}
    inputs.update(state.inputs)  # what the step reads (an object mask, a host label)
    if "mask" in targets:
        inputs["mask"] = class_mask(kind, kind.rng(1), kind.hw, mask_format)
    case = PipelineCase(kind, [step], inputs, mask_format, kind.hw, (), {})
    if state.partners:
        partners = _partners(draw, case, 1, with_mask=False)
        case = case.with_inputs(
            contextmix_metadata=[{**p, "image": np.full_like(p["image"], white(kind.dtype))} for p in partners]
        )
    if state.donors:
        case = case.with_inputs(paste_metadata=_donors(draw, case, draw(st.integers(1, 2))))
    return case
