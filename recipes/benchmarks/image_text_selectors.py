"""Image–text selectors against straightforward references: SemDeDup, Clustering + CLIP, DataComp image-based.

Each of the three clustering selectors is timed end to end through the public API (a
``datasets.Dataset`` in, the selected ``Dataset`` out) and compared, in the same run, with the
procedure as the public research code writes it, timed on the arrays already in memory:

* **SemDeDup** (`hf_prune.select.semdedup_filter`, Abbas et al. 2023). Reference: the paper's released
  code, per cluster: rows ordered by cosine distance to the centroid (farthest first, its
  ``which_to_keep="hard"``), the full dense ``n_c × n_c`` cosine similarity matrix in torch,
  ``fill_diagonal_(0)``, ``triu(diagonal=1)``, the maximum over each column, and a row dropped when
  that maximum exceeds ``1 − ε``. It runs on **the same k-means assignment as ours**
  (`hf_prune.select.cluster_score.fit_kmeans` with the seed ours derives), so the kept rows must be
  identical; the reference's time includes that k-means. For the largest cluster the dense matrix and
  ours (``chunk_size × chunk_size`` blocks, `hf_prune.select.semdedup.max_similarity_to_earlier`) are
  also timed alone, with their peak memory. NeMo Curator's semantic deduplication (the peer a user
  would reach for) is not run: its k-means stage imports ``cudf`` / ``cupy`` (RAPIDS, an NVIDIA GPU).
* **Clustering + CLIP** (`hf_prune.select.cluster_top_k`). Reference: scikit-learn ``KMeans``
  (``n_init=1``, same ``K``, same ``max_iter`` / ``tol``) on the same unit rows, the same proportional
  budget split (`hf_prune.select._core.split_budget`) and a NumPy argsort per cluster. The k-means
  runs differ (spherical k-means++ vs. scikit-learn's Euclidean one), so the rows differ: reported are
  both k-means objectives (the within-cluster sum of squares of each partition, ``Σ ‖x_i − μ_c‖²`` on the
  unit rows), the overlap of the kept rows and the mean score kept. As a check that the difference is
  the clustering only, ours is recomputed from its own assignment by the reference's top-k (same rows).
* **DataComp image-based filter** (`hf_prune.select.image_based_filter`, Gadre et al. 2023).
  Reference: ``faiss.Kmeans(spherical=True)`` on the unit pool (faiss' defaults, 25 iterations), an
  ``IndexFlatIP`` of the centres, the nearest centre of every target row and pool row, and the pool
  rows whose centre a target row hit. Run twice: on its own faiss centres (time, overlap) and on
  **our centres** (the rows must be identical).

For the two selectors whose reference runs its own k-means, our k-means is also timed alone (and its
k-means++ seeding alone), with its Lloyd steps and both partitions' k-means objective, so the time
ratio can be read against what the clustering costs and buys.

Data (seeded): an ``--rows`` × ``--dim`` float32 pool; ``1 − --dup-fraction`` of it drawn from a
``--components``-component Gaussian mixture (centres N(0, I), unit noise), the rest planted near
duplicates (a random base row + 0.01·N(0, I), cosine ≈ 0.99997 to its source at d = 256), rows shuffled;
a uniform random ``score`` column; a ``--target-rows`` target drawn from ``--target-components`` of
the components. Planted-data quality: which rows SemDeDup drops (planted copies vs. unplanted rows),
and the precision / recall of the image-based filter for the rows of the target's components.

Timing: ``time.perf_counter``; every call runs once on a small input first (imports, faiss and BLAS
warm-up), then ``--repeats`` timed runs (median), ours and the reference in turn so that load drift
hits both. Torch, faiss and the BLAS / OpenMP pools (threadpoolctl, so scikit-learn too) use
``--threads`` threads. Peak memory of the largest-cluster
calls: on CUDA ``torch.cuda.max_memory_allocated``; on the CPU the process's resident-set high-water
mark over the call (``VmHWM`` after resetting it through ``/proc/self/clear_refs``) minus the
resident set before it; memory the allocator reuses without growing the process is not seen, so
small matrices may read low (the matrix's size from its shape is printed beside it).

Default (about 5–15 minutes on a 2-core CPU, three timed runs per call; 50,000 × 256, SemDeDup at
``K = ⌈N/1000⌉`` and at ``K = ⌈N/5000⌉`` clusters):
    python recipes/benchmarks/image_text_selectors.py --output image_text_selectors.json

Smoke check (a few seconds):
    python recipes/benchmarks/image_text_selectors.py --quick

A GPU run (similarity blocks, k-means assignments and nearest-centre searches on CUDA):
    python recipes/benchmarks/image_text_selectors.py --device cuda --rows 1000000 --dim 512 --threads 8
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset, DatasetInfo, Features, Sequence, Value, disable_progress_bars
from datasets.table import InMemoryTable

import hf_prune as hp
from hf_prune.ops.checks import seed_int
from hf_prune.ops.faiss_import import import_faiss
from hf_prune.select._core import split_budget
from hf_prune.select.cluster_score import fit_kmeans, unit_rows
from hf_prune.select.image_based import ROWS_PER_CLUSTER as IMAGE_ROWS_PER_CLUSTER
from hf_prune.select.image_based import _kmeans_seed
from hf_prune.select.semdedup import ROWS_PER_CLUSTER as SEMDEDUP_ROWS_PER_CLUSTER
from hf_prune.select.semdedup import max_similarity_to_earlier
from hf_prune.select.typiclust import kmeans_plus_plus
from recipes.trainer.config import library_versions, write_json
from recipes.trainer.metrics import timed

NEMO_CURATOR = ("not run: NeMo Curator's semantic deduplication imports cudf / cupy (RAPIDS) in its k-means "
                "stage, which needs an NVIDIA GPU and the RAPIDS CUDA wheels")


# ----------------------------------------------------------------------------------------------
# Data


class Planted:
    """The planted pool and target as arrays, with the ground truth, and as Datasets."""

    def __init__(self, rows: int, dim: int, components: int, dup_fraction: float, target_rows: int,
                 target_components: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        n_dup = int(round(dup_fraction * rows))
        n_base = rows - n_dup
        if n_base < 1 or n_dup > n_base:
            raise SystemExit(f"--dup-fraction {dup_fraction} leaves too few base rows for {rows} rows")
        centres = rng.normal(size=(components, dim))
        which = rng.integers(components, size=n_base)
        base = centres[which] + rng.normal(size=(n_base, dim))
        src = rng.choice(n_base, n_dup, replace=False)
        dup = base[src] + 0.01 * rng.normal(size=(n_dup, dim))
        perm = rng.permutation(rows)  # row r of the pool is original row perm[r]
        self.emb = np.vstack([base, dup]).astype(np.float32)[perm]
        # The pair id of every planted row (the copy and its source), −1 for the other rows; the copy flag.
        pair = np.full(rows, -1, dtype=np.int64)
        pair[src] = np.arange(n_dup)
        pair[n_base:] = np.arange(n_dup)
        self.pair = pair[perm]
        self.component = np.concatenate([which, which[src]])[perm]
        self.score = rng.random(rows, dtype=np.float32)
        self.target_components = rng.choice(components, target_components, replace=False)
        self.target_emb = (centres[rng.choice(self.target_components, target_rows)]
                           + rng.normal(size=(target_rows, dim))).astype(np.float32)
        self.n_dup = n_dup
        self.pool = dataset({"emb": self.emb, "score": self.score})
        self.target = dataset({"emb": self.target_emb})


def dataset(columns: dict[str, np.ndarray]) -> Dataset:
    """A Dataset from Arrow arrays (fixed-size lists for matrices), not from Python lists."""
    arrays, features = {}, {}
    for name, value in columns.items():
        if value.ndim == 2:
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(value.reshape(-1)), value.shape[1])
            features[name] = Sequence(Value("float32"), length=value.shape[1])
        else:
            arrays[name] = pa.array(value)
            features[name] = Value("float32")
    features = Features(features)
    table = pa.table(arrays).cast(features.arrow_schema)
    return Dataset(InMemoryTable(table), info=DatasetInfo(features=features))


# ----------------------------------------------------------------------------------------------
# References


def paper_cluster_order(x: torch.Tensor, centroid: torch.Tensor) -> np.ndarray:
    """The released code's order inside a cluster: cosine distance to the centroid, farthest first.

    Python's ``sorted(..., reverse=True)`` there is stable, so equal distances keep their row order;
    a stable argsort of the negated distance does the same.
    """
    distance = 1.0 - (x @ centroid).cpu().numpy()
    return np.argsort(-distance, kind="stable")


def paper_semdedup_m(x: torch.Tensor) -> torch.Tensor:
    """The released code's ``M`` for an ordered cluster: the dense similarity matrix, diagonal zeroed,
    ``triu(diagonal=1)``, the maximum over each column (0 for the first row)."""
    sim = x @ x.T
    sim.fill_diagonal_(0.0)
    return torch.max(torch.triu(sim, diagonal=1), dim=0)[0]


def reference_semdedup(x: torch.Tensor, centroids: torch.Tensor, assign: np.ndarray,
                       eps: float) -> np.ndarray:
    """Rows kept by the released code's loop over clusters, on a given k-means assignment."""
    kept = []
    for c in range(len(centroids)):
        members = np.flatnonzero(assign == c)
        if len(members) == 0:
            continue
        idx = torch.from_numpy(members).to(x.device)
        order = members[paper_cluster_order(x[idx], centroids[c])]
        m = paper_semdedup_m(x[torch.from_numpy(order).to(x.device)]).cpu().numpy()
        kept.append(order[m <= 1.0 - eps])
    return np.sort(np.concatenate(kept))


def reference_cluster_top_k(assign: np.ndarray, n_clusters: int, score: np.ndarray, k: int) -> np.ndarray:
    """Proportional budget over the clusters, then the top scores of each cluster by NumPy argsort."""
    budgets = split_budget(np.bincount(assign, minlength=n_clusters), k)
    kept = []
    for c in range(n_clusters):
        members = np.flatnonzero(assign == c)
        kept.append(members[np.argsort(-score[members], kind="stable")[: budgets[c]]])
    return np.sort(np.concatenate(kept))


def sklearn_assign(x: np.ndarray, n_clusters: int, max_iter: int, tol: float, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=n_clusters, n_init=1, max_iter=max_iter, tol=tol, random_state=seed)
    return km.fit(x).labels_


def reference_image_based(pool: np.ndarray, target: np.ndarray, n_clusters: int, seed: int,
                          centroids: np.ndarray | None = None) -> np.ndarray:
    """DataComp's procedure: spherical faiss k-means (unless ``centroids`` are given), an IndexFlatIP
    of the centres, the nearest centre of every target and pool row, and the pool rows in a centre
    that a target row hit."""
    faiss = import_faiss()
    d = pool.shape[1]
    if centroids is None:
        km = faiss.Kmeans(d, n_clusters, spherical=True, seed=seed, verbose=False)
        km.train(pool)
        centroids = km.centroids
    index = faiss.IndexFlatIP(d)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, pool_centre = index.search(pool, 1)
    _, target_centre = index.search(target, 1)
    return np.flatnonzero(np.isin(pool_centre[:, 0], np.unique(target_centre[:, 0])))


def faiss_assign(pool: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """The pool's clusters under the reference's faiss k-means (nearest centre by inner product)."""
    faiss = import_faiss()
    km = faiss.Kmeans(pool.shape[1], n_clusters, spherical=True, seed=seed, verbose=False)
    km.train(pool)
    _, assign = km.index.search(pool, 1)
    return assign[:, 0].astype(np.int64)


def within_cluster_ss(x: np.ndarray, assign: np.ndarray) -> float:
    """The k-means objective of a partition: ``Σ_i ‖x_i − μ_{c(i)}‖²`` with ``μ_c`` the cluster means."""
    x = x.astype(np.float64)
    k = int(assign.max()) + 1
    counts = np.bincount(assign, minlength=k).astype(np.float64)
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, assign, x)
    # Σ‖x‖² − Σ_c ‖sum_c‖² / n_c
    nonempty = counts > 0
    return float((x * x).sum() - ((sums[nonempty] ** 2).sum(1) / counts[nonempty]).sum())


# ----------------------------------------------------------------------------------------------
# Measuring


def peak_memory(fn: Callable[[], Any], device: torch.device) -> tuple[int | None, Any]:
    """Bytes of peak memory ``fn`` adds (see the module docstring), or ``None`` where it cannot be read."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, out
    try:
        before = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current resident set
    except OSError:
        return None, fn()
    out = fn()
    return (_status_kib("VmHWM") - before) * 1024, out


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


@contextlib.contextmanager
def thread_limit(threads: int):
    """Torch, faiss and the BLAS / OpenMP pools (threadpoolctl) at ``threads`` threads; restored after."""
    faiss = import_faiss()
    torch_before, faiss_before = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # BLAS then follows OMP_NUM_THREADS
        pools = contextlib.nullcontext()
    else:
        pools = threadpool_limits(threads)
    try:
        with pools:
            yield
    finally:
        torch.set_num_threads(torch_before)
        faiss.omp_set_num_threads(faiss_before)


def timed_alternating(fns: list[Callable[[], Any]], repeats: int) -> list[tuple[float, Any]]:
    """`timed` for several calls run in turn (a, b, c, a, b, c, ...): median seconds and last result of each.

    On a shared machine the load drifts within a minute; alternating lets the drift hit every side alike.
    """
    times: list[list[float]] = [[] for _ in fns]
    results: list[Any] = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            seconds, results[i] = timed(fn)
            times[i].append(seconds)
    return [(statistics.median(t), r) for t, r in zip(times, results)]


def sorted_ids(ds: Dataset) -> np.ndarray:
    return np.sort(np.asarray(ds["row_id"], dtype=np.int64))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return len(np.intersect1d(a, b)) / max(1, len(np.union1d(a, b)))


def versions() -> dict:
    out = {**library_versions(), "platform": platform.platform(),
           "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads()}
    for name in ("faiss", "sklearn"):
        try:
            out[name] = getattr(__import__(name), "__version__", "?")
        except ImportError:
            out[name] = "not installed"
    try:
        out["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        out["load_average"] = None
    return out


# ----------------------------------------------------------------------------------------------
# The three comparisons


def bench_semdedup(data: Planted, args, dev: torch.device, log) -> list[dict]:
    unit = unit_rows(data.emb, "emb")
    xt = torch.from_numpy(unit).to(dev)
    return [semdedup_at(data, unit, xt, n_clusters, args, dev, log) for n_clusters in args.semdedup_clusters]


def semdedup_at(data: Planted, unit: np.ndarray, xt: torch.Tensor, n_clusters: int, args, dev: torch.device,
                log) -> dict:
    def ours():
        return hp.select.semdedup_filter(data.pool, eps=args.eps, n_clusters=n_clusters, seed=args.seed,
                                          chunk_size=args.chunk_size, device=dev)

    # The k-means ours runs: semdedup_filter's group 0 gets default_rng([seed, 0]), one draw seeds k-means.
    km_seed = int(np.random.default_rng([seed_int(args.seed), 0]).integers(2**31 - 1))

    def kmeans():
        centroids, assign, _ = fit_kmeans(unit, n_clusters, max_iter=100, tol=1e-4, seed=km_seed,
                                          spherical=True, device=dev)
        centroids = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        return torch.from_numpy(centroids.astype(np.float32)).to(dev), assign

    log(f"[semdedup K={n_clusters}] ours and the reference, in turn ...")
    centroids, assign = kmeans()

    def dense():
        return reference_semdedup(xt, centroids, assign, args.eps)

    (ours_s, out), (kmeans_s, _), (dense_s, ref_kept) = timed_alternating([ours, kmeans, dense], args.repeats)
    kept = sorted_ids(out)
    same = np.array_equal(kept, ref_kept)
    dropped = np.setdiff1d(np.arange(len(unit)), kept)
    dropped_pairs = data.pair[dropped]
    planted = dropped_pairs >= 0

    # The largest cluster alone: the released code's dense matrix vs ours, blocked, on the same order.
    sizes = np.bincount(assign, minlength=n_clusters)
    big = int(np.argmax(sizes))
    members = np.flatnonzero(assign == big)
    order = members[paper_cluster_order(xt[torch.from_numpy(members).to(dev)], centroids[big])]
    block = xt[torch.from_numpy(order).to(dev)]
    peak_ref, m_ref = peak_memory(lambda: paper_semdedup_m(block), dev)
    peak_ours, m_ours = peak_memory(lambda: max_similarity_to_earlier(block, chunk_size=args.chunk_size), dev)
    (big_ref_s, _), (big_ours_s, _) = timed_alternating(
        [lambda: paper_semdedup_m(block).cpu(),
         lambda: max_similarity_to_earlier(block, chunk_size=args.chunk_size)], args.repeats)
    m_gap = float(np.abs(np.maximum(m_ours, 0.0) - m_ref.double().cpu().numpy()).max())
    row = {
        "selector": "semdedup_filter", "call": f"semdedup_filter(eps={args.eps}, n_clusters={n_clusters})",
        "N": len(unit), "d": unit.shape[1], "n_clusters": n_clusters, "kept": len(kept),
        "ours_s": ours_s, "reference_s": kmeans_s + dense_s, "reference_kmeans_s": kmeans_s,
        "reference_dedup_s": dense_s, "ratio": (kmeans_s + dense_s) / ours_s, "same_rows": same,
        "reference_kept": len(ref_kept), "dropped": len(dropped), "dropped_planted": int(planted.sum()),
        "dropped_distinct_pairs": len(np.unique(dropped_pairs[planted])),
        "dropped_unplanted": int((~planted).sum()),
        "planted_copies": data.n_dup,
        "largest_cluster": int(sizes[big]), "largest_matrix_bytes": int(sizes[big]) ** 2 * 4,
        "largest_reference_s": big_ref_s, "largest_ours_s": big_ours_s,
        "largest_reference_peak_bytes": peak_ref, "largest_ours_peak_bytes": peak_ours,
        "largest_max_abs_m_difference": m_gap, "chunk_size": args.chunk_size,
    }
    log(f"[semdedup K={n_clusters}] ours {ours_s:.2f}s, reference {kmeans_s + dense_s:.2f}s, "
        f"kept {len(kept)}, same rows {same}; dropped {len(dropped)} (planted {row['dropped_planted']}, "
        f"unplanted {row['dropped_unplanted']}); largest cluster {sizes[big]}: dense {big_ref_s:.3f}s / "
        f"ours {big_ours_s:.3f}s")
    return row


def our_kmeans(unit: np.ndarray, n_clusters: int, seed: int, dev: torch.device) -> dict:
    """Our k-means as the selectors run it, timed whole, and its k-means++ seeding timed alone."""
    total_s, (centroids, assign, steps) = timed(
        lambda: fit_kmeans(unit, n_clusters, max_iter=100, tol=1e-4, seed=seed, spherical=True, device=dev))
    seeding_s, _ = timed(lambda: kmeans_plus_plus(unit, n_clusters, np.random.default_rng(seed)))
    return {"centroids": centroids, "assign": assign, "steps": steps, "seconds": total_s,
            "seeding_seconds": seeding_s}


def bench_cluster_top_k(data: Planted, args, dev: torch.device, log) -> dict:
    unit = unit_rows(data.emb, "emb")
    n = len(unit)
    n_clusters = math.ceil(math.sqrt(n))
    k = int(round(args.fraction * n))
    score = data.score.astype(np.float64)
    log(f"[cluster_top_k K={n_clusters}] ours and the reference (scikit-learn KMeans), in turn ...")
    (ours_s, out), (ref_s, ref_kept) = timed_alternating([
        lambda: hp.select.cluster_top_k(data.pool, size=k, score_column="score", seed=args.seed, device=dev),
        lambda: reference_cluster_top_k(sklearn_assign(unit, n_clusters, 100, 1e-4, args.seed), n_clusters,
                                        score, k),
    ], args.repeats)
    kept = sorted_ids(out)
    km_seed = int(np.random.default_rng([seed_int(args.seed), 0]).integers(2**31 - 1))
    km = our_kmeans(unit, n_clusters, km_seed, dev)
    ours_assign = km["assign"]
    reproduced = np.array_equal(reference_cluster_top_k(ours_assign, n_clusters, score, k), kept)
    ref_assign = sklearn_assign(unit, n_clusters, 100, 1e-4, args.seed)
    row = {
        "selector": "cluster_top_k", "call": f"cluster_top_k(size={k}, score_column='score')", "N": n,
        "d": unit.shape[1], "n_clusters": n_clusters, "kept": len(kept), "ours_s": ours_s,
        "reference_s": ref_s, "ratio": ref_s / ours_s, "overlap": jaccard(kept, ref_kept),
        "reference_kept": len(ref_kept), "ours_inertia": within_cluster_ss(unit, ours_assign),
        "reference_inertia": within_cluster_ss(unit, ref_assign),
        "ours_mean_score": float(score[kept].mean()), "reference_mean_score": float(score[ref_kept].mean()),
        "ours_reproduced_from_its_assignment": reproduced, "ours_kmeans_s": km["seconds"],
        "ours_kmeans_seeding_s": km["seeding_seconds"], "ours_kmeans_steps": km["steps"],
    }
    log(f"[cluster_top_k] ours {ours_s:.2f}s, reference {ref_s:.2f}s, overlap {row['overlap']:.3f}, inertia "
        f"{row['ours_inertia']:.1f} vs {row['reference_inertia']:.1f}, reproduced {reproduced}")
    return row


def bench_image_based(data: Planted, args, dev: torch.device, log) -> dict:
    unit = unit_rows(data.emb, "emb")
    goal = unit_rows(data.target_emb, "emb")
    n = len(unit)
    n_clusters = math.ceil(n / IMAGE_ROWS_PER_CLUSTER)
    km_seed = _kmeans_seed(seed_int(args.seed))
    log(f"[image_based K={n_clusters}] ours and the reference (faiss), in turn ...")
    (ours_s, out), (ref_s, ref_kept) = timed_alternating([
        lambda: hp.select.image_based_filter(data.pool, target=data.target, seed=args.seed, device=dev),
        lambda: reference_image_based(unit, goal, n_clusters, km_seed),
    ], args.repeats)
    kept = sorted_ids(out)
    km = our_kmeans(unit, n_clusters, km_seed, dev)
    centroids = km["centroids"]
    centroids = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    ref_ours_centres_s, on_ours = timed(
        lambda: reference_image_based(unit, goal, n_clusters, km_seed, centroids), args.repeats)
    wanted = np.isin(data.component, data.target_components)

    def quality(ids):
        hit = int(wanted[ids].sum())
        return hit / max(1, len(ids)), hit / max(1, int(wanted.sum()))

    precision, recall = quality(kept)
    ref_precision, ref_recall = quality(ref_kept)
    row = {
        "selector": "image_based_filter", "call": "image_based_filter(target=…)", "N": n, "d": unit.shape[1],
        "n_clusters": n_clusters, "target_rows": len(goal), "kept": len(kept), "ours_s": ours_s,
        "reference_s": ref_s,
        "ratio": ref_s / ours_s, "overlap": jaccard(kept, ref_kept), "reference_kept": len(ref_kept),
        "same_rows_on_our_centres": bool(np.array_equal(kept, on_ours)),
        "rows_differing_on_our_centres": int(len(np.setxor1d(kept, on_ours))),
        "reference_on_our_centres_s": ref_ours_centres_s,
        "precision": precision, "recall": recall, "reference_precision": ref_precision,
        "reference_recall": ref_recall,
        "target_component_rows": int(wanted.sum()), "ours_kmeans_s": km["seconds"],
        "ours_kmeans_seeding_s": km["seeding_seconds"], "ours_kmeans_steps": km["steps"],
        "ours_inertia": within_cluster_ss(unit, km["assign"]),
        "reference_inertia": within_cluster_ss(unit, faiss_assign(unit, n_clusters, km_seed)),
    }
    log(f"[image_based] ours {ours_s:.2f}s, reference {ref_s:.2f}s, overlap {row['overlap']:.3f}, "
        f"same rows on our centres {row['same_rows_on_our_centres']}, precision {precision:.3f} "
        f"recall {recall:.3f}")
    return row


# ----------------------------------------------------------------------------------------------
# Output


def _s(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _mib(x: int | None) -> str:
    return "n/a" if x is None else f"{x / 2**20:.1f}"


def _same(flag: bool, differing: int | None = None) -> str:
    if flag:
        return "same rows"
    return "ROWS DIFFER" if differing is None else f"{differing} rows differ"


def markdown(env: dict, args, semdedup_rows: list[dict], ctk: dict, img: dict) -> str:
    lines = [
        f"Python {env['python']}, torch {env['torch']}, datasets {env['datasets']}, faiss {env['faiss']}, "
        f"scikit-learn {env['sklearn']}, hf_prune {env['hf_prune']}; {args.threads} thread(s), "
        f"device {args.device}; load average at the start {env['load_average']}.",
        "",
        "| selector | N × d | K | kept | ours (s) | reference (s) | ref/ours | agreement |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in semdedup_rows:
        lines.append(
            f"| `{r['call']}` vs released SemDeDup code (dense per cluster, same k-means) "
            f"| {r['N']:,} × {r['d']} | {r['n_clusters']} | {r['kept']:,} | {_s(r['ours_s'])} "
            f"| {_s(r['reference_s'])} (k-means {_s(r['reference_kmeans_s'])}) | {r['ratio']:.2f} "
            f"| {_same(r['same_rows'])} |")
    c = ctk
    lines.append(
        f"| `{c['call']}` vs scikit-learn KMeans + argsort | {c['N']:,} × {c['d']} | {c['n_clusters']} "
        f"| {c['kept']:,} | {_s(c['ours_s'])} | {_s(c['reference_s'])} | {c['ratio']:.2f} "
        f"| overlap {c['overlap']:.3f}; inertia {c['ours_inertia']:,.1f} vs {c['reference_inertia']:,.1f}; "
        f"mean score kept {c['ours_mean_score']:.4f} vs {c['reference_mean_score']:.4f} |")
    lines.append(
        f"| `{img['call']}` vs faiss.Kmeans + IndexFlatIP | {img['N']:,} × {img['d']} | {img['n_clusters']} "
        f"| {img['kept']:,} | {_s(img['ours_s'])} | {_s(img['reference_s'])} | {img['ratio']:.2f} "
        f"| overlap {img['overlap']:.3f} ({img['reference_kept']:,} kept); on our centres "
        f"{_same(img['same_rows_on_our_centres'], img['rows_differing_on_our_centres'])} |")
    lines += [
        "",
        "SemDeDup, the largest cluster alone (the dense matrix of the released code vs ours in "
        f"{args.chunk_size} × {args.chunk_size} blocks, same rows and order):",
        "",
        "| K | largest cluster | matrix (MiB, from its shape) | dense (s) | ours (s) | dense peak (MiB) "
        "| ours peak (MiB) | max abs ΔM |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in semdedup_rows:
        lines.append(
            f"| {r['n_clusters']} | {r['largest_cluster']:,} | {r['largest_matrix_bytes'] / 2**20:.1f} "
            f"| {_s(r['largest_reference_s'])} | {_s(r['largest_ours_s'])} "
            f"| {_mib(r['largest_reference_peak_bytes'])} | {_mib(r['largest_ours_peak_bytes'])} "
            f"| {r['largest_max_abs_m_difference']:.2g} |")
    lines += ["", "Planted data:"]
    for r in semdedup_rows:
        lines.append(
            f"- `{r['call']}` dropped {r['dropped']:,} rows: {r['dropped_planted']:,} planted (from "
            f"{r['dropped_distinct_pairs']:,} distinct pairs of the {r['planted_copies']:,} planted), "
            f"{r['dropped_unplanted']:,} unplanted.")
    lines.append(
        f"- `image_based_filter` kept {img['kept']:,} rows: precision {img['precision']:.3f}, recall "
        f"{img['recall']:.3f} for the {img['target_component_rows']:,} rows of the target's components "
        f"(reference on its own centres: {img['reference_precision']:.3f} / {img['reference_recall']:.3f}).")
    lines.append("- Clustering + CLIP: ours recomputed from its own k-means assignment by the reference's "
                 f"top-k: {_same(ctk['ours_reproduced_from_its_assignment'])}.")
    for name, r in (("cluster_top_k", ctk), ("image_based_filter", img)):
        lines.append(
            f"- `{name}`: our k-means (K={r['n_clusters']}) took {_s(r['ours_kmeans_s'])} s, "
            f"{r['ours_kmeans_steps']} Lloyd steps, of which k-means++ seeding "
            f"{_s(r['ours_kmeans_seeding_s'])} s; "
            f"k-means objective ours {r['ours_inertia']:,.1f} vs reference {r['reference_inertia']:,.1f}.")
    lines.append(f"- NeMo Curator: {NEMO_CURATOR}.")
    return "\n".join(lines)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=None, help="pool rows N (default 50000; --quick: 2000)")
    p.add_argument("--dim", type=int, default=None, help="embedding width d (default 256; --quick: 32)")
    p.add_argument("--components", type=int, default=None,
                   help="mixture components (default 200; --quick: 20)")
    p.add_argument("--dup-fraction", type=float, default=0.1,
                   help="share of planted near duplicates (default 0.1)")
    p.add_argument("--target-rows", type=int, default=None, help="target rows (default 2000; --quick: 200)")
    p.add_argument("--target-components", type=int, default=None,
                   help="components the target is drawn from (default 20; --quick: 4)")
    p.add_argument("--semdedup-clusters", type=int, nargs="+", default=None,
                   help="SemDeDup k-means clusters, one comparison each (default ⌈N/1000⌉ and ⌈N/5000⌉)")
    p.add_argument("--eps", type=float, default=0.01, help="SemDeDup ε (default 0.01)")
    p.add_argument("--chunk-size", type=int, default=4096,
                   help="SemDeDup similarity block rows (default 4096)")
    p.add_argument("--fraction", type=float, default=0.3,
                   help="Clustering + CLIP kept fraction (default 0.3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=2, help="torch / faiss / BLAS threads (default 2)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per side, median reported (default 3; --quick: 1)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, a smoke check in a few seconds")
    p.add_argument("--output", default=None, help="write all measurements as JSON here")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    quick = {"rows": 2_000, "dim": 32, "components": 20, "target_rows": 200, "target_components": 4,
             "repeats": 1}
    # Three repeats: on a shared machine single timings of the same call varied by up to 3x.
    full = {"rows": 50_000, "dim": 256, "components": 200, "target_rows": 2_000, "target_components": 20,
            "repeats": 3}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.semdedup_clusters is None:
        default = {math.ceil(args.rows / SEMDEDUP_ROWS_PER_CLUSTER), math.ceil(args.rows / 5000)}
        args.semdedup_clusters = sorted(default, reverse=True)
    with thread_limit(args.threads):
        return _run(args)


def _run(args) -> dict:
    disable_progress_bars()
    dev = torch.device(args.device)
    env = versions()

    def log(msg):
        print(msg, flush=True)

    log(f"environment: {env}")
    log(f"settings: {vars(args)}")
    start = time.perf_counter()
    data = Planted(args.rows, args.dim, args.components, args.dup_fraction, args.target_rows,
                   args.target_components, seed=args.seed)
    # Warm-up on a small pool: imports, faiss, BLAS and the first allocations.
    small = Planted(300, args.dim, 5, args.dup_fraction, 50, 2, seed=args.seed + 1)
    hp.select.semdedup_filter(small.pool, eps=args.eps, n_clusters=2, seed=0, device=dev)
    hp.select.cluster_top_k(small.pool, fraction=0.3, score_column="score", seed=0, device=dev)
    hp.select.image_based_filter(small.pool, target=small.target, n_clusters=3, seed=0, device=dev)
    sklearn_assign(unit_rows(small.emb, "emb"), 3, 10, 1e-4, 0)
    reference_image_based(unit_rows(small.emb, "emb"), unit_rows(small.target_emb, "emb"), 3, 0)

    semdedup_rows = bench_semdedup(data, args, dev, log)
    ctk = bench_cluster_top_k(data, args, dev, log)
    img = bench_image_based(data, args, dev, log)
    total = time.perf_counter() - start
    table = markdown(env, args, semdedup_rows, ctk, img)
    log(f"\ntotal wall time {total / 60:.1f} min\n")
    print(table)
    result = {"environment": env, "settings": vars(args), "total_seconds": total, "semdedup": semdedup_rows,
              "cluster_top_k": ctk, "image_based": img, "nemo_curator": NEMO_CURATOR, "table": table}
    if args.output:
        write_json(args.output, result)
        log(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
