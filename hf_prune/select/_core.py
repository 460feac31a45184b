"""What every selector shares: budgets, per-class splitting, seeding, and the returned Dataset.

A selector reads its columns once as arrays, then hands a ``pick(rows, k, rng)`` function to
`run_selection`. ``rows`` are positions in the input (all rows, or one class), ``k`` the budget for
them and ``rng`` a NumPy Generator seeded from ``(seed, group)``; ``pick`` returns ``k`` distinct
positions *into* ``rows``. `run_selection` validates, splits budgets and builds the result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from datasets import Dataset, Value

from ..ops.arrow import has_indices_mapping
from ..ops.checks import check_columns, check_seed, seed_int
from ..ops.columns import add_column, class_groups
from ..provenance import with_provenance

__all__ = [
    "resolve_budget",
    "split_budget",
    "run_selection",
    "finalize",
    "group_rows",
]

ROW_ID = "row_id"
Pick = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def resolve_budget(n: int, *, fraction: float | None, size: int | None) -> int:
    """Number of rows to keep out of ``n``: exactly one of ``fraction`` (0 < f ≤ 1) or ``size``.

    ``fraction`` rounds half to even (``round(f·n)``) with at least one row kept.
    """
    if (fraction is None) == (size is None):
        raise ValueError("pass exactly one of `fraction` or `size`")
    if n == 0:
        raise ValueError("the dataset is empty")
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating, np.integer)):
            raise ValueError(f"`fraction` must be a number in (0, 1], got {fraction!r}")
        if not 0 < fraction <= 1:
            raise ValueError(f"`fraction` must be in (0, 1], got {fraction}")
        return max(1, int(round(float(fraction) * n)))
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"`size` must be an integer, got {size!r}")
    if size < 1:
        raise ValueError(f"`size` must be at least 1, got {size}")
    if size > n:
        raise ValueError(f"`size`={size} is larger than the number of rows ({n})")
    return int(size)


def split_budget(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` across groups proportionally to ``counts`` by largest remainders.

    Each group gets ``floor(total·n_c/N)``; the rows left over go to the largest fractional parts,
    ties to the earlier group. No group gets more than it has.

    Example:
        >>> split_budget(np.array([5, 3, 2]), 5)
        array([3, 1, 1])
    """
    counts = np.asarray(counts, dtype=np.int64)
    quota = total * counts / counts.sum()
    budgets = np.floor(quota).astype(np.int64)
    remainder = quota - budgets
    left = total - budgets.sum()
    order = np.lexsort((np.arange(len(counts)), -remainder))
    budgets[order[:left]] += 1
    return budgets


def group_rows(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values[rows]`` for the ``rows`` of one group: ``values`` itself (no copy) when the group is every row.

    `run_selection` hands a selector without ``label_column`` the one group ``arange(N)``.

    Example:
        >>> group_rows(x, np.arange(len(x))) is x
        True
    """
    return values if len(rows) == len(values) else values[rows]


def run_selection(
    dataset: Dataset,
    *,
    method: str,
    params: dict[str, Any],
    fraction: float | None,
    size: int | None,
    seed: int | np.random.Generator,
    label_column: str | None,
    pick: Pick,
) -> Dataset:
    """Split the budget (per class when ``label_column`` is given), call ``pick`` per group, finalize.

    ``seed`` is an int ≥ 0 or a `numpy.random.Generator`. Group ``g`` (the classes in sorted
    order, or the one group of all rows) gets ``rng = default_rng([seed, g])``. A Generator is first
    turned into an int by one draw (`hf_prune.ops.checks.seed_int`), after the other arguments are
    checked; that int is used as above and recorded as the step's ``seed``, so the same Generator
    state gives the same rows and the provenance can replay them.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"expected a datasets.Dataset, got {type(dataset).__name__}")
    check_seed(seed)
    check_columns(dataset, label_column)
    total = resolve_budget(len(dataset), fraction=fraction, size=size)
    classes, groups = class_groups(dataset, label_column)
    budgets = split_budget(np.array([len(g) for g in groups]), total)
    seed = seed_int(seed)
    chosen = []
    for group_index, (label, rows, k) in enumerate(zip(classes, groups, budgets)):
        if k == 0:
            continue
        rng = np.random.default_rng([seed, group_index])
        local = np.asarray(pick(rows, int(k), rng), dtype=np.int64)
        where = "" if label is None else f" in class {label!r}"
        if local.shape != (k,) or len(np.unique(local)) != k or local.min() < 0 or local.max() >= len(rows):
            raise RuntimeError(f"{method} returned an invalid selection{where}: expected {k} distinct rows")
        chosen.append(rows[local])
    indices = np.sort(np.concatenate(chosen))
    params = {**params, "fraction": fraction, "size": size, "seed": seed, "label_column": label_column}
    return finalize(dataset, indices, method=method, params=params)


def finalize(dataset: Dataset, indices: np.ndarray, *, method: str, params: dict[str, Any]) -> Dataset:
    """``dataset.select(sorted indices)`` with a ``row_id`` column and a provenance step.

    ``row_id`` holds each kept row's position in ``dataset``; an existing ``row_id`` is kept, so
    chained selections map back to the original data.
    """
    indices = np.sort(np.asarray(indices, dtype=np.int64))
    if ROW_ID in dataset.column_names:
        result = dataset.select(indices)
    elif not has_indices_mapping(dataset):
        # Adding the column to the unindexed table is a cheap horizontal concat; select stays lazy.
        with_ids = add_column(dataset, ROW_ID, np.arange(len(dataset), dtype=np.int64), feature=Value("int64"))
        result = with_ids.select(indices)
    else:
        result = add_column(dataset.select(indices), ROW_ID, indices, feature=Value("int64"))
    return with_provenance(result, dataset, method=method, params=params)
