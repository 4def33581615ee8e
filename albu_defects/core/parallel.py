"""Helpers for work done many times over: an ordered thread-pool map, and a per-object cache.

Used by the bank builder and Guided-Crop's offline synthesis (:func:`ordered_map`), and by the
injection planner and Guided-Crop's lookup tables (:func:`cached_per_object`).
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = ["cached_per_object", "ordered_map", "progress_bar"]


def progress_bar(*args: Any, **kwargs: Any) -> Any:
    """``tqdm.auto.tqdm(*args, **kwargs)``; tqdm is imported here, on first use (its import takes ~0.1 s,
    which the command line's bank commands do not spend unless they show a bar)."""
    from tqdm.auto import tqdm

    return tqdm(*args, **kwargs)


def ordered_map(work: Callable[[int], Any], count: int, workers: int, desc: str, progress: bool) -> Iterator[Any]:
    """``work(i)`` for i in 0..count-1 on a thread pool, yielded in order, with at most 4 x workers in flight.

    A tqdm bar (``desc``, unit "img") counts the results. Threads suit image work: OpenCV decoding
    and numpy release the GIL. Used by the bank builder and Guided-Crop's offline synthesis.
    """
    with progress_bar(total=count, desc=desc, unit="img", disable=not progress) as bar:
        if workers == 1:
            for i in range(count):
                yield work(i)
                bar.update()
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending: deque[Future[Any]] = deque()
            submitted = 0
            while submitted < count or pending:
                while submitted < count and len(pending) < 4 * workers:
                    pending.append(pool.submit(work, submitted))
                    submitted += 1
                yield pending.popleft().result()
                bar.update()


def cached_per_object(cache: dict[int, tuple[weakref.ref, Any]], obj: Any, compute: Callable[[Any], Any]) -> Any:
    """``compute(obj)``, computed once per live object and kept in ``cache`` (keyed by ``id``).

    Banks and entries compare by value and are unhashable, so a ``WeakKeyDictionary`` cannot hold
    them; a weak reference checks the id still names the same object, and its callback drops the
    cached value when the object goes.
    """
    key = id(obj)
    cached = cache.get(key)
    if cached is not None and cached[0]() is obj:
        return cached[1]
    value = compute(obj)
    cache[key] = (weakref.ref(obj, lambda _, key=key: cache.pop(key, None)), value)
    return value
