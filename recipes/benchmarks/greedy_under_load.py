"""Greedy selectors at the memory-bandwidth floor, on an idle and on a loaded CPU, with the thread policy on and off.

Each greedy selector (``k_center_greedy``, ``herding``, ``gm_matching``, ``gram_schmidt``) reads its
features once per pick. Its time per pick is set against the **floor**: one float32 matrix–vector
product over the same N×d rows (NumPy BLAS, the faster of one thread and the default threads in
that condition), the least a pass can cost.

* Time per pick is that of the pick loop each selector runs per group (`greedy_k_center`, `herd`
  — herding's and GM matching's loop, towards the mean or the geometric median —, and
  `gram_schmidt_order` in deterministic mode) on seeded Gaussian blobs, as
  ``(t(k picks) − t(1 pick)) / (k − 1)`` (median of ``--repeats``), so set-up passes (means, norms,
  the geometric median) and fixed costs are not charged to the picks.
* **Load**: a second process runs a busy single-thread BLAS loop (512×512 matrix products) while the
  loaded conditions are timed; the benchmark starts it and stops it (also on an error).
* **Policy**: ``on`` is the library's rule (`hf_prune.ops.threads`: one thread for steps of fewer
  than 4M numbers, the caller's threads otherwise); ``off`` is ``thread_policy(False)``, torch's and
  OpenBLAS's default threads.

Sizes: the headline N = 100,000 × 384 (a step above the rule's threshold, so both policies run the
same threads there) and 10,000 × 384 (a step below it). Ratios printed are from this one run; the
JSON (``--output-dir``/results.json) holds every time. On the 2-core development machine the default
takes a few minutes:

    OMP_NUM_THREADS= python -m recipes.benchmarks.greedy_under_load

(``OMP_NUM_THREADS`` unset, so that ``off`` really is the default thread count.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from datasets import disable_progress_bars

from hf_prune.ops.median import geometric_median
from hf_prune.ops.threads import thread_policy
from hf_prune.select._stream import FeatureRows
from hf_prune.select.gm_matching import herd
from hf_prune.select.gram_schmidt import gram_schmidt_order
from hf_prune.select.k_center import greedy_k_center
from recipes.benchmarks.results_store import save_results

METHODS = ("k_center_greedy", "herding", "gm_matching", "gram_schmidt")
CONDITIONS = ("idle", "loaded")
POLICIES = ("on", "off")
# The competing job: a single-thread BLAS loop, as another user's training or test run would be.
BUSY_LOOP = "import numpy as np\na = np.random.rand(512, 512)\nwhile True:\n    a @ a\n"


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000x384,10000x384", help="comma-separated ROWSxDIM problem sizes")
    p.add_argument("--picks", type=int, default=40, help="picks per timed selection (k)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (the median is kept)")
    p.add_argument("--load-processes", type=int, default=1, help="competing busy BLAS processes when loaded")
    p.add_argument("--output-dir", default="runs/greedy_under_load", help="results.json goes here")
    p.add_argument("--seed", type=int, default=0)
    return p


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        try:
            rows, dim = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"--sizes: {item!r} is not ROWSxDIM") from None
        if rows < 2 or dim < 1:
            raise ValueError(f"--sizes: {item!r} needs at least 2 rows and 1 dimension")
        sizes.append((rows, dim))
    return sizes


def make_pool(rows: int, dim: int, seed: int) -> np.ndarray:
    """Gaussian blobs (20 centres), float32."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(20, dim)).astype(np.float32)
    return centres[rng.integers(20, size=rows)] + rng.standard_normal((rows, dim), dtype=np.float32)


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def floor_ms(x: np.ndarray, repeats: int) -> dict:
    """ms of one float32 matvec over ``x`` with one BLAS thread and with the default threads."""
    from threadpoolctl import threadpool_limits

    v = np.ones(x.shape[1], dtype=np.float32)
    out = np.empty(len(x), dtype=np.float32)
    passes = max(3, int(2e8 // x.size))  # about 0.2 s of passes per measurement on this machine

    def run():
        for _ in range(passes):
            np.dot(x, v, out=out)

    run()  # warm the pages and the BLAS pools
    default = median_seconds(run, repeats) / passes * 1e3
    with threadpool_limits(limits=1):
        single = median_seconds(run, repeats) / passes * 1e3
    return {"default_threads": default, "one_thread": single, "floor": min(default, single)}


def greedy_loop(x: np.ndarray, method: str):
    """``run(k)``: the selector's pick loop for ``k`` picks over ``x``, with its set-up done beforehand.

    The loops are those the public selectors call per group (`greedy_k_center`, `herd`,
    `gram_schmidt_order`, on the rows as `FeatureRows`), so the thread policy applies as it does there;
    the set-up (means, squared norms, the geometric median) is outside the timing.
    """
    rows = FeatureRows(x, device="cpu")
    if method == "k_center_greedy":
        center = rows.mean()
        sq = rows.sq_norms(center)
        return lambda k: greedy_k_center(rows, k, 0, sq=sq, center=center)
    if method in ("herding", "gm_matching"):
        mu = rows.mean() if method == "herding" else torch.from_numpy(geometric_median(rows)[0])
        return lambda k: herd(rows, mu, mu, k)
    return lambda k: gram_schmidt_order(rows, k)  # deterministic: pivoted QR order


def ms_per_pick(loop, picks: int, repeats: int) -> dict:
    """``(t(k picks) − t(1 pick)) / (k − 1)``: what one more pick costs, fixed costs removed (median of repeats)."""
    loop(2)  # first-call costs
    one = median_seconds(lambda: loop(1), repeats)
    many = median_seconds(lambda: loop(picks), repeats)
    return {"seconds_1": one, f"seconds_{picks}": many, "ms_per_pick": max(many - one, 0.0) / (picks - 1) * 1e3}


class CompetingJob:
    """``processes`` busy single-thread BLAS loops, started on entry and always stopped on exit."""

    def __init__(self, processes: int):
        self.processes = processes
        self.children: list[subprocess.Popen] = []

    def __enter__(self):
        # A terminated benchmark stops its competing job too: SIGTERM unwinds through __exit__.
        self._previous_handler = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        for _ in range(self.processes):
            self.children.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP], env=env,
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.3)  # let the loops start
        return self

    def __exit__(self, *exc):
        for child in self.children:
            child.kill()
        for child in self.children:
            child.wait()
        signal.signal(signal.SIGTERM, self._previous_handler)
        return False


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def run(args) -> dict:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; known: {list(METHODS)}")
    if args.picks < 2:
        raise ValueError(f"--picks must be at least 2, got {args.picks}")
    results = {
        "settings": {"sizes": args.sizes, "picks": args.picks, "methods": methods, "repeats": args.repeats,
                     "load_processes": args.load_processes, "seed": args.seed},
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                        "cpus": os.cpu_count(), "torch_default_threads": torch.get_num_threads()},
        "runs": [],
    }
    for rows, dim in parse_sizes(args.sizes):
        x = make_pool(rows, dim, args.seed)
        loops = {method: greedy_loop(x, method) for method in methods}
        for condition in CONDITIONS:
            job = CompetingJob(args.load_processes if condition == "loaded" else 0)
            with job:
                floor = floor_ms(x, args.repeats)
                floor["load_average_1min"] = os.getloadavg()[0]  # other users' work counts as load too
                print(f"{rows}×{dim} {condition}: floor {floor['floor']:.2f} ms per pass "
                      f"(1 thread {floor['one_thread']:.2f}, default {floor['default_threads']:.2f}; "
                      f"load average {floor['load_average_1min']:.1f})", flush=True)
                for method in methods:
                    for policy in POLICIES:
                        with thread_policy(policy == "on"):
                            timing = ms_per_pick(loops[method], args.picks, args.repeats)
                        record = {"rows": rows, "dim": dim, "condition": condition, "policy": policy,
                                  "method": method, **timing, "floor_ms": floor["floor"], "floor": floor,
                                  "ratio_to_floor": timing["ms_per_pick"] / floor["floor"]}
                        results["runs"].append(record)
                        print(f"  {method:16s} policy {policy:3s}: {timing['ms_per_pick']:8.2f} ms/pick "
                              f"= {record['ratio_to_floor']:5.2f}× floor", flush=True)
    return results


def markdown_table(results: dict) -> str:
    """ms per pick and its ratio to the floor, one row per size × method, columns condition × policy."""
    runs = results["runs"]
    keys = sorted({(r["rows"], r["dim"], r["method"]) for r in runs}, key=lambda k: (-k[0] * k[1], k[2]))
    head = "| N × d | method | " + " | ".join(f"{c}, policy {p}" for c in CONDITIONS for p in POLICIES) + " |"
    lines = [head, "|" + "---|" * (2 + len(CONDITIONS) * len(POLICIES))]
    floors = {}
    for rows, dim, method in keys:
        cells = []
        for condition in CONDITIONS:
            for policy in POLICIES:
                match = [r for r in runs if (r["rows"], r["dim"], r["method"], r["condition"], r["policy"])
                         == (rows, dim, method, condition, policy)]
                if match:
                    r = match[0]
                    floors[(rows, dim, condition)] = r["floor_ms"]
                    cells.append(f"{r['ms_per_pick']:.2f} ms ({r['ratio_to_floor']:.1f}×)")
                else:
                    cells.append("—")
        lines.append(f"| {rows:,} × {dim} | {method} | " + " | ".join(cells) + " |")
    floor_line = "; ".join(f"{rows:,} × {dim} {condition}: {ms:.2f} ms" for (rows, dim, condition), ms in floors.items())
    return "\n".join(lines) + f"\n\nFloor (one float32 matvec over the rows): {floor_line}."


def main(argv=None) -> dict:
    args = make_parser().parse_args(argv)
    disable_progress_bars()
    results = run(args)
    table = markdown_table(results)
    results["table"] = table
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_results(out, results)
    print("\n" + table)
    print(f"\nwrote {out / 'results.json'}")
    return json.loads(json.dumps(results))


if __name__ == "__main__":
    main()
