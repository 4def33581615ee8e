"""The efficacy runner: arms x seeds of one task at one scale, results appended as JSON lines, resumable.

    python benchmarks/efficacy/run.py --task seg --arms baseline,dli_all --seeds 3 --scale cpu
    python benchmarks/efficacy/run.py --write --scale cpu          # tables into benchmarks/RESULTS.md

One record per (task, arm, seed, scale) run, with every metric, per-class values, wall-clock, steps,
machine, torch threads and git commit. A run whose (task, arm, seed, scale, config hash) is already
in the results file is skipped, so an interrupted queue resumes where it stopped; the config hash
covers the task's settings at that scale, the arm's definition and the data, so changing any of
them re-runs (and the tables only show records of the current settings).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from . import anomaly, cls, data, report, seg

TASKS = {"seg": seg, "cls": cls, "anomaly": anomaly}
SCALES = ("cpu", "gpu", "tiny")
HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
#: Bump when a change to the runner changes results for unchanged settings (it enters the config hash).
RUNNER_VERSION = 1


def results_path(scale: str) -> Path:
    return RESULTS_DIR / f"{scale}.jsonl"


def task_config(task: str, scale: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The task's settings at ``scale`` with ``overrides`` (``--set key=value``) applied."""
    config = json.loads(json.dumps(TASKS[task].CONFIGS[scale]))
    for key, value in (overrides or {}).items():
        target, name = config, key
        if "." in key:  # model_options.width=12
            head, name = key.split(".", 1)
            target = config.setdefault(head, {})
        if name not in target and key not in config:
            raise SystemExit(f"--set {key}: no such setting for {task} (settings: {', '.join(sorted(config))})")
        target[name] = value
    return config


def config_hash(task: str, config: dict[str, Any], arm: str, data_fingerprint: str) -> str:
    """What a result depends on besides the seed: settings, arm definition, data, runner version."""
    payload = {
        "task": task,
        "config": config,
        "arm": TASKS[task].ARMS[arm],
        "data": data_fingerprint,
        "runner": RUNNER_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a results file (a partly written last line, from a killed run, is ignored)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def done_keys(records: list[dict[str, Any]]) -> set[tuple]:
    return {(r["task"], r["arm"], r["seed"], r["scale"], r["config_hash"]) for r in records}


def append_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, default=_json_default, allow_nan=True)
    with path.open("a") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def git_commit() -> str:
    """Short commit of the checkout this runner lives in, with ``+dirty`` when tracked files changed."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(HERE), "status", "--porcelain", "--untracked-files=no", "--", "."],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (commit or "unknown") + ("+dirty" if dirty else "")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    if torch.cuda.is_available():
        cpu += f" + {torch.cuda.get_device_name(0)}"
    return f"{cpu}, {os.cpu_count()} cores"


def versions() -> dict[str, str]:
    import albumentations

    import albu_defects

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "albumentations": albumentations.__version__,
        "albu_defects": albu_defects.__version__,
    }


def parse_overrides(items: list[str]) -> dict[str, Any]:
    overrides = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), help="seg | cls | anomaly")
    parser.add_argument("--arms", default=None, help="comma-separated arms (default: the task's arms at this scale)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (each draws its own split) (3)")
    parser.add_argument("--seed-list", default=None, help="explicit comma-separated seeds instead of --seeds")
    parser.add_argument("--scale", choices=SCALES, default="cpu", help="cpu | gpu | tiny (tiny: the test's setting)")
    parser.add_argument("--data", type=Path, default=None, help="dataset folder (default ../shared/data/magnetic_tile)")
    parser.add_argument("--results", type=Path, default=None, help="JSON lines file (default results/<scale>.jsonl)")
    parser.add_argument("--write", action="store_true", help="render the tables into benchmarks/RESULTS.md")
    parser.add_argument("--results-md", type=Path, default=None, help="the Markdown file --write edits")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override a setting: key=value")
    parser.add_argument("--threads", type=int, default=None, help="torch/OpenCV threads (cpu and tiny scale: 1)")
    parser.add_argument("--per-class", type=int, default=None, help="at most this many images a class (smoke runs)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.task is None and not args.write:
        parser.error("give --task (and/or --write)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    path = args.results or results_path(args.scale)
    if args.task is not None:
        run_task(args, path)
    if args.write:
        target = report.write(read_records(path), args.scale, args.results_md, current_hashes(args, path))
        print(f"wrote the efficacy tables ({args.scale}) into {target}")
    return 0


def current_hashes(args: argparse.Namespace, path: Path) -> set[str] | None:
    """Config hashes of the current settings (without overrides) in the records, or None to keep all.

    The tables show only records whose config hash equals what the current settings give on the
    same data; a record's data fingerprint is stored in it, so no data needs reading here.
    """
    keep = set()
    for record in read_records(path):
        task, arm = record["task"], record["arm"]
        if task not in TASKS or arm not in TASKS[task].ARMS or record.get("overrides"):
            continue
        config = task_config(task, record["scale"])
        if config_hash(task, config, arm, record["data"]["fingerprint"]) == record["config_hash"]:
            keep.add(record["config_hash"])
    return keep


def run_task(args: argparse.Namespace, path: Path) -> None:
    module = TASKS[args.task]
    arms = args.arms.split(",") if args.arms else module.DEFAULT_ARMS[args.scale]
    for arm in arms:  # unknown arms and arms whose library feature is missing stop before any training
        module.check_arm(arm)
    seeds = [int(s) for s in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds))
    overrides = parse_overrides(args.overrides)
    config = task_config(args.task, args.scale, overrides)
    threads = args.threads if args.threads is not None else (1 if args.scale in ("cpu", "tiny") else None)
    if threads is not None:
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
    root = args.data or data.default_root()
    if root is None:
        raise SystemExit("no dataset: pass --data PATH (a Magnetic Tile folder or images/ + masks/)")
    loaded = time.perf_counter()
    dataset = data.load(root, config["size"], per_class=args.per_class)
    print(
        f"{args.task} @ {args.scale}: {len(dataset)} images {dataset.counts()} from {root} at {config['size']} px "
        f"({time.perf_counter() - loaded:.1f} s); arms {arms}; seeds {seeds}; results -> {path}",
        flush=True,
    )
    fingerprint = dataset.fingerprint()
    done = done_keys(read_records(path))
    for arm in arms:
        digest = config_hash(args.task, config, arm, fingerprint)
        for seed in seeds:
            if (args.task, arm, seed, args.scale, digest) in done:
                print(f"skip {args.task}/{arm}/seed{seed}: already in {path.name} (config {digest})", flush=True)
                continue
            result = module.run(config, arm, seed, dataset, show_progress=not args.no_progress)
            record = {
                "task": args.task,
                "arm": arm,
                "seed": seed,
                "scale": args.scale,
                "config_hash": digest,
                "config": config,
                "overrides": overrides,
                "arm_spec": module.ARMS[arm],
                **result,
                "machine": machine(),
                "torch_threads": torch.get_num_threads(),
                "versions": versions(),
                "commit": git_commit(),
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(["python", "benchmarks/efficacy/run.py", *sys.argv[1:]]),
                "data": {"root": str(root), "counts": dataset.counts(), "fingerprint": fingerprint},
                "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            }
            append_record(path, record)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
            print(f"done {args.task}/{arm}/seed{seed}: {shown} ({result['wall_s']:.0f} s)", flush=True)
