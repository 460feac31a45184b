"""Rank-by-score selection: keep the top (or bottom) ``k`` rows of a score column, or a score range.

The selection rule behind every score-based pruning baseline (EL2N, GraNd, forgetting, AUM,
entropy, margin, CLIP score, …): compute the score as a column, then keep the highest or lowest.
"""

from __future__ import annotations

import math

import numpy as np
from datasets import Dataset

from ..ops.checks import check_bool
from ..ops.columns import check_columns, read_vector
from ._core import finalize, run_selection
from .registry import selector

__all__ = ["top_k", "threshold"]


@selector(family="score-based", needs=("score_column",))
def top_k(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    score_column: str,
    descending: bool = True,
    label_column: str | None = None,
    seed: int | np.random.Generator = 0,
) -> Dataset:
    """Keep the rows with the highest scores (``descending=False``: the lowest).

    Rows with equal scores go to the lower row position (a stable sort), the one tie rule of every
    selector. hf_prune 0.1.0 broke such ties by a random permutation drawn with ``seed``; ``seed``
    no longer affects the rows (it is still accepted and recorded), and the rows differ from 0.1.0
    only where exactly tied scores straddle the budget boundary.

    Args:
        dataset: the input Dataset (not modified).
        fraction / size: the budget (exactly one).
        score_column: numeric scalar column (NaN/inf or nulls are rejected).
        descending: keep the largest scores (``True``) or the smallest (``False``).
        label_column: rank within each class with a proportional budget split.
        seed: accepted for the common selector signature; nothing here is random.

    Example:
        >>> hardest = hp.select.top_k(ds, fraction=0.3, score_column="el2n", label_column="label")
    """
    check_bool("descending", descending)
    scores = read_vector(dataset, score_column, dtype=np.float64)

    def pick(rows, k, rng):
        key = scores[rows]
        # Stable: equal scores keep their row order, so ties go to the lower row position.
        return np.argsort(-key if descending else key, kind="stable")[:k]

    return run_selection(
        dataset, method="top_k", params={"score_column": score_column, "descending": bool(descending)},
        fraction=fraction, size=size, seed=seed, label_column=label_column, pick=pick,
    )


@selector(family="score-based", needs=("score_column",), budget=False)
def threshold(
    dataset: Dataset,
    *,
    score_column: str,
    min_value: float | None = None,
    max_value: float | None = None,
) -> Dataset:
    """Keep the rows with ``min_value ≤ score ≤ max_value`` (bounds inclusive; ``None`` = unbounded).

    Bounds are rounded to the column's float precision first, so a float32 score written as
    ``0.1`` passes ``max_value=0.1``.

    Deterministic, so it takes no budget or seed; the result still carries ``row_id`` and a
    provenance step. At least one bound is required, and a range that keeps no row raises a
    `ValueError` (an empty training set is never what was meant).

    Example:
        >>> confident = hp.select.threshold(ds, score_column="clip_score", min_value=0.28)
    """
    check_columns(dataset, score_column)
    if min_value is None and max_value is None:
        raise ValueError("pass `min_value`, `max_value` or both")
    for name, value in (("min_value", min_value), ("max_value", max_value)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or math.isnan(value)
        ):
            raise ValueError(f"`{name}` must be a number or None, got {value!r}")
    if min_value is not None and max_value is not None and min_value > max_value:
        raise ValueError(f"`min_value`={min_value} is larger than `max_value`={max_value}")
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    scores = read_vector(dataset, score_column, dtype=np.float64)
    # Compare at the column's precision: a float32 column stores 0.1 as 0.100000001, which must
    # still satisfy max_value=0.1.
    dtype = getattr(dataset.features[score_column], "dtype", "float64")
    cast = np.dtype(dtype).type if dtype in ("float16", "float32") else float
    keep = np.ones(len(scores), dtype=bool)
    if min_value is not None:
        keep &= scores >= float(cast(min_value))
    if max_value is not None:
        keep &= scores <= float(cast(max_value))
    indices = np.flatnonzero(keep)
    if len(indices) == 0:
        raise ValueError(
            f"no row of {score_column!r} lies in [{min_value}, {max_value}] "
            f"(scores range from {scores.min():.6g} to {scores.max():.6g})"
        )
    params = {"score_column": score_column, "min_value": min_value, "max_value": max_value}
    return finalize(dataset, indices, method="threshold", params=params)
