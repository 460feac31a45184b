"""Indices-only subsets: what is written instead of the rows, and rebuilding the rows from the source.

An indices-only subset is a tiny dataset of ``row_id`` (each kept row's position in the Dataset the
selection read, see `hf_prune.provenance`) plus any columns asked for (e.g. scores), with an
``hf_prune.json`` beside it: the source (Hub id or local path, config, split, revision), the
fingerprint and row count of the Dataset ``row_id`` indexes, the subset's column order, a digest per
column of the kept rows and the provenance steps. `load_subset` loads the source, refuses a source
whose revision, row count or kept rows differ from the recorded ones (naming both sides) unless told
to ignore it, and returns the rows with ``row_id``, the stored columns and the provenance.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import warnings
from typing import Any

from datasets import Dataset

from ..provenance import input_fingerprint, provenance, source_info
from ..version import __version__

__all__ = ["subset_metadata", "column_digests", "load_subset", "SourceMismatchError", "META_FILE"]

META_FILE = "hf_prune.json"
_COMMIT = re.compile(r"[0-9a-f]{40}")


class SourceMismatchError(ValueError):
    """The source an indices-only subset points at is not the one it was selected from."""


def _array_digest(array) -> str:
    """A digest of one Arrow column's values in row order, the same however the column is chunked or sliced."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    h = hashlib.blake2b(str(array.type).encode(), digest_size=8)
    simple = array.null_count == 0 and (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)
                                        or pa.types.is_boolean(array.type))
    if simple:
        h.update(np.ascontiguousarray(array.to_numpy(zero_copy_only=False)).tobytes())
        return h.hexdigest()
    is_list = pa.types.is_list(array.type) or pa.types.is_large_list(array.type) or pa.types.is_fixed_size_list(array.type)
    if is_list and array.null_count == 0 and (pa.types.is_integer(array.type.value_type)
                                              or pa.types.is_floating(array.type.value_type)):
        values = array.flatten()  # respects slicing offsets
        if values.null_count == 0:
            h.update(np.ascontiguousarray(pc.list_value_length(array).to_numpy(zero_copy_only=False), "<i8").tobytes())
            h.update(np.ascontiguousarray(values.to_numpy(zero_copy_only=False)).tobytes())
            return h.hexdigest()
    for start in range(0, len(array), 4096):  # nested, text, images, nulls: their Python values
        chunk = array.slice(start, 4096).to_pylist()
        h.update(json.dumps(chunk, sort_keys=True, default=lambda v: v.hex() if isinstance(v, bytes) else str(v)).encode())
    return h.hexdigest()


def column_digests(dataset: Dataset, columns: list[str] | None = None) -> dict[str, str]:
    """``{column: 16-hex digest of its values in row order}`` for ``columns`` (default: all).

    Equal digests mean equal values in the same order, whatever the chunking, an indices mapping or
    the other columns; `load_subset` compares them to check rebuilt rows.

    Example:
        >>> column_digests(ds.select([2, 0]), ["label"]) == column_digests(ds.select([2, 0]).flatten_indices(), ["label"])
        True
    """
    import pyarrow as pa

    from ..ops.arrow import arrow_table, indices_mapping
    from ..ops.checks import check_columns

    names = list(columns or dataset.column_names)
    check_columns(dataset, *names)
    table, mapping = arrow_table(dataset), indices_mapping(dataset)
    # One Arrow take per column over the view's positions (column_array on a 1M-row view took ~7 s a column
    # here, the take 0.01 s).
    take = (lambda col: col.take(pa.array(mapping))) if mapping is not None else (lambda col: col)
    return {name: _array_digest(take(table.column(name)).combine_chunks()) for name in names}


def _row_id_origin(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The step that added ``row_id`` (its input had none), as in the card's explanation."""
    return next(
        (s for s in steps
         if s.get("input_row_id_digest") is None and ("output_row_id_digest" not in s or s["output_row_id_digest"])),
        None,
    )


def subset_metadata(
    dataset: Dataset,
    *,
    indices_only: bool,
    columns: list[str] | None = None,
    source: str | None = None,
    source_revision: str | None = None,
    source_config: str | None = None,
    source_split: str | None = None,
) -> tuple[Dataset, dict[str, Any]]:
    """``(the Dataset to write, the hf_prune.json content)`` for a subset; its rows, or ``row_id`` + ``columns``.

    For ``indices_only=True`` the subset needs a ``row_id`` column added by an hf_prune step (its
    positions in the Dataset that step read) and a ``source`` (a Hub id or a local path) to rebuild
    from; ``config``/``split`` default to what `datasets` recorded about that step's input, and a
    source revision is recorded as given (the commit `datasets` loaded, when the source is the Hub
    dataset it recorded). ``dataset`` is not modified.

    Example:
        >>> table, meta = subset_metadata(sub, indices_only=True, columns=["score"], source="me/data")
        >>> table.column_names, meta["format"]
        (['row_id', 'score'], 'indices')
    """
    # "stale" is recomputed on reading; what is stored is the steps as recorded.
    steps = [{k: v for k, v in s.items() if k != "stale"} for s in provenance(dataset, warn=False)]
    meta: dict[str, Any] = {"format": "indices" if indices_only else "rows", "library_version": __version__,
                            "rows": len(dataset), "columns": list(dataset.column_names), "provenance": steps}
    if source is not None:
        meta["source"] = os.fspath(source)
    if source_revision is not None:
        meta["source_revision"] = source_revision
    if not indices_only:
        if columns is not None:
            raise ValueError("`columns` chooses what an indices-only subset keeps; pass indices_only=True with it")
        return dataset, meta
    if "row_id" not in dataset.column_names:
        raise ValueError(
            "indices_only=True needs a `row_id` column (each row's position in the source), as hf_prune selectors "
            f"add; the subset's columns are {dataset.column_names}"
        )
    origin = _row_id_origin(steps)
    if origin is None:
        raise ValueError(
            "indices_only=True: no recorded hf_prune step added this subset's `row_id` column, so what it indexes is "
            "unknown; push the rows instead (indices_only=False)"
        )
    if source is None:
        raise ValueError("indices_only=True needs `source`: the Hub id or local path the subset is rebuilt from")
    columns = list(columns or [])
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise KeyError(f"`columns` {missing} are not columns of the subset: {dataset.column_names}")
    recorded = steps[0].get("source", {}) if steps else {}
    meta.update(
        source_config=source_config if source_config is not None else recorded.get("config_name"),
        source_split=source_split if source_split is not None else recorded.get("split"),
        source_fingerprint=origin["input_fingerprint"],
        source_rows=origin["input_rows"],
        stored_columns=columns,
        digests=column_digests(dataset, [c for c in dataset.column_names if c != "row_id" and c not in columns]),
    )
    if source_revision is None and recorded.get("hub_id") == meta["source"] and recorded.get("revision"):
        meta["source_revision"] = recorded["revision"]
    if meta["source_config"] == "default":
        meta["source_config"] = None
    return dataset.select_columns(["row_id", *columns]), meta


# -- loading ----------------------------------------------------------------------------------------


def _read_subset(repo_id_or_path: str, revision: str | None, token, endpoint, cache_dir) -> tuple[Dataset, dict]:
    from ..data.hub import is_saved_dataset

    path = os.fspath(repo_id_or_path)
    if os.path.isdir(path):
        folder = path
    elif os.path.exists(path):
        raise ValueError(f"`repo_id_or_path` {path!r} is a file; pass a folder written by save_subset or a Hub id")
    else:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(path, repo_type="dataset", revision=revision, token=token, endpoint=endpoint,
                                   cache_dir=cache_dir, allow_patterns=[META_FILE, "README.md", "*.parquet"])
    meta_path = os.path.join(folder, META_FILE)
    if not os.path.isfile(meta_path):
        raise ValueError(f"{path!r} holds no {META_FILE}: it is not a subset written by hf_prune's save_subset/push_subset")
    with open(meta_path) as f:
        meta = json.load(f)
    if is_saved_dataset(folder):
        from datasets import load_from_disk

        return load_from_disk(folder), meta
    files = sorted(glob.glob(os.path.join(folder, meta.get("data_dir", "data"), "*.parquet")))
    if not files:
        raise ValueError(f"{path!r} holds no data files under {meta.get('data_dir', 'data')}/")
    return Dataset.from_parquet(files), meta


def _load_source(source: str, meta: dict, revision: str | None) -> Dataset:
    from datasets import DatasetDict, load_dataset, load_from_disk

    from ..data.hub import is_saved_dataset

    config, split = meta.get("source_config"), meta.get("source_split")
    if os.path.isdir(source) and is_saved_dataset(source):
        loaded = load_from_disk(source)
    else:
        loaded = load_dataset(source, name=config, split=split, revision=None if os.path.exists(source) else revision)
    if isinstance(loaded, DatasetDict):
        if split is None and len(loaded) != 1:
            raise ValueError(f"the source {source!r} has splits {list(loaded)} and the subset records none; it cannot "
                             "be rebuilt")
        if split is not None and split not in loaded:
            raise SourceMismatchError(f"the source {source!r} has no split {split!r} (it has {list(loaded)})")
        loaded = loaded[split] if split is not None else next(iter(loaded.values()))
    return loaded


def _revision_problem(meta: dict, source: str, requested: str | None) -> str:
    return (f"the subset was selected from revision {meta.get('source_revision')!r} of {meta['source']!r}; "
            f"revision {requested!r} of {source!r} was asked for")


def _check_source(meta: dict, source: str, requested: str | None, loaded: Dataset) -> list[str]:
    """The differences between the recorded source and the loaded one, each naming both sides."""
    recorded = meta.get("source_revision")
    problems = [_revision_problem(meta, source, requested)] if requested != recorded else []
    commit = source_info(loaded).get("revision")
    if commit and recorded and _COMMIT.fullmatch(recorded) and commit != recorded and requested == recorded:
        problems.append(f"the subset was selected from revision {recorded!r}; the loaded source is at {commit!r}")
    if len(loaded) != meta["source_rows"]:
        problems.append(f"the subset was selected from {meta['source_rows']:,} rows (fingerprint "
                        f"{meta['source_fingerprint']!r}); the source now has {len(loaded):,} (fingerprint "
                        f"{input_fingerprint(loaded)!r})")
    return problems


def load_subset(
    repo_id_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    ignore_source_mismatch: bool = False,
    source: str | None = None,
    source_revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    cache_dir: str | None = None,
) -> Dataset:
    """The subset written by `save_subset`/`push_subset`: a local folder or a Hub repo (at ``revision``).

    A subset of rows is read as it is. An indices-only subset is rebuilt from its source (the one it
    records, or ``source``/``source_revision`` to load another copy or revision): a Hub id is loaded
    with ``load_dataset(source, name=config, split=split, revision=...)``, a local folder with
    ``load_from_disk`` (a saved dataset) or ``load_dataset`` (data files), so a local source works
    offline. The source is checked before the rows are returned: the revision asked for against the
    recorded one, the commit `datasets` loaded against a recorded commit, the row count, and a digest
    of each kept row's values in every column the source shares with the subset. A difference raises
    `SourceMismatchError` naming both sides, unless ``ignore_source_mismatch=True`` (then a warning).
    A differing fingerprint alone (the same data loaded another way) is only a warning. The result has
    the subset's columns in its order (``row_id`` and the stored columns included; embedding columns
    not stored are not rebuilt) and its provenance steps.

    Example:
        >>> hp.hub.push_subset(sub, "me/fmnist-10pct-ids", indices_only=True, source="zalando-datasets/fashion_mnist")
        >>> rebuilt = hp.hub.load_subset("me/fmnist-10pct-ids")
        >>> rebuilt["row_id"] == sub["row_id"]
        True
    """
    import numpy as np
    from datasets import concatenate_datasets
    from datasets import config as datasets_config

    from ..provenance import _with_steps

    table, meta = _read_subset(repo_id_or_path, revision, token, endpoint, cache_dir)
    if meta.get("format") != "indices":
        return _with_steps(table, meta.get("provenance", [])) if meta.get("provenance") else table
    source_name = os.fspath(source) if source is not None else meta["source"]
    requested = source_revision if source_revision is not None else meta.get("source_revision")
    problems = []
    if requested != meta.get("source_revision"):  # refused before a possibly long load
        problems = [_revision_problem(meta, source_name, requested)]
        if not ignore_source_mismatch:
            raise SourceMismatchError(_mismatch_message(problems))
    loaded = _load_source(source_name, meta, requested)
    problems = _check_source(meta, source_name, requested, loaded)
    row_ids = np.asarray(table["row_id"], dtype=np.int64)
    if row_ids.size and (row_ids.min() < 0 or row_ids.max() >= len(loaded)):
        problems.append(f"row ids up to {int(row_ids.max()):,} do not fit the source's {len(loaded):,} rows")
        if not ignore_source_mismatch:
            raise SourceMismatchError(_mismatch_message(problems))
        row_ids = row_ids[(row_ids >= 0) & (row_ids < len(loaded))]
        table = table.filter(lambda r: 0 <= r["row_id"] < len(loaded))
    rows = loaded.select(row_ids, keep_in_memory=True)  # the indices only: no cache file beside the source
    shared = [c for c in meta["digests"] if c in rows.column_names]
    if not shared:
        problems.append(f"no column of the source {rows.column_names} is one of the subset's {list(meta['digests'])}")
    found = column_digests(rows, shared) if shared else {}
    changed = [c for c in shared if found[c] != meta["digests"][c]]
    if changed:
        problems.append(f"the kept rows' values differ from the selected ones in columns {changed}")
    if problems:
        if not ignore_source_mismatch:
            raise SourceMismatchError(_mismatch_message(problems))
        warnings.warn("rebuilding despite a source mismatch (ignore_source_mismatch=True): " + "; ".join(problems),
                      UserWarning, stacklevel=2)
    elif input_fingerprint(loaded) != meta["source_fingerprint"]:
        warnings.warn(f"the source's fingerprint {input_fingerprint(loaded)!r} differs from the recorded "
                      f"{meta['source_fingerprint']!r}, but its kept rows are the selected ones", UserWarning,
                      stacklevel=2)
    rows = rows.remove_columns([c for c in rows.column_names if c not in meta["columns"] or c in table.column_names])
    # Materialised in the datasets cache, not beside the source's own files (a saved source folder stays as it was).
    target = os.path.join(datasets_config.HF_DATASETS_CACHE, "hf_prune_rebuilt")
    os.makedirs(target, exist_ok=True)
    rows = rows.flatten_indices(cache_file_name=os.path.join(target, f"{input_fingerprint(rows)}.arrow"))
    rows = concatenate_datasets([rows, table], axis=1)
    rows = rows.select_columns([c for c in meta["columns"] if c in rows.column_names])
    return _with_steps(rows, meta.get("provenance", []))


def _mismatch_message(problems: list[str]) -> str:
    return ("the source does not match the one this subset was selected from: " + "; ".join(problems)
            + ". Pass ignore_source_mismatch=True to rebuild it anyway, or source=/source_revision= to point at the "
            "original source.")
