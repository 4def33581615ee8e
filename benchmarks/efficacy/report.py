"""Tables of the efficacy benchmark: mean +- std over seeds per arm, per class, the papers beside ours.

``write`` replaces only the text between ``<!-- efficacy_<scale> -->`` and ``<!-- /efficacy_<scale> -->``
in benchmarks/RESULTS.md (appending the section when the markers are absent).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from . import anomaly, cls, seg
from .metrics import mean_std

MODULES = {"seg": seg, "cls": cls, "anomaly": anomaly}
TITLES = {
    "seg": "Segmentation (DLI paper's metric: per-class IoU summed over the validation split)",
    "cls": "Classification (six Magnetic Tile folders)",
    "anomaly": "Anomaly detection (trained on defect-free tiles only; held-out Free vs each defect class)",
}
#: Metric -> (column title, the better direction).
COLUMNS = {
    "mean_iou": "mean IoU (5 classes)",
    "free_fp_share": "defect-free val images with a FP pixel",
    "binary_iou": "defect-vs-background IoU",
    "macro_f1": "macro F1",
    "balanced_accuracy": "balanced accuracy",
    "accuracy": "accuracy",
    "mean_auroc": "mean AUROC (Free vs each class)",
    "auroc_all": "AUROC (Free vs all defects)",
    "classifier_auroc_all": "classifier-score AUROC (all)",
}
PER_CLASS = {"seg": "iou", "cls": "f1", "anomaly": "auroc"}
DEFAULT_TARGET = Path(__file__).resolve().parents[1] / "RESULTS.md"


def _fmt(mean: float, std: float, digits: int = 3) -> str:
    if np.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} +- {std:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _arm_order(task: str, arms: set[str]) -> list[str]:
    known = [arm for arm in MODULES[task].ARMS if arm in arms]
    return known + sorted(arms - set(known))


def paired_delta(by_arm: dict[str, dict[int, dict]], arm: str, metric: str, reference: str = "baseline") -> str:
    """Mean +- std over shared seeds of (arm - reference): the same split and init on each seed."""
    base = {s: r["metrics"][metric] for s, r in by_arm.get(reference, {}).items()}
    diffs = [r["metrics"][metric] - base[s] for s, r in by_arm[arm].items() if s in base]
    if arm == reference or not diffs:
        return ""
    mean, std = mean_std(diffs)
    wins = sum(d > 0 for d in diffs)
    return f"{mean:+.3f} +- {std:.3f} ({wins}/{len(diffs)} seeds up)"


def task_section(task: str, records: list[dict[str, Any]]) -> str:
    module = MODULES[task]
    by_arm: dict[str, dict[int, dict]] = defaultdict(dict)
    for record in records:
        by_arm[record["arm"]][record["seed"]] = record  # a later record of the same seed wins
    arms = _arm_order(task, set(by_arm))
    first = records[0]
    config = first["config"]
    headline = module.METRICS[0]
    reference = module.REFERENCE
    header = ["arm", "seeds", *(COLUMNS[m] for m in module.METRICS), f"{COLUMNS[headline]}: arm - {reference} (paired)"]
    header += ["paper", "wall-clock / run (min)", "steps"]
    rows = []
    for arm in arms:
        runs = list(by_arm[arm].values())
        cells = [arm, str(len(runs))]
        for metric in module.METRICS:
            cells.append(_fmt(*mean_std([r["metrics"][metric] for r in runs])))
        cells.append(paired_delta(by_arm, arm, headline, reference))
        cells.append(module.PAPER["values"].get(arm, ""))
        wall = [r["wall_s"] / 60 for r in runs]
        cells.append(f"{np.mean(wall):.1f} ({min(wall):.1f}-{max(wall):.1f})")
        cells.append(str(runs[0]["steps"]))
        rows.append(cells)
    key = PER_CLASS[task]
    classes = list(next(iter(by_arm[arms[0]].values()))["per_class"][key])
    class_rows = []
    for arm in arms:
        runs = list(by_arm[arm].values())
        class_rows.append([arm, *(_fmt(*mean_std([r["per_class"][key][c] for r in runs]), 2) for c in classes)])
    paper_classes = module.PAPER.get("per_class", {})
    for arm, entry in paper_classes.items():
        if isinstance(entry, dict):
            values = entry["values"]
            class_rows.append([f"paper: {arm}", *(str(values.get(c, "")) for c in classes)])
    options = ", ".join(f"{k}={v}" for k, v in config.get("model_options", {}).items())
    parameters = first.get("parameters")
    setup = (
        f"Setup: {config['size']} px, model `{config['model']}`({options}), {parameters:,} parameters, "
        f"batch {config['batch']}, {config['steps']} steps, AdamW lr {config['lr']} (warm-up {config['warmup']}, "
        f"cosine), validation fraction {config['val_fraction']}; the same for every arm; config hashes "
        f"{', '.join(sorted({r['config_hash'] for r in records}))}."
    )
    machines = sorted({f"{r['machine']} ({r['torch_threads']} torch thread(s))" for r in records})
    commits = sorted({r["commit"] for r in records})
    dates = sorted(r["date"] for r in records)
    loads = [r["load_avg"] for r in records if r.get("load_avg") is not None]
    facts = (
        f"Runs {dates[0]} to {dates[-1]} on {'; '.join(machines)}; commit(s) {', '.join(commits)}; "
        f"{', '.join(f'{k} {v}' for k, v in first['versions'].items())}; 1-min load average at the end of the runs {min(loads):.1f}-{max(loads):.1f}."
        if loads
        else f"Runs {dates[0]} to {dates[-1]} on {'; '.join(machines)}; commit(s) {', '.join(commits)}."
    )
    parts = [
        f"### {TITLES[task]}",
        setup,
        _table(header, rows),
        f"Paper figures: {module.PAPER['source']}.",
        f"Per class ({key}, mean +- std over seeds):",
        _table(["arm", *classes], class_rows),
    ]
    if isinstance(paper_classes.get("note"), str):
        parts.append(paper_classes["note"] + ".")
    parts.append(facts)
    return "\n\n".join(parts)


def render(records: list[dict[str, Any]], scale: str, keep_hashes: set[str] | None = None) -> str:
    chosen = [r for r in records if r["scale"] == scale and (keep_hashes is None or r["config_hash"] in keep_hashes)]
    sections = [f"## Efficacy on real data ({scale} scale)"]
    sections.append(
        f"Command: `python benchmarks/efficacy/run.py --task seg|cls|anomaly --seeds 3 --scale {scale}` then "
        f"`--write`; each record (metrics, per-class values, config, machine, commit) is in "
        f"`benchmarks/efficacy/results/{scale}.jsonl`. Mean +- sample std over seeds; each seed draws its own "
        'split and initialisation, shared by every arm; "paired" differences are taken seed by seed.'
    )
    for task in ("seg", "cls", "anomaly"):
        of_task = [r for r in chosen if r["task"] == task]
        if of_task:
            sections.append(task_section(task, of_task))
    if len(sections) == 2:
        sections.append("No results yet.")
    return "\n\n".join(sections)


def write(
    records: list[dict[str, Any]], scale: str, target: Path | None = None, keep_hashes: set[str] | None = None
) -> Path:
    target = Path(target or DEFAULT_TARGET)
    name = f"efficacy_{scale}"
    section = f"<!-- {name} -->\n{render(records, scale, keep_hashes)}\n<!-- /{name} -->"
    text = target.read_text() if target.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    target.write_text(text)
    return target
