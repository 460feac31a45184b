"""The one place that touches `datasets.Dataset` internals (``_indices``, ``_fingerprint``, ``_info``).

A Dataset is an Arrow table plus, after ``select``/``shuffle``/``filter``, an *indices mapping*:
row ``i`` of the view is row ``mapping[i]`` of the table. Reading a column fast means reading the
table directly when there is no mapping and gathering through it otherwise; deriving a fingerprint
or replacing the info of a new Dataset needs the private attributes. Everything else in hf_prune
goes through the small functions here, so a change in `datasets` is fixed in one file (a test
keeps other modules off these attributes).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from datasets import Dataset, DatasetInfo
from datasets.fingerprint import validate_fingerprint

from .checks import check_columns

__all__ = ["fingerprint", "has_indices_mapping", "indices_mapping", "arrow_table", "column_array", "with_info",
           "with_fingerprint"]


def fingerprint(dataset: Dataset) -> str:
    """The fingerprint `datasets` tracks for ``dataset`` (changes with every transform).

    Example:
        >>> fingerprint(ds) == fingerprint(ds.select(range(len(ds))))
        False
    """
    return dataset._fingerprint


def has_indices_mapping(dataset: Dataset) -> bool:
    """Whether ``dataset`` is a view (after ``select``/``shuffle``/``filter``) over its table's rows.

    Example:
        >>> has_indices_mapping(ds), has_indices_mapping(ds.shuffle(seed=0))
        (False, True)
    """
    return dataset._indices is not None


def indices_mapping(dataset: Dataset) -> np.ndarray | None:
    """``(len(dataset),)`` int64 positions of the view's rows in `arrow_table`, or ``None`` without a mapping.

    Example:
        >>> indices_mapping(ds.select([2, 0])).tolist()
        [2, 0]
    """
    if dataset._indices is None:
        return None
    return dataset._indices.column(0).to_numpy()


def arrow_table(dataset: Dataset) -> pa.Table:
    """The underlying Arrow table, *not* reordered by an indices mapping (see `indices_mapping`).

    Example:
        >>> arrow_table(ds).num_rows == len(ds)  # no mapping
        True
    """
    return dataset.data.table


def column_array(dataset: Dataset, column: str) -> pa.Array:
    """One column as a single Arrow array in the view's row order; `KeyError` naming a missing column.

    Without an indices mapping this is the table's column (zero-copy); with one, only that column's
    selected rows are gathered, never the other columns.

    Example:
        >>> column_array(ds.select([1, 0]), "label").to_pylist() == ds["label"][1::-1]
        True
    """
    check_columns(dataset, column)
    values = dataset.data.table.column(column)
    if dataset._indices is not None:
        # One Arrow take of that column (datasets' own formatted read of a view is ~100× slower).
        return values.take(dataset._indices.column(0)).combine_chunks()
    return values.combine_chunks()


def with_info(dataset: Dataset, info: DatasetInfo) -> Dataset:
    """``dataset`` with its info replaced by ``info``, keeping table, format and fingerprint.

    Only for a Dataset the caller has just created (e.g. the result of ``select``): `Dataset.info`
    is read-only, so the private attribute is set on that object, which is returned.

    Example:
        >>> result = with_info(ds.select([0]), info)
    """
    dataset._info = info
    return dataset


def with_fingerprint(dataset: Dataset, fingerprint: str) -> Dataset:
    """``dataset`` with its fingerprint set to ``fingerprint`` (a derived, deterministic one).

    Only for a Dataset the caller has just created, as `with_info`: `datasets` derives a transform's
    fingerprint from its input's and its arguments, and a step that is several transforms (a
    selection: ``select``, then columns added) sets one derived the same way for the whole step.

    Example:
        >>> fingerprint(with_fingerprint(ds.select([0]), "0123456789abcdef"))
        '0123456789abcdef'
    """
    validate_fingerprint(fingerprint)
    dataset._fingerprint = fingerprint
    return dataset
