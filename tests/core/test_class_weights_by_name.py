"""ClassWeights meets a bank by class name, never by position (issue 16 item 4; failed on 72696d0)."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

import albu_defects as ad

BANK_CLASSES = ["Blowhole", "Break", "Crack", "Fray", "Uneven"]
SHUFFLED = ["Break", "Crack", "Fray", "Uneven", "Blowhole"]  # another order of the same names
SIZE = 48


@pytest.fixture(scope="module")
def bank() -> ad.DefectBank:
    """Two defects of every class (one per image) and two defect-free images."""
    g = np.random.default_rng(0)
    images, masks = [], []
    for k in range(1, len(BANK_CLASSES) + 1):
        for _ in range(2):
            images.append(g.integers(80, 160, (SIZE, SIZE), dtype=np.uint8))
            mask = np.zeros((SIZE, SIZE), np.uint8)
            mask[10:18, 12:22] = k
            masks.append(mask)
    for _ in range(2):
        images.append(g.integers(80, 160, (SIZE, SIZE), dtype=np.uint8))
        masks.append(np.zeros((SIZE, SIZE), np.uint8))
    return ad.DefectBank.from_arrays(images, masks, class_names=BANK_CLASSES)


def _all_loss_on(weights: ad.ClassWeights, name: str) -> None:
    weights.update({c: (1.0 if c == name else 0.0) for c in weights.classes})


def test_guided_crop_paste_reads_class_weights_by_name(bank):
    with ad.ClassWeights(SHUFFLED, floor=0.0) as weights:
        _all_loss_on(weights, "Crack")
        transform = ad.GuidedCropPaste(bank, class_weights=weights, max_defects=1, p=1.0, shift_limit=0.0)
        pipeline = A.Compose([transform], seed=0)
        free = np.full((SIZE, SIZE), 120, np.uint8)
        pasted = set()
        for _ in range(12):
            mask = pipeline(image=free, mask=np.zeros((SIZE, SIZE), np.uint8))["mask"]
            pasted |= {bank.classes[int(k) - 1] for k in np.unique(mask) if k}
        assert pasted == {"Crack"}


def test_synthesize_reads_class_weights_by_name(bank):
    with ad.ClassWeights(SHUFFLED, floor=0.0) as weights:
        _all_loss_on(weights, "Crack")
        names = {
            name for s in ad.synthesize(bank, 12, weights, seed=0, workers=1, progress=False) for name in s.classes
        }
    assert names == {"Crack"}


@pytest.mark.parametrize("classes", [["Blowhole", "Break", "Crack", "Fray", "Dent"], 5])
def test_class_weights_with_other_names_are_refused(bank, classes):
    with ad.ClassWeights(classes) as weights:
        with pytest.raises(ValueError, match="Uneven"):
            ad.GuidedCropPaste(bank, class_weights=weights)
        with pytest.raises(ValueError, match="Uneven"):
            next(iter(ad.synthesize(bank, 1, weights, progress=False)))
