"""The package as a whole: bundled samples, the CLI, the README and CI commands, imports, version."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import albu_defects
from albu_defects.data import MAGNETIC_TILE_CLASSES, sample_root

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_bundled_samples_cover_every_class_and_stay_small(samples):
    classes = {s.class_name for s in samples}
    assert classes == {"Free", *MAGNETIC_TILE_CLASSES}
    assert sum(s.class_name == "Free" for s in samples) >= 3
    for s in samples:
        assert s.image.dtype == np.uint8 and s.image.ndim == 2
        assert s.mask.shape == s.image.shape and s.mask.dtype == bool
        assert s.mask.any() == (s.class_name != "Free")
        assert set(np.unique(s.class_mask)) <= {0, s.class_id}
    size = sum(p.stat().st_size for p in sample_root().rglob("*") if p.is_file())
    assert size < 1_000_000
    assert (sample_root() / "CITATION.md").read_text().count("Huang") == 1


@pytest.mark.slow
def test_cli_demo_writes_picture(tmp_path):
    out = tmp_path / "demo.png"
    result = subprocess.run(
        [sys.executable, "-m", "albu_defects", "demo", "--out", str(out)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    import cv2

    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape[0] > 200 and picture.shape[1] > 400


def test_cli_reports_errors_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "albu_defects", "demo", "--out", str(tmp_path / "demo.unknown-ext")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "error:" in result.stderr


def _readme_command(marker: str) -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\s*```(?:bash|sh)\n(.+?)\n```", readme, re.S)
    assert match, f"README.md has no ```bash block after <!-- {marker} -->"
    return match.group(1).strip()


def test_ci_runs_exactly_the_readme_test_command():
    command = _readme_command("test-command")
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert command in ci.splitlines()
    assert "torch==2.13.0" in ci


def test_readme_demo_command_uses_console_script():
    command = _readme_command("demo-command")
    assert "albu-defects demo" in command and "pip install" in command


@pytest.mark.slow
def test_core_package_works_without_torch():
    # albumentations itself imports torch when it is installed, so block it: the core must not need it.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import albu_defects, albu_defects.tools.cli, albu_defects.tools.demo\n"
        "import pkgutil, importlib\n"
        "for m in pkgutil.iter_modules(albu_defects.__path__):\n"
        "    if m.name not in ('pytorch', '__main__'): importlib.import_module('albu_defects.' + m.name)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_version_is_exposed():
    assert re.fullmatch(r"\d+\.\d+\.\d+", albu_defects.__version__)
