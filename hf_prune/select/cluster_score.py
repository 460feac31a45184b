"""Clustering + CLIP score: k-means on image features, then the highest scores inside every cluster.

The image–text baseline of the InfoMax seed (Sec. 4.2, "Clustering + CLIP", after Li et al. 2022;
2023): plain CLIP-score filtering keeps well-aligned pairs but ignores redundancy, so the pool is
first clustered in the image-feature space and each cluster keeps its own best-scored pairs. The
module also holds `fit_kmeans`, the k-means-to-convergence (``max_iter`` + ``tol``) that the
clustering selectors (`cluster_top_k`, `hf_prune.select.semdedup`, `hf_prune.select.image_based`)
share.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from datasets import Dataset

from ..ops.checks import check_bool, check_choice, check_nonnegative, check_positive_int
from ..ops.columns import class_groups, read_vector
from ..ops.device import resolve_device
from ..ops.kmeans import kmeans
from ..ops.knn import normalize_rows
from ..ops.matrix import open_matrix
from ._core import run_selection, split_budget
from .registry import selector
from .typiclust import kmeans_plus_plus_init

__all__ = ["cluster_top_k", "fit_kmeans", "unit_rows", "cluster_count"]

_METRICS = ("cosine", "l2")
#: Lloyd steps between convergence checks: a check needs the rows' assignment, one more pass over them.
_CHECK_EVERY = 5


def fit_kmeans(
    x: np.ndarray,
    n_clusters: int,
    *,
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    spherical: bool = False,
    device: str | torch.device | None = "cpu",
) -> tuple[np.ndarray, np.ndarray, int]:
    """k-means run until it converges: ``(centroids (K, d), assignment (N,), Lloyd steps taken)``.

    The centroids start from k-means++ seeds drawn with ``seed`` (Arthur & Vassilvitskii 2007,
    `hf_prune.select.typiclust.kmeans_plus_plus_init`: from the rows the Lloyd steps train on, one pass
    over them per cluster; seeding from
    random rows often merges two well-separated clusters and splits another), and every step is one
    Lloyd step of `hf_prune.ops.kmeans.kmeans` (faiss's algorithm) from the previous centroids.
    It stops after ``max_iter`` steps, or earlier once no row changes cluster or the centroids move
    by ``Σ‖c_new − c_old‖² ≤ tol · mean_j Var(x_j)`` (scikit-learn's rule: the tolerance is relative
    to the data's per-feature variance). Convergence is checked after every run of ``_CHECK_EVERY``
    (5) steps, because each check costs one more assignment pass over the rows; the movement compared
    with the tolerance is then the whole run's. ``spherical=True`` normalises the centroids after
    every step (cosine k-means on unit rows). Deterministic for a given ``seed``.

    Example:
        >>> centroids, assign, steps = fit_kmeans(np.array([[0.0], [0.1], [5.0], [5.1]]), 2, seed=0)
        >>> sorted(np.bincount(assign).tolist())
        [2, 2]
    """
    max_iter = check_positive_int("max_iter", max_iter)
    tol = check_nonnegative("tol", tol)
    x = np.ascontiguousarray(x, dtype=np.float32)
    limit = tol * _mean_feature_variance(x)
    centroids = kmeans_plus_plus_init(x, n_clusters, np.random.default_rng(seed))
    assign, steps = None, 0
    while steps < max_iter:
        run = min(_CHECK_EVERY, max_iter - steps)
        moved, new_assign = _lloyd_steps(x, n_clusters, centroids, run, seed, spherical, device)
        steps += run
        shift = float(((moved.astype(np.float64) - centroids) ** 2).sum())
        changed = assign is None or bool((new_assign != assign).any())
        centroids, assign = moved, new_assign
        # Lloyd steps never raise the inertia, so an unchanged assignment after a run is a fixed point.
        if not changed or shift <= limit:
            break
    return centroids, assign, steps


def _lloyd_steps(x, n_clusters, init, steps, seed, spherical, device):
    with warnings.catch_warnings():
        # Arrow-backed columns are read-only; the k-means kernel only reads them, but torch warns.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        centroids, assign, _ = kmeans(x, n_clusters, iterations=steps, seed=seed, spherical=spherical, init=init,
                                      device=device)
    return centroids, assign


def _mean_feature_variance(x: np.ndarray, block_values: int = 1 << 20) -> float:
    """``x.var(axis=0).mean()`` in float64, two passes over row blocks of 8 MiB (no float64 copy of ``x``)."""
    block_rows = max(1, block_values // max(1, x.shape[1]))
    mean = np.zeros(x.shape[1])
    for start in range(0, len(x), block_rows):
        mean += x[start : start + block_rows].sum(axis=0, dtype=np.float64)
    mean /= max(len(x), 1)
    squares = np.zeros(x.shape[1])
    for start in range(0, len(x), block_rows):
        squares += ((x[start : start + block_rows].astype(np.float64) - mean) ** 2).sum(axis=0)
    return float((squares / max(len(x), 1)).mean())


def unit_rows(x, column: str) -> np.ndarray:
    """``x`` with every row scaled to unit L2 norm; `ValueError` naming ``column`` for a zero row.

    ``x`` is an array or a `hf_prune.ops.matrix.ColumnMatrix`; the latter is normalised block by block
    into the one float32 array returned (no copy of the column before it).

    Example:
        >>> unit_rows(np.array([[3.0, 4.0]]), "emb")
        array([[0.6, 0.8]], dtype=float32)
        >>> unit = unit_rows(open_matrix(ds, "emb"), "emb")
    """
    if not hasattr(x, "blocks"):
        _check_nonzero(np.linalg.norm(x, axis=1), 0, column)
        return normalize_rows(x)
    out = np.empty(x.shape, dtype=np.float32)
    for start, block in x.blocks():
        _check_nonzero(np.linalg.norm(block, axis=1), start, column)
        out[start : start + len(block)] = normalize_rows(block)
    return out


def _check_nonzero(norms: np.ndarray, start: int, column: str) -> None:
    if (norms == 0).any():
        raise ValueError(f"column {column!r} has a zero vector (row {start + int(np.argmin(norms))}); cosine is undefined")


def cluster_count(n_clusters: int | None, rows: np.ndarray, default: int, dataset: Dataset, label_column: str | None) -> int:
    """The number of clusters for the rows ``rows`` of ``dataset``: ``n_clusters``, or ``default`` for ``None``.

    `ValueError` naming ``n_clusters`` (and the class, when ``label_column`` is given) when it is
    larger than the number of rows clustered.

    Example:
        >>> cluster_count(None, np.arange(100), 10, ds, None)
        10
    """
    if n_clusters is None:
        return max(1, min(default, len(rows)))
    if n_clusters > len(rows):
        where = "the dataset" if label_column is None else (
            f"class {dataset[int(rows[0])][label_column]!r} of {label_column!r}")
        raise ValueError(f"`n_clusters`={n_clusters} is larger than the number of rows in {where} ({len(rows)})")
    return n_clusters


@selector(family="score-based", needs=("embedding_column", "score_column"), device=True)
def cluster_top_k(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    embedding_column: str = "emb",
    score_column: str,
    n_clusters: int | None = None,
    metric: str = "cosine",
    descending: bool = True,
    max_iter: int = 100,
    tol: float = 1e-4,
    label_column: str | None = None,
    seed: int | np.random.Generator = 0,
    device: str | torch.device | None = None,
) -> Dataset:
    """Clustering + CLIP score: k-means on the embeddings, then the top scores inside every cluster.

    The InfoMax seed's image–text baseline (Sec. 4.2, "Clustering + CLIP"; Li et al. 2022; 2023):
    cluster the pool's image features into ``K`` clusters with k-means (`fit_kmeans`), split the
    budget ``b`` over the clusters proportionally to their sizes, ``b_c ≈ b · n_c / N``, by largest
    remainders (`hf_prune.select._core.split_budget`: each cluster gets ``⌊b·n_c/N⌋`` and the rows
    left over go to the largest fractional parts, ties to the lower cluster index), and keep the
    ``b_c`` highest-scored rows of each cluster ``c``. Equal scores go to the lower row position.
    With one cluster this is `hf_prune.select.top_k`.

    Args:
        dataset: the input Dataset (not modified).
        fraction / size: the budget (exactly one).
        embedding_column: fixed-length image embeddings (e.g. CLIP image features).
        score_column: the score to rank by inside each cluster (e.g. the CLIP score).
        n_clusters: number of k-means clusters (per class when ``label_column`` is given); default
            ``⌈√n⌉`` for ``n`` rows clustered. Larger than the rows clustered is an error.
        metric: ``"cosine"`` (default: spherical k-means on L2-normalised rows, the geometry of CLIP
            features) or ``"l2"`` (k-means on the raw embeddings).
        descending: keep the highest scores (``True``) or the lowest (``False``).
        max_iter / tol: k-means stops after ``max_iter`` Lloyd steps or once it converges (`fit_kmeans`).
        label_column: cluster and rank inside each class, with a proportional budget split per class.
        seed: seeds the k-means initialisation (per class: derived from the seed and the class).
        device: where the k-means assignment steps run (``None`` → CUDA when available).

    Example:
        >>> ds = ds.map(hp.embed.CLIPEmbedder(model, image_column="image", text_column="caption"), batched=True)
        >>> sub = hp.select.cluster_top_k(ds, fraction=0.3, embedding_column="image_emb",
        ...                               score_column="clip_score", n_clusters=100)
    """
    check_choice("metric", metric, _METRICS)
    check_bool("descending", descending)
    if n_clusters is not None:
        n_clusters = check_positive_int("n_clusters", n_clusters)
    check_positive_int("max_iter", max_iter)
    check_nonnegative("tol", tol)
    dev = resolve_device(device)
    emb = open_matrix(dataset, embedding_column)
    scores = read_vector(dataset, score_column, dtype=np.float64)
    # One float32 copy at most: normalised block by block for cosine.
    emb = unit_rows(emb, embedding_column) if metric == "cosine" else emb.to_numpy()
    for rows in class_groups(dataset, label_column)[1]:  # a class with too few rows fails here, before any work
        cluster_count(n_clusters, rows, 1, dataset, label_column)

    def pick(rows, k, rng):
        # Checked above, so the per-class pick (a Ray task on Ray) needs no Dataset for the message.
        n_c = cluster_count(n_clusters, rows, math.ceil(math.sqrt(len(rows))), None, None)
        _, assign, _ = fit_kmeans(emb[rows], n_c, max_iter=max_iter, tol=tol, seed=int(rng.integers(2**31 - 1)),
                                  spherical=metric == "cosine", device=dev)
        budgets = split_budget(np.bincount(assign, minlength=n_c), k)
        key = -scores[rows] if descending else scores[rows]
        # Rows by (cluster, score, position): a stable sort on the score, then on the cluster.
        order = np.argsort(key, kind="stable")
        order = order[np.argsort(assign[order], kind="stable")]
        sorted_clusters = assign[order]
        starts = np.searchsorted(sorted_clusters, np.arange(n_c))
        rank = np.arange(len(rows)) - starts[sorted_clusters]
        return order[rank < budgets[sorted_clusters]]

    params = {"embedding_column": embedding_column, "score_column": score_column, "n_clusters": n_clusters,
              "metric": metric, "descending": bool(descending), "max_iter": max_iter, "tol": tol, "device": str(dev)}
    return run_selection(
        dataset, method="cluster_top_k", params=params, fraction=fraction, size=size, seed=seed,
        label_column=label_column, pick=pick,
    )
