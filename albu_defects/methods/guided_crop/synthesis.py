"""Guided-Crop offline: synthesize a dataset of pasted images on the bank's defect-free images (in memory or to a folder)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

from albu_defects.bank import (
    DefectBank,
    resolve_bank,
)
from albu_defects.core.class_weights import ClassWeights
from albu_defects.core.geometry import Box
from albu_defects.core.parallel import ordered_map
from albu_defects.core.validation import (
    check_int,
)

from .functional import GuidedCropOptions, class_probabilities, plan_guided_crop, render_guided_crop

__all__ = [
    "SynthesizedSample",
    "synthesize",
    "synthesize_one",
    "synthesize_to_folder",
]


# --------------------------------------------------------------------------- offline synthesis
class SynthesizedSample(NamedTuple):
    """One synthetic image from :func:`synthesize`."""

    index: int
    image: np.ndarray
    mask: np.ndarray  # class-index mask (uint8, or uint16 beyond 255 classes)
    class_vector: np.ndarray  # float32 (K,)
    classes: tuple[str, ...]  # names of the classes present in the mask
    bboxes: list[Box]  # pixel (x_min, y_min, x_max, y_max) of each visible blob, ends exclusive
    bbox_classes: list[int]  # the class id of each box
    base_index: int  # which of bank.free_images it was pasted on


def synthesize_one(
    bank: DefectBank, index: int, probabilities: np.ndarray, seed: int, options: GuidedCropOptions
) -> SynthesizedSample:
    """Sample ``index`` of the stream ``seed``: depends on nothing else, so any thread order gives the same data."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    base_index = int(rng.integers(bank.num_free))
    base = bank.load_free(base_index)
    result = render_guided_crop(base, plan_guided_crop(bank, base, probabilities, rng, options), len(bank.classes))
    names = tuple(bank.classes[k] for k in np.flatnonzero(result.class_vector))
    return SynthesizedSample(
        index, result.image, result.mask, result.class_vector, names, result.bboxes, result.bbox_classes, base_index
    )


def _synthesis_setup(
    bank: DefectBank | str | os.PathLike[str], n: int, weights: Any, seed: int, workers: int | None, options: dict
) -> tuple[DefectBank, np.ndarray, int, GuidedCropOptions, int]:
    bank = resolve_bank(bank)
    check_int(n, "n", 0, "(how many images to synthesize)")
    if bank.num_free == 0:
        raise ValueError("the bank has no defect-free images to paste on (build it from data with defect-free images)")
    unknown = sorted(set(options) - set(GuidedCropOptions._fields))
    if unknown:
        raise ValueError(f"unknown Guided-Crop options {unknown}; known: {list(GuidedCropOptions._fields)}")
    checked = GuidedCropOptions(**options).checked()
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    workers = check_int(workers, "workers", 1)
    return bank, class_probabilities(weights, bank), check_int(seed, "seed"), checked, workers


def synthesize(
    bank: DefectBank | str | os.PathLike[str],
    n: int,
    weights: ClassWeights | Sequence[float] | str | None = None,
    seed: int = 0,
    *,
    workers: int | None = None,
    progress: bool = True,
    **options: Any,
) -> Iterator[SynthesizedSample]:
    """Yield ``n`` Guided-Crop images pasted on the bank's defect-free images, in order (index 0..n-1).

    ``weights``: as :func:`class_probabilities` (a :class:`ClassWeights` is read once, at the start).
    ``options``: the :class:`GuidedCropOptions` fields (``max_defects``, jitters, ``flip_p``,
    ``shift_limit``, ``border_threshold``). Sample ``i`` depends only on ``(seed, i)``, the bank and
    the options, so the output is the same for any number of ``workers`` (threads; OpenCV and
    numpy release the GIL).
    """
    bank, probabilities, seed, checked, workers = _synthesis_setup(bank, n, weights, seed, workers, options)
    return ordered_map(
        lambda i: synthesize_one(bank, i, probabilities, seed, checked), int(n), workers, "Guided-Crop", progress
    )


def _write_encoded(path: Path, image: np.ndarray) -> None:
    """Encode ``image`` by the file's suffix (OpenCV defaults: PNG zlib level 1) and write it in one go."""
    ok, encoded = cv2.imencode(path.suffix, image)
    if not ok:
        raise ValueError(f"could not encode {path} ({image.dtype} {image.shape})")
    path.write_bytes(encoded.tobytes())


def synthesize_to_folder(
    bank: DefectBank | str | os.PathLike[str],
    out: str | os.PathLike[str],
    n: int,
    weights: ClassWeights | Sequence[float] | str | None = None,
    seed: int = 0,
    *,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    **options: Any,
) -> Path:
    """Write ``n`` synthetic images and masks under ``out`` and a manifest; returns ``out/manifest.json``.

    Layout: ``images/000000.png`` (uint8 / uint16 PNG; float32 images as ``.tiff``), ``masks/000000.png``
    (the class-index mask), ``manifest.json`` (bank, seed, n, class names, probabilities, options and
    one item per image: files, base image, class names, class vector, blob boxes in pixels
    (``bboxes``, the package's box convention) and their class ids (``bbox_classes``)) and
    ``manifest.csv`` (``index,image,mask,classes`` with classes joined by ``;``). Image and mask are
    written in the worker threads. A non-empty ``out`` is refused unless ``overwrite=True``.
    """
    import csv
    import json

    bank, probabilities, seed, checked, workers = _synthesis_setup(bank, n, weights, seed, workers, options)
    root = Path(out)
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and not overwrite)):
        raise ValueError(f"out {root} exists and is not an empty folder; pass overwrite=True (--overwrite) to reuse it")
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    digits = max(6, len(str(max(int(n) - 1, 0))))

    def work(index: int) -> dict[str, Any]:
        sample = synthesize_one(bank, index, probabilities, seed, checked)
        image = sample.image
        suffix = ".tiff" if image.dtype == np.float32 else ".png"
        if image.ndim == 3 and image.shape[2] in (3, 4):
            image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
        image_name = f"images/{index:0{digits}d}{suffix}"
        mask_name = f"masks/{index:0{digits}d}.png"
        # cv2.imencode + one buffered write: cv2.imwrite measured ~2 ms slower per file here (OpenCV 5)
        _write_encoded(root / image_name, image)
        _write_encoded(root / mask_name, sample.mask)
        base = bank.free_images[sample.base_index]
        return {
            "index": index,
            "image": image_name,
            "mask": mask_name,
            "base": base if isinstance(base, str) else f"free_images[{sample.base_index}]",
            "classes": list(sample.classes),
            "class_vector": [int(v) for v in sample.class_vector],
            "bboxes": [list(box) for box in sample.bboxes],
            "bbox_classes": list(sample.bbox_classes),
        }

    items = list(ordered_map(work, int(n), workers, "Guided-Crop synth", progress))
    manifest = {
        "format": "albu-defects-guided-crop",
        "bank": str(bank.path) if bank.path is not None else None,
        "n": int(n),
        "seed": seed,
        "classes": list(bank.classes),
        "probabilities": [float(p) for p in probabilities],
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in checked._asdict().items()},
        "bbox_format": "pascal_voc pixels: x_min, y_min, x_max, y_max (ends exclusive); class ids in bbox_classes",
        "items": items,
    }
    path = root / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "image", "mask", "classes"])
        for item in items:
            writer.writerow([item["index"], item["image"], item["mask"], ";".join(item["classes"])])
    return path
