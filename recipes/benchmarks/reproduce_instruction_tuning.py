"""Reproduce the InfoMax paper's instruction-tuning comparison (Sec. 4.3, Fig. 6, App. A.3) at CPU size:
LESS warm-up → gradient columns → LESS score → each selector keeps 5% / 10% of an instruction pool →
LoRA-tune the model on each subset with ``recipes/instruction_tuning.py`` → accuracy per held-out target task.

Protocol (everything through the public API, `recipes.less_features` and the instruction-tuning recipe):

1. Pool: `hf_prune.data.build_instruction_pool` (ShareGPT conversations + non-target BIG-bench tasks as
   the ``train`` split to prune; held-out target tasks with a few ``validation`` rows each, LESS's
   handful per task, and their ``test`` rows), saved once to ``<output-dir>/pool``.
2. LESS warm-up (seed 0): the recipe with ``--warmup_fraction 0.05`` (LESS's 5%) for ``--warmup-epochs``
   epochs, one checkpoint per epoch (adapter, Adam moments, mean learning rate).
3. Features, computed once and reused by every method and seed: `recipes.less_features.less_features`
   → one projected gradient column per checkpoint (Adam directions for the pool, plain gradients for the
   validation rows; ``--dim``), the ``less`` score (lr-weighted cosine, mean per target task, max over
   tasks) and ``grad`` (the lr-weighted unit gradients concatenated: inner product = LESS's weighted cosine).
4. Methods, each keeping 5% / 10% of the rows that have gradient features (rows left without a response
   token by the truncation to ``--max-length`` are dropped and counted, and never selected; the selection
   seed is the training seed): **random**; **LESS** (`top_k` on ``less``);
   **InfoMax** (I = ``less``, K from ``grad``, ``k=5``, ``α=0.3``, ``T=20``, one partition);
   **D²** over LESS (`d2_pruning`, node value = LESS mapped to [0, 1] as ``(1 + less/W)/2`` with
   ``W = Σ`` checkpoint weights, the score's range, since D² needs non-negative scores; edges from
   ``grad``); **CCS** over LESS (``descending=False``: a *low* LESS score is the unhelpful end, so the
   hard cutoff drops the lowest-scored rows first; the CCS paper's 30% cutoff at ≥ 90% pruning);
   **Moderate** over LESS (the scores closest to the median). These are the conventions of
   ``reproduce_clip_pretraining.py`` with the CLIP score replaced by the LESS score.
5. Training: the recipe on each subset (``--epochs`` epochs; LoRA as in
   `recipes/configs/instruction_smollm2_cpu.yaml`),
   then `recipes.trainer.llm_eval.evaluate_tasks` on the target tasks' test rows (multiple-choice
   log-likelihood for tasks with choices, exact match of the greedy answer otherwise). The untuned model
   (``--epochs 0``) is the floor.
6. Output in ``--output-dir``: ``results.json`` (every run and the stage costs; rerunning resumes),
   ``report.md`` (mean ± std over seeds per target task and on average, per-stage cost table) and
   ``accuracy_vs_budget.png``; the report marks the paper's claim "InfoMax above LESS and D² at 5%" as
   agree or disagree with the measured numbers.

Sizing of the default. Rates measured here with SmolLM2-135M-Instruct, LoRA r=8 on q/k/v/o (921,600
parameters), one torch thread, on the 2-core machine while other jobs ran (load average ≈ 4):
gradient features 2.6 s a row at 106 tokens (41 tokens/s, one backward per example and 8 rows a
projection pass, as first measured; the default now, one batched backward through hooks and 64 rows a
projection pass, costs 1.15 s a row against 1.67 s for that route in `lora_gradient_throughput.py`), LoRA training 35
tokens/s, evaluation 2.0 s a multiple-choice row and 1.25 s a generative one. Under the same load the
gradients ran at 1.2× the training rate per token, so on an otherwise idle core (DESIGN.md: training
≈ 240 tokens/s, forward ≈ 700 tokens/s) they take ≈ 0.4 s a row and evaluation ≈ 0.4 s a row.
The pool: half ShareGPT, half non-target BIG-bench; SmolLM2's template adds a 20-token system turn, and at
``--max-length 128`` 24% of the rows (ShareGPT conversations opening with a long prompt) keep no response
token and are dropped and counted (`tokenize_messages`). With ``--pool-size 1000`` (≈ 770 rows of ≈ 106
tokens left), the 6 `TARGETS` tasks × (4 validation + 10 test rows), 3 seeds, at the idle rates:

- pool: ≈ 2 min (parsing ShareGPT, streaming the BIG-bench sdist twice);
- warm-up: 5% ≈ 38 rows × 2 epochs × 106 tokens / 240 ≈ 35 s;
- gradients, once: 2 checkpoints × (770 + 24) rows × 0.4 s ≈ 11 min;
- training: 3 seeds × 6 methods × (38 + 77 rows) × 2 epochs × 106 tokens / 240 ≈ 31 min;
- evaluation: 37 runs (36 + the untuned model) × 60 rows × 0.4 s ≈ 15 min;

≈ 1 h on an idle core; sharing the machine with one other job (≈ 2.5× slower) ≈ 2.5 h, and under the load
the rates above were measured at (≈ 5×) about 5 h: lower ``--pool-size``, ``--test-per-task`` or
``--seeds`` then. A measured reduced run (80-row pool, 3 targets, 1 seed, 10% kept) under that load took
22 s warm-up, 328 s for 128 gradient rows, 15 s training and 27 s evaluation per subset.

Default (CPU, ≈ 2.5 h in the background next to one other job; not run by the tests; ``bash scripts/dev.sh llm``
puts SmolLM2 and the BIG-bench sdist where the loaders find them, or set ``HF_PRUNE_BIGBENCH``)::

    OMP_NUM_THREADS=1 nohup \\
        python recipes/benchmarks/reproduce_instruction_tuning.py --threads 1 \\
        --output-dir runs/reproduce_instruction > runs/reproduce_instruction.log 2>&1 &

Quick end-to-end check (about a minute): ``--quick`` (the recipe's tiny Llama, a 240-row pool with two
target tasks, one seed, LESS, InfoMax and D² at 5%); with ``--pool-path`` (a saved train/validation/test
DatasetDict in the schema) it needs neither ShareGPT nor the BIG-bench sdist, as in the tests.
``--report-only`` rebuilds the report and plot from ``results.json``.
``--gpu`` prints the commands of the paper-sized run (a 1B–8B model, the LESS mix from the Hub, MMLU /
TydiQA / BBH) and exits.
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
from datasets import Dataset, DatasetDict, load_from_disk

import hf_prune as hp
from hf_prune.ops.columns import add_column, read_vector
from recipes import instruction_tuning as recipe
from recipes import less_features as features
from recipes.benchmarks.reporting import (
    group_by_method,
    mean_std_table,
    plot_methods_vs_fraction,
    save_with_shared_legend,
)
from recipes.benchmarks.results_store import load_results, prepare_run, run_slug, save_results
from recipes.trainer.config import run_metadata, write_json

FRACTIONS = (0.05, 0.1)
CLAIM_FRACTION = 0.05
# CCS paper: the hard cutoff by kept fraction (30% at ≥ 90% pruning), as in the other reproductions.
CCS_CUTOFF = {0.5: 0.0, 0.3: 0.1, 0.2: 0.1, 0.1: 0.3, 0.05: 0.3, 0.01: 0.3}
BASE = "base model (untuned)"
# Held-out BBH targets for the CPU run: tasks whose prompts fit 128 SmolLM2 tokens with its chat template
# (median 65–110 tokens; causal_judgment and temporal_sequences need 180–600), of several kinds: sports
# plausibility, spatial navigation, dates, logic, adjective order (multiple choice, scored by
# log-likelihood) and object counting (generative, scored by exact match).
TARGETS = (
    "sports_understanding",
    "navigate",
    "date_understanding",
    "logical_deduction:three_objects",
    "hyperbaton",
    "object_counting",
)
QUICK = {
    "model": "tiny",
    "pool_size": 240,
    "validation_per_task": 3,
    "test_per_task": 8,
    "targets": ["sports_understanding", "navigate"],
    "max_length": 256,  # the tiny tokenizer (400 tokens) spends ~3× SmolLM2's tokens on the same text
    "warmup_epochs": 1,
    "epochs": 1,
    "dim": 256,
    "seeds": [0],
    "methods": ["LESS", "InfoMax", "D² (LESS)"],
    "fractions": [0.05],
}

GPU_COMMANDS = """\
# 1. The LESS mix (FLAN v2, CoT, Dolly, OASST1 from the Hub) in the messages/source/task schema, and the
#    targets' few validation examples (LESS: 5 for MMLU per subject group, 1 per TydiQA language,
#    3 per BBH task).
python - <<'EOF'
import hf_prune as hp
from datasets import load_dataset, concatenate_datasets, DatasetDict
pool = concatenate_datasets([
    hp.data.from_flan(load_dataset("princeton-nlp/less_data", "flan_v2", split="train")),
    hp.data.from_flan(load_dataset("princeton-nlp/less_data", "cot", split="train")),
    hp.data.from_alpaca(load_dataset("databricks/databricks-dolly-15k", split="train"), source="dolly"),
    hp.data.from_oasst(load_dataset("OpenAssistant/oasst1", split="train")),
])
pool.save_to_disk("pools/less_mix")
EOF
# 2. LESS warm-up on 5% for 4 epochs (App. A.3 model settings), then features on all GPUs:
accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/instruction_tuning.py \\
    --config recipes/configs/instruction_less_gpu.yaml --model meta-llama/Llama-2-7b-hf \\
    --train_path pools/less_mix --warmup_fraction 0.05 --warmup_epochs 4 --seeds 0 \\
    --output_dir runs/less_warmup
accelerate launch --multi_gpu --num_processes 8 -m recipes.less_features \\
    --warmup_dir runs/less_warmup/seed_0/warmup --train_path pools/less_mix \\
    --validation_path pools/less_targets --dim 8192 --output_dir runs/less_features
# 3. Subsets at 5% (and 1%, 10%), then LoRA on each (r=64, lr 1e-5, 4 epochs, batch 8 x 16), 3 seeds:
python - <<'EOF'
import hf_prune as hp
from datasets import load_from_disk
pool = load_from_disk("runs/less_features/scored_pool")
for name, sub in {
    "less": hp.select.top_k(pool, fraction=0.05, score_column="less"),
    "infomax": hp.select.infomax(pool, fraction=0.05, score_column="less", embedding_column="grad",
                                 device="cuda"),
}.items():
    sub.select_columns(["row_id"]).save_to_disk(f"subsets/less_mix_{name}_5")
EOF
accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/instruction_tuning.py \\
    --config recipes/configs/instruction_less_gpu.yaml --model meta-llama/Llama-2-7b-hf \\
    --train_path pools/less_mix --subset_path subsets/less_mix_infomax_5 --seeds 0 1 2 \\
    --output_dir runs/less_mix_infomax_5
# 4. MMLU (5-shot), TydiQA (1-shot, gold passage) and BBH (3-shot CoT) with lm-evaluation-harness:
lm_eval --model hf \\
    --model_args pretrained=meta-llama/Llama-2-7b-hf,peft=runs/less_mix_infomax_5/seed_0/adapter \\
    --tasks mmlu,tydiqa,bbh_cot_fewshot --batch_size 8
"""


# --------------------------------------------------------------------------------------------- stages
def run_recipe(argv: list[str], quiet: bool = True) -> dict:
    """`recipes.instruction_tuning.main` with its printing silenced (the benchmark prints one line a run).

    Example:
        >>> summary = run_recipe(["--train_path", "pool", "--epochs", "0", "--output_dir", "runs/base"])
    """
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        return recipe.main(argv)


def model_options(args) -> list[str]:
    """Recipe options of the model, LoRA and tokens (the same for the warm-up and every subset).

    Example:
        >>> model_options(make_parser().parse_args(["--model", "tiny"]))[:2]
        ['--model', 'tiny']
    """
    if args.model == "tiny":
        opts = [
            "--model",
            "tiny",
            "--vocab_size",
            "400",
            "--tiny_hidden_size",
            "32",
            "--lora_r",
            "4",
            "--lora_alpha",
            "8",
            "--learning_rate",
            "5e-3",
            "--max_new_tokens",
            "8",
            "--few_shot",
            "0",
        ]
    else:
        opts = [
            "--config",
            str(Path(recipe.__file__).parent / "configs" / "instruction_smollm2_cpu.yaml"),
            "--model",
            args.model,
            "--few_shot",
            str(args.few_shot),
        ]
    return opts + [
        "--max_length",
        str(args.max_length),
        "--batch_size",
        str(args.batch_size),
        "--checkpointing",
        "false",
        *(["--cpu"] if args.cpu else []),
    ]


def build_pool(out: Path, args) -> DatasetDict:
    """The pool (``train``) and the targets' ``validation`` and ``test`` rows, built once into ``out/pool``.

    ``--pool-path`` uses a saved DatasetDict in that layout instead. Otherwise: ShareGPT (`load_sharegpt`)
    and non-target BIG-bench tasks (`load_bigbench(exclude=BBH_TASKS)`, at most 20 rows a task) in equal
    shares, and the ``--targets`` BBH tasks as the held-out targets, via `build_instruction_pool` (which
    removes any pool row of a target task or with a target's prompt).

    Example:
        >>> pool = build_pool(Path("runs/x"), make_parser().parse_args(["--pool-size", "200"]))
        >>> sorted(pool)
        ['test', 'train', 'validation']
    """
    path = out / "pool"
    if (path / "dataset_dict.json").is_file():
        return load_from_disk(str(path))
    if args.pool_path:
        pool = load_from_disk(args.pool_path)
        if not isinstance(pool, DatasetDict) or not {"train", "validation", "test"} <= set(pool):
            raise ValueError(
                f"--pool-path {args.pool_path} must be a DatasetDict with train/validation/test splits"
            )
        summary = {"pool_path": args.pool_path}
    else:
        bigbench = args.bigbench or hp.data.bigbench_path()
        per_target = args.validation_per_task + args.test_per_task
        targets = hp.data.load_bigbench(
            bigbench, tasks=list(args.targets), max_examples_per_task=per_target, seed=0, progress=False
        )
        sources = {
            "sharegpt": hp.data.load_sharegpt(limit=4 * args.pool_size),
            "bigbench": hp.data.load_bigbench(
                bigbench, exclude=list(hp.data.BBH_TASKS), max_examples_per_task=20, seed=0, progress=False
            ),
        }
        pool, summary = hp.data.build_instruction_pool(
            sources,
            targets,
            pool_size=args.pool_size,
            shares={"sharegpt": 0.5, "bigbench": 0.5},
            validation_per_task=args.validation_per_task,
            test_per_task=args.test_per_task,
            seed=0,
            return_summary=True,
        )
    pool.save_to_disk(str(path))
    write_json(out / "pool_summary.json", summary)
    return load_from_disk(str(path))


def warm_up(out: Path, args) -> tuple[Path, dict]:
    """LESS warm-up on a random 5% (seed 0), one checkpoint per epoch; timed (cached in ``out/warmup``).

    Example:
        >>> warmup_dir, cost = warm_up(Path("runs/x"), args)
        >>> cost["warmup_rows"], cost["epochs"]
    """
    run_dir = out / "warmup"
    warmup_dir = run_dir / "seed_0" / "warmup"
    info_path = run_dir / "warmup_cost.json"
    if info_path.is_file():
        return warmup_dir, json.loads(info_path.read_text())
    start = time.perf_counter()
    metrics = run_recipe(
        model_options(args)
        + [
            "--train_path",
            str(out / "pool"),
            "--train_split",
            "train",
            "--warmup_fraction",
            str(args.warmup_fraction),
            "--warmup_epochs",
            str(args.warmup_epochs),
            "--seeds",
            "0",
            "--output_dir",
            str(run_dir),
            "--save_model",
            "false",
        ]
    )
    seed = json.loads((run_dir / "seed_0" / "metrics.json").read_text())
    info = {
        "warmup_s": time.perf_counter() - start,
        "warmup_train_s": metrics["train_time_s"]["mean"],
        "warmup_rows": seed["train_rows"],
        "warmup_tokens": seed["train_tokens"],
        "epochs": seed["epochs"],
        "epoch_mean_lr": seed["epoch_mean_lr"],
    }
    write_json(info_path, info)
    return warmup_dir, info


def scored_pool(out: Path, pool: DatasetDict, warmup_dir: Path, args) -> tuple[Dataset, dict]:
    """The pool with ``less``, ``less_01`` and ``grad`` (what the selectors read), computed once and cached.

    Example:
        >>> scored, cost = scored_pool(Path("runs/x"), pool, warmup_dir, args)
        >>> cost["gradient_s_per_1k_rows"]
    """
    path, info_path = out / "scored_pool", out / "features.json"
    if info_path.is_file():
        return load_from_disk(str(path)), json.loads(info_path.read_text())
    checkpoints = features.checkpoints_of(warmup_dir)
    info0 = checkpoints[0].info
    result = features.less_features(
        pool["train"],
        pool["validation"],
        checkpoints,
        tokenizer=checkpoints[0].load_tokenizer(),
        template=info0.get("template", "chat"),
        max_length=info0.get("max_length", args.max_length),
        dim=args.dim,
        seed=0,
        batch_size=args.gradient_batch_size,
        cache_dir=out / "cache",
        device="cpu" if args.cpu else None,
    )
    weights = result.checkpoint_weights
    scored = result.pool.select_columns(["row_id", "task", "source", "less", "grad"])
    # D² needs a non-negative node value: less ∈ [-W, W] with W = Σ weights, mapped to [0, 1].
    scored = add_column(
        scored, "less_01", (1.0 + read_vector(scored, "less", dtype=np.float64) / sum(weights)) / 2.0
    )
    scored.save_to_disk(str(path))
    less = read_vector(scored, "less", dtype=np.float64)
    info = {
        **result.timings,
        "checkpoint_weights": weights,
        "rows": len(scored),
        "tokenize": result.tokenize_stats,
        "less_mean": float(less.mean()),
        "less_std": float(less.std()),
        "less_by_source": {
            s: float(less[np.array(scored["source"]) == s].mean()) for s in sorted(set(scored["source"]))
        },
    }
    write_json(info_path, info)
    return load_from_disk(str(path)), info


# ------------------------------------------------------------------------------------------ methods
def methods() -> dict[str, Callable[[Dataset, float, int], Dataset]]:
    """Name → ``select(pool, fraction, seed)`` over the scored pool (``less``, ``less_01``, ``grad``).

    Example:
        >>> subset = methods()["InfoMax"](scored, 0.05, 0)
    """
    grad = {"embedding_column": "grad"}
    return {
        "random": lambda d, f, s: hp.select.random(d, fraction=f, seed=s),
        "LESS": lambda d, f, s: hp.select.top_k(d, fraction=f, score_column="less", seed=s),
        "InfoMax": lambda d, f, s: hp.select.infomax(
            d, fraction=f, score_column="less", k=5, alpha=0.3, iterations=20, partitions=1, seed=s, **grad
        ),
        "D² (LESS)": lambda d, f, s: hp.select.d2_pruning(
            d, fraction=f, score_column="less_01", seed=s, **grad
        ),
        "CCS (LESS)": lambda d, f, s: hp.select.ccs(
            d, fraction=f, score_column="less", descending=False, hard_cutoff=CCS_CUTOFF.get(f, 0.0), seed=s
        ),
        "Moderate (LESS)": lambda d, f, s: hp.select.moderate(d, fraction=f, score_column="less", seed=s),
    }


# ------------------------------------------------------------------------------------------ running
def train_entry(out: Path, name: str, fraction: float, seed: int, subset: Dataset | None, args) -> dict:
    """Train on ``subset`` (``None``: evaluate the untuned model) with the recipe; what a run records.

    Example:
        >>> entry = train_entry(Path("runs/x"), "LESS", 0.05, 0, subset, args)
        >>> entry["average"], entry["tasks"], entry["rows"]
    """
    run_dir = out / "runs" / f"{run_slug(name)}_{fraction}_{seed}"
    argv = model_options(args) + [
        "--train_path",
        str(out / "pool"),
        "--train_split",
        "train",
        "--eval_path",
        str(out / "pool"),
        "--eval_split",
        "test",
        "--shots_path",
        str(out / "pool"),
        "--shots_split",
        "validation",
        "--epochs",
        str(0 if subset is None else args.epochs),
        "--seeds",
        str(seed),
        "--output_dir",
        str(run_dir),
        "--save_model",
        "false",
    ]
    if subset is not None:
        subset_dir = out / "subsets" / f"{run_slug(name)}_{fraction}_{seed}"
        subset.select_columns(["row_id"]).save_to_disk(str(subset_dir))
        argv += ["--subset_path", str(subset_dir)]
    run_recipe(argv)
    metrics = json.loads((run_dir / f"seed_{seed}" / "metrics.json").read_text())
    return {
        "average": metrics["average"],
        "tasks": metrics["tasks"],
        "rows": metrics["train_rows"],
        "tokens": metrics["train_tokens"],
        "iterations": metrics["iterations"],
        "train_s": metrics["train_time_s"],
        "eval_s": metrics["eval_time_s"],
        "sources": _sources(subset) if subset is not None else {},
    }


def _sources(subset: Dataset) -> dict[str, float]:
    values, counts = np.unique(np.array(subset["source"]), return_counts=True)
    return {str(v): float(c) / len(subset) for v, c in zip(values, counts)}


def run_all(out: Path, pool: Dataset, args, results: dict) -> None:
    """Every (method, fraction, seed) run not in ``results`` yet, and the untuned model; saved after each.

    Example:
        >>> run_all(Path("runs/x"), scored, args, results)
    """
    key = f"{BASE}|0.0|0"
    if key not in results["runs"]:
        results["runs"][key] = {**train_entry(out, BASE, 0.0, 0, None, args), "select_s": 0.0}
        save_results(out, results)
        print(f"{key}: {_line(results['runs'][key])}", flush=True)
    # Seeds outermost: a run cut short still has complete tables for the seeds it finished.
    for seed in args.seeds:
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
                if entry["rows"] != len(subset):
                    raise RuntimeError(
                        f"{key}: the recipe trained on {entry['rows']} rows, the subset has {len(subset)}"
                    )
                results["runs"][key] = {**entry, "select_s": select_s}
                save_results(out, results)
                print(f"{key}: {_line(results['runs'][key])}", flush=True)


def _line(entry: dict) -> str:
    return (
        f"average {entry['average'] * 100:.1f}%  rows {entry['rows']}  select {entry['select_s']:.1f}s  "
        f"train {entry['train_s']:.0f}s  eval {entry['eval_s']:.0f}s"
    )




# ------------------------------------------------------------------------------------------ report
def _value(entry: dict, metric: str) -> float:
    return entry["average"] if metric == "average" else entry["tasks"][metric]


def summarize(results: dict, metric: str = "average") -> dict[str, dict[float, dict]]:
    """Method → kept fraction → aggregate of ``metric`` (``"average"`` or a task) over seeds (base at 0.0).

    Example:
        >>> summarize({"runs": {"LESS|0.05|0": {"average": 0.5, "tasks": {}}}})["LESS"][0.05]["mean"]
        0.5
    """
    runs = (
        run_key.split("|")[:2] + [_value(entry, metric)]
        for run_key, entry in results["runs"].items()
        if metric == "average" or metric in entry["tasks"]
    )
    return group_by_method(runs, [BASE, *methods()])


def claim_lines(results: dict, fraction: float = CLAIM_FRACTION) -> list[str]:
    """The paper's claim at 5% kept: InfoMax above LESS and D² on the average accuracy (seed means).

    A tie is not "above". The lines after the first give the per-task comparison, the reason for the verdict.

    Example:
        >>> claim_lines({"runs": {}})[0]
        '- average accuracy: not measured at 5% kept (needs InfoMax, LESS and D² at 0.05).'
    """
    rivals = ("LESS", "D² (LESS)")
    summary = summarize(results, "average")
    at = {n: summary.get(n, {}).get(fraction) for n in ("InfoMax", *rivals)}
    if any(v is None for v in at.values()):
        return [
            f"- average accuracy: not measured at {fraction:.0%} kept "
            f"(needs InfoMax, LESS and D² at {fraction})."
        ]
    ours = at["InfoMax"]["mean"]
    verdict = "agree" if all(ours > at[r]["mean"] for r in rivals) else "disagree"
    diffs = ", ".join(
        f"{r} {at[r]['mean'] * 100:.1f} ± {at[r]['std'] * 100:.1f} ({(ours - at[r]['mean']) * 100:+.1f})"
        for r in rivals
    )
    lines = [
        f"- average accuracy: **{verdict}** — InfoMax {ours * 100:.1f} ± {at['InfoMax']['std'] * 100:.1f}; "
        f"{diffs} (n = {at['InfoMax']['n']} seeds)."
    ]
    # Why: per target task, where the ordering holds or breaks.
    tasks = sorted(
        {t for k, e in results["runs"].items() if k.split("|")[0] == "InfoMax" for t in e["tasks"]}
    )
    for task in tasks:
        per = summarize(results, task)
        cells = {n: per.get(n, {}).get(fraction) for n in ("InfoMax", *rivals)}
        if any(v is None for v in cells.values()):
            continue
        above = all(cells["InfoMax"]["mean"] > cells[r]["mean"] for r in rivals)
        lines.append(
            f"  - {task}: InfoMax {cells['InfoMax']['mean'] * 100:.1f}, "
            + ", ".join(f"{r} {cells[r]['mean'] * 100:.1f}" for r in rivals)
            + (" (InfoMax above both)" if above else " (InfoMax not above both)")
        )
    return lines


def overlap_lines(results: dict, out: Path, fraction: float = CLAIM_FRACTION) -> list[str]:
    """How much of LESS's top-k each score-based method keeps (seed 0): whether they differ at all.

    Example:
        >>> overlap_lines(results, Path("runs/x"))[0]
        '- random: 6% of its rows are in LESS\'s top-k'
    """
    base = out / "subsets" / f"LESS_{fraction}_0"
    if not base.is_dir():
        return []
    less_rows = set(load_from_disk(str(base))["row_id"])
    lines = []
    for name in methods():
        path = out / "subsets" / f"{run_slug(name)}_{fraction}_0"
        if name != "LESS" and path.is_dir():
            rows = set(load_from_disk(str(path))["row_id"])
            lines.append(
                f"- {name}: {len(rows & less_rows) / max(1, len(rows)):.0%} of its rows are in LESS's top-k"
            )
    return lines


def cost_table(results: dict) -> str:
    """The markdown table of each stage's cost (warm-up, gradients per 1k rows, scoring, selection, runs).

    Example:
        >>> print(cost_table(results))
    """
    w, f = results.get("warmup", {}), results.get("features", {})
    sel: dict[str, list[float]] = {}
    train: list[float] = []
    evals: list[float] = []
    for key, entry in results["runs"].items():
        name = key.split("|")[0]
        if name != BASE:
            sel.setdefault(name, []).append(entry["select_s"])
            train.append(entry["train_s"])
        evals.append(entry["eval_s"])
    rows = [
        "| stage | cost |",
        "|---|---|",
        f"| warm-up ({w.get('warmup_rows', '?')} rows × {w.get('epochs', '?')} epochs) | "
        f"{w.get('warmup_s', float('nan')):.0f} s |",
        f"| gradient features ({f.get('gradient_rows', '?')} rows over all checkpoints, "
        f"{f.get('tokens_per_row', float('nan')):.0f} tokens/row) | "
        f"{f.get('gradient_s', float('nan')):.0f} s = "
        f"{f.get('gradient_s_per_1k_rows') or float('nan'):.0f} s per 1k rows |",
        f"| LESS scoring + combined features | {f.get('scoring_s', float('nan')):.2f} s |",
    ]
    rows += [f"| selection: {name} | {np.mean(sel[name]):.2f} s |" for name in methods() if name in sel]
    if train:
        rows.append(f"| LoRA training per subset (mean) | {np.mean(train):.0f} s |")
    if evals:
        rows.append(f"| evaluation per run (mean) | {np.mean(evals):.0f} s |")
    return "\n".join(rows)


def plot(results: dict, path: Path) -> None:
    """Average accuracy against the kept fraction, one line per method, the untuned model dashed.

    Example:
        >>> plot(results, Path("runs/x/accuracy_vs_budget.png"))
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 1, figsize=(7, 5))
    plot_methods_vs_fraction(ax, summarize(results, "average"), baseline=BASE, baseline_fraction=0.0,
                             highlight=("InfoMax", "LESS"), markersize=4)
    ax.set_title("average accuracy on the target tasks")
    ax.set_xlabel("kept fraction of the pool (%)")
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
    save_with_shared_legend(fig, [ax], path)


def report(out: Path, results: dict) -> str:
    """Write ``report.md`` and the plot from ``results``; returns the report's text.

    Example:
        >>> text = report(Path("runs/x"), json.loads(Path("runs/x/results.json").read_text()))
    """
    fractions = sorted({float(k.split("|")[1]) for k in results["runs"]} - {0.0})
    seeds = sorted({k.split("|")[2] for k in results["runs"] if not k.startswith(BASE)})
    tasks = sorted({t for e in results["runs"].values() for t in e["tasks"]})
    base = summarize(results, "average").get(BASE, {}).get(0.0)
    parts = [
        f"Settings: {json.dumps(results['settings'])}",
        "",
        f"Floor (untuned model): average {base['mean'] * 100:.1f}%." if base else "Floor: not measured.",
        "",
        f"#### Average accuracy over the {len(tasks)} target tasks (%), "
        f"mean ± std over seeds {', '.join(seeds)}",
        "",
        mean_std_table({k: v for k, v in summarize(results, "average").items() if k != BASE}, fractions),
        "",
    ]
    for task in tasks:
        parts += [
            f"#### {task} (%)",
            "",
            mean_std_table({k: v for k, v in summarize(results, task).items() if k != BASE}, fractions),
            "",
        ]
        floor = summarize(results, task).get(BASE, {}).get(0.0)
        if floor:
            parts += [f"Untuned: {floor['mean'] * 100:.1f}%.", ""]
    parts += ["#### Cost per stage", "", cost_table(results), ""]
    f = results.get("features", {})
    if f.get("less_by_source"):
        parts += [
            "Mean LESS score by source: " + ", ".join(f"{s} {v:.2e}" for s, v in f["less_by_source"].items()),
            "",
        ]
    overlap = overlap_lines(results, out)
    if overlap:
        parts += [f"#### Overlap with LESS's top-k at {CLAIM_FRACTION:.0%} (seed 0)", "", *overlap, ""]
    parts += ["#### The paper's claim: InfoMax above LESS and D² at 5% kept", "", *claim_lines(results), ""]
    text = "\n".join(parts)
    (out / "report.md").write_text(text)
    plot(results, out / "accuracy_vs_budget.png")
    return text


def make_parser() -> argparse.ArgumentParser:
    """The command-line options (``--help``).

    Example:
        >>> make_parser().parse_args([]).pool_size
        1000
    """
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--output-dir", default="runs/reproduce_instruction")
    p.add_argument(
        "--model", default="smollm2", help="smollm2 (offline GGUF), tiny, or a Hub id / local folder"
    )
    p.add_argument(
        "--pool-size", type=int, default=1000, help="rows of the pool to prune (before tokenising)"
    )
    p.add_argument(
        "--targets", nargs="+", default=list(TARGETS), help="held-out BIG-bench (BBH) target tasks"
    )
    p.add_argument(
        "--bigbench", default=None, help="the bigbench sdist .tar.gz (default: $HF_PRUNE_BIGBENCH)"
    )
    p.add_argument(
        "--pool-path", default=None, help="a saved DatasetDict (train/validation/test) to use as the pool"
    )
    p.add_argument(
        "--validation-per-task", type=int, default=4, help="validation rows per target task (LESS: a few)"
    )
    p.add_argument("--test-per-task", type=int, default=10, help="test rows per target task")
    p.add_argument("--max-length", type=int, default=128, help="tokens per example (longer ones are cut)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--few-shot", type=int, default=0, help="solved validation examples in each evaluation prompt"
    )
    p.add_argument("--warmup-fraction", type=float, default=0.05, help="LESS: 5%% of the pool")
    p.add_argument("--warmup-epochs", type=int, default=2, help="warm-up epochs = checkpoints (LESS: 4)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs on each subset (App. A.3: 4)")
    p.add_argument("--dim", type=int, default=2048, help="gradient projection dimension (LESS: 8192)")
    p.add_argument("--gradient-batch-size", type=int, default=8)
    p.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=None, help="only these methods (names as in the tables)")
    p.add_argument("--quick", action="store_true", help="tiny end-to-end check: " + json.dumps(QUICK))
    p.add_argument("--gpu", action="store_true", help="print the commands of the paper-sized run and exit")
    p.add_argument("--cpu", action="store_true", help="run on CPU even when a GPU is present")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--report-only", action="store_true")
    return p


SETTINGS = (
    "model",
    "pool_size",
    "targets",
    "pool_path",
    "validation_per_task",
    "test_per_task",
    "max_length",
    "batch_size",
    "few_shot",
    "warmup_fraction",
    "warmup_epochs",
    "epochs",
    "dim",
)


def main(argv: list[str] | None = None) -> dict:
    """Run (or resume) the reproduction and write the report; returns ``results``.

    Example:
        >>> results = main(["--quick", "--output-dir", "runs/reproduce_instruction_quick"])
        >>> sorted(results["runs"])[0]
        'D² (LESS)|0.05|0'
    """
    args = make_parser().parse_args(argv)
    out = prepare_run(args, methods=methods(), quick=QUICK, gpu_commands=GPU_COMMANDS)
    if out is None:
        return {}
    results = load_results(out, {k: getattr(args, k) for k in SETTINGS}, report_only=args.report_only)
    results["metadata"] = run_metadata({"args": vars(args)}, argv)
    if not args.report_only:
        save_results(out, results)  # the settings first: the cached stages below belong to them
        pool = build_pool(out, args)
        warmup_dir, results["warmup"] = warm_up(out, args)
        scored, results["features"] = scored_pool(out, pool, warmup_dir, args)
        save_results(out, results)
        run_all(out, scored, args, results)
        save_results(out, results)
    text = report(out, results)
    print(text)
    return results


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
