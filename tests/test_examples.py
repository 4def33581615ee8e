"""The runnable examples: each runs end to end on tiny settings and prints its metric line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")  # the examples train small torch models

from albu_defects.data import sample_root

pytestmark = pytest.mark.slow  # trains the three examples in subprocesses
REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {
    "classification_contextmix.py": "balanced_accuracy",
    "segmentation_dli_guided.py": "mean_iou",
    "anomaly_selfsupervised.py": "auroc",
}
METRIC = re.compile(r"^result: (\w+)=(\d+\.\d+)(?: .*)?$", re.M)


def test_every_example_runs_quick_on_tiny_settings_and_prints_its_metric():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    runs = {
        # default data: ../shared/data/magnetic_tile when present, else the bundled samples
        name: [sys.executable, str(REPO_ROOT / "examples" / name), "--quick", "--tiny"]
        for name in EXAMPLES
    }
    # and once explicitly on the bundled samples, whose 3 defect-free tiles leave nothing to hold out
    runs["bundled"] = [*runs["anomaly_selfsupervised.py"], "--data", str(sample_root()), "--workers", "0"]
    # ContextMix with defect-aware labels: the masks travel with the images to the batch op
    runs["defect_area"] = [*runs["classification_contextmix.py"], "--label-mode", "defect_area"]
    processes = {
        name: subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for name, command in runs.items()
    }
    outputs = {}
    for name, process in processes.items():
        out, err = process.communicate(timeout=300)
        outputs[name] = out
        assert process.returncode == 0, f"{name} failed:\n{out}\n{err}"
        metric = EXAMPLES.get(name) or {"bundled": "auroc", "defect_area": "balanced_accuracy"}[name]
        lines = METRIC.findall(out)
        assert len(lines) == 1, f"{name} printed no single result line:\n{out}"
        found, value = lines[0]
        assert found == metric and 0.0 <= float(value) <= 1.0, out
        assert out.startswith("data: ") and "tiny run" in out.splitlines()[0]
    assert outputs["bundled"].startswith("data: bundled samples:")
    assert "scored on the training tiles" in outputs["bundled"]
    assert "label_mode=defect_area" in outputs["defect_area"]
