"""TypiClust (Hacohen, Dekel & Weinshall, "Active Learning on a Budget", ICML 2022): the low-budget
baseline of the Gram–Schmidt / feature-norm paper, which also combines it with "+Norm" and "+GS".

The embedding space is clustered into as many clusters as the budget, and from the largest clusters not
yet covered the most *typical* example is taken, typicality being the inverse mean distance to the
example's nearest neighbours inside its cluster:
``Typicality(x) = (1/K · Σ_{x_i ∈ KNN(x)} ‖x − x_i‖₂)^{-1}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from datasets import Dataset

from ..ops.checks import check_positive_int
from ..ops.device import resolve_device
from ..ops.kmeans import default_train_size, kmeans
from ..ops.knn import drop_own_rows, knn, normalize_rows
from ..ops.matrix import open_matrix
from ..ops.norms import squared_row_norms
from ..ops.threads import parallel_steps, step_pool, step_threads
from ._core import group_rows
from ._knn_step import KnnLog, check_knn_index, with_knn_record
from ._ordered import run_ordered_selection
from .registry import selector

__all__ = ["typiclust", "typicality", "best_kmeans", "kmeans_plus_plus", "kmeans_plus_plus_init", "ClusterTypicality"]

#: TypiClust caps the number of clusters for large budgets (its public code uses 500).
MAX_CLUSTERS = 500


def typicality(
    embeddings: np.ndarray,
    k: int,
    *,
    device: str | torch.device | None = "cpu",
    knn_index: str = "auto",
    seed: int = 0,
    return_report: bool = False,
):
    """``1 / mean Euclidean distance to the k nearest other rows`` for every row of ``embeddings``.

    Duplicate points at distance 0 give ``inf`` (the most typical possible). ``device`` is where the
    k-NN search runs (`hf_prune.ops.knn`: faiss on the CPU, torch on CUDA); ``knn_index`` and ``seed``
    choose and seed its index (`hf_prune.ops.knn_index`); ``return_report=True`` returns
    ``(typicality, report)`` with the search's report (index, recall@k).

    Example:
        >>> typicality(np.array([[0.0], [1.0], [3.0]]), 1)
        array([1. , 1. , 0.5])
    """
    sq, _, report = knn(np.asarray(embeddings, dtype=np.float32), k, metric="l2", device=device,
                        index=check_knn_index(knn_index), seed=seed, return_report=True)
    mean = np.sqrt(np.maximum(sq, 0.0)).mean(axis=1)
    with np.errstate(divide="ignore"):
        out = 1.0 / mean
    return (out, report) if return_report else out


#: Most rows read at a time by the k-means++ seeding (as float64 for the norms); fewer for wide rows, so a block
#: stays at 8 MiB (16,384 rows at d = 64, 2,730 at d = 384).
SEEDING_BLOCK_ROWS = 16384
_SEEDING_BLOCK_VALUES = 1 << 20


def _seeding_rows(x: np.ndarray) -> int:
    width = x.shape[1] if x.ndim > 1 else 1
    return max(1, min(SEEDING_BLOCK_ROWS, _SEEDING_BLOCK_VALUES // max(1, width)))


def _products(x: np.ndarray, centre: np.ndarray, out: np.ndarray, rows: np.ndarray | None = None, run=map,
              dtype=np.float64) -> np.ndarray:
    """``out = x[rows] @ centre`` (all rows when ``rows`` is None) in ``dtype``, one block of rows at a
    time (no N×d copy), the blocks run by ``run`` (`hf_prune.ops.threads.step_pool`'s, or ``map``).
    BLAS's matrix–vector product gives each row's value from that row alone, so it does not change with
    the thread count or the blocks (tested); reading float32 rows in float32 is 3.4× faster than
    converting them to float64 (measured: 128,000 × 384, 17 ms against 58 ms per pass, one thread)."""
    step = _seeding_rows(x)
    centre = centre.astype(dtype)
    count = len(x) if rows is None else len(rows)

    def block(start):
        part = slice(start, start + step)
        values = np.asarray(x[part] if rows is None else x[rows[part]], dtype=dtype)
        out[start : start + len(values)] = values @ centre

    for _ in run(block, range(0, count, step)):
        pass
    return out


def _product_error(x: np.ndarray, max_sq: float, dtype) -> float:
    """A bound on the rounding of ``‖x‖² − 2x·c + ‖c‖²`` computed from `_products`' values in ``dtype``."""
    unit_roundoff = 2.0**-53 if dtype == np.float64 else 2.0**-24
    width = x.shape[1] if x.ndim > 1 else 1
    return 2 * (width + 2) * unit_roundoff * max_sq


def kmeans_plus_plus(
    x: np.ndarray, n_clusters: int, rng: np.random.Generator, *, sq: np.ndarray | None = None
) -> np.ndarray:
    """Row indices of k-means++ seeds: each next seed drawn with probability ∝ squared distance to the
    nearest seed so far (Arthur & Vassilvitskii).

    Distances are ``‖x‖² − 2x·c + ‖c‖²`` with float64 norms, from blocks of at most
    `SEEDING_BLOCK_ROWS` rows (`_products`): the memory above ``x`` is a few float64 vectors of length N,
    not a copy of the rows. The first seed's distances are computed in float64; the later products are
    float32 when the rows are and float32's rounding bound (`_product_error`, about
    2·(d + 2)·2⁻²⁴·max‖x‖², a worst case) is below 0.1% of the mean of those distances (unit rows up to
    a few thousand wide), else float64 (rows far from the origin for their spread, whose float32
    products would cancel).
    Distances within the rounding bound count as zero, so a seed and its duplicates are never drawn
    again. The seeds do not depend on the BLAS thread count (tested), and on 128,000 unit rows of the
    scale benchmark all 500 were those of float64 products. ``sq`` optionally passes the float64
    squared row norms of ``x`` (`best_kmeans` reuses them).

    A new seed ``c`` is measured only against the rows it could be nearer to: a row whose nearest seed
    ``a`` lies at least twice as far from ``c`` as from the row (``‖a − c‖² ≥ 4·‖x − a‖²``, with a
    margin of eight rounding bounds: the bound then leaves a gap of four between the two computed
    distances) keeps its distance, by the triangle inequality (Raff, "Exact Acceleration of
    K-Means++ and K-Means‖", IJCAI 2021). The seeds are those of measuring every row each time. What it
    saves depends on the geometry: on 40 Gaussian blobs in 16-d it measured 37% of the rows of 60
    seeds; on unit 384-d rows, whose distances concentrate, the bound rarely holds, and when more than
    half the rows are reachable they are all read in order, as without the bound (same time, measured
    at 100k × 384 with 500 seeds).

    Example:
        >>> seeds = kmeans_plus_plus(x, 10, np.random.default_rng(0))
    """
    x = np.asarray(x)
    n = len(x)
    if sq is None:
        sq = squared_row_norms(x, _seeding_rows(x))
    max_sq = max(float(sq.max(initial=0.0)), 1e-300)
    every_row = np.empty(n, dtype=np.float64)  # the products of a pass over all rows, reused
    with step_pool() as run:
        return _draw_seeds(x, n_clusters, rng, sq, max_sq, every_row, run)


def _draw_seeds(x, n_clusters, rng, sq, max_sq, every_row, run):
    """`kmeans_plus_plus`'s draws, its products' blocks run by ``run``."""
    n = len(x)
    dtype = np.float64  # the first seed's pass; then float32 where its rounding allows

    def distances(rows: np.ndarray | None, seed: int, centre: np.ndarray) -> np.ndarray:
        if rows is None:
            found = sq - 2 * _products(x, centre, every_row, run=run, dtype=dtype) + sq[seed]
        else:
            products = _products(x, centre, np.empty(len(rows), dtype=np.float64), rows, run, dtype)
            found = sq[rows] - 2 * products + sq[seed]
        found[found <= error] = 0.0  # within rounding of zero: the seed itself and its duplicates
        return found

    seeds = np.empty(n_clusters, dtype=np.int64)
    centres = np.empty((n_clusters, x.shape[1] if x.ndim > 1 else 1), dtype=np.float64)
    seeds[0] = rng.integers(n)
    centres[0] = np.asarray(x[seeds[0]], dtype=np.float64).reshape(-1)
    error = _product_error(x, max_sq, np.float64)
    nearest = distances(None, seeds[0], centres[0])
    if x.dtype != np.float64 and _product_error(x, max_sq, np.float32) <= 1e-3 * float(nearest.mean()):
        dtype = np.float32
    error = _product_error(x, max_sq, dtype)
    # Rows closer than this to their seed are measured again whatever the triangle bound says.
    slack = 8 * error + 1e-9 * max_sq
    owner = np.zeros(n, dtype=np.int32)  # each row's nearest seed so far (its position in `seeds`)
    for j in range(1, n_clusters):
        cumulative = np.cumsum(nearest)
        if cumulative[-1] > 0:
            seeds[j] = min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), n - 1)
        else:  # only duplicates of the seeds are left
            seeds[j] = rng.choice(np.setdiff1d(np.arange(n), seeds[:j]))
        centres[j] = np.asarray(x[seeds[j]], dtype=np.float64).reshape(-1)
        gap = ((centres[:j] - centres[j]) ** 2).sum(axis=1)
        reachable = 4.0 * nearest * (1 + 1e-6) + slack > gap[owner]
        count = int(np.count_nonzero(reachable))
        if count == 0:
            continue
        # Gathering scattered rows costs more than reading them in order: past half, read them all.
        rows = None if 2 * count > n else np.flatnonzero(reachable)
        new = distances(rows, seeds[j], centres[j])
        closer = new < (nearest if rows is None else nearest[rows])
        changed = np.flatnonzero(closer) if rows is None else rows[closer]
        nearest[changed] = new[closer]
        owner[changed] = j
    return seeds


def kmeans_plus_plus_init(
    x: np.ndarray, n_clusters: int, rng: np.random.Generator, *, sq: np.ndarray | None = None
) -> np.ndarray:
    """``(K, d)`` k-means++ starting centroids, drawn from the rows k-means trains on.

    `hf_prune.ops.kmeans.kmeans` runs its Lloyd steps on a seeded sample of
    `hf_prune.ops.kmeans.default_train_size` rows (``max(256·K, 65,536)``); the seeds are drawn the same
    way: from every row when there are no more than that, else from a sample of that size drawn with
    ``rng``. Each seed costs one pass over the rows it is drawn from, so at 1M rows and 500 clusters the
    sample (128,000 rows) makes the seeding 8× cheaper than drawing from all rows; below the training
    size nothing changes. ``sq`` optionally passes the float64 squared row norms of ``x``.

    Example:
        >>> init = kmeans_plus_plus_init(x, 10, np.random.default_rng(0))
    """
    size = default_train_size(n_clusters)
    if len(x) <= size:
        return x[kmeans_plus_plus(x, n_clusters, rng, sq=sq)]
    pool = np.sort(rng.choice(len(x), size=size, replace=False))
    rows = x[pool]
    return rows[kmeans_plus_plus(rows, n_clusters, rng, sq=None if sq is None else sq[pool])]


def best_kmeans(
    x: np.ndarray, n_clusters: int, rng: np.random.Generator, n_init: int = 3, *,
    device: str | torch.device | None = "cpu",
) -> np.ndarray:
    """Cluster assignment of the best of ``n_init`` k-means runs (lowest inertia), each started from
    k-means++ seeds and refined by `hf_prune.ops.kmeans`.

    TypiClust's code uses scikit-learn's k-means, i.e. k-means++ seeding with restarts: a single run
    from random rows often merges two clusters and splits another. The seeds are drawn from the rows the
    Lloyd steps train on (`kmeans_plus_plus_init`). Seeds come from ``rng``;
    ``device`` is passed to `hf_prune.ops.kmeans.kmeans`.

    Example:
        >>> assign = best_kmeans(unit_embeddings, 10, np.random.default_rng(0))
    """
    norms = squared_row_norms(x, _seeding_rows(x))  # once for all n_init seedings
    best, best_inertia = None, np.inf
    for _ in range(n_init):
        init = kmeans_plus_plus_init(x, n_clusters, rng, sq=norms)
        _, assign, sq = kmeans(x, n_clusters, seed=int(rng.integers(2**31 - 1)), init=init, device=device)
        inertia = float(sq.astype(np.float64).sum())
        if inertia < best_inertia:
            best, best_inertia = assign, inertia
    return best


@selector(family="coverage", needs=("embedding_column",), device=True)
def typiclust(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    embedding_column: str = "emb",
    k: int = 20,
    n_clusters: int | None = None,
    min_cluster_size: int = 5,
    n_init: int = 3,
    knn_index: str = "auto",
    label_column: str | None = None,
    rank_column: str | None = None,
    overwrite: bool = False,
    initial_subset: Sequence[int] | None = None,
    seed: int | np.random.Generator = 0,
    device: str | torch.device | None = None,
) -> Dataset:
    """Select the most typical example of each of the largest k-means clusters (TypiClust).

    Follows the paper and its public code: embeddings are L2-normalised (as TypiClust and ProbCover load
    their self-supervised features), clustered with k-means into ``n_clusters`` clusters (default: the
    budget, capped at `MAX_CLUSTERS` = 500 for large budgets as TypiClust does; k-means++ seeding and
    the best of ``n_init`` runs, like the scikit-learn k-means TypiClust uses), clusters with at most
    ``min_cluster_size`` points are dropped, and the rest are visited from largest to smallest (ties:
    lower cluster id). From each visited cluster the example with the highest typicality among its
    not-yet-selected members is taken, the kNN being computed inside the cluster with
    ``min(k, ⌊m/2⌋)`` neighbours for a cluster of ``m`` points (TypiClust's rule for small clusters; a
    single remaining point is taken as is). Typicality uses the Euclidean distance of the paper's
    definition (the public code averages squared distances). When the budget exceeds the number of
    clusters (the cap, or explicit ``n_clusters``), the clusters are visited again in the same order, each
    visit recomputing typicality without the points already taken; exhausted clusters are skipped. If
    the clusters left after dropping small ones hold fewer points than the budget, small clusters are
    kept after all. Each cluster is searched once: its points' neighbour lists are then kept current as
    points are taken (`ClusterTypicality`), with the picks of a fresh search per visit when search is
    exact.

    **Labelled rows and order.** ``initial_subset`` holds rows already kept or labelled (an
    active-learning round). They count towards the budget, so the default clustering has (labelled +
    new) clusters, and a cluster holding a labelled row counts as already visited once per labelled
    row: the first round takes the most typical example of each cluster *without* a labelled row,
    which is how scikit-activeml's ``TypiClust`` treats labelled samples (``n_clusters`` = labelled +
    batch size, clusters with a labelled sample skipped). ``rank_column`` records the pick order,
    labelled rows first. The clustering depends on the budget through the default ``n_clusters``, so
    a smaller budget's picks are in general *not* the first picks of a larger budget. What holds:
    with a fixed ``n_clusters`` (and no fallback to small clusters) the picks of a budget are the
    first picks of a larger one; and for any ``n_clusters``, starting a run of the same budget from
    its first ``j`` picks gives the same selection.

    Args:
        dataset: the input `datasets.Dataset` (never modified).
        fraction: kept fraction in (0, 1]; exactly one of ``fraction`` / ``size``.
        size: number of rows to keep.
        embedding_column: fixed-length float list column (self-supervised features in the paper).
        k: neighbours used for typicality (TypiClust: 20); must be smaller than the number of rows.
        n_clusters: number of k-means clusters; default ``min(budget, 500)``.
        min_cluster_size: clusters with at most this many points are skipped (TypiClust: 5).
        n_init: k-means runs with different seeds; the one with the lowest inertia is used.
        knn_index: the typicality k-NN index (`hf_prune.select._knn_step`): ``"auto"`` (default:
            exact for clusters of up to 50,000 rows), ``"exact"``/``"flat"``, ``"ivf"``, ``"ivfpq"``
            or ``"hnsw"``; the indexes used and their recall@k are recorded on the provenance step
            under ``"knn"``.
        label_column: if given, the budget is split per class and TypiClust runs inside each class.
        rank_column: if given, an int64 column with each kept row's pick position (0 first; per
            class when ``label_column`` is given).
        overwrite: replace an existing ``rank_column``.
        initial_subset: row positions (in ``dataset``) already kept or labelled: kept first, in the
            given order, their clusters skipped in the first round, and they count towards the budget
            (per class: towards their class's budget, which they must not exceed).
        seed: seeds k-means (the selection is otherwise deterministic).
        device: where the typicality k-NN searches (and k-means assignments without faiss) run;
            ``None`` picks CUDA when available. k-means uses faiss on the CPU whenever it is installed.

    Returns:
        The selected rows with a ``row_id`` column and a ``typiclust`` provenance step.

    Example:
        >>> sub = hp.select.typiclust(ds, size=100, embedding_column="emb", seed=0)
        >>> # An active-learning round: 20 rows are labelled, query 10 more (30 clusters).
        >>> more = hp.select.typiclust(ds, size=30, initial_subset=labelled_rows, seed=0)
    """
    k = check_positive_int("k", k)
    if n_clusters is not None:
        n_clusters = check_positive_int("n_clusters", n_clusters)
    min_cluster_size = check_positive_int("min_cluster_size", min_cluster_size, minimum=0)
    n_init = check_positive_int("n_init", n_init)
    log = KnnLog(knn_index)
    features = open_matrix(dataset, embedding_column)
    if k >= len(features):
        raise ValueError(f"`k`={k} must be smaller than the number of rows ({len(features)})")
    unit = normalize_rows(features)  # the one copy: normalised block by block
    dev = resolve_device(device)
    used_clusters: list[int] = []

    def order(rows, budget, rng, initial):
        x = group_rows(unit, rows)
        n_c = min(n_clusters if n_clusters is not None else min(budget, MAX_CLUSTERS), len(rows))
        used_clusters.append(n_c)
        assign = best_kmeans(x, n_c, rng, n_init, device=dev)
        return _typiclust_pick(x, assign, budget, k=k, min_cluster_size=min_cluster_size, initial=initial,
                               device=dev, log=log, seed=int(rng.integers(2**31 - 1)))

    params = {
        "embedding_column": embedding_column,
        "k": k,
        "n_clusters": n_clusters,
        "min_cluster_size": min_cluster_size,
        "n_init": n_init,
        "n_clusters_used": used_clusters,
    }
    result = run_ordered_selection(
        dataset, method="typiclust", params=params, fraction=fraction, size=size, seed=seed,
        label_column=label_column, order=order, rank_column=rank_column, overwrite=overwrite,
        initial_subset=initial_subset, collect=(used_clusters, log.reports),
    )
    return with_knn_record(result, log)


def _typiclust_pick(
    x: np.ndarray,
    assign: np.ndarray,
    budget: int,
    *,
    k: int,
    min_cluster_size: int,
    initial: Sequence[int] = (),
    device: str | torch.device | None = "cpu",
    log: KnnLog | None = None,
    seed: int = 0,
) -> np.ndarray:
    """TypiClust's picks (positions into ``x``) in pick order, the ``initial`` rows first.

    Each cluster's neighbour lists are searched once, on its first visit, through ``log`` (default:
    exact search, unrecorded), seeded by ``seed``; later visits update them (`ClusterTypicality`)."""
    log = KnnLog("flat") if log is None else log
    initial = np.asarray(initial, dtype=np.int64).reshape(-1)
    sizes = np.bincount(assign)
    # A cluster is visited once per initial row it holds before the greedy starts.
    visits = np.bincount(assign[initial], minlength=len(sizes))
    eligible = np.flatnonzero(sizes > min_cluster_size)
    if (sizes - visits)[eligible].sum() < budget - len(initial):
        eligible = np.flatnonzero(sizes > 0)
    # Largest clusters first; equal sizes in cluster-id order.
    order = eligible[np.lexsort((eligible, -sizes[eligible]))]
    by_cluster = np.argsort(assign, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    taken = np.zeros(len(x), dtype=bool)
    taken[initial] = True
    members = {int(c): (m := by_cluster[bounds[c] : bounds[c + 1]])[~taken[m]] for c in order}
    left = np.array([len(members[int(c)]) for c in order], dtype=np.int64)
    # Round-robin in `order`: the next cluster is the one visited least so far (ties: earlier in
    # `order`); exhausted clusters are skipped. The visits depend on the clusters' sizes only, not on
    # the picks, so they are laid out first.
    visits = visits[order].astype(np.float64)
    sequence = np.empty(budget - len(initial), dtype=np.int64)
    for step in range(len(sequence)):
        slot = int(np.argmin(np.where(left > 0, visits, np.inf)))
        visits[slot] += 1
        left[slot] -= 1
        sequence[step] = order[slot]
    # Each visited cluster's search is one step of its own, run on the caller's threads one thread each
    # (`parallel_steps`: small searches stall at their threads' barrier on a shared CPU). The searches'
    # reports are recorded in the order of first visits, whatever the thread that ran them.
    visited = sequence[np.sort(np.unique(sequence, return_index=True)[1])].tolist()

    def build(cluster):
        own_log = KnnLog(log.knn_index, log.seed)
        return ClusterTypicality(x, members[cluster], k, log=own_log, device=device, seed=seed), own_log

    clusters: dict[int, ClusterTypicality] = {}
    for cluster, (typical, own_log) in zip(visited, parallel_steps(build, visited, threads=step_threads(device))):
        clusters[cluster] = typical
        log.reports.extend(own_log.reports)
    chosen = np.empty(budget, dtype=np.int64)
    chosen[: len(initial)] = initial
    for step, cluster in enumerate(sequence.tolist(), start=len(initial)):
        chosen[step] = clusters[cluster].take_most_typical()
    return chosen


class ClusterTypicality:
    """The typicality of one cluster's remaining points, kept current as its most typical ones are taken.

    TypiClust recomputes the typicality of a cluster's remaining points on every visit, with
    ``min(k, ⌊m/2⌋)`` neighbours for ``m`` remaining points. Searching the whole cluster again per pick
    costs one cluster-sized k-NN search per kept row (at 1M rows in 500 clusters, 10,000 searches of
    2,000 rows for a 1% budget). Here each point keeps its ``2k`` nearest points of the cluster (one
    search, on the first visit); taking a point recomputes the typicality of the points whose list holds
    it, from their next nearest remaining points, and a point with fewer than ``min(k, ⌊m/2⌋)`` remaining
    points in its list is searched again, exactly, among the cluster's remaining points. With exact
    search (the default up to 50,000 rows per cluster) the picks are those of the per-visit search: the
    same neighbour distances (exact per-pair values, `hf_prune.ops.knn`), averaged in the same order,
    and ties to the earlier row. With an approximate ``knn_index`` the lists come from that index once
    per cluster (its recall is recorded) and only the re-searches are exact.

    Memory: ``2k`` float32 distances and int32 positions per row of the cluster (320 bytes per row at
    ``k = 20``), for every visited cluster.

    Example:
        >>> c = ClusterTypicality(x, np.arange(len(x)), k=20)
        >>> first, second = c.take_most_typical(), c.take_most_typical()
    """

    def __init__(self, x: np.ndarray, members: np.ndarray, k: int, *, log: KnnLog | None = None,
                 device: str | torch.device | None = "cpu", seed: int = 0):
        self.x = x
        self.members = np.asarray(members, dtype=np.int64)
        self.k = int(k)
        self.device = device
        m = len(self.members)
        self.alive = np.ones(m, dtype=bool)
        self.left = m
        self.width = min(m - 1, 2 * self.k)
        self.neighbours = self._usable(m)
        self.typicality = np.full(m, -np.inf)
        if m > 1:
            log = KnnLog("flat") if log is None else log
            values, found = log.search(x[self.members], self.width, metric="l2", device=device, seed=seed)
            self.dist2 = np.asarray(values, dtype=np.float32)
            self.near = np.asarray(found, dtype=np.int32)
            self._update(np.arange(m))

    def _usable(self, m: int) -> int:
        """Neighbours TypiClust uses for a cluster of ``m`` remaining points."""
        return max(1, min(self.k, m // 2))

    def take_most_typical(self) -> int:
        """Remove the most typical remaining point (ties: the earlier member) and return its row."""
        if self.left < 1:
            raise ValueError("every point of this cluster has been taken")
        if self.left == 1:
            best = int(np.flatnonzero(self.alive)[0])
        else:
            best = int(np.argmax(self.typicality))
        self.alive[best] = False
        self.typicality[best] = -np.inf
        self.left -= 1
        if self.left > 1:
            usable = self._usable(self.left)
            if usable != self.neighbours:
                self.neighbours = usable
                self._update(np.flatnonzero(self.alive))
            else:
                held = np.flatnonzero((self.near == best).any(axis=1) & self.alive)
                self._update(held)
        return int(self.members[best])

    def _update(self, rows: np.ndarray) -> None:
        """Recompute the typicality of ``rows`` (local positions), searching again where a list ran out."""
        if len(rows) == 0:
            return
        use = self._first_remaining(rows)
        short = rows[use.sum(axis=1) < self.neighbours]
        if len(short):
            self._search_again(short)
            use = self._first_remaining(rows)
        used = self.dist2[rows][use].reshape(len(rows), self.neighbours)
        with np.errstate(divide="ignore"):
            self.typicality[rows] = 1.0 / np.sqrt(np.maximum(used, 0.0)).mean(axis=1)

    def _first_remaining(self, rows: np.ndarray) -> np.ndarray:
        """Mask of each row's first `neighbours` list entries that are still in the cluster."""
        near = self.near[rows]
        remaining = (near >= 0) & self.alive[np.maximum(near, 0)]
        return remaining & (np.cumsum(remaining, axis=1) <= self.neighbours)

    def _search_again(self, rows: np.ndarray) -> None:
        """New lists for ``rows``: their nearest remaining points of the cluster, by exact search."""
        remaining = np.flatnonzero(self.alive)
        width = min(self.width, len(remaining) - 1)
        points = self.x[self.members[remaining]]
        values, found = knn(points, width + 1, metric="l2", queries=self.x[self.members[rows]],
                            exclude_self=False, index="flat", device=self.device)
        values, found = drop_own_rows(values, remaining[found], rows)  # as a self-search does
        self.dist2[rows] = np.inf
        self.near[rows] = -1
        self.dist2[rows, :width] = values
        self.near[rows, :width] = found
