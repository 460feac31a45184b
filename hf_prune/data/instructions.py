"""The instruction schema every instruction loader returns, and its check.

A row is one conversation:

- ``messages``: a list of ``{"role", "content"}`` turns, roles in `INSTRUCTION_ROLES`
  (``"system"``, ``"user"``, ``"assistant"``), with at least one assistant turn and no assistant turn
  whose content is empty or blank (an empty response would train on nothing but the end-of-turn token);
- ``source``: where the row comes from (``"sharegpt"``, ``"bigbench"``, ``"alpaca"``, ``"dolly"``,
  ``"oasst"``, ``"flan"``, ...);
- ``task``: the task it belongs to (``"sharegpt"``, a BIG-bench task name, ...).

Evaluation rows (target tasks' validation and test rows) also carry ``answer`` (the gold answer text,
which is the content of the last assistant turn) and ``choices`` (the options of a multiple-choice task,
``[]`` for a generative one). Every row, evaluation rows included, holds the full conversation ending in
the answer, so a validation row is tokenised for gradients exactly like a training row and an evaluator
drops the final assistant turn to build the prompt.

Example:
    >>> ds = Dataset.from_dict({"messages": [[{"role": "user", "content": "2+2?"},
    ...                                      {"role": "assistant", "content": "4"}]],
    ...                         "source": ["toy"], "task": ["arithmetic"]}, features=INSTRUCTION_FEATURES)
    >>> check_instructions(ds)
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datasets import Dataset, Features, Value

from ..ops.arrow import column_array
from ..ops.checks import check_columns

__all__ = [
    "INSTRUCTION_ROLES",
    "MESSAGES_FEATURE",
    "INSTRUCTION_FEATURES",
    "EVAL_FEATURES",
    "message_problem",
    "check_instructions",
    "instruction_dataset",
]

INSTRUCTION_ROLES = ("system", "user", "assistant")

MESSAGES_FEATURE = [{"role": Value("string"), "content": Value("string")}]
INSTRUCTION_FEATURES = Features({"messages": MESSAGES_FEATURE, "source": Value("string"), "task": Value("string")})
EVAL_FEATURES = Features({**INSTRUCTION_FEATURES, "answer": Value("string"), "choices": [Value("string")]})

_SHOWN = 5  # bad rows quoted in an error


def message_problem(messages: Any) -> tuple[str, str] | None:
    """Why ``messages`` is not a valid conversation, as ``(reason, detail)``, or ``None`` when it is.

    ``reason`` is one of ``"not a list"``, ``"bad turn"`` (a turn that is not a dict with string
    ``role`` and ``content``), ``"unknown role"``, ``"no assistant turn"``, ``"empty assistant content"``;
    ``detail`` says which turn. Loaders count skipped rows by ``reason``.

    Example:
        >>> message_problem([{"role": "user", "content": "hi"}])
        ('no assistant turn', 'roles are [user]')
        >>> message_problem([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]) is None
        True
    """
    if not isinstance(messages, (list, tuple)):
        return "not a list", f"got {type(messages).__name__}, expected a list of {{'role', 'content'}} turns"
    has_assistant = False
    for turn, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            return "bad turn", f"turn {turn} is {message!r}; expected {{'role': str, 'content': str}}"
        role = message["role"]
        if role not in INSTRUCTION_ROLES:
            return "unknown role", f"turn {turn} has role {role!r}; roles must be one of {list(INSTRUCTION_ROLES)}"
        if role == "assistant":
            if not message["content"].strip():
                return "empty assistant content", f"turn {turn} is an assistant turn with empty content"
            has_assistant = True
    if not has_assistant:
        roles = ", ".join(m["role"] for m in messages)
        return "no assistant turn", f"roles are [{roles}]"
    return None


def _check_string_column(dataset: Dataset, column: str) -> None:
    arr = column_array(dataset, column)
    if str(arr.type) not in ("string", "large_string"):
        raise ValueError(f"column {column!r} holds {dataset.features[column]}; it must hold strings")
    if arr.null_count:
        raise ValueError(f"column {column!r} has {arr.null_count} null rows")


def check_instructions(
    dataset: Dataset,
    messages_column: str = "messages",
    *,
    columns: Sequence[str] = ("source", "task"),
) -> None:
    """Check that ``dataset`` follows the instruction schema; raise naming the column and rows if not.

    Every row of ``messages_column`` must be a valid conversation (`message_problem`); the ``columns``
    (by default ``source`` and ``task``) must exist and hold non-null strings. When the dataset has
    ``answer``/``choices`` columns (evaluation rows), ``answer`` must be a non-null string column and
    ``choices`` lists of strings that, when not empty, contain the answer.

    Raises `KeyError` for a missing column, `ValueError` naming the first bad rows and why.

    Example:
        >>> check_instructions(load_sharegpt(limit=100))
    """
    check_columns(dataset, messages_column, *columns)
    if len(dataset) == 0:
        raise ValueError(f"the dataset is empty: no rows in column {messages_column!r}")
    bad = []
    for row, messages in enumerate(dataset.select_columns([messages_column]).with_format(None)[messages_column]):
        problem = message_problem(messages)
        if problem is not None:
            bad.append((row, problem))
    if bad:
        shown = "; ".join(f"row {row}: {reason} ({detail})" for row, (reason, detail) in bad[:_SHOWN])
        more = f"; ... ({len(bad)} bad rows in all)" if len(bad) > _SHOWN else ""
        raise ValueError(f"column {messages_column!r} has invalid conversations: {shown}{more}")
    for column in columns:
        _check_string_column(dataset, column)
    if "answer" in dataset.column_names:
        _check_string_column(dataset, "answer")
    if "choices" in dataset.column_names:
        view = dataset.select_columns([c for c in ("answer", "choices") if c in dataset.column_names])
        for row, example in enumerate(view.with_format(None)):
            choices = example["choices"]
            if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
                raise ValueError(f"column 'choices' row {row} is {choices!r}; it must be a list of strings")
            if choices and "answer" in example and example["answer"] not in choices:
                raise ValueError(f"column 'choices' row {row} does not contain the row's answer {example['answer']!r}")


def instruction_dataset(rows: Sequence[dict], features: Features = INSTRUCTION_FEATURES) -> Dataset:
    """Rows (dicts with the schema's columns) as a Dataset with the schema's features, also when empty.

    Example:
        >>> instruction_dataset([]).column_names
        ['messages', 'source', 'task']
    """
    if not rows:
        return Dataset.from_dict({k: [] for k in features}, features=features)
    return Dataset.from_list(list(rows), features=features)
