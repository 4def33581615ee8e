"""Fixtures of the security suite: one preloaded fork runner per test session (per xdist worker)."""

from __future__ import annotations

import sys

import pytest

from .runner import ForkRunner


@pytest.fixture(scope="session")
def fork_runner(tmp_path_factory):
    if not sys.platform.startswith("linux"):
        pytest.skip("the security suite's limits (RLIMIT_AS, /proc, fork) are Linux-only")
    runner = ForkRunner(tmp_path_factory.mktemp("fork_runner"))
    yield runner
    runner.close()
