"""Fixtures of the contract suite, and the example counts that ``benchmarks/fuzz_contract.py`` reports.

With ``ALBU_DEFECTS_CONTRACT_REPORT=path`` set, the session writes a JSON file there: examples run per
transform and property, and the outcome of every test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .data import Banks

_OUTCOMES: dict[str, str] = {}


@pytest.fixture(scope="session")
def banks(tmp_path_factory) -> Banks:
    """Saved gray test banks, one per dtype, built on first use."""
    return Banks(tmp_path_factory.mktemp("contract_banks"))


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        _OUTCOMES[report.nodeid] = report.outcome


def pytest_sessionfinish(session, exitstatus):
    target = os.environ.get("ALBU_DEFECTS_CONTRACT_REPORT")
    if not target:
        return
    from .test_contract import EXAMPLE_COUNTS

    Path(target).write_text(json.dumps({"examples": EXAMPLE_COUNTS, "outcomes": _OUTCOMES}, indent=1))
