"""k-nearest-neighbour search: faiss (exact, IVF-Flat, IVF-PQ, HNSW; `hf_prune.ops.knn_index`) when
available, a chunked torch search otherwise, with recall@k measured for approximate indexes.

Memory stays bounded: rows are added and queries searched block by block (never N×N), faiss holds
only the index, and the source may be a memory-mapped `hf_prune.ops.matrix.ColumnMatrix`. Similarities are inner products (``metric="ip"``, or ``"cosine"`` on
L2-normalised copies); distances are squared Euclidean (``metric="l2"``). `radius_neighbors` finds
every pair closer than a radius (a CSR graph whose memory is bounded by its number of edges).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from .checks import check_choice, check_positive, check_positive_int
from .device import resolve_device
from .faiss_import import faiss_available, import_faiss
from .ivf_join import ivf_self_join, ivf_self_pairs
from .knn_index import build_index, gpu_count, resolve_spec
from .knn_recall import exact_neighbours, knn_recall
from .matrix import ColumnMatrix, as_matrix

__all__ = ["knn", "normalize_rows", "neighbour_pairs", "radius_neighbors", "RadiusGraphTooLarge", "drop_own_rows"]

# Values per block of the searches and radius graph below: ~16M numbers.
_CHUNK_ELEMENTS = 1 << 24
# Neighbour values gathered at once by `neighbour_pairs`: a (rows, k, d) float64 block of 32 MiB.
_PAIR_ELEMENTS = 1 << 22
# Pairs one block of `radius_neighbors` aims at: 4M (about 80 MiB of rows, columns and distances).
_RADIUS_BLOCK_PAIRS = 1 << 22
# Exact search on the CPU keeps its top 2k candidates for the thread-independent re-ranking.
_FLAT_RERANK = 2


def normalize_rows(x, eps: float = 1e-12) -> np.ndarray:
    """float32 rows of ``x`` divided by their L2 norms (at least ``eps``: an all-zero row stays zero).

    ``x`` is an array or a `hf_prune.ops.matrix.ColumnMatrix`, normalised block by block into the one
    array returned.

    Example:
        >>> normalize_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
        array([[0.6, 0.8],
               [0. , 0. ]], dtype=float32)
    """
    if isinstance(x, ColumnMatrix):
        out = np.empty(x.shape, dtype=np.float32)
        for start, block in x.blocks():
            out[start : start + len(block)] = normalize_rows(block, eps)
        return out
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32, copy=False)


def neighbour_pairs(x, neighbours: np.ndarray, reduce: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """``(N, k)`` float64 values of ``reduce(rows, rows' neighbours)`` over the k-NN table ``neighbours``.

    ``x`` is an array or a `hf_prune.ops.matrix.ColumnMatrix` (rows gathered chunk by chunk, no copy of
    the column). ``reduce`` gets a float64 ``(b, d)`` block of rows and their ``(b, k, d)`` neighbours and
    returns ``(b, k)``; rows are processed in chunks of about 4M neighbour values (32 MiB in float64) so
    memory stays bounded whatever ``N`` is.

    Example:
        >>> sims = neighbour_pairs(x, idx, lambda rows, nb: np.einsum("id,ikd->ik", rows, nb))
    """
    rows = as_matrix(x)
    n, k = neighbours.shape
    d = rows.shape[1]
    out = np.empty((n, k), dtype=np.float64)
    step = max(1, _PAIR_ELEMENTS // max(1, k * d))
    for start in range(0, n, step):
        stop = min(n, start + step)
        block = rows.take(np.arange(start, stop), dtype=np.float64)
        around = rows.take(neighbours[start:stop].ravel(), dtype=np.float64).reshape(stop - start, k, d)
        out[start:stop] = reduce(block, around)
    return out


def knn(
    x,
    k: int,
    *,
    metric: str = "ip",
    queries=None,
    exclude_self: bool = True,
    index: str = "flat",
    nlist: int | None = None,
    nprobe: int | None = None,
    pq_m: int | None = None,
    hnsw_m: int | None = None,
    ef_search: int | None = None,
    train_size: int | None = None,
    memory_budget: int | None = None,
    backend: str = "auto",
    device: str | torch.device | None = "cpu",
    batch_size: int = 4096,
    seed: int = 0,
    return_report: bool = False,
    recall_queries: int = 1000,
):
    """The ``k`` nearest rows of ``x`` for each query (default: each row of ``x`` itself).

    Returns ``(values, indices)``, both ``(Q, k)``, best first: similarities for ``"ip"``/``"cosine"``
    (descending), squared distances for ``"l2"`` (ascending). With ``queries=None`` and
    ``exclude_self=True`` a row is never its own neighbour (duplicates of it still can be).

    ``x`` (and ``queries``) is an array or a `hf_prune.ops.matrix.ColumnMatrix`: rows are added to the
    index and queries searched ``batch_size`` rows at a time, so beyond the index itself the extra
    memory is one block (cosine normalises each block, never an N×d normalised copy). Exact search on
    the CPU has no index: it reads the rows in place (`hf_prune.ops.knn_index.RowsFlatIndex`).

    ``index`` (see `hf_prune.ops.knn_index` for the defaults and the ``"auto"`` rule): ``"flat"`` /
    ``"exact"`` (exact), ``"ivf"`` (IVF-Flat: ``nlist``, ``nprobe``), ``"ivfpq"`` (IVF-PQ: also
    ``pq_m``), ``"hnsw"`` (``hnsw_m``, ``ef_search``) or ``"auto"`` (by ``N``, ``d`` and
    ``memory_budget``). Approximate indexes are trained on ``train_size`` rows drawn with ``seed``.
    A query for which an approximate index returns fewer than ``k`` rows (its probed lists hold too
    few) is searched again exactly, so the table is always complete.

    A self-search (``queries=None``) through IVF-Flat on the CPU is an IVF self-join
    (`hf_prune.ops.ivf_join`): each list's rows are searched together, by one matrix product, in the
    ``nprobe`` lists nearest to that list's centroid (probes per list rather than per query; several
    times faster than N single-query scans, and its recall is measured the same way).

    Exact search on the CPU (and the self-join) keeps each query's best ``2k`` and re-ranks them by exact row products
    (NumPy, one summation order; equal values to the lower row): the table, values included, is then the
    same whatever the BLAS/faiss thread count, so a selection made in one process equals the one made by
    one-thread workers (Ray tasks, a process pool). GPU search skips this (its own float order).

    ``backend="auto"``: faiss on the CPU, faiss on the GPU(s) for ``device="cuda"`` when the installed
    faiss has GPUs (several: a sharded index), else torch for exact search on ``device``; approximate
    indexes always use faiss (on the CPU when it has no GPU support).

    With ``return_report=True`` a third value is returned, a small dict: ``index`` (the kind used),
    ``params`` (its parameters), ``recall_at_k`` (1.0 for exact search, by definition, with
    ``recall_measured=False``; else measured by `hf_prune.ops.knn_recall.knn_recall` on
    ``recall_queries`` seeded query rows), ``recall_queries``, ``rows``, ``dim``, ``k``,
    ``build_s`` / ``search_s`` / ``recall_s`` (seconds), ``refilled`` (queries searched again exactly).

    Example:
        >>> sims, idx = knn(embeddings, 5, metric="cosine")
        >>> sims, idx, report = knn(embeddings, 10, metric="cosine", index="auto", return_report=True)
        >>> report["index"], report["recall_at_k"]
        ('flat', 1.0)
    """
    check_choice("metric", metric, ("ip", "cosine", "l2"))
    rows = as_matrix(x)
    self_search = queries is None
    q_rows = rows if self_search else as_matrix(queries, "queries")
    n, d = rows.shape
    if q_rows.shape[1] != d:
        raise ValueError(f"`queries` have dimension {q_rows.shape[1]}, the rows {d}")
    drop_self = self_search and exclude_self
    available = n - (1 if drop_self else 0)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"`k` must be a positive integer, got {k!r}")
    if k > available:
        raise ValueError(f"`k`={k} must be smaller than the number of rows ({n})")
    batch_size = check_positive_int("batch_size", batch_size)
    search_k = k + 1 if drop_self else k
    spec = resolve_spec(index, n, d, search_k, nlist=nlist, nprobe=nprobe, pq_m=pq_m, hnsw_m=hnsw_m,
                        ef_search=ef_search, train_size=train_size, memory_budget=memory_budget)
    dev = resolve_device(device)
    check_choice("backend", backend, ("auto", "faiss", "torch"))
    if backend == "auto":
        if spec.kind != "flat" or not faiss_available():
            backend = "faiss" if spec.kind != "flat" else "torch"
        else:
            backend = "faiss" if dev.type == "cpu" or gpu_count() > 0 else "torch"
    if backend == "torch" and spec.kind != "flat":
        raise ValueError(f"index={spec.kind!r} needs faiss; backend='torch' searches exactly (index='flat')")
    started = time.perf_counter()
    gpu = dev.type == "cuda" and (backend == "torch" or gpu_count() > 0)
    # Candidates per query, re-ranked below by exact per-row products: IVF-PQ's codes are approximate, and
    # on the CPU a BLAS product rounds differently with its thread count (≈5e-7 at d = 384), which reorders
    # near-tied neighbours; re-ranking exact search's top 2k makes its table the same on any thread count.
    # A k-NN graph on the CPU through IVF-Flat is a self-join (`hf_prune.ops.ivf_join`): its BLAS products
    # round with the thread count, so it is re-ranked like exact search.
    join = backend == "faiss" and spec.kind == "ivf" and self_search and not gpu
    if spec.rerank is not None:
        rerank = spec.rerank
    else:
        rerank = _FLAT_RERANK if not gpu and (spec.kind == "flat" or join) else None
    width = search_k if rerank is None else min(n, rerank * search_k)
    if join:
        table, keepalive = [], None

        def candidates(start, block):
            if not table:  # the whole join on the first block: its time counts as search time
                table.extend(ivf_self_join(rows, spec, metric, width, seed=seed, batch_rows=batch_size))
            return table[0][start : start + len(block)], table[1][start : start + len(block)]
    elif backend == "faiss":
        built, keepalive = build_index(rows, spec, metric, seed=seed, gpu=gpu, batch_rows=batch_size)

        def candidates(start, block):
            return built.search(block, width)
    else:
        torch_search, keepalive = _torch_searcher(rows, metric, width, dev), None

        def candidates(start, block):
            return torch_search(block)

    def search(start, block):
        found = candidates(start, block)
        return found if rerank is None else _rerank(rows, block, found[1], search_k, metric)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    values = np.empty((q_rows.shape[0], k), dtype=np.float32)
    indices = np.empty((q_rows.shape[0], k), dtype=np.int64)
    short = []
    for start, block in q_rows.blocks(batch_size):
        block = normalize_rows(block) if metric == "cosine" else block
        v, i = search(start, np.ascontiguousarray(block, dtype=np.float32))
        v, i = np.asarray(v, dtype=np.float32), np.asarray(i, dtype=np.int64)
        if drop_self:
            v, i = drop_own_rows(v, i, np.arange(start, start + len(i)))
        stop = start + len(block)
        values[start:stop], indices[start:stop] = v, i
        missing = np.flatnonzero((i < 0).any(axis=1))
        if len(missing):
            short.append(missing + start)
    del keepalive
    refilled = np.concatenate(short) if short else np.zeros(0, dtype=np.int64)
    if len(refilled):
        # An approximate index can find fewer than k rows in its probed lists: search those exactly.
        ev, ei = exact_neighbours(rows, q_rows.take(refilled), k, metric=metric,
                                  self_rows=refilled if drop_self else None)
        values[refilled], indices[refilled] = ev, ei
    search_s = time.perf_counter() - started
    if not return_report:
        return values, indices
    report = {"index": spec.kind, "params": spec.params(), "rows": n, "dim": d, "k": k, "metric": metric,
              "backend": backend, "build_s": build_s, "search_s": search_s, "refilled": int(len(refilled))}
    if spec.kind == "flat":
        report.update(recall_at_k=1.0, recall_measured=False, recall_queries=0, recall_s=0.0)
    else:
        started = time.perf_counter()
        measured = knn_recall(rows, k, indices, metric=metric, queries=recall_queries, seed=seed,
                              query_data=None if self_search else q_rows, exclude_self=drop_self)
        report.update(recall_at_k=measured["recall_at_k"], recall_measured=True,
                      recall_queries=measured["queries"], recall_s=time.perf_counter() - started)
    return values, indices, report


def _rerank(rows, queries, candidates, k, metric):
    """The best ``k`` of each query's ``candidates``, by exact values from the source rows.

    Values are NumPy ``einsum`` products row by row (one summation order, no BLAS), so they do not depend
    on the thread count; equal values go to the lower row position."""
    width = candidates.shape[1]
    values = np.full((len(queries), k), np.inf if metric == "l2" else -np.inf, dtype=np.float32)
    indices = np.full((len(queries), k), -1, dtype=np.int64)
    # A bounded gather: 4M values (16 MiB, and as much again for the l2 differences) per step.
    step = max(1, (_CHUNK_ELEMENTS >> 2) // max(1, width * queries.shape[1]))
    for lo in range(0, len(queries), step):
        cand = candidates[lo : lo + step]
        q = queries[lo : lo + step]
        gathered = rows.take(np.maximum(cand, 0).ravel())
        if metric == "cosine":
            gathered = normalize_rows(gathered)
        gathered = gathered.reshape(len(q), width, -1)
        if metric == "l2":
            diff = gathered - q[:, None]
            key = np.einsum("ikd,ikd->ik", diff, diff)
        else:
            key = -np.einsum("ikd,id->ik", gathered, q)
        key = np.where(cand < 0, np.inf, key)
        # Best first, equal values to the lower row position, like a flat index.
        order = np.lexsort((cand, key), axis=1)[:, :k]
        best = np.take_along_axis(key, order, 1)
        found = np.take_along_axis(cand, order, 1)
        found[~np.isfinite(best)] = -1
        values[lo : lo + step] = best if metric == "l2" else -best
        indices[lo : lo + step] = found
    return values, indices


def _torch_searcher(rows, metric, k, device):
    """Exact search on ``device`` against every row (normalised per block for cosine)."""
    n, d = rows.shape
    xt = torch.empty((n, d), dtype=torch.float32, device=device)
    for start, block in rows.blocks():
        block = normalize_rows(block) if metric == "cosine" else block
        xt[start : start + len(block)] = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))
    x_sq = (xt * xt).sum(1) if metric == "l2" else None

    def search(block):
        qt = torch.from_numpy(block).to(device)
        sims = qt @ xt.T
        if metric == "l2":
            dist = (qt * qt).sum(1, keepdim=True) - 2 * sims + x_sq
            v, i = torch.topk(dist, k, dim=1, largest=False)
        else:
            v, i = torch.topk(sims, k, dim=1, largest=True)
        return v.cpu().numpy(), i.cpu().numpy()

    return search


def drop_own_rows(values, indices, own):
    """Each query's table without its own row ``own[q]`` (the first match; its last, worst entry when
    the row is absent, e.g. pushed out by duplicates), one column narrower: what a self-search returns
    when the query rows were searched as ``queries=``.

    Example:
        >>> drop_own_rows(np.array([[0.0, 1.0]]), np.array([[7, 3]]), np.array([7]))
        (array([[1.]]), array([[3]]))
    """
    k = indices.shape[1] - 1
    is_self = indices == np.asarray(own)[:, None]
    # Rows without a self-match drop their last (worst) neighbour instead.
    no_self = ~is_self.any(1)
    is_self[no_self, -1] = True
    # Keep the first self-match only, in case of repeated indices (IVF can return -1 padding).
    first = np.argmax(is_self, axis=1)
    keep = np.ones_like(is_self)
    keep[np.arange(len(indices)), first] = False
    return values[keep].reshape(len(indices), k), indices[keep].reshape(len(indices), k)


class RadiusGraphTooLarge(ValueError):
    """`radius_neighbors` found more pairs than its ``max_edges`` allows."""


def radius_neighbors(
    x: np.ndarray,
    radius: float,
    *,
    metric: str = "l2",
    max_edges: int | None = 1 << 28,
    backend: str = "auto",
    device: str | torch.device | None = "cpu",
    chunk_size: int = 4096,
    index: str = "flat",
    nlist: int | None = None,
    nprobe: int | None = None,
    train_size: int | None = None,
    seed: int = 0,
    return_report: bool = False,
    recall_queries: int = 1000,
):
    """Every pair of rows closer than ``radius``: a CSR graph ``(indptr, indices)``, self-pairs included.

    Row ``i``'s neighbours are ``indices[indptr[i]:indptr[i + 1]]`` (in no particular order): every
    ``j`` with ``‖x_i − x_j‖ < radius`` (Euclidean; ``metric="cosine"`` measures it between
    L2-normalised copies, so ``cos ≥ 1 − radius²/2``). The search is exact: faiss's flat range search
    (``range_search_L2sqr`` on the rows in place, without an index's copy of them) or a chunked torch
    matmul on ``device`` (in float64 if torch is set to TF32/bf16 matmuls), over blocks of at most
    ``chunk_size`` query rows, run in float32 with a margin above the
    float32 rounding bound; the pairs inside that margin are then decided in float64 from the rows'
    differences. So the graph equals the float64 one, is symmetric, and holds the same pairs on every
    backend. Memory is the edges (int32 ``indices``, about 8 bytes per edge at the peak) plus one
    block, which shrinks when balls are large so it holds about 4M pairs. More than ``max_edges``
    pairs raise `RadiusGraphTooLarge` (a `ValueError`) with the count found so far;
    ``max_edges=None`` removes the cap.

    ``index="ivf"`` (or ``"auto"`` where `hf_prune.ops.knn_index.choose_index` leaves exact search)
    searches the balls of each IVF-Flat list's rows in the ``nprobe`` of ``nlist`` lists nearest that
    list's centroid (`hf_prune.ops.ivf_join.ivf_self_pairs`; defaults and training sample as for
    `knn`; the rows are gathered list by list, no copy) instead of every row: a pair in lists not probed
    is missed, nothing farther than ``radius`` is added (the same float64 decision of boundary pairs),
    and a pair found from either end is kept at both, so the graph stays symmetric. Its edge
    recall, the share of the exact graph's edges it holds, is measured on ``recall_queries`` seeded
    rows searched exactly. IVF-PQ and HNSW are not offered: PQ distances are too coarse to decide a
    radius, and faiss's HNSW has no range search. With ``return_report=True`` a third value is
    returned, a report like `knn`'s (``index``, ``params``, ``recall_at_k`` = the edge recall,
    ``build_s``, ``search_s``, ``recall_s``, ``edges``).

    Example:
        >>> indptr, indices = radius_neighbors(embeddings, 0.5, metric="cosine")
        >>> ball_sizes = np.diff(indptr)
        >>> indptr, indices, report = radius_neighbors(emb, 0.5, index="ivf", return_report=True)
        >>> report["recall_at_k"]  # the share of the exact graph's edges found
        0.98
    """
    check_choice("metric", metric, ("l2", "cosine"))  # a radius needs a distance, not "ip"
    radius = check_positive("radius", radius)
    if max_edges is not None:
        max_edges = check_positive_int("max_edges", max_edges)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    x = np.asarray(x)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"`x` must be a non-empty 2-D array, got shape {x.shape}")
    exact = normalize_rows(x) if metric == "cosine" else x  # the values the float64 check uses
    x32 = np.ascontiguousarray(exact, dtype=np.float32)
    n, d = x32.shape
    r2 = float(radius) ** 2
    if check_choice("backend", backend, ("auto", "faiss", "torch")) == "auto":
        backend = "faiss" if faiss_available() and resolve_device(device).type == "cpu" else "torch"
    dev = resolve_device(device) if backend == "torch" else torch.device("cpu")
    spec = resolve_spec(check_choice("index", index, ("auto", "flat", "exact", "ivf")), n, d, 1,
                        nlist=nlist, nprobe=nprobe, train_size=train_size)
    if spec.kind == "ivfpq":  # what "auto" picks beyond the memory budget: PQ codes cannot decide a radius
        spec = resolve_spec("ivf", n, d, 1, nlist=nlist, nprobe=nprobe, train_size=train_size)
    # torch may run float32 matmuls in TF32/bf16 (a global setting); then its blocks use float64. The IVF
    # join's NumPy products are float32 whatever the backend, and so is the margin they need.
    reduced = torch.get_float32_matmul_precision() != "highest" or torch.backends.cuda.matmul.allow_tf32
    dtype = torch.float64 if backend == "torch" and reduced and spec.kind != "ivf" else torch.float32
    # ‖a‖² + ‖b‖² − 2a·b is off by at most about (4d + 16)·u·max‖x‖² (u the unit roundoff), and
    # rounding float64 rows to float32 by 8u·max‖x‖²: twice the first covers both, and only the pairs
    # in that band are re-decided in float64.
    unit_roundoff = 2.0**-53 if dtype == torch.float64 else 2.0**-24
    max_sq = float(np.max(np.einsum("ij,ij->i", x32, x32, dtype=np.float64)))
    margin = 2 * (4 * d + 16) * unit_roundoff * max(max_sq, 1e-30)
    index_dtype = np.int32 if n < 2**31 else np.int64
    started = time.perf_counter()
    if spec.kind == "ivf":
        build_s = 0.0  # the lists are trained inside the join: its whole time is search time
        indptr, indices = _ivf_radius_graph(x32, exact, spec, r2, margin, radius, max_edges, seed, chunk_size)
    else:
        if backend == "faiss":
            search = _faiss_range(x32, r2 + margin)
        else:
            search = _torch_range(x32 if dtype == torch.float32 else exact, r2 + margin, dev, dtype)
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        counts = np.zeros(n, dtype=np.int64)
        parts: list[np.ndarray] = []
        total = 0
        start, block = 0, min(chunk_size, 256)
        while start < n:
            stop = min(n, start + block)
            rows, cols = _decide_band(*search(start, stop), exact, r2, margin)
            total += len(cols)
            _check_edges(total, max_edges, radius, stop, n)
            counts[start:stop] = np.bincount(rows - start, minlength=stop - start)
            parts.append(cols.astype(index_dtype, copy=False))
            # Dense balls make a block's pairs (int64 + float32 each) large: size blocks by the pairs seen.
            block = int(np.clip(_RADIUS_BLOCK_PAIRS * stop // max(total, 1), 1, chunk_size))
            start = stop
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        indices = np.concatenate(parts) if parts else np.zeros(0, dtype=index_dtype)
        del parts
    search_s = time.perf_counter() - started
    if not return_report:
        return indptr, indices
    report = {"index": spec.kind, "params": spec.params(), "rows": n, "dim": d, "radius": float(radius),
              "metric": metric, "edges": int(len(indices)), "build_s": build_s, "search_s": search_s}
    if spec.kind == "flat":
        report.update(recall_at_k=1.0, recall_measured=False, recall_queries=0, recall_s=0.0)
    else:
        started = time.perf_counter()
        sample = np.sort(np.random.default_rng(seed).choice(n, size=min(n, recall_queries), replace=False))
        exact_degree = _exact_degrees(x32, exact, sample, r2, margin)
        found = float((indptr[sample + 1] - indptr[sample]).sum())
        report.update(recall_at_k=found / max(float(exact_degree.sum()), 1.0), recall_measured=True,
                      recall_queries=int(len(sample)), recall_s=time.perf_counter() - started)
    return indptr, indices, report


def _decide_band(rows, cols, sq, exact, r2, margin):
    """The pairs ``(rows, cols)`` closer than ``sqrt(r2)``: float32 values within ``margin`` of it are
    decided again in float64 from the rows' differences."""
    band = np.flatnonzero(sq > r2 - margin)
    if len(band) == 0:
        return rows, cols
    keep = np.ones(len(rows), dtype=bool)
    step = max(1, (_CHUNK_ELEMENTS >> 2) // exact.shape[1])
    for lo in range(0, len(band), step):
        part = band[lo : lo + step]
        diff = exact[rows[part]].astype(np.float64) - exact[cols[part]].astype(np.float64)
        keep[part] = np.einsum("ij,ij->i", diff, diff) < r2
    return rows[keep], cols[keep]


def _check_edges(total, max_edges, radius, rows_done, n):
    if max_edges is not None and total > max_edges:
        raise RadiusGraphTooLarge(
            f"the radius-{radius:g} graph holds more than max_edges={max_edges:,} edges: {total:,} in "
            f"its first {rows_done:,} of {n:,} rows (≈{total / rows_done:,.0f} per row, "
            f"≈{total / rows_done * n:,.0f} in all); lower the radius or raise `max_edges`"
        )


def _ivf_radius_graph(x32, exact, spec, r2, margin, radius, max_edges, seed, chunk_size):
    """The radius graph through the IVF self-join (`hf_prune.ops.ivf_join.ivf_self_pairs`), symmetric:
    a pair found from either end is kept at both."""
    n = len(x32)
    index_dtype = np.int32 if n < 2**31 else np.int64
    rows_parts, cols_parts, total, rows_done = [], [], 0, 0
    for queries, rows, cols, sq in ivf_self_pairs(as_matrix(x32), spec, r2 + margin, seed=seed,
                                                  batch_rows=chunk_size, once=True):
        rows, cols = _decide_band(rows, cols, sq, exact, r2, margin)
        total += 2 * len(rows) - int(np.count_nonzero(rows == cols))  # edges, both directions
        rows_done += queries
        _check_edges(total, max_edges, radius, rows_done, n)
        rows_parts.append(rows.astype(index_dtype))
        cols_parts.append(cols.astype(index_dtype))
    return _symmetric(rows_parts, cols_parts, n, index_dtype)


def _symmetric(rows_parts, cols_parts, n, index_dtype):
    """CSR (rows sorted, each row's columns ascending) of the pairs ``(rows, cols)`` and their reverses,
    each unordered pair given once (`ivf_self_pairs` with ``once=True``).

    The degrees are counted first, so the CSR is allocated at its size; it is then filled range of rows
    by range of rows, each range's edges (about `_CHUNK_ELEMENTS`) sorted as int64 keys. So the peak is
    the pairs (8 bytes each with int32 positions) and the edges (4 bytes each), not a sort of two
    int64 keys per edge (24 bytes per edge, 1.7 GB for ProbCover's 73M edges at 1M rows)."""
    counts = np.zeros(n, dtype=np.int64)
    for rows, cols in zip(rows_parts, cols_parts):
        counts += np.bincount(rows, minlength=n)
        counts += np.bincount(cols[rows != cols], minlength=n)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    out = np.empty(int(indptr[-1]), dtype=index_dtype)
    lo = 0
    while lo < n:
        # The next range of rows holding about _CHUNK_ELEMENTS edges (at least one row).
        hi = int(np.searchsorted(indptr, indptr[lo] + _CHUNK_ELEMENTS, side="right")) - 1
        hi = min(n, max(hi, lo + 1))
        keys = []
        for rows, cols in zip(rows_parts, cols_parts):
            here = (rows >= lo) & (rows < hi)
            keys.append((rows[here] - lo).astype(np.int64) * n + cols[here])
            back = (cols >= lo) & (cols < hi) & (rows != cols)
            keys.append((cols[back] - lo).astype(np.int64) * n + rows[back])
        block = np.concatenate(keys)
        del keys
        block.sort()
        out[indptr[lo] : indptr[hi]] = block % n
        lo = hi
    return indptr, out


def _exact_degrees(x32, exact, rows, r2, margin):
    """Exact ball sizes (self included) of ``rows``: products with every row by BLAS, column block by
    column block (faiss's range kernel took 77 s for 1,000 balls at 1M × 384, this ~10 s), and the same
    float64 decision of the pairs near the radius."""
    queries = np.ascontiguousarray(x32[rows])
    q_sq = np.einsum("ij,ij->i", queries, queries)
    degrees = np.zeros(len(rows), dtype=np.int64)
    step = max(1, (_CHUNK_ELEMENTS >> 2) // max(1, len(rows)))  # 16 MiB of distances at a time
    for lo in range(0, len(x32), step):
        block = x32[lo : lo + step]
        sq = queries @ block.T
        sq *= -2.0  # in place: one table, not four
        sq += q_sq[:, None]
        sq += np.einsum("ij,ij->i", block, block)[None]
        q, c = np.nonzero(sq < r2 + margin)
        found_rows, _ = _decide_band(rows[q], c + lo, sq[q, c], exact, r2, margin)
        degrees += np.bincount(np.searchsorted(rows, found_rows), minlength=len(rows))
    return degrees


def _flat_range(queries, x, threshold):
    """Pairs ``(query position, row, squared float32 distance)`` below ``threshold``, by faiss's flat
    range kernel on ``x`` where it lies (``IndexFlatL2.range_search`` would copy every row first)."""
    faiss = import_faiss()
    found = faiss.RangeSearchResult(len(queries))
    faiss.range_search_L2sqr(faiss.swig_ptr(queries), faiss.swig_ptr(x), x.shape[1], len(queries), len(x),
                             float(threshold), found)
    lims = faiss.rev_swig_ptr(found.lims, len(queries) + 1).astype(np.int64)
    pairs = int(lims[-1])
    sq = faiss.rev_swig_ptr(found.distances, pairs).copy()
    cols = faiss.rev_swig_ptr(found.labels, pairs).astype(np.int64)
    return np.repeat(np.arange(len(queries), dtype=np.int64), np.diff(lims)), cols, sq


def _faiss_range(x, threshold):
    """``search(start, stop)`` → pairs ``(rows, cols, squared float32 distances)`` below ``threshold``."""
    x = np.ascontiguousarray(x, dtype=np.float32)

    def search(start, stop):
        rows, cols, sq = _flat_range(x[start:stop], x, threshold)
        return rows + start, cols, sq

    return search


def _torch_range(x, threshold, device, dtype):
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dtype)
    x_sq = (xt * xt).sum(1)

    step = max(1, _CHUNK_ELEMENTS // len(x))  # an N-wide block of at most ~16M distances

    def search(start, stop):
        out = []
        for lo in range(start, stop, step):
            hi = min(stop, lo + step)
            sq = (x_sq[lo:hi, None] - 2 * xt[lo:hi] @ xt.T + x_sq[None]).clamp_min_(0)
            rows, cols = torch.nonzero(sq < threshold, as_tuple=True)  # row-major: grouped by row
            out.append(((rows + lo).cpu().numpy(), cols.cpu().numpy(), sq[rows, cols].cpu().numpy()))
        return tuple(np.concatenate(parts) for parts in zip(*out))

    return search
