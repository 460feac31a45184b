"""The k-NN and k-means selectors, and one k-means, beside a competing CPU job, with the thread policy off and on.

TypiClust, SemDeDup and D² run loops of independent medium steps: the IVF join's lists, each
cluster's first search, each cluster's similarities, the row blocks of a k-means++ pass. With the
policy on (`hf_prune.ops.threads.parallel_steps`), whole steps run on the caller's threads, one thread
each. With ``thread_policy(False)``, the steps run one after the other, each product split over the
BLAS threads, as before the change. Each selector runs with the policy off, then on, alternating for
``--rounds`` rounds, alone and then beside a process running 2-thread BLAS products (the scale
benchmark's `CompetingLoad`), all in this one process. Every run must keep the same rows, which is checked.
``kmeans`` is one k-means of the rows into as many clusters as the kept size (its Lloyd steps,
`hf_prune.ops.kmeans`), ``kmeans_faiss`` the same through ``faiss.Kmeans``, whose OpenMP loop the
policy does not reach: the reference for the steps. ``probcover`` is ProbCover with its default δ (the
purity rule).

    python -m recipes.benchmarks.knn_under_load                  # 100k × 384, about 12 minutes here
    python -m recipes.benchmarks.knn_under_load --rows 20000     # a quick look

Results: ``--output-dir``/results.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import platform
import time
from pathlib import Path

import numpy as np
from datasets import disable_progress_bars, load_from_disk

import hf_prune as hp
from hf_prune.ops.kmeans import kmeans
from hf_prune.ops.matrix import open_matrix
from hf_prune.ops.threads import thread_policy
from recipes.benchmarks.results_store import save_results
from recipes.benchmarks.scale import CompetingLoad, ensure_data

SELECTORS = {
    "typiclust": lambda ds, size: hp.select.typiclust(ds, size=size, embedding_column="emb", seed=0),
    "semdedup": lambda ds, size: hp.select.semdedup(ds, size=size, embedding_column="emb", seed=0),
    "d2_pruning": lambda ds, size: hp.select.d2_pruning(ds, size=size, embedding_column="emb",
                                                        score_column="score", k=10, seed=0),
    # ProbCover with its default δ: k-means pseudo-labels, then the purity rule's masked pass
    # (`hf_prune.ops.other_label`), then the δ-graph and the greedy.
    "probcover": lambda ds, size: hp.select.probcover(ds, size=size, embedding_column="emb", seed=0),
    # One k-means of the rows into `size` clusters: its Lloyd steps (the CPU default), and faiss.Kmeans
    # itself, whose OpenMP loop the thread policy does not reach (the reference).
    "kmeans": lambda ds, size: kmeans(open_matrix(ds, "emb"), size, seed=0, backend="torch")[1],
    "kmeans_faiss": lambda ds, size: kmeans(open_matrix(ds, "emb"), size, seed=0, backend="faiss")[1],
}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=100_000, help="N (default 100,000), d = 384 float32")
    p.add_argument("--fraction", type=float, default=0.01, help="kept fraction (default 0.01)")
    p.add_argument("--selectors", default=",".join(SELECTORS), help=f"comma-separated subset of {list(SELECTORS)}")
    p.add_argument("--rounds", type=int, default=2, help="off/on pairs per condition (default 2)")
    p.add_argument("--load-threads", type=int, default=os.cpu_count(), help="BLAS threads of the competing job")
    p.add_argument("--workdir", default="runs/scale/data", help="cache of the generated dataset (shared with scale.py)")
    p.add_argument("--output-dir", default="runs/knn_under_load")
    return p


def rows_hash(result) -> str:
    """The kept ``row_id``s of a selection, or a k-means assignment, hashed."""
    rows = result if isinstance(result, np.ndarray) else result["row_id"]
    return hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]


def main(argv=None) -> dict:
    args = make_parser().parse_args(argv)
    names = [name.strip() for name in args.selectors.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SELECTORS))
    if unknown:
        raise SystemExit(f"unknown --selectors {unknown}; choose from {list(SELECTORS)}")
    disable_progress_bars()
    ds = load_from_disk(str(ensure_data(Path(args.workdir), args.rows, 384, "float32", 0)))
    size = max(1, int(round(args.fraction * args.rows)))
    SELECTORS["semdedup"](ds.select(range(min(3000, len(ds)))), 30)  # warm-up: imports, faiss, BLAS buffers
    results = {"settings": vars(args), "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                   "hf_prune": hp.__version__}, "runs": []}
    for condition in ("alone", "loaded"):
        for round_ in range(args.rounds):
            for name in names:
                for policy in ("off", "on"):
                    load = CompetingLoad(args.load_threads) if condition == "loaded" else contextlib.nullcontext()
                    with thread_policy(policy == "on"), load:
                        started = time.perf_counter()
                        subset = SELECTORS[name](ds, size)
                        wall = time.perf_counter() - started
                    run = {"selector": name, "condition": condition, "policy": policy, "round": round_,
                           "wall_s": wall, "rows": rows_hash(subset)}
                    results["runs"].append(run)
                    print(f"{name} {condition} policy={policy} round {round_}: {wall:.1f} s", flush=True)
                    save_results(Path(args.output_dir), results)
    print()
    print(report(results))
    return results


def report(results: dict) -> str:
    """The markdown table: per selector and condition, the times with the policy off and on, and off / on.

    Example:
        >>> print(report(json.load(open("runs/knn_under_load/results.json"))))
    """
    lines = ["| selector | condition | policy off s | policy on s | off / on (medians) | same rows |",
             "|---|---|---|---|---:|---|"]
    runs = results["runs"]
    for name in dict.fromkeys(r["selector"] for r in runs):
        hashes = {r["rows"] for r in runs if r["selector"] == name}
        for condition in ("alone", "loaded"):
            off = [r["wall_s"] for r in runs if (r["selector"], r["condition"], r["policy"]) == (name, condition, "off")]
            on = [r["wall_s"] for r in runs if (r["selector"], r["condition"], r["policy"]) == (name, condition, "on")]
            if not off or not on:
                continue
            lines.append(f"| {name} | {condition} | {', '.join(f'{t:.1f}' for t in off)} | "
                         f"{', '.join(f'{t:.1f}' for t in on)} | {np.median(off) / np.median(on):.2f}× | "
                         f"{'yes' if len(hashes) == 1 else 'NO'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
