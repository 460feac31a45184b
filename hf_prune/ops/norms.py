"""Row norms of embedding matrices, shared by norm sampling, the feature-norm score and GraNd."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_norm_order", "row_norms", "squared_row_norms"]

# Rows converted to float64 at once: bounds the extra memory for wide or long columns
# (a million 768-d rows would otherwise need a 6 GB float64 copy).
CHUNK_ROWS = 1 << 14


def check_norm_order(p: Any) -> float:
    """Validate the norm order ``p``: a number ≥ 1, or ``"inf"`` (also ``float("inf")``)."""
    if isinstance(p, str):
        if p.strip().lower() in ("inf", "infinity", "+inf"):
            return float("inf")
        raise ValueError(f"`p` must be a number ≥ 1 or 'inf', got {p!r}")
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) or np.isnan(p) or p < 1:
        raise ValueError(f"`p` must be a number ≥ 1 or 'inf', got {p!r}")
    return float(p)


def _float64_blocks(matrix, block_rows: int = CHUNK_ROWS):
    if hasattr(matrix, "blocks"):
        return matrix.blocks(block_rows, dtype=np.float64)
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-d (rows, dim) matrix, got shape {matrix.shape}")
    return ((s, matrix[s : s + block_rows].astype(np.float64)) for s in range(0, len(matrix), block_rows))


def squared_row_norms(matrix, block_rows: int = CHUNK_ROWS) -> np.ndarray:
    """``‖x_i‖²`` of every row, summed in float64 (not a rounded square of `row_norms`), by blocks of
    ``block_rows`` rows as `row_norms`.

    Example:
        >>> squared_row_norms(np.array([[3.0, -4.0], [1.0, 0.0]]))
        array([25.,  1.])
    """
    out = np.empty(len(matrix))
    for start, block in _float64_blocks(matrix, block_rows):
        out[start : start + len(block)] = np.einsum("ij,ij->i", block, block)
    return out


def row_norms(matrix, p: float | str = 2) -> np.ndarray:
    """The ℓp norm of every row, computed in float64 blocks of `CHUNK_ROWS` rows.

    ``matrix`` is an array or a `hf_prune.ops.matrix.ColumnMatrix` (streamed from its chunks: no copy
    of the column, only one float64 block at a time).

    Example:
        >>> row_norms(np.array([[3.0, -4.0], [1.0, 0.0]]), p=1)
        array([7., 1.])
    """
    p = check_norm_order(p)
    out = np.empty(len(matrix))
    for start, block in _float64_blocks(matrix):
        out[start : start + len(block)] = np.linalg.norm(block, ord=p, axis=1)
    return out
