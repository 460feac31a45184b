"""Feature norm ‖F_i‖_p of an embedding column (the Gram–Schmidt seed, Sec. 3: p_i ∝ ‖F_i‖)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from datasets import Dataset

from ..ops.columns import _flatten_fixed, add_column, check_columns, check_new_column
from ..ops.norms import check_norm_order, row_norms

__all__ = ["feature_norm", "iter_matrix"]


def iter_matrix(dataset: Dataset, column: str, *, batch_size: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
    """Stream a fixed-length list column as ``(start_row, (rows, d) float32 array)`` chunks.

    Only that column is read (never images or other columns), ``batch_size`` rows at a time.
    Raises `KeyError` for a missing column and `ValueError` naming the column for ragged,
    non-numeric, null or NaN/inf rows (with the row index) and for an empty dataset.

    Example:
        >>> for start, chunk in iter_matrix(ds, "emb", batch_size=1024):
        ...     print(start, chunk.shape)
    """
    check_columns(dataset, column)
    if len(dataset) == 0:
        raise ValueError(f"the dataset is empty: no rows in column {column!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}")
    view = dataset.select_columns([column]).with_format("arrow")
    width = None
    for start in range(0, len(dataset), batch_size):
        arr = view[start : start + batch_size].column(column).combine_chunks()
        values, w = _flatten_fixed(arr, column)
        if width is None:
            width = w
        if w != width:
            raise ValueError(f"column {column!r} is ragged: rows have lengths {width} and {w}")
        if w == 0:
            raise ValueError(f"column {column!r} has empty rows")
        chunk = values.reshape(len(arr), w).astype(np.float32, copy=False)
        finite = np.isfinite(chunk).all(axis=1)
        if not finite.all():
            raise ValueError(f"column {column!r} has NaN/inf values (first: row {start + int(np.argmin(finite))})")
        yield start, chunk


def feature_norm(
    dataset: Dataset,
    *,
    embedding_column: str = "emb",
    p: float | str = 2,
    output_column: str = "feature_norm",
    overwrite: bool = False,
    batch_size: int = 65536,
) -> Dataset:
    """Add the ℓp norm of each row of ``embedding_column`` as a float32 column.

    The seed weights samples by ‖F_i‖ with ℓ2 by default and compares ℓ1 and ℓ∞ (Fig. 4c–d);
    any ``p >= 1`` is accepted. The column is streamed in ``batch_size`` chunks (norms computed in
    float64, stored as float32).

    Example:
        >>> ds = hp.score.feature_norm(ds, embedding_column="emb", p=2)
        >>> ds.features["feature_norm"]
        Value('float32')
    """
    p = check_norm_order(p)
    check_columns(dataset, embedding_column)
    check_new_column(dataset, output_column, overwrite)
    norms = np.empty(len(dataset), dtype=np.float32)
    for start, chunk in iter_matrix(dataset, embedding_column, batch_size=batch_size):
        norms[start : start + len(chunk)] = row_norms(chunk, p)
    return add_column(dataset, output_column, norms, overwrite=overwrite)
