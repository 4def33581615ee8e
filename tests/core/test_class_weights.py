"""ClassWeights: loss -> probability mapping, history, shared memory across processes and DataLoader workers."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from albu_defects import ClassWeights, DefectBank, GuidedCropPaste, load_samples, losses_to_probabilities
from albu_defects.core.class_weights import WeightUpdate
from albu_defects.data import sample_root

REPO_ROOT = Path(__file__).resolve().parents[2]

losses_strategy = st.lists(st.floats(0.0, 50.0, allow_nan=False), min_size=1, max_size=12)


def _shm_exists(name: str) -> bool:
    return Path("/dev/shm", name.lstrip("/")).exists()


# --------------------------------------------------------------------------- the mapping
def test_proportional_and_softmax_mappings():
    p = losses_to_probabilities([1.0, 3.0], mode="proportional", floor=0.0)
    np.testing.assert_allclose(p, [0.25, 0.75])
    p = losses_to_probabilities([0.0, np.log(3.0)], mode="softmax", temperature=1.0, floor=0.0)
    np.testing.assert_allclose(p, [0.25, 0.75])
    hot = losses_to_probabilities([0.0, np.log(3.0)], mode="softmax", temperature=0.5, floor=0.0)
    assert hot[1] > 0.75  # a lower temperature sharpens
    np.testing.assert_allclose(losses_to_probabilities([0.0, 0.0, 0.0], floor=0.0), [1 / 3] * 3)
    np.testing.assert_allclose(losses_to_probabilities([1.0, 0.0], floor=0.5), [0.75, 0.25])
    # not the rarest class but the highest loss gets the most
    assert np.argmax(losses_to_probabilities([0.2, 0.9, 0.1])) == 1


@given(losses=losses_strategy, floor=st.floats(0.0, 1.0), mode=st.sampled_from(["proportional", "softmax"]))
def test_probabilities_sum_to_one_keep_the_floor_and_follow_the_losses(losses, floor, mode):
    p = losses_to_probabilities(losses, mode=mode, temperature=2.0, floor=floor)
    k = len(losses)
    assert p.shape == (k,) and np.isclose(p.sum(), 1.0)
    assert (p >= floor / k - 1e-12).all()  # no class starves
    order = np.argsort(losses, kind="stable")
    assert (np.diff(p[order]) >= -1e-12).all()  # higher loss, never lower probability


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"losses": [1.0, np.nan]}, "per_class_loss"),
        ({"losses": [1.0, -1.0]}, "per_class_loss"),
        ({"losses": []}, "per_class_loss"),
        ({"losses": [[1.0, 2.0]]}, "per_class_loss"),
        ({"losses": [1.0], "mode": "rank"}, "mode"),
        ({"losses": [1.0], "mode": "softmax", "temperature": 0.0}, "temperature"),
        ({"losses": [1.0], "floor": 1.5}, "floor"),
    ],
)
def test_mapping_rejects_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        losses_to_probabilities(**kwargs)


# --------------------------------------------------------------------------- the object
def test_uniform_until_the_first_update_then_history():
    with ClassWeights(["a", "b", "c", "d"], floor=0.2) as weights:
        np.testing.assert_allclose(weights.probabilities, [0.25] * 4)
        assert weights.version == 0 and weights.history == [] and weights.is_owner
        first = weights.update([0.0, 1.0, 1.0, 2.0])
        np.testing.assert_allclose(first, 0.8 * np.array([0, 0.25, 0.25, 0.5]) + 0.05)
        second = weights.update({"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0})
        np.testing.assert_allclose(second, [0.25] * 4)
        np.testing.assert_allclose(weights.probabilities, second)
        history = weights.history
        assert weights.version == 2 and [h.version for h in history] == [1, 2]
        assert isinstance(history[0], WeightUpdate)
        np.testing.assert_allclose(history[0].losses, [0.0, 1.0, 1.0, 2.0])
        np.testing.assert_allclose(history[0].probabilities, first)
        assert "version=2" in repr(weights)


def test_update_takes_a_torch_tensor():
    torch = pytest.importorskip("torch")
    with ClassWeights(3, floor=0.0) as weights:
        np.testing.assert_allclose(weights.update(torch.tensor([1.0, 1.0, 2.0], requires_grad=True)), [0.25, 0.25, 0.5])
        assert weights.classes == ("class_1", "class_2", "class_3")


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: ClassWeights(0), "classes"),
        (lambda: ClassWeights(["a", "a"]), "classes"),
        (lambda: ClassWeights("ab"), "classes"),
        (lambda: ClassWeights(2, mode="rank"), "mode"),
        (lambda: ClassWeights(2, floor=-0.1), "floor"),
        (lambda: ClassWeights(2, temperature=-1.0), "temperature"),
    ],
)
def test_constructor_rejects_bad_arguments(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_update_rejects_bad_losses():
    with ClassWeights(["a", "b"]) as weights:
        for bad in ([1.0], [1.0, 2.0, 3.0], {"a": 1.0}, {"a": 1.0, "b": 1.0, "c": 1.0}, ["x", "y"], [np.inf, 1.0]):
            with pytest.raises(ValueError, match="per_class_loss"):
                weights.update(bad)
        assert weights.version == 0  # nothing was written


def test_pickled_copies_share_the_block_and_only_the_owner_updates():
    weights = ClassWeights(["a", "b"], floor=0.0)
    attached = pickle.loads(pickle.dumps(weights))
    deep = copy.deepcopy(weights)
    assert attached.name == weights.name and not attached.is_owner and deep.name == weights.name
    weights.update([3.0, 1.0])
    np.testing.assert_allclose(attached.probabilities, [0.75, 0.25])
    np.testing.assert_allclose(deep.probabilities, [0.75, 0.25])
    assert attached.version == 1
    with pytest.raises(RuntimeError, match="process that created"):
        attached.update([1.0, 1.0])
    attached.close()  # a non-owner close leaves the block alive
    assert _shm_exists(weights.name) and weights.version == 1
    name = weights.name
    weights.close()
    weights.close()  # idempotent
    assert not _shm_exists(name) and weights.closed
    with pytest.raises(ValueError, match="closed"):
        weights.probabilities
    with pytest.raises(ValueError, match="no longer exists"):
        ClassWeights._attached(name, ("a", "b"), "proportional", 1.0, 0.0)
    with pytest.raises(ValueError, match="closed"):
        pickle.dumps(weights)


def test_garbage_collection_unlinks_the_block():
    weights = ClassWeights(2)
    name = weights.name
    assert _shm_exists(name)
    del weights
    assert not _shm_exists(name)


def _run_script(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.slow
def test_spawned_child_and_unrelated_process_read_without_unlinking_or_warnings(tmp_path):
    # A spawned child attaches by name and exits; then an unrelated interpreter attaches and exits. Neither
    # may destroy the owner's block (the resource-tracker pitfall) nor print a tracker warning.
    result = _run_script(
        tmp_path,
        """
        import multiprocessing as mp, os, pickle, subprocess, sys
        from albu_defects import ClassWeights

        def read(weights, queue):
            queue.put(weights.probabilities.tolist())

        if __name__ == "__main__":
            weights = ClassWeights(["a", "b"], floor=0.0)
            weights.update([1.0, 3.0])
            ctx = mp.get_context("spawn")
            queue = ctx.Queue()
            child = ctx.Process(target=read, args=(weights, queue))
            child.start()
            print("child", queue.get())
            child.join()
            blob = pickle.dumps(weights).hex()
            code = "import pickle, sys; w = pickle.loads(bytes.fromhex(sys.argv[1])); print(w.probabilities.tolist())"
            other = subprocess.run([sys.executable, "-c", code, blob], capture_output=True, text=True)
            print("other", other.stdout.strip(), other.stderr.strip())
            print("owner", weights.probabilities.tolist(), os.path.exists("/dev/shm/" + weights.name.lstrip("/")))
            name = weights.name
            weights.close()
            print("after close", os.path.exists("/dev/shm/" + name.lstrip("/")))
        """,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "child [0.25, 0.75]"
    assert lines[1].startswith("other [0.25, 0.75]")
    assert lines[2] == "owner [0.25, 0.75] True"
    assert lines[3] == "after close False"
    assert "leaked" not in result.stderr and "resource_tracker" not in result.stderr, result.stderr


# --------------------------------------------------------------------------- live in DataLoader workers
class GuidedDataset:
    """Map-style dataset (no torch base class needed): Guided-Crop on one defect-free tile per item."""

    def __init__(self, transform: GuidedCropPaste, image: np.ndarray, length: int) -> None:
        self.transform = transform
        self.image = image
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        out = self.transform(image=self.image)
        return {"classes": out["class_vector"], "pid": os.getpid()}


@pytest.fixture(scope="module")
def sample_bank_path(tmp_path_factory) -> str:
    bank = DefectBank.from_folder(sample_root(), progress=False)
    return str(bank.save(tmp_path_factory.mktemp("bank") / "bundled"))


def _one_hot(k: int, size: int = 5) -> list[float]:
    losses = [0.0] * size
    losses[k - 1] = 1.0
    return losses


def _drawn(batch) -> set[int]:
    """Class ids drawn in a batch (the bundled bank has one class per image, so one per sample)."""
    vectors = batch["classes"].numpy()
    assert (vectors.sum(axis=1) == 1).all()
    return {int(k) + 1 for k in np.argmax(vectors, axis=1)}


@pytest.mark.slow
def test_update_reaches_running_persistent_workers(sample_bank_path):
    torch = pytest.importorskip("torch")
    image = next(s for s in load_samples() if s.class_name == "Free").image
    weights = ClassWeights(DefectBank.load(sample_bank_path).classes, floor=0.0)
    weights.update(_one_hot(1))  # Blowhole only
    transform = GuidedCropPaste(bank=sample_bank_path, class_weights=weights, p=1.0)
    loader = torch.utils.data.DataLoader(
        GuidedDataset(transform, image, 32), batch_size=4, num_workers=2, persistent_workers=True, prefetch_factor=1
    )
    try:
        batches = iter(loader)
        # prefetch_factor=1 with 2 workers: batches 0 and 1 are requested at start, batch k+2 when k is received
        before = [next(batches) for _ in range(2)]  # drawn before the update
        weights.update(_one_hot(3))  # Crack only, while the workers are running
        prefetched = [next(batches) for _ in range(2)]  # requested before the update: either class
        after = list(batches)  # batches 4..7, all requested after the update
        assert len(after) == 4
        assert set().union(*map(_drawn, before)) == {1}
        assert set().union(*map(_drawn, prefetched)) <= {1, 3}
        assert set().union(*map(_drawn, after)) == {3}
        pids = {int(p) for b in before + prefetched + after for p in b["pid"]}
        assert len(pids) == 2 and os.getpid() not in pids

        weights.update(_one_hot(5))  # between epochs: the same workers see it from the first batch
        epoch = list(loader)
        assert set().union(*map(_drawn, epoch)) == {5}
        assert {int(p) for b in epoch for p in b["pid"]} == pids  # not recreated
    finally:
        del loader, batches
        weights.close()


@pytest.mark.slow
def test_spawned_workers_attach_by_name(sample_bank_path):
    torch = pytest.importorskip("torch")
    image = next(s for s in load_samples() if s.class_name == "Free").image
    weights = ClassWeights(DefectBank.load(sample_bank_path).classes, floor=0.0)
    weights.update(_one_hot(2))
    transform = GuidedCropPaste(bank=sample_bank_path, class_weights=weights, p=1.0)
    loader = torch.utils.data.DataLoader(
        GuidedDataset(transform, image, 8),
        batch_size=4,
        num_workers=2,
        persistent_workers=True,
        multiprocessing_context="spawn",
    )
    try:
        first = list(loader)
        weights.update(_one_hot(4))
        second = list(loader)
        assert set().union(*map(_drawn, first)) == {2}
        assert set().union(*map(_drawn, second)) == {4}
        assert {int(p) for b in first for p in b["pid"]} == {int(p) for b in second for p in b["pid"]}
    finally:
        del loader
        weights.close()
