"""DefectBank.from_arrays owns its crops and free images (issue 16 item 5; failed on 72696d0)."""

from __future__ import annotations

import numpy as np

import albu_defects as ad


def _arrays():
    g = np.random.default_rng(0)
    images = [g.integers(50, 200, (24, 32), dtype=np.uint8) for _ in range(3)]
    masks = [np.zeros((24, 32), np.uint8) for _ in range(3)]
    masks[0][6:10, :] = 1  # spans the full width: its crop is a run of whole rows of the image
    masks[1][4:9, 5:12] = 1
    return images, masks


def test_a_later_in_place_edit_of_the_callers_arrays_does_not_reach_the_bank(tmp_path):
    images, masks = _arrays()
    bank = ad.DefectBank.from_arrays(images, masks, class_names=["scratch"])
    crops = [entry.crop.copy() for entry in bank.entries]
    free = [bank.load_free(i).copy() for i in range(bank.num_free)]
    assert bank.entries[0].crop.shape[1] == 32 and bank.num_free == 1
    for image in images:
        image[:] = 0  # e.g. a normalisation in place, or a reused buffer
    for mask in masks:
        mask[:] = 0
    assert all(np.array_equal(e.crop, c) for e, c in zip(bank.entries, crops, strict=True))
    assert all(e.mask.any() for e in bank.entries)
    assert all(np.array_equal(bank.load_free(i), f) for i, f in enumerate(free))
    loaded = ad.DefectBank.load(bank.save(tmp_path / "bank"))
    assert all(np.array_equal(e.crop, c) for e, c in zip(loaded.entries, crops, strict=True))
    assert all(np.array_equal(loaded.load_free(i), f) for i, f in enumerate(free))


def test_crops_do_not_share_memory_with_the_callers_arrays():
    images, masks = _arrays()
    bank = ad.DefectBank.from_arrays(images, masks)
    for entry in bank.entries:
        assert not any(np.shares_memory(entry.crop, image) for image in images)
        assert not any(np.shares_memory(entry.mask, mask) for mask in masks)
    assert not any(np.shares_memory(bank.load_free(0), image) for image in images)
