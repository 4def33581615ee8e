"""Register the transforms with albumentations whenever albumentations is imported, without importing it.

``A.load`` finds a class by its serialized name in albumentations' registry, which a class joins
when its module is executed. ``import albu_defects`` must therefore leave every transform registered
by the time albumentations can be used, yet must not import albumentations itself (it imports torch
whenever torch is installed: seconds the bank commands and ``import albu_defects.bank`` do not need).

So :func:`register_with_albumentations`:

- imports the modules at once when albumentations is already imported;
- otherwise puts a one-shot finder first on ``sys.meta_path``. It wraps the loader of
  ``albumentations`` (and of our own submodules) and imports the modules right after albumentations
  has finished executing, then removes itself. When albumentations is imported from inside one of
  our own modules (``from albu_defects import CropLiq`` imports it half-way through
  ``albu_defects.core.transform``), the registration waits until that outermost import of ours has
  finished: importing the rest earlier would meet half-initialized modules.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = ["register_with_albumentations"]

ALBUMENTATIONS = "albumentations"
_OURS = "albu_defects."


def register_with_albumentations(modules: Sequence[str]) -> None:
    """Import ``modules`` now if albumentations is imported, else right after it is (see the module doc)."""
    for finder in [f for f in sys.meta_path if type(f).__name__ == _RegisterOnImport.__name__]:
        sys.meta_path.remove(finder)  # a reload of albu_defects: one finder is enough
    if ALBUMENTATIONS in sys.modules:
        _import_all(modules)
    else:
        sys.meta_path.insert(0, _RegisterOnImport(modules))


def _import_all(modules: Sequence[str]) -> None:
    for name in modules:
        importlib.import_module(name)


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loaders other finders return for albumentations and our submodules."""

    def __init__(self, modules: Sequence[str]) -> None:
        self.modules = tuple(modules)
        self.lock = threading.RLock()
        self.local = threading.local()  # depth: our modules being executed on this thread
        self.albumentations_loaded = False
        self.done = False

    def find_spec(self, name: str, path: Any, target: ModuleType | None = None) -> Any:
        if name != ALBUMENTATIONS and not name.startswith(_OURS):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _NotifyingLoader(spec.loader, self, name)
                return spec
        return None

    # called by the loaders
    def enter(self, name: str) -> None:
        if name != ALBUMENTATIONS:
            self.local.depth = getattr(self.local, "depth", 0) + 1

    def leave(self, name: str, succeeded: bool) -> None:
        if name == ALBUMENTATIONS:
            self.albumentations_loaded = succeeded
        else:
            self.local.depth -= 1
        if succeeded and self.albumentations_loaded and getattr(self.local, "depth", 0) == 0:
            self.register()

    def register(self) -> None:
        with self.lock:
            if self.done:
                return
            self.done = True
            if self in sys.meta_path:
                sys.meta_path.remove(self)
        _import_all(self.modules)


class _NotifyingLoader(importlib.abc.Loader):
    """The loader a finder returned, telling :class:`_RegisterOnImport` when its module has executed."""

    def __init__(self, loader: Any, finder: _RegisterOnImport, name: str) -> None:
        self.loader = loader
        self.finder = finder
        self.name = name

    def create_module(self, spec: Any) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # the module keeps its own loader (importlib.resources and friends ask it)
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.finder.enter(self.name)
        succeeded = False
        try:
            self.loader.exec_module(module)
            succeeded = True
        finally:
            self.finder.leave(self.name, succeeded)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.loader, attribute)
