"""Where the exact Poisson blend spends its time, per call, on the large Magnetic Tile regions.

The same pairs as ``bench_blending.py`` (every connected defect, dilated by 3 px, placed in a
defect-free tile); for each region of at least ``--min-pixels`` (default 10,000), one
``poisson_blend(method="exact")`` call is split into its steps by wrapping the library's functions
with CPU timers (the wrappers cost about 1 us a call): region and right-hand side set-up, the
solver's set-up (choice, coarse factorization, box-solve constants), the iterations (box solves,
coarse solves with their restriction and prolongation, products by ``A``, inner products, the rest
of the vector updates) and the write-back. OpenCV and BLAS run on one thread.

    python benchmarks/profile_solver.py [--min-pixels N] [--rounds R] [--write]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MAGNETIC_TILE_ROOT, markdown_table, write_section
from bench_blending import read_pairs

from albu_defects.blending import pcg, poisson, solver
from albu_defects.blending.grid import single_threaded_blas

#: (label, owner, attribute): the steps timed, outermost first; nested steps are indented.
STEPS = (
    ("poisson_blend (the whole call)", poisson, "poisson_blend"),
    ("region: crop, float64 copies", poisson, "_region"),
    ("right-hand side (guidance + Dirichlet)", poisson, "_rhs_grid"),
    ("solver choice", solver, "_choose"),
    ("coarse level set-up", pcg._CoarseSolver, "__init__"),
    ("  of which the banded factorization", pcg._CoarseSolver, "_factor"),
    ("box-solve set-up", pcg._PeriodicBoxSolver, "__init__"),
    ("box-solve set-up (border sides)", pcg._TrigBoxSolver, "__init__"),
    ("iterations (deflated CG)", pcg, "_cg"),
    ("  box solves (periodic DFT)", pcg._PeriodicBoxSolver, "__call__"),
    ("  box solves (sine/cosine)", pcg._TrigBoxSolver, "__call__"),
    ("  coarse solves", pcg._CoarseSolver, "__call__"),
    ("    of which restriction", pcg._CoarseSolver, "_restrict"),
    ("    of which prolongation", pcg._CoarseSolver, "_prolong"),
    ("  products by A", pcg._Operator, "__call__"),
    ("  inner products", pcg, "_dot"),
    ("banded Cholesky solves", solver, "_solve_banded"),
    ("write-back of the masked pixels", poisson, "_write_masked"),
)


def instrument(totals: collections.Counter, calls: collections.Counter) -> None:
    """Wrap every step with a CPU timer adding to ``totals`` and ``calls``."""
    for label, owner, name in STEPS:
        original = getattr(owner, name)

        def timed(*args, _original=original, _label=label, **kwargs):
            start = time.process_time()
            try:
                return _original(*args, **kwargs)
            finally:
                totals[_label] += time.process_time() - start
                calls[_label] += 1

        setattr(owner, name, timed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=MAGNETIC_TILE_ROOT)
    parser.add_argument("--min-pixels", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="calls per region (the first warms caches)")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if not (args.root / "MT_Free").is_dir():
        raise SystemExit(f"Magnetic Tile data not found at {args.root}")
    cv2.setNumThreads(1)
    pairs = [p for p in read_pairs(args.root, np.random.default_rng(0)) if p.mask.sum() >= args.min_pixels]
    totals, calls = collections.Counter(), collections.Counter()
    instrument(totals, calls)
    blend = poisson.poisson_blend
    load = os.getloadavg()[0]
    with single_threaded_blas():
        for pair in pairs:  # warm-up round: box-solve constants cached per box size
            blend(pair.target, pair.source, pair.mask, pair.top_left, method="exact")
        totals.clear(), calls.clear()
        for _ in range(args.rounds - 1):
            for pair in pairs:
                blend(pair.target, pair.source, pair.mask, pair.top_left, method="exact")
    n = len(pairs) * (args.rounds - 1)
    whole = totals[STEPS[0][0]]
    vector_ops = totals["iterations (deflated CG)"] - sum(
        totals[label] for label in totals if label.startswith("  ") and not label.startswith("    ")
    )
    rows = [
        [label, 1e3 * totals[label] / n, 100 * totals[label] / whole, calls[label] / n]
        for label, _, _ in STEPS
        if calls[label]
    ]
    rows.append(["  vector updates (scaleAdd, subtract) and loop", 1e3 * vector_ops / n, 100 * vector_ops / whole, ""])
    table = markdown_table(["step", "ms per call (CPU)", "% of the call", "calls per call"], rows)
    body = (
        f"{len(pairs)} regions of at least {args.min_pixels:,} px (median "
        f"{int(np.median([p.mask.sum() for p in pairs])):,} px), {args.rounds - 1} timed calls each after one warm-up; "
        f"1-minute load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end. CPU time per step, "
        "averaged per call; indented steps are part of the step above.\n\n" + table
    )
    print(body)
    if args.write:
        write_section("profile_solver", "Exact Poisson blend: where a large region's time goes (issue 14)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
