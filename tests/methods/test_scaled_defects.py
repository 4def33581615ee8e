"""Scaled bank defects are kept per entry and scale: the same arrays again, read-only, bank untouched."""

import numpy as np

from albu_defects.bank import DefectBank
from albu_defects.methods.injection import plan
from albu_defects.methods.injection.functional import scale_defect


def _bank() -> DefectBank:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 80), dtype=np.uint8) for _ in range(2)]
    masks = [np.zeros((64, 80), np.uint8) for _ in range(2)]
    masks[0][10:30, 20:50] = 1
    masks[1][30:60, 5:25] = 2
    return DefectBank.from_arrays(images, masks, class_names=["a", "b"])


def test_scaled_defect_is_computed_once_per_entry_and_scale(monkeypatch):
    bank = _bank()
    entry = bank.entries[0]
    crop_before, mask_before = entry.crop.copy(), entry.mask.copy()
    writeable = (entry.crop.flags.writeable, entry.mask.flags.writeable)
    calls = []
    monkeypatch.setattr(plan, "scale_defect", lambda *a: calls.append(a[2]) or scale_defect(*a))
    cache = plan._ScaledDefects(1 << 20)
    first = cache(entry, entry.crop, entry.mask, (0.5, 0.75))
    again = cache(entry, entry.crop, entry.mask, (0.5, 0.75))
    other = cache(entry, entry.crop, entry.mask, (2.0, 2.0))
    assert calls == [(0.5, 0.75), (2.0, 2.0)]
    assert again[0] is first[0] and again[1] is first[1] and again[2] == first[2]
    expected = scale_defect(entry.crop, entry.mask, (0.5, 0.75))
    np.testing.assert_array_equal(first[0], expected[0])
    np.testing.assert_array_equal(first[1], expected[1])
    assert not first[0].flags.writeable and not first[1].flags.writeable  # nobody can change the next draw's defect
    assert other[0].shape != first[0].shape
    np.testing.assert_array_equal(entry.crop, crop_before)
    np.testing.assert_array_equal(entry.mask, mask_before)
    assert (entry.crop.flags.writeable, entry.mask.flags.writeable) == writeable


def test_scaled_defects_stay_within_their_byte_budget():
    bank = _bank()
    entry = bank.entries[0]
    one = scale_defect(entry.crop, entry.mask, (2.0, 2.0))
    cache = plan._ScaledDefects(int(1.5 * (one[0].nbytes + one[1].nbytes)))
    for scale in (2.0, 1.9, 1.2, 1.1):
        cache(entry, entry.crop, entry.mask, (scale, scale))
        kept = sum(c.nbytes + m.nbytes for _, c, m, _ in cache.items.values())
        assert cache.used == kept <= cache.budget
        assert next(reversed(cache.items))[1] == (scale, scale)  # the newest stays, the oldest go first
    assert [key[1][0] for key in cache.items] == [1.2, 1.1]  # 1.9 went to make room


def test_unscaled_defects_are_not_kept():
    bank = _bank()
    entry = bank.entries[1]
    cache = plan._ScaledDefects(1 << 20)
    _, _, applied = cache(entry, entry.crop, entry.mask, (1.0, 1.0))
    assert applied == (1.0, 1.0) and not cache.items
