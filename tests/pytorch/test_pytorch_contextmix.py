"""albu_defects.pytorch.TensorContextMix / ContextMixCollate: the torch batch op of issue 4.

Every mixed tensor is checked against the numpy transform's pixel function (``paste_resized``,
itself tested against an independent float formula in test_contextmix.py), image by image.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

from albu_defects.methods.contextmix.functional import draw_boxes, paste_resized
from albu_defects.pytorch import ContextMixCollate, TensorContextMix, paste_resized_batch


def random_batch(n, c, h, w, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    return torch.rand((n, c, h, w), generator=g, dtype=dtype)


def expected_mix(images: torch.Tensor, perm, boxes, interpolation=cv2.INTER_NEAREST) -> np.ndarray:
    """The numpy transform's pixels, image by image (channels last)."""
    x = images.permute(0, 2, 3, 1).numpy()
    out = [paste_resized(x[i], x[int(perm[i])], boxes[i], interpolation) for i in range(len(x))]
    return np.stack(out).transpose(0, 3, 1, 2)


@given(
    n=st.integers(1, 7),
    channels=st.sampled_from([1, 3, 5]),
    hw=st.tuples(st.integers(2, 40), st.integers(2, 40)),
    dtype=st.sampled_from([torch.uint8, torch.float32]),
    mode=st.sampled_from(["batch", "sample"]),
    inplace=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    p=st.sampled_from([1.0, 0.6]),
)
def test_mixed_batch_matches_the_numpy_transform(n, channels, hw, dtype, mode, inplace, seed, p):
    images = random_batch(n, channels, *hw, dtype, seed)
    original = images.clone()
    op = TensorContextMix(num_classes=3, mode=mode, inplace=inplace, seed=seed, p=p, min_box_side=1)
    labels = torch.arange(n) % 3
    mixed, targets = op(images, labels)
    assert mixed.shape == original.shape and mixed.dtype == dtype and mixed.device == original.device
    perm, boxes = op.last_perm, op.last_boxes
    assert sorted(perm.tolist()) == list(range(n))
    if mode == "batch":
        assert (boxes == boxes[0]).all()
    np.testing.assert_array_equal(mixed.numpy(), expected_mix(original, perm, boxes))
    if inplace:
        assert mixed.data_ptr() == images.data_ptr()
    else:
        assert torch.equal(images, original)  # input untouched
    # weights: exact box share, sum to 1; soft targets mix the one-hot labels with them
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    np.testing.assert_allclose(op.last_weights[:, 1], areas / (hw[0] * hw[1]), rtol=1e-6)
    np.testing.assert_allclose(op.last_weights.sum(1), 1.0, atol=1e-6)
    expected = np.zeros((n, 3), np.float32)
    expected[np.arange(n), labels.numpy()] += op.last_weights[:, 0]
    expected[np.arange(n), labels[perm].numpy()] += op.last_weights[:, 1]
    np.testing.assert_allclose(targets.numpy(), expected, atol=1e-6)


@given(n=st.integers(2, 6), hw=st.tuples(st.integers(3, 30), st.integers(3, 30)), seed=st.integers(0, 10**6))
def test_lambda_b_is_the_exact_share_of_partner_pixels(n, hw, seed):
    h, w = hw
    # pixel (i, y, x) holds a value unique in the batch, so every output pixel names its source image
    codes = torch.arange(n * h * w, dtype=torch.float32).view(n, 1, h, w)
    op = TensorContextMix(mode="sample", seed=seed, min_box_side=1)
    mixed, weights = op(codes)
    assert weights.shape == (n, 2) and torch.allclose(weights.sum(1), torch.ones(n))
    source_image = (mixed[:, 0] // (h * w)).long()
    for i, j in enumerate(op.last_perm.tolist()):
        x0, y0, x1, y1 = op.last_boxes[i]
        if i != j:
            share = (source_image[i] == j).float().mean()
            assert torch.isclose(share, weights[i, 1], atol=1e-6)
            inside = torch.zeros(h, w, dtype=torch.bool)
            inside[y0:y1, x0:x1] = True
            assert torch.equal(source_image[i] == j, inside)


def test_draws_follow_the_shared_box_sampler():
    n, h, w = 6, 32, 48
    op = TensorContextMix(mode="sample", seed=123, alpha=0.4, box="square", p=1.0)
    op(random_batch(n, 3, h, w, torch.float32))
    g = torch.Generator().manual_seed(123)
    perm = torch.randperm(n, generator=g)
    torch.rand(n, generator=g, dtype=torch.float64)  # the p draws
    draws = torch.rand(n, 3, generator=g, dtype=torch.float64).numpy()
    assert torch.equal(op.last_perm, perm)
    np.testing.assert_array_equal(op.last_boxes, draw_boxes(h, w, draws, alpha=0.4, box="square"))


@pytest.mark.parametrize("mode", ["batch", "sample"])
@pytest.mark.parametrize("mask_dtype", [torch.int64, torch.uint8, torch.bool])
def test_segmentation_masks_are_mixed_with_the_same_boxes(mode, mask_dtype):
    n, h, w = 5, 24, 36
    images = random_batch(n, 3, h, w, torch.float32, 1)
    masks = (torch.arange(n * h * w).view(n, h, w) % 7).to(mask_dtype)
    original = masks.clone()
    op = TensorContextMix(mode=mode, seed=4, min_box_side=1)
    mixed, mixed_masks = op(images, masks)
    assert mixed_masks.shape == masks.shape and mixed_masks.dtype == mask_dtype
    assert torch.equal(masks, original)
    expected = expected_mix(masks[:, None], op.last_perm, op.last_boxes)[:, 0]
    np.testing.assert_array_equal(mixed_masks.numpy(), expected)
    np.testing.assert_array_equal(mixed.numpy(), expected_mix(images, op.last_perm, op.last_boxes))


def test_same_seed_same_output_and_modes_differ():
    images = random_batch(8, 3, 32, 32, torch.uint8, 2)
    labels = torch.arange(8) % 4
    runs = [TensorContextMix(num_classes=4, mode="sample", seed=7) for _ in range(2)]
    for _ in range(3):
        (a, ta), (b, tb) = (op(images, labels) for op in runs)
        assert torch.equal(a, b) and torch.equal(ta, tb)
    other = TensorContextMix(num_classes=4, mode="sample", seed=8)
    other(images, labels)
    assert not np.array_equal(other.last_boxes, runs[0].last_boxes)
    shared = TensorContextMix(num_classes=4, mode="batch", seed=7)
    shared(images, labels)
    assert (shared.last_boxes == shared.last_boxes[0]).all()
    assert len({tuple(b) for b in runs[0].last_boxes}) > 1
    # a generator can be passed in; the global generator is used otherwise
    torch.manual_seed(3)
    first = TensorContextMix()(images)[1]
    torch.manual_seed(3)
    assert torch.equal(first, TensorContextMix()(images)[1])
    from_generator = TensorContextMix(num_classes=4, mode="sample", generator=torch.Generator().manual_seed(7))
    from_seed = TensorContextMix(num_classes=4, mode="sample", seed=7)
    assert torch.equal(from_generator(images, labels)[0], from_seed(images, labels)[0])


def test_probability_label_smoothing_and_one_hot():
    images = random_batch(6, 1, 16, 16, torch.float32, 3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    skipped, targets = TensorContextMix(num_classes=3, p=0.0, label_smoothing=0.3)(images, labels)
    assert torch.equal(skipped, images)
    expected = torch.full((6, 3), 0.1)
    expected[torch.arange(6), labels] = 0.8
    assert torch.allclose(targets, expected)
    op = TensorContextMix(num_classes=3, mode="sample", p=0.5, seed=1, min_box_side=1)
    _, weights = op(images)
    assert (weights[:, 1] == 0).any() and (weights[:, 1] > 0).any()  # some skipped, some mixed
    hard = TensorContextMix(num_classes=3, mode="sample", label_mode="one-hot", seed=2)
    _, targets = hard(images, labels)
    assert set(targets.flatten().tolist()) <= {0.0, 1.0} and torch.equal(targets.sum(1), torch.ones(6))
    partner_wins = hard.last_weights[:, 1] == 1
    winners = torch.where(torch.from_numpy(partner_wins), labels[hard.last_perm], labels)
    assert torch.equal(targets.argmax(1), winners)


@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_bilinear_matches_opencv_within_a_level(mode):
    images = random_batch(4, 3, 20, 30, torch.uint8, 5)
    op = TensorContextMix(mode=mode, interpolation="bilinear", seed=3, min_box_side=1)
    mixed, _ = op(images)
    expected = expected_mix(images, op.last_perm, op.last_boxes, cv2.INTER_LINEAR)
    assert np.abs(mixed.numpy().astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("inplace", [True, False])
def test_non_contiguous_and_float64_inputs(inplace):
    base = random_batch(4, 3, 18, 22, torch.float64, 6)
    images = base.contiguous(memory_format=torch.channels_last)
    original = images.clone()
    op = TensorContextMix(mode="sample", inplace=inplace, seed=1, min_box_side=1)
    mixed, _ = op(images)
    assert mixed.dtype == torch.float64
    np.testing.assert_array_equal(mixed.numpy(), expected_mix(original, op.last_perm, op.last_boxes))
    assert torch.equal(images, mixed) if inplace else torch.equal(images, original)


def test_paste_resized_batch_directly():
    images = random_batch(3, 2, 10, 12, torch.float32)
    boxes = np.array([[0, 0, 12, 10], [3, 2, 9, 2], [1, 1, 4, 5]])  # (x_min, y_min, x_max, y_max): full, empty, small
    out = paste_resized_batch(images, np.array([1, 2, 0]), boxes)
    np.testing.assert_array_equal(out.numpy(), expected_mix(images, [1, 2, 0], boxes))
    shared = paste_resized_batch(images, torch.tensor([2, 0, 1]), np.array([2, 3, 11, 9]))
    np.testing.assert_array_equal(shared.numpy(), expected_mix(images, [2, 0, 1], [[2, 3, 11, 9]] * 3))


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda op: op(np.zeros((2, 3, 4, 4))), "torch.Tensor"),
        (lambda op: op(torch.zeros(3, 4, 4)), "N, C, H, W"),
        (lambda op: op(torch.zeros(2, 3, 4, 4, dtype=torch.int32)), "uint8 or floating"),
        (lambda op: op(torch.zeros(2, 3, 4, 4), torch.zeros(3, dtype=torch.long)), "labels"),
        (lambda op: op(torch.zeros(2, 3, 4, 4), torch.zeros(2)), "integer"),
        (lambda op: op(torch.zeros(2, 3, 4, 4), torch.tensor([0, 5])), "num_classes"),
        (lambda op: TensorContextMix()(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1])), "num_classes"),
        (lambda op: paste_resized_batch(torch.zeros(2, 1, 4, 4), [0, 2], np.zeros((2, 4), int)), "partners"),
        (lambda op: paste_resized_batch(torch.zeros(2, 1, 4, 4), [0, 1], np.array([0, 0, 5, 5])), "box"),
    ],
)
def test_bad_inputs_raise_value_error(call, fragment):
    with pytest.raises(ValueError, match=fragment):
        call(TensorContextMix(num_classes=3))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"alpha": -1}, "alpha"),
        ({"mode": "pair"}, "mode"),
        ({"box": "round"}, "box"),
        ({"p": 2}, "p"),
        ({"num_classes": 0}, "num_classes"),
        ({"interpolation": "area"}, "interpolation"),
        ({"label_mode": "soft"}, "label_mode"),
        ({"min_box_side": 0}, "min_box_side"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
        ({"generator": 3}, "generator"),
    ],
)
def test_bad_options_raise_value_error(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        TensorContextMix(**kwargs)


# ------------------------------------------------------------------------------- collate
class Squares(Dataset):
    """Tiny dataset of (C, H, W) float images with integer labels."""

    def __init__(self, size: int = 10):
        self.images = random_batch(size, 3, 16, 20, torch.float32, 9)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], index % 4


def test_collate_with_a_real_dataloader():
    dataset = Squares()
    collate = ContextMixCollate(num_classes=4, mode="sample", seed=0, min_box_side=1)
    loader = DataLoader(dataset, batch_size=4, collate_fn=collate, num_workers=0)
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]  # odd last batch
    for images, targets in batches:
        assert images.shape[1:] == (3, 16, 20) and targets.shape == (images.shape[0], 4)
        assert torch.allclose(targets.sum(1), torch.ones(images.shape[0]))
    # the last batch is mixed exactly as the op says
    op = collate.contextmix
    expected = expected_mix(dataset.images[8:10], op.last_perm, op.last_boxes)
    np.testing.assert_array_equal(batches[-1][0].numpy(), expected)
    assert torch.equal(dataset.images, Squares().images)  # the dataset is untouched


def test_collate_dicts_and_worker_streams():
    class Dicts(Squares):
        def __getitem__(self, index: int):
            return {"image": self.images[index], "label": index % 4, "name": f"s{index}"}

    collate = ContextMixCollate(num_classes=4, seed=1)
    batch = collate([Dicts()[i] for i in range(4)])
    assert set(batch) == {"image", "label", "name", "mix_weights"} and batch["label"].shape == (4, 4)
    assert batch["name"] == ["s0", "s1", "s2", "s3"]

    def epoch(seed: int) -> list[np.ndarray]:
        loader = DataLoader(
            Squares(16),
            batch_size=4,
            num_workers=2,
            collate_fn=ContextMixCollate(num_classes=4, mode="sample", seed=5),
            generator=torch.Generator().manual_seed(seed),
        )
        return [images.numpy() for images, _ in loader]

    first, again = epoch(0), epoch(0)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))  # seeded loader reproduces
    # the two workers (batches 0 and 1) draw from different streams
    assert not np.array_equal(first[0] - Squares(16).images[:4].numpy(), first[1] - Squares(16).images[4:8].numpy())
    with pytest.raises(ValueError, match="collated batch"):
        ContextMixCollate(collate_fn=lambda samples: 3)([(Squares().images[0],)])
    with pytest.raises(ValueError, match="must be a dict or an"):
        ContextMixCollate()([1])
    with pytest.raises(ValueError, match="collate_fn"):
        ContextMixCollate(collate_fn=5)


def test_the_old_name_contextmix_still_works_and_warns():
    import albu_defects.pytorch as pt

    with pytest.warns(DeprecationWarning, match="TensorContextMix"):
        old = pt.ContextMix
    assert old is TensorContextMix and "ContextMix" not in pt.__all__
    with pytest.raises(AttributeError):
        pt.NoSuchOp
