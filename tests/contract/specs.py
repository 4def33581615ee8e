"""Per-transform specs of the contract suite: one entry of ``SPECS`` per exported transform or compose.

A :class:`Spec` says, for one class exported by ``albu_defects``:

- ``build(case, p, banks)``: the transform for one example (banks passed by path, so YAML works);
- ``cases(active)``: a hypothesis strategy of :class:`Case` (valid call inputs and init options);
  ``active=True`` draws only inputs on which the transform must act at ``p=1`` (e.g. defect-free
  images for injection), for the "different seeds give different outputs" check;
- ``invariant(case, out)``: the transform's own label/pixel invariant on an applied call;
- ``defaults(case)``: the extra output keys (with their values) it documents for a call skipped by ``p=0``;
- ``bad_calls`` / ``bad_inits``: corrupted inputs and init args that must raise a ``ValueError``
  whose message matches the given fragment (the argument's name);
- ``mask_slot``: how to give the call a (host) mask, for the suite's generic mask-size check.

Every exported transform must have a spec here: ``test_every_exported_transform_has_a_spec`` fails
for a new transform without one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import albumentations as A
import cv2
import numpy as np
from hypothesis import strategies as st

import albu_defects as ad

from .compat import bbox_params, keypoint_params, rows
from .data import (
    BANK_CLASSES,
    DARK_HIGH,
    LABEL_FIELD,
    Banks,
    ImageKind,
    assert_same,
    boxes,
    changed,
    check_injection_pixels,
    classes_in,
    classes_of_label,
    dilate,
    holds_class,
    image_kinds,
    is_multi_hot,
    keypoints,
    labelled,
    plane,
    rectangles_mask,
    to_dtype,
    to_multi_hot,
    white,
    written,
)

K = len(BANK_CLASSES)
#: Labels of input boxes (new boxes of injected defects carry class ids 1..K, input boxes 100+).
HOST_BOX_LABEL = 100


@dataclass
class Case:
    """One example: the call's named inputs, the transform's init options, and what the builder knows."""

    kwargs: dict[str, Any]
    options: dict[str, Any]
    kind: ImageKind
    meta: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # hypothesis prints failing examples: arrays as dtype and shape
        return f"Case(kwargs={_summary(self.kwargs)}, options={self.options!r}, kind={self.kind!r}, meta={self.meta!r})"


def _summary(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array({value.dtype}, {value.shape})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_summary(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)) and any(isinstance(v, (np.ndarray, dict, list)) for v in value):
        return "[" + ", ".join(_summary(v) for v in value) + "]"
    return repr(value)


@dataclass(frozen=True)
class BadCall:
    """A corruption of valid inputs (and options) that must raise ``ValueError`` matching ``fragment``."""

    name: str
    corrupt: Callable[[Case], Case]
    fragment: str
    # True: must raise whatever the inputs; False: on inputs the transform acts on (``cases(active=True)``)
    on_any_input: bool = False


@dataclass(frozen=True)
class BadInit:
    """Init overrides (on top of a valid construction) that must raise ``ValueError`` matching ``fragment``."""

    name: str
    overrides: dict[str, Any]
    fragment: str


@dataclass(frozen=True)
class Spec:
    cls: type
    build: Callable[[Case, float, Banks], Any]
    cases: Callable[[bool], Any]
    invariant: Callable[[Case, dict[str, Any]], None]
    defaults: Callable[[Case], dict[str, Any]]
    construct: Callable[..., Any]  # construct(banks, **overrides): a valid instance, for the init checks
    mask_slot: Callable[[Case, np.ndarray], Case] | None = None
    batch: bool = False  # inputs under ``images=`` / ``masks=``, one entry per sample
    own_compose: bool = False  # the transform is the pipeline itself (own seed and bbox_params)
    reads_images: bool = True  # False: the generic bad-image checks do not apply (SyncLabels)
    draws: bool = True  # False: no random parameters, so other seeds give the same output
    # else it sits in A.Compose, unless a case says meta["direct"] (a compose that may be called either way)
    bad_calls: tuple[BadCall, ...] = ()
    bad_inits: tuple[BadInit, ...] = ()

    @property
    def name(self) -> str:
        return self.cls.__name__

    @property
    def image_key(self) -> str:
        return "images" if self.batch else "image"

    @property
    def image_name(self) -> str:
        """What a ValueError about a bad image must name."""
        return "images" if self.batch else "image"

    @property
    def mask_name(self) -> str:
        return r"masks\[0\]" if self.batch else "mask"


# ============================================================================================ pipelines
def pipeline(spec: Spec, case: Case, p: float, seed: int, banks: Banks, *, check_shapes: bool = True) -> Any:
    """The transform of ``case`` ready to call with ``case.kwargs``, seeded with ``seed``.

    Per-sample transforms and DLI sit in ``A.Compose(..., seed=seed)`` with the bbox/keypoint params
    their inputs need; a compose with its own params (BatchCompose) is the pipeline itself.
    """
    transform = spec.build(case, p, banks)
    if spec.own_compose or case.meta.get("direct"):
        transform.set_random_seed(seed)
        return transform
    params: dict[str, Any] = {}
    if "bboxes" in case.kwargs:
        params["bbox_params"] = bbox_params(label_fields=[LABEL_FIELD])
    if "keypoints" in case.kwargs:
        params["keypoint_params"] = keypoint_params()
    return A.Compose([transform], seed=seed, is_check_shapes=check_shapes, **params)


def _replace(case: Case, kwargs: dict[str, Any] | None = None, **options: Any) -> Case:
    return Case(dict(case.kwargs if kwargs is None else kwargs), {**case.options, **options}, case.kind, case.meta)


def _without(case: Case, *keys: str) -> Case:
    return _replace(case, {k: v for k, v in case.kwargs.items() if k not in keys})


def with_inputs(case: Case, **kwargs: Any) -> Case:
    return _replace(case, {**case.kwargs, **kwargs})


def _annotations(draw: Any, kind: ImageKind, *, min_box: int = 1, label_base: int = HOST_BOX_LABEL) -> dict:
    """Optional boxes (pascal_voc, label field ``cls``) and keypoints (xy) inside the image."""
    rng = kind.rng(7)
    out: dict[str, Any] = {}
    if draw(st.booleans()) and min(kind.hw) >= min_box:
        count = draw(st.integers(0, 3))
        out["bboxes"] = boxes(rng, kind.hw, count, min_box)
        out[LABEL_FIELD] = [label_base + i for i in range(count)]
    if draw(st.booleans()):
        out["keypoints"] = keypoints(rng, kind.hw, draw(st.integers(0, 3)))
    return out


def _unchanged_annotations(case: Case, out: dict[str, Any]) -> None:
    """Boxes (with labels) and keypoints come back as given."""
    for key, columns in (("bboxes", 4), ("keypoints", 2)):
        if key in case.kwargs:
            assert_same(rows(out[key], columns), rows(case.kwargs[key], columns), key, approx=True)
    if LABEL_FIELD in case.kwargs:
        assert_same(list(out[LABEL_FIELD]), list(case.kwargs[LABEL_FIELD]), LABEL_FIELD, approx=True)


def _box_rows(out: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    return rows(out.get("bboxes", []), 4), np.asarray(out.get(LABEL_FIELD, []), np.float64).ravel()


def _check_type(value: Any, dtype: Any, shape: tuple[int, ...], what: str) -> None:
    assert isinstance(value, np.ndarray), f"{what} is {type(value).__name__}, not an array"
    assert value.dtype == np.dtype(dtype) and value.shape == shape, (
        f"{what} is {value.dtype} {value.shape}, expected {np.dtype(dtype)} {shape}"
    )


def _multi_hot(classes: set[int]) -> np.ndarray:
    vector = np.zeros(K, np.uint8)
    for c in classes:
        vector[c - 1] = 1
    return vector


def _label_for(draw: Any, mask: np.ndarray | None) -> Any:
    """A label consistent with ``mask``: an int class id (when it holds at most one class) or multi-hot."""
    present = set() if mask is None else classes_in(mask)
    choices = ["multi-hot"] + (["int"] if len(present) <= 1 else [])
    if draw(st.sampled_from(choices)) == "int":
        return next(iter(present), 0)
    return _multi_hot(present)


# ============================================================================================ ContextMix
PARTNER_CLASS = 9  # the partners' mask value (the host's masks hold 0..3)


@st.composite
def contextmix_cases(draw: Any, active: bool = False) -> Case:
    kind = draw(image_kinds(min_side=8 if active else 1))
    options = {
        "box": draw(st.sampled_from(["beta", "square", "fixed"])),
        "interpolation": draw(st.sampled_from([cv2.INTER_NEAREST, cv2.INTER_LINEAR])),
        "min_box_side": 1 if active else draw(st.sampled_from([1, 3])),
        "num_classes": draw(st.sampled_from([None, 4])),
    }
    rng = kind.rng(1)
    # Host pixels stay below half white, partners are white: a pixel from a partner is >= 3/4 white.
    kwargs: dict[str, Any] = {"image": kind.image(0.0, 0.5)}
    partner_label = draw(st.integers(0, 3))
    partners = []
    for _ in range(draw(st.integers(1, 2))):
        hw = (draw(st.integers(1, 48)), draw(st.integers(1, 48)))
        shape = hw if kind.channels is None else (*hw, kind.channels)
        partners.append({"image": np.full(shape, white(kind.dtype), kind.dtype), "hw": hw})
    if draw(st.booleans()):
        kwargs["mask"] = kind.mask(rng.integers(0, 4, kind.hw))
        for partner in partners:
            partner["mask"] = np.full(partner["hw"], PARTNER_CLASS, kind.mask_dtype)
        options["label_mode"] = draw(st.sampled_from(["area", "defect_area"]))  # defect_area needs the masks
        if draw(st.booleans()):  # an image-level label to keep true: classes 1..PARTNER_CLASS
            kwargs[ad.CLASS_VECTOR_KEY] = _multi_hot_of(classes_in(kwargs["mask"]), PARTNER_CLASS)
    if draw(st.booleans()):  # pseudo-anomalies of the host; partners without any
        kwargs[ad.ANOMALY_MASK_KEY] = rng.random(kind.hw) < 0.3
    if draw(st.booleans()):
        kwargs["masks"] = [kind.mask(rng.integers(0, 2, kind.hw)) for _ in range(2)]
        for partner in partners:
            partner["masks"] = [np.full(partner["hw"], PARTNER_CLASS, kind.mask_dtype)] * 2
    kwargs.update(_annotations(draw, kind, label_base=1))
    for partner in partners:
        prng = np.random.default_rng(kind.seed % 1000)
        if "bboxes" in kwargs:
            count = draw(st.integers(0, 2))
            partner["bboxes"] = boxes(prng, partner["hw"], count)
            partner[LABEL_FIELD] = [HOST_BOX_LABEL + i for i in range(count)]
        if "keypoints" in kwargs:
            partner["keypoints"] = keypoints(prng, partner["hw"], draw(st.integers(0, 2)))
        if options["num_classes"] is not None:
            partner["label"] = partner_label
        del partner["hw"]
    if options["num_classes"] is not None:
        kwargs["label"] = draw(st.integers(0, 3))
    kwargs["contextmix_metadata"] = partners
    return Case(kwargs, options, kind, {"partner_label": partner_label})


def _defect_area_weights(case: Case, out: dict[str, Any], from_partner: np.ndarray) -> np.ndarray:
    """label_mode="defect_area": the documented rule, from the defect pixels each side shows in the output."""
    shown = labelled(out["mask"])
    visible = [int((shown & ~from_partner).sum()), int((shown & from_partner).sum())]
    partner_masks = [p["mask"] for p in case.kwargs["contextmix_metadata"]]
    # the partners' masks are all-defect (or all-empty, from mask_slot): any pixel count >= 4 acts alike
    partner_total = 0 if not any(np.any(m) for m in partner_masks) else 10**6
    total = [int(labelled(case.kwargs["mask"]).sum()), partner_total]
    area = [1.0 - from_partner.mean(), from_partner.mean()]
    counted = [v if v > 0 and v >= min(4, t) else 0 for v, t in zip(visible, total, strict=True)]
    if sum(counted):
        return np.array(counted) / sum(counted)
    free = [a if t == 0 else 0.0 for a, t in zip(area, total, strict=True)]
    return np.array(free) / sum(free) if sum(free) else np.array(area)


def contextmix_invariant(case: Case, out: dict[str, Any]) -> None:
    """lambda_B is the fraction of partner pixels (or of shown defect pixels); the partner's labels sit on its pixels."""
    kind, host = case.kind, case.kwargs["image"]
    weights = out["mix_weights"]
    _check_type(weights, np.float32, (2,), "mix_weights")
    assert (weights >= 0).all() and abs(float(weights.sum()) - 1.0) < 1e-6, f"mix_weights {weights} do not sum to 1"
    h, w = kind.hw
    image = np.asarray(out["image"], np.float64).reshape(h, w, -1)
    from_partner = image.min(axis=2) >= 0.75 * white(kind.dtype)
    if case.options.get("label_mode") == "defect_area":
        expected_weights = _defect_area_weights(case, out, from_partner)
        assert np.allclose(weights, expected_weights, atol=1e-6), f"mix_weights {weights} != {expected_weights}"
    else:
        assert abs(from_partner.mean() - float(weights[1])) <= 1e-6, (
            f"lambda_B={float(weights[1]):.6f} but {from_partner.mean():.6f} of the pixels come from the partner"
        )
    assert not changed(out["image"], host)[~from_partner].any(), "host pixels outside the pasted box changed"
    if "mask" in case.kwargs:
        expected = np.where(from_partner, PARTNER_CLASS, plane(case.kwargs["mask"])).astype(kind.mask_dtype)
        assert_same(plane(out["mask"]), expected, "mask (partner class exactly on the partner's pixels)")
    if ad.CLASS_VECTOR_KEY in case.kwargs:
        vector = _multi_hot_of(classes_in(out["mask"]), PARTNER_CLASS)
        assert_same(out[ad.CLASS_VECTOR_KEY], vector, "class_vector (re-derived from the mixed mask)")
    if ad.ANOMALY_MASK_KEY in case.kwargs:
        expected = case.kwargs[ad.ANOMALY_MASK_KEY] & ~from_partner
        assert_same(out[ad.ANOMALY_MASK_KEY], expected, "anomaly_mask (the partner's pixels hold none)")
    for k, host_mask in enumerate(case.kwargs.get("masks", [])):
        expected = np.where(from_partner, PARTNER_CLASS, plane(host_mask)).astype(kind.mask_dtype)
        assert_same(plane(out["masks"][k]), expected, f"masks[{k}]")
    if case.options["num_classes"] is not None:
        expected = np.zeros(4)
        expected[case.kwargs["label"]] += weights[0]
        expected[case.meta["partner_label"]] += weights[1]
        _check_type(out["soft_label"], np.float32, (4,), "soft_label")
        assert np.allclose(out["soft_label"], expected, atol=1e-6), f"soft_label {out['soft_label']} != {expected}"
    if "bboxes" in case.kwargs:
        found, labels = _box_rows(out)
        partner_boxes = found[labels >= HOST_BOX_LABEL]
        if len(partner_boxes):
            ys, xs = np.nonzero(from_partner)
            region = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            inside = (
                (partner_boxes[:, 0] >= region[0] - 1e-3)
                & (partner_boxes[:, 1] >= region[1] - 1e-3)
                & (partner_boxes[:, 2] <= region[2] + 1e-3)
                & (partner_boxes[:, 3] <= region[3] + 1e-3)
            )
            assert inside.all(), f"partner boxes {partner_boxes[~inside].tolist()} leave the pasted region {region}"


def contextmix_defaults(case: Case) -> dict[str, Any]:
    out: dict[str, Any] = {"mix_weights": np.array([1.0, 0.0], np.float32)}
    if case.options["num_classes"] is not None:
        out["soft_label"] = np.eye(4, dtype=np.float32)[case.kwargs["label"]]
    return out


def contextmix_mask_slot(case: Case, mask: np.ndarray) -> Case:
    partners = [{**p, "mask": np.zeros(p["image"].shape[:2], mask.dtype)} for p in case.kwargs["contextmix_metadata"]]
    return with_inputs(case, mask=mask, contextmix_metadata=partners)


def _partner_change(case: Case, **changes: Any) -> Case:
    partners = [{**p, **changes} for p in case.kwargs["contextmix_metadata"]]
    return with_inputs(case, contextmix_metadata=partners)


def _other_dtype(image: np.ndarray) -> np.ndarray:
    return image.astype(np.uint16 if image.dtype != np.uint16 else np.uint8)


CONTEXTMIX = Spec(
    cls=ad.ContextMix,
    build=lambda case, p, banks: ad.ContextMix(p=p, **case.options),
    cases=lambda active: contextmix_cases(active),
    invariant=contextmix_invariant,
    defaults=contextmix_defaults,
    construct=lambda banks, **kw: ad.ContextMix(**kw),
    mask_slot=contextmix_mask_slot,
    bad_calls=(
        BadCall("no partners", lambda c: _without(c, "contextmix_metadata"), "contextmix_metadata"),
        BadCall("empty partner list", lambda c: with_inputs(c, contextmix_metadata=[]), "contextmix_metadata"),
        BadCall(
            "partner of another dtype",
            lambda c: _partner_change(c, image=_other_dtype(c.kwargs["contextmix_metadata"][0]["image"])),
            r"contextmix_metadata\[\d\]\['image'\]",
        ),
        BadCall(
            "partner without a mask",
            lambda c: _partner_change(contextmix_mask_slot(c, np.zeros(c.kind.hw, np.uint8)), mask=None),
            "mask",
        ),
        BadCall("num_classes without a host label", lambda c: _replace(_without(c, "label"), num_classes=4), "label"),
    ),
    bad_inits=(
        BadInit("alpha", {"alpha": 0.0}, "alpha"),
        BadInit("box", {"box": "circle"}, "box"),
        BadInit("box_size", {"box_size": 0.0}, "box_size"),
        BadInit("min_box_side", {"min_box_side": 0}, "min_box_side"),
        BadInit("label_smoothing", {"label_smoothing": 2.0}, "label_smoothing"),
        BadInit("min_visible_pixels", {"min_visible_pixels": 0}, "min_visible_pixels"),
        BadInit("p", {"p": 1.5}, "p"),
    ),
)


# ============================================================================================ injection (bank)
def _bank_path(case: Case, banks: Banks) -> str:
    return banks.path(case.options.get("_bank_dtype", case.kind.dtype))


def _public(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if not k.startswith("_")}


def bank_spec(cls: type, **fields: Any) -> Spec:
    """The spec of a transform that takes a bank path first (the bank of the case's dtype)."""
    return Spec(
        cls=cls,
        build=lambda case, p, banks: cls(_bank_path(case, banks), p=p, **_public(case.options)),
        construct=lambda banks, **kw: cls(**{"bank": banks.path(np.uint8), **kw}),
        **fields,
    )


#: A bank whose crops have another dtype than the image.
OTHER_BANK_DTYPE = BadCall(
    "bank of another dtype",
    lambda c: _replace(_without(c, "mask"), _bank_dtype=_other_dtype(np.zeros(1, c.kind.dtype)).dtype),
    "dtype",
)


def _maybe_multi_hot(draw: Any, kind: ImageKind, mask: np.ndarray, num_classes: int = K) -> np.ndarray:
    """``mask`` as it is, or (drawn) as a multi-hot (H, W, K) mask of the same dtype and memory layout."""
    if not draw(st.booleans()):
        return mask
    return kind.arrange(to_multi_hot(plane(mask), num_classes, kind.mask_dtype))


@st.composite
def inject_cases(draw: Any, active: bool = False) -> Case:
    kind = draw(image_kinds(min_side=16))
    options = {
        "poisson_p": draw(st.sampled_from([0.0, 1.0])),
        "n": draw(st.sampled_from([1, [1, 3]])),
        "placement": draw(st.sampled_from(["random", "source"])),
        "size_mode": draw(st.sampled_from(["relative", "absolute_crop"])),
    }
    key = draw(st.sampled_from([ad.CLASS_VECTOR_KEY, "label"]))  # "label": pipelines saved by 0.1.0
    if key != ad.CLASS_VECTOR_KEY:
        options["label_key"] = key
    disjoint = draw(st.booleans())
    kwargs: dict[str, Any] = {"image": kind.image(0.0, DARK_HIGH) if disjoint else kind.image()}
    mask_kind = draw(st.sampled_from(["none", "free"] if active else ["none", "free", "defects"]))
    mask = None
    if mask_kind != "none":
        mask = kind.mask(rectangles_mask(kind.rng(2), kind.hw, 0 if mask_kind == "free" else draw(st.integers(1, 2))))
        mask = kwargs["mask"] = _maybe_multi_hot(draw, kind, mask)
    if draw(st.booleans()):
        kwargs[key] = _label_for(draw, mask) if key == "label" else _multi_hot(_classes(mask)).astype(np.float32)
    kwargs.update(_annotations(draw, kind))
    return Case(kwargs, options, kind, {"disjoint": disjoint})


def _classes(mask: np.ndarray | None) -> set[int]:
    return set() if mask is None else classes_in(mask)


def _label_key(case: Case) -> str:
    return case.options.get("label_key", ad.CLASS_VECTOR_KEY)


def inject_invariant(case: Case, out: dict[str, Any]) -> None:
    """Labels are the classes in the mask; no pixel changes without a label and no label lands where nothing was pasted."""
    key = _label_key(case)
    mask_in, label_in = case.kwargs.get("mask"), case.kwargs.get(key)
    held = _classes(mask_in) | (set() if label_in is None else classes_of_label(label_in, K))
    label = out[key]
    if label_in is None:
        _check_type(label, np.float32, (K,), f"{key} (derived)")
    elif np.ndim(label_in) == 0:
        assert np.ndim(label) == 0, f"an int label came back as {label!r}"
    else:
        _check_type(label, label_in.dtype, label_in.shape, key)
    if held:  # only_defect_free: images holding defects are returned untouched
        assert_same(out["image"], case.kwargs["image"], "image of a defective sample")
        if mask_in is not None:
            assert_same(out["mask"], mask_in, "mask of a defective sample")
        assert classes_of_label(label, K) == held, f"{key} {label!r} of a defective sample changed"
        _unchanged_annotations(case, out)
        return
    injected = classes_of_label(label, K)
    assert len(injected) == 1, f"p=1 on a defect-free image must inject one class, {key} says {injected}"
    if mask_in is not None:
        mask_out = out["mask"]
        _check_type(mask_out, mask_in.dtype, mask_in.shape, "mask")
        assert classes_in(mask_out) == injected, f"{key} {injected} but the mask holds {classes_in(mask_out)}"
        check_injection_pixels(
            case.kwargs["image"],
            out["image"],
            mask_in,
            mask_out,
            poisson=case.options["poisson_p"] == 1.0,
            blend_margin=2,
            disjoint=case.meta["disjoint"],
            what="InjectDefect",
        )
    if "keypoints" in case.kwargs:
        assert_same(rows(out["keypoints"], 2), rows(case.kwargs["keypoints"], 2), "keypoints", approx=True)
    if "bboxes" in case.kwargs:
        found, labels = _box_rows(out)
        given = len(case.kwargs["bboxes"])
        assert_same(found[:given], rows(case.kwargs["bboxes"], 4), "input boxes", approx=True)
        new_boxes, new_labels = found[given:], labels[given:]
        assert len(new_boxes) >= 1 and set(new_labels.astype(int).tolist()) == injected, (
            f"new boxes {new_boxes.tolist()} labelled {new_labels.tolist()} for injected class {injected}"
        )
        if mask_in is not None:
            for box, cls in zip(new_boxes, new_labels, strict=True):
                x0, y0, x1, y1 = np.rint(box).astype(int)
                inside = holds_class(out["mask"], int(cls))[y0:y1, x0:x1]
                assert inside.any(), f"new box {box.tolist()} holds no pixel of class {int(cls)}"


def inject_defaults(case: Case) -> dict[str, Any]:
    key = _label_key(case)
    if key in case.kwargs:
        return {key: case.kwargs[key]}
    return {key: _multi_hot(_classes(case.kwargs.get("mask"))).astype(np.float32)}


INJECT_BAD_CALLS = (
    BadCall("instance masks", lambda c: with_inputs(c, masks=[np.zeros(c.kind.hw, np.uint8)]), "masks"),
    BadCall("unknown class id in the mask", lambda c: with_inputs(c, mask=c.kind.mask(np.full(c.kind.hw, 9))), "mask"),
    BadCall(
        "multi-hot mask of other classes", lambda c: with_inputs(c, mask=np.zeros((*c.kind.hw, K + 1), bool)), "mask"
    ),
    BadCall("label out of range", lambda c: _replace(with_inputs(c, label=7), label_key="label"), "label"),
    OTHER_BANK_DTYPE,
)

INJECT_DEFECT = bank_spec(
    ad.InjectDefect,
    cases=lambda active: inject_cases(active),
    invariant=inject_invariant,
    defaults=inject_defaults,
    mask_slot=lambda case, mask: _without(with_inputs(case, mask=mask), "label", ad.CLASS_VECTOR_KEY),
    bad_calls=INJECT_BAD_CALLS,
    bad_inits=(
        BadInit("missing bank", {"bank": "/nonexistent/bank"}, "bank"),
        BadInit("n", {"n": 0}, "n"),
        BadInit("class_weights", {"class_weights": [1.0]}, "class_weights"),
        BadInit("unknown class", {"classes": ["nope"]}, "nope"),
        BadInit("poisson_p", {"poisson_p": 2.0}, "poisson_p"),
        BadInit("placement", {"placement": "middle"}, "placement"),
    ),
)


# ============================================================================================ Guided-Crop
STAGE_OFF = {"flip_p": 0.0, "shift_limit": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0}


@st.composite
def guided_cases(draw: Any, active: bool = False) -> Case:
    kind = draw(image_kinds(min_side=8))
    stage = draw(st.sampled_from(["off", "on"]))
    options = {
        "max_defects": draw(st.sampled_from([1, 3])),
        "weights": draw(st.sampled_from(["uniform", "inverse_frequency"])),
        "skip_defective": draw(st.booleans()),
        "size_mode": draw(st.sampled_from(["absolute", "relative"])),  # relative: the 32x40 sources rescaled
        **(STAGE_OFF if stage == "off" else {}),
    }
    disjoint = draw(st.booleans())
    kwargs: dict[str, Any] = {"image": kind.image(0.0, DARK_HIGH) if disjoint else kind.image()}
    mask_kind = draw(st.sampled_from(["none", "free", "defects"]))
    if active and mask_kind == "defects":
        options["skip_defective"] = False
    if mask_kind != "none":
        count = 0 if mask_kind == "free" else draw(st.integers(1, 2))
        kwargs["mask"] = _maybe_multi_hot(draw, kind, kind.mask(rectangles_mask(kind.rng(2), kind.hw, count)))
        if draw(st.booleans()):
            kwargs[ad.CLASS_VECTOR_KEY] = _multi_hot(classes_in(kwargs["mask"])).astype(np.float32)
    if draw(st.booleans()):
        kwargs["masks"] = [kind.mask(kind.rng(3 + i).integers(0, 2, kind.hw)) for i in range(2)]
    kwargs.update(_annotations(draw, kind))
    return Case(kwargs, options, kind, {"disjoint": disjoint, "stage": stage})


def guided_invariant(case: Case, out: dict[str, Any]) -> None:
    """class_vector is exactly the classes in the mask; pasted pixels are labelled, labels are pasted."""
    mask_in = case.kwargs.get("mask")
    mask_out = out["mask"]
    if mask_in is None:
        _check_type(mask_out, np.uint8, case.kind.hw, "mask (created)")
    else:
        _check_type(mask_out, mask_in.dtype, mask_in.shape, "mask")
    vector = out[ad.CLASS_VECTOR_KEY]
    _check_type(vector, np.float32, (K,), "class_vector")
    assert set(np.unique(vector).tolist()) <= {0.0, 1.0}, f"class_vector {vector} is not multi-hot"
    assert classes_of_label(vector, K) == classes_in(mask_out), (
        f"class_vector says {classes_of_label(vector, K)} but the mask holds {classes_in(mask_out)}"
    )
    if case.options["skip_defective"] and mask_in is not None and mask_in.any():
        assert_same(out["image"], case.kwargs["image"], "image of a skipped defective sample")
        assert_same(mask_out, mask_in, "mask of a skipped defective sample")
        _unchanged_annotations(case, out)
        return
    image_changed = changed(out["image"], case.kwargs["image"])
    if case.meta["stage"] == "off":  # no global stage: only the pasted blob pixels may change
        unlabelled = image_changed & ~labelled(mask_out)
        assert not unlabelled.any(), f"{int(unlabelled.sum())} changed pixels carry no class in the mask"
        if case.meta["disjoint"]:
            before = np.zeros(case.kind.hw, np.uint8) if mask_in is None else mask_in
            ghost = changed(mask_out, before) & ~image_changed
            assert not ghost.any(), f"{int(ghost.sum())} newly labelled pixels show no pasted defect"
        for k, instance in enumerate(case.kwargs.get("masks", [])):
            assert_same(out["masks"][k], instance, f"masks[{k}] (no global stage)")
        if "keypoints" in case.kwargs:
            assert_same(rows(out["keypoints"], 2), rows(case.kwargs["keypoints"], 2), "keypoints", approx=True)
    if "bboxes" in case.kwargs:
        found, labels = _box_rows(out)
        new = labels < HOST_BOX_LABEL
        assert (labels[new] >= 1).all() and (labels[new] <= K).all(), f"new box labels {labels[new]} are not class ids"
        for box, cls in zip(found[new], labels[new], strict=True):
            x0, y0, x1, y1 = np.rint(box).astype(int)
            assert holds_class(mask_out, int(cls))[y0:y1, x0:x1].any(), f"box {box.tolist()} holds no class {int(cls)}"
        if case.meta["stage"] == "off":
            given = rows(case.kwargs["bboxes"], 4)
            assert_same(found[~new], given, "input boxes (no global stage)", approx=True)


def guided_defaults(case: Case) -> dict[str, Any]:
    if ad.CLASS_VECTOR_KEY in case.kwargs:  # an incoming class_vector passes through when skipped
        return {}
    mask = case.kwargs.get("mask")
    if mask is None:
        return {ad.CLASS_VECTOR_KEY: np.zeros(K, np.float32), "mask": np.zeros(case.kind.hw, np.uint8)}
    return {ad.CLASS_VECTOR_KEY: _multi_hot(classes_in(mask)).astype(np.float32)}


GUIDED_CROP = bank_spec(
    ad.GuidedCropPaste,
    cases=lambda active: guided_cases(active),
    invariant=guided_invariant,
    defaults=guided_defaults,
    mask_slot=lambda case, mask: with_inputs(case, mask=mask),
    bad_calls=(
        BadCall("bool mask", lambda c: with_inputs(c, mask=np.zeros(c.kind.hw, bool)), "mask"),
        BadCall("float mask", lambda c: with_inputs(c, mask=np.zeros(c.kind.hw, np.float32)), "mask"),
        BadCall(
            "unknown class id in the mask", lambda c: with_inputs(c, mask=c.kind.mask(np.full(c.kind.hw, 9))), "mask"
        ),
        OTHER_BANK_DTYPE,
    ),
    bad_inits=(
        BadInit("missing bank", {"bank": "/nonexistent/bank"}, "bank"),
        BadInit("max_defects", {"max_defects": 0}, "max_defects"),
        BadInit("weights", {"weights": [1.0, 2.0]}, "weights"),
        BadInit("flip_p", {"flip_p": 1.5}, "flip_p"),
        BadInit("bbox_label", {"bbox_label": "colour"}, "bbox_label"),
        BadInit("class_weights", {"class_weights": "loss"}, "class_weights"),
    ),
)


# ============================================================================================ anomaly transforms
#: Classes of the multi-hot masks the anomaly specs draw; class-index masks hold 1..3 and take ids up to 7.
ANOMALY_CLASSES = 3
ANOMALY_INDEX_CLASSES = 7


def anomaly_check(case: Case, out: dict[str, Any], labels: set[int], mask_class_id: int | None) -> int:
    """anomaly_label > 0 iff a pixel changed iff anomaly_mask is non-empty; every changed pixel is in it;
    the mask gets the anomaly only under ``mask_class_id``, and class_vector follows the mask."""
    label, anomaly = out[ad.ANOMALY_LABEL_KEY], out[ad.ANOMALY_MASK_KEY]
    assert isinstance(label, (int, np.integer)) and not isinstance(label, bool), f"anomaly_label {label!r}"
    _check_type(anomaly, bool, case.kind.hw, "anomaly_mask")
    assert int(label) in labels | {0}, f"anomaly_label {label} not in {sorted(labels | {0})}"
    assert (int(label) > 0) == bool(anomaly.any()), f"anomaly_label {label} but {int(anomaly.sum())} anomaly pixels"
    image_changed = changed(out["image"], case.kwargs["image"])
    assert bool(image_changed.any()) == (int(label) > 0), f"anomaly_label {label}: labelled iff a pixel changed"
    outside = image_changed & ~anomaly
    assert not outside.any(), f"{int(outside.sum())} changed pixels lie outside anomaly_mask"
    if "mask" in case.kwargs:
        mask = case.kwargs["mask"]
        expected = mask if mask_class_id is None else written(mask, anomaly, mask_class_id)
        assert_same(out["mask"], expected, f"mask (anomaly pixels written as mask_class_id={mask_class_id})")
        if ad.CLASS_VECTOR_KEY in case.kwargs:
            vector = case.kwargs[ad.CLASS_VECTOR_KEY]
            expected_vector = _multi_hot_of(classes_in(out["mask"]), vector.size)
            assert_same(out[ad.CLASS_VECTOR_KEY], expected_vector, "class_vector (re-derived from the mask)")
    for key in ("masks", "object_mask"):
        if key in case.kwargs:
            assert_same(out[key], case.kwargs[key], key)
    _unchanged_annotations(case, out)
    return int(label)


def _multi_hot_of(classes: set[int], num_classes: int) -> np.ndarray:
    vector = np.zeros(num_classes, np.float32)
    for c in classes:
        vector[c - 1] = 1.0
    return vector


def anomaly_defaults(case: Case) -> dict[str, Any]:
    return {ad.ANOMALY_LABEL_KEY: 0, ad.ANOMALY_MASK_KEY: np.zeros(case.kind.hw, bool)}


def _anomaly_targets(draw: Any, kind: ImageKind, min_box: int = 1) -> tuple[dict[str, Any], list[int | None]]:
    """Optional targets of an anomaly call, and the ``mask_class_id`` values its mask can take."""
    kwargs: dict[str, Any] = {}
    mask_kind = draw(st.sampled_from(["none", "classes", "bool", "multi-hot"]))
    index = rectangles_mask(kind.rng(2), kind.hw, draw(st.integers(0, 2)))
    class_ids: list[int | None] = [None, 1, ANOMALY_INDEX_CLASSES]
    classes = ANOMALY_INDEX_CLASSES
    if mask_kind == "classes":
        kwargs["mask"] = kind.mask(index)
    elif mask_kind == "bool":
        kwargs["mask"] = kind.arrange(index > 0)
        class_ids, classes = [None, 1], 1
    elif mask_kind == "multi-hot":
        kwargs["mask"] = kind.arrange(to_multi_hot(index, ANOMALY_CLASSES, draw(st.sampled_from([bool, np.uint8]))))
        class_ids, classes = [None, 1, ANOMALY_CLASSES], ANOMALY_CLASSES
    if "mask" in kwargs and draw(st.booleans()):
        kwargs[ad.CLASS_VECTOR_KEY] = _multi_hot_of(classes_in(kwargs["mask"]), classes)
    if draw(st.booleans()):
        kwargs["masks"] = [kind.mask(kind.rng(3 + i).integers(0, 2, kind.hw)) for i in range(2)]
    kwargs.update(_annotations(draw, kind, min_box=min_box))
    return kwargs, class_ids


#: Image contents of calls that must act (other seeds give other outputs): a flat image gives a
#: warp or a paste no pixel to change, so it is no anomaly.
ACTING_CONTENTS = ("noise",)


def _shrunk(case: Case, side: int) -> Case:
    """The case's image cut to side x side (spatial targets dropped)."""
    spatial = ("mask", "masks", "object_mask", "bboxes", LABEL_FIELD, "keypoints")
    return with_inputs(_without(case, *spatial), image=case.kwargs["image"][:side, :side])


@st.composite
def cropliq_cases(draw: Any, active: bool = False) -> Case:
    kind = draw(image_kinds(min_side=8, **({"contents": ACTING_CONTENTS} if active else {})))
    region = draw(st.sampled_from(["auto", "image", "mask", "bbox"]))
    targets, class_ids = _anomaly_targets(draw, kind, min_box=8 if region == "bbox" else 1)
    options = {
        "region": region,
        "warp": draw(st.sampled_from(["random", "push", "swirl", "bloat", "pinch", "strokes"])),
        "label": draw(st.sampled_from([1, 4])),
        "mask_class_id": draw(st.sampled_from(class_ids)),
    }
    kwargs: dict[str, Any] = {"image": kind.image(), **targets}
    if region == "bbox" and not kwargs.get("bboxes"):
        kwargs["bboxes"] = boxes(kind.rng(9), kind.hw, 1, 8)
        kwargs[LABEL_FIELD] = [HOST_BOX_LABEL]
    if region == "mask":
        h, w = kind.hw
        y0, x0 = draw(st.integers(0, h - 8)), draw(st.integers(0, w - 8))
        y1, x1 = draw(st.integers(y0 + 8, h)), draw(st.integers(x0 + 8, w))
        obj = np.zeros(kind.hw, draw(st.sampled_from([bool, np.uint8])))
        obj[y0:y1, x0:x1] = 1
        kwargs["object_mask"] = obj
    return Case(kwargs, options, kind)


def applied_anomaly_invariant(case: Case, out: dict[str, Any]) -> None:
    """The anomaly rules: an applied call writes its own ``label`` (0 only when no pixel changed)."""
    anomaly_check(case, out, {case.options["label"]}, case.options["mask_class_id"])


def anomaly_spec(cls: type, cases: Any, invariant: Any, bad_calls: tuple, bad_inits: tuple) -> Spec:
    """The spec of a per-sample anomaly transform built from its init options alone."""
    return Spec(
        cls=cls,
        build=lambda case, p, banks: cls(p=p, **case.options),
        cases=cases,
        invariant=invariant,
        defaults=anomaly_defaults,
        construct=lambda banks, **kw: cls(**kw),
        mask_slot=lambda case, mask: with_inputs(case, mask=mask),
        bad_calls=bad_calls,
        bad_inits=bad_inits,
    )


CROPLIQ = anomaly_spec(
    ad.CropLiq,
    cases=lambda active: cropliq_cases(active),
    invariant=applied_anomaly_invariant,
    bad_calls=(
        BadCall(
            "region='mask' without the object mask",
            lambda c: _replace(_without(c, "object_mask"), region="mask"),
            "object_mask",
        ),
        BadCall(
            "empty object mask",
            lambda c: _replace(with_inputs(c, object_mask=np.zeros(c.kind.hw, bool)), region="mask"),
            "object_mask",
        ),
        BadCall(
            "region='bbox' without boxes",
            lambda c: _replace(_without(c, "bboxes", LABEL_FIELD), region="bbox"),
            "bboxes",
        ),
        BadCall("image under 8x8", lambda c: _shrunk(c, 6), "image"),
    ),
    bad_inits=(
        BadInit("area_range", {"area_range": (0.0, 0.1)}, "area_range"),
        BadInit("aspect_range", {"aspect_range": (2.0, 1.0)}, "aspect_range"),
        BadInit("warp", {"warp": "melt"}, "warp"),
        BadInit("strength_range", {"strength_range": (0.5, 2.0)}, "strength_range"),
        BadInit("move_threshold", {"move_threshold": 0.0}, "move_threshold"),
        BadInit("region", {"region": "nowhere"}, "region"),
        BadInit("label", {"label": 0}, "label"),
    ),
)

#: Images at least this large fit every scar of CutPaste's default ranges.
SCAR_SIDE = 34


@st.composite
def cutpaste_cases(draw: Any, active: bool = False) -> Case:
    variant = draw(st.sampled_from(["normal", "scar"]))
    contents = {"contents": ACTING_CONTENTS} if active else {}
    kind = draw(image_kinds(min_side=SCAR_SIDE if variant == "scar" else 2, max_side=56, **contents))
    targets, class_ids = _anomaly_targets(draw, kind)
    options = {
        "variant": variant,
        "label": draw(st.sampled_from([1, 2])),
        "mask_class_id": draw(st.sampled_from(class_ids)),
    }
    kwargs: dict[str, Any] = {"image": kind.image(), **targets}
    return Case(kwargs, options, kind)


def cutpaste_invariant(case: Case, out: dict[str, Any]) -> None:
    applied_anomaly_invariant(case, out)
    if case.options["variant"] == "normal" and out[ad.ANOMALY_MASK_KEY].any():
        ys, xs = np.nonzero(out[ad.ANOMALY_MASK_KEY])
        area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        assert len(ys) == area, "the anomaly mask of a normal CutPaste is not a full rectangle"


CUTPASTE = anomaly_spec(
    ad.CutPaste,
    cases=lambda active: cutpaste_cases(active),
    invariant=cutpaste_invariant,
    bad_calls=(BadCall("scar larger than the image", lambda c: _replace(_shrunk(c, 20), variant="scar"), "image"),),
    bad_inits=(
        BadInit("variant", {"variant": "stripe"}, "variant"),
        BadInit("area_ratio_range", {"area_ratio_range": (0.5, 0.1)}, "area_ratio_range"),
        BadInit("aspect_ratio_range", {"aspect_ratio_range": (0.0, 1.0)}, "aspect_ratio_range"),
        BadInit("scar_width_range", {"scar_width_range": (0, 3)}, "scar_width_range"),
        BadInit("rotation_range", {"rotation_range": (-200.0, 0.0)}, "rotation_range"),
        BadInit("hue", {"hue": 0.9}, "hue"),
        BadInit("label", {"label": 0}, "label"),
    ),
)


def _synthesis(**kwargs: Any) -> ad.AnomalySynthesis:
    children = kwargs.pop("transforms", None)
    if children is None:
        children = [ad.CropLiq(region="image"), ad.CutPaste(), ad.CutPaste(variant="scar")]
    return ad.AnomalySynthesis(children, **kwargs)


@st.composite
def synthesis_cases(draw: Any, active: bool = False) -> Case:
    kind = draw(image_kinds(min_side=SCAR_SIDE, max_side=56, **({"contents": ACTING_CONTENTS} if active else {})))
    options = {
        "normal_p": 0.0 if active else draw(st.sampled_from([None, 0.0, 0.5])),
        "labels": draw(st.sampled_from([None, [1, 2, 2]])),
    }
    kwargs: dict[str, Any] = {"image": kind.image(), **_anomaly_targets(draw, kind)[0]}
    return Case(kwargs, options, kind)


def synthesis_invariant(case: Case, out: dict[str, Any]) -> None:
    anomaly_check(case, out, set(case.options["labels"] or [1, 2, 3]), mask_class_id=None)


ANOMALY_SYNTHESIS = Spec(
    cls=ad.AnomalySynthesis,
    build=lambda case, p, banks: _synthesis(p=p, **case.options),
    cases=lambda active: synthesis_cases(active),
    invariant=synthesis_invariant,
    defaults=anomaly_defaults,
    construct=lambda banks, **kw: _synthesis(**kw),
    mask_slot=lambda case, mask: with_inputs(case, mask=mask),
    bad_inits=(
        BadInit("no transforms", {"transforms": []}, "transforms"),
        BadInit("not an anomaly transform", {"transforms": [A.HorizontalFlip()]}, r"transforms\[0\]"),
        BadInit("labels count", {"labels": [1, 2]}, "labels"),
        BadInit("normal label among labels", {"labels": [0, 1, 2]}, "normal_label"),
        BadInit("normal_p", {"normal_p": 1.5}, "normal_p"),
        BadInit("p", {"p": -0.1}, "p"),
    ),
)


# ============================================================================================ DLI (batch)
@st.composite
def dli_cases(draw: Any, active: bool = False) -> Case:
    kind = draw(image_kinds(min_side=16, max_side=40))
    options = {
        "poisson_p": draw(st.sampled_from([0.0, 1.0])),
        "fill": "all" if active else draw(st.sampled_from(["all", "balance"])),
        "max_inject_fraction": 1.0 if active else draw(st.sampled_from([1.0, 0.5])),
        "placement": draw(st.sampled_from(["random", "source"])),
        "size_mode": draw(st.sampled_from(["relative", "absolute_crop"])),
    }
    disjoint = draw(st.booleans())
    count = draw(st.integers(1, 4))
    defects = [draw(st.integers(0, 2)) for _ in range(count)]
    if active:
        defects[draw(st.integers(0, count - 1))] = 0
    images = [kind.image(0.0, DARK_HIGH, salt=i) if disjoint else kind.image(salt=i) for i in range(count)]
    masks = [kind.mask(rectangles_mask(kind.rng(10 + i), kind.hw, n)) for i, n in enumerate(defects)]
    kwargs: dict[str, Any] = {"images": images, "masks": masks}
    if draw(st.booleans()):
        kwargs["labels"] = np.stack([_multi_hot(classes_in(m)) for m in masks])
    # DLI is called on a batch directly (its own seed) or inside A.Compose(seed=...): both are documented
    return Case(kwargs, options, kind, {"disjoint": disjoint, "direct": draw(st.booleans())})


def dli_invariant(case: Case, out: dict[str, Any]) -> None:
    """Per image: labels are the classes in its mask; injected pixels follow the injection rules; counts add up."""
    images, masks = case.kwargs["images"], case.kwargs["masks"]
    labels = out["labels"]
    _check_type(labels, np.uint8, (len(images), K), "labels")
    injections = out["injections"]
    assert len(injections) == len(images)
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        mask_out = out["masks"][i]
        assert classes_of_label(labels[i], K) == classes_in(mask_out), (
            f"labels[{i}] says {classes_of_label(labels[i], K)} but masks[{i}] holds {classes_in(mask_out)}"
        )
        if injections[i] is None:
            assert_same(out["images"][i], image, f"images[{i}] (not injected)")
            assert_same(mask_out, mask, f"masks[{i}] (not injected)")
            continue
        assert not classes_in(mask), f"images[{i}] held defects but was injected"
        assert classes_in(mask_out) == {injections[i]["class_id"]}, f"masks[{i}] holds {classes_in(mask_out)}"
        check_injection_pixels(
            image,
            out["images"][i],
            mask,
            mask_out,
            poisson=injections[i]["method"] == "poisson",
            blend_margin=2,
            disjoint=case.meta["disjoint"],
            what=f"DLI images[{i}]",
        )
    for key, held in (
        ("class_counts_before", [classes_in(m) for m in masks]),
        ("class_counts_after", [classes_of_label(row, K) for row in labels]),
    ):
        expected = {name: sum(c in s for s in held) for c, name in enumerate(BANK_CLASSES, 1)}
        assert out[key] == expected, f"{key} {out[key]} != {expected}"


def dli_defaults(case: Case) -> dict[str, Any]:
    masks = case.kwargs["masks"]
    counts = {name: sum(c in classes_in(m) for m in masks) for c, name in enumerate(BANK_CLASSES, 1)}
    labels = case.kwargs.get("labels")
    return {
        "labels": labels if labels is not None else np.stack([_multi_hot(classes_in(m)) for m in masks]),
        "injections": [None] * len(masks),
        "class_counts_before": counts,
        "class_counts_after": counts,
    }


def _first_mask(case: Case, mask: np.ndarray) -> Case:
    masks = list(case.kwargs["masks"])
    masks[0] = mask
    return _without(with_inputs(case, masks=masks), "labels")


def _dli_first_mask(case: Case, mask: np.ndarray) -> Case:
    """A.Compose stacks a ``masks`` list itself (failing first, in its words, on unequal sizes): call DLI directly."""
    changed_case = _first_mask(case, mask)
    return Case(changed_case.kwargs, changed_case.options, changed_case.kind, {**case.meta, "direct": True})


DLI = bank_spec(
    ad.DynamicLabelInjection,
    cases=lambda active: dli_cases(active),
    invariant=dli_invariant,
    defaults=dli_defaults,
    mask_slot=_dli_first_mask,
    batch=True,
    bad_calls=(
        OTHER_BANK_DTYPE,
        BadCall("a single image", lambda c: with_inputs(c, image=c.kwargs["images"][0]), "image"),
        BadCall("no masks", lambda c: _without(c, "masks", "labels"), "masks"),
        BadCall("unknown class id", lambda c: _first_mask(c, c.kind.mask(np.full(c.kind.hw, 9))), r"masks\[0\]"),
        BadCall(
            "labels that disagree with the masks",
            lambda c: with_inputs(
                _first_mask(c, c.kind.mask(np.ones(c.kind.hw))), labels=np.zeros((len(c.kwargs["masks"]), K), np.uint8)
            ),
            "labels",
        ),
    ),
    bad_inits=(
        BadInit("missing bank", {"bank": "/nonexistent/bank"}, "bank"),
        BadInit("unknown class", {"classes": ["nope"]}, "nope"),
        BadInit("poisson_p", {"poisson_p": 2.0}, "poisson_p"),
        BadInit("fill", {"fill": "most"}, "fill"),
        BadInit("max_inject_fraction", {"max_inject_fraction": 1.5}, "max_inject_fraction"),
        BadInit("blend_margin", {"blend_margin": -1}, "blend_margin"),
        BadInit("p", {"p": 2.0}, "p"),
    ),
)


# ============================================================================================ PoissonPaste
#: Donor objects carry classes 4..5 (host masks hold 0..3), so the final mask tells pasted pixels apart.
DONOR_CLASSES = (4, 5)
PASTE_KEY = "paste_metadata"


@st.composite
def poisson_paste_cases(draw: Any, active: bool = False) -> Case:
    kind = draw(image_kinds(min_side=16 if active else 4, max_side=40))
    options: dict[str, Any] = {
        "n": draw(st.sampled_from([1, [1, 3]] if active else [1, [1, 3], [0, 2]])),
        "blend": draw(st.sampled_from(["poisson", "paste", "random"])),
        "poisson_mode": draw(st.sampled_from(["normal", "mixed"])),
        "poisson_method": draw(st.sampled_from(["exact", "auto"])),
        "blend_margin": draw(st.sampled_from([0, 2])),
        "scale_range": draw(st.sampled_from([(1.0, 1.0), (0.5, 1.5)])),
        "hflip_p": draw(st.sampled_from([0.0, 0.5])),
        "num_classes": draw(st.sampled_from([None, 6])),
    }
    # Host pixels stay below half white, donors' objects above 3/4: a pasted pixel is told from the image.
    kwargs: dict[str, Any] = {"image": kind.image(0.0, 0.5)}
    rng = kind.rng(1)
    if draw(st.booleans()):
        kwargs["mask"] = kind.mask(rectangles_mask(kind.rng(2), kind.hw, draw(st.integers(0, 2))))
        if draw(st.booleans()):
            kwargs["class_vector"] = np.zeros(6, np.float32)
            kwargs["class_vector"][sorted(c - 1 for c in classes_in(kwargs["mask"]))] = 1
    if draw(st.booleans()):
        kwargs["masks"] = [kind.mask(rng.integers(0, 2, kind.hw)) for _ in range(2)]
    kwargs.update(_annotations(draw, kind))
    regions = ["image"] if active else ["image", "mask"] + (["bbox"] if "bboxes" in kwargs else [])
    options["region"] = draw(st.sampled_from(regions))
    if options["region"] == "mask":
        kwargs["object_mask"] = rectangles_mask(kind.rng(3), kind.hw, 2, classes=1).astype(bool)
    donors = []
    for d in range(draw(st.integers(1, 3))):
        limit = max(1, min(kind.hw) // 2) if active else 24
        hw = (draw(st.integers(1, limit)), draw(st.integers(1, limit)))
        gray = kind.channels is not None and draw(st.booleans())  # a one-channel donor into a colour host
        shape = hw if kind.channels is None or gray else (*hw, kind.channels)
        drng = np.random.default_rng([kind.seed, 10 + d])
        donor: dict[str, Any] = {"image": to_dtype(drng.uniform(0.75, 1.0, shape), kind.dtype)}
        mask = rectangles_mask(drng, hw, draw(st.integers(1, 2)), classes=1)
        donor["mask"] = mask.astype(draw(st.sampled_from([bool, np.uint8])))
        donor["class_id"] = draw(st.sampled_from(DONOR_CLASSES))
        if "masks" in kwargs:
            donor["masks"] = [np.full(hw, PARTNER_CLASS, kind.mask_dtype)] * 2
        if "bboxes" in kwargs and draw(st.booleans()):
            donor[LABEL_FIELD] = donor["class_id"]  # else the class id fills it
        donors.append(donor)
    kwargs[PASTE_KEY] = donors
    return Case(kwargs, options, kind)


def _new_and_host_boxes(case: Case, out: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    found, labels = _box_rows(out)
    new = labels < HOST_BOX_LABEL
    return found[new], labels[new], found[~new]


def poisson_paste_invariant(case: Case, out: dict[str, Any]) -> None:
    """Pasted pixels carry their labels: mask class, masks values, one tight box each; nothing else changes."""
    kind, options = case.kind, case.options
    h, w = kind.hw
    image = np.asarray(out["image"], np.float64).reshape(h, w, -1)
    from_donor = image.min(axis=2) >= 0.625 * white(kind.dtype)  # host <= 1/2, donors >= 3/4 white
    changed_pixels = changed(out["image"], case.kwargs["image"])
    pasted = None  # the visible object pixels, where the labels tell them
    if "masks" in case.kwargs:
        pasted = plane(out["masks"][0]) == PARTNER_CLASS
        for k, host in enumerate(case.kwargs["masks"]):
            expected = np.where(pasted, PARTNER_CLASS, plane(host)).astype(kind.mask_dtype)
            assert_same(plane(out["masks"][k]), expected, f"masks[{k}] (donor values exactly on the object pixels)")
    if "mask" in case.kwargs:
        mask_in, mask_out = plane(case.kwargs["mask"]), plane(out["mask"])
        by_mask = np.isin(mask_out, DONOR_CLASSES)
        pasted = by_mask if pasted is None else pasted
        assert_same(by_mask, pasted, "mask: donor classes exactly on the object pixels")
        assert_same(mask_out[~pasted], mask_in[~pasted], "mask away from the objects")
    if pasted is not None:
        allowed = dilate(pasted, options["blend_margin"]) if options["blend"] != "paste" else pasted
        outside = changed_pixels & ~allowed
        assert not outside.any(), f"{int(outside.sum())} image pixels changed away from the pasted objects"
        if options["blend"] == "paste":
            assert_same(from_donor, pasted, "cut-paste: the donor's pixels are exactly the labelled ones")
    if options["region"] == "mask":
        on_region = case.kwargs["object_mask"]
        assert not (from_donor & ~on_region).any() or options["blend"] != "paste", "a pasted pixel is off the region"
        if pasted is not None:
            assert not (pasted & ~on_region).any(), "an object landed off its region"
        assert_same(out["object_mask"], on_region, "object_mask (read only)")
    if options["num_classes"] is not None or "class_vector" in case.kwargs:
        vector = out["class_vector"]
        _check_type(vector, np.float32, (6,), "class_vector")
        if "mask" in case.kwargs:
            expected = np.zeros(6, np.float32)
            expected[sorted(c - 1 for c in classes_in(out["mask"]))] = 1
            assert_same(vector, expected, "class_vector (the classes of the final mask)")
    if "keypoints" in case.kwargs:
        assert_same(rows(out["keypoints"], 2), rows(case.kwargs["keypoints"], 2), "keypoints", approx=True)
    if "bboxes" in case.kwargs:
        new, labels, kept = _new_and_host_boxes(case, out)
        assert set(labels.astype(int).tolist()) <= set(DONOR_CLASSES), f"new boxes labelled {labels.tolist()}"
        footprint = pasted if pasted is not None else (from_donor if options["blend"] == "paste" else None)
        if footprint is not None:
            covered = np.zeros((h, w), bool)
            for box in np.rint(new).astype(int):
                x0, y0, x1, y1 = box
                inside = footprint[y0:y1, x0:x1]
                assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any(), (
                    f"new box {box.tolist()} is not tight around pasted pixels"
                )
                covered[y0:y1, x0:x1] = True
            assert not (footprint & ~covered).any(), "pasted pixels outside every new box"
        given = rows(case.kwargs["bboxes"], 4)
        dropped = [b for b in given if not any(np.allclose(b, k, atol=1e-3) for k in kept)]
        for box in dropped:  # only an input box the objects cover entirely may go
            x0, y0, x1, y1 = np.rint(box).astype(int)
            assert pasted is None or pasted[y0:y1, x0:x1].all(), f"input box {box.tolist()} dropped while visible"


def poisson_paste_defaults(case: Case) -> dict[str, Any]:
    if case.options["num_classes"] is None or "class_vector" in case.kwargs:
        return {}
    vector = np.zeros(6, np.float32)
    if "mask" in case.kwargs:
        vector[sorted(c - 1 for c in classes_in(case.kwargs["mask"]))] = 1
    return {"class_vector": vector}


def _donor_change(case: Case, **changes: Any) -> Case:
    return with_inputs(case, **{PASTE_KEY: [{**d, **changes} for d in case.kwargs[PASTE_KEY]]})


def _donors_without(case: Case, key: str) -> Case:
    return with_inputs(case, **{PASTE_KEY: [{k: v for k, v in d.items() if k != key} for d in case.kwargs[PASTE_KEY]]})


POISSON_PASTE = Spec(
    cls=ad.PoissonPaste,
    build=lambda case, p, banks: ad.PoissonPaste(p=p, **case.options),
    cases=lambda active: poisson_paste_cases(active),
    invariant=poisson_paste_invariant,
    defaults=poisson_paste_defaults,
    construct=lambda banks, **kw: ad.PoissonPaste(**kw),
    mask_slot=lambda case, mask: _without(with_inputs(case, mask=mask), "class_vector"),
    bad_calls=(
        BadCall("no donors", lambda c: _without(c, PASTE_KEY), PASTE_KEY, on_any_input=True),
        BadCall(
            "donor of another dtype",
            lambda c: _donor_change(c, image=_other_dtype(c.kwargs[PASTE_KEY][0]["image"])),
            r"paste_metadata\[\d\]\['image'\]",
            on_any_input=True,
        ),
        BadCall(
            "donor mask of another size",
            lambda c: _donor_change(c, mask=np.ones((50, 50), bool)),
            r"paste_metadata\[\d\]\['mask'\]",
            on_any_input=True,
        ),
        BadCall(
            "donor without a class id for a host mask",
            lambda c: _donors_without(with_inputs(c, mask=np.zeros(c.kind.hw, np.uint8)), "class_id"),
            "class_id",
            on_any_input=True,
        ),
        BadCall(
            "class id beyond num_classes",
            lambda c: _replace(_donor_change(c, class_id=7), num_classes=6),
            "class_id",
            on_any_input=True,
        ),
        BadCall(
            "host masks without donor masks",
            lambda c: _donors_without(with_inputs(c, masks=[np.zeros(c.kind.hw, np.uint8)]), "masks"),
            "masks",
            on_any_input=True,
        ),
        BadCall(
            "region='mask' without the region mask",
            lambda c: _replace(_without(c, "object_mask"), region="mask"),
            "object_mask",
            on_any_input=True,
        ),
    ),
    bad_inits=(
        BadInit("n", {"n": -1}, "n"),
        BadInit("blend", {"blend": "blur"}, "blend"),
        BadInit("poisson_p", {"poisson_p": 1.5}, "poisson_p"),
        BadInit("poisson_method", {"poisson_method": "opencv"}, "poisson_method"),
        BadInit("scale_range", {"scale_range": (0.0, 1.0)}, "scale_range"),
        BadInit("blend_margin", {"blend_margin": -1}, "blend_margin"),
        BadInit("region", {"region": "nowhere"}, "region"),
        BadInit("num_classes", {"num_classes": 0}, "num_classes"),
        BadInit("p", {"p": 2.0}, "p"),
    ),
)


# ============================================================================================ BatchCompose
@st.composite
def batch_cases(draw: Any, active: bool = False) -> Case:
    container = draw(st.sampled_from(["list", "array"]))
    low = 8 if active else 2  # on tiny images lambda takes so few values that five seeds may agree
    kind = draw(image_kinds(min_side=low, max_side=40))
    options = {
        "box": draw(st.sampled_from(["beta", "square", "fixed"])),
        "num_classes": draw(st.sampled_from([None, 4])),
    }
    count = draw(st.integers(1, 4))
    sizes = [kind.hw] * count
    if container == "list":
        sizes = [(draw(st.integers(low, 40)), draw(st.integers(low, 40))) for _ in range(count)]
    images = [kind.image(salt=i, hw=hw) for i, hw in enumerate(sizes)]
    # Every sample's mask is its index + 1 everywhere, so a pixel's mask value names its source sample.
    masks = [kind.mask(np.full(hw, i + 1)) for i, hw in enumerate(sizes)]
    kwargs: dict[str, Any] = {
        "images": images if container == "list" else np.stack(images),
        "masks": masks if container == "list" else np.stack(masks),
    }
    if options["num_classes"] is not None:
        kwargs["labels"] = [draw(st.integers(0, 3)) for _ in range(count)]
    if draw(st.booleans()):
        per_sample = [boxes(kind.rng(20 + i), hw, draw(st.integers(0, 2))) for i, hw in enumerate(sizes)]
        kwargs["bboxes"] = per_sample
        kwargs[LABEL_FIELD] = [[HOST_BOX_LABEL + i] * len(b) for i, b in enumerate(per_sample)]
    if draw(st.booleans()):
        kwargs["keypoints"] = [keypoints(kind.rng(30 + i), hw, draw(st.integers(0, 2))) for i, hw in enumerate(sizes)]
    return Case(kwargs, options, kind, {"container": container})


def _batch_compose(case: Case, p: float) -> ad.BatchCompose:
    params: dict[str, Any] = {}
    if "bboxes" in case.kwargs:
        params["bbox_params"] = bbox_params(label_fields=[LABEL_FIELD])
    if "keypoints" in case.kwargs:
        params["keypoint_params"] = keypoint_params()
    return ad.BatchCompose([ad.ContextMix(p=1.0, min_box_side=1, **case.options)], p=p, **params)


def batch_invariant(case: Case, out: dict[str, Any]) -> None:
    """Per sample: lambda_B is the fraction of the partner's pixels (told by the mask values); host pixels stay."""
    images = case.kwargs["images"]
    count = len(images)
    partners = out["partner_indices"]
    _check_type(partners, partners.dtype, (count, 1), "partner_indices")
    weights = out["mix_weights"]
    assert np.shape(weights) == (count, 2), f"mix_weights shape {np.shape(weights)}"
    if case.meta["container"] == "list":
        assert isinstance(out["images"], list) and isinstance(out["masks"], list), "a list batch came back as an array"
    for i in range(count):
        j = int(partners[i, 0])
        mask = plane(out["masks"][i])
        assert set(np.unique(mask).tolist()) <= {i + 1, j + 1}, f"masks[{i}] holds {np.unique(mask)}"
        if j != i:
            fraction = float((mask == j + 1).mean())
            assert abs(fraction - float(weights[i][1])) <= 1e-6, (
                f"sample {i}: lambda_B={float(weights[i][1]):.6f} but {fraction:.6f} of its pixels are sample {j}'s"
            )
            assert not changed(out["images"][i], images[i])[mask == i + 1].any(), f"images[{i}]: host pixels changed"
        if case.options["num_classes"] is not None:
            expected = np.zeros(4)
            expected[case.kwargs["labels"][i]] += weights[i][0]
            expected[case.kwargs["labels"][j]] += weights[i][1]
            assert np.allclose(out["soft_label"][i], expected, atol=1e-6), f"soft_label[{i}]"


def batch_defaults(case: Case) -> dict[str, Any]:
    return {"partner_indices": np.arange(len(case.kwargs["images"]))[:, None]}


BATCH_COMPOSE = Spec(
    cls=ad.BatchCompose,
    build=lambda case, p, banks: _batch_compose(case, p),
    cases=lambda active: batch_cases(active),
    invariant=batch_invariant,
    defaults=batch_defaults,
    construct=lambda banks, **kw: ad.BatchCompose(**{"transforms": [ad.ContextMix(p=1.0)], **kw}),
    mask_slot=_first_mask,
    batch=True,
    own_compose=True,
    bad_calls=(
        BadCall("empty batch", lambda c: _replace(c, {"images": []}), "images"),
        BadCall(
            "labels of another length", lambda c: with_inputs(c, labels=[0] * (len(c.kwargs["images"]) + 1)), "labels"
        ),
        BadCall("a per-sample key", lambda c: with_inputs(c, label=[0] * len(c.kwargs["images"])), "labels"),
        BadCall(
            "partners passed in",
            lambda c: with_inputs(c, contextmix_metadata=[[]] * len(c.kwargs["images"])),
            "contextmix_metadata",
        ),
    ),
    bad_inits=(
        BadInit("a single transform", {"transforms": ad.ContextMix()}, "transforms"),
        BadInit("num_partners", {"num_partners": 0}, "num_partners"),
        BadInit("p", {"p": 1.5}, "p"),
    ),
)


# ============================================================================================ SyncLabels
@st.composite
def sync_cases(draw: Any, active: bool = False) -> Case:
    kind = draw(image_kinds(min_side=1))
    options = {"num_classes": draw(st.sampled_from([None, K])), "normal_label": draw(st.sampled_from([0, 5]))}
    rng = kind.rng(4)
    index = rectangles_mask(kind.rng(2), kind.hw, draw(st.integers(0, 2)))
    kwargs: dict[str, Any] = {"image": kind.image()}
    kwargs["mask"] = kind.mask(index) if draw(st.booleans()) else kind.arrange(to_multi_hot(index, K, kind.mask_dtype))
    if draw(st.booleans()):  # a stale label: SyncLabels re-derives it
        kwargs[ad.CLASS_VECTOR_KEY] = rng.integers(0, 2, K).astype(np.float32)
    if draw(st.booleans()):
        kwargs[ad.ANOMALY_MASK_KEY] = rng.random(kind.hw) < draw(st.sampled_from([0.0, 0.3]))
        kwargs[ad.ANOMALY_LABEL_KEY] = draw(st.sampled_from([0, 2]))
    kwargs.update(_annotations(draw, kind))
    return Case(kwargs, options, kind)


def sync_invariant(case: Case, out: dict[str, Any]) -> None:
    """Targets pass through; class_vector is the final mask's classes; an empty anomaly mask means normal."""
    for key in ("image", "mask", ad.ANOMALY_MASK_KEY):
        if key in case.kwargs:
            assert_same(out[key], case.kwargs[key], key)
    _unchanged_annotations(case, out)
    mask = case.kwargs["mask"]
    known = case.options["num_classes"] is not None or ad.CLASS_VECTOR_KEY in case.kwargs or is_multi_hot(mask)
    if known:
        expected = _multi_hot_of(classes_in(mask), K)
        assert_same(out[ad.CLASS_VECTOR_KEY], expected, "class_vector (from the mask)")
    else:
        assert ad.CLASS_VECTOR_KEY not in out, "class_vector written without knowing K"
    if ad.ANOMALY_MASK_KEY in case.kwargs:
        empty = not case.kwargs[ad.ANOMALY_MASK_KEY].any()
        expected = case.options["normal_label"] if empty else case.kwargs[ad.ANOMALY_LABEL_KEY]
        assert out[ad.ANOMALY_LABEL_KEY] == expected, f"anomaly_label {out[ad.ANOMALY_LABEL_KEY]} != {expected}"


SYNC_LABELS = Spec(
    cls=ad.SyncLabels,
    build=lambda case, p, banks: ad.SyncLabels(p=p, **case.options),
    cases=lambda active: sync_cases(active),
    invariant=sync_invariant,
    defaults=lambda case: {},
    construct=lambda banks, **kw: ad.SyncLabels(**kw),
    reads_images=False,
    draws=False,
    bad_calls=(
        BadCall(
            "a class beyond num_classes",
            lambda c: _replace(with_inputs(c, mask=c.kind.mask(np.full(c.kind.hw, K + 1))), num_classes=K),
            "mask",
            on_any_input=True,
        ),
    ),
    bad_inits=(
        BadInit("num_classes", {"num_classes": 0}, "num_classes"),
        BadInit("label_key", {"label_key": ""}, "label_key"),
    ),
)


#: Every exported transform and compose, by class name.
SPECS: dict[str, Spec] = {
    spec.name: spec
    for spec in (
        CONTEXTMIX,
        INJECT_DEFECT,
        GUIDED_CROP,
        CROPLIQ,
        CUTPASTE,
        ANOMALY_SYNTHESIS,
        DLI,
        BATCH_COMPOSE,
        POISSON_PASTE,
        SYNC_LABELS,
    )
}

#: Exported bases that are not transforms themselves (each must have an exported subclass with a spec).
ABSTRACT_BASES: tuple[str, ...] = ("DefectTransform",)
