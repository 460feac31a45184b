"""One interface over the row sources of the kNN and k-means kernels: an array or a block reader.

The kernels read their rows as float32 blocks (``blocks()``), gather a few of them (``take``) and need
``shape``. `hf_prune.ops.matrix.ColumnMatrix` has exactly that API; `as_rows` passes such an object
through (duck-typed: anything with ``blocks`` and ``shape``) and wraps an ndarray in `ArrayRows`, so a
memory-mapped column and an in-memory array take the same code path and the kernels never need an
N×d float32 copy of the whole source.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["ArrayRows", "as_rows", "take_rows", "BLOCK_ROWS"]

#: Rows per block when a kernel streams its source: 16k rows of 384 float32 values are 24 MiB.
BLOCK_ROWS = 1 << 14


class ArrayRows:
    """An ``(N, d)`` array seen through the block API (``shape``, ``blocks``, ``take``).

    Blocks are float32 and C-contiguous: views when the array already is, else one bounded copy per block.

    Example:
        >>> rows = ArrayRows(np.zeros((10, 3)))
        >>> [(start, len(block)) for start, block in rows.blocks(4)]
        [(0, 4), (4, 4), (8, 2)]
    """

    def __init__(self, x: np.ndarray):
        self._x = x

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self._x.shape)

    def __len__(self) -> int:
        return len(self._x)

    def blocks(self, batch_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        step = BLOCK_ROWS if batch_rows is None else int(batch_rows)
        for start in range(0, len(self._x), step):
            yield start, np.ascontiguousarray(self._x[start : start + step], dtype=np.float32)

    def take(self, indices) -> np.ndarray:
        return np.ascontiguousarray(self._x[np.asarray(indices, dtype=np.int64)], dtype=np.float32)


def as_rows(x, name: str = "x"):
    """``x`` as a block source: a ColumnMatrix-like object as is, an array-like wrapped in `ArrayRows`.

    Raises `ValueError` naming ``name`` unless the source is a non-empty 2-D numeric matrix.

    Example:
        >>> as_rows(np.ones((4, 2))).shape
        (4, 2)
    """
    if hasattr(x, "blocks") and hasattr(x, "shape") and not isinstance(x, np.ndarray):
        rows = x
    else:
        array = np.asarray(x)
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"`{name}` must hold numbers, got dtype {array.dtype}")
        rows = ArrayRows(array)
    shape = tuple(rows.shape)
    if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"`{name}` must be a non-empty 2-D matrix, got shape {shape}")
    return rows


def take_rows(rows, indices) -> np.ndarray:
    """float32 ``(len(indices), d)`` copy of the rows at ``indices`` (any order) of a block source.

    Uses the source's ``take`` when it has one, else one streamed pass over its blocks.

    Example:
        >>> take_rows(ArrayRows(np.arange(6.0).reshape(3, 2)), [2, 0])
        array([[4., 5.],
               [0., 1.]], dtype=float32)
    """
    indices = np.asarray(indices, dtype=np.int64).ravel()
    if hasattr(rows, "take"):
        return np.ascontiguousarray(rows.take(indices), dtype=np.float32)
    out = np.empty((len(indices), rows.shape[1]), dtype=np.float32)
    order = np.argsort(indices, kind="stable")
    sorted_idx = indices[order]
    for start, block in rows.blocks():
        lo, hi = np.searchsorted(sorted_idx, [start, start + len(block)])
        out[order[lo:hi]] = block[sorted_idx[lo:hi] - start]
    return out
