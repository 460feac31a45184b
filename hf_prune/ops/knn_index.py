"""Which faiss index a k-NN search uses, its defaults, and how it is built over a block source.

Kinds (``index=`` of `hf_prune.ops.knn.knn`, ``knn_index=`` of the selectors):

* ``"flat"`` (alias ``"exact"``): exact search; recall 1 by definition. On the CPU no index is built:
  `RowsFlatIndex` runs faiss's flat kernel on the rows where they lie (an array, or a memory-mapped
  column in parts of about 32 MiB), so it stores nothing beside them (faiss's ``IndexFlat`` would
  hold a float32 copy of every row). On GPUs the rows are copied to the devices.
* ``"ivf"``: IVF-Flat. ``nlist`` lists (default ``4·√N``, at most ``N/39`` so every list gets the
  39 training points faiss asks for), ``nprobe`` of them searched per query (default 16, or
  ``nlist`` when that is smaller). Stores the rows in float32 (``4·N·d`` bytes). A k-NN graph (every
  row a query) on the CPU is searched as a self-join with probes per list (`hf_prune.ops.ivf_join`).
* ``"ivfpq"``: IVF-PQ, the same lists with product-quantised residuals: ``pq_m`` sub-quantizers of
  8 bits (default: the largest divisor of ``d`` up to ``d/4``, so a row costs ``d/4`` bytes, 1/16 of
  float32). For pools whose float32 index would not fit in memory. PQ distances are coarse, so
  ``4·k`` candidates are fetched and re-ranked by their exact values read from the source rows
  (``rerank``: a gather of those rows per query block, nothing stored beside the codes).
* ``"hnsw"``: HNSW-Flat graph, ``hnsw_m`` links per node (default 32), ``efConstruction`` 40,
  ``ef_search`` (default ``max(64, 2·k)``). Needs no training; memory is float32 rows plus
  ``2·hnsw_m`` links per row. Never chosen by ``"auto"``: its insertion is ~10× slower than adding to
  an IVF index on these all-rows-as-queries searches, for recall IVF reaches with a larger ``nprobe``.
  Built on several OpenMP threads its graph depends on their timing, so its neighbours (and a
  selection on them) are reproducible only on one faiss thread (``faiss.omp_set_num_threads(1)``);
  the other kinds give the same neighbours on any thread count.
* ``"auto"``: `choose_index`, a rule on ``N`` and ``d``:
  exact when ``N ≤ 50,000`` or ``N²·d ≤ 10¹²`` (about a minute of float32 BLAS on two cores: cheaper
  than a trained index and no recall to lose); otherwise IVF-Flat when its float32 rows
  (``4·N·d`` bytes) fit ``memory_budget`` (default 8 GiB); otherwise IVF-PQ.

Approximate indexes are trained on a seeded sample of ``train_size`` rows (default
``max(40·nlist, 50,000)``, capped at ``N``; faiss's k-means needs ~39 points per list, more only
refines the list boundaries), not on every row. Rows are then added and queried block by block, so
the extra memory is the index plus one block.

GPU: with ``device="cuda"`` and a faiss build with GPUs, flat and IVF indexes are trained on the CPU
(the sample is small) and cloned to the GPU; with several GPUs, sharded over all of them
(``faiss.index_cpu_to_all_gpus`` with ``shard=True``: each GPU holds a slice of the rows and the
per-shard results are merged), which gives the same neighbours as one device up to float ties.
HNSW has no faiss GPU version and runs on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .checks import check_choice, check_positive_int
from .faiss_import import import_faiss

__all__ = [
    "INDEX_KINDS",
    "IndexSpec",
    "choose_index",
    "resolve_spec",
    "build_index",
    "gpu_count",
    "trained_ivf",
    "normalised_block",
    "EXACT_MAX_ROWS",
    "EXACT_MAX_WORK",
    "DEFAULT_MEMORY_BUDGET",
]

#: Accepted kinds; ``"exact"`` is a synonym of ``"flat"``.
INDEX_KINDS = ("auto", "flat", "exact", "ivf", "ivfpq", "hnsw")
#: ``"auto"`` searches exactly up to this many rows whatever ``d``.
EXACT_MAX_ROWS = 50_000
#: ... or while ``N²·d`` (the multiply-adds of an exact all-rows search) stays below this.
EXACT_MAX_WORK = 1e12
#: ``"auto"`` switches from IVF-Flat to IVF-PQ when ``4·N·d`` bytes exceed this.
DEFAULT_MEMORY_BUDGET = 8 * 2**30
_MIN_TRAIN = 50_000
_POINTS_PER_LIST = 39  # faiss warns below 39 training points per centroid
_DEFAULT_NPROBE = 16
_HNSW_M = 32
_EF_CONSTRUCTION = 40
_PQ_RERANK = 4


def choose_index(n: int, d: int, *, memory_budget: int | None = None) -> str:
    """The kind ``"auto"`` means for ``n`` rows of dimension ``d`` (the rule in the module docstring).

    Example:
        >>> choose_index(10_000, 384), choose_index(1_000_000, 384), choose_index(100_000_000, 768)
        ('flat', 'ivf', 'ivfpq')
    """
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else check_positive_int("memory_budget", memory_budget)
    if n <= EXACT_MAX_ROWS or float(n) * n * d <= EXACT_MAX_WORK:
        return "flat"
    return "ivf" if 4 * n * d <= budget else "ivfpq"


@dataclass
class IndexSpec:
    """A resolved index: its kind and every parameter it was built with (recorded in reports)."""

    kind: str
    nlist: int | None = None
    nprobe: int | None = None
    pq_m: int | None = None
    pq_bits: int | None = None
    hnsw_m: int | None = None
    ef_construction: int | None = None
    ef_search: int | None = None
    train_size: int | None = None
    rerank: int | None = None

    def params(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None and key != "kind"}


def _default_pq_m(d: int) -> int:
    cap = max(1, d // 4)
    return max(m for m in range(1, cap + 1) if d % m == 0)


def resolve_spec(
    kind: str,
    n: int,
    d: int,
    k: int,
    *,
    nlist: int | None = None,
    nprobe: int | None = None,
    pq_m: int | None = None,
    hnsw_m: int | None = None,
    ef_search: int | None = None,
    train_size: int | None = None,
    memory_budget: int | None = None,
) -> IndexSpec:
    """Validate ``kind`` and fill in the documented defaults for ``n`` rows of dimension ``d``.

    Example:
        >>> resolve_spec("ivf", 200_000, 64, 10)
        IndexSpec(kind='ivf', nlist=1788, nprobe=16, pq_m=None, pq_bits=None, hnsw_m=None, ef_construction=None, ef_search=None, train_size=71520)
    """
    kind = check_choice("index", kind, INDEX_KINDS)
    if kind == "exact":
        kind = "flat"
    if kind == "auto":
        kind = choose_index(n, d, memory_budget=memory_budget)
    if kind == "flat":
        return IndexSpec("flat")
    if kind == "hnsw":
        hnsw_m = _HNSW_M if hnsw_m is None else check_positive_int("hnsw_m", hnsw_m, minimum=2)
        ef = max(64, 2 * k) if ef_search is None else check_positive_int("ef_search", ef_search)
        return IndexSpec("hnsw", hnsw_m=hnsw_m, ef_construction=_EF_CONSTRUCTION, ef_search=max(ef, k))
    max_lists = max(1, n // _POINTS_PER_LIST)
    if nlist is None:
        nlist = int(np.clip(round(4 * math.sqrt(n)), 1, max_lists))
    else:
        nlist = check_positive_int("nlist", nlist)
        if nlist > n:
            raise ValueError(f"`nlist`={nlist} must be at most the number of rows ({n})")
    nprobe = min(_DEFAULT_NPROBE, nlist) if nprobe is None else min(check_positive_int("nprobe", nprobe), nlist)
    if train_size is None:
        train_size = max(40 * nlist, _MIN_TRAIN)
    train_size = min(n, max(nlist, check_positive_int("train_size", train_size)))
    spec = IndexSpec(kind, nlist=nlist, nprobe=nprobe, train_size=train_size)
    if kind == "ivfpq":
        spec.pq_m = _default_pq_m(d) if pq_m is None else check_positive_int("pq_m", pq_m)
        if d % spec.pq_m:
            raise ValueError(f"`pq_m`={spec.pq_m} must divide the dimension d={d}")
        spec.pq_bits = 8
        spec.rerank = _PQ_RERANK
        if train_size < 2**spec.pq_bits:
            raise ValueError(f"IVF-PQ needs at least {2 ** spec.pq_bits} training rows; there are {train_size}")
    return spec


def gpu_count() -> int:
    """GPUs the installed faiss can use (0 for faiss-cpu).

    Example:
        >>> gpu_count()
        0
    """
    faiss = import_faiss()
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


#: Bytes of the parts a chunked column is searched in (`RowsFlatIndex`): 32 MiB, 21,845 rows at d = 384
#: (D² at 100k × 384 took 136 s with these, 153 s with 8 MiB parts and 211 s on the 1,000-row batches).
_PART_BYTES = 32 << 20


def normalised_block(block: np.ndarray, cosine: bool) -> np.ndarray:
    """``block`` as faiss stores it: float32 rows, L2-normalised for the cosine metric."""
    if not cosine:
        return np.ascontiguousarray(block, dtype=np.float32)
    return (block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)).astype(np.float32, copy=False)


def trained_ivf(rows, spec: IndexSpec, metric: str, *, seed: int = 0):
    """An empty IVF-Flat / IVF-PQ index of ``spec`` with its lists trained on ``spec.train_size`` rows of
    ``rows`` drawn with ``seed`` (normalised for cosine), ``nprobe`` set.

    Example:
        >>> index = trained_ivf(as_matrix(emb), resolve_spec("ivf", len(emb), emb.shape[1], 10), "l2")
    """
    faiss = import_faiss()
    n, d = rows.shape
    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    quantizer = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
    if spec.kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, d, spec.nlist, faiss_metric)
    else:
        index = faiss.IndexIVFPQ(quantizer, d, spec.nlist, spec.pq_m, spec.pq_bits, faiss_metric)
    index.cp.seed = int(seed) % 2**31
    index.cp.min_points_per_centroid = 1
    index.cp.max_points_per_centroid = max(256, spec.train_size)  # the sample is already the subsample
    sample = np.sort(np.random.default_rng(seed).choice(n, size=spec.train_size, replace=False))
    index.train(normalised_block(rows.take(sample), metric == "cosine"))
    index.nprobe = spec.nprobe
    return index


def build_index(rows, spec: IndexSpec, metric: str, *, seed: int = 0, gpu: bool = False, batch_rows=None):
    """A faiss index of every row of the block source ``rows`` (normalised per block for cosine).

    Trained (IVF kinds) on ``spec.train_size`` rows drawn with ``seed``; ``gpu=True`` clones flat/IVF
    indexes to the GPU(s) after training (sharded over several). Returns ``(index, keepalive)``:
    keep ``keepalive`` (GPU resources) referenced while the index is used.

    Example:
        >>> index, _ = build_index(as_matrix(emb), resolve_spec("ivf", len(emb), emb.shape[1], 10), "l2")
    """
    faiss = import_faiss()
    n, d = rows.shape
    cosine = metric == "cosine"
    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    if spec.kind == "flat" and not gpu:
        # faiss's flat index would copy every row into itself: search the rows where they lie instead.
        return RowsFlatIndex(rows, faiss_metric, cosine=cosine), None
    if spec.kind == "flat":
        index = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
    elif spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, spec.hnsw_m, faiss_metric)
        index.hnsw.efConstruction = spec.ef_construction
        index.hnsw.efSearch = spec.ef_search
    else:
        index = trained_ivf(rows, spec, metric, seed=seed)
    keepalive = None
    if gpu and spec.kind != "hnsw":
        index, keepalive = _to_gpus(faiss, index, spec)
    for _, block in rows.blocks(batch_rows):
        index.add(normalised_block(block, cosine))
    return index, keepalive


class RowsFlatIndex:
    """Exact search over rows where they lie: ``faiss.knn``, the kernel ``IndexFlat.search`` runs.

    ``IndexFlat.add`` copies all N rows onto the heap (one more column). This searches a NumPy array
    (a selector's normalised copy) or a one-chunk column in place, and a column of many record batches
    (what ``datasets`` writes) in parts of about 32 MiB gathered from its memory-mapped pages, keeping
    each query's best ``k`` so far; cosine rows are normalised one part at a time. The rows must not
    change while it is used.

    Example:
        >>> values, ids = RowsFlatIndex(as_matrix(unit_rows), faiss.METRIC_INNER_PRODUCT).search(queries, 10)
    """

    def __init__(self, rows, metric: int, *, cosine: bool = False):
        self.rows, self.metric, self.cosine = rows, metric, cosine
        self.ntotal, self.d = rows.shape
        whole = rows.to_numpy() if rows.zero_copy else None
        self._whole = None if whole is None else normalised_block(whole, cosine)

    def _parts(self):
        if self._whole is not None:
            yield 0, self._whole
            return
        # Record batches are small (1,000 rows by default): gather them into parts of about 32 MiB, so each
        # faiss call and merge covers many (one part's copy at a time, never the column's).
        part_rows = max(1, _PART_BYTES // (4 * self.d))
        pending: list[np.ndarray] = []
        first = filled = 0
        for start, block in self.rows.blocks(part_rows):
            first = start if not pending else first
            pending.append(block)
            filled += len(block)
            if filled >= part_rows:
                yield first, self._part(pending)
                pending, filled = [], 0
        if pending:
            yield first, self._part(pending)

    def _part(self, blocks: list[np.ndarray]) -> np.ndarray:
        return normalised_block(np.concatenate(blocks) if len(blocks) > 1 else blocks[0], self.cosine)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        faiss = import_faiss()
        smaller_first = self.metric == faiss.METRIC_L2
        values = ids = None
        for start, part in self._parts():
            v, i = faiss.knn(queries, part, min(k, len(part)), metric=self.metric)
            i += start
            if values is not None:
                v, i = np.concatenate([values, v], axis=1), np.concatenate([ids, i], axis=1)
            if v.shape[1] > k:  # keep each query's best k of the two tables
                top = np.argpartition(v if smaller_first else -v, k - 1, axis=1)[:, :k]
                v, i = np.take_along_axis(v, top, axis=1), np.take_along_axis(i, top, axis=1)
            values, ids = v, i
        order = np.argsort(values if smaller_first else -values, axis=1, kind="stable")
        return np.take_along_axis(values, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _to_gpus(faiss, index, spec):
    ngpu = gpu_count()
    if ngpu == 0:
        raise ValueError("device='cuda' asks for faiss on the GPU, but the installed faiss has no GPU support "
                         "(install faiss-gpu: `pip install hf_prune[gpu]`)")
    # faiss's GPU IVF-PQ needs float16 lookup tables beyond 48 sub-quantizers (d/4 is 96 at d=384).
    float16_tables = spec.kind == "ivfpq" and spec.pq_m > 48
    if ngpu == 1:
        resources = faiss.StandardGpuResources()
        options = faiss.GpuClonerOptions()
        options.useFloat16LookupTables = float16_tables
        gpu_index = faiss.index_cpu_to_gpu(resources, 0, index, options)
    else:
        options = faiss.GpuMultipleClonerOptions()
        options.shard = True  # each GPU holds a slice of the rows; results are merged per query
        options.useFloat16LookupTables = float16_tables
        gpu_index = faiss.index_cpu_to_all_gpus(index, co=options, ngpu=ngpu)
        resources = None
    if spec.nprobe is not None:
        faiss.GpuParameterSpace().set_index_parameter(gpu_index, "nprobe", spec.nprobe)
    return gpu_index, (resources, index)
