"""Reproduce the InfoMax paper's instruction-tuning comparison (Sec. 4.3, Fig. 6, App. A.3) at CPU size, with
the later RDS+ study's methods beside it: LESS warm-up → gradient columns → LESS score (and per task), and
the untuned model's hidden states → RDS score (and per task) → each selector keeps 5% / 10% of an
instruction pool → LoRA-tune the model on each subset with ``recipes/instruction_tuning.py`` → accuracy per
held-out target task, next to what each method's selection cost.

Protocol (everything through the public API, `recipes.less_features` and the instruction-tuning recipe):

1. Pool: `hf_prune.data.build_instruction_pool` (ShareGPT conversations + non-target BIG-bench tasks as
   the ``train`` split to prune; held-out target tasks with a few ``validation`` rows each, LESS's
   handful per task, and their ``test`` rows), saved once to ``<output-dir>/pool``.
2. LESS warm-up (seed 0): the recipe with ``--warmup_fraction 0.05`` (LESS's 5%) for ``--warmup-epochs``
   epochs, one checkpoint per epoch (adapter, Adam moments, mean learning rate).
3. Features, computed once and reused by every method and seed: `recipes.less_features.less_features`
   → one projected gradient column per checkpoint (Adam directions for the pool, plain gradients for the
   validation rows; ``--dim``), the ``less`` score (lr-weighted cosine, mean per target task, max over
   tasks), ``less_tasks`` (the per-task scores before that max, tasks in sorted order) and ``grad`` (the
   lr-weighted unit gradients concatenated: inner product = LESS's weighted cosine).
   Hidden states (RDS+, Ivison et al. 2025), also computed once: `hp.embed.HiddenStateEmbedder` of the
   untuned base model (no warm-up: RDS+ uses the model before tuning), RDS+'s setting (last layer,
   position-weighted mean, L2-normalised), over the same rows and tokens (chat-templated prompt and
   response cut to ``--max-length``) and the validation rows → ``hidden``; `hp.score.rds` (cosine, max
   over a task's validation rows as RDS+, max over tasks) → ``rds`` and ``rds_tasks``. Its cost (model
   loading, forward passes in seconds and per 1,000 rows, scoring) is recorded like the other stages.
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
   From the RDS+ study: **LESS-RR** (`round_robin` over ``less_tasks``: the target tasks take turns
   picking their best row not yet taken); **RDS+** (`top_k` on ``rds``); **RDS+-RR** (`round_robin`
   over ``rds_tasks``, the RDS+ paper's own selection); **InfoMax over RDS** (I = ``rds``, K from
   ``hidden``, the settings of InfoMax over LESS). `FEATURES` says which features each method reads.
5. Training: the recipe on each subset (``--epochs`` epochs; LoRA as in
   `recipes/configs/instruction_smollm2_cpu.yaml`),
   then `recipes.trainer.llm_eval.evaluate_tasks` on the target tasks' test rows (multiple-choice
   log-likelihood for tasks with choices, exact match of the greedy answer otherwise). The untuned model
   (``--epochs 0``) is the floor.
6. Output in ``--output-dir``: ``results.json`` (every run and the stage costs; rerunning resumes),
   ``report.md`` (mean ± std over seeds per target task and on average; a quality-vs-cost table, one
   row per method: accuracy per budget, warm-up, features per 1,000 examples, scoring and selection
   seconds measured in the run; the per-stage cost table) and ``accuracy_vs_budget.png``. The report
   marks as agree or disagree with the measured numbers the InfoMax paper's claim "InfoMax above LESS and
   D² at 5%" and the RDS+ study's "RDS+ above LESS" (at every budget) and "round-robin helps at small
   budgets" (LESS-RR above LESS and RDS+-RR above RDS+ at the smallest budget), each with the per-task
   numbers, the subsets' source mix and how the top-k subsets split over the tasks, the measured reason
   when a claim is not seen.

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
- hidden states, once: 794 rows × one forward pass of 106 tokens / 700 ≈ 0.15 s ≈ 2 min;
- training: 3 seeds × 10 methods × (38 + 77 rows) × 2 epochs × 106 tokens / 240 ≈ 51 min;
- evaluation: 61 runs (60 + the untuned model) × 60 rows × 0.4 s ≈ 25 min;

≈ 1.5 h on an idle core (the four RDS+-study methods add ≈ 0.5 h of it); sharing the machine with one
other job (≈ 2.5× slower) ≈ 4 h, and under the load the rates above were measured at (≈ 5×) about
8 h: lower ``--pool-size``, ``--test-per-task`` or ``--seeds`` then. A measured reduced run (80-row pool,
3 targets, 1 seed, 10% kept) under that load took
22 s warm-up, 328 s for 128 gradient rows, 15 s training and 27 s evaluation per subset.
With the RDS+ study's methods (200-row pool → 150 rows, 3 targets, 2 seeds, 5% and 10% kept; stored in
``results/instruction_tuning_rds.json``), load 2–10: warm-up 107 s, gradients 1,010 s for 324 rows
(3.1 s a row per checkpoint), hidden states 150 s for 162 rows (0.93 s a row), training 12–52 s and
evaluation 27–54 s per subset; 48 min for the first seed (features included), 19 min for the second.

Default (CPU, ≈ 4 h in the background next to one other job; not run by the tests; ``bash scripts/dev.sh llm``
puts SmolLM2 and the BIG-bench sdist where the loaders find them, or set ``HF_PRUNE_BIGBENCH``)::

    OMP_NUM_THREADS=1 nohup \\
        python recipes/benchmarks/reproduce_instruction_tuning.py --threads 1 \\
        --output-dir runs/reproduce_instruction > runs/reproduce_instruction.log 2>&1 &

Quick end-to-end check (about two minutes): ``--quick`` (the recipe's tiny Llama, a 240-row pool with two
target tasks, one seed, LESS, InfoMax, D², LESS-RR, RDS+, RDS+-RR and InfoMax over RDS at 5%); with
``--pool-path`` (a saved train/validation/test DatasetDict in the schema) it needs neither ShareGPT nor
the BIG-bench sdist, as in the tests.
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
from hf_prune.ops.columns import add_column, read_matrix, read_vector
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
    "methods": ["LESS", "InfoMax", "D² (LESS)", "LESS-RR", "RDS+", "RDS+-RR", "InfoMax over RDS"],
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


def score_summary(name: str, values: np.ndarray, sources) -> dict:
    """``<name>_mean``, ``<name>_std`` and ``<name>_by_source`` (the mean per pool source) of a score column."""
    sources = np.array(sources)
    return {
        f"{name}_mean": float(values.mean()),
        f"{name}_std": float(values.std()),
        f"{name}_by_source": {s: float(values[sources == s].mean()) for s in sorted(set(sources))},
    }


def scored_pool(out: Path, pool: DatasetDict, warmup_dir: Path, args) -> tuple[Dataset, dict]:
    """The pool with ``less``, ``less_tasks``, ``less_01`` and ``grad`` (what the selectors read), cached.

    ``less_tasks`` holds the per-task LESS scores (tasks in sorted order, ``cost["tasks"]``), the input
    of LESS-RR.

    Example:
        >>> scored, cost = scored_pool(Path("runs/x"), pool, warmup_dir, args)
        >>> cost["gradient_s_per_1k_rows"]
    """
    path, info_path = out / "scored_pool", out / "features.json"
    if info_path.is_file():
        cached = load_from_disk(str(path))
        if "less_tasks" not in cached.column_names:
            raise SystemExit(
                f"{path} was made before the per-task LESS column (less_tasks) existed: "
                "use a new --output-dir (or --report-only for its old report)"
            )
        return cached, json.loads(info_path.read_text())
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
    scored = result.pool.select_columns(["row_id", "task", "source", "less", "less_tasks", "grad"])
    # D² needs a non-negative node value: less ∈ [-W, W] with W = Σ weights, mapped to [0, 1].
    scored = add_column(
        scored, "less_01", (1.0 + read_vector(scored, "less", dtype=np.float64) / sum(weights)) / 2.0
    )
    scored.save_to_disk(str(path))
    less = read_vector(scored, "less", dtype=np.float64)
    info = {
        **result.timings,
        "checkpoint_weights": weights,
        "tasks": result.tasks,
        "rows": len(scored),
        "tokenize": result.tokenize_stats,
        **score_summary("less", less, scored["source"]),
    }
    write_json(info_path, info)
    return load_from_disk(str(path)), info


def hidden_state_pool(
    out: Path, pool: DatasetDict, scored: Dataset, warmup_dir: Path, args
) -> tuple[Dataset, dict]:
    """The scored pool plus ``hidden``, ``rds`` and ``rds_tasks`` (RDS+'s representation and score), cached.

    RDS+'s setting: `hp.embed.HiddenStateEmbedder` (last layer, position-weighted mean, L2-normalised) of
    the untuned base model (the warm-up's base: RDS+ needs no warm-up) over the same tokens the
    gradients were taken over (the chat-templated prompt and response, cut to ``--max-length``), for the
    rows of ``scored`` (those with gradient features) and the targets' validation rows; then
    `hp.score.rds` (max cosine over a task's examples, max over tasks into ``rds``, the per-task
    scores into ``rds_tasks``, tasks in sorted order). The cost is measured: model loading, the
    forward passes (seconds and seconds per 1,000 rows) and the scoring.

    Example:
        >>> rds_pool, cost = hidden_state_pool(Path("runs/x"), pool, scored, warmup_dir, args)
        >>> cost["hidden_s_per_1k_rows"], rds_pool.column_names[-3:]
    """
    from hf_prune.score.less import dataset_tasks
    from recipes.trainer.llm import load_causal_lm

    path, info_path = out / "rds_pool", out / "hidden_states.json"
    if info_path.is_file():
        return load_from_disk(str(path)), json.loads(info_path.read_text())
    ckpt = features.checkpoints_of(warmup_dir)[0]
    template = ckpt.info.get("template", "chat")
    max_length = ckpt.info.get("max_length", args.max_length)
    clock = time.perf_counter()
    tokenizer = ckpt.load_tokenizer()
    base = ckpt.info["base_model"]
    model, tokenizer = load_causal_lm(base["path"] or base["name"], tokenizer=tokenizer)
    load_s = time.perf_counter() - clock
    rows, _ = features.tokenized(
        pool["train"], tokenizer, template=template, max_length=max_length, name="pool", on_invalid="skip"
    )
    position = {int(r): i for i, r in enumerate(rows["row_id"])}
    rows = rows.select([position[int(r)] for r in scored["row_id"]])  # the scored pool's rows, in its order
    targets, _ = features.tokenized(
        pool["validation"], tokenizer, template=template, max_length=max_length, name="validation set"
    )
    embedder = hp.embed.HiddenStateEmbedder(
        model,
        tokenizer=tokenizer,
        input_ids_column="input_ids",
        layer=-1,
        pooling="weighted_mean",
        max_length=max_length,
        output_column="hidden",
        batch_size=args.hidden_batch_size,
        device="cpu" if args.cpu else None,
    )
    clock = time.perf_counter()
    rows = embedder.map(rows)
    pool_s = time.perf_counter() - clock
    clock = time.perf_counter()
    targets = embedder.map(targets)
    target_s = time.perf_counter() - clock
    del model, embedder
    clock = time.perf_counter()
    rds_pool = add_column(scored, "hidden", read_matrix(rows, "hidden"))
    rds_pool = hp.score.rds(
        rds_pool,
        targets,
        embedding_column="hidden",
        task_column="task",
        example_reduce="max",
        reduce="max",
        output_column="rds",
        per_task_column="rds_tasks",
    )
    scoring_s = time.perf_counter() - clock
    rds_pool.save_to_disk(str(path))
    hidden_rows = len(rows) + len(targets)
    rds = read_vector(rds_pool, "rds", dtype=np.float64)
    info = {
        "model_load_s": load_s,
        "hidden_pool_s": pool_s,
        "hidden_target_s": target_s,
        "hidden_rows": hidden_rows,
        "hidden_s": pool_s + target_s,
        "hidden_s_per_1k_rows": 1000 * (pool_s + target_s) / hidden_rows,
        "tokens_per_row": float(np.mean([len(r) for r in rows["input_ids"]])),
        "scoring_s": scoring_s,
        "tasks": dataset_tasks(targets, "task")[0],
        "batch_size": args.hidden_batch_size,
        **score_summary("rds", rds, rds_pool["source"]),
    }
    write_json(info_path, info)
    return load_from_disk(str(path)), info


# ------------------------------------------------------------------------------------------ methods
def methods() -> dict[str, Callable[[Dataset, float, int], Dataset]]:
    """Name → ``select(pool, fraction, seed)`` over the scored pool (`hidden_state_pool`'s columns).

    LESS-based methods read ``less``/``less_01``/``less_tasks``/``grad``; RDS-based ones
    ``rds``/``rds_tasks``/``hidden``. `FEATURES` says which features each needs (its cost).

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
        "LESS-RR": lambda d, f, s: hp.select.round_robin(d, fraction=f, score_column="less_tasks", seed=s),
        "RDS+": lambda d, f, s: hp.select.top_k(d, fraction=f, score_column="rds", seed=s),
        "RDS+-RR": lambda d, f, s: hp.select.round_robin(d, fraction=f, score_column="rds_tasks", seed=s),
        "InfoMax over RDS": lambda d, f, s: hp.select.infomax(
            d, fraction=f, score_column="rds", embedding_column="hidden", k=5, alpha=0.3, iterations=20,
            partitions=1, seed=s,
        ),
    }


# Which features (hence which measured cost) each method reads: LESS's warm-up and gradients, or RDS+'s
# forward pass of the untuned model; random reads none.
FEATURES = {
    "random": None,
    "LESS": "less",
    "InfoMax": "less",
    "D² (LESS)": "less",
    "CCS (LESS)": "less",
    "Moderate (LESS)": "less",
    "LESS-RR": "less",
    "RDS+": "rds",
    "RDS+-RR": "rds",
    "InfoMax over RDS": "rds",
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


def _cell(results: dict, name: str, fraction: float, metric: str = "average") -> dict | None:
    return summarize(results, metric).get(name, {}).get(fraction)


def _fractions(results: dict, *names: str) -> list[float]:
    """The kept fractions at which every one of ``names`` was measured, ascending."""
    per = summarize(results, "average")
    common = [set(per.get(n, {})) for n in names]
    return sorted(set.intersection(*common) - {0.0}) if common else []


def _tasks(results: dict, names) -> list[str]:
    return sorted({t for k, e in results["runs"].items() if k.split("|")[0] in names for t in e["tasks"]})


def _source_share(results: dict, name: str, fraction: float) -> dict[str, float]:
    """Mean share of each source in ``name``'s subsets at ``fraction`` over its seeds."""
    entries = [e for k, e in results["runs"].items() if k.split("|")[:2] == [name, str(fraction)]]
    sources = sorted({s for e in entries for s in e.get("sources", {})})
    return {s: float(np.mean([e.get("sources", {}).get(s, 0.0) for e in entries])) for s in sources}


def _pair(results: dict, ours: str, rival: str, fraction: float) -> str:
    a, b = _cell(results, ours, fraction), _cell(results, rival, fraction)
    return (
        f"{fraction:.0%}: {ours} {a['mean'] * 100:.1f} ± {a['std'] * 100:.1f} vs {rival} "
        f"{b['mean'] * 100:.1f} ± {b['std'] * 100:.1f} ({(a['mean'] - b['mean']) * 100:+.1f})"
    )


def _per_task_lines(results: dict, pairs: list[tuple[str, str]], fractions: list[float]) -> list[str]:
    """One line per target task: each pair's accuracies at each fraction (the reason behind a verdict)."""
    lines = []
    for task in _tasks(results, {n for pair in pairs for n in pair}):
        cells = []
        for fraction in fractions:
            for ours, rival in pairs:
                a, b = _cell(results, ours, fraction, task), _cell(results, rival, fraction, task)
                if a and b:
                    cells.append(
                        f"{fraction:.0%} {ours} {a['mean'] * 100:.1f} vs {rival} {b['mean'] * 100:.1f}"
                    )
        if cells:
            lines.append(f"  - {task}: " + "; ".join(cells))
    return lines


def rds_claim_lines(results: dict) -> list[str]:
    """The RDS+ study's claim: RDS+ above LESS (average accuracy, seed means, at every measured budget).

    The verdict compares the top-k forms (RDS+ vs LESS); the lines after it give the round-robin forms,
    each target task and the subsets' source mix (the measured reason when the claim is not seen).

    Example:
        >>> rds_claim_lines({"runs": {}})[0]
        '- RDS+ above LESS: not measured (needs RDS+ and LESS at the same budget).'
    """
    fractions = _fractions(results, "RDS+", "LESS")
    if not fractions:
        return ["- RDS+ above LESS: not measured (needs RDS+ and LESS at the same budget)."]
    above = [_cell(results, "RDS+", f)["mean"] > _cell(results, "LESS", f)["mean"] for f in fractions]
    verdict = "agree" if all(above) else "disagree"
    n = _cell(results, "RDS+", fractions[0])["n"]
    lines = [
        f"- RDS+ above LESS (average accuracy): **{verdict}** — "
        + "; ".join(_pair(results, "RDS+", "LESS", f) for f in fractions)
        + f" (n = {n} seeds)."
    ]
    rr = _fractions(results, "RDS+-RR", "LESS-RR")
    if rr:
        pairs = "; ".join(_pair(results, "RDS+-RR", "LESS-RR", f) for f in rr)
        lines.append(f"  - round-robin on both: {pairs}")
    lines += _per_task_lines(results, [("RDS+", "LESS")], fractions)
    for f in fractions:
        mix = {n: _source_share(results, n, f) for n in ("RDS+", "LESS")}
        lines.append(
            f"  - sources at {f:.0%}: "
            + "; ".join(f"{n} " + ", ".join(f"{s} {v:.0%}" for s, v in m.items()) for n, m in mix.items())
        )
    return lines


RR_PAIRS = (("LESS-RR", "LESS"), ("RDS+-RR", "RDS+"))


def rr_claim_lines(results: dict) -> list[str]:
    """The claim "round-robin helps at small budgets": at the smallest measured budget each round-robin
    form (LESS-RR, RDS+-RR) above its top-k form (LESS, RDS+), on the average accuracy (seed means).

    The lines after the verdict give the gap at every budget (whether it shrinks as the budget grows)
    and per target task.

    Example:
        >>> rr_claim_lines({"runs": {}})[0]
        '- round-robin helps at small budgets: not measured (needs LESS-RR and LESS, or RDS+-RR and RDS+).'
    """
    pairs = [pair for pair in RR_PAIRS if _fractions(results, *pair)]
    if not pairs:
        return [
            "- round-robin helps at small budgets: not measured "
            "(needs LESS-RR and LESS, or RDS+-RR and RDS+)."
        ]
    small = min(min(_fractions(results, *pair)) for pair in pairs)
    pairs = [pair for pair in pairs if small in _fractions(results, *pair)]
    above = [_cell(results, a, small)["mean"] > _cell(results, b, small)["mean"] for a, b in pairs]
    verdict = "agree" if all(above) else "disagree"
    lines = [
        f"- round-robin helps at small budgets ({small:.0%} kept, the smallest measured): **{verdict}** — "
        + "; ".join(_pair(results, a, b, small) for a, b in pairs)
        + f" (n = {_cell(results, pairs[0][0], small)['n']} seeds)."
    ]
    for a, b in pairs:
        gaps = ", ".join(
            f"{f:.0%} {(_cell(results, a, f)['mean'] - _cell(results, b, f)['mean']) * 100:+.1f}"
            for f in _fractions(results, a, b)
        )
        lines.append(f"  - {a} − {b} by budget: {gaps}")
    lines += _per_task_lines(results, pairs, [small])
    return lines


def balance_lines(out: Path, fraction: float = CLAIM_FRACTION) -> list[str]:
    """How the seed-0 top-k subsets (LESS, RDS+) at ``fraction`` split over the target tasks, each row
    counted for the task it scores highest for (its per-task column's argmax), and how many rows each
    shares with its round-robin form. Round-robin gives every task its turns; when top-k is already
    spread over the tasks the two keep mostly the same rows, and round-robin cannot change much.

    Example:
        >>> balance_lines(Path("runs/x"))[0]
        '- LESS (top-k): best task navigate 4, sports_understanding 8; 75% of its rows also in LESS-RR'
    """
    path, info_path = out / "rds_pool", out / "hidden_states.json"
    if not (path / "dataset_info.json").is_file() or not info_path.is_file():
        return []
    pool = load_from_disk(str(path))
    tasks = json.loads(info_path.read_text())["tasks"]
    position = {int(r): i for i, r in enumerate(pool["row_id"])}
    lines = []
    for rr, top in RR_PAIRS:
        subsets = {n: out / "subsets" / f"{run_slug(n)}_{fraction}_0" for n in (top, rr)}
        if not all(p.is_dir() for p in subsets.values()):
            continue
        rows = {n: [position[int(r)] for r in load_from_disk(str(p))["row_id"]] for n, p in subsets.items()}
        best = read_matrix(pool, f"{FEATURES[top]}_tasks").argmax(axis=1)
        counts = np.bincount(best[rows[top]], minlength=len(tasks))
        common = len(set(rows[top]) & set(rows[rr])) / max(1, len(rows[top]))
        lines.append(
            f"- {top} (top-k): best task " + ", ".join(f"{t} {c}" for t, c in zip(tasks, counts))
            + f"; {common:.0%} of its rows also in {rr}"
        )
    return lines


def resolution_lines(out: Path, results: dict) -> list[str]:
    """What one test answer is worth and how many runs the training moved off the untuned model.

    With a few test rows per task, accuracies move in steps of ``100 / n`` points; a claim decided by
    a difference of one or two such steps is within the evaluation's resolution. Counted from the saved
    pool's test split and the runs.

    Example:
        >>> resolution_lines(Path("runs/x"), results)[0]
        '- test rows per task: navigate 10, sports_understanding 10: one answer = 10.0 points of a task, 5.0 of the average'
    """
    path = out / "pool" / "dataset_dict.json"
    if not path.is_file():
        return []
    test = load_from_disk(str(out / "pool"))["test"]
    tasks, counts = np.unique(np.array(test["task"]), return_counts=True)
    step = 100.0 / counts
    lines = [
        "- test rows per task: " + ", ".join(f"{t} {c}" for t, c in zip(tasks, counts))
        + f": one answer = {step.max():.1f} points of a task, {step.mean() / len(tasks):.1f} of the average"
    ]
    base = results["runs"].get(f"{BASE}|0.0|0")
    if base:
        trained = [e for k, e in results["runs"].items() if not k.startswith(BASE)]
        same = sum(e["tasks"] == base["tasks"] for e in trained)
        lines.append(
            f"- {same} of {len(trained)} trained runs have every task's accuracy equal to the untuned model's"
        )
    return lines


def method_costs(results: dict) -> dict[str, dict]:
    """Method → what its selection cost before training, measured in this run.

    ``warmup_s`` (LESS's warm-up; 0 for RDS, which uses the untuned model), ``features_s`` and
    ``features_s_per_1k`` (per 1,000 examples, pool and validation rows, over all checkpoints: LESS's
    gradients at every warm-up checkpoint, RDS's one forward pass), ``scoring_s`` and ``selection_s``
    (the mean over its runs), and ``total_s``, their sum. Random needs no features.

    Example:
        >>> method_costs(results)["RDS+"]["warmup_s"]
        0.0
    """
    w, f, h = results.get("warmup", {}), results.get("features", {}), results.get("hidden_states", {})
    nan = float("nan")
    checkpoints = max(1, len(f.get("checkpoint_weights", [])))
    examples = f.get("gradient_rows", 0) / checkpoints
    kinds = {
        "less": {
            "features": "LoRA gradients",
            "warmup_s": w.get("warmup_s", nan),
            "features_s": f.get("gradient_s", nan),
            "features_s_per_1k": 1000 * f["gradient_s"] / examples if examples and "gradient_s" in f else nan,
            "scoring_s": f.get("scoring_s", nan),
        },
        "rds": {
            "features": "hidden states",
            "warmup_s": 0.0,
            "features_s": h.get("hidden_s", nan),
            "features_s_per_1k": h.get("hidden_s_per_1k_rows", nan),
            "scoring_s": h.get("scoring_s", nan),
        },
        None: {
            "features": "none",
            "warmup_s": 0.0,
            "features_s": 0.0,
            "features_s_per_1k": 0.0,
            "scoring_s": 0.0,
        },
    }
    selection: dict[str, list[float]] = {}
    for key, entry in results["runs"].items():
        name = key.split("|")[0]
        if name != BASE:
            selection.setdefault(name, []).append(entry["select_s"])
    costs = {}
    for name in [n for n in methods() if n in selection] + sorted(set(selection) - set(methods())):
        cost = {**kinds[FEATURES.get(name)], "selection_s": float(np.mean(selection[name]))}
        cost["total_s"] = sum(cost[k] for k in ("warmup_s", "features_s", "scoring_s", "selection_s"))
        costs[name] = cost
    return costs


def quality_cost_table(results: dict) -> str:
    """One row per method: average accuracy per kept fraction (mean ± std over seeds) and its measured cost.

    Example:
        >>> print(quality_cost_table(results))
    """
    fractions = sorted({float(k.split("|")[1]) for k in results["runs"]} - {0.0})
    summary = summarize(results, "average")
    head = (
        "| method | "
        + " | ".join(f"{f:.0%} kept" for f in fractions)
        + " | features | warm-up s | features s / 1k examples | scoring s | selection s | total s |"
    )
    lines = [head, "|---|" + "---:|" * len(fractions) + "---|---:|---:|---:|---:|---:|"]
    base = summary.get(BASE, {}).get(0.0)
    if base:
        lines.append(
            f"| {BASE} | "
            + " | ".join(f"{base['mean'] * 100:.1f}" for _ in fractions)
            + " | – | – | – | – | – | – |"
        )
    for name, c in method_costs(results).items():
        cells = []
        for f in fractions:
            a = summary.get(name, {}).get(f)
            cells.append(f"{a['mean'] * 100:.1f} ± {a['std'] * 100:.1f}" if a else "–")
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {c['features']} | {c['warmup_s']:.0f} | "
            f"{c['features_s_per_1k']:.0f} | {c['scoring_s']:.2f} | {c['selection_s']:.2f} | "
            f"{c['total_s']:.0f} |"
        )
    return "\n".join(lines)


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
    h = results.get("hidden_states")
    if h:
        rows += [
            f"| base model loading (RDS) | {h['model_load_s']:.1f} s |",
            f"| hidden states, untuned model ({h['hidden_rows']} rows, "
            f"{h['tokens_per_row']:.0f} tokens/row) | "
            f"{h['hidden_s']:.0f} s = {h['hidden_s_per_1k_rows']:.0f} s per 1k rows |",
            f"| RDS scoring | {h['scoring_s']:.2f} s |",
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
    parts += [
        "#### Quality vs cost (average accuracy %, mean ± std over seeds; cost measured in this run)",
        "",
        quality_cost_table(results),
        "",
        "Features per 1,000 examples: LESS's gradients at every warm-up checkpoint, RDS's one forward pass "
        "of the untuned model; total = warm-up + features + scoring + selection (before training).",
        "",
        "#### Cost per stage",
        "",
        cost_table(results),
        "",
    ]
    f = results.get("features", {})
    if f.get("less_by_source"):
        parts += [
            "Mean LESS score by source: " + ", ".join(f"{s} {v:.2e}" for s, v in f["less_by_source"].items()),
            "",
        ]
    h = results.get("hidden_states", {})
    if h.get("rds_by_source"):
        parts += [
            "Mean RDS score by source: " + ", ".join(f"{s} {v:.3f}" for s, v in h["rds_by_source"].items()),
            "",
        ]
    overlap = overlap_lines(results, out)
    if overlap:
        parts += [f"#### Overlap with LESS's top-k at {CLAIM_FRACTION:.0%} (seed 0)", "", *overlap, ""]
    parts += ["#### The paper's claim: InfoMax above LESS and D² at 5% kept", "", *claim_lines(results), ""]
    parts += ["#### The RDS+ study's claims", "", *rds_claim_lines(results), *rr_claim_lines(results), ""]
    resolution = resolution_lines(out, results)
    if resolution:
        parts += ["Resolution of the evaluation:", "", *resolution, ""]
    small = min(fractions) if fractions else CLAIM_FRACTION
    balance = balance_lines(out, small)
    if balance:
        parts += [
            f"Task balance at {small:.0%} (seed 0; each row counted for the task it scores highest for):",
            "",
            *balance,
            "",
        ]
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
    p.add_argument(
        "--hidden-batch-size", type=int, default=16, help="rows per forward pass of the hidden-state embedder"
    )
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
        scored, results["hidden_states"] = hidden_state_pool(out, pool, scored, warmup_dir, args)
        save_results(out, results)
        run_all(out, scored, args, results)
        save_results(out, results)
    text = report(out, results)
    print(text)
    return results


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
