"""ProbCover (Yehuda, Dekel, Hacohen & Weinshall, "Active Learning Through a Covering Lens", NeurIPS
2022): the low-budget baseline of the Gram–Schmidt / feature-norm paper, which also combines it with
"+Norm" and "+GS".

ProbCover maximises *probability coverage*: every selected example covers the ball of radius δ around it
in a self-supervised embedding space, and examples are chosen greedily to cover as many not-yet-covered
points as possible. δ is the largest radius for which at least a fraction α (0.95) of the balls are
*pure*, i.e. contain only points of one k-means cluster.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from datasets import Dataset

from ..ops.checks import check_optional_positive, check_positive_int, check_probability
from ..ops.device import resolve_device
from ..ops.knn import RadiusGraphTooLarge, normalize_rows, radius_neighbors
from ..ops.matrix import open_matrix
from ..ops.other_label import nearest_other_label
from ._core import group_rows
from ._knn_step import KnnLog, check_knn_index, with_knn_record
from ._ordered import run_ordered_selection
from .registry import selector
from .typiclust import best_kmeans

__all__ = ["probcover", "purity_delta", "coverage_graph", "max_coverage"]

#: Default cap on the δ-graph's edges (2²⁸ ≈ 268M, about 2 GiB while it is built).
MAX_EDGES = 1 << 28
#: Default number of k-means pseudo-labels is the budget, capped like TypiClust's cluster count.
MAX_PSEUDO_LABELS = 500


@selector(family="coverage", needs=("embedding_column",), device=True)
def probcover(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    embedding_column: str = "emb",
    delta: float | None = None,
    purity: float = 0.95,
    n_pseudo_labels: int | None = None,
    n_init: int = 3,
    max_edges: int | None = MAX_EDGES,
    knn_index: str = "auto",
    label_column: str | None = None,
    rank_column: str | None = None,
    gain_column: str | None = None,
    overwrite: bool = False,
    initial_subset: Sequence[int] | None = None,
    seed: int | np.random.Generator = 0,
    device: str | torch.device | None = None,
) -> Dataset:
    """Greedy maximum coverage with δ-balls on the L2-normalised embeddings (ProbCover).

    Embeddings are L2-normalised (as ProbCover loads its self-supervised features), so ``δ`` is a
    Euclidean distance between unit vectors (``cos ≥ 1 − δ²/2``). The graph has an edge ``x → y`` iff
    ``‖x − y‖ < δ`` (strict, as in ProbCover's code; every point covers itself). With exact search it
    holds *every* such pair, found by an exact radius search (`hf_prune.ops.knn.radius_neighbors`:
    faiss ``range_search`` in row blocks, boundary pairs decided in float64); with an approximate
    ``knn_index`` (``"auto"`` where it leaves exact search) an IVF-Flat radius search finds most of them
    (its edge recall is measured and recorded) and nothing farther than δ. The graph is stored as CSR,
    whose memory is its edges, never an N×N matrix; more than ``max_edges`` edges raise a
    `ValueError` with the count.
    The greedy loop is exact: each step picks the point whose ball holds the most uncovered points
    (ties to the lower row position), marks them covered and subtracts them from the counts of the
    balls that hold them (O(edges) over the whole run, never a recount). Once everything is covered
    every gain is zero, and the remaining picks are drawn uniformly (seeded) among the points not
    yet selected rather than taken in row order.

    With ``delta=None`` δ follows ProbCover's purity rule: k-means into ``n_pseudo_labels`` clusters
    gives pseudo-labels, a ball ``B_δ(x)`` is pure iff no point of another cluster lies within ``δ`` of
    ``x``, and δ is the largest radius at which at least ``purity`` of the balls are pure. This is
    computed exactly (not on a grid): with ``r_x`` the distance from ``x`` to the nearest point of
    another cluster, δ is the ``(N − ⌈purity·N⌉)``-th smallest ``r_x``, each ``r_x`` found in one pass
    that masks the row's own cluster out of its products (`purity_delta`). ProbCover
    uses as many pseudo-labels as classes; without that knowledge the default is the budget (capped at
    500, like TypiClust's clusters), which equals the class count at ProbCover's typical budgets. Pass
    ``n_pseudo_labels`` (e.g. the number of classes) to follow the paper exactly. The δ used per group
    and its graph's edge count are recorded in the provenance (``delta_used``, ``graph_edges``). When
    every ball holds every point (δ = ∞: a group of one row, or a single pseudo-label) the first row
    covers everything and no graph is built.

    **Order and labelled rows.** ``rank_column`` records the pick order and ``gain_column`` how many
    not-yet-covered points each pick covered. ``initial_subset`` holds rows already kept or labelled
    (an active-learning round): they are kept first, count towards the budget, and the points in
    their balls start covered, as scikit-activeml's ``ProbCover`` treats labelled samples (it removes
    the edges into points covered by labelled samples before each query); the greedy then continues
    among the other rows. With a fixed δ (``delta=``, or ``n_pseudo_labels=`` so the purity rule does
    not depend on the budget) the greedy picks of a budget are the first picks of any larger budget,
    and starting from the first ``j`` picks of a run gives that run's selection. The prefix property
    covers the picks with a positive gain: once everything is covered, the rest of the budget is a
    seeded uniform draw that depends on how many rows are drawn.

    Args:
        dataset: the input `datasets.Dataset` (never modified).
        fraction: kept fraction in (0, 1]; exactly one of ``fraction`` / ``size``.
        size: number of rows to keep.
        embedding_column: fixed-length float list column (self-supervised features in the paper).
        delta: ball radius on unit-normalised embeddings; ``None`` chooses it by the purity rule.
        purity: the purity threshold α in (0, 1] (ProbCover: 0.95).
        n_pseudo_labels: k-means clusters for the purity rule; default ``min(budget, 500)``, at least 2.
        n_init: k-means runs with different seeds for the pseudo-labels; the lowest inertia is used.
        max_edges: cap on the δ-graph's edges (about 8 bytes each while it is built); ``None`` for no cap.
        knn_index: the index of the purity rule's search and of the δ-graph (`hf_prune.select._knn_step`):
            ``"auto"`` (default: exact up to 50,000 rows per group), ``"exact"``/``"flat"``,
            ``"ivf"``, ``"ivfpq"`` or ``"hnsw"``. Both are exact where the search is exact, and run on
            IVF-Flat lists for every approximate kind: the purity rule's nearest other-cluster rows (see
            `purity_delta`) and the δ-graph's radius search (`coverage_graph`; symmetrising its edges
            costs about 24 bytes per edge while it runs). The indexes used and their recall (for the
            purity rule: the share of sampled rows whose ``r_x`` is exact; for the graph: the share of
            the exact graph's edges it holds) are recorded on the provenance step under ``"knn"``.
        label_column: if given, the budget is split per class and ProbCover runs inside each class.
        rank_column: if given, an int64 column with each kept row's pick position (0 first; per
            class when ``label_column`` is given).
        gain_column: if given, a float64 column with the number of points each pick newly covered.
        overwrite: replace an existing ``rank_column`` / ``gain_column``.
        initial_subset: row positions (in ``dataset``) already kept or labelled: kept first, in the
            given order, their balls start covered, and they count towards the budget (per class:
            towards their class's budget, which they must not exceed).
        seed: seeds k-means and the picks made once everything is covered.
        device: device of the kNN and radius searches (faiss on CPU, torch on CUDA); ``None`` picks CUDA
            when available. The graph, and so the selection, is the same on every device.

    Returns:
        The selected rows with a ``row_id`` column and a ``probcover`` provenance step.

    Example:
        >>> sub = hp.select.probcover(ds, size=100, embedding_column="emb", n_pseudo_labels=10)
        >>> # An active-learning round: rows 3 and 17 are labelled, pick 8 more by coverage.
        >>> more = hp.select.probcover(ds, size=10, delta=0.4, initial_subset=[3, 17], rank_column="rank")
    """
    check_optional_positive("delta", delta)  # `delta` itself is recorded as given
    purity = check_probability("purity", purity)
    if purity == 0:
        raise ValueError("`purity` must be a number in (0, 1], got 0")
    if n_pseudo_labels is not None:
        n_pseudo_labels = check_positive_int("n_pseudo_labels", n_pseudo_labels, minimum=2)
    n_init = check_positive_int("n_init", n_init)
    if max_edges is not None:
        max_edges = check_positive_int("max_edges", max_edges)
    log = KnnLog(knn_index)
    unit = normalize_rows(open_matrix(dataset, embedding_column))  # the one copy: normalised block by block
    dev = resolve_device(device)
    deltas: list[float] = []
    edges: list[int] = []

    def order(rows, k, rng, initial):
        n = len(rows)
        x = group_rows(unit, rows)
        # A child stream seeds the indexes: `rng`'s own draws (the covered-pool picks) stay as they were.
        index_seed = int(rng.spawn(1)[0].integers(2**31 - 1))
        if delta is None:
            if n == 1:
                radius = float("inf")
            else:
                n_labels = n_pseudo_labels if n_pseudo_labels is not None else max(2, min(k, MAX_PSEUDO_LABELS))
                labels = best_kmeans(x, min(n_labels, n), rng, n_init, device=dev)
                radius = purity_delta(x, labels, purity=purity, device=dev, log=log, seed=index_seed)
        else:
            radius = float(delta)
        deltas.append(radius)
        if math.isinf(radius):
            # Every ball holds every point (one point, or one pseudo-label): the first row covers all.
            edges.append(n * n)  # the complete graph, implied rather than built
            first = initial if len(initial) else np.array([0], dtype=np.int64)
            rest = rng.choice(np.setdiff1d(np.arange(n), first), size=k - len(first), replace=False)
            gains = np.zeros(k)
            gains[0] = n
            return np.concatenate([first, rest]).astype(np.int64), gains
        indptr, indices = coverage_graph(x, radius, max_edges=max_edges, device=dev, seed=index_seed, log=log)
        edges.append(len(indices))
        return max_coverage(indptr, indices, k, rng, initial=initial, return_gains=True)

    params = {
        "embedding_column": embedding_column,
        "delta": delta,
        "purity": purity,
        "n_pseudo_labels": n_pseudo_labels,
        "n_init": n_init,
        "max_edges": max_edges,
        "delta_used": deltas,
        "graph_edges": edges,
    }
    result = run_ordered_selection(
        dataset, method="probcover", params=params, fraction=fraction, size=size, seed=seed,
        label_column=label_column, order=order, rank_column=rank_column, gain_column=gain_column,
        overwrite=overwrite, initial_subset=initial_subset, collect=(deltas, edges, log.reports),
    )
    return with_knn_record(result, log)


def _unit_distances(sims: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(2.0 - 2.0 * sims.astype(np.float64), 0.0, None))


def purity_delta(
    x: np.ndarray,
    labels: np.ndarray,
    *,
    purity: float = 0.95,
    device: str | torch.device | None = "cpu",
    knn_index: str = "auto",
    seed: int = 0,
    log: KnnLog | None = None,
) -> float:
    """The largest δ such that at least ``purity`` of the balls ``{y : ‖x − y‖ < δ}`` are label-pure.

    ``x`` must be L2-normalised. A ball around ``x`` is pure iff ``δ ≤ r_x``, the distance to the
    nearest point with another label, so the answer is the ``(N − ⌈purity·N⌉)``-th smallest ``r_x``.
    Every ``r_x`` comes from one pass in which each row's own label is masked out of its products
    (`hf_prune.ops.other_label.nearest_other_label`), so the memory is one block of products per worker
    whatever the size of the clusters. Returns ``inf`` when every point has the same label.
    ``knn_index`` and ``seed`` choose and seed that pass (``"auto"`` is exact up to 50,000 rows, and
    with exact search δ is exact; every approximate kind runs the masked IVF-Flat self-join, which can
    miss the nearest other-label point and so overestimate an ``r_x``; on a GPU the pass is exact);
    ``log`` (a `hf_prune.select._knn_step.KnnLog`) keeps the pass's report (its ``recall_at_k`` is the
    share of sampled rows whose ``r_x`` is the exact one) and then decides the index instead of
    ``knn_index``.

    Example:
        >>> purity_delta(unit_embeddings, kmeans_labels, purity=0.95)
    """
    log = KnnLog(knn_index) if log is None else log
    n = len(x)
    need = n - int(np.ceil(purity * n - 1e-9))  # position of δ among the sorted r_x
    sims, report = nearest_other_label(x, labels, index=log.knn_index, device=device, seed=seed,
                                       return_report=True)
    log.add(report)
    return float(np.partition(_unit_distances(sims), need)[need])  # no other label: -inf → r = inf


def coverage_graph(
    x: np.ndarray,
    delta: float,
    *,
    max_edges: int | None = MAX_EDGES,
    device: str | torch.device | None = "cpu",
    chunk_size: int = 4096,
    knn_index: str = "flat",
    seed: int = 0,
    log: KnnLog | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """ProbCover's δ-graph on L2-normalised rows as CSR ``(indptr, indices)``: all ``‖x_i − x_j‖ < delta``.

    Row ``i``'s ball (self included) is ``indices[indptr[i]:indptr[i + 1]]``, symmetric (see
    `hf_prune.ops.knn.radius_neighbors`); memory is the edges. More than ``max_edges`` edges raise a
    `ValueError` naming ``delta`` and ``max_edges`` with the number of edges found. Exact with
    ``knn_index="flat"`` (and ``"auto"`` where it means exact search); any approximate kind searches
    the balls in IVF-Flat lists, seeded by ``seed`` (IVF-PQ's distances are too coarse for a radius
    and faiss's HNSW has no range search), missing the pairs of lists a ball does not probe. ``log`` (a
    `hf_prune.select._knn_step.KnnLog`) then decides the kind instead of ``knn_index`` and keeps the
    search's report, whose ``recall_at_k`` is the share of the exact graph's edges found.

    Example:
        >>> indptr, indices = coverage_graph(unit_embeddings, 0.5)
        >>> ball_sizes = np.diff(indptr)
        >>> indptr, indices = coverage_graph(unit_embeddings, 0.5, knn_index="ivf")  # approximate
    """
    kind = check_knn_index(knn_index if log is None else log.knn_index)
    if kind not in ("auto", "flat", "exact"):
        kind = "ivf"
    try:
        indptr, indices, report = radius_neighbors(x, delta, metric="l2", max_edges=max_edges, device=device,
                                                   chunk_size=chunk_size, index=kind, seed=seed,
                                                   return_report=True)
    except RadiusGraphTooLarge as err:
        raise ValueError(
            f"ProbCover: delta={delta:.6g} makes the coverage graph too large ({err}); pass a smaller "
            "`delta` (or `n_pseudo_labels`/`purity` that give one), or raise `max_edges`"
        ) from err
    if log is not None:
        log.add(report)
    return indptr, indices


def _gather(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The neighbour lists of ``rows`` concatenated, without a Python loop."""
    starts, lengths = indptr[rows], indptr[rows + 1] - indptr[rows]
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return indices[offsets + np.arange(offsets.size)]


def max_coverage(
    indptr: np.ndarray,
    indices: np.ndarray,
    k: int,
    rng: np.random.Generator,
    *,
    symmetric: bool = True,
    initial: Sequence[int] = (),
    return_gains: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Greedy maximum coverage over a CSR graph (row ``i`` covers ``indices[indptr[i]:indptr[i+1]]``): ``k`` rows.

    Each step takes the row covering the most uncovered rows, ties to the lower row position, marks
    its ball covered and decrements the counts of every row whose ball holds a newly covered row. A
    row's in-edges are its out-edges when the graph is ``symmetric`` (a radius graph); otherwise the
    transpose is built once. Each row is covered once, so the updates cost O(edges) in all. When
    nothing is left to cover, the remaining picks are uniform among unselected rows. The graph must
    not hold duplicate edges.

    ``initial`` rows (distinct, at most ``k``) are taken first, in the given order, whatever their
    gain: their balls start covered and the greedy continues from there. The picks come back in pick
    order; with ``return_gains`` also the number of rows each pick newly covered.

    Example:
        >>> picks = max_coverage(indptr, indices, 10, np.random.default_rng(0))
        >>> picks, gains = max_coverage(indptr, indices, 10, np.random.default_rng(0), initial=[4],
        ...                             return_gains=True)
    """
    n = len(indptr) - 1
    degree = np.diff(indptr).astype(np.int64)
    if symmetric:
        in_ptr, in_src = indptr, indices
    else:
        order = np.argsort(indices, kind="stable")
        in_src = np.repeat(np.arange(n), np.diff(indptr))[order]
        in_ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(indices, minlength=n), out=in_ptr[1:])
    initial = np.asarray(initial, dtype=np.int64).reshape(-1)
    if len(initial) > k or len(np.unique(initial)) != len(initial) or (len(initial) and not (
            0 <= initial.min() and initial.max() < n)):
        raise ValueError(f"`initial` must hold at most k={k} distinct rows in [0, {n}), "
                         f"got {initial.tolist()}")
    covered = np.zeros(n, dtype=bool)
    chosen = np.zeros(n, dtype=bool)
    picks: list[int] = []
    gains: list[int] = []
    for step in range(k):
        if step < len(initial):
            cur = int(initial[step])
        else:
            # The first maximum (ties to the lower row); a picked row's ball is covered, so its count is 0.
            cur = int(np.argmax(degree))
            if degree[cur] == 0:
                break
        ball = indices[indptr[cur] : indptr[cur + 1]]
        new = ball[~covered[ball]]
        covered[new] = True
        holders = _gather(in_ptr, in_src, new)
        # A few holders: subtract in place; many: one bincount pass over all rows is faster.
        if len(holders) * 8 < n:
            np.subtract.at(degree, holders, 1)
        else:
            degree -= np.bincount(holders, minlength=n)
        picks.append(cur)
        gains.append(len(new))
        chosen[cur] = True
    rest = k - len(picks)
    if rest:
        picks.extend(rng.choice(np.flatnonzero(~chosen), size=rest, replace=False).tolist())
        gains.extend([0] * rest)
    picks = np.asarray(picks, dtype=np.int64)
    return (picks, np.asarray(gains, dtype=np.float64)) if return_gains else picks
