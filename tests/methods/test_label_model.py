"""Issue 11: labels stay true through whole pipelines (breaks 1, 2, 3, 4 and 11, and SyncLabels).

Every test of a numbered break failed on 72696d0. The model (README "Labels"): pixel masks are the
truth; ``class_vector`` (float32 (K,)) is the one image-level defect label, re-derived from the
output mask by every albu-defects transform that changes mask content or geometry;
``anomaly_mask`` / ``anomaly_label`` are the pseudo-anomaly keys; pseudo-anomalies enter ``mask``
only under a ``mask_class_id`` the user names.
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

import albu_defects as ad

from .label_helpers import (
    assert_labels_match_mask,
    classes_in_mask,
    defect_tile,
    expected_vector,
    free_tile,
    gray_bank,
)

K = 5  # Magnetic Tile classes in the bundled-sample bank
SEEDS = range(8)


@pytest.fixture(scope="module")
def cover_bank(tmp_path_factory) -> str:
    """Class 1 ("spot") covers its whole 40x40 source image."""
    return gray_bank(tmp_path_factory.mktemp("labels") / "cover", full_cover=True)


# ============================================================================ break 1: stale labels
@pytest.mark.parametrize("anomaly", ["CropLiq", "CutPaste"])
def test_break1_class_vector_follows_a_later_anomaly_written_into_the_mask(mt_bank, anomaly):
    """Issue example: GuidedCropPaste then CropLiq(mask_class_id=5) gave class_vector [0 0 0 1 0], mask {4, 5}."""
    tile = free_tile()
    later = getattr(ad, anomaly)(p=1, mask_class_id=5)
    for seed in SEEDS:
        out = A.Compose([ad.GuidedCropPaste(bank=mt_bank, p=1), later], seed=seed)(
            image=tile.image, mask=tile.class_mask
        )
        assert 5 in classes_in_mask(out["mask"])
        assert_labels_match_mask(out, K)


def test_break1_anomaly_transform_updates_an_incoming_class_vector():
    image = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    for transform in (ad.CutPaste(p=1, mask_class_id=2), ad.CropLiq(p=1, region="image", mask_class_id=2)):
        out = A.Compose([transform], seed=0)(image=image, mask=mask, class_vector=np.zeros(3, np.float32))
        np.testing.assert_array_equal(out["class_vector"], np.array([0, 1, 0], np.float32))
        assert_labels_match_mask(out, 3)


def test_break1_inject_then_guided_keeps_every_label_key_true(mt_bank):
    """InjectDefect's label missed classes a later GuidedCropPaste pasted."""
    tile = free_tile()
    inject = ad.InjectDefect(mt_bank, classes=["Blowhole"], p=1)
    paste = ad.GuidedCropPaste(bank=mt_bank, weights=[0, 1, 1, 1, 1], skip_defective=False, p=1)
    mixed = 0
    for seed in SEEDS:
        out = A.Compose([inject, paste], seed=seed)(image=tile.image, mask=tile.class_mask)
        mixed += len(classes_in_mask(out["mask"])) >= 2
        assert_labels_match_mask(out, K)
    assert mixed  # some draws keep the injected Blowhole beside the pasted classes


def test_break1_inject_defect_drops_a_class_its_defect_fully_covers(cover_bank):
    """The label was the input's classes plus the injected one, so a class painted over stayed in it."""
    image = np.full((40, 40), 30, np.uint8)
    mask = np.zeros((40, 40), np.uint8)
    mask[5, 5] = 2  # one pixel of class 2, under the injected full-image defect
    inject = ad.InjectDefect(
        cover_bank, classes=["spot"], poisson_p=0.0, placement="source", defect_transform=A.NoOp(),
        only_defect_free=False, p=1,
    )  # fmt: skip
    out = A.Compose([inject], seed=0)(image=image, mask=mask, class_vector=np.array([0, 1], np.float32))
    assert classes_in_mask(out["mask"]) == {1}
    np.testing.assert_array_equal(out["class_vector"], np.array([1, 0], np.float32))
    legacy = ad.InjectDefect(**{**inject.get_transform_init_args(), "label_key": "label"})
    out = A.Compose([legacy], seed=0)(image=image, mask=mask, label=np.array([0, 1], np.uint8))
    np.testing.assert_array_equal(out["label"], np.array([1, 0], np.uint8))
    assert out["label"].dtype == np.uint8  # a label keeps its own format


def test_break1_dlicollate_accepts_samples_from_a_pipeline_of_our_transforms(mt_bank):
    """Samples whose class_vector went stale made DLICollate raise 'labels must agree with masks'."""
    from albu_defects.pytorch import DLICollate

    tile = free_tile()
    pipeline = A.Compose([ad.GuidedCropPaste(bank=mt_bank, p=1), ad.CutPaste(p=1, mask_class_id=1)])
    samples = []
    for seed in SEEDS:
        pipeline.set_random_seed(seed)
        samples.append(pipeline(image=tile.image, mask=tile.class_mask))
    samples += [{"image": tile.image, "mask": tile.class_mask, "class_vector": np.zeros(K, np.float32)}] * 3
    collate = DLICollate(ad.DynamicLabelInjection(mt_bank, seed=0), collate_fn=list, label_key="class_vector")
    batch = collate(samples)
    for sample in batch:
        assert_labels_match_mask(sample, K)


def test_break1_dlicollate_rederives_the_class_vector_of_injected_samples(mt_bank):
    """DLICollate updated its label_key ("label") and left a sample's class_vector stale."""
    from albu_defects.pytorch import DLICollate

    tile = free_tile()
    samples = [{"image": tile.image, "mask": tile.class_mask, "class_vector": np.zeros(K, np.float32)}] * 4
    batch = DLICollate(ad.DynamicLabelInjection(mt_bank, seed=0), collate_fn=list)(samples)
    assert all(sample["dli"]["class_id"] > 0 for sample in batch)
    for sample in batch:
        assert_labels_match_mask(sample, K)


# ============================================================================ break 2: anomaly into mask
@pytest.mark.parametrize(
    "make",
    [
        lambda: ad.CropLiq(p=1),
        lambda: ad.CutPaste(p=1),
        lambda: ad.CutPaste(variant="scar", p=1),
        lambda: ad.AnomalySynthesis([ad.CropLiq(), ad.CutPaste()], normal_p=0.0),
    ],
    ids=["CropLiq", "CutPaste", "CutPaste-scar", "AnomalySynthesis"],
)
def test_break2_a_pseudo_anomaly_never_enters_the_class_mask_by_default(make):
    """The old default mask_class_id=1 wrote every anomaly as class 1 (Blowhole on Magnetic Tile)."""
    tile = defect_tile("Crack")
    for seed in range(4):
        out = A.Compose([make()], seed=seed)(image=tile.image, mask=tile.class_mask)
        assert out["anomaly_mask"].any() and out["anomaly_label"] != 0
        np.testing.assert_array_equal(out["mask"], tile.class_mask)


def test_a_named_mask_class_id_writes_the_anomaly_into_the_mask():
    tile = defect_tile("Crack")
    out = A.Compose([ad.CutPaste(p=1, mask_class_id=5)], seed=0)(image=tile.image, mask=tile.class_mask)
    np.testing.assert_array_equal(out["mask"][out["anomaly_mask"]], 5)
    np.testing.assert_array_equal(out["mask"][~out["anomaly_mask"]], tile.class_mask[~out["anomaly_mask"]])


# ============================================================================ break 3: render in apply
def test_break3_guided_crop_renders_an_extra_mask_target_from_its_own_input(mt_bank):
    """apply_to_mask returned the mask rendered in sample(), so out['roi'] was out['mask']."""
    tile = free_tile()
    roi = np.zeros_like(tile.class_mask)
    roi[: roi.shape[0] // 2] = 2  # another mask: class 2 on the top half
    for seed in range(4):
        transform = ad.GuidedCropPaste(bank=mt_bank, p=1, skip_defective=False)
        both = A.Compose([transform], additional_targets={"roi": "mask"}, seed=seed)(
            image=tile.image, mask=tile.class_mask, roi=roi
        )
        alone = A.Compose([ad.GuidedCropPaste(bank=mt_bank, p=1, skip_defective=False)], seed=seed)(
            image=tile.image, mask=roi
        )
        np.testing.assert_array_equal(both["roi"], alone["mask"])  # as `mask` would be from the same input
        assert not np.array_equal(both["roi"], both["mask"])


def test_break3_guided_crop_replay_renders_the_new_sample_mask(mt_bank):
    """ReplayCompose.replay on another mask returned the recorded sample's mask."""
    tile = free_tile()
    other = np.zeros_like(tile.class_mask)
    other[:, : other.shape[1] // 3] = 3
    replay = A.ReplayCompose([ad.GuidedCropPaste(bank=mt_bank, p=1, skip_defective=False)])
    replay.set_random_seed(0)
    recorded = replay(image=tile.image, mask=tile.class_mask)
    again = A.ReplayCompose.replay(recorded["replay"], image=tile.image, mask=other)
    np.testing.assert_array_equal(again["image"], recorded["image"])
    pasted = recorded["mask"] != 0
    np.testing.assert_array_equal(again["mask"][pasted], recorded["mask"][pasted])  # the blobs, in front
    assert (again["mask"][~pasted] == 3).any()  # the new mask, moved by the same flips and scroll
    assert_labels_match_mask(again, K)


# ============================================================================ break 4: replay labels
@pytest.mark.parametrize(("normal_p", "expected"), [(0.0, 7), (1.0, 3)])
def test_break4_replay_reproduces_anomaly_synthesis_labels(normal_p, expected):
    image = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    synthesis = ad.AnomalySynthesis([ad.CutPaste(p=1)], labels=[7], normal_label=3, normal_p=normal_p)
    replay = A.ReplayCompose([synthesis])
    replay.set_random_seed(0)
    recorded = replay(image=image)
    assert recorded["anomaly_label"] == expected
    again = A.ReplayCompose.replay(recorded["replay"], image=image)
    assert again["anomaly_label"] == expected
    np.testing.assert_array_equal(again["image"], recorded["image"])
    np.testing.assert_array_equal(again["anomaly_mask"], recorded["anomaly_mask"])


# ============================================================================ break 11: empty scars
def test_break11_no_anomaly_label_without_a_changed_pixel():
    """1-2 px scars could have an empty rotated footprint and still be labelled anomalous."""
    image = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    scar = ad.CutPaste(variant="scar", scar_width_range=(1, 2), scar_height_range=(1, 2), p=1)
    labelled = 0
    for seed in range(200):
        out = A.Compose([scar], seed=seed)(image=image)
        changed = (out["image"] != image).any(axis=2)
        if out["anomaly_label"] != 0:
            labelled += 1
            assert (changed & out["anomaly_mask"]).any(), f"seed {seed}: anomaly_label with no changed pixel"
        else:
            assert not out["anomaly_mask"].any() and not changed.any()
        assert not (changed & ~out["anomaly_mask"]).any()
    assert labelled > 150  # a footprint is redrawn when empty, so almost every call is an anomaly


def test_anomaly_that_changes_no_pixel_is_labelled_normal():
    """A CutPaste on a flat image without jitter copies equal pixels: nothing is there to label."""
    image = np.full((48, 48), 90, np.uint8)
    mask = np.zeros((48, 48), np.uint8)
    cut = ad.CutPaste(p=1, brightness=0, contrast=0, saturation=0, hue=0, mask_class_id=1)
    out = A.Compose([cut], seed=0)(image=image, mask=mask, class_vector=np.zeros(1, np.float32))
    assert out["anomaly_label"] == 0 and not out["anomaly_mask"].any()
    assert not out["mask"].any() and not out["class_vector"].any()


# ============================================================================ SyncLabels
def test_sync_labels_rederives_every_key_after_builtins_drop_pixels(mt_bank):
    tile = free_tile()
    pipeline = A.Compose(
        [
            ad.GuidedCropPaste(bank=mt_bank, p=1),
            ad.CutPaste(p=1, mask_class_id=5),
            A.CoarseDropout(num_holes_range=(4, 8), hole_height_range=(0.2, 0.4), hole_width_range=(0.2, 0.4), p=1),
            A.RandomCrop(64, 64, p=1),
            ad.SyncLabels(num_classes=K),
        ],
        additional_targets={"anomaly_mask": "mask"},
        seed=0,
    )
    for seed in SEEDS:
        pipeline.set_random_seed(seed)
        out = pipeline(image=tile.image, mask=tile.class_mask)
        assert out["mask"].shape == (64, 64)
        assert_labels_match_mask(out, K)
        assert out["anomaly_mask"].shape == (64, 64) and out["anomaly_mask"].dtype == bool
        assert (out["anomaly_label"] != 0) == bool(out["anomaly_mask"].any())


def test_an_anomaly_mask_left_behind_by_a_builtin_crop_is_a_clear_error():
    image = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    for last in (ad.SyncLabels(), ad.CutPaste(p=1)):
        pipeline = A.Compose([ad.CutPaste(p=1), A.RandomCrop(32, 32, p=1), last], seed=0)  # no additional_targets
        with pytest.raises(ValueError, match="additional_targets"):
            pipeline(image=image)


def test_sync_labels_multi_hot_mask_and_yaml(tmp_path):
    mask = np.zeros((16, 16, 3), np.uint8)
    mask[2:5, 2:5, 2] = 1
    sync = ad.SyncLabels()
    out = A.Compose([A.HorizontalFlip(p=1), sync])(image=np.zeros((16, 16), np.uint8), mask=mask)
    np.testing.assert_array_equal(out["class_vector"], expected_vector(mask, 3))
    path = tmp_path / "p.yaml"
    A.save(A.Compose([sync]), str(path), data_format="yaml")
    assert "albu_defects.SyncLabels" in path.read_text()
    assert isinstance(A.load(str(path), data_format="yaml").transforms[0], ad.SyncLabels)


def test_sync_labels_after_to_tensor():
    torch = pytest.importorskip("torch")
    from albumentations.pytorch import ToTensorV2

    mask = np.zeros((16, 16), np.uint8)
    mask[3:6, 3:6] = 2
    anomaly = np.zeros((16, 16), bool)
    pipeline = A.Compose(
        [ToTensorV2(), ad.SyncLabels(num_classes=3)], additional_targets={"anomaly_mask": "mask"}, strict=True
    )
    out = pipeline(image=np.zeros((16, 16, 3), np.uint8), mask=mask, anomaly_mask=anomaly, anomaly_label=1)
    assert isinstance(out["mask"], torch.Tensor)
    np.testing.assert_array_equal(np.asarray(out["class_vector"]), np.array([0, 1, 0], np.float32))
    assert out["anomaly_label"] == 0  # the anomaly mask is empty: normal
