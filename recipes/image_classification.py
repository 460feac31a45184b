"""Train an image classifier on a dataset or a pruned subset of it, optionally recording training dynamics.

Launch (CPU, one GPU, several GPUs: pick the accelerate config):

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

Checkpoints are written into ``epoch_<k>.incomplete`` and renamed to ``epoch_<k>`` once every process has
written its files and the main process has listed them in ``checkpoint_complete.json`` (see
`recipes.common.save_checkpoint`), so a kill mid-save never leaves a folder that looks finished.
``latest`` picks the newest complete checkpoint and reports the incomplete ones it skips; a corrupt
checkpoint given by path is an error naming it and the previous good one; ``--save_total_limit`` counts
and deletes complete checkpoints only, so it never removes the last good one.
"""

from __future__ import annotations

import inspect
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from datasets import ClassLabel, Dataset, load_dataset, load_from_disk
from transformers import HfArgumentParser

import hf_prune as hp
from hf_prune.dynamics import DynamicsRecorder
from hf_prune.nets import RESNETS, cifar_resnet
from hf_prune.ops.columns import add_column, read_labels, read_vector
from hf_prune.select.spec import parse_spec

try:
    from recipes.common import (
        aggregate_runs,
        complete_checkpoints,
        find_checkpoint,
        load_checkpoint,
        parse_config,
        prune_checkpoints,
        replace_folder,
        run_metadata,
        save_checkpoint,
        write_json,
    )
except ImportError:  # run as a script: the recipes folder itself is on sys.path
    from common import (
        aggregate_runs,
        complete_checkpoints,
        find_checkpoint,
        load_checkpoint,
        parse_config,
        prune_checkpoints,
        replace_folder,
        run_metadata,
        save_checkpoint,
        write_json,
    )


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
class TrainConfig:
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
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "Training seeds; metrics aggregate mean ± std."})
    record_dynamics: bool = field(default=False, metadata={"help": "Record per-epoch training dynamics per row."})
    dynamics_column: str = field(default="dynamics", metadata={"help": "Column name of the dynamics record."})
    checkpointing: bool = field(default=True, metadata={"help": "Save accelerator state after every epoch."})
    save_total_limit: int | None = field(default=None, metadata={"help": "Keep only the newest N epoch checkpoints."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint directory."})
    eval_each_epoch: bool = field(default=False, metadata={"help": "Also evaluate on the test split after every epoch."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers (tensors are in memory; 0 is usually best)."})
    cpu: bool = field(default=False, metadata={"help": "Force CPU even when a GPU is present."})


@dataclass
class RunConfig:
    """One training run: the parsed configs plus the seed and the run's output directory."""

    data: DataConfig
    train: TrainConfig
    seed: int
    output_dir: Path


# ----------------------------------------------------------------------------------------------- models


class SmallCNN(nn.Module):
    """Three conv–BN–ReLU–max-pool blocks (32, 64, 128 channels), global average pooling, linear head."""

    def __init__(self, num_classes: int, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        layers, channels = [], in_channels
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class HFImageModel(nn.Module):
    """A transformers image classifier fed our tensors: channels repeated and images resized as it expects."""

    def __init__(self, model: nn.Module, in_channels: int):
        super().__init__()
        self.model = model
        config = model.config
        self.channels = int(getattr(config, "num_channels", in_channels))
        size = getattr(config, "image_size", None)
        if isinstance(size, dict):
            size = size.get("height") or size.get("shortest_edge")
        self.size = (size, size) if isinstance(size, int) else tuple(size) if size else None
        if self.channels not in (in_channels, 3) or (self.channels == 3 and in_channels not in (1, 3)):
            raise ValueError(f"the model expects {self.channels} channels; the images have {in_channels}")

    def forward(self, x):
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return self.model(pixel_values=x).logits


class ImageClassifier(nn.Module):
    """uint8 ``(B, C, H, W)`` → normalised float → backbone logits (normalisation lives in the model)."""

    def __init__(self, backbone: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixels):
        x = pixels.float() / 255.0
        return self.backbone((x - self.mean) / self.std)


def build_model(name: str, num_classes: int, in_channels: int, *, pretrained: bool = True) -> nn.Module:
    """The backbone for ``name`` (see `TrainConfig.model`), before normalisation."""
    if name == "small_cnn":
        return SmallCNN(num_classes, in_channels)
    if name in RESNETS:
        return cifar_resnet(name, num_classes=num_classes, in_channels=in_channels)
    from transformers import AutoConfig, AutoModelForImageClassification

    labels = {"num_labels": num_classes}
    if pretrained:
        model = AutoModelForImageClassification.from_pretrained(name, ignore_mismatched_sizes=True, **labels)
    else:
        model = AutoModelForImageClassification.from_config(AutoConfig.from_pretrained(name, **labels))
    return HFImageModel(model, in_channels)


# ------------------------------------------------------------------------------------------------- data


class TensorImageDataset(torch.utils.data.Dataset):
    """In-memory ``uint8`` images, labels and positions; ``__getitems__`` gathers a batch in one indexing op."""

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor):
        self.pixels, self.labels, self.positions = pixels, labels, positions

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.__getitems__([index])

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {"pixels": self.pixels[idx], "labels": self.labels[idx], "positions": self.positions[idx]}


def _identity(batch):
    return batch


class EpochSampler(torch.utils.data.Sampler):
    """A random permutation that depends only on ``(seed, epoch)``, so a resumed run sees the same order."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())


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

    ``train_labels`` are the labels of ``train`` (as `load_base` holds them); a subset's labels are checked against them.
    """
    given = [x for x in (cfg.subset_path, cfg.subset_hub_id, cfg.selector) if x]
    if len(given) > 1:
        raise ValueError("pass at most one of --subset_path, --subset_hub_id, --selector")
    if not given:
        return np.arange(len(train)), None, {"source": "full"}
    if cfg.selector:
        selector, kwargs = parse_spec(cfg.selector)
        if "seed" in inspect.signature(selector).parameters:
            kwargs.setdefault("seed", seed)
        subset = selector(train, **kwargs)
        info = {"source": "selector", "spec": cfg.selector, "kwargs": kwargs}
    else:
        if cfg.subset_path:
            loaded, info = load_from_disk(cfg.subset_path), {"source": "path", "path": cfg.subset_path}
        else:
            loaded, info = load_dataset(cfg.subset_hub_id), {"source": "hub", "hub_id": cfg.subset_hub_id}
        subset = loaded[cfg.subset_split] if not isinstance(loaded, Dataset) else loaded
    info["provenance"] = hp.provenance(subset)
    if "row_id" not in subset.column_names:
        for column in (cfg.image_column, cfg.label_column):
            if column not in subset.column_names:
                raise KeyError(f"the subset has neither 'row_id' nor the column {column!r}; it has {subset.column_names}")
        return np.arange(len(subset)), subset, {**info, "row_ids": False}
    row_ids = np.array(read_vector(subset, "row_id", dtype=np.int64))  # a writable copy
    if len(row_ids) == 0:
        raise ValueError("the subset is empty")
    if row_ids.min() < 0 or row_ids.max() >= len(train) or len(np.unique(row_ids)) != len(row_ids):
        raise ValueError(f"the subset's row_id values must be distinct positions in the train split (0..{len(train) - 1})")
    if cfg.label_column in subset.column_names:
        mismatch = read_labels(subset, cfg.label_column) != train_labels[row_ids]
        if mismatch.any():
            raise ValueError(
                f"{int(mismatch.sum())} subset rows have a different {cfg.label_column!r} than the train split at their "
                "row_id: the subset was made from another dataset (or other corruption settings)"
            )
    return row_ids, None, info


def _batch_size_for(train: TrainConfig, pruning_ratio: float) -> int:
    if not train.batch_size_by_pruning_ratio:
        return train.batch_size
    table = []
    for item in train.batch_size_by_pruning_ratio.split(","):
        ratio, sep, size = item.partition(":")
        if not sep:
            raise ValueError(f"--batch_size_by_pruning_ratio item {item!r} is not ratio:batch_size")
        table.append((float(ratio), int(size)))
    eligible = [size for ratio, size in sorted(table) if ratio <= pruning_ratio + 1e-9]
    return eligible[-1] if eligible else train.batch_size


def channel_statistics(pixels: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and std (in [0, 1] units) of uint8 ``(N, C, H, W)`` images via 256-bin histograms.

    Chunked, so memory stays at one chunk of int64 values instead of a float copy of the whole set.
    """
    channels = pixels.shape[1]
    counts = torch.zeros(channels, 256, dtype=torch.float64)
    for start in range(0, len(pixels), chunk):
        block = pixels[start : start + chunk].transpose(0, 1).reshape(channels, -1).long()
        counts += torch.stack([torch.bincount(block[c], minlength=256) for c in range(channels)]).double()
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    total = counts.sum(1)
    mean = (counts * levels).sum(1) / total
    var = (counts * (levels - mean[:, None]) ** 2).sum(1) / (total - 1).clamp_min(1)
    return mean.tolist(), var.sqrt().clamp_min(1e-3).tolist()


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
        train_set, batch_size=batch_size // processes, sampler=sampler, collate_fn=_identity, num_workers=train_cfg.num_workers,
    )
    test_set = TensorImageDataset(base.test_pixels, torch.from_numpy(base.test_labels), torch.arange(len(base.test_labels)))
    test_loader = torch.utils.data.DataLoader(
        test_set, batch_size=train_cfg.eval_batch_size // processes, shuffle=False, collate_fn=_identity,
        num_workers=train_cfg.num_workers,
    )
    info.update({"train_size": len(labels), "full_train_size": full_size, "pruning_ratio": pruning_ratio})
    return DataBundle(
        train_loader, test_loader, sampler, base.num_classes, base.class_names, pixels.shape[1], mean, std,
        row_ids, full_size, batch_size, info, corrupted,
    )


# -------------------------------------------------------------------------------------------- training


def augment(pixels: torch.Tensor, generator: torch.Generator, padding: int, hflip: bool) -> torch.Tensor:
    """Random crop (zero padding ``padding``) and horizontal flip of a uint8 batch, one draw per image."""
    b, _, h, w = pixels.shape
    if padding > 0:
        offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator).to(pixels.device)
        padded = F.pad(pixels, (padding, padding, padding, padding))
        rows = (offsets[0][:, None] + torch.arange(h, device=pixels.device))[:, :, None]
        cols = (offsets[1][:, None] + torch.arange(w, device=pixels.device))[:, None, :]
        pixels = padded.permute(0, 2, 3, 1)[torch.arange(b, device=pixels.device)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if hflip:
        flip = (torch.rand(b, generator=generator) < 0.5).to(pixels.device)
        pixels = torch.where(flip[:, None, None, None], pixels.flip(3), pixels)
    return pixels.contiguous()


class TrainState:
    """Progress saved with every checkpoint (epochs done, steps, timing, per-epoch history)."""

    def __init__(self):
        self.epoch, self.step, self.train_time, self.dynamics_time, self.history = 0, 0, 0.0, 0.0, []

    def state_dict(self):
        return {k: getattr(self, k) for k in ("epoch", "step", "train_time", "dynamics_time", "history")}

    def load_state_dict(self, state):
        for key, value in state.items():
            setattr(self, key, value)


class DynamicsBuffer:
    """Holds detached training logits on the device and hands them to the recorder in large chunks.

    Buffering avoids a device→host copy (and a GPU sync) on every step; ``flush_rows`` bounds memory.
    """

    def __init__(self, recorder: DynamicsRecorder, accelerator: Accelerator, flush_rows: int = 65536):
        self.recorder, self.accelerator, self.flush_rows = recorder, accelerator, flush_rows
        self.items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.rows = 0

    def add(self, positions, logits, labels) -> None:
        self.items.append((positions, logits.detach().float(), labels))
        self.rows += len(positions)
        if self.rows >= self.flush_rows:  # every process has the same step count, so they flush together
            self.flush()

    def flush(self) -> None:
        if not self.items:
            return
        positions, logits, labels = (torch.cat(parts) for parts in zip(*self.items))
        positions, logits, labels = self.accelerator.gather((positions, logits, labels))
        self.recorder.update(positions.cpu(), logits, labels)
        self.items, self.rows = [], 0

    def discard(self) -> None:
        self.items, self.rows = [], 0


def lr_lambda(total_steps: int, warmup_steps: int):
    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return schedule


@torch.no_grad()
def evaluate(model, loader, accelerator: Accelerator, num_classes: int) -> dict[str, Any]:
    model.eval()
    correct = torch.zeros(num_classes, dtype=torch.float64)
    total = torch.zeros(num_classes, dtype=torch.float64)
    loss_sum = 0.0
    for batch in loader:
        logits = model(batch["pixels"]).float()
        losses = F.cross_entropy(logits, batch["labels"], reduction="none")
        preds, labels, losses = accelerator.gather_for_metrics((logits.argmax(1), batch["labels"], losses))
        labels = labels.cpu()
        total += torch.bincount(labels, minlength=num_classes).double()
        correct += torch.bincount(labels[preds.cpu() == labels], minlength=num_classes).double()
        loss_sum += float(losses.sum())
    n = float(total.sum())
    per_class = torch.where(total > 0, correct / total.clamp_min(1), torch.full_like(total, float("nan")))
    return {"accuracy": float(correct.sum()) / n, "loss": loss_sum / n, "per_class": per_class.tolist(), "count": int(n)}


def _checkpoints(directory: Path) -> list[Path]:
    """The complete ``epoch_<k>`` checkpoints in ``directory``, oldest first (incomplete folders left out)."""
    return complete_checkpoints(directory, "epoch_")


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
    if cfg.resume_from_checkpoint:
        # `latest` skips folders a kill left half-written; a bad explicit path names the previous good one.
        path = find_checkpoint(checkpoint_dir, cfg.resume_from_checkpoint, log=accelerator.print)
        if path is None:
            accelerator.print(f"no complete checkpoint in {checkpoint_dir}; starting from scratch")
        else:
            load_checkpoint(accelerator, path)
            accelerator.print(f"resumed from {path} after epoch {state.epoch} (step {state.step})")

    criterion = nn.CrossEntropyLoss()
    for epoch in range(state.epoch, num_epochs):
        if state.step >= total_steps:
            break
        data.sampler.set_epoch(epoch)
        train_loader.set_epoch(epoch)
        # Every random draw of the epoch derives from (seed, epoch): resuming reproduces it exactly.
        set_seed(config.seed * 1000 + epoch)
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + 7919 * epoch + accelerator.process_index)
        model.train()
        loss_sum, correct, seen, dyn_time, completed = 0.0, 0, 0, 0.0, True
        start = time.perf_counter()
        for batch in train_loader:
            if state.step >= total_steps:
                completed = False
                break
            pixels = augment(batch["pixels"], generator, cfg.crop_padding, cfg.hflip) if cfg.augment else batch["pixels"]
            logits = model(pixels)
            loss = criterion(logits.float(), batch["labels"])
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            if buffer is not None:
                t = time.perf_counter()
                buffer.add(batch["positions"], logits, batch["labels"])
                dyn_time += time.perf_counter() - t
            loss_sum += loss.detach() * len(batch["labels"])
            correct += (logits.detach().argmax(1) == batch["labels"]).sum()
            seen += len(batch["labels"])
        if buffer is not None:
            t = time.perf_counter()
            if completed:
                buffer.flush()
                recorder.end_epoch()
            else:
                buffer.discard()
            dyn_time += time.perf_counter() - t
        elapsed = time.perf_counter() - start
        state.epoch, state.train_time, state.dynamics_time = epoch + 1, state.train_time + elapsed, state.dynamics_time + dyn_time
        entry = {
            "epoch": epoch + 1, "step": state.step, "lr": scheduler.get_last_lr()[0], "time_s": elapsed,
            "dynamics_time_s": dyn_time, "train_loss": float(loss_sum) / max(seen, 1),
            "train_accuracy": float(correct) / max(seen, 1), "complete_epoch": completed,
        }
        if cfg.eval_each_epoch:
            entry["test_accuracy"] = evaluate(model, test_loader, accelerator, data.num_classes)["accuracy"]
        state.history.append(entry)
        accelerator.print(json.dumps({"seed": config.seed, **entry}))
        if cfg.checkpointing:
            saved = save_checkpoint(accelerator, checkpoint_dir / f"epoch_{epoch + 1}")
            if cfg.save_total_limit and accelerator.is_main_process:
                prune_checkpoints(checkpoint_dir, cfg.save_total_limit, saved)
            accelerator.wait_for_everyone()

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
            dynamics = recorder.to_dataset(cfg.dynamics_column)
            dynamics = add_column(dynamics, "row_id", data.row_ids.astype(np.int64), overwrite=True, feature=dynamics.features["row_id"])
            dynamics = dynamics.select_columns(["row_id", cfg.dynamics_column])
            target, staging = out / "dynamics", out / "dynamics.incomplete"
            if staging.exists():
                shutil.rmtree(staging)  # left by a run killed while writing it
            dynamics.save_to_disk(str(staging))
            replace_folder(staging, target)
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
