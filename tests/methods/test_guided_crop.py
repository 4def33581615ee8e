"""Guided-Crop: lookup-table configurations, real blob crops, priority, the global stage, targets, synthesis, CLI."""

from __future__ import annotations

import json
import warnings

import albumentations as A
import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from albu_defects import (
    CLASS_VECTOR_KEY,
    ClassWeights,
    DefectBank,
    GuidedCropPaste,
    color_jitter,
    load_samples,
    synthesize,
)
from albu_defects.core.color import ColorJitterFactors
from albu_defects.core.geometry import connected_components, mask_bbox, placement_overlap
from albu_defects.data import sample_root
from albu_defects.methods.guided_crop.functional import (
    GuidedCropOptions,
    PlacedDefect,
    blob_owner_map,
    class_probabilities,
    composite_mask,
    configuration_table,
    draw_configuration,
    paste_defects,
    plan_guided_crop,
    render_guided_crop,
)
from albu_defects.methods.guided_crop.stage import (
    GlobalStage,
    apply_global_stage,
    empty_borders,
    stage_bboxes,
    stage_geometry,
    stage_keypoints,
)
from albu_defects.tools.cli import main as cli_main

TOY_CLASSES = ["scratch", "dent", "spot"]
DTYPES = (np.uint8, np.uint16, np.float32)
LAYOUTS = ("gray", "gray1", "rgb")
NO_STAGE = GuidedCropOptions(flip_p=0.0, shift_limit=0.0, brightness=0.0, contrast=0.0)


# --------------------------------------------------------------------------- data
def _as_kind(gray: np.ndarray, dtype, layout: str) -> np.ndarray:
    """A uint8 grayscale picture in another dtype (same relative levels) and layout."""
    if layout == "rgb":
        image = np.stack([gray, np.clip(gray.astype(int) + 20, 0, 255), np.clip(gray.astype(int) - 20, 0, 255)], -1)
    elif layout == "gray1":
        image = gray[..., None]
    else:
        image = gray
    image = image.astype(np.float64)
    if dtype == np.uint16:
        return (image * 257).astype(np.uint16)
    if dtype == np.float32:
        return (image / 255).astype(np.float32)
    return image.astype(np.uint8)


def _texture(h: int, w: int, seed: int, low: int = 90, high: int = 210) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, (h, w), dtype=np.uint8)


def _toy_sources() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Four 48x48 sources (multi-blob, one with two classes) and three 64x80 defect-free images."""
    masks = [np.zeros((48, 48), np.uint8) for _ in range(4)]
    masks[0][4:10, 4:12] = 1  # scratch, two blobs, and a dent: the configuration (1, 2)
    masks[0][20:28, 25:30] = 1
    masks[0][35:42, 5:14] = 2
    masks[1][5:9, 30:34] = 3  # spot, three blobs
    masks[1][15:22, 15:19] = 3
    masks[1][30:40, 30:38] = 3
    masks[2][10:18, 10:22] = 1  # scratch, one blob
    masks[3][20:28, 23:26] = 2  # dent, a cross
    masks[3][23:26, 18:31] = 2
    images = [_texture(48, 48, i, 20, 80) for i in range(4)]  # darker than the backgrounds
    free = [_texture(64, 80, 10 + i) for i in range(3)]
    return images + free, masks + [np.zeros((64, 80), np.uint8)] * 3


def toy_bank(dtype=np.uint8, layout: str = "gray") -> DefectBank:
    images, masks = _toy_sources()
    return DefectBank.from_arrays([_as_kind(i, dtype, layout) for i in images], masks, class_names=TOY_CLASSES)


@pytest.fixture(scope="module")
def bank() -> DefectBank:
    return toy_bank()


@pytest.fixture(scope="module")
def bank_path(tmp_path_factory, bank) -> str:
    return str(bank.save(tmp_path_factory.mktemp("bank") / "toy"))


@pytest.fixture(scope="module")
def bundled_bank_path(tmp_path_factory) -> str:
    return str(DefectBank.from_folder(sample_root(), progress=False).save(tmp_path_factory.mktemp("bank") / "mt"))


def _free(bank: DefectBank, index: int = 0) -> np.ndarray:
    return np.array(bank.load_free(index))


def _expected_mask(bank: DefectBank, plan, hw) -> np.ndarray:
    """The pasted class mask before the stage, from the bank's *whole* entries (independent of the code under test)."""
    canvas = np.zeros(hw, np.uint8)
    for defect in plan.defects:  # paint order
        source = bank.entries[defect.entry.entry_id]
        kept = defect.entry.blob_subset or tuple(range(1, source.num_blobs + 1))
        assert set(kept) <= set(range(1, source.num_blobs + 1))
        blobs = np.isin(source.blob_labels, kept)
        # where the whole entry's crop lands: the restricted crop is a window of it
        corner = (
            defect.top_left[0] - (defect.entry.bbox[1] - source.bbox[1]),  # top_left is (row, col), boxes x first
            defect.top_left[1] - (defect.entry.bbox[0] - source.bbox[0]),
        )
        overlap = placement_overlap(hw, source.hw, corner)
        if overlap is not None:
            canvas[overlap.target][blobs[overlap.source]] = source.class_id
    return canvas


# --------------------------------------------------------------------------- the lookup table
def test_lookup_table_is_the_bank_class_sets(bank):
    table = configuration_table(bank)
    sets = bank.class_sets()
    assert set(table.configurations) == {(1, 2), (1,), (2,), (3,)} == {c for c in sets if c}
    for config, count in zip(table.configurations, table.counts, strict=True):
        assert count == sets[config]
    assert configuration_table(bank) is table  # cached per bank


def test_lookup_table_cache_lets_go_of_dead_banks():
    import gc

    from albu_defects.methods.guided_crop import functional as guided_crop

    temporary = toy_bank()
    configuration_table(temporary)
    key = id(temporary)
    assert key in guided_crop._TABLES
    del temporary
    gc.collect()
    assert key not in guided_crop._TABLES  # the cached table leaves with its bank (no growth per bank)


def test_configurations_follow_the_lookup_table(bank):
    table = configuration_table(bank)
    rng = np.random.default_rng(0)
    uniform = np.full(3, 1 / 3)
    seen_pair = seen_alone = 0
    for _ in range(600):
        classes = draw_configuration(table, uniform, 3, rng)
        assert 1 <= len(classes) <= 3
        primary = classes[0]
        assert any(primary in c and set(classes) == set(c) for c in table.configurations), classes
        if primary == 1:
            seen_pair += set(classes) == {1, 2}
            seen_alone += set(classes) == {1}
    # class 1 occurs alone in one image and with class 2 in another: both configurations are drawn
    assert seen_pair > 50 and seen_alone > 50
    assert all(len(draw_configuration(table, uniform, 1, rng)) == 1 for _ in range(50))


def test_class_frequencies_follow_the_weights(bundled_bank_path):
    weights = [0.4, 0.25, 0.2, 0.1, 0.05]
    image = next(s for s in load_samples() if s.class_name == "Free").image[:96, :96]
    pipeline = A.Compose([GuidedCropPaste(bank=bundled_bank_path, weights=weights, max_defects=1, p=1.0)], seed=0)
    draws = 500
    counts = np.zeros(5)
    for _ in range(draws):
        vector = pipeline(image=image)[CLASS_VECTOR_KEY]
        assert vector.sum() == 1  # one class per image on Magnetic Tile, never hidden with one defect
        counts += vector
    assert stats.chisquare(counts, draws * np.array(weights)).pvalue > 0.01
    assert stats.chisquare(counts, np.full(5, draws / 5)).pvalue < 1e-6  # the test can tell


def test_static_weights(bank):
    np.testing.assert_allclose(class_probabilities("uniform", bank), [1 / 3] * 3)
    # images per class: scratch 2, dent 2, spot 1
    np.testing.assert_allclose(class_probabilities("inverse_frequency", bank), np.array([0.5, 0.5, 1.0]) / 2)
    np.testing.assert_allclose(class_probabilities([2, 1, 1], bank), [0.5, 0.25, 0.25])
    with ClassWeights(TOY_CLASSES, floor=0.0) as live:
        live.update([0.0, 0.0, 1.0])
        np.testing.assert_allclose(class_probabilities(live, bank), [0, 0, 1])


# --------------------------------------------------------------------------- blobs, priority, the paste stage
@given(seed=st.integers(0, 2**32 - 1), max_defects=st.integers(1, 4))
def test_crops_come_only_from_real_blobs_and_the_front_crop_wins(bank, seed, max_defects):
    base = _free(bank, seed % 3)
    plan = plan_guided_crop(bank, base, class_probabilities(None, bank), np.random.default_rng(seed))
    plan = plan._replace(defects=plan.defects[:max_defects])
    pre = _expected_mask(bank, plan, base.shape)
    result = render_guided_crop(base, plan, 3)
    # the whole composite, hidden parts and all, is the real blobs painted back to front, then the stage
    np.testing.assert_array_equal(result.mask, stage_geometry(pre, plan.stage))
    assert sorted(plan.order) == list(range(len(plan.classes)))


@given(seed=st.integers(0, 2**32 - 1))
def test_each_pasted_component_is_a_blob_of_its_source(bank, seed):
    base = _free(bank, seed % 3)
    plan = plan_guided_crop(
        bank, base, np.full(3, 1 / 3), np.random.default_rng(seed), NO_STAGE._replace(max_defects=1)
    )
    (defect,) = plan.defects
    source = bank.entries[defect.entry.entry_id]
    result = render_guided_crop(base, plan, 3)
    count, labels = connected_components(result.mask > 0)
    kept = defect.entry.blob_subset or tuple(range(1, source.num_blobs + 1))
    assert count == len(kept)  # blobs fit the 64x80 base whole, so each lands whole and apart
    offset = np.array(defect.entry.bbox[:2]) - np.array(source.bbox[:2])  # (x, y)
    shift = np.array(defect.top_left) - offset[::-1]  # (row, col)
    expected = {tuple(map(tuple, np.argwhere(source.blob_labels == b) + shift)) for b in kept}
    found = {tuple(map(tuple, np.argwhere(labels == c))) for c in range(1, count + 1)}
    assert found == expected
    assert set(np.unique(result.mask)) == {0, source.class_id}


def test_overlap_priority_in_image_and_mask(bank):
    base = _free(bank)
    back = PlacedDefect(bank.entries_of("scratch")[1], (10, 10), ColorJitterFactors(brightness=0.5))
    front = PlacedDefect(bank.entries_of("dent")[1], (8, 14), ColorJitterFactors(brightness=1.5))
    for order in ((back, front), (front, back)):
        out = paste_defects(base, order)
        owner, blob_classes, _ = blob_owner_map(base.shape, order)
        mask = composite_mask(owner, blob_classes, None, 3)
        masks = []
        for defect in order:
            m = np.zeros(base.shape, bool)
            m[defect.top_left[0] : defect.top_left[0] + defect.entry.hw[0], defect.top_left[1] :][
                :, : defect.entry.hw[1]
            ] = defect.entry.mask
            masks.append(m)
        both = masks[0] & masks[1]
        assert both.sum() > 5  # they overlap
        winner = order[1]
        crop = color_jitter(winner.entry.crop, *winner.jitter)
        y, x = winner.top_left
        expected = np.zeros_like(base)
        expected[y : y + crop.shape[0], x : x + crop.shape[1]] = crop
        np.testing.assert_array_equal(out[both], expected[both])
        assert (mask[both] == winner.entry.class_id).all()
        assert (mask[masks[0] & ~masks[1]] == order[0].entry.class_id).all()


def test_priority_is_random(bank):
    base = _free(bank)
    fronts = set()
    for seed in range(60):
        plan = plan_guided_crop(bank, base, np.full(3, 1 / 3), np.random.default_rng(seed))
        if len(plan.order) >= 2:
            fronts.add(plan.order[-1] == 0)  # is the primary defect in front?
    assert fronts == {True, False}


@given(
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(LAYOUTS),
)
def test_the_paste_stage_changes_nothing_outside_the_footprints(seed, dtype, layout):
    kind_bank = _KIND_BANKS[(np.dtype(dtype).name, layout)]
    base = _free(kind_bank, seed % 3)
    base.setflags(write=False)
    plan = plan_guided_crop(kind_bank, base, np.full(3, 1 / 3), np.random.default_rng(seed))
    pasted = paste_defects(base, plan.defects)
    footprint = _expected_mask(kind_bank, plan, base.shape[:2]) > 0
    assert pasted.dtype == base.dtype and pasted.shape == base.shape
    np.testing.assert_array_equal(pasted[~footprint], base[~footprint])
    assert not np.array_equal(pasted[footprint], base[footprint])


_KIND_BANKS = {(np.dtype(d).name, layout): toy_bank(d, layout) for d in DTYPES for layout in LAYOUTS}


# --------------------------------------------------------------------------- the global stage
@given(
    hflip=st.booleans(),
    vflip=st.booleans(),
    dy=st.integers(0, 29),
    dx=st.integers(0, 39),
    box=st.tuples(st.integers(0, 39), st.integers(0, 29), st.integers(1, 40), st.integers(1, 30)),
)
def test_global_stage_moves_pixels_boxes_and_keypoints_alike(hflip, vflip, dy, dx, box):
    h, w = 30, 40
    stage = GlobalStage(hflip, vflip, (dy, dx))
    image = np.arange(h * w, dtype=np.float32).reshape(h, w)
    expected = image[:, ::-1] if hflip else image
    expected = expected[::-1] if vflip else expected
    np.testing.assert_array_equal(apply_global_stage(image, stage), np.roll(expected, (dy, dx), axis=(0, 1)))
    # a rectangle: its moved pixels are exactly the union of the moved boxes
    x0, y0 = box[0], box[1]
    x1, y1 = max(x0 + 1, min(box[2] + x0, w)), max(y0 + 1, min(box[3] + y0, h))
    region = np.zeros((h, w), bool)
    region[y0:y1, x0:x1] = True
    moved = stage_geometry(region, stage)
    boxes = stage_bboxes(np.array([[x0 / w, y0 / h, x1 / w, y1 / h, 7.0]]), stage, (h, w))
    painted = np.zeros((h, w), int)
    for bx0, by0, bx1, by1, label in boxes:
        assert label == 7.0
        painted[round(by0 * h) : round(by1 * h), round(bx0 * w) : round(bx1 * w)] += 1
    np.testing.assert_array_equal(painted, moved.astype(int))  # covered once, nothing else
    # a keypoint on pixel (x0, y0) lands on that pixel's new place
    point = np.zeros((h, w), bool)
    point[y0, x0] = True
    (ky, kx) = np.argwhere(stage_geometry(point, stage))[0]
    moved_kp = stage_keypoints(np.array([[x0, y0, 0.0, 0.3, 1.0]], np.float32), stage, (h, w))
    assert (round(float(moved_kp[0, 0])), round(float(moved_kp[0, 1]))) == (kx, ky)


def test_global_jitter_is_the_last_step():
    image = _texture(20, 30, 3)
    stage = GlobalStage(True, False, (4, 7), ColorJitterFactors(1.2, 0.8, 1.0, 0.0))
    moved = stage_geometry(image, GlobalStage(True, False, (4, 7)))
    np.testing.assert_array_equal(apply_global_stage(image, stage), color_jitter(moved, 1.2, 0.8))


def test_empty_borders_detection():
    image = _texture(60, 80, 1)
    assert empty_borders(image) == (False, False, False, False)
    banded = image.copy()
    banded[:, :6] = 5
    assert empty_borders(banded) == (False, False, True, False)
    banded[-2:, :] = 0
    assert empty_borders(banded) == (False, True, True, False)
    assert empty_borders(banded, threshold=0.0) == (False, True, False, False)  # 5 > 0
    assert empty_borders(_as_kind(banded, np.uint16, "rgb")).left
    assert empty_borders(_as_kind(banded, np.float32, "gray1")).left


def test_border_rule_no_horizontal_shift_with_an_empty_left_band(bank):
    banded = _free(bank).copy()
    banded[:, :10] = 0
    table_rng = np.random.default_rng(0)
    shifts = [plan_guided_crop(bank, banded, np.full(3, 1 / 3), table_rng).stage.shift for _ in range(200)]
    assert all(dx == 0 for _, dx in shifts)
    assert sum(dy != 0 for dy, _ in shifts) > 150  # the vertical axis still moves
    plain = [plan_guided_crop(bank, _free(bank), np.full(3, 1 / 3), table_rng).stage.shift for _ in range(50)]
    assert sum(dx != 0 for _, dx in plain) > 40
    # end to end: the empty band stays a band at the left or (flipped) right edge, never inside
    pipeline = A.Compose([GuidedCropPaste(bank=bank, brightness=0.0, contrast=0.0, p=1.0)], seed=1)
    edges = set()
    for _ in range(40):
        out = pipeline(image=banded)["image"]
        dark = np.flatnonzero(np.median(out, axis=0) == 0)
        assert list(dark) in (list(range(10)), list(range(70, 80))), dark
        edges.add(int(dark[0]))
    assert edges == {0, 70}


# --------------------------------------------------------------------------- the transform
def test_outputs_boxes_and_labels_match_the_mask(bank):
    pipeline = A.Compose(
        [GuidedCropPaste(bank=bank, p=1.0)],
        seed=2,
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]),
    )
    for index in range(30):
        base = _free(bank, index % 3)
        out = pipeline(image=base, mask=np.zeros(base.shape, np.uint8), bboxes=[], labels=[])
        mask = out["mask"]
        present = {int(v) for v in np.unique(mask) if v}
        assert present and set((np.flatnonzero(out[CLASS_VECTOR_KEY]) + 1).tolist()) == present
        covered = np.zeros(mask.shape, bool)
        for (x0, y0, x1, y1), label in zip(out["bboxes"], out["labels"], strict=True):
            x0, y0, x1, y1 = (round(v) for v in (x0, y0, x1, y1))
            inside = mask[y0:y1, x0:x1] == label
            # tight: the class touches all four sides of its box
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            covered[y0:y1, x0:x1] |= inside
        np.testing.assert_array_equal(covered, mask > 0)
        assert all(isinstance(label, (int, float)) and label in present for label in out["labels"])


def test_existing_boxes_keypoints_and_instance_masks_follow_the_stage(bank):
    base = _free(bank)
    instance = np.zeros(base.shape, np.uint8)
    instance[20:31, 30:45] = 1
    pipeline = A.Compose(
        [GuidedCropPaste(bank=bank, bbox_label="name", p=1.0)],
        seed=5,
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]),
        keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
    )
    for _ in range(20):
        out = pipeline(image=base, masks=[instance], bboxes=[[30, 20, 45, 31]], labels=["part"], keypoints=[(37, 25)])
        moved = out["masks"][0]
        assert moved.sum() == instance.sum()
        painted = np.zeros(base.shape, int)
        for (x0, y0, x1, y1), label in zip(out["bboxes"], out["labels"], strict=True):
            if label == "part":
                painted[round(y0) : round(y1), round(x0) : round(x1)] += 1
        np.testing.assert_array_equal(painted, moved.astype(int))
        kx, ky = out["keypoints"][0]
        assert moved[round(ky), round(kx)] == 1
        assert {label for label in out["labels"] if label != "part"} <= set(TOY_CLASSES)


def test_bbox_labels_by_name_and_without_label_fields(bank):
    by_name = A.Compose(
        [GuidedCropPaste(bank=bank, bbox_label="name", p=1.0)],
        seed=0,
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]),
    )
    out = by_name(image=_free(bank), bboxes=[], labels=[])
    assert out["labels"] and set(out["labels"]) <= set(TOY_CLASSES)
    assert {TOY_CLASSES.index(n) + 1 for n in out["labels"]} == set(np.unique(out["mask"])) - {0}
    with pytest.raises(ValueError, match="holds numbers"):
        by_name(image=_free(bank), bboxes=[[1, 1, 5, 5]], labels=[7])
    plain = A.Compose([GuidedCropPaste(bank=bank, p=1.0)], seed=0, bbox_params=A.BboxParams(format="pascal_voc"))
    rows = plain(image=_free(bank), bboxes=np.zeros((0, 4)))["bboxes"]
    assert len(rows) and all(len(r) == 5 and int(r[4]) in (1, 2, 3) for r in rows)  # class id column


def test_skip_defective_and_skip_by_p(bank):
    base = _free(bank)
    defective = np.zeros(base.shape, np.uint8)
    defective[5:9, 5:9] = 2
    out = A.Compose([GuidedCropPaste(bank=bank, p=1.0)], seed=0)(image=base, mask=defective)
    np.testing.assert_array_equal(out["image"], base)
    np.testing.assert_array_equal(out["mask"], defective)
    np.testing.assert_array_equal(out[CLASS_VECTOR_KEY], [0, 1, 0])
    pasted = A.Compose([GuidedCropPaste(bank=bank, skip_defective=False, flip_p=0, shift_limit=0, p=1.0)], seed=0)
    out = pasted(image=base, mask=defective)
    assert not np.array_equal(out["image"], base) and (out["mask"] > 0).sum() > 16
    skipped = A.Compose([GuidedCropPaste(bank=bank, p=0.0)], seed=0)(image=base)
    np.testing.assert_array_equal(skipped["image"], base)
    assert skipped["mask"].dtype == np.uint8 and not skipped["mask"].any()
    np.testing.assert_array_equal(skipped[CLASS_VECTOR_KEY], [0, 0, 0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dtypes_and_layouts(dtype, layout):
    kind_bank = _KIND_BANKS[(np.dtype(dtype).name, layout)]
    base = _free(kind_bank)
    out = A.Compose([GuidedCropPaste(bank=kind_bank, p=1.0)], seed=4)(image=base)
    assert out["image"].dtype == base.dtype and out["image"].shape == base.shape
    assert out["mask"].shape == base.shape[:2] and out["mask"].any()
    other = _KIND_BANKS[("uint8" if dtype != np.uint8 else "uint16", layout)]
    with pytest.raises(ValueError, match="dtype"):
        A.Compose([GuidedCropPaste(bank=other, p=1.0)])(image=base)
    if layout != "rgb":  # a colour defect is never turned gray
        other_layout = _KIND_BANKS[(np.dtype(dtype).name, "rgb")]
        with pytest.raises(ValueError, match="channel"):
            A.Compose([GuidedCropPaste(bank=other_layout, p=1.0)])(image=base)
    else:  # a gray defect in a colour image is repeated over the channels, as in DLI
        gray_bank = _KIND_BANKS[(np.dtype(dtype).name, "gray")]
        gray_out = A.Compose([GuidedCropPaste(bank=gray_bank, flip_p=0, shift_limit=0, p=1.0)], seed=4)(image=base)
        pasted = gray_out["mask"] > 0
        assert pasted.any() and gray_out["image"].shape == base.shape


def test_seed_determinism_and_no_mutation(bank_path, bank):
    base = _free(bank)
    base.setflags(write=False)
    mask = np.zeros(base.shape, np.uint8)
    mask.setflags(write=False)
    boxes = np.array([[2.0, 2.0, 10.0, 12.0]])
    boxes.setflags(write=False)
    copies = (base.copy(), mask.copy(), boxes.copy())

    def run(seed):
        pipeline = A.Compose(
            [GuidedCropPaste(bank=bank_path, p=1.0)], seed=seed, bbox_params=A.BboxParams("pascal_voc")
        )
        return [pipeline(image=base, mask=mask, bboxes=boxes) for _ in range(4)]

    first, again, other = run(7), run(7), run(8)
    for a, b in zip(first, again, strict=True):
        for key in ("image", "mask", CLASS_VECTOR_KEY):
            np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(np.asarray(a["bboxes"]), np.asarray(b["bboxes"]))
    assert any(not np.array_equal(a["image"], c["image"]) for a, c in zip(first, other, strict=True))
    for original, kept in zip((base, mask, boxes), copies, strict=True):
        np.testing.assert_array_equal(original, kept)


def test_yaml_round_trip_with_the_bank_by_path(tmp_path, bank_path, bank):
    weights = ClassWeights(TOY_CLASSES, floor=0.0)
    weights.update([0.0, 0.0, 1.0])
    transform = GuidedCropPaste(bank=bank_path, weights=[1.0, 2.0, 0.0], class_weights=weights, crop_hue=[0.0, 0.0])
    pipeline = A.Compose([transform], seed=3)
    path = tmp_path / "pipeline.yaml"
    A.save(pipeline, str(path), data_format="yaml")
    text = path.read_text()
    assert "class_weights" not in text and bank_path in text and "albu_defects.GuidedCropPaste" in text
    loaded = A.load(str(path), data_format="yaml")
    restored = loaded.transforms[0]
    assert restored.class_weights is None and restored.weights == [1.0, 2.0, 0.0] and restored.bank == bank_path
    np.testing.assert_allclose(restored.current_probabilities(), [1 / 3, 2 / 3, 0])  # the serialized fallback
    np.testing.assert_allclose(transform.current_probabilities(), [0, 0, 1])  # live weights win while set
    # same arguments and same seed: same draws
    transform.class_weights = None
    loaded.set_random_seed(11)
    pipeline.set_random_seed(11)
    for _ in range(3):
        a, b = pipeline(image=_free(bank), p=1), loaded(image=_free(bank))
        np.testing.assert_array_equal(a["image"], b["image"])
    restored.class_weights = weights  # runtime state is re-attached after loading
    np.testing.assert_allclose(restored.current_probabilities(), [0, 0, 1])
    weights.close()
    unsaved = A.Compose([GuidedCropPaste(bank=toy_bank())])
    assert "unsaved DefectBank" in repr(A.to_dict(unsaved))  # printing and ReplayCompose recording work
    with pytest.raises(ValueError, match=r"never saved.*bank\.save\(path\)"):
        A.save(unsaved, str(tmp_path / "unsaved.yaml"), data_format="yaml")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_defects": 0}, "max_defects"),
        ({"weights": [1.0, 2.0]}, "weights"),
        ({"weights": [0.0, 0.0, 0.0]}, "weights"),
        ({"weights": [1.0, -1.0, 1.0]}, "weights"),
        ({"weights": "rare"}, "weights"),
        ({"class_weights": "live"}, "class_weights"),
        ({"class_weights": "ClassWeights(2)"}, "class_weights"),
        ({"crop_brightness": -1.0}, "crop_brightness"),
        ({"hue": 0.7}, "hue"),
        ({"crop_contrast": (1.2, 0.8)}, "crop_contrast"),
        ({"flip_p": 1.5}, "flip_p"),
        ({"shift_limit": 2.0}, "shift_limit"),
        ({"border_threshold": -0.1}, "border_threshold"),
        ({"bbox_label": "color"}, "bbox_label"),
        ({"bank": "/nonexistent/bank"}, "bank"),
        ({"bank": 3}, "bank"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(bank, kwargs, name):
    kwargs = dict(kwargs)
    if kwargs.get("class_weights") == "ClassWeights(2)":
        kwargs["class_weights"] = ClassWeights(2)
    kwargs.setdefault("bank", bank)
    with pytest.raises(ValueError, match=name):
        GuidedCropPaste(**kwargs)


def test_bad_inputs_raise_value_errors(bank):
    pipeline = A.Compose([GuidedCropPaste(bank=bank, p=1.0)])
    base = _free(bank)
    with pytest.raises(ValueError, match="bool"):
        pipeline(image=base, mask=np.zeros(base.shape, bool))
    with pytest.raises(ValueError, match="mask"):
        pipeline(image=base, mask=np.zeros(base.shape, np.float32))
    transform = GuidedCropPaste(bank=bank, p=1.0)
    transform.class_weights = ClassWeights(5)
    with pytest.raises(ValueError, match="class_weights has 5 classes"):
        A.Compose([transform])(image=base)
    transform.class_weights.close()


# --------------------------------------------------------------------------- synthesis and the CLI
def test_synthesize_is_deterministic_for_a_seed_and_any_thread_count(bank):
    one = list(synthesize(bank, 12, seed=5, workers=1, progress=False))
    two = list(synthesize(bank, 12, [1.0, 1.0, 2.0], seed=5, workers=2, progress=False))
    again = list(synthesize(bank, 12, [1.0, 1.0, 2.0], seed=5, workers=3, progress=False))
    assert [s.index for s in two] == list(range(12))
    for a, b in zip(two, again, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.bboxes == b.bboxes and a.bbox_classes == b.bbox_classes and a.base_index == b.base_index
    assert any(not np.array_equal(a.image, b.image) for a, b in zip(one, two, strict=True))
    for sample in one:
        assert sample.image.shape == bank.load_free(sample.base_index).shape
        assert sample.classes == tuple(TOY_CLASSES[k - 1] for k in np.unique(sample.mask) if k)
        assert set(sample.bbox_classes) == {TOY_CLASSES.index(c) + 1 for c in sample.classes}
        for x0, y0, x1, y1 in sample.bboxes:  # (x_min, y_min, x_max, y_max) inside the image
            assert 0 <= x0 < x1 <= sample.mask.shape[1] and 0 <= y0 < y1 <= sample.mask.shape[0]


def test_synthesize_rejects_bad_arguments(bank):
    with pytest.raises(ValueError, match="n must"):
        synthesize(bank, -1)
    with pytest.raises(ValueError, match="seed"):
        synthesize(bank, 1, seed=-3)
    with pytest.raises(ValueError, match="unknown Guided-Crop options"):
        synthesize(bank, 1, max_defect=2)
    with pytest.raises(ValueError, match="max_defects"):
        synthesize(bank, 1, max_defects=0)
    with pytest.raises(ValueError, match="workers"):
        synthesize(bank, 1, workers=0)
    images, masks = _toy_sources()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        no_free = DefectBank.from_arrays(images[:4], masks[:4], class_names=TOY_CLASSES)
    with pytest.raises(ValueError, match="no defect-free images"):
        synthesize(no_free, 1)


def test_cli_synth_writes_images_masks_and_a_manifest(tmp_path, bank_path, capsys):
    out = tmp_path / "synth"
    assert (
        cli_main(["synth", bank_path, "-n", "6", "-o", str(out), "--seed", "2", "--weights", "1,0,0", "--quiet"]) == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n"] == 6 and manifest["classes"] == TOY_CLASSES and len(manifest["items"]) == 6
    np.testing.assert_allclose(manifest["probabilities"], [1, 0, 0])
    for item in manifest["items"]:
        mask = cv2.imread(str(out / item["mask"]), cv2.IMREAD_UNCHANGED)
        image = cv2.imread(str(out / item["image"]), cv2.IMREAD_UNCHANGED)
        assert image.shape == mask.shape and image.dtype == np.uint8
        assert item["classes"] == [TOY_CLASSES[k - 1] for k in np.unique(mask) if k]
        assert set(item["classes"]) <= {"scratch", "dent"}  # scratch is primary; dent comes with it in (1, 2)
        assert len(item["bboxes"]) == len(item["bbox_classes"]) >= 1
        for (x0, y0, x1, y1), class_id in zip(item["bboxes"], item["bbox_classes"], strict=True):
            assert (mask[y0:y1, x0:x1] == class_id).any()  # (x_min, y_min, x_max, y_max) of a visible blob
    rows = (out / "manifest.csv").read_text().splitlines()
    assert rows[0] == "index,image,mask,classes" and len(rows) == 7
    again = tmp_path / "again"
    assert (
        cli_main(["synth", bank_path, "-n", "6", "-o", str(again), "--seed", "2", "--weights", "1,0,0", "--quiet"]) == 0
    )
    assert json.loads((again / "manifest.json").read_text())["items"] == manifest["items"]
    for name in ("images/000003.png", "masks/000003.png"):
        assert (out / name).read_bytes() == (again / name).read_bytes()
    losses = tmp_path / "losses"
    args = ["synth", bank_path, "-n", "2", "-o", str(losses), "--losses", "scratch=0,dent=0,spot=4", "--quiet"]
    assert cli_main(args) == 0
    assert json.loads((losses / "manifest.json").read_text())["probabilities"][2] > 0.9
    capsys.readouterr()
    for bad in (
        ["-o", str(out)],  # not empty
        ["-o", str(tmp_path / "x"), "--weights", "1,2"],
        ["-o", str(tmp_path / "y"), "--weights", "1,0,0", "--losses", "1,1,1"],
        ["-o", str(tmp_path / "z"), "--losses", "scratch=1"],
    ):
        assert cli_main(["synth", bank_path, "-n", "2", "--quiet", *bad]) == 2
        assert "error" in capsys.readouterr().err


# --------------------------------------------------------------------------- real data and the demo
def test_real_magnetic_tile(magnetic_tile_root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        real = DefectBank.from_folder(magnetic_tile_root, progress=False)
    table = configuration_table(real)
    assert set(table.configurations) == {(1,), (2,), (3,), (4,), (5,)}  # one class per image
    samples = list(synthesize(real, 12, "inverse_frequency", seed=0, progress=False))
    for sample in samples:
        assert sample.image.dtype == np.uint8 and sample.image.ndim == 2
        assert len(sample.classes) >= 1 and set(np.unique(sample.mask)) <= set(range(6))
    tile = cv2.resize(real.load_free(0), (256, 256))
    pipeline = A.Compose([GuidedCropPaste(bank=real, p=1.0)], seed=0)
    for _ in range(10):
        out = pipeline(image=tile, mask=np.zeros((256, 256), np.uint8))
        assert set((np.flatnonzero(out[CLASS_VECTOR_KEY]) + 1).tolist()) == set(np.unique(out["mask"])) - {0}
    # the border rule on real tiles: an image with an empty left or right band is never shifted sideways
    rng = np.random.default_rng(0)
    checked = 0
    for index in range(0, real.num_free, 25):
        image = real.load_free(index)
        borders = empty_borders(image)
        if borders.left or borders.right:
            checked += 1
            assert plan_guided_crop(real, image, np.full(5, 0.2), rng).stage.shift[1] == 0
    assert checked > 5


def test_demo_panel():
    from albu_defects.tools.demo import PANELS, panel_guided_crop

    assert panel_guided_crop in PANELS
    title, tiles = panel_guided_crop(load_samples(), np.random.default_rng(0))
    assert "Guided-Crop" in title and len(tiles) >= 4
    assert all(t.dtype == np.uint8 and t.ndim == 3 and t.shape[2] == 3 for t in tiles)


def test_mask_bbox_helper_agrees_with_boxes(bank):
    # blob boxes are tight boxes of visible pixels: mask_bbox of each class region equals its box when unique
    plan = plan_guided_crop(bank, _free(bank), np.array([0, 0, 1.0]), np.random.default_rng(3), NO_STAGE)
    result = render_guided_crop(_free(bank), plan, 3)
    for (x0, y0, x1, y1), class_id in zip(result.bboxes, result.bbox_classes, strict=True):
        window = result.mask[y0:y1, x0:x1] == class_id
        assert mask_bbox(window) == (0, 0, x1 - x0, y1 - y0)
