"""k-center greedy (Gonzalez 1985; the core-set selection of Sener & Savarese, ICLR 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from datasets import Dataset

from ..ops.checks import check_choice
from ..ops.device import resolve_device
from ..ops.matrix import open_matrix
from ..ops.threads import small_step_threads
from ._ordered import run_ordered_selection
from ._stream import FeatureRows
from .registry import selector

__all__ = ["k_center_greedy"]

_METRICS = ("l2", "cosine")
_INITS = ("random", "first", "mean")


@selector(family="coverage", needs=("embedding_column",), device=True)
def k_center_greedy(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    embedding_column: str = "emb",
    metric: str = "l2",
    init: str = "random",
    label_column: str | None = None,
    rank_column: str | None = None,
    gain_column: str | None = None,
    overwrite: bool = False,
    initial_subset: Sequence[int] | None = None,
    seed: int | np.random.Generator = 0,
    device: str | torch.device | None = None,
) -> Dataset:
    """Keep rows that cover the embedding space: each pick is the row farthest from those kept so far.

    Starting from one centre, repeat ``k − 1`` times: ``u = argmax_i min_{c ∈ S} ‖x_i − c‖``,
    ``S ← S ∪ {u}``. This greedy is a 2-approximation of the minimax facility location (k-center)
    problem ``min_S max_i min_{c∈S} ‖x_i − c‖`` (Gonzalez 1985), the objective Sener & Savarese
    (2018) bound the core-set loss with.

    We keep the vector of distances from every row to its nearest centre and update it with the
    new centre only: per pick one matrix–vector product on ``device`` (O(N·d), one read pass over
    the column), an elementwise minimum and an argmax — never the N×N distance matrix. Squared
    distances are computed as ``‖x − m‖² − 2⟨x − m, c − m⟩ + ‖c − m‖²`` about the group mean ``m``
    (the exact ``‖x − m‖²`` computed once, which keeps the cancellation small) without forming the
    centred rows. The column is read block by block from its Arrow chunks (zero-copy over a
    memory-mapped file; per class through the class's rows), so memory beyond it is O(N) (on a
    GPU, one float32 copy of the group there). Kept rows are masked, so the ``k`` rows are distinct
    even with duplicate embeddings; once every row is covered (all distances 0) further picks go
    to the earliest uncovered rows. Ties in the argmax go to the earliest row.

    **Order.** The picks are a greedy permutation: with the same ``init`` and ``seed`` a smaller
    budget's picks are the first picks of a larger one's (per class when ``label_column`` is given),
    so ``rank_column`` turns one run into every smaller budget (keep ``rank < b``). ``gain_column``
    holds each pick's *insertion radius*: its distance to the nearest row picked before it (``inf``
    for a group's first pick), i.e. the covering radius of the rows picked before it, which never
    grows along the order. ``initial_subset`` (rows already kept, e.g. already labelled in an
    active-learning round) are the first centres, in the given order, instead of ``init``: the
    distances start from them, so the result is what a run whose first picks were those rows gives.

    Args:
        dataset: the input Dataset (not modified).
        fraction / size: the budget (exactly one).
        embedding_column: fixed-length numeric embedding column.
        metric: ``"l2"`` (Euclidean) or ``"cosine"`` (Euclidean on L2-normalised rows, which
            orders pairs exactly as the cosine distance does).
        init: the first centre: ``"random"`` (a row drawn with ``seed``), ``"first"`` (the
            group's first row) or ``"mean"`` (the row closest to the group mean).
        label_column: run per class with a proportional budget split.
        rank_column: if given, an int64 column with each kept row's pick position (0 first; per
            class when ``label_column`` is given).
        gain_column: if given, a float64 column with each kept row's insertion radius (above).
        overwrite: replace an existing ``rank_column`` / ``gain_column``.
        initial_subset: row positions (in ``dataset``) kept first, in the given order; they count
            towards the budget (per class: towards their class's budget, which they must not exceed).
        seed: used only by ``init="random"``.
        device: torch device (``None`` → CUDA when available).

    Example:
        >>> sub = hp.select.k_center_greedy(ds, fraction=0.1, embedding_column="emb", metric="cosine")
        >>> ranked = hp.select.k_center_greedy(ds, size=1000, rank_column="rank", gain_column="radius")
        >>> first_100 = ranked.filter(lambda r: r < 100, input_columns="rank")  # the size=100 selection
        >>> next_round = hp.select.k_center_greedy(ds, size=200, initial_subset=labelled_positions)
    """
    check_choice("metric", metric, _METRICS)
    check_choice("init", init, _INITS)
    dev = resolve_device(device)
    matrix = open_matrix(dataset, embedding_column)

    def order(rows, k, rng, initial):
        x = FeatureRows(matrix.subset(rows), device=dev, normalize=metric == "cosine")
        center = x.mean()  # distances are translation invariant; centring keeps them accurate
        sq = x.sq_norms(center)
        if init == "random":
            first = int(rng.integers(len(rows)))
        elif init == "first":
            first = 0
        else:
            first = int(torch.argmin(sq))  # nearest to the mean
        return greedy_k_center(x, k, first, sq=sq, center=center, initial=initial,
                               return_gains=gain_column is not None)

    params = {"embedding_column": embedding_column, "metric": metric, "init": init, "device": str(dev)}
    return run_ordered_selection(
        dataset, method="k_center_greedy", params=params, fraction=fraction, size=size, seed=seed,
        label_column=label_column, order=order, rank_column=rank_column, gain_column=gain_column,
        overwrite=overwrite, initial_subset=initial_subset,
    )


def greedy_k_center(
    x: torch.Tensor | FeatureRows,
    k: int,
    first: int,
    *,
    sq: torch.Tensor | None = None,
    center: torch.Tensor | None = None,
    initial: Sequence[int] = (),
    return_gains: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Positions of ``k`` greedy k-center picks in ``x`` (a float tensor or `FeatureRows`), starting from row ``first``.

    Returns the picks in the order they were made. With ``initial`` (distinct row positions, at
    most ``k``) those rows are the first centres, in the given order, and ``first`` is not used.
    With ``return_gains``, also each pick's insertion radius (distance to the nearest earlier pick,
    ``inf`` for the first), as float64.

    One read pass over the rows per pick: with ``m = center`` (the origin when ``None``) and
    ``v = c − m`` for the new centre ``c``, ``‖x_i − c‖² = ‖x_i − m‖² − 2(x_i·v − m·v) + ‖v‖²``, so
    the product ``X v`` (float32 BLAS over the stored rows, block by block) and the O(N) vector
    ``sq = ‖x_i − m‖²`` (exact, computed once) give every distance; no N×d temporary is made. The
    rounding of ``x_i·v`` is about ``ε‖x_i‖‖v‖``: far rows, the ones the argmax compares, are
    unaffected; near-ties may resolve differently from an explicitly centred computation. Threads
    follow `hf_prune.ops.threads.small_step_threads` (one for small products; one torch thread for
    the O(N) bookkeeping below 4M rows).

    Example:
        >>> greedy_k_center(torch.tensor([[0.0], [1.0], [5.0]]), 2, 0)
        array([0, 2])
        >>> greedy_k_center(torch.tensor([[0.0], [1.0], [5.0]]), 2, 0, initial=[1], return_gains=True)
        (array([1, 2]), array([inf,  4.]))
    """
    rows = x if isinstance(x, FeatureRows) else FeatureRows(x)
    n = len(rows)
    if not 1 <= k <= n:
        raise ValueError(f"`k` must be in [1, {n}], got {k}")
    if not 0 <= first < n:
        raise ValueError(f"`first` must be a row position in [0, {n}), got {first}")
    initial = np.asarray(initial, dtype=np.int64).ravel()
    if len(initial) and (initial.min() < 0 or initial.max() >= n or len(np.unique(initial)) != len(initial)):
        raise ValueError(f"`initial` must hold distinct row positions in [0, {n})")
    if len(initial) > k:
        raise ValueError(f"`initial` has {len(initial)} rows, more than `k` ({k})")
    with small_step_threads(n * rows.dim, rows.device, vector_work=n):
        return _greedy(rows, k, first, sq, center, initial, return_gains)


def _greedy(rows: FeatureRows, k, first, sq, center, initial, return_gains):
    n, dev, dtype = len(rows), rows.device, rows.dtype
    if sq is None:
        sq = rows.sq_norms(center)
    center64 = None if center is None else center.to(device=dev, dtype=torch.float64)
    # Squared distance of every row to its nearest centre; chosen rows hold -1 so they are never
    # picked again (the elementwise minimum keeps them there).
    nearest = torch.full((n,), torch.inf, dtype=dtype, device=dev)
    dots, dist = rows.new_vector(), rows.new_vector()
    chosen = np.empty(k, dtype=np.int64)
    radii = np.empty(k, dtype=np.float64) if return_gains else None
    forced = initial.tolist() if len(initial) else [first]
    current = forced[0]
    for t in range(k):
        if t < len(forced):
            current = forced[t]
        chosen[t] = current
        if radii is not None:
            radii[t] = float(nearest[current])
        if t == k - 1:
            break
        c = rows.take([current])[0]
        v = c if center64 is None else (c.to(torch.float64) - center64).to(dtype)
        offset = float(sq[current]) + (0.0 if center64 is None else 2.0 * float(center64 @ v.to(torch.float64)))
        rows.matvec(v, dots)
        torch.add(sq, dots, alpha=-2.0, out=dist).add_(offset).clamp_min_(0.0)
        torch.minimum(nearest, dist, out=nearest)
        nearest[current] = -1.0
        current = int(torch.argmax(nearest))
    if radii is None:
        return chosen
    return chosen, np.sqrt(radii)
