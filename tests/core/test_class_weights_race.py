"""ClassWeights attaching must not lose other threads' shared-memory registrations (issue 12 item 9).

Before Python 3.13, attaching a block registers it with the resource tracker; ClassWeights avoided
that by swapping the process-wide ``resource_tracker.register`` for a no-op while it attached, so a
block another thread created meanwhile was never registered, and leaked in /dev/shm when the process
was killed. The test makes that window certain: it holds the attaching thread inside ``shm_open``
until a second thread has created its own block, then checks that block was registered.
"""

from __future__ import annotations

import os
import pickle
import threading
from multiprocessing import resource_tracker, shared_memory

import pytest

import albu_defects as ad

posixshmem = pytest.importorskip("_posixshmem")


def test_a_block_created_while_another_thread_attaches_is_registered(monkeypatch):
    registered: list[str] = []
    real_register = resource_tracker.register

    def counting_register(name, rtype):
        registered.append(name)
        return real_register(name, rtype)

    monkeypatch.setattr(resource_tracker, "register", counting_register)
    attaching, created = threading.Event(), threading.Event()
    real_open = posixshmem.shm_open

    def held_open(name, flags, mode=0o777):
        if not flags & os.O_CREAT and threading.current_thread().name == "attacher":
            attaching.set()  # the attaching thread is inside its attach now: let the creator run
            created.wait(10)
        return real_open(name, flags, mode)

    monkeypatch.setattr(posixshmem, "shm_open", held_open)
    with ad.ClassWeights(["a", "b", "c"]) as weights:
        weights.update([1.0, 2.0, 3.0])
        attached: list[ad.ClassWeights] = []
        blocks: list[shared_memory.SharedMemory] = []

        def attach() -> None:
            attached.append(pickle.loads(pickle.dumps(weights)))

        def create() -> None:
            attaching.wait(10)
            try:
                blocks.append(shared_memory.SharedMemory(create=True, size=64))
            finally:
                created.set()

        threads = [threading.Thread(target=attach, name="attacher"), threading.Thread(target=create, name="creator")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        try:
            assert len(attached) == 1 and len(blocks) == 1
            assert list(attached[0].probabilities) == list(weights.probabilities)
            assert blocks[0]._name in registered, (
                "a block created by another thread while ClassWeights attached was not registered with the "
                "resource tracker: it would leak in /dev/shm if the process were killed"
            )
        finally:
            for block in blocks:
                block.close()
                block.unlink()
            for other in attached:
                other.close()


def test_many_threads_attach_and_create_concurrently(monkeypatch):
    """No hook this time: threads attach and create in a loop; every created block is registered."""
    registered: set[str] = set()
    real_register = resource_tracker.register

    def counting_register(name, rtype):
        registered.add(name)
        return real_register(name, rtype)

    monkeypatch.setattr(resource_tracker, "register", counting_register)
    blocks: list[shared_memory.SharedMemory] = []
    with ad.ClassWeights(4) as weights:
        payload = pickle.dumps(weights)

        def attach_loop() -> None:
            for _ in range(200):
                pickle.loads(payload).close()

        def create_loop() -> None:
            for _ in range(100):
                blocks.append(shared_memory.SharedMemory(create=True, size=32))

        threads = [threading.Thread(target=attach_loop) for _ in range(2)] + [threading.Thread(target=create_loop)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    try:
        missing = [b._name for b in blocks if b._name not in registered]
        assert len(blocks) == 100 and missing == [], f"{len(missing)} of {len(blocks)} blocks never registered"
    finally:
        for block in blocks:
            block.close()
            block.unlink()
