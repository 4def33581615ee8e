"""albu-defects: defect-aware augmentations for industrial visual inspection.

Albumentations-compatible transforms for ContextMix, Dynamic Label Injection, Guided-Crop,
CropLiq and CutPaste, on shared cores: a Poisson blender and a defect bank. Importing this package
registers its transforms with albumentations, so ``A.load`` can read pipelines that use them.
Torch is never imported here: the batch ops for tensors live in ``albu_defects.pytorch``.
"""

from __future__ import annotations

from .base import IS_ALBUMENTATIONS_X, DefectTransform
from .blending import local_contrast, paste, poisson_blend
from .samples import MAGNETIC_TILE_CLASSES, Sample, load_samples

__version__ = "0.1.0"

__all__ = [
    "IS_ALBUMENTATIONS_X",
    "MAGNETIC_TILE_CLASSES",
    "DefectTransform",
    "Sample",
    "__version__",
    "load_samples",
    "local_contrast",
    "paste",
    "poisson_blend",
]
