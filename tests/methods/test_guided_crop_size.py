"""Guided-Crop ``size_mode`` (issue 15): crops pasted at the scale the image's resolution implies.

A bank built at native resolution pasted into resized training images used to paste every defect at
its native pixel size (about 2x the real share of the image on the bundled Magnetic Tile samples
resized to 128 px); ``size_mode="relative"`` scales each crop by (image size / source size), as
DLI does.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest

from albu_defects import DefectBank, GuidedCropPaste
from albu_defects.data import sample_root
from albu_defects.methods.guided_crop.functional import (
    GuidedCropOptions,
    class_probabilities,
    entry_at_scale,
    plan_guided_crop,
    render_guided_crop,
)

STILL = {"flip_p": 0.0, "shift_limit": 0.0, "crop_brightness": 0.0, "crop_contrast": 0.0, "crop_saturation": 0.0}
STILL |= {"brightness": 0.0, "contrast": 0.0}


def _square_bank(source_hw: tuple[int, int]) -> DefectBank:
    """One 20x20 class-1 square in a ``source_hw`` image, and one 48x48 defect-free image."""
    image = np.full(source_hw, 60, np.uint8)
    mask = np.zeros(source_hw, np.uint8)
    mask[10:30, 10:30] = 1
    free = np.full((48, 48), 200, np.uint8)
    return DefectBank.from_arrays([image, free], [mask, np.zeros((48, 48), np.uint8)], class_names=["square"])


@pytest.mark.parametrize(
    ("source_hw", "relative_px"),
    [((96, 96), 10 * 10), ((96, 64), 10 * 15), ((48, 48), 20 * 20)],  # 20x20 scaled by (48/H, 48/W)
)
def test_pasted_area_follows_the_size_mode_exactly(source_hw, relative_px):
    bank = _square_bank(source_hw)
    base = np.full((48, 48), 200, np.uint8)
    for size_mode, expected in (("relative", relative_px), ("absolute", 400)):
        transform = GuidedCropPaste(bank=bank, max_defects=1, size_mode=size_mode, p=1.0, **STILL)
        for seed in range(5):
            out = A.Compose([transform], seed=seed)(image=base)
            assert int((out["mask"] == 1).sum()) == expected, (size_mode, seed)
            # the label is exactly the pasted pixels (the square is darker than the base)
            np.testing.assert_array_equal(out["mask"] == 1, out["image"] < 200)


def test_entry_at_scale_keeps_a_valid_entry_and_is_the_entry_itself_at_its_own_size():
    bank = _square_bank((96, 64))
    entry = bank.entries_of(1)[0]
    assert entry_at_scale(entry, entry.source_hw) is entry
    scaled = entry_at_scale(entry, (48, 48))
    assert scaled.source_hw == (48, 48) and scaled.class_id == entry.class_id and scaled.entry_id == entry.entry_id
    x0, y0, x1, y1 = scaled.bbox
    assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 48 and (y1 - y0, x1 - x0) == scaled.hw
    assert scaled.area_px == 150 and scaled.num_blobs == 1
    # a 1-pixel defect shrunk 10x does not vanish
    dot = np.zeros((200, 200), np.uint8)
    dot[100, 100] = 1
    tiny = DefectBank.from_arrays([np.zeros((200, 200), np.uint8)], [dot])
    assert 1 <= entry_at_scale(tiny.entries[0], (20, 20)).area_px <= 4  # its 2x2 crop, ties kept


def test_size_mode_is_validated_and_saved(tmp_path):
    bank = _square_bank((96, 96))
    with pytest.raises(ValueError, match="size_mode"):
        GuidedCropPaste(bank=bank, size_mode="native")
    with pytest.raises(ValueError, match="size_mode"):
        GuidedCropOptions(size_mode="native").checked()
    path = str(bank.save(tmp_path / "bank"))
    pipeline = A.Compose([GuidedCropPaste(bank=path, size_mode="relative", p=1.0)], seed=0)
    A.save(pipeline, tmp_path / "gc.yaml", data_format="yaml")
    assert A.load(tmp_path / "gc.yaml", data_format="yaml").transforms[0].size_mode == "relative"


def test_on_resized_magnetic_tile_the_pasted_share_matches_the_real_share_only_in_relative_mode():
    """The bundled samples (native sizes 113-372 px) pasted into 128x128 tiles, one defect per image."""
    bank = DefectBank.from_folder(sample_root(), progress=False)
    base = cv2.resize(np.asarray(bank.load_free(0)), (128, 128), interpolation=cv2.INTER_AREA)
    probabilities = class_probabilities("uniform", bank)
    ratios: dict[str, list[float]] = {"relative": [], "absolute": []}
    for size_mode, collected in ratios.items():
        options = GuidedCropOptions(max_defects=1, size_mode=size_mode)
        rng = np.random.default_rng(0)
        pasted, real = [], []
        for _ in range(150):
            plan = plan_guided_crop(bank, base, probabilities, rng, options)
            result = render_guided_crop(base, plan, len(bank.classes))
            source = bank.entries[plan.defects[0].entry.entry_id]
            kept = plan.defects[0].entry.blob_subset or range(1, source.num_blobs + 1)
            pasted.append(np.count_nonzero(result.mask) / result.mask.size)
            real.append(np.isin(source.blob_labels, kept).sum() / np.prod(source.source_hw))
        collected.append(float(np.mean(pasted) / np.mean(real)))
    # relative: the pasted share is the real share (up to rounding); absolute: far larger here
    assert 0.9 < ratios["relative"][0] < 1.1, ratios
    assert ratios["absolute"][0] > 1.5, ratios
