"""k-means: faiss's algorithm (seeded, trained on a sample), run as parallel row-block steps on the CPU and
by faiss itself on a GPU; every row is assigned block by block."""

from __future__ import annotations

import numpy as np
import scipy.sparse
import torch

from .checks import check_choice, check_positive_int
from .device import resolve_device
from .faiss_import import faiss_available, import_faiss
from .knn_index import gpu_count
from .matrix import as_matrix
from .threads import step_pool, step_threads

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

    ``backend``: ``"torch"`` runs faiss's k-means algorithm step for step (`_lloyd`: faiss's starting
    rows, update and empty-cluster split). On the CPU each iteration's assignment runs as parallel
    row-block steps of NumPy products, so a competing job on the cores delays one step rather than
    every iteration's barrier; on another ``device`` torch's products run there. ``"faiss"`` calls
    ``faiss.Kmeans`` itself: its OpenMP loop on the CPU, the GPU(s) for ``device="cuda"`` when the
    installed faiss has GPUs. ``"auto"`` takes faiss's own on a GPU that faiss can use and the steps
    everywhere else. Both run the same algorithm from the same starting rows, so they differ only
    where float rounding moves a row between two nearly equidistant centroids.

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
    gpus = gpu_count() if dev.type == "cuda" and faiss_available() else 0
    if backend == "auto":
        backend = "faiss" if gpus else "torch"
    if backend == "faiss":
        faiss = import_faiss()
        km = faiss.Kmeans(
            d, int(n_clusters), niter=iterations, seed=seed, spherical=spherical, gpu=gpus or False,
            # The sample is already the subsample: faiss must not draw another one.
            max_points_per_centroid=max(_POINTS_PER_CENTROID, len(sample) // n_clusters + 1),
            min_points_per_centroid=1, verbose=False,
        )
        km.train(sample, init_centroids=init)
        centroids, settled = km.centroids.astype(np.float32), None
    else:
        centroids, settled = _lloyd(sample, int(n_clusters), iterations, seed, spherical, init, dev)
    if n <= train_size and isinstance(x, np.ndarray):
        if settled is not None and not spherical:
            assign, dist = settled  # the steps' last pass was this very call: not run again
        else:
            assign, dist = _assign(sample, centroids, dev)
    else:
        assign, dist = _assign_blocks(rows, centroids, dev, batch_size)
    return centroids, assign, dist


def _assign_blocks(rows, centroids, device, batch_size):
    assign = np.empty(rows.shape[0], dtype=np.int64)
    dist = np.empty(rows.shape[0], dtype=np.float32)
    with step_pool(step_threads(device, rows.shape[0] * centroids.size)) as run:
        for start, block in rows.blocks(batch_size):
            a, v = _assign(block, centroids, device, run=run)
            assign[start : start + len(block)], dist[start : start + len(block)] = a, v
    return assign, dist


# Row-to-centroid distances computed at once: (rows × K) float32 temporaries of at most 16 MiB each.
_DISTANCE_ELEMENTS = 1 << 22
# Rows per assignment step: 1,024 rows × 1,000 centroids (4 MiB) took 0.92× the time of 4,096 rows per
# step (100,000 × 384 rows, 10 iterations); 256 and 512 rows were no faster.
_STEP_ROWS = 1024


def _assign(x: np.ndarray, centroids: np.ndarray, device: torch.device | None = None, *,
            inner_product: bool = False, run=None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest centroid and its squared distance, or with ``inner_product`` its largest
    inner product, as faiss's flat search computes them: ``(‖x‖² + ‖c‖²) − 2x·c`` clamped at 0, the
    lowest centroid on ties. The row blocks run as `parallel_steps` on the CPU (one thread per step),
    on ``run`` from `step_pool` when the caller holds one."""
    device = torch.device("cpu") if device is None else device
    if run is None:
        with step_pool(step_threads(device, len(x) * centroids.size)) as run:
            return _assign(x, centroids, device, inner_product=inner_product, run=run)
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    # The outputs are allocated once: small per-step arrays kept between the large temporaries fragment
    # the heap so that it grew by about a column's worth over one pass (100k × 384).
    assign = np.empty(len(x), dtype=np.int64)
    value = np.empty(len(x), dtype=np.float32)
    # Fewer rows per step when K is large: 1,024 rows × 100,000 centroids would be 391 MiB per temporary.
    rows = max(1, min(_STEP_ROWS, _DISTANCE_ELEMENTS // max(1, len(centroids))))
    nearest = _nearest_numpy(centroids, inner_product) if device.type == "cpu" else \
        _nearest_torch(centroids, inner_product, device)

    def step(start: int) -> tuple[int, np.ndarray, np.ndarray]:
        return (start, *nearest(np.ascontiguousarray(x[start : start + rows], dtype=np.float32)))

    for start, i, v in run(step, range(0, len(x), rows)):
        assign[start : start + len(i)], value[start : start + len(v)] = i, v
    return assign, value


def _nearest_numpy(centroids: np.ndarray, inner_product: bool):
    """The CPU block kernel: NumPy's products (10 Lloyd iterations of 100,000 × 384 rows into 1,000
    centroids: 5.1–5.3 s alone and 9.7–9.9 s beside a 2-thread job, against 5.7–6.7 and 11.2–11.4 s
    with torch's products in the same steps)."""
    transposed = np.ascontiguousarray(centroids.T)
    c_sq = np.einsum("ij,ij->i", centroids, centroids)

    def nearest(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        products = block @ transposed
        if inner_product:
            best = products.argmax(1)
            return best, products[np.arange(len(best)), best]
        products *= -2  # exact: the sum below is the one rounding, as in faiss
        distances = np.add.outer(np.einsum("ij,ij->i", block, block), c_sq)
        distances += products
        np.maximum(distances, 0, out=distances)
        best = distances.argmin(1)
        return best, distances[np.arange(len(best)), best]

    return nearest


def _nearest_torch(centroids: np.ndarray, inner_product: bool, device: torch.device):
    """The block kernel on a torch device (a GPU without faiss's): the same sums as `_nearest_numpy`."""
    ct = torch.from_numpy(centroids).to(device)
    c_sq = (ct * ct).sum(1)

    def nearest(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xt = torch.from_numpy(block).to(device)
        if inner_product:
            v, i = (xt @ ct.T).max(1)
        else:
            norms = (xt * xt).sum(1, keepdim=True) + c_sq
            v, i = torch.addmm(norms, xt, ct.T, beta=1, alpha=-2, out=norms).clamp_min_(0).min(1)
        return i.cpu().numpy(), v.cpu().numpy()

    return nearest


def _lloyd(x: np.ndarray, k: int, iterations: int, seed: int, spherical: bool,
           init: np.ndarray | None = None, device: torch.device | None = None,
           ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """faiss's k-means (``faiss::Clustering::train`` with one redo), step for step, with the assignment
    of every iteration run as `parallel_steps` over row blocks. Returns the centroids and, when the loop
    stopped at a fixed point, that last pass's ``_assign(x, centroids, device, inner_product=spherical)``
    (else ``None``).

    faiss splits each iteration's search over its OpenMP threads and waits for the slowest at every
    block. 100,000 × 384 rows into 1,000 centroids: ``faiss.Kmeans`` took 10.8–11.5 s alone and
    27.1–27.9 s beside a competing 2-thread job; these steps took 10.8–11.1 s and 19.8–20.8 s, with the
    same assignment (``recipes/benchmarks/knn_under_load.py``).

    What is faiss's here:
    - the starting centroids: the first K rows of faiss's ``rand_perm(N, seed + 1)``, reproduced with
      the same Mersenne Twister;
    - the update: each centroid the float32 mean of its rows, summed in row order, times the
      reciprocal of the count;
    - the split of an empty cluster (``split_clusters``): a cluster drawn with probability
      (size − 1)/(N − K) by faiss's ``RandomGenerator(1234)``, copied and pushed apart by ±1/1024 per
      coordinate, its count halved;
    - cosine centroids renormalised at the start and after every update, and assigned by the largest
      inner product; N = K copies the rows;
    - stopping once nothing moves. faiss stops when its objective stops falling; here an iteration
      that assigns every row as the one before stops the loop. Its centroids are a fixed point, so the
      result is exactly that of all ``iterations``.

    What is not: the products' rounding, which may differ from faiss's BLAS by ulps. A row within
    rounding of two centroids (a duplicate between a cluster and its split copy) may go to the other
    one. Tested against ``faiss.Kmeans``.
    """
    n, d = x.shape
    device = torch.device("cpu") if device is None else device
    if n == k:
        return np.array(x, dtype=np.float32, copy=True), None  # faiss: "same number of points as clusters"
    centroids = init.copy() if init is not None else np.asarray(x[_faiss_permutation_head(n, k, seed + 1)],
                                                                 dtype=np.float32)
    if spherical:
        _renormalise(centroids)
    previous = None
    with step_pool(step_threads(device, x.size * k)) as run:
        for _ in range(iterations):
            assign, value = _assign(x, centroids, device, inner_product=spherical, run=run)
            if previous is not None and np.array_equal(assign, previous):
                # The centroids are those of this assignment: every further iteration repeats it.
                return centroids, (assign, value)
            previous = assign
            centroids, counts = _centroid_means(x, assign, k, run)
            _split_empty_clusters(centroids, counts, n)
            if spherical:
                _renormalise(centroids)
    return centroids, None


def _mersenne_twister(seed: int) -> np.random.MT19937:
    """``std::mt19937(seed)``, the generator behind faiss's ``RandomGenerator``: NumPy's legacy seeding
    is the same ``init_genrand``."""
    generator = np.random.MT19937(0)
    generator._legacy_seeding(int(seed) & 0xFFFFFFFF)
    return generator


def _faiss_permutation_head(n: int, k: int, seed: int) -> np.ndarray:
    """The first ``k`` entries of faiss's ``rand_perm(n, seed)``: a forward Fisher–Yates shuffle drawing
    ``i + mt() % (n − i)`` at step ``i``, so its first ``k`` entries are final after ``k`` steps."""
    draws = _mersenne_twister(seed).random_raw(k)
    moved: dict[int, int] = {}
    head = np.empty(k, dtype=np.int64)
    for i in range(k):
        j = i + int(draws[i]) % (n - i)
        head[i] = moved.get(j, j)
        moved[j] = moved.get(i, i)
    return head


# Centroid ranges per update: enough for two threads to share the sums evenly.
_UPDATE_STEPS = 8


def _centroid_means(x: np.ndarray, assign: np.ndarray, k: int, run=map) -> tuple[np.ndarray, np.ndarray]:
    """Each centroid's float32 mean of its rows (rows summed in row order, as faiss sums them), zero for
    an empty one, and the counts (float32, as faiss keeps them). Ranges of centroids holding about
    equal numbers of rows are summed as ``run`` steps: each centroid's sum is the same either way."""
    counts = np.bincount(assign, minlength=k)
    order = np.argsort(assign, kind="stable")
    bounds = np.concatenate(([0], np.cumsum(counts)))
    members = scipy.sparse.csr_matrix((np.ones(len(x), dtype=np.float32), order, bounds), shape=(k, len(x)))
    inner = np.searchsorted(bounds, np.linspace(0, len(x), _UPDATE_STEPS + 1)[1:-1], side="right") - 1
    cuts = np.unique(np.concatenate(([0], np.clip(inner, 0, k), [k])))
    sums = np.empty((k, x.shape[1]), dtype=np.float32)

    def step(lo_hi: tuple[int, int]) -> tuple[int, np.ndarray]:
        lo, hi = lo_hi
        return lo, np.asarray(members[lo:hi] @ x, dtype=np.float32)  # one sequential float32 sum per centroid

    for lo, part in run(step, zip(cuts[:-1], cuts[1:])):
        sums[lo : lo + len(part)] = part
    counts = counts.astype(np.float32)
    full = counts > 0
    sums[full] *= (np.float32(1) / counts[full])[:, None]
    return sums, counts


# Each empty cluster's copy and its original move apart by this factor per coordinate (faiss's EPS).
_SPLIT_EPS = 1.0 / 1024.0


def _split_empty_clusters(centroids: np.ndarray, counts: np.ndarray, n: int) -> int:
    """faiss's ``split_clusters`` in place: each empty cluster, in order, takes a copy of a cluster drawn
    by walking the clusters cyclically from the first and keeping cluster j when a uniform draw falls
    under (size_j − 1)/(N − K); the copy and the original move apart by ±1/1024 per coordinate
    (alternating signs) and share the count. Returns the number of splits."""
    k, d = centroids.shape
    empty = np.flatnonzero(counts == 0)
    if len(empty) == 0:
        return 0
    draws = _UniformDraws(_mersenne_twister(1234))
    up = np.where(np.arange(d) % 2 == 0, np.float32(1 + _SPLIT_EPS), np.float32(1 - _SPLIT_EPS))
    down = np.where(np.arange(d) % 2 == 0, np.float32(1 - _SPLIT_EPS), np.float32(1 + _SPLIT_EPS))
    scale = np.float64(np.float32(n - k))
    for ci in empty:
        p = ((counts.astype(np.float64) - 1.0) / scale).astype(np.float32)
        cj = draws.first_success(p)
        centroids[ci] = centroids[cj] * up
        centroids[cj] *= down
        counts[ci] = counts[cj] / 2
        counts[cj] -= counts[ci]
    return len(empty)


class _UniformDraws:
    """faiss's ``rand_float`` stream (``mt() / float(mt.max())``), drawn in blocks."""

    def __init__(self, generator: np.random.MT19937):
        self.generator = generator
        self.buffer = np.empty(0, dtype=np.float32)

    def first_success(self, p: np.ndarray) -> int:
        """Walk 0, 1, …, K − 1, 0, … drawing one number per step; return the first j whose draw is < p[j]."""
        k = len(p)
        while True:
            if len(self.buffer) < k:
                raw = self.generator.random_raw(max(k - len(self.buffer), 4096))
                self.buffer = np.concatenate((self.buffer, raw.astype(np.float32) / np.float32(4294967295)))
            hits = np.flatnonzero(self.buffer[:k] < p)
            used = int(hits[0]) + 1 if len(hits) else k
            self.buffer = self.buffer[used:]
            if len(hits):
                return int(hits[0])


def _renormalise(centroids: np.ndarray) -> None:
    """Unit rows in place, as faiss's ``fvec_renorm_L2``: a zero row stays zero."""
    norms = np.sqrt(np.einsum("ij,ij->i", centroids, centroids))
    centroids *= np.divide(1, norms, out=np.ones_like(norms), where=norms > 0)[:, None]
