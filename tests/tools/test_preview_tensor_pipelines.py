"""Issue 11, break 10: ``albu-defects preview`` on a pipeline ending in ``ToTensorV2``.

Training pipelines end in ``A.Normalize(), ToTensorV2()``. The preview used to read the (C, H, W)
tensor as an (H, W, C) image and wrote a strip thousands of pixels wide. It must draw such a
pipeline exactly as it draws the same pipeline without ``ToTensorV2``, and draw a normalized
float image so that it looks like its input (not clipped to [0, 1]).
"""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest

pytest.importorskip("torch")

from albumentations.pytorch import ToTensorV2

from albu_defects import CutPaste

try:  # the `albu-defects` command's entry point (albu_defects.cli before the subpackage layout)
    from albu_defects.tools.cli import main
except ModuleNotFoundError:
    from albu_defects.cli import main

H, W = 64, 160
TITLE, BAR, GAP = 28, 18, 6  # the grid's title bar, a tile's label bar, the gap between tiles


def tile(picture: np.ndarray, column: int) -> np.ndarray:
    """The drawn pixels of one tile of a one-row preview at height ``H`` (column 0: the input)."""
    x = column * (W + GAP)
    return picture[TITLE + BAR : TITLE + BAR + H, x : x + W]


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """One gray image (a gradient with texture) and a class-index mask beside it."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(40, 200, W)[None, :] + rng.normal(0, 8, (H, W))
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "tile.png"), np.clip(ramp, 0, 255).astype(np.uint8))
    mask = np.zeros((H, W), np.uint8)
    mask[10:30, 20:60] = 2
    cv2.imwrite(str(folder / "tile_mask.png"), mask)
    return folder


def preview(tmp_path: Path, images: Path, transforms: list, name: str) -> np.ndarray:
    """The picture ``albu-defects preview`` writes for ``A.Compose(transforms)`` (one draw, seed 0)."""
    folder = tmp_path / name
    folder.mkdir()
    A.save(A.Compose(transforms), str(folder / "pipeline.yaml"), data_format="yaml")  # same file name: same title
    out = folder / "preview.png"
    args = ["preview", str(folder / "pipeline.yaml"), str(images), "-o", str(out), "--samples", "1"]
    assert main([*args, "--height", str(H)]) == 0
    picture = cv2.imread(str(out))
    assert picture is not None
    return picture


@pytest.mark.parametrize(
    "to_tensor", [ToTensorV2(), ToTensorV2(transpose_mask=True)], ids=["ToTensorV2", "transpose_mask"]
)
def test_a_pipeline_ending_in_to_tensor_draws_as_without_it(tmp_path, images, to_tensor):
    steps = [A.HorizontalFlip(p=1.0), CutPaste(p=1.0)]
    with_tensor = preview(tmp_path, images, [*steps, to_tensor], "tensor")
    without = preview(tmp_path, images, steps, "numpy")
    assert with_tensor.shape == without.shape, f"a {with_tensor.shape} picture instead of {without.shape}"
    assert np.array_equal(with_tensor, without)


def test_a_normalized_tensor_is_drawn_like_its_input(tmp_path, images):
    picture = preview(tmp_path, images, [A.Normalize(), ToTensorV2()], "normalized")
    assert picture.shape[1] < 3 * (W + GAP), f"a {picture.shape[1]}-px wide picture for one image and one draw"
    assert np.array_equal(picture, preview(tmp_path, images, [A.Normalize()], "float"))
    source, drawn = (tile(picture, k)[..., 0].astype(np.float64) for k in (0, 1))
    unmasked = np.ones((H, W), bool)
    unmasked[8:32, 18:62] = False  # away from the tinted mask
    correlation = np.corrcoef(source[unmasked], drawn[unmasked])[0, 1]
    assert correlation > 0.99, f"the normalized draw looks unlike its input (correlation {correlation:.3f})"


def test_an_output_that_is_no_image_is_refused_clearly(images):
    from albu_defects.tools.preview import read_preview_image, run_pipeline

    def six_planes(image: np.ndarray, **params) -> np.ndarray:
        return np.stack([image] * 6)  # (6, H, W): channels first, as numpy

    item = read_preview_image(images / "tile.png")
    channels_first = A.Compose([A.Lambda(image=six_planes)])
    with pytest.raises(ValueError, match=r"image of shape \(6, 64, 160\), which preview cannot draw"):
        run_pipeline(channels_first, [item], samples=1)
