"""Sentence embeddings: attention-masked mean of a transformers encoder's token states.

Also the text-side batching shared with `CLIPEmbedder`'s text tower: a ``map`` batch is tokenised
once, unpadded; its rows are embedded in chunks of similar token counts (`hf_prune.embed.Embedder`
sorts them, longest first, and restores the input order), each chunk padded to its own longest row.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ._base import Embedder

__all__ = ["TextEmbedder"]

# The batch entry holding each row's token ids etc. (a private name, never a column).
_TOKENS = "_tokens"
# The tokenizer outputs a model is given; each is padded with its own value.
_TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")
# The default map batch: many forward chunks, so the length sort has rows to group.
TEXT_MAP_ROWS = 1000


def _text_values(values, column: str) -> list[str]:
    texts = list(values)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"column {column!r}, row {i} of the batch: expected a string, got {type(text).__name__}")
    return texts


def _tokenize_rows(tokenizer, texts: list[str], **kwargs) -> list[dict[str, list[int]]]:
    """Each text's unpadded tokenizer outputs (``input_ids``, and ``attention_mask``/``token_type_ids``
    when the tokenizer gives them), one dict per row. ``padding=True``/``"longest"`` in ``kwargs`` is
    dropped (rows are padded per chunk); ``"max_length"`` is kept (then every row has that length)."""
    if kwargs.get("padding") in (True, "longest"):
        kwargs = {**kwargs, "padding": False}
    encoded = tokenizer(texts, **kwargs)
    keys = [k for k in _TOKEN_KEYS if k in encoded]
    return [{k: encoded[k][i] for k in keys} for i in range(len(texts))]


def _token_lengths(rows: list[dict[str, list[int]]]) -> np.ndarray:
    return np.fromiter((len(r["input_ids"]) for r in rows), dtype=np.int64, count=len(rows))


def _pad_rows(tokenizer, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Rows of `_tokenize_rows` padded to their longest, as the tokenizer's ``padding=True`` does
    (its ``padding_side``, pad token and pad token type; attention mask 0 on padding). The keys are
    the tokenizer's: no ``attention_mask`` when it gives none."""
    lengths = _token_lengths(rows)
    width = int(lengths.max(initial=0))
    pads = {"input_ids": getattr(tokenizer, "pad_token_id", None), "attention_mask": 0,
            "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0) or 0}
    if pads["input_ids"] is None and len(lengths) and (lengths != width).any():
        raise ValueError(f"{type(tokenizer).__name__} has no pad token, so rows of different lengths cannot be "
                         "batched: set `tokenizer.pad_token` (e.g. to its eos token) or use batch_size=1")
    left = getattr(tokenizer, "padding_side", "right") == "left"
    out = {}
    keys = list(rows[0]) if rows else ["input_ids"]
    for key in keys:
        array = np.full((len(rows), width), pads[key] if pads[key] is not None else 0, dtype=np.int64)
        for i, row in enumerate(rows):
            values = row[key]
            if left:
                array[i, width - len(values):] = values
            else:
                array[i, : len(values)] = values
        out[key] = torch.from_numpy(array)
    return out


def _sentence_transformers_max_length(name: str, revision: str | None) -> int | None:
    """``max_seq_length`` of a sentence-transformers checkpoint (e.g. 256 for all-MiniLM-L6-v2), if any."""
    try:
        from transformers.utils import cached_file

        path = cached_file(name, "sentence_bert_config.json", revision=revision,
                           _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False)
        if path:
            with open(path) as f:
                value = json.load(f).get("max_seq_length")
            return int(value) if isinstance(value, int) and value > 0 else None
    except Exception:  # a missing or unreadable file only means: use the model's own limit
        return None
    return None


def load_text_model(name: str, tokenizer=None, *, revision: str | None = None, model_kwargs: dict | None = None):
    """``(AutoModel, tokenizer)`` of the Hub id or folder ``name``; ``tokenizer`` is loaded only when ``None``.

    Example:
        >>> model, tok = load_text_model("sentence-transformers/all-MiniLM-L6-v2")
    """
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(name, revision=revision, **(model_kwargs or {}))
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
    return model, tokenizer


class TextEmbedder(Embedder):
    """Mean-pooled (over non-padding tokens) sentence embeddings from an ``AutoModel``.

    This is the sentence-transformers recipe of models such as all-MiniLM-L6-v2 (mean pooling, then
    L2 normalisation), so the column equals what that library returns for them. Like its ``encode``,
    rows are embedded in forward batches of similar length: each ``map`` batch (default 1000 rows,
    `Embedder.default_map_batch_size`) is tokenised once and cut into ``batch_size`` chunks of rows sorted by token
    count, each padded to its own longest row; the column is in the input order and equals unsorted
    batching to float rounding (1e-6).

    Args:
        model: a Hub id / local path (``AutoModel`` + ``AutoTokenizer``) or a model instance.
        tokenizer: the tokenizer; loaded from ``model`` when it is a name.
        text_column, output_column: input (strings) and output columns.
        normalize: L2-normalise each embedding (sentence-transformers' ``Normalize`` layer).
        max_length: token limit; default: the checkpoint's sentence-transformers ``max_seq_length``
            when it ships one (loading by name), else ``min(tokenizer.model_max_length,
            max_position_embeddings)``.
        revision, device, dtype, batch_size, storage_dtype: as in `ImageEmbedder`.

    Example:
        >>> emb = hp.embed.TextEmbedder("sentence-transformers/all-MiniLM-L6-v2", text_column="text")
        >>> ds = emb.map(ds, batch_size=256)
    """

    min_map_batch_size = TEXT_MAP_ROWS

    def __init__(
        self,
        model: str | torch.nn.Module,
        *,
        tokenizer=None,
        text_column: str = "text",
        output_column: str = "emb",
        normalize: bool = True,
        max_length: int | None = None,
        revision: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        batch_size: int = 64,
        model_kwargs: dict | None = None,
        storage_dtype: str = "float32",
    ):
        if isinstance(model, str):
            name = model
            model, tokenizer = load_text_model(name, tokenizer, revision=revision, model_kwargs=model_kwargs)
            if max_length is None:
                max_length = _sentence_transformers_max_length(name, revision)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"`model` must be a name or a torch.nn.Module, got {type(model).__name__}")
        if tokenizer is None:
            raise ValueError(f"pass `tokenizer=` (the tokenizer of {type(model).__name__})")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.text_column, self.output_column = text_column, output_column
        self.normalize = bool(normalize)
        self.revision = revision
        if max_length is None:
            limits = [getattr(tokenizer, "model_max_length", None),
                      getattr(getattr(model, "config", None), "max_position_embeddings", None)]
            limits = [x for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
            max_length = min(limits) if limits else None
        self.max_length = max_length
        super().__init__(input_columns=[text_column], device=device, dtype=dtype, batch_size=batch_size,
                         storage_dtype=storage_dtype)
        self.dim = int(self._probe(lambda device: self._forward(["a"], device),
                                   "embed text with this tokenizer").shape[1])

    def _tokenize(self, texts: list[str]) -> list[dict[str, list[int]]]:
        return _tokenize_rows(self.tokenizer, texts, truncation=self.max_length is not None, max_length=self.max_length)

    def _forward(self, texts: list[str], device: torch.device) -> torch.Tensor:
        return self._forward_tokens(self._tokenize(texts), device)

    def _forward_tokens(self, rows: list[dict[str, list[int]]], device: torch.device) -> torch.Tensor:
        inputs = {k: v.to(device) for k, v in _pad_rows(self.tokenizer, rows).items()}
        hidden = getattr(self.model(**inputs), "last_hidden_state", None)
        if hidden is None or hidden.ndim != 3:
            raise ValueError(f"{type(self.model).__name__} returns no (B, T, D) `last_hidden_state`; pass an encoder AutoModel")
        mask = inputs.get("attention_mask", torch.ones(hidden.shape[:2], device=device)).unsqueeze(-1).to(hidden.dtype)
        pooled = ((hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)).float()
        return torch.nn.functional.normalize(pooled, dim=1) if self.normalize else pooled

    def _output_dims(self) -> dict[str, int | None]:
        return {self.output_column: self.dim}

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def _spec(self) -> dict[str, Any]:
        from datasets.fingerprint import Hasher

        return {"normalize": self.normalize, "max_length": self.max_length, "revision": self.revision,
                "tokenizer": Hasher.hash(self.tokenizer)}

    def _prepare(self, batch: Mapping[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
        # Tokenised once per map batch; the token counts order the chunks (module docstring).
        rows = self._tokenize(_text_values(batch[self.text_column], self.text_column))
        return {**batch, _TOKENS: rows}, _token_lengths(rows)

    def _embed(self, batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        rows = batch[_TOKENS] if _TOKENS in batch else self._tokenize(_text_values(batch[self.text_column],
                                                                                   self.text_column))
        return {self.output_column: self._forward_tokens(rows, device)}
