"""The demo behind ``hf-prune demo``: every selector, a few budgets, a linear probe each.

Steps, all offline on CPU:
1. load sklearn digits (default) or Fashion-MNIST (Debian's IDX files);
2. features as columns: raw pixels (`PixelEmbedder`) and a random-init network (`RandomNetEmbedder`);
3. training dynamics from a small proxy (softmax regression on pixels) recorded per epoch;
4. scores as columns: DUAL, EL2N, forgetting, AUM, SSP;
5. every selector at each kept fraction and seed, a linear probe on the subset's pixel features,
   test accuracy printed as a table, saved as JSON/Markdown and plotted to PNG.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm

from . import data as hp_data
from . import embed, score, select
from .dynamics import DynamicsRecorder
from .ops.columns import read_labels, read_matrix
from .probe import linear_probe_accuracy

__all__ = ["run_demo", "demo_selectors", "record_proxy_dynamics"]

PROBE = "pixels"  # the probe's features; selectors may look at other columns


def record_proxy_dynamics(
    train: Dataset, *, feature_column: str, label_column: str = "label", epochs: int = 15, seed: int = 0,
    batch_size: int = 128, lr: float = 0.1,
) -> Dataset:
    """Train softmax regression on a feature column, recording the compact dynamics of every row."""
    torch.manual_seed(seed)
    x = torch.from_numpy(np.array(read_matrix(train, feature_column)))  # writable copy
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = torch.from_numpy(read_labels(train, label_column))
    classes = int(y.max()) + 1
    model = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    recorder = DynamicsRecorder(len(train), classes)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for rows in torch.randperm(len(x), generator=generator).split(batch_size):
            logits = model(x[rows])
            loss = torch.nn.functional.cross_entropy(logits, y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            recorder.update(rows, logits, y[rows])
        recorder.end_epoch()
    dynamics = recorder.to_dataset()
    return train.add_column("dynamics", dynamics["dynamics"], feature=dynamics.features["dynamics"])


def demo_selectors(window: int) -> dict[str, Callable[[Dataset, float, int], Dataset]]:
    """Name → ``f(train, fraction, seed)``; per class wherever the method is defined per class."""
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


def _load(dataset: str, max_train_rows: int | None, seed: int):
    loaders = {"digits": hp_data.load_digits, "fashion_mnist": hp_data.load_fashion_mnist}
    splits = loaders[dataset]()
    train, test = splits["train"], splits["test"]
    if max_train_rows and len(train) > max_train_rows:
        train = train.shuffle(seed=seed).select(range(max_train_rows)).flatten_indices()
    return train, test


def _plot(results: dict, fractions: list[float], full_accuracy: float, path: str, title: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    cmap = plt.get_cmap("tab20")
    for i, (name, per_fraction) in enumerate(results.items()):
        means = [np.mean(per_fraction[f]) * 100 for f in fractions]
        stds = [np.std(per_fraction[f]) * 100 for f in fractions]
        style = "-" if name in ("random",) else ("--" if i % 2 else "-")
        ax.errorbar([f * 100 for f in fractions], means, yerr=stds, label=name, color=cmap(i % 20),
                    linestyle=style, marker="o", markersize=3, capsize=2, linewidth=2.5 if name == "random" else 1.2)
    ax.axhline(full_accuracy * 100, color="black", linestyle=":", label="full data")
    ax.set_xscale("log")
    ax.set_xticks([f * 100 for f in fractions], [f"{f:.0%}" for f in fractions])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("kept fraction of the training set")
    ax.set_ylabel("linear-probe test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def run_demo(
    *, dataset: str = "digits", fractions=(0.05, 0.1, 0.2, 0.5), seeds=(0, 1, 2), epochs: int = 15,
    output_dir: str = "demo_output", max_train_rows: int | None = None,
) -> dict:
    """Run the demo; returns ``{selector: {fraction: [accuracy per seed]}}`` and writes
    ``results.json``, ``results.md`` and ``accuracy_vs_fraction.png`` to ``output_dir``."""
    os.makedirs(output_dir, exist_ok=True)
    fractions = sorted(fractions)
    t0 = time.perf_counter()
    train, test = _load(dataset, max_train_rows, seeds[0])
    print(f"{dataset}: {len(train):,} train / {len(test):,} test rows")

    pixels = embed.PixelEmbedder(image_column="image", output_column=PROBE)
    randnet = embed.RandomNetEmbedder(image_column="image", output_column="randnet", seed=0)
    train, test = pixels.map(train), pixels.map(test)
    train = randnet.map(train)

    window = max(2, epochs // 2)
    train = record_proxy_dynamics(train, feature_column=PROBE, epochs=epochs, seed=seeds[0])
    train = score.dual(train, window=window)
    train = score.el2n(train)
    train = score.forgetting(train)
    train = score.aum(train)
    train = score.ssp(train, embedding_column="randnet", n_clusters=10)
    print(f"features, dynamics ({epochs} proxy epochs) and scores ready in {time.perf_counter() - t0:.1f}s")

    full_accuracy = linear_probe_accuracy(train, test, feature_column=PROBE)
    selectors = demo_selectors(window)
    results: dict[str, dict[float, list[float]]] = {name: {f: [] for f in fractions} for name in selectors}
    seconds: dict[str, float] = dict.fromkeys(selectors, 0.0)
    jobs = [(name, f, s) for name in selectors for f in fractions for s in seeds]
    for name, f, s in tqdm(jobs, desc="select + probe"):
        start = time.perf_counter()
        subset = selectors[name](train, f, s)
        seconds[name] += time.perf_counter() - start
        results[name][f].append(linear_probe_accuracy(subset, test, feature_column=PROBE))

    header = "| selector | " + " | ".join(f"{f:.0%}" for f in fractions) + " | select time (s) |"
    lines = [header, "|" + "---|" * (len(fractions) + 2)]
    for name, per_fraction in results.items():
        cells = [f"{np.mean(v) * 100:.1f} ± {np.std(v) * 100:.1f}" for v in per_fraction.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {seconds[name] / len(seeds):.2f} |")
    table = "\n".join(lines)
    summary = (
        f"Linear probe on raw pixels, {dataset}, test accuracy (%) mean ± std over seeds {list(seeds)}; "
        f"full training set: {full_accuracy * 100:.1f}%."
    )
    print(f"\n{summary}\n\n{table}\n")
    with open(os.path.join(output_dir, "results.md"), "w") as fh:
        fh.write(f"{summary}\n\n{table}\n")
    with open(os.path.join(output_dir, "results.json"), "w") as fh:
        json.dump({"dataset": dataset, "full_accuracy": full_accuracy, "seeds": list(seeds),
                   "accuracy": {n: {str(f): v for f, v in r.items()} for n, r in results.items()},
                   "select_seconds": seconds}, fh, indent=2)
    plot_path = os.path.join(output_dir, "accuracy_vs_fraction.png")
    _plot(results, fractions, full_accuracy, plot_path, f"hf_prune demo — {dataset}, linear probe on pixels")
    print(f"wrote {output_dir}/results.md, results.json and {plot_path} ({time.perf_counter() - t0:.0f}s in all)")
    return results
