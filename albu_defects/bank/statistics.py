"""Statistics of a bank: per-class counts and area/blob statistics, and the table of class sets."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .entry import DefectEntry

__all__ = ["class_counts", "class_sets", "class_stats", "format_stats"]


def class_counts(classes: Sequence[str], by_class: Sequence[Sequence[DefectEntry]]) -> dict[str, dict[str, int]]:
    """Per class name: ``{"entries": n, "images": distinct source images, "blobs": total blobs}``."""
    return {
        name: {
            "entries": len(group),
            "images": len({e.source_id for e in group}),
            "blobs": sum(e.num_blobs for e in group),
        }
        for name, group in zip(classes, by_class, strict=True)
    }


def class_stats(
    classes: Sequence[str], by_class: Sequence[Sequence[DefectEntry]], num_free: int
) -> list[dict[str, Any]]:
    """Per-class statistics: one row per class, then a row with ``class="free"``.

    Keys: ``class`` (name), ``images`` (source images), ``area_pct_mean`` and ``area_pct_std``
    (defect area as a % of its source image, over images; population std), ``blobs_mean``,
    ``blobs_max``. A class without entries has NaN means and ``blobs_max`` 0; the free row has
    ``images`` = the defect-free count and zero area and blobs.
    """
    rows = []
    for name, group in zip(classes, by_class, strict=True):
        area = np.array([100.0 * e.area_fraction for e in group])
        blobs = np.array([e.num_blobs for e in group])
        rows.append(
            {
                "class": name,
                "images": len({e.source_id for e in group}),
                "area_pct_mean": float(area.mean()) if group else float("nan"),
                "area_pct_std": float(area.std()) if group else float("nan"),
                "blobs_mean": float(blobs.mean()) if group else float("nan"),
                "blobs_max": int(blobs.max()) if group else 0,
            }
        )
    free = {"class": "free", "images": num_free, "area_pct_mean": 0.0, "area_pct_std": 0.0}
    return [*rows, {**free, "blobs_mean": 0.0, "blobs_max": 0}]


def class_sets(entries: Sequence[DefectEntry], num_free: int) -> dict[tuple[int, ...], int]:
    """How many source images hold each set of classes (sorted class ids; ``()`` = the defect-free images)."""
    per_source: dict[str, set[int]] = defaultdict(set)
    for entry in entries:
        per_source[entry.source_id].add(entry.class_id)
    table = Counter(tuple(sorted(ids)) for ids in per_source.values())
    if num_free:
        table[()] = num_free
    return dict(sorted(table.items()))


def format_stats(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows of :meth:`DefectBank.stats` as a markdown table (images, area % mean +- std, blobs)."""
    lines = ["| class | images | area % (mean +- std) | blobs mean | blobs max |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['class']} | {row['images']} | {row['area_pct_mean']:.2f} +- {row['area_pct_std']:.2f} "
            f"| {row['blobs_mean']:.2f} | {row['blobs_max']} |"
        )
    return "\n".join(lines)
