"""ContextMix on a batch of (N, C, H, W) tensors: the torch batch op (the batched resize-and-paste is :mod:`.paste`).

:class:`TensorContextMix` is called like torchvision's ``CutMix`` or timm's ``Mixup``:
``images, targets = TensorContextMix(num_classes=K)(images, labels)``. The box math is the numpy transform's (:func:`albu_defects.methods.contextmix.functional.draw_boxes`,
``mix_weights``, ``nearest_source_index``); this module only moves pixels, with no device-specific code.

Where to run it: on a GPU the batch op belongs in the training loop, after ``.to(device)``
(``images, targets = cm(images.to(device), labels.to(device))``): it is a few gathers over the
batch, cheap on the device that holds it. ``ContextMixCollate`` runs in the DataLoader workers, on
CPU, which suits CPU training or keeps the GPU free of it. Under ``DistributedDataParallel``
nothing changes: each rank mixes its own batch (pairs never cross ranks), and the gradients are
averaged as usual.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from albu_defects.core.validation import check_choice, check_int, check_probability
from albu_defects.methods.contextmix.functional import (
    LABEL_MODES,
    MIN_VISIBLE_PIXELS,
    BoxKind,
    LabelMode,
    check_box_options,
    check_min_visible_pixels,
    defect_mix_weights,
    draw_boxes,
    mix_weights,
)

from .paste import (
    INTERPOLATIONS,
    Interpolation,
    ScratchBuffers,
    _all_finite,
    _check_images,
    _paste,
    paste_resized_batch,
)

__all__ = [
    "TensorContextMix",
    "ScratchBuffers",
    "paste_resized_batch",
]


def _mixed_targets(
    vectors: torch.Tensor, partner: torch.Tensor, weights: torch.Tensor, smoothing: float
) -> torch.Tensor:
    """``w_A * y + w_B * y[partner]`` (float32 (N, K)) of label vectors ``y``, each smoothed first.

    Smoothing moves ``s`` of each vector's mass to ``s / K`` per class (timm's rule for one-hot
    vectors, so class ids and their one-hot vectors give the same targets).
    """
    vectors = vectors.to(torch.float32)
    if smoothing:
        vectors = vectors * (1.0 - smoothing) + smoothing / vectors.shape[1]
    return weights[:, :1] * vectors + weights[:, 1:] * vectors.index_select(0, partner)


def _defect_map(masks: torch.Tensor) -> torch.Tensor:
    """Bool (N, H, W): pixels of (N, H, W) class-index or (N, K, H, W) multi-hot masks that hold a defect."""
    return (masks != 0).any(dim=1) if masks.ndim == 4 else masks != 0


def _defect_counts(masks: torch.Tensor, region: torch.Tensor | None) -> np.ndarray:
    """Defect pixels of each mask (int64 (N,)), within ``region`` (bool (N, H, W)) when given."""
    defects = _defect_map(masks)
    if region is not None:
        defects = defects & region
    return defects.flatten(1).sum(1).cpu().numpy().astype(np.int64)


def _visible_defects(
    mixed_masks: torch.Tensor, boxes: np.ndarray, before: np.ndarray, perm: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(visible, total)`` (int64 (N, 2), host then partner) counted on the mixed masks.

    The partner's visible defect pixels are the mixed mask's defects inside its box (its nearest
    resize, exactly as pasted), the host's those outside; ``total`` holds each image's defect
    pixels before mixing (``before``), the partner's taken through ``perm``.
    """
    height, width = mixed_masks.shape[-2:]
    rows, cols = np.arange(height)[None, :], np.arange(width)[None, :]
    x0, y0, x1, y1 = boxes.T
    inside = (
        torch.from_numpy((rows >= y0[:, None]) & (rows < y1[:, None]))[:, :, None]
        & torch.from_numpy((cols >= x0[:, None]) & (cols < x1[:, None]))[:, None, :]
    ).to(mixed_masks.device)
    everywhere = _defect_counts(mixed_masks, None)
    pasted = _defect_counts(mixed_masks, inside)
    return np.stack([everywhere - pasted, pasted], axis=1), np.stack([before, before[perm]], axis=1)


class TensorContextMix:
    """ContextMix on a batch of (N, C, H, W) tensors: ``images, targets = cm(images, labels)``.

    The torch counterpart of the numpy transform :class:`albu_defects.ContextMix` (one sample at a
    time, inside an ``A.Compose``); named apart from it after 0.1.0 (it was ``albu_defects.pytorch.ContextMix``).

    Each image ``i`` gets the whole image ``perm[i]`` (a random permutation, as the paper's
    ``shuffle_index``: any batch size, a sample may draw itself) resized into a box, with the box
    math of :func:`albu_defects.methods.contextmix.functional.draw_boxes`. ``labels``:

    - int class ids (N,) -> soft targets (N, num_classes) float32:
      ``lambda_A * onehot(y) + lambda_B * onehot(y[perm])`` with optional label smoothing;
    - one-hot or multi-hot vectors (N, K) (any real dtype) -> ``lambda_A * y + lambda_B * y[perm]``
      float32 (smoothed alike);
    - segmentation masks (N, H, W) (any dtype) -> masks mixed with the same boxes, nearest (other
      per-pixel tensors: :meth:`apply_to_mask`);
    - ``None`` -> the weights (N, 2) = ``[lambda_A, lambda_B]`` float32.

    ``masks`` (optional; (N, H, W) class-index or (N, K, H, W) multi-hot / per-class, any dtype) are
    mixed like the images (nearest) and returned third: ``images, targets, masks = cm(images, labels,
    masks=masks)``. With ``label_mode="defect_area"`` they are required: their nonzero pixels are the
    defects, and the weights are the defect pixels each image still shows (the host's outside the
    box, the partner's inside it after the resize), exactly as the numpy transform's
    (:func:`~albu_defects.methods.contextmix.functional.defect_mix_weights`: a defect counts from
    ``min_visible_pixels`` pixels or when all of it shows; when none counts, the defect-free image
    takes the weight, else area).

    Modes: ``"batch"`` draws one box for the whole batch (the paper's code) and mixes it with
    probability ``p``; ``"sample"`` draws a box per image and mixes each with probability ``p``.
    Works on any device, on uint8 or float images (dtype and shape kept; float images must be
    finite) and on any view of a batch (strided, sliced, channels-last); random numbers come
    from ``generator`` (a CPU ``torch.Generator``), or one seeded with ``seed``, or torch's global
    generator. After a call, ``last_perm``, ``last_boxes`` (N, 4) ``(x_min, y_min, x_max, y_max)`` and ``last_weights`` (N, 2)
    hold what was drawn. On GPU call it in the training loop after ``.to(device)``.

    Args:
        alpha, box, box_size, label_mode, min_visible_pixels, min_box_side, label_smoothing: as the
            numpy :class:`albu_defects.ContextMix` (``label_mode``: ``"area"``, ``"one-hot"`` or
            ``"defect_area"``).
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
        min_visible_pixels: int = MIN_VISIBLE_PIXELS,
        min_box_side: int = 3,
        label_smoothing: float = 0.0,
        interpolation: Interpolation = "nearest",
        inplace: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ):
        check_box_options(alpha, box, box_size, min_box_side)
        if num_classes is not None:
            check_int(num_classes, "num_classes", 1, "(or None)")
        check_probability(p, "p")
        if mode not in ("batch", "sample"):
            raise ValueError(f"mode must be 'batch' (one box per batch) or 'sample' (one per image), got {mode!r}")
        check_choice(label_mode, LABEL_MODES, "label_mode")
        min_visible_pixels = check_min_visible_pixels(min_visible_pixels)
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
        self.min_visible_pixels = min_visible_pixels
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
            f"TensorContextMix(alpha={self.alpha}, num_classes={self.num_classes}, p={self.p}, mode={self.mode!r}, "
            f"box={self.box!r}, label_mode={self.label_mode!r}, interpolation={self.interpolation!r})"
        )

    def draw(self, size: int, height: int, width: int) -> tuple[torch.Tensor, np.ndarray]:
        """Draw the pairing (CPU permutation) and the boxes (N, 4) for a batch of ``size`` images."""
        perm = torch.randperm(size, generator=self.generator)
        count = 1 if self.mode == "batch" else size
        apply = torch.rand(count, generator=self.generator, dtype=torch.float64).numpy() < self.p
        draws = torch.rand(count, 3, generator=self.generator, dtype=torch.float64).numpy()
        boxes = draw_boxes(
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

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor | None = None, masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """``(images, targets)``, or ``(images, targets, masks)`` when ``masks`` are given (see the class)."""
        images = _check_images(images)
        n, _, height, width = images.shape
        self._label_kind(labels, n, height, width)  # reject bad labels before drawing anything
        self._check_masks(masks, n, height, width)
        perm, boxes = self.draw(n, height, width)
        return self.apply(images, labels, perm, boxes, masks=masks)

    def apply(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None,
        perm: torch.Tensor | np.ndarray,
        boxes: np.ndarray,
        masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Mix with a given pairing ``perm`` (N,) and ``boxes`` (N, 4) (e.g. from :meth:`draw`).

        Returns what :meth:`__call__` does. Reuses this op's scratch buffers between calls (see
        :class:`ScratchBuffers`).
        """
        images = _check_images(images)
        n, _, height, width = images.shape
        kind = self._label_kind(labels, n, height, width)
        self._check_masks(masks, n, height, width)
        perm = torch.as_tensor(np.asarray(perm, dtype=np.int64) if not isinstance(perm, torch.Tensor) else perm.cpu())
        boxes = np.broadcast_to(np.asarray(boxes, dtype=np.int64).reshape(-1, 4), (n, 4))
        weights = mix_weights(boxes, height, width, self.label_mode)
        mixed_masks = None
        if masks is not None:
            defects_before = _defect_counts(masks, None) if self.label_mode == "defect_area" else None
            mixed_masks = self.apply_to_mask(masks, perm, boxes)
            if defects_before is not None:
                visible, total = _visible_defects(mixed_masks, boxes, defects_before, perm.numpy())
                weights = defect_mix_weights(visible, total, weights, self.min_visible_pixels)
        self.last_perm, self.last_boxes, self.last_weights = perm, boxes, weights.astype(np.float32)
        # One shared box takes the fast path that reads only the box's source rows.
        paste_boxes = boxes[0] if (boxes == boxes[0]).all() else boxes
        mixed = _paste(images, perm.numpy(), paste_boxes, self.interpolation, self.inplace, self._buffers)
        if kind == "none":
            targets = torch.from_numpy(self.last_weights).to(images.device)
        elif kind == "mask":
            targets = self.apply_to_mask(labels, perm, boxes)
        else:
            weights_t = torch.from_numpy(self.last_weights).to(labels.device)
            vectors = F.one_hot(labels.long(), self.num_classes) if kind == "class" else labels
            targets = _mixed_targets(vectors, perm.to(labels.device), weights_t, self.label_smoothing)
        return (mixed, targets) if mixed_masks is None else (mixed, targets, mixed_masks)

    def _check_masks(self, masks: Any, n: int, height: int, width: int) -> None:
        if masks is None:
            if self.label_mode == "defect_area":
                raise ValueError(
                    "label_mode='defect_area' weighs the labels by the defect pixels of the masks: call "
                    "cm(images, labels, masks=masks) with (N, H, W) class-index or (N, K, H, W) multi-hot masks"
                )
            return
        if not isinstance(masks, torch.Tensor) or masks.is_complex():
            raise ValueError(f"masks must be a real torch.Tensor (N, H, W) or (N, K, H, W), got {type(masks).__name__}")
        if not (masks.ndim in (3, 4) and masks.shape[0] == n and tuple(masks.shape[-2:]) == (height, width)):
            raise ValueError(
                f"masks must have shape ({n}, {height}, {width}) or ({n}, K, {height}, {width}) (the images' batch "
                f"and size), got {tuple(masks.shape)}"
            )
        if masks.dtype.is_floating_point and not _all_finite(masks):
            raise ValueError("masks hold NaN or infinite values")

    def apply_to_mask(self, masks: torch.Tensor, perm: torch.Tensor | np.ndarray, boxes: np.ndarray) -> torch.Tensor:
        """Mix per-pixel values (masks, weight maps; (N, H, W) or (N, C, H, W), any dtype) like the images.

        Nearest, with the pairing ``perm`` and ``boxes`` of :meth:`draw` / :meth:`apply`, so class
        ids stay exact and every value lands where its pixel did; any tensor view works.
        ``inplace`` applies as for images.
        """
        if not isinstance(masks, torch.Tensor) or masks.ndim not in (3, 4) or masks.is_complex():
            got = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
            raise ValueError(f"masks must be a real (N, H, W) or (N, C, H, W) tensor, got {got}")
        values = masks[:, None] if masks.ndim == 3 else masks
        boxes = np.broadcast_to(np.asarray(boxes, dtype=np.int64).reshape(-1, 4), (values.shape[0], 4))
        partner = np.asarray(perm.cpu() if isinstance(perm, torch.Tensor) else perm, dtype=np.int64)
        # One shared box takes the fast path that reads only the box's source rows.
        paste_boxes = boxes[0] if (boxes == boxes[0]).all() else boxes
        mixed = _paste(values, partner, paste_boxes, "nearest", self.inplace, self._buffers)
        return mixed[:, 0] if masks.ndim == 3 else mixed

    def _label_kind(self, labels: Any, n: int, height: int, width: int) -> str:
        if labels is None:
            return "none"
        if not isinstance(labels, torch.Tensor):
            raise ValueError(f"labels must be a torch.Tensor (N,), (N, K) or (N, H, W), got {type(labels).__name__}")
        if labels.shape == (n, height, width):
            if labels.is_complex():
                raise ValueError(f"masks must be real-valued, got dtype {labels.dtype}")
            return "mask"
        if labels.ndim == 2 and labels.shape[0] == n and labels.shape[1] >= 1:
            if labels.is_complex():
                raise ValueError(f"label vectors must be real-valued, got dtype {labels.dtype}")
            if self.num_classes is not None and labels.shape[1] != self.num_classes:
                raise ValueError(f"label vectors have {labels.shape[1]} entries but num_classes is {self.num_classes}")
            if labels.dtype.is_floating_point and not _all_finite(labels):
                raise ValueError("label vectors hold NaN or infinite values")
            return "vector"
        if labels.shape != (n,):
            raise ValueError(
                f"labels must be class ids ({n},), one-hot / multi-hot vectors ({n}, K) or masks "
                f"({n}, {height}, {width}), got {tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
            raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
        if self.num_classes is None:
            raise ValueError("num_classes must be set to turn integer labels into soft targets")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, num_classes) = [0, {self.num_classes})")
        return "class"
