"""Efficacy benchmark on real data: ``python benchmarks/efficacy/run.py --task seg|cls|anomaly --scale cpu``.

See ``runner.py`` (options: ``--help``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("ALBUMENTATIONS_NO_TELEMETRY", "1")
# Import the modules beside this file as the package ``efficacy`` (not as top-level "data", "models", ...).
sys.path[0] = str(Path(__file__).resolve().parents[1])

from efficacy.runner import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
