"""Reproduce the InfoMax paper's CLIP-pretraining comparison (Sec. 4.2, Fig. 5, App. A.2) at CPU size:
prune a noisy image–caption pool with each image–text selector, pretrain a tiny CLIP on each subset with
``recipes/clip_pretraining.py``, and compare zero-shot accuracy, retrieval and the share of corrupted
pairs kept.

Protocol (everything through the public API and the CLIP recipe):

1. Pool: `hf_prune.data.load_scenes` (``--num-train`` training scenes, ``--num-test`` clean test scenes
   with one object each, so zero-shot shape and colour labels are unambiguous; data seed 0) with 30%
   web noise from `hf_prune.corrupt.web_noise` (10% mismatched captions, 5% each of uninformative
   captions, near-duplicates, low-information images and wrong-language captions; seed 0), exactly
   as the recipe builds it from ``--web_noise_rates``, so the subsets' ``row_id`` index the recipe's pool.
2. Reference CLIP (how CLIP-score filtering works offline): the recipe's tiny CLIP trained on a separate
   clean, trusted split (``--reference-train`` scenes generated with data seed 1), saved, and loaded with
   `hf_prune.embed.CLIPEmbedder` to compute every pool pair's image and text embeddings and CLIP score
   (batched ``map``). The image features of clustering, D², SemDeDup, InfoMax and GM matching are that
   model's image embeddings.
3. Methods, each keeping 10/30/50% of the pool (the full pool is trained once per seed):
   random; **CLIP score** (`top_k`, highest score); **Clustering + CLIP** (`cluster_top_k`: k-means on the
   image features, highest CLIP score within each cluster, proportional budget); **Moderate** over the CLIP
   score (`moderate(score_column=...)`: the scores closest to the median score); **CCS** over the CLIP
   score (`ccs` with ``descending=False``: a *low* CLIP score is "hard", so the hard cutoff drops the
   lowest-scored pairs, the likeliest noise, first; cutoff rates of the CCS paper by pruning ratio: 0 at
   50% kept, 10% at 30% kept, 30% at 10% kept); **D²** over the CLIP score (`d2_pruning`: node value =
   the CLIP score mapped to [0, 1] as ``(1 + s) / 2``, since D² needs non-negative scores; edges from the
   image features, ``k=10``, ``γ=1``); **SemDeDup** (`semdedup` to the budget on the image features);
   **InfoMax** (I = CLIP score, K from the image features, ``k=5``, ``α=0.3``, ``T=20``,
   ``partitions=1``: the paper keeps each part at ≥ 1M pairs, so a pool this small is one part);
   **GM matching** on the image features. The selection seed is the training seed.
4. Training: the recipe's CPU settings (tiny ViT + text transformer, batch 128, AdamW, weight decay 0.2,
   one warm-up epoch, cosine, peak lr 1e-3). ``--schedule steps`` (default) trains every subset for the
   same number of *iterations* as the full pool (``--epochs`` full-pool epochs, i.e. ``epochs / fraction``
   epochs of a subset, rounded), as the InfoMax paper states for its experiments ("the number of
   iterations on the selected subset and the full set was the same", App. A); ``--schedule epochs`` trains
   every subset for ``--epochs`` epochs (App. A.2's "32 epochs", cheaper, but a 10% subset then gets a
   tenth of the updates). Metrics on the clean test split: zero-shot accuracy (shape, colour, mean; prompt
   ensembles), image→text and text→image R@1/5, share of corrupted pairs kept (overall and per kind).
5. Output in ``--output-dir``: ``results.json`` (every run; rerunning resumes), ``report.md`` (mean ± std
   over seeds) and ``metrics_vs_fraction.png``; the report marks the paper's claim "InfoMax above D² and
   Clustering + CLIP at 10% kept" as agree or disagree on each metric.

Sizing of the default (2-core CPU, ``OMP_NUM_THREADS=1``, otherwise idle; measured: one tiny-CLIP epoch
over 4,000 pairs takes 7.7 s, ≈1.9 ms a pair-pass, and generating + corrupting + decoding the pool adds
≈15 s a run at 12,800 pairs). From scratch the loss stays at ln(batch) for the first ~150 iterations: a
run of 141 iterations (6,000 pairs, 3 epochs) ended at loss 4.81 ≈ ln 128 and chance zero-shot accuracy
(13.9%, 8 classes), while the reference CLIP's 312 iterations reach 54.7%. So every run gets 300
iterations: ``--num-train 12800 --epochs 3`` (100 batches an epoch; 30, 10 and 6 epochs of the 10/30/50%
subsets), and with ``--schedule steps`` every run costs one full-pool training:
(9 methods × 3 fractions + 1 full) × 3 seeds = 84 runs × (300 × 128 pairs × 1.9 ms ≈ 73 s + ≈15 s)
≈ 7,400 s ≈ 2 h, plus ≈3 min for the reference CLIP and the embeddings. The same with 20,000 pairs and
3 epochs (469 iterations) takes ≈3 h. On a loaded machine (load average ~4) a step took twice as long.

Default (CPU, ~2 h in the background)::

    OMP_NUM_THREADS=1 nohup python recipes/benchmarks/reproduce_clip_pretraining.py --threads 1 \\
        --output-dir runs/reproduce_clip > runs/reproduce_clip.log 2>&1 &

Quick end-to-end check (seconds): ``--quick`` (600 pairs, 1 epoch, 1 seed, random and InfoMax at 30%).
``--report-only`` rebuilds the report and plot from ``results.json``. ``--gpu`` prints the commands of a
real-pool run (CC12M from the Hub, ViT-B/32 with ``recipes/configs/clip_vitb32_cc12m.yaml``, the pretrained
OpenAI CLIP as the reference) and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from datasets import Dataset, load_from_disk

import hf_prune as hp
from hf_prune.ops.columns import add_column, read_vector
from recipes import clip_pretraining as recipe
from recipes.benchmarks.reporting import (
    group_by_method,
    mean_std_table,
    plot_methods_vs_fraction,
    save_with_shared_legend,
)
from recipes.benchmarks.results_store import load_results, prepare_run, run_slug, save_results
from recipes.trainer.config import run_metadata, write_json

FRACTIONS = (0.1, 0.3, 0.5)
# 30% web noise of every kind (the pool); the rows of each kind are disjoint.
NOISE_RATES = {
    "mismatch": 0.10,
    "uninformative": 0.05,
    "near_duplicate": 0.05,
    "low_information": 0.05,
    "wrong_language": 0.05,
}
# CCS paper, CIFAR-10: hard-cutoff rate by kept fraction (as in the Fashion-MNIST reproduction).
CCS_CUTOFF = {0.5: 0.0, 0.3: 0.1, 0.2: 0.1, 0.1: 0.3}
METRICS = {  # name in the tables → path in the recipe's metrics
    "zero-shot mean": ("zero_shot_mean",),
    "zero-shot shape": ("zero_shot", "shape"),
    "zero-shot colour": ("zero_shot", "color"),
    "i2t R@1": ("retrieval", "i2t_R@1"),
    "i2t R@5": ("retrieval", "i2t_R@5"),
    "t2i R@1": ("retrieval", "t2i_R@1"),
    "t2i R@5": ("retrieval", "t2i_R@5"),
}
CLAIM_METRICS = ("zero-shot mean", "i2t R@5", "t2i R@5")
FULL = "full pool"
QUICK = {
    "num_train": 600,
    "num_test": 200,
    "reference_train": 400,
    "reference_epochs": 2,
    "epochs": 1,
    "seeds": [0],
    "methods": ["random", "InfoMax"],
    "fractions": [0.3],
}

GPU_COMMANDS = """\
# 1. Pool with CLIP columns: the pretrained OpenAI CLIP is the reference model (common practice, DataComp).
python - <<'EOF'
import hf_prune as hp
pool = hp.data.load_image_text("pixparse/cc12m-wds", image_column="jpg", text_column="txt")["train"]
pool = pool.select(range(400_000))  # what recipes/configs/clip_vitb32_cc12m.yaml trains on (max_train_samples)
pool = hp.embed.CLIPEmbedder("openai/clip-vit-base-patch32", image_column="image", text_column="caption",
                             batch_size=1024, device="cuda").map(pool)
for name, sub in {
    "clip_score": hp.select.top_k(pool, fraction=0.1, score_column="clip_score"),
    "d2": hp.select.d2_pruning(pool, fraction=0.1, score_column="clip_score", embedding_column="image_emb", device="cuda"),
    "infomax": hp.select.infomax(pool, fraction=0.1, score_column="clip_score", embedding_column="image_emb",
                                 partitions=max(1, len(pool) // 1_000_000), device="cuda"),
}.items():
    sub.select_columns(["row_id"]).save_to_disk(f"subsets/cc12m_{name}_10")
EOF
# 2. ViT-B/32 from scratch on each subset (App. A.2 settings), 3 seeds:
accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/clip_pretraining.py \\
    --config recipes/configs/clip_vitb32_cc12m.yaml --subset_path subsets/cc12m_infomax_10 --seeds 0 1 2 \\
    --output_dir runs/cc12m_infomax_10
"""


# --------------------------------------------------------------------------------------------- data
def pool_options(args) -> list[str]:
    """Recipe options that rebuild exactly this benchmark's noisy pool and test split."""
    return [
        "--dataset",
        "scenes",
        "--num_train",
        str(args.num_train),
        "--num_test",
        str(args.num_test),
        "--data_seed",
        "0",
        "--web_noise_rates",
        json.dumps(NOISE_RATES),
        "--corruption_seed",
        "0",
    ]


def build_pool(args) -> Dataset:
    """The recipe's training pool: `load_scenes` (data seed 0) with the web noise (seed 0)."""
    cfg = recipe.DataConfig(num_train=args.num_train, num_test=args.num_test)
    splits = hp.data.load_scenes(
        num_train=cfg.num_train,
        num_test=cfg.num_test,
        image_size=cfg.image_size,
        max_objects=cfg.max_objects,
        test_max_objects=cfg.test_max_objects,
        seed=0,
    )
    return hp.corrupt.web_noise(splits["train"], rates=NOISE_RATES, seed=0)


def run_recipe(argv: list[str], quiet: bool = True) -> dict:
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        return recipe.main(argv)


def scored_pool(out: Path, args) -> tuple[Dataset, dict]:
    """Pool with the reference CLIP's ``image_emb``, ``text_emb`` and ``clip_score`` (cached)."""
    cache, info_path = out / "scored_pool", out / "reference.json"
    if info_path.exists():
        return load_from_disk(str(cache)), json.loads(info_path.read_text())
    ref_dir = out / "reference"
    # A separate clean, trusted split (data seed 1: other scenes than the pool's).
    ref_argv = [
        "--dataset",
        "scenes",
        "--num_train",
        str(args.reference_train),
        "--num_test",
        str(args.num_test),
        "--data_seed",
        "1",
        "--epochs",
        str(args.reference_epochs),
        "--seeds",
        "0",
        "--output_dir",
        str(ref_dir),
        "--checkpointing",
        "false",
        "--linear_probe",
        "false",
        *(["--cpu"] if args.cpu else []),
    ]
    start = time.perf_counter()
    ref_metrics = run_recipe(ref_argv)
    info = {
        "reference_train_s": time.perf_counter() - start,
        "reference_zero_shot_mean": ref_metrics["zero_shot_mean"]["mean"],
        "reference_i2t_R@5": ref_metrics["retrieval"]["i2t_R@5"]["mean"],
    }
    pool = build_pool(args)
    embedder = hp.embed.CLIPEmbedder(
        str(ref_dir / "seed_0" / "model"),
        image_column="image",
        text_column="caption",
        batch_size=256,
        device="cpu" if args.cpu else None,
    )
    start = time.perf_counter()
    pool = embedder.map(pool)
    info["embed_s"] = time.perf_counter() - start
    flags = read_vector(pool, "is_corrupted", dtype=bool)
    score = read_vector(pool, "clip_score", dtype=np.float64)
    info["clip_score_clean_mean"], info["clip_score_corrupted_mean"] = (
        float(score[~flags].mean()),
        float(score[flags].mean()),
    )
    # Only what the selectors read: the recipe re-renders the images from the same seeds.
    pool.select_columns(["image_emb", "text_emb", "clip_score", "is_corrupted", "corruption"]).save_to_disk(
        str(cache)
    )
    write_json(info_path, info)
    return load_from_disk(str(cache)), info


# ------------------------------------------------------------------------------------------ methods
REFERENCE_CHECKS = ("reference_zero_shot_mean", "clip_score_clean_mean", "clip_score_corrupted_mean")


def check_same_reference(stored: dict | None, new: dict) -> None:
    """Refuse to resume runs selected with another reference CLIP (e.g. ``results.json`` copied from another
    machine whose rebuilt reference came out differently): the stored and rebuilt reference must give the
    same zero-shot accuracy and mean CLIP scores, exactly.

    Example:
        >>> check_same_reference({"clip_score_clean_mean": 0.52}, {"clip_score_clean_mean": 0.52})
    """
    if not stored:
        return
    differ = {k: (stored[k], new.get(k)) for k in REFERENCE_CHECKS if k in stored and stored[k] != new.get(k)}
    if differ:
        raise SystemExit(f"the reference CLIP differs from the one the stored runs were selected with {differ}; "
                         "use another --output-dir")


def methods() -> dict[str, Callable[[Dataset, float, int], Dataset]]:
    """Name → ``select(pool, fraction, seed)``; the image features are the reference CLIP's."""
    img = {"embedding_column": "image_emb"}
    return {
        "random": lambda d, f, s: hp.select.random(d, fraction=f, seed=s),
        "CLIP score": lambda d, f, s: hp.select.top_k(d, fraction=f, score_column="clip_score", seed=s),
        "Clustering + CLIP": lambda d, f, s: hp.select.cluster_top_k(
            d, fraction=f, score_column="clip_score", seed=s, **img
        ),
        "Moderate (CLIP score)": lambda d, f, s: hp.select.moderate(
            d, fraction=f, score_column="clip_score", seed=s
        ),
        # Low CLIP score = "hard" (descending=False): the cutoff drops the lowest-scored pairs first.
        "CCS (CLIP score)": lambda d, f, s: hp.select.ccs(
            d,
            fraction=f,
            score_column="clip_score",
            descending=False,
            hard_cutoff=CCS_CUTOFF.get(f, 0.0),
            seed=s,
        ),
        "D² (CLIP score)": lambda d, f, s: hp.select.d2_pruning(
            _unit_score(d), fraction=f, score_column="clip_score_01", seed=s, **img
        ),
        "SemDeDup": lambda d, f, s: hp.select.semdedup(d, fraction=f, seed=s, **img),
        "InfoMax": lambda d, f, s: hp.select.infomax(
            d,
            fraction=f,
            score_column="clip_score",
            k=5,
            alpha=0.3,
            iterations=20,
            partitions=1,
            seed=s,
            **img,
        ),
        "GM matching": lambda d, f, s: hp.select.gm_matching(d, fraction=f, seed=s, **img),
    }


def _unit_score(pool: Dataset) -> Dataset:
    """``clip_score_01 = (1 + clip_score) / 2`` in [0, 1]: D²'s messages scale with the node value, so it
    refuses negative scores; a fixed map of the cosine range (not a min-max of this pool) keeps the order."""
    if "clip_score_01" in pool.column_names:
        return pool
    return add_column(pool, "clip_score_01", (1.0 + read_vector(pool, "clip_score", dtype=np.float64)) / 2.0)


# ------------------------------------------------------------------------------------------ running
def epochs_for(fraction: float, args) -> int:
    if args.schedule == "epochs":
        return args.epochs
    return max(1, round(args.epochs / fraction))  # same iterations as the full pool


def train_entry(out: Path, name: str, fraction: float, seed: int, subset: Dataset | None, args) -> dict:
    run_dir = out / "runs" / f"{run_slug(name)}_{fraction}_{seed}"
    argv = pool_options(args) + [
        "--epochs",
        str(epochs_for(fraction, args)),
        "--seeds",
        str(seed),
        "--output_dir",
        str(run_dir),
        "--batch_size",
        str(args.batch_size),
        "--checkpointing",
        "false",
        "--linear_probe",
        "false",
        "--save_model",
        "false",
        *(["--cpu"] if args.cpu else []),
    ]
    if subset is not None:
        subset_dir = out / "subsets" / f"{run_slug(name)}_{fraction}_{seed}"
        subset.select_columns(["row_id"]).save_to_disk(str(subset_dir))
        argv += ["--subset_path", str(subset_dir)]
    metrics = run_recipe(argv)
    entry: dict = {}
    for label, path in METRICS.items():
        value = metrics
        for part in path:
            value = value[part]
        entry[label] = value["mean"]  # one seed: the mean is that run's value
    corrupted = metrics["corrupted_in_train"]
    entry["corrupted kept"] = corrupted["share"]
    entry["corrupted by kind"] = {
        k: v / metrics["train_size"] for k, v in corrupted.get("by_kind", {}).items()
    }
    entry.update(
        rows=metrics["train_size"],
        iterations=metrics["iterations"],
        epochs=metrics["epochs"],
        train_s=metrics["train_time_s"]["mean"],
    )
    return entry


def run_seed(out: Path, pool: Dataset, seed: int, args, results: dict) -> None:
    key = f"{FULL}|1.0|{seed}"
    if key not in results["runs"]:
        results["runs"][key] = {**train_entry(out, FULL, 1.0, seed, None, args), "select_s": 0.0}
        save_results(out, results)
        print(f"{key}: {_line(results['runs'][key])}", flush=True)
    for name, select in methods().items():
        if args.methods and name not in args.methods:
            continue
        for fraction in args.fractions:
            key = f"{name}|{fraction}|{seed}"
            if key in results["runs"]:
                continue
            start = time.perf_counter()
            subset = select(pool, fraction, seed)
            select_s = time.perf_counter() - start
            entry = train_entry(out, name, fraction, seed, subset, args)
            # The recipe counts the corrupted pairs of the rows it trained on; the subset's own flags must agree.
            own = float(np.mean(read_vector(subset, "is_corrupted", dtype=np.float64)))
            if abs(own - entry["corrupted kept"]) > 1e-9:
                raise RuntimeError(
                    f"{key}: the recipe trained on other rows than the subset ({own} vs {entry['corrupted kept']})"
                )
            results["runs"][key] = {**entry, "select_s": select_s}
            save_results(out, results)
            print(f"{key}: {_line(results['runs'][key])}", flush=True)


def _line(entry: dict) -> str:
    return (
        f"zero-shot {entry['zero-shot mean'] * 100:.1f}%  i2t R@5 {entry['i2t R@5'] * 100:.1f}%  "
        f"corrupted kept {entry['corrupted kept']:.1%}  select {entry['select_s']:.1f}s  train {entry['train_s']:.0f}s"
    )




# ------------------------------------------------------------------------------------------ report
def summarize(results: dict, key: str) -> dict[str, dict[float, dict]]:
    """Method → kept fraction → aggregate of ``key`` over seeds (the full pool as fraction 1.0)."""
    runs = (run_key.split("|")[:2] + [entry[key]] for run_key, entry in results["runs"].items())
    return group_by_method(runs, [FULL, *methods()])


def claim_lines(results: dict) -> list[str]:
    """The paper's claim at 10% kept: InfoMax above D² and Clustering + CLIP, per metric, on seed means."""
    rivals = ("D² (CLIP score)", "Clustering + CLIP")
    lines = []
    for metric in CLAIM_METRICS:
        summary = summarize(results, metric)
        at = {n: summary.get(n, {}).get(0.1) for n in ("InfoMax", *rivals)}
        if any(v is None for v in at.values()):
            lines.append(
                f"- {metric}: not measured at 10% kept (needs InfoMax, D² and Clustering + CLIP at 0.1)."
            )
            continue
        ours = at["InfoMax"]["mean"]
        verdict = "agree" if all(ours > at[r]["mean"] for r in rivals) else "disagree"
        diffs = ", ".join(
            f"{r} {at[r]['mean'] * 100:.1f} ± {at[r]['std'] * 100:.1f} ({(ours - at[r]['mean']) * 100:+.1f})"
            for r in rivals
        )
        lines.append(
            f"- {metric}: **{verdict}** — InfoMax {ours * 100:.1f} ± {at['InfoMax']['std'] * 100:.1f}; {diffs} "
            f"(n = {at['InfoMax']['n']} seeds)."
        )
    return lines


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["zero-shot mean", "i2t R@5", "t2i R@5", "corrupted kept"]
    fig, axes = plt.subplots(1, len(panels), figsize=(22, 5.5))
    for ax, metric in zip(axes, panels):
        plot_methods_vs_fraction(ax, summarize(results, metric), baseline=FULL, baseline_fraction=1.0,
                                 highlight=("random", "InfoMax"))
        ax.set_title(metric)
        ax.set_xlabel("kept fraction (%)")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
    save_with_shared_legend(fig, axes, path)


def report(out: Path, results: dict) -> str:
    fractions = sorted({float(k.split("|")[1]) for k in results["runs"]} - {1.0})
    seeds = sorted({k.split("|")[2] for k in results["runs"]})
    ref = results.get("reference", {})
    parts = [
        f"Settings: {json.dumps(results['settings'])}",
        "",
        f"Reference CLIP (clean split): zero-shot mean {ref.get('reference_zero_shot_mean', float('nan')) * 100:.1f}%, "
        f"i2t R@5 {ref.get('reference_i2t_R@5', float('nan')) * 100:.1f}%; mean CLIP score of clean pool pairs "
        f"{ref.get('clip_score_clean_mean', float('nan')):.3f}, of corrupted ones {ref.get('clip_score_corrupted_mean', float('nan')):.3f}.",
        "",
    ]
    for metric in [*METRICS, "corrupted kept"]:
        what = (
            "share of corrupted pairs in the subset (%; the pool has 30%)"
            if metric == "corrupted kept"
            else f"{metric} (%)"
        )
        parts += [
            f"#### {what}, mean ± std over seeds {', '.join(seeds)}",
            "",
            mean_std_table(summarize(results, metric), [*fractions, 1.0]),
            "",
        ]
    kinds: dict[str, dict[str, list]] = {}
    for run_key, entry in results["runs"].items():
        name, fraction, _ = run_key.split("|")
        # The smallest kept fraction, and the full pool's own mix for reference.
        if float(fraction) in (min(fractions, default=1.0), 1.0):
            for kind in NOISE_RATES:
                kinds.setdefault(name, {}).setdefault(kind, []).append(
                    entry["corrupted by kind"].get(kind, 0.0)
                )
    if kinds:
        parts += [
            f"#### Corrupted pairs kept by kind at {min(fractions):.0%} kept (% of the subset; the pool has "
            + ", ".join(f"{k} {v:.0%}" for k, v in NOISE_RATES.items())
            + ")",
            "",
            "| method | " + " | ".join(NOISE_RATES) + " |",
            "|---|" + "---|" * len(NOISE_RATES),
        ]
        order = [FULL, *methods()]
        parts += [
            f"| {name} | " + " | ".join(f"{np.mean(kinds[name][k]) * 100:.1f}" for k in NOISE_RATES) + " |"
            for name in sorted(kinds, key=lambda n: order.index(n) if n in order else len(order))
        ]
        parts.append("")
    parts += [
        "#### The paper's claim: InfoMax above D² and Clustering + CLIP at 10% kept",
        "",
        *claim_lines(results),
        "",
    ]
    text = "\n".join(parts)
    (out / "report.md").write_text(text)
    plot(results, out / "metrics_vs_fraction.png")
    return text


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--output-dir", default="runs/reproduce_clip")
    p.add_argument(
        "--num-train", type=int, default=12800, help="pool pairs (load_scenes, before 30%% web noise)"
    )
    p.add_argument("--num-test", type=int, default=2000, help="clean test pairs (one object per scene)")
    p.add_argument(
        "--reference-train", type=int, default=2000, help="clean pairs the reference CLIP is trained on"
    )
    p.add_argument("--reference-epochs", type=int, default=20)
    p.add_argument("--epochs", type=int, default=3, help="full-pool epochs (see --schedule)")
    p.add_argument(
        "--schedule",
        choices=["steps", "epochs"],
        default="steps",
        help="steps: every subset gets the full pool's iterations; epochs: every subset --epochs epochs",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=None, help="only these methods (names as in the tables)")
    p.add_argument("--quick", action="store_true", help="tiny end-to-end check: " + json.dumps(QUICK))
    p.add_argument(
        "--gpu", action="store_true", help="print the commands of a real-pool (CC12M, ViT-B/32) run and exit"
    )
    p.add_argument("--cpu", action="store_true", help="train on CPU even when a GPU is present")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    out = prepare_run(args, methods=methods(), quick=QUICK, gpu_commands=GPU_COMMANDS)
    if out is None:
        return {}
    settings = {
        k: getattr(args, k)
        for k in (
            "num_train",
            "num_test",
            "reference_train",
            "reference_epochs",
            "epochs",
            "schedule",
            "batch_size",
        )
    }
    settings["noise_rates"] = NOISE_RATES
    results = load_results(out, settings, report_only=args.report_only)
    results["metadata"] = run_metadata({"args": vars(args)}, argv)
    if not args.report_only:
        pool, reference = scored_pool(out, args)
        check_same_reference(results.get("reference"), reference)
        results["reference"] = reference
        # Seeds outermost: a run cut short still has complete tables for the seeds it finished.
        for seed in args.seeds:
            run_seed(out, pool, seed, args, results)
            print(report(out, results).split("####")[0], flush=True)
        save_results(out, results)
    print(report(out, results))
    return results


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
