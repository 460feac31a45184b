"""Validating, planning and running a pipeline, with every data step cached by fingerprint.

Validation runs before anything loads: every step's component and options exist, required options
are given, ``save``/``push`` targets are usable, and every column a step reads is written by an
earlier step or held by the source (when the source's columns can be read cheaply: a saved dataset's
``dataset_info.json``, a parquet schema, a csv header, a jsonl first line, or the cached load step).

Caching: step ``i``'s key is a hash of step ``i-1``'s key, step ``i``'s options as written and the
library version; the load step's key hashes its source (a file's size and modification time, a
folder's files, a Hub id with its ``revision``, a builtin loader's options; an unpinned Hub id is
keyed by the fingerprint of what was loaded). Each data step's output is saved under
``cache_dir/<key>/`` (written to a temporary folder, then renamed, so an interrupted step leaves no
entry), and a run starts from the last step whose entry exists: a re-run after an interruption, or
after editing a later step, computes only the steps from the first changed one on. ``save``/``push``
are never cached; they run every time, with a provenance step ``pipeline`` that holds the pipeline
file's text, so the subset's card says exactly how to rebuild it.

Several processes (``accelerate launch -m hf_prune.cli run FILE``, ``torchrun --nproc_per_node N -m
hf_prune.cli run FILE``): every process runs every step, and each embed step is split into contiguous,
batch-aligned shards, one per process on its own device unless the step sets ``device``
(`hf_prune.embed.map_distributed`: the same column as one process, and an interrupted step resumes
from the shards already written); the main process writes each cache entry and the outputs, and the
others wait for it at accelerate's barrier and read the entry. Other steps are computed by every process (the same result,
or spread over the processes where the function itself is distributed, as InfoMax's partitions are).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..version import __version__
from .spec import PipelineError, PipelineSpec, StepSpec
from .steps import (
    RUNNERS,
    STEP_KINDS,
    Context,
    load_source,
    source_columns,
    source_signature,
    step_columns,
    step_options,
)

__all__ = ["validate", "plan", "run_pipeline", "PlanEntry", "PipelineResult", "default_cache_dir", "format_plan"]

_MODEL_STEPS = ("tokenize", "embed", "score")  # their output depends on --offline-models


def default_cache_dir() -> str:
    """``$HF_PRUNE_PIPELINE_CACHE``, else ``~/.cache/hf_prune/pipelines``.

    Example:
        >>> default_cache_dir().endswith("pipelines")
        True
    """
    return os.environ.get("HF_PRUNE_PIPELINE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "hf_prune", "pipelines")


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _step_key(parent: str | None, step: StepSpec, offline_models: bool) -> str | None:
    if step.kind == "load":
        signature = source_signature(step.options)
        if signature is None:
            return None
        return _hash({"source": signature, "options": step.options, "version": __version__})
    if parent is None:
        return None
    offline = offline_models if step.kind in _MODEL_STEPS else None
    return _hash({"parent": parent, "kind": step.kind, "options": step.options, "offline": offline,
                  "version": __version__})


def _cached(cache_dir: str, key: str | None) -> str | None:
    if key is None:
        return None
    path = os.path.join(cache_dir, key)
    return path if os.path.isfile(os.path.join(cache_dir, f"{key}.json")) and os.path.isdir(path) else None


def validate(spec: PipelineSpec, *, cache_dir: str | None = None) -> None:
    """Raise `PipelineError` listing every problem of a pipeline that needs no data to find.

    Each message is ``file:line: step N (kind): ...`` and names the valid choices (step kinds,
    components, options) or the columns available at that step.

    Example:
        >>> validate(parse_pipeline("steps:\\n  - load: {builtin: digits, split: train}\\n  - embed: {embedder: X}"))
        Traceback (most recent call last):
        PipelineError: <pipeline>:3: step 2 (embed): unknown embedder 'X'; choose one of: CLIPEmbedder, ...
    """
    errors: list[str] = []
    for key in ("cache_dir", "name", "description"):
        if key in spec.settings and not isinstance(spec.settings[key], str):
            errors.append(spec.error(None, f"`{key}` must be a string", key))
    columns: set[str] | None = None
    for step in spec.steps:
        if (step.kind == "load") != (step.index == 1):
            errors.append(spec.error(step, "a pipeline starts with one `load` step, and only the first step is one"))
            continue
        info, valid, problems = step_options(step)
        key = STEP_KINDS[step.kind].component_key
        errors += [spec.error(step, p, key) for p in problems]
        if problems:
            columns = None  # unknown from here on: no column errors that only follow from this one
            continue
        takes_any = info is not None and info.takes_any and step.kind == "load"
        for option in step.options:
            if option not in valid and not takes_any:
                what = f"{step.kind} {info.name}" if info is not None else step.kind
                errors.append(spec.error(step, f"{what} has no option {option!r}; its options are: "
                                               f"{', '.join(valid)}", option))
        if info is not None:
            from .components import check_value

            for option, value in step.options.items():
                problem = check_value(info.options[option], value) if option in info.options else None
                if problem:
                    errors.append(spec.error(step, f"{info.kind} {info.name}: {problem}", option))
            missing = [o.name for o in info.options.values() if o.required and o.name not in step.options
                       and o.name != "validation_gradients"]
            if missing:
                errors.append(spec.error(step, f"{info.kind} {info.name} needs option(s) {', '.join(missing)}"))
        errors += _check_step(spec, step)
        if step.kind == "load":
            columns = source_columns(step.options)
            if columns is None and cache_dir is not None:
                columns = _cached_columns(cache_dir, _step_key(None, step, False))
            continue
        reads, writes = step_columns(step, info)
        if columns is not None:
            for option, column in reads:
                if column not in columns:
                    errors.append(spec.error(
                        step, f"{option}={column!r}: no earlier step writes the column {column!r} and the source "
                              f"does not have it; the columns here are: {', '.join(sorted(columns))}", option))
            columns |= set(writes)
    if errors:
        raise PipelineError("\n".join(errors))


def _cached_columns(cache_dir: str, key: str | None) -> set[str] | None:
    path = _cached(cache_dir, key)
    if path is None:
        return None
    try:
        with open(os.path.join(path, "dataset_info.json"), encoding="utf-8") as handle:
            return set(json.load(handle)["features"])
    except (OSError, KeyError, ValueError):
        return None


def _check_step(spec: PipelineSpec, step: StepSpec) -> list[str]:
    errors = []
    options = step.options
    if step.kind == "load":
        if ("builtin" in options) == ("path" in options):
            errors.append(spec.error(step, "set exactly one of `builtin` (a loader of hf_prune.data) and `path`"))
        if "builtin" in options:
            for bad in ("revision", "config_name", "streaming"):
                if bad in options:
                    errors.append(spec.error(step, f"`{bad}` applies to a `path`, not to a builtin loader", bad))
        if options.get("streaming") and options.get("rows") is None:
            errors.append(spec.error(step, "`streaming: true` needs `rows`: how many rows to materialise", "streaming"))
    fraction = options.get("fraction")
    if step.kind == "select" and isinstance(fraction, (int, float)) and not isinstance(fraction, bool) \
            and not 0 < fraction <= 1:
        errors.append(spec.error(step, f"`fraction` is the kept fraction, 0 < fraction <= 1; got {fraction}",
                                 "fraction"))
    if step.kind in ("load", "embed"):
        for name in ("rows", "shuffle_seed", "num_proc", "map_batch_size"):
            value = options.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0
                                      or (value == 0 and name != "shuffle_seed")):
                errors.append(spec.error(step, f"`{name}` must be a positive integer, got {value!r}", name))
    if step.kind == "save" and not isinstance(options.get("path"), str):
        errors.append(spec.error(step, "`path` (the folder to save the subset to) is required"))
    if step.kind == "push" and not isinstance(options.get("repo_id"), str):
        errors.append(spec.error(step, "`repo_id` (the Hub dataset repo to push to) is required"))
    if step.kind == "score" and options.get("scorer") == "less":
        validation = options.get("validation")
        if not isinstance(validation, dict) or ("builtin" in validation) == ("path" in validation):
            errors.append(spec.error(step, "less needs `validation`: a mapping of load options with `builtin` or "
                                           "`path` (the validation examples)", "validation"))
    for name in ("validation", "lora", "config"):
        if name in options and not isinstance(options[name], dict):
            errors.append(spec.error(step, f"`{name}` must be a mapping", name))
    return errors


@dataclass
class PlanEntry:
    """One step of a plan: the step, its cache key (``None`` until the source is loaded) and cache entry.

    Example:
        >>> [(e.step.kind, e.cached is not None) for e in plan(spec, cache_dir="cache")]
        [('load', True), ('select', False), ('save', False)]
    """

    step: StepSpec
    key: str | None
    cached: str | None

    @property
    def data(self) -> bool:
        return STEP_KINDS[self.step.kind].data


def plan(spec: PipelineSpec, *, cache_dir: str | None = None, offline_models: bool = False) -> list[PlanEntry]:
    """Each step with its cache key and whether its output is cached.

    Example:
        >>> [e.cached is not None for e in plan(spec, cache_dir="cache")]
        [True, True, False, False]
    """
    cache_dir = cache_dir or default_cache_dir()
    entries, parent = [], None
    for step in spec.steps:
        if not STEP_KINDS[step.kind].data:
            entries.append(PlanEntry(step, None, None))
            continue
        parent = _step_key(parent, step, offline_models)
        entries.append(PlanEntry(step, parent, _cached(cache_dir, parent)))
    return entries


def _describe(step: StepSpec) -> str:
    kind = STEP_KINDS[step.kind]
    name = step.options.get(kind.component_key) if kind.component_key else None
    rest = {k: v for k, v in step.options.items() if k != kind.component_key}
    text = ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in rest.items())
    return f"{name} {text}".strip() if name else text


def format_plan(spec: PipelineSpec, entries: list[PlanEntry], cache_dir: str) -> str:
    """The ``--dry-run`` text: one line per step, with ``cached``, ``runs`` or ``runs (always)``.

    Example:
        >>> print(format_plan(spec, plan(spec, cache_dir="c"), "c"))
    """
    first = max((i for i, e in enumerate(entries) if e.cached), default=-1)
    lines = [f"pipeline {spec.source}: {len(entries)} steps; cache {cache_dir}"]
    for i, entry in enumerate(entries):
        if not entry.data:
            status = "runs (always)"
        elif i <= first:
            status = "cached" if i == first else "cached (not read)"
        elif entry.key is None:
            status = "runs (unpinned source: known once loaded)"
        else:
            status = "runs"
        lines.append(f"  {entry.step.index}. {entry.step.kind:<8} {status:<20} {_describe(entry.step)}")
    return "\n".join(lines)


@dataclass
class PipelineResult:
    """What a run did: the final Dataset and, per step, ``status`` (``cached``, ``computed``, ``skipped``,
    ``ran``), rows, seconds and cache folder.

    Example:
        >>> result = run_pipeline(spec, cache_dir="cache")
        >>> [s["status"] for s in result.steps]
        ['skipped', 'cached', 'computed', 'ran']
    """

    dataset: Any
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def computed(self) -> int:
        """How many data steps were computed (not read from the cache)."""
        return sum(s["status"] == "computed" for s in self.steps)


def _write_cache(dataset, cache_dir: str, key: str, step: StepSpec, seconds: float):
    import datasets as datasets_tqdm  # its progress-bar switches
    from datasets import load_from_disk

    os.makedirs(cache_dir, exist_ok=True)
    final, tmp = os.path.join(cache_dir, key), os.path.join(cache_dir, f".{key}.tmp-{uuid.uuid4().hex[:8]}")
    quiet = not datasets_tqdm.are_progress_bars_disabled()
    if quiet:  # the step's own line says what is written; a second bar per step is noise
        datasets_tqdm.disable_progress_bars()
    try:
        dataset.save_to_disk(tmp)
        if os.path.isdir(final):  # a folder left without its record by a crash: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if quiet:
            datasets_tqdm.enable_progress_bars()
    record = {"kind": step.kind, "options": step.options, "rows": len(dataset), "seconds": round(seconds, 3),
              "version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(os.path.join(cache_dir, f"{key}.json.tmp"), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2, default=str)
    os.replace(os.path.join(cache_dir, f"{key}.json.tmp"), os.path.join(cache_dir, f"{key}.json"))
    return load_from_disk(final)  # memory-mapped: later steps (and their map caches) read from the entry


def _process_state():
    """accelerate's ``PartialState`` when launched with several processes, else ``None``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    # A CPU-only machine launched with torchrun has WORLD_SIZE > 1 and no GPU: gloo, only when told CPU.
    return PartialState(cpu=not torch.cuda.is_available())


def _commit(dataset, cache_dir: str, key: str, step: StepSpec, seconds: float, state):
    """Write a step's cache entry (the main process) and read it back (every process)."""
    if state is None:
        return _write_cache(dataset, cache_dir, key, step, seconds)
    from datasets import load_from_disk

    if state.is_main_process:
        _write_cache(dataset, cache_dir, key, step, seconds)
    state.wait_for_everyone()
    return load_from_disk(os.path.join(cache_dir, key))


def _embed_distributed(ctx: Context, step: StepSpec, dataset, state, shards: str):
    """The embed step over every process of the launch (`hf_prune.embed.map_distributed`)."""
    from ..embed import map_distributed
    from .steps import build_embedder

    return map_distributed(dataset, build_embedder(ctx, step), output_dir=shards, state=state,
                           batch_size=step.options.get("map_batch_size"), desc=f"step {step.index} embed")


def _with_pipeline_step(dataset, spec: PipelineSpec, offline_models: bool):
    from ..provenance import with_provenance

    params = {"file": os.path.basename(spec.source), "sha256": hashlib.sha256(spec.text.encode()).hexdigest(),
              "offline_models": offline_models, "text": spec.text}
    if spec.overrides:
        params["overrides"] = list(spec.overrides)
    return with_provenance(dataset, dataset, method="pipeline", params=params)


def _source_dataset(entries: list[PlanEntry]):
    """The load step's output (its cache entry), for a card that compares the subset with its source."""
    from datasets import load_from_disk

    path = entries[0].cached
    return load_from_disk(path) if path else None


def _precheck_outputs(spec: PipelineSpec) -> None:
    from .. import hub

    for step in spec.steps:
        if step.kind == "save":
            hub.check_save_path(step.options["path"], overwrite=bool(step.options.get("overwrite")))
        elif step.kind == "push":
            hub.check_push(step.options["repo_id"], token=step.options.get("token"))


def _write_out(step: StepSpec, dataset, spec: PipelineSpec, source_dataset) -> str:
    import inspect

    from .. import hub

    load = spec.steps[0].options
    source = load.get("path") or f"hf_prune.data.{load['builtin']}"
    fn = hub.save_subset if step.kind == "save" else hub.push_subset
    accepted = inspect.signature(fn).parameters
    filled = {"source": source, "source_revision": load.get("revision"), "source_split": load.get("split"),
              "source_config": load.get("config_name"), "reproduce": spec.text, "source_dataset": source_dataset}
    kwargs = {k: v for k, v in filled.items() if k in accepted and v is not None}
    kwargs.update(step.options)
    if step.kind == "save":
        path = kwargs.pop("path")
        hub.save_subset(dataset, path, **kwargs)
        return f"saved {len(dataset):,} rows to {path}"
    repo_id = kwargs.pop("repo_id")
    hub.push_subset(dataset, repo_id, **kwargs)
    return f"pushed {len(dataset):,} rows to {repo_id}"


def run_pipeline(
    spec: PipelineSpec,
    *,
    cache_dir: str | None = None,
    offline_models: bool = False,
    dry_run: bool = False,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
    executor: dict[str, Any] | None = None,
) -> PipelineResult:
    """Validate, then run a pipeline from its last cached step; returns the final Dataset and step report.

    Args:
        spec: a parsed pipeline (`read_pipeline`, `parse_pipeline`).
        cache_dir: where step outputs are kept (default: the file's ``cache_dir``, else `default_cache_dir`).
        offline_models: replace Hub models by tiny offline ones (`hf_prune.pipeline.offline`).
        dry_run: print the plan (which steps are cached) and stop; nothing is loaded or written.
        log: where progress lines go (default: `tqdm.write`).
        progress: show a step progress bar (steps, rows, elapsed and ETA).
        executor: options of `hf_prune.parallel.ray` (``address``, ``workers``, ``max_retries``, ...):
            the steps run inside that block, so their splittable work runs on the Ray cluster. It is
            connected after validation and the plan, before the first step (a dry run connects to
            nothing). The cache keys do not include it: a step gives the same output on either executor.

    Raises:
        PipelineError: the file is invalid (before anything runs).

    Example:
        >>> result = run_pipeline(read_pipeline("recipes/pipelines/image_classification.yaml"), offline_models=True)
        >>> result.computed
        4
    """
    from tqdm.auto import tqdm

    cache_dir = os.path.expanduser(cache_dir or spec.settings.get("cache_dir") or default_cache_dir())
    validate(spec, cache_dir=cache_dir)
    log = log or tqdm.write
    entries = plan(spec, cache_dir=cache_dir, offline_models=offline_models)
    if dry_run:
        log(format_plan(spec, entries, cache_dir))
        return PipelineResult(None, [{"index": e.step.index, "kind": e.step.kind, "status": "planned",
                                      "cached": e.cached is not None} for e in entries])
    state = _process_state()
    main = state is None or state.is_main_process
    if not main:
        log, progress = (lambda line: None), False
    if main:
        _precheck_outputs(spec)
    if executor is None:
        return _run_steps(spec, entries, cache_dir, offline_models, state, main, log, progress)
    from ..parallel import ray

    with ray(**executor) as connected:
        log(f"executor: Ray at {connected.address or 'a local cluster'}, {connected.workers} worker(s)")
        return _run_steps(spec, entries, cache_dir, offline_models, state, main, log, progress)


def _run_steps(spec, entries, cache_dir, offline_models, state, main, log, progress) -> PipelineResult:
    """The steps of `run_pipeline` from the last cached one, once validated and planned."""
    from tqdm.auto import tqdm

    ctx = Context(spec, offline_models=offline_models, log=log)
    if state is not None:
        log(f"{state.num_processes} processes: embed steps are split into one shard per process")
    start = max((i for i, e in enumerate(entries) if e.cached), default=-1)
    dataset, parent, report = None, None, []
    bar = tqdm(total=len(entries), unit="step", desc="pipeline", disable=not progress)
    try:
        for i, entry in enumerate(entries):
            step, began = entry.step, time.perf_counter()
            bar.set_description(f"step {step.index}/{len(entries)} {step.kind}")
            row = {"index": step.index, "kind": step.kind, "cache": entry.cached}
            if entry.data and i < start:
                row["status"] = "skipped"  # a later step's cached output already includes it
                parent = entry.key
            elif entry.data and i == start:
                from datasets import load_from_disk

                dataset, parent = load_from_disk(entry.cached), entry.key
                row["status"] = "cached"
                log(f"[{step.index}/{len(entries)}] {step.kind}: cached, {len(dataset):,} rows ({entry.cached})")
            elif entry.data:
                rows_in = None if dataset is None else len(dataset)
                log(f"[{step.index}/{len(entries)}] {step.kind} {_describe(step)}"
                    + ("" if rows_in is None else f" on {rows_in:,} rows"))
                if step.kind == "load":
                    dataset = load_source(step.options, ctx.loaded)
                    from ..ops.arrow import fingerprint

                    key = entry.key or _hash({"fingerprint": fingerprint(dataset), "options": step.options,
                                              "version": __version__})
                elif step.kind == "embed" and state is not None:
                    key = _step_key(parent, step, offline_models)
                    shards = os.path.join(cache_dir, f".{key}.shards")  # resumed after a preemption
                    dataset = _embed_distributed(ctx, step, dataset, state, shards)
                else:
                    dataset = RUNNERS[step.kind](ctx, step, dataset)
                    key = _step_key(parent, step, offline_models)
                seconds = time.perf_counter() - began
                dataset = _commit(dataset, cache_dir, key, step, seconds, state)
                if step.kind == "embed" and state is not None and main:
                    shutil.rmtree(shards, ignore_errors=True)  # the entry holds the joined columns now
                parent = entry.key = key
                entry.cached = os.path.join(cache_dir, key)
                row.update(status="computed", cache=entry.cached)
            else:
                if main:
                    final = _with_pipeline_step(dataset, spec, offline_models)
                    log(f"[{step.index}/{len(entries)}] {_write_out(step, final, spec, _source_dataset(entries))}")
                if state is not None:
                    state.wait_for_everyone()
                row["status"] = "ran"
            row.update(rows=None if dataset is None else len(dataset), seconds=round(time.perf_counter() - began, 3))
            if row["status"] == "computed":
                log(f"    -> {row['rows']:,} rows in {row['seconds']:.1f} s")
            report.append(row)
            bar.set_postfix_str(f"{row['rows'] or 0:,} rows")
            bar.update(1)
    finally:
        bar.close()
    return PipelineResult(dataset, report)
