"""PoissonPaste: copy-paste of user-supplied objects, blended by the exact Poisson core (issue 14).

:mod:`.functional` holds the pure placement, pixel and label functions; :mod:`.transform` the
:class:`PoissonPaste` transform.
"""

from .transform import PoissonPaste

__all__ = [
    "PoissonPaste",
]
