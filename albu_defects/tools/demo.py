"""The demo picture: one labelled row per augmentation, on the bundled Magnetic Tile samples.

Each method contributes one *panel*: a function ``(samples, rng) -> (title, tiles)`` registered
in :data:`PANELS`. ``albu-defects demo`` renders every panel as a row of the picture.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from albu_defects.data import MAGNETIC_TILE_CLASSES, Sample, load_samples

from .visualize import (
    draw_bboxes,
    draw_mask_outline,
    label_tile,
    make_grid,
    overlay_class_mask,
    to_display,
    write_picture,
)

__all__ = ["PANELS", "build_demo", "panel_names", "write_demo"]

TILE_HEIGHT = 180
#: Tile height of the PoissonPaste row.
SMALL = 140

Panel = Callable[[list[Sample], np.random.Generator], tuple[str, list[np.ndarray]]]


def _samples_of(samples: list[Sample], class_name: str) -> list[Sample]:
    return [s for s in samples if s.class_name == class_name]


def tile(
    image: np.ndarray, text: str, mask: np.ndarray | None = None, class_mask: bool = False, height: int = TILE_HEIGHT
) -> np.ndarray:
    """A labelled display tile of ``image`` with ``mask`` outlined (or tinted by class)."""
    shown = to_display(image, height)
    if mask is not None:
        shown = overlay_class_mask(shown, mask) if class_mask else draw_mask_outline(shown, mask)
    return label_tile(shown, text)


def panel_samples(samples: list[Sample], rng: np.random.Generator) -> tuple[str, list[np.ndarray]]:
    """The bundled inputs: one image per class with its ground-truth mask outlined."""
    seen: dict[str, Sample] = {}
    for s in samples:
        seen.setdefault(s.class_name, s)
    return "Bundled Magnetic Tile samples (ground truth outlined)", [
        tile(s.image, s.class_name, s.mask) for s in seen.values()
    ]


def _zoom(image: np.ndarray, mask: np.ndarray, margin: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """The part of ``image`` (and ``mask``) around the mask's box, for a close-up tile."""
    from albu_defects.core.geometry import box_slices, grow_box, image_box, mask_bbox

    window = box_slices(grow_box(mask_bbox(mask) or image_box(mask.shape), margin, mask.shape))
    return image[window], mask[window]


def panel_cropliq(samples: list[Sample], rng: np.random.Generator) -> tuple[str, list[np.ndarray]]:
    """CropLiq on defect-free tiles: each warp kind, its anomaly mask outlined, plus close-ups."""
    import albumentations as A

    from albu_defects.methods.cropliq.transform import CropLiq

    free = sorted(_samples_of(samples, "Free"), key=lambda s: -s.image.size)[:2]  # the larger tiles
    tiles = []
    for index, warp in enumerate(("push", "swirl", "bloat", "pinch", "strokes")):
        sample = free[index % len(free)]
        transform = CropLiq(warp=warp, area_range=(0.05, 0.12), strength_range=(0.6, 0.9), p=1.0)
        out = A.Compose([transform], seed=int(rng.integers(2**31)))(image=sample.image)
        tiles.append(tile(out["image"], warp, out["anomaly_mask"]))
        if warp in ("push", "swirl"):
            before, _ = _zoom(sample.image, out["anomaly_mask"])
            after, moved = _zoom(out["image"], out["anomaly_mask"])
            tiles += [tile(before, f"{warp}: before"), tile(after, f"{warp}: after", moved)]
    return "CropLiq: fold-free liquify of a patch inside the tile, border fixed (anomaly mask outlined)", tiles


def panel_cutpaste(samples: list[Sample], rng: np.random.Generator) -> tuple[str, list[np.ndarray]]:
    """CutPaste normal and scar on defect-free tiles, pasted pixels outlined."""
    import albumentations as A

    from albu_defects.methods.cutpaste.transform import CutPaste

    free = _samples_of(samples, "Free")
    tiles = []
    for index, variant in enumerate(("normal", "normal", "scar", "scar", "scar")):
        sample = free[index % len(free)]
        out = A.Compose([CutPaste(variant=variant, p=1.0)], seed=int(rng.integers(2**31)))(image=sample.image)
        tiles.append(tile(out["image"], variant, out["anomaly_mask"]))
        if index == 2:
            after, pasted = _zoom(out["image"], out["anomaly_mask"], margin=10)
            tiles.append(tile(after, "scar: close-up", pasted))
    return "CutPaste: a jittered patch / rotated scar pasted elsewhere (pasted pixels outlined)", tiles


def panel_guided_crop(samples: list[Sample], rng: np.random.Generator) -> tuple[str, list[np.ndarray]]:
    """Guided-Crop on the defect-free tiles: the base, then results with the class mask tinted and blob boxes."""
    import albumentations as A

    from albu_defects.bank import DefectBank
    from albu_defects.data import sample_root
    from albu_defects.methods.guided_crop.transform import GuidedCropPaste

    bank = DefectBank.from_folder(sample_root(), progress=False)
    transform = GuidedCropPaste(bank=bank, weights="inverse_frequency", p=1.0)
    from albu_defects.core.transform import IS_ALBUMENTATIONS_X

    box_format = {"coord_format" if IS_ALBUMENTATIONS_X else "format": "pascal_voc"}  # X renamed the argument
    pipeline = A.Compose([transform], bbox_params=A.BboxParams(**box_format), seed=int(rng.integers(2**31)))
    tiles = []
    for sample in sorted(_samples_of(samples, "Free"), key=lambda s: -s.image.size)[:2]:  # the larger tiles
        tiles.append(tile(sample.image, "defect-free base"))
        for _ in range(3):
            out = pipeline(image=sample.image, mask=np.zeros(sample.image.shape, np.uint8), bboxes=[])
            shown = overlay_class_mask(to_display(out["image"], TILE_HEIGHT), out["mask"])
            draw_bboxes(shown, out["bboxes"], scale=TILE_HEIGHT / out["image"].shape[0])
            names = "+".join(bank.classes[k] for k in np.flatnonzero(out["class_vector"]))
            tiles.append(label_tile(shown, names))
    return "Guided-Crop: real defect blobs pasted, flipped and scrolled (class mask tinted, blob boxes)", tiles


def panel_blending(samples: list[Sample], rng: np.random.Generator) -> tuple[str, list[np.ndarray]]:
    """One defect injected into a defect-free tile by cut-paste, by OpenCV and by the exact solver.

    Tiles are zoomed on the defect; the outline is the blend region (the defect grown by 3 px).
    """
    from albu_defects.blending import paste, poisson_blend
    from albu_defects.core.geometry import box_slices, dilate_mask, mask_bbox

    target = _samples_of(samples, "Free")[0].image
    donor = _samples_of(samples, "Crack")[0]
    window = box_slices(mask_bbox(dilate_mask(donor.mask, 6)))  # type: ignore[arg-type]
    source = donor.image[window]
    region = dilate_mask(donor.mask[window], 3)  # the defect plus a 3-px ring of its own background
    ty = int(rng.integers(0, max(1, target.shape[0] - source.shape[0])))
    tx = int(rng.integers(0, max(1, target.shape[1] - source.shape[1])))
    placed = np.zeros(target.shape, bool)
    placed[ty : ty + region.shape[0], tx : tx + region.shape[1]] = region
    zoom = box_slices(mask_bbox(dilate_mask(placed, 10)))  # type: ignore[arg-type]
    results = [("defect-free target", target), ("cut-paste", paste(target, source, region, (ty, tx)))]
    try:
        results.append(("OpenCV", poisson_blend(target, source, region, (ty, tx), method="opencv")))
    except ValueError:
        results.append(("OpenCV: rejected", target))
    results.append(("exact Poisson", poisson_blend(target, source, region, (ty, tx), method="exact")))
    return "Blending core: one Crack injected (zoomed; outline = blend region)", [
        tile(image[zoom], text, placed[zoom]) for text, image in results
    ]


def _dli_batch(samples: list[Sample], seed: int) -> tuple[list[Sample], dict]:
    """A batch of the bundled samples (all three defect-free, one of each defect class) and DLI's output."""
    import warnings

    from albu_defects.bank import DefectBank
    from albu_defects.data import sample_root
    from albu_defects.methods.injection.dli import DynamicLabelInjection

    batch = [s for s in samples if s.class_name == "Free"]
    seen: set[str] = set()
    batch += [s for s in samples if s.class_name != "Free" and not (s.class_name in seen or seen.add(s.class_name))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bank = DefectBank.from_folder(sample_root(), progress=False)
    dli = DynamicLabelInjection(bank, poisson_p=0.5, seed=seed)
    return batch, dli(images=[s.image for s in batch], masks=[s.class_mask for s in batch])


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def panel_dli_before(samples: list[Sample], rng: np.random.Generator) -> tuple[str, list[np.ndarray]]:
    """Dynamic Label Injection, the batch before: masks tinted by class."""
    batch, out = _dli_batch(samples, int(rng.integers(2**31)))
    tiles = [tile(s.image, s.class_name, s.class_mask, class_mask=True) for s in batch]
    return f"Dynamic Label Injection, batch before (images per class: {_counts(out['class_counts_before'])})", tiles


def panel_dli_after(samples: list[Sample], rng: np.random.Generator) -> tuple[str, list[np.ndarray]]:
    """Dynamic Label Injection, the batch after: defect-free images got the rarest classes."""
    batch, out = _dli_batch(samples, int(rng.integers(2**31)))
    tiles = []
    for s, image, mask, log in zip(batch, out["images"], out["masks"], out["injections"], strict=True):
        text = f"+{log['class_name']} {'P' if log['method'] == 'poisson' else 'CP'}" if log else s.class_name
        tiles.append(tile(image, text, mask, class_mask=True))
    title = (
        f"... after (+ = injected, rarest class first; P Poisson, CP cut-paste): {_counts(out['class_counts_after'])}"
    )
    return title, tiles


def panel_contextmix(samples: list[Sample], rng: np.random.Generator) -> tuple[str, list[np.ndarray]]:
    """ContextMix: a defect image resized into a random box of a defect-free one, masks and weights."""
    import albumentations as A

    from albu_defects.methods.contextmix.transform import ContextMix

    hosts = _samples_of(samples, "Free")
    partners = [s for s in samples if s.class_name != "Free"]
    tiles = []
    for k in range(3):
        host, partner = hosts[k % len(hosts)], partners[int(rng.integers(len(partners)))]
        mix = A.Compose([ContextMix(p=1.0, min_box_side=8)], seed=int(rng.integers(2**31)))
        for _ in range(20):  # show a clearly visible box (a few draws are tiny or skipped)
            out = mix(
                image=host.image,
                mask=host.class_mask,
                contextmix_metadata=[{"image": partner.image, "mask": partner.class_mask}],
            )
            if 0.15 <= out["mix_weights"][1] <= 0.6:
                break
        if k == 0:
            tiles += [tile(host.image, "host", host.class_mask, True)]
        tiles += [
            tile(partner.image, partner.class_name, partner.class_mask, True),
            tile(out["image"], f"lamB={out['mix_weights'][1]:.2f}", out["mask"], True),
        ]
    return "ContextMix: whole partner image resized into a box, class mask mixed (nearest), label by area", tiles


def panel_poisson_paste(samples: list[Sample], rng: np.random.Generator) -> tuple[str, list[np.ndarray]]:
    """PoissonPaste: real defects (user-supplied donors) pasted into a defect-free tile, cut-paste vs exact Poisson."""
    import albumentations as A

    from albu_defects.core.geometry import box_slices, grow_box, mask_bbox
    from albu_defects.core.transform import IS_ALBUMENTATIONS_X
    from albu_defects.methods.poisson_paste.transform import PoissonPaste

    free = sorted(_samples_of(samples, "Free"), key=lambda s: -s.image.size)[0].image
    # smaller tiles than the other rows: examples/demo.png stays under 1 MB
    host = free[: free.shape[0] // 2, : free.shape[1] // 2]  # a quarter of the tile: the objects show larger
    donors = []
    for name in ("Blowhole", "Break", "Crack"):
        donor = _samples_of(samples, name)[0]
        window = box_slices(grow_box(mask_bbox(donor.mask), 4, donor.mask.shape))  # type: ignore[arg-type]
        donors.append({"image": donor.image[window], "mask": donor.mask[window], "class_id": donor.class_id})
    box_format = {"coord_format" if IS_ALBUMENTATIONS_X else "format": "pascal_voc"}
    seed = int(rng.integers(2**31))
    mask = np.zeros(host.shape, np.uint8)
    tiles = [
        tile(d["image"], f"donor: {MAGNETIC_TILE_CLASSES[d['class_id'] - 1]}", d["mask"], height=SMALL)
        for d in donors[1:]
    ]
    outputs = {}
    for blend in ("paste", "poisson"):
        transform = PoissonPaste(n=3, blend=blend, scale_range=(0.8, 1.2), hflip_p=0.5, p=1.0)
        pipeline = A.Compose([transform], bbox_params=A.BboxParams(**box_format), seed=seed)
        out = pipeline(image=host, mask=mask, bboxes=[], paste_metadata=donors)
        outputs[blend] = out
    shown = overlay_class_mask(to_display(outputs["poisson"]["image"], SMALL), outputs["poisson"]["mask"])
    draw_bboxes(shown, outputs["poisson"]["bboxes"], scale=SMALL / host.shape[0])
    tiles.append(label_tile(shown, "Poisson: mask, boxes"))
    first = np.asarray(outputs["poisson"]["bboxes"][0]).astype(int)
    zoom = box_slices(grow_box(tuple(first[:4]), 12, host.shape))  # type: ignore[arg-type]
    for blend, text in (("paste", "cut-paste: close-up"), ("poisson", "Poisson: close-up")):
        tiles.append(tile(outputs[blend]["image"][zoom], text, outputs[blend]["mask"][zoom] > 0, height=SMALL))
    return "PoissonPaste: defects pasted, exact Poisson vs cut-paste", tiles


#: Rows of the demo picture, top to bottom.
PANELS: list[Panel] = [
    panel_samples,
    panel_blending,
    panel_dli_before,
    panel_dli_after,
    panel_guided_crop,
    panel_cropliq,
    panel_cutpaste,
    panel_contextmix,
    panel_poisson_paste,
]


def panel_names() -> list[str]:
    """The short names of the panels, for ``albu-defects demo --only NAME``: ``poisson_paste`` etc."""
    return [panel.__name__.removeprefix("panel_") for panel in PANELS]


def build_demo(seed: int = 0, only: str | None = None) -> np.ndarray:
    """Render every panel in :data:`PANELS` (or the one named ``only``) into one BGR picture."""
    if only is not None and only not in panel_names():
        raise ValueError(f"no demo panel {only!r}; choose one of {panel_names()}")
    samples = load_samples()
    blocks = []
    for panel in PANELS:
        if only is not None and panel.__name__ != f"panel_{only}":
            continue
        title, tiles = panel(samples, np.random.default_rng(seed))
        blocks.append(make_grid([tiles], title=title))
    width = max(b.shape[1] for b in blocks)
    padded = [np.hstack([b, np.full((b.shape[0], width - b.shape[1], 3), 255, np.uint8)]) for b in blocks]
    header = make_grid([[np.full((1, width, 3), 255, np.uint8)]], title="albu-defects: defect-aware augmentations")
    return np.vstack([header, *padded])


def write_demo(out: str | Path = "demo.png", seed: int = 0, only: str | None = None) -> Path:
    """Write the demo picture (or its panel ``only``) to ``out`` and return its path."""
    if Path(out).suffix.lower() not in {".png", ".jpg", ".jpeg"}:  # before the work of rendering it
        raise ValueError(f"cannot write {out}: the demo picture must be a .png or .jpg file")
    return write_picture(out, build_demo(seed, only))
