"""Per-transform seeds (core/seeds.py): every transform in a tree its own derived seed, reproducible from one."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import albumentations as A
import numpy as np
import pytest

import albu_defects as ad
from albu_defects.core.seeds import derived_seed, seed_children, seed_pipeline

SQUARE = np.arange(25, dtype=np.uint8).reshape(5, 5)


def outputs(pipeline, calls: int = 48) -> list[bytes]:
    return [pipeline(image=SQUARE)["image"].tobytes() for _ in range(calls)]


def test_derived_seeds_are_stable_distinct_63_bit_ints():
    assert derived_seed(0, (1, 2)) == derived_seed(0, (1, 2))
    seeds = {derived_seed(s, path) for s in range(3) for path in [(), (0,), (1,), (0, 0), (0, 1), (1, 0)]}
    assert len(seeds) == 18 and all(0 <= s < 2**63 for s in seeds)
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="seed"):
            derived_seed(bad, ())
    with pytest.raises(ValueError, match="path index"):
        derived_seed(0, (-1,))


def test_seed_pipeline_unties_same_p_children_at_every_depth_and_reproduces_the_stream():
    def build() -> A.Compose:
        return A.Compose(
            [A.HorizontalFlip(), A.Sequential([A.VerticalFlip()], p=1.0), A.OneOf([A.Transpose(p=1.0)], p=0.5)]
        )

    pipeline = build()
    seed_pipeline(pipeline, 7)
    assert pipeline.seed == 7
    first = outputs(pipeline, 96)
    assert len(Counter(first)) == 8  # all 2**3 combinations of three independent decisions
    again = build()
    seed_pipeline(again, 7)
    assert outputs(again, 96) == first
    other = build()
    seed_pipeline(other, 8)
    assert outputs(other, 96) != first
    unseeded = build()
    seed_pipeline(unseeded, None)  # fresh entropy for every transform
    assert len(Counter(outputs(unseeded, 96))) == 8


def test_a_subtree_is_seeded_alike_alone_or_inside_a_pipeline():
    def synthesis() -> ad.AnomalySynthesis:
        return ad.AnomalySynthesis([ad.CutPaste(), ad.CutPaste(variant="scar")], normal_p=0.0)

    image = np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)
    inside = A.Compose([A.NoOp(), synthesis()])
    seed_pipeline(inside, 3)
    alone = synthesis()
    alone.set_random_seed(derived_seed(3, (1,)))  # our composes seed their children through seed_children
    for _ in range(4):
        a, b = inside.transforms[1](image=image), alone(image=image)
        assert a["anomaly_label"] == b["anomaly_label"] and np.array_equal(a["image"], b["image"])


def test_our_composes_seed_each_child_on_its_own():
    # BatchCompose([HorizontalFlip, VerticalFlip], seed=s): under albumentations 2.0.8 a plain Compose
    # would hand both flips the seed s and they would fire together
    batch = ad.BatchCompose([A.HorizontalFlip(), A.VerticalFlip()], seed=0)
    seen = Counter()
    for _ in range(64):
        out = batch(images=[SQUARE])["images"][0]
        seen[np.array_equal(out[:, ::-1], SQUARE) or np.array_equal(out[::-1, ::-1], SQUARE)] += 1
    assert len(seen) == 2  # flipped horizontally or not, independently of the vertical flip
    pairs = Counter()
    batch.set_random_seed(1)
    for _ in range(64):
        out = batch(images=[SQUARE])["images"][0]
        h = np.array_equal(out, SQUARE[:, ::-1]) or np.array_equal(out, SQUARE[::-1, ::-1])
        v = np.array_equal(out, SQUARE[::-1]) or np.array_equal(out, SQUARE[::-1, ::-1])
        pairs[h, v] += 1
    assert len(pairs) == 4


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="pipeline must be"):
        seed_pipeline(lambda image: image, 0)
    with pytest.raises(ValueError, match="seed"):
        seed_pipeline(A.Compose([A.HorizontalFlip()]), -3)
    seed_children(A.HorizontalFlip(), 0)  # a single transform has no children: nothing to do


def test_seed_pipeline_needs_no_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"  # importing torch now fails
        "import albumentations as A, albu_defects\n"
        "p = A.Compose([A.HorizontalFlip(), A.VerticalFlip()])\n"
        "albu_defects.seed_pipeline(p, 0)\n"
    )
    if ad.IS_ALBUMENTATIONS_X:
        pytest.skip("AlbumentationsX itself imports torch")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
