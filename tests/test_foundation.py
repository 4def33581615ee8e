"""Package foundation: samples, validation, geometry, CLI, README/CI commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import albu_defects
from albu_defects.core.geometry import connected_components, dilate_mask, mask_bbox, placement_overlap
from albu_defects.core.validation import as_bool_mask, check_class_mask, check_image, clip_to_dtype, dtype_max
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


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ([[1, 2]], "numpy array"),
        (np.zeros((4,), np.uint8), "shape (H, W)"),
        (np.zeros((4, 4), np.int32), "dtype int32"),
        (np.zeros((4, 4), np.float64), "dtype float64"),
        (np.full((4, 4), np.nan, np.float32), "NaN"),
    ],
)
def test_check_image_rejects_bad_input_by_name(bad, fragment):
    with pytest.raises(ValueError, match="picture") as info:
        check_image(bad, "picture")
    assert fragment in str(info.value)


def test_mask_checks():
    assert as_bool_mask(np.array([[0, 3]], np.uint8)).tolist() == [[False, True]]
    assert as_bool_mask(np.ones((2, 3, 1), bool), (2, 3)).shape == (2, 3)
    with pytest.raises(ValueError, match="must match the image size"):
        as_bool_mask(np.ones((2, 3), bool), (3, 3))
    with pytest.raises(ValueError, match="bool or integer"):
        as_bool_mask(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="class id 7"):
        check_class_mask(np.full((2, 2), 7, np.uint8), (2, 2), num_classes=5)


def test_dtype_helpers():
    assert dtype_max(np.uint8) == 255 and dtype_max(np.uint16) == 65535 and dtype_max(np.float32) == 1.0
    assert clip_to_dtype(np.array([-3.0, 2.5, 300.0]), np.uint8).tolist() == [0, 2, 255]
    out = clip_to_dtype(np.array([np.inf, -2.0]), np.float32)
    assert out.dtype == np.float32 and np.isfinite(out).all() and out[1] == -2.0


@given(
    th=st.integers(1, 30),
    tw=st.integers(1, 30),
    sh=st.integers(1, 30),
    sw=st.integers(1, 30),
    y=st.integers(-40, 40),
    x=st.integers(-40, 40),
)
def test_placement_overlap_matches_brute_force(th, tw, sh, sw, y, x):
    target = np.zeros((th, tw), np.int32)
    source = np.arange(1, sh * sw + 1, dtype=np.int32).reshape(sh, sw)
    expected = target.copy()
    for i in range(sh):
        for j in range(sw):
            if 0 <= y + i < th and 0 <= x + j < tw:
                expected[y + i, x + j] = source[i, j]
    overlap = placement_overlap((th, tw), (sh, sw), (y, x))
    if overlap is None:
        assert not expected.any()
    else:
        target[overlap.target] = source[overlap.source]
        np.testing.assert_array_equal(target, expected)


def test_mask_bbox_dilate_and_components():
    mask = np.zeros((10, 12), bool)
    assert mask_bbox(mask) is None
    mask[2:4, 3:6] = True
    mask[8, 10] = True
    assert mask_bbox(mask) == (2, 3, 9, 11)
    count, labels = connected_components(mask)
    assert count == 2 and set(np.unique(labels)) == {0, 1, 2}
    grown = dilate_mask(mask, 1)
    assert grown[1:5, 2:7].all() and grown.sum() == 4 * 5 + 3 * 3  # two separate grown blobs
    assert dilate_mask(mask, 0) is not mask


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
