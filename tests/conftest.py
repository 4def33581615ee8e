"""Shared fixtures, hypothesis profiles and the test markers.

Profiles: ``ci`` (default; derandomized so CI is reproducible), ``fuzz`` (thousands of examples,
run by hand: ``HYPOTHESIS_PROFILE=fuzz python -m pytest tests/contract``) and ``dev`` (a tenth of
``ci``'s examples; what the day-to-day loop ``python -m pytest -m "not slow"`` loads unless
``HYPOTHESIS_PROFILE`` names another).

Markers: ``slow`` (subprocesses, DataLoader workers, DDP ranks, example training; set in the test
files) and ``realdata`` (needs ../shared's Magnetic Tile; added here to every test that uses the
``magnetic_tile_root`` fixture, which skips when the data are absent).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("ALBUMENTATIONS_NO_TELEMETRY", "1")

import pytest
from hypothesis import HealthCheck, settings

for profile, examples, derandomize in (
    ("ci", 30, True),
    ("fuzz", int(os.environ.get("ALBU_DEFECTS_FUZZ_EXAMPLES", "2000")), False),
    ("dev", 3, True),
):
    settings.register_profile(
        profile,
        max_examples=examples,
        deadline=None,
        derandomize=derandomize,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    """``-m "not slow"`` is the day-to-day loop: property tests run on the ``dev`` profile there."""
    if "HYPOTHESIS_PROFILE" not in os.environ and "not slow" in (config.option.markexpr or ""):
        settings.load_profile("dev")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "magnetic_tile_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.realdata)


REPO_ROOT = Path(__file__).resolve().parents[1]


def _find_magnetic_tile() -> Path:
    """``../shared/data/magnetic_tile`` beside the checkout (or beside any parent folder, for git worktrees)."""
    if "ALBU_DEFECTS_MT_ROOT" in os.environ:
        return Path(os.environ["ALBU_DEFECTS_MT_ROOT"])
    for parent in REPO_ROOT.parents:
        candidate = parent / "shared" / "data" / "magnetic_tile"
        if candidate.is_dir():
            return candidate
    return REPO_ROOT.parent / "shared" / "data" / "magnetic_tile"


#: The real dataset (override with ALBU_DEFECTS_MT_ROOT); tests using it skip when it is absent.
MAGNETIC_TILE_ROOT = _find_magnetic_tile()


@pytest.fixture(scope="session")
def samples():
    """The bundled Magnetic Tile samples (always present)."""
    from albu_defects import load_samples

    return load_samples()


@pytest.fixture(scope="session")
def magnetic_tile_root() -> Path:
    """The full Magnetic Tile dataset; tests using it skip when it is absent."""
    if not (MAGNETIC_TILE_ROOT / "MT_Free").is_dir():
        pytest.skip(f"real Magnetic Tile data not found at {MAGNETIC_TILE_ROOT}")
    return MAGNETIC_TILE_ROOT
