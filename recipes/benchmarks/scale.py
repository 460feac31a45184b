"""Scale: the embedding selectors on a memory-mapped N×d column, each run alone in a fresh process.

What is measured, per (selector, N, kept fraction):

* wall time of the public call (``hp.select.<name>(ds, size=kept, embedding_column="emb", ...)``) on a
  Dataset opened with ``datasets.load_from_disk`` (memory-mapped Arrow, never loaded into RAM first);
* peak memory split the way Linux accounts it (``/proc/self/status``, sampled every 10 ms by a thread
  while the call runs, and ``VmHWM`` reset just before the call so it is the call's own high-water
  mark): ``RssAnon`` (+ ``RssShmem``) is heap (copies the selector makes), ``RssFile`` the file-backed
  pages of the mapped column. The report gives the heap peak above the process's level just before the
  call (the larger of the sampled peak and ``VmHWM`` minus the file-backed peak, so a temporary shorter
  than a sample is not missed), and that peak over the column's size (1.0 = one full copy). Memory the
  allocator kept from the warm-up call (a 300-row selection run first) is reused without showing, so
  the figure is a lower bound, exact for any allocation larger than that. Worker
  processes a selector starts (InfoMax's pool) are not in these numbers: their largest RSS is stored as
  ``children_max_rss_bytes``;
* a ratio to the run's floor, measured in the same run and the same way: one streamed pass over the
  column (read + one matvec per block) for the greedy selectors (time per pick over one pass) and the
  streaming ones (time over one pass); one k-NN graph of all N rows, k = 10 (faiss exact, or IVF-Flat
  with the library's defaults for an approximate ``knn_index``) for the k-NN selectors; one k-means (``hf_prune.ops.kmeans``, faiss,
  √N clusters) for the clustering ones;
* recall@k of the IVF floor against exact search (1,000 sampled queries) and, where a selector reports
  one in its provenance step, the selector's own recall.

Each run has a time limit (``--run-timeout``); a run that passes it is killed with its process group and
recorded as "did not finish in X s". A run that raises is recorded with its error (and the benchmark
exits non-zero), never dropped. Nothing is extrapolated: the greedy selectors (Gram–Schmidt, k-center,
herding, GM matching) get a kept size that fits (``--greedy-row-picks``: at most that many N×picks,
500 picks at 100k, 50 at 1M), and the report says so beside the run; their ratio (passes per pick) does
not depend on the number of picks.

k-NN selectors run once per ``knn_index`` value the selector accepts, read at run time from its
signature and its own validation error (so a new index type appears here when the selector takes it).

Data (seeded, written once per (N, d, dtype, seed) under ``--workdir`` in 65,536-row chunks, never whole
in RAM): ``emb`` 100 classes × 10 sub-clusters with a random per-row scale, ``label`` (100 classes),
``score`` uniform in [0, 1). ``--dtype float16`` stores the column in half precision. Selections are over
the whole set unless ``--per-class`` (then ``label_column="label"``).

``--load`` repeats each selector run twice more, back to back: alone, then with a competing CPU job (a
separate process multiplying matrices on BLAS with as many threads as there are cores, started and
killed around the run), and reports the slowdown of that pair.

Default (sized for about 1.5 hours on 2 cores: 76 runs and 8 floors of at most ``--run-timeout`` = 150 s each, most
far shorter; the 1M floors and k-NN runs are the ones expected to reach the limit):
    python recipes/benchmarks/scale.py
Small check (a few minutes):
    python recipes/benchmarks/scale.py --sizes 20000 --output-dir runs/scale_20k
A subset, with the competing job:
    python recipes/benchmarks/scale.py --sizes 100000 --selectors herding,d2_pruning --fractions 0.01 --load
On a GPU machine (N = 1M and 10M × 768, ``device="cuda"``; fails clearly without a GPU). The InfoMax
paper selects 1M ImageNet rows in 16.1 min on 8 V100s (1.7 min of solve): the line to beat.
    python recipes/benchmarks/scale.py --gpu --output-dir runs/scale_gpu

Ray (``--ray``, issue 17; runs only this section, about 15 min on 2 cores): the same 1M × 384 column,
each run in a fresh process: plain (one process, no Ray, held to 1 thread — the CPUs one Ray worker
gets, so the overhead is compared at equal resources — and to 2 threads, a user's default) against a
local Ray cluster started in that process (``num_cpus=2``, ``cpus_per_task=1``) with 1 and 2 workers, for

* InfoMax with ``partitions=100`` (10% kept, k = 5, exact search per 10,000-row part), the 1M row above;
  InfoMax's local process pool (``workers=2``) is run beside it for reference;
* one embedding-like map: ``ProjectionEmbedder`` (a seeded 384 → 384 → 384 MLP) over the column with
  ``Embedder.map`` in map batches of 10,000 rows (on Ray: actors writing Arrow shards, and once on one
  worker with ``shard_format="parquet"`` for the cost of parquet shards and their join). The warm-up map
  (400 rows) starts the block's actors; the timed map reuses them, as a block's second map does, and
  the warm-up's own stage times are kept beside it (``warmup_executor``: the cold start). For reference,
  without Ray: two plain one-thread processes started together, each mapping its half (what two
  processes can get on this machine at all; the warm-up and imports outside the time).

Each run records its wall time after a warm-up call, a hash of what it returned (the kept ``row_id`` s or
the new column's bytes: each Ray run must equal the plain one), the driver's peak heap (as above), the
peak RSS of each worker process (``ray::`` workers, or the pool's) and of Ray's own processes (the raylet
holds the object store), sampled every 0.25 s with psutil, the cluster's start (``ray_start_s``, outside
the wall time: a cluster is started once for many jobs) and ``os.getloadavg()`` before and after.
    python -m recipes.benchmarks.scale --ray --output-dir runs/scale_ray
``--gpu-cluster`` prints the commands for a GPU Ray cluster (DataComp small; not run here).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recipes.benchmarks.results_store import load_results, run_slug, save_results
from recipes.benchmarks.selectors_speed import fmt_ratio, fmt_seconds, versions

REPO = Path(__file__).resolve().parents[2]
CHUNK_ROWS = 1 << 16
CLASSES, SUBCLUSTERS = 100, 10
KNN_K = 10  # k of the k-NN floors (D²-Pruning's default)
RECALL_QUERIES = 1000
GPU_SIZES, GPU_DIM = [1_000_000, 10_000_000], 768
INFOMAX_PAPER = "InfoMax paper: 1M ImageNet rows in 16.1 min on 8 V100s (1.7 min solve)"
LOAD_SCRIPT = (
    "import numpy as np\n"
    "a = np.random.default_rng(0).standard_normal((1024, 1024))\n"
    "while True:\n"
    "    a = a @ a\n"
    "    a /= np.abs(a).max()\n"
)


# ----------------------------------------------------------------------------------------------
# Cases


@dataclass(frozen=True)
class Case:
    """One benchmarked selector: its floor kind and the extra keyword arguments of its call."""

    selector: str
    kind: str  # "pass" | "greedy" | "knn" | "kmeans": which floor its ratio is taken to
    kwargs: Callable[[dict], dict] = field(default=lambda ctx: {})
    knn: bool | tuple[str, ...] = False  # run once per accepted `knn_index` (or per listed one)
    note: str = ""


def _infomax_kwargs(ctx: dict) -> dict:
    kw = {"score_column": "score", "k": 5, "partitions": max(1, ctx["n"] // 10_000)}
    if "workers" in ctx["parameters"]:
        kw["workers"] = ctx["workers"]
    return kw


CASES = {
    c.selector: c
    for c in [
        Case("random", "pass"),
        Case("top_k", "pass", lambda ctx: {"score_column": "score"}, note="score rank"),
        Case("norm_sampling", "pass", lambda ctx: {"p": 2}),
        Case("moderate", "pass", note="distance to the centre"),
        Case("hard", "pass", note="SSP-style: farthest from the centre (no k-means prototypes)"),
        Case("easy", "pass"),
        Case("gram_schmidt", "greedy"),
        Case("k_center_greedy", "greedy"),
        Case("herding", "greedy"),
        Case("gm_matching", "greedy"),
        Case("log_determinant", "greedy"),
        Case("disparity_min", "greedy"),
        Case("disparity_sum", "greedy"),
        Case("d2_pruning", "knn", lambda ctx: {"score_column": "score", "k": KNN_K}, knn=True),
        Case("infomax", "knn", _infomax_kwargs, knn=True, note="partitions = N / 10,000"),
        Case("facility_location", "knn", knn=True),
        Case("graph_cut", "knn", knn=True),
        # Its δ-graph is exact or IVF-Flat (IVF-PQ and HNSW give the IVF-Flat graph too): three variants.
        Case("probcover", "knn", lambda ctx: {"delta": ctx["delta"]}, knn=("auto", "flat", "ivf"),
             note="δ: balls of about 20 rows"),
        Case("typiclust", "kmeans"),
        Case("semdedup", "kmeans"),
        Case("cluster_top_k", "kmeans", lambda ctx: {"score_column": "score"}),
    ]
}
DEFAULT_SELECTORS = [
    "random", "top_k", "norm_sampling", "moderate", "hard", "gram_schmidt", "k_center_greedy", "herding",
    "gm_matching", "d2_pruning", "infomax", "probcover", "typiclust", "semdedup",
]
FLOORS = ["pass", "knn_flat", "knn_ivf", "kmeans"]
EXACT_INDEXES = ("flat", "exact")


def knn_choices(selector: str) -> list[str]:
    """The ``knn_index`` values ``selector`` accepts, read from its default and its validation error.

    The selector is called on a 16-row Dataset with an invalid ``knn_index``; the quoted names in the
    `ValueError` it raises are the choices (its default first). A selector without ``knn_index`` gives ``[]``.

    Example:
        >>> knn_choices("d2_pruning")
        ['flat', 'ivf']
    """
    from datasets import Dataset

    import hf_prune as hp

    fn = getattr(hp.select, selector)
    params = inspect.signature(fn).parameters
    if "knn_index" not in params:
        return []
    default = params["knn_index"].default
    rng = np.random.default_rng(0)
    tiny = Dataset.from_dict({"emb": rng.standard_normal((16, 4)).astype(np.float32).tolist(),
                              "score": rng.random(16).tolist()})
    probe = "no-such-index"
    extra = CASES[selector].kwargs({"n": 16, "parameters": params, "workers": 1, "delta": 0.5})
    extra.pop("k", None)
    try:
        fn(tiny, size=2, embedding_column="emb", knn_index=probe, **({"k": 2} if "k" in params else {}), **extra)
    except ValueError as error:
        message = str(error)
        if "knn_index" in message:
            names = [n for n in re.findall(r"'([^']+)'", message) if n != probe]
            choices = [default] + [n for n in dict.fromkeys(names) if n != default]
            # "exact" is a documented synonym of "flat" (hf_prune.ops.knn_index): run exact search once.
            return [c for c in choices if not (c == "exact" and "flat" in choices)]
    return [default]


# ----------------------------------------------------------------------------------------------
# Data


def data_path(workdir: Path, n: int, dim: int, dtype: str, seed: int) -> Path:
    return Path(workdir) / f"N{n}_d{dim}_{dtype}_seed{seed}"


def ensure_data(workdir: Path, n: int, dim: int, dtype: str, seed: int, log=print) -> Path:
    """The seeded dataset at ``data_path(...)``, written there once in chunks (never whole in RAM).

    Example:
        >>> path = ensure_data(Path("runs/scale/data"), 20_000, 384, "float32", 0)
    """
    import pyarrow as pa
    from datasets import Dataset, Features, Sequence, Value
    from datasets.arrow_writer import ArrowWriter

    if dtype not in ("float32", "float16"):
        raise ValueError(f"--dtype must be 'float32' or 'float16', got {dtype!r}")
    final = data_path(workdir, n, dim, dtype, seed)
    if (final / "state.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    centre_rng = np.random.default_rng([seed, 0])
    centres = centre_rng.standard_normal((CLASSES, dim)).astype(np.float32)
    subs = 0.7 * centre_rng.standard_normal((CLASSES, SUBCLUSTERS, dim)).astype(np.float32)
    features = Features({"emb": Sequence(Value(dtype), length=dim), "label": Value("int64"),
                         "score": Value("float32")})
    with tempfile.TemporaryDirectory(dir=final.parent) as tmp:
        raw = Path(tmp) / "raw.arrow"
        with ArrowWriter(features=features, path=str(raw)) as writer:
            for chunk, start in enumerate(range(0, n, CHUNK_ROWS)):
                rows = min(CHUNK_ROWS, n - start)
                rng = np.random.default_rng([seed, 1, chunk])
                label = rng.integers(0, CLASSES, rows)
                sub = rng.integers(0, SUBCLUSTERS, rows)
                emb = centres[label] + subs[label, sub] + 0.6 * rng.standard_normal((rows, dim), dtype=np.float32)
                emb *= rng.lognormal(0.0, 0.25, (rows, 1)).astype(np.float32)
                values = pa.array(emb.astype(dtype).reshape(-1))
                table = pa.table({"emb": pa.FixedSizeListArray.from_arrays(values, dim),
                                  "label": pa.array(label.astype(np.int64)),
                                  "score": pa.array(rng.random(rows, dtype=np.float32))})
                writer.write_table(table.cast(features.arrow_schema))
            writer.finalize()
        staged = Path(tmp) / "dataset"
        Dataset.from_file(str(raw)).save_to_disk(str(staged), num_shards=1)
        staged.rename(final)
    log(f"data: wrote {n:,}×{dim} {dtype} to {final} in {time.perf_counter() - started:.1f}s")
    return final


# ----------------------------------------------------------------------------------------------
# The measured process


def proc_status() -> dict[str, int]:
    """``VmRSS``, ``VmHWM``, ``RssAnon``, ``RssFile``, ``RssShmem`` of this process in bytes (``/proc/self/status``).

    Example:
        >>> proc_status()["RssAnon"] > 0
        True
    """
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024
    return out


class SamplingThread:
    """A context manager calling ``sample()`` on entry, every ``interval`` seconds from a thread, and on exit."""

    def __init__(self, interval: float):
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self):
        raise NotImplementedError

    def _run(self):
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self):
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()


class PeakSampler(SamplingThread):
    """A thread sampling `proc_status` every ``interval`` seconds; ``peak`` holds the largest of each."""

    def __init__(self, interval: float = 0.01):
        super().__init__(interval)
        self.peak = proc_status()

    def sample(self):
        for key, value in proc_status().items():
            self.peak[key] = max(self.peak[key], value)


def reset_high_water_mark() -> bool:
    """Reset ``VmHWM`` to the current RSS (``/proc/self/clear_refs``, Linux ≥ 4.0); ``False`` where refused.

    Example:
        >>> reset_high_water_mark()
        True
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def find_recall(step: Any) -> Any:
    """The first number under a ``recall_at...`` key anywhere in a provenance step (or ``None``).

    Example:
        >>> find_recall({"params": {}, "knn": {"recall_at_k": 0.93}})
        0.93
    """
    if isinstance(step, dict):
        for key, value in step.items():
            if str(key).lower().startswith("recall_at") and isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        for value in step.values():
            found = find_recall(value)
            if found is not None:
                return found
    elif isinstance(step, list):
        for value in step:
            found = find_recall(value)
            if found is not None:
                return found
    return None


def sample_delta(ds, target_degree: int = 20, queries: int = 256, seed: int = 1) -> float:
    """ProbCover's δ for the benchmark: a radius whose balls in the whole pool hold about ``target_degree``
    other rows (the median distance from ``queries`` seeded rows to their ``target_degree``-th nearest
    row, by exact search over the memory-mapped column), so the δ-graph has about ``target_degree·N``
    edges at every N."""
    from hf_prune.ops.knn import knn, normalize_rows
    from hf_prune.ops.matrix import open_matrix

    m = open_matrix(ds, "emb")
    degree = min(target_degree, len(ds) - 1)
    rows = np.sort(np.random.default_rng(seed).choice(len(ds), size=min(queries, len(ds)), replace=False))
    sims, _ = knn(m, degree + 1, queries=normalize_rows(m.take(rows)), metric="cosine", index="flat")
    return float(np.median(np.sqrt(np.maximum(2.0 - 2.0 * sims[:, degree].astype(np.float64), 0.0))))


def _floor(name: str, ds, device: str) -> tuple[Callable[[], Any], dict]:
    """The timed function of one floor and the facts it fills in (recall, read time)."""
    import faiss

    from hf_prune.ops.kmeans import kmeans
    from hf_prune.ops.matrix import open_matrix

    facts: dict[str, Any] = {}
    m = open_matrix(ds, "emb")
    n, d = m.shape
    if name == "pass":
        v = np.random.default_rng(0).standard_normal(d).astype(np.float32)
        out = np.empty(n, dtype=np.float32)

        def one_pass():
            for start, block in m.blocks():
                out[start : start + len(block)] = block @ v
            return out

        started = time.perf_counter()
        one_pass()  # the first pass pulls the pages in; the greedy selectors' passes find them cached
        facts["cold_pass_s"] = time.perf_counter() - started
        return one_pass, facts
    started = time.perf_counter()
    x = m.to_numpy()
    facts["read_s"] = time.perf_counter() - started
    if name == "kmeans":
        clusters = max(2, int(np.sqrt(n)))
        facts.update(clusters=clusters, iterations=25)
        return lambda: kmeans(x, clusters, iterations=25, seed=0, backend="faiss"), facts
    k = min(KNN_K, n - 1)

    def flat():
        index = faiss.IndexFlatL2(d)
        index.add(x)
        return index.search(x, k + 1)

    def ivf():
        # The library's IVF defaults (hf_prune.ops.knn_index): 4·√N lists (≤ N/39), trained on a seeded
        # sample of max(40·nlist, 50,000) rows, 16 lists probed.
        nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))
        train = np.sort(np.random.default_rng(0).choice(n, size=min(n, max(40 * nlist, 50_000)), replace=False))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist, faiss.METRIC_L2)
        index.cp.seed = 0
        started = time.perf_counter()
        index.train(x[train])
        facts["train_s"] = time.perf_counter() - started
        index.nprobe = min(16, nlist)
        index.add(x)
        facts.update(nlist=nlist, nprobe=index.nprobe, train_size=len(train))
        return index, index.search(x, k + 1)

    if name == "knn_flat":
        return flat, facts

    def ivf_with_recall():
        index, found = ivf()
        queries = np.random.default_rng(0).choice(n, size=min(RECALL_QUERIES, n), replace=False)
        exact = faiss.IndexFlatL2(d)
        exact.add(x)
        _, truth = exact.search(x[queries], k + 1)
        hits = [len(set(found[1][q]) & set(t)) for q, t in zip(queries, truth)]
        facts[f"recall_at_{k}"] = float(np.sum(hits) / truth.size)
        return found

    if name == "knn_ivf":
        return ivf_with_recall, facts
    raise ValueError(f"unknown floor {name!r}; choose from {FLOORS}")


def measured_call(fn: Callable[[], Any]) -> tuple[Any, dict]:
    """``fn()`` and what it cost: wall time, peak heap above the level before it, file-backed pages, and
    the largest RSS of a worker process that ended during it.

    Example:
        >>> out, measured = measured_call(lambda: np.ones(10**7))
        >>> measured["peak_heap_bytes"] > 70e6
        True
    """
    import resource

    hwm_reset = reset_high_water_mark()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    before = proc_status()
    with PeakSampler() as sampler:
        started = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - started
    hwm = proc_status()["VmHWM"]
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # The sampler can miss a temporary that lives < 10 ms; the reset high-water mark cannot. At its moment
    # the file-backed pages were at most their sampled maximum (mapped pages stay resident), so the heap
    # (anonymous + shared memory) was at least VmHWM minus that maximum.
    heap = sampler.peak["RssAnon"] + sampler.peak.get("RssShmem", 0)
    if hwm_reset:
        heap = max(heap, hwm - sampler.peak["RssFile"])
    return out, {
        "wall_s": wall,
        "rss_before": before,
        "peak": sampler.peak,
        "hwm_reset": hwm_reset,
        "peak_heap_bytes": heap - before["RssAnon"] - before.get("RssShmem", 0),
        "peak_file_bytes": sampler.peak["RssFile"],
        "vm_hwm_bytes": hwm,
        # The largest RSS of a worker process that ended during the call (0 when none beat earlier ones;
        # in a fresh process there are no earlier ones).
        "children_max_rss_bytes": children_after * 1024 if children_after > children_before else 0,
    }


def measure(spec: dict) -> dict:
    """Run one spec (a selector call or a floor) in this process and return its measurements.

    Example:
        >>> result = measure({"kind": "selector", "name": "herding", "kept": 50, "path": str(path)})
        >>> result["kept_rows"], result["peak_heap_bytes"] >= 0
        (50, True)
    """
    import warnings

    from datasets import disable_progress_bars, load_from_disk

    import hf_prune as hp

    disable_progress_bars()
    if spec["kind"] == "ray":
        return measure_ray(spec)
    ds = load_from_disk(spec["path"])
    result: dict[str, Any] = {"rows": len(ds)}
    device = spec.get("device", "cpu")
    if spec["kind"] == "floor":
        fn, facts = _floor(spec["name"], ds, device)
    else:
        selector = getattr(hp.select, spec["name"], None)
        if selector is None:
            raise ValueError(f"--selectors: {spec['name']!r} is not a selector of hp.select")
        parameters = inspect.signature(selector).parameters
        kwargs = dict(spec.get("kwargs", {}))
        if "embedding_column" in parameters:
            kwargs["embedding_column"] = "emb"
        if spec.get("knn_index") is not None:
            kwargs["knn_index"] = spec["knn_index"]
        if spec.get("per_class"):
            kwargs["label_column"] = "label"
        if "device" in parameters:
            kwargs["device"] = device
        if spec["name"] == "probcover":
            kwargs["delta"] = sample_delta(ds)
        kwargs = {**CASES[spec["name"]].kwargs({"n": len(ds), "parameters": parameters,
                                                  "workers": spec.get("workers", 1),
                                                  "delta": kwargs.get("delta")}), **kwargs}
        result["kwargs"] = {k: v for k, v in kwargs.items() if k != "device"}
        with warnings.catch_warnings():  # warm-up: imports, faiss and BLAS initialisation
            warnings.simplefilter("ignore")
            tiny = ds.select(range(min(len(ds), 300)))
            selector(tiny, size=min(10, spec["kept"]), **{**kwargs, **({"partitions": 1} if "partitions" in kwargs else {})})
        facts = {}

        def fn():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return selector(ds, size=spec["kept"], **kwargs)

    out, measured = measured_call(fn)
    result.update(facts)
    result.update(measured)
    if spec["kind"] == "selector":
        step = hp.provenance(out, warn=False)[-1]
        result["kept_rows"] = len(out)
        result["recall"] = find_recall(step)
        if isinstance(step.get("knn"), dict):  # the k-NN record: index used, recall, build/search seconds
            result["knn"] = {k: v for k, v in step["knn"].items() if k != "reports"}
        if "stage_times" in step:
            result["stage_times"] = step["stage_times"]
    return result


# ----------------------------------------------------------------------------------------------
# Ray (issue 17): plain against a local Ray cluster with 1 and 2 workers

RAY_CPUS = 2
RAY_SIZE = 1_000_000
RAY_INFOMAX = {"fraction": 0.1, "partitions": 100, "k": 5}
RAY_MAP_BATCH = 10_000
# (backend, workers): "plain" is one process without Ray held to `workers` threads (1: the CPUs one Ray
# worker gets, so Ray's overhead is compared at equal resources; 2: every core, the default of a user's
# process); "ray" a local cluster with `workers` one-CPU workers ("ray-parquet": its map writes parquet
# shards); "pool" InfoMax's local process pool; "split" the map's reference without Ray: `workers` plain
# one-thread processes, each mapping its contiguous part at once (what this machine allows two processes).
RAY_VARIANTS = {"infomax": [("plain", 1), ("plain", 2), ("ray", 1), ("ray", 2), ("pool", 2)],
                "map": [("plain", 1), ("plain", 2), ("split", 2), ("ray", 1), ("ray", 2), ("ray-parquet", 1)]}
RAY_TIMEOUT = 600.0
RAY_TARGETS = "Ray with 1 worker within 10% of plain; 2 workers >= 1.7x one on the partitioned work"


def _projection_embedder_class():
    import torch
    from torch import nn

    from hf_prune.embed._base import Embedder

    class ProjectionEmbedder(Embedder):
        """An embedding-like map for the benchmark: a seeded ``d → d → d`` MLP (GELU) over a vector column.

        Example:
            >>> out = ProjectionEmbedder(dim=384).map(ds.with_format("numpy"), batch_size=10_000)
        """

        def __init__(self, column: str = "emb", output_column: str = "proj", dim: int = 384, seed: int = 0,
                     batch_size: int = 1024):
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                self.model = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim)).eval()
            self.column, self.output_column, self.dim, self.seed = column, output_column, dim, seed
            super().__init__(input_columns=[column], device="cpu", dtype=torch.float32, batch_size=batch_size)

        def _output_dims(self):
            return {self.output_column: self.dim}

        def _modules(self):
            return {"model": self.model}

        def _spec(self):
            return {"column": self.column, "dim": self.dim, "seed": self.seed}

        def _embed(self, batch, device):
            x = torch.as_tensor(np.asarray(batch[self.column], dtype=np.float32), device=device)
            return {self.output_column: self.model(x)}

    ProjectionEmbedder.__module__ = __name__
    ProjectionEmbedder.__qualname__ = "ProjectionEmbedder"
    return ProjectionEmbedder


def __getattr__(name: str):
    # Built on first use (torch and hf_prune are imported only by the measured processes) and importable
    # by name, since Ray's actors unpickle the embedder from this module.
    if name == "ProjectionEmbedder":
        cls = _projection_embedder_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ProcessTreeSampler(SamplingThread):
    """Peak RSS of this process's descendants, sampled every ``interval`` s (psutil): workers and Ray's own.

    A worker is a ``ray::`` process (a task or actor worker, ``ray::IDLE`` between tasks) or a process
    pool's spawned interpreter; every other descendant (raylet, which holds the object store, GCS, Ray's
    agents) is Ray's own. A worker's RSS includes the object-store pages it has mapped, so RSS less its
    shared pages is kept beside it.

    Example:
        >>> with ProcessTreeSampler() as tree:
        ...     run_the_job()
        >>> tree.facts()["worker_max_rss_bytes"]
    """

    def __init__(self, interval: float = 0.25):
        import psutil

        super().__init__(interval)
        self.psutil = psutil
        self.workers: dict[int, dict] = {}
        self.system: dict[int, dict] = {}

    def sample(self):
        for proc in self.psutil.Process().children(recursive=True):
            try:
                cmdline = proc.cmdline()
                memory = proc.memory_info()
            except self.psutil.Error:
                continue
            title = cmdline[0] if cmdline else proc.name()
            if os.sep in title:  # a program path: its name only (raylet, gcs_server, python), no machine path
                title = os.path.basename(title)
            worker = title.startswith("ray::") or any("multiprocessing" in part for part in cmdline)
            table = self.workers if worker else self.system
            entry = table.setdefault(proc.pid, {"title": title[:60], "rss": 0, "rss_minus_shared": 0})
            entry["rss"] = max(entry["rss"], memory.rss)
            entry["rss_minus_shared"] = max(entry["rss_minus_shared"], memory.rss - getattr(memory, "shared", 0))
            if title.startswith("ray::") and not title.startswith("ray::IDLE"):
                entry["title"] = title[:60]  # the task or actor it ran, not its idle name

    def facts(self) -> dict:
        workers = sorted(self.workers.values(), key=lambda e: -e["rss"])
        system = sorted(self.system.values(), key=lambda e: -e["rss"])
        return {
            "worker_processes": len(workers),
            "worker_max_rss_bytes": max((w["rss"] for w in workers), default=0),
            "worker_max_rss_minus_shared_bytes": max((w["rss_minus_shared"] for w in workers), default=0),
            "workers": workers[:8],
            "ray_system_rss_bytes": {e["title"]: e["rss"] for e in system[:6]},
        }


def _result_hash(out, work: str) -> str:
    """A hash of what the call returned: the kept ``row_id`` s (InfoMax) or the new column's float32 bytes."""
    import xxhash

    from hf_prune.ops.columns import read_matrix

    h = xxhash.xxh64()
    if work == "infomax":
        h.update(np.asarray(out["row_id"], dtype=np.int64).tobytes())
    else:
        h.update(np.ascontiguousarray(read_matrix(out, "proj", allow_nonfinite=True)).tobytes())
    return h.hexdigest()


def measure_ray(spec: dict) -> dict:
    """One run of the Ray section in this process: ``spec`` names the work, the backend and the workers.

    Example:
        >>> measure_ray({"kind": "ray", "work": "infomax", "backend": "ray", "workers": 2, "path": str(path)})["wall_s"]
    """
    import shutil
    import warnings

    from datasets import load_from_disk

    import hf_prune as hp

    work, backend, workers = spec["work"], spec["backend"], int(spec["workers"])
    ds = load_from_disk(spec["path"])
    result: dict[str, Any] = {"rows": len(ds), "loadavg_start": list(os.getloadavg())}
    storage = tempfile.mkdtemp(prefix="ray-", dir=spec.get("scratch"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, storage, ignore_errors=True)
        if backend == "plain":
            from hf_prune.ops.threads import held_threads

            stack.enter_context(held_threads(workers))
        on_ray = backend.startswith("ray")
        if on_ray:
            started = time.perf_counter()
            shard_format = "parquet" if backend == "ray-parquet" else "arrow"
            stack.enter_context(hp.parallel.ray(workers=workers, cpus_per_task=1, progress=False, storage=storage,
                                                shard_format=shard_format, init_kwargs={"num_cpus": RAY_CPUS}))
            result["ray_start_s"] = time.perf_counter() - started
        if work == "infomax":
            kwargs = {"score_column": "score", "embedding_column": "emb", "k": RAY_INFOMAX["k"],
                      "workers": workers if backend == "pool" else 1}
            kept = int(round(RAY_INFOMAX["fraction"] * len(ds)))
            tiny = ds.select(range(2000))

            def call(data, size, partitions):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return hp.select.infomax(data, size=size, partitions=partitions, **kwargs)

            def warm():  # imports, faiss and BLAS set-up; on Ray the workers' own (one part each)
                return call(tiny, 20, max(2, workers))

            def timed():
                return call(ds, kept, RAY_INFOMAX["partitions"])
        else:
            from recipes.benchmarks.scale import ProjectionEmbedder

            embedder = ProjectionEmbedder(dim=len(ds[0]["emb"]))
            data = ds.with_format("numpy")  # the column as 2-D arrays (Python lists cost 10× the map itself)

            def options(name):  # a fresh output file each time: the plain map must not find a cached one
                return {} if on_ray else {"load_from_cache_file": False,
                                                    "cache_file_name": str(Path(storage) / name)}

            def warm():
                small = RAY_MAP_BATCH // 100
                return embedder.map(data.select(range(4 * small)), batch_size=small, **options("warm.arrow"))

            def timed():
                return embedder.map(data, batch_size=RAY_MAP_BATCH, **options("map.arrow"))

            if backend == "split":
                warm, timed = _split_processes(spec["path"], workers, storage, len(ds))

        started = time.perf_counter()
        warm_out = warm()
        result["warmup_s"] = time.perf_counter() - started
        warm_step = hp.provenance(warm_out, warn=False)[-1] if warm_out is not None else {}
        if "actors_start_s" in warm_step.get("executor", {}):  # the block's first map: its actors' cold start
            result["warmup_executor"] = warm_step["executor"]
        del warm_out
        with ProcessTreeSampler() as tree:
            out, measured = measured_call(timed)
        result.update(measured, **tree.facts(), result_hash=_result_hash(out, work), output_rows=len(out),
                      loadavg_end=list(os.getloadavg()))
        steps = hp.provenance(out, warn=False)
        step = steps[-1] if steps else {}
        for key in ("stage_times", "executor"):
            if key in step:
                result[key] = step[key]
        del out
    if on_ray:
        hp.parallel.ray_executor.import_ray().shutdown()
    return result


def _split_part(path: str, part: int, parts: int, storage: str, batch_size: int, ready, go) -> None:
    """One process of the map's "split" reference: map batches ``part`` of ``parts`` (whole batches), one thread."""
    from datasets import load_from_disk

    from hf_prune.embed.distributed import batch_aligned_bounds
    from hf_prune.ops.threads import held_threads
    from recipes.benchmarks.scale import ProjectionEmbedder

    with held_threads(1):
        data = load_from_disk(path).with_format("numpy")
        embedder = ProjectionEmbedder(dim=len(data[0]["emb"]))
        small = RAY_MAP_BATCH // 100
        embedder.map(data.select(range(4 * small)), batch_size=small, load_from_cache_file=False,
                     cache_file_name=f"{storage}/warm-{part}.arrow")  # imports and first calls, as the others
        start, stop = batch_aligned_bounds(len(data), batch_size, parts, part)
        ready.wait()
        go.wait()
        if stop > start:
            embedder.map(data.select(range(start, stop)), batch_size=batch_size, load_from_cache_file=False,
                         cache_file_name=f"{storage}/part-{part}.arrow")


def _split_processes(path: str, parts: int, storage: str, rows: int, batch_size: int = RAY_MAP_BATCH):
    """``(warm, timed)`` of the "split" reference: warm starts the processes and waits for their warm-up;
    timed lets them go, waits for them and returns their parts in order as one Dataset."""
    import multiprocessing

    from datasets import Dataset, concatenate_datasets

    ctx = multiprocessing.get_context("spawn")
    ready, go = ctx.Barrier(parts + 1), ctx.Barrier(parts + 1)
    procs = [ctx.Process(target=_split_part, args=(path, i, parts, storage, batch_size, ready, go))
             for i in range(parts)]

    def warm():
        for proc in procs:
            proc.start()
        ready.wait(timeout=600)

    def timed():
        go.wait(timeout=60)
        for proc in procs:
            proc.join()
        if any(proc.exitcode for proc in procs):
            raise RuntimeError(f"a split process failed: exit codes {[proc.exitcode for proc in procs]}")
        files = [Path(storage) / f"part-{i}.arrow" for i in range(parts)]
        out = concatenate_datasets([Dataset.from_file(str(f)) for f in files if f.exists()])
        assert len(out) == rows
        return out

    return warm, timed


def ray_plan(work: list[str]) -> list[dict]:
    """The runs of the Ray section: each work's variants, plain first.

    Example:
        >>> [run["key"] for run in ray_plan(["map"])][3:]
        ['ray/map/ray/workers=1', 'ray/map/ray/workers=2', 'ray/map/ray-parquet/workers=1']
    """
    return [{"key": f"ray/{w}/{backend}/workers={n}", "work": w, "backend": backend, "workers": n}
            for w in work for backend, n in RAY_VARIANTS[w]]


def ray_report(results: dict) -> str:
    """The Markdown table of the Ray section, with the two targets checked against the measured runs.

    Example:
        >>> print(ray_report(load_results(Path("runs/scale_ray"), settings)))
    """
    s, runs = results["settings"], results["runs"]
    env = results.get("environment", {})
    lines = [f"Ray section: N = {s['n']:,} × {s['dim']} {s['dtype']} (memory-mapped); local Ray cluster "
             f"num_cpus={RAY_CPUS}, cpus_per_task=1; {env.get('cpu_count')} cores; Ray {env.get('ray')}, torch "
             f"{env.get('torch')}, faiss {env.get('faiss')}. InfoMax: {RAY_INFOMAX}; map: ProjectionEmbedder "
             f"(384 → 384 → 384 MLP), map batch {RAY_MAP_BATCH:,}.", "",
             "| work | run | wall s | vs plain | speed-up vs Ray 1 | driver heap MiB | worker peak RSS MiB "
             "(less shared) | Ray start s | same result | load 1-min before → after |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    verdicts = []
    for work in RAY_VARIANTS:
        plain = runs.get(f"ray/{work}/plain/workers=1", {})
        one = runs.get(f"ray/{work}/ray/workers=1", {})
        for backend, n in RAY_VARIANTS[work]:
            e = runs.get(f"ray/{work}/{backend}/workers={n}")
            if e is None:
                continue
            name = {"plain": f"plain (one process, {n} thread{'s' * (n > 1)})", "ray": f"Ray, {n} worker{'s' * (n > 1)}",
                    "ray-parquet": f"Ray, {n} worker, parquet shards", "pool": f"local pool, workers={n}",
                    "split": f"{n} plain processes, 1 thread each, a part each (no Ray)"}[backend]
            if e.get("status") != "ok":
                lines.append(f"| {work} | {name} | — | | | | | | | {e.get('status')} |")
                continue
            vs = e["wall_s"] / plain["wall_s"] if plain.get("status") == "ok" else None
            up = one["wall_s"] / e["wall_s"] if one.get("status") == "ok" and backend == "ray" else None
            same = "yes" if plain.get("result_hash") == e["result_hash"] else "NO"
            workers = (f"{mib(e['worker_max_rss_bytes'])} ({mib(e['worker_max_rss_minus_shared_bytes'])})"
                       if e.get("worker_processes") else "–")
            load = f"{e['loadavg_start'][0]:.2f} → {e['loadavg_end'][0]:.2f}"
            lines.append(f"| {work} | {name} | {fmt_seconds(e['wall_s'])} | {'' if vs is None else f'{vs:.2f}×'} | "
                         f"{'' if up is None else f'{up:.2f}×'} | {mib(e['peak_heap_bytes'])} | {workers} | "
                         f"{fmt_seconds(e['ray_start_s']) if 'ray_start_s' in e else '–'} | {same} | {load} |")
        two = runs.get(f"ray/{work}/ray/workers=2", {})
        if plain.get("status") == one.get("status") == "ok":
            ratio = one["wall_s"] / plain["wall_s"]
            verdicts.append(f"{work}: Ray 1 worker / plain = {ratio:.3f} (target <= 1.10: "
                            f"{'met' if ratio <= 1.10 else 'missed'})")
        if one.get("status") == two.get("status") == "ok":
            up = one["wall_s"] / two["wall_s"]
            verdicts.append(f"{work}: Ray 2 workers speed-up over 1 = {up:.2f}× (target >= 1.7: "
                            f"{'met' if up >= 1.7 else 'missed'})")
        split = runs.get(f"ray/{work}/split/workers=2", {})
        if plain.get("status") == split.get("status") == "ok":  # what two processes get here without Ray
            verdicts.append(f"{work}: two plain processes, a part each, against one: "
                            f"{plain['wall_s'] / split['wall_s']:.2f}× (this machine's ceiling for two processes)")
    lines += ["", f"Targets ({RAY_TARGETS}):", *[f"- {v}" for v in verdicts]]
    stages = [(key, e["executor"]) for key, e in runs.items()
              if e.get("status") == "ok" and "actors_start_s" in e.get("executor", {})]
    if stages:  # where a Ray map's wall time goes (hf_prune.embed.ray_map)
        def stage_line(x):
            return f"actor start {x['actors_start_s']:.1f}, shards {x['shards_s']:.1f}, join {x['join_s']:.1f}"

        lines += ["", "Ray map stages (s), timed map: " + "; ".join(
            f"{'/'.join(key.split('/')[-2:])}: {stage_line(x)}" for key, x in stages)]
        cold = [(key, e["warmup_executor"]) for key, e in runs.items() if e.get("status") == "ok" and "warmup_executor" in e]
        if cold:
            lines.append("First map of the block (the warm-up, 400 rows; actors started cold): " + "; ".join(
                f"{'/'.join(key.split('/')[-2:])}: {stage_line(x)}" for key, x in cold))
    return "\n".join(lines)


GPU_CLUSTER_COMMANDS = '''\
# NOT RUN HERE (no GPU cluster): a GPU Ray cluster, DataComp small (12.8M image-text pairs), DINOv2 and
# CLIP actors, partitioned InfoMax and SemDeDup. Paths under /shared: a file system every node sees.
# 1. The cluster: the head, then every other GPU node joins it (under SLURM: `ray start --head` in the
#    first task, `ray start --address` in the others, then this script on the head):
ray start --head --port=6379 --num-gpus=8
ray start --address=<head-host>:6379 --num-gpus=8
# 2. The pipeline on the head (DataComp small saved with `save_to_disk`: image, text and row_id):
cat > datacomp_small_ray.py <<'PY'
from datasets import load_from_disk
import hf_prune as hp

ds = load_from_disk("/shared/datacomp_small")
with hp.parallel.ray(address="auto", gpus_per_actor=1, max_retries=3, storage="/shared/hf_prune_ray"):
    ds = hp.embed.ImageEmbedder("facebook/dinov2-base", image_column="image", output_column="dino",
                                batch_size=256).map(ds, batch_size=4096)
    ds = hp.embed.CLIPEmbedder("openai/clip-vit-base-patch32", image_column="image", text_column="text",
                               batch_size=256).map(ds, batch_size=4096)
    # 12.8M rows in 1,280 parts of 10,000 rows: one Ray task a part.
    sub = hp.select.infomax(ds, fraction=0.3, score_column="clip_score", embedding_column="dino",
                            partitions=1280)
    dedup = hp.select.semdedup(ds, fraction=0.5, embedding_column="image_emb", n_clusters=50_000)
sub.save_to_disk("/shared/datacomp_small_infomax30")
dedup.save_to_disk("/shared/datacomp_small_semdedup50")
print(hp.provenance(sub)[-1]["executor"], hp.provenance(sub)[-1]["stage_times"]["wall_s"])
PY
python datacomp_small_ray.py
'''


def ray_main(args) -> dict:
    """The Ray section: each run of `ray_plan` in a fresh process (resumable), then `ray_report`.

    Example:
        >>> ray_main(make_parser().parse_args(["--ray", "--sizes", "20000", "--output-dir", "runs/ray_20k"]))
    """
    import importlib.metadata

    work = _csv(args.ray_work, str)
    unknown = sorted(set(work) - set(RAY_VARIANTS))
    if unknown:
        raise SystemExit(f"--ray-work: unknown {unknown}; choose from {sorted(RAY_VARIANTS)}")
    n = _csv(args.sizes, int)[0] if args.sizes else RAY_SIZE
    dim = args.dim or 384
    settings = {"n": n, "dim": dim, "dtype": args.dtype, "seed": args.seed, "ray_cpus": RAY_CPUS,
                "infomax": RAY_INFOMAX, "map_batch": RAY_MAP_BATCH}
    from datasets import disable_progress_bars

    disable_progress_bars()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = load_results(out, settings)
    results["environment"] = {**versions(), "ray": importlib.metadata.version("ray")}
    timeout = args.run_timeout or RAY_TIMEOUT
    path = str(ensure_data(Path(args.workdir), n, dim, args.dtype, args.seed, print))
    started = time.perf_counter()
    for run in ray_plan(work):
        old = results["runs"].get(run["key"])
        if old and old.get("status") == "ok":
            continue  # resume: done
        print(f"[{run['key']}] ... (load {os.getloadavg()[0]:.2f})", flush=True)
        spec = {"kind": "ray", **{k: run[k] for k in ("work", "backend", "workers")}, "path": path,
                "scratch": str(out.resolve())}
        load_before = list(os.getloadavg())
        entry = run_child(spec, timeout)
        entry.update(spec={k: v for k, v in spec.items() if k not in ("path", "scratch")},
                     loadavg_before=load_before, loadavg_after=list(os.getloadavg()))
        results["runs"][run["key"]] = entry
        save_results(out, results)
        detail = f"{entry['wall_s']:.2f}s" if entry["status"] == "ok" else entry.get("stderr_tail", "")[-2000:]
        print(f"[{run['key']}]   {entry['status']} {detail}", flush=True)
    results["report"] = ray_report(results)
    save_results(out, results)
    (out / "report.md").write_text(results["report"] + "\n")
    print(f"\ntotal {(time.perf_counter() - started) / 60:.1f} min\n")
    print(results["report"])
    print("\nGPU cluster commands (not run here; `--gpu-cluster` prints them):\n" + GPU_CLUSTER_COMMANDS)
    failed = [k for k, e in results["runs"].items() if e["status"] != "ok"]
    if failed:
        raise SystemExit(f"{len(failed)} run(s) did not finish: {failed} (see {out / 'results.json'})")
    return results


def child_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = measure(spec)
    Path(spec["result_path"]).write_text(json.dumps(result))


def run_child(spec: dict, timeout: float, env: dict | None = None) -> dict:
    """``measure(spec)`` in a fresh Python process with a time limit: its result with ``status``.

    ``status`` is ``"ok"``, ``"did not finish in X s"`` (the process group is killed at the limit) or
    ``"error: ..."`` with the last line the process wrote to stderr.

    Example:
        >>> run_child({"kind": "floor", "name": "pass", "path": str(path)}, timeout=60)["status"]
        'ok'
    """
    with tempfile.TemporaryDirectory() as tmp:
        spec = {**spec, "result_path": str(Path(tmp) / "result.json")}
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        command = [sys.executable, "-m", "recipes.benchmarks.scale", "--child", str(spec_path)]
        child_env = {**os.environ, **(env or {})}
        child_env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [child_env.get("PYTHONPATH")] if p])
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=REPO, env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: InfoMax's worker pool too
            proc.communicate()
            return {"status": f"did not finish in {timeout:g} s", "timeout_s": timeout,
                    "process_s": time.perf_counter() - started}
        result_path = Path(spec["result_path"])
        if proc.returncode != 0 or not result_path.exists():
            lines = [line for line in (stderr or "").strip().splitlines() if line.strip()]
            return {"status": f"error: {lines[-1] if lines else f'exit code {proc.returncode}'}",
                    "returncode": proc.returncode, "stderr_tail": "\n".join(lines[-20:])}
        result = json.loads(result_path.read_text())
        result.update(status="ok", timeout_s=timeout, process_s=time.perf_counter() - started)
        return result


class CompetingLoad:
    """A separate process busy on BLAS matrix products while the ``with`` block runs."""

    def __init__(self, threads: int):
        self.threads = threads

    def __enter__(self):
        env = {**os.environ, **{v: str(self.threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                                  "MKL_NUM_THREADS")}}
        self.proc = subprocess.Popen([sys.executable, "-c", LOAD_SCRIPT], env=env, start_new_session=True)
        time.sleep(1.0)  # let it reach its loop
        return self

    def __exit__(self, *exc):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


# ----------------------------------------------------------------------------------------------
# Planning, running, reporting


def greedy_kept(n: int, kept: int, row_picks: int) -> int:
    """The kept size a greedy selector runs at: ``kept`` capped at ``row_picks / n`` (at least 10).

    Example:
        >>> greedy_kept(1_000_000, 100_000, 100_000_000)
        100
    """
    return min(kept, max(10, row_picks // n))


def plan(args, choices: dict[str, list[str]]) -> list[dict]:
    """Every (selector, variant, N, fraction) run of this invocation, unloaded first."""
    runs = []
    for n in args.sizes:
        for name in args.selectors:
            case = CASES[name]
            for index in (choices.get(name) or [None]) if case.knn else [None]:
                for fraction in args.fractions:
                    budget = max(1, int(round(fraction * n)))
                    kept = greedy_kept(n, budget, args.greedy_row_picks) if case.kind == "greedy" else budget
                    variant = name if index is None else f"{name}[{index}]"
                    runs.append({"key": f"{run_slug(variant)}/N={n}/f={fraction:g}", "selector": name,
                                 "variant": variant, "knn_index": index, "n": n, "fraction": fraction,
                                 "budget": budget, "kept": kept, "kind": case.kind})
    return runs


def floor_for(run: dict) -> str:
    if run["kind"] == "knn":
        return "knn_flat" if run["knn_index"] in (None, *EXACT_INDEXES) else "knn_ivf"
    return {"kmeans": "kmeans"}.get(run["kind"], "pass")


def floor_ratio(run: dict, entry: dict, floors: dict) -> float | None:
    """The run's time over its floor's (greedy: milliseconds per pick over one pass)."""
    floor = floors.get(f"floor/{floor_for(run)}/N={run['n']}")
    if entry.get("status") != "ok" or not floor or floor.get("status") != "ok":
        return None
    wall = entry["wall_s"] / entry["kept_rows"] if run["kind"] == "greedy" else entry["wall_s"]
    return wall / floor["wall_s"]


def column_bytes(n: int, dim: int, dtype: str) -> int:
    return n * dim * np.dtype(dtype).itemsize


def mib(x) -> str:
    return "n/a" if x is None else f"{x / 2**20:,.1f}"


def stored_plan(results: dict) -> list[dict]:
    """`plan` over every size, fraction and selector that has a stored run (all invocations together)."""
    keys = " ".join(results["runs"])
    args = argparse.Namespace(sizes=sorted({int(n) for n in re.findall(r"/N=(\d+)", keys)}), selectors=list(CASES),
                              fractions=sorted({float(f) for f in re.findall(r"/f=([0-9.e-]+)", keys)}),
                              greedy_row_picks=results["settings"]["greedy_row_picks"])
    return [r for r in plan(args, results.get("knn_choices", {})) if r["key"] in results["runs"]]


def report(results: dict) -> str:
    """The Markdown report of every stored run: floors and a table per N, then the slowdown under load.

    Example:
        >>> print(report(load_results(Path("runs/scale"), settings)))
    """
    runs, lines = results["runs"], []
    s = results["settings"]
    stored = stored_plan(results)
    lines.append(f"Scale benchmark: d={s['dim']}, {s['dtype']}, seed {s['seed']}, device {s['device']}, "
                 f"{'per class' if s['per_class'] else 'whole set'}; BLAS threads {s['threads'] or 'inherited'}.")
    for n in sorted({int(k.rsplit("N=", 1)[1].split("/")[0]) for k in runs if "N=" in k}):
        col = column_bytes(n, s["dim"], s["dtype"])
        lines += ["", f"### N = {n:,} (column {col / 2**20:,.1f} MiB)", "",
                  "| floor | wall s | peak heap MiB | heap/column | recall | status |", "|---|---:|---:|---:|---:|---|"]
        for f in FLOORS:
            e = runs.get(f"floor/{f}/N={n}")
            if e is None:
                continue
            recall = next((v for k, v in e.items() if k.startswith("recall_at_")), None)
            if e["status"] == "ok":
                lines.append(f"| {f} | {fmt_seconds(e['wall_s'])} | {mib(e['peak_heap_bytes'])} | "
                             f"{e['peak_heap_bytes'] / col:.2f} | {'' if recall is None else f'{recall:.3f}'} | ok |")
            else:
                lines.append(f"| {f} | — | — | — | | {e['status']} |")
        lines += ["", "| selector | kept | wall s | peak heap MiB | heap/column | floor ratio | recall | status |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for run in stored:
            if run["n"] != n:
                continue
            e = runs[run["key"]]
            kept = f"{run['kept']:,}"
            if run["kept"] < run["budget"]:
                kept += f" (capped; {run['fraction']:.0%} = {run['budget']:,} does not fit)"
            else:
                kept += f" ({run['fraction']:.0%})"
            ratio = floor_ratio(run, e, runs)
            ratio_text = "n/a" if ratio is None else fmt_ratio(ratio) + (" passes/pick" if run["kind"] == "greedy" else "")
            if e["status"] == "ok":
                knn = e.get("knn") or {}
                found = find_recall(knn) if knn else e.get("recall")
                recall = "" if found is None else f"{found:.3f}"
                if knn.get("indexes_used"):
                    recall += f" ({'/'.join(knn['indexes_used'])}{'' if knn.get('recall_measured') else ', exact'})"
                heap = mib(e["peak_heap_bytes"])
                if e.get("children_max_rss_bytes"):  # worker processes (InfoMax's pool): their largest RSS
                    heap += f" (+ workers {mib(e['children_max_rss_bytes'])} each)"
                lines.append(f"| {run['variant']} | {kept} | {fmt_seconds(e['wall_s'])} | {heap} | "
                             f"{e['peak_heap_bytes'] / col:.2f} | {ratio_text} | {recall} | ok |")
            else:
                lines.append(f"| {run['variant']} | {kept} | — | — | — | n/a | | {e['status']} |")
    loaded = [(r, runs[r["key"] + "/alone"], runs[r["key"] + "/load"]) for r in stored
              if r["key"] + "/load" in runs and r["key"] + "/alone" in runs]
    if loaded:
        lines += ["", f"### With a competing CPU job ({results.get('load_threads')} BLAS threads)", "",
                  "| selector | N | kept | alone s | loaded s | slowdown | status |", "|---|---:|---:|---:|---:|---:|---|"]
        for run, alone, busy in loaded:
            both = alone["status"] == busy["status"] == "ok"
            slow = fmt_ratio(busy["wall_s"] / alone["wall_s"]) + "×" if both else "n/a"
            lines.append(f"| {run['variant']} | {run['n']:,} | {run['kept']:,} | "
                         f"{fmt_seconds(alone['wall_s']) if alone['status'] == 'ok' else '—'} | "
                         f"{fmt_seconds(busy['wall_s']) if busy['status'] == 'ok' else '—'} | {slow} | "
                         f"{busy['status']} |")
    if s["device"] != "cpu":
        lines += ["", f"Line to beat — {INFOMAX_PAPER}."]
    return "\n".join(lines)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=None, help="comma-separated N (default 100000,1000000; --gpu: 1M,10M)")
    p.add_argument("--dim", type=int, default=None, help="embedding width d (default 384; --gpu: 768)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="storage type of the column")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--selectors", default=None,
                   help=f"comma-separated subset of {sorted(CASES)} (default: {','.join(DEFAULT_SELECTORS)})")
    p.add_argument("--fractions", default="0.01,0.1", help="comma-separated kept fractions (default 0.01,0.1)")
    p.add_argument("--greedy-row-picks", type=int, default=50_000_000,
                   help="greedy selectors keep at most this / N rows (default 5e7: 500 at 100k, 50 at 1M; "
                        "Gram–Schmidt took 60 s for 2,000 picks at 20k × 384 on the loaded 2-core machine)")
    p.add_argument("--run-timeout", type=float, default=None, help="seconds per run before it is recorded as "
                   "'did not finish' (default 150, so the default plan stays within about 1.5 h on 2 cores; "
                   "--gpu: 1800, above the InfoMax paper's 16.1 min)")
    p.add_argument("--per-class", action="store_true", help="select per class (label_column='label')")
    p.add_argument("--threads", type=int, default=None, help="BLAS / OpenMP threads of each run (default: inherited)")
    p.add_argument("--infomax-workers", type=int, default=None, help="InfoMax `workers=` (default: all cores)")
    p.add_argument("--floors", default=None, help=f"comma-separated floors to measure (default all: {','.join(FLOORS)})")
    p.add_argument("--knn-index", default=None, help="comma-separated knn_index variants of the k-NN selectors "
                   "(default: every one a selector accepts)")
    p.add_argument("--load", action="store_true", help="also run every selector with a competing CPU job")
    p.add_argument("--gpu", action="store_true", help="N = 1M, 10M × 768 with device='cuda' (needs a GPU)")
    p.add_argument("--workdir", default="runs/scale/data", help="cache of the generated datasets")
    p.add_argument("--output-dir", default="runs/scale", help="results.json and report.md go here")
    p.add_argument("--ray", action="store_true", help="run only the Ray section: plain vs Ray with 1 and 2 workers")
    p.add_argument("--ray-work", default="infomax,map", help="comma-separated work of --ray: infomax, map")
    p.add_argument("--gpu-cluster", action="store_true", help="print the GPU Ray cluster commands (nothing runs)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p


def _csv(value: str, cast) -> list:
    return [cast(v) for v in value.split(",") if v.strip()]


def main(argv=None) -> dict:
    """Run (or resume) the plan; returns the results dict (``runs``, ``settings``, ``report``).

    Example:
        >>> main(["--sizes", "2000", "--dim", "16", "--selectors", "random", "--output-dir", "runs/x"])["report"]
    """
    args = make_parser().parse_args(argv)
    if args.child:
        child_main(args.child)
        return {}
    if args.gpu_cluster:
        print(GPU_CLUSTER_COMMANDS)
        return {}
    if args.ray:
        return ray_main(args)
    device = "cpu"
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--gpu: no CUDA device is visible (torch.cuda.is_available() is False); "
                             "run it on a GPU machine")
        device = "cuda"
    args.sizes = _csv(args.sizes, int) if args.sizes else (GPU_SIZES if args.gpu else [100_000, 1_000_000])
    args.dim = args.dim or (GPU_DIM if args.gpu else 384)
    args.run_timeout = args.run_timeout or (1800.0 if args.gpu else 150.0)
    args.fractions = _csv(args.fractions, float)
    args.selectors = _csv(args.selectors, str) if args.selectors else DEFAULT_SELECTORS
    unknown = sorted(set(args.selectors) - set(CASES))
    if unknown:
        raise SystemExit(f"--selectors: unknown {unknown}; choose from {sorted(CASES)}")
    args.floors = _csv(args.floors, str) if args.floors else FLOORS
    if sorted(set(args.floors) - set(FLOORS)):
        raise SystemExit(f"--floors: unknown {sorted(set(args.floors) - set(FLOORS))}; choose from {FLOORS}")
    args.knn_index = _csv(args.knn_index, str) if args.knn_index else None
    bad = [f for f in args.fractions if not 0.0 < f < 1.0]
    if bad or min(args.sizes) < 100:
        raise SystemExit(f"--fractions must lie in (0, 1) and --sizes be at least 100, got {args.fractions}, {args.sizes}")
    env = {} if args.threads is None else {v: str(args.threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                                        "MKL_NUM_THREADS")}
    workers = args.infomax_workers or os.cpu_count() or 1
    settings = {"dim": args.dim, "dtype": args.dtype, "seed": args.seed, "device": device, "per_class": args.per_class,
                "threads": args.threads, "greedy_row_picks": args.greedy_row_picks, "infomax_workers": workers}
    from datasets import disable_progress_bars

    disable_progress_bars()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = load_results(out, settings)
    results["environment"] = versions()
    results.setdefault("knn_choices", {})
    for name in args.selectors:
        listed = CASES[name].knn
        if listed:
            results["knn_choices"][name] = [c for c in knn_choices(name) if (args.knn_index is None or c in args.knn_index)
                                            and (listed is True or c in listed)]

    def log(msg):
        print(msg, flush=True)

    log(f"settings: {settings}; sizes {args.sizes}; fractions {args.fractions}; knn_index {results['knn_choices']}")
    started = time.perf_counter()

    def record(key: str, spec: dict, load: bool = False) -> None:
        old = results["runs"].get(key)
        if old and (old["status"] == "ok" or (old["status"].startswith("did not finish")
                                                and old.get("timeout_s", 0) >= args.run_timeout)):
            return  # done (or already past this time limit): resume skips it
        log(f"[{key}] ...")
        entry = run_child({**spec, "device": device}, args.run_timeout, env)
        entry.update(load=load, spec={k: v for k, v in spec.items() if k != "path"})
        results["runs"][key] = entry
        save_results(out, results)
        detail = f"{entry['wall_s']:.3f}s, heap +{mib(entry['peak_heap_bytes'])} MiB" if entry["status"] == "ok" else ""
        log(f"[{key}]   {entry['status']} {detail}")

    runs = plan(args, results["knn_choices"])
    for n in args.sizes:
        path = str(ensure_data(Path(args.workdir), n, args.dim, args.dtype, args.seed, log))
        for f in args.floors:
            record(f"floor/{f}/N={n}", {"kind": "floor", "name": f, "path": path})
        for run in (r for r in runs if r["n"] == n):
            record(run["key"], {"kind": "selector", "name": run["selector"], "knn_index": run["knn_index"],
                                "kept": run["kept"], "path": path, "per_class": args.per_class, "workers": workers})
    if args.load:
        # Each loaded run right after an unloaded one of the same spec ("/alone"), so the slowdown compares
        # two runs minutes apart rather than against a run made when the machine was otherwise busier.
        results["load_threads"] = os.cpu_count()
        for run in runs:
            path = str(data_path(Path(args.workdir), run["n"], args.dim, args.dtype, args.seed))
            spec = {"kind": "selector", "name": run["selector"], "knn_index": run["knn_index"], "kept": run["kept"],
                    "path": path, "per_class": args.per_class, "workers": workers}
            if results["runs"].get(run["key"] + "/load", {}).get("status") != "ok":
                results["runs"].pop(run["key"] + "/alone", None)  # re-pair: measure both again
            record(run["key"] + "/alone", spec)
            with CompetingLoad(os.cpu_count() or 1):
                record(run["key"] + "/load", spec, load=True)
    results["report"] = report(results)
    save_results(out, results)
    (out / "report.md").write_text(results["report"] + "\n")
    log(f"\ntotal {(time.perf_counter() - started) / 60:.1f} min\n")
    print(results["report"])
    errors = [k for k, e in results["runs"].items() if e["status"].startswith("error")]
    if errors:
        raise SystemExit(f"{len(errors)} run(s) failed: {errors} (see {out / 'results.json'})")
    return results


if __name__ == "__main__":
    main()
