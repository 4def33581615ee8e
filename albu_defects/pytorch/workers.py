"""Worker and rank seeds: give every DataLoader worker, on every DDP rank, its own augmentation stream."""

from __future__ import annotations

import os
import random
import types
from collections.abc import Mapping
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import get_worker_info

from ..core.seeds import seed_pipeline
from .contextmix import TensorContextMix

__all__ = [
    "distributed_rank",
    "find_pipelines",
    "reseed_pipeline",
    "worker_init_fn",
    "worker_seed",
]


#: Environment variable read for the process's rank when ``torch.distributed`` is not initialized
#: (``torchrun`` sets it).
RANK_ENV = "RANK"

#: Pipelines are searched at most this deep in a dataset's attributes, and only in containers
#: (lists, tuples, sets, dict values) of at most ``SEARCH_MAX_ITEMS`` items.
SEARCH_MAX_DEPTH = 6
SEARCH_MAX_ITEMS = 256

_UINT64 = (1 << 64) - 1


_rank_before_fork: int | None = None
#: In a forked child (a DataLoader worker with the default ``fork`` start), the parent's process
#: group rank: torch clears the process group in forked children, so it is recorded at fork time.
_parent_rank: int | None = None


def _process_group_rank() -> int | None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return None


def _record_rank_before_fork() -> None:
    global _rank_before_fork
    try:
        _rank_before_fork = _process_group_rank()
    except (RuntimeError, ValueError):  # a group being torn down: nothing to hand on
        _rank_before_fork = None


def _inherit_rank_after_fork() -> None:
    global _parent_rank
    if _rank_before_fork is not None:
        _parent_rank = _rank_before_fork


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(before=_record_rank_before_fork, after_in_child=_inherit_rank_after_fork)


def distributed_rank() -> int:
    """This process's rank, for separating augmentation streams between DDP processes.

    In order: ``torch.distributed.get_rank()`` when a process group is initialized here; in a
    forked DataLoader worker, the rank of the parent's process group (recorded at fork, since
    torch clears the group in forked children); the ``RANK`` environment variable (``torchrun``
    sets it); else 0.
    """
    rank = _process_group_rank()
    if rank is not None:
        return rank
    if _parent_rank is not None:
        return _parent_rank
    value = os.environ.get(RANK_ENV, "0").strip() or "0"
    try:
        rank = int(value)
    except ValueError:
        raise ValueError(f"the {RANK_ENV} environment variable must be an integer rank, got {value!r}") from None
    if rank < 0:
        raise ValueError(f"the {RANK_ENV} environment variable must be a rank >= 0, got {rank}")
    return rank


def worker_seed(base_seed: int | None = None, rank: int | None = None) -> int:
    """A seed for this process's augmentation stream, distinct per DataLoader worker and per rank.

    Mixes (with ``numpy.random.SeedSequence``) ``base_seed`` (a pipeline's own seed, when set), the
    DataLoader worker's seed (``get_worker_info().seed``, which torch draws per worker and per
    epoch from the DataLoader's ``generator``, so a seeded generator reproduces it) and ``rank``
    (default :func:`distributed_rank`). In the main process (no worker) with ``base_seed=None``
    it mixes fresh OS entropy instead of a worker seed: an unseeded pipeline stays unseeded.
    Returns a non-negative 63-bit int (valid for numpy, ``random`` and ``torch.manual_seed``).
    """
    info = get_worker_info()
    rank = distributed_rank() if rank is None else int(rank)
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    if info is not None:
        stream = [1, int(info.seed) & _UINT64]
    elif base_seed is None:
        stream = [2, int(np.random.SeedSequence().entropy) & _UINT64]
    else:
        stream = [0, 0]
    base = [0, 0] if base_seed is None else [1, int(base_seed) & _UINT64]
    entropy = [*base, *stream, rank]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


def reseed_in_worker(pipeline: Any, last_worker_seed: int | None) -> int | None:
    """Re-seed ``pipeline`` (:func:`reseed_pipeline`) once per worker; returns the worker seed to remember.

    Used by the collate wrappers: the DataLoader draws a new worker seed per epoch (unless the
    workers persist), so workers, epochs and ranks get different streams and a seeded DataLoader
    reproduces them. In the main process nothing changes.
    """
    info = get_worker_info()
    if info is None or last_worker_seed == info.seed:
        return last_worker_seed
    reseed_pipeline(pipeline)
    return int(info.seed)


def _is_pipeline(value: Any) -> bool:
    return isinstance(value, (A.BaseCompose, A.BasicTransform, TensorContextMix))


def reseed_pipeline(pipeline: Any, rank: int | None = None) -> int:
    """Re-seed one augmentation pipeline for this DataLoader worker and rank; returns the seed used.

    ``pipeline``: an albumentations ``Compose`` (or any ``BaseCompose``: :class:`~albu_defects.BatchCompose`,
    :class:`~albu_defects.DynamicLabelInjection`, ...), a single transform, or a torch
    :class:`~albu_defects.pytorch.TensorContextMix`. Its new seed is :func:`worker_seed` of its own ``seed`` (kept as the base:
    ``pipeline.seed`` is restored afterwards, so calling it twice in one worker gives the same
    stream), the worker's seed and ``rank``. Every transform in the pipeline's tree, nested composes
    included, gets its own seed derived from it (:func:`albu_defects.seed_pipeline`), so children
    with the same ``p`` decide independently (albumentations 2.0.8's ``set_random_seed`` would hand
    them all the same seed). Outside a worker it still separates ranks (call it once per rank after
    ``init_process_group`` when ``num_workers=0``).
    """
    if isinstance(pipeline, TensorContextMix):
        seed = worker_seed(pipeline.seed, rank)
        pipeline.generator = torch.Generator().manual_seed(seed)
        return seed
    if not isinstance(pipeline, (A.BaseCompose, A.BasicTransform)):
        raise ValueError(
            f"pipeline must be an albumentations Compose/transform or albu_defects.pytorch.TensorContextMix, "
            f"got {type(pipeline).__name__}"
        )
    base = getattr(pipeline, "seed", None)
    base = base if isinstance(base, (int, np.integer)) and not isinstance(base, bool) else None
    seed = worker_seed(base, rank)
    seed_pipeline(pipeline, seed)
    pipeline.seed = base  # the user's seed stays the base of later re-seeds (and of YAML in AlbumentationsX)
    return seed


def find_pipelines(root: Any) -> list[Any]:
    """The augmentation pipelines reachable from ``root`` (e.g. a Dataset), outermost only.

    A pipeline is an albumentations ``BaseCompose`` (``A.Compose``, ``A.OneOf``, our batch
    composes), a single albumentations transform, or a :class:`~albu_defects.pytorch.TensorContextMix`; once found, its
    children are not searched (re-seeding a compose re-seeds them). The search walks instance
    attributes (``vars(obj)``: ``dataset.transform``, ``Subset.dataset``, ``ConcatDataset.datasets``,
    ...) and the items of lists, tuples, sets and dict values, at most :data:`SEARCH_MAX_DEPTH`
    levels deep and only through containers of at most :data:`SEARCH_MAX_ITEMS` items (so a list of
    10,000 file names is skipped). It does not look inside closures, lambdas, ``functools.partial``
    or objects without ``__dict__``: re-seed those pipelines yourself with :func:`reseed_pipeline`.
    """
    found: list[Any] = []
    seen: set[int] = set()

    def visit(value: Any, depth: int) -> None:
        if id(value) in seen or depth > SEARCH_MAX_DEPTH:
            return
        seen.add(id(value))
        if _is_pipeline(value):
            found.append(value)
            return
        if isinstance(value, (str, bytes, int, float, complex, bool, type(None), np.ndarray, torch.Tensor)):
            return
        if isinstance(value, (type, types.ModuleType, types.FunctionType, types.MethodType)):
            return
        if isinstance(value, Mapping):
            items: Any = list(value.values()) if len(value) <= SEARCH_MAX_ITEMS else ()
        elif isinstance(value, (list, tuple, set, frozenset)):
            items = list(value) if len(value) <= SEARCH_MAX_ITEMS else ()
        else:
            attributes = getattr(value, "__dict__", None)
            items = list(attributes.values()) if isinstance(attributes, dict) else ()
        for item in items:
            visit(item, depth + 1)

    visit(root, 0)
    return found


def worker_init_fn(worker_id: int, rank: int | None = None) -> None:
    """DataLoader ``worker_init_fn``: give every worker, on every rank, its own augmentation stream.

    ``DataLoader(dataset, num_workers=4, worker_init_fn=worker_init_fn, generator=torch.Generator().manual_seed(0))``

    albumentations copies a pipeline's random state into every worker unchanged (``Compose(seed=s)``
    and an unseeded ``Compose`` alike), so without this all workers repeat one stream, and DDP
    ranks that seed alike repeat each other too. In the worker it:

    - re-seeds every pipeline :func:`find_pipelines` finds on the worker's dataset copy
      (``get_worker_info().dataset``) with :func:`reseed_pipeline` (every transform in its tree
      its own derived seed);
    - re-seeds Python's ``random``, numpy's global generator and torch's global generator with
      the same mix (torch already gives each worker its own seed, but not each rank its own).

    The seeds derive from torch's per-worker seed, so a DataLoader with a seeded ``generator``
    reproduces the whole epoch, and from the rank (:func:`distributed_rank`: with the default
    ``fork`` start, the parent's process group rank; else the ``RANK`` variable). With a
    ``spawn``/``forkserver`` start (macOS, Windows, Python >= 3.14 on Linux) and no ``RANK``
    variable (e.g. ``torch.multiprocessing.spawn`` instead of ``torchrun``), pass the rank:
    ``worker_init_fn=functools.partial(worker_init_fn, rank=rank)``. Returns ``None``; raises
    ``ValueError`` when called outside a worker.
    """
    info = get_worker_info()
    if info is None:
        raise ValueError("worker_init_fn must run inside a DataLoader worker (pass it as worker_init_fn=...)")
    seed = worker_seed(None, rank)
    random.seed(seed)
    np.random.seed(seed % (1 << 32))  # noqa: NPY002 - the legacy global generator user code may draw from
    torch.manual_seed(seed)
    for pipeline in find_pipelines(info.dataset):
        reseed_pipeline(pipeline, rank)
