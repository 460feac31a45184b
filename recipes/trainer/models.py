"""Models for the recipes: a small CNN, a transformers image classifier fed uint8 tensors, the CIFAR
ResNets (`hf_prune.embed.cifar_resnet`, the same network `RandomNetEmbedder` uses), and the wrapper
that keeps input normalisation inside the model.

Example:
    >>> backbone = build_model("resnet18", num_classes=10, in_channels=3)
    >>> model = ImageClassifier(backbone, mean=[0.5] * 3, std=[0.25] * 3)
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from hf_prune.embed.cifar_resnet import RESNETS, CifarResNet, cifar_resnet

__all__ = ["SmallCNN", "HFImageModel", "ImageClassifier", "build_model", "CifarResNet", "RESNETS", "cifar_resnet"]


class SmallCNN(nn.Module):
    """Three conv–BN–ReLU–max-pool blocks (32, 64, 128 channels), global average pooling, linear head."""

    def __init__(self, num_classes: int, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        layers, channels = [], in_channels
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class HFImageModel(nn.Module):
    """A transformers image classifier fed our tensors: channels repeated and images resized as it expects."""

    def __init__(self, model: nn.Module, in_channels: int):
        super().__init__()
        self.model = model
        config = model.config
        self.channels = int(getattr(config, "num_channels", in_channels))
        size = getattr(config, "image_size", None)
        if isinstance(size, dict):
            size = size.get("height") or size.get("shortest_edge")
        self.size = (size, size) if isinstance(size, int) else tuple(size) if size else None
        if self.channels not in (in_channels, 3) or (self.channels == 3 and in_channels not in (1, 3)):
            raise ValueError(f"the model expects {self.channels} channels; the images have {in_channels}")

    def forward(self, x):
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return self.model(pixel_values=x).logits


class ImageClassifier(nn.Module):
    """uint8 ``(B, C, H, W)`` → normalised float → backbone logits (normalisation lives in the model)."""

    def __init__(self, backbone: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixels):
        x = pixels.float() / 255.0
        return self.backbone((x - self.mean) / self.std)


def build_model(name: str, num_classes: int, in_channels: int, *, pretrained: bool = True) -> nn.Module:
    """The backbone for ``name``, before normalisation: ``small_cnn``, ``resnet18``/``resnet34``/``resnet50``
    (CIFAR layout), or a transformers image-classification model id or path (``pretrained=False``: its
    config only, randomly initialised).

    Example:
        >>> build_model("small_cnn", num_classes=10, in_channels=1)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    if name == "small_cnn":
        return SmallCNN(num_classes, in_channels)
    if name in RESNETS:
        return cifar_resnet(name, num_classes=num_classes, in_channels=in_channels)
    from transformers import AutoConfig, AutoModelForImageClassification

    labels = {"num_labels": num_classes}
    if pretrained:
        model = AutoModelForImageClassification.from_pretrained(name, ignore_mismatched_sizes=True, **labels)
    else:
        model = AutoModelForImageClassification.from_config(AutoConfig.from_pretrained(name, **labels))
    return HFImageModel(model, in_channels)
