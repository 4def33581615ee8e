"""CutPaste (Li et al.): cut a patch, colour-jitter it, paste it elsewhere in the same image.

:mod:`.functional`: the patch geometry and :func:`~.functional.cut_paste`; :mod:`.transform`: the
:class:`CutPaste` transform.
"""

from .transform import CutPaste

__all__ = [
    "CutPaste",
]
