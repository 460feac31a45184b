"""Reproduce the seeds' headline comparisons on Fashion-MNIST: train on a subset chosen by each
selector, compare test accuracy across kept fractions, under label noise and image corruption, and
at tiny budgets with a linear probe.

Protocol (per scenario and seed, everything through the public API and the classification recipe):

1. Pool: a class-stratified sample of ``--pool-size`` rows of the Fashion-MNIST train split (fixed,
   seed 0), and a stratified ``--test-size`` sample of the test split. Scenarios ``label_noise`` and ``corruption`` corrupt 20% of
   the pool (symmetric label noise, DUAL App. B.1; the GM seed's five image corruptions) with
   `hf_prune.corrupt`, which flags the corrupted rows.
2. Full run: ``recipes/image_classification.py`` on the whole pool with ``--record_dynamics`` (the
   proxy/surrogate model of the seeds). Its dynamics give EL2N, forgetting, AUM, entropy, Dyn-Unc and
   DUAL; its penultimate features (``proxy``) serve the geometry-based methods (Moderate, D², herding,
   GM matching, supervised InfoMax, norm sampling, Gram–Schmidt), as in the seeds' supervised setting.
   A randomly initialised CIFAR ResNet-18 (``randnet``, the GS seed's Fig. 4a) gives the unsupervised
   features: SSP scores and unsupervised InfoMax.
3. Every method selects a subset (per class wherever the method is defined per class; InfoMax, as in
   its paper, globally), and the same recipe trains a fresh model on it (equal epochs, DUAL's
   batch-size-by-pruning-ratio rule, same seed). Test top-1 accuracy and the fraction of corrupted
   rows kept are recorded.
4. Tiny budgets (GS seed, Table 1 style): b..6b examples with b = 10 classes, chosen from the clean
   pool without labels on ``randnet`` features, scored by a linear probe on those frozen features.

Parameters come from the papers, scaled only where the schedule forces it: DUAL uses the first
``ceil(E/2)`` of ``E`` recorded epochs (the seed uses T=30 of 200, which at our E would be shorter than
its window), window ``J = max(2, T//2)``, ``c_D = 5.5`` (its CIFAR-10 value) and ``C = 15``; Dyn-Unc
uses all epochs with the same window; CCS uses AUM with the CCS paper's CIFAR-10 hard-cutoff rates; D²
uses forgetting scores with ``k=10``, ``γ=1``; InfoMax ``k=5``, ``α=0.3``, ``T=20`` iterations. The
``InfoMax (…, cutoff)`` rows add `hf_prune.select.infomax`'s ``hard_cutoff`` with the same CCS rates.
Nothing is tuned per method.

Selection cost: for each method, the seconds of its own scoring (features, k-means, dynamics
statistics) and selection, plus the share of the full training run it needs (the dynamics methods
need the recorded epochs; DUAL only the first T), reported relative to one full training run, as the
DUAL seed does.

Default (CPU: 2,000-row pool, 2,000 test rows, small CNN, 8 epochs, 3 seeds; run the seeds in
parallel processes and merge; results are cached per run, so rerunning resumes)::

    python recipes/benchmarks/reproduce_fashion_mnist.py --threads 1 --seeds 0 1 --output-dir runs/fm01 &
    python recipes/benchmarks/reproduce_fashion_mnist.py --threads 1 --seeds 2 --scenarios clean \
        label_noise corruption --output-dir runs/fm2
    python recipes/benchmarks/reproduce_fashion_mnist.py --report-only --output-dir runs/fm01 --merge-from runs/fm2

A GPU-sized run (whole train split, ResNet-18, longer schedule)::

    python recipes/benchmarks/reproduce_fashion_mnist.py --pool-size 60000 --test-size 10000 --model resnet18 \\
        --epochs 40 --seeds 0 1 2 --output-dir runs/reproduce_fmnist_gpu

``--report-only`` rebuilds tables and plots from the cached runs. The Markdown report is written to
``<output-dir>/report.md`` and the plot to ``<output-dir>/accuracy_vs_fraction.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict, disable_progress_bars, load_from_disk

import hf_prune as hp
from hf_prune.ops.columns import add_column, read_labels, read_vector
from recipes import image_classification as recipe
from recipes.benchmarks.reporting import group_by_method, mean_std_table, save_with_shared_legend
from recipes.benchmarks.results_store import load_results, run_slug, save_results
from recipes.trainer.checkpoints import complete_checkpoints
from recipes.trainer.config import run_metadata, write_json
from recipes.trainer.metrics import aggregate, timed
from recipes.trainer.probe import linear_probe_accuracy

CLEAN_FRACTIONS = (0.7, 0.5, 0.3, 0.2, 0.1)
NOISE_FRACTIONS = (0.3, 0.2, 0.1)
CORRUPTION_FRACTIONS = (0.3, 0.2)
TINY_BUDGETS = (10, 20, 30, 40, 50, 60)
# CCS paper, CIFAR-10: hard-cutoff rate β by pruning rate (30/50/70/80/90%).
CCS_CUTOFF = {0.7: 0.0, 0.5: 0.0, 0.3: 0.1, 0.2: 0.1, 0.1: 0.3}
# DUAL's rule (App.): smaller batches for heavier pruning, so small subsets still take enough steps.
BATCH_BY_RATIO = "0.0:128,0.5:64,0.7:32,0.85:16"
FLAG = {"clean": None, "label_noise": "is_noisy_label", "corruption": "is_corrupted"}


# --------------------------------------------------------------------------------------------- data
def build_pool(out: Path, scenario: str, pool_size: int, test_size: int) -> Path:
    """The scenario's DatasetDict (train = pool, corrupted for noise/corruption; test = a stratified
    ``test_size`` sample of the test split, the same for every scenario)."""
    path = out / scenario / "data"
    if (path / "dataset_dict.json").exists():
        return path
    splits = hp.data.load_fashion_mnist()
    train, test = splits["train"], splits["test"]
    if pool_size < len(train):
        train = hp.select.random(train, size=pool_size, label_column="label", seed=0).remove_columns("row_id")
        train = train.flatten_indices()
    if test_size < len(test):
        test = hp.select.random(test, size=test_size, label_column="label", seed=0).remove_columns("row_id")
        test = test.flatten_indices()
    if scenario == "label_noise":
        train = hp.corrupt.symmetric_label_noise(train, rate=0.2, seed=0)
    elif scenario == "corruption":
        train = hp.corrupt.corrupt_images(train, rate=0.2, seed=0)
    DatasetDict({"train": train, "test": test}).save_to_disk(str(path))
    return path


def recipe_args(data_dir: Path, output_dir: Path, seed: int, args) -> list[str]:
    return [
        "--dataset", str(data_dir), "--model", args.model, "--epochs", str(args.epochs), "--seeds", str(seed),
        "--output_dir", str(output_dir), "--batch_size_by_pruning_ratio", BATCH_BY_RATIO,
        "--learning_rate", str(args.learning_rate), *(["--cpu"] if args.cpu else []),
    ]


def run_recipe(argv: list[str], quiet: bool = True) -> dict:
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        return recipe.main(argv)


# ------------------------------------------------------------------------------- full run and scores
def proxy_features(run_dir: Path, data_dir: Path, args) -> np.ndarray:
    """Penultimate (pooled) features of the full run's final model on the pool images."""
    from safetensors.torch import load_file

    # The full run (`recipe_args`: only --dataset among the data options) decoded the pool in this
    # process; the same data config finds it in the recipe's cache.
    base = recipe.load_base(recipe.DataConfig(dataset=str(data_dir)))
    pixels = base.train_pixels
    checkpoint = complete_checkpoints(run_dir / "checkpoints")[-1]
    backbone = recipe.build_model(args.model, base.num_classes, pixels.shape[1])
    model = recipe.ImageClassifier(backbone, [0.0] * pixels.shape[1], [1.0] * pixels.shape[1])
    model.load_state_dict(load_file(str(checkpoint / "model.safetensors")))
    model.eval()
    # Capture the input of the final linear layer: the features "before the classification layer".
    head = backbone.head if hasattr(backbone, "head") else backbone.linear
    captured = []
    hook = head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach()))
    with torch.inference_mode():
        for start in range(0, len(pixels), 512):
            model(pixels[start : start + 512])
    hook.remove()
    return torch.cat(captured).numpy().astype(np.float32)


def prepare_scored_pool(out: Path, scenario: str, seed: int, args) -> tuple[Dataset, dict]:
    """Full run with dynamics for (scenario, seed), then every score and feature column on the pool."""
    cache = out / scenario / f"scored_seed_{seed}"
    info_path = cache / "cost.json"
    if info_path.exists():
        return load_from_disk(str(cache)), json.loads(info_path.read_text())
    data_dir = build_pool(out, scenario, args.pool_size, args.test_size)
    full_dir = out / scenario / "full"
    argv = recipe_args(data_dir, full_dir, seed, args) + ["--record_dynamics", "--save_total_limit", "1"]
    metrics = run_recipe(argv)  # one seed: its mean is that run's value
    run_dir = full_dir / f"seed_{seed}"
    pool = load_from_disk(str(data_dir))["train"]
    dynamics = load_from_disk(str(run_dir / "dynamics"))
    if not np.array_equal(read_vector(dynamics, "row_id", dtype=np.int64), np.arange(len(pool))):
        raise RuntimeError("the full run's dynamics are not in pool order")
    pool = pool.add_column("dynamics", dynamics["dynamics"], feature=dynamics.features["dynamics"])
    cost: dict[str, float] = {"full_train_s": metrics["train_time_s"]["mean"], "epochs": metrics["epochs"],
                              "full_test_accuracy": metrics["test_accuracy"]["mean"]}
    cost["proxy_features_s"], feats = timed(lambda: proxy_features(run_dir, data_dir, args))
    pool = add_column(pool, "proxy", feats)
    randnet = hp.embed.RandomNetEmbedder(image_column="image", output_column="randnet", seed=0)
    cost["randnet_features_s"], pool = timed(lambda: randnet.map(pool))
    t_dual = max(2, math.ceil(metrics["epochs"] / 2))
    window = max(2, t_dual // 2)
    cost["el2n_s"], pool = timed(lambda: hp.score.el2n(pool))
    cost["forgetting_s"], pool = timed(lambda: hp.score.forgetting(pool))
    cost["aum_s"], pool = timed(lambda: hp.score.aum(pool))
    cost["entropy_s"], pool = timed(lambda: hp.score.entropy(pool))
    cost["dyn_unc_s"], pool = timed(lambda: hp.score.dyn_unc(pool, window=window))
    cost["dual_s"], pool = timed(lambda: hp.score.dual(pool, window=window, epochs=list(range(t_dual))))
    cost["ssp_s"], pool = timed(lambda: hp.score.ssp(pool, embedding_column="randnet", n_clusters=10))
    cost.update(dual_epochs=t_dual, window=window)
    pool.save_to_disk(str(cache))
    write_json(info_path, cost)
    return load_from_disk(str(cache)), cost


# ------------------------------------------------------------------------------------------ methods
def methods(window: int, t_dual: int) -> dict[str, tuple[Callable[[Dataset, float, int], Dataset], str, str | None]]:
    """Name → (``select(pool, fraction, seed)``, what the method needs from the full run, the score whose
    ``<score>_s`` seconds in the cost record count towards its selection cost, or None)."""
    lab = {"label_column": "label"}

    def top(column, descending=True):
        return lambda d, f, s: hp.select.top_k(d, fraction=f, score_column=column, descending=descending, seed=s, **lab)

    return {
        "random": (lambda d, f, s: hp.select.random(d, fraction=f, seed=s, **lab), "none", None),
        "EL2N": (top("el2n"), "dynamics", "el2n"),
        "forgetting": (top("forgetting"), "dynamics", "forgetting"),
        "AUM": (top("aum", descending=False), "dynamics", "aum"),
        "entropy": (top("entropy"), "dynamics", "entropy"),
        "Dyn-Unc": (top("dyn_unc"), "dynamics", "dyn_unc"),
        "DUAL": (lambda d, f, s: hp.select.dual(d, fraction=f, window=window, epochs=list(range(t_dual)), seed=s, **lab),
                 "dual", "dual"),
        "DUAL+β": (lambda d, f, s: hp.select.dual_beta(d, fraction=f, window=window, epochs=list(range(t_dual)), c_d=5.5, seed=s, **lab),
                   "dual", "dual"),
        "CCS": (lambda d, f, s: hp.select.ccs(d, fraction=f, score_column="aum", descending=False,
                                              hard_cutoff=CCS_CUTOFF.get(f, 0.0), seed=s, **lab), "dynamics", "aum"),
        "D²": (lambda d, f, s: hp.select.d2_pruning(d, fraction=f, score_column="forgetting", embedding_column="proxy",
                                                    seed=s, **lab), "dynamics+proxy", "forgetting"),
        "Moderate": (lambda d, f, s: hp.select.moderate(d, fraction=f, embedding_column="proxy", seed=s, **lab), "proxy", None),
        "herding": (lambda d, f, s: hp.select.herding(d, fraction=f, embedding_column="proxy", seed=s, **lab), "proxy", None),
        "GM matching": (lambda d, f, s: hp.select.gm_matching(d, fraction=f, embedding_column="proxy", seed=s, **lab),
                        "proxy", None),
        # The other two geometries of GM matching (the robustness benchmark compares them on synthetic cases).
        "GM matching (cosine)": (lambda d, f, s: hp.select.gm_matching(d, fraction=f, embedding_column="proxy",
                                                                       metric="cosine", seed=s, **lab), "proxy", None),
        "GM matching (cosine, renormalised)": (
            lambda d, f, s: hp.select.gm_matching(d, fraction=f, embedding_column="proxy", metric="cosine",
                                                  renormalize_median=True, seed=s, **lab), "proxy", None),
        "InfoMax (sup.)": (lambda d, f, s: hp.select.infomax(d, fraction=f, score_column="el2n", embedding_column="proxy",
                                                             seed=s), "dynamics+proxy", "el2n"),
        # InfoMax's Alg. 1 is global; per class (same budget split as the others) isolates class balance.
        "InfoMax (sup., per class)": (lambda d, f, s: hp.select.infomax(d, fraction=f, score_column="el2n",
                                                                        embedding_column="proxy", seed=s, **lab),
                                      "dynamics+proxy", "el2n"),
        # The paper's supervised setting with our hard cutoff (CCS's rates by pruning ratio) taken
        # off the EL2N ranking first: globally as Alg. 1, and per class.
        "InfoMax (sup., cutoff)": (lambda d, f, s: hp.select.infomax(d, fraction=f, score_column="el2n",
                                                                     embedding_column="proxy",
                                                                     hard_cutoff=CCS_CUTOFF.get(f, 0.0), seed=s),
                                   "dynamics+proxy", "el2n"),
        "InfoMax (sup., per class, cutoff)": (lambda d, f, s: hp.select.infomax(
            d, fraction=f, score_column="el2n", embedding_column="proxy", hard_cutoff=CCS_CUTOFF.get(f, 0.0),
            seed=s, **lab), "dynamics+proxy", "el2n"),
        "InfoMax (unsup.)": (lambda d, f, s: hp.select.infomax(d, fraction=f, score_column="ssp",
                                                               embedding_column="randnet", seed=s), "randnet", "ssp"),
        "norm": (lambda d, f, s: hp.select.norm_sampling(d, fraction=f, embedding_column="proxy", seed=s, **lab), "proxy", None),
        "Gram–Schmidt": (lambda d, f, s: hp.select.gram_schmidt(d, fraction=f, embedding_column="proxy", seed=s, **lab),
                         "proxy", None),
    }


def tiny_methods() -> dict[str, Callable[[Dataset, int, int], Dataset]]:
    emb = {"embedding_column": "randnet"}

    def combined(baseline, then):
        return lambda d, k, s: hp.select.combine(d, baseline=baseline, then=then, size=k, seed=s,
                                                 baseline_kwargs=emb, then_kwargs=emb)

    return {
        "random": lambda d, k, s: hp.select.random(d, size=k, seed=s),
        "norm": lambda d, k, s: hp.select.norm_sampling(d, size=k, seed=s, **emb),
        "Gram–Schmidt": lambda d, k, s: hp.select.gram_schmidt(d, size=k, seed=s, **emb),
        "TypiClust": lambda d, k, s: hp.select.typiclust(d, size=k, seed=s, **emb),
        "TypiClust+Norm": combined("typiclust", "norm"),
        "TypiClust+GS": combined("typiclust", "gram_schmidt"),
        "ProbCover": lambda d, k, s: hp.select.probcover(d, size=k, seed=s, **emb),
        "ProbCover+Norm": combined("probcover", "norm"),
        "ProbCover+GS": combined("probcover", "gram_schmidt"),
    }


# ------------------------------------------------------------------------------------------ running
def run_scenario_seed(out: Path, scenario: str, fractions, seed: int, args, results: dict) -> None:
    pool, cost = prepare_scored_pool(out, scenario, seed, args)
    results["cost"][f"{scenario}|{seed}"] = cost
    data_dir = out / scenario / "data"
    flag = FLAG[scenario]
    selected = methods(cost["window"], cost["dual_epochs"])
    for name, (select, _, _) in selected.items():
        if args.methods and name not in args.methods:
            continue
        for fraction in fractions:
            key = f"{scenario}|{name}|{fraction}|{seed}"
            if key in results["runs"]:
                continue
            start = time.perf_counter()
            subset = select(pool, fraction, seed)
            select_s = time.perf_counter() - start
            subset_dir = out / scenario / "subsets" / f"{run_slug(name)}_{fraction}_{seed}"
            subset.select_columns(["row_id", "label"]).save_to_disk(str(subset_dir))
            run_dir = out / scenario / "runs" / f"{run_slug(name)}_{fraction}"
            argv = recipe_args(data_dir, run_dir, seed, args) + ["--subset_path", str(subset_dir), "--checkpointing", "false"]
            metrics = run_recipe(argv)
            entry = {"accuracy": metrics["test_accuracy"]["mean"], "select_s": select_s,
                     "train_s": metrics["train_time_s"]["mean"], "rows": len(subset)}
            if flag:
                entry["corrupted_kept"] = float(np.mean(read_vector(subset, flag, dtype=np.float64)))
            results["runs"][key] = entry
            save_results(out, results)
            print(f"{key}: acc {entry['accuracy'] * 100:.2f}%  select {select_s:.1f}s  train {entry['train_s']:.0f}s"
                  + (f"  corrupted kept {entry['corrupted_kept']:.1%}" if flag else ""), flush=True)


def run_tiny(out: Path, seeds, args, results: dict) -> None:
    data_dir = build_pool(out, "clean", args.pool_size, args.test_size)
    cache = out / "tiny" / "features"
    if not (cache / "dataset_dict.json").exists():
        splits = load_from_disk(str(data_dir))
        embedder = hp.embed.RandomNetEmbedder(image_column="image", output_column="randnet", seed=0)
        DatasetDict({k: embedder.map(v).remove_columns("image") for k, v in splits.items()}).save_to_disk(str(cache))
    splits = load_from_disk(str(cache))
    pool, test = splits["train"], splits["test"]
    for name, select in tiny_methods().items():
        for budget in TINY_BUDGETS:
            for seed in seeds:
                key = f"tiny|{name}|{budget}|{seed}"
                if key in results["runs"]:
                    continue
                start = time.perf_counter()
                subset = select(pool, budget, seed)
                select_s = time.perf_counter() - start
                accuracy = linear_probe_accuracy(subset, test, embedding_column="randnet")
                classes = len(np.unique(read_labels(subset, "label")))
                results["runs"][key] = {"accuracy": accuracy, "select_s": select_s, "classes_covered": classes}
        save_results(out, results)
        print(f"tiny|{name}: " + ", ".join(
            f"{b}: {np.mean([results['runs'][f'tiny|{name}|{b}|{s}']['accuracy'] for s in seeds]) * 100:.1f}%"
            for b in TINY_BUDGETS), flush=True)




# ------------------------------------------------------------------------------------------ report
def summarize(results: dict, scenario: str, fractions, key: str = "accuracy") -> dict[str, dict[float, dict]]:
    runs = (
        run_key.split("|")[1:3] + [entry[key]]
        for run_key, entry in results["runs"].items()
        if run_key.split("|")[0] == scenario and key in entry
    )
    return group_by_method(runs, list(tiny_methods()) if scenario == "tiny" else list(methods(2, 2)))


def selection_cost_table(results: dict) -> str:
    """Each method's cost relative to one full training run (clean scenario, mean over seeds)."""
    costs = [c for k, c in results["cost"].items() if k.startswith("clean|")]
    if not costs:
        return "(no clean runs yet)"
    full = np.mean([c["full_train_s"] for c in costs])
    epochs = costs[0]["epochs"]
    mean = {k: float(np.mean([c[k] for c in costs])) for k in costs[0] if k.endswith("_s")}
    select_s: dict[str, list[float]] = {}
    for run_key, entry in results["runs"].items():
        scen, name, fraction, _ = run_key.split("|")
        if scen == "clean" and float(fraction) == 0.1:
            select_s.setdefault(name, []).append(entry["select_s"])
    lines = [
        f"One full training run (the proxy, {epochs} epochs, dynamics recorded): {full:.0f} s.",
        "",
        "| method | training it needs | features + scores (s) | selection at 10% (s) | total / full run |",
        "|---|---|---|---|---|",
    ]
    for name, (_, need, score) in methods(costs[0]["window"], costs[0]["dual_epochs"]).items():
        if name not in select_s:
            continue
        train_share = {"none": 0.0, "randnet": 0.0, "dual": costs[0]["dual_epochs"] / epochs}.get(need, 1.0)
        features = (mean["proxy_features_s"] if "proxy" in need else 0.0) + (
            mean["randnet_features_s"] if need == "randnet" else 0.0)
        scores = features + (mean[f"{score}_s"] if score else 0.0)
        sel = float(np.mean(select_s[name]))
        train_label = {0.0: "none"}.get(train_share, f"{train_share:.0%} of the full run")
        lines.append(f"| {name} | {train_label} | {scores:.1f} | {sel:.2f} | {(train_share * full + scores + sel) / full:.2f} |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = [("clean", CLEAN_FRACTIONS, "clean"), ("label_noise", NOISE_FRACTIONS, "20% label noise"),
              ("corruption", CORRUPTION_FRACTIONS, "20% image corruption"), ("tiny", TINY_BUDGETS, "tiny budgets (linear probe)")]
    fig, axes = plt.subplots(1, 4, figsize=(22, 6))
    cmap = plt.get_cmap("tab20")
    names = list(methods(2, 2)) + [n for n in tiny_methods() if n not in methods(2, 2)]
    for ax, (scenario, columns, title) in zip(axes, panels):
        summary = summarize(results, scenario, columns)
        for name, per in summary.items():
            xs = sorted(per)
            means = [per[x]["mean"] * 100 for x in xs]
            stds = [per[x]["std"] * 100 for x in xs]
            xs_plot = [x * 100 for x in xs] if scenario != "tiny" else xs
            ax.errorbar(xs_plot, means, yerr=stds, marker="o", markersize=3, capsize=2,
                        color=cmap(names.index(name) % 20), label=name,
                        linewidth=2.5 if name == "random" else 1.2, linestyle="-" if names.index(name) < 10 else "--")
        ax.set_title(title)
        ax.set_xlabel("examples kept" if scenario == "tiny" else "kept fraction (%)")
        ax.set_ylabel("test accuracy (%)")
        if scenario != "tiny":
            ax.set_xscale("log")
            ax.set_xticks([c * 100 for c in columns], [f"{c:.0%}" for c in columns])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(alpha=0.3)
    save_with_shared_legend(fig, axes, path)


def report(out: Path, results: dict) -> str:
    parts = [f"Settings: {json.dumps(results['settings'])}", ""]
    for scenario, columns, title in [("clean", CLEAN_FRACTIONS, "Clean data"),
                                     ("label_noise", NOISE_FRACTIONS, "20% symmetric label noise"),
                                     ("corruption", CORRUPTION_FRACTIONS, "20% image corruption")]:
        summary = summarize(results, scenario, columns)
        if not summary:
            continue
        seeds = sorted({k.split("|")[3] for k in results["runs"] if k.startswith(scenario + "|")})
        full = [c["full_test_accuracy"] for k, c in results["cost"].items() if k.startswith(scenario + "|")]
        parts += [f"#### {title}: test accuracy (%), mean ± std over seeds {', '.join(seeds)}",
                  f"Full pool: {aggregate(full)['mean'] * 100:.1f} ± {aggregate(full)['std'] * 100:.1f}.", "",
                  mean_std_table(summary, columns), ""]
        if FLAG[scenario]:
            kept = summarize(results, scenario, columns, key="corrupted_kept")
            what = "mislabeled" if scenario == "label_noise" else "corrupted"
            parts += [f"Share of {what} rows in each subset (%; the pool has 20%):", "",
                      mean_std_table(kept, columns), ""]
    tiny = summarize(results, "tiny", TINY_BUDGETS)
    if tiny:
        seeds = sorted({k.split("|")[3] for k in results["runs"] if k.startswith("tiny|")})
        parts += [f"#### Tiny budgets: linear-probe accuracy (%) on random-init ResNet-18 features, seeds {', '.join(seeds)}",
                  "", mean_std_table(tiny, TINY_BUDGETS, fmt=lambda c: f"{c} ex."), ""]
    parts += ["#### Selection cost relative to one full training run", "", selection_cost_table(results), ""]
    text = "\n".join(parts)
    (out / "report.md").write_text(text)
    plot(results, out / "accuracy_vs_fraction.png")
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="runs/reproduce_fmnist")
    p.add_argument("--pool-size", type=int, default=2000, help="stratified training pool taken from the 60k train split")
    p.add_argument("--test-size", type=int, default=2000, help="stratified sample of the 10k test split")
    p.add_argument("--epochs", type=int, default=8, help="epochs of every run (equal epochs)")
    p.add_argument("--model", default="small_cnn", help="small_cnn | resnet18 | resnet34 | resnet50 | a transformers id")
    p.add_argument("--learning-rate", type=float, default=0.1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--scenarios", nargs="+", default=["tiny", "clean", "label_noise", "corruption"],
                   choices=["tiny", "clean", "label_noise", "corruption"])
    p.add_argument("--methods", nargs="+", default=None, help="only these methods (names as in the tables)")
    p.add_argument("--fractions", type=float, nargs="+", default=None,
                   help="only these kept fractions of the clean/noise/corruption scenarios (default: all)")
    p.add_argument("--cpu", action="store_true", help="train on CPU even when a GPU is present")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--merge-from", nargs="+", default=[], metavar="DIR",
                   help="add the runs of other output dirs (e.g. seeds run in parallel processes) before reporting")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    disable_progress_bars()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k in ("pool_size", "test_size", "epochs", "model", "learning_rate")}
    results = load_results(out, settings, report_only=args.report_only, cost={})
    for other in args.merge_from:
        found = json.loads((Path(other) / "results.json").read_text())
        if found["settings"] != settings:
            raise SystemExit(f"{other} was made with {found['settings']}, not {settings}")
        results["runs"].update(found["runs"])
        results["cost"].update(found["cost"])
    results["metadata"] = run_metadata({"args": vars(args)}, argv)
    if not args.report_only:
        fractions = {"clean": CLEAN_FRACTIONS, "label_noise": NOISE_FRACTIONS, "corruption": CORRUPTION_FRACTIONS}
        if args.fractions:
            fractions = {k: tuple(f for f in v if f in args.fractions) for k, v in fractions.items()}
        if "tiny" in args.scenarios:
            run_tiny(out, args.seeds, args, results)
        # Seeds outermost: a run cut short still has complete tables for the seeds it finished.
        for seed in args.seeds:
            for scenario in [s for s in args.scenarios if s != "tiny"]:
                run_scenario_seed(out, scenario, fractions[scenario], seed, args, results)
                print(report(out, results).split("####")[0], flush=True)
    print(report(out, results))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
