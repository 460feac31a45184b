"""Converters from the common Hub instruction formats into the instruction schema (`hf_prune.data.instructions`).

Alpaca and Dolly (``instruction``/``input`` or ``context``/``output`` or ``response``), FLAN
(``inputs``/``targets``) and OASST message trees, for users with a network; each returns rows with
``messages``/``source``/``task`` and raises on, or counts and skips, rows it cannot convert.

Example:
    >>> ds = from_alpaca(Dataset.from_dict({"instruction": ["Add"], "input": ["2+2"], "output": ["4"]}))
    >>> ds[0]["messages"][-1]
    {'role': 'assistant', 'content': '4'}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datasets import Dataset

from ..ops.checks import check_choice, check_columns, check_positive_int
from .instructions import instruction_dataset, message_problem

__all__ = ["from_alpaca", "from_flan", "from_oasst"]


def _column(dataset: Dataset, given: str | None, candidates: Sequence[str], parameter: str, required: bool = True):
    """``given`` (checked), else the first of ``candidates`` the dataset has."""
    if given is not None:
        check_columns(dataset, given)
        return given
    for name in candidates:
        if name in dataset.column_names:
            return name
    if required:
        raise KeyError(f"none of the columns {list(candidates)} found for `{parameter}`; the dataset has "
                       f"{dataset.column_names}: pass {parameter}=")
    return None


def _convert(examples, build, n_in: int, on_invalid: str, what: str, column: str, return_stats: bool):
    """Rows of the schema from ``build(example) -> (messages, source, task)``, checked one by one."""
    check_choice("on_invalid", on_invalid, ("raise", "skip"))
    rows, skipped = [], {}
    for row, example in enumerate(examples):
        messages, source, task = build(example)
        problem = message_problem(messages)
        if problem is not None:
            if on_invalid == "raise":
                raise ValueError(f"{what} row {row} (column {column!r}): {problem[0]} ({problem[1]}); "
                                 "pass on_invalid='skip' to drop and count such rows")
            skipped[problem[0]] = skipped.get(problem[0], 0) + 1
            continue
        rows.append({"messages": messages, "source": source, "task": task})
    ds = instruction_dataset(rows)
    if not return_stats:
        return ds
    return ds, {"rows": n_in, "kept": len(ds), "skipped": dict(sorted(skipped.items())), "format": what}


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def from_alpaca(
    dataset: Dataset,
    *,
    instruction_column: str = "instruction",
    input_column: str | None = None,
    output_column: str | None = None,
    task_column: str | None = None,
    source: str | None = None,
    on_invalid: str = "raise",
    return_stats: bool = False,
) -> Dataset | tuple[Dataset, dict]:
    """Alpaca (``instruction``/``input``/``output``) or Dolly (``instruction``/``context``/``response``)
    rows as instruction conversations: one user turn and one assistant turn.

    The user turn is the instruction, followed by ``"\\n\\n"`` and the input (context) when that is not
    empty, as open-instruct converts both datasets for LESS. Columns found automatically: the input is
    ``input`` or ``context``, the output ``output`` or ``response``, the task ``category`` (Dolly) when
    present, else the task is the source. ``source`` defaults to ``"dolly"`` when the Dolly columns are
    found, else ``"alpaca"``. Rows with an empty output are invalid: `ValueError` naming the row with
    ``on_invalid="raise"``, dropped and counted with ``"skip"``. ``return_stats=True`` → ``(dataset,
    {"rows", "kept", "skipped": {reason: count}, "format"})``. The input dataset is untouched.

    Example:
        >>> dolly = load_dataset("databricks/databricks-dolly-15k", split="train")
        >>> ds = from_alpaca(dolly, on_invalid="skip")
        >>> ds[0]["messages"][1]["role"], ds[0]["source"]
        ('assistant', 'dolly')
    """
    check_columns(dataset, instruction_column)
    input_column = _column(dataset, input_column, ("input", "context"), "input_column", required=False)
    output_column = _column(dataset, output_column, ("output", "response"), "output_column")
    task_column = _column(dataset, task_column, ("category",), "task_column", required=False)
    if source is None:
        source = "dolly" if output_column == "response" or input_column == "context" else "alpaca"
    columns = [c for c in (instruction_column, input_column, output_column, task_column) if c is not None]

    def build(example):
        prompt = _text(example[instruction_column])
        extra = _text(example[input_column]) if input_column else ""
        if extra.strip():
            prompt = f"{prompt}\n\n{extra}"
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text(example[output_column])}]
        return messages, source, _text(example[task_column]) if task_column else source

    examples = dataset.select_columns(columns).with_format(None)
    return _convert(examples, build, len(dataset), on_invalid, source, output_column, return_stats)


def from_flan(
    dataset: Dataset,
    *,
    inputs_column: str = "inputs",
    targets_column: str = "targets",
    task_column: str | None = None,
    source: str = "flan",
    on_invalid: str = "raise",
    return_stats: bool = False,
) -> Dataset | tuple[Dataset, dict]:
    """FLAN-style rows (``inputs``/``targets``, the FLAN collection's format) as one user and one
    assistant turn; the task comes from ``task_name``, ``task`` or ``_task_name`` when present (else it
    is ``source``). Rows with an empty target are invalid (`ValueError` naming the row, or dropped and
    counted with ``on_invalid="skip"``); ``return_stats`` as in `from_alpaca`.

    Example:
        >>> flan = load_dataset("Muennighoff/flan", split="train[:1000]")
        >>> from_flan(flan)[0]["task"]
        'cosmos_qa'
    """
    check_columns(dataset, inputs_column, targets_column)
    task_column = _column(dataset, task_column, ("task_name", "task", "_task_name"), "task_column", required=False)
    columns = [c for c in (inputs_column, targets_column, task_column) if c is not None]

    def build(example):
        messages = [{"role": "user", "content": _text(example[inputs_column])},
                    {"role": "assistant", "content": _text(example[targets_column])}]
        return messages, source, _text(example[task_column]) if task_column else source

    examples = dataset.select_columns(columns).with_format(None)
    return _convert(examples, build, len(dataset), on_invalid, source, targets_column, return_stats)


_OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


def from_oasst(
    dataset: Dataset,
    *,
    top_k: int | None = 1,
    lang: str | Sequence[str] | None = None,
    source: str = "oasst",
    return_stats: bool = False,
) -> Dataset | tuple[Dataset, dict]:
    """OpenAssistant message trees (OASST1/OASST2: one row per message with ``message_id``, ``parent_id``,
    ``text``, ``role`` ``"prompter"``/``"assistant"``, ``rank``) as conversations.

    Paths taken (open-instruct's conversion, which LESS trains on): from each root prompt, every message
    keeps its ``top_k`` best-ranked replies (lowest ``rank`` first, unranked replies after the ranked ones,
    ties in dataset order; ``top_k=None`` keeps all), and every root-to-leaf path of that pruned tree is one
    conversation. A path ending in a prompter message is cut after its last assistant turn; a path with no
    assistant reply is dropped. Messages marked ``deleted`` or that failed review (``review_result`` false)
    are left out with their replies. ``lang`` keeps only trees whose root is in that language (or those
    languages). ``task`` is ``source``. ``return_stats=True`` → ``(dataset, {"messages", "trees",
    "kept", "skipped": {reason: count}})``.

    Example:
        >>> oasst = load_dataset("OpenAssistant/oasst1", split="train")
        >>> ds = from_oasst(oasst, lang="en")
        >>> ds[0]["messages"][0]["role"], ds[0]["source"]
        ('user', 'oasst')
    """
    check_columns(dataset, "message_id", "parent_id", "text", "role")
    if top_k is not None:
        top_k = check_positive_int("top_k", top_k)
    langs = None if lang is None else {lang} if isinstance(lang, str) else set(lang)
    wanted = [c for c in ("message_id", "parent_id", "text", "role", "rank", "lang", "deleted", "review_result")
              if c in dataset.column_names]
    table = dataset.select_columns(wanted).with_format(None).to_dict()
    n = len(dataset)
    get = {c: table.get(c, [None] * n) for c in ("rank", "lang", "deleted", "review_result")}
    skipped: dict[str, int] = {}

    def skip(reason):
        skipped[reason] = skipped.get(reason, 0) + 1

    children: dict[str, list[int]] = {}
    roots = []
    for i in range(n):
        if get["deleted"][i] is True or get["review_result"][i] is False:
            skip("deleted or failed review")
            continue
        role = table["role"][i]
        if role not in _OASST_ROLES:
            raise ValueError(f"column 'role' row {i} is {role!r}; OASST roles are {list(_OASST_ROLES)}")
        parent = table["parent_id"][i]
        if parent is None:
            roots.append(i)
        else:
            children.setdefault(parent, []).append(i)

    def order(i):
        rank = get["rank"][i]
        return (rank is None, rank if rank is not None else 0, i)

    rows = []
    for root in roots:
        if langs is not None and get["lang"][root] not in langs:
            skip("other language")
            continue
        stack = [[root]]
        while stack:
            path = stack.pop()
            replies = sorted(children.get(table["message_id"][path[-1]], []), key=order)[:top_k]
            if replies:
                stack.extend(path + [r] for r in reversed(replies))  # depth first, best reply first
                continue
            messages = [{"role": _OASST_ROLES[table["role"][i]], "content": _text(table["text"][i])} for i in path]
            while messages and messages[-1]["role"] != "assistant":
                messages.pop()
            problem = message_problem(messages) if messages else ("no assistant turn", "")
            if problem is not None:
                skip(problem[0])
                continue
            rows.append({"messages": messages, "source": source, "task": source})
    out = instruction_dataset(rows)
    if not return_stats:
        return out
    return out, {"messages": n, "trees": len(roots), "kept": len(out), "skipped": dict(sorted(skipped.items()))}
