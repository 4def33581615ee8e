"""DLI's pure functions (methods/injection/balance.py): the batch plan and its application, without the transform."""

from __future__ import annotations

import numpy as np
import pytest

from albu_defects import DefectBank, DynamicLabelInjection
from albu_defects.data import sample_root
from albu_defects.methods.injection.arguments import defect_transform_fn
from albu_defects.methods.injection.balance import BalanceOptions, apply_batch, class_counts, plan_batch


@pytest.fixture(scope="module")
def bank() -> DefectBank:
    return DefectBank.from_folder(sample_root(), progress=False)


def _batch(n: int = 8, side: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(60, 200, (side, side), dtype=np.uint8) for _ in range(n)]


def test_plan_batch_is_a_function_of_its_arguments_and_touches_no_image(bank):
    images = _batch()
    before = [image.copy() for image in images]
    held = [frozenset({2}), frozenset(), frozenset({1, 3}), *[frozenset()] * 5]
    ids = list(range(1, len(bank.classes) + 1))
    options = BalanceOptions(poisson_p=0.0, fill="all")
    first = plan_batch(bank, ids, held, images, np.random.default_rng(5), options)
    again = plan_batch(bank, ids, held, images, np.random.default_rng(5), options)
    assert sorted(first) == [1, 3, 4, 5, 6, 7]  # every defect-free image, never one holding a class
    for index, plan in first.items():
        twin = again[index]
        assert (plan.class_id, plan.entry.entry_id, plan.top_left, plan.method) == (
            twin.class_id,
            twin.entry.entry_id,
            twin.top_left,
            twin.method,
        )
        np.testing.assert_array_equal(plan.mask, twin.mask)
    # rarest first: the 6 injections raise the 5 classes' counts [1, 1, 1, 0, 0] as evenly as possible
    after = [frozenset({first[i].class_id}) if i in first else s for i, s in enumerate(held)]
    assert sorted(class_counts(after, ids)) == [1, 2, 2, 2, 2]
    results = apply_batch(images, first, blend_margin=0)
    assert sorted(results) == sorted(first)
    for image, original in zip(images, before, strict=True):
        np.testing.assert_array_equal(image, original)  # inputs are never modified
    for index, result in results.items():
        changed = result.image != images[index]
        assert not changed[~result.label].any()  # cut-paste: only the label's pixels change


def test_balance_fill_and_fraction_limit_the_plan(bank):
    images = _batch()
    held = [frozenset({1}), frozenset({2}), *[frozenset()] * 6]
    ids = [1, 2]
    balanced = plan_batch(bank, ids, held, images, np.random.default_rng(0), BalanceOptions(fill="balance"))
    assert balanced == {}  # already uniform: nothing to inject
    capped = plan_batch(bank, ids, held, images, np.random.default_rng(0), BalanceOptions(max_inject_fraction=0.5))
    assert len(capped) == 3 and all(i >= 2 for i in capped)
    assert plan_batch(bank, ids, [frozenset({1})] * 8, images, np.random.default_rng(0)) == {}


def test_the_transform_is_the_plan_and_its_application(bank):
    """DynamicLabelInjection draws exactly what plan_batch draws from the same generator state."""
    images = _batch()
    masks = [np.zeros(image.shape, np.uint8) for image in images]
    masks[0][10:20, 10:20] = 2
    dli = DynamicLabelInjection(bank, poisson_p=0.0, seed=3)
    dli.set_random_seed(3)
    out = dli(images=images, masks=masks)
    dli.set_random_seed(3)
    dli.py_random.random()  # the draw that decides p
    transform = defect_transform_fn(dli.defect_transform, dli.random_generator, dli.py_random)
    held = [frozenset({2})] + [frozenset()] * 7
    plans = plan_batch(bank, list(range(1, 6)), held, images, dli.random_generator, dli.options, transform)
    logged = {i: (log["class_id"], log["entry_id"], log["top_left"]) for i, log in enumerate(out["injections"]) if log}
    assert logged == {i: (p.class_id, p.entry.entry_id, p.top_left) for i, p in plans.items()}
    for index, result in apply_batch(images, plans, blend_margin=dli.blend_margin).items():
        np.testing.assert_array_equal(out["images"][index], result.image)
