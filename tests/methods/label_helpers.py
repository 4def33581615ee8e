"""Shared inputs and checks of the label-model tests (issue 11): banks, tiles, and an independent label oracle.

The oracle here is written from the README's label model, not from the library's code: a
``class_vector`` holds 1 for class ``k`` exactly when the final mask holds ``k`` (a class-index mask,
value ``k``; a multi-hot (H, W, K) mask, channel ``k - 1`` nonzero).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import albu_defects as ad


def classes_in_mask(mask: Any) -> set[int]:
    """Class ids present in a class-index ((H, W) / (H, W, 1)) or multi-hot ((H, W, K), K > 1) mask."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] > 1:
        return {int(c) + 1 for c in np.flatnonzero(mask.reshape(-1, mask.shape[2]).any(axis=0))}
    values = np.unique(mask)
    return {int(v) for v in values if v != 0}


def expected_vector(mask: Any, num_classes: int) -> np.ndarray:
    vector = np.zeros(num_classes, np.float32)
    for c in classes_in_mask(mask):
        assert 1 <= c <= num_classes, f"class {c} in the mask is outside 1..{num_classes}"
        vector[c - 1] = 1.0
    return vector


def classes_of_label(label: Any) -> set[int]:
    """Classes an image-level label says: an int id (0 = none) or a multi-hot vector."""
    if np.ndim(label) == 0:
        return set() if int(label) == 0 else {int(label)}
    return {int(c) + 1 for c in np.flatnonzero(np.asarray(label))}


def assert_labels_match_mask(out: dict[str, Any], num_classes: int, keys: tuple[str, ...] = ("class_vector", "label")):
    """Every image-level label key in ``out`` says exactly the classes of ``out["mask"]``."""
    present = classes_in_mask(out["mask"])
    for key in keys:
        if key in out:
            assert classes_of_label(out[key]) == present, f"{key}={out[key]} but the mask holds classes {present}"
    if "class_vector" in out:
        vector = out["class_vector"]
        assert isinstance(vector, np.ndarray) and vector.dtype == np.float32 and vector.shape == (num_classes,)
        np.testing.assert_array_equal(vector, expected_vector(out["mask"], num_classes))


def free_tile() -> ad.Sample:
    return next(s for s in ad.load_samples() if s.class_name == "Free")


def defect_tile(class_name: str = "Crack") -> ad.Sample:
    return next(s for s in ad.load_samples() if s.class_name == class_name)


def sample_folder() -> Path:
    """The bundled Magnetic Tile samples (``albu_defects/data/magnetic_tile``, in 0.1.0 and since)."""
    return Path(ad.__file__).parent / "data" / "magnetic_tile"


def saved_sample_bank(folder: Path) -> str:
    """The bundled Magnetic Tile samples as a saved bank (5 classes); its folder."""
    return str(ad.DefectBank.from_folder(sample_folder(), progress=False).save(folder))


def gray_bank(folder: Path, dtype: Any = np.uint8, side: int = 40, full_cover: bool = False) -> str:
    """A saved 2-class gray bank: class 1 is a bright block (the whole image with ``full_cover``)."""
    rng = np.random.default_rng(0)
    white = 255 if np.dtype(dtype) == np.uint8 else (65535 if np.dtype(dtype) == np.uint16 else 1.0)
    image = (rng.uniform(0.6, 1.0, (side, side)) * white).astype(dtype)
    mask = np.ones((side, side), np.uint8) if full_cover else np.zeros((side, side), np.uint8)
    if not full_cover:
        mask[8:20, 10:27] = 1
    free = (rng.uniform(0.0, 0.3, (side, side)) * white).astype(dtype)
    bank = ad.DefectBank.from_arrays([image, free], [mask, np.zeros_like(mask)], class_names=["spot", "scratch"])
    return str(bank.save(folder))
