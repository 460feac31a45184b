"""The compact per-sample training-dynamics record (DESIGN.md: no T×C probability tensors).

Per training sample and epoch the recorder keeps seven scalars, enough for every dynamics score:

| field            | meaning (p = softmax(z), y = given label)           | used by              |
|------------------|------------------------------------------------------|----------------------|
| `true_prob`      | p_y                                                  | DUAL, Dyn-Unc        |
| `max_other_prob` | max_{c≠y} p_c                                        | margin               |
| `correct`        | 1 if argmax p = y else 0                             | forgetting           |
| `entropy`        | −Σ_c p_c log p_c                                     | entropy              |
| `el2n`           | ‖p − onehot(y)‖₂                                     | EL2N                 |
| `logit_margin`   | z_y − max_{c≠y} z_c                                  | AUM                  |
| `kl_to_previous` | KL(p_t ‖ p_{t−1}) (0 at the first recorded epoch)    | TDDS                 |

The column is a struct of fixed-length float32 lists (one value per epoch). A plain fixed-length
list column is also accepted wherever only ``true_prob`` is needed (DUAL, Dyn-Unc).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset, DatasetInfo, Features, Sequence, Value
from datasets.table import InMemoryTable

from .ops.columns import check_columns

__all__ = ["DYNAMICS_FIELDS", "dynamics_features", "dynamics_struct", "read_dynamics", "DynamicsRecorder", "epoch_statistics"]

DYNAMICS_FIELDS = (
    "true_prob",
    "max_other_prob",
    "correct",
    "entropy",
    "el2n",
    "logit_margin",
    "kl_to_previous",
)


def dynamics_features(epochs: int) -> dict:
    """The declared feature of a dynamics column recorded over ``epochs`` epochs."""
    return {name: Sequence(Value("float32"), length=epochs) for name in DYNAMICS_FIELDS}


def dynamics_struct(arrays: dict[str, np.ndarray]) -> pa.StructArray:
    """The Arrow struct array of a dynamics column from ``{field: (N, T) array}`` (every field needed).

    Each field becomes a fixed-length list of ``T`` float32 values per row, the layout that
    ``dynamics_features(T)`` declares.
    """
    children = []
    for name in DYNAMICS_FIELDS:
        values = np.asarray(arrays[name], dtype=np.float32)
        children.append(pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1]))
    return pa.StructArray.from_arrays(children, names=list(DYNAMICS_FIELDS))


def read_dynamics(dataset: Dataset, column: str, fields: tuple[str, ...] = ("true_prob",)) -> dict[str, np.ndarray]:
    """Read ``fields`` of a dynamics column as ``{field: (N, T) float32}`` without Python row loops.

    A plain list column counts as ``true_prob``. Raises `KeyError` for a missing column or field,
    `ValueError` for ragged, null or non-finite records (naming ``column.field``).
    """
    from .ops.columns import _arrow_column, _flatten_fixed

    check_columns(dataset, column)
    arr = _arrow_column(dataset, column)
    out = {}
    for field in fields:
        if pa.types.is_struct(arr.type):
            names = [arr.type.field(i).name for i in range(arr.type.num_fields)]
            if field not in names:
                raise KeyError(f"dynamics column {column!r} has no field {field!r}; it has {names}")
            sub, label = arr.field(field), f"{column}.{field}"
        elif field == "true_prob":
            sub, label = arr, column
        else:
            raise KeyError(
                f"column {column!r} is a plain list (read as true-class probabilities); the field {field!r} "
                "needs a full dynamics record (see hf_prune.dynamics)"
            )
        values, width = _flatten_fixed(sub, label)
        matrix = values.reshape(len(sub), width).astype(np.float32, copy=False)
        if width == 0:
            raise ValueError(f"column {label!r} has no epochs recorded")
        if not np.isfinite(matrix).all():
            raise ValueError(f"column {label!r} has NaN/inf values")
        out[field] = matrix
    return out


@torch.no_grad()
def epoch_statistics(logits: torch.Tensor, labels: torch.Tensor, previous_probs: torch.Tensor | None = None) -> dict:
    """Per-row dynamics fields of one batch of logits ``(B, C)`` and labels ``(B,)``."""
    logits = logits.float()
    log_probs = torch.log_softmax(logits, dim=1)
    probs = log_probs.exp()
    rows = torch.arange(len(labels), device=logits.device)
    true_prob = probs[rows, labels]
    masked_probs = probs.clone()
    masked_probs[rows, labels] = -1.0
    masked_logits = logits.clone()
    masked_logits[rows, labels] = float("-inf")
    el2n = torch.sqrt((probs.pow(2).sum(1) - true_prob.pow(2)) + (1 - true_prob).pow(2))
    if previous_probs is None:
        kl = torch.zeros_like(true_prob)
    else:
        prev = previous_probs.to(logits.device).float().clamp_min(1e-12)
        kl = (probs * (log_probs - prev.log())).sum(1)
    return {
        "true_prob": true_prob,
        "max_other_prob": masked_probs.max(1).values,
        "correct": (logits.argmax(1) == labels).float(),
        "entropy": -(probs * log_probs).sum(1),
        "el2n": el2n,
        "logit_margin": logits[rows, labels] - masked_logits.max(1).values,
        "kl_to_previous": kl,
    }, probs


class DynamicsRecorder:
    """Accumulates the compact dynamics record of ``num_rows`` training samples over epochs.

    Memory: ``num_rows × epochs × 7`` float32, plus the previous epoch's ``num_rows × C``
    probabilities (for the KL field), never a T×N×C tensor.

    Example:
        >>> rec = DynamicsRecorder(num_rows=len(train), num_classes=10)
        >>> for epoch in range(T):
        ...     for batch in loader:
        ...         logits = model(batch["pixel_values"])
        ...         rec.update(batch["row_id"], logits, batch["label"])
        ...     rec.end_epoch()
        >>> dyn = rec.to_dataset()   # columns row_id, dynamics
    """

    def __init__(self, num_rows: int, num_classes: int):
        self.num_rows, self.num_classes = int(num_rows), int(num_classes)
        self._epochs: list[dict[str, np.ndarray]] = []
        self._current = self._blank()
        self._seen = np.zeros(self.num_rows, dtype=bool)
        self._previous_probs: torch.Tensor | None = None
        self._current_probs = torch.zeros(self.num_rows, self.num_classes)

    def _blank(self) -> dict[str, np.ndarray]:
        return {name: np.zeros(self.num_rows, dtype=np.float32) for name in DYNAMICS_FIELDS}

    @torch.no_grad()
    def update(self, row_ids, logits: torch.Tensor, labels: torch.Tensor) -> None:
        row_ids = torch.as_tensor(row_ids).long().cpu()
        prev = None if self._previous_probs is None else self._previous_probs[row_ids]
        stats, probs = epoch_statistics(logits.detach(), labels.to(logits.device).long(), prev)
        idx = row_ids.numpy()
        for name, value in stats.items():
            self._current[name][idx] = value.cpu().numpy()
        self._current_probs[row_ids] = probs.cpu()
        self._seen[idx] = True

    def end_epoch(self) -> None:
        if not self._seen.all():
            missing = np.flatnonzero(~self._seen)
            raise RuntimeError(f"{len(missing)} rows were not seen this epoch (first: row_id {missing[0]})")
        self._epochs.append(self._current)
        self._previous_probs = self._current_probs.clone()
        self._current, self._seen = self._blank(), np.zeros(self.num_rows, dtype=bool)

    @property
    def epochs(self) -> int:
        return len(self._epochs)

    def state_dict(self) -> dict:
        return {"epochs": self._epochs, "previous_probs": self._previous_probs}

    def load_state_dict(self, state: dict) -> None:
        self._epochs, self._previous_probs = list(state["epochs"]), state["previous_probs"]

    def arrays(self) -> dict[str, np.ndarray]:
        """``{field: (num_rows, epochs)}`` float32 arrays."""
        if not self._epochs:
            raise RuntimeError("no epoch has been recorded")
        return {name: np.stack([e[name] for e in self._epochs], axis=1) for name in DYNAMICS_FIELDS}

    def to_dataset(self, column: str = "dynamics") -> Dataset:
        """A Dataset with ``row_id`` and the struct ``column``, joinable to the training set by ``row_id``."""
        struct = dynamics_struct(self.arrays())
        table = pa.table({"row_id": pa.array(np.arange(self.num_rows, dtype=np.int64)), column: struct})
        features = Features({"row_id": Value("int64"), column: dynamics_features(self.epochs)})
        return Dataset(InMemoryTable(table.cast(features.arrow_schema)), info=DatasetInfo(features=features))
