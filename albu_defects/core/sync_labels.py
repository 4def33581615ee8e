"""SyncLabels: the last step of a pipeline, re-deriving the image-level labels from the final masks.

albu-defects transforms keep ``class_vector`` and ``anomaly_label`` true themselves (the label model
of :mod:`albu_defects.core.labels`). albumentations' own transforms do not: a crop, an affine, a
resize or a dropout after ours moves or drops ``mask`` pixels and leaves the labels stale.
``SyncLabels`` at the end of the pipeline re-derives them:

- ``class_vector`` (``label_key``) from the final ``mask``: a class-index mask, or a multi-hot
  (H, W, K) one; numpy, or a CPU torch tensor after ``ToTensorV2`` (channel-first (K, H, W) too, as
  ``ToTensorV2(transpose_mask=True)`` makes it). K is ``num_classes``, else the incoming label's
  length, else the channels of a multi-hot mask. An incoming label keeps its format (:func:`relabel`);
  a missing one is written as float32 when K is known.
- ``anomaly_label`` becomes ``normal_label`` when the final ``anomaly_mask`` is empty (declare
  ``additional_targets={"anomaly_mask": "mask"}`` so the built-ins move it). Declared so, it travels
  between steps as uint8 (OpenCV's warps refuse bool arrays); ``SyncLabels`` hands it back as bool.

It never reads or changes the image, so it may follow ``A.Normalize`` and ``ToTensorV2``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import albumentations as A
import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema
from pydantic import Field

from .labels import (
    ANOMALY_LABEL_KEY,
    ANOMALY_MASK_KEY,
    CLASS_VECTOR_KEY,
    classes_present,
    label_num_classes,
    mask_num_classes,
    relabel,
)
from .transform import IS_ALBUMENTATIONS_X, DefectTransform, input_image, store_options

__all__ = ["SyncLabels"]


def _image_hw(image: Any) -> tuple[int, ...] | None:
    """(H, W) of a numpy (H, W[, C]) image or a torch (C, H, W) / (H, W) tensor."""
    if image is None:
        return None
    if isinstance(image, np.ndarray):
        return tuple(image.shape[:2])
    return tuple(image.shape[-2:])


def _channels_last(mask: Any, hw: tuple[int, ...] | None) -> np.ndarray:
    """A numpy view of a numpy or CPU torch mask, a channel-first (K, H, W) one moved to (H, W, K)."""
    array = np.asarray(mask)
    if array.ndim == 3 and hw is not None and array.shape[:2] != hw and array.shape[1:] == hw:
        return np.moveaxis(array, 0, -1)
    return array


class SyncLabels(DefectTransform):
    """Re-derive ``class_vector`` and ``anomaly_label`` from the final masks (put it last in a pipeline).

    Args:
        num_classes: K, the length of ``class_vector``; ``None``: the incoming label's length or the
            channels of a multi-hot mask (with neither, no ``class_vector`` is written).
        label_key: the key of the image-level label (``class_vector``; ``label`` for pipelines
            saved by 0.1.0 with InjectDefect's old default).
        normal_label: ``anomaly_label`` of a sample whose ``anomaly_mask`` is empty.
        anomaly_keys: write ``anomaly_label`` (``normal_label``) and an empty ``anomaly_mask`` on a
            sample that has none: an albumentations container (``A.OneOf``, ``A.SomeOf``,
            ``A.Sequential(p<1)``) that skips an anomaly transform skips its keys too, and a
            DataLoader needs the same keys in every sample.
        p: probability of applying (keep 1).

    Targets pass through unchanged (image, mask, masks, bboxes, keypoints). Raises ``ValueError``
    when the mask holds a class beyond K.
    """

    class InitSchema(BaseTransformInitSchema):
        num_classes: int | None = Field(ge=1)
        label_key: str = Field(min_length=1)
        normal_label: int
        anomaly_keys: bool

    renders_images: ClassVar[bool] = False
    final_labels: ClassVar[bool] = True

    if IS_ALBUMENTATIONS_X:  # pragma: no cover - exercised by the AlbumentationsX CI step
        # nothing to draw: X's own sampling route also takes torch tensors (after ToTensorV2), whose
        # channel-first layout the bridge's spatial check would reject
        sample_parameters = A.DualTransform.sample_parameters

    def __init__(
        self,
        num_classes: int | None = None,
        label_key: str = CLASS_VECTOR_KEY,
        normal_label: int = 0,
        anomaly_keys: bool = False,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        store_options(self, locals())

    def check_inputs(self, data: dict[str, Any]) -> None:
        """Nothing to refuse up front: images may be normalised or tensors; masks are read after the call."""

    def label_keys(self) -> tuple[str, ...]:
        return (self.label_key,)

    def rewrites_mask(self, params: dict[str, Any]) -> bool:
        return False  # the labels are re-derived in extra_outputs, from masks of any kind and layout

    def apply(self, img: Any, **params: Any) -> Any:
        return img

    def apply_to_mask(self, mask: Any, **params: Any) -> Any:
        return mask

    def apply_to_masks(self, masks: Any, **params: Any) -> Any:
        return masks

    def apply_to_bboxes(self, bboxes: Any, **params: Any) -> Any:
        return bboxes

    def apply_to_keypoints(self, keypoints: Any, **params: Any) -> Any:
        return keypoints

    def _empty_anomaly_mask(self, result: dict[str, Any], hw: tuple[int, ...]) -> Any:
        """An empty anomaly mask like the other samples' (a tensor when ToTensorV2 moved a declared one)."""
        image = input_image(result)
        if not isinstance(image, np.ndarray) and ANOMALY_MASK_KEY in self.target_keys("mask"):
            import torch  # the image is a tensor: torch is loaded

            return torch.zeros(hw, dtype=torch.bool)
        return np.zeros(hw, bool)

    def extra_outputs(self, params: dict[str, Any], data: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        outputs: dict[str, Any] = {}
        label = data.get(self.label_key)
        hw = _image_hw(input_image(result))
        if result.get("mask") is not None:
            mask = _channels_last(result["mask"], hw)
            k = self.num_classes or (None if label is None else label_num_classes(label)) or mask_num_classes(mask)
            if k is not None:
                base = np.zeros(k, np.float32) if label is None else label
                outputs[self.label_key] = relabel(base, classes_present(mask, k), self.label_key)
        anomaly = result.get(ANOMALY_MASK_KEY)
        if anomaly is None and self.anomaly_keys and hw is not None:  # no anomaly transform ran on this sample
            anomaly = outputs[ANOMALY_MASK_KEY] = self._empty_anomaly_mask(result, hw)
        shape = tuple(np.shape(anomaly)) if anomaly is not None else ()
        if anomaly is not None and hw is not None and hw not in (shape[:2], shape[-2:]):
            raise ValueError(
                f"{ANOMALY_MASK_KEY} has shape {shape} but the image is {hw[0]}x{hw[1]}: an albumentations transform "
                f"moved the image without it; declare it a mask target "
                f"(A.Compose(..., additional_targets={{'{ANOMALY_MASK_KEY}': 'mask'}}))"
            )
        if anomaly is not None and not np.asarray(anomaly).any():
            outputs[ANOMALY_LABEL_KEY] = self.normal_label
        if anomaly is not None and hasattr(anomaly, "bool") and not isinstance(anomaly, np.ndarray):
            outputs[ANOMALY_MASK_KEY] = anomaly.bool()  # a tensor after ToTensorV2 (numpy: the base made it bool)
        return outputs
