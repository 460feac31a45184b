"""Pooled hidden states of a language model: the representations RDS+ selects instruction data with.

RDS+ (Ivison et al. 2025, "Large-Scale Data Selection for Instruction Tuning") represents an example
by the base model's last-layer hidden states, pooled by SGPT's position-weighted mean (token ``t`` of
a sequence, counted from 1, gets weight ``t / Σ_{t'} t'``) and L2-normalised; a pool row's score for
a target example is the cosine of the two (`hf_prune.score.rds`). `HiddenStateEmbedder` computes that
column, and the plain mean and last-token poolings, from any transformers model.

Padding never enters a pooled vector: rows are padded by the embedder itself, with an attention mask
and (for left padding) position ids counted over the real tokens only, and every pooling weights the
real tokens alone. (The RDS reference code weights every position of its padded batch, padding
included, so its vectors depend on the batch a row was in; ours do not.)
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..data.chat import TEMPLATES, encode_messages
from ..data.instructions import message_problem
from ..ops.checks import check_bool, check_choice, check_positive_int
from ._base import Embedder
from .lora_gradients import _ragged
from .text import TEXT_MAP_ROWS, load_text_model

__all__ = ["HiddenStateEmbedder", "POOLINGS", "pool_hidden_states"]

POOLINGS = ("mean", "weighted_mean", "last_token")
_TEXTS = ("prompt_response", "prompt")
_PADDING_SIDES = ("right", "left")
_ROWS = "_token_rows"  # the batch entry holding each row's token ids (a private name, never a column)


def pool_hidden_states(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool ``(B, T, D)`` hidden states over the tokens where ``mask`` (``(B, T)``, 1 = real) is set.

    ``"mean"``: the mean over real tokens. ``"weighted_mean"``: RDS+'s (SGPT's) position-weighted mean,
    real token ``t`` (counted from 1 among the row's real tokens, whatever the padding side) weighted
    ``t / Σ_{t'} t'``, so later tokens, which have seen more of the text, count more.
    ``"last_token"``: the state of the row's last real token. Padded positions are excluded by
    selection, never by multiplying with 0, so a NaN or inf at a padded position cannot leak in.
    Every row must have at least one real token.

    Example:
        >>> h = torch.arange(6.0).reshape(1, 3, 2)            # tokens (0, 1), (2, 3), (4, 5)
        >>> pool_hidden_states(h, torch.ones(1, 3), "weighted_mean")   # weights 1/6, 2/6, 3/6
        tensor([[2.6667, 3.6667]])
    """
    check_choice("pooling", pooling, POOLINGS)
    real = mask.bool()
    if not bool(real.any(dim=1).all()):
        raise ValueError("every row needs at least one real (unmasked) token to pool")
    hidden = hidden.float().masked_fill(~real.unsqueeze(-1), 0.0)
    if pooling == "last_token":
        positions = torch.arange(real.shape[1], device=real.device).expand_as(real)
        last = torch.where(real, positions, -1).amax(dim=1)
        return hidden[torch.arange(len(hidden), device=hidden.device), last]
    if pooling == "mean":
        weights = real.float()
    else:
        weights = real.float().cumsum(dim=1) * real  # 1, 2, ..., n on the real tokens, 0 on padding
    weights = weights / weights.sum(dim=1, keepdim=True)
    return torch.einsum("bt,btd->bd", weights, hidden)


def _backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer under a task head (``LlamaForCausalLM.model``), so no vocabulary logits are computed.

    transformers' ``base_model`` is that module for a model with a head and the model itself otherwise;
    anything else (a peft wrapper, a plain module) is called as given.
    """
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return model
    if isinstance(model, PreTrainedModel):
        base = getattr(model, "base_model", model)
        if isinstance(base, torch.nn.Module):
            return base
    return model


def _accepts(module: torch.nn.Module, name: str) -> bool:
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class HiddenStateEmbedder(Embedder):
    """Pooled hidden states of one layer of a transformers model, padding ignored (RDS+'s representation).

    The defaults are RDS+'s: the last layer, the position-weighted mean (module docstring;
    Ivison et al. 2025, after SGPT), L2-normalised. Any ``AutoModel`` or ``AutoModelForCausalLM`` (a
    head's backbone is run, never its vocabulary projection) or another module that takes
    ``input_ids``/``attention_mask`` and returns ``last_hidden_state`` or ``hidden_states`` works.

    Input is one of:

    - ``messages_column`` (default ``"messages"``, the instruction schema of `hf_prune.data.instructions`):
      each conversation is rendered and tokenised by `hf_prune.data.encode_messages` with ``template``
      (the tokenizer's chat template, or ``"plain"``), keeping its first ``max_length`` tokens.
      ``text="prompt_response"`` (default, what RDS+ embeds for pool and target examples alike) embeds
      the whole conversation; ``text="prompt"`` embeds everything before the last assistant turn, with
      the assistant's generation prompt appended (the text a model answers).
    - ``input_ids_column``: pre-tokenised rows (lists of token ids, unpadded), e.g. the ``input_ids``
      of `hf_prune.data.tokenize_messages`; their first ``max_length`` tokens are used.

    A row with no tokens after truncation is an error naming the column. Each ``map`` batch (default
    1000 rows, `Embedder.default_map_batch_size`) is tokenised once and embedded in forward batches of
    similar token counts (sorted, longest first; the outputs in the input order), each padded on ``padding_side`` to its own longest row; the
    side and the batch partners change no vector beyond float rounding (1e-6), so neither enters
    the fingerprint.

    Args:
        model: a Hub id / local path (loaded with ``AutoModel`` and ``AutoTokenizer``) or a model instance.
        tokenizer: needed with ``messages_column``; loaded from ``model`` when it is a name.
        messages_column: the conversation column (ignored when ``input_ids_column`` is given).
        input_ids_column: a column of token-id lists to embed instead of conversations.
        text: ``"prompt_response"`` or ``"prompt"`` (above).
        template: ``"chat"`` (the tokenizer's chat template) or ``"plain"`` (`hf_prune.data.chat`).
        layer: which hidden state: an index into the model's ``hidden_states`` (0 = the embedding
            output, ``L`` = the last of its ``L`` layers; negative counts from the end). ``-1`` (default)
            is the model's ``last_hidden_state`` (after the final norm, where a model has one). Outside
            ``[-(L+1), L]`` is a `ValueError` naming ``layer`` and that range.
        pooling: ``"weighted_mean"`` (RDS+), ``"mean"`` or ``"last_token"`` (`pool_hidden_states`).
        normalize: L2-normalise each vector (RDS+ does).
        max_length: the token limit (first tokens kept); ``None``: no limit.
        padding_side: ``"right"`` or ``"left"``; default: the tokenizer's, else right.
        pad_token_id: the id padded positions hold (masked out, so any valid id); default: the
            tokenizer's pad, else its eos, else 0.
        output_column: the new fixed-length float32 (or ``storage_dtype``) column.
        revision, model_kwargs: passed to ``from_pretrained`` when ``model`` is a name.
        device, dtype, batch_size, storage_dtype: as in `hf_prune.embed.Embedder` (bf16 autocast on GPU).

    Raises:
        ValueError: a ``layer`` the model lacks, an unknown ``pooling``/``text``/``template``, no
            tokenizer for a messages column, an invalid conversation or a row without tokens (naming
            the column), token ids outside the vocabulary.

    Example:
        >>> emb = hp.embed.HiddenStateEmbedder(model, tokenizer=tok, messages_column="messages", output_column="h")
        >>> pool = emb.map(pool, batch_size=32)
        >>> targets = emb.map(targets, batch_size=32)
        >>> pool = hp.score.rds(pool, targets, embedding_column="h", task_column="task", per_task_column="rds_tasks")
    """

    min_map_batch_size = TEXT_MAP_ROWS

    def __init__(
        self,
        model: str | torch.nn.Module,
        *,
        tokenizer=None,
        messages_column: str = "messages",
        input_ids_column: str | None = None,
        text: str = "prompt_response",
        template: str = "chat",
        layer: int = -1,
        pooling: str = "weighted_mean",
        normalize: bool = True,
        max_length: int | None = 2048,
        padding_side: str | None = None,
        pad_token_id: int | None = None,
        output_column: str = "emb",
        revision: str | None = None,
        model_kwargs: dict | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        batch_size: int = 16,
        storage_dtype: str = "float32",
    ):
        if isinstance(model, str):
            model, tokenizer = load_text_model(model, tokenizer, revision=revision, model_kwargs=model_kwargs)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"`model` must be a name or a torch.nn.Module, got {type(model).__name__}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.text = check_choice("text", text, _TEXTS)
        self.template = check_choice("template", template, TEMPLATES)
        self.pooling = check_choice("pooling", pooling, POOLINGS)
        self.normalize = check_bool("normalize", normalize)
        self.max_length = None if max_length is None else check_positive_int("max_length", max_length)
        self.input_ids_column = input_ids_column
        self.messages_column = None if input_ids_column is not None else messages_column
        if self.messages_column is not None and tokenizer is None:
            raise ValueError(f"pass `tokenizer=` to render the {messages_column!r} conversations, or "
                             "`input_ids_column=` for pre-tokenised rows")
        if padding_side is None:
            padding_side = getattr(tokenizer, "padding_side", None) or "right"
        self.padding_side = check_choice("padding_side", padding_side, _PADDING_SIDES)
        if pad_token_id is None:
            pad_token_id = next((t for t in (getattr(tokenizer, "pad_token_id", None),
                                              getattr(tokenizer, "eos_token_id", None)) if isinstance(t, int)), 0)
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, (int, np.integer)) or pad_token_id < 0:
            raise ValueError(f"`pad_token_id` must be a non-negative integer, got {pad_token_id!r}")
        self.pad_token_id = int(pad_token_id)
        self.output_column = output_column
        self.revision = revision
        self._backbone = _backbone(self.model)
        self._positions = _accepts(self._backbone, "position_ids")
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise ValueError(f"`layer` must be an integer index into the model's hidden states, got {layer!r}")
        self.layer = int(layer)
        column = input_ids_column or messages_column
        super().__init__(input_columns=[column], device=device, dtype=dtype, batch_size=batch_size,
                         storage_dtype=storage_dtype)
        states, last = self._probe(self._probe_forward, "return hidden states for `input_ids`")
        self.num_hidden_states = states  # L + 1: the embedding output and one per layer
        if not -states <= self.layer < states:
            raise ValueError(
                f"`layer`={self.layer} is out of range for {type(self.model).__name__}: it has {states - 1} layers, "
                f"so `layer` must be in [{-states}, {states - 1}] (0 = the embedding output, {states - 1} or -1 = "
                "the last layer)"
            )
        self.dim = int(last)

    # ------------------------------------------------------------------ forward
    def _probe_forward(self, device: torch.device) -> tuple[int, int]:
        ids = torch.full((1, 2), self.pad_token_id, dtype=torch.long, device=device)
        out = self._backbone(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
        states = getattr(out, "hidden_states", None)
        if states is None:
            raise ValueError("its output has no `hidden_states`")
        return len(states), int(states[-1].shape[-1])

    def _hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        inputs = {"input_ids": ids, "attention_mask": mask}
        if self._positions:
            # Left padding shifts the real tokens right; positions counted over real tokens undo that.
            inputs["position_ids"] = (mask.cumsum(dim=1) - 1).clamp_min(0)
        if self.layer == -1:
            out = self._backbone(**inputs)
            hidden = getattr(out, "last_hidden_state", None)
            if hidden is not None:
                return hidden
        out = self._backbone(**inputs, output_hidden_states=True)
        return out.hidden_states[self.layer]

    def embed_tokens(self, rows: Sequence[Sequence[int]], device: torch.device | None = None) -> torch.Tensor:
        """Pooled vectors ``(len(rows), dim)`` (float32) of unpadded token-id lists, in one forward.

        Example:
            >>> emb.embed_tokens([[1, 5, 7], [1, 9]]).shape
            torch.Size([2, 16])
        """
        device = self._place(None) if device is None else device
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        width = int(lengths.max(initial=0))
        ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            where = slice(0, lengths[i]) if self.padding_side == "right" else slice(width - lengths[i], width)
            ids[i, where], mask[i, where] = row, 1
        ids_t, mask_t = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
        with torch.inference_mode(), self.autocast(device):
            pooled = pool_hidden_states(self._hidden(ids_t, mask_t), mask_t, self.pooling)
        return torch.nn.functional.normalize(pooled, dim=1) if self.normalize else pooled

    # ------------------------------------------------------------------ inputs
    def _token_rows(self, batch: Mapping[str, Any]) -> list[np.ndarray]:
        if self.input_ids_column is not None:
            column = self.input_ids_column
            flat, lengths = _ragged(batch[column], column)
            rows = np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []
            if self.max_length is not None:
                rows = [r[: self.max_length] for r in rows]
        else:
            column = self.messages_column
            rows = [np.asarray(self._encode(messages, i), dtype=np.int64) for i, messages in enumerate(batch[column])]
        empty = [i for i, r in enumerate(rows) if len(r) == 0]
        if empty:
            raise ValueError(f"column {column!r}: row {empty[0]} of the batch has no tokens after truncation "
                             f"(max_length={self.max_length}); {len(empty)} such row(s) in the batch")
        vocab = getattr(getattr(self.model, "config", None), "vocab_size", None)
        bad = [i for i, r in enumerate(rows) if r.min() < 0 or (vocab is not None and r.max() >= vocab)]
        if bad:
            raise ValueError(f"column {column!r}: row {bad[0]} of the batch has token ids outside [0, {vocab})")
        return rows

    def _encode(self, messages: Any, row: int) -> list[int]:
        column = self.messages_column
        problem = message_problem(messages)
        if problem is not None:
            raise ValueError(f"column {column!r}: row {row} of the batch is not a valid conversation: "
                             f"{problem[0]} ({problem[1]})")
        if self.text == "prompt":
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            messages = messages[:last]
            if not messages:
                raise ValueError(f"column {column!r}: row {row} of the batch has no prompt before its last "
                                 "assistant turn (text='prompt' embeds that prompt)")
        try:
            out = encode_messages(self.tokenizer, messages, template=self.template, max_length=self.max_length,
                                  add_generation_prompt=self.text == "prompt")
        except ValueError as err:
            raise ValueError(f"column {column!r}: row {row} of the batch: {err}") from err
        return out["input_ids"]

    # ------------------------------------------------------------------ Embedder hooks
    def _output_dims(self) -> dict[str, int | None]:
        return {self.output_column: self.dim}

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def _spec(self) -> dict[str, Any]:
        from datasets.fingerprint import Hasher

        spec = {"layer": self.layer, "pooling": self.pooling, "normalize": self.normalize,
                "max_length": self.max_length, "revision": self.revision}
        if self.messages_column is not None:
            spec.update(text=self.text, template=self.template, tokenizer=Hasher.hash(self.tokenizer))
        return spec

    def _prepare(self, batch: Mapping[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
        # Rendered and tokenised (or read) once per map batch; the token counts order the chunks, so
        # each forward pads to a length its rows nearly share (`hf_prune.embed.Embedder`).
        rows = self._token_rows(batch)
        return {**batch, _ROWS: rows}, np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))

    def _embed(self, batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        rows = batch[_ROWS] if _ROWS in batch else self._token_rows(batch)
        return {self.output_column: self.embed_tokens(rows, device)}
