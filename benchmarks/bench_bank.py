"""DefectBank on the whole Magnetic Tile set (1,344 images): build, save, load, size, sampling.

Targets (2 cores): build < 10 s, load < 0.5 s. The peer is the reference Dynamic Label Injection
code, which reads a defect image and its mask from disk for every injection; the bank hands out an
entry from memory instead.

    python benchmarks/bench_bank.py [--root DATA] [--repeats 3] [--write]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import MAGNETIC_TILE_ROOT, markdown_table, median_ms, write_section

from albu_defects.bank import DefectBank, format_stats

BUILD_TARGET_S = 10.0
LOAD_TARGET_S = 0.5


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=MAGNETIC_TILE_ROOT, help="Magnetic Tile folder")
    parser.add_argument("--repeats", type=int, default=3, help="builds to time (median)")
    parser.add_argument("--write", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    if not (args.root / "MT_Free").is_dir():
        sys.exit(f"Magnetic Tile data not found at {args.root} (set ALBU_DEFECTS_MT_ROOT or --root)")
    n_images = sum(1 for _ in args.root.glob("MT_*/Imgs/*.jpg"))

    def build(workers=None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the 4 empty Uneven masks: reported in the table below
            return DefectBank.from_folder(args.root, progress=False, workers=workers)

    build_s, bank = _timed(build, args.repeats)
    build_1_s, _ = _timed(lambda: build(workers=1), 1)
    threads = min(8, os.cpu_count() or 1)
    work = Path(tempfile.mkdtemp(prefix="bench_bank_"))
    try:
        save_s, _ = _timed(lambda: bank.save(work / "bank"), args.repeats)
        disk = _folder_bytes(work / "bank")
        save_free_s, _ = _timed(lambda: DefectBank.load(work / "bank").save(work / "bank_free", copy_free=True), 1)
        disk_free = _folder_bytes(work / "bank_free")
        DefectBank.load(work / "bank")  # warm the page cache like a second epoch would
        load_s, loaded = _timed(lambda: DefectBank.load(work / "bank"), max(5, args.repeats))
        assert loaded == bank
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rng = np.random.default_rng(0)
    sample_us = 1e3 * median_ms(lambda: bank.draw("Crack", rng), repeats=2000)
    blobs_us = 1e3 * median_ms(lambda: bank.draw_blobs("Break", rng), repeats=2000)
    entry = bank.entries_of("Crack")[0]
    image_path = args.root / entry.source_id.split("/")[0] / "Imgs" / (entry.source_id.split("/")[1] + ".jpg")
    read_us = 1e3 * median_ms(
        lambda: (
            cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED),
            cv2.imread(str(image_path.with_suffix(".png")), cv2.IMREAD_UNCHANGED),
        ),
        repeats=50,
    )

    rows = [
        [
            "build (whole set, s)",
            f"{build_s:.2f}",
            f"< {BUILD_TARGET_S:.0f}",
            "yes" if build_s < BUILD_TARGET_S else "NO",
        ],
        ["build, 1 reader thread (s)", f"{build_1_s:.2f}", "", ""],
        ["save (s)", f"{save_s:.2f}", "", ""],
        ["save with copy_free=True (s)", f"{save_free_s:.2f}", "", ""],
        ["load (s)", f"{load_s:.3f}", f"< {LOAD_TARGET_S}", "yes" if load_s < LOAD_TARGET_S else "NO"],
        ["size on disk (MB)", f"{disk / 1e6:.1f}", "", ""],
        ["size on disk, copy_free=True (MB)", f"{disk_free / 1e6:.1f}", "", ""],
        ["size in memory, bank.nbytes (MB)", f"{bank.nbytes / 1e6:.1f}", "", ""],
        ["bank.sample (us)", f"{sample_us:.1f}", "", ""],
        ["bank.draw_blobs (us)", f"{blobs_us:.1f}", "", ""],
        ["peer: read a defect image + mask from disk (us)", f"{read_us:.0f}", "", ""],
        ["peer / bank.sample", f"{read_us / sample_us:.0f}x", "", ""],
    ]
    skipped = ", ".join(f"{s.source_id} ({s.reason})" for s in bank.skipped)
    body = (
        f"{n_images} images ({len(bank)} defect entries in {len(bank.classes)} classes, {bank.num_free} defect-free, "
        f"{len(bank.skipped)} skipped), {threads} reader threads, margin {bank.margin} px, threshold 127; "
        f"build median of {args.repeats}, load median of {max(5, args.repeats)} (warm page cache).\n\n"
        + markdown_table(["measure", "value", "target", "met"], rows)
        + "\n\n`albu-defects bank stats` of this bank:\n\n"
        + format_stats(bank.stats())
        + f"\n\nSkipped at build and reported: {skipped}.\n"
    )
    print(body)
    if args.write:
        write_section("bench_bank", "DefectBank (Magnetic Tile, 1,344 images)", body)


if __name__ == "__main__":
    main()
