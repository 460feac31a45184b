"""k-means with faiss (seeded), falling back to a torch Lloyd's loop when faiss is unavailable."""

from __future__ import annotations

import numpy as np
import torch

from .device import resolve_device
from .faiss_import import faiss_available, import_faiss

__all__ = ["kmeans"]


def kmeans(
    x: np.ndarray,
    n_clusters: int,
    *,
    iterations: int = 25,
    seed: int = 0,
    spherical: bool = False,
    backend: str = "auto",
    init: np.ndarray | None = None,
    device: str | torch.device | None = "cpu",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster the rows of ``x``: returns ``(centroids (K, d), assignment (N,), squared_distance (N,))``.

    ``spherical=True`` normalises centroids (cosine k-means). Deterministic for a given ``seed``.
    ``init`` (K, d) gives the starting centroids (e.g. k-means++ seeds) instead of random rows.
    ``device`` runs the torch backend's assignment steps (and the final assignment) there; faiss
    trains on the CPU. ``backend="auto"`` takes faiss whenever it is installed, whatever the device,
    so the clustering does not depend on the device.

    Example:
        >>> centroids, assign, dist = kmeans(emb, 100, seed=0)
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not isinstance(n_clusters, (int, np.integer)) or not 1 <= n_clusters <= len(x):
        raise ValueError(f"`n_clusters` must be an integer in [1, {len(x)}], got {n_clusters!r}")
    if init is not None:
        init = np.ascontiguousarray(init, dtype=np.float32)
        if init.shape != (n_clusters, x.shape[1]):
            raise ValueError(f"`init` must have shape ({n_clusters}, {x.shape[1]}), got {init.shape}")
    dev = resolve_device(device)
    if backend == "auto":
        backend = "faiss" if faiss_available() else "torch"
    if backend == "faiss":
        faiss = import_faiss()
        km = faiss.Kmeans(
            x.shape[1], int(n_clusters), niter=iterations, seed=seed, spherical=spherical,
            max_points_per_centroid=max(256, len(x) // n_clusters + 1), min_points_per_centroid=1, verbose=False,
        )
        km.train(x, init_centroids=init)
        centroids = km.centroids.astype(np.float32)
    elif backend == "torch":
        centroids = _torch_lloyd(x, int(n_clusters), iterations, seed, spherical, init, dev)
    else:
        raise ValueError(f"`backend` must be 'auto', 'faiss' or 'torch', got {backend!r}")
    assign, dist = _assign(x, centroids, dev)
    return centroids, assign, dist


def _assign(x: np.ndarray, centroids: np.ndarray, device: torch.device | None = None, batch_size: int = 65536):
    ct = torch.from_numpy(centroids).to(device)
    c_sq = (ct * ct).sum(1)
    assign, dist = [], []
    for start in range(0, len(x), batch_size):
        xt = torch.from_numpy(x[start : start + batch_size]).to(device)
        d = (xt * xt).sum(1, keepdim=True) - 2 * (xt @ ct.T) + c_sq
        v, i = d.min(1)
        assign.append(i.cpu().numpy())
        dist.append(v.clamp_min(0).cpu().numpy())
    return np.concatenate(assign).astype(np.int64), np.concatenate(dist).astype(np.float32)


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
