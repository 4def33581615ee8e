"""ContextMix (Kim et al.): a whole partner image resized into a random box, labels mixed by area.

:mod:`.functional` holds the box, label and pixel functions (shared with the torch batch op in
:mod:`albu_defects.pytorch`); :mod:`.transform` the :class:`ContextMix` transform.
"""

from .transform import ContextMix

__all__ = [
    "ContextMix",
]
