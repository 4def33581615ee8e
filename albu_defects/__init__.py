"""albu-defects: defect-aware augmentations for industrial visual inspection.

Albumentations-compatible transforms for ContextMix, Dynamic Label Injection, Guided-Crop,
CropLiq and CutPaste, on shared cores: a Poisson blender and a defect bank. Importing this package
registers its transforms with albumentations, so ``A.load`` can read pipelines that use them.
Torch is never imported here: the batch ops for tensors live in ``albu_defects.pytorch``.

Layers (imports flow downwards only): :mod:`.tools` -> :mod:`.pytorch` -> :mod:`.methods` ->
:mod:`.blending`, :mod:`.bank` -> :mod:`.core` (and :mod:`.data`, the bundled samples).
"""

from __future__ import annotations

from .bank import DefectBank, DefectBankWarning, DefectEntry, bank_reference, resolve_bank
from .blending import local_contrast, paste, poisson_blend
from .core.batch import BatchCompose
from .core.class_weights import ClassWeights, losses_to_probabilities
from .core.color import color_jitter, sample_color_jitter
from .core.seeds import seed_pipeline
from .core.transform import IS_ALBUMENTATIONS_X, DefectTransform
from .data import MAGNETIC_TILE_CLASSES, Sample, load_samples
from .methods.anomaly import ANOMALY_LABEL_KEY, ANOMALY_MASK_KEY, AnomalySynthesis
from .methods.contextmix import ContextMix
from .methods.cropliq import CropLiq
from .methods.cutpaste import CutPaste
from .methods.guided_crop import CLASS_VECTOR_KEY, GuidedCropPaste, synthesize, synthesize_to_folder
from .methods.injection import DynamicLabelInjection, InjectDefect

__version__ = "0.1.0"

__all__ = [
    "ANOMALY_LABEL_KEY",
    "ANOMALY_MASK_KEY",
    "CLASS_VECTOR_KEY",
    "IS_ALBUMENTATIONS_X",
    "MAGNETIC_TILE_CLASSES",
    "BatchCompose",
    "ContextMix",
    "__version__",
    "AnomalySynthesis",
    "bank_reference",
    "ClassWeights",
    "color_jitter",
    "CropLiq",
    "CutPaste",
    "DefectBank",
    "DefectBankWarning",
    "DefectEntry",
    "DefectTransform",
    "DynamicLabelInjection",
    "GuidedCropPaste",
    "InjectDefect",
    "load_samples",
    "local_contrast",
    "losses_to_probabilities",
    "paste",
    "poisson_blend",
    "resolve_bank",
    "Sample",
    "sample_color_jitter",
    "seed_pipeline",
    "synthesize",
    "synthesize_to_folder",
]
