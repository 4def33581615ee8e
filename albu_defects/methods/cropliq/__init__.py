"""CropLiq (Le & Kim): liquify a random patch of the object, its border held fixed.

:mod:`.functional`: displacement fields, the fold-free scale, the warp, regions and patches;
:mod:`.transform`: the :class:`CropLiq` transform.
"""

from .transform import CropLiq

__all__ = [
    "CropLiq",
]
