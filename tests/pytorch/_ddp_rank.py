"""One rank of the 2-process gloo DDP test (``test_pytorch_workers.py``), run by ``torch.multiprocessing.spawn``.

Kept out of the test module so the spawned processes import only this (no pytest collection).
"""

from __future__ import annotations

import copy
import os

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("ALBUMENTATIONS_NO_TELEMETRY", "1")


class CropStream(Dataset):
    """Each item is one draw of a seeded ``A.Compose`` random crop: the crop's top-left pixel id."""

    def __init__(self, size: int = 8) -> None:
        import albumentations as A

        self.size = size
        self.image = np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / (64 * 64)
        self.transform = A.Compose([A.RandomCrop(8, 8)], seed=0)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> float:
        return float(self.transform(image=self.image)["image"][0, 0])


def tiny_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def run_rank(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from albu_defects.pytorch import TensorContextMix, reseed_pipeline, worker_init_fn

    os.environ.pop("RANK", None)  # the rank must come from the process group
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        model = tiny_model()
        reference = copy.deepcopy(model)  # the same weights, trained without DDP on this rank's batch
        ddp = DistributedDataParallel(model)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)

        generator = torch.Generator().manual_seed(100 + rank)  # each rank has its own batch
        images = torch.rand(6, 1, 16, 16, generator=generator)
        labels = torch.randint(0, 3, (6,), generator=generator)
        mix = TensorContextMix(num_classes=3, p=1.0, min_box_side=2, seed=0)
        reseed_pipeline(mix)  # same user seed on every rank, a different stream per rank
        mixed, targets = mix(images, labels)

        loss = soft_cross_entropy(ddp(mixed), targets)
        loss.backward()
        soft_cross_entropy(reference(mixed), targets).backward()
        local_grads = torch.cat([p.grad.flatten() for p in reference.parameters()])
        ddp_grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        optimizer.step()
        params = torch.cat([p.detach().flatten() for p in model.parameters()])

        all_local = [torch.zeros_like(local_grads) for _ in range(world_size)]
        dist.all_gather(all_local, local_grads)
        all_params = [torch.zeros_like(params) for _ in range(world_size)]
        dist.all_gather(all_params, params)

        loader = DataLoader(
            CropStream(),
            batch_size=2,
            num_workers=2,
            worker_init_fn=worker_init_fn,
            generator=torch.Generator().manual_seed(0),  # identical on both ranks
            # A spawned process starts its own workers by spawn too (they would need the rank passed:
            # functools.partial(worker_init_fn, rank=rank)); forked workers inherit the group's rank.
            multiprocessing_context="fork",
        )
        stream = torch.cat(list(loader)).tolist()
        torch.save(
            {
                "rank": rank,
                "images": images,
                "mixed": mixed,
                "targets": targets,
                "boxes": torch.from_numpy(np.array(mix.last_boxes)),
                "loss": float(loss.detach()),
                "ddp_grads": ddp_grads,
                "mean_local_grads": torch.stack(all_local).mean(0),
                "params": all_params,
                "stream": stream,
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()
