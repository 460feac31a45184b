"""ProbCover δ-coverage: ``hp.select.probcover`` against scikit-activeml's ``ProbCover``.

Both sides get the same L2-normalised features, the same δ and the same budget, and are scored
by the same function: the fraction of rows within δ of a selected row (ProbCover's objective),
computed in float64. ProbCover's greedy is exact max coverage, so with the same δ-graph both sides
should reach the same coverage (picks may differ only where gains tie: scikit-activeml breaks ties
at random, ours takes the lower row position).

What each side runs:

* ours: ``hp.select.probcover(ds, size=budget, delta=δ, seed=0)`` end to end on a ``Dataset``
  (Arrow read, validation, the exact radius graph, the greedy, ``dataset.select``, provenance).
* scikit-activeml: ``ProbCover(deltas=[δ], random_state=0).query(X, y, batch_size=budget)`` with
  ``X`` the unit rows and ``y`` all missing. A single δ skips its k-means δ search; it then builds
  the dense N×N distance matrix and a dense N×N boolean edge matrix, and recounts every candidate's
  out-degree over that matrix at each step. At N = 100,000 that matrix alone is 40 GB (float32), so
  it runs only up to ``--reference-max-rows`` (20,000 by default); larger N show ``n/a``.

δ: by default scikit-activeml's own rule (its grid 0.2, 0.4, …, 2.0, α = 0.95, k-means with its
default cluster count, 2 when nothing is labelled) on the first ``--delta-rows`` rows, then used at
every N; ``--delta`` overrides it. Each method runs in a fresh process (spawned) whose resident
high-water mark (``VmHWM``) is reset just before the call, so the peak is the call's own; the table
shows it and, in brackets, its growth over the resident size once the features were loaded. Times are wall clock and process CPU seconds (the machine may be
shared: CPU seconds are less sensitive to other load).

Features (``--features``):

* ``fashion_mnist``: the 70,000 Fashion-MNIST images (train + test, read from the IDX files under
  ``/usr/share/datasets/fashion-mnist``), pixels / 255, projected on their top 64 principal
  components, rows in a seeded random order; a size above 70,000 runs on all 70,000 rows.
* ``mixture``: a seeded Gaussian mixture in 64 dimensions, 10 classes × 20 sub-clusters whose
  spreads range from 0.15 to 0.6 (dense and sparse regions), 100,000 rows.

Default (about 5 minutes of CPU, 13 minutes wall on a busy 2-core machine; scikit-activeml peaks near
2.7 GB at 20,000 rows):
    python recipes/benchmarks/probcover_coverage.py --output probcover_coverage.json

Smoke check (seconds):
    python recipes/benchmarks/probcover_coverage.py --sizes 2000 --budget 20 --features mixture

Tie-breaking: the greedy's coverage depends a little on how equal gains are broken. With
``--tie-seeds K`` each method also runs K − 1 more times (scikit-activeml with ``random_state`` 1…K−1,
ours on the rows in K − 1 seeded shuffled orders, since ours takes the lower row position) and the
coverage range is printed:
    python recipes/benchmarks/probcover_coverage.py --features fashion_mnist --delta 0.4 --sizes 5000,20000 \
        --tie-seeds 5

Needs ``pip install scikit-activeml`` for the reference (``--skip-reference`` runs ours alone).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import tempfile
import time
import warnings

import numpy as np

from hf_prune.data.fashion_mnist import DEFAULT_FASHION_MNIST_DIR, read_idx
from hf_prune.ops.knn import normalize_rows
from recipes.trainer.config import library_versions, write_json

MIXTURE_ROWS = 100_000


# ------------------------------------------------------------------------------------------ features


def fashion_mnist_pca(directory: str = DEFAULT_FASHION_MNIST_DIR, dim: int = 64, seed: int = 0) -> np.ndarray:
    """All 70,000 Fashion-MNIST images on their top ``dim`` principal components, rows shuffled."""
    images = [read_idx(os.path.join(directory, f"{s}-images-idx3-ubyte.gz")) for s in ("train", "t10k")]
    x = np.concatenate(images).reshape(-1, 28 * 28).astype(np.float64) / 255.0
    x -= x.mean(0)
    _, vectors = np.linalg.eigh(x.T @ x)
    projected = (x @ vectors[:, ::-1][:, :dim]).astype(np.float32)
    return projected[np.random.default_rng(seed).permutation(len(projected))]


def gaussian_mixture(rows: int = MIXTURE_ROWS, dim: int = 64, seed: int = 0) -> np.ndarray:
    """10 classes × 20 sub-clusters in ``dim`` dimensions, sub-cluster spreads uniform in [0.15, 0.6]."""
    rng = np.random.default_rng(seed)
    classes, subclusters = 10, 20
    class_centres = rng.standard_normal((classes, dim))
    sub_centres = 0.8 * rng.standard_normal((classes, subclusters, dim))
    spread = rng.uniform(0.15, 0.6, (classes, subclusters))
    label, sub = rng.integers(0, classes, rows), rng.integers(0, subclusters, rows)
    noise = rng.standard_normal((rows, dim))
    return (class_centres[label] + sub_centres[label, sub] + spread[label, sub, None] * noise).astype(np.float32)


FEATURES = {"fashion_mnist": fashion_mnist_pca, "mixture": gaussian_mixture}


# ------------------------------------------------------------------------------------------ measuring


def coverage(unit: np.ndarray, picks: np.ndarray, delta: float, chunk: int = 8192) -> tuple[float, float]:
    """Fractions of rows with ``‖x − pick‖ < δ`` and ``≤ δ`` for some pick, in float64."""
    centres = unit[np.asarray(picks)].astype(np.float64)
    strict = np.zeros(len(unit), dtype=bool)
    closed = np.zeros(len(unit), dtype=bool)
    for start in range(0, len(unit), chunk):
        block = unit[start : start + chunk].astype(np.float64)
        sq = (block**2).sum(1)[:, None] - 2 * block @ centres.T + (centres**2).sum(1)[None]
        nearest = np.sqrt(np.maximum(sq.min(1), 0.0))
        strict[start : start + chunk] = nearest < delta
        closed[start : start + chunk] = nearest <= delta
    return float(strict.mean()), float(closed.mean())


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    """Start the resident high-water mark (VmHWM) again from the current size (Linux ``clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _child(method: str, path: str, n: int, budget: int, delta: float, tie_seed: int, queue) -> None:
    """Run one method on the first ``n`` rows of the features at ``path``; report picks, times, memory.

    ``tie_seed`` > 0 changes how ties are broken: scikit-activeml's ``random_state``, and for ours
    (ties to the lower row position) a seeded shuffle of the rows, mapped back.
    """
    try:
        features = np.load(path, mmap_mode="r")[:n]
        order = np.arange(n) if tie_seed == 0 else np.random.default_rng(tie_seed).permutation(n)
        if method == "ours":
            from datasets import Dataset, disable_progress_bars

            import hf_prune as hp
            from hf_prune.ops.columns import add_column

            disable_progress_bars()
            ds = add_column(Dataset.from_dict({"idx": np.arange(n)}), "emb", np.ascontiguousarray(features[order]))

            def run():
                sub = hp.select.probcover(ds, size=budget, embedding_column="emb", delta=delta, seed=0)
                edges = hp.provenance(sub)[-1]["params"].get("graph_edges", [None])[0]
                return order[np.asarray(sub["row_id"])], edges
        else:
            from skactiveml.pool import ProbCover

            unit = normalize_rows(np.asarray(features))

            def run():
                with warnings.catch_warnings():
                    # A single δ skips its purity search, which it then reports as "maximum purity -1".
                    warnings.filterwarnings("ignore", message="The maximum purity")
                    picks = ProbCover(deltas=[delta], random_state=tie_seed).query(
                        unit, np.full(n, np.nan), batch_size=budget
                    )
                return np.asarray(picks), None

        _reset_peak()
        before = _status_bytes("VmRSS")
        wall, cpu = time.perf_counter(), time.process_time()
        picks, edges = run()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        peak = _status_bytes("VmHWM")
        queue.put({"picks": picks, "wall_s": wall, "cpu_s": cpu, "rss_before": before, "peak_rss": peak,
                   "graph_edges": edges})
    except Exception as err:  # reported to the parent, which prints it in the table
        queue.put({"error": f"{type(err).__name__}: {err}"})


def run_isolated(method: str, path: str, n: int, budget: int, delta: float, tie_seed: int, timeout: float) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(method, path, n, budget, delta, tie_seed, queue))
    proc.start()
    try:
        result = queue.get(timeout=timeout)
    except Exception:
        proc.kill()
        result = {"error": f"no result within {timeout:.0f} s"}
    proc.join()
    if "error" not in result and proc.exitcode not in (0, None):
        result = {"error": f"exit code {proc.exitcode}"}
    return result


def reference_delta(unit: np.ndarray) -> float:
    """scikit-activeml's δ: its default grid, α and cluster count (``delta_max_`` after one query)."""
    from skactiveml.pool import ProbCover

    strategy = ProbCover(random_state=0)
    strategy.query(unit, np.full(len(unit), np.nan), batch_size=1)
    return float(strategy.delta_max_)


def versions() -> dict:
    out = library_versions()
    for name in ("faiss", "sklearn", "skactiveml"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "not installed"
    out["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    return out


def gib(x) -> str:
    return "n/a" if x is None else f"{x / 2**30:.2f}"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", default="fashion_mnist,mixture", help="comma list of: " + ", ".join(FEATURES))
    parser.add_argument("--sizes", default="5000,20000,100000", help="row counts (first N rows of the features)")
    parser.add_argument("--budget", type=int, default=100, help="rows selected by each side")
    parser.add_argument("--delta", type=float, default=None, help="δ for every run (default: scikit-activeml's rule)")
    parser.add_argument("--delta-rows", type=int, default=5000, help="rows on which scikit-activeml's δ rule runs")
    parser.add_argument("--reference-max-rows", type=int, default=20_000, help="largest N given to scikit-activeml")
    parser.add_argument("--skip-reference", action="store_true", help="run ours alone (needs --delta)")
    parser.add_argument("--tie-seeds", type=int, default=1,
                        help="runs per method with different tie-breaking (coverage spread shown when > 1)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per run")
    parser.add_argument("--output", default=None, help="write the measurements as JSON here")
    return parser


def main(argv=None) -> None:
    args = make_parser().parse_args(argv)
    if args.skip_reference and args.delta is None:
        raise SystemExit("--skip-reference needs an explicit --delta (the default δ comes from scikit-activeml)")
    sizes = [int(s) for s in args.sizes.split(",")]
    info = versions()
    print("versions:", info, flush=True)
    rows, tmp = [], tempfile.mkdtemp(prefix="probcover_coverage_")
    for name in args.features.split(","):
        features = FEATURES[name]()
        path = os.path.join(tmp, f"{name}.npy")
        np.save(path, features)
        unit = normalize_rows(features)
        delta = args.delta if args.delta is not None else reference_delta(unit[: args.delta_rows])
        print(f"\n{name}: {features.shape[0]:,} rows × {features.shape[1]}, δ = {delta:g}", flush=True)
        for n in sorted({min(n, len(features)) for n in sizes}):  # all rows stand in for a larger N
            row = {"features": name, "rows": n, "dim": features.shape[1], "budget": args.budget, "delta": delta}
            methods = ["ours"] + ([] if args.skip_reference or n > args.reference_max_rows else ["skactiveml"])
            for method in methods:
                result = run_isolated(method, path, n, args.budget, delta, 0, args.timeout)
                if "error" not in result:
                    result["coverage"], result["coverage_closed"] = coverage(unit[:n], result["picks"], delta)
                    result["picks"] = result["picks"].tolist()
                row[method] = result
                print(f"  N={n:,} {method}: " + (result.get("error") or
                      f"coverage {result['coverage']:.4f} (≤δ {result['coverage_closed']:.4f}), "
                      f"{result['wall_s']:.1f} s wall, {result['cpu_s']:.1f} s CPU, peak {gib(result['peak_rss'])} GiB "
                      f"(+{gib(result['peak_rss'] - result['rss_before'])})"), flush=True)
                if args.tie_seeds > 1 and "error" not in result:
                    spread = [result["coverage"]]
                    for tie_seed in range(1, args.tie_seeds):
                        other = run_isolated(method, path, n, args.budget, delta, tie_seed, args.timeout)
                        if "error" in other:
                            raise RuntimeError(f"{method} at N={n} with tie seed {tie_seed}: {other['error']}")
                        spread.append(coverage(unit[:n], other["picks"], delta)[0])
                    result["coverage_by_tie_seed"] = spread
                    print(f"    over {len(spread)} tie-breakings: {min(spread):.4f} – {max(spread):.4f} "
                          f"(mean {np.mean(spread):.4f})", flush=True)
            rows.append(row)
    print("\n" + markdown_table(rows))
    if args.tie_seeds > 1:
        print("\n" + spread_table(rows))
    if args.output:
        write_json(args.output, {"args": vars(args), "versions": info, "rows": rows})


def spread_table(rows: list[dict]) -> str:
    """Coverage min – max (mean) over the tie-breaking seeds, per method."""
    lines = ["| features | N | δ | budget | ours coverage over tie seeds | skactiveml coverage over tie seeds |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        cells = []
        for method in ("ours", "skactiveml"):
            values = r.get(method, {}).get("coverage_by_tie_seed")
            cells.append("n/a" if not values else
                         f"{min(values):.4f} – {max(values):.4f} (mean {np.mean(values):.4f}, {len(values)} runs)")
        lines.append(f"| {r['features']} | {r['rows']:,} | {r['delta']:g} | {r['budget']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    head = ("| features | N | δ | budget | edges | ours coverage | skactiveml coverage | ours/ref | "
            "ours wall (CPU) s | ref wall (CPU) s | ours peak (+) GiB | ref peak (+) GiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ours, ref = r.get("ours", {}), r.get("skactiveml", {})

        def cell(res, key, fmt):
            return res.get("error", "n/a") if not res or "error" in res else fmt(res[key])

        ratio = (f"{ours['coverage'] / ref['coverage']:.4f}" if ref and "error" not in ref and "error" not in ours
                 and ref["coverage"] > 0 else "n/a")
        timing = lambda res: cell(res, "wall_s", lambda _: f"{res['wall_s']:.1f} ({res['cpu_s']:.1f})")  # noqa: E731
        memory = lambda res: cell(res, "peak_rss", lambda _: f"{gib(res['peak_rss'])} (+{gib(res['peak_rss'] - res['rss_before'])})")  # noqa: E731
        edges = ours.get("graph_edges")
        lines.append(
            f"| {r['features']} | {r['rows']:,} | {r['delta']:g} | {r['budget']} | "
            f"{'n/a' if edges is None else f'{edges:,}'} | {cell(ours, 'coverage', '{:.4f}'.format)} | "
            f"{cell(ref, 'coverage', '{:.4f}'.format)} | {ratio} | {timing(ours)} | {timing(ref)} | "
            f"{memory(ours)} | {memory(ref)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
