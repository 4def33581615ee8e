"""Banks the label-model tests share (issue 11): the bundled Magnetic Tile samples and a float32 gray bank."""

from __future__ import annotations

import numpy as np
import pytest

from .label_helpers import gray_bank, saved_sample_bank


@pytest.fixture(scope="session")
def mt_bank(tmp_path_factory) -> str:
    """The bundled Magnetic Tile samples as a saved bank (5 classes); its folder."""
    return saved_sample_bank(tmp_path_factory.mktemp("labels") / "mt")


@pytest.fixture(scope="session")
def float_bank(tmp_path_factory) -> str:
    """A float32 gray bank whose 120x120 sources make defects shrink into smaller images."""
    return gray_bank(tmp_path_factory.mktemp("labels") / "float", dtype=np.float32, side=120)
