"""Data for the recipes: the subset to train on (a saved dataset, a Hub id or a selector spec), the
batch size picked by pruning ratio, and the in-memory image pipeline (uint8 tensors, a resumable
epoch sampler, augmentation on batch tensors, exact channel statistics).

Example:
    >>> rows = subset_rows(train, selector="random:fraction=0.3,label_column=label", seed=0)
    >>> rows.info["source"], len(rows.row_ids) == round(0.3 * len(train))
    ('selector', True)
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset, load_dataset, load_from_disk

import hf_prune as hp
from hf_prune.ops.columns import read_labels, read_vector
from hf_prune.select.spec import parse_spec

__all__ = [
    "SubsetRows", "subset_rows", "batch_size_for", "TensorImageDataset", "identity_collate", "EpochSampler",
    "augment", "channel_statistics",
]


@dataclass
class SubsetRows:
    """The training rows of a run: positions in the train split, or a stand-alone subset without ``row_id``.

    ``row_ids`` are positions in the train split (all of them for the full split); ``standalone`` is the
    subset itself when it has no ``row_id`` column (then ``row_ids`` are its own positions);
    ``info`` describes where the rows came from (written to the run's metrics).
    """

    row_ids: np.ndarray
    standalone: Dataset | None = None
    info: dict[str, Any] = field(default_factory=dict)


def subset_rows(
    train: Dataset, *, subset_path: str | None = None, subset_hub_id: str | None = None, subset_split: str = "train",
    selector: str | None = None, seed: int = 0, label_column: str | None = None, train_labels: np.ndarray | None = None,
    required_columns: Sequence[str] = (),
) -> SubsetRows:
    """The rows of ``train`` to train on: all of them, a saved subset, a Hub subset or a selector spec.

    At most one of ``subset_path`` (a `save_to_disk` folder), ``subset_hub_id`` and ``selector``
    (``"name:key=value,..."``, run inline on ``train`` with ``seed`` unless the spec gives one). A subset
    with a ``row_id`` column names positions in ``train``: they must be distinct and in range, and when
    the subset has ``label_column`` its labels must equal ``train_labels`` at those positions (a subset
    of another dataset is an error). A subset without ``row_id`` is used as it is, and must hold the
    ``required_columns``.

    Example:
        >>> rows = subset_rows(train, subset_path="subsets/gm_10pct", label_column="label", train_labels=labels)
    """
    given = [x for x in (subset_path, subset_hub_id, selector) if x]
    if len(given) > 1:
        raise ValueError("pass at most one of --subset_path, --subset_hub_id, --selector")
    if not given:
        return SubsetRows(np.arange(len(train)), None, {"source": "full"})
    if selector:
        function, kwargs = parse_spec(selector)
        if "seed" in inspect.signature(function).parameters:
            kwargs.setdefault("seed", seed)
        subset = function(train, **kwargs)
        info = {"source": "selector", "spec": selector, "kwargs": kwargs}
    else:
        if subset_path:
            loaded, info = load_from_disk(subset_path), {"source": "path", "path": subset_path}
        else:
            loaded, info = load_dataset(subset_hub_id), {"source": "hub", "hub_id": subset_hub_id}
        subset = loaded[subset_split] if not isinstance(loaded, Dataset) else loaded
    info["provenance"] = hp.provenance(subset)
    if "row_id" not in subset.column_names:
        for column in required_columns:
            if column not in subset.column_names:
                raise KeyError(f"the subset has neither 'row_id' nor the column {column!r}; it has {subset.column_names}")
        return SubsetRows(np.arange(len(subset)), subset, {**info, "row_ids": False})
    row_ids = np.array(read_vector(subset, "row_id", dtype=np.int64))  # a writable copy
    if len(row_ids) == 0:
        raise ValueError("the subset is empty")
    if row_ids.min() < 0 or row_ids.max() >= len(train) or len(np.unique(row_ids)) != len(row_ids):
        raise ValueError(f"the subset's row_id values must be distinct positions in the train split (0..{len(train) - 1})")
    if label_column is not None and train_labels is not None and label_column in subset.column_names:
        mismatch = read_labels(subset, label_column) != train_labels[row_ids]
        if mismatch.any():
            raise ValueError(
                f"{int(mismatch.sum())} subset rows have a different {label_column!r} than the train split at their "
                "row_id: the subset was made from another dataset (or other corruption settings)"
            )
    return SubsetRows(row_ids, None, info)


def batch_size_for(batch_size: int, by_pruning_ratio: str | None, pruning_ratio: float) -> int:
    """The batch size of the largest ratio in ``by_pruning_ratio`` (``"ratio:batch,..."``) not above ``pruning_ratio``.

    ``batch_size`` when the table is empty or every listed ratio is above ``pruning_ratio``.

    Example:
        >>> batch_size_for(128, "0.3:128,0.8:64,0.9:32", 0.85)
        64
    """
    if not by_pruning_ratio:
        return batch_size
    table = []
    for item in by_pruning_ratio.split(","):
        ratio, sep, size = item.partition(":")
        if not sep:
            raise ValueError(f"--batch_size_by_pruning_ratio item {item!r} is not ratio:batch_size")
        table.append((float(ratio), int(size)))
    eligible = [size for ratio, size in sorted(table) if ratio <= pruning_ratio + 1e-9]
    return eligible[-1] if eligible else batch_size


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


def identity_collate(batch):
    """The DataLoader ``collate_fn`` for `TensorImageDataset`: its ``__getitems__`` already returns the batch."""
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
