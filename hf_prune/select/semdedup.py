"""SemDeDup (Abbas et al. 2023, "SemDeDup: Data-efficient learning at web-scale through semantic
deduplication"): drop rows whose embedding nearly repeats another row of the same k-means cluster.

The rule, as in the paper's Algorithm 1 and its public code:

1. L2-normalise the embeddings and cluster them with spherical k-means into ``K`` clusters
   (`hf_prune.select.cluster_score.fit_kmeans`, seeded).
2. Order the rows of every cluster by their cosine distance to the cluster centre ``1 − ⟨x_i, c⟩``:
   farthest first (``keep="farthest"``: the paper keeps the point with the lowest cosine similarity
   to the centroid, its code's default ``which_to_keep="hard"``), closest first (``"closest"``, its
   ``"easy"``) or in a seeded random order (``"random"``); equal distances go to the lower row position.
3. For each row take ``M_i = max_{j before i in its cluster} ⟨x_i, x_j⟩``, the column maxima of the
   upper-triangular similarity matrix of the ordered cluster (``M_i = −∞`` for a cluster's first row).
4. Drop row ``i`` when ``M_i > 1 − ε``.

So of a group of duplicates the row that comes first in the order (the farthest from the centre
by default) survives, and every row with no near-duplicate is kept. ``M_i`` compares a row with *all*
earlier rows of its cluster, dropped or not, exactly as the paper does: in a chain ``a ≈ b ≈ c`` in
that order where ``a`` and ``c`` are not within ``ε`` of each other, both ``b`` and ``c`` are dropped.
Because ``M_i`` does not depend on ``ε``, a target size is met exactly by keeping the rows with the
lowest ``M`` (`semdedup`), and a given ``ε`` is `semdedup_filter`.

Memory: similarities are computed per cluster in ``chunk_size × chunk_size`` blocks on ``device``,
with a running maximum, so a cluster of any size fits and no N×N (or cluster×cluster) matrix is
ever held. The metric is cosine, fixed (the paper's, for CLIP-style embeddings).

On Ray (inside ``hp.parallel.ray(...)``): the k-means is one global problem and runs on the driver,
as does the ordering of every cluster by its distance to the centre (one vectorised pass that needs
the centres; the tasks then need only each cluster's member positions in order, so the centres do
not travel). The normalised embeddings are put into the object store once and the per-cluster
step 3 runs as Ray tasks, the clusters packed into about ``4 × workers`` batches of similar cost
(``Σ n_c²``), largest first, so thousands of small clusters do not cost one task each.
``M_i`` of a cluster depends on that cluster alone, so the kept rows equal the one-process call's.
The tasks compute on their worker's CPU. With ``label_column``, each class is one task instead
(`hf_prune.select._core.run_selection`), clustered and deduplicated inside it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from datasets import Dataset

from ..ops.arrow import fingerprint
from ..ops.checks import (
    check_choice,
    check_columns,
    check_nonnegative,
    check_positive_int,
    check_seed,
    seed_int,
)
from ..ops.columns import class_groups
from ..ops.device import resolve_device, to_device
from ..ops.matrix import open_matrix
from ..ops.threads import parallel_steps, step_threads
from ..parallel import current_executor
from ..provenance import stamp_output, with_measurements
from ._core import finalize, group_rows, run_selection
from .cluster_score import cluster_count, fit_kmeans, unit_rows
from .registry import derive_fingerprint, selector

__all__ = ["semdedup", "semdedup_filter", "semdedup_similarity", "max_similarity_to_earlier", "cluster_similarities"]

_KEEP = ("farthest", "closest", "random")
#: Rows per cluster on average when ``n_clusters`` is not given (the paper: 50,000 clusters for 440M rows).
ROWS_PER_CLUSTER = 1000
#: Ray tasks per worker for the per-cluster step: enough batches to balance uneven clusters, few enough
#: that a task's overhead (tens of ms) stays small next to its work.
TASKS_PER_WORKER = 4


def max_similarity_to_earlier(x: torch.Tensor, *, chunk_size: int = 4096) -> np.ndarray:
    """``M_i = max_{j < i} ⟨x_i, x_j⟩`` for the rows of ``x`` in order (``−inf`` for row 0), as float64.

    The column maxima of the strictly upper-triangular part of ``x xᵀ``, computed in
    ``chunk_size × chunk_size`` blocks with a running maximum, so memory is ``chunk_size²`` whatever
    the number of rows.

    Example:
        >>> max_similarity_to_earlier(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64))
        array([-inf,  0. ,  0.8])
    """
    n = x.shape[0]
    out = torch.full((n,), -torch.inf, dtype=x.dtype, device=x.device)
    positions = torch.arange(n, device=x.device)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        rows = x[start:stop]
        best = out[start:stop]
        for col_start in range(0, stop, chunk_size):
            col_stop = min(col_start + chunk_size, stop)
            sims = rows @ x[col_start:col_stop].T
            if col_stop > start:  # the block touches the diagonal: only earlier columns count
                later = positions[col_start:col_stop][None, :] >= positions[start:stop][:, None]
                sims = sims.masked_fill(later, -torch.inf)
            torch.maximum(best, sims.max(dim=1).values, out=best)
    return out.double().cpu().numpy()


def semdedup_similarity(
    x: np.ndarray,
    n_clusters: int,
    rng: np.random.Generator,
    *,
    keep: str = "farthest",
    max_iter: int = 100,
    tol: float = 1e-4,
    chunk_size: int = 4096,
    device: str | torch.device | None = "cpu",
    runs: list | None = None,
) -> np.ndarray:
    """SemDeDup's ``M_i`` for every row of ``x`` (unit rows): its largest cosine similarity to a row
    before it in its cluster's order (the module docstring's steps 1–3); ``−inf`` for a cluster's first row.

    ``rng`` gives the k-means seed (one draw) and, for ``keep="random"``, the order inside clusters.
    Inside ``hp.parallel.ray(...)`` the per-cluster step runs as Ray tasks (module docstring); what
    ran is appended to ``runs`` (the executor's record) when given.

    Example:
        >>> m = semdedup_similarity(unit_rows(emb, "emb"), 10, np.random.default_rng(0))
        >>> kept = m <= 1 - 0.05
    """
    dev = resolve_device(device)
    centroids, assign, _ = fit_kmeans(x, n_clusters, max_iter=max_iter, tol=tol, seed=int(rng.integers(2**31 - 1)),
                                      spherical=True, device=dev)
    centroids = centroids.astype(np.float64)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    if keep == "random":
        key = rng.permutation(len(x)).astype(np.float64)
    else:
        # Block by block: a float64 copy of the rows and of their centroids would be 4 columns' worth.
        distance = np.empty(len(x))
        for start in range(0, len(x), chunk_size):
            stop = min(len(x), start + chunk_size)
            distance[start:stop] = 1.0 - np.einsum("id,id->i", np.asarray(x[start:stop], dtype=np.float64),
                                                   centroids[assign[start:stop]])
        key = -distance if keep == "farthest" else distance
    # Rows by (cluster, key, position): lexsort is stable, so equal keys keep the lower position first.
    order = np.lexsort((key, assign))
    bounds = np.searchsorted(assign[order], np.arange(n_clusters + 1))
    clusters = [order[bounds[c] : bounds[c + 1]] for c in range(n_clusters)]
    clusters = [members for members in clusters if len(members)]
    executor = current_executor()
    m = np.empty(len(x), dtype=np.float64)
    if executor is not None and len(clusters) > 1:
        batches = cost_batches([len(members) for members in clusters], TASKS_PER_WORKER * executor.workers)
        shared = executor.share(x)
        labels = [f"{len(batch):,} of {len(clusters):,} k-means clusters ({sum(len(clusters[c]) for c in batch):,} "
                  f"rows; clusters {', '.join(map(str, batch[:3]))}{', …' if len(batch) > 3 else ''})" for batch in batches]
        results = executor.run_tasks(
            cluster_similarities, [(shared, [clusters[c] for c in batch], chunk_size) for batch in batches],
            labels=labels, rows=[sum(len(clusters[c]) for c in batch) for batch in batches], desc="semdedup clusters",
        )
        for batch, values in zip(batches, results):
            for c, cluster_m in zip(batch, values):
                m[clusters[c]] = cluster_m
        if runs is not None:
            runs.append(executor.record(groups=len(clusters), split=True, tasks=len(batches),
                                        reason="k-means on the driver, then the clusters' similarities as tasks"))
        return m
    xt = to_device(x, dev)

    def similarities(members):
        return max_similarity_to_earlier(xt[torch.from_numpy(members).to(dev)], chunk_size=chunk_size)

    # On the CPU each cluster is one step on one thread (`parallel_steps`): a cluster's products are
    # small, and split over threads they stall at a barrier when other work shares the cores.
    for members, values in zip(clusters, parallel_steps(similarities, clusters, threads=step_threads(dev))):
        m[members] = values
    return m


def cluster_similarities(x: np.ndarray, clusters: list[np.ndarray], chunk_size: int) -> list[np.ndarray]:
    """``M`` of each cluster (`max_similarity_to_earlier` over ``x[members]``, members in cluster order), on the CPU.

    The Ray task of `semdedup_similarity`: ``x`` comes from the object store, each cluster's rows are
    gathered from it.

    Example:
        >>> cluster_similarities(unit, [np.array([4, 0, 9])], 4096)[0][0]
        -inf
    """
    return [max_similarity_to_earlier(to_device(x[members], torch.device("cpu")), chunk_size=chunk_size)
            for members in clusters]


def cost_batches(sizes: list[int], count: int) -> list[list[int]]:
    """Indices of ``sizes`` in at most ``count`` batches of similar cost ``Σ n²``: largest first, each to the cheapest batch.

    Every batch lists its clusters in increasing order; batches come in the order of their first cluster.

    Example:
        >>> cost_batches([5, 1, 1, 4], 2)
        [[0], [1, 2, 3]]
    """
    count = max(1, min(count, len(sizes)))
    cost = [0] * count
    batches: list[list[int]] = [[] for _ in range(count)]
    for c in sorted(range(len(sizes)), key=lambda c: (-sizes[c], c)):
        target = min(range(count), key=lambda b: (cost[b], b))
        batches[target].append(c)
        cost[target] += sizes[c] ** 2
    return sorted((sorted(batch) for batch in batches if batch), key=lambda batch: batch[0])


def _check_options(keep, n_clusters, max_iter, tol, chunk_size):
    check_choice("keep", keep, _KEEP)
    if n_clusters is not None:
        check_positive_int("n_clusters", n_clusters)
    check_positive_int("max_iter", max_iter)
    check_nonnegative("tol", tol)
    check_positive_int("chunk_size", chunk_size)


def _default_clusters(n_clusters, rows, dataset, label_column) -> int:
    return cluster_count(n_clusters, rows, math.ceil(len(rows) / ROWS_PER_CLUSTER), dataset, label_column)


def _group_clusters(n_clusters, n_rows: int) -> int:
    """`_default_clusters` once `_check_clusters` passed: a function of the group's size alone, so the
    per-group pick (a Ray task with ``label_column``) holds no Dataset."""
    return n_clusters if n_clusters is not None else max(1, min(math.ceil(n_rows / ROWS_PER_CLUSTER), n_rows))


def _check_clusters(n_clusters, dataset, label_column) -> None:
    """`ValueError` naming ``n_clusters`` (and the class) where a group has fewer rows, before any work."""
    for rows in class_groups(dataset, label_column)[1]:
        _default_clusters(n_clusters, rows, dataset, label_column)


def _with_ray_record(result: Dataset, runs: list) -> Dataset:
    """``result`` with what the per-cluster tasks ran as its ``"executor"`` entry (the groups' totals)."""
    if not runs:
        return result
    record = {**runs[0], "groups": sum(r["groups"] for r in runs), "tasks": sum(r["tasks"] for r in runs)}
    return with_measurements(result, "executor", record)


@selector(family="coverage", needs=("embedding_column",), device=True)
def semdedup(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    embedding_column: str = "emb",
    n_clusters: int | None = None,
    keep: str = "farthest",
    max_iter: int = 100,
    tol: float = 1e-4,
    chunk_size: int = 4096,
    label_column: str | None = None,
    seed: int | np.random.Generator = 0,
    device: str | torch.device | None = None,
) -> Dataset:
    """SemDeDup to a target size: keep the rows least similar to an earlier row of their k-means cluster.

    Abbas et al. 2023 (see the module docstring for the rule). Every row gets ``M_i``, its largest
    cosine similarity to a row before it in its cluster (clusters ordered by distance to the centre,
    farthest first by default); the ``b`` rows with the lowest ``M`` are kept, equal ``M`` going to
    the lower row position. This is `semdedup_filter` at the ε whose kept count is ``b``: the result
    equals ``semdedup_filter(eps=ε)`` for any ``1 − ε`` in ``[M_(b), M_(b+1))`` (the ``b``-th and
    ``b+1``-th smallest ``M``), and where ``M_(b) = M_(b+1)`` (ties, e.g. several exact copies) the
    tie rule decides which of the tied rows make up the budget. A cluster's first row has
    ``M = −∞``, so a budget up to the number of clusters keeps only such rows. One ε serves all the
    clusters, as in the paper; with ``label_column`` each class is clustered and ranked on its own,
    so every class's budget implies its own ε.

    Args:
        dataset: the input Dataset (not modified).
        fraction / size: the budget (exactly one).
        embedding_column: fixed-length embeddings (e.g. CLIP image features); normalised here, so
            the metric is cosine (fixed). A zero vector is an error.
        n_clusters: k-means clusters (per class with ``label_column``); default ``⌈n / 1000⌉`` for
            ``n`` rows clustered. More clusters compare fewer pairs (cost ≈ Σ n_c² · d); the paper
            used 50,000 clusters for 440M LAION rows.
        keep: which row of a duplicate group survives: ``"farthest"`` from the cluster centre (the
            paper), ``"closest"``, or ``"random"`` (a seeded order inside each cluster).
        max_iter / tol: k-means stops after ``max_iter`` Lloyd steps or once it converges
            (`hf_prune.select.cluster_score.fit_kmeans`).
        chunk_size: rows per similarity block (memory ``chunk_size²`` floats on ``device``).
        label_column: deduplicate inside each class, with a proportional budget split.
        seed: seeds k-means (and ``keep="random"``); per group ``default_rng([seed, group])``.
        device: where the similarity blocks and k-means assignments run (``None`` → CUDA when available).

    Example:
        >>> ds = ds.map(hp.embed.CLIPEmbedder(model, image_column="image", text_column="caption"), batched=True)
        >>> sub = hp.select.semdedup(ds, fraction=0.7, embedding_column="image_emb", n_clusters=100)
    """
    _check_options(keep, n_clusters, max_iter, tol, chunk_size)
    _check_clusters(n_clusters, dataset, label_column)
    dev = resolve_device(device)
    emb = unit_rows(open_matrix(dataset, embedding_column), embedding_column)
    options = dict(keep=keep, max_iter=max_iter, tol=tol, chunk_size=chunk_size, device=dev)
    runs: list[dict] = []  # filled when the one group's clusters ran as Ray tasks

    def pick(rows, k, rng):
        # ``rng`` is default_rng([seed, group]), the generator semdedup_filter gives the same group,
        # so the budgeted and the ε forms cluster and order every group identically.
        m = semdedup_similarity(group_rows(emb, rows), _group_clusters(n_clusters, len(rows)), rng, runs=runs, **options)
        return np.argsort(m, kind="stable")[:k]

    params = {"embedding_column": embedding_column, "n_clusters": n_clusters, "keep": keep, "metric": "cosine",
              "max_iter": max_iter, "tol": tol, "chunk_size": chunk_size, "device": str(dev)}
    result = run_selection(
        dataset, method="semdedup", params=params, fraction=fraction, size=size, seed=seed,
        label_column=label_column, pick=pick,
    )
    return _with_ray_record(result, runs)


def semdedup_filter(
    dataset: Dataset,
    *,
    eps: float,
    embedding_column: str = "emb",
    n_clusters: int | None = None,
    keep: str = "farthest",
    max_iter: int = 100,
    tol: float = 1e-4,
    chunk_size: int = 4096,
    label_column: str | None = None,
    seed: int | np.random.Generator = 0,
    device: str | torch.device | None = None,
) -> Dataset:
    """SemDeDup with a given ε: drop every row whose cosine similarity to an earlier row of its cluster exceeds 1 − ε.

    Abbas et al. 2023, Algorithm 1 (rule in the module docstring): keeps the rows with
    ``M_i ≤ 1 − ε``, i.e. every row that has no near-duplicate and, of each duplicate group, the row
    first in the cluster order (farthest from the centre by default). No budget: the number of rows
    kept is what the data gives (never zero: a cluster's first row is always kept). The paper's
    ε for LAION ranges from about 0.0005 to 0.4; exact copies are caught by any ``ε ≥ 1e-5``
    (float32 similarities of identical unit rows differ from 1 by rounding only).

    Args:
        dataset: the input Dataset (not modified).
        eps: the similarity margin ε, in ``(0, 1]``: rows more similar than ``1 − ε`` are duplicates.
        embedding_column, n_clusters, keep, max_iter, tol, chunk_size, label_column, seed, device:
            as in `semdedup`; with the same values (and seed) both cluster every group identically.

    Returns:
        the kept rows with ``row_id`` and a ``"semdedup_filter"`` provenance step.

    Example:
        >>> deduped = hp.select.semdedup_filter(ds, eps=0.05, embedding_column="image_emb", n_clusters=100)
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)) or not 0 < eps <= 1:
        raise ValueError(f"`eps` must be a number in (0, 1], got {eps!r}")
    _check_options(keep, n_clusters, max_iter, tol, chunk_size)
    check_seed(seed)
    check_columns(dataset, embedding_column, label_column)
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    _check_clusters(n_clusters, dataset, label_column)
    dev = resolve_device(device)
    emb = unit_rows(open_matrix(dataset, embedding_column), embedding_column)
    seed = seed_int(seed)
    options = dict(keep=keep, max_iter=max_iter, tol=tol, chunk_size=chunk_size, device=dev)
    kept, runs = [], []
    # Group by group on the driver: each group's k-means here, its clusters as Ray tasks when on Ray.
    for group, rows in enumerate(class_groups(dataset, label_column)[1]):
        m = semdedup_similarity(group_rows(emb, rows), _group_clusters(n_clusters, len(rows)),
                                np.random.default_rng([seed, group]), runs=runs, **options)
        kept.append(rows[m <= 1.0 - float(eps)])
    params = {"eps": float(eps), "embedding_column": embedding_column, "n_clusters": n_clusters, "keep": keep,
              "metric": "cosine", "max_iter": max_iter, "tol": tol, "chunk_size": chunk_size,
              "label_column": label_column, "seed": seed}
    source = fingerprint(dataset)
    result = _with_ray_record(finalize(dataset, np.concatenate(kept), method="semdedup_filter",
                                       params={**params, "device": str(dev)}), runs)
    # Like a registered selector's: derived from the input, method and arguments (not the device).
    return stamp_output(result, derive_fingerprint(source, "semdedup_filter", params))
