"""Aggregation over seeds and wall-clock timing, shared by the recipes and the benchmarks.

Example:
    >>> aggregate([0.91, 0.93])["mean"]
    0.92
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["aggregate", "aggregate_runs", "timed"]


def aggregate(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std", "n", "values"}``; ``std`` is the sample standard deviation (ddof=1), 0 for one value."""
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": float(arr.mean()) if len(arr) else float("nan"), "std": std, "n": len(arr), "values": arr.tolist()}


def aggregate_runs(runs: Sequence[dict[str, Any]], keys: Sequence[str], nested: Sequence[str] = ()) -> dict[str, Any]:
    """Mean ± std over runs for scalar ``keys`` and for each entry of the dict-valued ``nested`` keys."""
    out: dict[str, Any] = {key: aggregate([run[key] for run in runs]) for key in keys}
    for key in nested:
        names = list(runs[0][key])
        out[key] = {name: aggregate([run[key][name] for run in runs]) for name in names}
    return out


def timed(fn: Callable[[], Any], repeats: int = 1, *, cuda_sync: bool = False) -> tuple[float, Any]:
    """Run ``fn`` ``repeats`` times; returns the median wall time in seconds and the last result.

    ``cuda_sync=True`` waits for queued CUDA work (when CUDA is available) before each time is taken.
    """
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        if cuda_sync:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result
