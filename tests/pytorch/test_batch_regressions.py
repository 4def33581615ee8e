"""Regressions of the batch layer (issue 16 items 1-3 and 6, issue 12 item 10): each failed on 72696d0.

Written against the public API only. Expected pixels come from the torch op itself
(``op.apply(images, masks, perm, boxes)`` with the pairing and boxes the wrapper drew), or from
samples whose pixels encode their own labels, so no box convention is spelled out here.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import albu_defects as ad  # noqa: E402
from albu_defects import pytorch as adt  # noqa: E402

#: The torch batch op (``TensorContextMix``; ``ContextMix`` before the rename).
TensorContextMix = getattr(adt, "TensorContextMix", None) or adt.ContextMix

N, H, W = 8, 32, 40


def _encoded_samples(n: int = N, channels: int = 3) -> list[dict]:
    """Dict samples whose image channel 0 is ``10 * mask``: a mixed pair must keep that relation."""
    g = np.random.default_rng(0)
    samples = []
    for i in range(n):
        mask = g.integers(0, 4, (H, W), dtype=np.int64)
        image = g.integers(0, 256, (channels, H, W), dtype=np.uint8)
        image[0] = (10 * mask + i).astype(np.uint8)  # + i: which sample a pixel came from
        samples.append({"image": torch.from_numpy(image), "mask": torch.from_numpy(mask), "label": i % 3})
    return samples


def _fixed_box(**kwargs) -> dict:
    """Options that always mix (a box of half the image), in both modes."""
    return {"num_classes": 3, "box": "fixed", "box_size": 0.5, "p": 1.0, "seed": 0, **kwargs}


# ----------------------------------------------------------------------------- item 1: masks follow the image
@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_contextmix_collate_mixes_the_mask_of_dict_samples_with_the_image(mode):
    samples = _encoded_samples()
    batch = adt.ContextMixCollate(**_fixed_box(mode=mode))(samples)
    assert (batch["mix_weights"][:, 1] > 0).all()
    images, masks = batch["image"].long(), batch["mask"]
    source = images[:, 0] % 10  # the sample each output pixel came from
    # channel 0 was 10 * mask + sample index: the mask must be the one of the pixel's source, resized alike
    assert (source != torch.arange(N)[:, None, None]).any()  # something was mixed
    assert torch.equal(masks, (images[:, 0] - source) // 10)


def test_contextmix_collate_mixes_a_trailing_mask_of_tuple_samples():
    samples = [(s["image"], s["label"], s["mask"]) for s in _encoded_samples()]
    images, targets, masks = adt.ContextMixCollate(**_fixed_box())(samples)
    images = images.long()
    source = images[:, 0] % 10
    assert (source != torch.arange(N)[:, None, None]).any()
    assert torch.equal(masks, (images[:, 0] - source) // 10)
    assert targets.shape == (N, 3)


# ----------------------------------------------------------------------------- item 2: (H, W, C) numpy samples
@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_contextmix_collate_mixes_hwc_numpy_samples(mode):
    g = np.random.default_rng(1)
    samples = [{"image": g.integers(0, 256, (H, W, 3), dtype=np.uint8), "label": i % 3} for i in range(N)]
    collate = adt.ContextMixCollate(**_fixed_box(mode=mode))
    batch = collate(samples)
    images = torch.from_numpy(np.stack([s["image"] for s in samples]))  # (N, H, W, C)
    assert batch["image"].shape == (N, H, W, 3) and batch["image"].dtype == torch.uint8
    assert (batch["mix_weights"][:, 1] > 0).all(), "every sample was mixed with a half-image box"
    op = collate.contextmix
    expected, _ = TensorContextMix(num_classes=3).apply(
        images.permute(0, 3, 1, 2).contiguous(), None, op.last_perm, op.last_boxes
    )
    assert torch.equal(batch["image"], expected.permute(0, 2, 3, 1))


# ----------------------------------------------------------------------------- item 3: DLICollate and bboxes
def _dli_bank():
    g = np.random.default_rng(0)
    images, masks = [], []
    for i in range(6):
        images.append(g.integers(60, 200, (H, W), dtype=np.uint8))
        mask = np.zeros((H, W), np.uint8)
        mask[8:14, 10:18] = 1 + i % 2
        masks.append(mask)
    return ad.DefectBank.from_arrays(images, masks, class_names=["scratch", "dent"])


def _free_samples(n: int = 4) -> list[dict]:
    g = np.random.default_rng(2)
    return [
        {
            "image": g.integers(60, 200, (H, W), dtype=np.uint8),
            "mask": np.zeros((H, W), np.uint8),
            "label": 0,
            "bboxes": [],
            "class_labels": [],
        }
        for _ in range(n)
    ]


def test_dli_collate_gives_injected_defects_their_boxes_and_labels():
    dli = ad.DynamicLabelInjection(_dli_bank(), poisson_p=0.0, seed=0)
    collate = adt.DLICollate(
        dli, collate_fn=lambda samples: samples, bbox_format="pascal_voc", bbox_label_fields=["class_labels"]
    )
    out = collate(_free_samples())
    injected = 0
    for sample in out:
        mask = np.asarray(sample["mask"])
        ids = sorted(set(np.unique(mask).tolist()) - {0})
        if not ids:
            assert len(sample["bboxes"]) == 0 and len(sample["class_labels"]) == 0
            continue
        injected += 1
        rows, cols = np.nonzero(mask)
        assert len(sample["bboxes"]) == 1 and list(sample["class_labels"]) == ids
        assert [float(v) for v in sample["bboxes"][0]] == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
    assert injected == 4


def test_dli_collate_refuses_sample_bboxes_it_cannot_update():
    dli = ad.DynamicLabelInjection(_dli_bank(), poisson_p=0.0, seed=0)
    with pytest.raises(ValueError, match="bbox_format"):
        adt.DLICollate(dli)(_free_samples())


# ----------------------------------------------------------------------------- item 6: any tensor view
VIEWS = {
    "step": lambda x: x[..., ::2],
    "slice": lambda x: x[..., 8:40],
    "channels_last": lambda x: x.contiguous(memory_format=torch.channels_last),
    "permuted": lambda x: x.permute(0, 1, 3, 2),
}


@pytest.mark.parametrize("view", sorted(VIEWS))
@pytest.mark.parametrize("mode", ["batch", "sample"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_torch_contextmix_accepts_any_tensor_view(view, mode, dtype, interpolation):
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (5, 3, 48, 64), generator=g, dtype=torch.uint8).to(dtype)
    if dtype.is_floating_point:
        base /= 255
    images = VIEWS[view](base)
    before = images.clone()
    labels = torch.tensor([0, 1, 2, 0, 1])
    op = TensorContextMix(num_classes=3, mode=mode, interpolation=interpolation, seed=3, min_box_side=1)
    mixed, targets = op(images, labels)
    reference = TensorContextMix(num_classes=3, mode=mode, interpolation=interpolation)
    expected, expected_targets = reference.apply(images.contiguous(), labels, op.last_perm, op.last_boxes)
    assert mixed.shape == images.shape and mixed.dtype == dtype
    assert torch.equal(mixed, expected) and torch.equal(targets, expected_targets)
    assert torch.equal(images, before)  # not in place: the input view is untouched


def test_torch_contextmix_inplace_on_a_view_writes_through():
    base = torch.randint(0, 256, (4, 3, 32, 64), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    images = base[..., ::2]
    expected, _ = TensorContextMix(seed=5, box="fixed").__call__(images.contiguous())
    mixed, _ = TensorContextMix(seed=5, box="fixed", inplace=True)(images)
    assert torch.equal(mixed, expected) and torch.equal(base[..., ::2], expected)


# ----------------------------------------------------------------------------- issue 12 item 10
@pytest.mark.parametrize("mode", ["batch", "sample"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_torch_contextmix_rejects_non_finite_images(mode, bad):
    images = torch.rand(4, 3, 16, 16)
    images[2, 1, 5, 7] = bad
    with pytest.raises(ValueError, match="finite"):
        TensorContextMix(mode=mode)(images)


def test_collate_wrappers_reject_an_empty_batch():
    with pytest.raises(ValueError, match="empty"):
        adt.ContextMixCollate(num_classes=3)([])
    with pytest.raises(ValueError, match="empty"):
        adt.DLICollate(ad.DynamicLabelInjection(_dli_bank()))([])
