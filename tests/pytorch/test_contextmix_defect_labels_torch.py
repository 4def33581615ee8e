"""``label_mode="defect_area"`` in the torch op (``TensorContextMix(masks=...)``) and ``ContextMixCollate``.

The weights of every sample are checked against the numpy functions the transform uses
(``visible_defect_pixels`` on the *input* masks, then ``defect_mix_weights``), so the torch op
(which counts on its mixed masks) and the numpy transform give the same labels for the same boxes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from albu_defects.methods.contextmix.functional import defect_mix_weights, mix_weights, visible_defect_pixels
from albu_defects.pytorch import ContextMixCollate, TensorContextMix


def random_masks(n, hw, seed, multi_hot=False, classes=3):
    rng = np.random.default_rng(seed)
    density = rng.choice([0.0, 0.01, 0.1, 0.5], size=n)
    hit = rng.random((n, *hw)) < density[:, None, None]
    cls = rng.integers(1, classes + 1, size=(n, 1, 1))
    index = (hit * cls).astype(np.uint8)
    if not multi_hot:
        return torch.from_numpy(index)
    return torch.from_numpy(np.stack([index == k for k in range(1, classes + 1)], axis=1))


def expected_weights(masks: torch.Tensor, perm, boxes, min_pixels: int) -> np.ndarray:
    defects = (masks != 0).any(dim=1).numpy() if masks.ndim == 4 else (masks != 0).numpy()
    h, w = defects.shape[1:]
    rows = []
    for i in range(len(defects)):
        visible, total = visible_defect_pixels(defects[i], defects[int(perm[i])], boxes[i])
        rows.append(defect_mix_weights(visible, total, mix_weights(boxes[i][None], h, w, "area")[0], min_pixels))
    return np.stack(rows)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 6),
    hw=st.tuples(st.integers(3, 30), st.integers(3, 30)),
    mode=st.sampled_from(["batch", "sample"]),
    multi_hot=st.booleans(),
    min_pixels=st.integers(1, 6),
    seed=st.integers(0, 10_000),
)
def test_op_weights_are_the_numpy_functions_of_the_input_masks(n, hw, mode, multi_hot, min_pixels, seed):
    images = torch.randint(0, 256, (n, 3, *hw), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    masks = random_masks(n, hw, seed, multi_hot)
    labels = torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(seed + 1))
    op = TensorContextMix(
        num_classes=4, label_mode="defect_area", min_visible_pixels=min_pixels, mode=mode, p=0.7, seed=seed
    )
    mixed, targets, mixed_masks = op(images, labels, masks=masks)
    perm, boxes = op.last_perm.numpy(), op.last_boxes
    weights = expected_weights(masks, perm, boxes, min_pixels)
    np.testing.assert_allclose(op.last_weights, weights, atol=1e-6)
    onehot = np.eye(4)[labels.numpy()]
    np.testing.assert_allclose(targets.numpy(), weights[:, :1] * onehot + weights[:, 1:] * onehot[perm], atol=1e-6)
    # the masks are mixed like the images (the op's own per-pixel path), dtype and shape kept
    np.testing.assert_array_equal(mixed_masks.numpy(), op.apply_to_mask(masks, perm, boxes).numpy())
    assert mixed_masks.dtype == masks.dtype and mixed_masks.shape == masks.shape
    assert mixed.shape == images.shape


def test_op_a_covered_defect_gives_its_mass_to_the_partner():
    images = torch.zeros((2, 1, 16, 16), dtype=torch.uint8)
    masks = torch.zeros((2, 16, 16), dtype=torch.uint8)
    masks[0, 4:8, 4:8] = 1  # the host's defect, covered by the full-image box below
    op = TensorContextMix(num_classes=3, label_mode="defect_area")
    boxes = np.array([[0, 0, 16, 16], [0, 0, 0, 0]])
    _, targets, mixed_masks = op.apply(images, torch.tensor([1, 0]), np.array([1, 0]), boxes, masks=masks)
    np.testing.assert_allclose(op.last_weights, [[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(targets.numpy(), [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # both defect-free now
    assert not mixed_masks.any()
    area = TensorContextMix(num_classes=3)  # the area mode: the covered defect kept no mass here either ...
    area.apply(images, torch.tensor([1, 0]), np.array([1, 0]), np.array([[0, 0, 8, 16], [0, 0, 0, 0]]))
    assert area.last_weights[0, 0] == pytest.approx(0.5)  # ... but half the mass on a half-covered box


def test_op_defect_mode_needs_valid_masks():
    op = TensorContextMix(num_classes=3, label_mode="defect_area")
    images = torch.zeros((2, 1, 8, 8), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"label_mode='defect_area'.*masks"):
        op(images, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="masks must have shape"):
        op(images, torch.tensor([0, 1]), masks=torch.zeros((2, 7, 8)))
    with pytest.raises(ValueError, match="NaN"):
        op(images, torch.tensor([0, 1]), masks=torch.full((2, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="min_visible_pixels"):
        TensorContextMix(label_mode="defect_area", min_visible_pixels=0)
    # area mode still returns two values without masks, three with them
    assert len(TensorContextMix(num_classes=3)(images, torch.tensor([0, 1]))) == 2
    assert len(TensorContextMix(num_classes=3)(images, torch.tensor([0, 1]), masks=torch.zeros((2, 8, 8)))) == 3


@pytest.mark.parametrize("multi_hot", [False, True])
def test_collate_dict_samples_weigh_labels_by_visible_defects(multi_hot):
    n, hw = 6, (20, 24)
    masks = random_masks(n, hw, 5, multi_hot)
    samples = [
        {
            "image": np.full((*hw, 3), 10 * i, np.uint8),
            "mask": masks[i].permute(1, 2, 0).numpy() if multi_hot else masks[i].numpy(),
            "label": i % 3,
        }
        for i in range(n)
    ]
    collate = ContextMixCollate(num_classes=3, label_mode="defect_area", mode="sample", seed=2)
    batch = collate(samples)
    perm, boxes = collate.contextmix.last_perm.numpy(), collate.contextmix.last_boxes
    weights = expected_weights(masks, perm, boxes, 4)
    np.testing.assert_allclose(batch["mix_weights"].numpy(), weights, atol=1e-6)
    onehot = np.eye(3)[[s["label"] for s in samples]]
    np.testing.assert_allclose(
        batch["label"].numpy(), weights[:, :1] * onehot + weights[:, 1:] * onehot[perm], atol=1e-6
    )
    mixed = collate.contextmix.apply_to_mask(masks, perm, boxes)
    expected_masks = mixed.permute(0, 2, 3, 1) if multi_hot else mixed
    np.testing.assert_array_equal(batch["mask"].numpy(), expected_masks.numpy())


def test_collate_tuple_samples_name_the_mask_by_position():
    n, hw = 4, (16, 16)
    masks = random_masks(n, hw, 9)
    samples = [(torch.zeros((1, *hw)), i % 2, masks[i]) for i in range(n)]
    collate = ContextMixCollate(num_classes=2, label_mode="defect_area", mask_key=2, seed=0)
    _, targets, mixed_masks = collate(samples)
    perm, boxes = collate.contextmix.last_perm.numpy(), collate.contextmix.last_boxes
    weights = expected_weights(masks, perm, boxes, 4)
    onehot = np.eye(2)[[i % 2 for i in range(n)]]
    np.testing.assert_allclose(targets.numpy(), weights[:, :1] * onehot + weights[:, 1:] * onehot[perm], atol=1e-6)
    np.testing.assert_array_equal(mixed_masks.numpy(), collate.contextmix.apply_to_mask(masks, perm, boxes).numpy())
    with pytest.raises(ValueError, match=r"label_mode='defect_area'.*mask"):
        ContextMixCollate(num_classes=2, label_mode="defect_area")(samples)  # mask_key "mask" in tuples
