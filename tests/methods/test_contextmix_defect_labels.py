"""ContextMix defect-aware labels (issue 15): ``label_mode="defect_area"`` in the numpy transform.

The weights are checked against an oracle written here from the *output*: every output pixel says
where it came from (host pixels are dark, partner pixels white, as in the contract suite), so the
defect pixels each image still shows are counted on the mixed mask, and the rules of
``defect_mix_weights`` are re-implemented below in plain Python, case by case.
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from albu_defects import BatchCompose, ContextMix
from albu_defects.methods.contextmix.functional import defect_mix_weights, visible_defect_pixels

KEY = "contextmix_metadata"
WHITE = 255


def oracle_weights(visible: tuple[int, int], total: tuple[int, int], area: tuple[float, float], min_pixels: int):
    """The documented rules, one branch per case (independent of the vectorized implementation)."""
    counted = [v if v > 0 and v >= min(min_pixels, t) else 0 for v, t in zip(visible, total, strict=True)]
    if sum(counted) > 0:
        return [c / sum(counted) for c in counted]
    free = [a if t == 0 else 0.0 for a, t in zip(area, total, strict=True)]
    if sum(free) > 0:
        return [f / sum(free) for f in free]
    return list(area)


def defect_pixels(mask: np.ndarray) -> np.ndarray:
    return mask.any(axis=2) if mask.ndim == 3 else mask != 0


def run(transform: ContextMix, seed: int, **data):
    return A.Compose([transform], seed=seed)(**data)


# ------------------------------------------------------------------------------------- the rules
def test_rules_on_hand_made_counts():
    area = np.array([0.75, 0.25])
    # both show their defect: by pixels, not by area
    np.testing.assert_allclose(defect_mix_weights([30, 10], [40, 50], area), [0.75, 0.25])
    np.testing.assert_allclose(defect_mix_weights([10, 30], [40, 50], area), [0.25, 0.75])
    # the host's defect is covered: all the mass goes to the partner's visible defect
    np.testing.assert_allclose(defect_mix_weights([0, 12], [40, 50], area), [0.0, 1.0])
    # the partner's defect shrank below the minimum: no mass for it
    np.testing.assert_allclose(defect_mix_weights([7, 3], [40, 50], area, min_visible_pixels=4), [1.0, 0.0])
    # ... unless all of it shows (a 3-pixel defect that nothing hides still counts)
    np.testing.assert_allclose(defect_mix_weights([3, 3], [3, 50], area, min_visible_pixels=4), [1.0, 0.0])
    # a defect-free host and a hidden partner defect: the image shows no defect, the host's label wins
    np.testing.assert_allclose(defect_mix_weights([0, 2], [0, 50], area), [1.0, 0.0])
    # a covered host defect and a defect-free partner: the partner's (defect-free) label wins
    np.testing.assert_allclose(defect_mix_weights([0, 0], [40, 0], area), [0.0, 1.0])
    # both defect-free: area, as label_mode="area"
    np.testing.assert_allclose(defect_mix_weights([0, 0], [0, 0], area), area)
    # both had defects, both hidden: the documented fallback to area
    np.testing.assert_allclose(defect_mix_weights([0, 1], [40, 50], area), area)
    # no mixing (empty box, area weights (1, 0)): (1, 0) whatever the host holds
    for total in ([0, 0], [5, 0], [0, 9], [5, 9]):
        np.testing.assert_allclose(defect_mix_weights([total[0], 0], total, [1.0, 0.0]), [1.0, 0.0])


@given(
    visible=st.tuples(st.integers(0, 60), st.integers(0, 60)),
    extra=st.tuples(st.integers(0, 60), st.integers(0, 60)),
    lam=st.floats(0, 1),
    min_pixels=st.integers(1, 10),
)
def test_rules_match_the_oracle(visible, extra, lam, min_pixels):
    total = (visible[0] + extra[0], visible[1] + extra[1])
    area = (lam, 1.0 - lam)
    got = defect_mix_weights(np.array(visible), np.array(total), np.array(area), min_pixels)
    np.testing.assert_allclose(got, oracle_weights(visible, total, area, min_pixels), atol=1e-12)
    assert (got >= 0).all() and abs(got.sum() - 1.0) < 1e-12
    # vectorized over a batch: the same numbers row by row
    batch = defect_mix_weights(
        np.array([visible, visible]), np.array([total, total]), np.array([area, area]), min_pixels
    )
    np.testing.assert_allclose(batch, [got, got])


def test_visible_pixels_count_the_nearest_resize():
    host = np.zeros((10, 10), bool)
    host[0:4, 0:4] = True  # 16 px, 4 of them (rows 2-3, cols 2-3) under the box
    partner = np.zeros((20, 20), bool)
    partner[0:10, 0:10] = True  # 100 px at its own size; a quarter of the partner -> a quarter of the box
    visible, total = visible_defect_pixels(host, partner, (2, 2, 8, 8))
    assert total.tolist() == [16, 100]
    assert visible.tolist() == [12, 9]  # 6x6 box: a 3x3 quarter
    empty_visible, _ = visible_defect_pixels(host, partner, (5, 5, 5, 5))
    assert empty_visible.tolist() == [16, 0]


# --------------------------------------------------------------------------------- the transform
@settings(max_examples=60, deadline=None)
@given(
    host_hw=st.tuples(st.integers(4, 40), st.integers(4, 40)),
    partner_hw=st.tuples(st.integers(1, 60), st.integers(1, 60)),
    layout=st.sampled_from(["index", "index1", "multi-hot"]),
    seed=st.integers(0, 2**31 - 1),
    density=st.sampled_from([0.0, 0.02, 0.3]),
    partner_density=st.sampled_from([0.0, 0.05, 0.5]),
    min_pixels=st.integers(1, 6),
)
def test_weights_are_the_visible_defect_pixels_of_the_output(
    host_hw, partner_hw, layout, seed, density, partner_density, min_pixels
):
    rng = np.random.default_rng(seed)

    def mask_of(hw, share, value):
        hit = rng.random(hw) < share
        if layout == "multi-hot":
            out = np.zeros((*hw, 3), np.uint8)
            out[..., value - 1] = hit
            return out
        out = (hit * value).astype(np.uint8)
        return out[..., None] if layout == "index1" else out

    host = rng.integers(0, 100, host_hw).astype(np.uint8)
    partner_image = np.full(partner_hw, WHITE, np.uint8)
    host_mask, partner_mask = mask_of(host_hw, density, 1), mask_of(partner_hw, partner_density, 2)
    transform = ContextMix(
        p=1.0, num_classes=3, label_mode="defect_area", min_visible_pixels=min_pixels, min_box_side=1
    )
    out = run(
        transform,
        seed,
        image=host,
        mask=host_mask,
        label=1,
        **{KEY: [{"image": partner_image, "mask": partner_mask, "label": 2}]},
    )
    from_partner = out["image"] == WHITE
    shown = defect_pixels(out["mask"])
    visible = (int((shown & ~from_partner).sum()), int((shown & from_partner).sum()))
    total = (int(defect_pixels(host_mask).sum()), int(defect_pixels(partner_mask).sum()))
    area = (1.0 - from_partner.mean(), from_partner.mean())
    expected = oracle_weights(visible, total, area, min_pixels)
    np.testing.assert_allclose(out["mix_weights"], expected, atol=1e-6)
    np.testing.assert_allclose(out["soft_label"], [0.0, expected[0], expected[1]], atol=1e-6)


def _pair(host_defect=None, partner_defect=None, partner_hw=(32, 32)):
    host = np.zeros((32, 32), np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    if host_defect is not None:
        mask[host_defect] = 1
    partner_mask = np.zeros(partner_hw, np.uint8)
    if partner_defect is not None:
        partner_mask[partner_defect] = 2
    partner = {"image": np.full(partner_hw, WHITE, np.uint8), "mask": partner_mask, "label": 2 if partner_defect else 0}
    return {"image": host, "mask": mask, "label": 1 if host_defect else 0, KEY: [partner]}


def _fixed_box_run(data, label_mode="defect_area", **kwargs):
    """box="fixed" with box_size=1: the partner covers the whole host (a known box for every seed)."""
    transform = ContextMix(p=1.0, num_classes=3, label_mode=label_mode, box="fixed", **kwargs)
    return run(transform, 0, **data)


def test_a_covered_defect_carries_no_label_mass():
    # the host's defect is under a full-image box; the partner is defect-free -> the label is the partner's
    out = _fixed_box_run(_pair(host_defect=np.s_[4:10, 4:10]), box_size=1.0)
    np.testing.assert_allclose(out["mix_weights"], [0.0, 1.0])
    np.testing.assert_allclose(out["soft_label"], [1.0, 0.0, 0.0])  # class 0: the partner's (defect-free)
    assert not (out["mask"] == 1).any()
    # area mode keeps the covered defect's mass (what this option fixes): here the box covers everything
    area = _fixed_box_run(_pair(host_defect=np.s_[4:10, 4:10]), label_mode="area", box_size=0.5)
    assert area["mix_weights"][0] == pytest.approx(1.0 - area["mix_weights"][1])


def test_a_partner_defect_shrunk_to_nothing_carries_no_label_mass():
    # a 3x3 partner defect in a 300x300 partner, pasted into a box of at most 32x32: <= 1 pixel survives
    data = _pair(host_defect=np.s_[0:5, 0:5], partner_defect=np.s_[150:153, 150:153], partner_hw=(300, 300))
    for seed in range(20):
        out = run(ContextMix(p=1.0, num_classes=3, label_mode="defect_area"), seed, **data)
        assert int((out["mask"] == 2).sum()) <= 1
        from_partner = out["image"] == WHITE
        area = (1.0 - from_partner.mean(), from_partner.mean())
        host_shown = int((out["mask"] == 1).sum())
        if host_shown >= 4:
            np.testing.assert_allclose(out["mix_weights"], [1.0, 0.0])  # all the mass on the host's defect
        else:  # both defects gone: the documented fallback to area
            np.testing.assert_allclose(out["mix_weights"], area, atol=1e-6)


def test_a_defect_free_host_takes_the_partners_visible_defect_class():
    out = _fixed_box_run(_pair(partner_defect=np.s_[8:20, 8:20]), box_size=0.5)
    np.testing.assert_allclose(out["mix_weights"], [0.0, 1.0])
    np.testing.assert_allclose(out["soft_label"], [0.0, 0.0, 1.0])


def test_without_mixing_the_weights_are_the_hosts():
    transform = ContextMix(p=0.0, num_classes=3, label_mode="defect_area")
    out = run(transform, 0, **_pair(host_defect=np.s_[0:3, 0:3], partner_defect=np.s_[0:9, 0:9]))
    np.testing.assert_allclose(out["mix_weights"], [1.0, 0.0])
    np.testing.assert_allclose(out["soft_label"], [0.0, 1.0, 0.0])


def test_defect_mode_needs_masks_and_a_valid_minimum():
    data = _pair(host_defect=np.s_[0:3, 0:3])
    del data["mask"]
    with pytest.raises(ValueError, match=r"label_mode='defect_area'.*mask"):
        run(ContextMix(p=1.0, num_classes=3, label_mode="defect_area"), 0, **data)
    data = _pair(host_defect=np.s_[0:3, 0:3])
    del data[KEY][0]["mask"]
    with pytest.raises(ValueError, match="mask"):
        run(ContextMix(p=1.0, num_classes=3, label_mode="defect_area"), 0, **data)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="min_visible_pixels"):
            ContextMix(label_mode="defect_area", min_visible_pixels=bad)


def test_yaml_round_trip_keeps_the_defect_options(tmp_path):
    transform = ContextMix(p=1.0, num_classes=3, label_mode="defect_area", min_visible_pixels=7)
    pipeline = A.Compose([transform], seed=3)
    A.save(pipeline, tmp_path / "cm.yaml", data_format="yaml")
    loaded = A.load(tmp_path / "cm.yaml", data_format="yaml")
    restored = loaded.transforms[0]
    assert (restored.label_mode, restored.min_visible_pixels) == ("defect_area", 7)
    data = _pair(host_defect=np.s_[2:12, 2:12], partner_defect=np.s_[5:25, 5:25])
    pipeline.set_random_seed(3)
    loaded.set_random_seed(3)
    a, b = pipeline(**data), loaded(**data)
    np.testing.assert_array_equal(a["mix_weights"], b["mix_weights"])
    np.testing.assert_array_equal(a["mask"], b["mask"])


def test_batch_compose_mixes_labels_by_defect():
    rng = np.random.default_rng(0)
    count = 8
    images = [np.full((24, 24), 20 * i, np.uint8) for i in range(count)]  # the value tells the sample
    masks = [np.zeros((24, 24), np.uint8) for _ in range(count)]
    for i in range(0, count, 2):  # even samples hold a defect of class i + 1, odd ones none
        y, x = rng.integers(0, 14, 2)
        masks[i][y : y + 10, x : x + 10] = i + 1
    labels = [int(m.max()) for m in masks]
    batch = BatchCompose([ContextMix(p=1.0, num_classes=count + 1, label_mode="defect_area", min_box_side=1)], seed=1)
    checked = 0
    for seed in range(4):
        batch.set_random_seed(seed)
        out = batch(images=images, masks=masks, labels=labels)
        for i in range(count):
            j = int(out["partner_indices"][i, 0])
            if j == i:
                continue  # a sample paired with itself: its two sides cannot be told apart here
            from_partner = out["images"][i] == 20 * j
            visible = (int((out["masks"][i] == i + 1).sum()), int((out["masks"][i] == j + 1).sum()))
            total = (int((masks[i] != 0).sum()), int((masks[j] != 0).sum()))
            area = (1.0 - from_partner.mean(), from_partner.mean())
            np.testing.assert_allclose(out["mix_weights"][i], oracle_weights(visible, total, area, 4), atol=1e-6)
            checked += 1
    assert checked >= count
