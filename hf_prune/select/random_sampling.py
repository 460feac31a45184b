"""Uniform random selection: the baseline every pruning paper reports."""

from __future__ import annotations

import numpy as np
from datasets import Dataset

from ._core import run_selection
from .registry import selector

__all__ = ["random"]


@selector(family="baseline")
def random(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    label_column: str | None = None,
    seed: int | np.random.Generator = 0,
) -> Dataset:
    """Keep a uniformly random subset (per class when ``label_column`` is given).

    Example:
        >>> sub = hp.select.random(ds, fraction=0.1, label_column="label", seed=0)
    """

    def pick(rows, k, rng):
        return rng.choice(len(rows), size=k, replace=False)

    return run_selection(
        dataset, method="random", params={}, fraction=fraction, size=size, seed=seed,
        label_column=label_column, pick=pick,
    )
