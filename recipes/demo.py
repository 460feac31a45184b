"""The demo (``bash scripts/dev.sh demo``, ``hf-prune-demo``, ``python -m recipes.demo``): every selector,
a few budgets, a linear probe each.

Steps, all offline on CPU:
1. load sklearn digits (default) or Fashion-MNIST (Debian's IDX files);
2. features as columns: raw pixels (`PixelEmbedder`) and a random-init network (`RandomNetEmbedder`);
3. training dynamics from a small proxy (softmax regression on pixels) recorded per epoch
   (`recipes.trainer.dynamics.record_proxy_dynamics`);
4. scores as columns: DUAL, EL2N, forgetting, AUM, SSP;
5. every selector at each kept fraction and seed, a linear probe on the subset's pixel features,
   test accuracy printed as a table, saved as JSON/Markdown and plotted to PNG (one panel per
   selector family, random on each).

The progress bar names the selector, budget and seed it is on. The arrays are small (hundreds to
thousands of rows, 64 pixel features), so the demo runs torch, BLAS and OpenMP on one thread
(``threads=1``): with the libraries' default of a thread per core, their threads spin waiting on each
other whenever other jobs share the CPU (on a busy 2-core machine one probe fit took 4–6 s on two
threads and 0.1–0.2 s on one).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from datasets import Dataset
from tqdm.auto import tqdm

from hf_prune import data as hp_data
from hf_prune import embed, score, select
from hf_prune.ops.checks import check_positive_int
from hf_prune.ops.columns import read_labels, read_matrix
from recipes.trainer.dynamics import record_proxy_dynamics
from recipes.trainer.probe import LinearProbe

__all__ = ["main", "make_parser", "run_demo", "demo_selectors", "record_proxy_dynamics", "plot_results", "DEMO_FAMILIES"]

PROBE = "pixels"  # the probe's features; selectors may look at other columns
REFERENCE = "random"  # drawn on every panel of the figure

#: Panels of the demo's figure: the four seeds' methods split into score- and geometry-based ones,
#: then the baselines they compare against. `random` is not listed: every panel shows it.
DEMO_FAMILIES: dict[str, list[str]] = {
    "seed methods: scores": ["DUAL", "DUAL+β", "InfoMax (DUAL)", "InfoMax (SSP)"],
    "seed methods: geometry": ["GM matching", "norm", "Gram–Schmidt", "ProbCover+Norm"],
    "score baselines": ["EL2N (hard)", "forgetting", "AUM (low)", "CCS (EL2N)", "D² (EL2N)"],
    "coverage and geometry baselines": [
        "herding", "Moderate", "k-center", "TypiClust", "ProbCover", "facility location",
    ],
}
SAME_ROWS_MARK = "†"


def demo_selectors(window: int) -> dict[str, Callable[[Dataset, float, int], Dataset]]:
    """Name → ``f(train, fraction, seed)``; per class wherever the method is defined per class.

    ``window`` is the DUAL window (in proxy epochs). The train set needs the columns the demo builds:
    ``pixels``, ``randnet``, ``dynamics``, ``label`` and the ``dual``/``el2n``/``forgetting``/``aum``/``ssp``
    scores.

    Example:
        >>> subset = demo_selectors(window=7)["GM matching"](train, 0.1, 0)
    """
    lab = {"label_column": "label"}
    rnd = "randnet"
    return {
        "random": lambda d, f, s: select.random(d, fraction=f, seed=s, **lab),
        "EL2N (hard)": lambda d, f, s: select.top_k(d, fraction=f, score_column="el2n", seed=s, **lab),
        "forgetting": lambda d, f, s: select.top_k(d, fraction=f, score_column="forgetting", seed=s, **lab),
        "AUM (low)": lambda d, f, s: select.top_k(d, fraction=f, score_column="aum", descending=False, seed=s, **lab),
        "DUAL": lambda d, f, s: select.dual(d, fraction=f, window=window, seed=s, **lab),
        "DUAL+β": lambda d, f, s: select.dual_beta(d, fraction=f, window=window, seed=s, **lab),
        "CCS (EL2N)": lambda d, f, s: select.ccs(d, fraction=f, score_column="el2n", hard_cutoff=0.1 if f < 0.3 else 0.0, seed=s, **lab),
        "D² (EL2N)": lambda d, f, s: select.d2_pruning(d, fraction=f, score_column="el2n", embedding_column=rnd, seed=s, **lab),
        "Moderate": lambda d, f, s: select.moderate(d, fraction=f, embedding_column=rnd, seed=s, **lab),
        "k-center": lambda d, f, s: select.k_center_greedy(d, fraction=f, embedding_column=rnd, seed=s, **lab),
        "facility location": lambda d, f, s: select.facility_location(d, fraction=f, embedding_column=rnd, seed=s, **lab),
        "herding": lambda d, f, s: select.herding(d, fraction=f, embedding_column=rnd, seed=s, **lab),
        "GM matching": lambda d, f, s: select.gm_matching(d, fraction=f, embedding_column=rnd, seed=s, **lab),
        "InfoMax (DUAL)": lambda d, f, s: select.infomax(d, fraction=f, score_column="dual", embedding_column=rnd, seed=s),
        "InfoMax (SSP)": lambda d, f, s: select.infomax(d, fraction=f, score_column="ssp", embedding_column=rnd, seed=s),
        "norm": lambda d, f, s: select.norm_sampling(d, fraction=f, embedding_column=rnd, seed=s, **lab),
        "Gram–Schmidt": lambda d, f, s: select.gram_schmidt(d, fraction=f, embedding_column=rnd, seed=s, **lab),
        "TypiClust": lambda d, f, s: select.typiclust(d, fraction=f, embedding_column=rnd, seed=s),
        "ProbCover": lambda d, f, s: select.probcover(d, fraction=f, embedding_column=rnd, seed=s),
        "ProbCover+Norm": lambda d, f, s: select.combine(
            d, baseline="probcover", then="norm", fraction=f, seed=s,
            baseline_kwargs={"embedding_column": rnd}, then_kwargs={"embedding_column": rnd},
        ),
    }


_LOADERS = {"digits": hp_data.load_digits, "fashion_mnist": hp_data.load_fashion_mnist}


def _load(dataset: str, max_train_rows: int | None, seed: int):
    splits = _LOADERS[dataset]()
    train, test = splits["train"], splits["test"]
    if max_train_rows and len(train) > max_train_rows:
        train = train.shuffle(seed=seed).select(range(max_train_rows)).flatten_indices()
    return train, test


@contextlib.contextmanager
def _thread_limit(threads: int | None) -> Iterator[None]:
    """Cap torch, BLAS and OpenMP (faiss's too) at ``threads`` inside the block; restore them after."""
    if threads is None:
        yield
        return
    # Load sklearn's pools first: threadpoolctl only reaches the ones already loaded.
    import sklearn.linear_model  # noqa: F401

    from hf_prune.ops.threads import held_threads

    with held_threads(threads):
        yield


def _cell(values: list[float], same_rows: bool) -> str:
    mean = np.mean(values) * 100
    if len(values) == 1:
        return f"{mean:.1f}"
    if same_rows:
        return f"{mean:.1f} {SAME_ROWS_MARK}"
    return f"{mean:.1f} ± {np.std(values) * 100:.1f}"


def _table(results: dict, fractions: list[float], seeds: Sequence[int], seconds: dict, same_rows: dict) -> str:
    header = "| selector | " + " | ".join(f"{f:.0%}" for f in fractions) + " | select time per seed (s) |"
    lines = [header, "|" + "---|" * (len(fractions) + 2)]
    for name, per_fraction in results.items():
        cells = [_cell(per_fraction[f], same_rows[name][f]) for f in fractions]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {seconds[name] / len(seeds):.2f} |")
    return "\n".join(lines)


def _footnote(seeds: Sequence[int], same_rows: dict) -> str:
    if len(seeds) == 1:
        return "One seed, so no spread is shown."
    note = (
        f"± is the standard deviation over the {len(seeds)} seeds. The probe is deterministic (the same rows "
        "give the same accuracy), so the spread comes from the selection alone; a ± 0.0 is a spread "
        "below 0.05 points."
    )
    marked = [name for name, per_fraction in same_rows.items() if any(per_fraction.values())]
    if marked:
        note = (
            f"{SAME_ROWS_MARK} every seed selected exactly the same rows at this budget (the selector draws "
            "nothing at random here, or its seed only breaks ties), so there is no spread to show: "
            f"{', '.join(marked)}. " + note
        )
    return note


def _series(per_fraction: dict, fractions: list[float]) -> tuple[list[float], list[float], list[float]]:
    x = [f * 100 for f in fractions]
    means = [float(np.mean(per_fraction[f])) * 100 for f in fractions]
    stds = [float(np.std(per_fraction[f])) * 100 for f in fractions]
    return x, means, stds


def plot_results(
    results: dict[str, dict[float, list[float]]], fractions: Sequence[float], full_accuracy: float, path: str,
    title: str, *, families: dict[str, list[str]] | None = None, same_rows: dict | None = None,
):
    """Plot accuracy vs kept fraction as small multiples: one panel per selector family, with
    `random` (mean and ± std band) and the full-data accuracy drawn on every panel as the reference.

    Selectors of ``results`` that no family lists get an ``other`` panel. Series whose rows were the
    same for every seed at every budget (``same_rows[name][fraction]`` all true) get a ``†`` in the legend.
    Saves a PNG to ``path`` and returns the matplotlib ``Figure``.

    Example:
        >>> fig = plot_results(results, [0.1, 0.5], 0.97, "accuracy.png", "digits")
        >>> [ax.get_title() for ax in fig.axes]
        ['seed methods: scores', ...]
    """
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = sorted(fractions)
    families = DEMO_FAMILIES if families is None else families
    same_rows = same_rows or {}
    panels = {family: [n for n in names if n in results and n != REFERENCE] for family, names in families.items()}
    panels = {family: names for family, names in panels.items() if names}
    listed = {n for names in panels.values() for n in names}
    other = [n for n in results if n not in listed and n != REFERENCE]
    if other:
        panels["other"] = other
    if not panels:
        panels = {REFERENCE: []}
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 4.4 * nrows), sharex=True, sharey=True, squeeze=False)
    colors = plt.get_cmap("tab10").colors
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    for ax, (family, names) in zip(axes.flat, panels.items()):
        if REFERENCE in results:
            x, mean, std = _series(results[REFERENCE], fractions)
            ax.plot(x, mean, color="0.2", linewidth=2.4, label=f"{REFERENCE} (reference)", zorder=3)
            ax.fill_between(x, np.subtract(mean, std), np.add(mean, std), color="0.2", alpha=0.15, linewidth=0)
        ax.axhline(full_accuracy * 100, color="0.4", linestyle=":", linewidth=1.2,
                   label=f"full data ({full_accuracy:.1%})")
        for i, name in enumerate(names):
            x, mean, std = _series(results[name], fractions)
            fixed = bool(same_rows.get(name)) and all(same_rows[name].get(f, False) for f in fractions)
            ax.errorbar(x, mean, yerr=std, color=colors[i % len(colors)], marker=markers[i % len(markers)],
                        markersize=5, capsize=3, linewidth=1.6, label=name + (f" {SAME_ROWS_MARK}" if fixed else ""))
        ax.set_title(family, fontsize=11)
        ax.set_xscale("log")
        ax.set_xticks([f * 100 for f in fractions], [f"{f:.0%}" for f in fractions])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right", framealpha=0.9)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("kept fraction of the training set")
        ax.xaxis.set_tick_params(labelbottom=True)
    for ax in axes[:, 0]:
        ax.set_ylabel("linear-probe test accuracy (%)")
    fig.suptitle(title, fontsize=13)
    fig.text(0.5, 0.005, f"error bars and band: ± std over seeds; {SAME_ROWS_MARK} = same rows for every seed "
             "(no spread)", ha="center", fontsize=9, color="0.3")
    fig.tight_layout(rect=(0, 0.025, 1, 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return fig


def run_demo(
    *, dataset: str = "digits", fractions=(0.05, 0.1, 0.2, 0.5), seeds=(0, 1, 2), epochs: int = 15,
    output_dir: str = "demo_output", max_train_rows: int | None = None, selectors: Sequence[str] | None = None,
    threads: int | None = 1,
) -> dict:
    """Run the demo; returns ``{selector: {fraction: [accuracy per seed]}}`` and writes
    ``results.json``, ``results.md`` and ``accuracy_vs_fraction.png`` to ``output_dir``.

    Args:
        dataset: ``"digits"`` (sklearn, 1,438 train rows) or ``"fashion_mnist"`` (Debian's IDX files).
        fractions: kept fractions to evaluate.
        seeds: one selection (and probe) per seed; deterministic selectors give the same rows for each.
        epochs: epochs of the proxy model that records training dynamics.
        output_dir: where the table, JSON and figure go.
        max_train_rows: subsample the training split first (seeded by the first seed).
        selectors: names from `demo_selectors` to run (default: all of them).
        threads: threads for torch, BLAS and OpenMP during the demo (restored afterwards); ``None``
            leaves the libraries' own settings. One thread keeps the demo fast on a shared CPU.

    Example:
        >>> results = run_demo(fractions=(0.1, 0.5), seeds=(0, 1), selectors=["random", "GM matching"])
        >>> results["GM matching"][0.1]  # one test accuracy per seed
    """
    if dataset not in _LOADERS:
        raise ValueError(f"`dataset` must be one of {sorted(_LOADERS)}, got {dataset!r}")
    if threads is not None:
        threads = check_positive_int("threads", threads)
    fractions = sorted(float(f) for f in fractions)
    seeds = list(seeds)
    if not fractions:
        raise ValueError("`fractions` must name at least one kept fraction")
    if not seeds:
        raise ValueError("`seeds` must name at least one seed")
    all_selectors = demo_selectors(max(2, epochs // 2))
    names = list(all_selectors) if selectors is None else list(dict.fromkeys(selectors))
    unknown = [n for n in names if n not in all_selectors]
    if unknown:
        raise KeyError(f"`selectors`: unknown {unknown}; available: {list(all_selectors)}")
    if not names:
        raise ValueError("`selectors` must name at least one selector")
    with _thread_limit(threads):
        return _run(dataset, fractions, seeds, epochs, output_dir, max_train_rows, names, threads)


def _run(dataset, fractions, seeds, epochs, output_dir, max_train_rows, names, threads) -> dict:
    os.makedirs(output_dir, exist_ok=True)
    t0 = time.perf_counter()
    train, test = _load(dataset, max_train_rows, seeds[0])
    print(f"{dataset}: {len(train):,} train / {len(test):,} test rows")

    pixels = embed.PixelEmbedder(image_column="image", output_column=PROBE)
    randnet = embed.RandomNetEmbedder(image_column="image", output_column="randnet", seed=0)
    train, test = pixels.map(train), pixels.map(test)
    train = randnet.map(train)

    window = max(2, epochs // 2)
    train = record_proxy_dynamics(train, embedding_column=PROBE, epochs=epochs, seed=seeds[0])
    train = score.dual(train, window=window)
    train = score.el2n(train)
    train = score.forgetting(train)
    train = score.aum(train)
    train = score.ssp(train, embedding_column="randnet", n_clusters=10)
    print(f"features, dynamics ({epochs} proxy epochs) and scores ready in {time.perf_counter() - t0:.1f}s")

    probe = LinearProbe(test, embedding_column=PROBE)
    # The train set is built above without a `row_id`, so a subset's `row_id`s are positions in it.
    train_x, train_y = read_matrix(train, PROBE), read_labels(train, "label")
    full_accuracy = probe.accuracy_of(train_x, train_y)
    selectors = demo_selectors(window)
    results: dict[str, dict[float, list[float]]] = {name: {f: [] for f in fractions} for name in names}
    chosen: dict[str, dict[float, set[bytes]]] = {name: {f: set() for f in fractions} for name in names}
    seconds: dict[str, float] = dict.fromkeys(names, 0.0)
    probed: dict[bytes, float] = {}  # the probe is deterministic: the same rows need one fit
    bar = tqdm(total=len(names) * len(fractions) * len(seeds), desc="select + probe", unit="selection")
    for i, name in enumerate(names, 1):
        for f in fractions:
            for s in seeds:
                bar.set_description(f"[{i}/{len(names)}] {name} {f:.0%} seed {s}")
                start = time.perf_counter()
                subset = selectors[name](train, f, s)
                seconds[name] += time.perf_counter() - start
                rows = np.asarray(subset["row_id"], dtype=np.int64)
                key = rows.tobytes()
                if key not in probed:
                    probed[key] = probe.accuracy_of(train_x[rows], train_y[rows])
                results[name][f].append(probed[key])
                chosen[name][f].add(key)
                bar.update()
        cells = ", ".join(f"{f:.0%} {np.mean(results[name][f]) * 100:.1f}" for f in fractions)
        bar.write(f"{name}: accuracy {cells} ({seconds[name] / len(seeds):.2f}s selection per seed)")
    bar.close()
    same_rows = {name: {f: len(seeds) > 1 and len(chosen[name][f]) == 1 for f in fractions} for name in names}

    table = _table(results, fractions, seeds, seconds, same_rows)
    summary = (
        f"Linear probe on raw pixels, {dataset}, test accuracy (%) mean ± std over seeds {seeds}; "
        f"full training set: {full_accuracy * 100:.1f}%. Select time: seconds per seed, all budgets together."
    )
    footnote = _footnote(seeds, same_rows)
    print(f"\n{summary}\n\n{table}\n\n{footnote}\n")
    with open(os.path.join(output_dir, "results.md"), "w") as fh:
        fh.write(f"{summary}\n\n{table}\n\n{footnote}\n")
    plot_path = os.path.join(output_dir, "accuracy_vs_fraction.png")
    plot_results(results, fractions, full_accuracy, plot_path,
                 f"hf_prune demo — {dataset}, linear probe on pixels", same_rows=same_rows)
    with open(os.path.join(output_dir, "results.json"), "w") as fh:
        json.dump({"dataset": dataset, "full_accuracy": full_accuracy, "seeds": seeds, "fractions": fractions,
                   "accuracy": {n: {str(f): v for f, v in r.items()} for n, r in results.items()},
                   "same_rows_for_every_seed": {n: {str(f): v for f, v in r.items()} for n, r in same_rows.items()},
                   "select_seconds": seconds, "threads": threads,
                   "total_seconds": time.perf_counter() - t0}, fh, indent=2)
    print(f"wrote {output_dir}/results.md, results.json and {plot_path} ({time.perf_counter() - t0:.0f}s in all)")
    return results


def make_parser() -> argparse.ArgumentParser:
    """The demo's options (``--help``); `main` passes them to `run_demo`."""
    parser = argparse.ArgumentParser(
        prog="hf-prune-demo", description="Run every selector on a small offline dataset and compare linear probes."
    )
    parser.add_argument("--dataset", default="digits", choices=["digits", "fashion_mnist"])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15, help="epochs of the proxy model that records dynamics")
    parser.add_argument("--max-train-rows", type=int, default=None, help="subsample the training split first")
    parser.add_argument("--output-dir", default="demo_output")
    parser.add_argument("--selectors", nargs="+", default=None, help="demo selector names to run (default: all)")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="threads for torch/BLAS/OpenMP during the demo (0: the libraries' defaults); one stays fast on a shared CPU",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the demo from command-line options; bad options end with ``hf-prune-demo: error: ...`` and 2.

    Example:
        >>> main(["--fractions", "0.1", "--seeds", "0", "--selectors", "random", "GM matching"])
        0
    """
    args = make_parser().parse_args(argv)
    try:
        run_demo(
            dataset=args.dataset, fractions=args.fractions, output_dir=args.output_dir, seeds=args.seeds,
            epochs=args.epochs, max_train_rows=args.max_train_rows, selectors=args.selectors,
            threads=args.threads or None,
        )
    except (KeyError, ValueError, OSError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err  # no repr quotes
        print(f"hf-prune-demo: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
