"""Raw pixels as an embedding column (the "RGB space" features of the Gram–Schmidt seed, App. C)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from datasets import Dataset, Features
from PIL import Image

from ._base import Embedder
from .image import load_image, load_images

__all__ = ["PixelEmbedder", "images_to_array"]


def _size_pair(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in pair):
        raise ValueError(f"`size` must be a positive int or (height, width), got {size!r}")
    return int(pair[0]), int(pair[1])


def images_to_array(values, *, column: str, mode: str = "RGB", size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a batch of image cells to one ``(B, H, W, C)`` uint8 array.

    ``size=(height, width)`` resizes each image (PIL bilinear, antialiased); without it all images
    of the batch must share one size (`ValueError` naming the column otherwise).

    Example:
        >>> images_to_array([np.zeros((4, 4), np.uint8)], column="image").shape
        (1, 4, 4, 3)
    """
    images = load_images(values, column=column, mode=mode)
    if size is not None:
        images = [im if im.size == (size[1], size[0]) else im.resize((size[1], size[0]), Image.BILINEAR) for im in images]
    shapes = {im.size for im in images}
    if len(shapes) > 1:
        raise ValueError(f"column {column!r} has images of different sizes {sorted(shapes)} in one batch; pass `size=`")
    if not images:
        return np.zeros((0, 0, 0, 1 if mode == "L" else 3), np.uint8)
    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    return arr[..., None] if arr.ndim == 3 else arr


class PixelEmbedder(Embedder):
    """Raw pixel values in [0, 1], flattened in (H, W, C) order, as an embedding.

    Args:
        image_column: input column (PIL images, bytes, paths or arrays, as in `load_image`).
        output_column: the embedding column to write.
        size: resize to ``size`` (int → square, or ``(height, width)``) with PIL bilinear. Without
            it every image must have the size of the first row.
        mode: ``"RGB"`` (grayscale is repeated to 3 channels) or ``"L"`` (RGB is converted to luma).
        normalize: L2-normalise each vector.
        batch_size: rows decoded per chunk.
        storage_dtype: ``"float32"`` or ``"float16"`` for the embedding columns (`hf_prune.embed.Embedder`).

    Pixels are decoded and resized on the CPU (there is no model, so no ``device``/``dtype``).

    Example:
        >>> ds = hp.embed.PixelEmbedder(image_column="image", size=16).map(ds)
        >>> len(ds[0]["emb"])
        768
    """

    def __init__(
        self,
        *,
        image_column: str = "image",
        output_column: str = "emb",
        size: int | tuple[int, int] | None = None,
        mode: str = "RGB",
        normalize: bool = False,
        batch_size: int = 256,
        storage_dtype: str = "float32",
    ):
        if mode not in ("RGB", "L"):
            raise ValueError(f"`mode` must be 'RGB' or 'L', got {mode!r}")
        self.image_column, self.output_column = image_column, output_column
        self.size = _size_pair(size)
        self.mode = mode
        self.normalize = bool(normalize)
        self._shape: tuple[int, int] | None = self.size
        super().__init__(input_columns=[image_column], device="cpu", batch_size=batch_size,
                         storage_dtype=storage_dtype)

    def _learn_shape(self, first_cell) -> None:
        if self._shape is None:
            width, height = load_image(first_cell, column=self.image_column, position=0, mode=self.mode).size
            self._shape = (height, width)

    @property
    def dim(self) -> int:
        if self._shape is None:
            raise ValueError("PixelEmbedder(size=None) learns its width from the data: call .map(ds) or .features_for(ds)")
        return self._shape[0] * self._shape[1] * (1 if self.mode == "L" else 3)

    def features_for(self, dataset: Dataset) -> Features:
        if self._shape is None and len(dataset) and self.image_column in dataset.column_names:
            self._learn_shape(dataset[0][self.image_column])
        return super().features_for(dataset)

    def map(self, dataset: Dataset, **kwargs) -> Dataset:
        if self._shape is None and len(dataset) and self.image_column in dataset.column_names:
            self._learn_shape(dataset[0][self.image_column])
        return super().map(dataset, **kwargs)

    def __call__(self, batch, rank=None):
        if self._shape is None and self.image_column in batch and len(batch[self.image_column]):
            self._learn_shape(batch[self.image_column][0])
        return super().__call__(batch, rank)

    @property
    def output_columns(self) -> list[str]:
        return [self.output_column]  # known before the width is learned

    def _output_dims(self) -> dict[str, int | None]:
        return {self.output_column: self.dim}

    def _hashed_outputs(self) -> dict[str, Any]:
        # Without `size` the width is learned from the data, which the dataset fingerprint covers; the
        # hash must not depend on whether it was learned yet (`ds.map(emb, batched=True)` hashes first).
        return {self.output_column: self.dim if self.size is not None else "from the data"}

    def _spec(self) -> dict[str, Any]:
        # The learned shape is a function of the data, which the dataset fingerprint already covers.
        return {"size": self.size, "mode": self.mode, "normalize": self.normalize}

    def _embed(self, batch: Mapping[str, Any], device: torch.device) -> dict[str, np.ndarray]:
        arr = images_to_array(batch[self.image_column], column=self.image_column, mode=self.mode, size=self.size)
        if arr.shape[1:3] != self._shape:
            raise ValueError(
                f"column {self.image_column!r} has {arr.shape[2]}x{arr.shape[1]} images but the first row is "
                f"{self._shape[1]}x{self._shape[0]}; pass `size=` to resize"
            )
        flat = arr.reshape(len(arr), -1).astype(np.float32) / 255.0
        if self.normalize:
            flat /= np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
        return {self.output_column: flat}
