"""Guided-Crop (Orti, Moreno-Noguer, Puig): real defect blobs pasted on defect-free images, classes loss-guided.

:mod:`.functional`: the configuration, blob crops, compositing and labels of one sample (the method
itself is described there); :mod:`.stage`: the global stage; :mod:`.transform`: the
:class:`GuidedCropPaste` transform; :mod:`.synthesis`: offline datasets (:func:`synthesize`,
:func:`synthesize_to_folder`).
"""

from .functional import CLASS_VECTOR_KEY
from .synthesis import synthesize, synthesize_to_folder
from .transform import GuidedCropPaste

__all__ = [
    "CLASS_VECTOR_KEY",
    "GuidedCropPaste",
    "synthesize",
    "synthesize_to_folder",
]
