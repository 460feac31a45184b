"""What every corruption shares: argument checks, the exact number of rows, the row choice, chunked
image decoding and column replacement."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import Dataset, Features, Value
from datasets.fingerprint import Hasher
from datasets.table import InMemoryTable

from ..data.images import decode_images, images_to_arrow
from ..ops.arrow import arrow_table, fingerprint, has_indices_mapping
from ..ops.checks import check_columns, check_new_column, check_probability, check_seed, seed_int

__all__ = ["corrupted_count", "choose_rows", "check_corruption_args", "replace_columns", "replace_image_rows"]


def corrupted_count(n: int, rate: float) -> int:
    """Rows to corrupt out of ``n`` at ``rate`` ∈ [0, 1]: ``round(rate · n)`` (half to even)."""
    rate = check_probability("rate", rate)
    return int(round(rate * n))


def choose_rows(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Exactly `corrupted_count` distinct positions, uniformly at random, in the order drawn."""
    if n == 0:
        raise ValueError("the dataset is empty")
    return rng.permutation(n)[: corrupted_count(n, rate)]


def check_corruption_args(
    dataset: Dataset,
    *,
    rate: float,
    seed: Any,
    sources: dict[str, str],
    outputs: dict[str, str | None],
    overwrite: bool,
) -> int:
    """The checks every corruption opens with; returns ``seed`` as an int.

    ``seed`` is an integer ≥ 0 or a NumPy Generator; a Generator gives one draw
    (`hf_prune.ops.checks.seed_int`), after the other checks pass, and the corruption then runs as
    with that integer (which its provenance records).

    ``sources`` and ``outputs`` map argument names to column names: the sources must exist; each
    output (``None``: not written) must be new unless ``overwrite``, and no output may be a source,
    else the write would clobber the column being corrupted.
    """
    check_columns(dataset, *sources.values())
    check_seed(seed)
    corrupted_count(len(dataset), rate)  # validates rate
    for name in outputs.values():
        if name is not None:
            check_new_column(dataset, name, overwrite)
    if set(outputs.values()) & set(sources.values()):
        raise ValueError(f"`{'`/`'.join(outputs)}` must differ from `{'`/`'.join(sources)}`")
    return seed_int(seed)


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
    kept = [name for name in dataset.column_names if name not in columns]
    names = dataset.column_names + [name for name in columns if name not in dataset.column_names]
    table = arrow_table(dataset)
    if has_indices_mapping(dataset) and kept:
        # Gather only the kept columns: the caller already gathered the replaced ones (images can be large).
        table = arrow_table(dataset.select_columns(kept).flatten_indices())
    features = dict(dataset.features)
    arrays = []
    for name in names:
        if name in columns:
            values, feature = columns[name]
            features[name] = feature
            field_type = Features({name: feature}).arrow_schema.field(name).type
            arrays.append(values.cast(field_type) if values.type != field_type else values)
        else:
            arrays.append(table.column(name))
    table = pa.Table.from_arrays(arrays, names=names)
    info = copy.deepcopy(dataset.info)
    info.features = Features({name: features[name] for name in names})
    new_fingerprint = Hasher.hash([fingerprint(dataset), method, params])
    result = Dataset(InMemoryTable(table.cast(info.features.arrow_schema)), info=info, fingerprint=new_fingerprint)
    fmt = dataset.format
    # `format["columns"]` lists every column when no subset was chosen; then the new ones show too.
    shown = None if fmt["columns"] is None or set(fmt["columns"]) >= set(dataset.column_names) else fmt["columns"]
    return result.with_format(fmt["type"], columns=shown, output_all_columns=fmt["output_all_columns"], **fmt["format_kwargs"])


def flag_array(n: int, rows: np.ndarray) -> tuple[pa.Array, Value]:
    flags = np.zeros(n, dtype=bool)
    flags[rows] = True
    return pa.array(flags), Value("bool")


def image_chunks(
    column: pa.Array, feature: Any, image_column: str, rows: np.ndarray, batch_size: int, stream: tuple[int, ...]
) -> Iterator[tuple[np.ndarray, np.ndarray, np.random.Generator]]:
    """``(chunk, decoded uint8 images, rng)`` for each ``batch_size`` rows of ``rows``, in order.

    Each chunk's rng is seeded ``[*stream, chunk index]``, so the batch size is part of the random stream.
    """
    for chunk_index, start in enumerate(range(0, len(rows), batch_size)):
        chunk = rows[start : start + batch_size]
        images = decode_images(column, feature, image_column, indices=chunk)
        yield chunk, images, np.random.default_rng([*stream, chunk_index])


def image_column_with(current: pa.Array, feature: Any, rows: np.ndarray, images: np.ndarray) -> pa.Array:
    """The image column ``current`` (in row order) with ``rows`` replaced by ``images`` (``(M, H, W, C)`` uint8).

    Untouched rows keep their stored bytes; only the replaced rows are (re-)encoded.
    """
    if len(rows) == 0:
        return current
    new = images_to_arrow(images, current.type, feature)
    order = np.arange(len(current), dtype=np.int64)
    order[np.asarray(rows, dtype=np.int64)] = len(current) + np.arange(len(rows))
    return pa.concat_arrays([current, new]).take(pa.array(order))


def replace_image_rows(
    dataset: Dataset,
    image_column: str,
    current: pa.Array,
    rows: np.ndarray,
    images: list[np.ndarray],
    columns: dict[str, tuple[pa.Array, Any]],
    *,
    method: str,
    params: dict[str, Any],
) -> Dataset:
    """`replace_columns` with ``columns`` plus, when ``rows`` is not empty, the image column ``current``
    with ``rows`` replaced by the concatenated ``images`` chunks."""
    if len(rows):
        feature = dataset.features[image_column]
        columns = {**columns, image_column: (image_column_with(current, feature, rows, np.concatenate(images)), feature)}
    return replace_columns(dataset, columns, method=method, params=params)
