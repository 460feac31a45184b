"""An embedding column as an (N, d) matrix read block by block from its Arrow chunks.

A Dataset loaded from disk is memory-mapped: its columns are Arrow chunks (one per written record
batch, 1,000 rows by default) whose buffers lie in the mapped file. `ColumnMatrix` keeps those chunks as
zero-copy NumPy views and serves the access patterns selectors need without ever building an N×d copy:

* ``blocks()``: consecutive float32 row blocks, for streamed passes (norms, scores, centroids, the one
  matvec per pick of the greedy selectors, adding rows to a kNN index);
* ``take(indices)``: a gather of some rows;
* ``subset(positions)``: the rows of one class (or a partition), without copying;
* ``to_numpy()``: one contiguous float32 copy, for the algorithms that need random access to every row
  (zero-copy when the column is a single float32 chunk, as a column built in memory is).

Storage may be float16, float32 or float64 (or integers); blocks are always float32, so a float16
column costs half the disk and page cache and is converted one block at a time. Arrow has no
bfloat16 type: store bfloat16 embeddings as float16 or float32 (``datasets`` does the same).

Opening validates the column in one streamed pass (ragged, null, non-numeric or NaN/inf rows raise a
`ValueError` naming the column), with at most one block of temporaries. A view after
``select``/``shuffle``/``filter`` is read through its indices mapping (gathered block by block).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from datasets import Dataset

from .arrow import arrow_table, indices_mapping
from .checks import check_columns, check_positive_int

__all__ = ["ColumnMatrix", "open_matrix", "as_matrix", "list_values", "DEFAULT_BLOCK_ROWS"]

# Rows per block: 64k rows of 384 float32 values are 96 MiB, large enough that per-block overhead
# vanishes next to the arithmetic, small next to a million-row column.
DEFAULT_BLOCK_ROWS = 1 << 16
# Chunks smaller than this are merged into one block (a bounded copy) so that a pass over a column
# written in tiny record batches is not dominated by per-call overhead.
_MIN_BLOCK_ROWS = 256


def list_values(chunk: pa.Array, column: str) -> tuple[np.ndarray, int]:
    """Zero-copy ``(flat values, row width)`` of one list / fixed-size-list Arrow array of numbers.

    ``width`` is ``None`` for a variable-length list array without rows. `ValueError` naming
    ``column`` for ragged rows, nulls and non-numeric values.

    Example:
        >>> list_values(pa.array([[1.0, 2.0], [3.0, 4.0]]), "emb")
        (array([1., 2., 3., 4.]), 2)
    """
    if not (pa.types.is_fixed_size_list(chunk.type) or pa.types.is_list(chunk.type) or pa.types.is_large_list(chunk.type)):
        raise ValueError(f"column {column!r} has type {chunk.type}; expected a list of numbers per row")
    if chunk.null_count:
        raise ValueError(f"column {column!r} has {chunk.null_count} null rows")
    if pa.types.is_fixed_size_list(chunk.type):
        width = chunk.type.list_size
    else:
        offsets = np.asarray(chunk.offsets)
        lengths = np.diff(offsets)
        if len(lengths) and (lengths != lengths[0]).any():
            raise ValueError(
                f"column {column!r} is ragged: row lengths range from {lengths.min()} to {lengths.max()}; "
                "embeddings must have one fixed length"
            )
        width = int(lengths[0]) if len(lengths) else None
    if width == 0:
        return np.zeros(0, dtype=np.float32), 0
    values = chunk.flatten()
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        raise ValueError(f"column {column!r} holds {values.type} values; expected numbers")
    if values.null_count:
        raise ValueError(f"column {column!r} has null values inside {values.null_count} positions")
    return values.to_numpy(zero_copy_only=False), width


class ColumnMatrix:
    """An ``(N, d)`` view of an embedding column over its Arrow chunks; see the module docstring.

    Build one with `open_matrix`. Rows are those of the Dataset view it was opened from, in its order.

    Example:
        >>> m = open_matrix(ds, "emb")
        >>> m.shape
        (1000000, 384)
        >>> total = sum(block.sum(0) for _, block in m.blocks())  # one streamed pass
        >>> first_rows = m.take([0, 5, 9])
    """

    def __init__(self, chunks: list[np.ndarray], column: str, positions: np.ndarray | None = None):
        self.column = column
        self._chunks = chunks
        self._starts = np.zeros(len(chunks) + 1, dtype=np.int64)
        np.cumsum([len(c) for c in chunks], out=self._starts[1:])
        self._positions = None if positions is None else np.asarray(positions, dtype=np.int64)
        self.dim = int(chunks[0].shape[1]) if chunks else 0
        self.dtype = chunks[0].dtype if chunks else np.dtype(np.float32)

    # ------------------------------------------------------------------ shape
    def __len__(self) -> int:
        return int(self._starts[-1]) if self._positions is None else len(self._positions)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.dim)

    @property
    def gathered(self) -> bool:
        """Whether rows are gathered through positions (a view after select/shuffle/filter, or a `subset`),
        so that every block is a copy rather than a view of the chunks."""
        return self._positions is not None

    @property
    def nbytes(self) -> int:
        """Bytes of storage the rows of this view occupy (``N · d · itemsize``)."""
        return len(self) * self.dim * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"ColumnMatrix({self.column!r}, shape={self.shape}, dtype={self.dtype}, chunks={len(self._chunks)})"

    # ------------------------------------------------------------------ access
    def blocks(self, batch_rows: int | None = None, *, dtype=np.float32) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, block)`` pairs covering every row once, in order; ``block`` C-contiguous ``dtype``.

        A block holds at most ``batch_rows`` rows (default `DEFAULT_BLOCK_ROWS`). Chunks already in
        ``dtype`` of at least 256 rows are yielded as zero-copy views (read only); other blocks are
        fresh copies. ``dtype=None`` keeps the storage type.
        """
        batch_rows = DEFAULT_BLOCK_ROWS if batch_rows is None else check_positive_int("batch_rows", batch_rows)
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        if self._positions is not None:
            for start in range(0, len(self), batch_rows):
                yield start, self._gather(self._positions[start : start + batch_rows], dtype)
            return
        pending: list[np.ndarray] = []
        pending_rows, pending_start = 0, 0
        for chunk, chunk_start in zip(self._chunks, self._starts[:-1]):
            for lo in range(0, len(chunk), batch_rows):
                piece = chunk[lo : lo + batch_rows]
                start = int(chunk_start) + lo
                if len(piece) >= _MIN_BLOCK_ROWS or (not pending and len(piece) == len(self)):
                    if pending:
                        yield pending_start, np.ascontiguousarray(np.concatenate(pending), dtype=dtype)
                        pending, pending_rows = [], 0
                    yield start, np.ascontiguousarray(piece, dtype=dtype)
                    continue
                if pending_rows + len(piece) > batch_rows:
                    yield pending_start, np.ascontiguousarray(np.concatenate(pending), dtype=dtype)
                    pending, pending_rows = [], 0
                if not pending:
                    pending_start = start
                pending.append(piece)
                pending_rows += len(piece)
        if pending:
            yield pending_start, np.ascontiguousarray(np.concatenate(pending), dtype=dtype)

    def take(self, indices, *, dtype=np.float32) -> np.ndarray:
        """The rows at ``indices`` (view positions, any order, repeats allowed) as a ``dtype`` array."""
        indices = np.asarray(indices, dtype=np.int64).ravel()
        if len(indices) and (indices.min() < -len(self) or indices.max() >= len(self)):
            raise IndexError(f"row positions must be in [0, {len(self)}) for column {self.column!r}")
        indices = np.where(indices < 0, indices + len(self), indices)
        return self._gather(indices if self._positions is None else self._positions[indices], np.dtype(dtype))

    def subset(self, positions) -> ColumnMatrix:
        """The rows at ``positions`` (view positions) as a ColumnMatrix, without copying any row."""
        positions = np.asarray(positions, dtype=np.int64).ravel()
        if self._positions is None and len(positions) == len(self) and (positions == np.arange(len(self))).all():
            return self
        if len(positions) and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"row positions must be in [0, {len(self)}) for column {self.column!r}")
        table_rows = positions if self._positions is None else self._positions[positions]
        return ColumnMatrix(self._chunks, self.column, table_rows)

    @property
    def zero_copy(self) -> bool:
        """Whether `to_numpy` (float32) returns a view rather than a copy: one float32 chunk, no row selection."""
        return self._positions is None and len(self._chunks) == 1 and self.dtype == np.float32

    def to_numpy(self, dtype=np.float32) -> np.ndarray:
        """All rows as one ``(N, d)`` array: a zero-copy view of a single chunk stored as ``dtype``, else one copy."""
        dtype = np.dtype(dtype)
        if self._positions is None and len(self._chunks) == 1 and self.dtype == dtype:
            return self._chunks[0]
        out = np.empty(self.shape, dtype=dtype)
        for start, block in self.blocks(dtype=None):
            out[start : start + len(block)] = block
        return out

    def __array__(self, dtype=None, copy=None):
        array = self.to_numpy()
        return array if dtype is None else array.astype(dtype, copy=False)

    def _gather(self, table_rows: np.ndarray, dtype: np.dtype) -> np.ndarray:
        if len(self._chunks) == 1:
            return np.ascontiguousarray(self._chunks[0][table_rows], dtype=dtype)
        out = np.empty((len(table_rows), self.dim), dtype=dtype)
        chunk_of = np.searchsorted(self._starts, table_rows, side="right") - 1
        order = np.argsort(chunk_of, kind="stable")
        bounds = np.searchsorted(chunk_of[order], np.arange(len(self._chunks) + 1))
        for c in np.flatnonzero(np.diff(bounds)):
            where = order[bounds[c] : bounds[c + 1]]
            out[where] = self._chunks[c][table_rows[where] - self._starts[c]]
        return out


def open_matrix(dataset: Dataset, column: str, *, allow_nonfinite: bool = False) -> ColumnMatrix:
    """Open the fixed-length embedding column ``column`` of ``dataset`` as a `ColumnMatrix`.

    Validates every row in one streamed pass (`ValueError` naming the column for ragged, null,
    non-numeric or, unless ``allow_nonfinite``, NaN/inf rows; `KeyError` for a missing column). Only
    that column is touched; nothing is copied but one block at a time.

    Example:
        >>> ds = load_from_disk("pool")          # memory-mapped, a million rows
        >>> m = open_matrix(ds, "emb")           # no copy of the column
        >>> norms = np.concatenate([np.linalg.norm(b, axis=1) for _, b in m.blocks()])
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"expected a datasets.Dataset, got {type(dataset).__name__}")
    check_columns(dataset, column)
    chunked = arrow_table(dataset).column(column)
    chunks, widths = [], set()
    for chunk in chunked.chunks:
        if len(chunk) == 0:
            continue
        values, width = list_values(chunk, column)
        if width == 0:
            raise ValueError(f"column {column!r} has empty rows")
        widths.add(width)
        chunks.append(values.reshape(len(chunk), width))
    if len(widths) > 1:
        raise ValueError(
            f"column {column!r} is ragged: row lengths range from {min(widths)} to {max(widths)}; "
            "embeddings must have one fixed length"
        )
    if not chunks:
        width = chunked.type.list_size if pa.types.is_fixed_size_list(chunked.type) else 0
        chunks = [np.zeros((0, width), dtype=np.float32)]
    matrix = ColumnMatrix(chunks, column, indices_mapping(dataset))
    if not allow_nonfinite and np.issubdtype(matrix.dtype, np.floating):
        _check_finite(matrix)
    return matrix


def as_matrix(x, name: str = "x") -> ColumnMatrix:
    """``x`` as a `ColumnMatrix`: one as is, an array-like as a single zero-copy chunk.

    So the kernels that stream their rows (kNN search, k-means, recall) take an in-memory array and a
    memory-mapped column through the same code path. `ValueError` naming ``name`` unless ``x`` is a
    non-empty 2-D numeric matrix.

    Example:
        >>> [(start, len(block)) for start, block in as_matrix(np.zeros((600, 3))).blocks(256)]
        [(0, 256), (256, 256), (512, 88)]
    """
    if isinstance(x, ColumnMatrix):
        matrix = x
    else:
        array = np.asarray(x)
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"`{name}` must hold numbers, got dtype {array.dtype}")
        if array.ndim != 2:
            raise ValueError(f"`{name}` must be a non-empty 2-D matrix, got shape {array.shape}")
        matrix = ColumnMatrix([array], name)
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"`{name}` must be a non-empty 2-D matrix, got shape {matrix.shape}")
    return matrix


def _check_finite(matrix: ColumnMatrix) -> None:
    bad_rows, first = 0, None
    for start, block in matrix.blocks(dtype=None):
        # A row sum is finite exactly when every entry is, unless finite float64 values overflow it:
        # those rare rows are re-checked entry by entry. No block-sized boolean temporary is made.
        suspect = np.flatnonzero(~np.isfinite(block.sum(axis=1, dtype=np.float64)))
        if len(suspect):
            bad = suspect[~np.isfinite(block[suspect]).all(axis=1)]
            bad_rows += len(bad)
            if first is None and len(bad):
                first = start + int(bad[0])
    if bad_rows:
        raise ValueError(
            f"column {matrix.column!r} has NaN/inf values in {bad_rows} rows (first: row {first})"
        )
