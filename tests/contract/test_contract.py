"""The contract every transform exported by albu_defects keeps, checked with hypothesis-generated inputs.

For every spec in ``specs.SPECS`` (one per exported transform or compose):

- an applied call (``p=1``) keeps the dtype and shape of images and masks, never modifies its
  inputs (they are read-only arrays), and its labels agree with its pixels (the spec's invariant);
- ``Compose(seed=s)`` gives identical outputs twice, and different seeds give different outputs;
- ``A.save``/``A.load`` (YAML) gives a pipeline with identical outputs (re-seeded after loading:
  albumentations 2.0.8 does not save the seed);
- ``p=0`` returns every input unchanged, plus only the extra keys the transform documents, with
  their documented values;
- bad inputs (wrong dtype, wrong shape, NaN, mask size mismatch, and each spec's own) and bad init
  arguments raise ``ValueError`` naming the argument.

Example budgets are per property and per transform (``budget``): modest under the ``ci`` profile,
thousands of examples per transform under ``HYPOTHESIS_PROFILE=fuzz`` (run by hand; see
benchmarks/fuzz_contract.py, which records the counts in RESULTS.md).
"""

from __future__ import annotations

import copy
import inspect
import os
import re
from collections.abc import Callable
from typing import Any

import albumentations as A
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import albu_defects
from albu_defects import IS_ALBUMENTATIONS_X, DefectTransform

from .data import assert_same, differs, freeze
from .specs import ABSTRACT_BASES, SPECS, BadCall, Case, Spec, pipeline, with_inputs

#: Examples the loaded profile asks for (30 under "ci", 2000 under "fuzz" unless ALBU_DEFECTS_FUZZ_EXAMPLES says).
PROFILE_EXAMPLES = settings().max_examples
FUZZING = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"
#: Examples run per (transform, property), filled while the suite runs (read by the fuzz report).
EXAMPLE_COUNTS: dict[str, dict[str, int]] = {}
#: Output keys albumentations may convert (formats, containers): compared within 1e-3.
ANNOTATION_KEYS = {"bboxes", "keypoints", "cls"}
SEEDS = st.integers(0, 2**31 - 2)

spec_params = pytest.mark.parametrize("spec", list(SPECS.values()), ids=list(SPECS))


def budget(ci: int, fuzz_share: float) -> int:
    """Examples for one property of one transform: ``ci`` under the ci profile, ``fuzz_share`` of the
    profile's ``max_examples`` when fuzzing (about 4,000 examples per transform in all), and the same
    tenth of ``ci`` under the day-to-day ``dev`` profile (3 examples; see tests/conftest.py)."""
    if FUZZING:
        return max(ci, round(PROFILE_EXAMPLES * fuzz_share))
    return ci if PROFILE_EXAMPLES >= 30 else max(2, ci * PROFILE_EXAMPLES // 30)


def run_property(spec: Spec, name: str, examples: int, strategy: Any, body: Callable[..., None]) -> None:
    """Run ``body`` on ``examples`` examples drawn from ``strategy`` (settings otherwise from the profile)."""
    counts = EXAMPLE_COUNTS.setdefault(spec.name, {})

    @settings(max_examples=examples)
    @given(strategy)
    def prop(drawn: Any) -> None:
        counts[name] = counts.get(name, 0) + 1
        body(*drawn)

    prop()


def check_dtype_and_shape(spec: Spec, case: Case, out: dict[str, Any]) -> None:
    pairs = []
    if spec.batch:
        pairs += [
            (f"images[{i}]", a, b) for i, (a, b) in enumerate(zip(case.kwargs["images"], out["images"], strict=True))
        ]
        pairs += [
            (f"masks[{i}]", a, b) for i, (a, b) in enumerate(zip(case.kwargs["masks"], out["masks"], strict=True))
        ]
    else:
        pairs.append(("image", case.kwargs["image"], out["image"]))
        if "mask" in case.kwargs:
            pairs.append(("mask", case.kwargs["mask"], out["mask"]))
        pairs += [
            (f"masks[{i}]", a, b)
            for i, (a, b) in enumerate(zip(case.kwargs.get("masks", []), out.get("masks", []), strict=True))
        ]
    for name, before, after in pairs:
        assert isinstance(after, np.ndarray), f"{name} came back as {type(after).__name__}"
        assert after.dtype == before.dtype, f"{name}: dtype {before.dtype} became {after.dtype}"
        assert after.shape == before.shape, f"{name}: shape {before.shape} became {after.shape}"


# ============================================================================================ discovery
def exported_transforms() -> dict[str, type]:
    """Every class in ``albu_defects.__all__`` that is an albumentations transform or compose."""
    found = {}
    for name in albu_defects.__all__:
        obj = getattr(albu_defects, name)
        if inspect.isclass(obj) and issubclass(obj, (A.BasicTransform, A.BaseCompose)):
            found[name] = obj
    return found


def test_every_exported_transform_has_a_spec():
    exported = exported_transforms()
    concrete = {name: cls for name, cls in exported.items() if name not in ABSTRACT_BASES}
    missing = sorted(set(concrete) - set(SPECS))
    assert not missing, f"exported transforms without a contract spec (add them to tests/contract/specs.py): {missing}"
    assert not sorted(set(SPECS) - set(concrete)), "specs for classes albu_defects does not export"
    for name, spec in SPECS.items():
        assert spec.cls is concrete[name]
    for base in ABSTRACT_BASES:  # an abstract base must not hide a transform: each has spec'd subclasses
        assert any(issubclass(spec.cls, exported[base]) for spec in SPECS.values()), base
    assert len(SPECS) >= 8


def test_no_transform_defines_the_get_params_hooks_albumentationsx_rejects():
    """Sampling goes through DefectTransform's bridge: only it may define get_params*, and only under 2.0.x."""
    hooks = ("get_params", "get_params_dependent_on_data", "get_params_dependent_on_targets")
    for spec in SPECS.values():
        for cls in spec.cls.__mro__:
            if not cls.__module__.startswith("albu_defects"):
                continue
            defined = [hook for hook in hooks if hook in vars(cls)]
            allowed = ["get_params_dependent_on_data"] if cls is DefectTransform and not IS_ALBUMENTATIONS_X else []
            assert defined == allowed, f"{cls.__name__} defines {defined}"


# ============================================================================================ applied calls
@spec_params
def test_applied_call_keeps_dtype_shape_and_inputs_and_labels_agree_with_pixels(spec, banks):
    def body(case: Case, seed: int) -> None:
        freeze(case.kwargs)  # read-only inputs: a transform writing into one raises
        before = copy.deepcopy(case.kwargs)
        out = pipeline(spec, case, 1.0, seed, banks)(**case.kwargs)
        assert_same(case.kwargs, before, "inputs after the call")
        check_dtype_and_shape(spec, case, out)
        spec.invariant(case, out)

    run_property(spec, "applied call", budget(300, 1.0), st.tuples(spec.cases(False), SEEDS), body)


@spec_params
def test_same_seed_same_output_and_other_seeds_differ(spec, banks):
    def body(case: Case, seed: int) -> None:
        freeze(case.kwargs)

        def run(s: int) -> dict[str, Any]:
            return pipeline(spec, case, 1.0, s, banks)(**case.kwargs)

        first = run(seed)
        assert_same(run(seed), first, f"second run with seed {seed}")
        if spec.draws:  # a transform without random parameters (SyncLabels) gives one output
            assert any(differs(run(seed + k), first) for k in range(1, 5)), "five seeds gave identical outputs"

    run_property(spec, "seeds", budget(60, 0.2), st.tuples(spec.cases(True), SEEDS), body)


@spec_params
def test_yaml_round_trip_gives_identical_outputs(spec, banks, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"yaml_{spec.name}")

    def body(case: Case, seed: int) -> None:
        freeze(case.kwargs)
        original = pipeline(spec, case, 1.0, seed, banks)
        path = folder / "pipeline.yaml"
        A.save(original, str(path), data_format="yaml")
        assert f"albu_defects.{spec.name}" in path.read_text()
        loaded = A.load(str(path), data_format="yaml")
        loaded.set_random_seed(seed)  # albumentations 2.0.8 does not save the seed
        fresh = pipeline(spec, case, 1.0, seed, banks)
        for call in range(2):
            assert_same(loaded(**case.kwargs), fresh(**case.kwargs), f"call {call} after the YAML round trip")

    run_property(spec, "yaml", budget(30, 0.1), st.tuples(spec.cases(False), SEEDS), body)


@spec_params
def test_p0_is_the_identity(spec, banks):
    def body(case: Case, seed: int) -> None:
        freeze(case.kwargs)
        before = copy.deepcopy(case.kwargs)
        out = pipeline(spec, case, 0.0, seed, banks)(**case.kwargs)
        assert_same(case.kwargs, before, "inputs after the call")
        defaults = spec.defaults(case)
        extra = sorted(set(out) - set(case.kwargs) - set(defaults))
        assert not extra, f"p=0 added undocumented keys {extra}"
        assert not sorted(set(case.kwargs) - set(out)), "p=0 dropped input keys"
        for key, value in case.kwargs.items():
            if key not in defaults:
                assert_same(out[key], value, f"output[{key!r}]", approx=key in ANNOTATION_KEYS)
        for key, value in defaults.items():
            assert_same(out[key], value, f"default output[{key!r}]")

    run_property(spec, "p=0", budget(150, 0.5), st.tuples(spec.cases(False), SEEDS), body)


# ============================================================================================ bad inputs
def _map_images(spec: Spec, case: Case, fn: Callable[[np.ndarray], np.ndarray]) -> Case:
    if spec.batch:
        return with_inputs(case, images=[fn(np.asarray(image)) for image in case.kwargs["images"]])
    return with_inputs(case, image=fn(case.kwargs["image"]))


def _with_nan(image: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32)
    out.flat[out.size // 2] = np.nan
    return out


def _normalised(image: np.ndarray) -> np.ndarray:
    """What ``A.Normalize`` would hand on: float32 values outside [0, 1]."""
    return image.astype(np.float32) * np.float32(2.0) + np.float32(1.5)


def _too_tall_mask(spec: Spec, case: Case) -> Case:
    h, w = np.asarray(case.kwargs[spec.image_key][0] if spec.batch else case.kwargs["image"]).shape[:2]
    return spec.mask_slot(case, np.zeros((h + 1, w), np.uint8))


#: Corruptions every transform must reject: (name, corrupt(spec, case), what the message must name).
GENERIC_BAD_CALLS: list[tuple[str, Callable[[Spec, Case], Case], str]] = [
    ("int32 image", lambda s, c: _map_images(s, c, lambda im: im.astype(np.int32)), "image"),
    ("float64 image", lambda s, c: _map_images(s, c, lambda im: im.astype(np.float64)), "image"),
    ("bool image", lambda s, c: _map_images(s, c, lambda im: im > 0), "image"),
    ("image with a 4th axis", lambda s, c: _map_images(s, c, lambda im: im.reshape(*im.shape[:2], -1, 1)), "image"),
    ("NaN in a float32 image", lambda s, c: _map_images(s, c, _with_nan), "image"),
    ("float32 image outside [0, 1]", lambda s, c: _map_images(s, c, _normalised), "image"),
    ("mask one row taller than the image", _too_tall_mask, "mask"),
]

BAD_CALLS = [
    pytest.param(
        spec,
        BadCall(
            name,
            lambda c, s=spec, f=corrupt: f(s, c),
            spec.image_name if what == "image" else spec.mask_name,
            on_any_input=True,
        ),
        id=f"{spec.name}-{name}",
    )
    for spec in SPECS.values()
    if spec.reads_images  # SyncLabels never reads the image (it may follow Normalize and ToTensorV2)
    for name, corrupt, what in GENERIC_BAD_CALLS
] + [pytest.param(spec, bad, id=f"{spec.name}-{bad.name}") for spec in SPECS.values() for bad in spec.bad_calls]


@pytest.mark.parametrize(("spec", "bad"), BAD_CALLS)
def test_bad_input_raises_value_error_naming_it(spec, bad, banks):
    def body(case: Case, seed: int) -> None:
        corrupted = bad.corrupt(case)
        transform = pipeline(spec, corrupted, 1.0, seed, banks, check_shapes=False)
        with pytest.raises(ValueError, match=bad.fragment):
            transform(**corrupted.kwargs)

    cases = spec.cases(not bad.on_any_input)
    run_property(spec, "bad inputs", budget(15, 0.02), st.tuples(cases, SEEDS), body)


@pytest.mark.parametrize(
    ("spec", "overrides", "fragment"),
    [
        pytest.param(spec, bad.overrides, bad.fragment, id=f"{spec.name}-{bad.name}")
        for spec in SPECS.values()
        for bad in spec.bad_inits
    ],
)
def test_bad_init_argument_raises_value_error_naming_it(spec, overrides, fragment, banks):
    spec.construct(banks)  # the base construction is valid
    with pytest.raises(ValueError, match=fragment):
        spec.construct(banks, **overrides)


def test_the_generic_corruptions_break_what_they_claim():
    """Guards the guard: each generic corruption really makes the image or mask invalid."""
    image = np.zeros((6, 7, 3), np.uint8)
    case = Case({"image": image}, {}, None)  # type: ignore[arg-type]
    spec = SPECS["CutPaste"]
    corrupted = {name: corrupt(spec, case).kwargs for name, corrupt, _ in GENERIC_BAD_CALLS}
    assert corrupted["int32 image"]["image"].dtype == np.int32
    assert corrupted["image with a 4th axis"]["image"].shape == (6, 7, 3, 1)
    assert np.isnan(corrupted["NaN in a float32 image"]["image"]).sum() == 1
    assert corrupted["float32 image outside [0, 1]"]["image"].min() > 1.0  # even an all-black image
    assert corrupted["mask one row taller than the image"]["mask"].shape == (7, 7)
    assert re.search(SPECS["DynamicLabelInjection"].image_name, "images[0] has dtype int32")


def test_ci_runs_this_suite_under_albumentationsx_too():
    """``.ci/run`` runs the contract suite again in a fresh venv with AlbumentationsX (our package without deps)."""
    from pathlib import Path

    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    x_step = ci.split("albumentationsx==2.5.1", 1)[1]
    assert ".ci-venv-x" in ci and "--no-deps" in x_step and "python -m pytest tests/contract" in x_step
    assert "set -euo pipefail" in ci
