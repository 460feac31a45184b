"""Each row's most similar row with another label: ProbCover's purity radius ``r_x`` in one pass.

ProbCover's δ is an order statistic of ``r_x``, the distance from ``x`` to the nearest point of another
pseudo-label. Searching k nearest neighbours and widening k until another label turns up costs a
search per widening and a table of pending rows × k candidates, which grows without bound when the
pseudo-labels are large clusters (50,000 rows in 500 k-means clusters: 11 widenings, 32,768 candidates
per pending row, more than 200 s; 100,000 rows ran out of 24 GB). Here the rows of the row's own label
are masked out of the products themselves, so one pass gives every row its answer, whatever the
cluster sizes, in memory bounded by one block of products per worker:

* exact (``index="flat"``): every row against every row, in blocks of 1,024 query rows by 4,096
  columns, each query block one `hf_prune.ops.threads.parallel_steps` step (one thread per step);
* ``index="ivf"`` (and every other approximate kind, which has no masked self-join of its own): the
  IVF self-join of `hf_prune.ops.ivf_join` with the own label masked, so a row is compared with the
  rows of the ``nprobe`` lists nearest its list's centroid. The rows whose probed lists hold no other
  label are searched again in 4× as many lists (the lists trained once), and so on; those left when
  every list is probed have no other label at all. Missing the true nearest other-label row can
  only *over*estimate ``r_x``; the share of seeded sampled rows whose answer equals the exact one is
  measured and reported;
* on a GPU (any ``device`` but the CPU): the exact scan in torch, whatever ``index`` says (an N² product
  is seconds there).

The similarity returned is recomputed exactly (NumPy ``einsum``, one summation order) from the best
candidates, those within `_TIE_TOLERANCE` of the block's best product: BLAS rounding (≈1e-6 at d = 384)
cannot pick a different value, and the answer does not depend on the thread count. On a GPU only the
device's best candidate is recomputed, so a near-tie may resolve differently there.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .checks import check_choice, check_positive_int, seed_int
from .device import resolve_device
from .ivf_join import IvfLists
from .knn_index import INDEX_KINDS, resolve_spec
from .matrix import as_matrix
from .threads import step_pool, step_threads

__all__ = ["nearest_other_label"]

#: Query rows per exact step and columns per product tile: 1,024 × 4,096 float32 products (16 MiB).
_QUERY_ROWS = 1024
_COLUMN_TILE = 4096
#: Products within this of a block's best are recomputed exactly (BLAS float32 rounding on unit
#: vectors is ≈1e-6 at d = 384; 2e-5 leaves room at d of several thousand).
_TIE_TOLERANCE = 2e-5
#: Each IVF pass for the rows left without another label probes this many times as many lists.
_WIDENING = 4


def nearest_other_label(x, labels, *, index: str = "flat", device: str | torch.device | None = "cpu",
                        seed: int = 0, recall_queries: int = 1000, return_report: bool = False):
    """For each row of ``x``, the largest inner product ``x_i · x_j`` over rows ``j`` with another label.

    Returns a float32 vector (``-inf`` where no row has another label). On unit rows the distance to the nearest
    other-label row is ``sqrt(2 − 2·value)``. ``labels`` are any comparable values, one per row.
    ``index``: ``"flat"``/``"exact"`` (exact), ``"auto"`` (exact up to
    `hf_prune.ops.knn_index.EXACT_MAX_ROWS` rows), or an approximate kind, all of which run the masked
    IVF-Flat self-join (its lists trained with ``seed``; see the module docstring). On a device other
    than the CPU the scan is exact. With ``return_report=True`` a second value is returned: the report of
    `hf_prune.ops.knn.knn` (``index``, ``params``, ``recall_at_k`` (here the share of ``recall_queries``
    sampled rows whose value equals the exact one; 1.0 for exact search), ``build_s``, ``search_s``,
    ``recall_s``, ``widened``: per further IVF pass, the rows searched again in more lists).

    Example:
        >>> sims = nearest_other_label(unit_rows, cluster_ids)
        >>> radius = np.sqrt(np.clip(2 - 2 * sims.astype(np.float64), 0, None))  # inf: no other label
        >>> sims, report = nearest_other_label(unit_rows, cluster_ids, index="ivf", return_report=True)
    """
    check_choice("index", index, INDEX_KINDS)
    recall_queries = check_positive_int("recall_queries", recall_queries)
    seed = seed_int(seed)
    x = np.ascontiguousarray(as_matrix(x).to_numpy(), dtype=np.float32)
    n, d = x.shape
    codes = np.unique(np.asarray(labels), return_inverse=True)[1].reshape(-1)
    if len(codes) != n:
        raise ValueError(f"`labels` has {len(codes)} values but `x` has {n} rows")
    codes = codes.astype(np.int32)
    dev = resolve_device(device)
    spec = resolve_spec(index, n, d, 1)
    if spec.kind != "flat":
        spec = resolve_spec("ivf", n, d, 1)
    exact = spec.kind == "flat" or dev.type != "cpu"
    started = time.perf_counter()
    if exact:
        values, widened = _exact(x, codes, np.arange(n), dev), []
    else:
        values, widened = _ivf(x, codes, spec, seed)
    search_s = time.perf_counter() - started
    if not return_report:
        return values
    report = {"index": "flat" if exact else "ivf", "params": {} if exact else spec.params(), "rows": n,
              "dim": d, "k": 1, "metric": "ip", "backend": "torch" if dev.type != "cpu" else "numpy",
              "search": "nearest other label", "build_s": 0.0, "search_s": search_s,
              "widened": widened}
    if exact:
        report.update(recall_at_k=1.0, recall_measured=False, recall_queries=0, recall_s=0.0)
    else:
        started = time.perf_counter()
        sample = np.sort(np.random.default_rng(seed).choice(n, size=min(recall_queries, n), replace=False))
        truth = _exact(x, codes, sample, dev)
        report.update(recall_at_k=float(np.mean(values[sample] == truth)), recall_measured=True,
                      recall_queries=int(len(sample)), recall_s=time.perf_counter() - started)
    return values, report


def _best_with_ties(sims: np.ndarray, same: np.ndarray, floor: np.ndarray | None = None):
    """Mask ``same`` out of the product table ``sims`` (in place) and return each row's best product, and
    the ``(row, column)`` positions and products within `_TIE_TOLERANCE` of it (or of ``floor``, a
    running best from earlier tiles, when that is higher): they hold the exact best."""
    np.putmask(sims, same, -np.inf)
    best = sims.max(axis=1)
    level = best if floor is None else np.maximum(best, floor)
    threshold = np.where(np.isfinite(level), level - _TIE_TOLERANCE, np.inf).astype(np.float32)
    rows, cols = np.nonzero(sims >= threshold[:, None])
    return best, rows, cols, sims[rows, cols]


def _exact_values(x: np.ndarray, queries: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Per query, the largest exact product over its candidate pairs ``(queries[rows], cols)`` (``-inf``
    for a query without one)."""
    out = np.full(len(queries), -np.inf, dtype=np.float32)
    if len(rows):
        np.maximum.at(out, rows, np.einsum("ij,ij->i", x[queries[rows]], x[cols]))
    return out


def _exact(x: np.ndarray, codes: np.ndarray, queries: np.ndarray, device: torch.device) -> np.ndarray:
    """The exact answer for the rows ``queries``: every row a candidate, own label masked."""
    if device.type != "cpu":
        return _exact_torch(x, codes, queries, device)
    n = len(x)
    columns = [(lo, min(n, lo + _COLUMN_TILE)) for lo in range(0, n, _COLUMN_TILE)]

    def step(lo: int) -> tuple[int, np.ndarray]:
        block = queries[lo : lo + _QUERY_ROWS]
        q, q_codes = x[block], codes[block][:, None]
        running = np.full(len(block), -np.inf, dtype=np.float32)
        near_rows, near_cols, near_values = [], [], []
        for c_lo, c_hi in columns:
            best, rows, cols, values = _best_with_ties(q @ x[c_lo:c_hi].T, q_codes == codes[c_lo:c_hi], running)
            np.maximum(running, best, out=running)
            near_rows.append(rows)
            near_cols.append(cols + c_lo)
            near_values.append(values)
        rows, cols, values = np.concatenate(near_rows), np.concatenate(near_cols), np.concatenate(near_values)
        # A pair collected against an earlier, lower running best may lie far below the final one.
        close = values >= running[rows] - _TIE_TOLERANCE
        return lo, _exact_values(x, block, rows[close], cols[close])

    out = np.empty(len(queries), dtype=np.float32)
    with step_pool(step_threads(device, len(queries) * n * x.shape[1])) as run:
        for lo, values in run(step, range(0, len(queries), _QUERY_ROWS)):
            out[lo : lo + len(values)] = values
    return out


def _exact_torch(x: np.ndarray, codes: np.ndarray, queries: np.ndarray, device: torch.device) -> np.ndarray:
    xt = torch.from_numpy(x).to(device)
    ct = torch.from_numpy(codes.astype(np.int64)).to(device)
    step = max(1, min(4096, (1 << 26) // max(1, len(x))))
    out = np.full(len(queries), -np.inf, dtype=np.float32)
    for lo in range(0, len(queries), step):
        block = queries[lo : lo + step]
        qi = torch.from_numpy(block.astype(np.int64)).to(device)
        sims = xt[qi] @ xt.T
        sims.masked_fill_(ct[qi][:, None] == ct[None, :], float("-inf"))
        best, at = sims.max(dim=1)
        best, at = best.cpu().numpy(), at.cpu().numpy()
        found = np.flatnonzero(np.isfinite(best))
        # The device's best candidate, its product recomputed on the CPU in the CPU path's order.
        out[lo + found] = np.einsum("ij,ij->i", x[block[found]], x[at[found]])
    return out


def _ivf(x: np.ndarray, codes: np.ndarray, spec, seed: int) -> tuple[np.ndarray, list[int]]:
    """The masked IVF self-join: each row against the rows of the lists its own list probes; rows
    whose probed lists hold only their own label are searched again in `_WIDENING` times as many
    lists, the lists trained once, until no row is left or every list is probed (``-inf``: none).
    Returns the values and the number of rows of each further pass."""
    out = np.full(len(x), -np.inf, dtype=np.float32)
    lists = IvfLists(as_matrix(x), spec, "ip", seed=seed)

    def reduce(queries, found, key, _query_sq, _back):
        np.negative(key, out=key)  # −q·c → q·c
        _, rows, cols, _ = _best_with_ties(key, codes[queries][:, None] == codes[found][None, :])
        return queries, _exact_values(x, queries, rows, found[cols])

    left, nprobe, widened = None, spec.nprobe, []
    while True:
        for queries, values in lists.products(reduce, nprobe=nprobe, queries=left):
            out[queries] = values
        left = np.flatnonzero(out == -np.inf)
        if len(left) == 0 or nprobe >= spec.nlist:
            return out, widened
        nprobe = min(spec.nlist, nprobe * _WIDENING)
        widened.append(int(len(left)))
