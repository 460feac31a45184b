"""The LESS score (Xia et al., 2024): gradient cosine similarity of training to validation examples.

LESS estimates how much a training example ``z`` helps a target task ``j`` with validation set
``D_j`` by the (Adam-)influence of one training step on ``z``, measured with the low-dimensional
gradient features of `hf_prune.embed.LoRAGradientEmbedder`:

    Inf(z, D_j) = Σ_i η̄_i · (1/|D_j|) Σ_{z' ∈ D_j} cos(∇ℓ(z'; θ_i), Γ(z, θ_i)),
    LESS(z)     = max_j Inf(z, D_j)          (``reduce="mean"``: the mean over tasks instead)

where ``i`` runs over warm-up checkpoints (weights η̄_i: the average learning rate of each epoch),
``Γ`` are the training features (Adam directions) and ``∇ℓ(z'; ·)`` the validation features (plain
gradients). This is the reference implementation's order: cosine against every validation
example, mean within each task (subtask), then max over tasks.

Because cosine similarities are averaged over a task, ``(1/|D_j|) Σ cos(x, y') = x̂ · mean(ŷ')``
(hats: unit vectors), so each task is summarised by the mean of its unit validation gradients and
the score costs one ``(N, d) × (d, J)`` product per checkpoint; the ``N × M`` similarity matrix is
never formed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch
from datasets import ClassLabel, Dataset

from ..ops.arrow import column_array
from ..ops.checks import check_positive_int
from ..ops.columns import (
    add_column,
    check_columns,
    check_new_column,
    column_list,
    iter_matrix,
    read_labels,
    read_matrix,
)
from ..ops.device import resolve_device
from ..provenance import input_fingerprint, with_provenance

__all__ = ["dataset_tasks", "less", "task_index"]


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    # A zero gradient has no direction: its unit vector, hence every cosine with it, is 0.
    norms = x.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, x / norms.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))


def _validation_matrix(value, column: str | None, position: int) -> np.ndarray:
    what = "validation_gradients" if position < 0 else f"validation_gradients[{position}]"
    if isinstance(value, Dataset):
        if column is None:
            raise ValueError(f"{what} is a Dataset: pass validation_column= (its gradient column)")
        if len(value) == 0:
            raise ValueError(f"{what} is an empty Dataset")
        return read_matrix(value, column)
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        matrix = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be a numeric (M, dim) array or a Dataset: {err}") from err
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty (M, dim) array, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{what} has NaN/inf values")
    return matrix


def _describe(value) -> dict:
    """What a provenance step records of a validation set: a Dataset's fingerprint, an array's shape."""
    if isinstance(value, Dataset):
        return {"dataset_fingerprint": input_fingerprint(value), "rows": len(value)}
    return {"shape": list(np.shape(value))}


def task_index(values, what: str) -> tuple[list, np.ndarray]:
    """``(task names, int64 code per row)``: the distinct task values in sorted order and each row's position in it.

    ``values`` are task ids (strings or integers) of the rows; ``what`` names them in errors. The order
    is the layout of every per-task score column (`less`'s and `hf_prune.score.rds`'s ``per_task_column``).

    Example:
        >>> task_index(np.array(["mmlu", "bbh", "mmlu"]), "task_column")
        (['bbh', 'mmlu'], array([1, 0, 1]))
    """
    ids = np.asarray(values)
    if ids.ndim != 1:
        raise ValueError(f"{what} must hold one task id per row, got shape {ids.shape}")
    if ids.dtype.kind == "f" and not np.isfinite(ids).all():
        raise ValueError(f"{what} has NaN task ids")
    if ids.dtype.kind == "O":
        if any(v is None for v in ids):
            raise ValueError(f"{what} has missing (None) task ids")
        ids = ids.astype(str)
    names, codes = np.unique(ids, return_inverse=True)
    return names.tolist(), codes.astype(np.int64).reshape(-1)


def dataset_tasks(dataset: Dataset, column: str) -> tuple[list, np.ndarray]:
    """`task_index` of a Dataset's task column (strings, integers or ClassLabel; ClassLabel ids give their names).

    Example:
        >>> dataset_tasks(Dataset.from_dict({"task": ["b", "a", "b"]}), "task")
        (['a', 'b'], array([1, 0, 1]))
    """
    codes = read_labels(dataset, column)  # checks the column: present, no nulls, integer or string labels
    arr = column_array(dataset, column)
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    values = arr.to_numpy(zero_copy_only=False) if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) \
        else codes
    names, codes = task_index(values, f"column {column!r}")
    feature = dataset.features[column]
    if isinstance(feature, ClassLabel):
        names = [feature.int2str(int(n)) for n in names]
    return names, codes


def _task_codes(tasks, validation, num_rows: int) -> tuple[np.ndarray, list]:
    if tasks is None:
        return np.zeros(num_rows, dtype=np.int64), [None]
    if isinstance(tasks, str):
        first = validation[0] if isinstance(validation, (list, tuple)) else validation
        if not isinstance(first, Dataset):
            raise ValueError("`task_column` names a column of the validation Dataset; with array validation "
                             "gradients pass the task ids as an array instead")
        names, codes = dataset_tasks(first, tasks)
    else:
        names, codes = task_index(tasks, "`task_column` as an array")
    if len(codes) != num_rows:
        raise ValueError(f"{len(codes)} task ids for {num_rows} validation gradients")
    return codes, names


def less(
    dataset: Dataset,
    *,
    validation_gradients,
    gradient_column: str | Sequence[str] = "grad",
    validation_column: str | Sequence[str] | None = None,
    task_column=None,
    reduce: str = "max",
    checkpoint_weights: Sequence[float] | None = None,
    output_column: str = "less",
    per_task_column: str | None = None,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    batch_size: int = 4096,
) -> Dataset:
    """Add the LESS score of every training row: cosine to the validation gradients, per task, reduced.

    For each training row and each task, the cosine similarity between the row's gradient feature
    and each validation gradient of that task is averaged over the task's rows; the score is the
    ``max`` (LESS) or ``mean`` over tasks. With several checkpoints (lists of columns/validation
    sets) the per-task averages are combined as ``Σ_i w_i · mean_task_cos_i`` **before** the
    reduction over tasks, as LESS does. Higher = more useful for the target tasks. A
    ``"score.less"`` provenance step records the columns, the weights and each validation set (a
    Dataset by its fingerprint and rows, an array by its shape).

    Choices where the paper leaves room (all tested):

    - ``checkpoint_weights`` default to ``1/C`` each (LESS uses each epoch's mean learning rate;
      only the ratios matter for ranking). They are used as given, not renormalised.
    - A zero gradient (training or validation) has no direction: its cosine with anything is 0.
    - Tasks are the distinct values of ``task_column`` (each weighted equally, whatever its size);
      without it the whole validation set is one task and ``reduce`` has no effect.

    Args:
        dataset: training rows with the gradient column(s) (`hf_prune.embed.LoRAGradientEmbedder`,
            Adam-normalised).
        validation_gradients: the validation features in the same space: an ``(M, dim)`` array/tensor
            or a Dataset (then ``validation_column`` names its column); a list of these, one per
            checkpoint, when ``gradient_column`` is a list.
        gradient_column: training feature column, or one column per checkpoint.
        validation_column: the validation Dataset's column(s); default: ``gradient_column``.
        task_column: the task of each validation row: a column name of the (first) validation
            Dataset, or an array of ``M`` task ids. ``None``: one task.
        reduce: ``"max"`` (LESS) or ``"mean"`` over tasks.
        checkpoint_weights: one non-negative weight per checkpoint (η̄_i), not all zero.
        output_column: the new float32 column; an existing one is replaced only with ``overwrite=True``.
        per_task_column: if given, also a fixed-length float32 list column of the ``J`` per-task scores
            (the checkpoint-weighted mean cosines before the reduction over tasks), tasks in sorted
            order of their ids (`task_index`), recorded as the provenance step's ``tasks``. This is what
            `hf_prune.select.round_robin` takes (LESS-RR); `hf_prune.score.rds` writes the same layout.
        device: where the products run (``None``: CUDA when available).
        batch_size: training rows read and scored at a time.

    Raises:
        KeyError: a missing gradient, validation or task column.
        ValueError: ragged/non-numeric/NaN gradients, train/validation dimension mismatch, an empty
            dataset or validation set, task ids that do not match the validation rows, bad
            ``reduce``/weights, an existing output column without ``overwrite``.

    Example:
        >>> train = hp.score.less(train, gradient_column="grad", validation_gradients=val,
        ...                       validation_column="grad", task_column="task", reduce="max")
        >>> sub = hp.select.top_k(train, fraction=0.05, score_column="less")  # LESS keeps the top 5%
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"expected a datasets.Dataset, got {type(dataset).__name__}")
    columns = column_list(gradient_column, "gradient_column")
    check_columns(dataset, *columns)
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    check_new_column(dataset, output_column, overwrite)
    if per_task_column is not None:
        if per_task_column == output_column:
            raise ValueError(f"`per_task_column` and `output_column` are both {output_column!r}")
        check_new_column(dataset, per_task_column, overwrite)
    if reduce not in ("max", "mean"):
        raise ValueError(f"`reduce` must be 'max' or 'mean', got {reduce!r}")
    check_positive_int("batch_size", batch_size)
    checkpoints = len(columns)

    # A list is one validation set per checkpoint when its items are sets (Dataset / 2-d arrays);
    # a plain nested list of numbers is a single (M, dim) array.
    per_checkpoint = isinstance(validation_gradients, (list, tuple)) and bool(validation_gradients) and all(
        isinstance(v, Dataset) or getattr(v, "ndim", 0) == 2 for v in validation_gradients)
    if checkpoints == 1 and not per_checkpoint:
        validations = [validation_gradients]
    elif per_checkpoint and len(validation_gradients) == checkpoints:
        validations = list(validation_gradients)
    else:
        raise ValueError(f"`validation_gradients` must hold one validation set per gradient column ({checkpoints})")
    if validation_column is None:
        val_columns = columns
    else:
        val_columns = column_list(validation_column, "validation_column")
        if len(val_columns) != checkpoints:
            raise ValueError(f"`validation_column` must name {checkpoints} column(s), got {validation_column!r}")

    if checkpoint_weights is None:
        weights = np.full(checkpoints, 1.0 / checkpoints)
    else:
        weights = np.asarray(checkpoint_weights, dtype=np.float64)
        if weights.shape != (checkpoints,) or not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"`checkpoint_weights` must be {checkpoints} non-negative numbers, not all 0, got {checkpoint_weights!r}")

    device = resolve_device(device)
    matrices = [_validation_matrix(v, c, -1 if checkpoints == 1 else i)
                for i, (v, c) in enumerate(zip(validations, val_columns))]
    rows = len(matrices[0])
    if any(len(m) != rows for m in matrices):
        raise ValueError("every checkpoint's validation set must have the same rows (one gradient per example)")
    codes, task_names = _task_codes(task_column, validations, rows)
    num_tasks = len(task_names)
    # Per task j: the mean of its unit validation gradients, so x̂ · u_j = mean cosine over task j.
    averaging = torch.zeros(num_tasks, rows, dtype=torch.float64)
    averaging[torch.from_numpy(codes), torch.arange(rows)] = 1.0
    averaging /= averaging.sum(dim=1, keepdim=True)
    task_means = [
        (averaging @ _unit_rows(torch.tensor(m, dtype=torch.float64))).to(device, torch.float32) for m in matrices
    ]

    per_task = torch.zeros(len(dataset), num_tasks, dtype=torch.float32, device=device)
    for i, (column, means) in enumerate(zip(columns, task_means)):
        for start, chunk in iter_matrix(dataset, column, batch_size=batch_size):
            if chunk.shape[1] != means.shape[1]:
                raise ValueError(f"column {column!r} has dimension {chunk.shape[1]} but the validation gradients "
                                 f"have {means.shape[1]}; project both with the same embedder settings")
            x = _unit_rows(torch.tensor(chunk, device=device))  # a copy: Arrow-backed arrays are read-only
            per_task[start : start + len(chunk)] += float(weights[i]) * (x @ means.T)
    reduced = per_task.max(dim=1).values if reduce == "max" else per_task.mean(dim=1)
    result = add_column(dataset, output_column, reduced.cpu().numpy(), overwrite=overwrite)
    if per_task_column is not None:
        result = add_column(result, per_task_column, per_task.cpu().numpy(), overwrite=overwrite)
    params = {
        "gradient_column": columns, "validation_gradients": [_describe(v) for v in validations],
        "validation_column": val_columns, "task_column": task_column if isinstance(task_column, str) or task_column is None
        else {"task_ids": len(codes), "tasks": num_tasks},
        "reduce": reduce, "checkpoint_weights": weights.tolist(), "output_column": output_column,
        "per_task_column": per_task_column, "tasks": task_names,
    }
    return with_provenance(result, dataset, method="score.less", params=params)
