"""The LESS chain as columns: gradient features of every warm-up checkpoint, then the LESS score.

LESS (Xia et al., 2024) warms a LoRA model up on a small random share of the pool, keeps every epoch's
adapter and Adam moments, and represents each example by its projected LoRA gradient at each
checkpoint: Adam directions Γ for the training pool, plain gradients for the few validation examples of
each target task. The score of a training row is the learning-rate-weighted cosine to each task's
validation gradients, maximised over tasks. This step turns a warm-up directory (written by
``recipes/instruction_tuning.py --warmup_fraction ...``, read with `recipes.trainer.warmup.load_warmup`)
into those columns::

    pool --tokenize_messages--> input_ids/labels
         --LoRAGradientEmbedder(ckpt_i, optimizer_state=ckpt_i.optimizer_state)--> grad_<epoch_i>
    validation --for_validation()--> grad_<epoch_i>
    hp.score.less(pool, gradient_column=[grad_...], checkpoint_weights=[mean lr_i], task_column="task",
                  per_task_column="less_tasks")
         --> less, less_tasks (the J per-task scores before the max over tasks, tasks in sorted order)
    grad = concat_i sqrt(η̄_i / Σ η̄) · unit(grad_<epoch_i>)   (the features InfoMax's K and D²'s graph use)

so that ``hp.select.top_k(pool, score_column="less")`` is LESS and ``hp.select.infomax(pool,
score_column="less", embedding_column="grad")`` is InfoMax over LESS, and
``hp.select.round_robin(pool, score_column="less_tasks")`` is LESS-RR (the target tasks take turns
picking their best row, so no task's score scale takes the budget). The inner product of two rows'
``grad`` is the same learning-rate-weighted mean cosine LESS uses between a training and a validation
gradient, so the redundancy term measures similarity in the space the score lives in.

Caching: every gradient column is a ``Dataset.map`` of a `hf_prune.embed.LoRAGradientEmbedder`, whose
fingerprint hashes the adapter weights, the Adam state and the projection. A pool backed by files
(``load_from_disk``; an in-memory pool is saved once under ``cache_dir``, keyed by its fingerprint) gets
each column written to the ``datasets`` cache, and a second call with the same checkpoints loads it
instead of recomputing (reported as ``cache_hit`` in the timings).

Several processes: under ``accelerate launch`` / ``torchrun`` each process embeds a contiguous shard of
the pool (``Dataset.shard(..., contiguous=True)``), saves it under ``shard_dir``, waits at accelerate's
barrier, and every process reads the shards back in rank order, so the column equals the one-process
column (up to float reductions). No sockets or locks of our own: only ``PartialState.wait_for_everyone``.

Commands::

    # one process
    python -m recipes.less_features --warmup_dir runs/warmup/seed_0/warmup --train_path data/pool \\
        --validation_path data/validation --output_dir runs/less --dim 8192
    # GPUs (one process each)
    accelerate launch --multi_gpu --num_processes 4 -m recipes.less_features --warmup_dir ... --output_dir ...
    # several CPU processes (gloo): accelerate's launcher needs mpirun for that, torchrun does not
    torchrun --nproc_per_node 2 -m recipes.less_features --cpu --warmup_dir ... --output_dir ...

Outputs in ``--output_dir``: ``scored_pool/`` (``row_id``, ``task``, ``source``, the gradient columns,
``less``, ``less_tasks``, ``grad``), ``validation_gradients/``, optionally ``subset/`` (``--selector``), and
``less_features.json`` (settings, per-stage timings: the warm-up's training time from its
``metrics.json``, gradients per 1k rows, scoring, selection; config, git SHA and versions).

Example:
    >>> out = less_features(pool, validation, "runs/warmup/seed_0/warmup", dim=2048, cache_dir="cache")
    >>> sub = hp.select.infomax(out.pool, fraction=0.05, score_column="less", embedding_column="grad")
    >>> rr = hp.select.round_robin(out.pool, fraction=0.05, score_column="less_tasks")   # LESS-RR
    >>> out.tasks                                  # the order of the less_tasks entries
    ['navigate', 'sports_understanding']
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, load_from_disk

import hf_prune as hp
from hf_prune.data.prompts import IGNORE_INDEX
from hf_prune.ops.arrow import fingerprint
from hf_prune.ops.checks import check_positive_int
from hf_prune.ops.columns import add_column, check_columns, read_matrix
from hf_prune.score.less import dataset_tasks

__all__ = [
    "LessFeatures",
    "LessFeaturesConfig",
    "checkpoints_of",
    "file_backed",
    "tokenized",
    "embed_sharded",
    "combine_gradients",
    "less_features",
    "response_token_counts",
    "make_parser",
    "main",
]


# ------------------------------------------------------------------------------------------ checkpoints
def checkpoints_of(warmup: Any) -> list:
    """The warm-up checkpoints: a warm-up directory (`recipes.trainer.warmup.load_warmup`) or a list of them.

    A checkpoint is anything with ``.epoch``, ``.mean_lr``, ``.optimizer_state`` and either ``.model`` or
    ``.load_model()`` (a peft model). They are returned in epoch order.

    Example:
        >>> [c.epoch for c in checkpoints_of("runs/warmup/seed_0/warmup")]
        [1, 2]
    """
    if isinstance(warmup, (str, os.PathLike)):
        from recipes.trainer.warmup import load_warmup

        items = list(load_warmup(warmup))
        where = str(warmup)
    elif isinstance(warmup, Sequence):
        items, where = list(warmup), "the given checkpoints"
    else:
        raise TypeError(
            f"`warmup` must be a warm-up directory or a list of checkpoints, got {type(warmup).__name__}"
        )
    if not items:
        raise ValueError(f"no warm-up checkpoint in {where}")
    for ckpt in items:
        missing = [a for a in ("epoch", "mean_lr", "optimizer_state") if not hasattr(ckpt, a)]
        if missing or not (hasattr(ckpt, "model") or hasattr(ckpt, "load_model")):
            raise ValueError(
                f"{where}: a checkpoint lacks {missing or ['model']} (see recipes.trainer.warmup)"
            )
        if not (isinstance(ckpt.mean_lr, (int, float)) and math.isfinite(ckpt.mean_lr) and ckpt.mean_lr >= 0):
            raise ValueError(
                f"{where}: checkpoint of epoch {ckpt.epoch} has mean learning rate {ckpt.mean_lr!r}"
            )
    epochs = [c.epoch for c in items]
    if len(set(epochs)) != len(epochs):
        raise ValueError(f"{where}: two checkpoints of the same epoch ({sorted(epochs)})")
    return sorted(items, key=lambda c: c.epoch)


def _model_of(ckpt):
    model = ckpt.load_model() if hasattr(ckpt, "load_model") else ckpt.model
    model.eval()
    return model


# ------------------------------------------------------------------------------------------ datasets
def file_backed(dataset: Dataset, cache_dir: str | os.PathLike | None, name: str) -> Dataset:
    """``dataset`` itself when it is read from files, else saved once under ``cache_dir`` and loaded back.

    ``datasets`` caches ``map`` results only for datasets backed by files; an in-memory dataset is saved
    to ``cache_dir/<name>_<fingerprint>`` (skipped when that folder exists), so gradient columns of the same
    rows are computed once. ``cache_dir=None`` keeps the dataset in memory (no caching).

    Example:
        >>> pool = file_backed(Dataset.from_dict({"x": [1, 2]}), "cache", "pool")
        >>> bool(pool.cache_files)
        True
    """
    if dataset.cache_files or cache_dir is None:
        return dataset
    path = Path(cache_dir) / f"{name}_{fingerprint(dataset)}"
    if not (path / "dataset_info.json").is_file():
        staging = path.with_name(path.name + f".incomplete-{os.getpid()}")
        dataset.save_to_disk(str(staging))
        try:
            staging.rename(path)
        except OSError:  # another process saved the same rows first
            pass
    return load_from_disk(str(path))


def tokenized(
    dataset: Dataset,
    tokenizer=None,
    *,
    template: str = "chat",
    max_length: int | None = 2048,
    name: str = "pool",
    on_invalid: str = "raise",
) -> tuple[Dataset, dict]:
    """``(dataset with input_ids/labels, stats)``: `hp.data.tokenize_messages` unless it has the columns.

    A ``row_id`` column (the row's position in ``dataset``) is added first when missing, so rows dropped
    by tokenisation (no response left after truncation; invalid conversations with ``on_invalid="skip"``)
    never shift the positions a selection reports. ``stats`` are tokenize_messages' counts.

    Example:
        >>> pool, stats = tokenized(pool, tokenizer, template="chat", max_length=512)
        >>> stats["kept"] == len(pool)
        True
    """
    if "row_id" not in dataset.column_names:
        dataset = dataset.add_column("row_id", np.arange(len(dataset), dtype=np.int64))
    if "input_ids" in dataset.column_names and "labels" in dataset.column_names:
        # The rule of tokenize_messages for rows given as tokens: a row without a predicted response token
        # (every label after the first is -100) has no loss and no gradient; it is dropped and counted.
        keep = np.flatnonzero(response_token_counts(dataset, skip_first=True) > 0)
        out = dataset if len(keep) == len(dataset) else dataset.select(keep)
        stats = {
            "rows": len(dataset),
            "kept": len(out),
            "pretokenized": True,
            "dropped": {"no response token": len(dataset) - len(out)} if len(out) < len(dataset) else {},
        }
        if len(out) == 0:
            raise ValueError(f"no row of the {name} has a response token (every label is -100)")
        return out, stats
    if tokenizer is None:
        raise ValueError(
            f"the {name} has no input_ids/labels columns: pass a tokenizer (or tokenise it first)"
        )
    check_columns(dataset, "messages")
    out, stats = hp.data.tokenize_messages(
        dataset, tokenizer, template=template, max_length=max_length, on_invalid=on_invalid, return_stats=True
    )
    if len(out) == 0:
        raise ValueError(
            f"no row of the {name} kept a response token after tokenisation ({stats['dropped']})"
        )
    return out, stats


def _process_state(state, cpu: bool):
    if state is not None:
        return state
    # A CPU-only machine launched with torchrun has WORLD_SIZE > 1 but no GPU: accelerate uses gloo
    # only when told it runs on CPU.
    import torch
    from accelerate import PartialState

    return PartialState(cpu=cpu or not torch.cuda.is_available())


def embed_sharded(
    dataset: Dataset,
    embedder,
    *,
    state=None,
    shard_dir: str | os.PathLike | None = None,
    batch_size: int | None = None,
) -> tuple[Dataset, dict]:
    """``(dataset with the embedder's column, timing)``, sharded over the processes of ``state``.

    One process: ``embedder.map(dataset)`` (cached by ``datasets``). Several (``accelerate launch`` /
    ``torchrun``): `hf_prune.embed.map_distributed` under ``shard_dir`` (batch-aligned shards, so the
    column is the one-process column; a shard already written is reused). Every process returns the
    same Dataset. ``timing`` has ``rows`` (this process's), ``seconds`` and ``cache_hit`` (the column
    came from a cache: the ``datasets`` cache file, or this process's shard, existed before this call).

    Example:
        >>> ds, timing = embed_sharded(ds, LoRAGradientEmbedder(model, dim=1024), shard_dir="runs/shards")
    """
    state = _process_state(state, cpu=False)
    column = embedder.output_column
    start = time.time()
    clock = time.perf_counter()
    if state.num_processes == 1:
        out = embedder.map(dataset, batch_size=batch_size)
        files = [f["filename"] for f in out.cache_files]
        hit = bool(files) and all(os.path.getmtime(f) < start for f in files)
        return out, {"rows": len(dataset), "seconds": time.perf_counter() - clock, "cache_hit": hit}
    if shard_dir is None:
        raise ValueError("several processes need `shard_dir`, a folder every process can read")
    batch_size = batch_size or embedder.default_map_batch_size
    rank, world = state.process_index, state.num_processes
    folder = Path(shard_dir) / f"{fingerprint(dataset)}_{embedder.fingerprint()}_{column}"
    hit = (folder / f"{hp.embed.shard_name(rank, world)}.json").exists()
    out = hp.embed.map_distributed(dataset, embedder, output_dir=folder, batch_size=batch_size, state=state,
                                   overwrite=column in dataset.column_names)
    start_row, stop_row = hp.embed.batch_aligned_bounds(len(dataset), batch_size, world, rank)
    return out, {"rows": stop_row - start_row, "seconds": time.perf_counter() - clock, "cache_hit": hit}


def combine_gradients(
    dataset: Dataset,
    columns: Sequence[str],
    weights: Sequence[float],
    *,
    output_column: str = "grad",
    overwrite: bool = False,
) -> Dataset:
    """Unit gradient columns scaled by ``sqrt(w_i / Σ w)``, concatenated: inner products = weighted cosines.

    The result has unit rows (a zero gradient stays zero), so InfoMax's and D²'s cosine/L2 geometry on it
    is LESS's learning-rate-weighted cosine between two training rows.

    Example:
        >>> ds = combine_gradients(ds, ["grad_1", "grad_2"], [2e-5, 1e-5], output_column="grad")
    """
    columns = list(columns)
    weights = np.asarray(weights, dtype=np.float64)
    if len(columns) == 0 or weights.shape != (len(columns),) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(
            f"`weights` must be {len(columns)} non-negative numbers, not all 0, got {list(weights)}"
        )
    check_columns(dataset, *columns)
    blocks = []
    for column, w in zip(columns, weights / weights.sum()):
        x = read_matrix(dataset, column, dtype=np.float64)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        blocks.append(np.sqrt(w) * np.divide(x, norms, out=np.zeros_like(x), where=norms > 0))
    return add_column(
        dataset, output_column, np.concatenate(blocks, axis=1).astype(np.float32), overwrite=overwrite
    )


# ------------------------------------------------------------------------------------------ the chain
@dataclass
class LessFeatures:
    """What `less_features` returns: the scored pool, the validation gradients, columns, weights, timings.

    ``tasks`` are the target tasks in the order of the per-task column's entries (sorted ids).

    Example:
        >>> out = less_features(pool, validation, checkpoints, dim=1024)
        >>> out.gradient_columns, out.timings["gradient_s_per_1k_rows"]
    """

    pool: Dataset
    validation: Dataset
    gradient_columns: list[str]
    checkpoint_weights: list[float]
    timings: dict[str, Any] = field(default_factory=dict)
    tokenize_stats: dict[str, Any] = field(default_factory=dict)
    tasks: list = field(default_factory=list)


def less_features(
    pool: Dataset,
    validation: Dataset,
    warmup: Any,
    *,
    tokenizer=None,
    template: str = "chat",
    max_length: int | None = 2048,
    dim: int | None = 8192,
    seed: int = 0,
    batch_size: int = 8,
    method: str | None = None,
    projection: str = "rademacher",
    task_column: str = "task",
    reduce: str = "max",
    gradient_prefix: str = "grad_",
    output_column: str = "less",
    per_task_column: str | None = "less_tasks",
    combined_column: str | None = "grad",
    cache_dir: str | os.PathLike | None = None,
    shard_dir: str | os.PathLike | None = None,
    state=None,
    device=None,
) -> LessFeatures:
    """Gradient columns per warm-up checkpoint, the LESS score and the combined feature column.

    The chain is described in the module docstring.

    Args:
        pool: training rows (instruction schema, or already tokenised with ``input_ids``/``labels``).
        validation: a few rows per target task with ``task_column`` (same forms as ``pool``).
        warmup: a warm-up directory or a list of checkpoints (`checkpoints_of`).
        tokenizer, template, max_length: how to tokenise rows without ``input_ids`` (the warm-up's settings).
        dim, seed: the random projection (LESS: 8192); training and validation share it.
        batch_size: examples per gradient batch.
        method: the embedder's per-example gradient strategy (``"hooks"``, ``"vmap"``, ``"loop"``; ``None``:
            hooks where the LoRA layers allow it). The values are the same whichever runs.
        projection: ``"rademacher"`` (LESS's dense projection, the exact option) or ``"srht"`` (a
            subsampled randomized Hadamard transform: no more inner-product distortion than the dense one
            on SmolLM2's real gradients, at 1/27–1/83 of its time; RESULTS.md).
        task_column: the validation rows' task (one LESS average per task, then ``reduce``).
        reduce: ``"max"`` (LESS) or ``"mean"`` over tasks.
        gradient_prefix: the gradient columns are ``f"{gradient_prefix}{epoch}"``.
        output_column: the LESS score column.
        per_task_column: the per-task LESS scores, one float32 list of ``J`` entries per row (tasks in
            sorted order, `LessFeatures.tasks`), what `hp.select.round_robin` takes (LESS-RR);
            ``None``: not written.
        combined_column: the `combine_gradients` column (``None``: not written).
        cache_dir: where in-memory pools are saved so their gradient columns are cached (`file_backed`).
        shard_dir: the shared folder for several processes' shards.
        state: an accelerate ``PartialState`` (default: the current one).
        device: where gradients run (default: the process's device).

    Raises:
        ValueError: no checkpoint, a validation set without ``task_column``, rows without response tokens.

    Example:
        >>> out = less_features(pool, validation, "runs/warmup/seed_0/warmup", tokenizer=tok, dim=2048)
        >>> hp.select.top_k(out.pool, fraction=0.05, score_column="less")
    """
    if not isinstance(pool, Dataset) or not isinstance(validation, Dataset):
        raise TypeError("`pool` and `validation` must be datasets.Dataset objects")
    if len(pool) == 0 or len(validation) == 0:
        raise ValueError(f"empty {'pool' if len(pool) == 0 else 'validation set'}")
    check_columns(validation, task_column)
    check_positive_int("batch_size", batch_size)
    checkpoints = checkpoints_of(warmup)
    state = _process_state(state, cpu=False)
    pool, pool_stats = tokenized(
        pool, tokenizer, template=template, max_length=max_length, name="pool", on_invalid="skip"
    )
    before_tasks = validation[task_column]
    validation, val_stats = tokenized(
        validation, tokenizer, template=template, max_length=max_length, name="validation set"
    )
    lost = sorted(set(before_tasks) - set(validation[task_column]))
    if lost:
        raise ValueError(
            f"target task(s) {lost} have no validation row with a response token left after "
            f"truncation to max_length={max_length}: raise max_length or give shorter validation rows"
        )
    pool = file_backed(pool, cache_dir, "pool")
    validation = file_backed(validation, cache_dir, "validation")
    columns = [f"{gradient_prefix}{c.epoch}" for c in checkpoints]
    weights = [float(c.mean_lr) for c in checkpoints]
    if sum(weights) <= 0:
        raise ValueError("every checkpoint has mean learning rate 0: no checkpoint weight for the LESS score")
    timings: dict[str, Any] = {"checkpoints": []}
    dev = device if device is not None else (state.device if state.num_processes > 1 else None)
    for ckpt, column in zip(checkpoints, columns):
        model = _model_of(ckpt)
        # A saved checkpoint also carries Adam's betas/eps/step (its moments alone would not).
        adam = (
            ckpt.embedder_kwargs()
            if hasattr(ckpt, "embedder_kwargs")
            else {"optimizer_state": ckpt.optimizer_state}
        )
        train_emb = hp.embed.LoRAGradientEmbedder(
            model,
            dim=dim,
            seed=seed,
            output_column=column,
            batch_size=batch_size,
            method=method,
            projection=projection,
            device=dev,
            **adam,
        )
        pool, pool_t = embed_sharded(pool, train_emb, state=state, shard_dir=shard_dir)
        validation, val_t = embed_sharded(
            validation, train_emb.for_validation(), state=state, shard_dir=shard_dir
        )
        timings["checkpoints"].append(
            {"epoch": ckpt.epoch, "mean_lr": ckpt.mean_lr, "pool": pool_t, "validation": val_t}
        )
        del model, train_emb
        gc.collect()
    computed = [t for c in timings["checkpoints"] for t in (c["pool"], c["validation"]) if not t["cache_hit"]]
    rows = sum(t["rows"] for t in computed)
    seconds = sum(t["seconds"] for t in computed)
    timings["gradient_rows"] = rows
    timings["gradient_s"] = seconds
    timings["gradient_s_per_1k_rows"] = 1000 * seconds / rows if rows else None
    timings["cache_hit"] = not computed
    timings["tokens_per_row"] = float(np.mean(_lengths(pool)))
    clock = time.perf_counter()
    pool = hp.score.less(
        pool,
        validation_gradients=[validation] * len(columns),
        gradient_column=columns,
        task_column=task_column,
        reduce=reduce,
        checkpoint_weights=weights,
        output_column=output_column,
        per_task_column=per_task_column,
        overwrite=True,
    )
    if combined_column is not None:
        pool = combine_gradients(pool, columns, weights, output_column=combined_column, overwrite=True)
    timings["scoring_s"] = time.perf_counter() - clock
    return LessFeatures(
        pool=pool,
        validation=validation,
        gradient_columns=columns,
        checkpoint_weights=weights,
        timings=timings,
        tokenize_stats={"pool": pool_stats, "validation": val_stats},
        tasks=dataset_tasks(validation, task_column)[0],
    )


def _lengths(ds: Dataset) -> np.ndarray:
    from hf_prune.ops.arrow import column_array

    return np.diff(np.asarray(column_array(ds, "input_ids").offsets))


def response_token_counts(ds: Dataset, *, skip_first: bool = False) -> np.ndarray:
    """Response tokens per row (labels ≠ -100), e.g. to report what the gradients were taken over.

    ``skip_first=True`` ignores each row's first label (position 0 is never predicted).

    Example:
        >>> response_token_counts(Dataset.from_dict({"labels": [[-100, 5, 6]]})).tolist()
        [2]
    """
    import pyarrow.compute as pc

    from hf_prune.ops.arrow import column_array

    labels = column_array(ds, "labels")
    flat = np.asarray(pc.list_flatten(labels)) != IGNORE_INDEX
    offsets = np.asarray(labels.offsets)
    rows = np.repeat(np.arange(len(ds)), np.diff(offsets))
    if skip_first:
        flat[offsets[:-1][np.diff(offsets) > 0] - offsets[0]] = False
    return np.bincount(rows[flat], minlength=len(ds))


# ------------------------------------------------------------------------------------------ CLI
@dataclass
class LessFeaturesConfig:
    """Options of ``python -m recipes.less_features`` (``--config x.yaml`` sets them from a flat YAML file).

    Example:
        >>> LessFeaturesConfig(warmup_dir="runs/w/seed_0", train_path="pool", validation_path="pool").dim
        8192
    """

    warmup_dir: str = field(
        default=None, metadata={"help": "Warm-up folder (<run>/seed_<s>/warmup) of the recipe."}
    )
    train_path: str = field(
        default=None, metadata={"help": "Saved training pool (save_to_disk), instruction schema."}
    )
    validation_path: str = field(
        default=None,
        metadata={"help": "Saved validation rows (a Dataset, or a DatasetDict with a 'validation' split)."},
    )
    output_dir: str = field(default="runs/less_features", metadata={"help": "Where the outputs go."})
    dim: int = field(default=8192, metadata={"help": "Projection dimension (LESS: 8192)."})
    seed: int = field(default=0, metadata={"help": "Projection seed."})
    batch_size: int = field(default=8, metadata={"help": "Examples per per-example-gradient batch."})
    method: str | None = field(
        default=None,
        metadata={
            "help": "Per-example gradients: 'hooks' (one batched backward), 'vmap', 'loop' (one backward "
            "per example); unset: hooks where the LoRA layers allow it. Same values whichever runs."
        },
    )
    projection: str = field(
        default="rademacher",
        metadata={"help": "'rademacher' (LESS's dense projection) or 'srht' (structured, much faster; same distortion)."},
    )
    task_column: str = field(default="task", metadata={"help": "Task column of the validation rows."})
    reduce: str = field(default="max", metadata={"help": "'max' (LESS) or 'mean' over tasks."})
    per_task_column: str | None = field(
        default="less_tasks",
        metadata={"help": "Column of the per-task LESS scores (round_robin's input, LESS-RR); empty: none."},
    )
    template: str | None = field(
        default=None, metadata={"help": "Override the warm-up's chat/plain template."}
    )
    max_length: int | None = field(default=None, metadata={"help": "Override the warm-up's max_length."})
    selector: str | None = field(
        default=None,
        metadata={
            "help": "Optional selector spec run on the scored pool, "
            "e.g. 'top_k:fraction=0.05,score_column=less'."
        },
    )
    cpu: bool = field(default=False, metadata={"help": "Run on CPU (also what makes torchrun use gloo)."})


def make_parser():
    """The `HfArgumentParser` of the CLI.

    Example:
        >>> (cfg,) = make_parser().parse_args_into_dataclasses(["--warmup_dir", "w", "--train_path", "p"])
    """
    from transformers import HfArgumentParser

    return HfArgumentParser((LessFeaturesConfig,))


def _tokenizer_of(checkpoint):
    load = getattr(checkpoint, "load_tokenizer", None)
    if callable(load):
        return load()
    info = getattr(checkpoint, "info", {}) or {}
    path = info.get("tokenizer_dir") or info.get("tokenizer")
    if not path:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _warmup_seconds(checkpoint) -> float | None:
    """The warm-up's training time, from the recipe's ``metrics.json`` next to the ``warmup`` folder."""
    path = getattr(checkpoint, "path", None)
    metrics = Path(path).parent.parent / "metrics.json" if path is not None else None
    if metrics is None or not metrics.is_file():
        return None
    import json

    return json.loads(metrics.read_text()).get("train_time_s")


def _load_rows(path: str, split: str) -> Dataset:
    from datasets import DatasetDict

    data = load_from_disk(path)
    if isinstance(data, DatasetDict):
        if split not in data:
            raise ValueError(f"{path} has splits {list(data)}, not {split!r}")
        data = data[split]
    return data


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the LESS chain from the command line; returns the JSON it writes (on the main process).

    Example:
        >>> main(["--warmup_dir", "runs/w/seed_0/warmup", "--train_path", "data/pool", "--validation_path",
        ...       "data/validation", "--output_dir", "runs/less", "--dim", "1024"])["gradient_columns"]
        ['grad_1', 'grad_2']
    """
    from recipes.trainer.config import parse_config, run_metadata, write_json

    (cfg,) = parse_config(make_parser(), argv)
    for name in ("warmup_dir", "train_path", "validation_path"):
        if not getattr(cfg, name):
            raise ValueError(f"--{name} is required")
    state = _process_state(None, cpu=cfg.cpu)
    out = Path(cfg.output_dir)
    checkpoints = checkpoints_of(cfg.warmup_dir)
    info = getattr(checkpoints[0], "info", {}) or {}
    template = cfg.template or info.get("template", "chat")
    max_length = cfg.max_length or info.get("max_length", 2048)
    pool = _load_rows(cfg.train_path, "train")
    validation = _load_rows(cfg.validation_path, "validation")
    result = less_features(
        pool,
        validation,
        checkpoints,
        tokenizer=_tokenizer_of(checkpoints[0]),
        template=template,
        max_length=max_length,
        dim=cfg.dim,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        method=cfg.method,
        projection=cfg.projection,
        task_column=cfg.task_column,
        reduce=cfg.reduce,
        per_task_column=cfg.per_task_column or None,
        cache_dir=out / "cache",
        shard_dir=out / "shards",
        state=state,
        device="cpu" if cfg.cpu else None,
    )
    report: dict[str, Any] = {}
    if state.is_main_process:
        keep = [
            c
            for c in ("row_id", "task", "source", *result.gradient_columns, "less", cfg.per_task_column, "grad")
            if c in result.pool.column_names
        ]
        result.pool.select_columns(keep).save_to_disk(str(out / "scored_pool"))
        result.validation.select_columns(
            [
                c
                for c in ("row_id", cfg.task_column, *result.gradient_columns)
                if c in result.validation.column_names
            ]
        ).save_to_disk(str(out / "validation_gradients"))
        timings = {"warmup_s": _warmup_seconds(checkpoints[-1]), **result.timings}
        if cfg.selector:
            from hf_prune.select.spec import run_spec

            clock = time.perf_counter()
            subset = run_spec(result.pool, cfg.selector)
            timings["selection_s"] = time.perf_counter() - clock
            subset.select_columns(["row_id"]).save_to_disk(str(out / "subset"))
            timings["subset_rows"] = len(subset)
        report = {
            "settings": {
                "dim": cfg.dim,
                "seed": cfg.seed,
                "template": template,
                "max_length": max_length,
                "reduce": cfg.reduce,
                "per_task_column": cfg.per_task_column or None,
                "tasks": result.tasks,
                "processes": state.num_processes,
                "selector": cfg.selector,
            },
            "gradient_columns": result.gradient_columns,
            "checkpoint_weights": result.checkpoint_weights,
            "rows": len(result.pool),
            "validation_rows": len(result.validation),
            "timings": timings,
            "tokenize_stats": result.tokenize_stats,
            "metadata": run_metadata({"less_features": cfg}, argv),
        }
        write_json(out / "less_features.json", report)
    state.wait_for_everyone()
    return report


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
