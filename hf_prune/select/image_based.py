"""DataComp's image-based filter (Gadre et al. 2023, "DataComp: In search of the next generation of
multimodal datasets", the "image-based filtering" baseline): keep the pool rows whose
image embedding falls in a k-means cluster that the target data (ImageNet-1k training images in the
paper) also falls in.

The rule, as the paper and its baseline code state it:

1. cluster the pool's image embeddings with k-means into ``K`` clusters (the paper: 100,000
   clusters of the 12.8M-row small pool's CLIP ViT-L/14 image embeddings);
2. assign every target embedding to its nearest pool cluster centre (for ``metric="cosine"`` the
   largest inner product with the unit centres, as the paper's code takes the largest inner
   product; for ``"l2"`` the smallest Euclidean distance);
3. keep every pool row whose own nearest centre is one of the centres the target rows landed in.

The paper also runs a caption filter (English, more than one word, more than five characters) on the
pool first; that is a separate step here (a ``filter`` on the caption column before this one).
`image_based_filter` is the rule above (no budget); `image_based` meets a ``fraction`` / ``size``.
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
from ..ops.device import resolve_device
from ..ops.knn import knn
from ..ops.matrix import open_matrix
from ..provenance import stamp_output
from ._core import finalize, run_selection
from .cluster_score import cluster_count, fit_kmeans, unit_rows
from .registry import derive_fingerprint, selector

__all__ = ["image_based", "image_based_filter", "target_clusters"]

_METRICS = ("cosine", "l2")
#: Pool rows per cluster on average when ``n_clusters`` is not given: DataComp's 12.8M rows / 100,000 clusters.
ROWS_PER_CLUSTER = 128


def target_clusters(
    pool: np.ndarray,
    target: np.ndarray,
    n_clusters: int,
    *,
    metric: str = "cosine",
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    device: str | torch.device | None = "cpu",
) -> dict[str, np.ndarray]:
    """The image-based filter's clustering of ``pool`` (N, d) and ``target`` (T, d) arrays.

    Returns a dict of arrays: ``assign`` (N,) each pool row's cluster; ``distance`` (N,) its distance
    to that centre (``1 − cos`` for ``"cosine"``, Euclidean for ``"l2"``); ``target_count`` (K,) how
    many target rows have each centre as their nearest; ``target_gap`` (K,) each centre's distance
    to its nearest target row (same units); ``centroids`` (K, d). With ``metric="cosine"`` both
    arrays must hold unit rows (spherical k-means).

    Example:
        >>> info = target_clusters(unit_pool, unit_imagenet, 1000, seed=0)
        >>> keep = info["target_count"][info["assign"]] > 0
    """
    dev = resolve_device(device)
    cosine = metric == "cosine"
    centroids, assign, _ = fit_kmeans(pool, n_clusters, max_iter=max_iter, tol=tol, seed=seed, spherical=cosine,
                                      device=dev)
    centres = centroids.astype(np.float64)
    if cosine:
        centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
        distance = 1.0 - np.einsum("id,id->i", pool.astype(np.float64), centres[assign])
    else:
        distance = np.linalg.norm(pool.astype(np.float64) - centres[assign], axis=1)
    centres = centres.astype(np.float32)
    _, nearest_centre = knn(centres, 1, queries=target, metric=metric, exclude_self=False, device=dev)
    value, _ = knn(target, 1, queries=centres, metric=metric, exclude_self=False, device=dev)
    gap = 1.0 - value[:, 0].astype(np.float64) if cosine else np.sqrt(np.maximum(value[:, 0], 0.0)).astype(np.float64)
    return {
        "assign": assign,
        "distance": np.maximum(distance, 0.0),
        "target_count": np.bincount(nearest_centre[:, 0], minlength=n_clusters),
        "target_gap": gap,
        "centroids": centres,
    }


def _read_inputs(dataset, target, embedding_column, target_embedding_column, metric, n_clusters, max_iter, tol):
    """Checked arrays ``(pool, target)`` and the target column's name."""
    check_choice("metric", metric, _METRICS)
    if n_clusters is not None:
        check_positive_int("n_clusters", n_clusters)
    check_positive_int("max_iter", max_iter)
    check_nonnegative("tol", tol)
    if not isinstance(target, Dataset):
        raise TypeError(f"`target` must be a datasets.Dataset of target embeddings, got {type(target).__name__}")
    target_column = embedding_column if target_embedding_column is None else target_embedding_column
    check_columns(dataset, embedding_column)
    if target_column not in target.column_names:
        raise KeyError(f"column {target_column!r} (`target_embedding_column`) not found in `target`; "
                       f"it has {target.column_names}")
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    if len(target) == 0:
        raise ValueError("`target` is empty: it needs at least one row of embeddings")
    pool = open_matrix(dataset, embedding_column)
    goal = open_matrix(target, target_column)
    if goal.shape[1] != pool.shape[1]:
        raise ValueError(f"`target` column {target_column!r} has dimension {goal.shape[1]} but the dataset's "
                         f"{embedding_column!r} has {pool.shape[1]}; embed both with the same model")
    if metric == "cosine":  # one float32 copy of each, normalised block by block
        return unit_rows(pool, embedding_column), unit_rows(goal, target_column), target_column
    return pool.to_numpy(), goal.to_numpy(), target_column


def _kmeans_seed(seed: int) -> int:
    # faiss takes a 32-bit seed; derive one from the (possibly 63-bit) integer seed.
    return int(np.random.default_rng(seed).integers(2**31 - 1))


@selector(family="baseline", needs=("embedding_column",), device=True)
def image_based(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    target: Dataset,
    embedding_column: str = "emb",
    target_embedding_column: str | None = None,
    n_clusters: int | None = None,
    metric: str = "cosine",
    max_iter: int = 100,
    tol: float = 1e-4,
    label_column: str | None = None,
    seed: int | np.random.Generator = 0,
    device: str | torch.device | None = None,
) -> Dataset:
    """DataComp's image-based filter to a target size: whole pool clusters, most target rows first.

    The clustering of `image_based_filter` (see the module docstring): pool k-means, every target row
    assigned to its nearest pool centre. Clusters are then ranked by the number of target rows that
    landed in them (most first); clusters with equal counts (in particular those no target row landed
    in) by the distance from their centre to the nearest target row (closest first), then by cluster
    index. Rows are taken whole cluster by whole cluster in that order; the last cluster is cut by the
    rows' distance to their own centre (closest first), equal distances to the lower row position.
    So a budget equal to `image_based_filter`'s kept count gives exactly its rows, a smaller one the
    clusters most visited by the target, and a larger one continues with the clusters nearest to it.

    The pool is clustered once, over all rows (as in the paper); with ``label_column`` the budget is
    split per class and each class takes its own rows in the same order.

    Args:
        dataset: the pool (not modified).
        fraction / size: the budget (exactly one).
        target: a Dataset of target embeddings (e.g. ImageNet training images, embedded with the
            same model as the pool).
        embedding_column: the pool's image embeddings.
        target_embedding_column: the target's embedding column (default: ``embedding_column``).
        n_clusters: k-means clusters of the pool; default ``⌈N / 128⌉`` (DataComp's ratio: 100,000
            clusters for 12.8M rows).
        metric: ``"cosine"`` (default: unit rows, spherical k-means, nearest centre by inner
            product, as DataComp) or ``"l2"`` (raw embeddings, Euclidean).
        max_iter / tol: k-means stops after ``max_iter`` Lloyd steps or once it converges
            (`hf_prune.select.cluster_score.fit_kmeans`).
        label_column: split the budget per class (see above).
        seed: seeds the k-means initialisation.
        device: where k-means assignments and the nearest-centre searches run (``None`` → CUDA when available).

    Raises:
        KeyError: ``target`` lacks ``target_embedding_column``.
        ValueError: an empty ``target``, embeddings of another dimension, bad parameters.

    Example:
        >>> imagenet = load_from_disk("imagenet_train_clip_emb")
        >>> sub = hp.select.image_based(pool, fraction=0.3, target=imagenet, embedding_column="image_emb",
        ...                             n_clusters=1000)
    """
    pool, goal, target_column = _read_inputs(
        dataset, target, embedding_column, target_embedding_column, metric, n_clusters, max_iter, tol)
    dev = resolve_device(device)
    # One integer for the whole call (one draw from a Generator), recorded and reused by run_selection.
    seed = seed_int(seed)
    n_c = cluster_count(n_clusters, np.arange(len(pool)), math.ceil(len(pool) / ROWS_PER_CLUSTER), dataset, None)
    info = target_clusters(pool, goal, n_c, metric=metric, max_iter=max_iter, tol=tol, seed=_kmeans_seed(seed),
                           device=dev)
    cluster_rank = np.empty(n_c, dtype=np.int64)
    cluster_rank[np.lexsort((np.arange(n_c), info["target_gap"], -info["target_count"]))] = np.arange(n_c)
    row_rank = cluster_rank[info["assign"]]

    def pick(rows, k, rng):
        # lexsort is stable: equal (cluster rank, distance) keep the lower row position first.
        return np.lexsort((info["distance"][rows], row_rank[rows]))[:k]

    params = {"target_fingerprint": fingerprint(target), "embedding_column": embedding_column,
              "target_embedding_column": target_column, "n_clusters": n_clusters, "n_clusters_used": n_c,
              "metric": metric, "max_iter": max_iter, "tol": tol, "device": str(dev)}
    return run_selection(
        dataset, method="image_based", params=params, fraction=fraction, size=size, seed=seed,
        label_column=label_column, pick=pick,
    )


def image_based_filter(
    dataset: Dataset,
    *,
    target: Dataset,
    embedding_column: str = "emb",
    target_embedding_column: str | None = None,
    n_clusters: int | None = None,
    metric: str = "cosine",
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int | np.random.Generator = 0,
    device: str | torch.device | None = None,
) -> Dataset:
    """DataComp's image-based filter: keep the pool rows whose k-means cluster a target row also falls in.

    Gadre et al. 2023 (rule in the module docstring): k-means on the pool's image embeddings, each
    target embedding assigned to its nearest pool centre, and every pool row kept whose own nearest
    centre is among those. No budget: how many rows are kept depends on the data, ``n_clusters`` and
    the target (more clusters keep fewer rows). The same arguments and seed give `image_based` the
    same clustering, so ``image_based(size=len(image_based_filter(...)))`` returns these rows.

    Args:
        dataset: the pool (not modified).
        target: a Dataset of target embeddings (e.g. ImageNet training images), same model as the pool.
        embedding_column, target_embedding_column, n_clusters, metric, max_iter, tol, seed, device:
            as in `image_based`.

    Returns:
        the kept rows with ``row_id`` and an ``"image_based_filter"`` provenance step.

    Raises:
        KeyError: ``target`` lacks ``target_embedding_column``.
        ValueError: an empty ``target``, embeddings of another dimension, bad parameters.

    Example:
        >>> sub = hp.select.image_based_filter(pool, target=imagenet, embedding_column="image_emb", n_clusters=1000)
    """
    check_seed(seed)
    pool, goal, target_column = _read_inputs(
        dataset, target, embedding_column, target_embedding_column, metric, n_clusters, max_iter, tol)
    dev = resolve_device(device)
    seed = seed_int(seed)
    n_c = cluster_count(n_clusters, np.arange(len(pool)), math.ceil(len(pool) / ROWS_PER_CLUSTER), dataset, None)
    info = target_clusters(pool, goal, n_c, metric=metric, max_iter=max_iter, tol=tol, seed=_kmeans_seed(seed),
                           device=dev)
    indices = np.flatnonzero(info["target_count"][info["assign"]] > 0)
    if len(indices) == 0:  # possible only when every cluster a target row landed in ended up empty
        raise ValueError(f"no row of the dataset shares a cluster with a `target` row (n_clusters={n_c})")
    params = {"target_fingerprint": fingerprint(target), "embedding_column": embedding_column,
              "target_embedding_column": target_column, "n_clusters": n_clusters, "n_clusters_used": n_c,
              "metric": metric, "max_iter": max_iter, "tol": tol, "seed": seed}
    source = fingerprint(dataset)
    result = finalize(dataset, indices, method="image_based_filter", params={**params, "device": str(dev)})
    # Like a registered selector's: derived from the input, method and arguments (not the device).
    return stamp_output(result, derive_fingerprint(source, "image_based_filter", params))
