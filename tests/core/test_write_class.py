"""write_class (one write per injected defect) is paint_classes with a one-class map, errors included."""

import numpy as np
import pytest

from albu_defects.core.labels import paint_classes, write_class


def _paint_one(mask, region, class_id):
    class_map = np.zeros(region.shape, np.int64)
    class_map[region] = class_id
    return paint_classes(mask, class_map)


@pytest.mark.parametrize(
    ("dtype", "layout", "class_id"),
    [
        (np.uint8, (20, 30), 3),
        (np.uint8, (20, 30, 1), 7),
        (np.uint16, (20, 30), 300),
        (bool, (20, 30), 1),
        (np.int32, (20, 30, 1), 0),
        (np.uint8, (20, 30, 4), 2),
    ],
)
def test_write_class_equals_painting_one_class(dtype, layout, class_id):
    rng = np.random.default_rng(0)
    for density in (0.0, 0.1, 0.6):
        mask = (rng.random(layout) < 0.3).astype(dtype) if dtype is bool else rng.integers(0, 3, layout).astype(dtype)
        region = rng.random(layout[:2]) < density
        before = mask.copy()
        got = write_class(mask, region, class_id)
        np.testing.assert_array_equal(got, _paint_one(mask, region, class_id))
        assert got.dtype == mask.dtype and got.shape == mask.shape and got is not mask
        np.testing.assert_array_equal(mask, before)


@pytest.mark.parametrize(("dtype", "class_id"), [(bool, 2), (np.uint8, 256), (np.float32, 1)])
def test_write_class_refuses_what_the_mask_cannot_hold(dtype, class_id):
    mask = np.zeros((8, 8), dtype)
    region = np.zeros((8, 8), bool)
    region[2, 3] = True
    with pytest.raises(ValueError) as written:
        write_class(mask, region, class_id)
    with pytest.raises(ValueError) as painted:
        _paint_one(mask, region, class_id)
    assert str(written.value) == str(painted.value)
