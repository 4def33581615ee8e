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
from albumentations.core.transforms_interface import BaseTransformInitSchema
from albumentations.core.type_definitions import Targets

from .labels import (
    ANOMALY_LABEL_KEY,
    ANOMALY_MASK_KEY,
    CLASS_VECTOR_KEY,
    carried_anomaly_mask,
    check_label_mask,
    relabel_from_mask,
)
from .seeds import seed_children
from .validation import check_image, check_mask_shape, check_unit_range, clip_unit_range, image_hw

__all__ = [
    "IS_ALBUMENTATIONS_X",
    "DefectCompose",
    "DefectTransform",
    "check_sample_inputs",
    "input_image",
    "public_class_fullname",
    "store_options",
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
    """Reject what one sample's call cannot be augmented with, with a ``ValueError`` naming it.

    An unsupported image (every frame of ``images``), a float32 image outside [0, 1], a ``mask``
    (class-index or multi-hot, :func:`~albu_defects.core.labels.check_label_mask`), ``masks`` or
    ``anomaly_mask`` of another size than the image.
    """
    if data.get("image") is None and data.get("images") is not None:
        frames = [(image, f"images[{index}]") for index, image in enumerate(data["images"])]
    else:
        frames = [(input_image(data), "image")]
    for image, name in frames:
        check_unit_range(check_image(image, name), name)
    hw = image_hw(frames[0][0])
    if data.get("mask") is not None:
        check_label_mask(data["mask"], hw, "mask")
    masks = data.get("masks")
    for index, mask in enumerate(() if masks is None else masks):  # a list, or an (N, H, W) array
        check_mask_shape(mask, hw, f"masks[{index}]")
    anomaly = data.get(ANOMALY_MASK_KEY)
    if anomaly is None:
        return
    if not isinstance(anomaly, np.ndarray) or tuple(anomaly.shape[:2]) != hw:
        got = getattr(anomaly, "shape", type(anomaly).__name__)
        raise ValueError(
            f"{ANOMALY_MASK_KEY} has shape {got} but the image is {hw[0]}x{hw[1]}: when albumentations transforms "
            f"that move pixels run before this one, declare it a mask target "
            f"(A.Compose(..., additional_targets={{'{ANOMALY_MASK_KEY}': 'mask'}}))"
        )
    check_mask_shape(anomaly, hw, ANOMALY_MASK_KEY)


#: The params a transform records under ReplayCompose for a call its ``p`` skipped (AlbumentationsX only).
SKIPPED_CALL = "albu_defects_skipped_call"


def _is_skip_record(params: Any) -> bool:
    return isinstance(params, dict) and params.get(SKIPPED_CALL) is True


def _as_anomaly_mask(value: np.ndarray) -> np.ndarray:
    """An incoming ``anomaly_mask`` as a bool (H, W) array (nonzero = anomaly)."""
    plane = value[..., 0] if value.ndim == 3 else value
    return plane if plane.dtype == bool else plane != 0


def public_class_fullname(cls: type) -> str:
    """The stable serialization name of an albu-defects class: ``albu_defects.<ClassName>``.

    Pinned so YAML files keep loading when code moves between modules.
    """
    return f"albu_defects.{cls.__name__}"


_BASE_FIELDS = frozenset(BaseTransformInitSchema.model_fields)  # p, strict: kept by albumentations itself


def store_options(transform: A.BasicTransform, arguments: Mapping[str, Any]) -> None:
    """Store each option of ``transform.InitSchema`` as ``transform.<name>``; ``arguments``: ``locals()`` of ``__init__``.

    albumentations checks the ``__init__`` arguments against ``InitSchema`` before ``__init__`` runs
    (so ``arguments`` holds validated values) and serializes a transform by reading the attributes
    named after them: ``store_options(self, locals())`` after ``super().__init__(p=p)`` is the whole
    body of a transform's ``__init__`` unless an option is stored in another form.
    """
    for name in type(transform).InitSchema.model_fields:
        if name not in _BASE_FIELDS:
            setattr(transform, name, arguments[name])


class DefectTransform(A.DualTransform):
    """A DualTransform whose random parameters come from one pure hook, :meth:`draw_params`.

    Subclasses:
    - declare every ``__init__`` argument in ``InitSchema`` and store it as ``self.<same name>``
      (albumentations serializes by reading attributes of the same name): :func:`store_options`;
    - implement ``draw_params(params, data, rng)``: draw parameters from ``rng`` only (inputs are
      checked before, by :meth:`check_inputs`); render outputs in ``apply_*`` from the argument each
      gets (so extra targets and ``ReplayCompose.replay`` on another sample render correctly);
    - optionally implement ``extra_outputs(params, data, result)`` to add keys (labels, weights) to
      the result of an applied call, and ``default_outputs(data)`` for the same keys when the
      transform is skipped (``p``), so a DataLoader always sees the same keys.

    The label model (:mod:`albu_defects.core.labels`) is applied here, once for every transform,
    after ``apply_*`` and ``extra_outputs`` of an applied call:

    - the keys of :meth:`label_keys` present in the output (``class_vector``, ...) are re-derived
      from the output ``mask`` when :meth:`rewrites_mask` says the call changed it;
    - an incoming ``anomaly_mask`` is moved by :meth:`apply_to_anomaly_mask` (never by the mask
      target functions, even when a Compose declares it a mask target); when the move empties it,
      ``anomaly_label`` becomes 0;
    - float32 images are clipped to [0, 1] (inputs outside it are refused by :meth:`check_inputs`).

    Keys read besides the targets (:meth:`read_keys`) are declared in :attr:`available_keys`, so
    ``A.Compose(strict=True)`` accepts them.
    """

    #: Whether apply_* renders images (their float32 outputs are then clipped to [0, 1]).
    renders_images: ClassVar[bool] = True
    #: Whether this is the pipeline's last label step (SyncLabels): it hands ``anomaly_mask`` back as bool.
    final_labels: ClassVar[bool] = False

    # AlbumentationsX applies only declared targets (2.0.x has no Targets.IMAGES / MASKS and applies them anyway)
    _targets: ClassVar[tuple[Targets, ...]] = (
        Targets.IMAGE,
        Targets.MASK,
        Targets.BBOXES,
        Targets.KEYPOINTS,
        *(getattr(Targets, name) for name in ("IMAGES", "MASKS") if hasattr(Targets, name)),
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

    def extra_outputs(self, params: dict[str, Any], data: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        """Keys to add to the output of an applied call; ``result`` holds the rendered targets (default: none)."""
        return {}

    def default_outputs(self, data: dict[str, Any]) -> dict[str, Any]:
        """Keys to add to the output when the transform is not applied (default: none)."""
        return {}

    def check_inputs(self, data: dict[str, Any]) -> None:
        """Reject unsupported images and masks of the wrong size before drawing parameters."""
        check_sample_inputs(data)

    def label_keys(self) -> tuple[str, ...]:
        """Image-level label keys re-derived from the output ``mask`` when a call rewrites it."""
        return (CLASS_VECTOR_KEY,)

    def read_keys(self) -> tuple[str, ...]:
        """Data keys this transform reads besides its targets (declared for ``A.Compose(strict=True)``)."""
        return (*self.label_keys(), ANOMALY_MASK_KEY, ANOMALY_LABEL_KEY)

    def own_keys(self) -> tuple[str, ...]:
        """Data keys never handed to a target function, even when a Compose declares them targets.

        Their output is what :meth:`extra_outputs` (or the ``anomaly_mask`` step) makes of them, else
        the input unchanged.
        """
        return (ANOMALY_MASK_KEY,)

    def known_num_classes(self, data: dict[str, Any]) -> int | None:
        """K when the transform knows it (e.g. its bank's classes); ``None`` otherwise."""
        return None

    def rewrites_mask(self, params: dict[str, Any]) -> bool:
        """Whether an applied call with ``params`` may change the mask's content or geometry."""
        return True

    def apply_to_anomaly_mask(self, anomaly_mask: np.ndarray, **params: Any) -> np.ndarray:
        """Move a bool (H, W) ``anomaly_mask`` as this call moves pixels (default: unchanged)."""
        return anomaly_mask

    @property
    def available_keys(self) -> set[str]:
        return set(super().available_keys) | set(self.read_keys())

    # ----------------------------------------------------------------- helpers for subclasses
    def processor_label_fields(self, key: str = "bboxes") -> list[str]:
        """The label fields of the calling Compose's ``key`` processor ("bboxes" or "keypoints"); ``[]`` if none.

        Through ``get_processor``, not ``self.processors``: AlbumentationsX keeps the processors in
        the call's invocation. Outside a Compose there is no processor.
        """
        params = getattr(self.get_processor(key), "params", None)
        return list(getattr(params, "label_fields", None) or [])

    def target_keys(self, target: str) -> list[str]:
        """The data keys processed as ``target`` ("image", "images", "mask"): itself plus declared additional targets."""
        return [target] + [key for key, kind in self._additional_targets.items() if kind == target]

    # ----------------------------------------------------------------- the label model, after apply_*
    def _finish(self, params: dict[str, Any], data: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        previous = data.get(ANOMALY_MASK_KEY)
        if isinstance(previous, np.ndarray):
            before = _as_anomaly_mask(previous)
            moved = self.apply_to_anomaly_mask(before, **params)
            result[ANOMALY_MASK_KEY] = moved
            if before.any() and not moved.any() and result.get(ANOMALY_LABEL_KEY) is not None:
                result[ANOMALY_LABEL_KEY] = 0
        result.update(self.extra_outputs(params, data, result))
        if result.get("mask") is not None and result["mask"] is not data.get("mask") and self.rewrites_mask(params):
            k = self.known_num_classes(data)
            for key in self.label_keys():
                if result.get(key) is not None:
                    result[key] = relabel_from_mask(result[key], result["mask"], k, key)
        self._carry_anomaly_mask(result)
        for key in self.target_keys("image") + self.target_keys("images") if self.renders_images else ():
            value = result.get(key)
            if isinstance(value, np.ndarray):
                result[key] = clip_unit_range(value)
            elif isinstance(value, (list, tuple)):
                result[key] = type(value)(clip_unit_range(np.asarray(frame)) for frame in value)
        return result

    def _apply_targets(self, apply: Any, params: Any, args: Any, data: dict[str, Any]) -> dict[str, Any]:
        own = {key: data[key] for key in self.own_keys() if key in data}
        result = apply(params, *args, **{key: value for key, value in data.items() if key not in own})
        result.update(own)
        return result

    # ----------------------------------------------------------------- the bridge
    def _draw_checked(self, params: dict[str, Any], data: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        self.check_inputs(data)
        return self.draw_params(params, data, rng)

    def _with_defaults(self, result: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        for key, value in self.default_outputs(data).items():
            result.setdefault(key, value)
        self._carry_anomaly_mask(result)
        return result

    def _carry_anomaly_mask(self, result: dict[str, Any]) -> None:
        """A bool ``anomaly_mask`` declared a mask target leaves as uint8 (see :func:`.labels.carried_anomaly_mask`)."""
        if not self.final_labels and ANOMALY_MASK_KEY in result and ANOMALY_MASK_KEY in self.target_keys("mask"):
            result[ANOMALY_MASK_KEY] = carried_anomaly_mask(result[ANOMALY_MASK_KEY])

    if IS_ALBUMENTATIONS_X:  # pragma: no cover - exercised by the AlbumentationsX CI step

        def sample_parameters(self, params: dict[str, Any], data: dict[str, Any], targets: Any, sampling: Any) -> Any:
            return SampledParams(params=self._draw_checked(params, data, sampling.random_generator))

        def apply_in_invocation(self, invocation: Any, /, *args: Any, force_apply: bool, **kwargs: Any) -> Any:
            # X's Compose calls leaves here (not through __call__), also when ``p`` skips them.
            if self.replay_mode and _is_skip_record(getattr(self, "_replay_params", None)):
                return self._with_defaults(dict(kwargs), kwargs)  # the recorded call skipped it: its defaults
            try:
                result = super().apply_in_invocation(invocation, *args, force_apply=force_apply, **kwargs)
            except SampledParamsError:  # X rejects e.g. a mask of another size before sampling: say which
                self.check_inputs(kwargs)
                raise
            self._record_skip(kwargs)
            return self._with_defaults(result, kwargs)

        def _record_skip(self, data: dict[str, Any]) -> None:
            """Under ReplayCompose, record a call ``p`` skipped (it wrote its default keys) as a marker.

            X's replay runs only what the recording says ran, and says a container ran when one of
            its children did: unmarked, an ``A.Sequential`` / ``A.OneOf`` holding only this skipped
            transform would be skipped in the replay, and these keys with it.
            """
            record = data.get(getattr(self, "save_key", "replay")) if getattr(self, "deterministic", False) else None
            if isinstance(record, dict) and id(self) not in record and not self.replay_mode:
                record[id(self)] = {SKIPPED_CALL: True}

        def apply_with_params(self, sampled_params: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
            result = self._apply_targets(super().apply_with_params, sampled_params, args, kwargs)
            return self._finish(dict(sampled_params.params), kwargs, result)

    else:

        def __call__(self, *args: Any, force_apply: bool = False, **kwargs: Any) -> Any:
            return self._with_defaults(super().__call__(*args, force_apply=force_apply, **kwargs), kwargs)

        def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
            return self._draw_checked(params, data, self.random_generator)

        def apply_with_params(self, params: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
            result = self._apply_targets(super().apply_with_params, params, args, kwargs)
            return self._finish(params, kwargs, result)


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

    def get_dict_with_id(self) -> dict[str, Any]:
        """What ``ReplayCompose`` records (and rebuilds the compose from): every init argument, as in YAML."""
        dictionary = self.to_dict_private()
        dictionary.update({"id": id(self), "params": None})
        if "transforms" in dictionary:
            dictionary["transforms"] = [t.get_dict_with_id() for t in self.transforms]
        return dictionary

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
