"""albu-defects: defect-aware augmentations for industrial visual inspection.

Albumentations-compatible transforms for ContextMix, Dynamic Label Injection, Guided-Crop,
CropLiq, CutPaste and Poisson copy-paste, on shared cores: a Poisson blender and a defect bank.
Importing this package registers its transforms with albumentations, so ``A.load`` can read
pipelines that use them. Torch is never imported here: the batch ops for tensors live in
``albu_defects.pytorch``.

The public names are imported on first use (PEP 562), so ``import albu_defects.bank`` and the bank
commands of the ``albu-defects`` command line import neither albumentations nor torch. The
registration still happens in every import order: at once when albumentations is already imported,
else right after albumentations is (see :mod:`albu_defects._registration`).

Layers (imports flow downwards only): :mod:`.tools` -> :mod:`.pytorch` -> :mod:`.methods` ->
:mod:`.blending`, :mod:`.bank` -> :mod:`.core` (and :mod:`.data`, the bundled samples).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._registration import register_with_albumentations

__version__ = "0.1.0"

#: The module that defines each public name (imported on first use).
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        ["DefectBank", "DefectBankWarning", "DefectEntry", "bank_reference", "resolve_bank"], "albu_defects.bank"
    ),
    **dict.fromkeys(["local_contrast", "paste", "poisson_blend"], "albu_defects.blending"),
    "BatchCompose": "albu_defects.core.batch",
    **dict.fromkeys(["ClassWeights", "losses_to_probabilities"], "albu_defects.core.class_weights"),
    **dict.fromkeys(["color_jitter", "sample_color_jitter"], "albu_defects.core.color"),
    "seed_pipeline": "albu_defects.core.seeds",
    **dict.fromkeys(["IS_ALBUMENTATIONS_X", "DefectTransform"], "albu_defects.core.transform"),
    **dict.fromkeys(["MAGNETIC_TILE_CLASSES", "Sample", "load_samples"], "albu_defects.data"),
    **dict.fromkeys(["ANOMALY_LABEL_KEY", "ANOMALY_MASK_KEY", "CLASS_VECTOR_KEY"], "albu_defects.core.labels"),
    "SyncLabels": "albu_defects.core.sync_labels",
    "AnomalySynthesis": "albu_defects.methods.anomaly",
    "ContextMix": "albu_defects.methods.contextmix",
    "CropLiq": "albu_defects.methods.cropliq",
    "CutPaste": "albu_defects.methods.cutpaste",
    **dict.fromkeys(
        ["GuidedCropPaste", "synthesize", "synthesize_to_folder"],
        "albu_defects.methods.guided_crop",
    ),
    **dict.fromkeys(["DynamicLabelInjection", "InjectDefect"], "albu_defects.methods.injection"),
    "PoissonPaste": "albu_defects.methods.poisson_paste",
}
#: Subpackages reachable as attributes without importing them first (``albu_defects.bank``).
_SUBPACKAGES = frozenset({"bank", "blending", "core", "data", "methods", "pytorch", "tools"})

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
    "PoissonPaste",
    "resolve_bank",
    "Sample",
    "sample_color_jitter",
    "seed_pipeline",
    "synthesize",
    "synthesize_to_folder",
    "SyncLabels",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | _SUBPACKAGES)


# every module of a public name: the transforms register with albumentations when these run
register_with_albumentations(sorted(set(_EXPORTS.values())))

if TYPE_CHECKING:  # the names for type checkers and IDEs, which do not run __getattr__
    from .bank import DefectBank, DefectBankWarning, DefectEntry, bank_reference, resolve_bank
    from .blending import local_contrast, paste, poisson_blend
    from .core.batch import BatchCompose
    from .core.class_weights import ClassWeights, losses_to_probabilities
    from .core.color import color_jitter, sample_color_jitter
    from .core.labels import ANOMALY_LABEL_KEY, ANOMALY_MASK_KEY, CLASS_VECTOR_KEY
    from .core.seeds import seed_pipeline
    from .core.sync_labels import SyncLabels
    from .core.transform import IS_ALBUMENTATIONS_X, DefectTransform
    from .data import MAGNETIC_TILE_CLASSES, Sample, load_samples
    from .methods.anomaly import AnomalySynthesis
    from .methods.contextmix import ContextMix
    from .methods.cropliq import CropLiq
    from .methods.cutpaste import CutPaste
    from .methods.guided_crop import GuidedCropPaste, synthesize, synthesize_to_folder
    from .methods.injection import DynamicLabelInjection, InjectDefect
    from .methods.poisson_paste import PoissonPaste
