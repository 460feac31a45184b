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

The image-classification recipe (``--record_dynamics``) writes the record as a saved Dataset with
``row_id`` (position in the train split) and ``dynamics`` columns; `attach_dynamics` joins it onto the
rows of a Dataset by ``row_id``, keeping the declared float32 types, for `hf_prune.score` to read.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset, DatasetInfo, Features, Sequence, Value, load_from_disk
from datasets.fingerprint import Hasher
from datasets.table import InMemoryTable

from .ops.arrow import column_array, fingerprint, indices_mapping
from .ops.columns import check_columns, check_new_column
from .ops.matrix import list_values

__all__ = [
    "DYNAMICS_FIELDS",
    "dynamics_features",
    "dynamics_struct",
    "read_dynamics",
    "attach_dynamics",
    "DynamicsRecorder",
    "epoch_statistics",
]

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
    check_columns(dataset, column)
    arr = column_array(dataset, column)
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
        values, width = list_values(sub, label)
        if not width:
            raise ValueError(f"column {label!r} has no epochs recorded")
        matrix = values.reshape(len(sub), width).astype(np.float32, copy=False)
        if not np.isfinite(matrix).all():
            raise ValueError(f"column {label!r} has NaN/inf values")
        out[field] = matrix
    return out


def _read_ids(dataset: Dataset, column: str, what: str) -> np.ndarray:
    """An integer id column as int64, with `ValueError` naming it for other types, nulls and duplicates."""
    arr = column_array(dataset, column)
    if not pa.types.is_integer(arr.type):
        raise ValueError(f"column {column!r} of {what} has type {arr.type}; expected integer row ids")
    if arr.null_count:
        raise ValueError(f"column {column!r} of {what} has {arr.null_count} null rows")
    ids = arr.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    ordered = np.sort(ids)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if len(repeated):
        raise ValueError(
            f"column {column!r} of {what} has duplicate values ({len(np.unique(repeated))} ids, first: {repeated[0]}); "
            "each row id must name one row"
        )
    return ids


def _is_identity_view(dataset: Dataset) -> bool:
    """Whether row positions of ``dataset`` are positions of its underlying table (no reorder or filter)."""
    indices = indices_mapping(dataset)
    if indices is None:
        return True
    return bool(np.array_equal(indices, np.arange(len(indices))))


def attach_dynamics(
    dataset: Dataset,
    dynamics: Dataset | str | os.PathLike,
    *,
    dynamics_column: str = "dynamics",
    row_id_column: str | None = "row_id",
    output_column: str = "dynamics",
    overwrite: bool = False,
) -> Dataset:
    """Return ``dataset`` with each row's recorded training dynamics as ``output_column``, joined by row id.

    ``dynamics`` is what the image-classification recipe writes with ``--record_dynamics``
    (``<output_dir>/seed_<s>/dynamics``, a path or the loaded Dataset) or `DynamicsRecorder.to_dataset`
    returns: a ``row_id`` column and the record ``dynamics_column``. Each row of ``dataset`` gets the
    record whose ``row_id`` equals its own ``row_id_column`` value, so a shuffled, filtered or selected
    view works as long as it carries ``row_id`` (every `hf_prune.select` selector keeps it); recorded rows
    that ``dataset`` does not hold are ignored. When ``dataset`` has no ``row_id`` column its positions
    are the ids: the dynamics must then cover exactly rows ``0 … len(dataset) − 1`` and ``dataset`` must
    not be a reordered or filtered view (``row_id_column=None`` matches by position regardless).

    The new column has the dynamics' declared feature (float32 stays float32; ``datasets.add_column``
    on Python lists would infer float64), and `hf_prune.score` (DUAL, Dyn-Unc, EL2N, …) reads it.
    Neither input is modified.

    Args:
        dataset: the rows to attach to.
        dynamics: a saved-dataset path or a Dataset with ``row_id`` and ``dynamics_column``.
        dynamics_column: the record column in ``dynamics``.
        row_id_column: the column of ``dataset`` holding each row's id; ``None`` matches by position.
        output_column: the new column of ``dataset``.
        overwrite: replace ``output_column`` if ``dataset`` already has it.

    Raises:
        KeyError: a missing column (``row_id`` or ``dynamics_column`` in ``dynamics``, an explicitly
            named ``row_id_column`` in ``dataset``).
        ValueError: non-integer, null or duplicate ids; rows of ``dataset`` with no recorded dynamics;
            (by position) recorded ids outside ``0 … len(dataset) − 1`` or a reordered view; an
            existing ``output_column`` without ``overwrite=True``.

    Example:
        >>> train = hp.data.load_digits()["train"]
        >>> # accelerate launch recipes/image_classification.py --dataset digits --record_dynamics --output_dir runs/d
        >>> ds = hp.dynamics.attach_dynamics(train, "runs/d/seed_0/dynamics")
        >>> ds = hp.score.dual(ds, dynamics_column="dynamics", window=3)
        >>> sub = hp.select.dual_beta(ds, fraction=0.3, dynamics_column="dynamics", window=3, seed=0)
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"expected a datasets.Dataset, got {type(dataset).__name__}")
    if isinstance(dynamics, (str, os.PathLike)):
        source = os.fspath(dynamics)
        dynamics = load_from_disk(source)
        if not isinstance(dynamics, Dataset):
            raise ValueError(f"{source} holds a {type(dynamics).__name__}; pass the folder of one split's dynamics")
    elif not isinstance(dynamics, Dataset):
        raise TypeError(f"`dynamics` must be a datasets.Dataset or a save_to_disk path, got {type(dynamics).__name__}")
    for column in ("row_id", dynamics_column):
        if column not in dynamics.column_names:
            raise KeyError(f"the dynamics have no column {column!r}; they have {dynamics.column_names}")
    if row_id_column is not None and output_column == row_id_column:
        raise ValueError(f"`output_column` {output_column!r} is the row id column")
    check_new_column(dataset, output_column, overwrite)

    recorded = _read_ids(dynamics, "row_id", "the dynamics")
    by_position = row_id_column is None or row_id_column not in dataset.column_names
    if by_position:
        if row_id_column is not None and row_id_column != "row_id":
            check_columns(dataset, row_id_column)  # an explicitly named id column must exist
        if row_id_column is not None and not _is_identity_view(dataset):
            raise ValueError(
                "the dataset has no 'row_id' column and is a reordered or filtered view (select/shuffle/filter), so "
                "its positions are not the recorded row ids: keep 'row_id' (hf_prune selectors do; add it with "
                "add_column('row_id', range(len(ds))) before shuffling) or pass row_id_column=None to match by position"
            )
        outside = recorded[(recorded < 0) | (recorded >= len(dataset))]
        if len(outside):
            raise ValueError(
                f"the dataset has no 'row_id' column, so its {len(dataset)} positions are the row ids, but the dynamics "
                f"hold {len(outside)} other ids (first: {outside[0]}): they were recorded on other rows; give the "
                "dataset its 'row_id' column"
            )
        wanted = np.arange(len(dataset), dtype=np.int64)
    else:
        wanted = _read_ids(dataset, row_id_column, "the dataset")

    order = np.argsort(recorded, kind="stable")
    known = recorded[order]
    slot = np.minimum(np.searchsorted(known, wanted), max(len(known) - 1, 0))
    found = known[slot] == wanted if len(known) else np.zeros(len(wanted), dtype=bool)
    if not found.all():
        missing = wanted[~found]
        key = "position" if by_position else repr(row_id_column)
        raise ValueError(
            f"{len(missing)} of {len(dataset)} rows have no recorded dynamics (by {key}; first ids: "
            f"{missing[:5].tolist()}); the dynamics hold {len(recorded)} rows"
        )
    index = order[slot]

    feature = dynamics.features[dynamics_column]
    values = column_array(dynamics, dynamics_column)
    if not np.array_equal(index, np.arange(len(recorded))):  # the identity join keeps the column as it is
        values = values.take(pa.array(index))
    if output_column in dataset.column_names:
        dataset = dataset.remove_columns(output_column)
    # Hashing the gathered column would cost a pass over every value; the inputs' fingerprints fix the result.
    new_fingerprint = Hasher.hash(
        ("attach_dynamics", fingerprint(dataset), fingerprint(dynamics), dynamics_column, row_id_column, by_position, output_column)
    )
    values = values.cast(Features({output_column: feature}).arrow_schema.field(output_column).type)
    return dataset.add_column(output_column, values, feature=feature, new_fingerprint=new_fingerprint)


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
