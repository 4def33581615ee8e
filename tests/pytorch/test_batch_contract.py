"""The batch layer's contract: per sample, every key follows the image exactly, or the call is refused.

Runs the torch batch op (``TensorContextMix``) and both DataLoader collate wrappers
(``ContextMixCollate``, ``DLICollate``) over the sample layouts users produce:

- dict and tuple samples;
- images as numpy (H, W) / (H, W, C) (an albumentations pipeline without ``ToTensorV2``) or torch
  (C, H, W) (``ToTensorV2``: a channels-last view; also contiguous and strided), uint8 and float32;
- a class-index ``mask`` ((H, W)) or a multi-hot one ((H, W, K)), an extra per-pixel key
  (``weight``), a list of instance ``masks``, ``bboxes`` (pascal_voc pixels) with a label field,
  labels as int / one-hot / multi-hot vectors, strings (passed through).

How "follows the image" is checked without trusting the code under test:

- ContextMix samples encode their own labels in their pixels: image channel 0 is ``10 * mask +
  sample index``. After mixing, every pixel names the sample it came from, so the mask, the extra
  keys, the instance masks, the label weights (the partner's share of the pixels) and the boxes
  (every box holds pixels of its class, every pixel of a class lies in a box of that class) are
  all checked against the mixed image itself.
- DLI: a sample is injected or not; a sample that is not keeps every key; an injected one changes
  its image only where the new defect's pixels are, gets exactly one new class in its mask, its
  label / class vector say that class, and its boxes gain the defect's box with its label.

Everything is small (8 samples of 24x32 px), so the whole suite runs in seconds.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import albu_defects as ad  # noqa: E402
from albu_defects import pytorch as adt  # noqa: E402

TensorContextMix = getattr(adt, "TensorContextMix", None) or adt.ContextMix

N, H, W, C, K = 8, 24, 32, 3, 3
LABEL_KINDS = ("int", "one_hot", "multi_hot")
IMAGE_LAYOUTS = ("numpy_hw", "numpy_hwc", "torch_chw", "torch_chw_view", "torch_chw_strided")


# ======================================================================================== samples
def _rectangles(g: np.random.Generator, count: int, one_class: bool) -> list[tuple[int, int, int, int, int]]:
    """``count`` non-overlapping ``(x0, y0, x1, y1, class)`` rectangles, each in its own grid cell."""
    cells = list(itertools.product(range(2), range(2)))  # 2x2 grid of 12x16 cells
    first = int(g.integers(1, K + 1))
    out = []
    for r, c in [cells[int(j)] for j in g.permutation(4)[:count]]:
        h, w = int(g.integers(7, 12)), int(g.integers(8, 16))
        y0, x0 = r * 12 + int(g.integers(0, 12 - h + 1)), c * 16 + int(g.integers(0, 16 - w + 1))
        out.append((x0, y0, x0 + w, y0 + h, first if one_class else int(g.integers(1, K + 1))))
    return out


def _label(kind: str, classes: set[int], index: int) -> object:
    """A sample's label: an int, or a one-hot / multi-hot float32 vector over the K classes."""
    if kind == "int":
        return min(classes) if classes else 0
    vector = np.zeros(K, np.float32)
    for k in classes:
        vector[k - 1] = 1
    if kind == "one_hot" and vector.sum() > 1:
        vector[:] = 0
        vector[min(classes) - 1] = 1
    return vector


def _as_layout(image_hwc: np.ndarray, layout: str, dtype: str) -> object:
    """``image_hwc`` (uint8 (H, W, C)) in ``layout`` and ``dtype`` (float32 = value / 255)."""
    array = image_hwc if dtype == "uint8" else image_hwc.astype(np.float32) / 255
    if layout == "numpy_hw":
        return np.ascontiguousarray(array[..., 0])
    if layout == "numpy_hwc":
        return array
    if layout == "torch_chw":
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    if layout == "torch_chw_view":  # what ToTensorV2 returns: a (C, H, W) view of (H, W, C) memory
        return torch.from_numpy(array).permute(2, 0, 1)
    if layout == "torch_chw_strided":  # every other column of a twice-as-wide image
        wide = np.repeat(array.transpose(2, 0, 1), 2, axis=2)
        return torch.from_numpy(np.ascontiguousarray(wide))[..., ::2]
    raise AssertionError(layout)


def _mask_value(mask: np.ndarray, torch_sample: bool, multi_hot: bool) -> object:
    value = np.stack([mask == k for k in range(1, K + 1)], axis=-1).astype(np.uint8) if multi_hot else mask
    return torch.from_numpy(value) if torch_sample else value


def _to_numpy(value: object) -> np.ndarray:
    return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def make_samples(
    *,
    layout: str = "torch_chw",
    dtype: str = "uint8",
    label_kind: str | None = "int",
    multi_hot_mask: bool = False,
    extra: bool = True,
    boxes: bool = False,
    free: int = 0,
    seed: int = 0,
) -> list[dict]:
    """``N`` dict samples; the first ``free`` are defect-free. Image channel 0 encodes ``10 * mask + index``."""
    g = np.random.default_rng(seed)
    torch_sample = layout.startswith("torch")
    samples = []
    for i in range(N):
        # an int or one-hot label names one class: such samples hold one class only
        rects = [] if i < free else _rectangles(g, int(g.integers(1, 3)), label_kind in ("int", "one_hot"))
        mask = np.zeros((H, W), np.uint8)
        for x0, y0, x1, y1, k in rects:
            mask[y0:y1, x0:x1] = k
        pixels = g.integers(0, 256, (H, W, C), dtype=np.uint8)
        pixels[..., 0] = 10 * mask + i
        sample: dict = {"image": _as_layout(pixels, layout, dtype)}
        sample["mask"] = _mask_value(mask, torch_sample, multi_hot_mask)
        if label_kind is not None:
            sample["label"] = _label(label_kind, {r[4] for r in rects}, i)
        if extra:
            weight = (mask * 0.25).astype(np.float32)
            sample["weight"] = torch.from_numpy(weight) if torch_sample else weight
        if boxes:
            sample["bboxes"] = [tuple(float(v) for v in r[:4]) for r in rects]
            sample["class_labels"] = [r[4] for r in rects]
        sample["name"] = f"sample-{i}"
        samples.append(sample)
    return samples


def image_hwc(value: object) -> np.ndarray:
    """A sample's image as a numpy (H, W, C) uint8 array, from any layout of :func:`make_samples`."""
    array = _to_numpy(value)
    if isinstance(value, torch.Tensor) and array.ndim == 3:
        array = array.transpose(1, 2, 0)
    if array.ndim == 2:
        array = array[..., None]
    return np.rint(array * 255).astype(np.uint8) if array.dtype == np.float32 else array


def class_mask(value: object) -> np.ndarray:
    """A class-index (H, W) mask from a class-index or multi-hot (H, W, K) / (K, H, W) mask."""
    array = _to_numpy(value)
    if array.ndim == 2:
        return array.astype(np.int64)
    if array.shape[0] == K and array.shape[1:] == (H, W):
        array = array.transpose(1, 2, 0)
    assert array.shape == (H, W, K) and (array.sum(-1) <= 1).all()
    return (array * np.arange(1, K + 1)).sum(-1).astype(np.int64)


def boxes_follow_mask(boxes: list, labels: list, mask: np.ndarray, tolerance: float = 1e-3) -> None:
    """Every box holds a pixel of its class; every pixel of a class lies in a box of that class.

    Boxes are pascal_voc pixels (floats: resized boxes); a pixel belongs to a box when its centre does.
    """
    assert len(boxes) == len(labels), "one label per box"
    centres_y, centres_x = np.mgrid[0:H, 0:W] + 0.5
    covered = np.zeros((K + 1, H, W), bool)
    for box, label in zip(boxes, labels, strict=True):
        x0, y0, x1, y1 = (float(v) for v in list(box)[:4])
        inside = (centres_x >= x0 - tolerance) & (centres_x < x1 + tolerance)
        inside &= (centres_y >= y0 - tolerance) & (centres_y < y1 + tolerance)
        assert (mask[inside] == int(label)).any(), f"box {box} labelled {label} holds no pixel of its class"
        covered[int(label)] |= inside
    for k in range(1, K + 1):
        stray = (mask == k) & ~covered[k]
        assert not stray.any(), f"{int(stray.sum())} pixels of class {k} lie in no box labelled {k}"


# ============================================================================ ContextMix contract
def _check_mixed_sample(i: int, partner: int, weights: np.ndarray, out_image: np.ndarray) -> np.ndarray:
    """The source sample of every output pixel; checks the pixels came from ``i`` and ``partner`` by the weights."""
    source = out_image[..., 0] % 10
    assert set(np.unique(source).tolist()) <= {i, partner}, "pixels from a third sample"
    if partner != i:
        np.testing.assert_allclose((source == partner).mean(), weights[1], atol=1e-6)
    return source


def _expected_target(kind: str, label_i: object, label_p: object, weights: np.ndarray) -> np.ndarray:
    if kind == "int":
        a, b = np.eye(K, dtype=np.float64)[int(label_i)], np.eye(K, dtype=np.float64)[int(label_p)]
    else:
        a, b = np.asarray(label_i, np.float64), np.asarray(label_p, np.float64)
    return weights[0] * a + weights[1] * b


@pytest.mark.parametrize("mode", ["batch", "sample"])
@pytest.mark.parametrize("label_kind", LABEL_KINDS)
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("layout", IMAGE_LAYOUTS)
def test_contextmix_collate_dict_samples_follow_the_image(layout, dtype, label_kind, mode):
    samples = make_samples(layout=layout, dtype=dtype, label_kind=label_kind)
    if label_kind == "int":
        for s in samples:
            s["label"] = int(s["label"]) % K  # ContextMix classes are 0..K-1
    for s in samples:
        s["masks"] = [_to_numpy(s["mask"]) == k for k in (1, 2)]
        if layout.startswith("torch"):
            s["masks"] = [torch.from_numpy(m) for m in s["masks"]]
    originals = [{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()} for s in samples]
    collate = adt.ContextMixCollate(num_classes=K, mode=mode, seed=1, box="fixed", box_size=0.4)
    batch = collate(samples)
    assert set(batch) == {"image", "mask", "label", "weight", "masks", "name", "mix_weights"}
    perm = collate.contextmix.last_perm.tolist()
    weights = batch["mix_weights"].numpy().astype(np.float64)
    assert (weights[:, 1] > 0).all(), "a fixed box of 40 % is pasted on every sample"
    # layout and dtype of the collated image: the samples' own, stacked
    first = samples[0]["image"]
    assert tuple(batch["image"].shape) == (N, *first.shape) and batch["image"].dtype == torch.as_tensor(first).dtype
    for i in range(N):
        out = image_hwc(batch["image"][i] if layout.startswith("torch") else batch["image"][i].numpy())
        source = _check_mixed_sample(i, perm[i], weights[i], out)
        mask = class_mask(batch["mask"][i])
        np.testing.assert_array_equal(mask, (out[..., 0].astype(np.int64) - source) // 10)
        np.testing.assert_array_equal(_to_numpy(batch["weight"][i]), (mask * 0.25).astype(np.float32))
        for j, k in enumerate((1, 2)):
            np.testing.assert_array_equal(_to_numpy(batch["masks"][j][i]), mask == k)
        np.testing.assert_allclose(
            batch["label"][i].numpy(),
            _expected_target(label_kind, originals[i]["label"], originals[perm[i]]["label"], weights[i]),
            atol=1e-6,
        )
        assert batch["name"][i] == f"sample-{i}"
    for s, o in zip(samples, originals, strict=True):  # inputs untouched
        assert all(torch.equal(torch.as_tensor(s[k]), torch.as_tensor(o[k])) for k in ("image", "mask", "weight"))


@pytest.mark.parametrize("multi_hot_mask", [False, True])
@pytest.mark.parametrize("layout", ["numpy_hwc", "torch_chw_view"])
def test_contextmix_collate_boxes_and_their_labels_follow_the_image(layout, multi_hot_mask):
    samples = make_samples(layout=layout, boxes=True, multi_hot_mask=multi_hot_mask, label_kind=None)
    collate = adt.ContextMixCollate(
        num_classes=K,
        mode="sample",
        seed=2,
        box="fixed",
        box_size=0.5,
        bbox_format="pascal_voc",
        bbox_label_fields=["class_labels"],
    )
    batch = collate(samples)
    perm = collate.contextmix.last_perm.tolist()
    assert (batch["mix_weights"][:, 1] > 0).all()
    assert isinstance(batch["bboxes"], list) and len(batch["bboxes"]) == N  # ragged: kept per sample
    for i in range(N):
        out = image_hwc(batch["image"][i] if layout.startswith("torch") else batch["image"][i].numpy())
        source = _check_mixed_sample(i, perm[i], batch["mix_weights"][i].numpy(), out)
        mask = class_mask(batch["mask"][i])
        np.testing.assert_array_equal(mask, (out[..., 0].astype(np.int64) - source) // 10)
        boxes_follow_mask(batch["bboxes"][i], batch["class_labels"][i], mask)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("layout", ["numpy_hw", "numpy_hwc", "torch_chw_view"])
def test_contextmix_collate_tuple_samples_follow_the_image(layout, dtype):
    samples = make_samples(layout=layout, dtype=dtype)
    tuples = [(s["image"], int(s["label"]) % K, s["mask"], s["weight"], s["name"]) for s in samples]
    collate = adt.ContextMixCollate(num_classes=K, mode="sample", seed=3, box="fixed", box_size=0.4)
    images, targets, masks, weight, names = collate(tuples)
    perm = collate.contextmix.last_perm.tolist()
    weights = collate.contextmix.last_weights.astype(np.float64)
    assert (weights[:, 1] > 0).all()
    for i in range(N):
        out = image_hwc(images[i] if layout.startswith("torch") else images[i].numpy())
        source = _check_mixed_sample(i, perm[i], weights[i], out)
        mask = class_mask(masks[i])
        np.testing.assert_array_equal(mask, (out[..., 0].astype(np.int64) - source) // 10)
        np.testing.assert_array_equal(_to_numpy(weight[i]), (mask * 0.25).astype(np.float32))
        np.testing.assert_allclose(
            targets[i].numpy(), _expected_target("int", tuples[i][1], tuples[perm[i]][1], weights[i]), atol=1e-6
        )
        assert names[i] == f"sample-{i}"


def test_contextmix_collate_mask_as_the_label_of_tuple_samples():
    """``(image, mask)`` tuples: the mask in the label position is mixed as a mask."""
    samples = make_samples(label_kind=None, extra=False)
    collate = adt.ContextMixCollate(mode="sample", seed=4, box="fixed", box_size=0.4)
    images, masks = collate([(s["image"], s["mask"]) for s in samples])
    for i in range(N):
        out = image_hwc(images[i])
        source = out[..., 0] % 10
        np.testing.assert_array_equal(class_mask(masks[i]), (out[..., 0].astype(np.int64) - source) // 10)


def test_contextmix_collate_refuses_keys_it_cannot_keep_true():
    samples = make_samples(label_kind="int", extra=False)
    for s in samples:
        s["label"] = int(s["label"]) % K
    collate = adt.ContextMixCollate(num_classes=K, seed=0)
    # an int that may be a label under another name: refused unless named as passed through
    with pytest.raises(ValueError, match=r"'index'.*passthrough_keys"):
        collate([{**s, "index": i} for i, s in enumerate(samples)])
    passing = adt.ContextMixCollate(num_classes=K, seed=0, passthrough_keys=["index"])
    assert passing([{**s, "index": i} for i, s in enumerate(samples)])["index"].tolist() == list(range(N))
    # a per-pixel key at another resolution cannot follow the box
    with pytest.raises(ValueError, match="'half'"):
        collate([{**s, "half": torch.zeros(H // 2, W // 2)} for s in samples])
    # boxes without their format
    with pytest.raises(ValueError, match="bbox_format"):
        collate([{**s, "bboxes": [(1.0, 1.0, 5.0, 5.0)]} for s in samples])
    # a torch image in (H, W, C) order is not silently read as (C, H, W)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        collate([{**s, "image": torch.zeros(H, W, 3, dtype=torch.uint8)} for s in samples])
    # tuples: an unknown trailing int is refused the same way
    with pytest.raises(ValueError, match="passthrough_keys"):
        collate([(s["image"], s["label"], 7) for s in samples])
    with pytest.raises(ValueError, match="empty"):
        collate([])


# ========================================================================== batch op contract
OP_VIEWS = {
    "contiguous": lambda x: x,
    "channels_last": lambda x: x.contiguous(memory_format=torch.channels_last),
    "strided": lambda x: torch.repeat_interleave(x, 2, dim=3)[..., ::2],
    "sliced": lambda x: torch.nn.functional.pad(x, (5, 3))[..., 5 : 5 + W],
}


def _op_batch(dtype: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    samples = make_samples(layout="torch_chw", dtype=dtype, extra=False, label_kind=None, seed=seed)
    images = torch.stack([s["image"] for s in samples])
    masks = torch.stack([torch.as_tensor(s["mask"]).long() for s in samples])
    return images, masks


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("mode", ["batch", "sample"])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("view", sorted(OP_VIEWS))
def test_batch_op_masks_follow_the_image_on_any_view(view, dtype, mode, inplace):
    images, masks = _op_batch(dtype)
    images, masks_view = OP_VIEWS[view](images), OP_VIEWS[view](masks[:, None])[:, 0]
    assert torch.equal(masks_view, masks)
    before = images.clone()
    op = TensorContextMix(mode=mode, inplace=inplace, seed=5, box="fixed", box_size=0.4)
    mixed, mixed_masks = op(images, masks_view)
    assert mixed.shape == images.shape and mixed.dtype == images.dtype
    assert (mixed is images) == inplace and torch.equal(images, mixed if inplace else before)
    perm = op.last_perm.tolist()
    for i in range(N):
        out = image_hwc(mixed[i])
        source = _check_mixed_sample(i, perm[i], op.last_weights[i].astype(np.float64), out)
        np.testing.assert_array_equal(mixed_masks[i].numpy(), (out[..., 0].astype(np.int64) - source) // 10)


@pytest.mark.parametrize("label_kind", LABEL_KINDS)
@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_batch_op_label_vectors_mix_by_pixel_share(label_kind, mode):
    images, _ = _op_batch("uint8", seed=1)
    g = np.random.default_rng(7)
    if label_kind == "int":
        labels = torch.from_numpy(g.integers(0, K, N))
    else:
        vectors = (g.random((N, K)) < 0.5).astype(np.float32)
        if label_kind == "one_hot":
            vectors = np.eye(K, dtype=np.float32)[g.integers(0, K, N)]
        labels = torch.from_numpy(vectors)
    op = TensorContextMix(num_classes=K, mode=mode, seed=6)
    mixed, targets = op(images, labels)
    perm = op.last_perm.tolist()
    assert targets.shape == (N, K) and targets.dtype == torch.float32
    for i in range(N):
        out = image_hwc(mixed[i])
        source = out[..., 0] % 10
        share = float((source == perm[i]).mean()) if perm[i] != i else float(op.last_weights[i, 1])
        expected = _expected_target(
            label_kind, labels[i].numpy(), labels[perm[i]].numpy(), np.array([1 - share, share])
        )
        np.testing.assert_allclose(targets[i].numpy(), expected, atol=1e-6)


# =============================================================================== DLI contract
@pytest.fixture(scope="module")
def banks() -> dict[str, ad.DefectBank]:
    """Gray banks of both dtypes with K classes, one defect per image."""
    g = np.random.default_rng(0)
    images, masks = [], []
    for i in range(2 * K):
        images.append(g.integers(40, 220, (H, W), dtype=np.uint8))
        mask = np.zeros((H, W), np.uint8)
        mask[6:13, 8:19] = 1 + i % K
        masks.append(mask)
    names = [f"class_{k}" for k in range(1, K + 1)]
    return {
        "uint8": ad.DefectBank.from_arrays(images, masks, class_names=names),
        "float32": ad.DefectBank.from_arrays([im.astype(np.float32) / 255 for im in images], masks, class_names=names),
    }


def _changed_pixels(before: object, after: object) -> np.ndarray:
    a, b = image_hwc(before), image_hwc(after)
    return (a != b).any(-1)


def _check_dli_sample(original: dict, out: dict, log: dict | None, label_kind: str | None, boxes: bool) -> int:
    """Checks one output sample against its input; returns the injected class (0 = not injected)."""
    old_mask, new_mask = class_mask(original["mask"]), class_mask(out["mask"])
    added = sorted(set(np.unique(new_mask[new_mask != old_mask]).tolist()))
    if not added:  # not injected: every key exactly as given
        for key, value in original.items():
            assert np.array_equal(_to_numpy(out[key]), _to_numpy(value)), f"{key!r} changed without an injection"
        assert log is None or int(log["class_id"]) == 0
        return 0
    assert len(added) == 1 and not old_mask.any(), "one defect, into a defect-free sample"
    c = added[0]
    assert log is None or int(log["class_id"]) == c
    assert type(out["image"]) is type(original["image"]) and out["image"].shape == original["image"].shape
    assert out["image"].dtype == original["image"].dtype and type(out["mask"]) is type(original["mask"])
    rows, cols = np.nonzero(new_mask)
    box = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
    changed = _changed_pixels(original["image"], out["image"])
    assert not changed[new_mask == 0].any(), "image pixels changed outside the defect"  # cut-paste
    if label_kind == "int":
        assert int(out["label"]) == c
    elif label_kind is not None:
        np.testing.assert_array_equal(_to_numpy(out["label"]), np.eye(K)[c - 1])
    if boxes:
        assert [float(v) for v in out["bboxes"][-1]] == [float(v) for v in box]
        assert list(out["class_labels"]) == [c]
        boxes_follow_mask(out["bboxes"], out["class_labels"], new_mask)
    if log is not None:
        assert _to_numpy(log["bbox"]).tolist() == box
    return c


@pytest.mark.parametrize("multi_hot_mask", [False, True])
@pytest.mark.parametrize("label_kind", [*LABEL_KINDS, None])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("layout", IMAGE_LAYOUTS)
def test_dli_collate_dict_samples_follow_the_image(banks, layout, dtype, label_kind, multi_hot_mask):
    samples = make_samples(
        layout=layout,
        dtype=dtype,
        label_kind=label_kind,
        multi_hot_mask=multi_hot_mask,
        extra=False,
        boxes=True,
        free=5,
    )
    originals = [{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()} for s in samples]
    dli = ad.DynamicLabelInjection(banks[dtype], poisson_p=0.0, seed=0)
    collate = adt.DLICollate(
        dli, collate_fn=lambda batch: batch, bbox_format="pascal_voc", bbox_label_fields=["class_labels"]
    )
    out = collate(samples)
    injected = [_check_dli_sample(o, s, s["dli"], label_kind, boxes=True) for o, s in zip(originals, out, strict=True)]
    assert sum(c > 0 for c in injected) == 5  # fill="all": every defect-free sample
    for s, o in zip(samples, originals, strict=True):  # inputs untouched
        assert torch.equal(torch.as_tensor(_to_numpy(s["image"])), torch.as_tensor(_to_numpy(o["image"])))


@pytest.mark.parametrize("fmt", ["coco", "yolo", "albumentations"])
def test_dli_collate_writes_boxes_in_the_samples_format(banks, fmt):
    samples = make_samples(extra=False, free=N, label_kind="int")
    for s in samples:
        s["bboxes"], s["class_labels"] = [], []
    collate = adt.DLICollate(
        ad.DynamicLabelInjection(banks["uint8"], poisson_p=0.0, seed=1),
        collate_fn=lambda batch: batch,
        bbox_format=fmt,
        bbox_label_fields=["class_labels"],
        bbox_label="name",
    )
    for s in collate(samples):
        mask = class_mask(s["mask"])
        rows, cols = np.nonzero(mask)
        x0, y0, x1, y1 = cols.min(), rows.min(), cols.max() + 1, rows.max() + 1
        expected = {
            "coco": [x0, y0, x1 - x0, y1 - y0],
            "yolo": [(x0 + x1) / 2 / W, (y0 + y1) / 2 / H, (x1 - x0) / W, (y1 - y0) / H],
            "albumentations": [x0 / W, y0 / H, x1 / W, y1 / H],
        }[fmt]
        np.testing.assert_allclose(np.asarray(s["bboxes"][0], np.float64), expected, atol=1e-6)
        assert s["class_labels"] == [f"class_{int(mask.max())}"]


@pytest.mark.parametrize("layout", ["numpy_hwc", "torch_chw_view"])
def test_dli_collate_tuple_samples_follow_the_image(banks, layout):
    samples = make_samples(layout=layout, extra=False, free=4)
    tuples = [(s["image"], s["mask"], s["label"], s["name"]) for s in samples]
    out = adt.DLICollate(ad.DynamicLabelInjection(banks["uint8"], poisson_p=0.0, seed=2), collate_fn=lambda b: b)(
        tuples
    )
    keys = ("image", "mask", "label", "name")
    injected = [
        _check_dli_sample(dict(zip(keys, t, strict=True)), dict(zip(keys, o, strict=True)), None, "int", boxes=False)
        for t, o in zip(tuples, out, strict=True)
    ]
    assert sum(c > 0 for c in injected) == 4


def test_dli_collate_default_collate_keeps_ragged_boxes(banks):
    samples = make_samples(extra=False, boxes=True, free=3)
    collate = adt.DLICollate(
        ad.DynamicLabelInjection(banks["uint8"], poisson_p=0.0, seed=3),
        bbox_format="pascal_voc",
        bbox_label_fields=["class_labels"],
    )
    batch = collate(samples)
    assert batch["image"].shape == (N, C, H, W) and isinstance(batch["bboxes"], list) and len(batch["bboxes"]) == N
    for i in range(N):
        boxes_follow_mask(batch["bboxes"][i], batch["class_labels"][i], class_mask(batch["mask"][i]))


def test_dli_collate_refuses_keys_it_cannot_keep_true(banks):
    samples = make_samples(extra=True, free=3)
    collate = adt.DLICollate(ad.DynamicLabelInjection(banks["uint8"], seed=0))
    with pytest.raises(ValueError, match=r"'weight'.*passthrough_keys"):
        collate(samples)  # a per-pixel key DLI cannot update
    kept = adt.DLICollate(ad.DynamicLabelInjection(banks["uint8"], seed=0), passthrough_keys=["weight"])
    batch = kept(samples)
    assert torch.equal(batch["weight"], torch.stack([s["weight"] for s in samples]))
    bare = [{k: v for k, v in s.items() if k != "weight"} for s in samples]
    with pytest.raises(ValueError, match=r"'index'.*passthrough_keys"):
        collate([{**s, "index": i} for i, s in enumerate(bare)])
    with pytest.raises(ValueError, match="bbox_format"):
        collate([{**s, "bboxes": []} for s in bare])
    with pytest.raises(ValueError, match="empty"):
        collate([])


# ============================================================================ image-level label keys
def _presence(mask: np.ndarray) -> np.ndarray:
    return np.array([(mask == k).any() for k in range(1, K + 1)], np.float32)


@pytest.mark.parametrize("multi_hot_mask", [False, True])
def test_contextmix_collate_rederives_the_class_vector_from_the_mixed_mask(multi_hot_mask):
    samples = make_samples(label_kind=None, extra=False, multi_hot_mask=multi_hot_mask)
    for s in samples:
        s["class_vector"] = torch.from_numpy(_presence(class_mask(s["mask"])))
    batch = adt.ContextMixCollate(mode="sample", seed=8, box="fixed", box_size=0.4)(samples)
    assert batch["class_vector"].dtype == torch.float32
    for i in range(N):
        np.testing.assert_array_equal(batch["class_vector"][i].numpy(), _presence(class_mask(batch["mask"][i])))
    without_mask = [{k: v for k, v in s.items() if k != "mask"} for s in samples]
    with pytest.raises(ValueError, match="class_vector"):
        adt.ContextMixCollate(seed=0)(without_mask)


def test_dli_collate_updates_the_class_vector_and_background_one_hot_labels(banks):
    samples = make_samples(label_kind="int", extra=False, free=4)
    for s in samples:
        s["class_vector"] = _presence(class_mask(s["mask"]))
        s["label"] = np.eye(K + 1, dtype=np.float32)[int(s["label"])]  # entry 0 = defect-free
    dli = ad.DynamicLabelInjection(banks["uint8"], poisson_p=0.0, seed=4)
    out = adt.DLICollate(dli, collate_fn=lambda batch: batch)(samples)
    for original, sample in zip(samples, out, strict=True):
        mask = class_mask(sample["mask"])
        np.testing.assert_array_equal(sample["class_vector"], _presence(mask))
        assert sample["class_vector"].dtype == np.float32 and sample["label"].dtype == np.float32
        np.testing.assert_array_equal(sample["label"], np.eye(K + 1)[int(mask.max())])
        if int(original["label"].argmax()) == 0:
            assert int(sample["dli"]["class_id"]) == int(mask.max()) > 0
    with pytest.raises(ValueError, match="one-hot vector of 4"):
        adt.DLICollate(dli)([{**s, "label": np.zeros(K + 2, np.float32)} for s in samples])


def test_box_rows_with_label_columns_keep_them(banks):
    """albumentations also takes labels as extra columns of the box rows: they follow their boxes."""
    samples = make_samples(layout="numpy_hwc", extra=False, boxes=True, label_kind=None)
    for s in samples:
        rows = zip(s["bboxes"], s.pop("class_labels"), strict=True)
        s["bboxes"] = np.array([[*box, label] for box, label in rows], np.float32)
    collate = adt.ContextMixCollate(mode="sample", seed=9, box="fixed", box_size=0.5, bbox_format="pascal_voc")
    batch = collate(samples)
    for i in range(N):
        rows = batch["bboxes"][i]
        assert isinstance(rows, np.ndarray) and rows.dtype == np.float32 and rows.shape[1] == 5
        boxes_follow_mask(rows[:, :4], rows[:, 4].astype(int), class_mask(batch["mask"][i]))
    free = make_samples(layout="numpy_hwc", extra=False, free=N, label_kind=None)
    for s in free:
        s["bboxes"] = np.zeros((0, 5), np.float32)
    dli = adt.DLICollate(
        ad.DynamicLabelInjection(banks["uint8"], poisson_p=0.0, seed=5), collate_fn=lambda b: b, bbox_format="coco"
    )
    for s in dli(free):
        mask = class_mask(s["mask"])
        rows, cols = np.nonzero(mask)
        expected = [cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min(), mask.max()]
        np.testing.assert_array_equal(s["bboxes"], np.array([expected], np.float32))


def test_passthrough_positions_of_tuple_samples():
    samples = make_samples(extra=False)
    tuples = [(s["image"], int(s["label"]) % K, i) for i, s in enumerate(samples)]
    _, _, index = adt.ContextMixCollate(num_classes=K, seed=0, passthrough_keys=[2])(tuples)
    assert index.tolist() == list(range(N))


# ================================================================================ pseudo-anomaly keys
def test_dli_collate_hides_pseudo_anomalies_under_an_injected_defect(banks):
    def run(anomalies: list[np.ndarray]) -> list[dict]:
        samples = make_samples(label_kind=None, extra=False, free=N)
        for s, anomaly in zip(samples, anomalies, strict=True):
            s["anomaly_mask"], s["anomaly_label"] = torch.from_numpy(anomaly), 1
        samples.append({k: v for k, v in samples[0].items() if k not in ("anomaly_mask", "anomaly_label")})
        dli = ad.DynamicLabelInjection(banks["uint8"], poisson_p=0.0, seed=6)  # the same draws in both runs
        out = adt.DLICollate(dli, collate_fn=list)(samples)
        assert "anomaly_mask" not in out[-1] and class_mask(out[-1]["mask"]).any()  # samples may differ in keys
        for original, sample in zip(samples[:N], out, strict=False):
            expected = original["anomaly_mask"].numpy() & ~(class_mask(sample["mask"]) > 0)
            np.testing.assert_array_equal(sample["anomaly_mask"].numpy(), expected)
            assert sample["anomaly_label"] == (1 if expected.any() else 0)
        return out

    bands = [np.zeros((H, W), bool) for _ in range(N)]
    for i, band in enumerate(bands):
        band[:, : 4 + 3 * i] = True  # partly under the defect, or not at all
    defects = [class_mask(s["mask"]) > 0 for s in run(bands)[:N]]
    dots = [np.zeros((H, W), bool) for _ in range(N)]
    for dot, defect in zip(dots, defects, strict=True):
        dot[tuple(np.argwhere(defect)[0])] = True  # wholly under the defect: the label becomes 0
    assert all(s["anomaly_label"] == 0 for s in run(dots)[:N])


def test_contextmix_collate_mixes_the_anomaly_mask_and_refuses_its_label():
    samples = make_samples(label_kind=None, extra=False)
    for s in samples:
        s["anomaly_mask"] = torch.as_tensor(class_mask(s["mask"]) == 1)
    batch = adt.ContextMixCollate(mode="sample", seed=10, box="fixed", box_size=0.4)(samples)
    for i in range(N):
        np.testing.assert_array_equal(batch["anomaly_mask"][i].numpy(), class_mask(batch["mask"][i]) == 1)
    with pytest.raises(ValueError, match="anomaly_label"):
        adt.ContextMixCollate(seed=0)([{**s, "anomaly_label": 1} for s in samples])
