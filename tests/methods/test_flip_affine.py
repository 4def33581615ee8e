"""FlipAffine, the default defect transform: the same draws and pixels as the Compose it replaces."""

import random

import albumentations as A
import cv2
import numpy as np
import pytest

from albu_defects.core.transform import IS_ALBUMENTATIONS_X
from albu_defects.methods.injection.arguments import default_defect_transform
from albu_defects.methods.injection.flip_affine import FlipAffine


def _compose_of_0_1_0() -> A.Compose:
    """The default defect transform of 0.1.0."""
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.Affine(
                scale=(0.9, 1.1),
                translate_percent=(-0.0625, 0.0625),
                rotate=(-10, 10),
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.5,
            ),
        ]
    )


def _canvas(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> tuple[np.ndarray, np.ndarray]:
    top = 1.0 if dtype == np.float32 else np.iinfo(dtype).max
    image = (rng.random(shape) * top).astype(dtype)
    mask = np.zeros(shape[:2], np.uint8)
    h, w = shape[:2]
    mask[h // 3 : 2 * h // 3, w // 4 : 3 * w // 4] = 1
    return image, mask


@pytest.mark.skipif(IS_ALBUMENTATIONS_X, reason="AlbumentationsX draws a Compose's numbers in another way")
@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((61, 61), np.uint8),
        ((97, 97, 1), np.uint8),
        ((80, 80, 3), np.uint8),
        ((57, 57, 3), np.float32),
        ((45, 45), np.uint16),
        ((40, 52, 6), np.uint8),
    ],
)
def test_same_draws_and_pixels_as_the_compose_it_replaces(shape, dtype):
    old, new = _compose_of_0_1_0(), default_defect_transform()
    assert isinstance(new, FlipAffine)
    rng = np.random.default_rng(0)
    for seed in range(60):
        image, mask = _canvas(rng, shape, dtype)
        outputs = []
        for transform in (old, new):
            py_random = random.Random(seed)
            transform.set_random_state(np.random.default_rng(seed), py_random)
            out = transform(image=image, mask=mask)
            outputs.append((out["image"], out["mask"], py_random.random()))  # the next draw: same stream position
        (old_image, old_mask, old_next), (new_image, new_mask, new_next) = outputs
        assert new_image.dtype == image.dtype and new_image.shape == image.shape
        np.testing.assert_array_equal(new_image, old_image)
        np.testing.assert_array_equal(new_mask, old_mask)
        assert new_next == old_next


def test_applies_each_step_with_its_probability_and_keeps_inputs():
    image = np.arange(30 * 40, dtype=np.uint8).reshape(30, 40)
    mask = (image % 7 == 0).astype(np.uint8)
    before = image.copy()
    flips = FlipAffine(hflip_p=1, vflip_p=1, affine_p=0)
    out = flips(image=image, mask=mask)
    np.testing.assert_array_equal(out["image"], image[::-1, ::-1])
    np.testing.assert_array_equal(out["mask"], mask[::-1, ::-1])
    nothing = FlipAffine(hflip_p=0, vflip_p=0, affine_p=0)(image=image, mask=mask)
    np.testing.assert_array_equal(nothing["image"], image)
    assert nothing["image"] is not image
    warped = FlipAffine(hflip_p=0, vflip_p=0, affine_p=1, scale=(1.5, 1.5), rotate=(0, 0), translate_percent=(0, 0))
    out = warped(image=image, mask=mask)
    assert out["image"].shape == image.shape and not np.array_equal(out["image"], image)
    assert set(np.unique(out["mask"])) <= {0, 1}  # nearest-neighbour: still a 0/1 mask
    np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize(
    "kwargs",
    [{"scale": (1.1, 0.9)}, {"scale": (0.0, 1.0)}, {"rotate": (10, -10)}, {"hflip_p": 1.5}, {"affine_p": -0.1}],
)
def test_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        FlipAffine(**kwargs)


def test_yaml_round_trip(tmp_path):
    transform = FlipAffine(scale=(0.8, 1.2), hflip_p=0.25)
    path = tmp_path / "t.yaml"
    A.save(transform, str(path), data_format="yaml")
    loaded = A.load(str(path), data_format="yaml")
    assert isinstance(loaded, FlipAffine)
    assert loaded.scale == (0.8, 1.2) and loaded.hflip_p == 0.25 and loaded.rotate == (-10, 10)
