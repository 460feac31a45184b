"""CIFAR-style ResNets (3×3 stride-1 stem, no max-pool), shared by `RandomNetEmbedder` and the
recipes' models (``recipes.trainer.models``).

The layout is the common CIFAR ResNet of the pruning literature (the DUAL, CCS and D² experiments,
and the SimCLR CIFAR code the Gram–Schmidt seed builds on): four stages of 64/128/256/512 channels
with strides 1/2/2/2, global average pooling, then a linear head unless ``num_classes=None``, in
which case ``forward`` returns the pooled features.

Example:
    >>> cifar_resnet("resnet18", num_classes=None)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 512])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock", "Bottleneck", "CifarResNet", "RESNETS", "cifar_resnet"]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes * 4:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images; ``num_classes=None`` drops the head and returns the pooled features."""

    def __init__(self, block, num_blocks: list[int], num_classes: int | None, in_channels: int = 3):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages = []
        for planes, blocks, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)):
            layers = []
            for s in [stride] + [1] * (blocks - 1):
                layers.append(block(self.in_planes, planes, s))
                self.in_planes = planes * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.out_features = 512 * block.expansion
        self.linear = nn.Linear(self.out_features, num_classes) if num_classes is not None else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x):
        features = self.features(x)
        return features if self.linear is None else self.linear(features)


RESNETS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]), "resnet50": (Bottleneck, [3, 4, 6, 3])}


def cifar_resnet(name: str = "resnet18", *, num_classes: int | None = None, in_channels: int = 3) -> CifarResNet:
    """``resnet18`` / ``resnet34`` / ``resnet50`` in the CIFAR layout."""
    if name not in RESNETS:
        raise ValueError(f"unknown CIFAR ResNet {name!r}; choose from {sorted(RESNETS)}")
    block, blocks = RESNETS[name]
    return CifarResNet(block, blocks, num_classes, in_channels)
