"""PyTorch batch ops: the only module of albu-defects that imports torch.

Contents:

- **ContextMix** (:class:`ContextMix`, :func:`paste_resized_batch`): ContextMix on a batch of
  (N, C, H, W) tensors, called like torchvision's ``CutMix`` or timm's ``Mixup``:
  ``images, targets = ContextMix(num_classes=K)(images, labels)``. The box math is the numpy
  module's (:func:`albu_defects.methods.contextmix.functional.sample_boxes`, ``mix_weights``,
  ``nearest_source_index``); this module only moves pixels, with no device-specific code.
- **worker and rank seeds** (:func:`worker_init_fn`, :func:`reseed_pipeline`, :func:`worker_seed`,
  :func:`find_pipelines`, :func:`distributed_rank`): albumentations hands every DataLoader worker
  the same random state, so ``num_workers=4`` repeats one augmentation stream four times (and DDP
  ranks repeat each other). ``DataLoader(..., worker_init_fn=worker_init_fn)`` re-seeds every
  pipeline on the worker's dataset from torch's per-worker seed and the rank.
- **collate wrappers**: DataLoader ``collate_fn`` objects. :class:`ContextMixCollate` collates a
  batch and mixes it; :class:`DLICollate` runs Dynamic Label Injection on the samples a worker
  gathers for one batch, then collates them.

Where to run it: on a GPU the batch op belongs in the training loop, after ``.to(device)``
(``images, targets = cm(images.to(device), labels.to(device))``): it is a few gathers over the
batch, cheap on the device that holds it. ``ContextMixCollate`` runs in the DataLoader workers, on
CPU, which suits CPU training or keeps the GPU free of it. Under ``DistributedDataParallel``
nothing changes: each rank mixes its own batch (pairs never cross ranks), and the gradients are
averaged as usual.
"""

from __future__ import annotations

import math
import os
import random
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate, get_worker_info

from albu_defects.core.validation import check_choice, check_probability
from albu_defects.methods.contextmix.functional import (
    LABEL_MODES,
    BoxKind,
    LabelMode,
    check_box_options,
    mix_weights,
    nearest_source_index,
    sample_boxes,
)
from albu_defects.methods.injection.dli import DynamicLabelInjection

__all__ = [
    "ContextMix",
    "ContextMixCollate",
    "DLICollate",
    "ScratchBuffers",
    "distributed_rank",
    "find_pipelines",
    "paste_resized_batch",
    "reseed_pipeline",
    "worker_init_fn",
    "worker_seed",
]

Interpolation = Literal["nearest", "bilinear"]
INTERPOLATIONS: tuple[str, ...] = ("nearest", "bilinear")


# =============================================================================== ContextMix
def _check_images(images: Any) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor of shape (N, C, H, W), got {type(images).__name__}")
    if images.ndim != 4 or min(images.shape) < 1:
        raise ValueError(f"images must have shape (N, C, H, W) with no empty dimension, got {tuple(images.shape)}")
    if not (images.dtype == torch.uint8 or images.dtype.is_floating_point):
        raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
    return images


def _index(values: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64)).to(device)


def _resize_bilinear(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (half-pixel, no antialias) resize in float32, back to the input dtype."""
    resized = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False)
    if images.dtype == torch.uint8:
        return resized.round_().clamp_(0, 255).to(torch.uint8)
    return resized.to(images.dtype)


class ScratchBuffers:
    """Batch-sized scratch tensors kept between calls.

    A fresh CPU allocation of a batch-sized tensor page-faults on every call (often costing more
    than the copy itself); reusing one buffer per role avoids that. Holds at most a few tensors
    of the batch's size; :meth:`clear` frees them.
    """

    def __init__(self) -> None:
        self._store: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A contiguous tensor of ``shape`` (contents undefined), reusing the ``name`` buffer when it fits."""
        numel = math.prod(shape)
        key = f"{name}/{dtype}/{device}"
        buffer = self._store.get(key)
        if buffer is None or buffer.numel() < numel:
            buffer = torch.empty(numel, dtype=dtype, device=device)
            self._store[key] = buffer
        return buffer[:numel].view(*shape)

    def clear(self) -> None:
        self._store.clear()


def paste_resized_batch(
    images: torch.Tensor,
    partners: torch.Tensor | np.ndarray,
    boxes: np.ndarray,
    *,
    interpolation: Interpolation = "nearest",
    inplace: bool = False,
    buffers: ScratchBuffers | None = None,
) -> torch.Tensor:
    """Paste the whole image ``partners[i]`` of the batch, resized into ``boxes[i]``, over image ``i``.

    ``images`` (N, C, H, W); ``partners`` (N,) indices into the batch (a permutation, say);
    ``boxes`` (N, 4) int ``(y0, x0, y1, x1)`` (empty = untouched) or (4,) for one box shared by
    the batch. Pixels are read before any is written, so partners may overlap the output.

    Nearest (any dtype) is an index gather: source pixel ``floor((i + 0.5) * H / h)`` as in the
    numpy transform. With one box it reads only the box's source rows of the partners and gathers
    their columns straight into the box; with a box per sample it works on box rows only (see
    :func:`_paste_per_sample_nearest`). ``"bilinear"`` resamples in float32 (``F.interpolate`` /
    ``grid_sample``, half-pixel centres). ``inplace=True`` writes into ``images`` and returns it;
    ``buffers`` (a :class:`ScratchBuffers`) reuses scratch memory across calls.
    """
    images = _check_images(images)
    check_choice(interpolation, INTERPOLATIONS, "interpolation")
    return _paste(images, partners, boxes, interpolation, inplace, buffers or ScratchBuffers())


def _flat_rows(images: torch.Tensor) -> torch.Tensor:
    """``images`` (N, C, H, W) as (N*C*H, W) rows (a view when contiguous)."""
    return images.reshape(-1, images.shape[-1])


_WORDS = ((torch.int64, 8), (torch.int32, 4), (torch.int16, 2))


def _wide_rows(rows: torch.Tensor) -> torch.Tensor:
    """(R, W) rows reinterpreted as the widest integer words that tile them (a view, same bytes).

    Row copies (``index_select``, ``index_copy_``) cost per *element*; copying a uint8 row as int64
    words moves the same bytes with 8x fewer elements. Falls back to ``rows`` when no word fits.
    """
    element = rows.element_size()
    row_bytes, offset_bytes = rows.shape[1] * element, rows.storage_offset() * element
    for word, size in _WORDS:
        if size > element and row_bytes % size == 0 and offset_bytes % size == 0 and rows.is_contiguous():
            return rows.view(word)
    return rows


def _row_index(samples: np.ndarray, channels: int, height: int, rows: np.ndarray) -> np.ndarray:
    """Flat (N*C*H) row numbers of rows ``rows[i]`` (per sample, or shared) of every channel of ``samples[i]``."""
    base = (samples[:, None, None] * channels + np.arange(channels)[None, :, None]) * height
    return (base + (rows[:, None, :] if rows.ndim == 2 else rows[None, None, :])).ravel()


def _paste(
    images: torch.Tensor,
    partners: torch.Tensor | np.ndarray,
    boxes: np.ndarray,
    interpolation: str,
    inplace: bool,
    buffers: ScratchBuffers,
) -> torch.Tensor:
    """:func:`paste_resized_batch` without the dtype check (masks of any dtype use it with nearest)."""
    n, _, height, width = images.shape
    device = images.device
    partner_index = np.asarray(partners.cpu() if isinstance(partners, torch.Tensor) else partners, dtype=np.int64)
    if partner_index.shape != (n,) or (partner_index < 0).any() or (partner_index >= n).any():
        raise ValueError(f"partners must hold {n} indices in [0, {n}), got shape {partner_index.shape}")
    boxes = np.asarray(boxes, dtype=np.int64)
    if boxes.shape == (4,):
        return _paste_one_box(images, partner_index, boxes, interpolation, inplace, buffers)
    if boxes.shape != (n, 4):
        raise ValueError(f"boxes must have shape (4,) or ({n}, 4), got {boxes.shape}")
    y0, x0, y1, x1 = boxes.T
    if not ((y0 >= 0) & (y0 <= y1) & (y1 <= height) & (x0 >= 0) & (x0 <= x1) & (x1 <= width)).all():
        raise ValueError(f"every box must lie inside the {height}x{width} image with y0 <= y1 and x0 <= x1")
    active = (y1 > y0) & (x1 > x0)
    if not active.any():
        return images if inplace else images.clone()
    if interpolation == "nearest":
        return _paste_per_sample_nearest(images, partner_index, boxes, active, inplace, buffers)
    # Bilinear: resample every partner over the full frame, keep it inside each box.
    heights, widths = np.maximum(y1 - y0, 1), np.maximum(x1 - x0, 1)
    rows, cols = np.arange(height)[None, :], np.arange(width)[None, :]
    inside = (
        torch.from_numpy((rows >= y0[:, None]) & (rows < y1[:, None]))[:, None, :, None]
        & torch.from_numpy((cols >= x0[:, None]) & (cols < x1[:, None]))[:, None, None, :]
    )
    # Normalised partner coordinates of each output pixel centre (align_corners=False).
    grid_x = torch.from_numpy(2.0 * (cols - x0[:, None] + 0.5) / widths[:, None] - 1.0)
    grid_y = torch.from_numpy(2.0 * (rows - y0[:, None] + 0.5) / heights[:, None] - 1.0)
    grid = torch.stack(torch.broadcast_tensors(grid_x[:, None, :], grid_y[:, :, None]), dim=-1)
    partner_batch = images.index_select(0, _index(partner_index, device)).float()
    pasted = F.grid_sample(
        partner_batch, grid.to(device=device, dtype=torch.float32), mode="bilinear", align_corners=False
    )
    if images.dtype == torch.uint8:
        pasted = pasted.round_().clamp_(0, 255)
    pasted = pasted.to(images.dtype)
    return torch.where(inside.to(device), pasted, images, out=images if inplace else pasted)


#: Per-sample boxes are processed in this many height classes (padding each to its tallest box).
HEIGHT_GROUPS = 4


def _paste_per_sample_nearest(
    images: torch.Tensor,
    partner_index: np.ndarray,
    boxes: np.ndarray,
    active: np.ndarray,
    inplace: bool,
    buffers: ScratchBuffers,
) -> torch.Tensor:
    """Nearest paste with a box per sample, as row operations with no mask and no loop over samples.

    For every active sample and box row ``a`` (padded to the tallest box of its height class; the
    padding repeats the box's last row, so duplicate writes carry identical values), one
    ``index_select`` fetches the host row and the partner's source row side by side,
    ``[host | partner]``; one ``gather`` with a per-sample column map (host column outside the box,
    ``W + source column`` inside) resizes and composites the row at once; after every row is read,
    one ``index_copy_`` writes them back. Samples are sorted by box height and split into
    :data:`HEIGHT_GROUPS` classes (a loop over classes, not samples), which cuts the padding from
    ~1.7x to ~1.2x the box rows for a batch of 64 with ``alpha=1``.
    """
    _, channels, height, width = images.shape
    device = images.device
    samples = np.flatnonzero(active)
    by_height = samples[np.argsort(-(boxes[samples, 2] - boxes[samples, 0]), kind="stable")]
    groups = [g for g in np.array_split(by_height, min(HEIGHT_GROUPS, len(by_height))) if len(g)]
    group_rows = [len(g) * channels * int((boxes[g, 2] - boxes[g, 0]).max()) for g in groups]
    mixed = buffers.get("pasted", (sum(group_rows), width), images.dtype, device)
    source = _wide_rows(_flat_rows(images))
    destinations, offset = [], 0
    cols = np.arange(width)[None, :]
    for group, rows_in_group in zip(groups, group_rows, strict=True):
        y0, x0, y1, x1 = boxes[group].T
        heights, widths = y1 - y0, x1 - x0
        box_rows = np.minimum(np.arange(int(heights.max()))[None, :], heights[:, None] - 1)  # (g, hmax)
        host_rows = _row_index(group, channels, height, y0[:, None] + box_rows)
        partner_rows = _row_index(
            partner_index[group], channels, height, nearest_source_index(box_rows, height, heights[:, None])
        )
        inside = (cols >= x0[:, None]) & (cols < x1[:, None])
        partner_cols = nearest_source_index(np.clip(cols - x0[:, None], 0, widths[:, None] - 1), width, widths[:, None])
        column_map = np.where(inside, width + partner_cols, cols)  # (g, W) into [host | partner]

        count, hmax = len(group), box_rows.shape[1]
        pairs = buffers.get("rows", (rows_in_group * 2, width), images.dtype, device)
        pair_rows = _index(np.stack([host_rows, partner_rows], axis=-1).ravel(), device)
        torch.index_select(source, 0, pair_rows, out=_wide_rows(pairs))
        torch.gather(
            pairs.view(count, channels, hmax, 2 * width),
            3,
            _index(column_map, device).view(count, 1, 1, width).expand(count, channels, hmax, width),
            out=mixed[offset : offset + rows_in_group].view(count, channels, hmax, width),
        )
        destinations.append(host_rows)
        offset += rows_in_group
    out = images if inplace else images.clone(memory_format=torch.contiguous_format)
    target = out if out.is_contiguous() else out.contiguous()
    _wide_rows(_flat_rows(target)).index_copy_(0, _index(np.concatenate(destinations), device), _wide_rows(mixed))
    if target is not out:
        out.copy_(target)
    return out


def _paste_one_box(
    images: torch.Tensor,
    partner_index: np.ndarray,
    box: np.ndarray,
    interpolation: str,
    inplace: bool,
    buffers: ScratchBuffers,
) -> torch.Tensor:
    n, channels, height, width = images.shape
    y0, x0, y1, x1 = (int(v) for v in box)
    if not (0 <= y0 <= y1 <= height and 0 <= x0 <= x1 <= width):
        raise ValueError(f"box {(y0, x0, y1, x1)} must lie inside the {height}x{width} image")
    h, w = y1 - y0, x1 - x0
    if h == 0 or w == 0:
        return images if inplace else images.clone()
    device = images.device
    if interpolation == "nearest":
        # Only the h source rows of each partner are read, then their w source columns are
        # gathered straight into the box (read fully before the first write).
        rows = buffers.get("rows", (n * channels * h, width), images.dtype, device)
        source_rows = _row_index(partner_index, channels, height, nearest_source_index(np.arange(h), height, h))
        torch.index_select(_wide_rows(_flat_rows(images)), 0, _index(source_rows, device), out=_wide_rows(rows))
        out = images if inplace else images.clone()
        source_cols = _index(nearest_source_index(np.arange(w), width, w), device)
        torch.gather(
            rows.view(n, channels, h, width),
            3,
            source_cols.view(1, 1, 1, w).expand(n, channels, h, w),
            out=out[:, :, y0:y1, x0:x1],
        )
        return out
    resized = _resize_bilinear(images, (h, w)).index_select(0, _index(partner_index, device))
    out = images if inplace else images.clone()
    out[:, :, y0:y1, x0:x1] = resized
    return out


def _soft_targets(
    labels: torch.Tensor, partner: torch.Tensor, weights: torch.Tensor, num_classes: int, smoothing: float
) -> torch.Tensor:
    off = smoothing / num_classes
    one_hot = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    one_hot.scatter_(1, labels.long()[:, None], 1.0 - smoothing + off)
    return weights[:, :1] * one_hot + weights[:, 1:] * one_hot.index_select(0, partner)


class ContextMix:
    """ContextMix on a batch of (N, C, H, W) tensors: ``images, targets = cm(images, labels)``.

    Each image ``i`` gets the whole image ``perm[i]`` (a random permutation, as the paper's
    ``shuffle_index``: any batch size, a sample may draw itself) resized into a box, with the box
    math of :func:`albu_defects.methods.contextmix.functional.sample_boxes`. ``labels``:

    - int class ids (N,) -> soft targets (N, num_classes) float32:
      ``lambda_A * onehot(y) + lambda_B * onehot(y[perm])`` with optional label smoothing;
    - segmentation masks (N, H, W) (any dtype) -> masks mixed with the same boxes, nearest;
    - ``None`` -> the weights (N, 2) = ``[lambda_A, lambda_B]`` float32.

    Modes: ``"batch"`` draws one box for the whole batch (the paper's code) and mixes it with
    probability ``p``; ``"sample"`` draws a box per image and mixes each with probability ``p``.
    Works on any device and on uint8 or float images (dtype and shape kept); random numbers come
    from ``generator`` (a CPU ``torch.Generator``), or one seeded with ``seed``, or torch's global
    generator. After a call, ``last_perm``, ``last_boxes`` (N, 4) and ``last_weights`` (N, 2)
    hold what was drawn. On GPU call it in the training loop after ``.to(device)``.

    Args:
        alpha, box, box_size, label_mode, min_box_side, label_smoothing: as the numpy
            :class:`albu_defects.ContextMix`.
        num_classes: number of classes of integer labels (needed for soft targets).
        p: probability of mixing (the batch in ``"batch"`` mode, each image in ``"sample"`` mode).
        mode: ``"batch"`` or ``"sample"``.
        interpolation: ``"nearest"`` (paper; an index gather) or ``"bilinear"`` (images only;
            masks always use nearest).
        inplace: write into the input tensors instead of returning new ones (saves a copy of the
            batch; the inputs are then modified).
        seed: seed of a private generator (ignored when ``generator`` is given).
        generator: a CPU ``torch.Generator`` to draw from.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        num_classes: int | None = None,
        *,
        p: float = 1.0,
        mode: Literal["batch", "sample"] = "batch",
        box: BoxKind = "beta",
        box_size: float = 0.75,
        label_mode: LabelMode = "area",
        min_box_side: int = 3,
        label_smoothing: float = 0.0,
        interpolation: Interpolation = "nearest",
        inplace: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ):
        check_box_options(alpha, box, box_size, min_box_side)
        if num_classes is not None and (
            isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1
        ):
            raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}")
        check_probability(p, "p")
        if mode not in ("batch", "sample"):
            raise ValueError(f"mode must be 'batch' (one box per batch) or 'sample' (one per image), got {mode!r}")
        check_choice(label_mode, LABEL_MODES, "label_mode")
        check_probability(label_smoothing, "label_smoothing")
        check_choice(interpolation, INTERPOLATIONS, "interpolation")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.alpha = float(alpha)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.p = float(p)
        self.mode = mode
        self.box = box
        self.box_size = float(box_size)
        self.label_mode = label_mode
        self.min_box_side = int(min_box_side)
        self.label_smoothing = float(label_smoothing)
        self.interpolation = interpolation
        self.inplace = bool(inplace)
        self.seed = seed
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        self.generator = generator
        self._buffers = ScratchBuffers()
        self.last_perm: torch.Tensor | None = None
        self.last_boxes: np.ndarray | None = None
        self.last_weights: np.ndarray | None = None

    def __repr__(self) -> str:
        return (
            f"ContextMix(alpha={self.alpha}, num_classes={self.num_classes}, p={self.p}, mode={self.mode!r}, "
            f"box={self.box!r}, label_mode={self.label_mode!r}, interpolation={self.interpolation!r})"
        )

    def draw(self, size: int, height: int, width: int) -> tuple[torch.Tensor, np.ndarray]:
        """Draw the pairing (CPU permutation) and the boxes (N, 4) for a batch of ``size`` images."""
        perm = torch.randperm(size, generator=self.generator)
        count = 1 if self.mode == "batch" else size
        apply = torch.rand(count, generator=self.generator, dtype=torch.float64).numpy() < self.p
        draws = torch.rand(count, 3, generator=self.generator, dtype=torch.float64).numpy()
        boxes = sample_boxes(
            height,
            width,
            draws,
            alpha=self.alpha,
            box=self.box,
            box_size=self.box_size,
            min_box_side=self.min_box_side,
        )
        boxes[~apply, 2] = boxes[~apply, 0]  # not applied: empty box
        boxes[~apply, 3] = boxes[~apply, 1]
        return perm, np.broadcast_to(boxes, (size, 4)).copy() if self.mode == "batch" else boxes

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        images = _check_images(images)
        n, _, height, width = images.shape
        self._label_kind(labels, n, height, width)  # reject bad labels before drawing anything
        perm, boxes = self.draw(n, height, width)
        return self.apply(images, labels, perm, boxes)

    def apply(
        self, images: torch.Tensor, labels: torch.Tensor | None, perm: torch.Tensor | np.ndarray, boxes: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix with a given pairing ``perm`` (N,) and ``boxes`` (N, 4) (e.g. from :meth:`draw`).

        Reuses this op's scratch buffers between calls (see :class:`ScratchBuffers`).
        """
        images = _check_images(images)
        n, _, height, width = images.shape
        kind = self._label_kind(labels, n, height, width)
        perm = torch.as_tensor(np.asarray(perm, dtype=np.int64) if not isinstance(perm, torch.Tensor) else perm.cpu())
        boxes = np.broadcast_to(np.asarray(boxes, dtype=np.int64).reshape(-1, 4), (n, 4))
        weights = mix_weights(boxes, height, width, self.label_mode)
        self.last_perm, self.last_boxes, self.last_weights = perm, boxes, weights.astype(np.float32)
        # One shared box takes the fast path that reads only the box's source rows.
        paste_boxes = boxes[0] if (boxes == boxes[0]).all() else boxes
        mixed = _paste(images, perm.numpy(), paste_boxes, self.interpolation, self.inplace, self._buffers)
        if kind == "none":
            return mixed, torch.from_numpy(self.last_weights).to(images.device)
        if kind == "mask":
            masks = _paste(labels[:, None], perm.numpy(), paste_boxes, "nearest", self.inplace, self._buffers)
            return mixed, masks[:, 0]
        weights_t = torch.from_numpy(self.last_weights).to(labels.device)
        return mixed, _soft_targets(labels, perm.to(labels.device), weights_t, self.num_classes, self.label_smoothing)

    def _label_kind(self, labels: Any, n: int, height: int, width: int) -> str:
        if labels is None:
            return "none"
        if not isinstance(labels, torch.Tensor):
            raise ValueError(f"labels must be a torch.Tensor (N,) or (N, H, W), got {type(labels).__name__}")
        if labels.shape == (n, height, width):
            if labels.is_complex():
                raise ValueError(f"masks must be real-valued, got dtype {labels.dtype}")
            return "mask"
        if labels.shape != (n,):
            raise ValueError(
                f"labels must be class ids of shape ({n},) or masks of shape ({n}, {height}, {width}), "
                f"got {tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
            raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
        if self.num_classes is None:
            raise ValueError("num_classes must be set to turn integer labels into soft targets")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, num_classes) = [0, {self.num_classes})")
        return "class"


# ======================================================================= worker and rank seeds
#: Environment variable read for the process's rank when ``torch.distributed`` is not initialized
#: (``torchrun`` sets it).
RANK_ENV = "RANK"

#: Pipelines are searched at most this deep in a dataset's attributes, and only in containers
#: (lists, tuples, sets, dict values) of at most ``SEARCH_MAX_ITEMS`` items.
SEARCH_MAX_DEPTH = 6
SEARCH_MAX_ITEMS = 256

_UINT64 = (1 << 64) - 1


_rank_before_fork: int | None = None
#: In a forked child (a DataLoader worker with the default ``fork`` start), the parent's process
#: group rank: torch clears the process group in forked children, so it is recorded at fork time.
_parent_rank: int | None = None


def _process_group_rank() -> int | None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return None


def _record_rank_before_fork() -> None:
    global _rank_before_fork
    try:
        _rank_before_fork = _process_group_rank()
    except (RuntimeError, ValueError):  # a group being torn down: nothing to hand on
        _rank_before_fork = None


def _inherit_rank_after_fork() -> None:
    global _parent_rank
    if _rank_before_fork is not None:
        _parent_rank = _rank_before_fork


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(before=_record_rank_before_fork, after_in_child=_inherit_rank_after_fork)


def distributed_rank() -> int:
    """This process's rank, for separating augmentation streams between DDP processes.

    In order: ``torch.distributed.get_rank()`` when a process group is initialized here; in a
    forked DataLoader worker, the rank of the parent's process group (recorded at fork, since
    torch clears the group in forked children); the ``RANK`` environment variable (``torchrun``
    sets it); else 0.
    """
    rank = _process_group_rank()
    if rank is not None:
        return rank
    if _parent_rank is not None:
        return _parent_rank
    value = os.environ.get(RANK_ENV, "0").strip() or "0"
    try:
        rank = int(value)
    except ValueError:
        raise ValueError(f"the {RANK_ENV} environment variable must be an integer rank, got {value!r}") from None
    if rank < 0:
        raise ValueError(f"the {RANK_ENV} environment variable must be a rank >= 0, got {rank}")
    return rank


def worker_seed(base_seed: int | None = None, rank: int | None = None) -> int:
    """A seed for this process's augmentation stream, distinct per DataLoader worker and per rank.

    Mixes (with ``numpy.random.SeedSequence``) ``base_seed`` (a pipeline's own seed, when set), the
    DataLoader worker's seed (``get_worker_info().seed``, which torch draws per worker and per
    epoch from the DataLoader's ``generator``, so a seeded generator reproduces it) and ``rank``
    (default :func:`distributed_rank`). In the main process (no worker) with ``base_seed=None``
    it mixes fresh OS entropy instead of a worker seed: an unseeded pipeline stays unseeded.
    Returns a non-negative 63-bit int (valid for numpy, ``random`` and ``torch.manual_seed``).
    """
    info = get_worker_info()
    rank = distributed_rank() if rank is None else int(rank)
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    if info is not None:
        stream = [1, int(info.seed) & _UINT64]
    elif base_seed is None:
        stream = [2, int(np.random.SeedSequence().entropy) & _UINT64]
    else:
        stream = [0, 0]
    base = [0, 0] if base_seed is None else [1, int(base_seed) & _UINT64]
    entropy = [*base, *stream, rank]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


def _reseed_in_worker(pipeline: Any, last_worker_seed: int | None) -> int | None:
    """Re-seed ``pipeline`` (:func:`reseed_pipeline`) once per worker; returns the worker seed to remember.

    Used by the collate wrappers: the DataLoader draws a new worker seed per epoch (unless the
    workers persist), so workers, epochs and ranks get different streams and a seeded DataLoader
    reproduces them. In the main process nothing changes.
    """
    info = get_worker_info()
    if info is None or last_worker_seed == info.seed:
        return last_worker_seed
    reseed_pipeline(pipeline)
    return int(info.seed)


def _is_pipeline(value: Any) -> bool:
    return isinstance(value, (A.BaseCompose, A.BasicTransform, ContextMix))


def reseed_pipeline(pipeline: Any, rank: int | None = None) -> int:
    """Re-seed one augmentation pipeline for this DataLoader worker and rank; returns the seed used.

    ``pipeline``: an albumentations ``Compose`` (or any ``BaseCompose``: :class:`~albu_defects.BatchCompose`,
    :class:`~albu_defects.DynamicLabelInjection`, ...), a single transform, or a torch
    :class:`ContextMix`. Its new seed is :func:`worker_seed` of its own ``seed`` (kept as the base:
    ``pipeline.seed`` is restored afterwards, so calling it twice in one worker gives the same
    stream), the worker's seed and ``rank``. A ``Compose`` passes the seed to every child, as
    ``Compose(seed=...)`` does. Outside a worker it still separates ranks (call it once per rank
    after ``init_process_group`` when ``num_workers=0``).
    """
    if isinstance(pipeline, ContextMix):
        seed = worker_seed(pipeline.seed, rank)
        pipeline.generator = torch.Generator().manual_seed(seed)
        return seed
    if not isinstance(pipeline, (A.BaseCompose, A.BasicTransform)):
        raise ValueError(
            f"pipeline must be an albumentations Compose/transform or albu_defects.pytorch.ContextMix, "
            f"got {type(pipeline).__name__}"
        )
    base = getattr(pipeline, "seed", None)
    base = base if isinstance(base, (int, np.integer)) and not isinstance(base, bool) else None
    seed = worker_seed(base, rank)
    pipeline.set_random_seed(seed)
    pipeline.seed = base  # the user's seed stays the base of later re-seeds (and of YAML in AlbumentationsX)
    return seed


def find_pipelines(root: Any) -> list[Any]:
    """The augmentation pipelines reachable from ``root`` (e.g. a Dataset), outermost only.

    A pipeline is an albumentations ``BaseCompose`` (``A.Compose``, ``A.OneOf``, our batch
    composes), a single albumentations transform, or a torch :class:`ContextMix`; once found, its
    children are not searched (re-seeding a compose re-seeds them). The search walks instance
    attributes (``vars(obj)``: ``dataset.transform``, ``Subset.dataset``, ``ConcatDataset.datasets``,
    ...) and the items of lists, tuples, sets and dict values, at most :data:`SEARCH_MAX_DEPTH`
    levels deep and only through containers of at most :data:`SEARCH_MAX_ITEMS` items (so a list of
    10,000 file names is skipped). It does not look inside closures, lambdas, ``functools.partial``
    or objects without ``__dict__``: re-seed those pipelines yourself with :func:`reseed_pipeline`.
    """
    found: list[Any] = []
    seen: set[int] = set()

    def visit(value: Any, depth: int) -> None:
        if id(value) in seen or depth > SEARCH_MAX_DEPTH:
            return
        seen.add(id(value))
        if _is_pipeline(value):
            found.append(value)
            return
        if isinstance(value, (str, bytes, int, float, complex, bool, type(None), np.ndarray, torch.Tensor)):
            return
        if isinstance(value, (type, types.ModuleType, types.FunctionType, types.MethodType)):
            return
        if isinstance(value, Mapping):
            items: Any = list(value.values()) if len(value) <= SEARCH_MAX_ITEMS else ()
        elif isinstance(value, (list, tuple, set, frozenset)):
            items = list(value) if len(value) <= SEARCH_MAX_ITEMS else ()
        else:
            attributes = getattr(value, "__dict__", None)
            items = list(attributes.values()) if isinstance(attributes, dict) else ()
        for item in items:
            visit(item, depth + 1)

    visit(root, 0)
    return found


def worker_init_fn(worker_id: int, rank: int | None = None) -> None:
    """DataLoader ``worker_init_fn``: give every worker, on every rank, its own augmentation stream.

    ``DataLoader(dataset, num_workers=4, worker_init_fn=worker_init_fn, generator=torch.Generator().manual_seed(0))``

    albumentations copies a pipeline's random state into every worker unchanged (``Compose(seed=s)``
    and an unseeded ``Compose`` alike), so without this all workers repeat one stream, and DDP
    ranks that seed alike repeat each other too. In the worker it:

    - re-seeds every pipeline :func:`find_pipelines` finds on the worker's dataset copy
      (``get_worker_info().dataset``) with :func:`reseed_pipeline`;
    - re-seeds Python's ``random``, numpy's global generator and torch's global generator with
      the same mix (torch already gives each worker its own seed, but not each rank its own).

    The seeds derive from torch's per-worker seed, so a DataLoader with a seeded ``generator``
    reproduces the whole epoch, and from the rank (:func:`distributed_rank`: with the default
    ``fork`` start, the parent's process group rank; else the ``RANK`` variable). With a
    ``spawn``/``forkserver`` start (macOS, Windows, Python >= 3.14 on Linux) and no ``RANK``
    variable (e.g. ``torch.multiprocessing.spawn`` instead of ``torchrun``), pass the rank:
    ``worker_init_fn=functools.partial(worker_init_fn, rank=rank)``. Returns ``None``; raises
    ``ValueError`` when called outside a worker.
    """
    info = get_worker_info()
    if info is None:
        raise ValueError("worker_init_fn must run inside a DataLoader worker (pass it as worker_init_fn=...)")
    seed = worker_seed(None, rank)
    random.seed(seed)
    np.random.seed(seed % (1 << 32))  # noqa: NPY002 - the legacy global generator user code may draw from
    torch.manual_seed(seed)
    for pipeline in find_pipelines(info.dataset):
        reseed_pipeline(pipeline, rank)


# ========================================================================== collate wrappers
class ContextMixCollate:
    """DataLoader ``collate_fn``: collate with ``collate_fn`` (default ``default_collate``), then mix.

    The collated batch must be a sequence ``(images, labels, *rest)`` (returned as
    ``(mixed, targets, *rest)``) or a mapping with ``image_key`` and ``label_key`` (``label_key``
    may be absent: ``targets`` then holds the weights), returned with those keys replaced and
    ``mix_weights`` (N, 2) added. Images must be (N, C, H, W) tensors (e.g. from ``ToTensorV2``).
    Other arguments go to :class:`ContextMix`.

    In worker processes every worker gets its own stream: the op gets a generator seeded by
    :func:`reseed_pipeline` (the worker's seed, ``seed`` when set, and the rank), so workers, epochs
    and ranks do not repeat each other's boxes, and a seeded DataLoader reproduces them.
    """

    def __init__(
        self,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        *,
        image_key: str = "image",
        label_key: str = "label",
        **contextmix_kwargs: Any,
    ):
        if collate_fn is not None and not callable(collate_fn):
            raise ValueError(f"collate_fn must be callable or None, got {type(collate_fn).__name__}")
        self.collate_fn = collate_fn or default_collate
        self.image_key = image_key
        self.label_key = label_key
        self.contextmix = ContextMix(**contextmix_kwargs)
        self._worker_seed: int | None = None

    def __call__(self, samples: list[Any]) -> Any:
        self._worker_seed = _reseed_in_worker(self.contextmix, self._worker_seed)
        batch = self.collate_fn(samples)
        if isinstance(batch, Mapping):
            if self.image_key not in batch:
                raise ValueError(f"the collated batch has no {self.image_key!r} key (set image_key)")
            out = dict(batch)
            mixed, targets = self.contextmix(batch[self.image_key], batch.get(self.label_key))
            out[self.image_key] = mixed
            out[self.label_key] = targets
            out["mix_weights"] = torch.from_numpy(self.contextmix.last_weights).to(mixed.device)
            return out
        if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)) and len(batch) >= 1:
            images = batch[0]
            labels = batch[1] if len(batch) > 1 else None
            mixed, targets = self.contextmix(images, labels)
            return (mixed, targets, *batch[2:])
        raise ValueError(f"the collated batch must be (images, labels, ...) or a dict, got {type(batch).__name__}")


def _to_numpy_image(image: Any) -> tuple[np.ndarray, bool]:
    """A sample's image as a numpy (H, W[, C]) array; ``True`` when it was a (C, H, W) / (H, W) tensor."""
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().numpy()
        if array.ndim == 3:
            array = np.ascontiguousarray(array.transpose(1, 2, 0))
        return array, True
    return image, False


def _to_numpy(value: Any) -> tuple[Any, bool]:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy(), True
    return value, False


def _label_value(value: Any) -> Any:
    """An int for scalar labels (Python, numpy or 0-d tensor), else a 1-D numpy multi-hot vector."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return int(value)
    return value


class DLICollate:
    """DataLoader ``collate_fn``: Dynamic Label Injection on one batch's samples, then ``collate_fn``.

    Samples are dicts with ``image_key``, ``mask_key`` and optionally ``label_key``, or sequences
    ``(image, mask[, label, ...])``. Images are numpy (H, W[, C]) arrays or torch (C, H, W) / (H, W)
    tensors (e.g. after ``ToTensorV2``); masks numpy or torch class-index (H, W) or one-hot (K, H, W)
    masks; labels ints (0 = defect-free) or multi-hot vectors. Every value comes back in its own
    type and layout, then ``collate_fn`` (default ``torch.utils.data.default_collate``) collates.
    Dict samples also get ``log_key`` (set ``None`` to skip): ``{"class_id": int (0 = not
    injected), "entry_id": int (-1), "method": str (""), "bbox": int64 (4,) (y0, x0, y1, x1; -1)}``,
    which collates into tensors and lists.

    ``dli`` holds its bank as a path (or a saved bank, which pickles as its path), so each worker
    receives a few bytes and loads the bank once (:func:`albu_defects.resolve_bank` caches it per
    process). In a worker, the DLI is re-seeded by :func:`reseed_pipeline` (the worker's seed,
    ``dli.seed`` when set, and the rank), so workers, epochs and ranks draw different injections and
    a seeded DataLoader reproduces them.
    """

    def __init__(
        self,
        dli: DynamicLabelInjection,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        *,
        image_key: str = "image",
        mask_key: str = "mask",
        label_key: str = "label",
        log_key: str | None = "dli",
    ) -> None:
        if not isinstance(dli, DynamicLabelInjection):
            raise ValueError(f"dli must be a DynamicLabelInjection, got {type(dli).__name__}")
        if collate_fn is not None and not callable(collate_fn):
            raise ValueError(f"collate_fn must be callable or None, got {type(collate_fn).__name__}")
        self.dli = dli
        self.collate_fn = collate_fn or default_collate
        self.image_key = image_key
        self.mask_key = mask_key
        self.label_key = label_key
        self.log_key = log_key
        self._worker_seed: int | None = None

    def _fields(self, sample: Any, index: int) -> tuple[Any, Any, Any]:
        if isinstance(sample, Mapping):
            if self.image_key not in sample or self.mask_key not in sample:
                raise ValueError(
                    f"sample {index} lacks {self.image_key!r} or {self.mask_key!r}; set image_key/mask_key"
                )
            return sample[self.image_key], sample[self.mask_key], sample.get(self.label_key)
        if isinstance(sample, (list, tuple)) and len(sample) >= 2:
            return sample[0], sample[1], sample[2] if len(sample) > 2 else None
        raise ValueError(f"sample {index} must be a dict or an (image, mask[, label, ...]) tuple, got {type(sample)}")

    def __call__(self, samples: list[Any]) -> Any:
        self._worker_seed = _reseed_in_worker(self.dli, self._worker_seed)
        images, masks, labels, image_tensor, mask_tensor = [], [], [], [], []
        for i, sample in enumerate(samples):
            image, mask, label = self._fields(sample, i)
            image, was_tensor = _to_numpy_image(image)
            images.append(image)
            image_tensor.append(was_tensor)
            mask, was_tensor = _to_numpy(mask)
            masks.append(mask)
            mask_tensor.append(was_tensor)
            labels.append(label)
        have_labels = all(label is not None for label in labels)
        out = self.dli(images=images, masks=masks, labels=[_label_value(v) for v in labels] if have_labels else None)
        rebuilt = []
        for i, sample in enumerate(samples):
            image, mask = out["images"][i], out["masks"][i]
            if image is not images[i] and image_tensor[i]:
                image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1) if image.ndim == 3 else image))
            elif image is images[i]:
                image = self._fields(sample, i)[0]
            if mask is not masks[i] and mask_tensor[i]:
                mask = torch.from_numpy(np.ascontiguousarray(mask))
            elif mask is masks[i]:
                mask = self._fields(sample, i)[1]
            label = labels[i]
            if have_labels and out["injections"][i] is not None:
                label = _relabel(labels[i], out["labels"][i])
            rebuilt.append(self._rebuild(sample, image, mask, label, out["injections"][i]))
        return self.collate_fn(rebuilt)

    def _rebuild(self, sample: Any, image: Any, mask: Any, label: Any, injection: dict[str, Any] | None) -> Any:
        if isinstance(sample, Mapping):
            new = dict(sample)
            new[self.image_key] = image
            new[self.mask_key] = mask
            if label is not None:
                new[self.label_key] = label
            if self.log_key is not None:
                new[self.log_key] = _log_record(injection)
            return new
        rest = list(sample[2:])
        if rest and label is not None:
            rest[0] = label
        return type(sample)([image, mask, *rest]) if isinstance(sample, list) else (image, mask, *rest)


def _relabel(original: Any, new: Any) -> Any:
    """``new`` (an int or a multi-hot vector) in the type of the sample's ``original`` label."""
    if isinstance(original, torch.Tensor):
        return torch.as_tensor(np.asarray(new), dtype=original.dtype)
    if isinstance(original, np.ndarray):
        return np.asarray(new, dtype=original.dtype)
    if isinstance(original, np.integer):
        return type(original)(new)
    return new if not isinstance(new, np.integer) else int(new)


def _log_record(injection: dict[str, Any] | None) -> dict[str, Any]:
    if injection is None:
        return {"class_id": 0, "entry_id": -1, "method": "", "bbox": np.full(4, -1, np.int64)}
    bbox = injection["bbox"] if injection["bbox"] is not None else (-1, -1, -1, -1)
    return {
        "class_id": int(injection["class_id"]),
        "entry_id": int(injection["entry_id"]),
        "method": str(injection["method"]),
        "bbox": np.asarray(bbox, np.int64),
    }
