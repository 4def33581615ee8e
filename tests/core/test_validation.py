"""core.validation: image and mask checks, dtype helpers."""

from __future__ import annotations

import numpy as np
import pytest

from albu_defects.core.validation import as_bool_mask, check_class_mask, check_image, clip_to_dtype, dtype_max


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


def test_count_range_at_least_accepts_counts_and_ranges_and_names_the_field():
    from pydantic import BaseModel, ValidationError, field_validator

    from albu_defects.core.validation import count_range_at_least

    class Schema(BaseModel):
        n: int | tuple[int, int]
        _n = field_validator("n")(count_range_at_least(1))

    assert Schema(n=2).n == 2 and Schema(n=(1, 3)).n == (1, 3)
    for bad in (0, (0, 2), (3, 2)):
        with pytest.raises(ValidationError, match=r"n must be an int >= 1 or a \(low, high\) range"):
            Schema(n=bad)


def test_options_schema_takes_the_fields_and_types_of_an_options_tuple():
    from typing import NamedTuple

    from pydantic import ValidationError

    from albu_defects.core.validation import options_schema

    class Options(NamedTuple):
        count: int = 3
        strength: float | tuple[float, float] = 0.5

    schema = options_schema(Options, "OptionsSchema")
    assert list(schema.model_fields) == ["count", "strength"]
    assert schema(count=2, strength=(0.1, 0.2)).strength == (0.1, 0.2)
    with pytest.raises(ValidationError, match="strength"):
        schema(count=2, strength="strong")
    with pytest.raises(ValidationError, match="count"):  # every field required: the transform passes them all
        schema(strength=0.5)


def test_range_within_checks_a_pair_field_by_its_name():
    from pydantic import BaseModel, ValidationError, field_validator

    from albu_defects.core.validation import range_within

    class Schema(BaseModel):
        ratio_range: tuple[float, float]
        _ratio = field_validator("ratio_range")(range_within(0.0, 1.0, exclusive_min=True))

    assert Schema(ratio_range=(0.25, 1)).ratio_range == (0.25, 1.0)
    for bad in ((0.0, 0.5), (0.5, 0.25), (0.5, 2.0)):
        with pytest.raises(ValidationError, match=r"ratio_range=\(.*\) must satisfy 0.0 < low <= high <= 1.0"):
            Schema(ratio_range=bad)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("source", [np.float32, np.float64])
def test_clip_to_dtype_rounds_half_to_even_and_saturates_for_every_shape(dtype, source):
    """OpenCV's saturating cast serves the large images; tiny ones (which OpenCV would read as a
    scalar) and other layouts take numpy's path: the same result for all of them."""
    rng = np.random.default_rng(0)
    sizes = (1, 2, 3, 4, 5, 8, 64)
    shapes = [(h, w) for h in sizes for w in sizes] + [
        (h, w, c) for h in (1, 4, 9) for w in (1, 9) for c in (1, 3, 4, 5)
    ]
    for shape in shapes:
        values = (rng.normal(size=shape) * 40000).astype(source)
        values.flat[0] = 2.5  # a tie: rounds to 2
        expected = np.clip(np.rint(values.astype(np.float64)), 0, np.iinfo(dtype).max).astype(dtype)
        out = clip_to_dtype(values, dtype)
        assert out.dtype == dtype and out.shape == shape, shape
        np.testing.assert_array_equal(out, expected, err_msg=str(shape))
    transposed = (rng.normal(size=(64, 32)) * 300).astype(source).T  # not C-contiguous
    np.testing.assert_array_equal(
        clip_to_dtype(transposed, dtype), np.clip(np.rint(transposed), 0, np.iinfo(dtype).max).astype(dtype)
    )
