from .bank import *  # noqa: F403
from .bank import __all__  # noqa: F401
