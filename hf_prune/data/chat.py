"""Tokenisation of conversations (the ``messages`` column) with loss on the assistant's tokens only.

A conversation is rendered to text, tokenised once, and every token that is not assistant content gets
the label ``IGNORE_INDEX`` (-100, skipped by transformers' losses): ``labels`` equal ``input_ids`` on
the response tokens and are -100 elsewhere, the columns `hp.embed.LoRAGradientEmbedder` and the
instruction-tuning recipe consume.

Templates
    ``template="chat"`` renders with the tokenizer's own chat template (``tokenizer.apply_chat_template``,
    e.g. SmolLM2's ChatML). An assistant turn's span is found by rendering the conversation up to that
    turn with the generation prompt (where its content starts) and up to and including the turn (where
    it ends); both must be text prefixes of the whole rendering, else the template is not usable here
    and `ValueError` says so. The span covers the content and what the template writes after it
    (``<|im_end|>\\n`` in ChatML), so the model learns to end its turn. A template that ignores
    ``add_generation_prompt`` gives the assistant's role header loss too.

    ``template="plain"`` is a fixed format usable with any tokenizer, the one LESS and open-instruct
    train with (the Tulu format)::

        <|system|>\\n{system}\\n<|user|>\\n{user}\\n<|assistant|>\\n{assistant}{eos_token}\\n

    Contents are written as given (not stripped). The span of an assistant turn is its content and the
    ``eos_token`` (empty when the tokenizer has none); the text is tokenised with the tokenizer's special
    tokens (a Llama tokenizer's BOS), while chat templates write their own and get none added.

Which turns take loss
    ``train_on="all"`` (default, as LESS and open-instruct): every assistant turn of a multi-turn
    conversation. ``train_on="last"``: only the final assistant turn (earlier ones are context).

Token boundaries
    A token is a response token when any of its characters lies in a response span. When a tokenizer
    merges characters across a span boundary (a BPE token made of the prompt's last characters and the
    response's first), that token takes loss, so no response character goes unlearned. Spans are mapped
    to tokens through the tokenizer's character offsets, or, for a tokenizer without offsets, by
    tokenising each span boundary's text prefix and comparing token prefixes with the whole.

Truncation
    Rows longer than ``max_length`` tokens keep their first ``max_length`` tokens (LESS's rule: the
    beginning of the conversation is context for what follows). A row left without any response token
    (its first response starts after ``max_length``) is dropped and counted as
    ``"no response after truncation"``; ``return_stats=True`` gives the counts.

Example:
    >>> ds = hp.data.load_sharegpt(limit=100)
    >>> ds, stats = tokenize_messages(ds, tokenizer, max_length=512, return_stats=True)
    >>> ds = ds.map(hp.embed.LoRAGradientEmbedder(model), batched=True, batch_size=8)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Features, Value
from datasets import Sequence as SequenceFeature

from ..ops.arrow import column_array
from ..ops.checks import check_bool, check_choice, check_columns, check_new_columns, check_positive_int
from .instructions import message_problem
from .prompts import IGNORE_INDEX

__all__ = ["PLAIN_ROLE_PREFIXES", "TEMPLATES", "render_messages", "encode_messages", "tokenize_messages"]

TEMPLATES = ("chat", "plain")
TRAIN_ON = ("all", "last")
PLAIN_ROLE_PREFIXES = {"system": "<|system|>\n", "user": "<|user|>\n", "assistant": "<|assistant|>\n"}

_OK, _TRUNCATED, _NO_RESPONSE = "ok", "truncated", "no response after truncation"
_STATUS = "__hf_prune_tokenize_status__"
_MARGIN = 64  # tokens past max_length that a prefix must yield before its first max_length tokens are trusted


def _tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def _check_template(tokenizer, template: str) -> str:
    template = check_choice("template", template, TEMPLATES)
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"the tokenizer {_tokenizer_name(tokenizer)!r} has no chat template (tokenizer.chat_template is "
            "empty); pass template='plain' for the fixed <|user|>/<|assistant|> format, or set one"
        )
    return template


def _loss_turns(messages: Sequence[dict], train_on: str) -> list[int]:
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    return turns[-1:] if train_on == "last" else turns


def _render_plain(tokenizer, messages, add_generation_prompt: bool, train_on: str):
    eos = getattr(tokenizer, "eos_token", None) or ""
    loss_turns = set(_loss_turns(messages, train_on))
    parts, spans, length = [], [], 0
    for turn, message in enumerate(messages):
        prefix = PLAIN_ROLE_PREFIXES[message["role"]]
        body = message["content"] + (eos if message["role"] == "assistant" else "")
        if turn in loss_turns:
            start = length + len(prefix)
            spans.append((start, start + len(body)))
        parts.append(prefix + body + "\n")
        length += len(parts[-1])
    if add_generation_prompt:
        parts.append(PLAIN_ROLE_PREFIXES["assistant"])
    return "".join(parts), spans


def _apply(tokenizer, messages, add_generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(list(messages), tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except Exception as error:  # jinja's TemplateError, or what a template raises itself (e.g. no system role)
        raise ValueError(f"the chat template of {_tokenizer_name(tokenizer)!r} refused the conversation: "
                         f"{type(error).__name__}: {error}") from error


def _render_chat(tokenizer, messages, add_generation_prompt: bool, train_on: str, limit: int | None = None,
                 text: str | None = None):
    """Text (``text`` when already rendered) and response spans; turns starting at or after the character
    ``limit`` are not rendered."""
    if text is None:
        text = _apply(tokenizer, messages, add_generation_prompt)
    spans = []
    for turn in _loss_turns(messages, train_on):
        before = _apply(tokenizer, messages[:turn], True)
        if limit is not None and len(before) >= limit:
            break  # truncated away: the later turns start even further on
        through = _apply(tokenizer, messages[: turn + 1], False)
        if not (through.startswith(before) and text.startswith(through)):
            raise ValueError(
                f"the chat template of {_tokenizer_name(tokenizer)!r} does not render turn {turn} as a prefix of "
                "the whole conversation, so the assistant's tokens cannot be located; use template='plain'"
            )
        spans.append((len(before), len(through)))
    return text, spans


def render_messages(
    tokenizer,
    messages: Sequence[dict],
    *,
    template: str = "chat",
    add_generation_prompt: bool = False,
    train_on: str = "all",
) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation to text: ``(text, spans)``, the character spans of the turns taking loss.

    ``add_generation_prompt=True`` appends the opening of an assistant turn (for generation: pass the
    conversation without its final answer). The rendering rules are in the module docstring.

    Example:
        >>> text, spans = render_messages(tok, [{"role": "user", "content": "2+2?"},
        ...                                     {"role": "assistant", "content": "4"}], template="plain")
        >>> text
        '<|user|>\\n2+2?\\n<|assistant|>\\n4</s>\\n'
        >>> [text[s:e] for s, e in spans]
        ['4</s>']
    """
    template = _check_template(tokenizer, template)
    train_on = check_choice("train_on", train_on, TRAIN_ON)
    problem = message_problem(messages)
    if problem is not None and not (add_generation_prompt and problem[0] == "no assistant turn"):
        raise ValueError(f"invalid conversation: {problem[0]} ({problem[1]})")
    render = _render_plain if template == "plain" else _render_chat
    return render(tokenizer, messages, add_generation_prompt, train_on)


def _offsets(tokenizer, text: str, add_special_tokens: bool):
    if not getattr(tokenizer, "is_fast", False):
        return tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"], None
    out = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    return out["input_ids"], np.asarray(out["offset_mapping"], dtype=np.int64).reshape(-1, 2)


def _tokenize(tokenizer, text: str, add_special_tokens: bool, max_length: int | None):
    """`_offsets` of ``text``, or of a prefix of it long enough for ``max_length`` tokens.

    Tokenisation is local (pre-tokenisers split on spaces, punctuation and special tokens), so the first
    ``max_length`` tokens of a prefix that yields ``_MARGIN`` more are those of the whole text; long
    conversations are then tokenised only as far as they are kept.
    """
    if max_length is not None and getattr(tokenizer, "is_fast", False):
        window = (max_length + _MARGIN) * 8
        while window < len(text):
            ids, offsets = _offsets(tokenizer, text[:window], add_special_tokens)
            if len(ids) > max_length + _MARGIN:
                return ids, offsets
            window *= 4
    return _offsets(tokenizer, text, add_special_tokens)


def _mask_from_offsets(offsets: np.ndarray, spans) -> np.ndarray:
    starts, ends = offsets[:, 0], offsets[:, 1]
    mask = np.zeros(len(offsets), dtype=bool)
    for s, e in spans:
        mask |= (ends > starts) & (starts < e) & (ends > s)  # overlaps the span; zero-width (special) tokens never
    return mask


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n


def _mask_from_prefixes(tokenizer, text: str, ids: Sequence[int], spans, add_special_tokens: bool) -> np.ndarray:
    """The offsets rule for tokenizers without offsets: a boundary token that differs from the prefix's own
    tokenisation straddles the boundary, so it belongs to the span."""
    mask = np.zeros(len(ids), dtype=bool)
    for s, e in spans:
        start_ids = tokenizer(text[:s], add_special_tokens=add_special_tokens)["input_ids"]
        end_ids = tokenizer(text[:e], add_special_tokens=add_special_tokens)["input_ids"]
        start = _common_prefix(start_ids, ids)
        end = _common_prefix(end_ids, ids)
        if end < len(end_ids):
            end += 1  # the token holding the span's last characters merged with what follows
        mask[start:end] = True
    return mask


def encode_messages(
    tokenizer,
    messages: Sequence[dict],
    *,
    template: str = "chat",
    max_length: int | None = 2048,
    train_on: str = "all",
    add_generation_prompt: bool = False,
) -> dict[str, Any]:
    """Tokenise one conversation: ``{"input_ids", "labels", "truncated", "num_response_tokens"}``.

    ``labels`` are ``input_ids`` on the response tokens (the assistant turns chosen by ``train_on``)
    and ``IGNORE_INDEX`` elsewhere; the rules (templates, boundaries, truncation to the first
    ``max_length`` tokens) are in the module docstring. ``truncated`` says whether tokens were cut and
    ``num_response_tokens`` how many labels are not -100 (0 when the responses were truncated away).
    With ``add_generation_prompt=True`` the conversation may end without an answer (an evaluator's
    prompt; labels are then all -100 unless earlier assistant turns take loss).

    Raises `ValueError` for an invalid conversation (no assistant turn, empty assistant content,
    unknown role, not a list of turns) and for a tokenizer without a chat template under
    ``template="chat"``.

    Example:
        >>> out = encode_messages(tok, [{"role": "user", "content": "2+2?"},
        ...                             {"role": "assistant", "content": "4"}], template="plain")
        >>> [t for t, l in zip(out["input_ids"], out["labels"]) if l != -100] == tok("4</s>",
        ...     add_special_tokens=False)["input_ids"]
        True
    """
    template = _check_template(tokenizer, template)
    train_on = check_choice("train_on", train_on, TRAIN_ON)
    if max_length is not None:
        max_length = check_positive_int("max_length", max_length)
    add_generation_prompt = check_bool("add_generation_prompt", add_generation_prompt)
    problem = message_problem(messages)
    if problem is not None and not (add_generation_prompt and problem[0] == "no assistant turn"):
        raise ValueError(f"invalid conversation: {problem[0]} ({problem[1]})")
    return _encode(tokenizer, messages, template, max_length, train_on, add_generation_prompt)


def _encode(tokenizer, messages, template, max_length, train_on, add_generation_prompt) -> dict[str, Any]:
    add_special = template == "plain"  # chat templates write their own special tokens
    if template == "plain":
        text, spans = _render_plain(tokenizer, messages, add_generation_prompt, train_on)
        ids, offsets = _tokenize(tokenizer, text, add_special, max_length)
    else:
        text = _apply(tokenizer, messages, add_generation_prompt)
        ids, offsets = _tokenize(tokenizer, text, add_special, max_length)
        # Turns starting past the kept tokens need no rendering (long ShareGPT conversations).
        limit = None
        if max_length is not None and offsets is not None and len(ids) > max_length:
            limit = int(offsets[: max_length, 1].max(initial=0))
        _, spans = _render_chat(tokenizer, messages, add_generation_prompt, train_on, limit, text)
    if offsets is not None:
        mask = _mask_from_offsets(offsets, spans)
    else:
        mask = _mask_from_prefixes(tokenizer, text, ids, spans, add_special)
    ids = np.asarray(ids, dtype=np.int64)
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, mask = ids[:max_length], mask[:max_length]
    labels = np.where(mask, ids, IGNORE_INDEX)
    return {"input_ids": ids.tolist(), "labels": labels.tolist(), "truncated": bool(truncated),
            "num_response_tokens": int(mask.sum())}


class _Encoder:
    """The map function of `tokenize_messages` (a class, so ``datasets`` can hash it)."""

    def __init__(self, tokenizer, column, template, max_length, train_on, on_invalid, ids_column, labels_column):
        self.tokenizer = tokenizer
        self.column, self.template, self.max_length, self.train_on = column, template, max_length, train_on
        self.on_invalid, self.ids_column, self.labels_column = on_invalid, ids_column, labels_column

    def __call__(self, batch, indices):
        ids, labels, status = [], [], []
        for row, messages in zip(indices, batch[self.column]):
            problem = message_problem(messages)
            if problem is not None:
                if self.on_invalid == "raise":
                    raise ValueError(
                        f"column {self.column!r} row {row}: {problem[0]} ({problem[1]}); fix the row or pass "
                        "on_invalid='skip' to drop and count such rows"
                    )
                ids.append([]), labels.append([]), status.append(problem[0])
                continue
            try:
                out = _encode(self.tokenizer, messages, self.template, self.max_length, self.train_on, False)
            except ValueError as error:
                raise ValueError(f"column {self.column!r} row {row}: {error}") from error
            ids.append(out["input_ids"]), labels.append(out["labels"])
            status.append(_NO_RESPONSE if out["num_response_tokens"] == 0 else
                          _TRUNCATED if out["truncated"] else _OK)
        return {self.ids_column: ids, self.labels_column: labels, _STATUS: status}


def tokenize_messages(
    dataset: Dataset,
    tokenizer,
    *,
    messages_column: str = "messages",
    template: str = "chat",
    max_length: int | None = 2048,
    train_on: str = "all",
    on_invalid: str = "raise",
    return_stats: bool = False,
    input_ids_column: str = "input_ids",
    labels_column: str = "labels",
    overwrite: bool = False,
    batch_size: int = 256,
    num_proc: int | None = None,
) -> Dataset | tuple[Dataset, dict[str, Any]]:
    """Add ``input_ids``/``labels`` (int64 lists, -100 on every non-response token) from a messages column.

    Each row is tokenised by `encode_messages` (rules in the module docstring). Rows that end up with no
    response token after truncation to ``max_length`` are dropped. Invalid conversations (see
    `hp.data.message_problem`) raise `ValueError` naming the column and row with ``on_invalid="raise"``
    (default); with ``on_invalid="skip"`` they are dropped and counted by reason. The other columns are
    kept; the input dataset is untouched.

    With ``return_stats=True`` returns ``(dataset, stats)``: ``stats`` has ``rows`` (input rows),
    ``kept``, ``truncated`` (kept rows cut to ``max_length``), ``dropped`` (``{reason: count}``, e.g.
    ``"no response after truncation"``, ``"no assistant turn"``, ``"unknown role"``), ``response_tokens``
    and ``tokens`` (totals over kept rows), and the settings used — ready for a metrics JSON.

    Example:
        >>> ds, stats = tokenize_messages(ds, tokenizer, max_length=512, return_stats=True)
        >>> stats["kept"] + sum(stats["dropped"].values()) == stats["rows"]
        True
    """
    check_columns(dataset, messages_column)
    template = _check_template(tokenizer, template)
    train_on = check_choice("train_on", train_on, TRAIN_ON)
    on_invalid = check_choice("on_invalid", on_invalid, ("raise", "skip"))
    return_stats = check_bool("return_stats", return_stats)
    if max_length is not None:
        max_length = check_positive_int("max_length", max_length)
    if input_ids_column == labels_column:
        raise ValueError(f"`input_ids_column` and `labels_column` are both {input_ids_column!r}")
    existing = check_new_columns(dataset, (input_ids_column, labels_column), overwrite)
    if existing:
        dataset = dataset.remove_columns(existing)
    tokens = SequenceFeature(Value("int64"))
    features = Features({**dataset.features, input_ids_column: tokens, labels_column: tokens,
                         _STATUS: Value("string")})
    encoder = _Encoder(tokenizer, messages_column, template, max_length, train_on, on_invalid,
                       input_ids_column, labels_column)
    encoded = dataset.map(encoder, batched=True, batch_size=batch_size, with_indices=True, features=features,
                          num_proc=num_proc, desc=f"tokenize {messages_column}")
    status = column_array(encoded, _STATUS)
    keep = np.flatnonzero(pc.is_in(status, value_set=pa.array([_OK, _TRUNCATED], status.type))
                          .to_numpy(zero_copy_only=False))
    counts = {str(v["values"]): int(v["counts"]) for v in pc.value_counts(status).to_pylist()}
    result = encoded if len(keep) == len(encoded) else encoded.select(keep)
    result = result.remove_columns(_STATUS)
    if not return_stats:
        return result
    lengths = np.diff(np.asarray(column_array(result, labels_column).offsets)) if len(result) else np.zeros(0)
    response = (np.asarray(pc.list_flatten(column_array(result, labels_column))) != IGNORE_INDEX).sum() \
        if len(result) else 0
    stats = {
        "rows": len(dataset), "kept": len(result), "truncated": counts.get(_TRUNCATED, 0),
        "dropped": {reason: n for reason, n in sorted(counts.items()) if reason not in (_OK, _TRUNCATED)},
        "tokens": int(lengths.sum()), "response_tokens": int(response),
        "template": template, "max_length": max_length, "train_on": train_on,
    }
    return result, stats
