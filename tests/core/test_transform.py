"""core.transform: the DefectTransform hook (draw_params) and its bridge to albumentations."""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np
import pytest

from albu_defects import DefectTransform


class Brighten(DefectTransform):
    """A minimal subclass: draws an offset in draw_params, applies it in apply."""

    def draw_params(self, params: dict[str, Any], data: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        return {"offset": int(rng.integers(1, 10))}

    def apply(self, img: np.ndarray, offset: int = 0, **params: Any) -> np.ndarray:
        return img + np.uint8(offset)


def test_draw_params_feeds_apply_reproducibly():
    image = np.zeros((4, 5), np.uint8)
    first = A.Compose([Brighten(p=1.0)], seed=3)(image=image)["image"]
    again = A.Compose([Brighten(p=1.0)], seed=3)(image=image)["image"]
    assert first.shape == image.shape and 1 <= int(first[0, 0]) <= 9 and (first == first[0, 0]).all()
    np.testing.assert_array_equal(first, again)


def test_a_hook_still_named_sample_is_refused():
    # 0.1.0 called the hook sample(); a subclass that still defines it would silently draw nothing
    with pytest.raises(TypeError, match="draw_params"):

        class Old(DefectTransform):
            def sample(self, params: dict[str, Any], data: dict[str, Any], rng: np.random.Generator) -> dict:
                return {}
