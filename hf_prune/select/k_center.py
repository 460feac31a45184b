"""k-center greedy (Gonzalez 1985; the core-set selection of Sener & Savarese, ICLR 2018)."""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset

from ..ops.columns import read_matrix
from ..ops.device import resolve_device, to_device
from ..ops.knn import normalize_rows
from ._core import run_selection

__all__ = ["k_center_greedy"]

_METRICS = ("l2", "cosine")
_INITS = ("random", "first", "mean")


def k_center_greedy(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    embedding_column: str = "emb",
    metric: str = "l2",
    init: str = "random",
    label_column: str | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> Dataset:
    """Keep rows that cover the embedding space: each pick is the row farthest from those kept so far.

    Starting from one centre, repeat ``k − 1`` times: ``u = argmax_i min_{c ∈ S} ‖x_i − c‖``,
    ``S ← S ∪ {u}``. This greedy is a 2-approximation of the minimax facility location (k-center)
    problem ``min_S max_i min_{c∈S} ‖x_i − c‖`` (Gonzalez 1985), the objective Sener & Savarese
    (2018) bound the core-set loss with.

    We keep the vector of distances from every row to its nearest centre and update it with the
    new centre only: per pick one matrix–vector product on ``device`` (O(N·d)), an elementwise
    minimum and an argmax — never the N×N distance matrix. Squared distances are computed as
    ``‖x‖² − 2⟨x, c⟩ + ‖c‖²`` on rows centred at their group mean (which keeps the cancellation
    small). Kept rows are masked, so the ``k`` rows are distinct even with duplicate embeddings;
    once every row is covered (all distances 0) further picks go to the earliest uncovered rows.
    Ties in the argmax go to the earliest row.

    Args:
        dataset: the input Dataset (not modified).
        fraction / size: the budget (exactly one).
        embedding_column: fixed-length numeric embedding column.
        metric: ``"l2"`` (Euclidean) or ``"cosine"`` (Euclidean on L2-normalised rows, which
            orders pairs exactly as the cosine distance does).
        init: the first centre: ``"random"`` (a row drawn with ``seed``), ``"first"`` (the
            group's first row) or ``"mean"`` (the row closest to the group mean).
        label_column: run per class with a proportional budget split.
        seed: used only by ``init="random"``.
        device: torch device (``None`` → CUDA when available).

    Example:
        >>> sub = hp.select.k_center_greedy(ds, fraction=0.1, embedding_column="emb", metric="cosine")
    """
    if metric not in _METRICS:
        raise ValueError(f"`metric` must be one of {_METRICS}, got {metric!r}")
    if init not in _INITS:
        raise ValueError(f"`init` must be one of {_INITS}, got {init!r}")
    dev = resolve_device(device)
    emb = read_matrix(dataset, embedding_column)
    if metric == "cosine":
        emb = normalize_rows(emb)
    x_all = to_device(emb, dev)

    def pick(rows, k, rng):
        x = x_all if len(rows) == len(x_all) else x_all[torch.from_numpy(rows).to(dev)]
        x = x - x.mean(0)  # distances are translation invariant; centring keeps them accurate
        sq = (x * x).sum(1)
        if init == "random":
            first = int(rng.integers(len(rows)))
        elif init == "first":
            first = 0
        else:
            first = int(torch.argmin(sq))  # nearest to the mean, which is now the origin
        return greedy_k_center(x, k, first, sq=sq)

    params = {"embedding_column": embedding_column, "metric": metric, "init": init, "device": str(dev)}
    return run_selection(
        dataset, method="k_center_greedy", params=params, fraction=fraction, size=size, seed=seed,
        label_column=label_column, pick=pick,
    )


def greedy_k_center(x: torch.Tensor, k: int, first: int, *, sq: torch.Tensor | None = None) -> np.ndarray:
    """Positions of ``k`` greedy k-center picks in ``x`` (float tensor), starting from row ``first``.

    Returns the picks in the order they were made.

    Example:
        >>> greedy_k_center(torch.tensor([[0.0], [1.0], [5.0]]), 2, 0)
        array([0, 2])
    """
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"`k` must be in [1, {n}], got {k}")
    if not 0 <= first < n:
        raise ValueError(f"`first` must be a row position in [0, {n}), got {first}")
    if sq is None:
        sq = (x * x).sum(1)
    # Squared distance of every row to its nearest centre; chosen rows hold -1 so they are never
    # picked again (the elementwise minimum keeps them there).
    nearest = torch.full((n,), torch.inf, dtype=x.dtype, device=x.device)
    chosen = torch.empty(k, dtype=torch.long, device=x.device)
    current = torch.tensor(first, device=x.device)
    for t in range(k):
        chosen[t] = current
        if t == k - 1:
            break
        dist = torch.addmv(sq, x, x[current], alpha=-2.0).add_(sq[current]).clamp_min_(0.0)
        torch.minimum(nearest, dist, out=nearest)
        nearest[current] = -1.0
        current = torch.argmax(nearest)
    return chosen.cpu().numpy()
