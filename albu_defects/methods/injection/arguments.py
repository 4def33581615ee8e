"""The arguments DLI and InjectDefect share: the bank, the classes, the defect transform, the blending options."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Literal

import albumentations as A
import numpy as np
import yaml
from pydantic import BaseModel, Field, field_validator

from albu_defects.bank import DefectBank, bank_reference, check_bank_arg
from albu_defects.core.transform import IS_ALBUMENTATIONS_X
from albu_defects.core.validation import int_at_least

from .flip_affine import FlipAffine

__all__ = [
    "InjectionOptions",
    "UnsavedBank",
    "as_defect_transform",
    "bank_argument",
    "blending_options",
    "class_ids_of",
    "default_defect_transform",
    "defect_transform_fn",
    "serialized_bank",
    "yaml_classes",
]


class InjectionOptions(BaseModel):
    """The options InjectDefect and DynamicLabelInjection share, defined and validated once.

    Each transform's schema extends it (InjectDefect's ``InitSchema``, DLI's ``BalanceSchema``), so both
    reject a bad value with the same ``ValueError``.
    """

    poisson_p: float = Field(ge=0, le=1)
    poisson_mode: Literal["normal", "mixed"]
    poisson_method: Literal["auto", "opencv", "exact"]
    blend_margin: int
    placement: Literal["random", "source"]
    size_mode: Literal["relative", "absolute", "absolute_crop"]

    _blend_margin = field_validator("blend_margin", mode="before")(
        int_at_least(0, "(pixels around the defect Poisson may blend)")
    )


def default_defect_transform() -> FlipAffine:
    """Flips and a mild affine (scale 0.9-1.1, shift +-6.25 %, rotation +-10 degrees), as the reference code:
    :class:`~albu_defects.methods.injection.flip_affine.FlipAffine` with its defaults (the same draws and
    pixels as 0.1.0's ``A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.Affine(...)])``)."""
    return FlipAffine()


def as_defect_transform(value: Any, name: str = "defect_transform") -> Any:
    """A transform from itself, its serialized dict, or ``None`` (the default)."""
    if value is None:
        return default_defect_transform()
    if isinstance(value, dict):
        try:
            return A.from_dict({"transform": value})
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{name} is not a serialized Albumentations transform: {error}") from error
    if isinstance(value, (A.BasicTransform, A.BaseCompose)):
        return value
    raise ValueError(f"{name} must be an Albumentations transform (or its to_dict form), got {type(value).__name__}")


def defect_transform_fn(transform: Any, rng: np.random.Generator, py_random: random.Random) -> Callable:
    """The transform as a ``(crop, mask) -> (crop, mask)`` function drawing from the given generators."""
    transform.set_random_state(rng, py_random)
    if IS_ALBUMENTATIONS_X and isinstance(transform, FlipAffine):
        # X hands a transform called inside a running Compose that Compose's streams, not the ones set
        # here: draw from these directly (DLI's replay reproduces them, and with them the defects)
        def run_direct(crop: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            if transform.p < 1 and not py_random.random() < transform.p:
                return crop, mask
            params = transform.draw(crop.shape, py_random)
            return transform.apply(crop, **params), transform.apply_to_mask(mask, **params)

        return run_direct

    def run(crop: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = transform(image=crop, mask=mask)
        return _same_layout(out["image"], crop), _same_layout(out["mask"], mask)

    return run


def _same_layout(out: Any, given: np.ndarray) -> Any:
    """``out`` as (h, w) when ``given`` was: AlbumentationsX hands 2-D arrays to a Compose nested in
    another as (h, w, 1) and does not squeeze them back."""
    if isinstance(out, np.ndarray) and given.ndim == 2 and out.ndim == 3 and out.shape[2] == 1:
        return out[..., 0]
    return out


# =========================================================================================== shared parameters
def class_ids_of(bank: DefectBank, classes: Sequence[str | int] | None, name: str = "classes") -> list[int]:
    """Bank class ids of ``classes`` (all when ``None``); every one must have entries."""
    ids = list(range(1, len(bank.classes) + 1)) if classes is None else [bank.class_id(c) for c in classes]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{name} holds duplicates: {list(classes or [])}")
    if not ids:
        raise ValueError(f"{name} is empty; give at least one defect class (or None for all)")
    empty = [bank.classes[k - 1] for k in ids if not bank.entries_of(k)]
    if empty:
        raise ValueError(
            f"defect class(es) {empty} have no entries in the bank, so nothing can be injected for them; "
            f"pass {name}= without them (classes with entries: "
            f"{[c for k, c in enumerate(bank.classes, 1) if bank.entries_of(k)]})"
        )
    return ids


class UnsavedBank:
    """Stands for a never-saved bank where a pipeline is printed or recorded (``repr``, ``to_dict``,
    ``ReplayCompose``): it reads as a placeholder, replays with the bank it holds, and refuses YAML.

    ``A.save(..., data_format="yaml")`` raises a ``ValueError`` saying to save the bank first; JSON
    raises ``TypeError`` (it cannot encode the object). Either way no file naming a bank that does
    not exist is written.
    """

    def __init__(self, bank: DefectBank) -> None:
        self.bank = bank

    def __repr__(self) -> str:
        return f"<unsaved {self.bank!r}: call bank.save(path) before saving the pipeline>"

    __str__ = __repr__


def _refuse_unsaved(dumper: Any, marker: UnsavedBank) -> Any:
    raise ValueError(
        f"{marker.bank!r} was never saved, so a pipeline holding it cannot be written to YAML: call "
        "bank.save(path) first, or pass the bank's path"
    )


yaml.SafeDumper.add_representer(UnsavedBank, _refuse_unsaved)


def serialized_bank(bank: DefectBank | str) -> str | UnsavedBank:
    """The serialized ``bank`` argument: the bank's folder, or an :class:`UnsavedBank` placeholder."""
    if isinstance(bank, DefectBank) and bank.path is None:
        return UnsavedBank(bank)
    return bank_reference(bank)


def bank_argument(bank: Any) -> DefectBank | str:
    """A transform's ``bank`` argument as kept (:func:`~albu_defects.bank.check_bank_arg`), an
    :class:`UnsavedBank` placeholder (a replayed recording) unwrapped to its bank."""
    return check_bank_arg(bank.bank if isinstance(bank, UnsavedBank) else bank)


def blending_options(transform: Any) -> dict[str, Any]:
    """The blending arguments of :func:`~albu_defects.methods.injection.functional.apply_plan` held by a DLI transform."""
    return {
        "blend_margin": transform.blend_margin,
        "poisson_mode": transform.poisson_mode,
        "poisson_method": transform.poisson_method,
    }


def yaml_classes(classes: Sequence[str | int] | None) -> list[str | int] | None:
    if classes is None:
        return None
    if isinstance(classes, (str, int)):
        classes = [classes]
    out: list[str | int] = []
    for c in classes:
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, (str, int, np.integer)):
            raise ValueError(f"classes must be class names or int ids, got {c!r}")
        out.append(c if isinstance(c, str) else int(c))
    return out
