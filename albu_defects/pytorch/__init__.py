"""PyTorch batch ops: the only part of albu-defects that imports torch.

- :mod:`.contextmix`: **ContextMix** on a batch of (N, C, H, W) tensors (:class:`TensorContextMix`;
  :func:`paste_resized_batch` in :mod:`.paste`), called like torchvision's ``CutMix`` or timm's ``Mixup``:
  ``images, targets = TensorContextMix(num_classes=K)(images, labels)``.
- :mod:`.workers`: **worker and rank seeds** (:func:`worker_init_fn`, :func:`reseed_pipeline`,
  :func:`worker_seed`, :func:`find_pipelines`, :func:`distributed_rank`): albumentations hands every
  DataLoader worker the same random state, so ``num_workers=4`` repeats one augmentation stream four
  times (and DDP ranks repeat each other). ``DataLoader(..., worker_init_fn=worker_init_fn)``
  re-seeds every pipeline on the worker's dataset from torch's per-worker seed and the rank.
- :mod:`.collate`: **collate wrappers**, DataLoader ``collate_fn`` objects. :class:`ContextMixCollate`
  collates a batch and mixes it; :class:`DLICollate` (:mod:`.dli_collate`) runs Dynamic Label
  Injection on the samples a worker gathers for one batch, then collates them; :mod:`.fields` holds
  what both read and write (sample fields, layouts, boxes).

``albu_defects.pytorch.ContextMix`` is the deprecated name of :class:`TensorContextMix` (it shared its
name with the numpy transform :class:`albu_defects.ContextMix`); it still works and warns.
"""

import warnings
from typing import Any

from .collate import ContextMixCollate, DLICollate
from .contextmix import ScratchBuffers, TensorContextMix, paste_resized_batch
from .workers import distributed_rank, find_pipelines, reseed_pipeline, worker_init_fn, worker_seed

__all__ = [
    "ContextMixCollate",
    "DLICollate",
    "ScratchBuffers",
    "TensorContextMix",
    "distributed_rank",
    "find_pipelines",
    "paste_resized_batch",
    "reseed_pipeline",
    "worker_init_fn",
    "worker_seed",
]

_RENAMED = {"ContextMix": "TensorContextMix"}


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        new = _RENAMED[name]
        warnings.warn(
            f"albu_defects.pytorch.{name} is now albu_defects.pytorch.{new} (the numpy transform keeps the name "
            f"albu_defects.{name}); the old name will be removed",
            DeprecationWarning,
            stacklevel=2,
        )
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
