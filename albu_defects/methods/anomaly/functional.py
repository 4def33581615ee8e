"""Pseudo-anomaly synthesis for self-supervised anomaly detection: the outputs every anomaly transform shares.

Every anomaly transform (:class:`~albu_defects.CropLiq`, :class:`~albu_defects.CutPaste`) shares the
outputs defined here, so a DataLoader always sees the same keys (the label model:
:mod:`albu_defects.core.labels`):

- ``anomaly_label`` (int): the transform's ``label`` when applied and at least one pixel of its
  footprint really changed; otherwise what came in (0 when nothing came in). So a scar whose
  rotated footprint is empty, or a patch pasted onto identical pixels, is no anomaly;
- ``anomaly_mask`` (bool (H, W)): the footprint of the anomaly (a superset of the changed pixels: a
  changed pixel is always in it), united with an incoming ``anomaly_mask``. albu-defects transforms
  later in a pipeline move it themselves; albumentations' own transforms move it only when it is
  declared a mask target (``A.Compose(..., additional_targets={"anomaly_mask": "mask"})``, then
  ``SyncLabels`` at the end re-derives ``anomaly_label``);
- ``mask``: untouched unless ``mask_class_id`` is given (default ``None``: a pseudo-anomaly is not
  a defect class); then that class is written on the footprint (into its channel of a multi-hot
  mask), and ``class_vector`` follows. No ``mask`` is created. ``masks``, ``bboxes`` and
  ``keypoints`` pass through unchanged (the image geometry does not change).

:class:`AnomalySynthesis` applies one of its anomaly transforms, or none ("normal"), and writes the
class of what it did under ``anomaly_label``: the 3-way task of CutPaste / CropLiq in one line::

    AnomalySynthesis([CropLiq(), CutPaste(variant="normal")])  # labels 0 normal, 1 CropLiq, 2 CutPaste
"""

from __future__ import annotations

from typing import Any

import numpy as np

from albu_defects.core.labels import ANOMALY_LABEL_KEY, ANOMALY_MASK_KEY
from albu_defects.core.transform import input_image
from albu_defects.core.validation import image_hw

__all__ = ["ANOMALY_LABEL_KEY", "ANOMALY_MASK_KEY", "footprint_changed", "normal_outputs"]


def footprint_changed(before: Any, after: Any, footprint: np.ndarray, frames: bool = False) -> bool:
    """Whether any pixel of the bool (H, W) ``footprint`` differs between two images (any channel).

    With ``frames`` the two are sequences (or stacks) of frames, as under the ``images`` target.
    """
    if frames:
        return any(footprint_changed(b, a, footprint) for b, a in zip(before, after, strict=True))
    rows, cols = np.nonzero(footprint)
    return bool((np.asarray(before)[rows, cols] != np.asarray(after)[rows, cols]).any())


def normal_outputs(data: dict[str, Any]) -> dict[str, Any]:
    """The anomaly keys of an untouched sample: label 0 and an empty mask of the image's size."""
    image = input_image(data)
    if image is None:
        return {ANOMALY_LABEL_KEY: 0}
    return {ANOMALY_LABEL_KEY: 0, ANOMALY_MASK_KEY: np.zeros(image_hw(image), bool)}
