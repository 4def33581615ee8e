"""Loss-guided class probabilities, shared live with every DataLoader worker: :class:`ClassWeights`.

Guided-Crop (Orti et al.) draws the classes of its synthetic defects from probabilities derived
from the per-class loss of the last validation: a class the model gets wrong more often is pasted
more often (not simply the rarest class). :class:`ClassWeights` holds those probabilities:

- :func:`losses_to_probabilities` maps losses to probabilities, ``mode="proportional"`` (``p_k``
  proportional to ``loss_k``, the default) or ``mode="softmax"`` (``p_k`` proportional to
  ``exp(loss_k / temperature)``), then mixes in a floor: ``p = (1 - floor) * p + floor / K``, so
  every class keeps at least ``floor`` of its uniform share and none starves;
- :meth:`ClassWeights.update` applies it and records the update in :attr:`ClassWeights.history`;
  until the first update the probabilities are uniform.

Sharing with DataLoader workers
    The probabilities live in a ``multiprocessing.shared_memory`` block (a version counter and K
    float64 values, written under a sequence lock so a reader never sees half an update). A
    transform holding a ``ClassWeights`` reads the current values on every call, so an ``update``
    in the training process reaches running workers (``persistent_workers=True`` included) without
    recreating them: at the latest for the first batch *requested* after the update (batches the
    DataLoader has already prefetched were drawn with the old values).

    Forked workers inherit the mapping; spawned workers (and ``pickle`` / ``copy.deepcopy``) get
    the block's name and attach to it. Only the creating process may call ``update``.

Lifetime
    The creating process owns the block: ``close()``, leaving a ``with`` block, garbage collection
    of the object or interpreter exit unlinks it (workers that are attached keep a valid mapping
    until they exit, but nothing can attach any more). Keep the owner alive as long as workers may
    start. If the owner is killed (SIGKILL), Python's resource tracker unlinks the block when the
    owner's process tree ends.

Resource-tracker caveats (Python < 3.13)
    ``SharedMemory(name=...)`` registers an *attached* block with the attaching process's resource
    tracker, which then unlinks it when that process ends (bpo-38119), destroying the owner's block
    and warning about "leaked shared_memory objects". Attaching here never registers (``track=False``
    on Python >= 3.13, the block mapped directly before), so only the owner is responsible for the
    block, and nothing process-wide is touched (other threads' blocks stay registered). The consequence: a block attached by an unrelated process (not a child of the owner) is not
    cleaned up by that process, by design.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import sys
import time
import weakref
from collections.abc import Mapping, Sequence
from multiprocessing import shared_memory
from typing import Any, NamedTuple

try:
    import _posixshmem  # CPython's POSIX shared memory, what multiprocessing.shared_memory is built on
except ImportError:  # Windows
    _posixshmem = None

import numpy as np

from .validation import check_choice

__all__ = ["WEIGHT_MODES", "ClassWeights", "WeightUpdate", "losses_to_probabilities"]

#: Ways of mapping losses to probabilities.
WEIGHT_MODES: tuple[str, ...] = ("proportional", "softmax")

_HEADER_WORDS = 2  # int64: [sequence counter (odd while writing), version (number of updates)]
_READ_RETRIES = 10_000


def _check_settings(mode: str, temperature: float, floor: float) -> tuple[str, float, float]:
    check_choice(mode, WEIGHT_MODES, "mode")
    temperature = float(temperature)
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0 (softmax of loss / temperature), got {temperature}")
    floor = float(floor)
    if not 0.0 <= floor <= 1.0:
        raise ValueError(
            f"floor must lie in [0, 1] (the share of the uniform probability every class keeps), got {floor}"
        )
    return mode, temperature, floor


def losses_to_probabilities(
    losses: Sequence[float] | np.ndarray, mode: str = "proportional", temperature: float = 1.0, floor: float = 0.1
) -> np.ndarray:
    """Class probabilities (float64, summing to 1) from per-class losses: higher loss, higher probability.

    ``mode="proportional"``: ``p_k = loss_k / sum(loss)`` (losses must be >= 0; all zero gives
    uniform). ``mode="softmax"``: ``p_k`` proportional to ``exp(loss_k / temperature)`` (any finite
    losses). Then ``p = (1 - floor) * p + floor / K``: every class keeps at least ``floor / K``.
    """
    mode, temperature, floor = _check_settings(mode, temperature, floor)
    values = np.asarray(losses, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(
            f"per_class_loss must be a non-empty 1-D sequence (one loss per class), got shape {values.shape}"
        )
    if not np.isfinite(values).all():
        raise ValueError(f"per_class_loss must be finite (no NaN or inf), got {values.tolist()}")
    k = values.size
    if mode == "softmax":
        scaled = values / temperature
        raw = np.exp(scaled - scaled.max())
        raw /= raw.sum()
    else:
        if (values < 0).any():
            raise ValueError(f"per_class_loss must be >= 0 with mode='proportional', got {values.tolist()}")
        total = values.sum()
        raw = values / total if total > 0 else np.full(k, 1.0 / k)
    probabilities = (1.0 - floor) * raw + floor / k
    return probabilities / probabilities.sum()


class WeightUpdate(NamedTuple):
    """One :meth:`ClassWeights.update`: the version it produced, the losses given and the probabilities."""

    version: int
    losses: np.ndarray
    probabilities: np.ndarray


class _MappedBlock:
    """An existing POSIX shared-memory block, mapped without telling any resource tracker.

    What ``SharedMemory(name=..., track=False)`` does on Python >= 3.13, for the versions before it:
    the block is opened and mapped the way ``SharedMemory`` does it, minus its unconditional
    ``resource_tracker.register``. (Swapping the process-wide ``register`` for a no-op while
    attaching, as 0.1.0 did, also dropped the registration of any block another thread created
    meanwhile, which then leaked in /dev/shm when the process was killed.) Offers what
    :class:`ClassWeights` uses of a ``SharedMemory``: ``name``, ``buf``, ``close``.
    """

    def __init__(self, name: str) -> None:
        fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
        try:
            self._mmap = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        self._buf: memoryview | None = memoryview(self._mmap)
        self.name = name

    @property
    def buf(self) -> memoryview | None:
        return self._buf

    def close(self) -> None:
        """Unmap (``BufferError`` while an array still views the buffer, as ``SharedMemory.close``)."""
        if self._buf is not None:
            self._buf.release()
            self._buf = None
            self._mmap.close()

    def unlink(self) -> None:  # pragma: no cover - only the owner unlinks, and it holds a SharedMemory
        raise RuntimeError("an attached ClassWeights block is never unlinked here")


def _attach_block(name: str) -> shared_memory.SharedMemory | _MappedBlock:
    """Open an existing block without registering it with any resource tracker (only the owner is responsible)."""
    try:
        if sys.version_info >= (3, 13):
            return shared_memory.SharedMemory(name=name, track=False)
        if _posixshmem is not None:  # SharedMemory registers attached blocks too before 3.13 (bpo-38119)
            return _MappedBlock(name)
        return shared_memory.SharedMemory(name=name)  # Windows: no resource tracker there
    except FileNotFoundError:
        raise ValueError(
            f"ClassWeights shared memory {name!r} no longer exists: the process that created it closed it "
            "or ended (keep the owning ClassWeights alive while workers run)"
        ) from None


def _release(block: shared_memory.SharedMemory, owner_pid: int) -> None:
    """Close this process's mapping; the owning process also unlinks the block."""
    with contextlib.suppress(BufferError):  # a view is still alive somewhere; the mapping goes with it
        block.close()
    if os.getpid() == owner_pid:
        with contextlib.suppress(FileNotFoundError):
            block.unlink()


def _attach(name: str, classes: tuple[str, ...], mode: str, temperature: float, floor: float) -> ClassWeights:
    return ClassWeights._attached(name, classes, mode, temperature, floor)


class ClassWeights:
    """Per-class probabilities for Guided-Crop, updated from validation losses, live in every worker.

    Args:
        classes: the class names (``bank.classes``) or their number K.
        mode: ``"proportional"`` (default) or ``"softmax"``; see :func:`losses_to_probabilities`.
        temperature: softmax temperature, in loss units.
        floor: share of the uniform probability every class keeps, in [0, 1].

    Reading :attr:`probabilities` is cheap (a few microseconds) and always returns a consistent
    snapshot. ``update`` is only allowed in the creating process. Pickles as the shared-memory
    name (see the module docstring for lifetime and resource-tracker caveats)::

        weights = ClassWeights(bank.classes)
        transform = GuidedCropPaste(bank="banks/mt", class_weights=weights)
        ...  # every N epochs, after validation:
        weights.update(per_class_val_loss)  # seen by the next batches the DataLoader requests
    """

    def __init__(
        self,
        classes: int | Sequence[str],
        *,
        mode: str = "proportional",
        temperature: float = 1.0,
        floor: float = 0.1,
    ) -> None:
        self._classes = self._check_classes(classes)
        self.mode, self.temperature, self.floor = _check_settings(mode, temperature, floor)
        k = len(self._classes)
        self._block = shared_memory.SharedMemory(create=True, size=8 * (_HEADER_WORDS + k))
        self._owner_pid = os.getpid()
        self._history: list[WeightUpdate] = []
        self._finalizer = weakref.finalize(self, _release, self._block, self._owner_pid)
        self._header()[:] = 0
        self._values()[:] = 1.0 / k

    @classmethod
    def _attached(
        cls, name: str, classes: tuple[str, ...], mode: str, temperature: float, floor: float
    ) -> ClassWeights:
        self = cls.__new__(cls)
        self._classes = tuple(classes)
        self.mode, self.temperature, self.floor = mode, temperature, floor
        self._block = _attach_block(name)
        self._owner_pid = -1  # never the owner
        self._history = []
        self._finalizer = weakref.finalize(self, _release, self._block, -1)
        return self

    @staticmethod
    def _check_classes(classes: int | Sequence[str]) -> tuple[str, ...]:
        if isinstance(classes, (int, np.integer)) and not isinstance(classes, bool):
            if classes < 1:
                raise ValueError(f"classes must be >= 1 (the number of defect classes), got {classes}")
            return tuple(f"class_{k}" for k in range(1, int(classes) + 1))
        if isinstance(classes, str) or not isinstance(classes, Sequence):
            raise ValueError(f"classes must be a list of class names (bank.classes) or their number, got {classes!r}")
        names = tuple(str(c) for c in classes)
        if not names or len(set(names)) != len(names) or not all(names):
            raise ValueError(f"classes must be distinct non-empty names, got {list(classes)}")
        return names

    # -- shared block ------------------------------------------------------------------------------
    def _buffer(self) -> memoryview:
        buffer = self._block.buf
        if buffer is None:
            raise ValueError("this ClassWeights is closed")
        return buffer

    def _header(self) -> np.ndarray:
        return np.ndarray((_HEADER_WORDS,), np.int64, buffer=self._buffer())

    def _values(self) -> np.ndarray:
        return np.ndarray((len(self._classes),), np.float64, buffer=self._buffer(), offset=8 * _HEADER_WORDS)

    def snapshot(self) -> tuple[int, np.ndarray]:
        """``(version, probabilities)`` read consistently (never half of an update)."""
        header, values = self._header(), self._values()
        for _ in range(_READ_RETRIES):
            before = int(header[0])
            if before % 2 == 0:
                probabilities, version = values.copy(), int(header[1])
                if int(header[0]) == before:
                    return version, probabilities
            time.sleep(0)
        raise RuntimeError("ClassWeights: could not read a consistent snapshot (the writer seems stuck)")

    # -- public API --------------------------------------------------------------------------------
    @property
    def classes(self) -> tuple[str, ...]:
        """Class names; entry ``k - 1`` of the probabilities is class id ``k``."""
        return self._classes

    def probabilities_of(self, classes: Sequence[str]) -> np.ndarray:
        """The current probabilities of ``classes`` (e.g. ``bank.classes``), read by name, in that order.

        Every name must be one of :attr:`classes` (else a ``ValueError`` names the missing ones:
        weights are never matched by position). Not renormalised: classes held here that
        ``classes`` lacks keep their share.
        """
        names = [str(c) for c in classes]
        missing = [c for c in names if c not in self._classes]
        if missing:
            raise ValueError(
                f"class_weights has {self.num_classes} classes {list(self._classes)} but not {missing} of the bank's "
                f"classes {names}; create it with ClassWeights(bank.classes) (it is read by class name, not position)"
            )
        values = self.probabilities
        return np.array([values[self._classes.index(c)] for c in names], np.float64)

    @property
    def num_classes(self) -> int:
        return len(self._classes)

    @property
    def probabilities(self) -> np.ndarray:
        """The current probabilities (a float64 copy summing to 1), as every process sees them."""
        return self.snapshot()[1]

    @property
    def version(self) -> int:
        """How many updates have been made (0: still uniform)."""
        return self.snapshot()[0]

    @property
    def history(self) -> list[WeightUpdate]:
        """Every update made through this object, oldest first (kept in the owning process only)."""
        return list(self._history)

    @property
    def name(self) -> str:
        """Name of the shared-memory block."""
        return self._block.name

    @property
    def is_owner(self) -> bool:
        """Whether this process created the block (and may update and unlink it)."""
        return os.getpid() == self._owner_pid

    @property
    def closed(self) -> bool:
        return self._block.buf is None

    def losses_as_array(self, per_class_loss: Any) -> np.ndarray:
        """``per_class_loss`` (K numbers in class order, a ``{name: loss}`` mapping, or a tensor) as float64."""
        if isinstance(per_class_loss, Mapping):
            unknown = sorted(set(map(str, per_class_loss)) - set(self._classes))
            missing = [c for c in self._classes if c not in per_class_loss]
            if unknown or missing:
                raise ValueError(
                    f"per_class_loss must give one loss per class {list(self._classes)}; "
                    f"missing {missing}, unknown {unknown}"
                )
            per_class_loss = [per_class_loss[c] for c in self._classes]
        elif hasattr(per_class_loss, "detach"):  # a torch tensor, without importing torch
            per_class_loss = per_class_loss.detach().cpu().numpy()
        try:
            values = np.asarray(per_class_loss, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"per_class_loss must be {self.num_classes} numbers, got {per_class_loss!r}") from None
        if values.shape != (self.num_classes,):
            raise ValueError(
                f"per_class_loss must hold one loss per class ({self.num_classes}: {list(self._classes)}), "
                f"got shape {values.shape}"
            )
        return values

    def update(self, per_class_loss: Any) -> np.ndarray:
        """Set the probabilities from per-class losses (see :func:`losses_to_probabilities`); returns them.

        ``per_class_loss``: K numbers in class order, a ``{class name: loss}`` mapping, or a 1-D
        tensor. Visible at once to every process holding this object (workers included).
        """
        if not self.is_owner:
            raise RuntimeError(
                "ClassWeights.update is only allowed in the process that created the object "
                "(call it in the training loop, not inside a DataLoader worker)"
            )
        losses = self.losses_as_array(per_class_loss)
        probabilities = losses_to_probabilities(losses, self.mode, self.temperature, self.floor)
        header, values = self._header(), self._values()
        sequence = int(header[0])
        header[0] = sequence + 1  # odd: readers retry until the write is complete
        values[:] = probabilities
        header[1] = header[1] + 1
        header[0] = sequence + 2
        version = int(header[1])
        self._history.append(WeightUpdate(version, losses.copy(), probabilities.copy()))
        return probabilities.copy()

    def close(self) -> None:
        """Release this process's mapping; in the owning process also destroy the block (idempotent)."""
        self._finalizer()

    def __enter__(self) -> ClassWeights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        if self.closed:
            raise ValueError("cannot pickle a closed ClassWeights")
        return _attach, (self.name, self._classes, self.mode, self.temperature, self.floor)

    def __repr__(self) -> str:
        if self.closed:
            return f"ClassWeights(classes={list(self._classes)}, closed)"
        version, probabilities = self.snapshot()
        shown = ", ".join(f"{c}: {p:.3f}" for c, p in zip(self._classes, probabilities, strict=True))
        return f"ClassWeights({{{shown}}}, mode={self.mode!r}, version={version}, name={self.name!r})"
