"""InfoMax with and without a hard cutoff on sklearn digits: does dropping the hardest rows first
help when the score is hardest-first and the budget is small?

Protocol (offline, CPU, a few minutes), per seed ``s``:

1. ``hp.data.load_digits(seed=s)``: a class-stratified 80/20 split (1,437 train / 360 test rows),
   a different split per seed.
2. Features: raw pixels, ``PixelEmbedder(mode="L")`` (64 values in [0, 1]). They are the probe's
   features and the geometry ``K`` of every InfoMax run (cosine, ``k=5``). With ``--embedding
   randnet`` InfoMax's ``K`` uses a random-init CIFAR ResNet-18 instead (the probe stays on pixels).
3. Score: EL2N (hardest = highest) from the per-epoch dynamics of a proxy, softmax regression on the
   standardised pixels trained for ``--proxy-epochs`` epochs with seed ``s``
   (`recipes.trainer.dynamics.record_proxy_dynamics`, the demo's proxy).
4. Every method keeps each fraction of ``train``; a multinomial logistic regression on the subset's
   pixels (`recipes.trainer.probe.linear_probe_accuracy`) is scored on ``test``.

Methods: random (per class); EL2N top-k (per class); CCS on EL2N (per class, the CCS paper's
cutoff for the pruning rate: 30% at ≤ 10% kept, 10% at 20%, 0 above); InfoMax with the paper's
parameters (``k=5``, ``α=0.3``, ``T=20``) globally (the paper's Alg. 1) and per class, each with
``hard_cutoff`` ∈ ``--cutoffs``. Nothing else is tuned.

Run::

    python recipes/benchmarks/infomax_hard_cutoff.py --seeds 0 1 2 3 4 --output runs/infomax_cutoff.json

It prints a Markdown table (test accuracy %, mean ± sample std over seeds) and writes every
per-seed number to ``--output``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
from datasets import Dataset, disable_progress_bars

import hf_prune as hp
from hf_prune.ops.columns import read_labels, read_vector
from recipes.trainer.config import library_versions, write_json
from recipes.trainer.dynamics import record_proxy_dynamics
from recipes.trainer.metrics import aggregate
from recipes.trainer.probe import linear_probe_accuracy

FRACTIONS = (0.05, 0.1, 0.2)
CUTOFFS = (0.0, 0.1, 0.2, 0.3, 0.5)


def ccs_cutoff(fraction: float) -> float:
    """The CCS paper's hard-cutoff rate for CIFAR-10 by kept fraction (30% at 90% pruning, 10% at 80%)."""
    return 0.3 if fraction <= 0.1 else 0.1 if fraction <= 0.2 else 0.0


def methods(embedding: str, cutoffs) -> dict[str, Callable[[Dataset, float, int], Dataset]]:
    """Name → ``select(train, fraction, seed)``."""
    lab = {"label_column": "label"}
    info = {"score_column": "el2n", "embedding_column": embedding, "k": 5, "alpha": 0.3, "iterations": 20}
    table: dict[str, Callable[[Dataset, float, int], Dataset]] = {
        "random": lambda d, f, s: hp.select.random(d, fraction=f, seed=s, **lab),
        "EL2N (hardest)": lambda d, f, s: hp.select.top_k(d, fraction=f, score_column="el2n", seed=s, **lab),
        "CCS (EL2N)": lambda d, f, s: hp.select.ccs(d, fraction=f, score_column="el2n", hard_cutoff=ccs_cutoff(f),
                                                    seed=s, **lab),
    }
    for where, extra in (("global", {}), ("per class", lab)):
        for cut in cutoffs:
            table[f"InfoMax ({where}, cutoff {cut:g})"] = (
                lambda d, f, s, cut=cut, extra=extra: hp.select.infomax(d, fraction=f, hard_cutoff=cut, seed=s,
                                                                         **info, **extra))
    return table


def prepare(seed: int, embedding: str, proxy_epochs: int) -> tuple[Dataset, Dataset]:
    splits = hp.data.load_digits(seed=seed)
    pixels = hp.embed.PixelEmbedder(image_column="image", output_column="pixels", mode="L")
    train, test = pixels.map(splits["train"]), pixels.map(splits["test"])
    if embedding == "randnet":
        train = hp.embed.RandomNetEmbedder(image_column="image", output_column="randnet", seed=0).map(train)
    train = record_proxy_dynamics(train, embedding_column="pixels", epochs=proxy_epochs, seed=seed)
    return hp.score.el2n(train), test


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    p.add_argument("--cutoffs", type=float, nargs="+", default=list(CUTOFFS), help="InfoMax hard_cutoff values")
    p.add_argument("--embedding", choices=["pixels", "randnet"], default="pixels", help="features of InfoMax's K")
    p.add_argument("--proxy-epochs", type=int, default=15)
    p.add_argument("--output", default=None, help="JSON file for the per-seed numbers")
    args = p.parse_args(argv)
    disable_progress_bars()
    start = time.perf_counter()
    table = methods(args.embedding, args.cutoffs)
    accuracy: dict[str, dict[float, list[float]]] = {name: {f: [] for f in args.fractions} for name in table}
    # Share of each subset among the hardest 10% of its class by EL2N, and its smallest class count.
    hardest: dict[str, dict[float, list[float]]] = {name: {f: [] for f in args.fractions} for name in table}
    smallest: dict[str, dict[float, list[int]]] = {name: {f: [] for f in args.fractions} for name in table}
    full = []
    for seed in args.seeds:
        train, test = prepare(seed, args.embedding, args.proxy_epochs)
        full.append(linear_probe_accuracy(train, test, embedding_column="pixels"))
        el2n, labels = read_vector(train, "el2n"), read_labels(train, "label")
        top_decile = np.zeros(len(train), dtype=bool)
        for c in np.unique(labels):
            rows = np.flatnonzero(labels == c)
            top_decile[rows[np.argsort(-el2n[rows], kind="stable")[: len(rows) // 10]]] = True
        for name, select in table.items():
            for fraction in args.fractions:
                subset = select(train, fraction, seed)
                ids = np.asarray(subset["row_id"])
                accuracy[name][fraction].append(linear_probe_accuracy(subset, test, embedding_column="pixels"))
                hardest[name][fraction].append(float(top_decile[ids].mean()))
                smallest[name][fraction].append(int(np.bincount(labels[ids], minlength=10).min()))
        print(f"seed {seed} done ({time.perf_counter() - start:.0f}s)", flush=True)

    def cell(values, scale=100.0, digits=1):
        a = aggregate(values)
        return f"{a['mean'] * scale:.{digits}f} ± {a['std'] * scale:.{digits}f}"

    header = "| method | " + " | ".join(f"{f:.0%} kept" for f in args.fractions) + " |"
    rule = "|---|" + "---|" * len(args.fractions)
    lines = [f"Linear-probe test accuracy (%) on digits pixels, mean ± std over seeds {args.seeds}; "
             f"full train set {cell(full)}. InfoMax K from `{args.embedding}`.", "", header, rule]
    lines += [f"| {name} | " + " | ".join(cell(per[f]) for f in args.fractions) + " |" for name, per in accuracy.items()]
    lines += ["", "Share of the subset in its class's hardest 10% by EL2N (%) | smallest class count:", "", header, rule]
    lines += [f"| {name} | " + " | ".join(f"{cell(hardest[name][f], digits=0)} \\| {min(smallest[name][f])}"
                                          for f in args.fractions) + " |" for name in table]
    text = "\n".join(lines)
    print(text)
    print(f"\n{time.perf_counter() - start:.0f}s in all", flush=True)
    record = {"args": vars(args), "versions": library_versions(), "full_accuracy": full,
              "accuracy": {n: {str(f): v for f, v in per.items()} for n, per in accuracy.items()},
              "hardest_decile_share": {n: {str(f): v for f, v in per.items()} for n, per in hardest.items()},
              "smallest_class": {n: {str(f): v for f, v in per.items()} for n, per in smallest.items()},
              "seconds": time.perf_counter() - start}
    if args.output:
        write_json(args.output, record)
    return record


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
