"""BatchCompose's extra per-sample targets (``additional_targets``), as A.Compose takes them."""

from __future__ import annotations

import albumentations as A
import numpy as np

import albu_defects as ad


def test_additional_targets_reach_the_per_sample_transforms_and_survive_yaml(tmp_path):
    batch = ad.BatchCompose([ad.CutPaste(p=1.0), A.RandomCrop(16, 16)], additional_targets={"anomaly_mask": "mask"})
    ad.seed_pipeline(batch, 0)
    out = batch(images=[np.zeros((24, 24), np.uint8), np.full((24, 24), 200, np.uint8)])
    # the anomaly masks CutPaste wrote were cropped with their images (declared a mask target)
    assert [np.shape(m) for m in out["anomaly_mask"]] == [(16, 16), (16, 16)]
    A.save(batch, str(tmp_path / "batch.yaml"), data_format="yaml")
    loaded = A.load(str(tmp_path / "batch.yaml"), data_format="yaml")
    assert loaded.additional_targets == {"anomaly_mask": "mask"}
    assert ad.BatchCompose([ad.CutPaste()]).additional_targets == {}
