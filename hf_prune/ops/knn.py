"""k-nearest-neighbour search: faiss (exact or IVF) when available, a chunked torch search otherwise.

Memory stays bounded: the torch path scores ``batch_size`` queries at a time (never N×N), and faiss
holds only the index. Similarities are inner products (``metric="ip"``, or ``"cosine"`` on
L2-normalised copies); distances are squared Euclidean (``metric="l2"``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .device import resolve_device
from .faiss_import import faiss_available, import_faiss

__all__ = ["knn", "normalize_rows", "neighbour_pairs"]

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
