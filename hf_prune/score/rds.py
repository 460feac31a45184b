"""Representation similarity to target tasks (RDS+; Ivison et al. 2025): cosine of embeddings, per task.

RDS+ ("Large-Scale Data Selection for Instruction Tuning") scores a pool row ``x`` for a target task
``j`` with examples ``D_j`` by the cosine of its embedding (`hf_prune.embed.HiddenStateEmbedder`: the
base model's weighted-mean-pooled last hidden states) to theirs, reduced over the task's examples,

    s_j(x) = max_{y ∈ D_j} cos(x, y)        (``example_reduce="max"``, RDS+'s default)
    s_j(x) = mean_{y ∈ D_j} cos(x, y)       (``example_reduce="mean"``, LESS's reduction within a task)

and then selects round-robin over tasks (`hf_prune.select.round_robin` on the per-task column), so no
task's score scale dominates. For a plain top-k the tasks are reduced to one score, ``max_j s_j(x)``
(``reduce="max"``, LESS's rule) or the mean over tasks (``reduce="mean"``). ``reduce`` means the same
as in `hf_prune.score.less` (over tasks); ``example_reduce`` is the reduction within a task.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from datasets import Dataset

from ..ops.checks import check_choice, check_columns, check_new_column, check_positive_int
from ..ops.columns import add_column, read_matrix
from ..ops.device import resolve_device
from ..ops.matrix import open_matrix
from ..provenance import input_fingerprint, with_provenance
from .less import _unit_rows, dataset_tasks

__all__ = ["rds"]

_REDUCE = ("max", "mean")


def rds(
    pool: Dataset,
    targets: Dataset,
    *,
    embedding_column: str = "emb",
    target_column: str | None = None,
    task_column: str | None = "task",
    tasks: Sequence | None = None,
    example_reduce: str = "max",
    reduce: str = "max",
    output_column: str = "rds",
    per_task_column: str | None = None,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    chunk_size: int = 4096,
) -> Dataset:
    """Add each pool row's representation similarity to the target tasks (RDS+), per task and reduced.

    For pool row ``x`` and task ``j``: the cosine of ``x`` to each of the task's target embeddings,
    reduced by ``example_reduce`` (``"max"``: RDS+; ``"mean"``: LESS's within-task mean); the score
    in ``output_column`` is the ``reduce`` (``"max"`` or ``"mean"``) of those ``J`` values over the
    tasks. With ``per_task_column`` the ``J`` values are written too, as one fixed-length float32
    list per row, the input of `hf_prune.select.round_robin` (RDS+'s selection).

    Choices (all tested):

    - Task order: the sorted distinct values of the targets' ``task_column`` (ClassLabel ids give
      their names), or ``tasks`` as given. The order is recorded as the provenance step's ``tasks``.
    - A zero vector has no direction: its cosine with anything is 0.
    - The pool is streamed ``chunk_size`` rows at a time (`hf_prune.ops.matrix.open_matrix`); the
      targets are held (``M × d``), so memory is ``chunk_size × M`` similarities plus the ``N × J`` scores.

    Args:
        pool: the rows to score, with ``embedding_column`` (never modified).
        targets: the target tasks' examples (e.g. validation rows), embedded by the same embedder.
        embedding_column: the pool's embedding column.
        target_column: the targets' embedding column; default ``embedding_column``.
        task_column: the targets' task column; ``None``: all targets are one task.
        tasks: the task names in the order of the per-task column, each with at least one target row;
            target rows of tasks not listed are an error. Default: every task, sorted.
        example_reduce: ``"max"`` (RDS+) or ``"mean"`` over a task's target examples.
        reduce: ``"max"`` or ``"mean"`` over tasks, for ``output_column``.
        output_column: the reduced float32 score.
        per_task_column: if given, the ``J`` per-task scores as a float32 list column.
        overwrite: replace existing output columns.
        device: where the products run (``None``: CUDA when available).
        chunk_size: pool rows scored at a time.

    Raises:
        KeyError: a missing embedding or task column.
        ValueError: empty pool or targets, a task with no target examples, pool and target embeddings
            of different dimensions, NaN/inf embeddings, a bad ``reduce``/``example_reduce``, an
            existing output column without ``overwrite``.

    Example:
        >>> emb = hp.embed.HiddenStateEmbedder(model, tokenizer=tok, output_column="h")
        >>> pool, targets = emb.map(pool), emb.map(targets)
        >>> pool = hp.score.rds(pool, targets, embedding_column="h", task_column="task", per_task_column="rds_tasks")
        >>> sub = hp.select.round_robin(pool, size=1000, score_column="rds_tasks")   # RDS+
    """
    for name, value in (("pool", pool), ("targets", targets)):
        if not isinstance(value, Dataset):
            raise TypeError(f"`{name}` must be a datasets.Dataset, got {type(value).__name__}")
    target_column = embedding_column if target_column is None else target_column
    check_columns(pool, embedding_column)
    check_columns(targets, target_column, task_column)
    if len(pool) == 0:
        raise ValueError("`pool` is empty: nothing to score")
    if len(targets) == 0:
        raise ValueError("`targets` is empty: every task needs at least one target example")
    example_reduce = check_choice("example_reduce", example_reduce, _REDUCE)
    reduce = check_choice("reduce", reduce, _REDUCE)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    check_new_column(pool, output_column, overwrite)
    if per_task_column is not None:
        if per_task_column == output_column:
            raise ValueError(f"`per_task_column` and `output_column` are both {output_column!r}")
        check_new_column(pool, per_task_column, overwrite)

    names, codes = ([None], np.zeros(len(targets), np.int64)) if task_column is None else \
        dataset_tasks(targets, task_column)
    names, codes = _order_tasks(names, codes, tasks, task_column)
    target = read_matrix(targets, target_column)
    matrix = open_matrix(pool, embedding_column)
    if matrix.dim != target.shape[1]:
        raise ValueError(
            f"pool column {embedding_column!r} has dimension {matrix.dim} but targets column {target_column!r} has "
            f"{target.shape[1]}: embed both with the same embedder"
        )

    dev = resolve_device(device)
    order = np.argsort(codes, kind="stable")  # each task's targets contiguous: a slice per task
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    y = _unit_rows(torch.tensor(target[order], dtype=torch.float32, device=dev))
    per_task = np.empty((len(pool), len(names)), dtype=np.float32)
    for start, block in matrix.blocks(chunk_size):
        sims = _unit_rows(torch.tensor(block, device=dev)) @ y.T  # a copy: Arrow-backed blocks are read-only
        for j in range(len(names)):
            part = sims[:, bounds[j] : bounds[j + 1]]
            scores = part.amax(dim=1) if example_reduce == "max" else part.mean(dim=1)
            per_task[start : start + len(block), j] = scores.cpu().numpy()
    reduced = per_task.max(axis=1) if reduce == "max" else per_task.mean(axis=1, dtype=np.float64)
    result = add_column(pool, output_column, reduced.astype(np.float32), overwrite=overwrite)
    if per_task_column is not None:
        result = add_column(result, per_task_column, per_task, overwrite=overwrite)
    params = {
        "embedding_column": embedding_column, "target_column": target_column, "task_column": task_column,
        "targets": {"dataset_fingerprint": input_fingerprint(targets), "rows": len(targets)},
        "tasks": names, "examples_per_task": np.diff(bounds).tolist(), "example_reduce": example_reduce,
        "reduce": reduce, "output_column": output_column, "per_task_column": per_task_column,
    }
    return with_provenance(result, pool, method="score.rds", params=params)


def _order_tasks(names: list, codes: np.ndarray, tasks: Sequence | None, task_column: str | None):
    """``(names, codes)`` re-coded to the order of ``tasks``; every listed task must have target rows."""
    if tasks is None:
        return names, codes
    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Sequence) or not len(tasks):
        raise ValueError(f"`tasks` must be a non-empty list of task names, got {tasks!r}")
    tasks = [t.item() if isinstance(t, np.generic) else t for t in tasks]
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"`tasks` lists a task twice: {tasks!r}")
    missing = [t for t in tasks if t not in names]
    if missing:
        raise ValueError(f"task {missing[0]!r} of `tasks` has no target examples (no row of `targets` has "
                         f"{task_column}={missing[0]!r}); its targets have tasks {names}")
    unlisted = [n for n in names if n not in tasks]
    if unlisted:
        raise ValueError(f"`targets` has rows of task {unlisted[0]!r}, which `tasks` does not list")
    position = {name: tasks.index(name) for name in names}
    return tasks, np.array([position[n] for n in names], dtype=np.int64)[codes]
