"""The README: every Python block runs on its own, its YAML loads, its picture, examples and citations exist.

Each Python block runs alone, as a reader would paste it: in a fresh namespace, in its own empty
working directory, without any other block having run (a block builds the small bank it needs from
the bundled samples).
"""

from __future__ import annotations

import re
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import albu_defects  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
README = (REPO_ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, re.S | re.M)


PYTHON_BLOCKS = blocks("python")


def test_the_readme_has_its_python_blocks():
    # quick start, YAML, bank, DataLoader, DLI, Guided-Crop, ContextMix, anomaly
    assert len(PYTHON_BLOCKS) >= 8


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.filterwarnings("ignore::albu_defects.DefectBankWarning")  # bundled samples with blank masks
@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)), ids=[f"block{i + 1}" for i in range(len(PYTHON_BLOCKS))])
def test_python_block_runs_alone_in_an_empty_folder(index, tmp_path, monkeypatch):
    block = PYTHON_BLOCKS[index]
    monkeypatch.chdir(tmp_path)  # empty: nothing another block wrote
    namespace: dict = {"__name__": f"readme_block_{index + 1}"}
    try:
        exec(compile(block, f"README python block {index + 1}", "exec"), namespace)
    except Exception as error:  # name the block that broke
        pytest.fail(f"README python block {index + 1} failed on its own: {type(error).__name__}: {error}\n{block}")
    if "pipeline.yaml" in block:  # the YAML example: a bank path round trip
        loaded = namespace["loaded"]
        assert isinstance(loaded.transforms[0], albu_defects.GuidedCropPaste)
        assert loaded.transforms[0].bank == "banks/mt"
    if "labels=[]" in block:  # the quick start and PoissonPaste: one label per box
        out = namespace["out"]
        assert len(out["bboxes"]) == len(out["labels"]) and out["mask"].shape == out["image"].shape


def test_the_trimmed_yaml_loads_as_the_pipeline_it_describes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trimmed = next(b for b in blocks("yaml") if "albu_defects.GuidedCropPaste" in b)
    bank = albu_defects.DefectBank.from_arrays(
        [np.full((16, 16), 200, np.uint8)], [np.pad(np.ones((4, 4), np.uint8), 6)], class_names=["scratch"]
    )
    bank.save("banks/mt")  # the folder the trimmed YAML names
    (tmp_path / "trimmed.yaml").write_text(trimmed)
    loaded = A.load(str(tmp_path / "trimmed.yaml"), data_format="yaml")
    assert [type(t).__name__ for t in loaded.transforms] == ["GuidedCropPaste", "HorizontalFlip", "CutPaste"]
    assert loaded.transforms[0].weights == "inverse_frequency" and loaded.transforms[2].p == 0.2
    albu_defects.seed_pipeline(loaded, 0)
    out = loaded(image=np.full((64, 64), 128, np.uint8), mask=np.zeros((64, 64), np.uint8))
    assert out["image"].shape == (64, 64)


def test_demo_picture_examples_and_citations():
    picture = REPO_ROOT / "examples" / "demo.png"
    assert "](examples/demo.png)" in README
    assert picture.stat().st_size < 1_000_000
    image = cv2.imread(str(picture))
    assert image is not None and image.shape[0] > 1000 and image.shape[1] > 1000
    for script in ("classification_contextmix.py", "segmentation_dli_guided.py", "anomaly_selfsupervised.py"):
        assert f"`{script}`" in README and (REPO_ROOT / "examples" / script).is_file()
    assert "(benchmarks/RESULTS.md)" in README
    citations = README.split("## Citations", 1)[1]
    for work in (
        "Surface defect saliency of magnetic tile",
        "Poisson image editing",
        "Dynamic Label Injection for Imbalanced Industrial",
        "CropLiq - Data Augmentation on Self-Supervised Learning",
        "CutPaste: Self-Supervised Learning for Anomaly Detection",
        "Comparison of two-level preconditioners",
        "Guided-Crop Image Augmentation for Small Defect",
        "ContextMix: A context-aware data augmentation",
    ):
        assert work in citations.replace("\n  ", " "), work
