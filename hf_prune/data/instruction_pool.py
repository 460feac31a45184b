"""The pool to prune and the target tasks' validation and test rows, as LESS sets them up.

`build_instruction_pool` mixes instruction sources (ShareGPT, non-target BIG-bench tasks, Hub sets in the
schema of `hf_prune.data.instructions`) into the ``train`` pool and splits target tasks into a few
``validation`` rows per task and held-out ``test`` rows, with leakage from the targets removed first.

Example:
    >>> pool = build_instruction_pool(pool_size=3000, test_per_task=20)
    >>> sorted(pool)
    ['test', 'train', 'validation']
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, Value, concatenate_datasets

from ..ops.arrow import column_array
from ..ops.checks import check_bool, check_columns, check_positive_int, check_seed, seed_int
from .bigbench import BBH_TASKS, load_bigbench
from .instructions import EVAL_FEATURES, INSTRUCTION_FEATURES
from .sharegpt import load_sharegpt

__all__ = ["build_instruction_pool"]


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
