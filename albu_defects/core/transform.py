"""Base class for albu-defects transforms, bridging albumentations 2.0.x and AlbumentationsX.

Subclasses implement one pure hook, :meth:`DefectTransform.draw_params`, that draws every random
parameter from the ``rng`` it is given and returns them as a dict; ``apply_*`` methods then call
pure functions with those parameters ("draw" is a random draw; "sample" is a data item). The bridge
below routes that one hook to whichever parameter API the installed albumentations expects:

- albumentations 2.0.x calls ``get_params_dependent_on_data(params, data)`` and seeds
  ``self.random_generator`` from ``Compose(seed=...)``;
- AlbumentationsX rejects classes that define ``get_params*`` and calls
  ``sample_parameters(params, data, targets, sampling)`` with an invocation-local generator.

Only one of the two methods is defined, chosen when this module is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import albumentations as A
import numpy as np
from albumentations.core.type_definitions import Targets

from .seeds import seed_children
from .validation import check_image, check_mask_shape, image_hw

__all__ = [
    "IS_ALBUMENTATIONS_X",
    "DefectCompose",
    "DefectTransform",
    "check_sample_inputs",
    "input_image",
    "public_class_fullname",
]

#: True when the installed ``albumentations`` package is AlbumentationsX (the AGPL successor).
IS_ALBUMENTATIONS_X: bool = hasattr(A.DualTransform, "sample_parameters")

if IS_ALBUMENTATIONS_X:  # pragma: no cover - exercised by the AlbumentationsX CI step
    from albumentations.core.invocation import get_current_invocation
    from albumentations.core.transform_params import SampledParams, SampledParamsError


def input_image(data: dict[str, Any]) -> np.ndarray | None:
    """The image of a call: ``image``, else the first of ``images``, else ``None``."""
    if data.get("image") is not None:
        return data["image"]
    return data["images"][0] if data.get("images") is not None else None


def check_sample_inputs(data: dict[str, Any]) -> None:
    """Reject an unsupported image, and a ``mask`` or ``masks`` of another size, of one sample's call."""
    image = check_image(input_image(data), "image")
    hw = image_hw(image)
    if data.get("mask") is not None:
        check_mask_shape(data["mask"], hw, "mask")
    masks = data.get("masks")
    for index, mask in enumerate(() if masks is None else masks):  # a list, or an (N, H, W) array
        check_mask_shape(mask, hw, f"masks[{index}]")


def public_class_fullname(cls: type) -> str:
    """The stable serialization name of an albu-defects class: ``albu_defects.<ClassName>``.

    Pinned so YAML files keep loading when code moves between modules.
    """
    return f"albu_defects.{cls.__name__}"


class DefectTransform(A.DualTransform):
    """A DualTransform whose random parameters come from one pure hook, :meth:`draw_params`.

    Subclasses:
    - declare every ``__init__`` argument in ``InitSchema`` and store it as ``self.<same name>``
      (albumentations serializes by reading attributes of the same name);
    - implement ``draw_params(params, data, rng)``: draw parameters from ``rng`` only (inputs are
      checked before, by :meth:`check_inputs`); render outputs in ``apply_*``, not here;
    - optionally implement ``extra_outputs(params, data)`` to add keys (labels, weights) to the
      result of an applied call, and ``default_outputs(data)`` for the same keys when the
      transform is skipped (``p``), so a DataLoader always sees the same keys.
    """

    # AlbumentationsX applies only declared targets (2.0.x has no Targets.MASKS and applies masks anyway)
    _targets: ClassVar[tuple[Targets, ...]] = (Targets.IMAGE, Targets.MASK, Targets.BBOXES, Targets.KEYPOINTS) + (
        (Targets.MASKS,) if hasattr(Targets, "MASKS") else ()
    )

    @classmethod
    def get_class_fullname(cls) -> str:
        return public_class_fullname(cls)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # 0.1.0 called the hook ``sample``; a subclass still defining it would silently draw nothing
        if "sample" in vars(cls) and "draw_params" not in vars(cls):
            raise TypeError(
                f"{cls.__name__} defines sample(params, data, rng); the DefectTransform hook is now called "
                "draw_params(params, data, rng): rename the method"
            )

    # ----------------------------------------------------------------- hooks for subclasses
    def draw_params(self, params: dict[str, Any], data: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Draw this call's parameters from ``rng``. ``params`` holds ``shape``; ``data`` the inputs."""
        return {}

    def extra_outputs(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Keys to add to the output of an applied call (default: none)."""
        return {}

    def default_outputs(self, data: dict[str, Any]) -> dict[str, Any]:
        """Keys to add to the output when the transform is not applied (default: none)."""
        return {}

    def check_inputs(self, data: dict[str, Any]) -> None:
        """Reject unsupported images and masks of the wrong size before drawing parameters."""
        check_sample_inputs(data)

    # ----------------------------------------------------------------- helpers for subclasses
    def processor_label_fields(self, key: str = "bboxes") -> list[str]:
        """The label fields of the calling Compose's ``key`` processor ("bboxes" or "keypoints"); ``[]`` if none.

        Through ``get_processor``, not ``self.processors``: AlbumentationsX keeps the processors in
        the call's invocation. Outside a Compose there is no processor.
        """
        params = getattr(self.get_processor(key), "params", None)
        return list(getattr(params, "label_fields", None) or [])

    def partner_annotations(self, partner: Mapping[str, Any], key: str, name: str, host: np.ndarray) -> np.ndarray:
        """A partner sample's ``key`` ("bboxes" or "keypoints") in albumentations' internal format, like ``host``.

        For transforms that take extra samples through a metadata key (ContextMix's partners,
        PoissonPaste's donors): the rows are given in the calling Compose's format with its label
        fields, and converted by its processor (outside a Compose they are already internal). Raises
        ``ValueError`` when they are missing, lack label fields, or have other columns than ``host``.
        """
        if partner.get(key) is None:
            raise ValueError(f"the host has {key} but {name} has none: pass its {key} (an empty list if it has none)")
        processor = self.get_processor(key)
        if processor is None:  # standalone call: annotations are already in the internal format
            converted = np.asarray(partner[key], dtype=np.float64)
        else:
            label_fields = self.processor_label_fields(key)
            missing = [field for field in label_fields if field not in partner]
            if missing:
                raise ValueError(f"{name} has {key} but lacks their label fields {missing}")
            temp = {"image": partner["image"], key: partner[key], **{field: partner[field] for field in label_fields}}
            # A 2.0's preprocess() records whether the input was a list; keep the host's record intact.
            record = getattr(processor, "is_sequence_input", None)  # AlbumentationsX keeps no such record
            saved = dict(record) if record is not None else None
            try:
                processor.preprocess(temp)
            finally:
                if record is not None:
                    record.clear()
                    record.update(saved)
            converted = np.asarray(temp[key], dtype=np.float64)
        columns = host.shape[1] if host.ndim == 2 and host.size else None
        if converted.size == 0:
            return converted.reshape(0, columns or (4 if key == "bboxes" else 2))
        if converted.ndim != 2:
            raise ValueError(f"{name}['{key}'] must be a list of rows, got shape {converted.shape}")
        if columns is not None and converted.shape[1] != columns:
            raise ValueError(
                f"{name}['{key}'] has {converted.shape[1]} columns after conversion but the host's have {columns}: "
                "give partners the same extra columns and label fields as the host"
            )
        return converted

    # ----------------------------------------------------------------- the bridge
    def _draw_checked(self, params: dict[str, Any], data: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        self.check_inputs(data)
        return self.draw_params(params, data, rng)

    def _with_defaults(self, result: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        for key, value in self.default_outputs(data).items():
            result.setdefault(key, value)
        return result

    if IS_ALBUMENTATIONS_X:  # pragma: no cover - exercised by the AlbumentationsX CI step

        def sample_parameters(self, params: dict[str, Any], data: dict[str, Any], targets: Any, sampling: Any) -> Any:
            return SampledParams(params=self._draw_checked(params, data, sampling.random_generator))

        def apply_in_invocation(self, invocation: Any, /, *args: Any, force_apply: bool, **kwargs: Any) -> Any:
            # X's Compose calls leaves here (not through __call__), also when ``p`` skips them.
            try:
                result = super().apply_in_invocation(invocation, *args, force_apply=force_apply, **kwargs)
            except SampledParamsError:  # X rejects e.g. a mask of another size before sampling: say which
                self.check_inputs(kwargs)
                raise
            return self._with_defaults(result, kwargs)

        def apply_with_params(self, sampled_params: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
            result = super().apply_with_params(sampled_params, *args, **kwargs)
            result.update(self.extra_outputs(dict(sampled_params.params), kwargs))
            return result

    else:

        def __call__(self, *args: Any, force_apply: bool = False, **kwargs: Any) -> Any:
            return self._with_defaults(super().__call__(*args, force_apply=force_apply, **kwargs), kwargs)

        def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
            return self._draw_checked(params, data, self.random_generator)

        def apply_with_params(self, params: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
            result = super().apply_with_params(params, *args, **kwargs)
            result.update(self.extra_outputs(params, kwargs))
            return result


class DefectCompose(A.BaseCompose):
    """Base of the albu-defects composes: subclasses implement :meth:`run`; this bridges A and X.

    albumentations 2.0.x calls a nested compose through ``__call__``. AlbumentationsX calls it through
    ``apply_in_invocation`` inside its parent's invocation (whose random streams ``self.random_generator``
    and ``self.py_random`` then return), and a compose called on its own must open an invocation for
    its children. Both routes end in :meth:`run`.
    """

    @classmethod
    def get_class_fullname(cls) -> str:
        return public_class_fullname(cls)

    def run(self, data: dict[str, Any], force_apply: bool = False) -> dict[str, Any]:
        """Apply the compose to ``data`` (the named inputs); draw randomness from ``self.random_generator``/``py_random``."""
        raise NotImplementedError

    def set_random_seed(self, seed: int | None) -> None:
        """Seed this compose with ``seed`` and each child with its own seed derived from it.

        albumentations gives every child the parent's seed, which ties their draws (and, in
        AnomalySynthesis, a child's first draws to the choice that selected it); see :mod:`.seeds`.
        """
        super().set_random_seed(seed)
        seed_children(self, seed)

    def __call__(self, *args: Any, force_apply: bool = False, **data: Any) -> dict[str, Any]:
        if args:
            raise KeyError("pass the data as named arguments, for example: compose(image=image)")
        if IS_ALBUMENTATIONS_X and get_current_invocation() is None:  # pragma: no cover - AlbumentationsX
            invocation = self._new_invocation_context()
            with invocation:
                return self.run(data, force_apply)
        return self.run(data, force_apply)

    if IS_ALBUMENTATIONS_X:  # pragma: no cover - exercised by the AlbumentationsX CI step

        def apply_in_invocation(self, invocation: Any, /, *args: Any, force_apply: bool, **data: Any) -> Any:
            if args:
                raise KeyError("pass the data as named arguments, for example: compose(image=image)")
            return self.run(data, force_apply)
