"""Geometric Median Matching (robust moment matching) and plain herding (moment matching).

Both greedily build a k-subset whose mean matches a target moment μ (GM Matching, Alg. 1,
Eq. 7–8): starting from ``θ_0``,

    x_{t+1} = argmax_{x ∈ D \\ S} ⟨θ_t, φ(x)⟩,        θ_{t+1} = θ_t + μ − φ(x_{t+1}).

`herding` uses the empirical mean as μ (Eq. 2–3, Chen et al. 2010); `gm_matching` uses an
ε-approximate geometric median (Eq. 4–5), which has breakdown point 1/2, so up to half of the
points can be arbitrarily corrupted without dragging the target (and the subset) away.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from datasets import Dataset

from ..ops.checks import check_bool, check_choice, check_positive, check_positive_int
from ..ops.deprecation import renamed
from ..ops.device import resolve_device
from ..ops.matrix import open_matrix
from ..ops.median import geometric_median
from ..ops.threads import small_step_threads
from ._ordered import run_ordered_selection
from ._stream import FeatureRows
from .registry import selector

__all__ = ["gm_matching", "herding"]

_METRICS = ("l2", "cosine")
_INITS = ("target", "mean", "random")
# The renamed `geometry` values, accepted (with a FutureWarning) for one release.
_GEOMETRY_TO_METRIC = {"raw": "l2", "cosine": "cosine"}
# A median of unit rows shorter than this has no usable direction to renormalise.
_MIN_MEDIAN_NORM = 1e-6


@selector(family="seed paper", needs=("embedding_column",), device=True)
def gm_matching(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    embedding_column: str = "emb",
    metric: str = "l2",
    renormalize_median: bool = False,
    init: str = "target",
    eps: float = 1e-5,
    max_iter: int = 500,
    label_column: str | None = None,
    rank_column: str | None = None,
    gain_column: str | None = None,
    overwrite: bool = False,
    initial_subset: Sequence[int] | None = None,
    seed: int | np.random.Generator = 0,
    device: str | torch.device | None = None,
    geometry: str | None = None,
) -> Dataset:
    """Keep a subset whose mean matches the geometric median of the embeddings (GM Matching, Alg. 1).

    Per group (each class when ``label_column`` is given, else all rows): μ = ε-approximate
    geometric median of the group's embeddings (Weiszfeld, see `hf_prune.ops.median.geometric_median`),
    then ``k`` herding steps towards μ (Eq. 7–8). Selected rows are removed from the candidates,
    as in Alg. 1, so the ``k`` rows are distinct.

    Geometry (``metric``) and the target's norm (``renormalize_median``), measured by
    ``recipes/benchmarks/gm_matching_robustness.py`` (5 seeds, 10% kept, all rows at once or per
    class; "kept" = share of the subset that is corrupted, random keeps the corruption rate;
    "error" = ‖subset mean − clean mean‖ / RMS radius of the clean rows, in the input features):

    | case (kept % / error)                     | mode      | ``"l2"``    | ``"cosine"`` | ``"cosine"``, renormalised |
    |-------------------------------------------|-----------|-------------|--------------|----------------------------|
    | digits pixels, 20% far-away cluster       | all rows  | 3.2 / 0.28  | 11.2 / 1.12  | 1.7 / 0.32                 |
    |                                           | per class | 5.6 / 0.49  | 7.7 / 0.77   | 0.8 / 0.17                 |
    | digits pixels, 40% far-away cluster       | all rows  | 9.4 / 0.90  | 39.0 / 3.90  | 37.6 / 3.80                |
    |                                           | per class | 10.6 / 1.02 | 30.7 / 3.07  | 25.4 / 2.57                |
    | digits pixels, 20% uniform noise          | all rows  | 13.7 / 0.17 | 17.0 / 0.20  | 17.1 / 0.30                |
    |                                           | per class | 11.8 / 0.17 | 12.0 / 0.16  | 7.8 / 0.17                 |
    | proxy-MLP features, 20% noise images      | all rows  | 15.3 / 0.17 | 18.8 / 0.20  | 22.2 / 0.27                |
    |                                           | per class | 11.7 / 0.17 | 10.7 / 0.14  | 6.6 / 0.15                 |
    | the paper's 2-D toy, 40% adversarial      | all rows  | 25.2 / 0.80 | 64.8 / 3.33  | 94.4 / 4.78                |
    | that toy moved off the origin by (2, 2)   | all rows  | 25.0 / 0.79 | 10.2 / 0.80  | 0.0 / 0.52                 |
    | digits pixels, clean (error only)         | all rows  | 0.02        | 0.03         | 0.28                       |
    |                                           | per class | 0.08        | 0.09         | 0.14                       |

    * ``metric="l2"`` (default) works on the embeddings as they are: the paper's Hilbert space,
      where its breakdown-point-1/2 guarantee (Theorem 1) lives. It has the best worst case over
      these corruptions (25% kept, error 1.0, against 66% / 3.9 and 94% / 4.7 for the cosine
      variants) and the best mean (13% kept, error 0.51, against 22% / 1.4 and 21% / 1.3), and it
      is the only variant that holds at 40% corruption everywhere. Its weak spot is a corrupted
      cluster that is close in Euclidean distance but far in angle (the off-origin toy), where it
      still beats random and herding (error 2.0).
    * ``metric="cosine"`` L2-normalises each row first (all-zero rows stay zero); the median and
      the herding steps both live on those unit rows (Eq. 6 matches a mean in the space of the
      target), so rows count by direction only. Not renormalised, the target is the median of
      the unit rows, inside their convex hull as the O(1/k) guarantee needs. Where the direction
      of a row says little (data around the origin), or a corrupted cluster is tight in angle and
      heavy (40%), cosine geometry breaks down.
    * ``renormalize_median=True`` (only with ``"cosine"``) rescales that median to unit norm, as
      the GM Matching authors' released code does. No subset of distinct unit rows has a unit-norm
      mean, so herding keeps pulling towards the median's direction: per class at 20% corruption
      it keeps the fewest corrupted rows of all variants, but it trades diversity for it (on clean
      data, selecting all rows at once, the error rises ~10×), keeps more noise images than random
      when selecting all rows at once, and breaks down at 40%. A median of (nearly) zero norm has
      no direction; it is then kept as it is, with a warning.
    * On the GM Matching paper's own protocol, deep features with label noise and image corruption
      (``recipes/benchmarks/reproduce_fashion_mnist.py``: Fashion-MNIST, 2,000-row pool, penultimate
      features of a proxy CNN trained on the noisy pool, per class, 3 seeds), the order reverses for
      filtering but not for accuracy. Share of mislabeled rows kept at 30/20/10% kept (pool: 20%):
      ``"l2"`` 13.6 / 14.5 / 19.0, ``"cosine"`` 7.9 / 7.6 / 6.0, renormalised 3.4 / 2.8 / 2.2; test
      accuracy under that noise: 70.3 / 67.7 / 64.6, 70.5 / 69.2 / 64.8, 68.8 / 66.3 / 64.2 (random
      68.1 / 66.5 / 56.2). On clean data ``"l2"`` is the most accurate at 70–20% kept (73.6 / 72.5 /
      72.0 / 69.5 vs 72.0 / 70.9 / 70.6 / 69.0 cosine and 71.3 / 69.7 / 68.5 / 67.3 renormalised).
      So ``"l2"`` stays the default (the best or tied test accuracy on that protocol, the paper's
      Theorem 1, the best worst case above); when the aim is a subset with as few corrupted rows
      as possible, e.g. one to publish, use ``metric="cosine", renormalize_median=True`` on deep
      features that are not centred at the origin.
    * ``θ_0`` is "suitably chosen" in the paper; ``init="target"`` (default) is its expository
      choice θ_0 = μ (Eq. 9), ``"mean"`` the empirical mean, ``"random"`` the embedding of a row
      drawn with ``seed`` (the released code's default). The greedy steps themselves are
      deterministic: ties in the argmax go to the earliest row.
    * ``eps`` is the *relative* accuracy of Eq. 5; a warning is raised if the median did not
      converge within ``max_iter`` iterations.
    * **Order.** The target and ``θ_0`` do not depend on the budget, so a smaller budget's picks
      are the first picks of a larger one's (per class when ``label_column`` is given; with
      ``init="random"`` for the same ``seed``): ``rank_column`` turns one run into every smaller
      budget. ``gain_column`` holds the herding score ``⟨θ_t, φ(x)⟩`` each pick had at its step
      (the largest among the candidates; it is not monotone along the order).
      ``initial_subset`` rows are taken first, in the given order, as herding steps: ``θ`` moves
      by ``μ − φ(x)`` for each of them, so the greedy continues exactly as a run whose first picks
      were those rows (the target is still computed from all rows of the group).

    In hf_prune 0.1.0 the default was ``metric="cosine"`` (then spelled ``geometry="cosine"``):
    pass ``metric="cosine"`` to get the rows that default selected.

    Cost per group: one geometric-median solve (a few passes over the rows), then per pick a
    single matrix–vector product ``X θ_t`` on ``device`` (O(N·d)), a mask and an argmax — no
    re-sort. We recompute ``X θ_t`` from the exactly maintained ``θ_t`` (float64) instead of
    accumulating the scores: it is the same one matvec per step, and the scores cannot drift
    over thousands of steps. Rows agree between CPU and GPU up to floating-point near-ties.
    The column is read block by block from its Arrow chunks (`hf_prune.ops.matrix.open_matrix`;
    zero-copy over a memory-mapped file), per class through the class's rows: beyond the column,
    memory is O(N) vectors, the k picks and one block (on a GPU, one float32 copy of the group there).

    Args:
        dataset: the input Dataset (not modified).
        fraction / size: the budget (exactly one).
        embedding_column: fixed-length numeric embedding column.
        metric: ``"l2"`` (raw embeddings) or ``"cosine"`` (L2-normalised rows).
        renormalize_median: with ``metric="cosine"``, herd towards the median rescaled to unit norm.
        init: ``"target"``, ``"mean"`` or ``"random"`` (θ_0).
        eps: relative ε of the ε-approximate geometric median.
        max_iter: maximum Weiszfeld iterations.
        label_column: run per class with a proportional budget split.
        rank_column: if given, an int64 column with each kept row's pick position (0 first; per
            class when ``label_column`` is given).
        gain_column: if given, a float64 column with each kept row's herding score at its step.
        overwrite: replace an existing ``rank_column`` / ``gain_column``.
        initial_subset: row positions (in ``dataset``) kept first, in the given order; they count
            towards the budget (per class: towards their class's budget, which they must not exceed).
        seed: used only by ``init="random"``.
        device: torch device (``None`` → CUDA when available).
        geometry: deprecated spelling of ``metric`` (``"raw"`` is ``"l2"``).

    Example:
        >>> sub = hp.select.gm_matching(ds, fraction=0.1, embedding_column="emb", label_column="label")
        >>> official = hp.select.gm_matching(ds, fraction=0.1, metric="cosine", renormalize_median=True)
        >>> ranked = hp.select.gm_matching(ds, fraction=0.2, rank_column="rank")  # every budget ≤ 20%
    """
    check_positive("eps", eps)
    check_positive_int("max_iter", max_iter)
    metric = _resolve_metric(metric, geometry, "gm_matching")
    check_bool("renormalize_median", renormalize_median)
    if renormalize_median and metric != "cosine":
        raise ValueError(
            "`renormalize_median=True` rescales the median of L2-normalised rows and needs "
            f"metric='cosine', got metric={metric!r}"
        )
    return _herding_selection(
        dataset, method="gm_matching", target="geometric_median", fraction=fraction, size=size,
        embedding_column=embedding_column, metric=metric, init=init, label_column=label_column,
        rank_column=rank_column, gain_column=gain_column, overwrite=overwrite, initial_subset=initial_subset,
        seed=seed, device=device, eps=eps, max_iter=max_iter, renormalize_median=bool(renormalize_median),
    )


@selector(family="baseline", needs=("embedding_column",), device=True)
def herding(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    embedding_column: str = "emb",
    metric: str = "l2",
    init: str = "target",
    label_column: str | None = None,
    rank_column: str | None = None,
    gain_column: str | None = None,
    overwrite: bool = False,
    initial_subset: Sequence[int] | None = None,
    seed: int | np.random.Generator = 0,
    device: str | torch.device | None = None,
    geometry: str | None = None,
) -> Dataset:
    """Keep a subset whose mean matches the empirical mean of the embeddings (kernel herding).

    The moment-matching baseline of the GM Matching paper (Eq. 1–3; Welling 2009, Chen et al.
    2010): the same greedy steps as `gm_matching` with the empirical (class) mean as the target,
    which gives the O(1/k) decay of ‖mean(S_k) − μ‖ on clean data but has breakdown point 0.
    ``init="target"`` and ``init="mean"`` coincide here. The default ``metric="l2"`` is the same
    as `gm_matching`'s (in hf_prune 0.1.0 both defaulted to ``"cosine"``), so the two differ only
    in the target. Parameters (``rank_column``, ``gain_column`` and ``initial_subset`` included)
    and cost as in `gm_matching`.

    Example:
        >>> sub = hp.select.herding(ds, size=1000, embedding_column="emb", label_column="label")
        >>> next_round = hp.select.herding(ds, size=2000, initial_subset=kept_positions, rank_column="rank")
    """
    metric = _resolve_metric(metric, geometry, "herding")
    return _herding_selection(
        dataset, method="herding", target="mean", fraction=fraction, size=size,
        embedding_column=embedding_column, metric=metric, init=init, label_column=label_column,
        rank_column=rank_column, gain_column=gain_column, overwrite=overwrite, initial_subset=initial_subset,
        seed=seed, device=device,
    )


def _resolve_metric(metric: str, geometry: str | None, method: str) -> str:
    # "l2" is the default, so it cannot be told apart from "not passed" and yields to `geometry`.
    metric = renamed(method, "geometry", geometry, "metric", metric, default="l2", values=_GEOMETRY_TO_METRIC,
                     stacklevel=5)
    if metric not in _METRICS:
        # Herding's ⟨θ, x⟩ on raw rows matches means in Euclidean space: that is metric="l2".
        raise ValueError(f"`metric` must be one of {_METRICS} (raw inner products are 'l2'), got {metric!r}")
    return metric


def _herding_selection(
    dataset, *, method, target, fraction, size, embedding_column, metric, init, label_column,
    rank_column, gain_column, overwrite, initial_subset, seed, device, eps=None, max_iter=None,
    renormalize_median=False,
) -> Dataset:
    check_choice("init", init, _INITS)
    dev = resolve_device(device)
    matrix = open_matrix(dataset, embedding_column)

    ordered = rank_column is not None or gain_column is not None

    def order(rows, k, rng, initial):
        if k == len(rows) and not ordered and not len(initial):
            return np.arange(k)  # every row is kept: their order is not asked for
        x = FeatureRows(matrix.subset(rows), device=dev, normalize=metric == "cosine")
        if target == "geometric_median":
            median, info = geometric_median(x, eps=eps, max_iter=max_iter, device=dev)
            if not info["converged"]:
                warnings.warn(
                    f"{method}: the geometric median did not converge in max_iter={max_iter} iterations "
                    f"(relative gap bound {info['gap_bound']:.3g}); increase `max_iter`",
                    stacklevel=4,
                )
            mu = torch.from_numpy(median).to(dev)
            if renormalize_median:
                mu = _unit_target(mu, method)
        else:
            mu = x.mean()
        if init == "target":
            theta0 = mu
        elif init == "mean":
            theta0 = mu if target == "mean" else x.mean()  # herd() copies theta0
        else:
            theta0 = x.take([int(rng.integers(len(rows)))])[0].to(torch.float64)
        return herd(x, mu, theta0, k, initial=initial, return_gains=gain_column is not None)

    params = {"embedding_column": embedding_column, "metric": metric, "init": init, "device": str(dev)}
    if target == "geometric_median":
        params.update(eps=eps, max_iter=max_iter, renormalize_median=renormalize_median)
    return run_ordered_selection(
        dataset, method=method, params=params, fraction=fraction, size=size, seed=seed,
        label_column=label_column, order=order, rank_column=rank_column, gain_column=gain_column,
        overwrite=overwrite, initial_subset=initial_subset,
    )


def _unit_target(mu: torch.Tensor, method: str) -> torch.Tensor:
    """``mu / ‖mu‖``; a median of unit rows near the origin has no direction and is kept as is."""
    norm = float(torch.linalg.vector_norm(mu))
    if norm <= _MIN_MEDIAN_NORM:
        warnings.warn(
            f"{method}: the geometric median of the normalised rows has norm {norm:.3g} (the rows point "
            "in all directions), so it cannot be renormalised; herding towards it as it is",
            stacklevel=5,
        )
        return mu
    return mu / norm


def herd(
    x: torch.Tensor | FeatureRows,
    mu: torch.Tensor,
    theta0: torch.Tensor,
    k: int,
    *,
    initial: Sequence[int] = (),
    return_gains: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``k`` distinct rows of ``x`` chosen by herding towards ``mu`` from ``theta0`` (Eq. 7–8).

    ``x`` is a float tensor or `FeatureRows` (e.g. a memory-mapped column read block by block).
    Returns the picks in the order they were made. Each step is one read pass over the rows, the
    product ``X θ_t`` (float32), plus O(N) (chosen rows get a -inf penalty) and the gather of the
    picked row for the exact float64 update of ``θ``; no N×d temporary is made. Threads follow
    `hf_prune.ops.threads.small_step_threads` (one for small products; one torch thread for the
    O(N) bookkeeping below 4M rows). ``initial`` rows (distinct, at most ``k``) are the first picks,
    in the given order, each moving ``θ`` as a herding step does. With ``return_gains``, also each
    pick's score ``⟨θ_t, x⟩`` at its step (float64).

    Example:
        >>> order = herd(torch.randn(100, 4), torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64), 10)
    """
    exact = isinstance(x, torch.Tensor) and x.dtype == torch.float64
    rows = x if isinstance(x, FeatureRows) else FeatureRows(x.to(torch.float32))
    n = len(rows)
    if not 1 <= k <= n:
        raise ValueError(f"`k` must be in [1, {n}], got {k}")
    initial = np.asarray(initial, dtype=np.int64).ravel()
    if len(initial) and (initial.min() < 0 or initial.max() >= n or len(np.unique(initial)) != len(initial)):
        raise ValueError(f"`initial` must hold distinct row positions in [0, {n})")
    if len(initial) > k:
        raise ValueError(f"`initial` has {len(initial)} rows, more than `k` ({k})")
    # A float64 tensor keeps its exact rows for the θ update (the products stay float32).
    picked_row = (lambda i: x[i]) if exact else (lambda i: rows.take([i])[0].to(torch.float64))
    with small_step_threads(n * rows.dim, rows.device, vector_work=n):
        return _herd(rows, mu, theta0, k, initial, return_gains, picked_row)


def _herd(rows: FeatureRows, mu, theta0, k, initial, return_gains, picked_row):
    n, dev = len(rows), rows.device
    mu = mu.to(device=dev, dtype=torch.float64)
    theta = theta0.to(device=dev, dtype=torch.float64).clone()
    # 0 for candidates, -inf for chosen rows; adding it is much cheaper than a masked fill.
    penalty = torch.zeros(n, dtype=torch.float32, device=dev)
    scores = rows.new_vector(torch.float32)
    chosen = np.empty(k, dtype=np.int64)
    gains = np.empty(k, dtype=np.float64) if return_gains else None
    for t in range(k):
        forced = t < len(initial)
        if not forced or gains is not None:
            rows.matvec(theta.to(torch.float32), scores).add_(penalty)
        i = int(initial[t]) if forced else int(torch.argmax(scores))
        chosen[t] = i
        if gains is not None:
            gains[t] = float(scores[i])
        penalty[i] = -torch.inf
        theta += mu - picked_row(i)
    if gains is None:
        return chosen
    return chosen, gains
