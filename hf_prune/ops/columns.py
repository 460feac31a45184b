"""Column <-> array conversion with validation.

Embeddings are fixed-length float lists and scores are float scalars (DESIGN.md). Columns are read
through Arrow without Python loops over rows; every error names the offending column. The column
checks (`check_columns`, `check_new_column(s)`, `column_list`) are defined in `hf_prune.ops.checks`,
below the Arrow access in `hf_prune.ops.arrow`, and re-exported here next to the readers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import Dataset, Features, Value
from datasets import Sequence as SequenceFeature

from .arrow import column_array
from .checks import check_columns, check_new_column, check_new_columns, check_positive_int, column_list
from .matrix import ColumnMatrix, open_matrix

__all__ = [
    "check_columns",
    "read_matrix",
    "iter_matrix",
    "read_vector",
    "read_labels",
    "class_groups",
    "add_column",
    "check_new_column",
    "check_new_columns",
    "column_list",
    "embedding_feature",
    "STORAGE_DTYPES",
    "score_feature",
]


def read_matrix(dataset: Dataset, column: str, *, dtype=np.float32, allow_nonfinite: bool = False) -> np.ndarray:
    """Read a fixed-length list column as an ``(N, d)`` array.

    Zero-copy when the column is one chunk already stored as ``dtype`` (a column built in memory),
    otherwise one contiguous copy; validation streams over the chunks (see `hf_prune.ops.matrix`,
    which also reads a column block by block without any copy). Raises `KeyError` for a missing
    column and `ValueError` for ragged, non-numeric, null or non-finite rows, each naming the column.
    """
    return open_matrix(dataset, column, allow_nonfinite=allow_nonfinite).to_numpy(dtype)


def iter_matrix(dataset: Dataset, column: str, *, batch_size: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
    """Stream a fixed-length list column as ``(start_row, (rows, d) float32 array)`` chunks.

    Only that column is read (never images or other columns), ``batch_size`` rows at a time.
    The column, its type, the dataset and ``batch_size`` are checked at the call; chunks then raise
    `ValueError` naming the column for NaN/inf rows (with the row index).

    Example:
        >>> for start, chunk in iter_matrix(ds, "emb", batch_size=1024):
        ...     print(start, chunk.shape)
    """
    check_columns(dataset, column)
    if len(dataset) == 0:
        raise ValueError(f"the dataset is empty: no rows in column {column!r}")
    batch_size = check_positive_int("batch_size", batch_size)
    return _finite_blocks(open_matrix(dataset, column, allow_nonfinite=True), batch_size)


def _finite_blocks(matrix: ColumnMatrix, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    for start, block in matrix.blocks(batch_size):
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            raise ValueError(f"column {matrix.column!r} has NaN/inf values (first: row {start + int(np.argmin(finite))})")
        yield start, block


def read_vector(dataset: Dataset, column: str, *, dtype=np.float32, allow_nonfinite: bool = False) -> np.ndarray:
    """Read a numeric scalar column as an ``(N,)`` array; `ValueError` on nulls, NaN/inf or non-numbers."""
    arr = column_array(dataset, column)
    if not (pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type) or pa.types.is_boolean(arr.type)):
        raise ValueError(f"column {column!r} has type {arr.type}; expected a numeric scalar per row")
    if arr.null_count:
        raise ValueError(f"column {column!r} has {arr.null_count} null rows")
    vector = arr.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    if not allow_nonfinite and np.issubdtype(vector.dtype, np.floating) and not np.isfinite(vector).all():
        bad = np.flatnonzero(~np.isfinite(vector))
        raise ValueError(f"column {column!r} has NaN/inf values in {len(bad)} rows (first: row {bad[0]})")
    return vector


def read_labels(dataset: Dataset, column: str) -> np.ndarray:
    """Read a label column (ints, strings or ClassLabel) as ``(N,)`` integer codes.

    Codes are ClassLabel ids / the integers themselves; any other hashable labels are coded by
    their sorted unique values so the class order (and hence per-class seeding) is stable.
    """
    arr = column_array(dataset, column)
    if arr.null_count:
        raise ValueError(f"label column {column!r} has {arr.null_count} null rows")
    if pa.types.is_integer(arr.type) or pa.types.is_boolean(arr.type):
        return arr.to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if pa.types.is_floating(arr.type):
        values = arr.to_numpy(zero_copy_only=False)
        if not np.isfinite(values).all() or (values != np.round(values)).any():
            raise ValueError(f"label column {column!r} holds non-integer floats")
        return values.astype(np.int64)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        _, codes = np.unique(arr.to_numpy(zero_copy_only=False).astype(str), return_inverse=True)
        return codes.astype(np.int64)
    raise ValueError(f"label column {column!r} has type {arr.type}; expected integer or string labels")


def class_groups(dataset: Dataset, label_column: str | None) -> tuple[list[Any], list[np.ndarray]]:
    """``(class_ids, row_positions_per_class)``; a single group of all rows when no label column.

    Classes come in sorted code order (see `read_labels`), rows in input order inside each class;
    selectors and scorers seed per-class work by this order.

    Example:
        >>> class_groups(Dataset.from_dict({"label": [1, 0, 1]}), "label")
        ([0, 1], [array([1]), array([0, 2])])
    """
    if label_column is None:
        return [None], [np.arange(len(dataset))]
    labels = read_labels(dataset, label_column)
    classes, inverse = np.unique(labels, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(classes)))[:-1]
    return [c.item() for c in classes], np.split(order, bounds)


# How an embedding column may be stored; either is read back as float32 blocks (`hf_prune.ops.matrix`).
STORAGE_DTYPES = ("float32", "float16")


def embedding_feature(dim: int | None = None, dtype: str = "float32") -> SequenceFeature:
    """The declared feature of an embedding column: a fixed-length list of ``dtype`` (float32 or float16).

    Example:
        >>> embedding_feature(384, "float16")
        List(Value('float16'), length=384)
    """
    return SequenceFeature(Value(dtype), length=-1 if dim is None else int(dim))


def score_feature() -> Value:
    return Value("float32")


def add_column(
    dataset: Dataset,
    name: str,
    values: np.ndarray | Sequence,
    *,
    overwrite: bool = False,
    feature=None,
) -> Dataset:
    """Return a new Dataset with ``name`` holding ``values`` (declared float32 feature by default).

    An existing column is replaced only with ``overwrite=True``; the input is never modified.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"expected a datasets.Dataset, got {type(dataset).__name__}")
    values = np.asarray(values)
    if len(values) != len(dataset):
        raise ValueError(f"column {name!r} has {len(values)} values for {len(dataset)} rows")
    if name in dataset.column_names:
        check_new_column(dataset, name, overwrite)
        dataset = dataset.remove_columns(name)
    if feature is None:
        feature = score_feature() if values.ndim == 1 else embedding_feature(values.shape[1])
        values = values.astype(np.float32, copy=False)
    if values.ndim == 2:
        flat = pa.array(np.ascontiguousarray(values).reshape(-1))
        column = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    else:
        column = pa.array(values)
    features = Features({**dataset.features, name: feature})
    return dataset.add_column(name, column.cast(features.arrow_schema.field(name).type), feature=feature)
