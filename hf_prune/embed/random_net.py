"""Features of a randomly initialised network (the Gram–Schmidt seed, Fig. 4a).

The seed reports feature-norm and Gram–Schmidt selection with "features induced by randomly
initialized neural networks" on CIFAR-10 without naming the architecture. Its other CIFAR features
are the 512-d penultimate layer of a ResNet-18 (the SimCLR implementation it builds on uses the
CIFAR ResNet-18), so the default here is that network, untrained: a 3×3 stride-1 stem (64
channels, no max-pool), four stages of two basic blocks (64/128/256/512 channels, strides
1/2/2/2), batch norm in eval mode, global average pooling → 512 features. Weights use PyTorch's
default initialisation drawn under ``torch.manual_seed(seed)`` (inside a forked RNG, so the
caller's global RNG is untouched). Any transformers config (``ResNetConfig``, ``ViTConfig``, ...)
can be used instead through ``config=``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..ops.checks import seed_int
from ._base import Embedder
from .cifar_resnet import cifar_resnet
from .image import pool_outputs
from .pixels import _size_pair, images_to_array

__all__ = ["RandomNetEmbedder"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _model_from_config(config) -> nn.Module:
    """``AutoModel.from_config``, without its slow first lookup when the class follows the naming rule."""
    module, name = type(config).__module__, type(config).__name__
    if module.startswith("transformers.models.") and ".configuration_" in module and name.endswith("Config"):
        try:
            modeling = importlib.import_module(module.replace(".configuration_", ".modeling_"))
        except ImportError:
            modeling = None
        cls = getattr(modeling, name[: -len("Config")] + "Model", None)
        if cls is not None and getattr(cls, "config_class", None) is type(config):
            return cls._from_config(config)
    from transformers import AutoModel

    return AutoModel.from_config(config)


class RandomNetEmbedder(Embedder):
    """Embed images with a randomly initialised network built from ``seed``.

    Args:
        seed: the initialisation seed, an integer ≥ 0 or a NumPy Generator (one draw from it gives the
            integer, which the fingerprint holds); same seed → same weights → same column.
        config: a transformers config to build with ``AutoModel.from_config`` instead of the default
            CIFAR ResNet-18 (see the module docstring); its outputs are pooled with ``pooling``.
        image_size: resize to this size (int or ``(height, width)``, PIL bilinear) before the network;
            ``None`` keeps the input size, or uses ``config.image_size`` when the config has one.
        image_column, output_column: input and output columns.
        image_mean, image_std: per-channel normalisation after scaling pixels to [0, 1].
        pooling: for ``config=`` models, as in `pool_outputs`.
        normalize: L2-normalise each embedding.
        device, dtype, batch_size, storage_dtype: see `Embedder`.

    Example:
        >>> ds = hp.embed.RandomNetEmbedder(seed=0, image_column="img").map(ds)  # 512-d features
        >>> sub = hp.select.norm_sampling(ds, size=100, embedding_column="emb", p=2)
    """

    def __init__(
        self,
        *,
        seed: int | np.random.Generator = 0,
        config=None,
        image_size: int | tuple[int, int] | None = None,
        image_column: str = "image",
        output_column: str = "emb",
        image_mean: tuple[float, ...] = IMAGENET_MEAN,
        image_std: tuple[float, ...] = IMAGENET_STD,
        pooling: str = "auto",
        normalize: bool = False,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        batch_size: int = 128,
        storage_dtype: str = "float32",
    ):
        seed = seed_int(seed)
        if image_size is None and config is not None and isinstance(getattr(config, "image_size", None), int):
            image_size = config.image_size
        self.image_size = _size_pair(image_size)
        channels = getattr(config, "num_channels", 3) if config is not None else 3
        if channels not in (1, 3):
            raise ValueError(f"the network must take 1 or 3 input channels, got {channels}")
        self.mode = "L" if channels == 1 else "RGB"
        mean, std = np.asarray(image_mean, np.float32), np.asarray(image_std, np.float32)
        if channels == 1:
            mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
        if mean.shape != (channels,) or std.shape != (channels,) or (std <= 0).any():
            raise ValueError(f"`image_mean`/`image_std` need {channels} values (std > 0)")
        self.image_mean, self.image_std = mean, std
        self.seed, self.config, self.pooling = int(seed), config, pooling
        self.image_column, self.output_column = image_column, output_column
        self.normalize = bool(normalize)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            if config is None:
                self.model = cifar_resnet("resnet18", num_classes=None, in_channels=channels)
            else:
                self.model = _model_from_config(config)
        self.model.eval()
        super().__init__(input_columns=[image_column], device=device, dtype=dtype, batch_size=batch_size,
                         storage_dtype=storage_dtype)
        if config is None:
            self.dim = self.model.out_features
        else:
            probe = self.image_size or (32, 32)
            with torch.inference_mode():
                self.dim = int(self._forward(torch.zeros(1, channels, *probe)).shape[1])

    def _forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.config is None:
            out = self.model(pixel_values)
        else:
            out = pool_outputs(self.model(pixel_values=pixel_values), self.pooling, config=self.config,
                               pixel_values=pixel_values, model_name=type(self.model).__name__)
        out = out.float()
        return torch.nn.functional.normalize(out, dim=1) if self.normalize else out

    def _output_dims(self) -> dict[str, int | None]:
        return {self.output_column: self.dim}

    def _modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def _spec(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "image_size": self.image_size,
            "mean": self.image_mean.tolist(),
            "std": self.image_std.tolist(),
            "pooling": self.pooling,
            "normalize": self.normalize,
        }

    def _embed(self, batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        arr = images_to_array(batch[self.image_column], column=self.image_column, mode=self.mode, size=self.image_size)
        x = torch.from_numpy(arr).to(device).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.as_tensor(self.image_mean, device=device).view(1, -1, 1, 1)
        std = torch.as_tensor(self.image_std, device=device).view(1, -1, 1, 1)
        return {self.output_column: self._forward((x - mean) / std)}
