"""AnomalySynthesis: the N-way pseudo-anomaly task in one composition."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from albu_defects import AnomalySynthesis, CropLiq, CutPaste


def random_image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    diff = a != b
    return diff.any(axis=2) if diff.ndim == 3 else diff


def three_way(**kwargs) -> AnomalySynthesis:
    return AnomalySynthesis([CropLiq(region="image"), CutPaste(), CutPaste(variant="scar")], **kwargs)


@given(seed=st.integers(0, 100_000), channels=st.sampled_from([None, 3]))
def test_label_matches_what_was_done(seed, channels):
    shape = (64, 64) if channels is None else (64, 64, channels)
    image = random_image(shape, seed)
    mask = np.zeros((64, 64), np.uint8)
    image.setflags(write=False)
    mask.setflags(write=False)
    compose = A.Compose([three_way()], seed=seed)
    for _ in range(4):
        out = compose(image=image, mask=mask)
        label, anomaly = out["anomaly_label"], out["anomaly_mask"]
        assert label in (0, 1, 2, 3) and anomaly.shape == (64, 64) and anomaly.dtype == bool
        diff = changed(out["image"], image)
        assert not out["mask"].any()  # no mask_class_id: a pseudo-anomaly never enters the class mask
        if label == 0:
            assert not anomaly.any() and not diff.any()
        else:
            assert (anomaly & diff).any() and not (diff & ~anomaly).any()


def test_class_frequencies_follow_normal_p_and_child_weights():
    image = random_image((40, 40))
    labels = [A.Compose([three_way()], seed=s)(image=image)["anomaly_label"] for s in range(400)]
    counts = np.bincount(labels, minlength=4) / len(labels)
    assert np.all(np.abs(counts - 0.25) < 0.08), counts  # default: all four classes equally likely
    composition = AnomalySynthesis([CutPaste(p=1.0), CropLiq(p=0.0)], normal_p=0.0)
    assert {A.Compose([composition], seed=s)(image=image)["anomaly_label"] for s in range(30)} == {1}
    always_normal = AnomalySynthesis([CutPaste()], normal_p=1.0)
    assert {A.Compose([always_normal], seed=s)(image=image)["anomaly_label"] for s in range(10)} == {0}
    never_drawn = AnomalySynthesis([CutPaste()], normal_p=0.0, p=0.0)
    assert A.Compose([never_drawn], seed=0)(image=image)["anomaly_label"] == 0


def test_custom_labels():
    image = random_image((40, 40, 3))
    composition = AnomalySynthesis([CutPaste(), CutPaste(variant="scar")], labels=[5, 5], normal_label=9)
    seen = {A.Compose([composition], seed=s)(image=image)["anomaly_label"] for s in range(40)}
    assert seen == {5, 9}


def test_a_chosen_child_draws_independently_of_the_choice():
    """Compose(seed) seeds every child alike; the choice must not bias the chosen child's first draws."""
    image = random_image((100, 100))
    ratios = []
    for seed in range(300):
        out = A.Compose([AnomalySynthesis([CutPaste(variant="normal")], normal_p=0.5)], seed=seed)(image=image)
        if out["anomaly_label"] == 1:
            ratios.append(out["anomaly_mask"].sum() / image.size)
    assert len(ratios) > 100
    assert abs(np.mean(ratios) - 0.085) < 0.012  # U(0.02, 0.15); a tied stream gives about 0.117


def test_reproducible_and_round_trips_through_yaml(tmp_path):
    image = random_image((64, 64, 3))
    compose = A.Compose([A.HorizontalFlip(p=0.5), three_way(normal_p=0.2, labels=[1, 2, 2])], seed=21)
    path = tmp_path / "anomaly.yaml"
    A.save(compose, path, data_format="yaml")
    text = path.read_text()
    assert "albu_defects.AnomalySynthesis" in text and "normal_p: 0.2" in text
    loaded = A.load(path, data_format="yaml")
    loaded.set_random_seed(21)
    again = A.Compose([A.HorizontalFlip(p=0.5), three_way(normal_p=0.2, labels=[1, 2, 2])], seed=21)
    labels = []
    for _ in range(12):
        a, b, c = compose(image=image), loaded(image=image), again(image=image)
        for other in (b, c):
            assert a["anomaly_label"] == other["anomaly_label"]
            np.testing.assert_array_equal(a["image"], other["image"])
            np.testing.assert_array_equal(a["anomaly_mask"], other["anomaly_mask"])
        labels.append(a["anomaly_label"])
    assert set(labels) == {0, 1, 2}


def test_mask_class_id_that_does_not_fit_the_mask_is_a_clear_error():
    image = random_image((32, 32))
    for mask, class_id in ((np.zeros((32, 32), np.uint8), 256), (np.zeros((32, 32), bool), 2)):
        with pytest.raises(ValueError, match=f"mask_class_id={class_id}"):
            A.Compose([CutPaste(mask_class_id=class_id, p=1.0)])(image=image, mask=mask)
    with pytest.raises(ValueError, match="mask_class_id=4 has no channel"):
        A.Compose([CropLiq(mask_class_id=4, p=1.0)])(image=image, mask=np.zeros((32, 32, 3), np.uint8))


def test_successive_anomalies_accumulate_in_the_mask():
    image = random_image((64, 64))
    compose = A.Compose([CutPaste(p=1.0), CutPaste(variant="scar", label=2, p=1.0)], seed=3)
    out = compose(image=image)
    assert out["anomaly_label"] == 2
    assert not (changed(out["image"], image) & ~out["anomaly_mask"]).any()


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: AnomalySynthesis([]), "at least one"),
        (lambda: AnomalySynthesis([A.HorizontalFlip()]), r"transforms\[0\]"),
        (lambda: AnomalySynthesis([CutPaste()], labels=[1, 2]), "labels"),
        (lambda: AnomalySynthesis([CutPaste(), CropLiq()], labels=[0, 1]), "normal_label"),
        (lambda: AnomalySynthesis([CutPaste()], normal_p=1.5), "normal_p"),
        (lambda: AnomalySynthesis([CutPaste(p=0.0)]), "p=0"),
    ],
)
def test_rejects_bad_arguments(build, fragment):
    with pytest.raises(ValueError, match=fragment):
        build()


def test_demo_panels_show_the_anomaly_masks(samples):
    from albu_defects.tools.demo import PANELS, panel_cropliq, panel_cutpaste

    assert panel_cropliq in PANELS and panel_cutpaste in PANELS
    for panel in (panel_cropliq, panel_cutpaste):
        title, tiles = panel(samples, np.random.default_rng(0))
        assert "outlined" in title and len(tiles) >= 5
        for t in tiles:
            assert t.dtype == np.uint8 and t.ndim == 3
        outlined = [((t[..., 2] > 200) & (t[..., 1] < 80)).any() for t in tiles]  # red outline pixels
        assert sum(outlined) >= 5
