"""The torch ContextMix on the training device: correctness there, and the time per batch (issue 14, sec. 4).

Runs on whatever device is available: CUDA when present, else CPU (``--device`` overrides), with no
device-specific code in the op itself. For each batch shape (float32 and uint8) and mode ("batch":
one box per batch; "sample": one box per image):

1. **check on the device**: every image ``i`` of the batch is filled with its own value, and its
   label is ``i % K``, so after a call the share of image ``i``'s pixels that came from its partner
   is read off the pixels. It must equal ``lambda_B`` (``last_weights[i, 1]``) and the soft target
   must equal ``lambda_A * onehot(y_i) + lambda_B * onehot(y_perm[i])``, within 1e-6; a mask batch
   (N, H, W) mixed in the same call must match the image pixels exactly; outputs must stay on the
   device with the input's dtype. Any failure stops the script (exit status 1).
2. **time per batch**, interleaved rounds, the device synchronized around every call:
   ``TensorContextMix(num_classes=K, mode=...)(images, labels)`` (draws, paste, soft targets) against
   a plain CutMix written the way timm / torchvision do it (box from Beta(1, 1) area, permuted batch,
   slice copy; one box per batch, or a Python loop of slice copies per image in "sample" mode;
   soft targets), both on the same device and the same tensors; and the pixel work alone with the
   same boxes and pairing (``TensorContextMix.apply`` against plain CutMix's slice copies).

    python benchmarks/bench_gpu.py [--device cuda|cpu] [--repeats 20] [--write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from _common import markdown_table, write_section
from bench_contextmix import plain_cutmix  # CutMix as timm / torchvision write it

from albu_defects.methods.contextmix.functional import draw_boxes
from albu_defects.pytorch import TensorContextMix

CONFIGS = [((64, 3, 224, 224), torch.float32), ((64, 3, 256, 256), torch.uint8), ((256, 3, 32, 32), torch.float32)]
MODES = ("batch", "sample")
NUM_CLASSES = 10
TOLERANCE = 1e-6


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA: {torch.cuda.get_device_name(device)}"
    return f"CPU ({torch.get_num_threads()} torch threads)"


def image_batch(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Images that say which sample a pixel came from: image ``i`` is filled with value ``i + 1`` (scaled)."""
    n = shape[0]
    values = torch.arange(1, n + 1, dtype=torch.float64, device=device)
    if dtype == torch.uint8:
        if n > 255:
            raise ValueError("uint8 batches of more than 255 images cannot give every image its own value")
        values = values.to(torch.uint8)
    else:
        values = (values / (n + 1)).to(dtype)
    return values.view(n, 1, 1, 1).expand(shape).contiguous()


# ============================================================================================ check
def check_on_device(shape: tuple[int, ...], dtype: torch.dtype, mode: str, device: torch.device, seed: int) -> float:
    """One call on the device with sample-identifying pixels; returns the largest error (raises on failure)."""
    n, _, height, width = shape
    images = image_batch(shape, dtype, device)
    identity = (
        torch.arange(1, n + 1, device=device, dtype=torch.int32).view(n, 1, 1).expand(n, height, width).contiguous()
    )
    labels = torch.arange(n, device=device) % NUM_CLASSES
    op = TensorContextMix(num_classes=NUM_CLASSES, mode=mode, seed=seed)
    mixed, targets = op(images, labels)
    # masks mixed with the same draws (apply reuses them): they must agree with the image pixels
    _, masks = op.apply(images, identity, op.last_perm, op.last_boxes)
    for name, tensor, dt in (("images", mixed, dtype), ("targets", targets, torch.float32), ("masks", masks, None)):
        if tensor.device.type != device.type:
            raise AssertionError(f"{name} came back on {tensor.device}, not {device}")
        if dt is not None and tensor.dtype != dt:
            raise AssertionError(f"{name} came back as {tensor.dtype}, not {dt}")
    source = (mixed[:, 0] == images[:, 0, :1, :1]).logical_not()  # pixels that are not the host's own value
    partner = op.last_perm.to(device)
    from_partner = mixed[:, 0] == images[partner][:, 0, :1, :1]
    share = from_partner.double().mean(dim=(1, 2))
    changed_self = partner == torch.arange(n, device=device)  # a sample drawn as its own partner
    weights = torch.from_numpy(op.last_weights).to(device=device, dtype=torch.float64)
    share_error = (share - weights[:, 1]).abs()
    share_error[changed_self] = 0.0  # its pixels cannot tell; its weights still sum to 1
    if bool((source & ~from_partner).any()):
        raise AssertionError("pixels that are neither the host's nor its partner's")
    expected = torch.zeros(n, NUM_CLASSES, dtype=torch.float64, device=device)
    expected[torch.arange(n, device=device), labels] += weights[:, 0]
    expected[torch.arange(n, device=device), labels[partner]] += weights[:, 1]
    target_error = (targets.double() - expected).abs().max()
    mask_ok = bool(((masks == partner.view(n, 1, 1) + 1) == from_partner | changed_self.view(n, 1, 1)).all())
    if not mask_ok:
        raise AssertionError("the mixed masks do not match the mixed image pixels")
    error = max(float(share_error.max()), float(target_error))
    if error > TOLERANCE:
        raise AssertionError(f"pixel share vs lambda_B or soft targets off by {error:.3g} (> {TOLERANCE})")
    return error


# ============================================================================================ timing
def plain_cutmix_call(
    images: torch.Tensor, labels: torch.Tensor, mode: str, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole plain CutMix call: Beta(1, 1) box area, random pairing, paste, area-mixed soft targets."""
    n, _, height, width = images.shape
    count = 1 if mode == "batch" else n
    area = torch.rand(count, generator=generator, dtype=torch.float64)
    centre = torch.rand(count, 2, generator=generator, dtype=torch.float64)
    cut_h = (height * torch.sqrt(1 - area)).long()
    cut_w = (width * torch.sqrt(1 - area)).long()
    cy, cx = (centre[:, 0] * height).long(), (centre[:, 1] * width).long()
    y0, y1 = (cy - cut_h // 2).clamp(0, height), (cy + cut_h // 2).clamp(0, height)
    x0, x1 = (cx - cut_w // 2).clamp(0, width), (cx + cut_w // 2).clamp(0, width)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).numpy()
    perm = torch.randperm(n, generator=generator).to(images.device)
    mixed = plain_cutmix(images, perm, boxes[0] if mode == "batch" else boxes, inplace=False)
    kept = 1.0 - ((x1 - x0) * (y1 - y0)).double() / (height * width)
    lam = kept.to(images.device, torch.float32).expand(n)
    one_hot = torch.nn.functional.one_hot(labels, NUM_CLASSES).float()
    return mixed, lam[:, None] * one_hot + (1 - lam[:, None]) * one_hot[perm]


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median ms of each function over interleaved rounds, the device synchronized around every call."""
    for fn in fns.values():  # warm-up (kernels, allocator, buffers)
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def time_config(
    shape: tuple[int, ...], dtype: torch.dtype, mode: str, device: torch.device, repeats: int
) -> dict[str, float]:
    n, _, height, width = shape
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(shape, generator=generator).to(device)
    if dtype == torch.uint8:
        images = (images * 255).to(torch.uint8)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator).to(device)
    ours = TensorContextMix(num_classes=NUM_CLASSES, mode=mode, seed=0)
    plain_generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    count = 1 if mode == "batch" else n
    draws = []
    for _ in range(repeats + 2):
        boxes = draw_boxes(height, width, rng.random((count, 3)))
        draws.append((torch.from_numpy(rng.permutation(n)), boxes[0] if mode == "batch" else boxes))
    pixel_ours, pixel_plain = iter(draws * 2), iter(draws * 2)
    paste_op = TensorContextMix(mode=mode)

    def ours_paste() -> object:
        perm, boxes = next(pixel_ours)
        return paste_op.apply(images, None, perm, np.broadcast_to(boxes, (n, 4)))

    def plain_paste() -> object:
        perm, boxes = next(pixel_plain)
        return plain_cutmix(images, perm.to(device), boxes, inplace=False)

    return interleaved(
        {
            "ours": lambda: ours(images, labels),
            "plain": lambda: plain_cutmix_call(images, labels, mode, plain_generator),
            "ours paste": ours_paste,
            "plain paste": plain_paste,
        },
        repeats,
        device,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--repeats", type=int, default=20, help="timing rounds (20)")
    parser.add_argument("--write", action="store_true", help="write the table into RESULTS.md")
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    print(f"device: {device_name(device)}", flush=True)

    rows = []
    for shape, dtype in CONFIGS:
        for mode in MODES:
            errors = [check_on_device(shape, dtype, mode, device, seed) for seed in range(5)]
            times = time_config(shape, dtype, mode, device, args.repeats)
            rows.append(
                [
                    f"({', '.join(map(str, shape))}) {str(dtype).replace('torch.', '')}",
                    mode,
                    f"passed (max error {max(errors):.1g})",
                    times["ours"],
                    times["plain"],
                    f"{times['ours'] / times['plain']:.2f}x",
                    times["ours paste"],
                    times["plain paste"],
                    f"{times['ours paste'] / times['plain paste']:.2f}x",
                ]
            )
            print(" | ".join(str(v) for v in rows[-1]), flush=True)
    header = [
        "batch",
        "mode",
        "check on the device (5 seeds)",
        "TensorContextMix call ms/batch",
        "plain CutMix call ms/batch",
        "x CutMix",
        "paste only: ours ms",
        "paste only: CutMix ms",
        "x CutMix (paste)",
    ]
    where = device_name(device)
    gpu_note = (
        ""
        if device.type == "cuda"
        else " **Not run on a GPU**: no CUDA device was available to this run (the script runs unchanged on CUDA)."
    )
    body = (
        f"Device: {where}.{gpu_note} 1-minute load average {os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} "
        f"cores). Median of {args.repeats} interleaved rounds, device synchronized around "
        "every call, out of place. 'call' = the whole op on the device: draws, paste, soft targets "
        f"({NUM_CLASSES} classes); 'paste only' = the same boxes and pairing for both. The check: sample-identifying "
        "pixels; pixel share of the partner = lambda_B, soft targets = area-mixed one-hots, masks mixed in the same "
        f"call match the pixels (tolerance {TOLERANCE:g}); outputs on the device, dtype kept.\n\n"
        + markdown_table(header, rows)
    )
    print(body)
    if args.write:
        write_section("bench_gpu", "TensorContextMix on the training device (issue 14, sec. 4)", body)


if __name__ == "__main__":
    main()
