"""Issue 11, break 5: re-seeding a pipeline gives every transform in its tree its own stream.

albumentations 2.0.8's ``set_random_seed(s)`` hands ``s`` to every child, so after
``pytorch.reseed_pipeline`` / ``worker_init_fn`` two children with the same ``p`` (``HorizontalFlip``
and ``VerticalFlip``) make the same should-apply draw on every call: only 2 of their 4 combinations
ever appear. Every transform must get its own seed, derived from the pipeline's seed and its place in
the tree (nested composes included), so a seed still reproduces the whole stream.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import albumentations as A  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from albu_defects.pytorch import reseed_pipeline, worker_init_fn  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")

#: A square image whose 8 flips/transpositions are all different, so an output names what fired.
SQUARE = np.arange(25, dtype=np.uint8).reshape(5, 5)


def fired(output: np.ndarray) -> tuple[bool, bool, bool]:
    """(horizontal flip, vertical flip, transpose) applied, in that order, to produce ``output``."""
    for h in (False, True):
        for v in (False, True):
            for t in (False, True):
                expected = SQUARE[:, ::-1] if h else SQUARE
                expected = expected[::-1] if v else expected
                expected = expected.T if t else expected
                if np.array_equal(output, expected):
                    return h, v, t
    raise AssertionError(f"output is no flip/transposition of the input:\n{output}")


def nested_pipeline(seed: int | None = 0) -> A.Compose:
    """Three same-p (0.5) decisions at three depths: a leaf, a leaf in a Sequential, a OneOf."""
    return A.Compose(
        [A.HorizontalFlip(p=0.5), A.Sequential([A.VerticalFlip(p=0.5)], p=1.0), A.OneOf([A.Transpose(p=1.0)], p=0.5)],
        seed=seed,
    )


def stream(pipeline: A.Compose, calls: int = 96) -> list[tuple[bool, bool, bool]]:
    return [fired(pipeline(image=SQUARE)["image"]) for _ in range(calls)]


def test_reseed_pipeline_gives_same_p_children_independent_streams(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    pipeline = A.Compose([A.HorizontalFlip(), A.VerticalFlip()], seed=0)
    reseed_pipeline(pipeline, rank=0)
    pairs = Counter((h, v) for h, v, _ in stream(pipeline, 64))
    assert len(pairs) == 4, f"HorizontalFlip and VerticalFlip fired together: combinations seen {dict(pairs)}"


def test_reseed_pipeline_seeds_nested_composes_too_and_the_seed_reproduces_the_stream(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    pipeline = nested_pipeline(seed=3)
    reseed_pipeline(pipeline, rank=0)
    first = stream(pipeline)
    combinations = Counter(first)
    assert len(combinations) == 8, f"the three decisions are tied: combinations seen {dict(combinations)}"
    again = nested_pipeline(seed=3)
    reseed_pipeline(again, rank=0)
    assert stream(again) == first  # the same seed and rank reproduce the whole stream
    other = nested_pipeline(seed=3)
    reseed_pipeline(other, rank=1)
    assert stream(other) != first


class Flips(Dataset):
    """Items are the (horizontal, vertical) flips one call of the dataset's pipeline applied."""

    def __init__(self, size: int) -> None:
        self.pipeline = A.Compose([A.HorizontalFlip(), A.VerticalFlip()], seed=0)
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[int, int, int]:
        info = torch.utils.data.get_worker_info()
        h, v, _ = fired(self.pipeline(image=SQUARE)["image"])
        return (-1 if info is None else info.id), int(h), int(v)


def epoch(seed: int) -> list[tuple[int, int, int]]:
    loader = DataLoader(
        Flips(64),
        batch_size=None,
        num_workers=2,
        worker_init_fn=worker_init_fn,
        generator=torch.Generator().manual_seed(seed),
    )
    return [tuple(int(x) for x in item) for item in loader]


def test_worker_init_fn_gives_same_p_children_independent_streams_in_every_worker(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    items = epoch(0)
    for worker in (0, 1):
        pairs = Counter((h, v) for w, h, v in items if w == worker)
        assert len(pairs) == 4, f"worker {worker}: the flips fired together, combinations seen {dict(pairs)}"
    assert epoch(0) == items  # a seeded DataLoader reproduces the epoch
