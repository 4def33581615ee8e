"""PyTorch batch ops: the only part of albu-defects that imports torch.

- :class:`ContextMix` (:func:`paste_resized_batch`): ContextMix on a batch of (N, C, H, W) tensors;
- worker and rank seeds (:func:`worker_init_fn`, :func:`reseed_pipeline`, :func:`worker_seed`,
  :func:`find_pipelines`, :func:`distributed_rank`);
- collate wrappers: :class:`ContextMixCollate`, :class:`DLICollate`.
"""

from .contextmix import *  # noqa: F403
from .contextmix import __all__  # noqa: F401
