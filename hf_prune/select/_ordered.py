"""Ordered greedy selections: the pick order (``rank_column=``), gains (``gain_column=``) and ``initial_subset=``.

A greedy selector picks rows one at a time, so its picks have an order, and a smaller budget's picks
are the first picks of a larger budget. A selector that hands `run_ordered_selection` an
``order(rows, budget, rng, initial)`` function (instead of `run_selection`'s ``pick``) gets, with
the same semantics everywhere:

* ``rank_column``: an int64 column with each kept row's pick position (0 = first pick; per class
  when ``label_column`` is given, so every class has its own 0, 1, 2, …);
* ``gain_column``: a float64 column with the value the selector documents for each pick (only for
  selectors whose ``order`` returns ``(picks, gains)``);
* ``initial_subset``: row positions in the input that are kept first, in the given order; the greedy
  continues from them and they count towards the budget (per class: towards their own class's
  budget, which they must not exceed).

``order`` returns positions *into* ``rows`` in the order they were picked; its first picks must be
``initial`` (positions into ``rows`` of this group's initial rows, in the given order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from datasets import Dataset, Value

from ..ops.arrow import fingerprint
from ..ops.checks import check_columns, check_new_column, check_positive_int
from ..ops.columns import add_column, class_groups, read_vector
from ..provenance import provenance, stamp_output
from ._core import ROW_ID, finalize, run_selection, split_budget
from .registry import derive_fingerprint

__all__ = ["check_initial_subset", "check_output_name", "run_ordered_selection", "prefix"]

Order = Callable[[np.ndarray, int, np.random.Generator, np.ndarray], Any]


def check_output_name(dataset: Dataset, name: str | None, parameter: str, overwrite: bool) -> None:
    """Check that ``name`` (the value of ``parameter``) can be written as a new column of ``dataset``."""
    if name is None:
        return
    if not isinstance(name, str) or not name or name == ROW_ID:
        raise ValueError(f"`{parameter}` must be a column name other than {ROW_ID!r}, got {name!r}")
    check_new_column(dataset, name, overwrite)


def check_initial_subset(
    initial_subset: Sequence[int] | None, n: int, *, budget: int | None = None, name: str = "initial_subset",
) -> np.ndarray:
    """``initial_subset`` as an int64 array of distinct row positions in ``[0, n)`` (empty for ``None``).

    With ``budget``, more than ``budget`` rows is an error too. ``name`` is the parameter the
    messages name (the greedy order functions call theirs ``initial``).

    Example:
        >>> check_initial_subset([4, 1], 10)
        array([4, 1])
    """
    if initial_subset is None:
        return np.empty(0, dtype=np.int64)
    values = np.asarray(initial_subset)
    if values.ndim != 1 or (values.size and not np.issubdtype(values.dtype, np.integer)):
        raise ValueError(f"`{name}` must be a sequence of row positions, got {initial_subset!r}")
    values = values.astype(np.int64)
    if values.size and (values.min() < 0 or values.max() >= n or len(np.unique(values)) != len(values)):
        raise ValueError(f"`{name}` must hold distinct row positions in [0, {n})")
    if budget is not None and len(values) > budget:
        raise ValueError(f"`{name}` has {len(values)} rows, more than the budget ({budget})")
    return values


def run_ordered_selection(
    dataset: Dataset,
    *,
    method: str,
    params: dict[str, Any],
    fraction: float | None,
    size: int | None,
    seed: int | np.random.Generator,
    label_column: str | None,
    order: Order,
    rank_column: str | None = None,
    gain_column: str | None = None,
    overwrite: bool = False,
    initial_subset: Sequence[int] | None = None,
    collect: Sequence[list] = (),
) -> Dataset:
    """`run_selection` for a greedy ``order(rows, budget, rng, initial)``, writing the pick order and gains.

    ``order`` returns the picks (positions into ``rows``) in pick order, or ``(picks, gains)``; it is
    called once per group with that group's budget, its seeded generator and ``initial``, the
    positions into ``rows`` of the group's ``initial_subset`` rows in the given order. The provenance
    step records ``rank_column`` and ``initial_subset`` (and ``gain_column`` when given).
    ``collect``: lists ``order`` appends to, as in `run_selection` (so they survive a run on Ray).

    Example:
        >>> def order(rows, budget, rng, initial):  # keep the initial rows, then the lowest positions
        ...     rest = np.setdiff1d(np.arange(len(rows)), initial)
        ...     return np.concatenate([initial, rest])[:budget]
        >>> sub = run_ordered_selection(ds, method="first_rows", params={}, fraction=None, size=3, seed=0,
        ...                             label_column=None, order=order, rank_column="rank", initial_subset=[7])
        >>> list(sub["row_id"]), list(sub["rank"])
        ([0, 1, 7], [1, 2, 0])
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"expected a datasets.Dataset, got {type(dataset).__name__}")
    check_output_name(dataset, rank_column, "rank_column", overwrite)
    check_output_name(dataset, gain_column, "gain_column", overwrite)
    if rank_column is not None and rank_column == gain_column:
        raise ValueError(f"`rank_column` and `gain_column` must differ, both are {rank_column!r}")
    initial = check_initial_subset(initial_subset, len(dataset))
    # Each group's (kept positions in pick order, gains): appended by `pick`, which on Ray runs in a
    # task, so run_selection sends the appends back (`collect`) and the columns are built from them here.
    picked: list[tuple[np.ndarray, np.ndarray | None]] = []

    def pick(rows, budget, rng):
        mine = initial[np.isin(initial, rows)]
        _check_initial_budget(len(mine), budget, label_column)
        # Group rows are sorted positions, so this group's initial rows map into it by bisection.
        result = order(rows, budget, rng, np.searchsorted(rows, mine))
        picks, gains = result if isinstance(result, tuple) else (result, None)
        picks = np.asarray(picks, dtype=np.int64)
        if len(picks) != budget or not np.array_equal(picks[: len(mine)], np.searchsorted(rows, mine)):
            raise RuntimeError(f"{method}: the greedy order must start with this group's initial rows")
        if gain_column is not None and gains is None:
            raise TypeError(f"{method} has no gains to write into `gain_column`")
        picked.append((rows[picks], None if gain_column is None else np.asarray(gains, dtype=np.float64)))
        return picks

    params = {**params, "rank_column": rank_column,
              "initial_subset": None if initial_subset is None else initial.tolist()}
    if gain_column is not None:
        params["gain_column"] = gain_column
    result = run_selection(dataset, method=method, params=params, fraction=fraction, size=size, seed=seed,
                           label_column=label_column, pick=pick, collect=(picked, *collect))
    rank = np.full(len(dataset), -1, dtype=np.int64)
    gain = np.full(len(dataset), np.nan, dtype=np.float64)
    for positions, gains in picked:
        rank[positions] = np.arange(len(positions))
        if gains is not None:
            gain[positions] = gains
    if len(initial) and (rank[initial] < 0).any():
        # run_selection skips groups whose budget is 0: an initial row there would be dropped silently.
        _check_initial_budget(int((rank[initial] < 0).sum()), 0, label_column)
    # Kept rows come back in input order, which is the order of the positions that got a rank.
    kept = np.flatnonzero(rank >= 0)
    if rank_column is not None:
        result = add_column(result, rank_column, rank[kept], overwrite=overwrite, feature=Value("int64"))
    if gain_column is not None:
        result = add_column(result, gain_column, gain[kept], overwrite=overwrite, feature=Value("float64"))
    return result


def _check_initial_budget(count: int, budget: int, label_column: str | None) -> None:
    if count <= budget:
        return
    if label_column is None:
        raise ValueError(f"`initial_subset` has {count} rows, more than the budget ({budget})")
    raise ValueError(
        f"`initial_subset` has {count} rows in a group whose budget is {budget} "
        f"(the budget is split per `label_column`={label_column!r})"
    )


def prefix(dataset: Dataset, *, size: int, rank_column: str = "rank") -> Dataset:
    """The first ``size`` picks of an ordered selection: its rows whose rank is below the budget.

    ``dataset`` is what an ordered selector returned with ``rank_column=`` (or a `prefix` of it),
    unchanged since: its last provenance step must be that selection and must still describe its rows
    (a ``filter`` or ``shuffle`` in between is an error). The result keeps the columns and the
    ``row_id`` of ``dataset`` (so the ids still map to the original data) and gets a provenance step
    ``"prefix"`` of its own, so it is not flagged stale the way ``dataset.filter(rank < size)`` is.

    Without a ``label_column`` in that selection, the rows with ``rank < size`` are kept: exactly the
    rows a run with ``size=size`` picks, for every selector whose order does not depend on the budget
    (the greedy ones; not TypiClust with its default, budget-sized ``n_clusters``, nor ProbCover
    with ``delta=None`` and no ``n_pseudo_labels``: their docstrings say how to fix those).
    With one, ranks restart at 0 in every class:
    ``size`` is split over the classes in proportion to the rows each class has in ``dataset`` (the
    larger selection's per-class budgets), by largest remainders as `split_budget` does, and each class
    keeps its rows with ``rank <`` its share. A direct per-class run splits ``size`` over the classes of
    the input instead, so the two can differ by rounding (at most one row per class).

    Args:
        dataset: the ordered selection (never modified).
        size: the number of rows to keep, in ``[1, len(dataset)]``.
        rank_column: the pick-order column that selection wrote.

    Returns:
        ``size`` rows of ``dataset`` in its row order.

    Raises:
        KeyError: ``rank_column`` (or the selection's ``label_column``) is missing.
        ValueError: a bad ``size``, a dataset that is not an unchanged ordered selection, or a rank
            column that is not a pick order (0, 1, 2, … per group).

    Example:
        >>> ranked = hp.select.k_center_greedy(ds, size=1000, embedding_column="emb", rank_column="rank")
        >>> first_100 = hp.select.prefix(ranked, size=100)  # the rows of size=100, without a second run
        >>> hp.provenance(first_100)[-1]["method"], hp.provenance(first_100)[-1]["stale"]
        ('prefix', False)
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"expected a datasets.Dataset, got {type(dataset).__name__}")
    check_columns(dataset, rank_column)
    size = check_positive_int("size", size)
    if size > len(dataset):
        raise ValueError(f"`size`={size} is larger than the number of rows ({len(dataset)})")
    steps = provenance(dataset, warn=False)
    if not steps or steps[-1]["params"].get("rank_column") != rank_column or steps[-1]["stale"]:
        raise ValueError(
            f"`dataset` must be an ordered selection made with rank_column={rank_column!r} and unchanged since "
            "(its last provenance step is that selection, still describing its rows)"
        )
    label_column = steps[-1]["params"].get("label_column")
    rank = read_vector(dataset, rank_column, dtype=np.float64)
    _, groups = class_groups(dataset, label_column)
    budgets = split_budget(np.array([len(group) for group in groups]), size)
    keep = []
    for rows, budget in zip(groups, budgets):
        ranks = rank[rows]
        if not np.array_equal(np.sort(ranks), np.arange(len(rows))):
            where = "" if label_column is None else f" per {label_column!r} class"
            raise ValueError(f"column {rank_column!r} is not a pick order (0, 1, 2, …{where})")
        keep.append(rows[ranks < budget])
    params = {"size": size, "rank_column": rank_column, "label_column": label_column}
    result = finalize(dataset, np.concatenate(keep), method="prefix", params=params)
    return stamp_output(result, derive_fingerprint(fingerprint(dataset), "prefix", params))
