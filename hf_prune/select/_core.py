"""What every selector shares: budgets, per-class splitting, seeding, and the returned Dataset.

A selector reads its columns once as arrays, then hands a ``pick(rows, k, rng)`` function to
`run_selection`. ``rows`` are positions in the input (all rows, or one class), ``k`` the budget for
them and ``rng`` a NumPy Generator seeded from ``(seed, group)``; ``pick`` returns ``k`` distinct
positions *into* ``rows``. `run_selection` validates, splits budgets and builds the result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from datasets import Dataset, Value

from ..ops.arrow import has_indices_mapping
from ..ops.checks import check_columns, check_seed, seed_int
from ..ops.columns import add_column, class_groups
from ..parallel import current_executor
from ..provenance import with_measurements, with_provenance

__all__ = [
    "resolve_budget",
    "split_budget",
    "run_selection",
    "finalize",
    "group_rows",
    "group_label",
    "pick_group",
    "task_gpus",
]

logger = logging.getLogger(__name__)

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
    collect: Sequence[list] = (),
    driver_reason: str | None = None,
) -> Dataset:
    """Split the budget (per class when ``label_column`` is given), call ``pick`` per group, finalize.

    ``seed`` is an int ≥ 0 or a `numpy.random.Generator`. Group ``g`` (the classes in sorted
    order, or the one group of all rows) gets ``rng = default_rng([seed, g])``. A Generator is first
    turned into an int by one draw (`hf_prune.ops.checks.seed_int`), after the other arguments are
    checked; that int is used as above and recorded as the step's ``seed``, so the same Generator
    state gives the same rows and the provenance can replay them.

    On Ray (inside ``hp.parallel.ray(...)``) every group with a budget is one Ray task; see
    `pick_group`. The per-partition seed rule is the rule above: the group's index in sorted class
    order, never the task or worker, decides its generator, so the merged rows equal the
    one-process call. ``pick`` and ``collect`` are put into the object store once
    (``executor.share``), so a closure that holds the column (most do) costs one copy of it per
    node, not one per task; each task then receives only its group's row positions (measured: the
    herding and GM-matching picks over a 100,000 × 128 float32 column pickle to 51.2 MB, the
    column's own 51.2 MB plus a few kB, in 0.07–0.1 s, and ``ray.put`` takes 0.02–0.35 s on one
    machine). One group (no
    ``label_column``) is one global problem that cannot be split: it runs here, on the driver, and
    the provenance says so. The step records what ran where under ``"executor"``.

    ``collect`` are lists that ``pick`` appends to (what a group measured: the k-means clusters
    used, kNN reports, the pick order). A Ray task works on its own copy of them, so it sends its
    appends back and they are appended here in group order: after the call the lists hold what
    the one-process loop leaves in them. State that ``pick`` changes in any other way stays in the
    task. ``driver_reason`` replaces the recorded reason why one group runs on the driver (a
    selector whose single group is cheap or splits inside ``pick`` says so).

    Example:
        >>> with hp.parallel.ray(address="auto"):
        ...     sub = hp.select.herding(ds, fraction=0.1, embedding_column="emb", label_column="label")
        >>> hp.provenance(sub)[-1]["executor"]["split"], hp.provenance(sub)[-1]["executor"]["tasks"]
        (True, 10)
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"expected a datasets.Dataset, got {type(dataset).__name__}")
    check_seed(seed)
    check_columns(dataset, label_column)
    total = resolve_budget(len(dataset), fraction=fraction, size=size)
    classes, groups = class_groups(dataset, label_column)
    budgets = split_budget(np.array([len(g) for g in groups]), total)
    seed = seed_int(seed)
    collect = tuple(collect)
    work = [(g, label, rows, int(k)) for g, (label, rows, k) in enumerate(zip(classes, groups, budgets)) if k > 0]
    executor = current_executor()
    if executor is not None and len(work) > 1:
        shared = executor.share((pick, collect))
        labels = [group_label(label, label_column, rows) for _, label, rows, _ in work]
        gpus = task_gpus(executor)
        outputs = executor.run_tasks(
            pick_group, [(shared, rows, k, seed, g) for g, _, rows, k in work], labels=labels,
            rows=[len(rows) for _, _, rows, _ in work], desc=f"{method} per {label_column!r} class", gpus=gpus,
        )
        facts = executor.record(groups=len(work), split=True, tasks=len(work), gpus_per_task=gpus,
                                reason=f"one task per {label_column!r} class")
    else:
        outputs = [pick_group((pick, collect), rows, k, seed, g, local=True) for g, _, rows, k in work]
        facts = None
        if executor is not None:
            if driver_reason is not None:
                reason = driver_reason
            elif label_column is None:
                reason = ("no label_column: the selection is one global problem over all rows, which cannot be "
                          "split without changing its result; it ran on the driver")
            else:
                reason = "one class has a budget: nothing to split; it ran on the driver"
            logger.info("%s on Ray: %s", method, reason)
            facts = executor.record(groups=len(work), split=False, tasks=0, reason=reason)
    chosen = []
    for (_, label, rows, k), (local, appended) in zip(work, outputs):
        for target, items in zip(collect, appended or ()):
            target.extend(items)
        where = "" if label is None else f" in class {label!r}"
        if local.shape != (k,) or len(np.unique(local)) != k or local.min() < 0 or local.max() >= len(rows):
            raise RuntimeError(f"{method} returned an invalid selection{where}: expected {k} distinct rows")
        chosen.append(rows[local])
    indices = np.sort(np.concatenate(chosen))
    params = {**params, "fraction": fraction, "size": size, "seed": seed, "label_column": label_column}
    result = finalize(dataset, indices, method=method, params=params)
    return result if facts is None else with_measurements(result, "executor", facts)


def task_gpus(executor) -> float:
    """GPUs per class task: the executor's ``gpus_per_actor`` when this process sees CUDA, else 0.

    A selector whose ``device`` resolved to CUDA here builds a pick that runs on CUDA, and Ray hides
    the GPUs from a task that holds none, so on a GPU machine every class task holds a GPU (one by
    default; ``gpus_per_actor=0`` keeps them on CPUs, for selectors called with ``device="cpu"``).
    """
    import torch

    return float(executor.gpus_per_actor) if torch.cuda.is_available() else 0.0


def group_label(label: Any, label_column: str | None, rows: np.ndarray) -> str:
    """How errors and logs name a group: ``"class 3 of 'label' (1,200 rows, positions 4–11,873)"``.

    Example:
        >>> group_label(3, "label", np.array([4, 9, 17]))
        "class 3 of 'label' (3 rows, positions 4–17)"
    """
    where = "all rows" if label_column is None else f"class {label!r} of {label_column!r}"
    span = f", positions {int(rows[0]):,}–{int(rows[-1]):,}" if len(rows) else ""
    return f"{where} ({len(rows):,} rows{span})"


def pick_group(shared: tuple[Pick, tuple[list, ...]], rows: np.ndarray, k: int, seed: int, group: int,
               *, local: bool = False) -> tuple[np.ndarray, list[list] | None]:
    """One group's selection: ``pick(rows, k, default_rng([seed, group]))`` as int64 positions into ``rows``.

    The task `run_selection` runs per group on Ray (and the same call in one process). ``shared`` is
    ``(pick, collect)``; outside this process (``local=False``) it also returns what ``pick``
    appended to each ``collect`` list, for the driver to append to its own lists.

    Example:
        >>> pick_group((lambda rows, k, rng: np.arange(k), ()), np.arange(10), 3, 0, 0, local=True)
        (array([0, 1, 2]), None)
    """
    pick, collect = shared
    before = [len(items) for items in collect]
    local_rows = np.asarray(pick(rows, int(k), np.random.default_rng([seed, group])), dtype=np.int64)
    if local:
        return local_rows, None
    return local_rows, [items[start:] for items, start in zip(collect, before)]


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
