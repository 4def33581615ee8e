"""``albu-defects preview``: mask discovery, every kind of pipeline, the grid, and clear errors."""

from __future__ import annotations

import subprocess
import sys
import warnings

import albumentations as A
import cv2
import numpy as np
import pytest

from albu_defects import (
    AnomalySynthesis,
    BatchCompose,
    ContextMix,
    CropLiq,
    CutPaste,
    DefectBank,
    DynamicLabelInjection,
    GuidedCropPaste,
)
from albu_defects.data import sample_root
from albu_defects.tools.cli import main
from albu_defects.tools.preview import (
    collect_images,
    find_mask,
    load_pipeline,
    read_preview_image,
    run_pipeline,
    write_preview,
)


def write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


@pytest.fixture(scope="module")
def bank_path(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bundled Uneven samples with blank masks are skipped
        bank = DefectBank.from_folder(sample_root(), progress=False)
    return str(bank.save(tmp_path_factory.mktemp("bank") / "mt"))


def test_mask_rules(tmp_path):
    image = np.full((6, 8), 100, np.uint8)
    mask = np.zeros((6, 8), np.uint8)
    mask[1:3, 2:5] = 255
    # 1. Magnetic Tile: <stem>.jpg + <stem>.png
    jpg = write(tmp_path / "MT_Crack" / "Imgs" / "a.jpg", image)
    write(tmp_path / "MT_Crack" / "Imgs" / "a.png", mask)
    assert find_mask(jpg) == tmp_path / "MT_Crack" / "Imgs" / "a.png"
    # 2. <stem>_mask.* (a .png image never is its own mask)
    png = write(tmp_path / "flat" / "b.png", image)
    assert find_mask(png) is None
    write(tmp_path / "flat" / "b_mask.png", mask)
    assert find_mask(png) == tmp_path / "flat" / "b_mask.png"
    # 3. a masks/ folder beside the images folder
    img = write(tmp_path / "set" / "images" / "c.jpg", image)
    write(tmp_path / "set" / "masks" / "c.png", mask)
    assert find_mask(img) == tmp_path / "set" / "masks" / "c.png"
    # folders: images only, masks left out, sorted
    assert collect_images([tmp_path / "MT_Crack"]) == [jpg]
    assert collect_images([tmp_path / "flat"]) == [png]
    assert collect_images([tmp_path / "set"]) == [img]
    # the binary mask takes the MT folder's class (Crack = 3); elsewhere class 1
    item = read_preview_image(jpg)
    assert item.label == 3 and set(np.unique(item.mask)) == {0, 3} and item.mask[1, 2] == 3
    assert read_preview_image(img).label == 1
    # a mask with small values is a class-index mask
    index_mask = np.zeros((6, 8), np.uint8)
    index_mask[0, 0], index_mask[4:6, 4:8] = 2, 4
    write(tmp_path / "flat" / "b_mask.png", index_mask)
    item = read_preview_image(png)
    np.testing.assert_array_equal(item.mask, index_mask)
    assert item.label == 4  # the most frequent class
    write(tmp_path / "flat" / "b_mask.png", np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match="must match"):
        read_preview_image(png)
    with pytest.raises(FileNotFoundError):
        collect_images([tmp_path / "missing.jpg"])
    write(tmp_path / "only_masks" / "masks" / "x.png", mask)
    with pytest.raises(ValueError, match="no images"):
        collect_images([tmp_path / "only_masks"])


@pytest.mark.slow
def test_cli_preview_on_the_bundled_samples_is_seeded(tmp_path):
    pipeline = A.Compose(
        [A.HorizontalFlip(), CutPaste(p=0.7), ContextMix(num_classes=6, p=0.8)],
        bbox_params=A.BboxParams("coco", label_fields=["cls"]),
    )
    A.save(pipeline, str(tmp_path / "pipe.yaml"), data_format="yaml")
    root = sample_root()
    pictures = []
    for seed, name in ((0, "a.png"), (0, "b.png"), (1, "c.png")):
        args = ["preview", str(tmp_path / "pipe.yaml"), str(root), "-o", str(tmp_path / name)]
        args += ["--seed", str(seed), "--samples", "2", "--height", "64"]
        if name == "a.png":  # the installed command line, once; the others in-process
            command = [sys.executable, "-m", "albu_defects", *args]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip() == f"wrote {tmp_path / name}"
        else:
            assert main(args) == 0
        pictures.append(cv2.imread(str(tmp_path / name)))
    assert np.array_equal(pictures[0], pictures[1]) and not np.array_equal(pictures[0], pictures[2])
    grid = pictures[0]
    # 12 bundled images, one row each: title bar + 12 * (18-px label bar + 64-px tile) + 11 gaps
    assert grid.shape[0] == 28 + 12 * (18 + 64) + 11 * 6
    colours = {tuple(int(v) for v in px) for px in grid.reshape(-1, 3)[::3]}
    assert (0, 255, 255) in colours  # boxes are drawn


def test_per_sample_pipeline_outputs_and_partners(bank_path):
    items = [read_preview_image(p) for p in collect_images([sample_root()])]
    pipeline = A.Compose(
        [GuidedCropPaste(bank=bank_path, p=1.0), ContextMix(num_classes=6, p=1.0, min_box_side=1)],
        bbox_params=A.BboxParams("yolo", label_fields=["cls"]),
    )
    results = run_pipeline(pipeline, items, samples=2, seed=3)
    assert len(results) == len(items) and all(len(row) == 2 for row in results)
    for item, row in zip(items, results, strict=True):
        for record in row:
            assert record["image"].shape == item.image.shape and record["mask"].shape == item.image.shape
            assert record["text"].startswith("mix ")
            boxes = record["boxes"]
            assert boxes.shape[1] == 4 and (boxes[:, :2] <= boxes[:, 2:]).all()
            h, w = item.image.shape
            assert (
                (boxes >= -1e-6).all() and (boxes[:, [0, 2]] <= w + 1e-6).all() and (boxes[:, [1, 3]] <= h + 1e-6).all()
            )
    # Guided-Crop pasted on the free images (label 0): their masks gained defects
    free = [i for i, item in enumerate(items) if item.label == 0]
    assert any(results[i][k]["mask"].any() for i in free for k in range(2))
    # a lone image is its own partner
    assert len(run_pipeline(pipeline, items[:1], samples=1)[0]) == 1


def test_batch_pipelines_run_on_all_images(tmp_path, bank_path):
    items = [read_preview_image(p) for p in collect_images([sample_root()])]
    dli = DynamicLabelInjection(bank_path)
    results = run_pipeline(dli, items, samples=2, seed=0)
    free = [i for i, item in enumerate(items) if item.label == 0]
    for i in free:  # every defect-free image got a defect, named in its title, in its mask
        for record in results[i]:
            assert record["text"].startswith("+") and record["mask"].any()
    batch = BatchCompose([ContextMix(num_classes=6, p=1.0)], bbox_params=A.BboxParams("pascal_voc", ["cls"]))
    A.save(batch, str(tmp_path / "batch.json"))
    results = run_pipeline(load_pipeline(tmp_path / "batch.json"), items, samples=1)
    assert all(row[0]["text"].startswith("mix ") and row[0]["boxes"] is not None for row in results)
    A.save(A.Compose([AnomalySynthesis([CropLiq(), CutPaste()], p=1.0)]), str(tmp_path / "anomaly.yaml"))
    out = write_preview(tmp_path / "anomaly.yaml", [sample_root() / "MT_Free"], tmp_path / "a.png", samples=4)
    assert cv2.imread(str(out)).shape[0] > 3 * 160
    # the anomaly mask is outlined (it enters the class mask only under a mask_class_id)
    records = run_pipeline(load_pipeline(tmp_path / "anomaly.yaml"), items[-3:], samples=4, seed=0)
    drawn = [r for row in records for r in row if r["text"] != "anomaly 0"]
    assert drawn and all(r["anomaly_mask"].any() for r in drawn)


def test_preview_errors_are_one_line(tmp_path, capsys, bank_path):
    root = str(sample_root())
    (tmp_path / "p.txt").write_text("x")
    assert main(["preview", str(tmp_path / "p.txt"), root]) == 2
    assert ".yaml, .yml or .json" in capsys.readouterr().err
    A.save(A.Compose([CutPaste()]), str(tmp_path / "p.yaml"), data_format="yaml")
    text = (tmp_path / "p.yaml").read_text().replace("albu_defects.CutPaste", "my_plugin.Unknown")
    (tmp_path / "q.yaml").write_text(text)
    assert main(["preview", str(tmp_path / "q.yaml"), root, "-o", str(tmp_path / "q.png")]) == 2
    assert "my_plugin.Unknown" in capsys.readouterr().err
    A.save(A.Compose([DynamicLabelInjection(bank_path)]), str(tmp_path / "nested.yaml"), data_format="yaml")
    assert main(["preview", str(tmp_path / "nested.yaml"), root, "-o", str(tmp_path / "n.png")]) == 2
    assert "batch transform (DynamicLabelInjection)" in capsys.readouterr().err
    assert main(["preview", str(tmp_path / "p.yaml"), root, "--samples", "0", "-o", str(tmp_path / "s.png")]) == 2
    assert "samples" in capsys.readouterr().err
    assert main(["preview", str(tmp_path / "p.yaml"), str(tmp_path / "none.jpg")]) == 2
    assert "none.jpg" in capsys.readouterr().err
    # a transform that rejects an input names the image
    A.save(A.Compose([ContextMix(num_classes=2, p=1.0)]), str(tmp_path / "few.yaml"), data_format="yaml")
    assert main(["preview", str(tmp_path / "few.yaml"), root, "-o", str(tmp_path / "f.png")]) == 2
    err = capsys.readouterr().err
    assert "failed on" in err and "label" in err and "Traceback" not in err


def test_colour_images_keep_their_colours(tmp_path):
    rgb = np.zeros((40, 30, 3), np.uint8)
    rgb[..., 0] = 250  # red in RGB
    write(tmp_path / "images" / "red.png", rgb[..., ::-1])  # OpenCV writes BGR
    A.save(A.Compose([A.HorizontalFlip(p=1.0)]), str(tmp_path / "flip.yaml"), data_format="yaml")
    item = read_preview_image(tmp_path / "images" / "red.png")
    assert item.image.shape == (40, 30, 3) and tuple(item.image[0, 0]) == (250, 0, 0)  # RGB for the pipeline
    out = write_preview(tmp_path / "flip.yaml", [tmp_path / "images"], tmp_path / "grid.png", samples=1, height=40)
    grid = cv2.imread(str(out))
    red = np.all(grid == (0, 0, 250), axis=-1)  # BGR in the picture
    assert red.sum() >= 2 * 40 * 30  # the input and its draw, both still red
