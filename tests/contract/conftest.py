"""Fixtures of the contract suite, and the example counts that ``benchmarks/fuzz_contract.py`` reports.

With ``ALBU_DEFECTS_CONTRACT_REPORT=path`` set, the session writes a JSON file there: examples run per
transform and property (``examples``: test_contract.py, ``generic``: test_generic.py), per property
of the composition suite (``composition``), and the outcome of every test.
"""

from __future__ import annotations

import json
import os
import sys
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
    report: dict = {"outcomes": _OUTCOMES}
    for key, module, name in (
        ("examples", "test_contract", "EXAMPLE_COUNTS"),
        ("generic", "test_generic", "GENERIC_COUNTS"),
        ("composition", "test_composition", "COMPOSITION_COUNTS"),
    ):
        loaded = sys.modules.get(f"{__package__}.{module}")  # only the modules this session collected
        report[key] = getattr(loaded, name, {}) if loaded is not None else {}
    Path(target).write_text(json.dumps(report, indent=1))
