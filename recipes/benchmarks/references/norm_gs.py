"""Straightforward reference implementations of feature-norm sampling, Gram–Schmidt selection, TypiClust
and ProbCover, for speed benchmarks against `hf_prune.select`.

They mirror how public research code writes these methods: plain NumPy/scikit-learn, Python loops,
recomputation instead of incremental updates, dense pairwise blocks. They are plain functions
``(X, k, ...) -> indices`` over an ``(N, d)`` float array; nothing in the package imports them.

Example:
    >>> idx = gram_schmidt_reference(X, 100, seed=0)
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "norm_sampling_reference",
    "gram_schmidt_reference",
    "typiclust_reference",
    "probcover_reference",
]


def norm_sampling_reference(X: np.ndarray, k: int, *, p: float = 2, seed: int = 0) -> np.ndarray:
    """Eq. 1 the usual way: ``np.random.choice`` without replacement with ``p_i = ‖F_i‖ / Σ‖F_j‖``.

    Example:
        >>> idx = norm_sampling_reference(X, 10)
    """
    norms = np.linalg.norm(X, ord=p, axis=1)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(len(X), size=k, replace=False, p=norms / norms.sum()))


def gram_schmidt_reference(X: np.ndarray, k: int, *, deterministic: bool = False, seed: int = 0) -> np.ndarray:
    """Algorithm 1 as commonly coded: every step re-orthogonalises *every remaining vector* against the
    *whole* selected basis with a Python loop over the basis (O(N·|S|·d) per step, O(N·s²·d) in all),
    then samples ∝ residual norm (or takes the largest).

    Example:
        >>> idx = gram_schmidt_reference(X, 10, seed=0)
    """
    X = np.asarray(X, dtype=np.float64)
    rng = np.random.default_rng(seed)
    remaining = list(range(len(X)))
    basis: list[np.ndarray] = []
    selected: list[int] = []
    for _ in range(k):
        residuals = X[remaining].copy()
        for q in basis:
            residuals -= np.outer(residuals @ q, q)
        norms = np.linalg.norm(residuals, axis=1)
        if norms.max() <= 1e-9 * np.linalg.norm(X[remaining], axis=1).max():
            basis = []  # spanned: start over from the original vectors
            residuals = X[remaining].copy()
            norms = np.linalg.norm(residuals, axis=1)
        if deterministic:
            j = int(np.argmax(norms))
        else:
            j = int(rng.choice(len(remaining), p=norms / norms.sum()))
        if norms[j] > 0:
            basis.append(residuals[j] / norms[j])
        selected.append(remaining.pop(j))
    return np.sort(np.array(selected))


def typiclust_reference(X: np.ndarray, k: int, *, k_nn: int = 20, seed: int = 0) -> np.ndarray:
    """TypiClust as in its public code: normalised features, scikit-learn KMeans (MiniBatchKMeans above 50
    clusters) into ``min(k, 500)`` clusters, clusters of ≤ 5 points dropped, then for each pick a fresh
    scikit-learn kNN inside the chosen cluster and the point with the highest ``1 / mean distance``.

    Example:
        >>> idx = typiclust_reference(X, 10)
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.neighbors import NearestNeighbors

    X = np.asarray(X, dtype=np.float32)
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    n_clusters = min(k, 500)
    km = (KMeans(n_clusters, random_state=seed, n_init=10) if n_clusters <= 50
          else MiniBatchKMeans(n_clusters, random_state=seed, n_init=3))
    labels = km.fit_predict(X).copy()
    ids, sizes = np.unique(labels, return_counts=True)
    keep = sizes > 5
    order = ids[keep][np.argsort(-sizes[keep], kind="stable")]
    selected = []
    for i in range(k):
        cluster = order[i % len(order)]
        members = np.flatnonzero(labels == cluster)
        n_nb = min(k_nn, len(members) // 2)
        if n_nb < 1:
            idx = members[0]
        else:
            nn = NearestNeighbors(n_neighbors=n_nb + 1).fit(X[members])
            dist, _ = nn.kneighbors(X[members])
            typicality = 1 / (dist[:, 1:].mean(1) + 1e-5)
            idx = members[int(np.argmax(typicality))]
        selected.append(idx)
        labels[idx] = -1
    return np.sort(np.array(selected))


def probcover_reference(X: np.ndarray, k: int, *, delta: float, batch_size: int = 500) -> np.ndarray:
    """ProbCover as in its public code: normalised features, the δ-graph built from dense distance
    blocks (``batch_size`` × N) into edge lists, then each greedy step recounts every remaining edge's
    out-degree and filters the edge list with ``np.isin``.

    Example:
        >>> idx = probcover_reference(X, 10, delta=0.6)
    """
    X = np.asarray(X, dtype=np.float32)
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    n = len(X)
    sq = (X * X).sum(1)
    xs, ys = [], []
    for start in range(0, n, batch_size):
        block = X[start : start + batch_size]
        dist = np.sqrt(np.maximum(sq[start : start + batch_size, None] - 2 * block @ X.T + sq[None], 0))
        x, y = np.nonzero(dist < delta)
        xs.append(x + start)
        ys.append(y)
    src, dst = np.concatenate(xs), np.concatenate(ys)
    selected = []
    for _ in range(k):
        degrees = np.bincount(src, minlength=n)
        cur = int(degrees.argmax())
        if degrees[cur] == 0:
            rest = np.setdiff1d(np.arange(n), selected)
            selected.append(int(rest[0]))
            continue
        newly = dst[src == cur]
        keep = ~np.isin(dst, newly)
        src, dst = src[keep], dst[keep]
        selected.append(cur)
    return np.sort(np.array(selected))
