"""Run the contract suite under the bounded fuzz profile; count examples and failures per transform.

    python benchmarks/fuzz_contract.py [--write]

Runs ``HYPOTHESIS_PROFILE=fuzz python -m pytest tests/contract`` (same interpreter; run it with the
AlbumentationsX venv's python to fuzz under X) with ``ALBU_DEFECTS_CONTRACT_REPORT`` set, then
tabulates the report: examples run per transform and property, and the failing tests. The fuzz
profile is not derandomized, so every run draws new examples. With ``--write`` the table replaces
the ``fuzz_contract`` section of RESULTS.md (``fuzz_contract_x`` under AlbumentationsX).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("ALBUMENTATIONS_NO_TELEMETRY", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import markdown_table, write_section

from albu_defects import IS_ALBUMENTATIONS_X

ROOT = Path(__file__).resolve().parents[1]
PROPERTIES = ("applied call", "seeds", "yaml", "p=0", "bad inputs")


def run_suite() -> tuple[dict, float, int]:
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        env = {
            **os.environ,
            "HYPOTHESIS_PROFILE": "fuzz",
            "ALBU_DEFECTS_CONTRACT_REPORT": str(report),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        }
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/contract"]
        start = time.perf_counter()
        status = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
        return json.loads(report.read_text()), time.perf_counter() - start, status


def table(report: dict) -> tuple[str, int]:
    rows, failed_total = [], 0
    for name, counts in report["examples"].items():
        failures = sorted(
            re.sub(r"^.*::", "", node)
            for node, outcome in report["outcomes"].items()
            if outcome == "failed" and re.search(rf"\[{re.escape(name)}(\]|-)", node)
        )
        failed_total += len(failures)
        rows.append(
            [name, *(counts.get(p, 0) for p in PROPERTIES), sum(counts.values()), len(failures), "; ".join(failures)]
        )
    header = ["transform", *PROPERTIES, "examples", "failed tests", "which"]
    return markdown_table(header, rows), failed_total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    report, seconds, status = run_suite()
    body, failed = table(report)
    tests = len(report["outcomes"])
    summary = (
        f"{tests} tests, {failed} failed, pytest exit status {status}, {seconds:.0f} s wall. Examples per property "
        "and transform (the fuzz profile: `max_examples=2000` scaled per property; 'bad inputs' sums every bad-input "
        "test of the transform; each 'seeds' example makes up to six calls, each 'yaml' example four)."
    )
    print(body + "\n\n" + summary)
    if args.write:
        distribution = "AlbumentationsX" if IS_ALBUMENTATIONS_X else "albumentations 2.0.8"
        write_section(
            "fuzz_contract_x" if IS_ALBUMENTATIONS_X else "fuzz_contract",
            f"Contract suite, bounded fuzz profile ({distribution})",
            body + "\n\n" + summary,
            command=f"HYPOTHESIS_PROFILE=fuzz python -m pytest tests/contract  (via: python benchmarks/{Path(__file__).name} --write)",
        )
    sys.exit(0 if status in (0, 1) else status)


if __name__ == "__main__":
    main()
