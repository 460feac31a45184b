"""Any image–caption dataset (Hub id, local files, a saved dataset, webdataset shards), loaded with
its image and caption column names as parameters and checked cheaply before anything trains on it.

Web pools come as webdataset shards (DataComp, LAION via img2dataset: ``.tar`` files of
``<key>.jpg`` + ``<key>.txt``), which `datasets` reads with its ``"webdataset"`` builder::

    ds = load_image_text("webdataset", data_files={"train": "shards/{00000..00127}.tar"},
                         image_column="jpg", text_column="txt")
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, Image, load_dataset, load_from_disk

from ..ops.arrow import column_array
from ..ops.checks import as_generator, check_columns, check_positive_int
from .hub import is_saved_dataset
from .images import decode_images

__all__ = ["check_image_text", "load_image_text"]

_SHOWN = 5  # bad row positions quoted in an error


def _positions(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:_SHOWN])
    return f"[{shown}{', ...' if len(rows) > _SHOWN else ''}]"


def _check_captions(dataset: Dataset, column: str) -> None:
    arr = column_array(dataset, column)
    if pa.types.is_null(arr.type):
        raise ValueError(f"column {column!r} has no captions: all {len(arr)} rows are null")
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise ValueError(f"column {column!r} holds {dataset.features[column]}; captions must be strings")
    missing = np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(arr)), 0).fill_null(False)
    blank = np.flatnonzero(empty.to_numpy(zero_copy_only=False))
    problems = []
    if len(missing):
        problems.append(f"{len(missing)} null (non-string) captions at rows {_positions(missing)}")
    if len(blank):
        problems.append(f"{len(blank)} empty or blank captions at rows {_positions(blank)}")
    if problems:
        raise ValueError(f"column {column!r} has " + " and ".join(problems))


def _open(entry: Any) -> None:
    from PIL import Image as PILImage

    if entry is None:
        raise ValueError("the row is null")
    if entry.get("bytes") is not None:
        image = PILImage.open(io.BytesIO(entry["bytes"]))
    elif entry.get("path"):
        image = PILImage.open(entry["path"])
    else:
        raise ValueError("the entry has neither bytes nor a path")
    image.load()  # decodes the pixels: a truncated or corrupt file fails here, not only its header


def _check_images(dataset: Dataset, column: str, rows: np.ndarray) -> None:
    feature = dataset.features[column]
    arr = column_array(dataset, column)
    if not isinstance(feature, Image):
        # Array columns (uint8 pixels) are checked by the shared decoder, which names the column.
        decode_images(arr, feature, column, indices=rows)
        return
    bad, first = [], None
    for row, entry in zip(rows.tolist(), arr.take(pa.array(rows, type=pa.int64())).to_pylist()):
        try:
            _open(entry)
        except Exception as error:  # PIL raises several types (OSError, SyntaxError, ValueError, ...)
            bad.append(row)
            first = first or f"{type(error).__name__}: {error}"
    if bad:
        raise ValueError(
            f"column {column!r} has {len(bad)} undecodable images at rows {_positions(np.array(bad))} "
            f"(of {len(rows)} checked; first error: {first})"
        )


def check_image_text(
    dataset: Dataset | DatasetDict,
    *,
    image_column: str = "image",
    text_column: str = "caption",
    sample_size: int | None = 1000,
    seed: int | np.random.Generator = 0,
) -> Dataset | DatasetDict:
    """Check an image–caption dataset (every split of a `DatasetDict`) and return it unchanged.

    - both columns exist, else `KeyError` naming the missing one and listing the columns;
    - every caption is a non-blank string (the whole column, vectorised), else `ValueError` naming
      the column, the counts and the first bad row positions;
    - images decode: ``sample_size`` rows drawn with ``seed`` (all rows when ``None`` or when the
      split is smaller) are fully decoded with PIL, else `ValueError` naming the column and the bad
      rows. Array image columns must hold ``uint8`` pixels (`read_images`' rules).

    Example:
        >>> check_image_text(load_scenes(num_train=100, num_test=10))["train"].num_rows
        100
    """
    if isinstance(dataset, DatasetDict):
        for split, part in dataset.items():
            try:
                check_image_text(part, image_column=image_column, text_column=text_column,
                                 sample_size=sample_size, seed=seed)
            except (KeyError, ValueError) as error:
                raise type(error)(f"split {split!r}: {error.args[0]}") from error
        return dataset
    check_columns(dataset, image_column, text_column)
    if sample_size is not None:
        sample_size = check_positive_int("sample_size", sample_size)
    if image_column == text_column:
        raise ValueError(f"`image_column` and `text_column` are both {image_column!r}")
    n = len(dataset)
    if n == 0:
        raise ValueError("the dataset is empty")
    _check_captions(dataset, text_column)
    if sample_size is None or sample_size >= n:
        rows = np.arange(n)
    else:
        rows = np.sort(as_generator(seed).choice(n, size=sample_size, replace=False))
    _check_images(dataset, image_column, rows)
    return dataset


def load_image_text(
    name_or_path: str | os.PathLike | Dataset | DatasetDict,
    *,
    image_column: str = "image",
    text_column: str = "caption",
    split: str | None = None,
    rename: bool = True,
    check: bool = True,
    sample_size: int | None = 1000,
    seed: int | np.random.Generator = 0,
    **load_kwargs,
) -> Dataset | DatasetDict:
    """An image–caption dataset with its columns renamed to ``image`` and ``caption``, and checked.

    ``name_or_path`` is a Hub id or anything `datasets.load_dataset` takes (``"webdataset"`` or
    ``"parquet"`` with ``data_files=``, a local folder), a `save_to_disk` directory, or a
    Dataset/DatasetDict in hand. ``load_kwargs`` go to `load_dataset` (``data_files``, ``revision``,
    ``streaming`` is not supported). ``split`` picks one split (a Dataset is returned), otherwise all
    splits are kept. With ``rename=True`` the columns become ``image``/``caption``; with
    ``check=True`` each split goes through `check_image_text` (``sample_size`` images decoded).

    Raises `KeyError` naming a missing split or column, `ValueError` for bad captions or images.

    Example:
        >>> pool = load_image_text("webdataset", data_files={"train": "shards/*.tar"},
        ...                        image_column="jpg", text_column="txt")
        >>> pool["train"].column_names[:2]
        ['image', 'caption']
    """
    if load_kwargs.get("streaming"):
        raise ValueError("`streaming=True` is not supported: the pool is checked and pruned as a Dataset")
    if isinstance(name_or_path, (Dataset, DatasetDict)):
        loaded = name_or_path
    elif is_saved_dataset(name_or_path):
        loaded = load_from_disk(str(name_or_path))
    else:
        loaded = load_dataset(str(name_or_path), **load_kwargs)
    splits = loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
    if split is not None:
        if split not in splits:
            raise KeyError(f"split {split!r} not found in {name_or_path!r}; it has {list(splits)}")
        splits = DatasetDict({split: splits[split]})
    out = {}
    for name, ds in splits.items():
        for column in (image_column, text_column):
            if column not in ds.column_names:
                raise KeyError(f"column {column!r} not found in split {name!r}; it has {ds.column_names}")
        if check:  # before renaming, so errors name the user's columns
            try:
                check_image_text(ds, image_column=image_column, text_column=text_column, sample_size=sample_size,
                                 seed=seed)
            except (KeyError, ValueError) as error:
                raise type(error)(f"split {name!r}: {error.args[0]}") from error
        if rename:
            mapping = {old: new for old, new in ((image_column, "image"), (text_column, "caption")) if old != new}
            clash = [new for new in mapping.values() if new in ds.column_names]
            if clash:
                raise ValueError(f"cannot rename to {clash}: split {name!r} already has such a column; pass rename=False")
            ds = ds.rename_columns(mapping) if mapping else ds
        out[name] = ds
    result = DatasetDict(out)
    return result[split] if split is not None else result
