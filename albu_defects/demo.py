"""The demo picture: one labelled row per augmentation, on the bundled Magnetic Tile samples.

Each method contributes one *panel*: a function ``(samples, rng) -> (title, tiles)`` registered
in :data:`PANELS`. ``albu-defects demo`` renders every panel as a row of the picture.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from .samples import Sample, load_samples
from .visualize import draw_mask_outline, label_tile, make_grid, to_display

__all__ = ["PANELS", "build_demo", "write_demo"]

TILE_HEIGHT = 180

Panel = Callable[[list[Sample], np.random.Generator], tuple[str, list[np.ndarray]]]


def _samples_of(samples: list[Sample], class_name: str) -> list[Sample]:
    return [s for s in samples if s.class_name == class_name]


def tile(image: np.ndarray, text: str, mask: np.ndarray | None = None, class_mask: bool = False) -> np.ndarray:
    """A labelled display tile of ``image`` with ``mask`` outlined (or tinted by class)."""
    from .visualize import overlay_class_mask

    shown = to_display(image, TILE_HEIGHT)
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


def panel_contextmix(samples: list[Sample], rng: np.random.Generator) -> tuple[str, list[np.ndarray]]:
    """ContextMix: a defect image resized into a random box of a defect-free one, masks and weights."""
    import albumentations as A

    from .contextmix import ContextMix

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


#: Rows of the demo picture, top to bottom.
PANELS: list[Panel] = [panel_samples, panel_contextmix]


def build_demo(seed: int = 0) -> np.ndarray:
    """Render every panel in :data:`PANELS` (each with its title) into one BGR picture."""
    samples = load_samples()
    blocks = []
    for panel in PANELS:
        title, tiles = panel(samples, np.random.default_rng(seed))
        blocks.append(make_grid([tiles], title=title))
    width = max(b.shape[1] for b in blocks)
    padded = [np.hstack([b, np.full((b.shape[0], width - b.shape[1], 3), 255, np.uint8)]) for b in blocks]
    header = make_grid([[np.full((1, width, 3), 255, np.uint8)]], title="albu-defects: defect-aware augmentations")
    return np.vstack([header, *padded])


def write_demo(out: str | Path = "demo.png", seed: int = 0) -> Path:
    """Write the demo picture to ``out`` and return its path."""
    out = Path(out)
    if out.suffix.lower() not in {".png", ".jpg", ".jpeg"}:
        raise ValueError(f"cannot write {out}: the demo picture must be a .png or .jpg file")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), build_demo(seed)):
        raise ValueError(f"could not write {out}: is its folder writable?")
    return out
