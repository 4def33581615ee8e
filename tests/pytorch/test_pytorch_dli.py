"""DLICollate: DLI inside a DataLoader collate, sample formats, pickling by path, worker processes."""

from __future__ import annotations

import functools
import os
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader, default_collate  # noqa: E402

from albu_defects import DefectBank, DynamicLabelInjection, resolve_bank  # noqa: E402
from albu_defects.data import sample_root  # noqa: E402
from albu_defects.pytorch import DLICollate  # noqa: E402

SIZE = 48


@pytest.fixture(scope="module")
def bank_path(tmp_path_factory):
    bank = DefectBank.from_folder(sample_root(), progress=False)
    return str(bank.save(tmp_path_factory.mktemp("dli") / "bank"))


def _samples(samples):
    import cv2

    out = []
    for s in samples:
        image = cv2.resize(s.image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(s.class_mask, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)
        out.append({"image": image, "mask": mask, "label": s.class_id})
    return out


def test_dict_samples_are_injected_then_collated(samples, bank_path):
    items = _samples(samples)
    collate = DLICollate(DynamicLabelInjection(bank_path, poisson_p=0.0, seed=0))
    batch = collate(items)
    assert batch["image"].shape == (len(items), SIZE, SIZE) and batch["image"].dtype == torch.uint8
    logs = batch["dli"]
    injected = logs["class_id"] != 0
    free = torch.tensor([s["label"] == 0 for s in items])
    assert torch.equal(injected, free)
    for i, item in enumerate(items):
        mask = batch["mask"][i]
        if injected[i]:
            assert set(mask.unique().tolist()) == {0, int(logs["class_id"][i])}
            assert int(batch["label"][i]) == int(logs["class_id"][i]) and logs["method"][i] == "paste"
            x0, y0, x1, y1 = logs["bbox"][i].tolist()  # (x_min, y_min, x_max, y_max)
            assert mask[y0:y1, x0:x1].any() and not mask[:y0].any() and not mask[y1:].any()
            assert not mask[:, :x0].any() and not mask[:, x1:].any()
        else:
            assert torch.equal(batch["image"][i], torch.from_numpy(item["image"]))
            assert int(batch["label"][i]) == item["label"] and logs["entry_id"][i] == -1


def test_tensor_tuple_samples_keep_their_types(samples, bank_path):
    items = []
    for s in _samples(samples):
        image = torch.from_numpy(np.repeat(s["image"][None], 3, axis=0))  # (3, H, W) like ToTensorV2
        items.append((image, torch.from_numpy(s["mask"].astype(np.int64)), torch.tensor(s["label"]), "meta"))
    collate = DLICollate(DynamicLabelInjection(bank_path, poisson_p=0.0, seed=1))
    images, masks, labels, meta = collate(items)
    assert images.shape == (len(items), 3, SIZE, SIZE) and images.dtype == torch.uint8
    assert masks.dtype == torch.int64 and labels.dtype == torch.int64 and list(meta) == ["meta"] * len(items)
    for i, (image, mask, label, _) in enumerate(items):
        if int(label) == 0:
            assert int(labels[i]) > 0 and set(masks[i].unique().tolist()) == {0, int(labels[i])}
            assert torch.equal(images[i][0], images[i][1])  # the gray bank broadcast to 3 channels
        else:
            assert torch.equal(images[i], image) and torch.equal(masks[i], mask) and int(labels[i]) == int(label)


def test_pickling_the_collate_sends_only_the_bank_path(bank_path):
    for bank in (bank_path, DefectBank.load(bank_path)):
        collate = DLICollate(DynamicLabelInjection(bank))
        blob = pickle.dumps(collate)
        assert bank_path.encode() in blob and len(blob) < 32_000  # transforms and their random states only
        entry = DefectBank.load(bank_path).entries[0]
        assert entry.crop.tobytes()[:64] not in blob
        assert isinstance(pickle.loads(blob).dli.bank, (str, DefectBank))


def _probe(bank_path: str, samples):
    """A collate_fn that also reports which process ran it and which bank object it used."""
    return default_collate(samples), os.getpid(), id(resolve_bank(bank_path))


@pytest.mark.slow
def test_dataloader_with_two_spawned_workers(samples, bank_path):
    items = _samples(samples) * 4  # four identical batches of 12: only the injections can tell them apart

    def run():
        dli = DynamicLabelInjection(bank_path, poisson_p=0.0, seed=3)
        loader = DataLoader(
            items,
            batch_size=len(samples),
            shuffle=False,
            num_workers=2,
            multiprocessing_context="spawn",
            collate_fn=DLICollate(dli, collate_fn=functools.partial(_probe, bank_path)),
            generator=torch.Generator().manual_seed(0),
        )
        return list(loader)

    first = run()
    banks_by_pid: dict[int, set[int]] = {}
    for batch, pid, bank_id in first:
        banks_by_pid.setdefault(pid, set()).add(bank_id)
        logs = batch["dli"]
        assert torch.equal(logs["class_id"] != 0, torch.tensor([s["label"] == 0 for s in items[: len(samples)]]))
        for i in torch.nonzero(logs["class_id"]).flatten().tolist():
            assert set(batch["mask"][i].unique().tolist()) == {0, int(logs["class_id"][i])}
            assert int(batch["label"][i]) == int(logs["class_id"][i])
    assert len(banks_by_pid) == 2 and os.getpid() not in banks_by_pid
    assert all(len(ids) == 1 for ids in banks_by_pid.values())  # each worker loaded the bank once
    images = [batch["image"] for batch, _, _ in first]
    assert first[0][1] != first[1][1]  # batches 0 and 1 come from different workers...
    assert not torch.equal(images[0], images[1])  # ...which draw different injections
    assert not torch.equal(images[0], images[2])  # and one worker's stream moves on
    second = run()  # a seeded DataLoader reproduces them
    for (a, _, _), (b, _, _) in zip(first, second, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_bad_samples_are_rejected(bank_path):
    collate = DLICollate(DynamicLabelInjection(bank_path))
    with pytest.raises(ValueError, match="lacks 'image' or 'mask'"):
        collate([{"img": np.zeros((4, 4), np.uint8)}])
    with pytest.raises(ValueError, match="must be a dict or an"):
        collate([np.zeros((4, 4), np.uint8)])
    with pytest.raises(ValueError, match="must be a DynamicLabelInjection"):
        DLICollate(object())  # type: ignore[arg-type]
