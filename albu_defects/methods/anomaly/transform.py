"""The pseudo-anomaly transforms' base (shared outputs) and :class:`AnomalySynthesis`, the N-way composition.

The outputs every anomaly transform shares are described in :mod:`.functional`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema
from pydantic import BaseModel, Field

from albu_defects.core.labels import carried_anomaly_mask, is_multi_hot, write_class
from albu_defects.core.transform import DefectCompose, DefectTransform, check_sample_inputs
from albu_defects.core.validation import validated_options

from .functional import ANOMALY_LABEL_KEY, ANOMALY_MASK_KEY, footprint_changed, normal_outputs

__all__ = ["FOOTPRINT_PARAM", "AnomalyInitSchema", "AnomalySynthesis", "AnomalyTransform"]

#: The parameter every anomaly transform's ``draw_params`` returns: the bool (H, W) footprint of its anomaly.
FOOTPRINT_PARAM = "anomaly_footprint"


class AnomalyInitSchema(BaseTransformInitSchema):
    """Init arguments every anomaly transform shares."""

    label: int = Field(ge=1, description="anomaly_label written when applied (0 is reserved for normal)")
    mask_class_id: int | None = Field(
        ge=1, description="class written into `mask` on the anomaly's pixels; None: the mask is untouched"
    )


class AnomalyTransform(DefectTransform):
    """Base of the anomaly transforms: label and mask outputs, pass-through of unchanged geometry.

    ``draw_params()`` of a subclass must return the full-size boolean footprint of its anomaly under
    :data:`FOOTPRINT_PARAM`. The outputs are described in :mod:`.functional`.
    """

    label: int
    mask_class_id: int | None

    def check_inputs(self, data: dict[str, Any]) -> None:
        super().check_inputs(data)
        mask, class_id = data.get("mask"), self.mask_class_id
        if mask is None or class_id is None:
            return
        if is_multi_hot(mask):
            if class_id > mask.shape[2]:
                raise ValueError(
                    f"mask_class_id={class_id} has no channel in the {mask.shape[2]}-channel multi-hot mask"
                )
        elif mask.dtype == bool:
            if class_id != 1:
                raise ValueError(
                    f"mask_class_id={class_id} does not fit a bool mask (class 1 only); use an integer mask"
                )
        elif class_id > np.iinfo(mask.dtype).max:
            raise ValueError(
                f"mask_class_id={class_id} does not fit the mask dtype {mask.dtype}; use a wider mask dtype"
            )

    def apply_to_mask(self, mask: np.ndarray, anomaly_footprint: np.ndarray, **params: Any) -> np.ndarray:
        if self.mask_class_id is None:
            return mask
        return write_class(mask, anomaly_footprint, self.mask_class_id)

    def apply_to_masks(self, masks: Any, **params: Any) -> Any:
        return masks  # instance masks: an anomaly belongs to none of them

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        return bboxes

    def apply_to_keypoints(self, keypoints: np.ndarray, **params: Any) -> np.ndarray:
        return keypoints

    def rewrites_mask(self, params: dict[str, Any]) -> bool:
        return self.mask_class_id is not None

    def extra_outputs(self, params: dict[str, Any], data: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        footprint = params[FOOTPRINT_PARAM]
        frames = data.get("image") is None
        key = "images" if frames else "image"
        if not footprint_changed(data[key], result[key], footprint, frames=frames):
            # nothing to label: hand every mask target back as it came, keep the incoming anomaly keys
            restored = {k: data[k] for k in self.target_keys("mask") if data.get(k) is not None}
            return {**self.default_outputs(data), **restored, **_anomaly_keys(data, result)}
        previous = result.get(ANOMALY_MASK_KEY)
        anomaly = footprint if previous is None else footprint | previous.reshape(footprint.shape)
        return {ANOMALY_LABEL_KEY: int(self.label), ANOMALY_MASK_KEY: anomaly}

    def default_outputs(self, data: dict[str, Any]) -> dict[str, Any]:
        return normal_outputs(data)


#: The params an AnomalySynthesis records for a normal draw under ReplayCompose (see ``_record_normal_draw``).
NORMAL_DRAW = "albu_defects_normal_draw"


def _is_normal_record(child: Any) -> bool:
    """Whether a child restored by ``ReplayCompose.replay`` holds the normal-draw marker as its params."""
    # AlbumentationsX keeps a restored transform's params in ``_replay_params``; 2.0.8 in ``params``
    params = getattr(child, "_replay_params", None) or getattr(child, "params", None)
    return isinstance(params, dict) and params.get(NORMAL_DRAW) is True


def _anomaly_keys(data: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The anomaly keys as they came in (the anomaly mask as the shared step left it), when present."""
    return {key: result[key] for key in (ANOMALY_LABEL_KEY, ANOMALY_MASK_KEY) if key in data}


class AnomalySynthesisSchema(BaseModel):
    """AnomalySynthesis's own options (its transforms, labels and weights are checked together in ``__init__``)."""

    normal_p: float | None = Field(ge=0, le=1)
    normal_label: int
    p: float = Field(ge=0, le=1)


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

    The output always holds ``anomaly_label`` and ``anomaly_mask`` (empty for a normal sample). A
    chosen transform that changes no pixel (e.g. a patch pasted onto identical pixels) gives a normal
    sample too: a label always means an anomaly is there. ``ReplayCompose.replay`` reproduces the
    labels (the recording holds ``labels``, ``normal_label`` and ``normal_p``).
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
        options = validated_options(AnomalySynthesisSchema, normal_p=normal_p, normal_label=normal_label, p=p)
        super().__init__(transforms=transforms, p=options["p"])
        count = len(self.transforms)
        self.normal_p = 1.0 / (count + 1) if options["normal_p"] is None else options["normal_p"]
        self.normal_label = options["normal_label"]
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
        if self.replay_mode:  # ReplayCompose replays the recorded child, or the recorded normal draw
            applied = [
                i
                for i, t in enumerate(self.transforms)
                if getattr(t, "applied_in_replay", False) and not _is_normal_record(t)
            ]
            index = applied[0] if applied else None
        else:
            index = self.choose(force_apply)
        if index is None:
            if not self.replay_mode:
                self._record_normal_draw(data)
            check_sample_inputs(data)  # a chosen transform checks them itself; a normal draw must too
            return self._label(data, normal_outputs(data), None)
        transform = self.transforms[index]
        # the child labels its output only when it really changed a pixel: call it without the incoming label
        out = transform(force_apply=not self.replay_mode, **{k: v for k, v in data.items() if k != ANOMALY_LABEL_KEY})
        if not self.replay_mode:
            self._track_transform_params(transform, out)
        changed = out.get(ANOMALY_LABEL_KEY, 0) != 0
        return self._label(out, {}, index if changed else None, data.get(ANOMALY_LABEL_KEY))

    def _record_normal_draw(self, data: dict[str, Any]) -> None:
        """Under ReplayCompose, record a normal draw as its first child's params (a marker, never applied).

        A replay runs only what the recording says ran, and it says a compose ran when one of its
        children did: without the marker, AlbumentationsX's ``OneOf`` (or ``Sequential``, ``SomeOf``)
        would skip this synthesis in the replay, and its keys with it.
        """
        child = self.transforms[0]
        record = data.get(getattr(child, "save_key", "replay")) if getattr(child, "deterministic", False) else None
        if isinstance(record, dict):
            record[id(child)] = {NORMAL_DRAW: True}

    def _label(
        self, data: dict[str, Any], defaults: dict[str, Any], index: int | None, incoming: Any = None
    ) -> dict[str, Any]:
        """``data`` with ``anomaly_label``: child ``index``'s label, else the incoming one when an anomaly is
        already there, else ``normal_label``."""
        for key, value in defaults.items():
            data.setdefault(key, value)
        incoming = data.get(ANOMALY_LABEL_KEY) if incoming is None else incoming
        anomaly = data.get(ANOMALY_MASK_KEY)
        if index is not None:
            data[ANOMALY_LABEL_KEY] = self.labels[index]
        elif incoming is not None and anomaly is not None and np.asarray(anomaly).any():
            data[ANOMALY_LABEL_KEY] = incoming
        else:
            data[ANOMALY_LABEL_KEY] = self.normal_label
        if ANOMALY_MASK_KEY in data and ANOMALY_MASK_KEY in self.transforms[0].target_keys("mask"):
            data[ANOMALY_MASK_KEY] = carried_anomaly_mask(data[ANOMALY_MASK_KEY])  # built-ins move it after
        return data
