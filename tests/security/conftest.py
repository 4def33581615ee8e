"""Fixtures of the security suite: one preloaded fork runner per test session (per xdist worker).

With ``ALBU_DEFECTS_SAFETY_REPORT=path`` set, the session writes a JSON file there: the hostile banks
and interrupts tried, the slowest refusal, the largest memory growth of a child and the outcome of
every test (``benchmarks/RESULTS.md`` quotes it). ``ALBU_DEFECTS_SAFETY_KILLS`` sets the kill points
per interrupted writer (default 10).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

import pytest

from .runner import ForkRunner

REPORT: dict = {"counts": Counter(), "slowest_s": 0.0, "largest_growth_mb": 0.0, "outcomes": {}}


@pytest.fixture(scope="session")
def fork_runner(tmp_path_factory):
    if not sys.platform.startswith("linux"):
        pytest.skip("the security suite's limits (RLIMIT_AS, /proc, fork) are Linux-only")
    runner = ForkRunner(tmp_path_factory.mktemp("fork_runner"))
    yield runner
    runner.close()


def record(kind: str, count: int = 1, reply: dict | None = None) -> None:
    """Count ``kind`` (e.g. "hostile banks"); with a runner reply, keep the slowest time and largest growth."""
    REPORT["counts"][kind] += count
    result = (reply or {}).get("result") or {}
    REPORT["slowest_s"] = max(REPORT["slowest_s"], result.get("seconds", 0.0))
    REPORT["largest_growth_mb"] = max(REPORT["largest_growth_mb"], result.get("peak_growth_mb", 0.0))


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        REPORT["outcomes"][report.nodeid] = report.outcome


def pytest_sessionfinish(session):
    path = os.environ.get("ALBU_DEFECTS_SAFETY_REPORT")
    if path and REPORT["outcomes"]:
        outcomes = Counter(REPORT["outcomes"].values())
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({**REPORT, "counts": dict(REPORT["counts"]), "totals": dict(outcomes)}, handle, indent=1)
