"""Shared fixtures and hypothesis profiles.

Profiles: ``ci`` (default; derandomized so CI is reproducible) and ``fuzz`` (thousands of examples,
run by hand: ``HYPOTHESIS_PROFILE=fuzz python -m pytest tests/contract``).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("ALBUMENTATIONS_NO_TELEMETRY", "1")

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz",
    # ALBU_DEFECTS_FUZZ_EXAMPLES: a smaller bounded run on a busy machine (benchmarks/fuzz_contract.py --examples)
    max_examples=int(os.environ.get("ALBU_DEFECTS_FUZZ_EXAMPLES", "2000")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

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
