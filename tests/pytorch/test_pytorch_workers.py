"""DataLoader scale-out: distinct augmentation streams per worker and per rank, and the torch batch ops under DDP."""

from __future__ import annotations

import functools
from collections import defaultdict

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import albumentations as A  # noqa: E402
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset  # noqa: E402

from albu_defects import BatchCompose, CutPaste  # noqa: E402
from albu_defects.pytorch import (  # noqa: E402
    ContextMixCollate,
    TensorContextMix,
    distributed_rank,
    find_pipelines,
    reseed_pipeline,
    worker_init_fn,
    worker_seed,
)

# 4 workers on a 2-core machine is the point of the test, not a mistake.
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")

WORKERS = 4
ITEMS_PER_WORKER = 3


def make_pipeline(seed: int | None = 0) -> A.Compose:
    # A geometric albumentations transform and one of ours: both must be re-seeded.
    return A.Compose([A.RandomCrop(16, 16), CutPaste(p=0.5)], seed=seed)


class Augmented(Dataset):
    """Items are (worker id, fingerprint of one augmentation draw); the pipeline sits in a dict attribute."""

    def __init__(self, size: int = WORKERS * ITEMS_PER_WORKER, seed: int | None = 0) -> None:
        rng = np.random.default_rng(123)
        self.image = rng.integers(0, 256, (32, 32), dtype=np.uint8)
        self.pipelines = {"train": make_pipeline(seed)}
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[int, str]:
        info = torch.utils.data.get_worker_info()
        out = self.pipelines["train"](image=self.image)["image"]
        return (-1 if info is None else info.id), out.tobytes().hex()


def epoch(dataset: Dataset, seed: int = 0, init=worker_init_fn, **kwargs) -> list[tuple[int, str]]:
    """Every (worker, fingerprint) of one epoch, in sample order."""
    loader = DataLoader(
        dataset,
        batch_size=None,  # item i goes to worker i % WORKERS
        num_workers=WORKERS,
        worker_init_fn=init,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )
    return [(int(worker), fingerprint) for worker, fingerprint in loader]


def streams(items: list[tuple[int, str]]) -> dict[int, list[str]]:
    by_worker: dict[int, list[str]] = defaultdict(list)
    for worker, fingerprint in items:
        by_worker[worker].append(fingerprint)
    return dict(by_worker)


@pytest.mark.slow
def test_without_the_helper_albumentations_repeats_one_stream_in_every_worker():
    # The failure the helper fixes: Compose(seed=s) (and an unseeded Compose) is copied into every worker.
    for seed in (0, None):
        per_worker = streams(epoch(Augmented(seed=seed), init=None))
        assert len(per_worker) == WORKERS
        assert all(stream == per_worker[0] for stream in per_worker.values())


@pytest.mark.slow
def test_worker_init_fn_gives_every_worker_its_own_stream_and_a_seed_reproduces_the_epoch(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    dataset = Subset(Augmented(), list(range(WORKERS * ITEMS_PER_WORKER)))  # found through Subset and a dict
    first = epoch(dataset, seed=0)
    per_worker = streams(first)
    assert sorted(per_worker) == list(range(WORKERS))
    fingerprints = [f for stream in per_worker.values() for f in stream]
    assert len(set(fingerprints)) == len(fingerprints)  # no draw repeats within or across workers
    assert epoch(dataset, seed=0) == first  # the same DataLoader seed reproduces the whole epoch
    assert epoch(dataset, seed=1) != first
    # the pipeline's own seed also counts (and the user's seed is kept as the base)
    assert epoch(Subset(Augmented(seed=7), list(range(12))), seed=0) != first


@pytest.mark.slow
def test_ranks_get_different_streams(monkeypatch):
    dataset = Augmented()
    monkeypatch.setenv("RANK", "0")
    rank0 = epoch(dataset)
    assert epoch(dataset) == rank0
    monkeypatch.setenv("RANK", "1")
    rank1 = epoch(dataset)
    assert {f for _, f in rank0}.isdisjoint({f for _, f in rank1})
    # an explicit rank (for spawn / forkserver workers) is the same as the environment's
    monkeypatch.delenv("RANK")
    assert epoch(dataset, init=functools.partial(worker_init_fn, rank=1)) == rank1


def test_collates_are_rank_aware(monkeypatch):
    images = torch.arange(8 * 3 * 12 * 12, dtype=torch.float32).reshape(8, 3, 12, 12)
    dataset = [(images[i], i % 3) for i in range(8)]

    def mixed(rank: str) -> list[torch.Tensor]:
        monkeypatch.setenv("RANK", rank)
        loader = DataLoader(
            dataset,
            batch_size=4,
            num_workers=2,
            collate_fn=ContextMixCollate(num_classes=3, mode="sample", p=1.0, min_box_side=1, seed=5),
            generator=torch.Generator().manual_seed(0),
        )
        return [batch[0] for batch in loader]

    rank0, again, rank1 = mixed("0"), mixed("0"), mixed("1")
    assert all(torch.equal(a, b) for a, b in zip(rank0, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(rank0, rank1, strict=True))


def test_reseed_pipeline_in_the_main_process(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    image = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)

    def draws(pipeline: A.Compose) -> list[bytes]:
        return [pipeline(image=image)["image"].tobytes() for _ in range(3)]

    pipeline = make_pipeline(seed=3)
    seed0 = reseed_pipeline(pipeline, rank=0)
    assert pipeline.seed == 3  # the user's seed stays the base
    stream0 = draws(pipeline)
    assert reseed_pipeline(pipeline, rank=0) == seed0 and draws(pipeline) == stream0  # idempotent
    assert reseed_pipeline(pipeline, rank=1) != seed0 and draws(pipeline) != stream0
    assert worker_seed(3, rank=0) == seed0 and worker_seed(4, rank=0) != seed0
    assert worker_seed(None, 0) != worker_seed(None, 0)  # unseeded stays unseeded outside workers

    op = TensorContextMix(num_classes=2, seed=1)
    reseed_pipeline(op, rank=2)
    boxes = op.draw(4, 16, 16)[1]
    reseed_pipeline(op, rank=2)
    np.testing.assert_array_equal(op.draw(4, 16, 16)[1], boxes)

    compose = BatchCompose([A.HorizontalFlip()], seed=0)
    reseed_pipeline(compose, rank=1)
    assert compose.seed == 0
    with pytest.raises(ValueError, match="pipeline must be"):
        reseed_pipeline(lambda image: image)
    with pytest.raises(ValueError, match="rank"):
        worker_seed(0, rank=-1)
    with pytest.raises(ValueError, match="inside a DataLoader worker"):
        worker_init_fn(0)


def test_distributed_rank_reads_the_environment(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert distributed_rank() == 0
    monkeypatch.setenv("RANK", "3")
    assert distributed_rank() == 3
    monkeypatch.setenv("RANK", "three")
    with pytest.raises(ValueError, match="RANK"):
        distributed_rank()


def test_find_pipelines_walks_attributes_and_small_containers():
    inner = make_pipeline()
    flip = A.HorizontalFlip()
    op = TensorContextMix()

    class Holder(Dataset):
        def __len__(self) -> int:
            return 1

        def __init__(self) -> None:
            self.by_split = {"train": inner, "extra": [flip, (op,)]}
            self.names = [f"file{i}.png" for i in range(10_000)]
            self.hidden = [A.VerticalFlip()] + [0] * 300  # too long a list: not searched
            self.closure = lambda image: A.Blur()(image=image)  # closures are not searched
            self.again = inner  # found once

    dataset = ConcatDataset([Holder(), Holder()])
    found = find_pipelines(dataset)
    # each object once (both holders share them), in search order; nothing from the long list or the closure
    assert [id(f) for f in found] == [id(inner), id(flip), id(op)]
    assert find_pipelines(inner) == [inner]  # a compose's children are re-seeded through it


@pytest.mark.slow
def test_ddp_two_gloo_ranks_mix_their_own_batches(tmp_path):
    import torch.multiprocessing as mp
    from _ddp_rank import run_rank

    mp.spawn(run_rank, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for result in ranks:
        # the batch was really mixed, and the soft targets are distributions
        assert not torch.equal(result["mixed"], result["images"])
        assert torch.allclose(result["targets"].sum(1), torch.ones(6))
        # DDP averaged the gradients of the two ranks' own mixed batches
        torch.testing.assert_close(result["ddp_grads"], result["mean_local_grads"])
        torch.testing.assert_close(result["params"][0], result["params"][1])  # replicas stay in sync
    # same user seed on both ranks, different boxes: reseed_pipeline split the streams by rank
    assert not torch.equal(ranks[0]["boxes"], ranks[1]["boxes"])
    # DataLoader workers read the rank from the process group: identical loader seeds, different streams
    assert ranks[0]["stream"] != ranks[1]["stream"]
    assert len(set(ranks[0]["stream"])) == len(ranks[0]["stream"])
