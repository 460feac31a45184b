"""k-means with faiss (seeded, trained on a sample, GPU when present), falling back to a torch Lloyd's loop
when faiss is unavailable; every row is assigned block by block."""

from __future__ import annotations

import numpy as np
import torch

from .checks import check_choice, check_positive_int
from .device import resolve_device
from .faiss_import import faiss_available, import_faiss
from .knn_index import gpu_count
from .matrix import as_matrix

__all__ = ["kmeans", "MIN_TRAIN_ROWS", "default_train_size"]


#: Rows k-means trains on by default: ``max(256·K, 65,536)`` (faiss's own cap is 256 points per centroid).
MIN_TRAIN_ROWS = 1 << 16
_POINTS_PER_CENTROID = 256


def default_train_size(n_clusters: int) -> int:
    """Rows k-means trains on by default for ``n_clusters`` centroids: ``max(256·K, 65,536)``.

    Example:
        >>> default_train_size(10), default_train_size(1000)
        (65536, 256000)
    """
    return max(_POINTS_PER_CENTROID * int(n_clusters), MIN_TRAIN_ROWS)


def kmeans(
    x,
    n_clusters: int,
    *,
    iterations: int = 25,
    seed: int = 0,
    spherical: bool = False,
    backend: str = "auto",
    init: np.ndarray | None = None,
    device: str | torch.device | None = "cpu",
    train_size: int | None = None,
    batch_size: int = 65536,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster the rows of ``x``: returns ``(centroids (K, d), assignment (N,), squared_distance (N,))``.

    ``spherical=True`` normalises centroids (cosine k-means; pass unit rows). Deterministic for a given
    ``seed``. ``init`` (K, d) gives the starting centroids (e.g. k-means++ seeds) instead of random rows.

    ``x`` is an array or a `hf_prune.ops.matrix.ColumnMatrix` (read block by block). The
    centroids are trained on a seeded sample of ``train_size`` rows (default ``max(256·K, 65,536)``;
    every row when there are fewer), then every row is assigned block by block (``batch_size`` rows),
    so a memory-mapped column is never copied whole. faiss's ``max_points_per_centroid`` (256) would
    subsample the same way, but only after the caller has materialised all rows; sampling first keeps
    the memory at the sample, and small inputs (at most ``train_size`` rows) are clustered on all
    their rows exactly as before.

    ``device``: ``"cuda"`` trains with faiss on the GPU(s) when the installed faiss has GPUs (and runs
    the block assignments there with torch); the torch backend runs its Lloyd steps there.
    ``backend="auto"`` takes faiss whenever it is installed, whatever the device, so the clustering
    does not depend on the device.

    Example:
        >>> centroids, assign, dist = kmeans(emb, 100, seed=0)
        >>> centroids, assign, dist = kmeans(open_matrix(ds, "emb"), 1000, train_size=200_000)
    """
    rows = as_matrix(x)
    n, d = rows.shape
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or not 1 <= n_clusters <= n:
        raise ValueError(f"`n_clusters` must be an integer in [1, {n}], got {n_clusters!r}")
    if init is not None:
        init = np.ascontiguousarray(init, dtype=np.float32)
        if init.shape != (n_clusters, d):
            raise ValueError(f"`init` must have shape ({n_clusters}, {d}), got {init.shape}")
    if train_size is None:
        train_size = default_train_size(n_clusters)
    train_size = max(int(n_clusters), check_positive_int("train_size", train_size))
    batch_size = check_positive_int("batch_size", batch_size)
    dev = resolve_device(device)
    if n <= train_size:
        sample = rows.to_numpy()  # zero-copy for a float32 array
    else:
        picked = np.sort(np.random.default_rng(seed).choice(n, size=train_size, replace=False))
        sample = rows.take(picked)
    check_choice("backend", backend, ("auto", "faiss", "torch"))
    if backend == "auto":
        backend = "faiss" if faiss_available() else "torch"
    if backend == "faiss":
        faiss = import_faiss()
        gpus = gpu_count() if dev.type == "cuda" else 0
        km = faiss.Kmeans(
            d, int(n_clusters), niter=iterations, seed=seed, spherical=spherical, gpu=gpus or False,
            # The sample is already the subsample: faiss must not draw another one.
            max_points_per_centroid=max(_POINTS_PER_CENTROID, len(sample) // n_clusters + 1),
            min_points_per_centroid=1, verbose=False,
        )
        km.train(sample, init_centroids=init)
        centroids = km.centroids.astype(np.float32)
    else:
        centroids = _torch_lloyd(sample, int(n_clusters), iterations, seed, spherical, init, dev)
    if n <= train_size and isinstance(x, np.ndarray):
        assign, dist = _assign(sample, centroids, dev)
    else:
        assign, dist = _assign_blocks(rows, centroids, dev, batch_size)
    return centroids, assign, dist


def _assign_blocks(rows, centroids, device, batch_size):
    assign = np.empty(rows.shape[0], dtype=np.int64)
    dist = np.empty(rows.shape[0], dtype=np.float32)
    for start, block in rows.blocks(batch_size):
        a, v = _assign(block, centroids, device, batch_size)
        assign[start : start + len(block)], dist[start : start + len(block)] = a, v
    return assign, dist


# Row-to-centroid distances computed at once: (rows × K) float32 temporaries of 16 MiB each.
_DISTANCE_ELEMENTS = 1 << 22


def _assign(x: np.ndarray, centroids: np.ndarray, device: torch.device | None = None, batch_size: int = 65536):
    ct = torch.from_numpy(centroids).to(device)
    c_sq = (ct * ct).sum(1)
    # The outputs are allocated once: small per-step arrays kept between the large temporaries fragment
    # the heap so that it grew by about a column's worth over one pass (100k × 384).
    assign = np.empty(len(x), dtype=np.int64)
    dist = np.empty(len(x), dtype=np.float32)
    # Fewer rows per step when K is large: 65,536 rows × 500 centroids would be 131 MiB per temporary.
    batch_size = max(1, min(batch_size, _DISTANCE_ELEMENTS // max(1, len(centroids))))
    for start in range(0, len(x), batch_size):
        xt = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size])).to(device)
        # (‖x‖² − 2x·c) + ‖c‖², in place in the one (rows × K) product: the same values, fewer temporaries.
        d = (xt @ ct.T).mul_(-2).add_((xt * xt).sum(1, keepdim=True)).add_(c_sq)
        v, i = d.min(1)
        stop = start + len(xt)
        assign[start:stop] = i.cpu().numpy()
        dist[start:stop] = v.clamp_min(0).cpu().numpy()
    return assign, dist


def _torch_lloyd(x, k, iterations, seed, spherical, init=None, device=None):
    if init is not None:
        centroids = init.copy()
    else:
        rng = np.random.default_rng(seed)
        centroids = x[rng.choice(len(x), size=k, replace=False)].copy()
    for _ in range(iterations):
        assign, _ = _assign(x, centroids, device)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, x)
        counts = np.bincount(assign, minlength=k)
        empty = counts == 0
        centroids[~empty] = sums[~empty] / counts[~empty, None]
        if spherical:
            centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return centroids
