"""CLIP-style image embeddings, text embeddings and their CLIP score, in one pass over pairs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..ops.deprecation import renamed
from ..score.clip_score import pair_cosine
from ._base import Embedder
from .image import load_images
from .text import _TOKENS, _pad_rows, _text_values, _token_lengths, _tokenize_rows

__all__ = ["CLIPEmbedder"]


def _features(value: Any) -> torch.Tensor:
    # transformers 4.x returns the projected tensor; 5.x returns an output whose pooler_output is it.
    if isinstance(value, torch.Tensor):
        return value
    pooled = getattr(value, "pooler_output", None)
    if pooled is None:
        raise ValueError(f"cannot find the projected features in a {type(value).__name__}")
    return pooled


class CLIPEmbedder(Embedder):
    """Image embedding, text embedding and CLIP score of each image–text pair.

    Works with any model exposing ``get_image_features(pixel_values=...)`` and
    ``get_text_features(input_ids=..., attention_mask=...)`` (CLIP, SigLIP, ...). The CLIP score is
    the cosine similarity of the pair's two embeddings, as used for CLIP-score filtering (DataComp);
    Hessel et al.'s CLIPScore is ``2.5 * max(score, 0)`` of the same number. It is computed by the
    function behind `hf_prune.score.clip_score` (`hf_prune.score.clip_score.pair_cosine`) on the two
    float32 embeddings as they are stored, so ``hp.score.clip_score`` over the stored columns gives
    the identical column; like it, a zero embedding raises `ValueError` (its cosine is undefined).

    The captions of each ``map`` batch are tokenised once, and the pairs are embedded in chunks of
    similar caption length (sorted by token count; images travel with their captions), each padded
    to its own longest caption; the columns are in the input order and equal unsorted batching to
    float rounding (1e-6). A ``map`` batch of one chunk (the default) leaves nothing to sort: pass a
    larger ``map`` ``batch_size`` when the text tower's cost matters.

    Args:
        model: a Hub id / local path (``AutoModel`` + ``AutoProcessor``) or a model instance.
        processor: a processor holding ``image_processor`` and ``tokenizer`` (e.g. ``CLIPProcessor``).
        image_processor, tokenizer: give these instead of ``processor``.
        image_column, text_column: the input columns (images as in `load_image`; strings).
        image_output_column, text_output_column, score_output_column: the three output columns.
        normalize: L2-normalise the stored embeddings (the score is a cosine either way).
        max_length: token limit (default: the text model's ``max_position_embeddings``).
        tokenizer_kwargs: extra tokenizer arguments (e.g. ``{"padding": "max_length"}`` for SigLIP).
        revision, device, dtype, batch_size, storage_dtype: as in `ImageEmbedder`.
        score_column: deprecated spelling of ``score_output_column`` (hf_prune 0.1.0; ``score_column``
            names an input everywhere else), accepted with a `FutureWarning`.

    Example:
        >>> clip = hp.embed.CLIPEmbedder("openai/clip-vit-base-patch32", image_column="image", text_column="caption")
        >>> ds = clip.map(ds, batch_size=256)  # adds image_emb, text_emb, clip_score
    """

    def __init__(
        self,
        model: str | torch.nn.Module,
        *,
        processor=None,
        image_processor=None,
        tokenizer=None,
        image_column: str = "image",
        text_column: str = "text",
        image_output_column: str = "image_emb",
        text_output_column: str = "text_emb",
        score_output_column: str = "clip_score",
        normalize: bool = True,
        max_length: int | None = None,
        tokenizer_kwargs: dict | None = None,
        revision: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        batch_size: int = 64,
        model_kwargs: dict | None = None,
        score_column: str | None = None,
        storage_dtype: str = "float32",
    ):
        score_output_column = renamed("CLIPEmbedder", "score_column", score_column, "score_output_column",
                                      score_output_column, default="clip_score")
        if isinstance(model, str):
            from transformers import AutoModel, AutoProcessor

            name = model
            model = AutoModel.from_pretrained(name, revision=revision, **(model_kwargs or {}))
            if processor is None and (image_processor is None or tokenizer is None):
                processor = AutoProcessor.from_pretrained(name, revision=revision)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"`model` must be a name or a torch.nn.Module, got {type(model).__name__}")
        for method in ("get_image_features", "get_text_features"):
            if not callable(getattr(model, method, None)):
                raise ValueError(f"{type(model).__name__} has no `{method}`; CLIPEmbedder needs a CLIP-style model")
        self.image_processor = image_processor or getattr(processor, "image_processor", None)
        self.tokenizer = tokenizer or getattr(processor, "tokenizer", None)
        if self.image_processor is None or self.tokenizer is None:
            raise ValueError("pass `processor=` (with image_processor and tokenizer) or both `image_processor=` and `tokenizer=`")
        names = [image_output_column, text_output_column, score_output_column]
        if len(set(names)) != 3:
            raise ValueError(f"the output columns must be distinct, got {names}")
        self.model = model.eval()
        self.image_column, self.text_column = image_column, text_column
        self.image_output_column, self.text_output_column, self.score_output_column = names
        self.normalize = bool(normalize)
        self.revision = revision
        if max_length is None:
            text_config = getattr(getattr(model, "config", None), "text_config", None)
            max_length = getattr(text_config, "max_position_embeddings", None)
        self.max_length = max_length
        self.tokenizer_kwargs = dict(tokenizer_kwargs or {})
        super().__init__(input_columns=[image_column, text_column], device=device, dtype=dtype, batch_size=batch_size,
                         storage_dtype=storage_dtype)
        self.dim_image, self.dim_text = self._probe_dims()

    def _probe_dims(self) -> tuple[int, int]:
        config = getattr(getattr(self.model, "config", None), "vision_config", None)
        size = getattr(config, "image_size", 224)
        size = size if isinstance(size, int) else int(tuple(size)[0])
        blank = Image.new("RGB", (size, size), (128, 128, 128))
        image, text = self._probe(lambda device: self._forward([blank], ["a"], device), "embed an image–text pair")
        return int(image.shape[1]), int(text.shape[1])

    def _tokenize(self, texts: list[str]) -> list[dict[str, list[int]]]:
        kwargs = {"padding": True, "truncation": True, "max_length": self.max_length, **self.tokenizer_kwargs}
        return _tokenize_rows(self.tokenizer, texts, **kwargs)

    def _forward(self, images, texts, device):
        return self._forward_tokens(images, self._tokenize(texts), device)

    def _forward_tokens(self, images, rows, device):
        pixel_values = self.image_processor(images=images, return_tensors="pt")["pixel_values"].to(device)
        tokens = _pad_rows(self.tokenizer, rows)
        text_inputs = {k: tokens[k].to(device) for k in ("input_ids", "attention_mask") if k in tokens}
        image = _features(self.model.get_image_features(pixel_values=pixel_values)).float()
        text = _features(self.model.get_text_features(**text_inputs)).float()
        return image, text

    def _output_dims(self) -> dict[str, int | None]:
        return {self.image_output_column: self.dim_image, self.text_output_column: self.dim_text, self.score_output_column: None}

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def _spec(self) -> dict[str, Any]:
        from datasets.fingerprint import Hasher

        to_dict = getattr(self.image_processor, "to_dict", None)
        return {
            "normalize": self.normalize,
            "max_length": self.max_length,
            "tokenizer_kwargs": self.tokenizer_kwargs,
            "revision": self.revision,
            "image_processor": to_dict() if callable(to_dict) else repr(self.image_processor),
            # `datasets` hashes tokenizers by their content (vocabulary, settings).
            "tokenizer": Hasher.hash(self.tokenizer),
        }

    def _prepare(self, batch: Mapping[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
        # The text is tokenised once per map batch; pairs are embedded in chunks of similar token
        # counts (`hf_prune.embed.text`), images travelling with their texts.
        rows = self._tokenize(_text_values(batch[self.text_column], self.text_column))
        return {**batch, _TOKENS: rows}, _token_lengths(rows)

    def _embed(self, batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        images = load_images(batch[self.image_column], column=self.image_column, mode="RGB")
        rows = batch[_TOKENS] if _TOKENS in batch else self._tokenize(_text_values(batch[self.text_column],
                                                                                   self.text_column))
        image, text = self._forward_tokens(images, rows, device)
        if image.shape[1] != text.shape[1]:
            raise ValueError(f"image ({image.shape[1]}) and text ({text.shape[1]}) embeddings differ in width")
        if self.normalize:
            image, text = torch.nn.functional.normalize(image, dim=1), torch.nn.functional.normalize(text, dim=1)
        # The stored float32 values, so the score is exactly hp.score.clip_score of the stored columns.
        image_out = np.asarray(image.detach().float().cpu().numpy(), dtype=np.float32)
        text_out = np.asarray(text.detach().float().cpu().numpy(), dtype=np.float32)
        return {
            self.image_output_column: image_out,
            self.text_output_column: text_out,
            self.score_output_column: pair_cosine(image_out, text_out, image_column=self.image_output_column,
                                                  text_column=self.text_output_column),
        }
