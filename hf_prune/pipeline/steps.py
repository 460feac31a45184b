"""The step kinds of a pipeline: their options, the columns they read and write, and how they run.

=========  ==========================================================================================
load       ``builtin`` (a loader of `hf_prune.data`: ``fashion_mnist``, ``digits``, ...) or ``path`` (a
           saved dataset, a folder of data files, a parquet/csv/jsonl/webdataset-tar file, or a Hub id with
           ``revision``); ``split``; ``streaming`` (then ``rows`` is required: the first rows are
           materialised); ``rows`` (keep the first N, after ``shuffle_seed`` if given).
corrupt    ``corruption``: a Dataset-level function of `hf_prune.corrupt`, with its options.
tokenize   ``format``: ``messages`` (`hf_prune.data.tokenize_messages`) or ``prompt_response``;
           ``tokenizer``: a Hub id or folder (``revision``).
embed      ``embedder``: a class of `hf_prune.embed`, with its options; ``num_proc``, ``map_batch_size``;
           a `LoRAGradientEmbedder`'s ``model`` is a causal LM id loaded with ``lora`` (LoraConfig
           options) or ``adapter`` (a saved PEFT adapter folder).
score      ``scorer``: a function of `hf_prune.score`; LESS's ``validation`` is a mapping of load
           options, embedded like the pool (same tokenize steps, the embedder's `for_validation`).
select     ``selector``: a registered selector or ``combine``, with its options.
save       ``path`` and every option of `hf_prune.hub.save_subset` (``overwrite``, ...).
push       ``repo_id`` and every option of `hf_prune.hub.push_subset` and ``Dataset.push_to_hub``.
           The source, its revision/split/config, the pipeline text (``reproduce``) and the source
           Dataset are passed for you when the function takes them (`FILLED_BY_PIPELINE`).
=========  ==========================================================================================
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .components import Component, components
from .spec import PipelineSpec, StepSpec

__all__ = ["STEP_KINDS", "StepKind", "Context", "step_options", "step_columns", "file_builder", "FILE_BUILDERS", "source_columns",
           "source_signature", "load_source", "build_embedder", "RUNNERS", "FILLED_BY_PIPELINE"]


@dataclass(frozen=True)
class StepKind:
    """A step kind: the key naming its component (``None``: no component), its own options and help.

    Attributes:
        name: the kind (``load``, ``embed``, ...).
        component_kind: the `hf_prune.pipeline.components` table its component comes from.
        component_key: the option naming the component (``embedder``, ``scorer``, ...).
        extras: the step's own options (not the component's) and their help.
        data: whether it returns a new Dataset (cached); ``save``/``push`` only write it out.

    Example:
        >>> STEP_KINDS["embed"].component_key
        'embedder'
    """

    name: str
    component_kind: str | None
    component_key: str | None
    extras: dict[str, str] = field(default_factory=dict)
    data: bool = True


_LOAD_EXTRAS = {
    "builtin": "a loader of hf_prune.data (e.g. fashion_mnist, digits, fashion_mnist_captions, instruction_pool)",
    "path": "a saved dataset folder, a folder of data files, a .parquet/.csv/.jsonl/.tar (webdataset) file, or a "
            "Hub dataset id",
    "revision": "the Hub revision (branch, tag or commit) of a Hub `path`; pins the source for caching",
    "config_name": "the Hub dataset's configuration name",
    "split": "the split to keep when the source has several",
    "streaming": "stream a Hub/file source and materialise its first `rows` rows",
    "rows": "keep at most this many rows (the first ones, after shuffle_seed if given)",
    "shuffle_seed": "shuffle with this seed before keeping `rows`",
}
STEP_KINDS: dict[str, StepKind] = {
    "load": StepKind("load", "loader", "builtin", _LOAD_EXTRAS),
    "corrupt": StepKind("corrupt", "corruption", "corruption", {"corruption": "a corruption of hf_prune.corrupt"}),
    "tokenize": StepKind("tokenize", "tokenizer", "format", {
        "format": "messages (a chat `messages` column) or prompt_response",
        "revision": "the tokenizer's Hub revision",
    }),
    "embed": StepKind("embed", "embedder", "embedder", {
        "embedder": "a class of hf_prune.embed",
        "num_proc": "worker processes for Dataset.map (one GPU each when there are GPUs)",
        "map_batch_size": "rows per Dataset.map batch (default: the embedder's own map batch, see its docstring)",
        "lora": "LoRAGradientEmbedder: LoraConfig options for a new adapter on `model`",
        "adapter": "LoRAGradientEmbedder: a saved PEFT adapter folder to load on `model`",
        "revision": "the model's Hub revision",
    }),
    "score": StepKind("score", "scorer", "scorer", {
        "scorer": "a function of hf_prune.score",
        "validation": "less: load options of the validation examples (embedded like the pool)",
    }),
    "select": StepKind("select", "selector", "selector", {"selector": "a registered selector, or combine"}),
    # save/push take every option of hf_prune.hub.save_subset / push_subset (`_writer_options`).
    "save": StepKind("save", None, None, {}, data=False),
    "push": StepKind("push", None, None, {}, data=False),
}


# What the pipeline passes to save/push itself unless the step sets it (see `hf_prune.pipeline.runner`).
FILLED_BY_PIPELINE = {
    "source": "the load step's `path` (or `hf_prune.data.<builtin>`)",
    "source_revision": "the load step's `revision`",
    "source_split": "the load step's `split`",
    "source_config": "the load step's `config_name`",
    "reproduce": "the pipeline file's text",
    "source_dataset": "the load step's output",
}


def _writer_options(kind: str) -> dict[str, str]:
    """The options of a save/push step: `hf_prune.hub.save_subset`'s (and ``Dataset.push_to_hub``'s for a push)."""
    from datasets import Dataset

    from .. import hub
    from .components import _component

    fns = [hub.save_subset] if kind == "save" else [hub.push_subset, Dataset.push_to_hub]
    found: dict[str, str] = {"path": "the folder to save the subset (and its dataset card) to"} if kind == "save" else {}
    for fn in fns:
        info = _component(kind, fn.__name__, fn, skip=("self", "dataset", "path"))
        for name, option in info.options.items():
            default = f" (default: {FILLED_BY_PIPELINE[name]})" if name in FILLED_BY_PIPELINE else ""
            found.setdefault(name, f"{option.help}{default}".strip() or f"{fn.__qualname__} option")
    return found


def step_options(step: StepSpec) -> tuple[Component | None, dict[str, str], list[str]]:
    """``(component, {valid option: help}, [error])`` of a written step; the component's name is checked.

    Example:
        >>> info, valid, errors = step_options(StepSpec("score", {"scorer": "ssp"}, 2))
        >>> info.name, "n_clusters" in valid, errors
        ('ssp', True, [])
    """
    kind = STEP_KINDS[step.kind]
    if step.kind in ("save", "push"):
        return None, _writer_options(step.kind), []
    extras = dict(kind.extras)
    if kind.component_kind is None:
        return None, extras, []
    table = components(kind.component_kind)
    name = step.options.get(kind.component_key)
    if name is None:
        if step.kind == "load":
            return None, extras, []
        return None, extras, [f"`{kind.component_key}` is required; choose one of: {', '.join(sorted(table))}"]
    if name not in table:
        return None, extras, [f"unknown {kind.component_key} {name!r}; choose one of: {', '.join(sorted(table))}"]
    info = table[name]
    options = {**{k: o.help for k, o in info.options.items()}, **extras}
    if step.kind == "embed" and name != "LoRAGradientEmbedder":
        options.pop("lora"), options.pop("adapter")
        if "revision" not in info.options:  # only a model loaded by the pipeline has one
            options.pop("revision")
    if step.kind == "score" and name != "less":
        options.pop("validation")
    if step.kind == "score":
        options.pop("validation_gradients", None)  # built from `validation`
    return info, options, []


def _default(info: Component | None, step: StepSpec, name: str) -> Any:
    if name in step.options:
        return step.options[name]
    if info is not None and name in info.options and not info.options[name].required:
        return info.options[name].default
    return None


def _columns_of(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def step_columns(step: StepSpec, info: Component | None) -> tuple[list[tuple[str, str]], list[str]]:
    """``([(option, column read)], [columns written])`` of a step, defaults included.

    Example:
        >>> step = StepSpec("score", {"scorer": "feature_norm", "output_column": "norm"}, 2)
        >>> step_columns(step, components("scorer")["feature_norm"])
        ([('embedding_column', 'emb')], ['norm'])
    """
    if info is None or step.kind == "load":
        return [], []
    reads = [(o.name, c) for o in info.inputs() for c in _columns_of(_default(info, step, o.name))]
    writes = [c for o in info.outputs() for c in _columns_of(_default(info, step, o.name))]
    if step.kind == "select":
        from ..select import registry

        if step.options.get("selector") in registry.names():
            needs = registry.get(step.options["selector"]).needs
            reads = [r for r in reads if r[0] in needs or r[0] == "label_column" or step.options.get(r[0])]
        writes.append("row_id")
    if step.kind == "score" and info.name == "less":  # LESS's task column is one of the validation rows
        reads = [r for r in reads if r[0] != "task_column"]
    return reads, writes


# ------------------------------------------------------------------------------------------ sources
# Builder of `datasets.load_dataset` for a single data file, by extension (also `hf-prune select`'s).
FILE_BUILDERS = {
    ".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".arrow": "arrow",
    ".txt": "text", ".tar": "webdataset",
}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".lz4")


def file_builder(path: str) -> tuple[str | None, str]:
    """``(datasets builder, extension)`` of a data file (``None`` when it is not one), compression aside.

    Example:
        >>> file_builder("rows.jsonl.gz")
        ('json', '.jsonl')
    """
    name = path.lower()
    for ext in _COMPRESSION:
        if name.endswith(ext):
            name = name[: -len(ext)]
    return FILE_BUILDERS.get(os.path.splitext(name)[1]), os.path.splitext(name)[1]


def source_columns(options: dict[str, Any]) -> set[str] | None:
    """The columns of a load step's source when they can be read without loading it, else ``None``.

    Example:
        >>> source_columns({"path": "data.parquet"})
        {'image', 'label'}
    """
    path = options.get("path")
    if not isinstance(path, str) or options.get("builtin"):
        return None
    path = os.path.expanduser(path)
    try:
        if os.path.isdir(path):
            info = os.path.join(path, "dataset_info.json")
            if os.path.isfile(info):
                with open(info, encoding="utf-8") as handle:
                    features = json.load(handle).get("features")
                return set(features) if isinstance(features, dict) else None
            return None
        if not os.path.isfile(path):
            return None
        builder, ext = file_builder(path)
        opener = gzip.open if path.lower().endswith(".gz") else open
        if builder == "parquet":
            import pyarrow.parquet as pq

            return set(pq.read_schema(path).names)
        if builder == "csv":
            with opener(path, "rt", encoding="utf-8", newline="") as handle:
                return set(next(csv.reader(handle, delimiter="\t" if ext == ".tsv" else ","), []))
        if builder == "json" and ext == ".jsonl":
            with opener(path, "rt", encoding="utf-8") as handle:
                first = json.loads(handle.readline() or "null")
            return set(first) if isinstance(first, dict) else None
    except (OSError, ValueError, StopIteration):
        return None  # unreadable here: the load itself reports it
    return None


def _file_state(path: str) -> list:
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


def source_signature(options: dict[str, Any]) -> Any:
    """What identifies a load step's data without reading it, or ``None`` when nothing does.

    A local file or folder: the size and modification time of each data file (not the ``cache-*``
    files `datasets` writes beside a saved dataset); a Hub id: the id and ``revision``, ``None``
    without one (the current version is only known by loading it); a builtin: its options.

    Example:
        >>> source_signature({"path": "user/data", "revision": "v1"})
        {'hub': 'user/data', 'revision': 'v1', 'config_name': None}
    """
    if options.get("builtin"):
        return {"builtin": options["builtin"]}
    path = options.get("path")
    if not isinstance(path, str):
        return None
    local = os.path.expanduser(path)
    if os.path.isfile(local):
        return {"file": os.path.realpath(local), "state": _file_state(local)}
    if os.path.isdir(local):
        files = []
        for root, dirs, names in os.walk(local):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                if name.startswith(("cache-", "tmp", ".")):
                    continue
                full = os.path.join(root, name)
                files.append([os.path.relpath(full, local), *_file_state(full)])
        return {"folder": os.path.realpath(local), "files": files}
    if options.get("revision") is None:
        return None
    return {"hub": path, "revision": options["revision"], "config_name": options.get("config_name")}


def _pick_split(data, split: str | None, where: str):
    if hasattr(data, "keys"):  # a DatasetDict
        if split is None:
            raise ValueError(f"{where} has splits {list(data.keys())}; set `split`")
        if split not in data:
            raise KeyError(f"split {split!r} not found in {where}; it has {list(data.keys())}")
        return data[split]
    return data


def load_source(options: dict[str, Any], memo: dict[str, Any] | None = None):
    """The Dataset a load step describes (see the module docstring for its options).

    ``memo`` keeps what builtin loaders return, so a pipeline that reads two splits of one builtin
    (LESS's pool and validation rows) builds it once.

    Example:
        >>> ds = load_source({"builtin": "digits", "split": "train", "rows": 100})
        >>> len(ds)
        100
    """
    from datasets import load_dataset, load_from_disk

    from ..data.hub import is_saved_dataset

    options = dict(options)
    split, rows, streaming = options.pop("split", None), options.pop("rows", None), options.pop("streaming", False)
    shuffle_seed = options.pop("shuffle_seed", None)
    if streaming and rows is None:
        raise ValueError("`streaming: true` needs `rows`: the number of rows to materialise")
    if options.get("builtin"):
        name = options.pop("builtin")
        key = json.dumps({"builtin": name, **options}, sort_keys=True, default=str)
        if memo is not None and key in memo:
            data = memo[key]
        else:
            data = components("loader")[name].fn(**options)
            if memo is not None:
                memo[key] = data
        where = f"builtin {name!r}"
    else:
        path_or_id, revision, config_name = options["path"], options.get("revision"), options.get("config_name")
        path = os.path.expanduser(path_or_id)
        where = repr(path_or_id)
        if os.path.exists(path) and revision is not None:
            raise ValueError(f"`revision` applies to a Hub dataset id, and {path_or_id!r} is a local path")
        if os.path.isfile(path):
            builder, ext = file_builder(path)
            if builder is None:
                raise ValueError(f"cannot read {path_or_id!r}: {ext or 'no extension'} is not a data file type; "
                                 f"expected one of {', '.join(sorted(FILE_BUILDERS))}, or a folder")
            if split not in (None, "train"):
                raise ValueError(f"{path_or_id!r} is a single file: it has one split, 'train'; drop `split: {split}`")
            split = "train"
            extra = {"delimiter": "\t"} if ext == ".tsv" else {}
            data = load_dataset(builder, data_files={"train": path}, streaming=streaming, **extra)
        elif is_saved_dataset(path):
            if streaming:
                raise ValueError(f"{path_or_id!r} is a saved dataset (memory-mapped): drop `streaming`")
            data = load_from_disk(path)
        elif os.path.isdir(path):
            data = load_dataset(path, streaming=streaming)
        else:
            try:
                data = load_dataset(path_or_id, config_name, revision=revision, streaming=streaming)
            except (ConnectionError, FileNotFoundError) as err:
                raise FileNotFoundError(f"no such file or folder: {path_or_id!r}, and loading it as a Hub dataset "
                                        f"id failed: {err}") from None
    data = _pick_split(data, split, where)
    if streaming:
        from datasets import Dataset

        taken = list(data.take(rows))
        data = Dataset.from_list(taken, features=data.features) if taken else Dataset.from_dict({})
    if shuffle_seed is not None:
        data = data.shuffle(seed=shuffle_seed)
    if rows is not None and rows < len(data):
        data = data.select(range(rows))
    if shuffle_seed is not None or rows is not None:
        data = data.flatten_indices()
    return data


# ------------------------------------------------------------------------------------------ running
@dataclass
class Context:
    """What steps share while a pipeline runs: settings, built embedders and the load options.

    Attributes:
        spec: the pipeline being run.
        offline_models: swap Hub models for tiny offline ones (`hf_prune.pipeline.offline`).
        log: where steps report what they did (a line at a time).

    Example:
        >>> embedder = build_embedder(Context(spec, offline_models=True), spec.steps[1])
    """

    spec: PipelineSpec
    offline_models: bool = False
    log: Callable[[str], None] = print
    built: dict[int, Any] = field(default_factory=dict)  # step index -> embedder / tokenizer
    loaded: dict[str, Any] = field(default_factory=dict)  # what builtin loaders returned, by their options

    def step(self, index: int) -> StepSpec:
        return self.spec.steps[index - 1]


def _component_kwargs(step: StepSpec, info: Component) -> dict[str, Any]:
    return {k: v for k, v in step.options.items() if k in info.options}


def _auto(kind: str, name: str, revision: str | None):
    import transformers

    return getattr(transformers, kind).from_pretrained(name, revision=revision)


def _build_tokenizer(ctx: Context, step: StepSpec):
    """The tokenizer of a tokenize step (the byte-level stand-in under ``offline_models``)."""
    if step.index not in ctx.built:
        if ctx.offline_models:
            from .offline import byte_tokenizer

            ctx.built[step.index] = byte_tokenizer()
        else:
            ctx.built[step.index] = _auto("AutoTokenizer", step.options["tokenizer"], step.options.get("revision"))
    return ctx.built[step.index]


def build_embedder(ctx: Context, step: StepSpec):
    """The embedder an embed step describes, built once per run (models are loaded here).

    Example:
        >>> emb = build_embedder(Context(spec), spec.steps[1])
    """
    if step.index in ctx.built:
        return ctx.built[step.index]
    from .. import embed

    name = step.options["embedder"]
    info = components("embedder")[name]
    kwargs = _component_kwargs(step, info)
    revision = step.options.get("revision")
    if isinstance(kwargs.get("config"), dict):
        from transformers import AutoConfig

        config = dict(kwargs["config"])
        kwargs["config"] = AutoConfig.for_model(config.pop("model_type"), **config)
    if not ctx.offline_models:
        for key, auto in (("processor", "AutoProcessor" if name == "CLIPEmbedder" else "AutoImageProcessor"),
                          ("image_processor", "AutoImageProcessor"), ("tokenizer", "AutoTokenizer")):
            if isinstance(kwargs.get(key), str):
                kwargs[key] = _auto(auto, kwargs[key], revision)
    if name == "LoRAGradientEmbedder":
        kwargs["model"] = _causal_lm(ctx, step)
    if ctx.offline_models:
        from .offline import offline_embedder

        name, kwargs, note = offline_embedder(name, kwargs)
        if note:
            ctx.log(f"  offline model: {note}")
    ctx.built[step.index] = getattr(embed, name)(**kwargs)
    return ctx.built[step.index]


def _causal_lm(ctx: Context, step: StepSpec):
    model = step.options.get("model")
    lora, adapter = step.options.get("lora"), step.options.get("adapter")
    if ctx.offline_models:
        from .offline import tiny_causal_lm

        return tiny_causal_lm(lora)
    if not isinstance(model, str):
        raise ValueError(f"LoRAGradientEmbedder: `model` must be a causal LM id or folder, got {model!r}")
    if (lora is None) == (adapter is None):
        raise ValueError("LoRAGradientEmbedder: set exactly one of `lora` (options of a new LoraConfig) and "
                         "`adapter` (a saved PEFT adapter folder)")
    import peft
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model, revision=step.options.get("revision"))
    if adapter is not None:
        return peft.PeftModel.from_pretrained(base, adapter, is_trainable=True)
    return peft.get_peft_model(base, peft.LoraConfig(**lora))


def _run_tokenize(ctx: Context, step: StepSpec, dataset):
    info = components("tokenizer")[step.options["format"]]
    kwargs = {k: v for k, v in _component_kwargs(step, info).items() if k != "tokenizer"}
    if ctx.offline_models and info.name == "messages":
        kwargs["template"] = "plain"  # the byte-level stand-in has no chat template
    return info.fn(dataset, _build_tokenizer(ctx, step), **kwargs)


def _run_embed(ctx: Context, step: StepSpec, dataset):
    embedder = build_embedder(ctx, step)
    return embedder.map(dataset, num_proc=step.options.get("num_proc"), batch_size=step.options.get("map_batch_size"),
                        desc=f"step {step.index} embed {step.options['embedder']}")


def _validation_gradients(ctx: Context, step: StepSpec):
    """LESS's validation features: the `validation` rows through the pool's tokenize and embed steps."""
    column = step.options.get("gradient_column", components("scorer")["less"].options["gradient_column"].default)
    columns = _columns_of(column)
    producers = [s for s in ctx.spec.steps[: step.index - 1] if s.kind == "embed"
                 and any(c in columns for c in step_columns(s, components("embedder")[s.options["embedder"]])[1])]
    if not producers:
        raise ValueError(f"less: no earlier embed step writes {column!r}, so the validation rows cannot be embedded")
    data = load_source(step.options["validation"], ctx.loaded)
    for earlier in ctx.spec.steps[: step.index - 1]:
        if earlier.kind == "tokenize":
            data = _run_tokenize(ctx, earlier, data)
    for producer in producers:
        embedder = build_embedder(ctx, producer)
        validation = embedder.for_validation() if hasattr(embedder, "for_validation") else embedder
        data = validation.map(data, desc=f"step {step.index} validation gradients")
    return data


def _run_score(ctx: Context, step: StepSpec, dataset):
    info = components("scorer")[step.options["scorer"]]
    kwargs = _component_kwargs(step, info)
    if info.name == "less":
        if "validation" not in step.options:
            raise ValueError("less needs `validation`: the load options of the validation examples")
        kwargs["validation_gradients"] = _validation_gradients(ctx, step)
    return info.fn(dataset, **kwargs)


def _run_component(ctx: Context, step: StepSpec, dataset):
    kind = STEP_KINDS[step.kind]
    info = components(kind.component_kind)[step.options[kind.component_key]]
    return info.fn(dataset, **_component_kwargs(step, info))


RUNNERS: dict[str, Callable[[Context, StepSpec, Any], Any]] = {
    "corrupt": _run_component, "tokenize": _run_tokenize, "embed": _run_embed, "score": _run_score,
    "select": _run_component,
}
