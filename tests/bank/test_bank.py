"""DefectBank: building from both folder layouts and arrays, sampling, statistics, save/load, CLI."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import albu_defects
from albu_defects import DefectBank, DefectBankWarning, DefectEntry, bank_reference, resolve_bank
from albu_defects.bank import format_stats, read_image
from albu_defects.data import MAGNETIC_TILE_CLASSES, load_samples, sample_root
from albu_defects.tools.cli import main as cli_main

REPO_ROOT = Path(__file__).resolve().parents[2]
STATS_KEYS = {"class", "images", "area_pct_mean", "area_pct_std", "blobs_mean", "blobs_max"}


def _blank(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _square_mask(h: int, w: int, boxes, value: int = 255) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    for y0, x0, y1, x1 in boxes:
        mask[y0:y1, x0:x1] = value
    return mask


def write_mt(root: Path, spec: dict[str, list[tuple[str, np.ndarray, np.ndarray | None]]]) -> Path:
    """A Magnetic Tile layout: spec maps class name -> [(stem, image, mask or None)]."""
    for name, items in spec.items():
        folder = root / f"MT_{name}" / "Imgs"
        folder.mkdir(parents=True, exist_ok=True)
        for stem, image, mask in items:
            cv2.imwrite(str(folder / f"{stem}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 100])
            if mask is not None:
                cv2.imwrite(str(folder / f"{stem}.png"), mask)
    return root


def build(root, **kwargs) -> DefectBank:
    kwargs.setdefault("progress", False)
    return DefectBank.from_folder(root, **kwargs)


def build_quiet(root, **kwargs) -> tuple[DefectBank, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bank = build(root, **kwargs)
    return bank, [str(w.message) for w in caught if issubclass(w.category, DefectBankWarning)]


@pytest.fixture
def mt_root(tmp_path) -> Path:
    """Three classes; Crack has two blobs with an anti-aliased edge; Fray's mask touches the border."""
    crack_mask = _square_mask(60, 80, [(10, 10, 20, 20), (30, 50, 40, 70)])
    crack_mask[9, 10:20] = 100  # anti-aliased edge below the default threshold
    crack_mask[20, 10:20] = 200  # ... and above it
    return write_mt(
        tmp_path / "mt",
        {
            "Crack": [
                ("c1", _blank(60, 80, 1), crack_mask),
                ("c2", _blank(50, 50, 2), _square_mask(50, 50, [(5, 5, 8, 9)])),
            ],
            "Fray": [("f1", _blank(40, 40, 3), _square_mask(40, 40, [(0, 0, 6, 40)]))],
            "Blowhole": [("b1", _blank(30, 30, 4), _square_mask(30, 30, [(12, 12, 15, 15)]))],
            "Free": [("g1", _blank(30, 40, 5), np.zeros((30, 40), np.uint8)), ("g2", _blank(20, 20, 6), None)],
        },
    )


# ------------------------------------------------------------------------------------------------
# Magnetic Tile layout


def test_magnetic_tile_layout_counts_entries_and_pixels(mt_root):
    bank = build(mt_root)
    assert bank.classes == ("Blowhole", "Crack", "Fray")  # not the full MT set -> sorted folder names
    assert bank.counts() == {
        "Blowhole": {"entries": 1, "images": 1, "blobs": 1},
        "Crack": {"entries": 2, "images": 2, "blobs": 3},
        "Fray": {"entries": 1, "images": 1, "blobs": 1},
    }
    assert bank.num_free == 2 and len(bank) == 4 and bank.skipped == ()
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in bank.free_images)
    assert [e.entry_id for e in bank.entries] == list(range(4))
    for entry in bank.entries:
        folder = mt_root / entry.source_id.split("/")[0] / "Imgs"
        stem = entry.source_id.split("/")[1]
        image = cv2.imread(str(folder / f"{stem}.jpg"), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(folder / f"{stem}.png"), cv2.IMREAD_UNCHANGED) > 127
        x0, y0, x1, y1 = entry.bbox
        assert entry.source_hw == image.shape
        np.testing.assert_array_equal(entry.crop, image[y0:y1, x0:x1])
        np.testing.assert_array_equal(entry.mask, mask[y0:y1, x0:x1])
        assert entry.mask.sum() == mask.sum()  # the whole defect is inside the crop
        assert entry.area_fraction == pytest.approx(mask.sum() / mask.size)
        assert entry.class_name == bank.classes[entry.class_id - 1] == entry.source_id.split("/")[0][3:]
        assert not entry.crop.flags.writeable and not entry.mask.flags.writeable
    crack = bank.entries_of("Crack")[0]
    assert crack.source_id == "MT_Crack/c1"
    assert crack.bbox == (10 - 8, 10 - 8, 70 + 8, 40 + 8)  # row 9 (100) is below the threshold
    fray = bank.entries_of("Fray")[0]
    assert fray.bbox == (0, 0, 40, 6 + 8)  # margin clipped at the image border


def test_magnetic_tile_class_order_matches_magnetic_tile_classes_when_complete(tmp_path):
    spec = {
        name: [("x", _blank(20, 20, k), _square_mask(20, 20, [(5, 5, 9, 9)]))]
        for k, name in enumerate(MAGNETIC_TILE_CLASSES)
    }
    bank = build(write_mt(tmp_path, spec))
    assert bank.classes == MAGNETIC_TILE_CLASSES
    assert [bank.class_id(name) for name in MAGNETIC_TILE_CLASSES] == [1, 2, 3, 4, 5]
    restricted = build(tmp_path, classes=["Uneven", "Break"])
    assert restricted.classes == ("Uneven", "Break") and restricted.class_id("Break") == 2
    assert {e.class_name for e in restricted.entries} == {"Uneven", "Break"}
    with pytest.raises(ValueError, match=r"Crak.*available classes"):
        build(tmp_path, classes=["Crak"])
    with pytest.raises(ValueError, match="defect-free folder"):
        build(tmp_path, classes=["Free"])


def test_threshold_and_margin_options(mt_root):
    low = build(mt_root, mask_threshold=50, margin=0)
    crack = low.entries_of("Crack")[0]
    assert crack.bbox == (10, 9, 70, 40)  # the 100-valued row counts now, and there is no margin
    assert crack.mask[0, :10].all()
    with pytest.raises(ValueError, match="margin"):
        build(mt_root, margin=-1)


def test_bundled_samples_match_load_samples():
    bank = build(sample_root())
    samples = load_samples()
    defects = [s for s in samples if s.class_name != "Free"]
    assert bank.classes == MAGNETIC_TILE_CLASSES
    assert bank.num_free == sum(s.class_name == "Free" for s in samples)
    assert len(bank) == len(defects)
    for sample in defects:
        (entry,) = [e for e in bank.entries if e.source_id == f"MT_{sample.class_name}/{sample.name}"]
        assert entry.class_id == sample.class_id
        x0, y0, x1, y1 = entry.bbox
        np.testing.assert_array_equal(entry.crop, sample.image[y0:y1, x0:x1])
        np.testing.assert_array_equal(entry.mask, sample.mask[y0:y1, x0:x1])
        assert entry.mask.sum() == sample.mask.sum()
        count, _ = cv2.connectedComponents(sample.mask.astype(np.uint8), connectivity=8)
        assert entry.num_blobs == count - 1


# ------------------------------------------------------------------------------------------------
# Generic layout


def write_generic(root: Path, items: dict[str, tuple[np.ndarray, np.ndarray]], image_ext=".png") -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem, (image, mask) in items.items():
        if image_ext == ".npy":
            np.save(root / "images" / f"{stem}.npy", image)
        else:
            stored = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 and image.shape[2] == 3 else image
            assert cv2.imwrite(str(root / "images" / f"{stem}{image_ext}"), stored)
        cv2.imwrite(str(root / "masks" / f"{stem}.png"), mask)
    return root


def test_generic_layout_multi_class_images_and_class_names_file(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    two_classes = np.zeros((40, 50), np.uint8)
    two_classes[2:6, 3:9] = 1
    two_classes[30:35, 40:48] = 2
    only_two = np.zeros((40, 50), np.uint8)
    only_two[10:20, 10:20] = 2
    root = write_generic(
        tmp_path / "g",
        {"a": (rgb, two_classes), "b": (rgb, only_two), "free": (rgb, np.zeros((40, 50), np.uint8))},
    )
    (root / "classes.txt").write_text("scratch\ndent\n")
    bank = build(root)
    assert bank.classes == ("scratch", "dent")
    assert bank.counts()["scratch"]["images"] == 1 and bank.counts()["dent"]["images"] == 2
    assert bank.class_sets() == {(): 1, (1, 2): 1, (2,): 1}
    assert bank.num_free == 1 and bank.free_images[0].endswith("free.png")
    np.testing.assert_array_equal(bank.load_free(0), rgb)  # colour comes back as RGB
    a_dent = next(e for e in bank.entries if e.source_id == "a" and e.class_name == "dent")
    x0, y0, x1, y1 = a_dent.bbox
    np.testing.assert_array_equal(a_dent.crop, rgb[y0:y1, x0:x1])
    np.testing.assert_array_equal(a_dent.mask, (two_classes == 2)[y0:y1, x0:x1])
    # class_names argument (dict) wins over the file; classes= restricts and orders
    named = build(root, class_names={1: "s", 2: "d"}, classes=["d"])
    assert named.classes == ("d",) and len(named) == 2 and named.entries[0].class_id == 1
    (root / "classes.txt").unlink()
    default = build(root)
    assert default.classes == ("class_1", "class_2")


@pytest.mark.parametrize(
    ("dtype", "ext"), [(np.uint16, ".png"), (np.float32, ".tiff"), (np.float32, ".npy"), (np.uint8, ".bmp")]
)
def test_generic_layout_keeps_dtype_and_round_trips(tmp_path, dtype, ext):
    rng = np.random.default_rng(1)
    if dtype == np.float32:
        image = rng.random((30, 30)).astype(np.float32)
    else:
        image = rng.integers(0, np.iinfo(dtype).max, (30, 30), dtype=dtype)
    mask = _square_mask(30, 30, [(10, 10, 14, 20)], value=1)
    bank = build(write_generic(tmp_path / "g", {"x": (image, mask)}, image_ext=ext))
    (entry,) = bank.entries
    assert entry.crop.dtype == dtype
    np.testing.assert_array_equal(entry.crop, image[2:22, 2:28])
    loaded = DefectBank.load(bank.save(tmp_path / "bank"))
    assert loaded == bank and loaded.entries[0].crop.dtype == dtype


# ------------------------------------------------------------------------------------------------
# from_arrays, blobs, sampling


def test_from_arrays_labels_class_masks_and_free_arrays(tmp_path):
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(4)]
    for image in images:
        image.setflags(write=False)
    anti_aliased = _square_mask(32, 32, [(4, 4, 10, 10)], value=200)
    anti_aliased[3, 4:10] = 40
    masks = [anti_aliased, _square_mask(32, 32, [(20, 20, 30, 22)]), np.zeros((32, 32), np.uint8), anti_aliased]
    bank = DefectBank.from_arrays(
        images, masks, labels=[2, 1, 0, 2], class_names=["dent", "scratch"], mask_threshold=50
    )
    assert bank.classes == ("dent", "scratch") and bank.counts()["scratch"]["entries"] == 2
    assert bank.entries_of("scratch")[0].bbox == (0, 0, 18, 18)  # the 40-valued row is below the threshold
    assert bank.num_free == 1 and bank.free_images[0] is not images[2]
    np.testing.assert_array_equal(bank.free_images[0], images[2])
    assert not bank.free_images[0].flags.writeable

    class_index = np.zeros((32, 32), np.uint8)
    class_index[1:3, 1:3] = 1
    class_index[20:25, 5:9] = 3
    with pytest.warns(DefectBankWarning, match="1 class.*no defects: class_2"):
        by_index = DefectBank.from_arrays(np.stack([images[0], images[1]]), [class_index, np.zeros((32, 32), bool)])
    assert by_index.classes == ("class_1", "class_2", "class_3")
    assert [e.class_id for e in by_index.entries] == [1, 3] and by_index.num_free == 1

    saved = bank.save(tmp_path / "arrays_bank")
    stored = Path(bank.free_images[0])  # now read from the bank
    assert stored.name == "000000.npy" and stored.is_relative_to(saved) and stored.is_file()
    loaded = DefectBank.load(saved)
    assert loaded == bank
    np.testing.assert_array_equal(loaded.load_free(0), images[2])


def test_from_arrays_rejects_bad_input():
    image = np.zeros((10, 10), np.uint8)
    with pytest.raises(ValueError, match="same length"):
        DefectBank.from_arrays([image], [])
    with pytest.raises(ValueError, match=r"masks\[0\] is \(9, 10\)"):
        DefectBank.from_arrays([image], [np.zeros((9, 10), np.uint8)])
    with pytest.raises(ValueError, match=r"images\[0\].*dtype int64"):
        DefectBank.from_arrays([image.astype(np.int64)], [image])
    with pytest.raises(ValueError, match="class_names names only 1"):
        DefectBank.from_arrays([image], [_square_mask(10, 10, [(1, 1, 3, 3)], value=2)], class_names=["a"])
    with pytest.raises(ValueError, match=r"labels\[0\] is 0"):
        DefectBank.from_arrays([image], [_square_mask(10, 10, [(1, 1, 3, 3)])], labels=[0])
    with pytest.warns(DefectBankWarning) as caught:
        bank = DefectBank.from_arrays([image], [image], labels=[1], class_names=["a"])
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and "skipped 1 defect-class image" in messages[0] and "array_0" in messages[0]
    assert "1 class(es) have no defects: a" in messages[1]
    with pytest.raises(ValueError, match="not one array"):
        DefectBank.from_arrays(image, image)
    assert bank.skipped[0].reason == "empty_mask"
    with pytest.raises(ValueError, match="strict"):
        DefectBank.from_arrays([image], [image], labels=[1], class_names=["a"], strict=True)


@given(
    mask=hnp.arrays(np.bool_, st.tuples(st.integers(3, 24), st.integers(3, 24)), elements=st.booleans()),
    margin=st.integers(0, 5),
)
def test_blobs_match_cv2_connected_components(mask, margin):
    if not mask.any():
        mask[0, 0] = True
    image = np.arange(mask.size, dtype=np.uint16).reshape(mask.shape)
    (entry,) = DefectBank.from_arrays([image], [mask], margin=margin).entries
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    assert entry.num_blobs == count - 1
    x0, y0, x1, y1 = entry.bbox
    reference = labels[y0:y1, x0:x1]
    # the same partition: each bank blob is exactly one cv2 blob
    inside = entry.mask
    assert (reference[inside] > 0).all() and not (entry.blob_labels[~inside]).any()
    pairs = set(zip(entry.blob_labels[inside].tolist(), reference[inside].tolist(), strict=True))
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs}) == count - 1
    assert entry.blob_labels.max() == entry.num_blobs


def test_sampling_is_reproducible_and_restricts_blobs(mt_root):
    bank = build(mt_root)
    draws = [bank.draw("Crack", np.random.default_rng(7)).entry_id for _ in range(3)]
    assert len(set(draws)) == 1
    assert {bank.draw(2, np.random.default_rng(s)).source_id for s in range(30)} == {"MT_Crack/c1", "MT_Crack/c2"}
    seen_subsets = set()
    for seed in range(40):
        part = bank.draw_blobs("Crack", np.random.default_rng(seed))
        again = bank.draw_blobs("Crack", np.random.default_rng(seed))
        assert part == again
        whole = bank.entries[part.entry_id]
        every_blob = tuple(range(1, whole.num_blobs + 1))
        if part.blob_subset is None:  # every blob drawn: the entry itself comes back
            assert part is whole
        subset = part.blob_subset or every_blob
        assert subset and set(subset) <= set(every_blob)
        assert part.num_blobs == len(subset)
        seen_subsets.add((part.source_id, subset))
        # the tightened crop is the same source pixels, and its mask is the chosen blobs only
        ox, oy = part.bbox[0] - whole.bbox[0], part.bbox[1] - whole.bbox[1]
        window = (slice(oy, oy + part.hw[0]), slice(ox, ox + part.hw[1]))
        np.testing.assert_array_equal(part.crop, whole.crop[window])
        np.testing.assert_array_equal(part.mask, np.isin(whole.blob_labels, subset)[window])
        assert part.mask.sum() == np.isin(whole.blob_labels, subset).sum()
        assert part.area_fraction <= whole.area_fraction
    assert seen_subsets == {
        ("MT_Crack/c1", (1,)),
        ("MT_Crack/c1", (2,)),
        ("MT_Crack/c1", (1, 2)),
        ("MT_Crack/c2", (1,)),
    }
    whole = bank.entries_of("Crack")[0]
    assert whole.with_blobs([1]).bbox == whole.bbox  # margin=None keeps the crop
    with pytest.raises(ValueError, match="non-empty subset"):
        whole.with_blobs([3])


def test_class_errors_name_the_class(tmp_path):
    spec = {
        "Crack": [("c", _blank(20, 20, 0), _square_mask(20, 20, [(2, 2, 5, 5)]))],
        "Fray": [("f", _blank(20, 20, 1), np.zeros((20, 20), np.uint8))],
    }
    bank, messages = build_quiet(write_mt(tmp_path, spec))
    assert any("1 class(es) have no defects: Fray" in m for m in messages)
    assert any("skipped 1 defect-class image(s) whose mask is empty" in m and "MT_Fray/f" in m for m in messages)
    with pytest.raises(ValueError, match=r"'Fray' \(id 2\) has no entries"):
        bank.draw("Fray", np.random.default_rng(0))
    with pytest.raises(ValueError, match="'Fray'"):
        bank.draw_blobs(2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown defect class 'Dent'"):
        bank.draw("Dent", np.random.default_rng(0))
    with pytest.raises(ValueError, match="background"):
        bank.draw(0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown class id 3"):
        bank.class_id(3)
    with pytest.raises(ValueError, match="Generator"):
        bank.draw(1, np.random.RandomState(0))


def test_stats_rows(mt_root):
    bank = build(mt_root)
    rows = bank.stats()
    assert [r["class"] for r in rows] == [*bank.classes, "free"]
    assert all(set(r) == STATS_KEYS for r in rows)
    crack = rows[1]
    areas = [100 * e.area_fraction for e in bank.entries_of("Crack")]
    assert crack["images"] == 2
    assert crack["area_pct_mean"] == pytest.approx(np.mean(areas))
    assert crack["area_pct_std"] == pytest.approx(np.std(areas))
    assert (crack["blobs_mean"], crack["blobs_max"]) == (1.5, 2)
    assert rows[-1]["images"] == 2
    table = format_stats(rows)
    assert "| Crack | 2 |" in table and "| free | 2 |" in table


# ------------------------------------------------------------------------------------------------
# Bad input


def test_bad_sources_are_counted_and_named(tmp_path):
    root = write_mt(
        tmp_path,
        {
            "Crack": [
                ("ok", _blank(20, 20, 0), _square_mask(20, 20, [(2, 2, 5, 5)])),
                ("nomask", _blank(20, 20, 1), None),
                ("mismatch", _blank(20, 20, 2), _square_mask(21, 20, [(2, 2, 5, 5)])),
                ("empty", _blank(20, 20, 3), np.zeros((20, 20), np.uint8)),
            ],
            "Free": [("g", _blank(20, 20, 4), _square_mask(20, 20, [(1, 1, 2, 2)]))],
        },
    )
    imgs = root / "MT_Crack" / "Imgs"
    (imgs / "broken.jpg").write_bytes(b"not a jpeg")
    cv2.imwrite(str(imgs / "broken.png"), _square_mask(20, 20, [(2, 2, 5, 5)]))
    cv2.imwrite(str(imgs / "orphan.png"), _square_mask(20, 20, [(2, 2, 5, 5)]))
    bank, messages = build_quiet(root)
    assert [e.source_id for e in bank.entries] == ["MT_Crack/ok"]
    reasons = {s.source_id: s.reason for s in bank.skipped}
    assert reasons == {
        "MT_Crack/broken": "unreadable",
        "MT_Crack/empty": "empty_mask",
        "MT_Crack/mismatch": "size_mismatch",
        "MT_Crack/nomask": "missing_mask",
        "MT_Crack/orphan": "missing_image",
    }
    assert len(messages) == 5 and all("skipped 1 " in m for m in messages)
    assert bank.num_free == 1  # free images are listed, not read, by default
    strict_free, messages = build_quiet(root, verify_free=True)
    assert strict_free.num_free == 0 and "MT_Free/g" in {s.source_id for s in strict_free.skipped}
    assert any("defect-free image(s) whose mask is not empty" in m for m in messages)
    with pytest.raises(ValueError, match="strict=True"):
        build(root, strict=True)


def test_generic_bad_inputs(tmp_path):
    image = _blank(10, 10, 0)
    root = write_generic(tmp_path / "g", {"a": (image, _square_mask(10, 10, [(1, 1, 3, 3)], value=3))})
    (root / "images" / "b.png").write_bytes(b"")
    cv2.imwrite(str(root / "masks" / "b.png"), image)
    bank, _ = build_quiet(root, class_names=["x", "y"])
    assert {s.reason for s in bank.skipped} == {"unknown_class", "unreadable"}
    assert any("mask values [3]" in s.detail for s in bank.skipped)
    np.save(root / "images" / "c.npy", np.zeros((10, 10), np.int16))
    cv2.imwrite(str(root / "masks" / "c.png"), image)
    bank, _ = build_quiet(root, class_names={3: "z"})
    assert {s.source_id: s.reason for s in bank.skipped} == {"b": "unreadable", "c": "unsupported"}
    assert len(bank) == 1 and bank.classes == ("z",)


def test_unknown_layout_and_missing_root(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(ValueError, match="unknown layout"):
        build(tmp_path)
    with pytest.raises(ValueError, match="unknown layout 'coco'"):
        build(tmp_path, layout="coco")
    with pytest.raises(ValueError, match="not a folder"):
        build(tmp_path / "missing")
    with pytest.raises(ValueError, match="images and"):
        build(tmp_path, layout="generic")


# ------------------------------------------------------------------------------------------------
# Saving, loading, pickling, caching


def test_save_load_round_trip_and_moving_the_dataset(mt_root, tmp_path):
    bank = build(mt_root)
    path = bank.save(tmp_path / "bank", copy_free=True)
    index = json.loads((path / "index.json").read_text())
    stored = {index["arrays"], *(ref["file"] for ref in index["free"])}
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert bank.path == path and on_disk == stored | {"index.json"} and len(stored) == 3
    moved = mt_root.rename(tmp_path / "moved")  # the dataset moves: the bank must not care
    loaded = DefectBank.load(path)
    assert loaded == bank and loaded.path == path
    assert loaded.build_info["layout"] == "magnetic_tile" and loaded.build_info["mask_threshold"] == 127
    np.testing.assert_array_equal(
        loaded.load_free(0), cv2.imread(str(moved / "MT_Free" / "Imgs" / "g1.jpg"), cv2.IMREAD_UNCHANGED)
    )
    assert all(not e.crop.flags.writeable for e in loaded.entries)
    # saving again over the bank (its free images live in it) works, and the cache sees the change
    loaded.save(path)
    assert DefectBank.load(path) == loaded
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not a defect bank"):
        bank.save(tmp_path / "other")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bank")]  # no staging folders left


def test_free_images_stay_external_by_default(mt_root, tmp_path):
    bank = build(mt_root)
    path = bank.save(tmp_path / "bank")
    index = json.loads((path / "index.json").read_text())
    assert all(set(ref) == {"external"} and Path(ref["external"]).is_absolute() for ref in index["free"])
    assert not (path / "free").exists()
    assert DefectBank.load(path).free_images == bank.free_images


def test_pickling_a_saved_bank_sends_only_the_path(mt_root, tmp_path):
    bank = build(mt_root)
    heavy = pickle.dumps(bank)
    assert pickle.loads(heavy) == bank  # unsaved: pickled in full
    bank.save(tmp_path / "bank")
    light = pickle.dumps(bank)
    assert len(light) < 300 < len(heavy) and str(tmp_path / "bank").encode() in light
    assert pickle.loads(light) == bank
    code = (
        "import pickle, sys; from albu_defects.bank.registry import _CACHE; b = pickle.loads(sys.stdin.buffer.read()); "
        "print(len(b), b.num_free, len(_CACHE))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=light,
        capture_output=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert out.stdout.split() == [b"4", b"2", b"1"]


def test_resolve_bank_loads_each_folder_once(mt_root, tmp_path, monkeypatch):
    bank = build(mt_root)
    with pytest.raises(ValueError, match=r"save it first with bank.save\(path\)"):
        bank_reference(bank)
    path = bank.save(tmp_path / "bank")
    assert bank_reference(bank) == str(path) and bank_reference("some/where") == "some/where"
    assert resolve_bank(bank) is bank
    assert resolve_bank(str(path)) is bank  # save() registered it
    monkeypatch.chdir(tmp_path)
    loads = []
    original = DefectBank.load.__func__

    def counting_load(cls, p):
        loads.append(p)
        return original(cls, p)

    monkeypatch.setattr(DefectBank, "load", classmethod(counting_load))
    build(mt_root, classes=["Crack"]).save(path)  # the index changes: the cache must reload
    first = resolve_bank(Path("bank"))
    assert first.classes == ("Crack",) and first is not bank
    assert resolve_bank(str(path)) is first and resolve_bank(f"{tmp_path}/./bank") is first
    assert len(loads) == 0  # save() itself registered the new bank
    albu_defects.bank.registry._CACHE.clear()
    again = resolve_bank("bank")
    assert again == first and again is not first and resolve_bank(path) is again and len(loads) == 1
    with pytest.raises(ValueError, match="not a defect bank"):
        resolve_bank(tmp_path / "nothing")
    with pytest.raises(ValueError, match="DefectBank or the path"):
        resolve_bank(3)


def _tamper(path: Path, edit) -> None:
    index = json.loads((path / "index.json").read_text())
    edit(index)
    (path / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    "edit",
    [
        lambda i: i.update(arrays="../entries.npz"),
        lambda i: i.update(arrays="/etc/passwd"),
        lambda i: i.update(arrays="sub/../../x.npz"),
        lambda i: i["free"].__setitem__(0, {"file": "../../secret.png"}),
        lambda i: i["free"].__setitem__(0, {"external": "relative/path.png"}),
    ],
)
def test_load_rejects_paths_outside_the_bank(mt_root, tmp_path, edit):
    path = build(mt_root).save(tmp_path / "bank", copy_free=True)
    _tamper(path, edit)
    with pytest.raises(ValueError, match=r"not a path inside the folder|must be an absolute path"):
        DefectBank.load(path)


def test_load_rejects_symlinks_escaping_pickles_and_corruption(mt_root, tmp_path):
    path = build(mt_root).save(tmp_path / "bank")
    arrays = path / json.loads((path / "index.json").read_text())["arrays"]
    outside = tmp_path / "outside.npz"
    arrays.rename(outside)
    arrays.symlink_to(outside)
    with pytest.raises(ValueError, match="symbolic link"):
        DefectBank.load(path)
    with np.load(outside) as npz:
        members = {name: npz[name] for name in npz.files}
    arrays.unlink()
    np.savez(arrays, **{**members, "masks_packed": np.array([{"evil": 1}], dtype=object)})
    with pytest.raises(ValueError, match=r"masks_packed is not a bank array \(has dtype object") as caught:
        DefectBank.load(path)
    assert "pickle" not in str(caught.value)
    arrays.unlink()
    outside.rename(arrays)
    assert len(DefectBank.load(path)) == 4
    _tamper(path, lambda i: i["entries"][0].update(offset=10**9))
    with pytest.raises(ValueError, match=r"corrupt defect bank.*entries\[0\]\.offset"):
        DefectBank.load(path)
    _tamper(path, lambda i: i.update(version=99))
    with pytest.raises(ValueError, match="version: 99 is not supported"):
        DefectBank.load(path)
    (path / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        DefectBank.load(path)


def test_read_image_converts_colour_and_rejects_garbage(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (5, 6, 4), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba)
    (tmp_path / "b.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="could not be read"):
        read_image(tmp_path / "b.png")
    np.save(tmp_path / "c.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="could not be read"):
        read_image(tmp_path / "c.npy")


# ------------------------------------------------------------------------------------------------
# CLI


def test_cli_build_and_stats(tmp_path, capsys):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "NO_ALBUMENTATIONS_UPDATE": "1"}
    out = tmp_path / "bank"
    cmd = [
        sys.executable,
        "-m",
        "albu_defects",
        "bank",
        "build",
        str(sample_root()),
        "-o",
        str(out),
        "--threshold",
        "127",
    ]
    built = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    assert "DefectBank" in built.stderr and "100%" in built.stderr  # the progress bar
    assert f"wrote {out}" in built.stdout and "| Crack | 2 |" in built.stdout
    stats = subprocess.run(
        [sys.executable, "-m", "albu_defects", "bank", "stats", str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    expected = format_stats(DefectBank.load(out).stats())
    assert stats.stdout.strip() == expected and "| free | 3 |" in expected
    assert cli_main(["bank", "stats", str(tmp_path / "nope")]) == 2
    assert "not a defect bank" in capsys.readouterr().err
    assert cli_main(["bank", "build", str(tmp_path / "nope"), "-o", str(tmp_path / "b")]) == 2
    assert "not a folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Real Magnetic Tile data


@pytest.fixture(scope="module")
def real_bank(magnetic_tile_root, tmp_path_factory):
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bank = DefectBank.from_folder(magnetic_tile_root, progress=False)
    seconds = time.perf_counter() - start
    path = bank.save(tmp_path_factory.mktemp("real") / "bank")
    return bank, path, [str(w.message) for w in caught], seconds


def test_real_magnetic_tile_counts_and_reports_empty_masks(real_bank):
    bank, path, messages, seconds = real_bank
    empty = ["exp3_num_45042", "exp4_num_124690", "exp4_num_352527", "exp4_num_45057"]
    assert bank.classes == MAGNETIC_TILE_CLASSES
    images = {name: c["images"] for name, c in bank.counts().items()}
    assert images == {"Blowhole": 115, "Break": 85, "Crack": 57, "Fray": 32, "Uneven": 103 - 4}
    assert bank.num_free == 952
    assert [(s.source_id, s.reason) for s in bank.skipped] == [(f"MT_Uneven/{n}", "empty_mask") for n in empty]
    (message,) = messages
    assert "skipped 4 defect-class image(s) whose mask is empty" in message and all(n in message for n in empty)
    assert seconds < 30  # target < 10 s on a quiet machine (benchmarks/bench_bank.py)
    start = time.perf_counter()
    loaded = DefectBank.load(path)
    assert time.perf_counter() - start < 2.0  # target < 0.5 s on a quiet machine
    assert loaded == bank and loaded.skipped == bank.skipped
    rows = {r["class"]: r for r in loaded.stats()}
    assert rows["free"]["images"] == 952 and rows["Uneven"]["images"] == 99
    assert all(r["blobs_max"] >= 1 and r["area_pct_mean"] > 0 for c, r in rows.items() if c != "free")
    assert loaded.load_free(0).dtype == np.uint8 and loaded.load_free(0).ndim == 2
    part = loaded.draw_blobs("Break", np.random.default_rng(0))
    assert part.mask.any() and part.class_name == "Break"


def test_entry_rejects_inconsistent_fields():
    crop = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="empty mask"):
        DefectEntry(0, 1, "a", "s", (10, 10), (0, 0, 4, 4), crop, np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="inside its"):
        DefectEntry(0, 1, "a", "s", (10, 10), (8, 8, 12, 12), crop, np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="entry ids must be their index"):
        DefectBank(["a"], [DefectEntry(3, 1, "a", "s", (10, 10), (0, 0, 4, 4), crop, np.ones((4, 4), bool))])


def test_version_1_banks_load_and_are_saved_as_version_2(tmp_path):
    # the 0.1.0 bank of tests/fixtures stored boxes as (y0, x0, y1, x1); version 2 stores the box itself
    old = DefectBank.load(REPO_ROOT / "tests" / "fixtures" / "saved_0_1_0" / "bank")
    index = json.loads((REPO_ROOT / "tests" / "fixtures" / "saved_0_1_0" / "bank" / "index.json").read_text())
    assert index["version"] == 1
    for entry, meta in zip(old.entries, index["entries"], strict=True):
        y0, x0, y1, x1 = meta["bbox"]
        assert entry.bbox == (x0, y0, x1, y1) and entry.crop.shape[:2] == (y1 - y0, x1 - x0)
    new_index = json.loads((old.save(tmp_path / "bank") / "index.json").read_text())
    assert new_index["version"] == 2
    assert [tuple(meta["bbox"]) for meta in new_index["entries"]] == [e.bbox for e in old.entries]
    assert DefectBank.load(tmp_path / "bank") == old
