"""The albumentations 2.0.8 / AlbumentationsX API differences the contract suite needs, in one place.

- X's ``BboxParams`` / ``KeypointParams`` take ``coord_format=`` where 2.0.8 takes ``format=``;
- X returns boxes and keypoints as arrays, 2.0.8 as lists (the suite compares rows, see
  :func:`rows`);
- 2.0.8 does not save the Compose seed in YAML, X does: the suite re-seeds after ``A.load`` either way.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np

from albu_defects import IS_ALBUMENTATIONS_X

_FORMAT_KEY = "coord_format" if IS_ALBUMENTATIONS_X else "format"


def bbox_params(coord_format: str = "pascal_voc", **kwargs: Any) -> A.BboxParams:
    return A.BboxParams(**{_FORMAT_KEY: coord_format}, **kwargs)


def keypoint_params(coord_format: str = "xy", **kwargs: Any) -> A.KeypointParams:
    return A.KeypointParams(**{_FORMAT_KEY: coord_format}, **kwargs)


def rows(value: Any, columns: int) -> np.ndarray:
    """Boxes or keypoints (a list of rows or an array) as a float64 (N, columns) array."""
    array = np.asarray(value, np.float64)
    return array.reshape(-1, columns) if array.size else np.zeros((0, columns))
