"""An embedding map spread over the processes of ``accelerate launch`` / ``torchrun``.

`map_distributed` gives every process one contiguous shard of the dataset, embeds it on that
process's device, writes the shard's output columns as one Arrow file under ``output_dir``, waits
for the others and returns, on every process, the whole dataset with the new columns: the same
Dataset a one-process ``embedder.map(dataset, batch_size=batch_size)`` returns, row for row.

Why the columns are identical, not just close: shards are cut at multiples of the map
``batch_size`` (process ``r`` of ``W`` gets map batches ``⌊r·n/W⌋ … ⌊(r+1)·n/W⌋ - 1`` of the
``n = ⌈rows / batch_size⌉``), so every forward batch a process runs holds exactly the rows the
one-process map puts in that batch (and a text embedder pads it to the same length). On one
device type the numbers are then the same bits; across device types (CPU vs GPU, bf16 autocast vs
float32) they differ as any two devices do. Not cut like ``Dataset.shard(contiguous=True)``
(equal row counts), whose boundaries fall inside batches and change their composition.

Files (one pair per shard; the folder may hold other files, which are left alone)::

    output_dir/shard-00000-of-00002.arrow   # the shard's output columns only (not the inputs)
    output_dir/shard-00000-of-00002.json    # written after the Arrow file is complete

The JSON marker records the input dataset's fingerprint, the embedder's fingerprint
(`Embedder.fingerprint`: class, settings, weights checksum, device type, autocast), the shard's
rows and the batch size. A process whose marker matches skips its shard (resume after a
preemption: only the missing shards are computed). A marker written for a different dataset or
embedder is an error, never overwritten: pick a new ``output_dir`` or delete the old one. A
dataset whose fingerprint is not stable across runs (``datasets`` gives a random one to some
in-memory tables it cannot hash) is never resumed, only recomputed.

Input: the dataset as each process sees it, indices mapping included (a shuffled or selected
dataset is sharded in its own order). Joining the columns flattens such a mapping (``datasets``
rewrites the table in that order, as a one-process ``map`` does too); call ``flatten_indices`` first
to choose where that copy goes.

Failures: a process that fails (a bad ``output_dir``, a fingerprint mismatch, an error in the
model) makes every process raise, after one ``all_gather_object`` of the outcomes, instead of
leaving the others waiting at the barrier.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, concatenate_datasets

from ..ops.arrow import fingerprint
from ..ops.checks import check_columns, check_new_columns, check_positive_int
from ._base import Embedder

__all__ = ["map_distributed", "batch_aligned_bounds", "shard_name"]

# Shared with `hf_prune.embed.ray_map`, which writes the same markers beside parquet shards.
MARKER_FORMAT = 1
SHARD_MARKER = re.compile(r"shard-(\d{5})-of-(\d{5})\.json")


def batch_aligned_bounds(rows: int, batch_size: int, num_shards: int, index: int) -> tuple[int, int]:
    """``(start, stop)`` of shard ``index``: whole map batches, as evenly spread as batches allow.

    Every start is a multiple of ``batch_size``; shards past the last batch are empty ``(rows, rows)``.

    Example:
        >>> [batch_aligned_bounds(10, 3, 2, i) for i in range(2)]
        [(0, 6), (6, 10)]
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("num_shards", num_shards)
    if not 0 <= index < num_shards:
        raise ValueError(f"`index`={index} is not a shard of {num_shards}")
    batches = -(-rows // batch_size)
    first, last = index * batches // num_shards, (index + 1) * batches // num_shards
    return min(first * batch_size, rows), min(last * batch_size, rows)


def _process_state(state: Any | None):
    """accelerate's ``PartialState``, or the one given (anything with its four members)."""
    if state is not None:
        return state
    from accelerate import PartialState

    # Without cpu=True, accelerate on a CPU-only machine reports one process even under torchrun.
    return PartialState(cpu=not torch.cuda.is_available())


def _ranks(state) -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(state.process_index), int(state.num_processes)


def _output_dir(output_dir: Any) -> Path:
    if not isinstance(output_dir, (str, os.PathLike)) or not str(output_dir):
        raise TypeError(f"`output_dir` must be a folder path, got {output_dir!r}")
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"`output_dir`={str(path)!r} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"`output_dir`={str(path)!r} cannot be created: {err}") from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"`output_dir`={str(path)!r} is not writable")
    return path


def shard_name(index: int, num_shards: int) -> str:
    """The file stem of shard ``index`` of ``num_shards`` in ``output_dir`` (``.arrow`` data, ``.json`` marker).

    Example:
        >>> shard_name(1, 4)
        'shard-00001-of-00004'
    """
    return f"shard-{index:05d}-of-{num_shards:05d}"


def read_marker(path: Path, where: str = "`output_dir`") -> dict[str, Any]:
    """The JSON marker of a shard; `ValueError` for an unreadable one or one of another format version."""
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{where} holds an unreadable shard marker {path.name}: {err}; delete it") from err
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        raise ValueError(f"{where} holds {path.name}, which is not a shard marker of this version; delete it")
    return marker


def shard_markers(folder: Path, where: str = "`output_dir`") -> dict[str, dict[str, Any]]:
    """Every shard marker in ``folder`` (``{file name: marker}``), other files ignored."""
    return {path.name: read_marker(path, where) for path in sorted(folder.iterdir()) if SHARD_MARKER.fullmatch(path.name)}


def check_markers(folder: Path, expected: dict[str, Any], where: str = "`output_dir`",
                  remedy: str = "use a new output_dir or delete the old shards") -> dict[str, dict[str, Any]]:
    """Refuse a folder holding shards of another dataset or embedder (of any number of shards).

    Returns the markers found (`shard_markers`), all written for ``expected``'s dataset and embedder.
    """
    markers = shard_markers(folder, where)
    for name, marker in markers.items():
        for key, what in (("embedder_fingerprint", "embedder"), ("dataset_fingerprint", "dataset")):
            if marker.get(key) != expected[key]:
                raise ValueError(
                    f"{where}={str(folder)!r} holds {name}, written by a different {what} "
                    f"({key} {marker.get(key)!r}, this call's is {expected[key]!r}; embedder "
                    f"{marker.get('embedder')!r}, output columns {marker.get('output_columns')}): {remedy}"
                )
    return markers


def shard_is_done(folder: Path, name: str, expected: dict[str, Any], data_suffix: str = ".arrow",
                  where: str = "`output_dir`") -> bool:
    """Whether shard ``name`` has its data file and a marker written for ``expected`` (rows, batch size, columns)."""
    marker_path, data = folder / f"{name}.json", folder / f"{name}{data_suffix}"
    if not marker_path.exists() or not data.exists():
        return False
    marker = read_marker(marker_path, where)
    keys = ("dataset_fingerprint", "embedder_fingerprint", "start", "stop", "batch_size", "output_columns", "features")
    return all(marker.get(k) == expected[k] for k in keys)


def write_marker(folder: Path, name: str, marker: dict[str, Any]) -> None:
    """Write shard ``name``'s marker atomically; call it only once the shard's data file is complete."""
    tmp = folder / f"{name}.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(marker, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, folder / f"{name}.json")  # the marker appears only once the shard is complete


def _embed_shard(dataset: Dataset, embedder: Embedder, folder: Path, name: str, bounds: tuple[int, int],
                 batch_size: int, desc: str, map_kwargs: dict[str, Any], marker: dict[str, Any]) -> None:
    start, stop = bounds
    if stop > start:
        # Only the inputs are decoded and only the outputs are written: the inputs stay in `dataset`.
        part = dataset.select(range(start, stop)).select_columns(list(embedder.input_columns))
        part.map(
            embedder,
            batched=True,
            batch_size=batch_size,
            features=embedder.features,
            remove_columns=list(embedder.input_columns),
            cache_file_name=str(folder / f"{name}.arrow"),  # `datasets` writes a temporary file, then renames
            load_from_cache_file=False,  # the marker decides what is reused, not the `datasets` cache
            desc=desc,
            **map_kwargs,
        )
    write_marker(folder, name, marker)


def _agree(failure: BaseException | None, rank: int, world: int) -> None:
    """Raise on every process if any failed: nobody is left waiting for a process that is gone."""
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        outcomes: list[Any] = [None] * world
        torch.distributed.all_gather_object(outcomes, None if failure is None else f"{type(failure).__name__}: {failure}")
        others = [(r, o) for r, o in enumerate(outcomes) if o is not None and r != rank]
        if failure is None and others:
            raise RuntimeError("map_distributed failed on " + "; ".join(f"rank {r}: {o}" for r, o in others))
    if failure is not None:
        raise failure


def _quiet_progress(quiet: bool):
    import datasets

    class _Switch:
        def __enter__(self):
            self.turned_off = quiet and not datasets.are_progress_bars_disabled()
            if self.turned_off:
                datasets.disable_progress_bars()

        def __exit__(self, *exc):
            if self.turned_off:
                datasets.enable_progress_bars()

    return _Switch()


def _for_process(embedder: Embedder, device: torch.device | None) -> Embedder:
    """A shallow copy that runs on this process's device; an explicit device other than "cuda" is kept."""
    if device is None or not (embedder.device is None or embedder.device == "auto" or str(embedder.device) == "cuda"):
        return embedder
    local = copy.copy(embedder)  # shares the models (moved to the device at the first batch, as `map` does)
    local.device = torch.device(device)
    return local


def map_distributed(
    dataset: Dataset,
    embedder: Embedder,
    *,
    output_dir: str | os.PathLike,
    batch_size: int | None = None,
    overwrite: bool = False,
    desc: str | None = None,
    state: Any | None = None,
    **map_kwargs,
) -> Dataset:
    """``embedder.map(dataset, batch_size=batch_size)``, each process of a launch embedding one shard.

    Call it from every process of ``accelerate launch``/``torchrun`` (or any initialised
    ``torch.distributed`` group), with the same dataset in each (e.g. ``load_from_disk`` of one
    path). Process ``r`` of ``W`` embeds the ``r``-th contiguous, batch-aligned shard on its own
    device (accelerate's ``PartialState().device``: ``cuda:{local_rank}``, or the CPU), writes its
    output columns to ``output_dir`` and waits at the barrier; then every process returns the whole
    dataset: its columns unchanged plus the new ones, memory-mapped from the shard files, equal to
    a one-process map with the same ``batch_size`` row for row (bit for bit on one device type; see
    the module docstring), with the same ``"embed.<Class>"`` provenance step. One process (a plain
    ``python`` run) embeds everything itself. A process whose shard is already in ``output_dir``
    (same dataset and embedder fingerprints) skips it. Only the main process shows a progress bar.

    Launching:

    - GPUs, one process each: ``accelerate launch --multi_gpu --num_processes 8 embed.py``.
    - CPU processes (gloo): ``torchrun --nproc_per_node 4 embed.py``, or ``accelerate launch
      --multi_gpu --num_processes 4 embed.py`` on a machine without GPUs. ``accelerate launch --cpu
      --num_processes 4`` hands several CPU processes to ``mpirun`` and, where there is none, runs a
      single process.
    - Several machines: the same command on each, with ``--num_machines M --machine_rank i
      --main_process_ip HOST --main_process_port PORT`` (``torchrun --nnodes M --node_rank i
      --rdzv_endpoint HOST:PORT``), and ``output_dir`` on a filesystem every machine shares (NFS,
      Lustre, a mounted bucket): every process writes its shard there and reads all the others.

    Args:
        dataset: the input, the same on every process; never modified.
        embedder: any `Embedder`. With ``device`` ``None``/``"auto"``/``"cuda"`` each process uses its
            own device; any other explicit device (``"cpu"``) is kept.
        output_dir: the folder of the shard files (created; shared by all processes).
        batch_size: rows per map batch (default: the embedder's ``default_map_batch_size``); shards are whole batches.
        overwrite: replace output columns that ``dataset`` already has (otherwise `ValueError`).
        desc: progress-bar label (default: the class and its output columns).
        state: accelerate's ``PartialState`` (default: created, with ``cpu=True`` on a machine without CUDA).
        map_kwargs: passed to `datasets.Dataset.map` (``writer_batch_size``, ...).

    Raises:
        ValueError: an empty dataset, a bad ``output_dir``, shards of another dataset or embedder in it,
            an output column that exists (without ``overwrite``), a shard another process did not write.
        RuntimeError: on every process, when another process failed (naming its rank and error).

    Example:
        >>> # embed.py, run as: accelerate launch --multi_gpu --num_processes 4 embed.py
        >>> ds = load_from_disk("data/pool")
        >>> emb = hp.embed.ImageEmbedder("facebook/dinov2-small", image_column="image")
        >>> ds = hp.embed.map_distributed(ds, emb, output_dir="runs/dino_shards", batch_size=256)
        >>> sub = hp.select.infomax(ds, fraction=0.1, score_column="score", embedding_column="emb")
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"`dataset` must be a datasets.Dataset, got {type(dataset).__name__}")
    if not isinstance(embedder, Embedder):
        raise TypeError(f"`embedder` must be an hf_prune Embedder, got {type(embedder).__name__}")
    for key in ("function", "batched", "with_rank", "features", "input_columns", "remove_columns",
                "cache_file_name", "load_from_cache_file", "num_proc", "keep_in_memory"):
        if key in map_kwargs:
            raise TypeError(f"`{key}` is set by map_distributed; call Dataset.map directly to change it")
    check_columns(dataset, *embedder.input_columns)
    if len(dataset) == 0:
        raise ValueError("the dataset is empty: nothing to embed")
    batch_size = check_positive_int("batch_size", batch_size if batch_size is not None else embedder.default_map_batch_size)
    existing = check_new_columns(dataset, embedder.output_columns, overwrite)
    state = _process_state(state)
    rank, world = _ranks(state)
    local = _for_process(embedder, getattr(state, "device", None))
    desc = desc or f"{type(embedder).__name__} -> {', '.join(embedder.output_columns)}"

    failure: BaseException | None = None
    try:
        folder = _output_dir(output_dir)
        marker = {
            "format": MARKER_FORMAT,
            "dataset_fingerprint": fingerprint(dataset),
            "embedder_fingerprint": local.fingerprint(),
            "embedder": f"{type(embedder).__module__}.{type(embedder).__qualname__}",
            "output_columns": embedder.output_columns,
            "features": embedder.features.to_dict(),
            "num_rows": len(dataset),
            "batch_size": batch_size,
            "num_shards": world,
            "index": rank,
        }
        marker["start"], marker["stop"] = batch_aligned_bounds(len(dataset), batch_size, world, rank)
        check_markers(folder, marker)
        name = shard_name(rank, world)
        if not shard_is_done(folder, name, marker):
            with _quiet_progress(quiet=rank != 0):
                _embed_shard(dataset, local, folder, name, (marker["start"], marker["stop"]), batch_size, desc,
                             map_kwargs, marker)
    except Exception as err:  # every process learns of it in `_agree`
        failure = err
    _agree(failure, rank, world)  # also the barrier: each shard is written once this returns

    parts = []
    for index in range(world):
        start, stop = batch_aligned_bounds(len(dataset), batch_size, world, index)
        name = shard_name(index, world)
        if stop == start:
            continue
        if not shard_is_done(folder, name, {**marker, "start": start, "stop": stop}):
            raise ValueError(
                f"shard {index} of {world} ({name}) is missing from `output_dir`={str(folder)!r} or was not "
                "written for this call: with several machines, output_dir must be on a filesystem they all share"
            )
        part = Dataset.from_file(str(folder / f"{name}.arrow"))
        if len(part) != stop - start:
            raise ValueError(f"{name} in `output_dir` has {len(part):,} rows, expected {stop - start:,}; delete it")
        parts.append(part)
    columns = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    base = dataset.remove_columns(existing) if existing else dataset
    result = concatenate_datasets([base, columns], axis=1)
    return embedder.record_provenance(result, dataset)
