"""D²-Pruning (Maharana, Yadav & Bansal, ICLR 2024): message passing on a k-NN graph of the data.

Each row is a node carrying its score ``s`` (difficulty), linked to its ``k`` nearest neighbours in
embedding space (Euclidean distance ``d``). Two passes:

1. **Forward message passing** spreads difficulty over the graph:
   ``s_i ← s_i + Σ_{j∈N(i)} exp(−γ_f·d_ij)·s_j``.
2. **Reverse message passing** selects greedily: take the unselected node ``i`` with the highest
   score, then down-weight its neighbours, ``s_j ← s_j − exp(−γ_r·d_ij)·s_i``, and repeat.

Choices where the paper leaves room (each one is tested):

* The graph is undirected, as the paper describes it: ``i`` and ``j`` are linked when either is
  among the other's ``k`` nearest neighbours (the union of the k-NN lists), so messages flow both
  ways. It is stored as CSR arrays with at most ``2·N·k`` edges; ``d_ij`` is recomputed exactly in
  float64 for every edge.
* ``d`` is the plain (not squared) Euclidean distance, as in the authors' code (``metric="l2"``,
  the default); ``metric="cosine"`` L2-normalises embeddings first, so ``d = √(2 − 2 cos) ∈ [0, 2]``
  (a monotone function of the cosine distance: the same neighbours) and ``γ`` has a fixed scale.
  ``normalize=True`` / ``False``, the hf_prune 0.1.0 spelling, still means ``"cosine"`` / ``"l2"``.
* Scores must be non-negative: messages are proportional to the score, so a negative score would
  turn the reverse message into a boost. Shift or min-max the column first.
* The selection loop runs on the CPU in float64 with a lazy max-heap: each pick pops the best
  entry, updates only the picked node's neighbours and pushes their new scores; stale entries are
  skipped. That is ``O((p + E) log N)`` in total with no re-sort of all N, deterministic on any
  device, with ties going to the lower row index.
* The reverse pass is the same for every budget, so a smaller budget's picks are the first picks of
  a larger one (``rank_column=`` records the order). ``initial_subset`` rows take the first steps of
  the reverse pass, in the given order: each is marked selected and down-weights its neighbours
  exactly as a greedy pick does, then the greedy continues. Starting from the first ``j`` picks of a
  run therefore gives that run's selection.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np
import torch
from datasets import Dataset

from ..ops.checks import check_choice, check_nonnegative, check_positive_int
from ..ops.columns import check_columns, read_vector
from ..ops.deprecation import renamed
from ..ops.device import resolve_device
from ..ops.knn import knn, neighbour_pairs, normalize_rows
from ..ops.matrix import ColumnMatrix, open_matrix
from ._knn_step import KnnLog, check_knn_index, with_knn_record
from ._ordered import run_ordered_selection
from .registry import selector

__all__ = ["d2_pruning", "d2_graph", "d2_message_passing", "d2_select"]


@selector(family="coverage", needs=("score_column", "embedding_column"), device=True)
def d2_pruning(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    score_column: str,
    embedding_column: str = "emb",
    k: int = 10,
    gamma_f: float = 1.0,
    gamma_r: float = 1.0,
    metric: str = "l2",
    knn_index: str = "auto",
    label_column: str | None = None,
    rank_column: str | None = None,
    gain_column: str | None = None,
    overwrite: bool = False,
    initial_subset: Sequence[int] | None = None,
    seed: int | np.random.Generator = 0,
    device: str | torch.device | None = None,
    normalize: bool | None = None,
) -> Dataset:
    """Keep rows chosen by D²-Pruning: forward then reverse message passing on a k-NN graph.

    Args:
        dataset: the input Dataset (not modified).
        fraction / size: kept fraction in (0, 1] or number of rows; exactly one.
        score_column: non-negative difficulty score per row (e.g. forgetting, EL2N, AUM shifted ≥ 0).
        embedding_column: fixed-length embedding column that defines the graph.
        k: neighbours per node in the k-NN graph.
        gamma_f: forward message weight ``exp(−γ_f·d)``.
        gamma_r: reverse message weight ``exp(−γ_r·d)``.
        metric: ``"l2"`` (default: Euclidean distance of the embeddings) or ``"cosine"`` (Euclidean
            distance of the L2-normalised embeddings, ``√(2 − 2 cos)``).
        knn_index: the k-NN index (`hf_prune.select._knn_step`): ``"auto"`` (default: exact up to
            50,000 rows per group, IVF above), ``"flat"``/``"exact"``, ``"ivf"``, ``"ivfpq"`` or
            ``"hnsw"``. The index used and its measured recall@k are recorded on the provenance
            step under ``"knn"``.
        label_column: when given, the budget is split per class and a graph is built per class.
        rank_column: if given, an int64 column with each kept row's pick position in the reverse pass
            (0 first; per class when ``label_column`` is given). A group kept whole then still runs the
            reverse pass for its order, so it needs ``k`` < its rows.
        gain_column: if given, a float64 column with each kept row's score when it was picked (after
            the forward pass and the down-weighting by earlier picks).
        overwrite: replace an existing ``rank_column`` / ``gain_column``.
        initial_subset: row positions (in ``dataset``) kept first, in the given order; they
            down-weight their neighbours before the greedy continues and count towards the budget (per
            class: towards their class's budget, which they must not exceed).
        seed: seeds an approximate ``knn_index``'s training sample (per group); D²-Pruning itself
            makes no random choice.
        device: device for the k-NN search; ``None`` picks CUDA when available.
        normalize: deprecated spelling of ``metric`` (hf_prune 0.1.0): ``False`` is ``"l2"``, ``True``
            is ``"cosine"``; it warns with a `FutureWarning` and will be removed.

    Returns:
        ``dataset.select(kept rows)`` with a ``row_id`` column and a provenance step ``"d2_pruning"``.

    Example:
        >>> sub = hp.select.d2_pruning(ds, fraction=0.3, score_column="forgetting", k=10,
        ...                            gamma_f=1.0, gamma_r=1.0, label_column="label")
        >>> ranked = hp.select.d2_pruning(ds, size=1000, score_column="forgetting", rank_column="rank")
        >>> smaller = ranked.filter(lambda r: r < 100, input_columns="rank")  # = the size=100 selection
    """
    metric = _resolve_metric("d2_pruning", metric, normalize, stacklevel=5)  # through the decorator
    check_columns(dataset, score_column, embedding_column, label_column)
    k = check_positive_int("k", k)
    gamma_f = check_nonnegative("gamma_f", gamma_f)
    gamma_r = check_nonnegative("gamma_r", gamma_r)
    log = KnnLog(knn_index)
    scores = read_vector(dataset, score_column, dtype=np.float64)
    if len(scores) and scores.min() < 0:
        raise ValueError(
            f"column {score_column!r} has negative scores (min {scores.min():.4g}); D²-Pruning's messages "
            "scale with the score, so shift or min-max the column to be non-negative first"
        )
    embeddings = open_matrix(dataset, embedding_column)  # validated; groups are views, never copies
    torch_device = resolve_device(device)

    def order(rows, budget, rng, initial):
        if budget == len(rows) and rank_column is None and gain_column is None:
            # Every row is kept and no order was asked for: no graph is needed.
            return np.concatenate([initial, np.setdiff1d(np.arange(len(rows)), initial)])
        if k >= len(rows):
            raise ValueError(f"`k`={k} must be smaller than the number of rows in a group ({len(rows)})")
        neighbours, distances, report = d2_graph(
            embeddings.subset(rows), k, metric=metric, knn_index=knn_index, device=torch_device,
            seed=int(rng.integers(2**31 - 1)),  # seeds an approximate index's training sample
            return_report=True,
        )
        log.add(report)
        return d2_select(scores[rows], neighbours, distances, budget=budget, gamma_f=gamma_f, gamma_r=gamma_r,
                         initial=initial, return_gains=True)

    params = {
        "score_column": score_column, "embedding_column": embedding_column, "k": k, "gamma_f": gamma_f,
        "gamma_r": gamma_r, "metric": metric, "knn_index": knn_index,
    }
    result = run_ordered_selection(
        dataset, method="d2_pruning", params=params, fraction=fraction, size=size, seed=seed,
        label_column=label_column, order=order, rank_column=rank_column, gain_column=gain_column,
        overwrite=overwrite, initial_subset=initial_subset, collect=(log.reports,),
    )
    return with_knn_record(result, log)


def d2_graph(
    embeddings: np.ndarray,
    k: int,
    *,
    metric: str = "l2",
    knn_index: str = "auto",
    device: str | torch.device | None = None,
    normalize: bool | None = None,
    seed: int = 0,
    return_report: bool = False,
):
    """The k-NN table ``(neighbours (N, k) int64, distances (N, k) float64)``, Euclidean distances.

    ``embeddings`` is an array or a `hf_prune.ops.matrix.ColumnMatrix` (searched and gathered block by
    block: no copy of it for ``"l2"``, one normalised copy for ``"cosine"``).
    Neighbours come from `hf_prune.ops.knn` (a row is never its own neighbour); distances are
    recomputed exactly in float64, so near-duplicates get ``d ≈ 0`` rather than round-off.
    ``metric="cosine"`` L2-normalises the rows first; ``normalize`` is its deprecated spelling
    (``True`` is ``"cosine"``, ``False`` is ``"l2"``). ``knn_index`` and ``seed`` choose and seed the
    index (`hf_prune.ops.knn.knn`); ``return_report=True`` adds the search's report (index, recall@k).

    Example:
        >>> neighbours, distances = d2_graph(embeddings, 10)
        >>> neighbours, distances, report = d2_graph(embeddings, 10, knn_index="ivf", return_report=True)
    """
    metric = _resolve_metric("d2_graph", metric, normalize)
    if isinstance(embeddings, ColumnMatrix):  # validated when opened; read block by block
        x = normalize_rows(embeddings) if metric == "cosine" else embeddings
    else:
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or not np.isfinite(x).all():
            raise ValueError("`embeddings` must be a finite (N, d) array")
        if metric == "cosine":
            x = normalize_rows(x)
    k = check_positive_int("k", k)
    if k >= len(x):
        raise ValueError(f"`k`={k} must be smaller than the number of rows ({len(x)})")
    _, neighbours, report = knn(x, k, metric="l2", index=check_knn_index(knn_index), device=device, seed=seed,
                                return_report=True)
    distances = neighbour_pairs(x, neighbours, _euclidean)
    return (neighbours, distances, report) if return_report else (neighbours, distances)


def _resolve_metric(method: str, metric: str, normalize: bool | None, stacklevel: int = 4) -> str:
    # "l2" is the default, so it cannot be told apart from "not passed" and yields to `normalize`.
    metric = renamed(method, "normalize", normalize, "metric", metric, default="l2",
                     values={False: "l2", True: "cosine"}, stacklevel=stacklevel)
    return check_choice("metric", metric, ("l2", "cosine"))


def _euclidean(rows: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    diff = neighbours - rows[:, None]
    return np.sqrt(np.einsum("ikd,ikd->ik", diff, diff))


def d2_message_passing(
    scores: np.ndarray,
    neighbours: np.ndarray,
    distances: np.ndarray,
    *,
    gamma_f: float = 1.0,
) -> np.ndarray:
    """Forward message passing on the undirected k-NN graph: ``s_i + Σ_j exp(−γ_f·d_ij)·s_j``.

    Example:
        >>> updated = d2_message_passing(scores, *d2_graph(embeddings, 10), gamma_f=1.0)
    """
    scores = _check_scores(scores)
    graph = _undirected(neighbours, distances, len(scores))
    return _forward(scores, graph, check_nonnegative("gamma_f", gamma_f))


def _forward(scores: np.ndarray, graph: tuple, gamma_f: float) -> np.ndarray:
    """`d2_message_passing` on validated scores and the CSR graph of `_undirected`."""
    indptr, indices, dist = graph
    rows = np.repeat(np.arange(len(scores)), np.diff(indptr))
    messages = np.exp(-gamma_f * dist) * scores[indices]
    return scores + np.bincount(rows, weights=messages, minlength=len(scores))


def d2_select(
    scores: np.ndarray,
    neighbours: np.ndarray,
    distances: np.ndarray,
    *,
    budget: int,
    gamma_f: float = 1.0,
    gamma_r: float = 1.0,
    initial: Sequence[int] = (),
    return_gains: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """D²-Pruning on a given k-NN table: forward message passing, then ``budget`` greedy picks.

    Returns the picked positions in the order they were picked (and, with ``return_gains``, each
    pick's score when it was picked). ``initial`` rows (distinct, at most ``budget``) take the first
    steps in the given order: each down-weights its neighbours like a greedy pick, then the greedy
    continues.

    Example:
        >>> picks = d2_select(scores, *d2_graph(embeddings, 10), budget=100)
        >>> picks, gains = d2_select(scores, *d2_graph(embeddings, 10), budget=100, initial=[7],
        ...                          return_gains=True)
    """
    scores = _check_scores(scores)
    n = len(scores)
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or not 1 <= budget <= n:
        raise ValueError(f"`budget` must be an integer in [1, {n}], got {budget!r}")
    gamma_r = check_nonnegative("gamma_r", gamma_r)
    initial = np.asarray(initial, dtype=np.int64).reshape(-1)
    if len(initial) > budget or len(np.unique(initial)) != len(initial) or (len(initial) and not (
            0 <= initial.min() and initial.max() < n)):
        raise ValueError(f"`initial` must hold at most budget={budget} distinct rows in [0, {n}), "
                         f"got {initial.tolist()}")
    # Build the graph once and share it between the forward and the reverse pass.
    graph = _undirected(neighbours, distances, n)
    current = _forward(scores, graph, check_nonnegative("gamma_f", gamma_f))
    indptr, indices, dist = graph
    reverse_weight = np.exp(-gamma_r * dist)
    selected = np.zeros(n, dtype=bool)
    # Max-heap through negated keys; (key, index) tuples break ties towards the lower index.
    heap = list(zip((-current).tolist(), range(n)))
    heapq.heapify(heap)
    picks, gains = [], []
    while len(picks) < budget:
        if len(picks) < len(initial):
            i = int(initial[len(picks)])  # its heap entries go stale once it is marked selected
        else:
            key, i = heapq.heappop(heap)
            if selected[i] or -key != current[i]:
                continue  # stale entry: the node was picked or its score changed since it was pushed
        selected[i] = True
        picks.append(i)
        gains.append(float(current[i]))
        lo, hi = indptr[i], indptr[i + 1]
        nb = indices[lo:hi]
        open_ = ~selected[nb]
        nb = nb[open_]
        if len(nb) == 0:
            continue
        current[nb] -= current[i] * reverse_weight[lo:hi][open_]
        for j, value in zip(nb.tolist(), current[nb].tolist()):
            heapq.heappush(heap, (-value, j))
    picks = np.asarray(picks, dtype=np.int64)
    return (picks, np.asarray(gains, dtype=np.float64)) if return_gains else picks


def _undirected(neighbours: np.ndarray, distances: np.ndarray, n: int):
    """CSR ``(indptr, indices, distances)`` of the union of the k-NN lists, without duplicate edges."""
    neighbours = np.asarray(neighbours, dtype=np.int64)
    distances = np.asarray(distances, dtype=np.float64)
    if neighbours.shape != distances.shape or neighbours.ndim != 2 or len(neighbours) != n:
        raise ValueError(f"`neighbours` and `distances` must both have shape ({n}, k)")
    if neighbours.size and (neighbours.min() < 0 or neighbours.max() >= n):
        raise ValueError("`neighbours` holds indices outside [0, N)")
    if not np.isfinite(distances).all() or (distances < 0).any():
        raise ValueError("`distances` must be finite and non-negative")
    src = np.repeat(np.arange(n, dtype=np.int64), neighbours.shape[1])
    dst = neighbours.ravel()
    keep = src != dst
    src, dst, dist = src[keep], dst[keep], distances.ravel()[keep]
    both_src = np.concatenate([src, dst])
    both_dst = np.concatenate([dst, src])
    both_dist = np.concatenate([dist, dist])
    # One edge per (i, j): the first occurrence after sorting by (i, j) keeps a distance for it.
    key = both_src * n + both_dst
    key, first = np.unique(key, return_index=True)
    indices = both_dst[first]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(both_src[first], minlength=n))])
    return indptr, indices, both_dist[first]


def _check_scores(scores) -> np.ndarray:
    scores = np.array(scores, dtype=np.float64)
    if scores.ndim != 1 or not np.isfinite(scores).all():
        raise ValueError("`scores` must be a finite one-dimensional array")
    if len(scores) and scores.min() < 0:
        raise ValueError("`scores` must be non-negative for D²-Pruning")
    return scores
