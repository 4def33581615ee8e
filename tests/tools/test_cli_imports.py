"""The command line imports only what a command needs (issue 14, sec. 3).

Checked by module, not by seconds (machines are noisy; the timing is benchmarks/bench_cli.py): a
fresh interpreter runs the command (``python -m albu_defects ...``) and lists ``sys.modules``.
``--help`` and the bank commands import neither albumentations (2.0.8 imports torch whenever torch is
installed: seconds) nor torch.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # a fresh interpreter per command
HEAVY = ("albumentations", "torch")

RUN = """
import json, runpy, sys
sys.argv = ["albu-defects", *sys.argv[1:]]
try:
    runpy.run_module("albu_defects", run_name="__main__")  # python -m albu_defects, as the console script
    status = 0
except SystemExit as stop:
    status = stop.code
print("\\nMODULES " + json.dumps({"status": status, "modules": sorted(sys.modules)}))
"""


def run_cli(*argv: str) -> tuple[int, set[str]]:
    result = subprocess.run([sys.executable, "-c", RUN, *argv], capture_output=True, text=True, check=False)
    line = next((x for x in result.stdout.splitlines() if x.startswith("MODULES ")), None)
    assert line is not None, result.stderr
    report = json.loads(line.removeprefix("MODULES "))
    return int(report["status"] or 0), set(report["modules"])


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


@pytest.fixture(scope="module")
def bank_folder(tmp_path_factory) -> str:
    import albu_defects as ad

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 32), dtype=np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[5:12, 8:20] = 1
    bank = ad.DefectBank.from_arrays([image, image], [mask, np.zeros_like(mask)], class_names=["spot"])
    return str(bank.save(tmp_path_factory.mktemp("cli") / "bank"))


@pytest.mark.parametrize("argv", [["--help"], ["bank", "--help"], ["synth", "--help"], ["preview", "--help"]])
def test_help_imports_neither_numpy_nor_albumentations_nor_torch(argv):
    status, modules = run_cli(*argv)
    assert status == 0
    assert heavy(modules) == [] and "numpy" not in modules, heavy(modules) or "numpy"


def test_bank_stats_imports_neither_albumentations_nor_torch(bank_folder):
    status, modules = run_cli("bank", "stats", bank_folder)
    assert status == 0
    assert "albu_defects.bank" in modules  # it did load the bank
    assert heavy(modules) == []


def test_bank_build_imports_neither_albumentations_nor_torch(tmp_path):
    from albu_defects.data import sample_root

    status, modules = run_cli("bank", "build", str(sample_root()), "-o", str(tmp_path / "bank"), "--quiet")
    assert status == 0 and (tmp_path / "bank" / "index.json").is_file()
    assert heavy(modules) == []


def test_a_command_that_needs_albumentations_still_gets_it(tmp_path):
    """The lazy imports are not a way of skipping work: the demo runs the transforms."""
    status, modules = run_cli("demo", "--out", str(tmp_path / "demo.png"))
    assert status == 0 and (tmp_path / "demo.png").is_file()
    assert "albumentations" in modules
