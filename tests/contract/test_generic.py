"""The generic checks albumentations runs on its own transforms, run over every transform we export.

From albumentations' own test suite (tests/test_serialization.py, test_core.py, test_transforms.py,
test_augmentations.py), applied to every spec in ``specs.SPECS`` with hypothesis-drawn inputs:

- serialization: ``A.to_dict`` / ``A.from_dict``, and ``A.save`` / ``A.load`` as JSON, give a
  pipeline with identical outputs (YAML is checked by test_contract.py); so do ``pickle`` and
  ``copy.deepcopy`` (DataLoader workers started by ``spawn`` receive pickled pipelines);
- ``additional_targets``: an extra ``image`` and ``mask`` target given the same arrays come back equal
  to ``image`` / ``mask``, declared at construction or through ``add_targets``; an extra mask target
  marked with a value no transform writes keeps it (it is moved, not re-rendered from ``mask``);
- ``ReplayCompose``: replaying a recorded call reproduces it, also nested in ``OneOf``;
- non-contiguous inputs (strided and reversed views) give C-contiguous outputs, apart from an input
  passed through untouched (read-only and non-contiguous inputs are drawn throughout test_contract.py);
- targets: ``images=`` (several frames, one draw) keeps each frame's dtype and shape; ``masks`` as a
  list and as a stacked array give the same result; empty ``bboxes`` / ``keypoints`` arrays stay empty
  (apart from boxes a transform adds for what it pasted).

Checks that do not apply to a kind of transform are listed in :data:`NOT_APPLICABLE` with the reason.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

import albumentations as A
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from albu_defects import IS_ALBUMENTATIONS_X

from .compat import bbox_params, keypoint_params, rows
from .data import LABEL_FIELD, assert_same, freeze
from .specs import SPECS, Case, Spec, pipeline, with_inputs
from .test_contract import budget

#: Examples run per (transform, check), read by the fuzz report through conftest.
GENERIC_COUNTS: dict[str, dict[str, int]] = {}
SEEDS = st.integers(0, 2**31 - 2)
ANNOTATION_KEYS = {"bboxes", "keypoints", LABEL_FIELD}
#: A mask value no transform writes (class ids are 1..3 in the test banks, at most 9 in partners).
SENTINEL = 200
BATCH_SPECS = {name for name, spec in SPECS.items() if spec.batch}
#: (check, transform kind) pairs that do not apply, and why.
NOT_APPLICABLE: dict[str, str] = {
    "per-sample targets": "batch transforms (DynamicLabelInjection, BatchCompose) take images=/masks= as the batch",
    "replay of BatchCompose": "BatchCompose is a compose of its own with its own processors, not a child of one",
}

spec_params = pytest.mark.parametrize("spec", list(SPECS.values()), ids=list(SPECS))
per_sample_params = pytest.mark.parametrize(
    "spec", [s for s in SPECS.values() if not s.batch], ids=[n for n, s in SPECS.items() if not s.batch]
)


def run(spec: Spec, name: str, examples: int, strategy: Any, body: Callable[..., None]) -> None:
    counts = GENERIC_COUNTS.setdefault(spec.name, {})

    @settings(max_examples=examples)
    @given(strategy)
    def prop(drawn: Any) -> None:
        counts[name] = counts.get(name, 0) + 1
        case, *rest = drawn
        body(case if spec.batch else stacked_masks(case), *rest)

    prop()


def stacked_masks(case: Case) -> Case:
    """AlbumentationsX takes ``masks`` as one stacked array only (albumentations 2.0.8 also a list)."""
    masks = case.kwargs.get("masks")
    if IS_ALBUMENTATIONS_X and isinstance(masks, list) and masks:
        return with_inputs(case, masks=np.stack([np.asarray(m) for m in masks]))
    return case


def same_outputs(actual: dict[str, Any], expected: dict[str, Any], what: str) -> None:
    actual, expected = dict(actual), dict(expected)
    actual.pop("replay", None)
    expected.pop("replay", None)
    assert set(actual) == set(expected), f"{what}: keys {sorted(actual)} != {sorted(expected)}"
    for key in expected:
        assert_same(actual[key], expected[key], f"{what}: output[{key!r}]", approx=key in ANNOTATION_KEYS)


# ============================================================================================ serialization
@spec_params
def test_dict_json_pickle_and_deepcopy_round_trips_give_identical_outputs(spec, banks, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"json_{spec.name}")

    def body(case: Case, seed: int) -> None:
        freeze(case.kwargs)
        original = pipeline(spec, case, 1.0, seed, banks)
        path = folder / "pipeline.json"
        A.save(original, str(path), data_format="json")
        loaded = {
            "A.from_dict(A.to_dict(...))": A.from_dict(A.to_dict(original)),
            "A.load of a JSON file": A.load(str(path), data_format="json"),
        }
        for other in loaded.values():
            other.set_random_seed(seed)  # albumentations 2.0.8 saves no seed
        # pickled / copied before any call: they carry the seeded random state
        loaded["pickle"] = pickle.loads(pickle.dumps(original))
        loaded["copy.deepcopy"] = copy.deepcopy(original)
        for call in range(2):
            expected = original(**case.kwargs)
            for how, other in loaded.items():
                same_outputs(other(**case.kwargs), expected, f"{how}, call {call + 1}")

    run(spec, "dict/json/pickle", budget(6, 0.05), st.tuples(spec.cases(False), SEEDS), body)


# ============================================================================================ additional targets
def _with_partner_targets(case: Case, extra: dict[str, str]) -> Case:
    """ContextMix partners carry every extra target too (a copy of their image / mask)."""
    partners = case.kwargs.get("contextmix_metadata")
    if not partners:
        return case
    changed = []
    for partner in partners:
        partner = dict(partner)
        for key, kind in extra.items():
            if kind in partner:
                partner[key] = np.array(partner[kind], copy=True)
        changed.append(partner)
    return with_inputs(case, contextmix_metadata=changed)


def _compose(spec: Spec, case: Case, seed: int, banks: Any, **params: Any) -> A.Compose:
    if "bboxes" in case.kwargs:
        params["bbox_params"] = bbox_params(label_fields=[LABEL_FIELD])
    if "keypoints" in case.kwargs:
        params["keypoint_params"] = keypoint_params()
    return A.Compose([spec.build(case, 1.0, banks)], seed=seed, **params)


@per_sample_params
def test_additional_image_and_mask_targets_come_back_like_image_and_mask(spec, banks):
    def body(case: Case, seed: int) -> None:
        extra = {"image2": "image", **({"mask2": "mask"} if "mask" in case.kwargs else {})}
        case = _with_partner_targets(case, extra)
        inputs = {**case.kwargs, **{key: np.array(case.kwargs[kind], copy=True) for key, kind in extra.items()}}
        declared = _compose(spec, case, seed, banks, additional_targets=extra, strict=True)
        added = _compose(spec, case, seed, banks, strict=True)
        added.add_targets(extra)
        for how, compose in (("additional_targets=", declared), ("add_targets()", added)):
            out = compose(**inputs)
            for key, kind in extra.items():
                assert_same(out[key], out[kind], f"{how}: output[{key!r}] given the same array as {kind!r}")

    run(spec, "additional targets", budget(6, 0.05), st.tuples(spec.cases(False), SEEDS), body)


def _sentinel_grid(mask: np.ndarray) -> np.ndarray:
    """A mask like ``mask`` (shape, dtype) holding SENTINEL on every third row and column, else 0."""
    grid = np.zeros(mask.shape, mask.dtype)
    grid[::3, ::3] = SENTINEL
    return grid


@per_sample_params
def test_an_extra_mask_target_is_moved_not_re_rendered_from_mask(spec, banks):
    def body(case: Case, seed: int) -> None:
        if "mask" not in case.kwargs or case.kwargs["mask"].dtype == bool:
            return
        case = _with_partner_targets(case, {"mask2": "mask"})
        partners = case.kwargs.get("contextmix_metadata")
        if partners:  # partners' own extra target: all background, so pasting a partner writes no SENTINEL
            case = with_inputs(case, contextmix_metadata=[{**p, "mask2": np.zeros_like(p["mask"])} for p in partners])
        grid = _sentinel_grid(np.asarray(case.kwargs["mask"]))
        out = _compose(spec, case, seed, banks, additional_targets={"mask2": "mask"})(**case.kwargs, mask2=grid)
        moved = np.asarray(out["mask2"])
        assert moved.shape == grid.shape and moved.dtype == grid.dtype, f"mask2 came back {moved.dtype} {moved.shape}"
        if float(np.asarray(out.get("mix_weights", [1.0, 0.0]))[1]) < 1.0:  # unless a partner covered it all
            assert (moved == SENTINEL).any(), "mask2 lost every marked pixel: it was re-rendered, not moved"
        foreign = set(np.unique(moved).tolist()) - {0, SENTINEL} - set(range(1, 10))
        assert not foreign, f"mask2 holds values {sorted(foreign)} that are neither its own nor class ids"

    run(spec, "extra mask moved", budget(6, 0.05), st.tuples(spec.cases(False), SEEDS), body)


# ============================================================================================ replay
REPLAY_SPECS = [pytest.param(spec, id=name) for name, spec in SPECS.items() if not spec.own_compose]


@pytest.mark.parametrize("spec", REPLAY_SPECS)
def test_replay_compose_reproduces_a_recorded_call(spec, banks):
    def body(case: Case, seed: int, nested: bool) -> None:
        freeze(case.kwargs)
        params: dict[str, Any] = {}
        if "bboxes" in case.kwargs:
            params["bbox_params"] = bbox_params(label_fields=[LABEL_FIELD])
        if "keypoints" in case.kwargs:
            params["keypoint_params"] = keypoint_params()
        transform = spec.build(case, 1.0, banks)
        if nested and not spec.batch:  # albumentations' test_deterministic_oneof, with ours always chosen
            # (a OneOf that picks another child skips ours and its keys: test_composition's known failure)
            transform = A.OneOf([transform], p=1.0)
        recorder = A.ReplayCompose([transform], **params)
        recorder.set_random_seed(seed)
        recorded = recorder(**case.kwargs)
        replayed = A.ReplayCompose.replay(recorded["replay"], **case.kwargs)
        same_outputs(replayed, recorded, "replay")

    run(spec, "replay", budget(6, 0.05), st.tuples(spec.cases(False), SEEDS, st.booleans()), body)


# ============================================================================================ memory layout
def _arrays(value: Any, path: str) -> list[tuple[str, np.ndarray]]:
    if isinstance(value, np.ndarray) and value.ndim >= 2:
        return [(path, value)]
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], np.ndarray):
        return [(f"{path}[{i}]", v) for i, v in enumerate(value) if isinstance(v, np.ndarray) and v.ndim >= 2]
    return []


@spec_params
def test_non_contiguous_inputs_give_contiguous_outputs(spec, banks):
    def body(case: Case, seed: int) -> None:
        out = pipeline(spec, case, 1.0, seed, banks)(**case.kwargs)
        inputs = [a for key in ("image", "images", "mask", "masks") for _, a in _arrays(case.kwargs.get(key), key)]
        for key in ("image", "images", "mask", "masks"):
            for path, array in _arrays(out.get(key), key):
                if any(np.shares_memory(array, given) for given in inputs):
                    continue  # an input passed through untouched (as albumentations' NoOp does)
                assert array.flags["C_CONTIGUOUS"], f"{path} is not C-contiguous (input view: {case.kind.view})"

    run(spec, "contiguous outputs", budget(6, 0.05), st.tuples(spec.cases(False), SEEDS), body)


# ============================================================================================ targets
_FRAME_KEYS = ("image", "mask", "masks", "bboxes", LABEL_FIELD, "keypoints")


@per_sample_params
def test_images_as_target_keep_every_frames_dtype_and_shape(spec, banks):
    def body(case: Case, seed: int) -> None:
        if case.options.get("region") == "bbox":
            return  # CropLiq region="bbox" needs boxes, which frames do not carry
        image = np.asarray(case.kwargs["image"])
        frames = np.stack([image, image[::-1]])
        inputs = {k: v for k, v in case.kwargs.items() if k not in _FRAME_KEYS}
        partners = inputs.get("contextmix_metadata")
        if partners:
            inputs["contextmix_metadata"] = [
                {"image": p["image"], **({"label": p["label"]} if "label" in p else {})} for p in partners
            ]
        out = A.Compose([spec.build(case, 1.0, banks)], seed=seed)(images=frames, **inputs)
        images = out["images"]
        assert len(images) == 2, f"images came back with {len(images)} frames"
        for i, frame in enumerate(images):
            frame = np.asarray(frame)
            assert frame.dtype == image.dtype and frame.shape == image.shape, (
                f"images[{i}] came back {frame.dtype} {frame.shape}, expected {image.dtype} {image.shape}"
            )

    run(spec, "images target", budget(5, 0.05), st.tuples(spec.cases(False), SEEDS), body)


@pytest.mark.skipif(IS_ALBUMENTATIONS_X, reason="AlbumentationsX takes masks as one stacked array only")
@per_sample_params
def test_masks_as_a_list_or_a_stacked_array_give_the_same_result(spec, banks):
    def body(case: Case, seed: int) -> None:
        if "masks" not in case.kwargs:
            return
        as_list = with_inputs(case, masks=[np.asarray(m) for m in case.kwargs["masks"]])
        as_array = with_inputs(case, masks=np.stack([np.asarray(m) for m in case.kwargs["masks"]]))
        a = pipeline(spec, as_list, 1.0, seed, banks)(**as_list.kwargs)
        b = pipeline(spec, as_array, 1.0, seed, banks)(**as_array.kwargs)
        assert_same(np.stack([np.asarray(m) for m in a["masks"]]), np.asarray(b["masks"]), "masks (list vs array)")
        for key in set(a) - {"masks"}:
            assert_same(a[key], b[key], f"output[{key!r}] (masks as a list vs an array)", approx=key in ANNOTATION_KEYS)

    run(spec, "masks list/array", budget(5, 0.05), st.tuples(spec.cases(False), SEEDS), body)


@per_sample_params
def test_empty_bboxes_and_keypoints_stay_empty(spec, banks):
    def body(case: Case, seed: int) -> None:
        if case.options.get("region") == "bbox":
            return  # CropLiq region="bbox" needs a box (a documented ValueError, test_contract.py)
        no_boxes = {"bboxes": np.zeros((0, 4), np.float32), LABEL_FIELD: [], "keypoints": np.zeros((0, 2), np.float32)}
        empty = with_inputs(case, **no_boxes)
        if "contextmix_metadata" in case.kwargs:  # partners must carry the same (empty) annotations
            empty = with_inputs(
                empty, contextmix_metadata=[{**p, **no_boxes} for p in case.kwargs["contextmix_metadata"]]
            )
        out = pipeline(spec, empty, 1.0, seed, banks)(**empty.kwargs)
        assert rows(out["keypoints"], 2).shape == (0, 2), f"keypoints {out['keypoints']} from no keypoints"
        found = rows(out["bboxes"], 4)
        labels = np.asarray(out[LABEL_FIELD], np.float64).ravel()
        assert len(labels) == len(found), f"{len(found)} boxes but {len(labels)} labels"
        new = (labels >= 1) & (labels < 100)  # boxes a transform added for what it pasted (class ids)
        assert new.all(), f"boxes {found[~new].tolist()} labelled {labels[~new].tolist()} from no boxes"

    run(spec, "empty annotations", budget(5, 0.05), st.tuples(spec.cases(False), SEEDS), body)
