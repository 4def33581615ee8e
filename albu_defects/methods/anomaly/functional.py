"""Pseudo-anomaly synthesis for self-supervised anomaly detection: the outputs every anomaly transform shares.

Every anomaly transform (:class:`~albu_defects.CropLiq`, :class:`~albu_defects.CutPaste`) shares the
outputs defined here, so a DataLoader always sees the same keys:

- ``anomaly_label`` (int): the transform's ``label`` when applied, ``0`` when skipped by ``p``;
- ``anomaly_mask`` (bool (H, W)): the pixels the transform changed (a superset: a changed pixel is
  always in it). When an earlier step already wrote an ``anomaly_mask`` of the same size, the new
  one is its union with it. Geometric transforms later in a pipeline only move it along when it
  is declared a mask target (``A.Compose(..., additional_targets={"anomaly_mask": "mask"})``);
  simplest is to put anomaly synthesis last;
- ``mask`` (only when one is passed in): the anomaly pixels are set to ``mask_class_id`` (``True``
  for a bool mask); no ``mask`` is created when none is given. ``masks``, ``bboxes`` and
  ``keypoints`` pass through unchanged (the image geometry does not change).

:class:`AnomalySynthesis` applies one of its anomaly transforms, or none ("normal"), and writes the
class of what it did under ``anomaly_label``: the 3-way task of CutPaste / CropLiq in one line::

    AnomalySynthesis([CropLiq(), CutPaste(variant="normal")])  # labels 0 normal, 1 CropLiq, 2 CutPaste
"""

from __future__ import annotations

from typing import Any

import numpy as np

from albu_defects.core.transform import input_image
from albu_defects.core.validation import image_hw

__all__ = ["ANOMALY_LABEL_KEY", "ANOMALY_MASK_KEY", "merge_anomaly_mask", "normal_outputs"]

#: Output key of the anomaly class (0 = normal).
ANOMALY_LABEL_KEY = "anomaly_label"
#: Output key of the boolean mask of synthesized anomaly pixels.
ANOMALY_MASK_KEY = "anomaly_mask"


def merge_anomaly_mask(mask: np.ndarray, anomaly: np.ndarray, class_id: int) -> np.ndarray:
    """A copy of ``mask`` with the ``anomaly`` pixels set to ``class_id`` (``True`` for a bool mask).

    ``mask`` may be (H, W) or (H, W, 1); ``anomaly`` is a bool (H, W) array. Raises ``ValueError``
    when ``class_id`` does not fit the mask's dtype (it would wrap around silently).
    """
    out = mask.copy()
    if out.dtype == bool:
        out[anomaly] = True
        return out
    if np.issubdtype(out.dtype, np.integer) and not (np.iinfo(out.dtype).min <= class_id <= np.iinfo(out.dtype).max):
        raise ValueError(f"mask_class_id={class_id} does not fit the mask dtype {out.dtype}; use a wider mask dtype")
    out[anomaly] = class_id
    return out


def normal_outputs(data: dict[str, Any]) -> dict[str, Any]:
    """The anomaly keys of an untouched sample: label 0 and an empty mask of the image's size."""
    image = input_image(data)
    if image is None:
        return {ANOMALY_LABEL_KEY: 0}
    return {ANOMALY_LABEL_KEY: 0, ANOMALY_MASK_KEY: np.zeros(image_hw(image), bool)}
