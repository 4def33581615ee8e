"""``python -m albu_defects`` runs the ``albu-defects`` command line."""

import sys

from .cli import main

sys.exit(main())
