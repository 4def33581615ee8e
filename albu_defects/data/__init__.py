"""The small real sample bundled with the package (for the demo, tests and examples).

Twelve images with their ground-truth masks from the Magnetic Tile surface defect dataset, kept in
the dataset's own layout (``MT_<Class>/Imgs/<name>.jpg`` + ``.png``) so that every loader that
works on the full dataset also works here. Three are defect-free (``MT_Free``); the others hold
one or two examples of each defect class.

Source: Y. Huang, C. Qiu, K. Yuan, "Surface defect saliency of magnetic tile", The Visual Computer
36(1):85-96, 2020. The authors welcome
its use with that citation; see ``data/magnetic_tile/CITATION.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

__all__ = ["MAGNETIC_TILE_CLASSES", "Sample", "load_samples", "sample_root"]

#: Defect classes of Magnetic Tile in the order used for class ids 1..5 (0 = background / free).
MAGNETIC_TILE_CLASSES: tuple[str, ...] = ("Blowhole", "Break", "Crack", "Fray", "Uneven")


@dataclass(frozen=True)
class Sample:
    """One bundled image: grayscale uint8 ``image``, boolean defect ``mask``, class name and id."""

    name: str
    class_name: str  # "Free" for defect-free images
    image: np.ndarray
    mask: np.ndarray

    @property
    def class_id(self) -> int:
        """0 for defect-free, else 1 + index in :data:`MAGNETIC_TILE_CLASSES`."""
        return 0 if self.class_name == "Free" else 1 + MAGNETIC_TILE_CLASSES.index(self.class_name)

    @property
    def class_mask(self) -> np.ndarray:
        """(H, W) uint8 class-index mask: ``class_id`` on the defect, 0 elsewhere."""
        return self.mask.astype(np.uint8) * np.uint8(self.class_id)


def sample_root() -> Path:
    """Folder of the bundled samples, in the Magnetic Tile layout."""
    return Path(str(resources.files("albu_defects") / "data" / "magnetic_tile"))


def load_samples(mask_threshold: int = 127) -> list[Sample]:
    """Read every bundled sample (sorted by class, then name); masks are ``> mask_threshold``."""
    samples = []
    for image_path in sorted(sample_root().glob("MT_*/Imgs/*.jpg")):
        image = cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE)
        mask = cv2.imread(str(image_path.with_suffix(".png")), cv2.IMREAD_GRAYSCALE)
        if image is None or mask is None:
            raise ValueError(f"bundled sample {image_path} or its mask could not be read; reinstall the package")
        class_name = image_path.parent.parent.name.removeprefix("MT_")
        samples.append(Sample(image_path.stem, class_name, image, mask > mask_threshold))
    return samples
