"""Benchmark: ``albu_defects.pytorch.TensorContextMix`` (ContextMix on tensors) against plain CutMix (the floor) and kornia.

Same run, same tensors. For each batch shape and mode, every method pastes with the *same* boxes
and pairing (a fresh set per timing round, drawn with the shared box sampler), so the ratios
compare pixel work only:

- **TensorContextMix** = ``TensorContextMix(mode=..., inplace=...).apply(images, None, perm, boxes)`` (nearest,
  the paper's setting): the whole partner image resized into the box by index gathers, with the
  op's scratch buffers reused between calls;
- **plain CutMix** = what timm and torchvision do: build the permuted batch (``x[perm]``), then
  slice-copy the box from it (one slice per batch, or a Python loop over samples in per-sample
  mode); in place (timm) or on a clone (torchvision), matching TensorContextMix's ``inplace``;
- **box-only CutMix** = a leaner CutMix that gathers only the box from the partners (reference);
- **kornia** ``RandomCutMixV2(use_correct_lambda=True)`` (its own boxes; ``same_on_batch`` in batch
  mode; out of place; no uint8 support);
- **full call** = ``TensorContextMix(num_classes=10)(images, labels)`` end to end (draws, paste, soft
  targets; its own boxes).

Targets: batch mode <= 1.5x plain CutMix batch mode; per-sample mode <= 2x plain per-sample CutMix.

``--against-base`` adds a paired table: this op against the op of another commit (``--base-ref``,
default the issue-13 layout ``5770842``, the op before issue 16's checks; or a copy with
``--base``), both timed in the same interleaved rounds with plain CutMix, so the after / before
ratio of each round holds on a busy machine.

Usage: ``python benchmarks/bench_contextmix.py [--repeats N] [--stat median|min] [--against-base] [--write]``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import itertools
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from _common import base_checkout, interleaved_times_ms, markdown_table, write_section

from albu_defects.methods.contextmix.functional import draw_boxes
from albu_defects.pytorch import TensorContextMix

CONFIGS = [((64, 3, 224, 224), torch.float32), ((256, 3, 32, 32), torch.float32), ((64, 3, 256, 256), torch.uint8)]
TARGETS = {"batch": 1.5, "sample": 2.0}
#: The op before issue 16 (the layout merge): what --against-base compares with by default.
BEFORE_REF = "5770842"


def plain_cutmix(images: torch.Tensor, perm: torch.Tensor, boxes: np.ndarray, inplace: bool) -> torch.Tensor:
    """CutMix as timm/torchvision write it: permuted batch, then slice copies of the same boxes."""
    partner = images[perm]
    out = images if inplace else images.clone()
    if boxes.ndim == 1:
        x0, y0, x1, y1 = (int(v) for v in boxes)
        out[:, :, y0:y1, x0:x1] = partner[:, :, y0:y1, x0:x1]
    else:
        for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            out[i, :, y0:y1, x0:x1] = partner[i, :, y0:y1, x0:x1]
    return out


def box_only_cutmix(images: torch.Tensor, perm: torch.Tensor, boxes: np.ndarray, inplace: bool) -> torch.Tensor:
    """A leaner CutMix: gather only the box pixels of the partners (no permuted copy of the batch)."""
    out = images if inplace else images.clone()
    if boxes.ndim == 1:
        x0, y0, x1, y1 = (int(v) for v in boxes)
        out[:, :, y0:y1, x0:x1] = images[perm, :, y0:y1, x0:x1]
    else:
        patches = [
            images[j, :, y0:y1, x0:x1].clone()
            for j, (x0, y0, x1, y1) in zip(perm.tolist(), boxes.tolist(), strict=True)
        ]
        for i, ((x0, y0, x1, y1), patch) in enumerate(zip(boxes.tolist(), patches, strict=True)):
            out[i, :, y0:y1, x0:x1] = patch
    return out


def kornia_cutmix(mode: str):
    try:
        from kornia.augmentation import RandomCutMixV2
    except ImportError:  # pragma: no cover - kornia is a test extra
        return None
    return RandomCutMixV2(data_keys=["input", "class"], use_correct_lambda=True, same_on_batch=mode == "batch")


def time_row(images, labels, sets, mode: str, inplace: bool, kornia, stat) -> dict[str, float]:
    """``stat`` (median or min) of interleaved timings of every method on the same ``sets`` of boxes."""
    n = images.shape[0]
    streams = {name: itertools.cycle(sets) for name in ("ours", "plain", "box")}
    op = TensorContextMix(mode=mode, inplace=inplace)
    full = TensorContextMix(num_classes=10, mode=mode, inplace=inplace, seed=0)

    def ours():
        perm, boxes = next(streams["ours"])
        return op.apply(images, None, perm, np.broadcast_to(boxes, (n, 4)))

    def plain():
        perm, boxes = next(streams["plain"])
        return plain_cutmix(images, perm, boxes, inplace)

    def box_only():
        perm, boxes = next(streams["box"])
        return box_only_cutmix(images, perm, boxes, inplace)

    fns = {"ours": ours, "plain": plain, "box": box_only, "full": lambda: full(images, labels)}
    if kornia is not None and not inplace:
        fns["kornia"] = lambda: kornia(images, labels)
    times = interleaved_times_ms(fns, repeats=len(sets) - 2, warmup=2)
    return {name: float(stat(values)) for name, values in times.items()}


def run(repeats: int, statistic: str = "median") -> str:
    stat = np.median if statistic == "median" else np.min
    torch.manual_seed(0)
    rows = []
    for shape, dtype in CONFIGS:
        n, _, height, width = shape
        images = (torch.rand(shape) * 255).to(dtype) if dtype == torch.uint8 else torch.rand(shape)
        labels = torch.randint(0, 10, (n,))
        rng = np.random.default_rng(0)
        for mode in ("batch", "sample"):
            sets = round_sets(height, width, n, mode, repeats + 2, rng)  # warmup included
            kornia = kornia_cutmix(mode) if dtype != torch.uint8 else None
            for inplace in (True, False):
                times = time_row(images, labels, sets, mode, inplace, kornia, stat)
                ratio = times["ours"] / times["plain"]
                kornia_ms = times.get("kornia")
                if dtype == torch.uint8:
                    kornia_cell = "n/a (no uint8)"
                else:
                    kornia_cell = "-" if kornia_ms is None else f"{kornia_ms:.3g} ({kornia_ms / times['plain']:.1f}x)"
                rows.append(
                    [
                        f"({', '.join(map(str, shape))}) {str(dtype).replace('torch.', '')}",
                        mode,
                        "in place" if inplace else "out of place",
                        times["ours"],
                        times["plain"],
                        f"{ratio:.2f}x",
                        f"<= {TARGETS[mode]}x: {'met' if ratio <= TARGETS[mode] else 'NOT met'}",
                        times["box"],
                        f"{times['ours'] / times['box']:.2f}x",
                        times["full"],
                        kornia_cell,
                    ]
                )
                print(" | ".join(str(v) for v in rows[-1]), flush=True)
    header = [
        "batch",
        "mode",
        "writes",
        "ContextMix ms",
        "plain CutMix ms",
        "ratio",
        "target",
        "box-only CutMix ms",
        "ContextMix / box-only",
        "full call ms",
        "kornia ms (vs plain)",
    ]
    notes = (
        f"{statistic.capitalize()} of {repeats} interleaved rounds (one call of every method per round, same boxes "
        "and pairing per round"
        + ("; the minimum because other jobs shared the machine" if statistic == "min" else "")
        + "). "
        "ContextMix = `TensorContextMix.apply` with the round's boxes, nearest; plain CutMix = permuted batch + slice copy "
        "(timm in place, torchvision on a clone), the target's floor; box-only CutMix gathers only the box "
        "(reference); full call = `TensorContextMix(num_classes=10)(images, labels)` with its own draws and soft targets; "
        "kornia = `RandomCutMixV2(use_correct_lambda=True)` with its own boxes (out of place only, no uint8), its "
        "ratio is against plain CutMix out of place. Targets: batch <= 1.5x, per-sample <= 2x plain CutMix."
    )
    return markdown_table(header, rows) + "\n\n" + notes


def round_sets(height: int, width: int, n: int, mode: str, count: int, rng: np.random.Generator) -> list:
    """``count`` (pairing, boxes) sets, one per timing round; every method sees the same sequence."""
    sets = []
    for _ in range(count):
        boxes = draw_boxes(height, width, rng.random((1 if mode == "batch" else n, 3)))
        sets.append((torch.from_numpy(rng.permutation(n)), boxes[0] if mode == "batch" else boxes))
    return sets


def shuffled_times_ms(fns: dict, repeats: int, order_rng: random.Random, warmup: int = 2) -> dict[str, list[float]]:
    """Like ``interleaved_times_ms``, with the calls of each round in a random order: what one call
    leaves in the caches (plain CutMix allocates a whole batch) must not favour the call after it."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        order = list(fns)
        order_rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def _paired_call(name: str, images: torch.Tensor, ops: dict, streams: dict, inplace: bool) -> torch.Tensor:
    perm, boxes = next(streams[name])
    if name == "plain":
        return plain_cutmix(images, perm, boxes, inplace)
    return ops[name].apply(images, None, perm, np.broadcast_to(boxes, (images.shape[0], 4)))


def against_base(base_op: type, repeats: int) -> str:
    """Paired rounds of this op, the base op and plain CutMix: medians of the per-round ratios."""
    torch.manual_seed(0)
    load_start = os.getloadavg()[0]
    rows = []
    for shape, dtype in CONFIGS:
        n, _, height, width = shape
        images = (torch.rand(shape) * 255).to(dtype) if dtype == torch.uint8 else torch.rand(shape)
        rng = np.random.default_rng(0)
        for mode, inplace in itertools.product(("batch", "sample"), (True, False)):
            sets = round_sets(height, width, n, mode, repeats + 2, rng)
            ops = {"after": TensorContextMix(mode=mode, inplace=inplace), "before": base_op(mode=mode, inplace=inplace)}
            streams = {name: itertools.cycle(sets) for name in ("after", "before", "plain")}

            fns = {name: functools.partial(_paired_call, name, images, ops, streams, inplace) for name in streams}
            times = shuffled_times_ms(fns, repeats, random.Random(0))
            after, before, plain = (np.asarray(times[k]) for k in ("after", "before", "plain"))
            rows.append(
                [
                    f"({', '.join(map(str, shape))}) {str(dtype).replace('torch.', '')}",
                    mode,
                    "in place" if inplace else "out of place",
                    float(np.median(before)),
                    float(np.median(after)),
                    f"{np.median(before / plain):.2f}x",
                    f"{np.median(after / plain):.2f}x",
                    f"{np.median(after / before):.2f}x",
                ]
            )
            print(" | ".join(str(v) for v in rows[-1]), flush=True)
    header = ["batch", "mode", "writes", "before ms", "after ms", "before / plain", "after / plain", "after / before"]
    notes = (
        f"1-minute load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (2 cores: above 2, "
        "other processes shared them; the paired ratios still hold, single-call times do not). "
        f"Medians over {repeats} rounds of the per-round ratios (before, after and plain CutMix timed in each "
        "round, in a random order, on the same boxes and pairing). before = the base commit's `TensorContextMix.apply`, after "
        "= this tree's (it also checks that float batches are finite: one reduction over the batch)."
    )
    return markdown_table(header, rows) + "\n\n" + notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timing rounds per row (default: 15)")
    parser.add_argument(
        "--stat",
        choices=("median", "min"),
        default="median",
        help="statistic of the rounds (default: median; min resists load from other processes)",
    )
    parser.add_argument("--against-base", action="store_true", help="only the paired table against --base-ref")
    parser.add_argument("--base-ref", default=BEFORE_REF, help=f"git ref of the op to compare with ({BEFORE_REF})")
    parser.add_argument("--base", type=Path, default=None, help="a checkout to compare with instead of git archive")
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.against_base:
        # Only the op's module: it imports the shared box math from the package in use (unchanged since).
        path = base_checkout(args.base_ref, args.base) / "albu_defects" / "pytorch" / "contextmix.py"
        spec = importlib.util.spec_from_file_location("albu_defects_base_contextmix", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        body = against_base(module.TensorContextMix, args.repeats)
        title = f"ContextMix batch op against {args.base_ref} (CPU, paired rounds)"
        section = "contextmix_base"
    else:
        body, title, section = (
            run(args.repeats, args.stat),
            "ContextMix batch op vs plain CutMix and kornia (CPU)",
            "contextmix",
        )
    print(body)
    if args.write:
        write_section(section, title, body)


if __name__ == "__main__":
    main()
