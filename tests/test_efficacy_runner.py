"""The efficacy benchmark runner (benchmarks/efficacy): every task at a tiny setting, splits, leakage, metrics.

The tiny runs use the 12 bundled Magnetic Tile samples, so they need no ../shared data and take seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import albu_defects as ad
from albu_defects.data import sample_root

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow  # trains tiny models, runs the runner as a command
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO_ROOT / "benchmarks"))  # for the package benchmarks/efficacy

from efficacy import anomaly, cls, data, metrics, report, runner, seg  # noqa: E402

BUNDLED = str(sample_root())


@pytest.fixture
def restore_threads():
    """The runner sets torch/OpenCV to one thread at the tiny scale; give the test process its own back."""
    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    yield
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv2_threads)


def run_main(*args: str) -> int:
    return runner.main(["--scale", "tiny", "--data", BUNDLED, "--no-progress", *args])


# ---------------------------------------------------------------------------------------------- tasks
@pytest.mark.parametrize("task", ["seg", "cls", "anomaly"])
def test_every_task_runs_every_arm_at_the_tiny_scale_then_resumes_without_rerunning(task, tmp_path, restore_threads):
    results = tmp_path / "results.jsonl"
    assert run_main("--task", task, "--seeds", "2", "--results", str(results)) == 0
    records = runner.read_records(results)
    module = runner.TASKS[task]
    arms = module.DEFAULT_ARMS["tiny"]
    assert sorted((r["arm"], r["seed"]) for r in records) == sorted((a, s) for a in arms for s in (0, 1))
    for record in records:
        assert record["task"] == task and record["scale"] == "tiny" and record["steps"] == 3
        assert set(module.METRICS) <= set(record["metrics"])
        for name in module.METRICS:
            value = record["metrics"][name]
            assert np.isnan(value) or 0.0 <= value <= 1.0, (name, value)
        per_class = record["per_class"][report.PER_CLASS[task]]
        expected = ("Free", *ad.MAGNETIC_TILE_CLASSES) if task == "cls" else ad.MAGNETIC_TILE_CLASSES
        assert tuple(per_class) == expected
        assert record["torch_threads"] == 1 and record["wall_s"] > 0 and record["machine"] and record["commit"]
        assert record["config"] == runner.task_config(task, "tiny") and not record["overrides"]
    # each seed drew its own split; every arm of a seed shares it
    splits = {(r["seed"], json.dumps(r["split"], sort_keys=True)) for r in records}
    assert len({seed for seed, _ in splits}) == 2 and len(splits) == 2

    # resume: nothing new for the same settings; an override is a new configuration
    assert run_main("--task", task, "--seeds", "2", "--results", str(results)) == 0
    assert len(runner.read_records(results)) == len(records)
    first_arm = arms[0]
    assert (
        run_main("--task", task, "--arms", first_arm, "--seeds", "1", "--results", str(results), "--set", "steps=2")
        == 0
    )
    after = runner.read_records(results)
    assert len(after) == len(records) + 1 and after[-1]["steps"] == 2 and after[-1]["overrides"] == {"steps": 2}


GPU_SCALE_ARMS = {"seg": "dli_guided,dli_poisson_only", "cls": "contextmix_defect", "anomaly": "cropliq_cutpaste_3way"}


@pytest.mark.parametrize("task", sorted(GPU_SCALE_ARMS))
def test_the_gpu_scale_models_and_worker_loading_run_on_cpu_at_a_tiny_setting(task, tmp_path, restore_threads):
    """The GPU settings (light ResNet-18 U-Net / ResNet, DataLoader workers) shrunk to seconds on CPU."""
    results = tmp_path / "gpu.jsonl"
    tiny = ["--set", "size=32", "--set", "steps=2", "--set", "batch=4", "--set", "workers=1", "--threads", "1"]
    arguments = ["--task", task, "--arms", GPU_SCALE_ARMS[task], "--seeds", "1", "--scale", "gpu", *tiny]
    assert runner.main(["--data", BUNDLED, "--no-progress", "--results", str(results), *arguments]) == 0
    records = runner.read_records(results)
    assert [r["arm"] for r in records] == GPU_SCALE_ARMS[task].split(",")
    expected_model = {"seg": "light_resnet_unet", "cls": "resnet", "anomaly": "resnet"}[task]
    assert all(r["config"]["model"] == expected_model and r["config"]["size"] == 32 for r in records)
    assert all(r["steps"] == 2 and r["scale"] == "gpu" for r in records)


def test_the_script_runs_as_a_command_and_write_renders_its_section_only(tmp_path):
    results, markdown = tmp_path / "r.jsonl", tmp_path / "RESULTS.md"
    markdown.write_text("# Benchmark results\n\n<!-- bench_x -->\nkeep me\n<!-- /bench_x -->\n")
    command = [
        sys.executable,
        str(REPO_ROOT / "benchmarks" / "efficacy" / "run.py"),
        "--task",
        "anomaly",
        "--arms",
        "cutpaste_3way",
        "--seeds",
        "1",
        "--scale",
        "tiny",
        "--data",
        BUNDLED,
        "--results",
        str(results),
        "--write",
        "--results-md",
        str(markdown),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = markdown.read_text()
    assert "<!-- bench_x -->\nkeep me\n<!-- /bench_x -->" in text
    assert text.count("<!-- efficacy_tiny -->") == 1 and "| cutpaste_3way | 1 |" in text
    assert "0.952" in text  # the paper's figure beside ours
    # writing again replaces the section instead of appending another
    assert runner.main(["--write", "--scale", "tiny", "--results", str(results), "--results-md", str(markdown)]) == 0
    assert markdown.read_text().count("<!-- efficacy_tiny -->") == 1


def test_an_arm_whose_library_feature_is_missing_stops_before_any_training(tmp_path, monkeypatch):
    results = tmp_path / "r.jsonl"
    monkeypatch.setitem(cls.NEEDS, "contextmix_defect", "needs a feature the library lacks")
    with pytest.raises(SystemExit, match=r"contextmix_defect.*needs a feature the library lacks"):
        run_main("--task", "cls", "--arms", "baseline,contextmix_defect", "--results", str(results))
    assert not results.exists()
    with pytest.raises(SystemExit, match="unknown seg arm 'dli_typo'"):
        run_main("--task", "seg", "--arms", "dli_typo", "--results", str(results))


def test_unknown_override_is_rejected_and_the_config_hash_follows_settings_arm_and_data():
    with pytest.raises(SystemExit, match="no such setting"):
        runner.task_config("seg", "cpu", {"stepz": 3})
    base = runner.task_config("seg", "cpu")
    assert runner.task_config("seg", "cpu", {"model_options.width": 12})["model_options"]["width"] == 12
    digest = runner.config_hash("seg", base, "baseline", "data1")
    assert digest == runner.config_hash("seg", runner.task_config("seg", "cpu"), "baseline", "data1")
    assert digest != runner.config_hash("seg", {**base, "steps": 1}, "baseline", "data1")
    assert digest != runner.config_hash("seg", base, "dli_all", "data1")
    assert digest != runner.config_hash("seg", base, "baseline", "data2")


# ------------------------------------------------------------------------------------ splits, leakage
def test_stratified_split_is_disjoint_complete_per_class_and_drawn_per_seed():
    labels = np.repeat(np.arange(6), [50, 10, 7, 5, 2, 1])
    train, val = data.stratified_split(labels, 0.2, seed=0)
    assert not set(train) & set(val) and sorted([*train, *val]) == list(range(len(labels)))
    for k, n in enumerate([50, 10, 7, 5, 2, 1]):
        n_val = int(np.isin(np.flatnonzero(labels == k), val).sum())
        assert n_val == {50: 10, 10: 2, 7: 1, 5: 1, 2: 1, 1: 0}[n]
    again, _ = data.stratified_split(labels, 0.2, seed=0)
    other, _ = data.stratified_split(labels, 0.2, seed=1)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


def test_the_defect_bank_is_built_from_the_training_split_only(monkeypatch, tmp_path, restore_threads):
    dataset = data.load(BUNDLED, 32)
    seen: list[np.ndarray] = []
    original = ad.DefectBank.from_arrays.__func__

    def spy(cls_, images, masks, labels=None, class_names=None, **kwargs):
        seen.extend(images)
        return original(cls_, images, masks, labels, class_names, **kwargs)

    monkeypatch.setattr(ad.DefectBank, "from_arrays", classmethod(spy))
    config = runner.task_config("seg", "tiny")
    result = seg.run(config, "dli_all", 3, dataset, show_progress=False)
    assert result["train_defect_share"] == 1.0  # fill="all": every defect-free training tile got a defect
    assert [step for step, _ in result["val_iou_curve"]] == [2]  # watched at eval_every, never used to pick
    train_index, val_index = data.stratified_split(dataset.labels, config["val_fraction"], 3)
    train_bytes = {dataset.images[i].tobytes() for i in train_index}
    val_bytes = {dataset.images[i].tobytes() for i in val_index}
    assert seen and {image.tobytes() for image in seen} == train_bytes
    assert not {image.tobytes() for image in seen} & val_bytes
    # every training defect image with a non-empty mask became a bank entry; every free one is there
    train = dataset.subset(train_index)
    assert result["bank"]["entries"] == int(
        ((train.labels > 0) & (train.masks.reshape(len(train), -1).max(1) > 0)).sum()
    )
    assert result["bank"]["free"] == int((train.labels == 0).sum())
    assert result["split"] == {
        "train": len(train_index),
        "val": len(val_index),
        "val_counts": dataset.subset(val_index).counts(),
    }
    # the bank is at the training resolution: every entry fits a 32 px tile
    bank, _ = seg.build_bank(train, tmp_path / "bank")
    assert all(entry.crop.shape[0] <= 32 and entry.crop.shape[1] <= 32 for entry in bank.entries)


def test_anomaly_trains_on_defect_free_training_tiles_only(monkeypatch, restore_threads):
    dataset = data.load(BUNDLED, 32)
    fed: list[bytes] = []
    pipeline = anomaly.pretext_pipeline

    def spy(arm, seed):
        compose = pipeline(arm, seed)

        def call(**kwargs):
            fed.append(kwargs["image"].tobytes())
            return compose(**kwargs)

        return call

    monkeypatch.setattr(anomaly, "pretext_pipeline", spy)
    config = runner.task_config("anomaly", "tiny")
    result = anomaly.run(config, "cropliq", 0, dataset, show_progress=False)
    free = np.flatnonzero(dataset.labels == 0)
    train_part, test_part = data.stratified_split(np.zeros(len(free), np.int64), config["val_fraction"], 0)
    assert set(fed) <= {dataset.images[free[i]].tobytes() for i in train_part}
    assert not set(fed) & {dataset.images[free[i]].tobytes() for i in test_part}
    assert result["split"] == {"train_free": len(train_part), "test_free": len(test_part), "test_defects": 9}


def test_generic_images_and_masks_folder_loads_with_the_dominant_mask_class(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    layouts = {"a": {}, "b": {1: 20}, "c": {2: 30, 1: 5}, "d": {}}
    for stem, classes in layouts.items():
        cv2.imwrite(str(tmp_path / "images" / f"{stem}.png"), rng.integers(0, 255, (40, 50), dtype=np.uint8))
        mask = np.zeros((40, 50), np.uint8)
        for row, (k, n) in enumerate(classes.items()):
            mask[row, :n] = k
        cv2.imwrite(str(tmp_path / "masks" / f"{stem}.png"), mask)
    loaded = data.load(tmp_path, 16)
    assert dict(zip(loaded.names, loaded.labels.tolist(), strict=True)) == {"a": 0, "d": 0, "b": 1, "c": 2}
    assert loaded.class_names == ("class_1", "class_2") and loaded.images.shape == (4, 16, 16)


# ------------------------------------------------------------------------------------------- metrics
def test_segmentation_iou_sums_counts_over_the_whole_set_not_per_image():
    truth = np.zeros((2, 2, 4, 4), bool)
    predicted = np.zeros_like(truth)
    truth[0, 0, :2, :2] = True  # image 0, class 1: 4 px, all found
    predicted[0, 0, :2, :2] = True
    truth[1, 0, 0, 0] = True  # image 1, class 1: 1 px missed, 3 false positives
    predicted[1, 0, 3, :3] = True
    predicted[1, 1, 0, 0] = True  # class 2 never present: 1 false positive
    counts = metrics.confusion_counts(truth, predicted)
    assert counts.tolist() == [[4, 3, 1], [0, 1, 0]]
    iou = metrics.iou_from_counts(counts)
    assert iou[0] == pytest.approx(4 / 8) and iou[1] == 0.0  # per-image mean would give (1 + 0) / 2
    assert np.isnan(metrics.iou_from_counts(np.zeros((1, 3))))[0]
    is_free = np.array([False, True])
    assert metrics.free_false_positive_share(predicted, is_free) == 1.0
    assert metrics.free_false_positive_share(np.zeros_like(predicted), is_free) == 0.0


def test_segmentation_evaluate_reports_the_papers_iou_and_the_free_false_positive_share():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            logits = torch.full((len(x), 2, 4, 4), -10.0)
            logits[0, 0, :2, :2] = 10.0  # image 0 (class 1): exact
            logits[2, 1, 0, 0] = 10.0  # image 2 (free): one false-positive pixel of class 2
            return logits

    masks = np.zeros((4, 4, 4), np.uint8)
    masks[0, :2, :2] = 1
    masks[1, 3, 3] = 2  # missed
    val = data.Dataset(np.zeros((4, 4, 4), np.uint8), masks, np.array([1, 2, 0, 0]), list("abcd"), ("x", "y"), "")
    result = seg.evaluate(Fixed(), val, torch.device("cpu"), 0.5)
    assert result["per_class"]["iou"] == {"x": 1.0, "y": 0.0}
    assert result["metrics"]["mean_iou"] == 0.5 and result["metrics"]["free_fp_share"] == 0.5
    assert result["counts"] == {"x": [4, 0, 0], "y": [0, 1, 1]}


def test_dice_loss_leaves_out_classes_absent_from_the_batch():
    targets = torch.zeros(2, 3, 4, 4)
    targets[:, 0, :2, :2] = 1
    perfect = torch.where(targets > 0, 20.0, -20.0)
    assert float(seg.dice_loss(perfect, targets)) == pytest.approx(0.0, abs=1e-6)
    assert float(seg.dice_loss(perfect, torch.zeros_like(targets))) == 0.0


def test_classification_scores_match_hand_computed_macro_f1_and_balanced_accuracy():
    truth = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 0, 0, 1, 1, 0, 2, 1])
    scores = metrics.classification_scores(truth, predicted, 4)
    # recalls 3/4, 1/2, 1/2; precisions 3/4, 1/3, 1; class 3 absent
    f1 = [0.75, 2 * (1 / 3) * 0.5 / (1 / 3 + 0.5), 2 * 1 * 0.5 / 1.5]
    assert scores["balanced_accuracy"] == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    assert scores["macro_f1"] == pytest.approx(np.mean(f1))
    assert scores["accuracy"] == pytest.approx(5 / 8) and np.isnan(scores["f1"][3])


def test_auroc_counts_ties_half():
    assert metrics.auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    assert metrics.auroc([1, 1, 1, 1], [False, True, False, True]) == 0.5
    assert metrics.auroc([0.2, 0.5, 0.5, 0.9], [False, False, True, True]) == pytest.approx(0.875)
    with pytest.raises(ValueError, match="positive and negative"):
        metrics.auroc([1.0, 2.0], [True, True])


def test_cutmix_labels_are_the_exact_pixel_share_of_the_pasted_box():
    n, size = 6, 20
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, size, size).clone()
    labels = torch.arange(n)
    for seed in range(20):
        mixed, targets = cls.cutmix(images, labels, n, 1.0, 1.0, np.random.default_rng(seed))
        for i in range(n):  # a partner may be the image itself: then all its weight stays on it
            assert float(targets[i].sum()) == pytest.approx(1.0)
            shares = [float((mixed[i] == j).float().mean()) for j in range(n)]
            np.testing.assert_allclose(targets[i].numpy(), shares, atol=1e-6)


def test_report_pairs_arms_with_the_baseline_seed_by_seed():
    def record(arm, seed, value):
        return {"arm": arm, "seed": seed, "metrics": {"mean_iou": value}}

    by_arm = {
        "baseline": {0: record("baseline", 0, 0.5), 1: record("baseline", 1, 0.7)},
        "dli_all": {0: record("dli_all", 0, 0.6), 1: record("dli_all", 1, 0.7), 2: record("dli_all", 2, 0.9)},
    }
    assert report.paired_delta(by_arm, "dli_all", "mean_iou") == "+0.050 +- 0.071 (1/2 seeds up)"
    assert report.paired_delta(by_arm, "baseline", "mean_iou") == ""
    # another reference arm (the anomaly task compares with CutPaste 3-way)
    assert report.paired_delta(by_arm, "baseline", "mean_iou", "dli_all") == "-0.050 +- 0.071 (0/2 seeds up)"
