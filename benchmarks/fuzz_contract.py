"""Run the contract suite under the bounded fuzz profile; count examples and failures per transform.

    python benchmarks/fuzz_contract.py [--examples N] [--write]

Runs ``HYPOTHESIS_PROFILE=fuzz python -m pytest tests/contract`` (same interpreter; run it with the
AlbumentationsX venv's python to fuzz under X) with ``ALBU_DEFECTS_CONTRACT_REPORT`` set, then
tabulates the report: examples run per transform and property of the per-transform suite
(test_contract.py) and of albumentations' generic checks (test_generic.py), examples per property
of the composition suite (test_composition.py, random pipelines), and the failing tests. The fuzz
profile is not derandomized, so every run draws new examples. With ``--write`` the tables replace
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


def run_suite(examples: int) -> tuple[dict, float, int]:
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        env = {
            **os.environ,
            "HYPOTHESIS_PROFILE": "fuzz",
            "ALBU_DEFECTS_FUZZ_EXAMPLES": str(examples),
            "ALBU_DEFECTS_CONTRACT_REPORT": str(report),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        }
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/contract"]
        start = time.perf_counter()
        status = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
        return json.loads(report.read_text()), time.perf_counter() - start, status


def _failures(report: dict, pattern: str) -> list[str]:
    return sorted(
        re.sub(r"^.*::", "", node)
        for node, outcome in report["outcomes"].items()
        if outcome == "failed" and re.search(pattern, node)
    )


def transform_table(report: dict, key: str, module: str) -> tuple[str, int]:
    """Examples per (transform, property) of one per-transform suite, with its failing tests."""
    counts_by_name: dict = report.get(key, {})
    seen = sorted({p for counts in counts_by_name.values() for p in counts})
    properties = list(PROPERTIES) if key == "examples" else seen
    rows, failed_total = [], 0
    for name, counts in counts_by_name.items():
        failures = _failures(report, rf"{module}\.py::.*\[{re.escape(name)}(\]|-)")
        failed_total += len(failures)
        rows.append(
            [name, *(counts.get(p, 0) for p in properties), sum(counts.values()), len(failures), "; ".join(failures)]
        )
    header = ["transform", *properties, "examples", "failed tests", "which"]
    return markdown_table(header, rows), failed_total


def composition_table(report: dict) -> tuple[str, int]:
    """Examples per property of the composition suite (random pipelines), with its failing tests."""
    failures = _failures(report, r"test_composition\.py::")
    rows = [[name, count] for name, count in report.get("composition", {}).items()]
    rows.append(["failed tests", f"{len(failures)}: {'; '.join(failures)}" if failures else "0"])
    return markdown_table(["property (random pipelines)", "examples"], rows), len(failures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the section of benchmarks/RESULTS.md")
    parser.add_argument("--examples", type=int, default=2000, help="the fuzz profile's max_examples (default 2000)")
    args = parser.parse_args()
    report, seconds, status = run_suite(args.examples)
    per_transform, failed_a = transform_table(report, "examples", "test_contract")
    generic, failed_b = transform_table(report, "generic", "test_generic")
    composition, failed_c = composition_table(report)
    tests = len(report["outcomes"])
    failed = sum(outcome == "failed" for outcome in report["outcomes"].values())
    body = (
        "Per-transform contract (test_contract.py):\n\n"
        + per_transform
        + "\n\nalbumentations' generic checks (test_generic.py):\n\n"
        + generic
        + "\n\nComposition (test_composition.py; each example is one random pipeline of 2-5 steps and its inputs):\n\n"
        + composition
    )
    summary = (
        f"{tests} tests, {failed} failed ({failed_a} per-transform, {failed_b} generic, {failed_c} composition), "
        f"pytest exit status {status}, {seconds:.0f} s wall. Examples per property (the fuzz profile: "
        f"`max_examples={args.examples}` scaled per property; 'bad inputs' sums every bad-input test of the transform; each "
        "'seeds' example makes up to six calls, each 'yaml' example four; an 'independence' example makes 48 calls)."
    )
    print(body + "\n\n" + summary)
    if args.write:
        distribution = "AlbumentationsX" if IS_ALBUMENTATIONS_X else "albumentations 2.0.8"
        write_section(
            "fuzz_contract_x" if IS_ALBUMENTATIONS_X else "fuzz_contract",
            f"Contract suite, bounded fuzz profile ({distribution})",
            body + "\n\n" + summary,
            command=(
                f"HYPOTHESIS_PROFILE=fuzz ALBU_DEFECTS_FUZZ_EXAMPLES={args.examples} python -m pytest tests/contract  "
                f"(via: nice -n 10 python benchmarks/{Path(__file__).name} --examples {args.examples} --write)"
            ),
        )
    sys.exit(0 if status in (0, 1) else status)


if __name__ == "__main__":
    main()
