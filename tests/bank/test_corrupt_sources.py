"""Truncated or corrupt image files never enter a bank (issue 12 item 8).

OpenCV's ``imread`` decodes a truncated JPEG into an image whose missing part is grey fill (it only
prints "Premature end of JPEG file"); a bank built on it stores a crop that is mostly fill under a
defect mask. Such files must be skipped with the counted warning the other bad sources get.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

import albu_defects as ad
from albu_defects.bank import read_image


def _image(seed: int, h: int = 120, w: int = 160) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (7, 7), 2)


def _defect_mask(h: int = 120, w: int = 160) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[30:90, 40:120] = 255
    return mask


def _jpeg(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return encoded.tobytes()


def write_magnetic_tile(root: Path, truncate: float | None, where: str = "image") -> Path:
    """Crack: c0 (intact), c1 (its image or mask cut at ``truncate`` of its bytes); Free: f0."""
    folder = root / "MT_Crack" / "Imgs"
    folder.mkdir(parents=True)
    for stem, seed in (("c0", 0), ("c1", 1)):
        image_bytes = _jpeg(_image(seed))
        _, mask_png = cv2.imencode(".png", _defect_mask())
        mask_bytes = mask_png.tobytes()
        if stem == "c1" and truncate is not None:
            if where == "image":
                image_bytes = image_bytes[: int(len(image_bytes) * truncate)]
            else:
                mask_bytes = mask_bytes[: int(len(mask_bytes) * truncate)]
        (folder / f"{stem}.jpg").write_bytes(image_bytes)
        (folder / f"{stem}.png").write_bytes(mask_bytes)
    free = root / "MT_Free" / "Imgs"
    free.mkdir(parents=True)
    (free / "f0.jpg").write_bytes(_jpeg(_image(2)))
    return root


def build(root: Path, **kwargs) -> tuple[ad.DefectBank, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bank = ad.DefectBank.from_folder(root, progress=False, **kwargs)
    return bank, [str(w.message) for w in caught if issubclass(w.category, ad.DefectBankWarning)]


@pytest.mark.parametrize("truncate", [0.3, 0.6, 0.97])
def test_a_truncated_jpeg_is_skipped_with_a_counted_warning(tmp_path, truncate):
    bank, messages = build(write_magnetic_tile(tmp_path / "mt", truncate))
    assert [e.source_id for e in bank.entries] == ["MT_Crack/c0"], "a truncated JPEG entered the bank"
    assert [(s.source_id, s.reason) for s in bank.skipped] == [("MT_Crack/c1", "unreadable")]
    assert "truncated" in bank.skipped[0].detail or "corrupt" in bank.skipped[0].detail, bank.skipped[0].detail
    assert any("skipped 1 " in m and "MT_Crack/c1" in m for m in messages), messages


def test_a_truncated_jpeg_is_refused_strictly_and_by_read_image(tmp_path):
    root = write_magnetic_tile(tmp_path / "mt", 0.6)
    with pytest.raises(ValueError, match="c1"):
        build(root, strict=True)
    with pytest.raises(ValueError, match=r"c1\.jpg.*(truncated|corrupt)"):
        read_image(root / "MT_Crack" / "Imgs" / "c1.jpg")


def test_a_truncated_free_image_is_caught_when_verified(tmp_path):
    root = write_magnetic_tile(tmp_path / "mt", None)
    free = root / "MT_Free" / "Imgs" / "f0.jpg"
    free.write_bytes(free.read_bytes()[:-600])
    bank, _ = build(root, verify_free=True)
    assert bank.num_free == 0 and [s.source_id for s in bank.skipped] == ["MT_Free/f0"], bank.skipped


def test_a_truncated_png_mask_is_skipped(tmp_path):
    bank, _ = build(write_magnetic_tile(tmp_path / "mt", 0.5, where="mask"))
    assert [e.source_id for e in bank.entries] == ["MT_Crack/c0"]
    assert [(s.source_id, s.reason) for s in bank.skipped] == [("MT_Crack/c1", "unreadable")]


def test_a_truncated_jpeg_in_the_generic_layout_is_skipped(tmp_path):
    root = tmp_path / "generic"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    mask = (_defect_mask() > 0).astype(np.uint8)
    for stem, seed in (("a", 0), ("b", 1)):
        data = _jpeg(_image(seed))
        (root / "images" / f"{stem}.jpg").write_bytes(data if stem == "a" else data[: len(data) // 2])
        cv2.imwrite(str(root / "masks" / f"{stem}.png"), mask)
    bank, _ = build(root)
    assert [e.source_id for e in bank.entries] == ["a"]
    assert [(s.source_id, s.reason) for s in bank.skipped] == [("b", "unreadable")]


def test_intact_jpegs_with_trailing_bytes_or_progressive_coding_still_read(tmp_path):
    """No false alarm: bytes after the end marker, progressive and restart-marker JPEGs are fine."""
    image = _image(3)
    cases = {
        "trailing.jpg": _jpeg(image) + b"\x00" * 100 + b"camera trailer",
        "progressive.jpg": cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
        "restart.jpg": cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_RST_INTERVAL, 4])[1].tobytes(),
        "color.jpg": _jpeg(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        out = read_image(tmp_path / name)
        assert out.shape[:2] == image.shape, name


@pytest.mark.realdata
def test_every_real_magnetic_tile_jpeg_is_complete_and_every_cut_is_caught(magnetic_tile_root):
    """No false alarm on the 1,344 real JPEGs; each of them cut short anywhere is caught."""
    from albu_defects.bank.io import jpeg_is_complete

    files = sorted(magnetic_tile_root.glob("MT_*/Imgs/*.jpg"))
    assert len(files) == 1344
    incomplete = [f.name for f in files if not jpeg_is_complete(f.read_bytes())]
    assert incomplete == []
    for path in files[::25]:
        data = path.read_bytes()
        for fraction in (0.2, 0.5, 0.9, 0.999):
            assert not jpeg_is_complete(data[: int(len(data) * fraction)]), (path.name, fraction)
