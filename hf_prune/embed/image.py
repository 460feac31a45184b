"""Image embeddings from any transformers vision backbone (DINO, DINOv2, ViT, ResNet, ConvNeXt, ...)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image

from ._base import Embedder

__all__ = ["ImageEmbedder", "load_image", "load_images", "pool_outputs"]

_POOLINGS = ("auto", "cls", "mean", "pooler")


def load_image(value: Any, *, column: str, position: int, mode: str | None = "RGB") -> Image.Image:
    """Decode one image cell into a PIL image in ``mode`` (``None`` keeps the decoded mode).

    Accepts PIL images, encoded bytes, ``{"bytes": ..., "path": ...}`` dicts (an undecoded
    ``Image()`` column), file paths, and arrays/nested lists shaped ``(H, W)``, ``(H, W, C)`` or
    ``(C, H, W)`` with C in {1, 3, 4}. Integer arrays are read as 0–255, float arrays as 0–1
    (torchvision's convention). Grayscale converts to RGB by repeating the channel. A cell that
    cannot be read raises `ValueError` naming the column and its position in the batch.

    Example:
        >>> load_image(np.zeros((8, 8), np.uint8), column="image", position=0).size
        (8, 8)
    """
    where = f"column {column!r}, row {position} of the batch"
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, Mapping) and ("bytes" in value or "path" in value):
            source = value.get("bytes") or value.get("path")
            if source is None:
                raise ValueError("the cell has neither bytes nor a path")
            image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            image = Image.open(io.BytesIO(bytes(value)))
        elif isinstance(value, str):
            image = Image.open(value)
        elif value is None:
            raise ValueError("the cell is empty (None)")
        else:
            image = _array_to_image(value)
        image.load()  # decode now so a truncated file fails here, with its row named
    except Exception as err:
        raise ValueError(f"cannot read the image in {where}: {err}") from err
    if mode is not None and image.mode != mode:
        if image.mode in ("I", "I;16", "I;16B", "F"):
            # 16/32-bit grayscale: rescale to 8 bits before converting (PIL would clip).
            arr = np.asarray(image, dtype=np.float64)
            span = arr.max() - arr.min()
            arr = (arr - arr.min()) / (span if span > 0 else 1.0) * 255.0
            image = Image.fromarray(arr.round().astype(np.uint8), mode="L")
        image = image.convert(mode)
    return image


def _array_to_image(value: Any) -> Image.Image:
    arr = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"expected a numeric array, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"expected an (H, W), (H, W, C) or (C, H, W) array, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError("the array has NaN/inf values")
        arr = arr * 255.0
    arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def load_images(values, *, column: str, mode: str | None = "RGB") -> list[Image.Image]:
    """`load_image` over one batch of cells.

    Example:
        >>> [im.mode for im in load_images([np.zeros((4, 4), np.uint8)], column="image")]
        ['RGB']
    """
    return [load_image(v, column=column, position=i, mode=mode) for i, v in enumerate(values)]


def _patch_tokens(config, pixel_values: torch.Tensor) -> int | None:
    patch = getattr(config, "patch_size", None)
    if patch is None:
        return None
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)[:2]
    return (pixel_values.shape[-2] // ph) * (pixel_values.shape[-1] // pw)


def pool_outputs(outputs: Any, pooling: str, *, config=None, pixel_values: torch.Tensor | None = None,
                 model_name: str = "the model") -> torch.Tensor:
    """Pool a vision backbone's outputs to one ``(B, D)`` vector per image.

    - ``"cls"``: the first token of ``last_hidden_state`` (``(B, T, D)`` outputs only).
    - ``"mean"``: the mean of the patch tokens: the last ``(H // p) * (W // p)`` tokens for a patch
      size ``p`` in the config (so CLS, distillation and register tokens are left out); all tokens
      when the config has no patch size or the count does not fit (e.g. Swin's merged patches);
      the spatial mean of a ``(B, C, H, W)`` feature map (CNNs).
    - ``"pooler"``: ``pooler_output``, flattened (e.g. ResNet's ``(B, C, 1, 1)``).
    - ``"auto"``: ``"cls"`` for token outputs that carry extra tokens before the patches (ViT, DINO,
      DINOv2), otherwise ``"mean"`` (CNN feature maps, Swin-style token grids).

    A model that lacks the output a pooling needs raises `ValueError` naming the model.

    Example:
        >>> out = model(pixel_values=pixel_values)
        >>> pool_outputs(out, "mean", config=model.config, pixel_values=pixel_values).shape
        torch.Size([8, 384])
    """
    if pooling == "pooler":
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is None:
            raise ValueError(f"{model_name} returns no `pooler_output`; use pooling='cls' or 'mean'")
        return pooled.flatten(1)
    hidden = getattr(outputs, "last_hidden_state", None)
    if hidden is None:
        raise ValueError(
            f"{model_name} returns no `last_hidden_state` for `pixel_values`; pass a vision backbone "
            "(for a CLIP-style model use CLIPEmbedder, or pass `model.vision_model`)"
        )
    if hidden.ndim == 4:
        if pooling == "cls":
            raise ValueError(f"{model_name} returns a (B, C, H, W) feature map with no CLS token; use pooling='mean'")
        return hidden.mean(dim=(2, 3))
    if hidden.ndim != 3:
        raise ValueError(f"{model_name} returns a last_hidden_state of shape {tuple(hidden.shape)}; expected 3 or 4 dims")
    n_patches = _patch_tokens(config, pixel_values) if pixel_values is not None else None
    fits = n_patches is not None and 0 < n_patches <= hidden.shape[1]
    if pooling == "auto":
        pooling = "cls" if fits and n_patches < hidden.shape[1] else "mean"
    if pooling == "cls":
        return hidden[:, 0]
    return hidden[:, -n_patches:].mean(1) if fits else hidden.mean(1)


class ImageEmbedder(Embedder):
    """Embed an image column with a transformers vision backbone.

    Args:
        model: a Hub id / local path (loaded with ``AutoModel.from_pretrained``) or a model instance.
            A model with a task head (e.g. ``ViTForImageClassification``) is used through its
            ``base_model``.
        processor: the image processor; loaded with ``AutoImageProcessor`` when ``model`` is a name.
        image_column: input column of PIL images, encoded bytes, paths or arrays (see `load_image`).
        output_column: the embedding column to write.
        pooling: ``"auto"``, ``"cls"``, ``"mean"`` (patch tokens) or ``"pooler"``; see `pool_outputs`.
        normalize: L2-normalise each embedding.
        revision: Hub revision when ``model`` is a name (it enters the fingerprint).
        device, dtype, batch_size, storage_dtype: see `Embedder`.
        model_kwargs: extra ``from_pretrained`` arguments.

    Images are converted to the channel count the model expects (``config.num_channels``: RGB for
    3, grayscale for 1), so grayscale and RGBA inputs work with RGB backbones.

    Example:
        >>> emb = hp.embed.ImageEmbedder("facebook/dinov2-small", image_column="image", output_column="emb")
        >>> ds = ds.map(emb, batched=True, batch_size=256, features=emb.features_for(ds))
    """

    def __init__(
        self,
        model: str | torch.nn.Module,
        *,
        processor=None,
        image_column: str = "image",
        output_column: str = "emb",
        pooling: str = "auto",
        normalize: bool = False,
        revision: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        batch_size: int = 64,
        model_kwargs: dict | None = None,
        storage_dtype: str = "float32",
    ):
        if pooling not in _POOLINGS:
            raise ValueError(f"`pooling` must be one of {_POOLINGS}, got {pooling!r}")
        if isinstance(model, str):
            from transformers import AutoImageProcessor, AutoModel

            name = model
            model = AutoModel.from_pretrained(name, revision=revision, **(model_kwargs or {}))
            if processor is None:
                processor = AutoImageProcessor.from_pretrained(name, revision=revision)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"`model` must be a name or a torch.nn.Module, got {type(model).__name__}")
        base = getattr(model, "base_model", model)
        self.model = (base if isinstance(base, torch.nn.Module) else model).eval()
        if processor is None:
            raise ValueError(
                f"pass `processor=` (the image processor of {type(model).__name__}), e.g. "
                "AutoImageProcessor.from_pretrained(name)"
            )
        self.processor = processor
        self.image_column = image_column
        self.output_column = output_column
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.revision = revision
        channels = getattr(getattr(self.model, "config", None), "num_channels", 3)
        self.mode = "L" if channels == 1 else "RGB"
        super().__init__(input_columns=[image_column], device=device, dtype=dtype, batch_size=batch_size,
                         storage_dtype=storage_dtype)
        self.dim = self._probe_dim()

    def _probe_dim(self) -> int:
        """Run one blank image through processor and model: checks the outputs, finds the width."""
        size = getattr(getattr(self.model, "config", None), "image_size", 224)
        size = size if isinstance(size, int) else int(tuple(size)[0])
        blank = Image.new(self.mode, (size, size), color=128 if self.mode == "L" else (128, 128, 128))
        return int(self._probe(lambda device: self._forward([blank], device),
                               "embed an image given as `pixel_values`",
                               " (pass a vision backbone and its image processor)").shape[1])

    def _forward(self, images: list[Image.Image], device: torch.device) -> torch.Tensor:
        pixel_values = self.processor(images=images, return_tensors="pt")["pixel_values"].to(device)
        outputs = self.model(pixel_values=pixel_values)
        pooled = pool_outputs(outputs, self.pooling, config=getattr(self.model, "config", None),
                              pixel_values=pixel_values, model_name=type(self.model).__name__).float()
        return torch.nn.functional.normalize(pooled, dim=1) if self.normalize else pooled

    def _output_dims(self) -> dict[str, int | None]:
        return {self.output_column: self.dim}

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def _spec(self) -> dict[str, Any]:
        to_dict = getattr(self.processor, "to_dict", None)
        return {
            "pooling": self.pooling,
            "normalize": self.normalize,
            "mode": self.mode,
            "revision": self.revision,
            "processor": to_dict() if callable(to_dict) else repr(self.processor),
        }

    def _embed(self, batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        images = load_images(batch[self.image_column], column=self.image_column, mode=self.mode)
        return {self.output_column: self._forward(images, device)}
