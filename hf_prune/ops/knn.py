"""k-nearest-neighbour search: faiss (exact or IVF) when available, a chunked torch search otherwise.

Memory stays bounded: the torch path scores ``batch_size`` queries at a time (never N×N), and faiss
holds only the index. Similarities are inner products (``metric="ip"``, or ``"cosine"`` on
L2-normalised copies); distances are squared Euclidean (``metric="l2"``). `radius_neighbors` finds
every pair closer than a radius (a CSR graph whose memory is bounded by its number of edges).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .checks import check_choice, check_positive, check_positive_int
from .device import resolve_device
from .faiss_import import faiss_available, import_faiss

__all__ = ["knn", "normalize_rows", "neighbour_pairs", "radius_neighbors", "RadiusGraphTooLarge"]

# Neighbour rows gathered at once by `neighbour_pairs`: an (rows, k, d) float64 block of ~16M numbers.
_CHUNK_ELEMENTS = 1 << 24


def normalize_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32, copy=False)


def neighbour_pairs(
    x: np.ndarray, neighbours: np.ndarray, reduce: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> np.ndarray:
    """``(N, k)`` float64 values of ``reduce(rows, rows' neighbours)`` over the k-NN table ``neighbours``.

    ``reduce`` gets a float64 ``(b, d)`` block of rows and their ``(b, k, d)`` neighbours and returns
    ``(b, k)``; rows are processed in chunks so memory stays bounded whatever ``N`` is.

    Example:
        >>> sims = neighbour_pairs(x, idx, lambda rows, nb: np.einsum("id,ikd->ik", rows, nb))
    """
    n, k = neighbours.shape
    out = np.empty((n, k), dtype=np.float64)
    step = max(1, _CHUNK_ELEMENTS // max(1, k * x.shape[1]))
    for start in range(0, n, step):
        block = slice(start, start + step)
        out[block] = reduce(x[block].astype(np.float64), x[neighbours[block]].astype(np.float64))
    return out


def knn(
    x: np.ndarray,
    k: int,
    *,
    metric: str = "ip",
    queries: np.ndarray | None = None,
    exclude_self: bool = True,
    index: str = "flat",
    nlist: int | None = None,
    nprobe: int = 16,
    backend: str = "auto",
    device: str | torch.device | None = "cpu",
    batch_size: int = 4096,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of ``x`` for each query (default: each row of ``x`` itself).

    Returns ``(values, indices)``, both ``(Q, k)``, best first: similarities for ``"ip"``/``"cosine"``
    (descending), squared distances for ``"l2"`` (ascending). With ``queries=None`` and
    ``exclude_self=True`` a row is never its own neighbour (duplicates of it still can be).
    ``index="ivf"`` builds an IVF index (``nlist`` ≈ 4√N lists, ``nprobe`` probed) for large N.

    Example:
        >>> sims, idx = knn(embeddings, 5, metric="cosine")
    """
    if metric not in ("ip", "cosine", "l2"):
        raise ValueError(f"`metric` must be 'ip', 'cosine' or 'l2', got {metric!r}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    self_search = queries is None
    q = x if self_search else np.ascontiguousarray(queries, dtype=np.float32)
    drop_self = self_search and exclude_self
    available = len(x) - (1 if drop_self else 0)
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"`k` must be a positive integer, got {k!r}")
    if k > available:
        raise ValueError(f"`k`={k} must be smaller than the number of rows ({len(x)})")
    if metric == "cosine":
        x = normalize_rows(x)
        q = x if self_search else normalize_rows(q)
    search_k = k + 1 if drop_self else k
    if backend == "auto":
        backend = "faiss" if faiss_available() and resolve_device(device).type == "cpu" else "torch"
    if backend == "faiss":
        values, indices = _faiss_search(x, q, search_k, metric, index, nlist, nprobe, seed)
    elif backend == "torch":
        values, indices = _torch_search(x, q, search_k, metric, resolve_device(device), batch_size)
    else:
        raise ValueError(f"`backend` must be 'auto', 'faiss' or 'torch', got {backend!r}")
    if drop_self:
        values, indices = _drop_self(values, indices, k)
    return values, indices


def _faiss_search(x, q, k, metric, index, nlist, nprobe, seed):
    faiss = import_faiss()
    d = x.shape[1]
    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    if index == "flat":
        idx = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
    elif index == "ivf":
        nlist = nlist or max(1, int(4 * np.sqrt(len(x))))
        quantizer = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
        idx = faiss.IndexIVFFlat(quantizer, d, nlist, faiss_metric)
        idx.cp.seed = seed
        idx.train(x)
        idx.nprobe = nprobe
    else:
        raise ValueError(f"`index` must be 'flat' or 'ivf', got {index!r}")
    idx.add(x)
    values, indices = idx.search(q, k)
    return values.astype(np.float32), indices.astype(np.int64)


def _torch_search(x, q, k, metric, device, batch_size):
    xt = torch.from_numpy(x).to(device)
    x_sq = (xt * xt).sum(1) if metric == "l2" else None
    out_v, out_i = [], []
    for start in range(0, len(q), batch_size):
        qt = torch.from_numpy(q[start : start + batch_size]).to(device)
        sims = qt @ xt.T
        if metric == "l2":
            dist = (qt * qt).sum(1, keepdim=True) - 2 * sims + x_sq
            v, i = torch.topk(dist, k, dim=1, largest=False)
        else:
            v, i = torch.topk(sims, k, dim=1, largest=True)
        out_v.append(v.cpu().numpy())
        out_i.append(i.cpu().numpy())
    return np.concatenate(out_v).astype(np.float32), np.concatenate(out_i).astype(np.int64)


def _drop_self(values, indices, k):
    """Remove each row's own index from its k+1 results (the last one when it is absent)."""
    rows = np.arange(len(indices))[:, None]
    is_self = indices == rows
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
) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of rows closer than ``radius``: a CSR graph ``(indptr, indices)``, self-pairs included.

    Row ``i``'s neighbours are ``indices[indptr[i]:indptr[i + 1]]`` (in no particular order): every
    ``j`` with ``‖x_i − x_j‖ < radius`` (Euclidean; ``metric="cosine"`` measures it between
    L2-normalised copies, so ``cos ≥ 1 − radius²/2``). The search is exact: faiss ``range_search`` on
    a flat index (or a chunked torch matmul on ``device``; in float64 if torch is set to TF32/bf16
    matmuls) over blocks of at most ``chunk_size`` query rows, run in float32 with a margin above the
    float32 rounding bound; the pairs inside that margin are then decided in float64 from the rows'
    differences. So the graph equals the float64 one, is symmetric, and holds the same pairs on every
    backend. Memory is the edges (int32 ``indices``, about 8 bytes per edge at the peak) plus one
    block, which shrinks when balls are large so it holds about 16M pairs. More than ``max_edges``
    pairs raise `RadiusGraphTooLarge` (a `ValueError`) with the count found so far;
    ``max_edges=None`` removes the cap.

    Example:
        >>> indptr, indices = radius_neighbors(embeddings, 0.5, metric="cosine")
        >>> ball_sizes = np.diff(indptr)
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
    # torch may run float32 matmuls in TF32/bf16 (a global setting); then its blocks use float64.
    reduced = torch.get_float32_matmul_precision() != "highest" or torch.backends.cuda.matmul.allow_tf32
    dtype = torch.float64 if backend == "torch" and reduced else torch.float32
    # ‖a‖² + ‖b‖² − 2a·b is off by at most about (4d + 16)·u·max‖x‖² (u the unit roundoff), and
    # rounding float64 rows to float32 by 8u·max‖x‖²: twice the first covers both, and only the pairs
    # in that band are re-decided in float64.
    unit_roundoff = 2.0**-53 if dtype == torch.float64 else 2.0**-24
    max_sq = float(np.max(np.einsum("ij,ij->i", x32, x32, dtype=np.float64)))
    margin = 2 * (4 * d + 16) * unit_roundoff * max(max_sq, 1e-30)
    if backend == "faiss":
        search = _faiss_range(x32, r2 + margin)
    else:
        search = _torch_range(x32 if dtype == torch.float32 else exact, r2 + margin, dev, dtype)
    counts = np.zeros(n, dtype=np.int64)
    parts: list[np.ndarray] = []
    total = 0
    index_dtype = np.int32 if n < 2**31 else np.int64
    start, block = 0, min(chunk_size, 256)
    while start < n:
        stop = min(n, start + block)
        rows, cols, sq = search(start, stop)
        band = np.flatnonzero(sq > r2 - margin)
        if len(band):
            keep = np.ones(len(rows), dtype=bool)
            step = max(1, (_CHUNK_ELEMENTS >> 2) // d)
            for lo in range(0, len(band), step):
                part = band[lo : lo + step]
                diff = exact[rows[part]].astype(np.float64) - exact[cols[part]].astype(np.float64)
                keep[part] = np.einsum("ij,ij->i", diff, diff) < r2
            rows, cols = rows[keep], cols[keep]
        total += len(cols)
        if max_edges is not None and total > max_edges:
            raise RadiusGraphTooLarge(
                f"the radius-{radius:g} graph holds more than max_edges={max_edges:,} edges: {total:,} in "
                f"its first {stop:,} of {n:,} rows (≈{total / stop:,.0f} per row, ≈{total / stop * n:,.0f} "
                "in all); lower the radius or raise `max_edges`"
            )
        counts[start:stop] = np.bincount(rows - start, minlength=stop - start)
        parts.append(cols.astype(index_dtype, copy=False))
        # Dense balls make a block's pairs (int64 + float32 each) large: size blocks by the pairs seen.
        block = int(np.clip(_CHUNK_ELEMENTS * stop // max(total, 1), 1, chunk_size))
        start = stop
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, np.concatenate(parts) if parts else np.zeros(0, dtype=index_dtype)


def _faiss_range(x, threshold):
    """``search(start, stop)`` → pairs ``(rows, cols, squared float32 distances)`` below ``threshold``."""
    faiss = import_faiss()
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)

    def search(start, stop):
        lims, sq, cols = index.range_search(x[start:stop], threshold)
        rows = np.repeat(np.arange(start, stop, dtype=np.int64), np.diff(lims.astype(np.int64)))
        return rows, cols.astype(np.int64, copy=False), sq

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
