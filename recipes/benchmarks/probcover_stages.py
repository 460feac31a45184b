"""ProbCover's stages timed one by one, alone and beside a competing CPU job.

`hp.select.probcover` runs: the normalised copy of the column, (with ``delta=None``) k-means
pseudo-labels and the purity rule's masked pass (`hf_prune.ops.other_label`), the δ-graph
(`coverage_graph`: an exact or IVF-Flat radius search, then symmetrising the edges), and the greedy
maximum coverage (`max_coverage`, one thread). This times those stages on the scale benchmark's
memory-mapped column, alone and then beside the scale benchmark's `CompetingLoad` (a process running
2-thread BLAS products), ``--rounds`` times each, in this one process, and checks that every run
picked the same rows. With both cores shared, about 2× is the fair-share slowdown of a stage that
uses both cores; a one-thread stage should see less.

    python -m recipes.benchmarks.probcover_stages                           # 1M × 384, δ as scale.py
    python -m recipes.benchmarks.probcover_stages --rows 100000 --purity    # δ by the purity rule
    python -m recipes.benchmarks.probcover_stages --rows 100000 --purity --delta-only --alone --knn-index flat

Results: ``--output-dir``/results.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
from datasets import disable_progress_bars, load_from_disk

from hf_prune.ops.knn import normalize_rows
from hf_prune.ops.matrix import open_matrix
from hf_prune.select._knn_step import KnnLog
from hf_prune.select.probcover import MAX_PSEUDO_LABELS, coverage_graph, max_coverage, purity_delta
from hf_prune.select.typiclust import best_kmeans
from recipes.benchmarks.results_store import save_results
from recipes.benchmarks.scale import CompetingLoad, ensure_data, sample_delta

STAGES = ("normalise", "pseudo_labels", "purity_delta", "graph", "greedy")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="N (default 1,000,000), d = 384 float32")
    p.add_argument("--fraction", type=float, default=0.01, help="kept fraction (default 0.01)")
    p.add_argument("--knn-index", default="ivf", help="knn_index of the graph and purity pass (default ivf)")
    p.add_argument("--purity", action="store_true",
                   help="δ by ProbCover's purity rule (k-means pseudo-labels); default: scale.py's δ")
    p.add_argument("--delta-only", action="store_true",
                   help="with --purity: stop after the purity rule's δ (no graph, no greedy)")
    p.add_argument("--alone", action="store_true", help="no run beside the competing job")
    p.add_argument("--rounds", type=int, default=1, help="alone/loaded pairs (default 1)")
    p.add_argument("--load-threads", type=int, default=os.cpu_count(), help="BLAS threads of the competing job")
    p.add_argument("--workdir", default="runs/scale/data", help="cache of the generated dataset (shared with scale.py)")
    p.add_argument("--output-dir", default="runs/probcover_stages")
    return p


def run_stages(ds, size: int, knn_index: str, delta: float | None, delta_only: bool = False) -> tuple[dict, str]:
    """Seconds per stage, δ, the edge count and a hash of the picks: ProbCover's steps as
    `hp.select.probcover` runs them on one group (no ``label_column``), seeded from ``seed=0``. With
    ``delta_only`` the stages stop at the purity rule's δ (the hash is then δ's)."""
    rng = np.random.default_rng(0)
    times = {}
    started = time.perf_counter()
    x = normalize_rows(open_matrix(ds, "emb"))
    times["normalise"] = time.perf_counter() - started
    index_seed = int(rng.spawn(1)[0].integers(2**31 - 1))
    if delta is None:
        started = time.perf_counter()
        labels = best_kmeans(x, max(2, min(size, MAX_PSEUDO_LABELS)), rng, 3)
        times["pseudo_labels"] = time.perf_counter() - started
        started = time.perf_counter()
        log = KnnLog(knn_index)
        delta = purity_delta(x, labels, seed=index_seed, log=log)
        times["purity_delta"] = time.perf_counter() - started
        times["purity_pass"] = {key: log.reports[-1][key] for key in ("index", "recall_at_k", "widened")}
        if delta_only:
            times["delta"] = float(delta)
            return times, hashlib.sha256(np.float64(delta).tobytes()).hexdigest()[:16]
    started = time.perf_counter()
    indptr, indices = coverage_graph(x, delta, knn_index=knn_index, seed=index_seed)
    times["graph"] = time.perf_counter() - started
    started = time.perf_counter()
    picks = max_coverage(indptr, indices, size, rng)
    times["greedy"] = time.perf_counter() - started
    times["delta"], times["edges"] = float(delta), int(len(indices))
    return times, hashlib.sha256(np.asarray(picks, dtype=np.int64).tobytes()).hexdigest()[:16]


def main(argv=None) -> dict:
    args = make_parser().parse_args(argv)
    if args.delta_only and not args.purity:
        raise SystemExit("--delta-only needs --purity (otherwise δ is given, not computed)")
    disable_progress_bars()
    ds = load_from_disk(str(ensure_data(Path(args.workdir), args.rows, 384, "float32", 0)))
    size = max(1, int(round(args.fraction * args.rows)))
    delta = None if args.purity else sample_delta(ds)
    run_stages(ds.select(range(min(3000, len(ds)))), 30, args.knn_index, delta, args.delta_only)  # warm-up
    runs = []
    for round_ in range(args.rounds):
        for loaded in (False,) if args.alone else (False, True):
            with CompetingLoad(args.load_threads) if loaded else contextlib.nullcontext():
                times, picks = run_stages(ds, size, args.knn_index, delta, args.delta_only)
            # The process's peak so far (ru_maxrss is a high-water mark): the first run's is its own.
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            runs.append({"round": round_, "loaded": loaded, "picks": picks, "max_rss_gib": peak, **times})
            print(runs[-1], flush=True)
    if len({r["picks"] for r in runs}) != 1:
        raise SystemExit("the runs picked different rows")
    results = {"settings": vars(args), "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                     "processor": platform.processor()}, "runs": runs}
    save_results(Path(args.output_dir), results)
    print(report(results))
    return results


def _median(runs: list[dict], stage: str, loaded: bool) -> float | None:
    values = [sum(r.get(s, 0.0) for s in STAGES) if stage == "total" else r.get(stage)
              for r in runs if r["loaded"] == loaded]
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def report(results: dict) -> str:
    """A table: median seconds per stage alone and loaded, and the slowdown."""
    lines = ["| stage | alone s | loaded s | loaded / alone |", "|---|---:|---:|---:|"]
    for stage in (*STAGES, "total"):
        alone, loaded = _median(results["runs"], stage, False), _median(results["runs"], stage, True)
        if alone is None:
            continue
        if loaded is None:
            lines.append(f"| {stage} | {alone:.1f} | | |")
        else:
            lines.append(f"| {stage} | {alone:.1f} | {loaded:.1f} | {loaded / max(alone, 1e-9):.2f}× |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
