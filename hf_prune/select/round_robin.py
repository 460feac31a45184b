"""Task-balanced round-robin over per-task scores (RDS+, Ivison et al. 2025; LESS-RR).

Targeted instruction selection scores every pool row for each of ``J`` target tasks
(`hf_prune.score.rds` or `hf_prune.score.less` with ``per_task_column=``). Taking the top rows of
``max_j s_j`` lets the task whose scores run highest take most of the budget; round-robin instead
lets the tasks take turns, each picking its best row not taken yet, so every task gets its share
whatever its score scale ("A Critical Look at Targeted Instruction Selection", 2026: best at small
budgets).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from datasets import Dataset, Value

from ..ops.checks import check_columns
from ..ops.columns import read_vector
from ..ops.matrix import open_matrix
from ._ordered import run_ordered_selection
from .registry import selector

__all__ = ["round_robin", "round_robin_order"]


def round_robin_order(scores: np.ndarray, budget: int, initial: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """``(picks, gains)``: the round-robin pick order over the columns (tasks) of an ``(n, J)`` score array.

    Turn ``t`` belongs to task ``t mod J``; on its turn a task takes its highest-scoring row not yet
    taken, ties to the lower row position. ``initial`` rows are the first picks (turns
    ``0 … m−1``), so the rotation continues with task ``m mod J`` and a run from the first ``m``
    picks of another run continues it exactly. ``gains`` holds each pick's score for the task that
    took it (``NaN`` for the initial rows). A task only ever looks at its ``budget`` best rows: fewer
    than ``budget`` rows are taken when it is its turn, so one of those is free.

    Example:
        >>> scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.2, 0.6]])   # rows × tasks
        >>> round_robin_order(scores, 3)[0]            # task 0 takes row 0, task 1 row 1, task 0 row 2
        array([0, 1, 2])
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]
    n, tasks = scores.shape
    if not 0 <= budget <= n:
        raise ValueError(f"`budget` must be in [0, {n}], got {budget}")
    initial = np.asarray(initial, dtype=np.int64)
    taken = np.zeros(n, dtype=bool)
    taken[initial] = True
    orders = [_best_rows(scores[:, j], budget) for j in range(tasks)]
    pointers = [0] * tasks
    picks = initial.tolist()
    gains = [np.nan] * len(picks)
    turn = len(picks)
    taken_list = taken.tolist()  # a Python list: the loop does scalar reads only
    while len(picks) < budget:
        task = turn % tasks
        order, p = orders[task], pointers[task]
        while taken_list[order[p]]:
            p += 1
        row = int(order[p])
        pointers[task] = p + 1
        taken_list[row] = True
        picks.append(row)
        gains.append(float(scores[row, task]))
        turn += 1
    return np.asarray(picks, dtype=np.int64), np.asarray(gains, dtype=np.float64)


def _best_rows(scores: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` highest-scoring positions, best first, equal scores in row order (a stable sort's first
    ``count``), sorting only the rows that score at least the ``count``-th best score."""
    if count == 0:
        return np.empty(0, dtype=np.int64)
    if 2 * count >= len(scores):
        return np.argsort(-scores, kind="stable")[:count]
    cut = -np.partition(-scores, count - 1)[count - 1]
    candidates = np.flatnonzero(scores >= cut)  # every row tied with the cut is here, in row order
    return candidates[np.argsort(-scores[candidates], kind="stable")[:count]]


@selector(family="score-based", needs=("score_column",))
def round_robin(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    score_column: str,
    label_column: str | None = None,
    rank_column: str | None = None,
    gain_column: str | None = None,
    overwrite: bool = False,
    initial_subset: Sequence[int] | None = None,
    seed: int | np.random.Generator = 0,
) -> Dataset:
    """Keep rows by task-balanced round-robin: tasks take turns picking their best row not yet taken.

    ``score_column`` holds the per-task scores of each row, a fixed-length list of ``J`` numbers
    (higher = better for that task), e.g. the ``per_task_column`` of `hf_prune.score.rds` (RDS+) or
    `hf_prune.score.less` (LESS-RR); a scalar score column is one task, which is `top_k`.

    Rules (`round_robin_order`):

    - **Task order**: the list positions ``0 … J−1`` (the scorers write tasks in sorted order of
      their names, recorded as their provenance step's ``tasks``); turn ``t`` is task ``t mod J``.
    - **Ties** within a task go to the lower row position. A row scoring best for several tasks is
      taken by the first of them to have a turn; the others move on to their next row.
    - **Uneven budgets**: a budget of ``q·J + r`` rows gives ``q + 1`` picks to tasks ``0 … r−1`` and
      ``q`` to the others.
    - **Ordered**: the picks are made one by one, so a smaller budget's rows are the first picks of a
      larger one (``rank_column`` writes the pick order; `hf_prune.select.prefix` cuts it).
      ``gain_column`` writes each pick's score for the task that took it. ``initial_subset`` rows are
      the first picks, in the given order, and count as turns: the rotation continues with task
      ``len(initial_subset) mod J``, so a run started from another run's first ``m`` picks continues it.
    - With ``label_column`` the budget is split per class and the round-robin runs inside each class.

    Args:
        dataset: the input Dataset (not modified).
        fraction / size: the budget (exactly one).
        score_column: per-task scores (fixed-length numeric list) or one scalar score per row; NaN/inf
            are rejected.
        label_column: split the budget per class.
        rank_column: if given, an int64 column with each kept row's pick position (0 first).
        gain_column: if given, a float64 column with the picking task's score (NaN for initial rows).
        overwrite: replace an existing ``rank_column`` / ``gain_column``.
        initial_subset: row positions kept first (above).
        seed: accepted for the common selector signature; nothing here is random.

    Example:
        >>> pool = hp.score.rds(pool, targets, embedding_column="h", per_task_column="rds_tasks")
        >>> sub = hp.select.round_robin(pool, size=1000, score_column="rds_tasks", rank_column="rank")
        >>> first_100 = hp.select.prefix(sub, size=100)   # the size=100 selection
    """
    check_columns(dataset, score_column)
    if isinstance(dataset.features[score_column], Value):
        scores = read_vector(dataset, score_column, dtype=np.float64)[:, None]
    else:
        scores = open_matrix(dataset, score_column).to_numpy(np.float64)

    def order(rows, budget, rng, initial):
        return round_robin_order(scores[rows], budget, initial)

    return run_ordered_selection(
        dataset, method="round_robin", params={"score_column": score_column, "tasks": int(scores.shape[1])},
        fraction=fraction, size=size, seed=seed, label_column=label_column, order=order, rank_column=rank_column,
        gain_column=gain_column, overwrite=overwrite, initial_subset=initial_subset,
    )
