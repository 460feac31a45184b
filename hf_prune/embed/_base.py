"""The shared base of every map-able embedder.

An embedder is a batched callable for ``Dataset.map(..., batched=True)``: it reads its input
columns from the batch, runs models on the device and returns new float32 columns. `Embedder`
provides everything that is not model-specific:

- **device**: chosen automatically (CUDA when available), ``device=`` overrides; under
  ``map(..., with_rank=True, num_proc=n)`` process ``rank`` uses ``cuda:{rank % n_gpus}``. Models
  stay where they were built (normally the CPU) until the first batch, so pickling an embedder for
  worker processes never touches a GPU. A ``num_proc`` worker on CPU runs torch with one thread
  (forked workers would otherwise deadlock in the OpenMP pool inherited from the parent).
- **precision**: autocast to bf16 (fp16 on GPUs without bf16) on CUDA, none on CPU; ``dtype=``
  overrides (``torch.float32`` turns autocast off).
- **batch_size**: the largest forward batch; a bigger ``map`` batch is split into chunks of it.
- **inference_mode** around every forward (a subclass that needs gradients sets
  ``use_inference_mode = False``).
- **declared outputs**: `Embedder.features` holds fixed-length float32 lists (embeddings) and
  float32 scalars (scores); `Embedder.map` checks the columns up front, declares the features,
  refuses to replace a column without ``overwrite=True`` and names the progress bar.
- **provenance**: `Embedder.map` appends an ``"embed.<Class>"`` step to the result's provenance
  (`hf_prune.provenance`): model name or path, revision, weights checksum, input and output
  columns and the embedder's fingerprint (`Embedder.provenance_params`). ``Dataset.map`` copies its
  input's info, so an embedder used as a plain map function cannot record this itself; after your
  own ``ds.map(embedder, ...)`` call `Embedder.record_provenance` to add the same step.
- **stable fingerprints**: ``datasets`` hashes a map function by pickling it. Every `Embedder`
  subclass registers a reducer with the ``datasets`` hashing pickler that writes
  `Embedder.fingerprint` instead of the object, i.e. a hash of a small spec (class, settings, model
  classes and configs, and a checksum of the weights). Identical embedders give the same hash
  across processes, so the second identical ``map`` hits the cache, and no weight tensor is ever
  pickled for hashing. Ordinary pickling (sending the embedder to ``num_proc`` workers) is
  unchanged and does carry the weights.
- **fingerprints follow the weights**: the checksum is of the weights as they are when ``map``
  hashes the embedder, so a model changed in place (an optimizer step, ``load_state_dict``,
  ``.half()``) gets a new fingerprint and a fresh column, never the stale cached one. It is reused
  while every ``state_dict`` tensor is the same object with the same torch in-place version
  counter, storage, dtype, shape and device, so an unchanged model is not re-read. Edits through
  ``tensor.data`` bypass torch's version counter: after ``p.data.add_(...)``, call
  `Embedder.refresh_fingerprint`, or edit under ``torch.no_grad()`` instead.
- **SIGTERM stops a map cleanly**: ``datasets`` writes a map's output to a ``tmpXXXX`` file in the
  dataset's cache folder and removes it when the map raises, but SIGTERM's default action (what
  ``kill``, ``docker stop``, a scheduler's preemption send) ends the process on the spot and leaves
  that file behind. For the duration of a one-process `Embedder.map` whose program has no SIGTERM
  handler of its own, SIGTERM instead stops the map at the next forward chunk, ``datasets`` removes
  its partial file, and the map raises ``SystemExit(143)`` (128 + SIGTERM, the shell's status for a
  terminated process), so the caller's ``finally`` blocks run. A second SIGTERM ends the process at
  once. A program's own handler, SIGTERM ignored, ``num_proc`` maps and maps called by hand keep
  the plain ``datasets`` behaviour. Nothing can run on SIGKILL; stale ``tmp*`` files of a killed
  process are not swept automatically, because a cache folder may be shared by live maps of other
  processes or machines (a shared filesystem) whose files look the same: delete them by hand once
  no map runs.

Subclass API (what a new embedder implements):

- ``__init__``: build/load the models, then call ``super().__init__(input_columns=..., device=...,
  dtype=..., batch_size=...)``.
- ``_output_dims() -> dict[str, int | None]``: each output column and its length (``None`` for a
  scalar column). Order is the column order.
- ``_embed(batch, device) -> dict[str, torch.Tensor | np.ndarray]``: one chunk of at most
  ``batch_size`` rows; ``batch`` maps each input column to a list/array of that chunk's values.
  Runs under inference mode and autocast; returns a ``(n, dim)`` or ``(n,)`` value per output.
- ``_modules() -> dict[str, torch.nn.Module]``: the models to move to the device and checksum.
- ``_spec() -> dict``: JSON-able settings that change the output (pooling, normalisation, column
  names, processor config, ...); they enter the fingerprint.
- ``_hashed_outputs() -> dict`` (optional): the outputs as they enter the fingerprint; override it
  when a width is learned from the data, so hashing never needs the data (see `PixelEmbedder`).
- ``_prepare(batch) -> (batch, lengths)`` (optional): work done once per ``map`` batch before it is
  cut into chunks. It may add per-row entries to the batch (e.g. the token ids, so that the text is
  tokenised once and the forward reuses them) and give each row's length (e.g. its token count).
  With lengths, the chunks are cut from the rows sorted by length, longest first (ties keep their
  order), so each chunk is padded to a length its rows nearly share rather than to the longest row
  of an arbitrary mix, and the outputs are put back in the input order: only the padding changes,
  and an attention-masked pooling ignores it, so the values are those of unsorted batching to
  float rounding (1e-6). This is what sentence-transformers' ``encode`` does (it sorts by
  characters); the text-side embedders give token counts. Without lengths (``None``, the default)
  the chunks keep the input order, as they do for any embedder after ``embedder.sort_by_length =
  False`` (what a benchmark of the sorting compares against; it does not enter the fingerprint,
  since the values do not change).

Multi-GPU, one process per GPU (the column equals the one-process column up to the numerics of
each device)::

    import multiprocess  # the library `datasets` uses for num_proc

    multiprocess.set_start_method("spawn", force=True)  # CUDA cannot be used after fork
    ds = embedder.map(ds, num_proc=torch.cuda.device_count())  # with_rank=True is passed for you

Under ``accelerate launch``, shard instead: ``part = ds.shard(num_shards=state.num_processes,
index=state.process_index, contiguous=True)``, embed ``part`` (``device=state.device``), save it,
and ``concatenate_datasets`` the saved parts in rank order on the main process.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch
import xxhash
from datasets import Dataset, Features

from ..ops.checks import check_choice, check_positive_int
from ..ops.columns import STORAGE_DTYPES, check_columns, check_new_columns, embedding_feature, score_feature
from ..ops.device import autocast_dtype, resolve_device
from ..provenance import with_provenance

__all__ = ["Embedder", "weights_checksum"]


def _checksum_tensors(items: Sequence[tuple[str, torch.Tensor]]) -> str:
    h = xxhash.xxh64()
    for name, tensor in items:
        t = tensor.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # bytes of any dtype (bf16 included): reinterpret as uint8 after flattening.
        h.update(t.reshape(-1).contiguous().cpu().view(torch.uint8).numpy().data)
    return h.hexdigest()


def _take(values: Any, rows: np.ndarray) -> Any:
    """The ``rows`` (indices) of one batch entry, of the same kind (list, array or tensor)."""
    if isinstance(values, np.ndarray):
        return values[rows]
    if isinstance(values, torch.Tensor):
        return values[torch.from_numpy(rows).to(values.device)]
    return [values[i] for i in rows.tolist()]


def weights_checksum(module: torch.nn.Module) -> str:
    """An xxhash64 hex digest of a module's ``state_dict`` (names, dtypes, shapes and bytes).

    Example:
        >>> weights_checksum(torch.nn.Linear(2, 2)) != weights_checksum(torch.nn.Linear(2, 2))
        True
    """
    return _checksum_tensors(sorted(module.state_dict().items()))


def _tensor_state(tensor: torch.Tensor) -> tuple | None:
    """What changes whenever a tensor's contents may have changed, read without its bytes.

    torch bumps ``_version`` on every in-place op (``no_grad`` and inference mode included);
    ``data_ptr`` catches a new storage (``p.data = ...``), dtype/shape/device a conversion.
    ``None`` when the tensor cannot tell (inference tensors have no version counter).
    """
    try:
        return (tensor._version, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()),
                str(tensor.device))
    except RuntimeError:
        return None


class _CachedChecksum:
    """A module's weights checksum with the identity and state of each tensor it was computed from."""

    def __init__(self, items: Sequence[tuple[str, torch.Tensor]]):
        self.names = [name for name, _ in items]
        self.refs = [weakref.ref(t) for _, t in items]  # weak: a replaced tensor can be freed
        self.states = [_tensor_state(t) for _, t in items]
        self.checksum = _checksum_tensors(items)

    def matches(self, items: Sequence[tuple[str, torch.Tensor]]) -> bool:
        return (
            len(items) == len(self.names)
            and all(state is not None for state in self.states)
            and all(
                name == known and ref() is t and _tensor_state(t) == state
                for (name, t), known, ref, state in zip(items, self.names, self.refs, self.states)
            )
        )


class _Terminated(Exception):
    """Raised inside ``datasets``' write loop after SIGTERM, so that it removes its temporary file."""


class _SigtermGuard:
    """Turn SIGTERM into a request that `Embedder.__call__` honours at its next chunk (see module docstring)."""

    def __init__(self, enabled: bool):
        self.requested = False
        self.previous = None
        self.enabled = (
            enabled
            and hasattr(signal, "SIGTERM")
            and threading.current_thread() is threading.main_thread()  # signal handlers live there only
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # never override the program's choice
        )

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once

    def __enter__(self) -> _SigtermGuard:
        if self.enabled:
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            signal.signal(signal.SIGTERM, self.previous)


def _module_spec(module: torch.nn.Module) -> dict[str, Any]:
    spec: dict[str, Any] = {"class": f"{type(module).__module__}.{type(module).__qualname__}"}
    config = getattr(module, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        spec["config"] = config.to_dict()
    return spec


def _fingerprint_token(class_path: str, fingerprint: str) -> str:
    """What the ``datasets`` hashing pickler records for an embedder (never called to unpickle)."""
    return f"{class_path}:{fingerprint}"


def _save_for_hashing(pickler, obj: Embedder) -> None:
    cls = type(obj)
    pickler.save_reduce(_fingerprint_token, (f"{cls.__module__}.{cls.__qualname__}", obj.fingerprint()), obj=obj)


def _register_hashing_reducer(cls: type) -> None:
    # `datasets` hashes map functions with its own dill subclass; its `dispatch` table is how
    # `datasets` itself registers reducers (tokenizers, tensors). Exact types are looked up, so
    # every subclass registers itself.
    try:
        from datasets.utils._dill import Pickler
    except ImportError:  # pragma: no cover - older `datasets`
        try:
            from datasets.utils.py_utils import Pickler
        except ImportError:
            return
    Pickler.dispatch[cls] = _save_for_hashing


class Embedder:
    """Base class of the map-able embedders (see the module docstring for the subclass API).

    Args:
        input_columns: the columns the embedder reads from each batch.
        device: ``None``/``"auto"`` (CUDA when available, else CPU) or any `torch.device` spec.
        dtype: autocast dtype; ``None`` = bf16/fp16 on CUDA and none on CPU, ``torch.float32`` = off.
        batch_size: the largest forward batch (a larger ``map`` batch is processed in chunks).
        storage_dtype: how embedding columns are stored: ``"float32"`` or ``"float16"`` (half the disk,
            page cache and memory; selectors read it in float32 blocks). A value beyond float16's range
            (±65504) is an error naming the column. Arrow has no bfloat16: a bf16 model's output is
            stored as float16 or float32. Score columns are always float32.

    Example:
        >>> emb = hp.embed.PixelEmbedder(image_column="image", size=16)
        >>> ds = emb.map(ds, batch_size=256)               # checks columns, declares features
        >>> ds = ds.map(emb, batched=True, features=emb.features_for(ds))  # the same, by hand
    """

    use_inference_mode: ClassVar[bool] = True
    #: The smallest default ``map`` batch. Embedders that sort a map batch by length (text) set it
    #: above their forward batch, so that a map batch holds many forward chunks to sort.
    min_map_batch_size: ClassVar[int] = 1
    # Chunks cut from the rows sorted by `_prepare`'s lengths (module docstring); False: input order.
    sort_by_length: bool = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _register_hashing_reducer(cls)

    def __init__(
        self,
        *,
        input_columns: Sequence[str],
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        batch_size: int = 64,
        storage_dtype: str = "float32",
    ):
        check_positive_int("batch_size", batch_size)
        self.storage_dtype = check_choice("storage_dtype", storage_dtype, STORAGE_DTYPES)
        if isinstance(dtype, str):
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise ValueError(f"`dtype`={dtype!r} is not a torch dtype")
            dtype = getattr(torch, dtype)
        if device is not None and device != "auto":
            resolve_device(device)  # fail early on an unavailable device
        self.input_columns = tuple(input_columns)
        self.device = device
        self.dtype = dtype
        self.batch_size = int(batch_size)
        self._placed_on: torch.device | None = None
        self._checksums: dict[str, _CachedChecksum] | None = None
        self._owner_pid = os.getpid()
        self._sigterm: _SigtermGuard | None = None

    # ----------------------------------------------------------------- subclass hooks
    def _output_dims(self) -> dict[str, int | None]:
        raise NotImplementedError

    def _embed(self, batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
        raise NotImplementedError

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {}

    def _spec(self) -> dict[str, Any]:
        return {}

    def _hashed_outputs(self) -> dict[str, Any]:
        """The outputs as they enter the fingerprint; override when a width is learned from the data."""
        return self._output_dims()

    def _prepare(self, batch: Mapping[str, Any]) -> tuple[Mapping[str, Any], Sequence[int] | np.ndarray | None]:
        """The batch the chunks are cut from, and each row's length (``None``: keep the input order).

        Runs once per ``map`` batch (module docstring). An entry it adds must hold one value per row;
        its key should not be a column name (a private name such as ``"_tokens"``).
        """
        return batch, None

    def _probe(self, forward: Callable[[torch.device], Any], cannot: str, hint: str = "") -> Any:
        """Run ``forward`` once on the model's device at construction, to check the model and find
        its output widths; any failure becomes a `ValueError` saying what the model ``cannot`` do."""
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        try:
            with torch.inference_mode():
                return forward(device)
        except Exception as err:
            raise ValueError(f"{type(self.model).__name__} cannot {cannot}: {err}{hint}") from err

    # ----------------------------------------------------------------- outputs
    @property
    def output_columns(self) -> list[str]:
        """The names of the columns this embedder writes."""
        return list(self._output_dims())

    @property
    def features(self) -> Features:
        """Declared features of the output columns only (fixed-length lists of ``storage_dtype`` / float32 scores)."""
        return Features({
            c: score_feature() if d is None else embedding_feature(d, self.storage_dtype)
            for c, d in self._output_dims().items()
        })

    def features_for(self, dataset: Dataset) -> Features:
        """``dataset.features`` plus the output columns: pass it as ``features=`` to ``Dataset.map``."""
        return Features({**dataset.features, **self.features})

    # ----------------------------------------------------------------- device and precision
    def target_device(self, rank: int | None = None) -> torch.device:
        """The device for a process: ``cuda:{rank % n_gpus}`` under ``with_rank=True`` with CUDA."""
        if self.device is None or self.device == "auto" or str(self.device) == "cuda":
            device = resolve_device(None if self.device == "auto" else self.device)
            if device.type == "cuda" and rank is not None:
                return torch.device("cuda", rank % torch.cuda.device_count())
            return device
        return resolve_device(self.device)

    def autocast(self, device: torch.device):
        """The autocast context for ``device`` (a no-op for float32)."""
        dtype = autocast_dtype(device, self.dtype)
        if dtype is None or dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    def _place(self, rank: int | None) -> torch.device:
        device = self.target_device(rank)
        if self._placed_on is None and rank is not None and device.type == "cpu" and os.getpid() != self._owner_pid:
            # A `num_proc` worker on CPU: forked children deadlock in torch's OpenMP pool inherited
            # from a parent that already ran a forward, and n workers x all cores oversubscribe.
            torch.set_num_threads(1)
        if self._placed_on != device:
            for module in self._modules().values():
                module.to(device)
            self._placed_on = device
        return device

    # ----------------------------------------------------------------- fingerprint
    def _weights_checksums(self) -> dict[str, str]:
        cached = self._checksums or {}
        fresh = {}
        for name, module in sorted(self._modules().items()):
            # keep_vars: the parameter objects themselves, whose identity and version we can track.
            items = sorted(module.state_dict(keep_vars=True).items())
            known = cached.get(name)
            fresh[name] = known if known is not None and known.matches(items) else _CachedChecksum(items)
        self._checksums = fresh  # replaced, not mutated: copies of this embedder may share the old one
        return {name: entry.checksum for name, entry in fresh.items()}

    def refresh_fingerprint(self) -> str:
        """Forget the cached weights checksum and return the fingerprint of the weights as they are now.

        Only needed after editing weights through ``tensor.data``, which torch does not count as a change.

        Example:
            >>> emb.model.weight.data.mul_(2)  # invisible to torch's version counter
            >>> fp = emb.refresh_fingerprint()
        """
        self._checksums = None
        return self.fingerprint()

    def fingerprint(self) -> str:
        """A hash of the spec that determines the output: class, settings, models and weights.

        The weights enter as a checksum of the model's current ``state_dict``; it is recomputed when
        a tensor was changed in place, replaced or converted since the last call (see the module
        docstring), so a changed model never reuses the cached column of the old one.

        Example:
            >>> before = emb.fingerprint()
            >>> with torch.no_grad():
            ...     next(emb.model.parameters()).add_(1)
            >>> emb.fingerprint() != before
            True
        """
        checksums = self._weights_checksums()
        device = self.target_device()
        spec = {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "inputs": list(self.input_columns),
            "outputs": self._hashed_outputs(),
            "settings": self._spec(),
            "storage_dtype": self.storage_dtype,
            # bf16 on a GPU and fp32 on a CPU give different numbers: different cache entries.
            "device_type": device.type,
            "autocast": str(autocast_dtype(device, self.dtype)),
            "modules": {
                name: {**_module_spec(m), "weights": checksums[name]} for name, m in sorted(self._modules().items())
            },
        }
        return xxhash.xxh64(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_placed_on"] = None  # a worker process places the models on its own device
        state["_checksums"] = None  # weak references to this process's tensors
        state["_sigterm"] = None  # signal handling belongs to the process that runs `map`
        return state

    # ----------------------------------------------------------------- provenance
    def provenance_params(self) -> dict[str, Any]:
        """What an ``"embed.<Class>"`` provenance step records about this embedder.

        ``model`` (the Hub id or path the main model was loaded from, ``None`` for a model built from
        a config), ``revision`` (the one asked for, else the commit `transformers` loaded, if known),
        ``weights_checksum`` (`weights_checksum` of the main model as it is now, the one the
        fingerprint uses), ``models`` (the same per module, with its class), ``input_columns``,
        ``output_columns``, ``fingerprint``, ``device_type`` and ``autocast``.

        Example:
            >>> emb.provenance_params()["weights_checksum"] == weights_checksum(emb.model)
            True
        """
        checksums = self._weights_checksums()
        models = {}
        for name, module in sorted(self._modules().items()):
            config = getattr(module, "config", None)
            models[name] = {
                "class": f"{type(module).__module__}.{type(module).__qualname__}",
                "name_or_path": getattr(config, "_name_or_path", None) or None,
                "commit": getattr(config, "_commit_hash", None),
                "weights_checksum": checksums[name],
            }
        main = models.get("model", {})
        device = self.target_device()
        return {
            "embedder": f"{type(self).__module__}.{type(self).__qualname__}",
            "model": main.get("name_or_path"),
            "revision": getattr(self, "revision", None) or main.get("commit"),
            "weights_checksum": main.get("weights_checksum"),
            "models": models,
            "input_columns": list(self.input_columns),
            "output_columns": self.output_columns,
            "fingerprint": self.fingerprint(),
            "device_type": device.type,
            "autocast": str(autocast_dtype(device, self.dtype)),
            "storage_dtype": self.storage_dtype,
        }

    def record_provenance(self, result: Dataset, source: Dataset) -> Dataset:
        """``result`` (``source`` mapped with this embedder) with an ``"embed.<Class>"`` provenance step.

        `Embedder.map` calls it; call it yourself after your own ``source.map(embedder, ...)``, which
        copies ``source``'s info and so cannot record the step. ``result`` must have ``source``'s rows
        and this embedder's output columns (`ValueError`/`KeyError` otherwise). Returns a new Dataset
        object (the same table and fingerprint); neither ``result`` nor ``source`` is modified.

        Example:
            >>> emb = hp.embed.PixelEmbedder(image_column="image", size=16)
            >>> out = emb.record_provenance(ds.map(emb, batched=True, features=emb.features_for(ds)), ds)
            >>> hp.provenance(out)[-1]["method"]
            'embed.PixelEmbedder'
        """
        if not isinstance(result, Dataset) or not isinstance(source, Dataset):
            raise TypeError("`result` and `source` must be datasets.Dataset objects")
        check_columns(result, *self.output_columns)
        if len(result) != len(source):
            raise ValueError(f"`result` has {len(result):,} rows but `source` has {len(source):,}: an embedding "
                             "keeps the rows, so `result` is not `source` mapped with this embedder")
        # with_provenance sets the info of the object it is given: a shallow copy keeps the caller's untouched.
        return with_provenance(copy.copy(result), source, method=f"embed.{type(self).__name__}",
                               params=self.provenance_params())

    # ----------------------------------------------------------------- the map function
    def __call__(self, batch: Mapping[str, Any], rank: int | None = None) -> dict[str, np.ndarray]:
        """Embed one ``map`` batch (``batched=True``); ``rank`` comes from ``with_rank=True``."""
        if isinstance(batch, pa.Table):  # an Arrow-formatted dataset: undecoded values, as Python objects
            batch = {c: batch.column(c).to_pylist() for c in self.input_columns if c in batch.column_names}
        for column in self.input_columns:
            if column not in batch:
                raise KeyError(f"column {column!r} not found in the batch; it has {list(batch.keys())}")
        n = None
        for column in self.input_columns:
            values = batch[column]
            if not isinstance(values, (list, tuple, np.ndarray, torch.Tensor)):
                raise TypeError(
                    f"column {column!r} holds a single {type(values).__name__}, not a batch: "
                    "call Dataset.map with batched=True"
                )
            if n is not None and len(values) != n:
                raise ValueError(f"column {column!r} has {len(values)} values in a batch of {n}")
            n = len(values)
        device = self._place(rank)
        dims = self._output_dims()
        prepared, order = self._prepared({c: batch[c] for c in self.input_columns}, n)
        parts: dict[str, list[np.ndarray]] = {c: [] for c in dims}
        grad = torch.inference_mode() if self.use_inference_mode else contextlib.nullcontext()
        with grad:
            for start in range(0, n, self.batch_size):
                guard = getattr(self, "_sigterm", None)
                if guard is not None and guard.requested:
                    raise _Terminated("SIGTERM received: the map was stopped")
                if order is None:
                    chunk = {c: v[start : start + self.batch_size] for c, v in prepared.items()}
                else:
                    rows_of = order[start : start + self.batch_size]
                    chunk = {c: _take(v, rows_of) for c, v in prepared.items()}
                rows = min(self.batch_size, n - start)
                with self.autocast(device):
                    out = self._embed(chunk, device)
                for column, dim in dims.items():
                    parts[column].append(self._as_output(out, column, dim, rows))
        result = {}
        for c, p in parts.items():
            value = np.concatenate(p) if p else np.zeros((0,) if dims[c] is None else (0, dims[c]), self._stored(dims[c]))
            if order is not None:  # back to the input order: row order[k] was computed k-th
                restored = np.empty_like(value)
                restored[order] = value
                value = restored
            result[c] = value
        return result

    def _prepared(self, batch: dict[str, Any], n: int) -> tuple[Mapping[str, Any], np.ndarray | None]:
        """`_prepare` checked: every entry has ``n`` values; the rows' processing order (longest first) or ``None``."""
        prepared, lengths = self._prepare(batch)
        for key, values in prepared.items():
            if len(values) != n:
                raise RuntimeError(f"{type(self).__name__}._prepare gave {len(values)} values for {key!r} in a batch of {n}")
        if lengths is None or not self.sort_by_length:
            return prepared, None
        lengths = np.asarray(lengths)
        if lengths.shape != (n,) or not (np.issubdtype(lengths.dtype, np.integer) or n == 0):
            raise RuntimeError(f"{type(self).__name__}._prepare gave lengths of shape {lengths.shape} and dtype "
                               f"{lengths.dtype}; expected {n} integers")
        # Stable, so equal lengths keep their input order (a batch of equal rows is not permuted at all).
        return prepared, np.argsort(-lengths.astype(np.int64), kind="stable")

    def _stored(self, dim: int | None) -> np.dtype:
        return np.dtype(np.float32 if dim is None else self.storage_dtype)

    def _as_output(self, out: Mapping[str, Any], column: str, dim: int | None, rows: int) -> np.ndarray:
        if column not in out:
            raise RuntimeError(f"{type(self).__name__} produced no value for output column {column!r}")
        value = out[column]
        if isinstance(value, torch.Tensor):
            value = value.detach().float().cpu().numpy()
        value = np.asarray(value, dtype=np.float32)
        expected = (rows,) if dim is None else (rows, dim)
        if value.shape != expected:
            raise RuntimeError(f"{type(self).__name__} produced shape {value.shape} for column {column!r}, expected {expected}")
        if not np.isfinite(value).all():
            bad = int(np.flatnonzero(~np.isfinite(value.reshape(rows, -1)).all(1))[0])
            raise ValueError(
                f"{type(self).__name__} produced NaN/inf in column {column!r} (row {bad} of the batch); "
                "check the inputs, or pass dtype=torch.float32 if half precision overflowed"
            )
        stored = self._stored(dim)
        if stored != value.dtype:
            if np.abs(value).max(initial=0.0) > np.finfo(stored).max:
                raise ValueError(
                    f"{type(self).__name__} produced values beyond the {stored} range (±{np.finfo(stored).max:g}) in "
                    f"column {column!r}; use storage_dtype='float32'"
                )
            value = value.astype(stored)
        return value

    @property
    def default_map_batch_size(self) -> int:
        """Rows per ``map`` batch when none is given: ``max(batch_size, min_map_batch_size)``.

        Example:
            >>> hp.embed.TextEmbedder(model, tokenizer=tok, batch_size=64).default_map_batch_size
            1000
        """
        return max(self.batch_size, self.min_map_batch_size)

    def map(
        self,
        dataset: Dataset,
        *,
        batch_size: int | None = None,
        overwrite: bool = False,
        desc: str | None = None,
        num_proc: int | None = None,
        **map_kwargs,
    ) -> Dataset:
        """``dataset.map(self, batched=True, with_rank=True, features=...)`` with the checks done first.

        The result carries an ``"embed.<Class>"`` provenance step (`record_provenance`). Inside
        ``with hp.parallel.ray(...)`` and without ``num_proc``, the map runs on Ray actors in
        batch-aligned shards and returns the same Dataset (`hf_prune.embed.ray_map.map_on_ray`).

        Args:
            dataset: the input; it is never modified.
            batch_size: rows per ``map`` batch (default: `default_map_batch_size`).
            overwrite: replace output columns that already exist (otherwise `ValueError`).
            desc: progress-bar label (default: the class and its output columns).
            num_proc: worker processes; each gets its ``rank`` (one GPU each, see the module docstring).
            map_kwargs: passed to `datasets.Dataset.map` (``load_from_cache_file``, ``cache_file_name``, ...).

        Raises:
            SystemExit: code 143 when SIGTERM arrives during a one-process map (it stops at the next
                chunk and leaves no partial cache file; see the module docstring).

        Example:
            >>> ds = hp.embed.ImageEmbedder(model, processor=proc).map(ds, batch_size=256)
        """
        check_columns(dataset, *self.input_columns)
        if len(dataset) == 0:
            raise ValueError("the dataset is empty: nothing to embed")
        source = dataset  # the provenance step describes the dataset passed in, before any column is dropped
        for key in ("function", "batched", "with_rank", "features", "input_columns"):
            if key in map_kwargs:
                raise TypeError(f"`{key}` is set by {type(self).__name__}.map; call Dataset.map directly to change it")
        existing = check_new_columns(dataset, self.output_columns, overwrite)
        if num_proc is None:
            from ..parallel import current_executor

            executor = current_executor()
            if executor is not None:  # inside `with hp.parallel.ray(...)`: actors write the shards
                if map_kwargs:
                    raise TypeError(f"{sorted(map_kwargs)} are Dataset.map options; under hp.parallel.ray the map "
                                    "runs on Ray actors, which take only batch_size, overwrite and desc")
                from .ray_map import map_on_ray

                return map_on_ray(self, source, executor=executor, batch_size=batch_size, overwrite=overwrite,
                                  desc=desc)
        if existing:
            dataset = dataset.remove_columns(existing)
        features = self.features_for(dataset)
        # One process only: workers of a `num_proc` pool cannot be stopped this way without hanging the pool.
        with _SigtermGuard(enabled=num_proc is None or num_proc <= 1) as guard:
            self._sigterm = guard
            try:
                result = dataset.map(
                    self,
                    batched=True,
                    batch_size=batch_size or self.default_map_batch_size,
                    with_rank=True,
                    num_proc=num_proc,
                    features=features,
                    desc=desc or f"{type(self).__name__} -> {', '.join(self.output_columns)}",
                    **map_kwargs,
                )
            except _Terminated as err:
                raise SystemExit(128 + signal.SIGTERM) from err
            finally:
                self._sigterm = None
        if guard.requested:  # SIGTERM after the last chunk: the cache file is complete, still stop
            raise SystemExit(128 + signal.SIGTERM)
        return self.record_provenance(result, source)
