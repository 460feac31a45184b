"""Recall@k of a k-NN table against exact search, measured on a seeded sample of query rows.

An approximate index (IVF, IVF-PQ, HNSW) trades neighbours for speed; how many it loses depends on
the data, so it is measured rather than assumed: `knn_recall` draws ``queries`` query rows (seeded),
finds their exact neighbours with one streamed pass over the rows (`exact_neighbours`: a float32
matmul per block, a running top-k, never more than one block of scores), and counts how many of
each row's approximate neighbours are exact ones.

**Ties.** A neighbour counts as found when it is at least as close as the exact ``k``-th neighbour
(up to float32 rounding, ``1e-6`` of the scale ``‖q‖² + max‖x‖²``), recomputed in float64 from
the rows. So an index that returns another row at the same distance (duplicates, float ties) is
not charged a miss, and a row that is genuinely farther is.
"""

from __future__ import annotations

import numpy as np

from .checks import check_choice, check_positive_int, seed_int
from .faiss_import import faiss_available, import_faiss
from .matrix import as_matrix

__all__ = ["knn_recall", "exact_neighbours"]

_TIE_TOLERANCE = 1e-6


def _prepare(block: np.ndarray, metric: str) -> np.ndarray:
    if metric != "cosine":
        return block
    return block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)


def exact_neighbours(
    x,
    queries: np.ndarray,
    k: int,
    *,
    metric: str = "ip",
    self_rows: np.ndarray | None = None,
    batch_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``(values, indices)`` ``(Q, k)`` of the few ``queries`` against all rows of ``x``, best first.

    ``x`` is an array or a block source (`hf_prune.ops.matrix.as_matrix`); it is read once, block by
    block. Values are similarities for ``"ip"``/``"cosine"`` (rows and queries normalised per block),
    squared distances for ``"l2"``. ``self_rows[q]`` (a row position, or ``-1``) is left out of query
    ``q``'s neighbours, as in a self-search. Memory: ``Q × block`` scores at a time.

    Example:
        >>> sims, idx = exact_neighbours(emb, emb[:10], 5, metric="cosine", self_rows=np.arange(10))
    """
    check_choice("metric", metric, ("ip", "cosine", "l2"))
    rows = as_matrix(x)
    q = _prepare(np.ascontiguousarray(queries, dtype=np.float32), metric)
    n_q = len(q)
    best_v = np.full((n_q, 0), 0.0, dtype=np.float32)
    best_i = np.zeros((n_q, 0), dtype=np.int64)
    q_sq = np.einsum("ij,ij->i", q, q)[:, None]
    sign = 1.0 if metric == "l2" else -1.0  # smaller key is better
    faiss = import_faiss() if faiss_available() else None
    per_block = k + (1 if self_rows is not None else 0)
    for start, block in rows.blocks(batch_rows):
        block = _prepare(block, metric)
        if faiss is not None:
            # faiss's exact search keeps a heap per query: no (Q, block) partition of the scores.
            scores, ids = faiss.knn(q, block, min(per_block, len(block)),
                                    metric=faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)
            ids = ids.astype(np.int64) + start
        else:
            scores = q @ block.T
            if metric == "l2":
                scores = q_sq - 2 * scores + np.einsum("ij,ij->i", block, block)[None]
            ids = np.broadcast_to(np.arange(start, start + len(block)), scores.shape)
        keys = sign * scores
        if self_rows is not None:
            keys = np.where(ids == np.asarray(self_rows)[:, None], np.inf, keys)  # never its own neighbour
        keys = np.concatenate([sign * best_v, keys], axis=1)
        cand = np.concatenate([best_i, ids], axis=1)
        keep = min(k, keys.shape[1])
        part = np.argpartition(keys, keep - 1, axis=1)[:, :keep]
        best_v = sign * np.take_along_axis(keys, part, 1)
        best_i = np.take_along_axis(cand, part, 1)
    # Best first; equal values in row order (the lower position first), like a flat index.
    order = np.lexsort((best_i, sign * best_v), axis=1) if best_v.size else np.zeros_like(best_i)
    return np.take_along_axis(best_v, order, 1), np.take_along_axis(best_i, order, 1)


def knn_recall(
    x,
    k: int,
    indices: np.ndarray,
    *,
    metric: str = "ip",
    queries: int = 1000,
    seed: int | np.random.Generator = 0,
    query_data=None,
    exclude_self: bool | None = None,
) -> dict:
    """Recall@k of the neighbour table ``indices`` ``(Q, ≥k)``: the fraction of exact k-NN it holds.

    ``queries`` rows of the table are drawn without replacement (seeded; all of them when there are
    fewer) and searched exactly (`exact_neighbours`); a table entry counts as found when it is as close
    as the exact ``k``-th neighbour (ties, see the module docstring). ``x`` is the searched rows (array
    or block source), ``query_data`` the query rows when the table was not a self-search (default: the
    rows of ``x`` themselves, and then ``exclude_self`` defaults to ``True``: a row is not its own
    neighbour). Entries ``-1`` (an index that found fewer than k rows) count as misses.

    Returns ``{"recall_at_k", "k", "queries", "seed", "misses"}`` (``misses``: missed neighbours over
    the sampled queries).

    Example:
        >>> _, approx = knn(emb, 10, metric="cosine", index="ivf")
        >>> knn_recall(emb, 10, approx, metric="cosine")["recall_at_k"]
        0.97
    """
    check_choice("metric", metric, ("ip", "cosine", "l2"))
    k = check_positive_int("k", k)
    queries = check_positive_int("queries", queries)
    rows = as_matrix(x)
    indices = np.asarray(indices)
    if indices.ndim != 2 or indices.shape[1] < k:
        raise ValueError(f"`indices` must be a (Q, ≥{k}) neighbour table, got shape {indices.shape}")
    self_search = query_data is None
    exclude_self = self_search if exclude_self is None else bool(exclude_self)
    source = rows if self_search else as_matrix(query_data, "query_data")
    if len(indices) != source.shape[0]:
        raise ValueError(f"`indices` has {len(indices)} rows but there are {source.shape[0]} queries")
    seed = seed_int(seed)
    n_q = len(indices)
    sample = np.sort(np.random.default_rng(seed).choice(n_q, size=min(queries, n_q), replace=False))
    q = source.take(sample)
    self_rows = sample if exclude_self else None
    exact_v, _ = exact_neighbours(rows, q, k, metric=metric, self_rows=self_rows)
    approx = indices[sample, :k].astype(np.int64)
    valid = approx >= 0
    # The approximate neighbours' values, recomputed in float64 from the rows.
    found_rows = rows.take(np.where(valid, approx, 0).ravel()).reshape(len(sample), k, -1)
    qd, nd = _prepare(q, metric).astype(np.float64), _prepare(found_rows.reshape(-1, q.shape[1]), metric)
    nd = nd.astype(np.float64).reshape(len(sample), k, -1)
    scale = np.einsum("ij,ij->i", qd, qd) + float(np.max(np.einsum("ikj,ikj->ik", nd, nd), initial=0.0))
    tol = _TIE_TOLERANCE * np.maximum(scale, 1e-30)
    kth = exact_v[:, -1].astype(np.float64)
    if metric == "l2":
        diff = nd - qd[:, None]
        value = np.einsum("ikj,ikj->ik", diff, diff)
        hit = value <= kth[:, None] + tol[:, None]
    else:
        value = np.einsum("ikj,ij->ik", nd, qd)
        hit = value >= kth[:, None] - tol[:, None]
    hit &= valid
    if exclude_self:
        hit &= approx != sample[:, None]
    hit &= _first_occurrence(approx)
    misses = int(hit.size - hit.sum())
    return {"recall_at_k": float(hit.mean()), "k": k, "queries": int(len(sample)), "seed": seed, "misses": misses}


def _first_occurrence(table: np.ndarray) -> np.ndarray:
    """Mask of the first occurrence of each value in every row (a repeated neighbour is found once)."""
    order = np.argsort(table, axis=1, kind="stable")
    sorted_t = np.take_along_axis(table, order, 1)
    first_sorted = np.ones_like(sorted_t, dtype=bool)
    first_sorted[:, 1:] = sorted_t[:, 1:] != sorted_t[:, :-1]
    out = np.empty_like(first_sorted)
    np.put_along_axis(out, order, first_sorted, 1)
    return out
