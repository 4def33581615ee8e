"""``python -m albu_defects`` runs the ``albu-defects`` command line."""

import sys

from albu_defects.tools.cli import main

sys.exit(main())
