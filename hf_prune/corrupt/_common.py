"""What every corruption shares: the exact number of rows, the row choice, and column replacement."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import Dataset, Features, Value
from datasets.fingerprint import Hasher
from datasets.table import InMemoryTable

from ..ops.columns import check_columns
from ..select._core import check_probability

__all__ = ["corrupted_count", "choose_rows", "replace_columns"]


def corrupted_count(n: int, rate: float) -> int:
    """Rows to corrupt out of ``n`` at ``rate`` ∈ [0, 1]: ``round(rate · n)`` (half to even)."""
    rate = check_probability("rate", rate)
    return int(round(rate * n))


def choose_rows(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Exactly `corrupted_count` distinct positions, uniformly at random, in the order drawn."""
    if n == 0:
        raise ValueError("the dataset is empty")
    return rng.permutation(n)[: corrupted_count(n, rate)]


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"`seed` must be an integer, got {seed!r}")
    return int(seed)


def replace_columns(
    dataset: Dataset,
    columns: dict[str, tuple[pa.Array, Any]],
    *,
    method: str,
    params: dict[str, Any],
) -> Dataset:
    """A new Dataset with ``columns`` (``name -> (arrow array in row order, feature)``) set or appended.

    Column order, info (including selection provenance) and format are kept; the fingerprint is
    derived from the input's fingerprint, ``method`` and ``params``, so it is deterministic.
    """
    check_columns(dataset)
    base = dataset.flatten_indices() if dataset._indices is not None else dataset
    table = base.data.table
    features = dict(dataset.features)
    for name, (values, feature) in columns.items():
        features[name] = feature
        field_type = Features({name: feature}).arrow_schema.field(name).type
        values = values.cast(field_type) if values.type != field_type else values
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), pa.field(name, field_type), values)
        else:
            table = table.append_column(pa.field(name, field_type), values)
    info = copy.deepcopy(dataset.info)
    info.features = Features({name: features[name] for name in table.column_names})
    fingerprint = Hasher.hash([dataset._fingerprint, method, params])
    result = Dataset(InMemoryTable(table.cast(info.features.arrow_schema)), info=info, fingerprint=fingerprint)
    fmt = dataset.format
    # `format["columns"]` lists every column when no subset was chosen; then the new ones show too.
    shown = None if fmt["columns"] is None or set(fmt["columns"]) >= set(dataset.column_names) else fmt["columns"]
    return result.with_format(fmt["type"], columns=shown, output_all_columns=fmt["output_all_columns"], **fmt["format_kwargs"])


def flag_array(n: int, rows: np.ndarray) -> tuple[pa.Array, Value]:
    flags = np.zeros(n, dtype=bool)
    flags[rows] = True
    return pa.array(flags), Value("bool")


def image_column_with(
    dataset: Dataset, column: str, rows: np.ndarray, images: np.ndarray, current: pa.Array | None = None
) -> pa.Array:
    """The image column (in row order) with ``rows`` replaced by ``images`` (``(M, H, W, C)`` uint8).

    Untouched rows keep their stored bytes; only the replaced rows are (re-)encoded.
    """
    from ..data.images import images_to_arrow
    from ..ops.columns import _arrow_column

    current = _arrow_column(dataset, column) if current is None else current
    if len(rows) == 0:
        return current
    new = images_to_arrow(images, current.type, dataset.features[column])
    order = np.arange(len(current), dtype=np.int64)
    order[np.asarray(rows, dtype=np.int64)] = len(current) + np.arange(len(rows))
    return pa.concat_arrays([current, new]).take(pa.array(order))
