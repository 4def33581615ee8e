"""``albu-defects preview``: apply a saved pipeline to images and draw the results in one grid.

``albu-defects preview PIPELINE.yaml IMAGES... -o grid.png [--seed 0] [--samples 3]``

One row per image: the input (mask tinted by class, boxes drawn), then ``--samples`` draws of the
pipeline, each with its output mask tinted by class, its boxes and, for anomaly transforms, the
``anomaly_mask`` outlined in white. The tile titles name the draw's extra outputs (ContextMix's
partner share ``mix``, ``anomaly`` label, DLI's injected class).

Pipeline
    Read with ``A.load`` (``.yaml``/``.yml`` as YAML, ``.json`` as JSON). Importing albu-defects
    registers its classes; a pipeline naming a class that is not registered is refused by name.
    albumentations 2.0 does not save seeds: the pipeline is seeded with ``--seed``.

Images and their masks
    ``IMAGES`` are image files or folders (searched recursively; files in a ``masks/`` folder and
    files that are another image's mask under the rules below are not images). The mask of
    ``<dir>/<stem>.<ext>`` is the first of:

    1. ``<dir>/<stem>.png`` when the image is not itself a ``.png`` (the Magnetic Tile layout,
       ``MT_<Class>/Imgs/<name>.jpg`` + ``<name>.png``);
    2. ``<dir>/<stem>_mask.<any image suffix>``;
    3. ``<dir>/../masks/<stem>.<any image suffix>`` (a ``masks/`` folder beside the images folder,
       as in ``images/`` + ``masks/``), then ``<dir>/../masks/<stem>_mask.<suffix>``.

    Without a mask the image is treated as defect-free (an all-zero mask). A mask holding values
    above ``mask_threshold`` (127) is binary (anti-aliased masks such as Magnetic Tile's): pixels
    above it are the image's class, taken from an ``MT_<Class>`` folder in its path when there is
    one, else 1. A mask with no value above it is a class-index mask (0 background, ``k`` class
    ``k``). The image's ``label`` is that class (the most frequent nonzero class of an index mask;
    0 when empty).

What each pipeline receives
    Per-sample pipelines (an ``A.Compose`` or one transform) get ``image``, ``mask`` (uint8 class
    ids), ``label`` (unless the compose is strict) and, when the compose has ``BboxParams``, one box
    per connected component of each class (in its format, the class id in every label field).
    Transforms that take partners through a metadata key (``ContextMix``) get one other image
    (random, seeded) with the same keys. Batch pipelines (:class:`~albu_defects.BatchCompose`,
    :class:`~albu_defects.DynamicLabelInjection`) run on all the images as one batch, ``--samples``
    times. The pipeline is seeded with :func:`albu_defects.seed_pipeline` (every transform its own
    seed).

What is drawn
    Training pipelines may end in ``A.Normalize()`` and ``ToTensorV2()``: (C, H, W) tensors are drawn
    as the images they hold, and a float image outside [0, 1] is stretched per channel to its own
    range for display. An output that is no (H, W[, C]) image of its mask's size is refused with a
    clear message. Masks may be class-index, multi-hot (H, W, K) or one-hot (K, H, W) (a pixel of
    several classes shows the lowest).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.core.bbox_utils import (
    convert_bboxes_from_albumentations,
    convert_bboxes_to_albumentations,
    denormalize_bboxes,
    normalize_bboxes,
)

from albu_defects.bank import IMAGE_SUFFIXES, read_image  # one list of image types for every reader
from albu_defects.core.batch import BatchCompose, metadata_keys
from albu_defects.core.geometry import connected_components, mask_bbox
from albu_defects.core.seeds import seed_pipeline
from albu_defects.core.validation import check_int
from albu_defects.data import MAGNETIC_TILE_CLASSES
from albu_defects.methods.injection.dli import DynamicLabelInjection

from .visualize import (
    draw_bboxes,
    draw_mask_outline,
    label_tile,
    make_grid,
    overlay_class_mask,
    to_display,
    write_picture,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "PreviewImage",
    "collect_images",
    "find_mask",
    "load_pipeline",
    "read_preview_image",
    "render_preview",
    "run_pipeline",
    "write_preview",
]

#: Transforms that take a whole batch (``images=``, ``masks=``) instead of one sample.
BATCH_TYPES = (BatchCompose, DynamicLabelInjection)

_ANOMALY_OUTLINE = (255, 255, 255)


@dataclass(frozen=True)
class PreviewImage:
    """One input of the preview: the image, its uint8 class-index mask and label."""

    path: Path
    image: np.ndarray
    mask: np.ndarray
    mask_path: Path | None
    label: int


# ------------------------------------------------------------------------------- inputs
def _with_suffixes(folder: Path, stem: str) -> list[Path]:
    return [folder / f"{stem}{suffix}" for suffix in IMAGE_SUFFIXES]


def find_mask(image_path: str | os.PathLike[str]) -> Path | None:
    """The mask file of ``image_path`` under the rules of this module's docstring, or ``None``."""
    path = Path(image_path)
    folder, stem = path.parent, path.stem
    candidates = [folder / f"{stem}.png"] if path.suffix.lower() != ".png" else []
    candidates += _with_suffixes(folder, f"{stem}_mask")
    candidates += _with_suffixes(folder.parent / "masks", stem) + _with_suffixes(
        folder.parent / "masks", f"{stem}_mask"
    )
    return next((c for c in candidates if c != path and c.is_file()), None)


def collect_images(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files of ``paths`` (files as given; folders searched recursively, sorted), masks left out."""
    images: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            masks = {find_mask(p) for p in found}
            images += [p for p in found if p not in masks and p.parent.name != "masks"]
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise ValueError(f"{path} is not an image ({', '.join(IMAGE_SUFFIXES)})")
            images.append(path)
        else:
            raise FileNotFoundError(f"no such image or folder: {path}")
    if not images:
        raise ValueError(f"no images found in {', '.join(str(p) for p in paths)}")
    return images


def _folder_class(path: Path) -> int:
    """1 + the Magnetic Tile class of an ``MT_<Class>`` folder in ``path``, 0 for ``MT_Free``, else 1."""
    for part in reversed(path.parts):
        name = part.removeprefix("MT_")
        if part.startswith("MT_") and name in MAGNETIC_TILE_CLASSES:
            return 1 + MAGNETIC_TILE_CLASSES.index(name)
        if part == "MT_Free":
            return 0
    return 1


def read_preview_image(path: str | os.PathLike[str], mask_threshold: float = 127) -> PreviewImage:
    """Read an image (gray stays (H, W), colour becomes RGB) and its mask as a uint8 class-index mask."""
    path = Path(path)
    image = read_image(path, "image")  # colour as RGB(A), as the bank reads it
    if image.ndim == 3 and image.shape[2] == 4:
        image = np.ascontiguousarray(image[..., :3])
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path} has dtype {image.dtype}; preview reads 8- and 16-bit images")
    mask_path = find_mask(path)
    folder_class = _folder_class(path)
    if mask_path is None:
        return PreviewImage(path, image, np.zeros(image.shape[:2], np.uint8), None, 0)
    raw = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ValueError(f"could not read mask {mask_path} (of {path})")
    if raw.ndim == 3:
        raw = raw[..., 0]
    if raw.shape != image.shape[:2]:
        raise ValueError(f"mask {mask_path} is {raw.shape} but image {path} is {image.shape[:2]}; they must match")
    if raw.max(initial=0) > mask_threshold:  # binary (possibly anti-aliased) mask
        class_id = max(folder_class, 1)
        mask = (raw > mask_threshold).astype(np.uint8) * np.uint8(class_id)
        return PreviewImage(path, image, mask, mask_path, class_id)
    mask = raw.astype(np.uint8)
    counts = Counter(int(v) for v in mask[mask > 0].ravel()) if mask.any() else Counter()
    label = counts.most_common(1)[0][0] if counts else (folder_class if "MT_" in str(path) else 0)
    return PreviewImage(path, image, mask, mask_path, label)


def load_pipeline(path: str | os.PathLike[str]) -> Any:
    """``A.load`` a pipeline file: ``.yaml``/``.yml`` as YAML, ``.json`` as JSON."""
    path = Path(path)
    formats = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}
    if path.suffix.lower() not in formats:
        raise ValueError(f"cannot tell the format of {path}: name the pipeline file .yaml, .yml or .json")
    if not path.is_file():
        raise FileNotFoundError(f"no such pipeline file: {path}")
    import albu_defects  # noqa: F401 - registers our classes with albumentations

    try:
        return A.load(str(path), data_format=formats[path.suffix.lower()])
    except KeyError as error:
        raise ValueError(
            f"{path} uses the transform {error.args[0]!r}, which is not registered; import the package that "
            "defines it (albu-defects registers albu_defects.*) or fix the name"
        ) from None
    except Exception as error:  # yaml/json syntax, pydantic validation of the arguments
        raise ValueError(f"could not load the pipeline {path}: {type(error).__name__}: {error}") from None


# ------------------------------------------------------------------------------- running
def _mask_boxes(mask: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Pixel boxes (``(x_min, y_min, x_max, y_max)``) of each connected component of each class, and their classes."""
    boxes, classes = [], []
    for class_id in (int(v) for v in np.unique(mask) if v != 0):
        count, components = connected_components(mask == class_id)
        for component in range(1, count + 1):
            boxes.append(list(mask_bbox(components == component)))  # type: ignore[arg-type]
            classes.append(class_id)
    return np.asarray(boxes, np.float64).reshape(-1, 4), classes


def _bbox_params(pipeline: Any) -> Any:
    processors = getattr(pipeline, "processors", None) or getattr(getattr(pipeline, "_compose", None), "processors", {})
    processor = processors.get("bboxes") if processors else None
    return None if processor is None else processor.params


def _to_format(boxes: np.ndarray, fmt: str, hw: tuple[int, int]) -> list[list[float]]:
    """Pixel xyxy boxes in the Compose's bbox format."""
    if not len(boxes) or fmt == "pascal_voc":
        return boxes.tolist()
    normalized = normalize_bboxes(boxes, hw)
    if fmt == "albumentations":
        return normalized.tolist()
    return convert_bboxes_from_albumentations(normalized, fmt, hw).tolist()


def _to_pixels(boxes: Any, fmt: str, hw: tuple[int, int]) -> np.ndarray:
    """Boxes in the Compose's bbox format (extra columns ignored) as pixel xyxy."""
    array = np.asarray([list(box)[:4] for box in boxes], np.float64).reshape(-1, 4)
    if not len(array) or fmt == "pascal_voc":
        return array
    normalized = array if fmt == "albumentations" else convert_bboxes_to_albumentations(array, fmt, hw)
    return denormalize_bboxes(normalized, hw)


def _sample_inputs(item: PreviewImage, params: Any, strict: bool) -> dict[str, Any]:
    data: dict[str, Any] = {"image": item.image, "mask": item.mask}
    if not strict:
        data["label"] = item.label
    if params is not None:
        boxes, classes = _mask_boxes(item.mask)
        data["bboxes"] = _to_format(boxes, params.format, item.image.shape[:2])
        for field in params.label_fields or ():
            data[field] = list(classes)
    return data


def _contains_batch_transform(pipeline: Any) -> str | None:
    for transform in getattr(pipeline, "transforms", []) or []:
        if isinstance(transform, BATCH_TYPES):
            return type(transform).__name__
        nested = _contains_batch_transform(transform)
        if nested:
            return nested
    return None


def _summary(output: dict[str, Any], index: int | None = None) -> str:
    """Short text of a draw's extra outputs."""
    parts = []
    if "mix_weights" in output:
        weights = np.asarray(output["mix_weights"])
        parts.append(f"mix {float(weights[index][1] if index is not None else weights[1]):.2f}")
    if "anomaly_label" in output:
        label = output["anomaly_label"]
        parts.append(f"anomaly {int(label[index] if index is not None else label)}")
    if index is not None and "injections" in output and output["injections"][index]:
        parts.append(f"+{output['injections'][index]['class_name']}")
    return " ".join(parts)


def run_pipeline(pipeline: Any, items: Sequence[PreviewImage], samples: int = 3, seed: int = 0) -> list[list[dict]]:
    """``samples`` draws of ``pipeline`` per image: ``result[i][k]`` holds ``image``, ``mask``
    (or ``None``), ``anomaly_mask`` (or ``None``), ``boxes`` (pixel xyxy) and ``text``."""
    check_int(samples, "samples", 1)
    if not items:
        raise ValueError("no images to preview")
    nested = _contains_batch_transform(pipeline) if not isinstance(pipeline, BATCH_TYPES) else None
    if nested:
        raise ValueError(
            f"the pipeline holds a batch transform ({nested}) inside {type(pipeline).__name__}; preview runs batch "
            f"transforms at the top level only: save the {nested} itself (or a BatchCompose) as the pipeline"
        )
    seed_pipeline(pipeline, seed)  # every transform its own seed (set_random_seed would tie same-p children)
    if isinstance(pipeline, BATCH_TYPES):
        return _run_batch(pipeline, items, samples)
    params = _bbox_params(pipeline)
    strict = bool(getattr(pipeline, "strict", False))
    keys = metadata_keys([pipeline])
    rng = np.random.default_rng(seed)
    results = []
    for i, item in enumerate(items):
        row = []
        for _ in range(samples):
            data = _sample_inputs(item, params, strict)
            others = [j for j in range(len(items)) if j != i] or [i]  # a lone image is its own partner
            for key in keys:
                partner = _sample_inputs(items[int(rng.choice(others))], params, strict)
                data[key] = [partner]
            try:
                out = pipeline(**data)
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"the pipeline failed on {item.path}: {error}") from None
            row.append(_draw_record(out, out.get("image"), out.get("mask"), out.get("bboxes"), params, _summary(out)))
        results.append(row)
    return results


def _run_batch(pipeline: Any, items: Sequence[PreviewImage], samples: int) -> list[list[dict]]:
    batch: dict[str, Any] = {"images": [item.image for item in items], "masks": [item.mask for item in items]}
    params = _bbox_params(pipeline)
    if isinstance(pipeline, BatchCompose):
        batch["labels"] = [item.label for item in items]
        if params is not None:
            per_sample = [_sample_inputs(item, params, strict=True) for item in items]
            batch["bboxes"] = [sample["bboxes"] for sample in per_sample]
            for field in params.label_fields or ():
                batch[field] = [sample[field] for sample in per_sample]
    else:  # DynamicLabelInjection: a label per image says which images are defect-free
        batch["labels"] = [item.label for item in items]
    draws = []
    for _ in range(samples):
        try:
            draws.append(pipeline(**batch))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"the batch pipeline failed on these {len(items)} images: {error}") from None
    results = []
    for i in range(len(items)):
        row = []
        for out in draws:
            boxes = out["bboxes"][i] if "bboxes" in out and params is not None else None
            row.append(_draw_record(out, out["images"][i], out["masks"][i], boxes, params, _summary(out, i), i))
        results.append(row)
    return results


def _is_tensor(value: Any) -> bool:
    """A torch tensor (``ToTensorV2`` output), told without importing torch."""
    return hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "permute")


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if _is_tensor(value) else np.asarray(value)


def _drawable(image: Any, mask: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """An output image as (H, W[, C]) numpy and its mask as (H, W[, K]), whatever the pipeline ended with.

    ``ToTensorV2`` returns (C, H, W) tensors (and, with ``transpose_mask``, (K, H, W) masks): they are
    moved back to channels-last. Anything else that is not an (H, W[, C]) image of the mask's size is
    refused with a ``ValueError``, never drawn as a garbage strip.
    """
    tensor = _is_tensor(image)
    array = _numpy(image)
    if tensor and array.ndim == 3:
        array = np.moveaxis(array, 0, -1)
    drawn_mask = None if mask is None else _numpy(mask)
    if drawn_mask is not None and _is_tensor(mask) and drawn_mask.ndim == 3 and drawn_mask.shape[1:] == array.shape[:2]:
        drawn_mask = np.moveaxis(drawn_mask, 0, -1)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] > 4) or min(array.shape[:2], default=0) < 1:
        raise ValueError(
            f"the pipeline returned an image of shape {tuple(array.shape)}, which preview cannot draw: it draws "
            "(H, W) or (H, W, C <= 4) arrays and the (C, H, W) tensors of ToTensorV2"
        )
    if drawn_mask is not None and drawn_mask.shape[:2] != array.shape[:2]:
        raise ValueError(
            f"the pipeline returned an image of shape {tuple(array.shape)} and a mask of shape "
            f"{tuple(drawn_mask.shape)}; preview draws masks of the image's size"
        )
    return _display_range(array), drawn_mask


def _display_range(image: np.ndarray) -> np.ndarray:
    """A float image outside [0, 1] (after ``Normalize``) stretched per channel to [0, 1]; others as they are."""
    if image.dtype.kind != "f" or image.size == 0:
        return image
    low, high = float(np.nanmin(image)), float(np.nanmax(image))
    if low >= 0.0 and high <= 1.0:
        return image
    flat = image.reshape(image.shape[0], image.shape[1], -1).astype(np.float32)
    low_c, high_c = flat.min(axis=(0, 1)), flat.max(axis=(0, 1))
    stretched = (flat - low_c) / np.where(high_c > low_c, high_c - low_c, 1.0)
    return stretched.reshape(image.shape)


def _draw_record(
    out: dict[str, Any], image: Any, mask: Any, boxes: Any, params: Any, text: str, index: int | None = None
) -> dict[str, Any]:
    image, mask = _drawable(image, mask)
    anomaly = out.get("anomaly_mask")
    if anomaly is not None and index is not None:
        anomaly = anomaly[index]
    pixels = None
    if boxes is not None and params is not None:
        pixels = _to_pixels(boxes, params.format, image.shape[:2])
    return {
        "image": image,
        "mask": mask,
        "anomaly_mask": None if anomaly is None else _numpy(anomaly),
        "boxes": pixels,
        "text": text,
    }


# ------------------------------------------------------------------------------- drawing
def _class_index(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A drawable (H, W) class-index mask from a class-index ((H, W) or (H, W, 1)), bool, multi-hot
    (H, W, K) or one-hot (K, H, W) mask of an image of size ``hw``: a pixel of several classes shows
    the lowest."""
    if mask.ndim == 3 and mask.shape[2] > 1 and mask.shape[:2] == hw:  # multi-hot (H, W, K)
        present = mask != 0
        return np.where(present.any(2), present.argmax(2) + 1, 0)
    if mask.ndim == 3 and mask.shape[0] > 1 and mask.shape[1:] == hw:  # one-hot (K, H, W)
        present = mask != 0
        return np.where(present.any(0), present.argmax(0) + 1, 0)
    return mask[..., 0] if mask.ndim == 3 else mask


def _tile(record: dict[str, Any], height: int) -> np.ndarray:
    image = record["image"]
    # colour images were read as RGB for the pipeline; the picture is drawn in OpenCV's BGR
    shown = to_display(image[..., 2::-1] if image.ndim == 3 and image.shape[2] >= 3 else image, height)
    if record["mask"] is not None:
        shown = overlay_class_mask(shown, _class_index(record["mask"], image.shape[:2]))
    if record["anomaly_mask"] is not None and record["anomaly_mask"].any():
        draw_mask_outline(shown, record["anomaly_mask"], _ANOMALY_OUTLINE)
    if record["boxes"] is not None and len(record["boxes"]):
        draw_bboxes(shown, record["boxes"], scale=height / image.shape[0])
    text_width = cv2.getTextSize(record["text"], cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)[0][0] + 8
    if shown.shape[1] < text_width:  # narrow images: pad on the right so the title stays readable
        shown = np.hstack([shown, np.full((height, text_width - shown.shape[1], 3), 255, np.uint8)])
    return label_tile(shown, record["text"])


def render_preview(
    items: Sequence[PreviewImage], results: Sequence[Sequence[dict]], height: int = 160, title: str | None = None
) -> np.ndarray:
    """The grid: per image, the input (mask tinted, component boxes) and then each draw."""
    rows = []
    for item, row in zip(items, results, strict=True):
        boxes, _ = _mask_boxes(item.mask)
        source = {"image": item.image, "mask": item.mask, "anomaly_mask": None, "boxes": boxes}
        name = item.path.stem if len(item.path.stem) <= 24 else item.path.stem[:23] + "~"
        tiles = [_tile({**source, "text": f"{name}, label {item.label}"}, height)]
        tiles += [
            _tile({**record, "text": f"#{k + 1} {record['text']}".strip()}, height) for k, record in enumerate(row)
        ]
        rows.append(tiles)
    return make_grid(rows, title=title)


def write_preview(
    pipeline_path: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] = "preview.png",
    *,
    seed: int = 0,
    samples: int = 3,
    height: int = 160,
    mask_threshold: float = 127,
) -> Path:
    """Load ``pipeline_path``, apply it to ``images`` (``samples`` draws each) and write the grid to ``out``."""
    out = Path(out)
    if out.suffix.lower() not in {".png", ".jpg", ".jpeg"}:
        raise ValueError(f"cannot write {out}: the preview must be a .png or .jpg file")
    if check_int(height, "height", 16, "(pixels, at most 2048)") > 2048:
        raise ValueError(f"height must be an int >= 16 (pixels, at most 2048), got {height!r}")
    pipeline = load_pipeline(pipeline_path)
    items = [read_preview_image(path, mask_threshold) for path in collect_images(images)]
    results = run_pipeline(pipeline, items, samples=samples, seed=seed)
    title = f"{Path(pipeline_path).name}: {samples} draw(s) per image, seed {seed}"
    picture = render_preview(items, results, height=int(height), title=title)
    return write_picture(out, picture)
