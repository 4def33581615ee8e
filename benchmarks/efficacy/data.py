"""Data of the efficacy benchmark: read a dataset folder once, resize it, split it per seed.

Two folder layouts (the ones ``DefectBank.from_folder`` reads):

- Magnetic Tile: ``MT_<Class>/Imgs/<name>.jpg`` + ``<name>.png`` (binary mask, thresholded at 127);
  the folder names the image's class, ``MT_Free`` is defect-free (class 0).
- generic: ``images/<stem>.*`` + ``masks/<stem>.*`` with class-index masks (0 background, k class k);
  an image's class is its mask's most frequent defect class (0 when the mask is empty).

Images become (N, S, S) uint8 (INTER_AREA), masks (N, S, S) uint8 class-index masks (nearest).
Everything is resized *before* the split, so the defect bank built from the training split is at
the training resolution.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass
class Dataset:
    """Resized images, class-index masks and one class id per image (0 = defect-free)."""

    images: np.ndarray  # (N, S, S) uint8
    masks: np.ndarray  # (N, S, S) uint8 class ids 0..K
    labels: np.ndarray  # (N,) int64 image class, 0 = defect-free
    names: list[str]
    class_names: tuple[str, ...]  # defect classes 1..K
    root: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        """Number of defect classes K."""
        return len(self.class_names)

    def subset(self, index: np.ndarray) -> Dataset:
        index = np.asarray(index, np.int64)
        return Dataset(
            self.images[index],
            self.masks[index],
            self.labels[index],
            [self.names[i] for i in index],
            self.class_names,
            self.root,
        )

    def fingerprint(self) -> str:
        """A short hash of the names, labels and size (part of a run's configuration hash)."""
        digest = hashlib.sha256()
        digest.update(repr((self.images.shape, self.class_names)).encode())
        digest.update("\n".join(self.names).encode())
        digest.update(self.labels.tobytes())
        return digest.hexdigest()[:12]

    def counts(self) -> dict[str, int]:
        names = ("Free", *self.class_names)
        return {names[k]: int((self.labels == k).sum()) for k in range(len(names))}


def _read_gray(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise SystemExit(f"cannot read {path}")
    return image


def _resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    if image.shape != mask.shape:
        raise SystemExit(f"image {image.shape} and mask {mask.shape} differ in size")
    return (
        cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA),
        cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST),
    )


def load(root: Path | str, size: int, per_class: int | None = None, seed: int = 0) -> Dataset:
    """Read the dataset at ``root`` resized to ``size`` x ``size`` (at most ``per_class`` images a class)."""
    root = Path(root)
    if any(root.glob("MT_*/Imgs")):
        return _load_magnetic_tile(root, size, per_class, seed)
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return _load_generic(root, size, per_class, seed)
    raise SystemExit(f"{root}: expected MT_<Class>/Imgs/*.jpg (Magnetic Tile) or images/ + masks/ folders")


def _take(paths: list[Path], per_class: int | None, rng: np.random.Generator) -> list[Path]:
    if per_class is None or len(paths) <= per_class:
        return paths
    return [paths[i] for i in sorted(rng.choice(len(paths), per_class, replace=False))]


def _load_magnetic_tile(root: Path, size: int, per_class: int | None, seed: int) -> Dataset:
    folders = sorted(p.parent.name for p in root.glob("MT_*/Imgs"))
    defect_classes = tuple(name.removeprefix("MT_") for name in folders if name != "MT_Free")
    rng = np.random.default_rng(seed)
    images, masks, labels, names = [], [], [], []
    for folder in folders:
        class_name = folder.removeprefix("MT_")
        class_id = 0 if class_name == "Free" else 1 + defect_classes.index(class_name)
        for path in _take(sorted((root / folder / "Imgs").glob("*.jpg")), per_class, rng):
            image = _read_gray(path)
            binary = (_read_gray(path.with_suffix(".png")) > 127).astype(np.uint8)
            image, binary = _resize_pair(image, binary, size)
            images.append(image)
            masks.append(binary * np.uint8(class_id))
            labels.append(class_id)
            names.append(f"{folder}/{path.stem}")
    if not images:
        raise SystemExit(f"no images under {root}/MT_*/Imgs")
    return Dataset(np.stack(images), np.stack(masks), np.asarray(labels, np.int64), names, defect_classes, str(root))


def _load_generic(root: Path, size: int, per_class: int | None, seed: int) -> Dataset:
    mask_paths = {p.stem: p for p in (root / "masks").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    items = []
    for path in sorted((root / "images").iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.stem not in mask_paths:
            continue
        mask = cv2.imread(str(mask_paths[path.stem]), cv2.IMREAD_UNCHANGED)
        if mask is None or mask.ndim != 2:
            raise SystemExit(f"{mask_paths[path.stem]}: expected a single-channel class-index mask")
        values, counts = np.unique(mask[mask > 0], return_counts=True)
        label = int(values[np.argmax(counts)]) if len(values) else 0
        items.append((path, mask, label))
    if not items:
        raise SystemExit(f"no image/mask pairs with matching stems under {root}/images and {root}/masks")
    num_classes = max(int(m.max()) for _, m, _ in items)
    rng = np.random.default_rng(seed)
    images, masks, labels, names = [], [], [], []
    for label in sorted({label for _, _, label in items}):
        members = [item for item in items if item[2] == label]
        if per_class is not None and len(members) > per_class:
            members = [members[i] for i in sorted(rng.choice(len(members), per_class, replace=False))]
        for path, mask, _ in members:
            image, mask = _resize_pair(_read_gray(path), mask.astype(np.uint8), size)
            images.append(image)
            masks.append(mask)
            labels.append(label)
            names.append(path.stem)
    class_names = tuple(f"class_{k}" for k in range(1, num_classes + 1))
    return Dataset(np.stack(images), np.stack(masks), np.asarray(labels, np.int64), names, class_names, str(root))


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted (train, val) indices, ``val_fraction`` of every class held out (a new draw per seed).

    Every class with at least two images keeps at least one image on each side, so a tiny dataset
    still gets an honest validation part.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = min(max(round(len(members) * val_fraction), 1), len(members) - 1) if len(members) >= 2 else 0
        val += members[:n_val].tolist()
        train += members[n_val:].tolist()
    return np.asarray(sorted(train), np.int64), np.asarray(sorted(val), np.int64)


def default_root() -> Path | None:
    """``shared/data/magnetic_tile`` beside the checkout (or a parent of it), else None."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "shared" / "data" / "magnetic_tile"
        if (candidate / "MT_Free").is_dir():
            return candidate
    return None
