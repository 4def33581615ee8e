"""PoissonPaste (issue 14, sec. 1): user-supplied objects pasted with the exact Poisson core.

The contract suite (tests/contract, spec ``PoissonPaste``) covers dtypes, layouts, no mutation,
seeds, YAML, p=0 and bad inputs over hypothesis-drawn inputs; these tests pin the behaviour the
issue names: exact blending, border objects, every dtype and channel count, labels (front object
wins, multi-hot masks, boxes with label fields, class_vector), regions, scale and flips.
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

import albu_defects as ad

X = ad.IS_ALBUMENTATIONS_X
FORMAT = "coord_format" if X else "format"


def bbox_params(**kwargs) -> A.BboxParams:
    return A.BboxParams(**{FORMAT: "pascal_voc"}, **kwargs)


def host(shape=(48, 64), dtype=np.uint8, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    white = 1.0 if dtype == np.float32 else np.iinfo(dtype).max
    return (rng.uniform(0.1, 0.4, shape) * white).astype(dtype)


def donor(hw=(12, 16), dtype=np.uint8, channels=None, class_id=2, seed=1, **extra) -> dict:
    rng = np.random.default_rng(seed)
    white = 1.0 if dtype == np.float32 else np.iinfo(dtype).max
    shape = hw if channels is None else (*hw, channels)
    image = (rng.uniform(0.7, 1.0, shape) * white).astype(dtype)
    mask = np.zeros(hw, bool)
    mask[2:-2, 3:-3] = True
    mask[2, 3] = False  # not a rectangle
    return {"image": image, "mask": mask, "class_id": class_id, **extra}


def run(transform, seed=0, bboxes=None, **data):
    params = {"bbox_params": bbox_params(label_fields=["labels"])} if bboxes is not None else {}
    if bboxes is not None:
        data = {"bboxes": bboxes, **data}
    return A.Compose([transform], seed=seed, **params)(**data)


def exact_perez(target: np.ndarray, source: np.ndarray, mask: np.ndarray, top_left) -> np.ndarray:
    """An independent solve of the masked Perez equation (normal mode, one channel) with scipy."""
    import scipy.sparse
    import scipy.sparse.linalg

    h, w = target.shape
    placed = np.zeros((h, w), bool)
    src = np.zeros((h, w))
    y, x = top_left
    placed[y : y + mask.shape[0], x : x + mask.shape[1]] = mask
    src[y : y + mask.shape[0], x : x + mask.shape[1]] = source
    index = -np.ones((h, w), int)
    pixels = np.argwhere(placed)
    index[placed] = np.arange(len(pixels))
    rows, cols, vals, rhs = [], [], [], np.zeros(len(pixels))
    for k, (r, c) in enumerate(pixels):
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            rr, cc = r + dr, c + dc
            if not (0 <= rr < h and 0 <= cc < w):
                continue  # natural boundary on the image border
            rows.append(k)
            cols.append(k)
            vals.append(1.0)
            rhs[k] += src[r, c] - src[rr, cc]  # guidance: the donor's gradient
            if placed[rr, cc]:
                rows.append(k)
                cols.append(index[rr, cc])
                vals.append(-1.0)
            else:
                rhs[k] += target[rr, cc]
    matrix = scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(len(pixels),) * 2)
    out = target.astype(np.float64).copy()
    out[placed] = scipy.sparse.linalg.spsolve(matrix, rhs)
    return out


def test_poisson_paste_is_the_exact_perez_solution_and_touches_nothing_else():
    image = host()
    item = donor()
    transform = ad.PoissonPaste(blend_margin=0, p=1.0)
    out = run(transform, image=image, mask=np.zeros(image.shape, np.uint8), paste_metadata=[item])
    placed = out["mask"] == 2
    assert placed.sum() == item["mask"].sum()
    ys, xs = np.nonzero(placed)
    top_left = (ys.min() - 2, xs.min() - 3)  # the mask's box starts at (2, 3) in the donor
    # the donor's source gradients: the solve reads the donor one pixel around its mask
    source = item["image"].astype(np.float64)
    expected = exact_perez(image.astype(np.float64), source, item["mask"], top_left)
    np.testing.assert_array_equal(out["image"][~placed], image[~placed])  # nothing outside the mask
    assert np.abs(out["image"][placed] - np.clip(np.rint(expected[placed]), 0, 255)).max() <= 1


@pytest.mark.parametrize("corner", ["top-left", "bottom-right", "whole image"])
def test_objects_touching_the_image_border_are_blended(corner):
    """cv2.seamlessClone raises for regions reaching the border; the exact solver has a natural condition there."""
    image = host((20, 24))
    if corner == "whole image":
        item = {"image": host((20, 24), seed=5) + 100, "mask": np.ones((20, 24), bool), "class_id": 1}
    else:
        item = donor((20, 24))
    region = np.zeros(image.shape, bool)
    if corner == "top-left":
        region[:16, :18] = True  # the object's mask box is 16x18: the only position touches the corner
    elif corner == "bottom-right":
        region[4:, 6:] = True
    else:
        region[:] = True
    transform = ad.PoissonPaste(region="mask", blend_margin=0, p=1.0)
    out = run(transform, image=image, mask=np.zeros(image.shape, np.uint8), object_mask=region, paste_metadata=[item])
    placed = out["mask"] == item["class_id"]
    assert placed.sum() == item["mask"].sum()
    changed = out["image"] != image
    assert changed.any() and not (changed & ~placed).any()
    if corner == "top-left":
        assert placed[0].any() and placed[:, 0].any()
    if corner == "bottom-right":
        assert placed[-1].any() and placed[:, -1].any()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels", [None, 1, 3, 4, 6])
@pytest.mark.parametrize("blend", ["poisson", "paste"])
def test_every_dtype_and_channel_count(dtype, channels, blend):
    shape = (40, 40) if channels is None else (40, 40, channels)
    image = host(shape, dtype)
    donors = [donor(dtype=dtype, channels=channels), donor(dtype=dtype, class_id=3)]  # the second one gray
    out = run(ad.PoissonPaste(n=3, blend=blend, p=1.0), image=image, mask=np.zeros((40, 40), np.uint8),
              paste_metadata=donors)  # fmt: skip
    assert out["image"].dtype == image.dtype and out["image"].shape == image.shape
    pasted = out["mask"] > 0
    assert pasted.any()
    if dtype == np.float32:
        assert out["image"].min() >= 0.0 and out["image"].max() <= 1.0
    if blend == "paste":  # cut-paste: exactly the labelled pixels change (donors are brighter than the host)
        changed = (out["image"] != image).reshape(40, 40, -1).any(axis=2)
        np.testing.assert_array_equal(changed, pasted)


def test_front_object_wins_in_mask_boxes_and_class_vector():
    image = host((30, 30))
    big = {"image": np.full((30, 30), 250, np.uint8), "mask": np.ones((30, 30), bool), "class_id": 1, "labels": "big"}
    small = donor((10, 10), class_id=3, labels="small")
    transform = ad.PoissonPaste(n=1, blend="paste", p=1.0)
    first = run(transform, image=image, mask=np.zeros((30, 30), np.uint8), paste_metadata=[big])
    # the whole image is now class 1; paste the small object on top: it wins where it lands
    out = run(transform, bboxes=[[0, 0, 30, 30]], labels=["big"], image=first["image"], mask=first["mask"],
              class_vector=np.array([1, 0, 0], np.float32), paste_metadata=[small])  # fmt: skip
    assert set(np.unique(out["mask"])) == {1, 3}
    np.testing.assert_array_equal(out["class_vector"], np.array([1, 0, 1], np.float32))
    assert list(out["labels"]) == ["big", "small"]
    x0, y0, x1, y1 = np.asarray(out["bboxes"][1]).astype(int)
    assert (out["mask"][y0:y1, x0:x1] == 3).any() and (out["mask"] == 3).sum() == small["mask"].sum()
    # an object fully covered by a later one loses its box and its class
    cover = {"image": np.full((30, 30), 10, np.uint8), "mask": np.ones((30, 30), bool), "class_id": 2, "labels": "c"}
    out = run(ad.PoissonPaste(n=1, blend="paste", p=1.0), bboxes=[[0, 0, 30, 30]], labels=["big"], image=image,
              mask=first["mask"], class_vector=np.array([1, 0, 0], np.float32), paste_metadata=[cover])  # fmt: skip
    assert list(out["labels"]) == ["c"]  # the input box is covered entirely: dropped
    np.testing.assert_array_equal(out["class_vector"], np.array([0, 1, 0], np.float32))


def test_multi_hot_mask_gets_the_class_channel_and_loses_the_others_under_the_object():
    image = host((32, 32))
    mask = np.zeros((32, 32, 4), np.uint8)
    mask[..., 0] = 1  # class 1 everywhere
    mask[:16, :, 1] = 1  # and class 2 on the top half
    out = run(ad.PoissonPaste(n=2, num_classes=4, p=1.0), image=image, mask=mask,
              paste_metadata=[donor(class_id=4)])  # fmt: skip
    object_pixels = out["mask"][..., 3] == 1
    assert object_pixels.any()
    assert (out["mask"][object_pixels] == np.array([0, 0, 0, 1])).all()
    assert (out["mask"][~object_pixels] == mask[~object_pixels]).all()
    np.testing.assert_array_equal(out["class_vector"], np.array([1, 1, 0, 1], np.float32))


def test_region_mask_and_region_bbox_keep_every_object_pixel_inside():
    image = host((40, 60))
    region = np.zeros((40, 60), bool)
    region[5:30, 30:58] = True
    for seed in range(6):
        out = run(ad.PoissonPaste(n=3, region="mask", scale_range=(0.5, 1.5), p=1.0), seed=seed, image=image,
                  mask=np.zeros((40, 60), np.uint8), object_mask=region, paste_metadata=[donor()])  # fmt: skip
        assert (out["mask"] > 0).any() and not ((out["mask"] > 0) & ~region).any()
        out = run(ad.PoissonPaste(n=3, region="bbox", p=1.0), seed=seed, bboxes=[[30, 5, 58, 30]], labels=["roi"],
                  image=image, mask=np.zeros((40, 60), np.uint8), paste_metadata=[donor(labels="obj")])  # fmt: skip
        assert (out["mask"] > 0).any() and not ((out["mask"] > 0) & ~region).any()
        first, *rest = list(out["labels"])
        assert first == "roi" and set(rest) == {"obj"}
    tiny = np.zeros((40, 60), bool)
    tiny[:4, :4] = True  # no object fits: nothing is pasted
    out = run(ad.PoissonPaste(region="mask", p=1.0), image=image, mask=np.zeros((40, 60), np.uint8), object_mask=tiny,
              paste_metadata=[donor()])  # fmt: skip
    np.testing.assert_array_equal(out["image"], image)
    assert not out["mask"].any()


def test_flips_and_scale_change_the_object_geometry():
    image = np.zeros((64, 64), np.uint8)
    item = {"image": np.full((9, 12), 200, np.uint8), "mask": np.zeros((9, 12), bool), "class_id": 1}
    item["mask"][:, :3] = True  # an L: a bar on the left ...
    item["mask"][-3:, :] = True  # ... and one at the bottom
    plain = run(ad.PoissonPaste(blend="paste", p=1.0), image=image, mask=image, paste_metadata=[item])["mask"]
    flipped = run(ad.PoissonPaste(blend="paste", hflip_p=1.0, vflip_p=1.0, p=1.0), image=image, mask=image,
                  paste_metadata=[item])["mask"]  # fmt: skip
    scaled = run(ad.PoissonPaste(blend="paste", scale_range=(2.0, 2.0), p=1.0), image=image, mask=image,
                 paste_metadata=[item])["mask"]  # fmt: skip

    def shape_of(mask):
        ys, xs = np.nonzero(mask)
        return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]

    np.testing.assert_array_equal(shape_of(plain), item["mask"].astype(np.uint8))
    np.testing.assert_array_equal(shape_of(flipped), item["mask"][::-1, ::-1].astype(np.uint8))
    assert shape_of(scaled).shape == (18, 24)


def test_donor_bboxes_select_objects_and_their_labels():
    image = host((40, 40))
    item = donor((20, 30))
    item["mask"][:] = False
    item["mask"][2:8, 2:10] = True  # object 0
    item["mask"][12:18, 15:28] = True  # object 1
    item.update(bboxes=[[0, 0, 12, 10], [14, 10, 30, 20]], labels=["left", "right"], class_id=[1, 2])
    seen = set()
    for seed in range(8):
        out = run(ad.PoissonPaste(blend="paste", p=1.0), seed=seed, bboxes=[], labels=[], image=image,
                  mask=np.zeros((40, 40), np.uint8), paste_metadata=[item])  # fmt: skip
        (label,) = out["labels"]
        seen.add(label)
        class_id = {"left": 1, "right": 2}[label]
        assert (out["mask"] == class_id).sum() == {"left": 48, "right": 78}[label]
    assert seen == {"left", "right"}


def test_masks_get_the_donor_planes_and_keypoints_stay():
    image = host((32, 32))
    masks = [np.zeros((32, 32), np.uint8), np.ones((32, 32), np.uint8)]
    item = donor(masks=[np.full((12, 16), 7, np.uint8), np.zeros((12, 16), np.uint8)])
    kw = {FORMAT: "xy"}
    pipeline = A.Compose([ad.PoissonPaste(p=1.0)], keypoint_params=A.KeypointParams(**kw), seed=0)
    out = pipeline(image=image, mask=np.zeros((32, 32), np.uint8), masks=masks, keypoints=[[3.0, 4.0]],
                   paste_metadata=[item])  # fmt: skip
    pasted = out["mask"] == 2
    np.testing.assert_array_equal(np.asarray(out["masks"][0]) == 7, pasted)
    np.testing.assert_array_equal(np.asarray(out["masks"][1]) == 0, pasted)
    np.testing.assert_allclose(np.asarray(out["keypoints"]), [[3.0, 4.0]])


def test_class_vector_without_a_mask_adds_the_pasted_classes():
    out = run(ad.PoissonPaste(num_classes=3, p=1.0), image=host(), paste_metadata=[donor(class_id=3)])
    np.testing.assert_array_equal(out["class_vector"], np.array([0, 0, 1], np.float32))
    skipped = run(ad.PoissonPaste(num_classes=3, p=0.0), image=host(), paste_metadata=[donor(class_id=3)])
    np.testing.assert_array_equal(skipped["class_vector"], np.zeros(3, np.float32))


def test_strict_compose_accepts_the_donor_and_region_keys():
    pipeline = A.Compose([ad.PoissonPaste(region="mask", p=1.0)], strict=True, seed=0)
    region = np.ones((48, 64), bool)
    out = pipeline(image=host(), object_mask=region, paste_metadata=[donor()])
    assert (out["image"] != host()).any()


def test_random_blend_mixes_poisson_and_cut_paste():
    transform = ad.PoissonPaste(n=6, blend="random", poisson_p=0.5, p=1.0)
    methods = set()
    for seed in range(4):
        params = transform.draw_params({}, {"image": host(), "paste_metadata": [donor()]}, np.random.default_rng(seed))
        methods |= {obj.method for obj in params["objects"]}
    assert methods == {"poisson", "paste"}


def test_an_empty_donor_list_pastes_nothing():
    image = host()
    out = run(ad.PoissonPaste(p=1.0), image=image, paste_metadata=[])
    np.testing.assert_array_equal(out["image"], image)


@pytest.mark.parametrize(
    ("donors", "data", "fragment"),
    [
        (
            [{"image": np.zeros((4, 4), np.uint8)}],
            {},
            r"paste_metadata\[0\] must be a dict with an 'image' and a 'mask'",
        ),
        ([donor(channels=3)], {}, r"paste_metadata\[0\]\['image'\] has 3 channels"),
        ([donor(class_id=0)], {}, r"paste_metadata\[0\]\['class_id'\] must be an int >= 1"),
        ([{**donor(), "mask": np.zeros((12, 16), bool)}], {}, r"holds no pixel"),
        ([donor(class_id=None)], {"mask": np.zeros((48, 64), np.uint8)}, "class_id"),
        ([donor()], {"class_vector": np.zeros((2, 2), np.float32)}, "class_vector"),
    ],
)
def test_bad_donors_raise_a_value_error_that_says_what_to_fix(donors, data, fragment):
    with pytest.raises(ValueError, match=fragment):
        run(ad.PoissonPaste(p=1.0), image=host(), paste_metadata=donors, **data)


def test_on_the_bundled_magnetic_tile_defects(samples):
    """Real defects into a real defect-free tile: labels follow the pixels, the tile keeps its size."""
    free = next(s for s in samples if s.class_name == "Free")
    donors = [{"image": s.image, "mask": s.mask, "class_id": s.class_id} for s in samples if s.class_name != "Free"]
    pipeline = A.Compose([ad.PoissonPaste(n=(1, 3), scale_range=(0.5, 1.0), num_classes=5, p=1.0)], seed=0)
    for _ in range(3):
        out = pipeline(image=free.image, mask=free.class_mask, paste_metadata=donors)
        present = {int(v) for v in np.unique(out["mask"]) if v}
        assert present and {int(c) + 1 for c in np.flatnonzero(out["class_vector"])} == present
