"""Guided-Crop offline: synthesize a dataset of pasted images on the bank's defect-free images (in memory or to a folder)."""

from __future__ import annotations

import os
import re
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
from albu_defects.core.files import load_json, open_inside
from albu_defects.core.geometry import Box
from albu_defects.core.parallel import ordered_map
from albu_defects.core.validation import (
    check_int,
)
from albu_defects.core.writing import create_file, folder_lock, recover_output, replace_output

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


def _encode(path: str, image: np.ndarray) -> bytes:
    """``image`` encoded by the file name's suffix (OpenCV defaults: PNG zlib level 1)."""
    ok, encoded = cv2.imencode(Path(path).suffix, image)
    if not ok:
        raise ValueError(f"could not encode {path} ({image.dtype} {image.shape})")
    return encoded.tobytes()


MANIFEST_FORMAT = "albu-defects-guided-crop"
#: The manifests of an output folder, in the order they are written (manifest.json last: the commit).
MANIFESTS = ("manifest.csv", "manifest.json")
#: Names of the images and masks a synthesis run writes (the only files a later run may replace).
_OUTPUT_FILE = re.compile(r"(images/[0-9]{6,}\.(png|tiff)|masks/[0-9]{6,}\.png)")
_MAX_MANIFEST_BYTES = 1 << 28


def _previous_output(root: Path) -> set[str]:
    """The files the manifest of an earlier run in ``root`` lists, manifests included (a run may replace those).

    ``ValueError`` if ``root`` holds a ``manifest.json`` that is not such a manifest: then which files
    are ours cannot be known.
    """
    if not os.path.lexists(root / "manifest.json"):
        return set()
    try:
        with open_inside(root, "manifest.json", limit=_MAX_MANIFEST_BYTES) as handle:
            manifest = load_json(handle.read(), "manifest.json")
        items = manifest["items"] if isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT else None
        files = {item[key] for item in items for key in ("image", "mask")} if isinstance(items, list) else {None}
    except (ValueError, TypeError, KeyError) as error:
        files = {f"({error})"}
    bad = sorted(str(name) for name in files if not (isinstance(name, str) and _OUTPUT_FILE.fullmatch(name)))
    if bad:
        raise ValueError(
            f"out {root} holds a manifest.json that is not a synthesis manifest of albu-defects ({bad[0]}); "
            "refusing to overwrite files it did not write: choose another folder, or move them away"
        )
    return files | set(MANIFESTS)


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
    written in the worker threads.

    A non-empty ``out`` is refused unless ``overwrite=True``; even then only the files the previous
    run's manifest lists are replaced or removed (a file of the new run's names that no manifest lists
    is refused, anything else in ``out`` stays). The run is written to a hidden staging folder first
    and then swapped in, manifests last, so a manifest in ``out`` always describes exactly the files
    beside it: an interrupted run leaves the previous output, or no manifest at all (the next run
    cleans up what it left). A symbolic link ``out`` is followed.
    """
    import csv
    import io
    import json

    bank, probabilities, seed, checked, workers = _synthesis_setup(bank, n, weights, seed, workers, options)
    root = Path(out).absolute().resolve()
    if root.exists() and not root.is_dir():
        raise ValueError(f"out {root} exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    digits = max(6, len(str(max(int(n) - 1, 0))))
    candidates = [
        f"{kind}/{i:0{digits}d}{suffix}"
        for i in range(int(n))
        for kind, suffix in (("images", ".png"), ("images", ".tiff"), ("masks", ".png"))
    ]
    with folder_lock(root, "synthetic images into"):
        recover_output(root, "synth", MANIFESTS)
        previous = _previous_output(root)
        if not overwrite and any(not p.name.startswith(".") for p in root.iterdir()):
            raise ValueError(
                f"out {root} exists and is not an empty folder; pass overwrite=True (--overwrite) to reuse it"
            )
        foreign = [name for name in [*candidates, *MANIFESTS] if os.path.lexists(root / name) and name not in previous]
        if foreign:
            raise ValueError(
                f"out {root} holds {foreign[0]}, which no albu-defects synthesis manifest there lists; refusing to "
                "overwrite it: choose another folder, or move it away"
            )

        def produce(staging: Path) -> list[str]:
            (staging / "images").mkdir(exist_ok=True)  # (staging is out itself for a first run)
            (staging / "masks").mkdir(exist_ok=True)

            def work(index: int) -> dict[str, Any]:
                sample = synthesize_one(bank, index, probabilities, seed, checked)
                image = sample.image
                suffix = ".tiff" if image.dtype == np.float32 else ".png"
                if image.ndim == 3 and image.shape[2] in (3, 4):
                    image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
                image_name = f"images/{index:0{digits}d}{suffix}"
                mask_name = f"masks/{index:0{digits}d}.png"
                # not fsynced one by one (it would halve the throughput): a killed run loses nothing,
                # a power loss may (the manifests, written last, are fsynced)
                create_file(staging / image_name, _encode(image_name, image), durable=False)
                create_file(staging / mask_name, _encode(mask_name, sample.mask), durable=False)
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
                "format": MANIFEST_FORMAT,
                "bank": str(bank.path) if bank.path is not None else None,
                "n": int(n),
                "seed": seed,
                "classes": list(bank.classes),
                "probabilities": [float(p) for p in probabilities],
                "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in checked._asdict().items()},
                "bbox_format": "pascal_voc pixels: x_min, y_min, x_max, y_max (ends exclusive); class ids in bbox_classes",
                "items": items,
            }
            table = io.StringIO(newline="")
            writer = csv.writer(table)
            writer.writerow(["index", "image", "mask", "classes"])
            for item in items:
                writer.writerow([item["index"], item["image"], item["mask"], ";".join(item["classes"])])
            create_file(staging / "manifest.csv", table.getvalue().encode("utf-8"))
            create_file(staging / "manifest.json", json.dumps(manifest, indent=1).encode("utf-8"))
            return [name for item in items for name in (item["image"], item["mask"])]

        replace_output(root, "synth", previous, candidates, MANIFESTS, produce)
    return root / "manifest.json"
