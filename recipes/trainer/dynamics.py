"""Training dynamics in the recipes: the buffer that feeds `hf_prune.dynamics.DynamicsRecorder` from an
accelerate training loop, the saved ``dynamics`` dataset (with ``row_id``), and the small proxy (softmax
regression on an embedding column) that the demo and the benchmarks record dynamics with.

Example:
    >>> train = record_proxy_dynamics(train, embedding_column="pixels", epochs=15)
    >>> train = hp.score.dual(train, window=7)
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from datasets import Dataset

from hf_prune.dynamics import DynamicsRecorder
from hf_prune.ops.columns import add_column, read_labels, read_matrix
from hf_prune.ops.files import replace_folder

from .probe import required_embedding_column

__all__ = ["DynamicsBuffer", "save_dynamics", "record_proxy_dynamics"]


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


def save_dynamics(
    recorder: DynamicsRecorder, row_ids: np.ndarray, path: str | Path, column: str = "dynamics",
    extra_columns: Sequence[str] = (),
) -> Path:
    """Save the recorded dynamics to ``path`` (`save_to_disk`) with a ``row_id`` column, replacing it whole.

    ``row_ids[i]`` is the row id of recorder row ``i`` (its position in the dataset the run's rows came
    from). ``extra_columns`` are further columns of ``recorder.to_dataset`` to keep (the contrastive
    recorder's per-pair loss and rank). The dataset is written next to ``path`` and renamed in (`replace_folder`), so a kill leaves the
    old folder or the new one. Call it on the main process only.

    Example:
        >>> save_dynamics(recorder, data.row_ids, output_dir / "dynamics")
    """
    target = Path(path)
    dynamics = recorder.to_dataset(column)
    dynamics = add_column(dynamics, "row_id", np.asarray(row_ids).astype(np.int64), overwrite=True,
                          feature=dynamics.features["row_id"])
    dynamics = dynamics.select_columns(["row_id", column, *extra_columns])
    staging = target.with_name(target.name + ".incomplete")
    if staging.exists():
        shutil.rmtree(staging)  # left by a run killed while writing it
    dynamics.save_to_disk(str(staging))
    replace_folder(staging, target)
    return target


def record_proxy_dynamics(
    train: Dataset, *, embedding_column: str | None = None, label_column: str = "label", epochs: int = 15,
    seed: int = 0, batch_size: int = 128, lr: float = 0.1, feature_column: str | None = None,
) -> Dataset:
    """Train softmax regression on an embedding column, recording the compact dynamics of every row.

    Returns ``train`` with a ``dynamics`` column (the input is not modified). ``embedding_column``
    (required) is the fixed-length float column the proxy is trained on; ``feature_column`` is its
    deprecated spelling (hf_prune 0.1.0), accepted with a `FutureWarning`.

    Example:
        >>> train = record_proxy_dynamics(train, embedding_column="pixels", epochs=15)
        >>> train = hp.score.dual(train, window=7)
    """
    embedding_column = required_embedding_column("record_proxy_dynamics", embedding_column, feature_column)
    torch.manual_seed(seed)
    x = torch.from_numpy(np.array(read_matrix(train, embedding_column)))  # writable copy
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
