"""The composition contract: whole pipelines of our transforms and albumentations built-ins.

Each property draws random pipelines (:mod:`.pipelines`: 2-5 steps from every exported per-sample
transform and the built-ins flips, ``Affine``, ``RandomCrop``, ``PadIfNeeded``, ``ColorJitter``,
some nested in ``Sequential`` / ``OneOf``, ``SyncLabels`` where the label model asks for it, then
``Normalize`` / ``ToTensorV2``) on gray and RGB uint8 / uint16 / float32 images with ``mask``,
``masks``, an extra mask target, boxes and keypoints, and checks:

- **end to end** (under ``strict=True``, so every documented input key must be accepted): no input
  is mutated (inputs are read-only); every output has the expected type, dtype and size; float32
  images stay in [0, 1]; ``class_vector`` is exactly the classes of the final ``mask``; the mask
  holds no class that neither the input nor a step put there (pseudo-anomalies stay out of it
  unless given a ``mask_class_id``); ``anomaly_label`` is set iff ``anomaly_mask`` is non-empty;
  mixing weights sum to 1; boxes and keypoints stay in the image, and a box a transform added holds
  its class; an anomaly from an earlier step survives a later one of ours wherever the image is
  left alone;
- **extra mask targets**: ``additional_targets={"roi": "mask"}`` given the mask's own content comes
  back equal to ``mask``; given another mask it comes back as ``mask`` would, from a replay with the
  two swapped; marked with a value no step writes, marked pixels survive (moved, not re-rendered);
- **replay**: ``A.ReplayCompose.replay`` of a recorded call reproduces image, masks and every label;
- **seeds**: ``albu_defects.seed_pipeline(pipeline, s)`` (and albumentations' own ``Compose(seed)``)
  reproduce the stream call after call, and every call returns the same keys (a DataLoader collates
  them); after ``seed_pipeline`` every pair of same-``p`` decisions
  in the tree is independent (all four combinations appear), which albumentations 2.0.8's own
  ``Compose(seed)`` does not give (measured below); ``pytorch.worker_init_fn`` gives every
  DataLoader worker such a stream, reproducible from the DataLoader's seed;
- **batches**: ``BatchCompose`` over random per-sample steps keeps every sample's labels true.

Budgets: modest under the ``ci`` profile; thousands of examples under ``HYPOTHESIS_PROFILE=fuzz``
(``benchmarks/fuzz_contract.py`` runs it and records the counts in benchmarks/RESULTS.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import albumentations as A
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import albu_defects as ad
from albu_defects import IS_ALBUMENTATIONS_X
from albu_defects.core.transform import SKIPPED_CALL

from .compat import bbox_params
from .data import LABEL_FIELD, assert_same, changed, freeze
from .pipelines import (
    BATCH_TRANSFORMS,
    RECIPES,
    ROI,
    SYNC,
    K,
    PipelineCase,
    Step,
    check_labels,
    check_outputs,
    incoming_anomaly_cases,
    inputs_copy,
    other_mask,
    pipeline_cases,
    to_numpy,
)
from .test_contract import budget, exported_transforms

torch = pytest.importorskip("torch")

#: Examples run per property (read by the fuzz report through conftest).
COMPOSITION_COUNTS: dict[str, int] = {}
SEEDS = st.integers(0, 2**31 - 2)
#: Output keys albumentations may convert (formats, containers): compared within 1e-3.
ANNOTATION_KEYS = {"bboxes", "keypoints", LABEL_FIELD}
#: A mask value no step writes (class ids are 1..3, partners' at most 3).
SENTINEL = 200


def run(name: str, examples: int, strategy: Any, body: Callable[..., None]) -> None:
    @settings(max_examples=examples)
    @given(strategy)
    def prop(drawn: Any) -> None:
        COMPOSITION_COUNTS[name] = COMPOSITION_COUNTS.get(name, 0) + 1
        body(*drawn)

    prop()


def assert_same_outputs(actual: dict[str, Any], expected: dict[str, Any], what: str) -> None:
    actual, expected = to_numpy(actual), to_numpy(expected)
    actual.pop("replay", None)
    expected.pop("replay", None)
    assert set(actual) == set(expected), f"{what}: keys {sorted(actual)} != {sorted(expected)}"
    for key in expected:
        assert_same(actual[key], expected[key], f"{what}: output[{key!r}]", approx=key in ANNOTATION_KEYS)


# ============================================================================================ coverage
def test_every_exported_transform_is_drawn():
    """Every exported transform is a pipeline step (a recipe), a batch pipeline, or the final SyncLabels."""
    concrete = set(exported_transforms()) - {"DefectTransform"}
    covered = set(RECIPES) | set(BATCH_TRANSFORMS) | {SYNC}
    missing = sorted(concrete - covered)
    assert not missing, (
        f"exported transforms no pipeline draws (add a recipe to tests/contract/pipelines.py): {missing}"
    )
    assert SYNC in concrete, "albu_defects.SyncLabels (the label model's final transform) is not exported"


# ============================================================================================ end to end
def case_features(case: PipelineCase) -> set[str]:
    """What one random pipeline exercises: its steps, built-ins, dtype, mask kind and wrappers."""
    features = {leaf.label.split("(")[0] for leaf in case.leaves} | set(case.tail) | {case.kind.dtype.__name__}
    features |= {f"{case.mask_format} mask", *(f"wrapped in {s.label.split('(')[0]}" for s in case.steps if s.children)}
    return features


def test_random_pipelines_reach_every_transform_built_in_dtype_mask_kind_and_wrapper():
    """The pipeline strategy itself draws everything the suite promises to cover. Checked on draws alone
    (cheap, derandomized), so it holds under every hypothesis profile, the 3-example dev one included."""
    drawn: Counter = Counter()

    @settings(max_examples=200, derandomize=True, database=None, deadline=None)
    @given(pipeline_cases())
    def draw(case: PipelineCase) -> None:
        drawn.update(case_features(case))

    draw()
    expected = {*RECIPES, SYNC, "HorizontalFlip", "VerticalFlip", "Affine", "RandomCrop", "PadIfNeeded"}
    expected |= {"ColorJitter", "Normalize", "ToTensorV2", "uint8", "uint16", "float32", "index mask"}
    expected |= {"multihot mask", "none mask", "wrapped in Sequential", "wrapped in OneOf"}
    missing = sorted(expected - set(drawn))
    assert not missing, f"200 random pipelines never drew {missing}: fix the strategy in tests/contract/pipelines.py"


def test_pipelines_end_to_end_under_strict(banks):
    def body(case: PipelineCase, seed: int) -> None:
        freeze(case.inputs)  # read-only inputs: a transform writing into one raises
        before = inputs_copy(case.inputs)
        out = case.build(banks, seed, strict=True)(**case.inputs)
        assert_same(case.inputs, before, "inputs after the call")
        check_outputs(case, out)

    run("end to end", budget(40, 1.0), st.tuples(pipeline_cases(), SEEDS), body)


def _swap_partner_masks(inputs: dict[str, Any], same: bool) -> dict[str, Any]:
    """Partners whose ``roi`` equals their ``mask`` (``same``) or is swapped with it."""
    partners = inputs.get("contextmix_metadata")
    if partners is None:
        return inputs
    changed = []
    for partner in partners:
        partner = dict(partner)
        if same:
            partner[ROI] = partner["mask"].copy()
        else:
            partner["mask"], partner[ROI] = partner[ROI], partner["mask"]
        changed.append(partner)
    return {**inputs, "contextmix_metadata": changed}


def test_an_extra_mask_target_moves_like_mask(banks):
    def body(case: PipelineCase, seed: int) -> None:
        inputs = {k: v for k, v in case.inputs.items() if k != "class_vector"}
        # the mask's own content under the extra key comes back equal to mask
        same = _swap_partner_masks({**inputs, ROI: np.array(inputs["mask"], copy=True)}, same=True)
        out = to_numpy(case.build(banks, seed)(**same))
        assert_same(out[ROI], out["mask"], f"output[{ROI!r}] given the mask's content (expected output['mask'])")
        # another mask under the extra key comes back as mask would: replay with the two swapped
        recorded = case.build(banks, seed, replay=True)(**inputs)
        swapped = _swap_partner_masks({**inputs, "mask": inputs[ROI], ROI: inputs["mask"]}, same=False)
        replayed = to_numpy(A.ReplayCompose.replay(recorded["replay"], **swapped))
        recorded = to_numpy(recorded)
        assert_same(recorded[ROI], replayed["mask"], f"output[{ROI!r}] vs mask replayed from the same input")
        assert_same(recorded["mask"], replayed[ROI], f"output['mask'] vs {ROI!r} replayed from the same input")
        # an extra target marked with a value no step writes keeps marked pixels: it is moved, not
        # re-rendered from mask (without ContextMix, whose partner may cover the whole image)
        if case.mask_format == "index" and not any(s.label.startswith("ContextMix") for s in case.leaves):
            marked = np.zeros_like(inputs["mask"])
            marked[::3, ::3] = SENTINEL
            out = to_numpy(case.build(banks, seed)(**{**inputs, ROI: marked}))
            assert (out[ROI] == SENTINEL).any(), f"output[{ROI!r}] lost every marked pixel: re-rendered, not moved"

    cases = pipeline_cases(require_mask=True)
    run("extra mask target", budget(25, 0.5), st.tuples(cases, SEEDS), body)


def test_a_step_keeps_the_incoming_anomaly_it_does_not_paste_over(banks):
    """An anomaly from an earlier step survives a later step of ours wherever that step left the image alone."""

    def body(case: PipelineCase, seed: int) -> None:
        out = case.build(banks, seed)(**case.inputs)
        check_labels(case, to_numpy(out))
        untouched = ~changed(np.asarray(out["image"]), case.inputs["image"])
        kept = np.asarray(out["anomaly_mask"])
        lost = case.inputs["anomaly_mask"].astype(bool) & untouched & ~kept
        assert not lost.any(), f"{int(lost.sum())} anomaly pixels the step did not touch left the anomaly mask"

    run("incoming anomaly kept", budget(20, 0.25), st.tuples(incoming_anomaly_cases(), SEEDS), body)


def test_replay_reproduces_image_masks_and_every_label(banks):
    def body(case: PipelineCase, seed: int) -> None:
        freeze(case.inputs)
        recorded = case.build(banks, seed, replay=True)(**case.inputs)
        check_outputs(case, recorded)
        for attempt in range(2):
            replayed = A.ReplayCompose.replay(recorded["replay"], **case.inputs)
            assert_same_outputs(replayed, recorded, f"replay {attempt + 1}")

    run("replay", budget(25, 0.5), st.tuples(pipeline_cases(), SEEDS), body)


# ============================================================================================ seeds
def test_seeded_pipelines_reproduce_their_stream(banks):
    def body(case: PipelineCase, seed: int) -> None:
        freeze(case.inputs)
        first, second = case.build(banks, seed), case.build(banks, seed)
        keys = None
        for call in range(3):
            out = first(**case.inputs)
            assert_same_outputs(second(**case.inputs), out, f"seed_pipeline, call {call + 1}")
            # a DataLoader collates the samples: every call must return the same keys
            assert keys is None or set(out) == keys, (
                f"call {call + 1} returned keys {sorted(out)}, before {sorted(keys)}"
            )
            keys = set(out)
        # albumentations' own Compose(seed=...) is reproducible too
        first, second = case.build(banks, None), case.build(banks, None)
        first.set_random_seed(seed)
        second.set_random_seed(seed)
        for call in range(2):
            assert_same_outputs(second(**case.inputs), first(**case.inputs), f"Compose(seed), call {call + 1}")

    run("seeds", budget(20, 0.25), st.tuples(pipeline_cases(), SEEDS), body)


def decisions(record: dict[str, Any], parent: str = "Compose") -> list[bool]:
    """The ``applied`` flags of the independent p=0.5 decisions in a ReplayCompose record, in tree order.

    A decision is a transform or compose directly under a ``Compose`` or an always-applied
    ``Sequential`` (a ``OneOf``'s children are chosen by weight, not decided on their own; the
    pipelines here build every ``Sequential`` with ``p=1``, whose default is 0.5).
    """
    found = []
    for node in record.get("transforms", []):
        name = node["__class_fullname__"].rsplit(".", 1)[-1]
        if parent in ("Compose", "ReplayCompose", "Sequential") and node.get("p") == 0.5:
            params = node.get("params")  # under X a call of ours that p skipped is recorded as a marker
            skipped = isinstance(params, dict) and params.get(SKIPPED_CALL) is True
            found.append(bool(node["applied"]) and not skipped)
        if name == "Sequential" and node.get("p") in (None, 1.0):  # 2.0.8 records no p of a compose
            found += decisions(node, name)
    return found


def test_same_p_decisions_are_independent_after_seed_pipeline(banks):
    def body(case: PipelineCase, seed: int) -> None:
        pipeline = case.build(banks, seed, replay=True)
        flags = [decisions(pipeline(**case.inputs)["replay"]) for _ in range(48)]
        assume(len(flags[0]) >= 2)
        for i in range(len(flags[0])):
            for j in range(i + 1, len(flags[0])):
                seen = Counter((f[i], f[j]) for f in flags)
                assert len(seen) == 4, f"decisions {i} and {j} of {case.steps} are tied: {dict(seen)}"

    cases = pipeline_cases(independence=True, min_steps=3, tails=False, max_side=28)
    run("independence", budget(8, 0.05), st.tuples(cases, SEEDS), body)


def _flip_pairs(pipeline: Any, calls: int = 64) -> Counter:
    square = np.arange(25, dtype=np.uint8).reshape(5, 5)
    seen: Counter = Counter()
    for _ in range(calls):
        out = pipeline(image=square)["image"]
        h = np.array_equal(out, square[:, ::-1]) or np.array_equal(out, square[::-1, ::-1])
        v = np.array_equal(out, square[::-1]) or np.array_equal(out, square[::-1, ::-1])
        seen[h, v] += 1
    return seen


def test_albumentations_compose_seed_ties_same_p_children_and_seed_pipeline_unties_them():
    """Measured: albumentations 2.0.8's ``Compose(seed=s)`` seeds every child with ``s``, so
    ``HorizontalFlip`` and ``VerticalFlip`` fire together on every call; AlbumentationsX draws them
    from one invocation stream. ``albu_defects.seed_pipeline`` gives each transform its own seed."""
    plain = _flip_pairs(A.Compose([A.HorizontalFlip(), A.VerticalFlip()], seed=0))
    if IS_ALBUMENTATIONS_X:
        assert len(plain) == 4, dict(plain)
    else:
        assert set(plain) <= {(False, False), (True, True)}, dict(plain)
    pipeline = A.Compose([A.HorizontalFlip(), A.VerticalFlip()], seed=0)
    ad.seed_pipeline(pipeline, 0)
    assert len(_flip_pairs(pipeline)) == 4
    # the same seed gives the same stream, another seed another one
    first, second, third = (A.Compose([A.HorizontalFlip(), A.VerticalFlip()]) for _ in range(3))
    for pipeline, seed in ((first, 5), (second, 5), (third, 6)):
        ad.seed_pipeline(pipeline, seed)
    streams = [
        [tuple(p(image=np.eye(3, dtype=np.uint8))["image"].ravel()) for _ in range(32)] for p in (first, second, third)
    ]
    assert streams[0] == streams[1] and streams[0] != streams[2]


class _Stream(torch.utils.data.Dataset):
    """Items: (worker id, the pipeline's decisions, a fingerprint of its output)."""

    def __init__(self, pipeline: Any, inputs: dict[str, Any], size: int) -> None:
        self.pipeline, self.inputs, self.size = pipeline, inputs, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[int, tuple[bool, ...], str]:
        info = torch.utils.data.get_worker_info()
        out = self.pipeline(**self.inputs)
        fingerprint = out["image"].tobytes().hex() + out["mask"].tobytes().hex()
        return (-1 if info is None else info.id), tuple(decisions(out["replay"])), fingerprint


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_worker_init_fn_streams_are_reproducible_and_independent(banks, monkeypatch):
    from albu_defects.pytorch import worker_init_fn

    monkeypatch.delenv("RANK", raising=False)
    pipeline = A.ReplayCompose(
        [
            A.HorizontalFlip(p=0.5),
            A.Sequential([A.VerticalFlip(p=0.5), ad.CutPaste(p=0.5)], p=1.0),
            A.OneOf([ad.GuidedCropPaste(banks.path(np.uint8), p=1.0)], p=0.5),
            ad.CropLiq(region="image", p=0.5),
        ]
    )
    pipeline.set_random_seed(0)
    rng = np.random.default_rng(0)
    inputs = {"image": rng.integers(0, 256, (32, 32), dtype=np.uint8), "mask": np.zeros((32, 32), np.uint8)}

    def epoch(seed: int) -> list[tuple[int, tuple[bool, ...], str]]:
        loader = torch.utils.data.DataLoader(
            _Stream(pipeline, inputs, 128),
            batch_size=None,
            num_workers=2,
            worker_init_fn=worker_init_fn,
            generator=torch.Generator().manual_seed(seed),
        )
        return [(int(w), tuple(bool(x) for x in d), f) for w, d, f in loader]

    items = epoch(0)
    assert epoch(0) == items, "a seeded DataLoader did not reproduce the epoch"
    streams = {w: [f for worker, _, f in items if worker == w] for w in (0, 1)}
    assert streams[0] != streams[1], "both workers drew the same stream"
    for w in (0, 1):
        flags = [d for worker, d, _ in items if worker == w]
        for i in range(len(flags[0])):
            for j in range(i + 1, len(flags[0])):
                seen = Counter((f[i], f[j]) for f in flags)
                assert len(seen) == 4, f"worker {w}: decisions {i} and {j} are tied: {dict(seen)}"


# ============================================================================================ batches
def test_batch_compose_keeps_every_samples_labels(banks):
    def body(case: PipelineCase, count: int, seed: int) -> None:
        kind = case.kind
        images = [kind.image(salt=i) for i in range(count)]
        masks = [other_mask(case) if i % 2 else np.zeros_like(case.inputs["mask"]) for i in range(count)]
        batch: dict[str, Any] = {"images": images, "masks": masks}
        params: dict[str, Any] = {}
        if "bboxes" in case.inputs:
            batch["bboxes"] = [list(case.inputs["bboxes"]) for _ in range(count)]
            batch[LABEL_FIELD] = [list(case.inputs[LABEL_FIELD]) for _ in range(count)]
            params["bbox_params"] = bbox_params(label_fields=[LABEL_FIELD])
        freeze(batch)
        before = inputs_copy(batch)
        mix = Step("ContextMix(p=1.0)", lambda banks: ad.ContextMix(p=1.0, min_box_side=1), ours=True, moves=True)
        mix = replace(mix, writes=frozenset(range(1, K + 1)))  # partners are other samples: any class
        steps = list(case.steps)
        at = len(steps) - 1 if steps and steps[-1].label.startswith(SYNC) else len(steps)  # SyncLabels stays last
        case = replace(case, steps=[*steps[:at], mix, *steps[at:]])
        compose = ad.BatchCompose([step.make(banks) for step in case.steps], **params)
        compose.add_targets(case.additional_targets)  # the anomaly mask, when built-ins move pixels after it
        ad.seed_pipeline(compose, seed)
        out = to_numpy(compose(**batch))
        assert_same(batch, before, "inputs after the call")
        per_sample_keys = [k for k in out if k not in ("images", "masks", "partner_indices") and len(out[k]) == count]
        for i in range(count):
            sample = {key: out[key][i] for key in per_sample_keys}
            sample["mask"] = out["masks"][i]
            input_case = case.with_inputs(mask=masks[i], image=images[i])
            check_labels(input_case, sample)

    cases = pipeline_cases(batch=True, tails=False, max_steps=3)
    run("BatchCompose", budget(15, 0.2), st.tuples(cases, st.integers(1, 4), SEEDS), body)


# ============================================================================================ once known failures
# Library failures this suite found, now fixed; each keeps its reproduction as a passing test, and the
# random pipelines no longer steer around it.
@pytest.mark.parametrize("synthesis", [False, True])
def test_built_in_warps_move_a_declared_anomaly_mask(synthesis):
    # once a known failure: OpenCV's warps refuse the bool anomaly mask; declared a mask target it now
    # travels as uint8 and SyncLabels hands it back as bool
    anomaly = ad.AnomalySynthesis([ad.CutPaste()], normal_p=0.0) if synthesis else ad.CutPaste(p=1.0)
    pipeline = A.Compose(
        [anomaly, A.Affine(rotate=(-30, 30), p=1.0), A.Resize(40, 36), A.PadIfNeeded(48, 48), ad.SyncLabels()],
        additional_targets={"anomaly_mask": "mask"},  # as the README's label section says
    )
    ad.seed_pipeline(pipeline, 0)
    image = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    out = pipeline(image=image, mask=np.zeros((32, 32), np.uint8))
    assert out["anomaly_mask"].dtype == bool and out["anomaly_mask"].shape == (48, 48)
    assert out["anomaly_mask"].any() and out["anomaly_label"] == 1


@pytest.mark.parametrize("container", ["OneOf", "SomeOf", "Sequential"])
def test_every_call_returns_the_same_keys_with_ours_inside_a_container(container):
    # once a known failure. An albumentations container that skips a child skips its keys (it never calls
    # it); SyncLabels(anomaly_keys=True, num_classes=K), last, writes the label keys on every sample
    cut = ad.CutPaste(p=1.0, mask_class_id=2)
    if container == "OneOf":
        wrapped = A.OneOf([cut, A.NoOp(p=1.0)], p=1.0)
    elif container == "SomeOf":
        wrapped = A.SomeOf([cut, A.NoOp(p=1.0)], n=1, p=1.0)
    else:
        wrapped = A.Sequential([cut], p=0.5)
    pipeline = A.ReplayCompose([wrapped, A.HorizontalFlip(p=0.5), ad.SyncLabels(num_classes=K, anomaly_keys=True)])
    ad.seed_pipeline(pipeline, 0)
    image = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    outputs = [pipeline(image=image, mask=mask) for _ in range(16)]
    key_sets = {frozenset(k for k in out if k != "replay") for out in outputs}
    assert len(key_sets) == 1, f"calls returned different keys: {sorted(map(sorted, key_sets))}"
    assert {"anomaly_label", "anomaly_mask", "class_vector"} <= next(iter(key_sets))
    assert {int(out["anomaly_label"]) for out in outputs} == {0, 1}, "the container never (or always) skipped ours"
    for out in outputs:  # labels agree with the masks, and a replay returns what its recorded call returned
        assert (out["anomaly_label"] == 1) == bool(out["anomaly_mask"].any()) == bool(out["class_vector"][1])
        assert_same_outputs(A.ReplayCompose.replay(out["replay"], image=image, mask=mask), out, "replay")


@pytest.mark.parametrize("label", [150, "scratch"])
def test_replay_of_context_mix_onto_no_host_boxes(label):
    # once a known failure: albumentations 2.0.8's label encoder knew the field only from the recording
    pipeline = A.ReplayCompose(
        [ad.ContextMix(p=1.0, min_box_side=1)], bbox_params=bbox_params(label_fields=[LABEL_FIELD])
    )
    ad.seed_pipeline(pipeline, 0)
    partner = {"image": np.full((8, 8), 255, np.uint8), "bboxes": [[5.0, 4.0, 6.0, 8.0]], LABEL_FIELD: [label]}
    inputs = {"image": np.zeros((24, 24), np.uint8), "bboxes": [], LABEL_FIELD: [], "contextmix_metadata": [partner]}
    recorded = pipeline(**inputs)
    assert list(recorded[LABEL_FIELD]) == [label]
    assert_same_outputs(A.ReplayCompose.replay(recorded["replay"], **inputs), recorded, "replay")


@pytest.mark.parametrize("wrapper", ["OneOf", "Sequential", "SomeOf"])
def test_replay_of_a_normal_anomaly_synthesis_draw_in_a_container(wrapper):
    # once a known failure under AlbumentationsX: a replay skips a container whose children did not run
    image = np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)
    labels = set()
    for seed in range(8):  # normal draws among them
        synthesis = ad.AnomalySynthesis([ad.CropLiq(region="image"), ad.CutPaste()])
        container = A.SomeOf([synthesis], n=1, p=1) if wrapper == "SomeOf" else getattr(A, wrapper)([synthesis], p=1)
        pipeline = A.ReplayCompose([container])
        ad.seed_pipeline(pipeline, seed)
        recorded = pipeline(image=image)
        labels.add(recorded["anomaly_label"])
        assert_same_outputs(A.ReplayCompose.replay(recorded["replay"], image=image), recorded, f"replay, seed {seed}")
    assert 0 in labels and len(labels) > 1, f"the seeds drew labels {labels}: no normal draw among them"


def test_incoming_anomaly_mask_declared_a_mask_target_without_a_mask():
    # AlbumentationsX's own rule, checked before any transform runs: an additional mask target needs
    # `mask` in the call (README, Labels: pass an all-zero mask); albumentations 2.0.8 takes it alone
    pipeline = A.Compose(
        [ad.CutPaste(p=1.0), A.HorizontalFlip(p=1.0), ad.SyncLabels()], additional_targets={"anomaly_mask": "mask"}
    )
    ad.seed_pipeline(pipeline, 0)
    image = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    incoming = np.zeros((32, 32), bool)
    incoming[:4, :4] = True
    if IS_ALBUMENTATIONS_X:
        with pytest.raises(ValueError, match="requires canonical target 'mask'"):
            pipeline(image=image, anomaly_mask=incoming)
        out = pipeline(image=image, anomaly_mask=incoming, mask=np.zeros((32, 32), np.uint8))
    else:
        out = pipeline(image=image, anomaly_mask=incoming)
    assert out["anomaly_mask"].dtype == bool and out["anomaly_mask"][:4, -4:].all()  # moved by the flip
    assert out["anomaly_label"] == 1


def test_replay_of_ours_skipped_by_its_own_p_inside_a_container():
    # found by this suite under AlbumentationsX: a replay skipped the container of a transform its p had
    # skipped, so the default keys it wrote when recording (mix_weights) were missing from the replay
    image = np.random.default_rng(0).integers(0, 256, (24, 24), dtype=np.uint8)
    inputs = {"image": image, "contextmix_metadata": [{"image": image[:8, :8]}]}
    skipped = 0
    for seed in range(12):
        mix = ad.ContextMix(p=0.5, min_box_side=1)
        pipeline = A.ReplayCompose([A.Sequential([mix], p=1.0), A.HorizontalFlip(p=0.5)])
        ad.seed_pipeline(pipeline, seed)
        recorded = pipeline(**inputs)
        skipped += bool(recorded["mix_weights"][0] == 1.0)
        assert_same_outputs(A.ReplayCompose.replay(recorded["replay"], **inputs), recorded, f"replay, seed {seed}")
    assert 0 < skipped < 12, "the seeds never (or always) skipped ContextMix"
