"""Straightforward reference implementations of InfoMax and D²-Pruning for the speed benchmark.

They are written the way research code usually writes these methods: a dense N×N similarity or
distance matrix in NumPy, neighbours found by sorting every row, and (for D²-Pruning) a greedy loop
that takes the argmax over all N rows at every pick. They are plain functions over NumPy arrays,
not part of the library:

* `reference_infomax_literal` is Algorithm 1 of the InfoMax paper exactly as printed (Eq. 3 with a
  sum-1 softmax and the dense ``K = F Fᵀ``), the baseline the library's solver is compared with.
* `reference_infomax` is the library's update (capped simplex, proximal step; see
  `hf_prune.select.infomax`) on dense matrices, so the benchmark can check agreement with
  ``hp.select.infomax(kernel="sparse")`` as well as time it.
* `reference_d2_pruning` mirrors the dense path of the D²-Pruning authors' sampler (forward
  messages summed over a symmetrised k-NN graph, weighted reverse messages, ``argmax`` over all
  rows per pick) and picks the same rows as ``hp.select.d2_pruning`` (ties to the lower row).
"""

from __future__ import annotations

import numpy as np


def _cosine(embeddings: np.ndarray, normalize: bool) -> np.ndarray:
    f = np.asarray(embeddings, dtype=np.float64)
    if normalize:
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    return f @ f.T


def reference_infomax_literal(
    scores: np.ndarray,
    embeddings: np.ndarray,
    budget: int,
    *,
    alpha: float = 0.3,
    iterations: int = 20,
    normalize: bool = True,
) -> np.ndarray:
    """Algorithm 1 as printed: dense ``K``, ``X⁰ = 1/N``, ``X ← Softmax(p·I − 2pα·K X)``, top-p.

    Returns the kept row indices (sorted). With realistic ``p`` the softmax puts nearly all its mass
    on a few rows, so the ranking is the score minus the redundancy with those few rows only; it is
    kept as the literal baseline.
    """
    scores = np.asarray(scores, dtype=np.float64)
    K = _cosine(embeddings, normalize)
    n, p = len(scores), int(budget)
    x = np.full(n, 1.0 / n)
    for _ in range(iterations):
        logits = p * scores - 2 * p * alpha * (K @ x)
        logits -= logits.max()
        x = np.exp(logits)
        x /= x.sum()
    return np.sort(np.argsort(-x, kind="stable")[:p])


def reference_infomax(
    scores: np.ndarray,
    embeddings: np.ndarray,
    budget: int,
    *,
    k: int = 5,
    alpha: float = 0.3,
    iterations: int = 20,
    temperature: float | None = None,
    step_size: float | None = 1.0,
    normalize: bool = True,
) -> np.ndarray:
    """The library's InfoMax update on dense N×N matrices; returns the kept row indices (sorted).

    ``K``: cosine similarities, each row's ``k`` largest off-diagonal entries kept (full row sort),
    symmetrised as ``(K + Kᵀ)/2``. Scores are used as given (the selector min-maxes them first).
    The capped-simplex normalisation is found by bisection instead of the library's sort.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n, p = len(scores), int(budget)
    full = _cosine(embeddings, normalize)
    np.fill_diagonal(full, -np.inf)
    order = np.argsort(-full, axis=1, kind="stable")[:, :k]
    K = np.zeros((n, n))
    rows = np.arange(n)[:, None]
    K[rows, order] = full[rows, order]
    K = (K + K.T) / 2
    tau = 1.0 / p if temperature is None else temperature
    log_x = np.full(n, np.log(p / n))
    logits = log_x
    for _ in range(iterations):
        grad = scores - 2 * alpha * (K @ np.exp(log_x))
        if step_size is None:
            logits = grad / tau
        else:
            if grad.std() <= 0:
                break
            eta = step_size / grad.std()
            logits = (eta * grad + log_x) / (1 + eta * tau)
        # Σ min(1, exp(ℓ + c)) is ≤ 1 at the low end and ≥ p once the p-th largest logit reaches 0.
        lo, hi = -logits.max() - np.log(n), -np.sort(logits)[-p]
        for _ in range(200):  # bisection on c: Σ min(1, exp(ℓ + c)) = p
            mid = (lo + hi) / 2
            if np.minimum(1.0, np.exp(logits + mid)).sum() < p:
                lo = mid
            else:
                hi = mid
        log_x = np.minimum(0.0, logits + (lo + hi) / 2)
    return np.sort(np.lexsort((np.arange(n), -logits))[:p])


def reference_d2_pruning(
    scores: np.ndarray,
    embeddings: np.ndarray,
    budget: int,
    *,
    k: int = 10,
    gamma_f: float = 1.0,
    gamma_r: float = 1.0,
) -> np.ndarray:
    """Dense D²-Pruning: N×N distances, symmetrised k-NN graph, argmax over all rows per pick.

    Returns the picked row indices in pick order.
    """
    s = np.asarray(scores, dtype=np.float64)
    x = np.asarray(embeddings, dtype=np.float64)
    n = len(s)
    dist = np.sqrt(np.maximum(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1), 0.0))
    masked = dist + np.diag(np.full(n, np.inf))
    nearest = np.argsort(masked, axis=1, kind="stable")[:, :k]
    adjacency = np.zeros((n, n), dtype=bool)
    adjacency[np.arange(n)[:, None], nearest] = True
    adjacency |= adjacency.T
    density = s + (adjacency * np.exp(-gamma_f * dist) * s[None, :]).sum(1)
    picks = []
    for _ in range(budget):
        i = int(np.argmax(density))
        picks.append(i)
        nb = np.flatnonzero(adjacency[i])
        density[nb] -= np.exp(-gamma_r * dist[i, nb]) * density[i]
        density[picks] = -np.inf
    return np.asarray(picks)
