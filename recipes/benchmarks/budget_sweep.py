"""A budget sweep with the greedy selectors: one ranked run at the largest budget vs one run per budget.

Greedy selectors write their pick order with ``rank_column=``; the first ``b`` picks of a run are the
``size=b`` selection, so a sweep over budgets (or `combine`'s baseline step) needs one run. For each
selector this prints the time of the separate runs, the time of one ranked run, the ratio, and for
which budgets the rows with ``rank < b`` equal the separate ``size=b`` run (they must, except where a
selector documents otherwise: ProbCover fills the budget at random once everything is covered).

Data: a seeded mixture of 50 Gaussians in ``--dim`` dimensions, ``--rows`` rows, a random score.

    python recipes/benchmarks/budget_sweep.py --rows 20000 --dim 32 --budgets 250 500 1000 2000 4000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from datasets import Dataset, Features, Sequence, Value, disable_progress_bars

import hf_prune as hp
from recipes.trainer.config import library_versions

SELECTORS = {
    "k_center_greedy": lambda ds, **kw: hp.select.k_center_greedy(ds, embedding_column="emb", **kw),
    "herding": lambda ds, **kw: hp.select.herding(ds, embedding_column="emb", **kw),
    "gm_matching": lambda ds, **kw: hp.select.gm_matching(ds, embedding_column="emb", **kw),
    "gram_schmidt (deterministic)": lambda ds, **kw: hp.select.gram_schmidt(
        ds, embedding_column="emb", mode="deterministic", **kw),
    "facility_location": lambda ds, **kw: hp.select.facility_location(ds, embedding_column="emb", k=10, **kw),
    "d2_pruning": lambda ds, **kw: hp.select.d2_pruning(ds, embedding_column="emb", score_column="score", k=10, **kw),
    "probcover (delta=0.6)": lambda ds, **kw: hp.select.probcover(ds, embedding_column="emb", delta=0.6, **kw),
}


def mixture(rows: int, dim: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(50, dim))
    emb = (centers[rng.integers(50, size=rows)] + 0.5 * rng.normal(size=(rows, dim))).astype(np.float32)
    features = Features({"emb": Sequence(Value("float32"), length=dim), "score": Value("float32")})
    return Dataset.from_dict({"emb": emb, "score": rng.random(rows).astype(np.float32)}, features=features)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--budgets", type=int, nargs="+", default=[250, 500, 1000, 2000, 4000])
    parser.add_argument("--selectors", nargs="+", default=list(SELECTORS), choices=list(SELECTORS))
    args = parser.parse_args(argv)
    disable_progress_bars()
    print(library_versions())
    ds, budgets = mixture(args.rows, args.dim), sorted(args.budgets)
    print(f"\n{args.rows:,} rows × {args.dim}, budgets {budgets}\n")
    print("| selector | separate runs (s) | one ranked run (s) | ratio | budgets where rank < b equals size=b |")
    print("|---|---|---|---|---|")
    for name in args.selectors:
        run = SELECTORS[name]
        run(ds, size=10, seed=0)  # warm-up: imports, faiss, first allocation
        start = time.perf_counter()
        separate = {b: np.sort(np.asarray(run(ds, size=b, seed=0)["row_id"])) for b in budgets}
        separate_s = time.perf_counter() - start
        start = time.perf_counter()
        ranked = run(ds, size=budgets[-1], seed=0, rank_column="rank")
        ids, rank = np.asarray(ranked["row_id"]), np.asarray(ranked["rank"])
        ranked_s = time.perf_counter() - start
        same = [b for b in budgets if np.array_equal(np.sort(ids[rank < b]), separate[b])]
        print(f"| {name} | {separate_s:.2f} | {ranked_s:.2f} | {separate_s / ranked_s:.1f}× "
              f"| {', '.join(map(str, same)) or 'none'} of {len(budgets)} |", flush=True)


if __name__ == "__main__":
    main()
