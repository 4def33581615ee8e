"""The networks of the efficacy benchmark: one per task and scale, the same for every arm.

- ``UNet``: a plain U-Net (two 3x3 conv + BN + ReLU per level, max-pool down, transposed conv up),
  ``depth`` levels from ``width`` channels; the CPU segmentation model.
- ``LightResNetUNet``: the DLI paper's "light" encoder idea (a ResNet-18 with its last two stages
  removed, ~0.7M encoder parameters: the paper's l-ResNet18) under a U-Net decoder; the GPU
  segmentation model. segmentation_models_pytorch is not used: it needs timm and torchvision,
  whose wheels do not install beside torch 2.13 here, and its encoders would download weights.
  Trained from scratch (no machine here can download ImageNet weights).
- ``SmallCNN`` (CPU) / ``ResNetClassifier`` (GPU): classifiers with a ``features`` embedding (for
  the anomaly task's Gaussian density) and a linear ``classifier``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


def double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(*conv_bn_relu(c_in, c_out), *conv_bn_relu(c_out, c_out))


class UNet(nn.Module):
    """U-Net with ``depth`` resolution levels (``depth - 1`` poolings); channels ``width * 2**level``."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, depth: int = 4) -> None:
        super().__init__()
        channels = [width * 2**level for level in range(depth)]
        self.down = nn.ModuleList()
        c_in = in_channels
        for c in channels:
            self.down.append(double_conv(c_in, c))
            c_in = c
        self.up = nn.ModuleList(nn.ConvTranspose2d(c, c // 2, 2, stride=2) for c in reversed(channels[1:]))
        self.merge = nn.ModuleList(double_conv(c, c // 2) for c in reversed(channels[1:]))
        self.head = nn.Conv2d(channels[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1]), strict=True):
            x = merge(torch.cat([up(x), skip], 1))
        return self.head(x)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs, identity or 1x1 projection shortcut)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn_relu(c_in, c_out, stride),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def resnet_stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out))


class LightResNetUNet(nn.Module):
    """U-Net on a ResNet-18 encoder without its last two stages (the DLI paper's l-ResNet18).

    Encoder: stem (7x7/2 conv, 3x3/2 max-pool) -> stage 1 (64 ch, /4) -> stage 2 (128 ch, /8).
    Decoder: upsample x2, concatenate the skip, two 3x3 convs, back to full resolution.
    """

    def __init__(self, in_channels: int, num_classes: int, decoder: tuple[int, ...] = (64, 32, 16)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64))
        self.stage1 = resnet_stage(64, 64, 1)
        self.stage2 = resnet_stage(64, 128, 2)
        # decoder: /8 -> /4 (+stage1), /4 -> /2 (+stem), /2 -> /1 (+input)
        d1, d2, d3 = decoder
        self.dec1 = double_conv(128 + 64, d1)
        self.dec2 = double_conv(d1 + 64, d2)
        self.dec3 = double_conv(d2 + in_channels, d3)
        self.head = nn.Conv2d(d3, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = F.relu(self.stem(x))  # /2
        s1 = self.stage1(F.max_pool2d(s0, 3, stride=2, padding=1))  # /4
        s2 = self.stage2(s1)  # /8
        y = self.dec1(torch.cat([F.interpolate(s2, size=s1.shape[-2:], mode="bilinear"), s1], 1))
        y = self.dec2(torch.cat([F.interpolate(y, size=s0.shape[-2:], mode="bilinear"), s0], 1))
        y = self.dec3(torch.cat([F.interpolate(y, size=x.shape[-2:], mode="bilinear"), x], 1))
        return self.head(y)


class SmallCNN(nn.Module):
    """Four conv + BN + ReLU + max-pool blocks, a global average pool (``features``), a linear classifier."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c in (width, 2 * width, 4 * width, 8 * width):
            layers += [*conv_bn_relu(c_in, c), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ResNetClassifier(nn.Module):
    """ResNet-18 layout (four stages of two basic blocks), from scratch; ``features`` = pooled stage 4."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 64) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
            resnet_stage(w, w, 1),
            resnet_stage(w, 2 * w, 2),
            resnet_stage(2 * w, 4 * w, 2),
            resnet_stage(4 * w, 8 * w, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build(name: str, in_channels: int, num_classes: int, **options: int) -> nn.Module:
    """A model by name (the name and options are part of a run's configuration)."""
    models = {
        "unet": UNet,
        "light_resnet_unet": LightResNetUNet,
        "small_cnn": SmallCNN,
        "resnet": ResNetClassifier,
    }
    if name not in models:
        raise ValueError(f"unknown model {name!r}; one of {sorted(models)}")
    return models[name](in_channels, num_classes, **options)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
