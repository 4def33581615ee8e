"""The pseudo-anomaly transforms' base (shared outputs) and :class:`AnomalySynthesis`, the N-way composition.

The outputs every anomaly transform shares are described in :mod:`.functional`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema
from pydantic import Field

from albu_defects.core.transform import DefectCompose, DefectTransform, check_sample_inputs
from albu_defects.core.validation import check_probability

from .functional import ANOMALY_LABEL_KEY, ANOMALY_MASK_KEY, merge_anomaly_mask, normal_outputs

__all__ = ["AnomalyInitSchema", "AnomalySynthesis", "AnomalyTransform"]


class AnomalyInitSchema(BaseTransformInitSchema):
    """Init arguments every anomaly transform shares."""

    label: int = Field(ge=1, description="anomaly_label written when applied (0 is reserved for normal)")
    mask_class_id: int = Field(ge=1, description="value written into `mask` on anomaly pixels")


class AnomalyTransform(DefectTransform):
    """Base of the anomaly transforms: label and mask outputs, pass-through of unchanged geometry.

    ``draw_params()`` of a subclass must return the full-size boolean ``anomaly_mask`` among its params.
    """

    label: int
    mask_class_id: int

    def apply_to_mask(self, mask: np.ndarray, anomaly_mask: np.ndarray, **params: Any) -> np.ndarray:
        return merge_anomaly_mask(mask, anomaly_mask, self.mask_class_id)

    def apply_to_masks(self, masks: Any, **params: Any) -> Any:
        return masks  # instance masks: an anomaly belongs to none of them

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        return bboxes

    def apply_to_keypoints(self, keypoints: np.ndarray, **params: Any) -> np.ndarray:
        return keypoints

    def read_only_keys(self) -> tuple[str, ...]:
        """Data keys this transform reads but must hand back untouched (even if declared mask targets)."""
        return ()

    def extra_outputs(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        anomaly = params[ANOMALY_MASK_KEY]
        previous = data.get(ANOMALY_MASK_KEY)
        if isinstance(previous, np.ndarray) and previous.shape[:2] == anomaly.shape:
            anomaly = anomaly | (previous.reshape(anomaly.shape) != 0)
        outputs = {ANOMALY_LABEL_KEY: int(self.label), ANOMALY_MASK_KEY: anomaly}
        outputs.update({key: data[key] for key in self.read_only_keys() if key in data})
        return outputs

    def default_outputs(self, data: dict[str, Any]) -> dict[str, Any]:
        return normal_outputs(data)


class AnomalySynthesis(DefectCompose):
    """Apply one of ``transforms`` (or none: a "normal" sample) and write its class under ``anomaly_label``.

    Args:
        transforms: anomaly transforms (:class:`~albu_defects.CropLiq`, :class:`~albu_defects.CutPaste`, ...).
            The one to apply is drawn with weights proportional to their ``p`` (as ``A.OneOf``) and
            applied for sure.
        normal_p: probability of a normal sample (no transform, label ``normal_label``); default
            ``1 / (len(transforms) + 1)``, i.e. all classes equally likely.
        labels: ``anomaly_label`` of each transform; default ``1, 2, ..., len(transforms)``. Two
            transforms may share a label (e.g. both CutPaste variants as one class); none may equal
            ``normal_label``.
        normal_label: label of a normal sample (default 0).
        p: probability of drawing at all; when not drawn the sample is normal.

    The output always holds ``anomaly_label`` and ``anomaly_mask`` (empty for a normal sample).
    Reproducible under ``A.Compose(..., seed=s)``; saved to YAML as ``albu_defects.AnomalySynthesis``
    with its children and arguments.
    """

    def __init__(
        self,
        transforms: Sequence[AnomalyTransform],
        normal_p: float | None = None,
        labels: Sequence[int] | None = None,
        normal_label: int = 0,
        p: float = 1.0,
    ):
        transforms = list(transforms)
        if not transforms:
            raise ValueError("transforms must hold at least one anomaly transform (CropLiq, CutPaste, ...)")
        for index, transform in enumerate(transforms):
            if not isinstance(transform, AnomalyTransform):
                raise ValueError(
                    f"transforms[{index}] is {type(transform).__name__}; AnomalySynthesis takes anomaly transforms "
                    "(CropLiq, CutPaste) that write an anomaly mask"
                )
        super().__init__(transforms=transforms, p=check_probability(p, "p"))
        count = len(self.transforms)
        self.normal_p = check_probability(1.0 / (count + 1) if normal_p is None else normal_p, "normal_p")
        self.normal_label = int(normal_label)
        self.labels = list(range(1, count + 1)) if labels is None else [int(label) for label in labels]
        if len(self.labels) != count:
            raise ValueError(f"labels has {len(self.labels)} entries but there are {count} transforms; give one each")
        if self.normal_label in self.labels:
            raise ValueError(
                f"labels {self.labels} contain normal_label={self.normal_label}: an anomaly would be labelled normal"
            )
        weights = np.array([float(t.p) for t in self.transforms])
        if weights.sum() <= 0:
            raise ValueError("every transform has p=0: give at least one a positive p (p weighs the choice)")
        self.transform_weights = (weights / weights.sum()).tolist()

    def to_dict_private(self) -> dict[str, Any]:
        dictionary = super().to_dict_private()
        dictionary.update({"normal_p": self.normal_p, "labels": list(self.labels), "normal_label": self.normal_label})
        return dictionary

    def choose(self, force_apply: bool = False) -> int | None:
        """Index of the transform to apply for one sample, or ``None`` for a normal one."""
        drawn = force_apply or self.py_random.random() < self.p
        is_normal = self.random_generator.random() < self.normal_p
        if not drawn or is_normal:
            return None
        return int(self.random_generator.choice(len(self.transforms), p=self.transform_weights))

    def run(self, data: dict[str, Any], force_apply: bool = False) -> dict[str, Any]:
        if self.replay_mode:  # ReplayCompose replays the recorded child
            for transform in self.transforms:
                data = transform(**data)
            return data
        index = self.choose(force_apply)
        if index is None:
            check_sample_inputs(data)  # a chosen transform checks them itself; a normal draw must too
            outputs = normal_outputs(data)
            data[ANOMALY_LABEL_KEY] = self.normal_label
            if ANOMALY_MASK_KEY in outputs:
                data.setdefault(ANOMALY_MASK_KEY, outputs[ANOMALY_MASK_KEY])
            return data
        transform = self.transforms[index]
        data = transform(force_apply=True, **data)
        self._track_transform_params(transform, data)
        data[ANOMALY_LABEL_KEY] = self.labels[index]
        return data
