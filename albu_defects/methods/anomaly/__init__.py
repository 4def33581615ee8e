"""Pseudo-anomaly synthesis: the keys every anomaly transform writes (:mod:`.functional`), their base
class and the N-way :class:`AnomalySynthesis` (:mod:`.transform`).
"""

from .functional import ANOMALY_LABEL_KEY, ANOMALY_MASK_KEY
from .transform import AnomalySynthesis, AnomalyTransform

__all__ = [
    "ANOMALY_LABEL_KEY",
    "ANOMALY_MASK_KEY",
    "AnomalySynthesis",
    "AnomalyTransform",
]
