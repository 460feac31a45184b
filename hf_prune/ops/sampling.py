"""Random draws shared by the selectors; all randomness comes from a NumPy Generator so a seed gives
the same rows whatever device the numeric work ran on."""

from __future__ import annotations

import numpy as np

__all__ = ["weighted_sample_without_replacement"]


def weighted_sample_without_replacement(weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``k`` distinct indices, each successive draw with probability ∝ its weight among those left.

    Uses the Gumbel-top-k trick (keys ``log w + Gumbel``), which has exactly the distribution of
    sequential sampling without replacement, in O(N) vectorised time. Zero-weight items are drawn
    only once every positive-weight item is taken, uniformly among themselves.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> weighted_sample_without_replacement(np.array([0.0, 1.0, 5.0]), 2, rng)
        array([1, 2])
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1:
        raise ValueError("weights must be one-dimensional")
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("weights must be finite and non-negative")
    if not 0 <= k <= len(weights):
        raise ValueError(f"cannot draw {k} items from {len(weights)}")
    gumbel = rng.gumbel(size=len(weights))
    with np.errstate(divide="ignore"):
        keys = np.log(weights) + gumbel
    # Zero weights get -inf; rank them after positives by their Gumbel noise alone.
    positive = weights > 0
    order_keys = np.where(positive, keys, -1e300 + gumbel)
    top = np.argpartition(-order_keys, k - 1)[:k] if k else np.empty(0, dtype=np.int64)
    return np.sort(top)
