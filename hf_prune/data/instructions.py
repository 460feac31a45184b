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

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, Features, Value, concatenate_datasets

from ..ops.arrow import column_array
from ..ops.checks import check_bool, check_choice, check_columns, check_positive_int, check_seed, seed_int

__all__ = [
    "INSTRUCTION_ROLES",
    "MESSAGES_FEATURE",
    "INSTRUCTION_FEATURES",
    "EVAL_FEATURES",
    "message_problem",
    "check_instructions",
    "instruction_dataset",
    "from_alpaca",
    "from_flan",
    "from_oasst",
    "build_instruction_pool",
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


# --- converters from the common Hub formats -------------------------------------------------------

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


def instruction_dataset(rows: Sequence[dict], features: Features = INSTRUCTION_FEATURES) -> Dataset:
    """Rows (dicts with the schema's columns) as a Dataset with the schema's features, also when empty.

    Example:
        >>> instruction_dataset([]).column_names
        ['messages', 'source', 'task']
    """
    if not rows:
        return Dataset.from_dict({k: [] for k in features}, features=features)
    return Dataset.from_list(list(rows), features=features)


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


# --- the pool to prune, and the target tasks' validation and test rows ------------------------------

def _parent(task: str) -> str:
    return task.split(":", 1)[0]


def _user_prompts(dataset: Dataset, messages_column: str = "messages") -> tuple[pa.Array, np.ndarray]:
    """Every user turn's content and the row it belongs to (vectorised over the list<struct> column)."""
    messages = column_array(dataset, messages_column)
    rows = np.asarray(pc.list_parent_indices(messages))
    turns = pc.list_flatten(messages)
    user = np.asarray(pc.equal(pc.struct_field(turns, "role"), "user").fill_null(False))
    contents = pc.utf8_trim_whitespace(pc.struct_field(turns, "content"))
    return contents.filter(pa.array(user)), rows[user]


def _largest_remainder(total: int, shares: dict[str, float]) -> dict[str, int]:
    raw = {name: total * share for name, share in shares.items()}
    counts = {name: int(np.floor(value)) for name, value in raw.items()}
    order = sorted(raw, key=lambda name: (-(raw[name] - counts[name]), list(shares).index(name)))
    for name in order[: total - sum(counts.values())]:
        counts[name] += 1
    return counts


def _source_sizes(available: dict[str, int], sizes, pool_size, shares) -> dict[str, int]:
    if sizes is not None and (pool_size is not None or shares is not None):
        raise ValueError("pass either `sizes` or `pool_size` (with optional `shares`), not both")
    if shares is not None and pool_size is None:
        raise ValueError("`shares` needs `pool_size`")
    if sizes is not None:
        unknown = sorted(set(sizes) - set(available))
        if unknown:
            raise KeyError(f"`sizes` names {unknown}, which are not among the sources {list(available)}")
        wanted = {name: available[name] if sizes.get(name) is None else
                  check_positive_int(f"sizes[{name!r}]", sizes[name], minimum=0) for name in available}
    elif pool_size is not None:
        pool_size = check_positive_int("pool_size", pool_size)
        shares = dict(shares) if shares is not None else {name: 1.0 for name in available}
        unknown = sorted(set(shares) - set(available))
        if unknown:
            raise KeyError(f"`shares` names {unknown}, which are not among the sources {list(available)}")
        values = np.array([shares.get(name, 0.0) for name in available], dtype=float)
        if not np.isfinite(values).all() or (values < 0).any() or values.sum() <= 0:
            raise ValueError(f"`shares` must be non-negative numbers with a positive sum, got {shares}")
        wanted = _largest_remainder(pool_size, dict(zip(available, values / values.sum())))
    else:
        wanted = dict(available)
    for name, n in wanted.items():
        if n > available[name]:
            raise ValueError(f"source {name!r} has {available[name]} rows once target tasks are removed; "
                             f"{n} were asked for")
    return wanted


def _with_ids(dataset: Dataset, name: str, positions: np.ndarray) -> list[str]:
    if "id" in dataset.column_names:
        ids = column_array(dataset, "id").take(pa.array(positions, type=pa.int64())).cast(pa.string())
        return [str(i) for i in ids.to_pylist()]
    return [f"{name}/{int(i)}" for i in positions]


def _offline_inputs(sources, targets, target_tasks, bigbench, source_examples_per_task, target_cap):
    """ShareGPT + non-target BIG-bench tasks, and the target tasks from BIG-bench, for what is ``None``."""
    # Imported here: the loaders build on this module's schema, so they cannot be imported at its top.
    from .bigbench import load_bigbench
    from .sharegpt import load_sharegpt

    names = [target_tasks] if isinstance(target_tasks, str) else list(target_tasks)
    if targets is None:
        targets = load_bigbench(bigbench, tasks=names, max_examples_per_task=target_cap, progress=False)
    if sources is None:
        blocked = sorted({_parent(t) for t in column_array(targets, "task").to_pylist()})
        sources = {"sharegpt": load_sharegpt(progress=False),
                   "bigbench": load_bigbench(bigbench, exclude=blocked, max_examples_per_task=source_examples_per_task,
                                             progress=False)}
    return sources, targets


def build_instruction_pool(
    sources: Mapping[str, Dataset] | None = None,
    targets: Dataset | None = None,
    *,
    sizes: Mapping[str, int | None] | None = None,
    pool_size: int | None = None,
    shares: Mapping[str, float] | None = None,
    validation_per_task: int = 5,
    test_per_task: int | None = None,
    seed: int | np.random.Generator = 0,
    return_summary: bool = False,
    target_tasks: str | Sequence[str] | None = None,
    bigbench: str | None = None,
    source_examples_per_task: int = 20,
) -> DatasetDict | tuple[DatasetDict, dict[str, Any]]:
    """The pool to prune (``train``) mixed from several sources, and the target tasks' ``validation`` and
    ``test`` rows, as LESS sets it up (a few validation examples per target task guide the selection).

    ``sources`` maps a name to an instruction Dataset (``messages``/``source``/``task``, e.g. ShareGPT,
    non-target BIG-bench tasks, `from_alpaca`/`from_flan`/`from_oasst` sets); ``targets`` holds the
    target tasks' rows with ``answer`` and ``choices`` (e.g. ``load_bigbench(tasks=BBH_TASKS)``).

    Offline defaults (so the recipe's ``--dataset offline`` needs only JSON options): ``targets=None``
    loads ``target_tasks`` (default `BBH_TASKS`) from BIG-bench (``bigbench``: the sdist or folder, default
    ``$HF_PRUNE_BIGBENCH``), at most ``validation_per_task + test_per_task`` rows a task when
    ``test_per_task`` is set; ``sources=None`` is ShareGPT (`load_sharegpt`) and every other BIG-bench
    task, at most ``source_examples_per_task`` rows each (target tasks and their siblings excluded).

    Leakage: before sampling, every pool row from a target task (the same ``task`` name, or the same
    parent task, so ``logical_deduction:five_objects`` leaves with a target ``logical_deduction:three_objects``)
    and every pool row with a user turn equal to a target row's user turn (after trimming whitespace) is
    removed, and counted.

    Sizes: ``sizes`` (rows per source; ``None`` or a missing name = all of that source), or ``pool_size``
    split by ``shares`` (default: equal; largest-remainder rounding, ties to the earlier source), or
    neither (every row). Each source's rows are drawn uniformly without replacement with a generator
    seeded by ``(seed, source name)`` and kept in source order; sources follow the order of ``sources``.

    Target split: per task (sorted by name) the rows are shuffled with ``(seed, task)``; the first
    ``validation_per_task`` go to ``validation``, the next ``test_per_task`` (``None``: all the others)
    to ``test``. A task with no row left for ``test`` is a `ValueError`.

    Returns a `DatasetDict`: ``train`` with ``messages``, ``source``, ``task``, ``id`` (the source's ``id``
    column, else ``"<source name>/<row>"``) and ``row_id`` (0..n-1, the positions subsets refer to);
    ``validation`` and ``test`` with ``answer`` and ``choices`` too. ``return_summary=True`` also returns
    the counts per split, source and task, the removed rows and the settings.

    Example:
        >>> targets = load_bigbench(tasks=BBH_TASKS, max_examples_per_task=60)
        >>> sources = {"sharegpt": load_sharegpt(),
        ...            "bigbench": load_bigbench(exclude=BBH_TASKS, max_examples_per_task=20)}
        >>> pool = build_instruction_pool(sources, targets, pool_size=4000, shares={"sharegpt": 0.5, "bigbench": 0.5},
        ...                               validation_per_task=5, test_per_task=50)
        >>> sorted(pool), pool["train"].num_rows
        (['test', 'train', 'validation'], 4000)
    """
    validation_per_task = check_positive_int("validation_per_task", validation_per_task, minimum=0)
    source_examples_per_task = check_positive_int("source_examples_per_task", source_examples_per_task)
    if test_per_task is not None:
        test_per_task = check_positive_int("test_per_task", test_per_task)
    if targets is not None and target_tasks is not None:
        raise ValueError("`target_tasks` picks BIG-bench tasks when `targets` is None; pass one of them")
    if sources is None or targets is None:
        from .bigbench import BBH_TASKS

        cap = validation_per_task + test_per_task if test_per_task is not None else None
        sources, targets = _offline_inputs(sources, targets, target_tasks if target_tasks is not None else BBH_TASKS,
                                           bigbench, source_examples_per_task, cap)
    if not isinstance(sources, Mapping) or not sources:
        raise ValueError("`sources` must be a non-empty mapping of source name to instruction Dataset")
    for name, dataset in sources.items():
        try:
            check_columns(dataset, "messages", "source", "task")
        except (KeyError, TypeError) as error:
            raise type(error)(f"source {name!r}: {error.args[0]}") from error
    check_columns(targets, "messages", "source", "task", "answer", "choices")
    seed = seed_int(check_seed(seed))
    return_summary = check_bool("return_summary", return_summary)

    target_tasks = column_array(targets, "task").to_numpy(zero_copy_only=False).astype(str)
    if len(target_tasks) == 0:
        raise ValueError("`targets` is empty")
    target_names = set(target_tasks.tolist())
    blocked = target_names | {_parent(t) for t in target_names}
    target_prompts = pc.unique(_user_prompts(targets)[0])

    available, keep, removed_task, removed_prompt = {}, {}, {}, {}
    for name, dataset in sources.items():
        tasks = column_array(dataset, "task").to_numpy(zero_copy_only=False).astype(str)
        names, inverse = np.unique(tasks, return_inverse=True)
        from_target = np.array([t in blocked or _parent(t) in blocked for t in names], dtype=bool)[inverse] \
            if len(tasks) else np.zeros(0, dtype=bool)
        prompts, rows = _user_prompts(dataset)
        same_prompt = np.zeros(len(dataset), dtype=bool)
        same_prompt[rows[np.asarray(pc.is_in(prompts, value_set=target_prompts))]] = True
        ok = ~from_target & ~same_prompt
        keep[name] = np.flatnonzero(ok)
        available[name] = len(keep[name])
        removed_task[name], removed_prompt[name] = int(from_target.sum()), int((same_prompt & ~from_target).sum())
    wanted = _source_sizes(available, sizes, pool_size, shares)

    parts, ids = [], []
    for name, dataset in sources.items():
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        chosen = np.sort(rng.choice(keep[name], size=wanted[name], replace=False)) if wanted[name] else \
            np.zeros(0, dtype=np.int64)
        part = dataset.select_columns(["messages", "source", "task"]).select(chosen)
        parts.append(part if part.features == INSTRUCTION_FEATURES else part.cast(INSTRUCTION_FEATURES))
        ids += _with_ids(dataset, name, chosen)
    train = concatenate_datasets(parts).flatten_indices()
    train = train.add_column("id", ids, feature=Value("string"))
    train = train.add_column("row_id", np.arange(len(train), dtype=np.int64), feature=Value("int64"))

    validation_rows, test_rows = [], []
    for task in sorted(target_names):
        rows = np.flatnonzero(target_tasks == task)
        rows = rows[np.random.default_rng([seed, zlib.crc32(task.encode())]).permutation(len(rows))]
        if len(rows) <= validation_per_task:
            raise ValueError(f"target task {task!r} has {len(rows)} rows: none left for `test` after "
                             f"validation_per_task={validation_per_task}")
        validation_rows.append(rows[:validation_per_task])
        rest = rows[validation_per_task:]
        test_rows.append(rest if test_per_task is None else rest[:test_per_task])

    def eval_split(positions):
        positions = np.sort(np.concatenate(positions)) if positions else np.zeros(0, dtype=np.int64)
        split = targets.select_columns(list(EVAL_FEATURES)).select(positions)
        if split.features != EVAL_FEATURES:
            split = split.cast(EVAL_FEATURES)
        return split.flatten_indices().add_column("id", _with_ids(targets, "target", positions),
                                                  feature=Value("string"))

    pool = DatasetDict({"train": train, "validation": eval_split(validation_rows), "test": eval_split(test_rows)})
    if not return_summary:
        return pool

    def counts(split, column):
        return {str(v["values"]): int(v["counts"]) for v in pc.value_counts(column_array(split, column)).to_pylist()}

    summary = {
        split: {"rows": len(pool[split]), "per_source": dict(sorted(counts(pool[split], "source").items())),
                "per_task": dict(sorted(counts(pool[split], "task").items()))} for split in pool
    }
    summary["sources"] = {name: {"rows": len(sources[name]), "removed_target_task_rows": removed_task[name],
                                 "removed_target_prompt_rows": removed_prompt[name], "drawn": wanted[name]}
                          for name in sources}
    summary["settings"] = {"validation_per_task": validation_per_task, "test_per_task": test_per_task, "seed": seed,
                           "sizes": dict(sizes) if sizes is not None else None, "pool_size": pool_size,
                           "shares": dict(shares) if shares is not None else None,
                           "target_tasks": sorted(target_names), "source_examples_per_task": source_examples_per_task}
    return pool, summary
