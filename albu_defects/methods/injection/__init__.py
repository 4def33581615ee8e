"""Injecting real bank defects into images: the shared functions and the two transforms.

:mod:`.functional`: adapt, scale, transform, place and inject one defect (pure functions);
:mod:`.plan`: draw and prepare one injection; :mod:`.dli`: :class:`DynamicLabelInjection` (batch
balancing; the method is described there) and its batch formats (:mod:`.batch`); :mod:`.transform`:
:class:`InjectDefect` (per sample); :mod:`.arguments`: the arguments both share.
"""

from .dli import DynamicLabelInjection
from .transform import InjectDefect

__all__ = [
    "DynamicLabelInjection",
    "InjectDefect",
]
