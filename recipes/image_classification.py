"""Train an image classifier on a dataset or a pruned subset of it, optionally recording training dynamics.

Launch (CPU, one GPU, several GPUs: pick the accelerate config; ``python -m recipes.image_classification``
runs it without accelerate's launcher):

    accelerate launch --config_file recipes/accelerate_configs/cpu.yaml recipes/image_classification.py \\
        --dataset fashion_mnist --model small_cnn --epochs 5 --output_dir runs/fmnist_full --record_dynamics

    accelerate launch --config_file recipes/accelerate_configs/single_gpu.yaml recipes/image_classification.py \\
        --dataset cifar100 --model resnet18 --epochs 200 --selector "random:fraction=0.3,label_column=label" \\
        --budget epochs --batch_size_by_pruning_ratio "0.3:128,0.5:128,0.7:128,0.8:64,0.9:32" --seeds 0 1 2

Options come from the `DataConfig` and `TrainConfig` dataclasses below (``--help``), or from a flat
YAML file given with ``--config x.yaml`` (command-line flags override it).

Data. ``--dataset`` is ``fashion_mnist`` (local IDX files, else the Hub), ``digits`` (sklearn),
``cifar10``/``cifar100`` (Hub), any Hub id, or a `DatasetDict.save_to_disk` directory with train and
test splits (``--image_column``/``--label_column`` name the columns). The training rows are either
the whole train split or a subset of it:

- ``--subset_path DIR`` / ``--subset_hub_id ID``: a dataset with a ``row_id`` column holding positions
  in the train split (what every `hf_prune.select` selector returns); without ``row_id`` its own
  images and labels are used;
- ``--selector "name:key=value,..."``: runs ``hf_prune.select.<name>(train, **kwargs)`` inline (the
  run's seed is used when the spec gives none).

Optional corruption scenarios are applied to the train split before any subset is taken:
``--label_noise RATE`` (symmetric, DUAL App. B.1) and ``--image_corruption RATE`` (the five GM
Matching corruptions), seeded by ``--corruption_seed``; metrics report how many flagged rows the
training set kept.

Images are decoded once into in-memory ``uint8`` tensors (fine up to CIFAR/Tiny-ImageNet scale;
for larger data pass another ``get_dataloaders`` to `main`); random crop (zero padding
``--crop_padding``) and horizontal flip are applied to each batch tensor. Training: SGD with momentum, weight decay, per-step
cosine schedule (optional linear warmup). ``--budget epochs`` trains ``--epochs`` epochs;
``--budget iterations`` trains as many steps as the full train split takes in ``--epochs`` epochs at
``--batch_size``. ``--batch_size_by_pruning_ratio`` picks the batch size from the subset's pruning
ratio (the entry with the largest ratio not above it; DUAL's CIFAR setting is shown above).

Dynamics. ``--record_dynamics`` records, per epoch and training row, the compact record of
`hf_prune.dynamics` (true-class probability, max other-class probability, correctness, entropy,
EL2N, logit margin, KL to the previous epoch) from the logits of the training forward pass (augmented
batch, as DUAL and Dyn-Unc do), so it costs no extra forward pass. It is written to
``<output_dir>/seed_<s>/dynamics`` (`save_to_disk`) with a ``row_id`` column = position of the row in
the ``--dataset`` train split (for a subset: its ``row_id``), joinable to the train split or to the
subset with `hf_prune.dynamics.attach_dynamics` (by ``row_id``, float32 kept) before `hf_prune.score`.
An epoch cut short by ``--budget iterations`` is not recorded.

Outputs in ``--output_dir``: ``config.json`` (configs, argv, git SHA, versions), per seed
``seed_<s>/metrics.json`` and ``seed_<s>/checkpoints/epoch_<k>`` (`accelerator.save_state` after every
epoch; ``--resume_from_checkpoint latest|PATH`` continues from the next epoch with model, optimizer,
scheduler, dynamics and progress restored), and ``metrics.json`` with test top-1 and per-class
accuracy as mean ± std over ``--seeds``.

The recipe is the image-specific part only (its configs, decoding the splits into tensors, the
classification step); the loop, checkpoints, dynamics, subsets and models come from `recipes.trainer`.

Checkpoints are written into ``epoch_<k>.incomplete`` and renamed to ``epoch_<k>`` once every process has
written its files and the main process has listed them in ``checkpoint_complete.json`` (see
`recipes.trainer.checkpoints.save_checkpoint`), so a kill mid-save never leaves a folder that looks finished.
``latest`` picks the newest complete checkpoint and reports the incomplete ones it skips; a corrupt
checkpoint given by path is an error naming it and the previous good one; ``--save_total_limit`` counts
and deletes complete checkpoints only, so it never removes the last good one.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from datasets import ClassLabel, Dataset
from transformers import HfArgumentParser

import hf_prune as hp
from hf_prune.dynamics import DynamicsRecorder
from hf_prune.ops.columns import read_labels, read_vector
from recipes.trainer.config import RunConfig, RunOptions, parse_config, run_metadata, write_json
from recipes.trainer.data import (
    EpochSampler,
    TensorImageDataset,
    augment,
    batch_size_for,
    channel_statistics,
    identity_collate,
    subset_rows,
)
from recipes.trainer.dynamics import DynamicsBuffer, save_dynamics
from recipes.trainer.loop import StepOutput, TrainState, evaluate, lr_lambda, resume, train_epochs
from recipes.trainer.metrics import aggregate_runs
from recipes.trainer.models import ImageClassifier, build_model


@dataclass
class DataConfig:
    dataset: str = field(
        default="fashion_mnist",
        metadata={"help": "fashion_mnist, digits, cifar10, cifar100, a Hub id, or a save_to_disk DatasetDict directory."},
    )
    data_dir: str | None = field(default=None, metadata={"help": "Directory of the Fashion-MNIST IDX files (default: the Debian package's)."})
    image_column: str = field(default="image", metadata={"help": "Image column (datasets.Image or uint8 arrays)."})
    label_column: str = field(default="label", metadata={"help": "Integer / ClassLabel label column."})
    train_split: str = field(default="train", metadata={"help": "Training split name."})
    test_split: str = field(default="test", metadata={"help": "Test split name."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training rows (quick runs)."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Keep only the first N test rows (quick runs)."})
    subset_path: str | None = field(default=None, metadata={"help": "save_to_disk subset (with row_id) to train on."})
    subset_hub_id: str | None = field(default=None, metadata={"help": "Hub dataset id of a subset (with row_id) to train on."})
    subset_split: str = field(default="train", metadata={"help": "Split of a subset DatasetDict."})
    selector: str | None = field(
        default=None, metadata={"help": "Inline selection 'name:key=value,...' calling hf_prune.select.<name> on the train split."}
    )
    label_noise: float = field(default=0.0, metadata={"help": "Symmetric label-noise rate applied to the train split."})
    image_corruption: float = field(default=0.0, metadata={"help": "Fraction of training images corrupted (five types)."})
    corruption_severity: int = field(default=3, metadata={"help": "Severity 1-5 of the image corruptions."})
    corruption_seed: int = field(default=0, metadata={"help": "Seed of the corruptions (fixed across training seeds)."})


@dataclass
class TrainConfig(RunOptions):
    output_dir: str = field(default="runs/image_classification", metadata={"help": "Where checkpoints, metrics and dynamics go."})
    model: str = field(
        default="small_cnn",
        metadata={"help": "small_cnn, resnet18, resnet34, resnet50 (CIFAR-style), or a transformers image model id/path."},
    )
    pretrained: bool = field(default=True, metadata={"help": "Load pretrained weights for a transformers model (else its config only)."})
    epochs: int = field(default=10, metadata={"help": "Epochs (or, with --budget iterations, epochs of the full-data run)."})
    budget: str = field(default="epochs", metadata={"help": "'epochs': same epochs as the full run; 'iterations': same steps."})
    batch_size: int = field(default=128, metadata={"help": "Global batch size (split across processes)."})
    batch_size_by_pruning_ratio: str | None = field(
        default=None, metadata={"help": "'ratio:batch,...' — batch size of the largest listed pruning ratio not above the subset's."}
    )
    eval_batch_size: int = field(default=512, metadata={"help": "Global evaluation batch size."})
    learning_rate: float = field(default=0.1, metadata={"help": "Peak learning rate."})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum."})
    nesterov: bool = field(default=False, metadata={"help": "Nesterov momentum."})
    weight_decay: float = field(default=5e-4, metadata={"help": "Weight decay."})
    warmup_epochs: float = field(default=0.0, metadata={"help": "Linear warmup length in epochs before the cosine decay."})
    augment: bool = field(default=True, metadata={"help": "Random crop and horizontal flip."})
    crop_padding: int = field(default=4, metadata={"help": "Zero padding of the random crop."})
    hflip: bool = field(default=True, metadata={"help": "Random horizontal flips (when augmenting)."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers (tensors are in memory; 0 is usually best)."})


# ------------------------------------------------------------------------------------------------- data


@dataclass
class DataBundle:
    """What `get_dataloaders` returns: the loaders plus what the training loop and metrics need.

    A replacement ``get_dataloaders(config, accelerator)`` must yield batches ``{"pixels": uint8 (B, C, H, W),
    "labels": (B,), "positions": (B,) row positions in the training set}`` and give the train loader a
    sampler whose ``set_epoch(epoch)`` fixes the order from ``(seed, epoch)`` (resume relies on it).
    """

    train_loader: torch.utils.data.DataLoader
    test_loader: torch.utils.data.DataLoader
    sampler: EpochSampler
    num_classes: int
    class_names: list[str]
    in_channels: int
    mean: list[float]
    std: list[float]
    row_ids: np.ndarray  # position of each training row in the --dataset train split
    full_train_size: int
    batch_size: int
    subset_info: dict[str, Any]
    corrupted_in_train: dict[str, int]


@dataclass
class _Base:
    train: Dataset
    test: Dataset
    train_pixels: torch.Tensor
    test_pixels: torch.Tensor
    train_labels: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    class_names: list[str]


_BASE_CACHE: dict[str, _Base] = {}


def _load_splits(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    name = cfg.dataset
    if name == "fashion_mnist":
        ds = hp.data.load_fashion_mnist(**({"data_dir": cfg.data_dir} if cfg.data_dir else {}))
    elif name == "digits":
        ds = hp.data.load_digits()
    elif name == "cifar10":
        ds = hp.data.load_cifar10()
    elif name == "cifar100":
        ds = hp.data.load_cifar100()
    else:
        ds = hp.data.load_image_dataset(
            name, image_column=cfg.image_column, label_column=cfg.label_column, train_split=cfg.train_split,
            test_split=cfg.test_split, rename=False,
        )
    train, test = ds["train"], ds["test"]
    if cfg.max_train_samples is not None:
        train = train.select(range(min(cfg.max_train_samples, len(train))))
    if cfg.max_test_samples is not None:
        test = test.select(range(min(cfg.max_test_samples, len(test))))
    return train, test


def _to_tensor(dataset: Dataset, column: str) -> torch.Tensor:
    return torch.from_numpy(hp.data.read_images(dataset, image_column=column)).permute(0, 3, 1, 2).contiguous()


def load_base(cfg: DataConfig) -> _Base:
    """The train/test splits after corruption, decoded once per process (cached across seeds)."""
    # The base does not depend on which subset is trained on: many subsets of one dataset decode it once.
    subset_fields = ("subset_path", "subset_hub_id", "subset_split", "selector")
    key = json.dumps({k: v for k, v in asdict(cfg).items() if k not in subset_fields}, sort_keys=True)
    if key in _BASE_CACHE:
        return _BASE_CACHE[key]
    train, test = _load_splits(cfg)
    if "row_id" in train.column_names:
        # This split is itself a subset of something larger; keep those ids, but here positions rule.
        train = train.rename_column("row_id", "source_row_id")
    if cfg.label_noise:
        train = hp.corrupt.symmetric_label_noise(train, rate=cfg.label_noise, label_column=cfg.label_column, seed=cfg.corruption_seed)
    if cfg.image_corruption:
        train = hp.corrupt.corrupt_images(
            train, rate=cfg.image_corruption, image_column=cfg.image_column, severity=cfg.corruption_severity,
            seed=cfg.corruption_seed,
        )
    feature = train.features[cfg.label_column]
    train_labels, test_labels = read_labels(train, cfg.label_column), read_labels(test, cfg.label_column)
    if isinstance(feature, ClassLabel):
        num_classes, names = feature.num_classes, list(feature.names)
    else:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
        names = [str(c) for c in range(num_classes)]
    base = _Base(
        train, test, _to_tensor(train, cfg.image_column), _to_tensor(test, cfg.image_column), train_labels,
        test_labels, num_classes, names,
    )
    if base.train_pixels.shape[1:] != base.test_pixels.shape[1:]:
        raise ValueError(f"train images are {tuple(base.train_pixels.shape[1:])}, test images {tuple(base.test_pixels.shape[1:])}")
    _BASE_CACHE[key] = base
    return base


def select_training_rows(
    cfg: DataConfig, train: Dataset, train_labels: np.ndarray, seed: int
) -> tuple[np.ndarray, Dataset | None, dict[str, Any]]:
    """Positions of the training rows in ``train`` (or a stand-alone subset Dataset) and a description.

    ``train_labels`` are the labels of ``train`` (as `load_base` holds them); a subset's labels are checked
    against them (`recipes.trainer.data.subset_rows`).
    """
    rows = subset_rows(
        train, subset_path=cfg.subset_path, subset_hub_id=cfg.subset_hub_id, subset_split=cfg.subset_split,
        selector=cfg.selector, seed=seed, label_column=cfg.label_column, train_labels=train_labels,
        required_columns=(cfg.image_column, cfg.label_column),
    )
    return rows.row_ids, rows.standalone, rows.info


def _batch_size_for(train: TrainConfig, pruning_ratio: float) -> int:
    return batch_size_for(train.batch_size, train.batch_size_by_pruning_ratio, pruning_ratio)


def get_dataloaders(config: RunConfig, accelerator: Accelerator) -> DataBundle:
    """Build the training and test loaders for one run (swap this function to feed other data)."""
    cfg, train_cfg = config.data, config.train
    base = load_base(cfg)
    row_ids, standalone, info = select_training_rows(cfg, base.train, base.train_labels, config.seed)
    full_size = len(base.train)
    if standalone is None:
        pixels, labels, flags_source = base.train_pixels[torch.from_numpy(row_ids)], base.train_labels[row_ids], base.train.select(row_ids)
    else:
        pixels, labels, flags_source = _to_tensor(standalone, cfg.image_column), read_labels(standalone, cfg.label_column), standalone
    if pixels.shape[1:] != base.test_pixels.shape[1:]:
        raise ValueError(f"training images are {tuple(pixels.shape[1:])}, test images {tuple(base.test_pixels.shape[1:])}")
    corrupted = {
        column: int(read_vector(flags_source, column, dtype=np.int64).sum())
        for column in ("is_noisy_label", "is_corrupted", "is_adversarial")
        if column in flags_source.column_names
    }
    pruning_ratio = 1.0 - len(row_ids) / full_size
    batch_size = _batch_size_for(train_cfg, pruning_ratio)
    processes = accelerator.num_processes
    for name, size in (("batch size", batch_size), ("eval batch size", train_cfg.eval_batch_size)):
        if size % processes:
            raise ValueError(f"the {name} {size} is not divisible by the {processes} processes")
    mean, std = channel_statistics(pixels)
    train_set = TensorImageDataset(pixels, torch.from_numpy(labels), torch.arange(len(labels)))
    sampler = EpochSampler(len(train_set), config.seed)
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=batch_size // processes, sampler=sampler, collate_fn=identity_collate, num_workers=train_cfg.num_workers,
    )
    test_set = TensorImageDataset(base.test_pixels, torch.from_numpy(base.test_labels), torch.arange(len(base.test_labels)))
    test_loader = torch.utils.data.DataLoader(
        test_set, batch_size=train_cfg.eval_batch_size // processes, shuffle=False, collate_fn=identity_collate,
        num_workers=train_cfg.num_workers,
    )
    info.update({"train_size": len(labels), "full_train_size": full_size, "pruning_ratio": pruning_ratio})
    return DataBundle(
        train_loader, test_loader, sampler, base.num_classes, base.class_names, pixels.shape[1], mean, std,
        row_ids, full_size, batch_size, info, corrupted,
    )


# -------------------------------------------------------------------------------------------- training


def train_run(config: RunConfig, get_dataloaders=get_dataloaders) -> dict[str, Any]:
    """Train and evaluate one seed; returns (and writes) its metrics."""
    cfg = config.train
    if cfg.budget not in ("epochs", "iterations"):
        raise ValueError(f"--budget must be 'epochs' or 'iterations', got {cfg.budget!r}")
    if cfg.save_total_limit is not None and cfg.save_total_limit < 1:
        raise ValueError(f"--save_total_limit must be at least 1 (or unset), got {cfg.save_total_limit}")
    accelerator = Accelerator(cpu=cfg.cpu, step_scheduler_with_optimizer=False)
    out = config.output_dir
    set_seed(config.seed)
    data = get_dataloaders(config, accelerator)
    set_seed(config.seed)  # model init does not depend on what data loading consumed
    backbone = build_model(cfg.model, data.num_classes, data.in_channels, pretrained=cfg.pretrained)
    model = ImageClassifier(backbone, data.mean, data.std)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov,
    )
    steps_per_epoch = math.ceil(len(data.row_ids) / data.batch_size)
    if cfg.budget == "epochs":
        total_steps, num_epochs = cfg.epochs * steps_per_epoch, cfg.epochs
    else:
        total_steps = cfg.epochs * math.ceil(data.full_train_size / cfg.batch_size)
        num_epochs = math.ceil(total_steps / steps_per_epoch)
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, warmup_steps))
    model, optimizer, train_loader, test_loader, scheduler = accelerator.prepare(
        model, optimizer, data.train_loader, data.test_loader, scheduler
    )
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    recorder = buffer = None
    if cfg.record_dynamics:
        recorder = DynamicsRecorder(num_rows=len(data.row_ids), num_classes=data.num_classes)
        accelerator.register_for_checkpointing(recorder)
        buffer = DynamicsBuffer(recorder, accelerator)
    checkpoint_dir = out / "checkpoints"
    resume(accelerator, checkpoint_dir, cfg.resume_from_checkpoint, state)

    criterion = nn.CrossEntropyLoss()

    def step(batch, generator: torch.Generator) -> StepOutput:
        # Dynamics come from this forward pass on the augmented batch, as DUAL and Dyn-Unc record them.
        pixels = augment(batch["pixels"], generator, cfg.crop_padding, cfg.hflip) if cfg.augment else batch["pixels"]
        logits = model(pixels)
        return StepOutput(criterion(logits.float(), batch["labels"]), logits, batch["labels"], batch["positions"])

    train_epochs(
        accelerator, model, optimizer, scheduler, train_loader, data.sampler, step, state=state,
        num_epochs=num_epochs, total_steps=total_steps, seed=config.seed, buffer=buffer,
        evaluate_epoch=(lambda: evaluate(model, test_loader, accelerator, data.num_classes)["accuracy"])
        if cfg.eval_each_epoch else None,
        checkpoint_dir=checkpoint_dir if cfg.checkpointing else None, save_total_limit=cfg.save_total_limit,
    )

    result = evaluate(model, test_loader, accelerator, data.num_classes)
    metrics = {
        "seed": config.seed,
        "test_accuracy": result["accuracy"],
        "test_loss": result["loss"],
        "test_size": result["count"],
        "per_class_accuracy": dict(zip(data.class_names, result["per_class"])),
        "train_time_s": state.train_time,
        "dynamics_time_s": state.dynamics_time,
        "epoch_times_s": [h["time_s"] for h in state.history],
        "epochs": state.epoch,
        "iterations": state.step,
        "budget": cfg.budget,
        "batch_size": data.batch_size,
        "train_size": len(data.row_ids),
        "full_train_size": data.full_train_size,
        "pruning_ratio": 1.0 - len(data.row_ids) / data.full_train_size,
        "subset": data.subset_info,
        "corrupted_in_train": data.corrupted_in_train,
        "model": cfg.model,
        "num_parameters": sum(p.numel() for p in accelerator.unwrap_model(model).parameters()),
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "history": state.history,
    }
    if accelerator.is_main_process:
        if recorder is not None and recorder.epochs:
            target = save_dynamics(recorder, data.row_ids, out / "dynamics", cfg.dynamics_column)
            metrics["dynamics_path"] = str(target)
            metrics["dynamics_epochs"] = recorder.epochs
        write_json(out / "metrics.json", metrics)
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    return metrics


def make_parser() -> HfArgumentParser:
    return HfArgumentParser((DataConfig, TrainConfig))


def main(argv: list[str] | None = None, get_dataloaders=get_dataloaders) -> dict[str, Any]:
    """Parse options, train every seed, write ``config.json`` and the aggregated ``metrics.json``."""
    data_cfg, train_cfg = parse_config(make_parser(), argv)
    if len(train_cfg.seeds) == 0:
        raise ValueError("--seeds needs at least one seed")
    if train_cfg.resume_from_checkpoint not in (None, "latest") and len(train_cfg.seeds) > 1:
        raise ValueError("a checkpoint path resumes one run; use --resume_from_checkpoint latest with several seeds")
    out = Path(train_cfg.output_dir)
    state = PartialState(cpu=train_cfg.cpu)  # only to know which process writes shared files
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", run_metadata({"data": data_cfg, "train": train_cfg}, argv))
    runs = [
        train_run(RunConfig(data_cfg, train_cfg, seed, out / f"seed_{seed}"), get_dataloaders) for seed in train_cfg.seeds
    ]
    summary = {
        "seeds": list(train_cfg.seeds),
        **aggregate_runs(runs, ["test_accuracy", "test_loss", "train_time_s"], nested=["per_class_accuracy"]),
        "train_size": runs[0]["train_size"],
        "full_train_size": runs[0]["full_train_size"],
        "epochs": runs[0]["epochs"],
        "iterations": runs[0]["iterations"],
        "runs": [str(out / f"seed_{seed}" / "metrics.json") for seed in train_cfg.seeds],
    }
    if state.is_main_process:
        write_json(out / "metrics.json", summary)
        acc = summary["test_accuracy"]
        state.print(f"test accuracy {100 * acc['mean']:.2f} ± {100 * acc['std']:.2f} % over {acc['n']} seed(s)")
    return summary


if __name__ == "__main__":
    main()
