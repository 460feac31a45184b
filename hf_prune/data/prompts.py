"""Prompt/response tokenisation for instruction data: the prompt's tokens are masked out of the labels.

LESS's features (`hf_prune.embed.LoRAGradientEmbedder`) and instruction tuning train on the response
only: ``labels`` are the ``input_ids`` with every prompt token set to ``IGNORE_INDEX`` (-100, what
`torch.nn.functional.cross_entropy` and transformers' losses skip).

Example:
    >>> ds = hp.data.tokenize_prompt_response(ds, tokenizer, prompt_column="prompt", response_column="response")
    >>> ds = hp.embed.LoRAGradientEmbedder(model).map(ds)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset, Features, Value
from datasets import Sequence as SequenceFeature

from ..ops.columns import check_columns, check_new_columns

__all__ = [
    "IGNORE_INDEX",
    "encode_prompt_response",
    "predicting_positions",
    "takes_logits_to_keep",
    "tokenize_prompt_response",
]

IGNORE_INDEX = -100


def predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """The positions of a ``(B, L)`` label batch whose next token is a response token in at least one row.

    Only these positions' logits enter a response-only loss, so a causal LM can be asked for them alone
    (``logits_to_keep``, see `takes_logits_to_keep`): the vocabulary projection and its (tokens ×
    vocabulary) logits are skipped on prompt and padding positions. Training (the instruction-tuning
    recipe) and LESS's gradient features use the same rule.

    Example:
        >>> predicting_positions(torch.tensor([[-100, -100, 7, 8], [-100, 5, -100, -100]])).tolist()
        [0, 1, 2]
    """
    return torch.nonzero((labels[:, 1:] != IGNORE_INDEX).any(0)).flatten()


def takes_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the (base, for a peft model) causal LM's forward accepts ``logits_to_keep`` (transformers' do).

    Example:
        >>> takes_logits_to_keep(transformers.LlamaForCausalLM(config))
        True
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):  # a forward without an inspectable signature
        return False


def encode_prompt_response(
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    max_length: int | None = 2048,
    add_eos: bool = True,
) -> dict[str, list[list[int]]]:
    """Tokenise ``prompt + response`` pairs with the prompt masked: ``{"input_ids", "labels"}``.

    As in LESS (and open-instruct's ``encode_with_prompt_completion_format``): the text
    ``prompt + response (+ eos_token)`` is tokenised (truncated to ``max_length``) and the labels
    of its first ``len(tokenize(prompt))`` tokens are set to -100. A response truncated away
    leaves a row with no response token, which `LoRAGradientEmbedder` rejects.

    Example:
        >>> out = encode_prompt_response(tok, ["Q: 2+2?\\nA:"], [" 4"])
        >>> n_prompt = len(tok("Q: 2+2?\\nA:").input_ids)
        >>> out["labels"][0][:n_prompt] == [-100] * n_prompt
        True
    """
    prompts, responses = list(prompts), list(responses)
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    for what, texts in (("prompt", prompts), ("response", responses)):
        if not all(isinstance(t, str) for t in texts):
            raise ValueError(f"every {what} must be a string")
    eos = (getattr(tokenizer, "eos_token", None) or "") if add_eos else ""
    kwargs = {"truncation": max_length is not None, "max_length": max_length}
    full = pa.array(tokenizer([p + r + eos for p, r in zip(prompts, responses)], **kwargs)["input_ids"])
    prompt_lengths = np.diff(np.asarray(pa.array(tokenizer(prompts, **kwargs)["input_ids"]).offsets))
    offsets = np.asarray(full.offsets)
    lengths = np.diff(offsets)
    flat = full.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    position = np.arange(len(flat)) - np.repeat(offsets[:-1], lengths)
    labels = np.where(position < np.repeat(prompt_lengths, lengths), IGNORE_INDEX, flat)
    label_lists = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(labels))
    return {"input_ids": full.to_pylist(), "labels": label_lists.to_pylist()}


def tokenize_prompt_response(
    dataset: Dataset,
    tokenizer,
    *,
    prompt_column: str = "prompt",
    response_column: str = "response",
    max_length: int | None = 2048,
    add_eos: bool = True,
    input_ids_column: str = "input_ids",
    labels_column: str = "labels",
    overwrite: bool = False,
    batch_size: int = 1000,
) -> Dataset:
    """Add ``input_ids``/``labels`` columns (prompt tokens labelled -100) from prompt/response text.

    See `encode_prompt_response` for the exact rule. Returns a new Dataset; the input is untouched.

    Example:
        >>> ds = tokenize_prompt_response(ds, tokenizer, prompt_column="prompt", response_column="response")
        >>> ds = hp.embed.LoRAGradientEmbedder(model).map(ds)
    """
    check_columns(dataset, prompt_column, response_column)
    existing = check_new_columns(dataset, (input_ids_column, labels_column), overwrite)
    if existing:
        dataset = dataset.remove_columns(existing)
    tokens = SequenceFeature(Value("int64"))
    features = Features({**dataset.features, input_ids_column: tokens, labels_column: tokens})
    encode: Callable = _Encoder(tokenizer, prompt_column, response_column, max_length, add_eos,
                                input_ids_column, labels_column)
    return dataset.map(encode, batched=True, batch_size=batch_size, features=features,
                       desc=f"tokenize {prompt_column}/{response_column}")


class _Encoder:
    """The map function of `tokenize_prompt_response` (a class so ``datasets`` can hash it)."""

    def __init__(self, tokenizer, prompt_column, response_column, max_length, add_eos, ids_column, labels_column):
        self.tokenizer = tokenizer
        self.columns = (prompt_column, response_column, ids_column, labels_column)
        self.max_length, self.add_eos = max_length, add_eos

    def __call__(self, batch):
        prompt_column, response_column, ids_column, labels_column = self.columns
        out = encode_prompt_response(self.tokenizer, batch[prompt_column], batch[response_column],
                                     max_length=self.max_length, add_eos=self.add_eos)
        return {ids_column: out["input_ids"], labels_column: out["labels"]}
