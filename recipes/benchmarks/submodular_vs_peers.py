"""Facility location and the submodular family: hf_prune against apricot and submodlib.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python recipes/benchmarks/submodular_vs_peers.py \\
        --rows 10000 100000 --dense-rows 5000 --output submodular.json

Peers (optional, ``pip install apricot-select submodlib-py``): apricot's ``FacilityLocationSelection``
and ``GraphCutSelection``, submodlib's ``FacilityLocationFunction``, ``GraphCutFunction``,
``LogDeterminantFunction``, ``DisparitySumFunction`` and ``DisparityMinFunction``. A peer that is
not installed, or fails, is reported with its error and skipped.

Data (seeded, synthetic): a Gaussian mixture in d = 32 with 50 components of random sizes
(Dirichlet weights) and scales, so neighbourhoods and densities differ across the space.

Same similarity for everyone. Facility location and graph cut run on one sparse similarity ``W``
built once per N by `hf_prune.select.submodular.similarity_graph` (``metric="l2"``: Gaussian kernel
on each row's ``k`` nearest neighbours, symmetrised, diagonal included; exact k-NN at 10k, IVF
above ``--ivf-above``). The peers get ``W`` itself (apricot ``metric="precomputed"``, submodlib
``mode="sparse"``), so their timings exclude the k-NN search, as do ours on the "order" line;
the "selector" line times hf_prune end to end through the Dataset API, k-NN included.
Log-determinant (cosine kernel ``x̂x̂ᵀ``, λ = 1) and the disparities (distance ``1 − cos``) need dense
kernels in the peers, so they run on the first ``--dense-rows`` rows; submodlib gets the dense
cosine-similarity matrix. Graph cut: submodlib's ``lambdaVal = λ``; apricot's parametrisation
``α·Σ_V Σ_S − Σ_S Σ_S`` is ``α·f_λ`` with ``α = 1/λ``, so the greedy picks the same rows.

One evaluator: every subset is scored with the objective functions of
`hf_prune.select.submodular` on the same similarity (the ratio ``peer / ours`` > 1 means the peer
found a better value). For facility location, the mean Euclidean distance from every row to its
nearest kept row is compared with k-center greedy (``hp.select.k_center_greedy``, ``init="first"``)
and uniform random subsets (mean of ``--random-seeds`` seeds), at the same budget.

Timing: ``time.perf_counter`` wall time, single run, on the machine as it is (load from other jobs
included); with ``OMP_NUM_THREADS=1`` everyone runs on one core.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
from datasets import Dataset

import hf_prune as hp
from hf_prune.ops.columns import add_column
from hf_prune.ops.knn import knn
from hf_prune.select.submodular import (
    disparity_min_objective,
    disparity_order,
    disparity_sum_objective,
    facility_location_objective,
    facility_location_order,
    graph_cut_objective,
    graph_cut_order,
    log_determinant_objective,
    log_determinant_order,
    similarity_graph,
)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--components", type=int, default=50)
    p.add_argument("--fraction", type=float, default=0.05, help="kept fraction for FL / graph cut")
    p.add_argument("--k", type=int, default=10, help="neighbours per row in the sparse similarity")
    p.add_argument("--lambda-val", type=float, default=0.5, help="graph cut λ (submodlib's lambdaVal)")
    p.add_argument("--ivf-above", type=int, default=50_000, help="use the IVF k-NN index above this N")
    p.add_argument("--dense-rows", type=int, default=5000, help="N for log-det and the disparities")
    p.add_argument("--dense-budget", type=int, default=200)
    p.add_argument("--no-dense", action="store_true", help="skip log-det and the disparities")
    p.add_argument("--dense-scale-rows", type=int, default=100_000, help="N for timing ours alone (0: skip)")
    p.add_argument("--peer-max-rows", type=int, default=100_000, help="skip peers above this N")
    p.add_argument("--submodlib-max-rows", type=int, default=20_000, help="skip submodlib's sparse mode above")
    p.add_argument("--random-seeds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="write the results as JSON here")
    return p


def gaussian_mixture(n: int, d: int, components: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(components, 0.7))
    labels = rng.choice(components, size=n, p=weights)
    centres = rng.normal(scale=4.0, size=(components, d))
    scales = rng.uniform(0.3, 1.5, size=components)
    x = centres[labels] + rng.normal(size=(n, d)) * scales[labels, None]
    return x.astype(np.float32)


def dataset_of(x: np.ndarray) -> Dataset:
    return add_column(Dataset.from_dict({"idx": np.arange(len(x))}), "emb", x)


def mean_nearest_distance(x: np.ndarray, kept: np.ndarray) -> float:
    squared, _ = knn(x[kept], 1, metric="l2", queries=x, exclude_self=False)
    return float(np.sqrt(np.maximum(squared[:, 0].astype(np.float64), 0)).mean())


def clock(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def try_peer(name, fn, results, key):
    try:
        seconds, picks = clock(fn)
        results[key][name] = {"seconds": seconds, "picks": np.asarray(picks, dtype=np.int64)}
    except Exception as error:  # a peer that is missing or breaks is reported, not fatal
        results[key][name] = {"error": f"{type(error).__name__}: {error}"}


# --- peers -------------------------------------------------------------------------------------------


def apricot_facility_location(W, budget):
    from apricot import FacilityLocationSelection

    return FacilityLocationSelection(budget, metric="precomputed", optimizer="lazy").fit(W).ranking


def apricot_graph_cut(W, budget, lam):
    from apricot import GraphCutSelection

    return GraphCutSelection(budget, metric="precomputed", alpha=1.0 / lam, optimizer="lazy").fit(W).ranking


def _submodlib_picks(obj, budget, optimizer):
    picks = obj.maximize(budget=budget, optimizer=optimizer, stopIfZeroGain=False, stopIfNegativeGain=False,
                         verbose=False, show_progress=False)
    return [i for i, _ in picks]


def submodlib_facility_location(W, budget, k):
    from submodlib import FacilityLocationFunction

    obj = FacilityLocationFunction(n=W.shape[0], mode="sparse", sijs=W, num_neighbors=k)
    return _submodlib_picks(obj, budget, "LazyGreedy")


def submodlib_graph_cut(W, budget, lam, k):
    from submodlib import GraphCutFunction

    obj = GraphCutFunction(n=W.shape[0], mode="sparse", lambdaVal=lam, ggsijs=W, num_neighbors=k)
    return _submodlib_picks(obj, budget, "LazyGreedy")


def submodlib_dense(kind, S, budget):
    import submodlib

    n = S.shape[0]
    if kind == "log_determinant":
        obj = submodlib.LogDeterminantFunction(n=n, mode="dense", lambdaVal=1.0, sijs=S)
        return _submodlib_picks(obj, budget, "LazyGreedy")
    cls = submodlib.DisparitySumFunction if kind == "disparity_sum" else submodlib.DisparityMinFunction
    return _submodlib_picks(cls(n=n, mode="dense", sijs=S), budget, "NaiveGreedy")


# --- runs --------------------------------------------------------------------------------------------


def run_graph_functions(args, n: int) -> dict:
    x = gaussian_mixture(n, args.dim, args.components, args.seed)
    budget = max(1, round(args.fraction * n))
    knn_index = "ivf" if n > args.ivf_above else "exact"
    graph_seconds, W = clock(lambda: similarity_graph(x, metric="l2", k=args.k, knn_index=knn_index))
    out = {"rows": n, "budget": budget, "knn_index": knn_index, "graph_seconds": graph_seconds, "nnz": int(W.nnz)}
    results = {"facility_location": {}, "graph_cut": {}}
    ds = dataset_of(x)
    lam = args.lambda_val

    try_peer("hf_prune order", lambda: facility_location_order(W, budget), results, "facility_location")
    try_peer("hf_prune selector", lambda: _kept(hp.select.facility_location(
        ds, size=budget, metric="l2", k=args.k, knn_index=knn_index)), results, "facility_location")
    try_peer("hf_prune order", lambda: graph_cut_order(W, budget, lambdaVal=lam), results, "graph_cut")
    try_peer("hf_prune selector", lambda: _kept(hp.select.graph_cut(
        ds, size=budget, metric="l2", k=args.k, knn_index=knn_index, lambdaVal=lam)), results, "graph_cut")
    if n <= args.peer_max_rows:
        try_peer("apricot", lambda: apricot_facility_location(W, budget), results, "facility_location")
        try_peer("apricot", lambda: apricot_graph_cut(W, budget, lam), results, "graph_cut")
        if n <= args.submodlib_max_rows:
            try_peer("submodlib", lambda: submodlib_facility_location(W, budget, args.k), results,
                     "facility_location")
            try_peer("submodlib", lambda: submodlib_graph_cut(W, budget, lam, args.k), results, "graph_cut")
        else:
            # Sparse mode in submodlib 0.0.3 looks every pair up: a facility-location gain loops over all
            # N rows (get_val per row) and the graph-cut constructor sums the kernel with N² lookups.
            for key in results:
                results[key]["submodlib"] = {"error": f"skipped above {args.submodlib_max_rows} rows: its sparse "
                                             "mode costs O(N) lookups per gain (--submodlib-max-rows)"}

    evaluators = {
        "facility_location": lambda s: facility_location_objective(W, s),
        "graph_cut": lambda s: graph_cut_objective(W, s, lambdaVal=lam),
    }
    reference = {key: results[key]["hf_prune order"].get("picks") for key in results}
    for key, runs in results.items():
        for run in runs.values():
            if "picks" in run:
                run["objective"] = evaluators[key](run["picks"])
                ours = reference[key]
                run["same_set_as_ours"] = bool(ours is not None and set(run["picks"]) == set(ours))
                run["same_order_as_ours"] = bool(ours is not None and np.array_equal(run["picks"], ours))
    out["functions"] = results

    # Mean nearest-kept distance: facility location vs k-center greedy and random, same budget.
    kc_seconds, kc = clock(lambda: _kept(hp.select.k_center_greedy(ds, size=budget, metric="l2", init="first")))
    fl = results["facility_location"]["hf_prune order"]["picks"]
    rng = np.random.default_rng(args.seed)
    random_distances = [mean_nearest_distance(x, rng.choice(n, budget, replace=False))
                        for _ in range(args.random_seeds)]
    out["mean_nearest_distance"] = {
        "facility_location": mean_nearest_distance(x, fl),
        "k_center_greedy": mean_nearest_distance(x, kc),
        "k_center_seconds": kc_seconds,
        "random_mean": float(np.mean(random_distances)),
        "random_std": float(np.std(random_distances)),
    }
    return out


def _kept(sub) -> np.ndarray:
    return np.asarray(sub["row_id"], dtype=np.int64)


def run_dense_functions(args) -> dict:
    n = args.dense_rows
    x = gaussian_mixture(n, args.dim, args.components, args.seed + 1)
    budget = args.dense_budget
    xn = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    S = (xn @ xn.T).astype(np.float32)  # submodlib's dense cosine kernel; its distances are 1 − S
    out = {"rows": n, "budget": budget}
    evaluators = {
        "log_determinant": lambda s: log_determinant_objective(x, s, metric="cosine", regularizer=1.0),
        "disparity_sum": lambda s: disparity_sum_objective(x, s, metric="cosine"),
        "disparity_min": lambda s: disparity_min_objective(x, s, metric="cosine"),
    }
    ours = {
        "log_determinant": lambda: log_determinant_order(x, budget, metric="cosine", regularizer=1.0),
        "disparity_sum": lambda: disparity_order(x, budget, metric="cosine", reduce="sum"),
        "disparity_min": lambda: disparity_order(x, budget, metric="cosine", reduce="min"),
    }
    results = {key: {} for key in evaluators}
    for key in evaluators:
        try_peer("hf_prune order", ours[key], results, key)
        try_peer("submodlib", lambda key=key: submodlib_dense(key, S, budget), results, key)
        reference = results[key]["hf_prune order"]["picks"]
        for run in results[key].values():
            if "picks" in run:
                run["objective"] = evaluators[key](run["picks"])
                run["same_set_as_ours"] = bool(set(run["picks"]) == set(reference))
                run["same_order_as_ours"] = bool(np.array_equal(run["picks"], reference))
    out["functions"] = results
    if args.dense_scale_rows:
        # Ours alone at a size where the peers' dense kernels (N² floats) would not fit.
        big = gaussian_mixture(args.dense_scale_rows, args.dim, args.components, args.seed + 2)
        scale = {"rows": args.dense_scale_rows, "budget": budget}
        for key, fn in (
            ("log_determinant", lambda: log_determinant_order(big, budget, metric="cosine", regularizer=1.0)),
            ("disparity_sum", lambda: disparity_order(big, budget, metric="cosine", reduce="sum")),
            ("disparity_min", lambda: disparity_order(big, budget, metric="cosine", reduce="min")),
        ):
            scale[key] = clock(fn)[0]
        out["ours_at_scale"] = scale
    return out


def versions() -> dict:
    import scipy
    import torch

    found = {"hf_prune": hp.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
             "torch": torch.__version__, "python": platform.python_version()}
    for module, dist in (("apricot", "apricot-select"), ("submodlib", "submodlib-py")):
        try:
            from importlib.metadata import version

            __import__(module)
            found[dist] = version(dist)
        except Exception as error:
            found[dist] = f"unavailable ({type(error).__name__})"
    return found


def report(result: dict) -> None:
    print(f"versions: {result['versions']}")
    for block in result["graph"] + ([result["dense"]] if result["dense"] else []):
        print(f"\nN = {block['rows']}, budget = {block['budget']}"
              + (f", k-NN {block['knn_index']} graph {block['graph_seconds']:.1f}s, nnz {block['nnz']}"
                 if "knn_index" in block else " (dense kernels)"))
        for key, runs in block["functions"].items():
            ours = runs.get("hf_prune order", {})
            for name, run in runs.items():
                if "error" in run:
                    print(f"  {key:18s} {name:18s} error: {run['error'][:160]}")
                    continue
                ratio = run["objective"] / ours["objective"] if ours.get("objective") else float("nan")
                speed = run["seconds"] / ours["seconds"] if ours.get("seconds") else float("nan")
                print(f"  {key:18s} {name:18s} objective {run['objective']:.6g}  (÷ ours {ratio:.6f})  "
                      f"time {run['seconds']:.3f}s (÷ ours {speed:.2f})  same set {run['same_set_as_ours']}")
        if "ours_at_scale" in block:
            scale = block["ours_at_scale"]
            print(f"  hf_prune alone at N = {scale['rows']}, budget = {scale['budget']}: "
                  + ", ".join(f"{key} {scale[key]:.2f}s" for key in ("log_determinant", "disparity_sum",
                                                                      "disparity_min")))
        if "mean_nearest_distance" in block:
            m = block["mean_nearest_distance"]
            fl = m["facility_location"]
            print(f"  mean nearest-kept distance: facility location {fl:.4f}, k-center {m['k_center_greedy']:.4f} "
                  f"(FL {100 * (1 - fl / m['k_center_greedy']):.1f}% lower), random {m['random_mean']:.4f}"
                  f" ± {m['random_std']:.4f} (FL {100 * (1 - fl / m['random_mean']):.1f}% lower)")


def warm_up(args) -> None:
    """Run every method once on a tiny input so imports and numba's compilation stay out of the timings."""
    tiny = argparse.Namespace(**{**vars(args), "dim": 8, "components": 5, "dense_rows": 100, "dense_budget": 5,
                                 "random_seeds": 1, "dense_scale_rows": 0})
    run_graph_functions(tiny, 300)
    run_dense_functions(tiny)


def main(argv=None) -> dict:
    args = make_parser().parse_args(argv)
    result = {"args": vars(args), "versions": versions(), "graph": [], "dense": None}
    warm_up(args)
    for n in args.rows:
        result["graph"].append(run_graph_functions(args, n))
    result["dense"] = None if args.no_dense else run_dense_functions(args)
    report(result)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1, default=lambda v: v.tolist() if isinstance(v, np.ndarray) else str(v))
    return result


if __name__ == "__main__":
    main()
