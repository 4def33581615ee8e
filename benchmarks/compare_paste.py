"""PoissonPaste's blending against cv2.seamlessClone, pietorch and the albumentations built-ins, measured (issue 14).

One real case from the bundled Magnetic Tile samples: a Crack defect (its mask grown by 2 px) pasted
into a defect-free tile, and the same object with its mask touching the image border. For each tool
present in this environment, on the points of issue 14:

- **border**: the object placed in the image corner, its mask touching two image borders: does the
  call work, and do the object's pixels on the border row and column change?
- **dtypes / channels**: uint8 gray (H, W), uint8 RGB, uint8 4-channel, uint16 RGB, float32 RGB in
  [0, 1]: the call works, and the result inside the mask is within 1 % of the value range of the
  exact masked Perez solution (``albu_defects.poisson_blend(method="exact")``, itself checked against
  an independent scipy solve in tests/methods/test_poisson_paste.py);
- **outside the mask**: pixels outside the paste mask that changed (uint8 RGB, interior placement);
- **exactness**: mean |result - exact Perez| inside the mask, grey levels (uint8 RGB, interior);
- **labels**: what a call does to a class-index ``mask`` and to ``bboxes`` (transforms only).

Tools: ``cv2.seamlessClone`` (NORMAL_CLONE), pietorch (``pie-torch`` 0.0.1, ``pietorch.blend``,
normal gradients; only when importable), ``albu_defects.poisson_blend`` / ``PoissonPaste``
(exact), and the albumentations built-in of the installed flavour: ``A.OverlayElements`` (2.0.8) or
``A.CopyAndPaste`` (AlbumentationsX, both ``blend_mode`` values). Run it under each flavour:

    python benchmarks/compare_paste.py [--write]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import albumentations as A
import cv2
import numpy as np
from _common import markdown_table, write_section

import albu_defects as ad
from albu_defects.core.geometry import box_slices, dilate_mask, grow_box, mask_bbox

Blend = Callable[[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]], np.ndarray]


# ============================================================================================ the case
def case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 96x96 defect-free tile (gray uint8), and a Crack patch with its mask grown by 2 px (cut to the mask's box)."""
    samples = ad.load_samples()
    free = next(s for s in samples if s.class_name == "Free").image[:96, :96]
    crack = next(s for s in samples if s.class_name == "Crack")
    window = box_slices(grow_box(mask_bbox(crack.mask), 2, crack.mask.shape))  # type: ignore[arg-type]
    region = dilate_mask(crack.mask[window], 2)
    tight = box_slices(mask_bbox(region))  # type: ignore[arg-type]
    return free, crack.image[window][tight], region[tight]


def as_kind(gray: np.ndarray, kind: str) -> np.ndarray:
    if kind == "uint8 gray":
        return gray
    channels = {"uint8 RGB": 3, "uint8 4-ch": 4, "uint16 RGB": 3, "float32 RGB": 3}[kind]
    image = np.repeat(gray[..., None], channels, axis=2)
    image[..., 0] = np.clip(image[..., 0].astype(int) + 20, 0, 255)  # channels that differ
    if kind == "uint16 RGB":
        return image.astype(np.uint16) * 257
    if kind == "float32 RGB":
        return image.astype(np.float32) / 255
    return image


# ============================================================================================ blenders
def ours(target: np.ndarray, source: np.ndarray, mask: np.ndarray, top_left: tuple[int, int]) -> np.ndarray:
    return ad.poisson_blend(target, source, mask, top_left, method="exact")


def seamless_clone(target: np.ndarray, source: np.ndarray, mask: np.ndarray, top_left: tuple[int, int]) -> np.ndarray:
    h, w = mask.shape
    centre = (top_left[1] + w // 2, top_left[0] + h // 2)  # cv2 centres the mask's box there
    return cv2.seamlessClone(source, target, (mask * 255).astype(np.uint8), centre, cv2.NORMAL_CLONE)


def pietorch_blend() -> Blend | None:
    try:
        import pietorch
        import torch
    except ImportError:
        return None

    def blend(target: np.ndarray, source: np.ndarray, mask: np.ndarray, top_left: tuple[int, int]) -> np.ndarray:
        channels = None if target.ndim == 2 else 2
        out = pietorch.blend(
            torch.from_numpy(target.astype(np.float32)),
            torch.from_numpy(source.astype(np.float32)),
            torch.from_numpy(mask.astype(np.float32)),
            torch.tensor(top_left),
            False,
            channels_dim=channels,
        ).numpy()
        if target.dtype == np.float32:
            return out.astype(np.float32)
        info = np.iinfo(target.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(target.dtype)

    return blend


def value_range(dtype: np.dtype) -> float:
    return 1.0 if dtype == np.float32 else float(np.iinfo(dtype).max)


def blend_rows(name: str, blend: Blend) -> dict[str, str]:
    free, patch, mask = case()
    h, w = mask.shape
    top_left = ((free.shape[0] - h) // 2, (free.shape[1] - w) // 2)
    placed = np.zeros(free.shape, bool)
    placed[top_left[0] : top_left[0] + h, top_left[1] : top_left[1] + w] = mask
    out: dict[str, str] = {}
    # border: the object in the corner
    target, source = as_kind(free, "uint8 RGB"), as_kind(patch, "uint8 RGB")
    corner = np.zeros(free.shape, bool)
    corner[:h, :w] = mask
    try:
        result = blend(target, source, mask, (0, 0))
        edge = corner.copy()
        edge[1:, 1:] = False  # the object's pixels on the top row and the left column
        changed = (result != target).any(axis=2)
        out["border"] = f"works; {int((changed & edge).sum())}/{int(edge.sum())} border pixels of the object blended"
    except cv2.error as error:
        out["border"] = f"raises ({str(error).strip().splitlines()[-1][:60]})"
    # dtypes and channels
    fine, failed = [], []
    for kind in ("uint8 gray", "uint8 RGB", "uint8 4-ch", "uint16 RGB", "float32 RGB"):
        target, source = as_kind(free, kind), as_kind(patch, kind)
        try:
            result = blend(target, source, mask, top_left)
        except (cv2.error, RuntimeError, ValueError) as error:
            failed.append(f"{kind}: raises ({type(error).__name__})")
            continue
        exact = ours(target, source, mask, top_left)
        error = np.abs(result.astype(np.float64) - exact.astype(np.float64))[placed].max() / value_range(target.dtype)
        (fine if error <= 0.01 else failed).append(kind if error <= 0.01 else f"{kind}: off by {error:.0%}")
    out["dtypes"] = "; ".join(["within 1 %: " + ", ".join(fine), *failed] if fine else failed)
    # pixels outside the mask, exactness (uint8 RGB, interior)
    target, source = as_kind(free, "uint8 RGB"), as_kind(patch, "uint8 RGB")
    result = blend(target, source, mask, top_left)
    changed = (result != target).any(axis=2)
    out["outside"] = f"{int((changed & ~placed).sum())} px"
    exact = ours(target, source, mask, top_left)
    out["exact"] = f"{np.abs(result.astype(float) - exact.astype(float))[placed].mean():.2f}"
    out["labels"] = "none (a blending function)"
    return out


# ============================================================================================ transforms
def transform_rows(name: str, make: Callable[[], A.BasicTransform], metadata: Callable[..., dict]) -> dict[str, str]:
    free, patch, mask = case()
    target, source = as_kind(free, "uint8 RGB"), as_kind(patch, "uint8 RGB")
    fmt = {"coord_format" if ad.IS_ALBUMENTATIONS_X else "format": "pascal_voc"}
    pipeline = A.Compose([make()], bbox_params=A.BboxParams(label_fields=["labels"], **fmt), seed=0)
    key, item = metadata(source, mask)
    out: dict[str, str] = {}
    data = {"image": target, "mask": np.zeros(free.shape, np.uint8), key: [item]}
    try:
        result = pipeline(**data, bboxes=[], labels=[])
        boxes = f"{len(result['bboxes'])} new box(es)"
    except Exception as error:  # whatever the built-in raises is the finding
        boxes = f"with bboxes: raises {type(error).__name__}"
        result = A.Compose([make()], seed=0)(**data)
    pasted = (result["image"] != target).any(axis=2)
    classes = sorted({int(v) for v in np.unique(result["mask"][pasted])}) if pasted.any() else []
    out["labels"] = f"mask classes on changed pixels {classes}; {boxes}"
    out["outside"] = f"{int((pasted & ~(np.asarray(result['mask']) > 0)).sum())} px outside the written mask"
    dtypes = []
    for kind in ("uint8 gray", "uint8 RGB", "uint8 4-ch", "uint16 RGB", "float32 RGB"):
        t, s = as_kind(free, kind), as_kind(patch, kind)
        try:
            A.Compose([make()], seed=0)(image=t, **{key: [metadata(s, mask)[1]]})
            dtypes.append(kind)
        except Exception as error:  # the finding
            dtypes.append(f"{kind}: raises {type(error).__name__}")
    out["dtypes"] = "; ".join(dtypes)
    return out


def ours_transform() -> dict[str, str]:
    def meta(source: np.ndarray, mask: np.ndarray) -> tuple[str, dict]:
        return "paste_metadata", {"image": source, "mask": mask, "class_id": 3, "labels": 3}

    return transform_rows("PoissonPaste", lambda: ad.PoissonPaste(blend_margin=0, p=1.0), meta)


def builtin_transforms() -> dict[str, dict[str, str]]:
    found = {}
    if hasattr(A, "OverlayElements"):

        def overlay(source: np.ndarray, mask: np.ndarray) -> tuple[str, dict]:
            return "overlay_metadata", {"image": source, "mask": (mask * 255).astype(np.uint8), "mask_id": 3}

        found["A.OverlayElements"] = transform_rows("OverlayElements", lambda: A.OverlayElements(p=1.0), overlay)
    if hasattr(A, "CopyAndPaste"):
        for mode in ("hard", "gaussian"):

            def copy_paste(source: np.ndarray, mask: np.ndarray) -> tuple[str, dict]:
                item = {"image": source, "mask": mask.astype(np.uint8), "semantic_mask": mask.astype(np.uint8) * 3}
                return "copy_paste_metadata", {**item, "bbox_labels": {"labels": 3}}

            found[f"A.CopyAndPaste({mode})"] = transform_rows(
                "CopyAndPaste", lambda mode=mode: A.CopyAndPaste(blend_mode=mode, p=1.0), copy_paste
            )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the table into RESULTS.md")
    args = parser.parse_args()
    columns: dict[str, dict[str, str]] = {
        "albu_defects.poisson_blend (exact)": blend_rows("ours", ours),
        "cv2.seamlessClone": blend_rows("cv2", seamless_clone),
    }
    pie = pietorch_blend()
    if pie is not None:
        columns["pietorch.blend"] = blend_rows("pietorch", pie)
    columns["PoissonPaste (transform)"] = ours_transform()
    columns.update(builtin_transforms())
    points = {
        "border": "object mask touching two image borders",
        "dtypes": "dtypes / channels (vs exact Perez)",
        "outside": "pixels changed outside the mask (uint8 RGB)",
        "exact": "mean abs difference from exact Perez in the mask",
        "labels": "labels (class-index mask, bboxes)",
    }
    rows = [[text] + [column.get(point, "-") for column in columns.values()] for point, text in points.items()]
    flavour = "AlbumentationsX" if ad.IS_ALBUMENTATIONS_X else "albumentations 2.0.8"
    body = (
        f"Under {flavour}; OpenCV {cv2.__version__}; pietorch {'pie-torch 0.0.1' if pie else 'not installed'}. "
        "A Crack from the bundled Magnetic Tile samples (mask grown by 2 px) into a 96x96 defect-free tile.\n\n"
        + markdown_table(["point", *columns], rows)
    )
    print(body)
    if args.write:
        name = "compare_paste_x" if ad.IS_ALBUMENTATIONS_X else "compare_paste"
        write_section(name, f"Poisson copy-paste compared ({flavour})", body)


if __name__ == "__main__":
    main()
