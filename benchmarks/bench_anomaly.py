"""Per-image time of CropLiq and CutPaste on 256x256 images, next to A.CoarseDropout in the same run.

    python benchmarks/bench_anomaly.py [--write] [--repeats N]

Every transform runs in its own ``A.Compose(seed=0)`` with ``p=1`` on the same image (a bundled
Magnetic Tile sample resized to 256x256, grayscale and RGB). Times are medians of single calls, so
each includes the draw of a new patch. Targets (issue 7): CropLiq < 1 ms, CutPaste < 0.3 ms.
A second table times the liquify alone (field + fold-free scale + remap) by patch size.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import albumentations as A
import cv2
import numpy as np
from _common import markdown_table, median_ms, write_section

from albu_defects import CropLiq, CutPaste, load_samples
from albu_defects.methods.cropliq.functional import draw_warp_field, liquify

SIZE = 256
TARGETS_MS = {"CropLiq": 1.0, "CutPaste": 0.3}


def bench_image(channels: int) -> np.ndarray:
    sample = next(s for s in load_samples() if s.class_name == "Free")
    gray = cv2.resize(sample.image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    return gray if channels == 1 else np.ascontiguousarray(np.repeat(gray[..., None], channels, axis=2))


def transform_rows(repeats: int) -> list[list[object]]:
    candidates = [
        ("A.CoarseDropout (defaults)", None, A.CoarseDropout(p=1.0)),
        ("CropLiq region=auto (default)", "CropLiq", CropLiq(p=1.0)),
        ("CropLiq region=image", "CropLiq", CropLiq(region="image", p=1.0)),
        ("CropLiq warp=strokes", "CropLiq", CropLiq(warp="strokes", p=1.0)),
        ("CutPaste variant=normal", "CutPaste", CutPaste(variant="normal", p=1.0)),
        ("CutPaste variant=scar", "CutPaste", CutPaste(variant="scar", p=1.0)),
    ]
    rows = []
    for channels in (1, 3):
        image = bench_image(channels)
        baseline = None
        for name, family, transform in candidates:
            compose = A.Compose([transform], seed=0)
            ms = median_ms(lambda c=compose, im=image: c(image=im), repeats=repeats, warmup=20)
            baseline = ms if baseline is None else baseline
            target = TARGETS_MS.get(family or "")
            verdict = "" if target is None else f"< {target} ms: {'met' if ms < target else 'MISSED'}"
            rows.append([name, f"{SIZE}x{SIZE}x{channels} uint8", ms, ms / baseline, verdict])
    return rows


def patch_rows(repeats: int) -> list[list[object]]:
    image = bench_image(3)
    rows = []
    for side in (32, 64, 128):
        rng = np.random.default_rng(0)
        field_ms = median_ms(lambda s=side, g=rng: draw_warp_field(s, s, "push", (0.3, 0.6), g), repeats=repeats)
        dx, dy = draw_warp_field(side, side, "push", (0.3, 0.6), rng)
        warp_ms = median_ms(lambda dx=dx, dy=dy: liquify(image, (40, 40), dx, dy), repeats=repeats)
        rows.append([f"{side}x{side}", field_ms, warp_ms, field_ms + warp_ms])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the section of benchmarks/RESULTS.md")
    parser.add_argument("--repeats", type=int, default=300, help="timed calls per row (default 300)")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    transforms = markdown_table(
        ["transform", "image", "ms / image (median)", "x CoarseDropout", "target"], transform_rows(args.repeats)
    )
    patches = markdown_table(
        ["liquify patch", "field + fold-free scale (ms)", "warp + copy into image (ms)", "total (ms)"],
        patch_rows(args.repeats),
    )
    body = (
        "Each row: `A.Compose([t], seed=0)` with `p=1` called on one 256x256 image (a bundled Magnetic Tile "
        "sample), the median of single calls; the ratio is against `A.CoarseDropout` (defaults) on the same "
        "image in the same run. OpenCV limited to 1 thread.\n\n"
        f"{transforms}\n\nCropLiq's liquify alone (push warp, 3-channel image), by patch size:\n\n{patches}\n"
    )
    print(body)
    if args.write:
        write_section("bench_anomaly", "CropLiq and CutPaste (issue 7)", body)


if __name__ == "__main__":
    main()
