"""Per-transform seeds: one seed for a pipeline, its own derived seed for every transform in its tree.

albumentations 2.0.8's ``Compose(seed=s)`` and ``set_random_seed(s)`` hand ``s`` itself to every
child, so children draw the same numbers: two with the same ``p`` make the same should-apply draw on
every call (``HorizontalFlip`` and ``VerticalFlip`` fire together, 2 of their 4 combinations ever
appear) and two of ours with similar ranges draw alike. :func:`seed_pipeline` gives every transform
its own seed instead, derived with ``numpy.random.SeedSequence`` from its parent's seed and its index
among the parent's children (a numpy spawn key). One seed still reproduces the whole stream,
children are independent, and a compose's subtree is seeded alike whether it is seeded alone or
inside a larger pipeline.

Users call ``seed_pipeline(pipeline, seed)`` after building or ``A.load``-ing a pipeline, instead of
``Compose(seed=...)`` / ``set_random_seed``; ``albu_defects.pytorch.reseed_pipeline`` and
``worker_init_fn`` use it in DataLoader workers, and our composes (``AnomalySynthesis``,
``BatchCompose``, ``DynamicLabelInjection``) seed their children through :func:`seed_children`, so
``A.Compose([...], seed=s)`` already unties the children of our composes. AlbumentationsX draws
every transform of a call from one stream of the root call, so its children are independent already;
seeding them there is harmless.

Imports neither torch nor anything else of albu-defects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import numpy as np

__all__ = ["child_transforms", "derived_seed", "seed_children", "seed_pipeline"]


def check_seed(seed: Any, name: str = "seed") -> int:
    """``seed`` as an int if it is an int >= 0 (not a bool), else ``ValueError``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{name} must be an int >= 0, got {seed!r}")
    return int(seed)


def derived_seed(seed: int, path: Sequence[int]) -> int:
    """The seed of the descendant at ``path`` (child indices: ``(2,)`` is the third child) of a transform
    seeded with ``seed``, as a non-negative 63-bit int (valid for numpy and ``random``).

    ``SeedSequence(seed, spawn_key=path)``: numpy's own derivation of child streams (what
    ``SeedSequence(seed).spawn`` hands its children), so every path gets a distinct, independent seed
    (``SeedSequence([seed, *path])`` would not: ``[s]`` and ``[s, 0]`` are the same entropy).
    """
    spawn_key = tuple(check_seed(i, "path index") for i in path)
    sequence = np.random.SeedSequence(check_seed(seed), spawn_key=spawn_key)
    return int(sequence.generate_state(1, np.uint64)[0] >> 1)


def child_transforms(node: Any) -> list[Any]:
    """The transforms and composes a compose holds (``[]`` for a single transform)."""
    if not isinstance(node, A.BaseCompose):
        return []
    return [t for t in node.transforms if isinstance(t, (A.BasicTransform, A.BaseCompose))]


def seed_children(node: Any, seed: int | None) -> None:
    """Seed every descendant of ``node`` from ``seed`` (``node``'s own): child ``i`` gets
    ``derived_seed(seed, (i,))``, its children are derived from that, and so on.

    ``seed=None`` gives each descendant fresh OS entropy (independent streams, not reproducible).
    """
    for index, child in enumerate(child_transforms(node)):
        child_seed = None if seed is None else derived_seed(seed, (index,))
        child.set_random_seed(child_seed)  # an albumentations compose hands child_seed to all its children:
        seed_children(child, child_seed)  # give them their own (ours did already: this repeats the same seeds)


def seed_pipeline(pipeline: Any, seed: int | None) -> None:
    """Seed ``pipeline`` with ``seed`` and every transform in its tree with its own derived seed.

    ``pipeline``: an albumentations ``Compose`` (any ``BaseCompose``, nested composes included) or a
    single transform. Use it instead of ``Compose(seed=...)`` / ``pipeline.set_random_seed(seed)``,
    which give every child the same seed under albumentations 2.0.8. ``pipeline.seed`` becomes
    ``seed``. ``seed=None`` seeds every transform from fresh OS entropy.

    Raises ``ValueError`` for a seed that is not an int >= 0 (or ``None``) and for a ``pipeline`` that
    is not an albumentations transform or compose.
    """
    if not isinstance(pipeline, (A.BasicTransform, A.BaseCompose)):
        raise ValueError(f"pipeline must be an albumentations Compose or transform, got {type(pipeline).__name__}")
    seed = None if seed is None else check_seed(seed)
    pipeline.set_random_seed(seed)
    seed_children(pipeline, seed)
