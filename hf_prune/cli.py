"""The ``hf-prune`` command.

    hf-prune run PIPELINE.yaml [--dry-run] [--offline-models]   # load → ... → save/push, cached per step
    hf-prune embed EMBEDDER INPUT --output OUT [--model ...]    # one embed step (options of the class)
    hf-prune score SCORER INPUT --output OUT [...]              # one score step (options of the function)
    hf-prune select INPUT --selector "gm_matching:fraction=0.1,embedding_column=emb" --output OUT [--push REPO]
    hf-prune info PATH          # the provenance of a saved subset
    hf-prune list               # available selectors

``run``, ``embed``, ``score`` and ``select`` take ``--executor {local,ray}``: ``ray`` runs their
splittable work on a Ray cluster (``--address auto`` joins the one ``ray start`` runs; no address
starts a local one), inside ``hp.parallel.ray(address=, workers=, max_retries=)``; ``local``, the
default, never imports Ray. The executor is connected after the checks that need no data and
before any work, so an unreachable cluster fails first.

INPUT is a saved dataset folder, a folder of data files, a single ``.parquet``/``.csv``/``.jsonl``
(``.json``, ``.tsv``, ``.arrow``, ``.txt``, optionally compressed; ``.tar`` webdataset shards) file, or a Hub dataset id. Every
check that needs no data (selector options, output folder, Hub login) runs before anything is loaded.
Only the standard library is imported until a command runs, so ``--help`` is instant; the flags of
``embed``/``score`` are generated from the embedder classes and score functions
(`hf_prune.pipeline.components`), so they are built only when one of those commands is parsed. The demo is a
recipe, ``hf-prune-demo`` (`recipes.demo`); ``hf-prune demo`` only says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys

from .pipeline.steps import FILE_BUILDERS as _FILE_BUILDERS
from .pipeline.steps import file_builder as _file_builder

__all__ = ["main", "make_parser"]

_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


def _is_path_like(text: str) -> bool:
    """Whether ``text`` can only be a local path (it cannot be a Hub id like ``name`` or ``namespace/name``)."""
    return (
        text.startswith((".", "~", os.sep)) or "\\" in text or not _HUB_ID.fullmatch(text)
        or _file_builder(text)[0] is not None
    )


def _load(path_or_id: str, split: str | None, revision: str | None = None):
    from datasets import load_dataset, load_from_disk

    from .data.hub import is_saved_dataset

    path = os.path.expanduser(path_or_id)
    if os.path.exists(path) and revision is not None:
        raise ValueError(f"--revision applies to a Hub dataset id, and {path_or_id!r} is a local path")
    if os.path.isfile(path):
        builder, ext = _file_builder(path)
        if builder is None:
            raise ValueError(
                f"cannot read {path_or_id!r}: {ext or 'no extension'} is not a data file type; expected one of "
                f"{', '.join(sorted(_FILE_BUILDERS))}, or a folder"
            )
        if split not in (None, "train"):
            raise ValueError(f"{path_or_id!r} is a single file: it has one split, 'train'; drop --split {split}")
        extra = {"delimiter": "\t"} if ext == ".tsv" else {}
        return load_dataset(builder, data_files={"train": path}, split="train", **extra)
    if is_saved_dataset(path):
        # A single saved Dataset is fine here (unlike `load_image_dataset`, which needs train/test splits).
        data = load_from_disk(path)
    elif os.path.isdir(path):
        data = load_dataset(path, split=split)
    elif _is_path_like(path_or_id):
        raise FileNotFoundError(f"no such file or folder: {path_or_id!r}")
    else:
        try:
            data = load_dataset(path_or_id, split=split, revision=revision)
        except (ConnectionError, FileNotFoundError) as err:  # offline, unknown repo, or a mistyped path
            raise FileNotFoundError(
                f"no such file or folder: {path_or_id!r}, and loading it as a Hub dataset id failed: {err}"
            ) from None
    if hasattr(data, "keys"):  # a DatasetDict
        if split is None:
            raise ValueError(f"{path_or_id} has splits {list(data.keys())}; pass --split")
        if split not in data:
            raise KeyError(f"split {split!r} not found in {path_or_id}; it has {list(data.keys())}")
        data = data[split]
    return data


def _executor_options(args) -> dict | None:
    """The ``hp.parallel.ray`` options of ``--executor ray`` (``None`` for local); `ValueError` naming a bad flag."""
    given = [flag for flag, value in (("--address", args.address), ("--workers", args.workers),
                                      ("--max-retries", args.max_retries)) if value is not None]
    if args.executor == "local":
        if given:
            raise ValueError(f"{', '.join(given)} apply to `--executor ray` only (the executor is {args.executor!r})")
        return None
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"`--workers` must be at least 1, got {args.workers}")
    if args.max_retries is not None and args.max_retries < 0:
        raise ValueError(f"`--max-retries` must be at least 0, got {args.max_retries}")
    options = {"address": args.address, "workers": args.workers, "progress": not getattr(args, "no_progress", False)}
    if args.max_retries is not None:
        options["max_retries"] = args.max_retries
    return options


def _executor(options: dict | None):
    """``hp.parallel.ray(**options)``, or a block that changes nothing for the local executor."""
    if options is None:
        return contextlib.nullcontext()
    from .parallel import ray

    return ray(**options)


def _add_executor_flags(cmd) -> None:
    cmd.add_argument("--executor", choices=("local", "ray"), default="local",
                     help="where the splittable work runs: this process (default) or a Ray cluster")
    cmd.add_argument("--address", default=None,
                     help="with --executor ray: the cluster (auto, host:6379, ray://host:10001); default: a local one")
    cmd.add_argument("--workers", type=int, default=None,
                     help="with --executor ray: most tasks at once (default: the cluster's CPUs)")
    cmd.add_argument("--max-retries", type=int, default=None,
                     help="with --executor ray: times Ray re-runs a task whose worker died (default: 3)")


def _cmd_select(args) -> int:
    from . import hub
    from .select.spec import check_spec

    # Everything that can fail without the data fails here, before a long load and selection.
    fn, kwargs = check_spec(args.selector)
    options = _executor_options(args)
    if args.output:
        hub.check_save_path(args.output, overwrite=args.overwrite)
    if args.push:
        hub.check_push(args.push)
    with _executor(options):  # connects (or fails) before the data is loaded
        dataset = _load(args.input, args.split, args.revision)
        if args.output:  # now that the data is known: it must not be read from the folder it would replace
            hub.check_save_path(args.output, overwrite=args.overwrite, dataset=dataset)
        subset = fn(dataset, **kwargs)
    print(f"kept {len(subset):,} of {len(dataset):,} rows")
    if args.output:
        hub.save_subset(subset, args.output, source=args.input, source_revision=args.revision, overwrite=args.overwrite)
        print(f"saved to {args.output}")
    if args.push:
        hub.push_subset(subset, args.push, source=args.input, source_revision=args.revision, private=args.private)
        print(f"pushed to {args.push}")
    return 0


def _cmd_info(args) -> int:
    from .provenance import provenance

    steps = provenance(_load(args.path, args.split), warn=False)
    print(json.dumps(steps, indent=2, sort_keys=True))
    # Notes go to stderr so stdout stays JSON for scripts.
    if not steps:
        print(f"{args.path}: no hf_prune step is recorded on this dataset (it has no provenance)", file=sys.stderr)
    stale = [i + 1 for i, step in enumerate(steps) if step["stale"]]
    if stale:
        print(
            f"note: steps {stale} no longer describe the rows after them (the data was filtered, reordered or "
            "re-selected by an operation hf_prune does not record)",
            file=sys.stderr,
        )
    return 0


def _cmd_list(args) -> int:
    from .select import combine, registry

    # One row per registered selector (name, family, the input columns a call names, summary), then
    # the spec-able helper `combine`; the table is the registry's, as the README's is.
    rows = [(info.name, info.family, ",".join(info.needs) or "-", info.summary) for info in registry.selectors()]
    summary = (combine.__doc__ or "").strip().splitlines()[0]
    rows.append(("combine", "helper", "-", summary))
    header = ("name", "family", "needs", "summary")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print("  ".join(f"{cell:<{width}}" for cell, width in zip(row, widths)) + f"  {row[3]}".rstrip())
    return 0


def _cmd_demo(args) -> int:
    # The demo lives with the recipes now (the library never imports them): say where, change nothing.
    raise ValueError("the demo moved out of hf_prune: run `hf-prune-demo` (or `python -m recipes.demo`, "
                     "`bash scripts/dev.sh demo`) with the same options")


def _cmd_run(args) -> int:
    from .pipeline import apply_overrides, read_pipeline, run_pipeline

    options = _executor_options(args)
    spec = apply_overrides(read_pipeline(args.pipeline), args.set or [])
    result = run_pipeline(spec, cache_dir=args.cache_dir, offline_models=args.offline_models, dry_run=args.dry_run,
                          progress=not args.no_progress, executor=options)
    if not args.dry_run:
        computed = [str(s["index"]) for s in result.steps if s["status"] == "computed"]
        print(f"done: {len(result.steps)} steps, computed {', '.join(computed) or 'none'} (the rest cached or "
              f"written out); final dataset {len(result.dataset):,} rows")
    return 0


def _cmd_step(args) -> int:
    """``embed``/``score`` as a three-step pipeline (load, the step, save) run without a kept cache."""
    import tempfile

    from .pipeline import PipelineSpec, StepSpec, run_pipeline

    options = _executor_options(args)
    load = {"path": args.input, "split": args.split, "revision": args.input_revision, "rows": args.rows}
    step = {args.component_key: args.component_name, **args.step_extras}
    for name in args.component_options:
        value = getattr(args, name)
        if value is not None:
            step[name] = value
    save = {"path": args.output, "overwrite": args.overwrite_output}
    steps = [StepSpec("load", {k: v for k, v in load.items() if v is not None}, 1),
             StepSpec(args.command, step, 2), StepSpec("save", save, 3)]
    text = json.dumps({"steps": [{s.kind: s.options} for s in steps]}, indent=2)
    spec = PipelineSpec(steps, text, source=f"hf-prune {args.command}")
    with tempfile.TemporaryDirectory(prefix="hf-prune-") as scratch:
        run_pipeline(spec, cache_dir=args.cache_dir or scratch, offline_models=args.offline_models,
                     progress=not args.no_progress, executor=options)
    return 0


def _value(text: str):
    from .select.spec import parse_value

    return parse_value(text)


def _add_component_commands(parent, command: str, kind: str, key: str) -> None:
    """One sub-command per component, with one ``--flag`` per option of its signature."""
    from .pipeline.components import components
    from .pipeline.spec import StepSpec
    from .pipeline.steps import STEP_KINDS, step_options

    sub = parent.add_subparsers(dest="component_name", required=True, metavar=key.upper())
    for name, info in sorted(components(kind).items()):
        _, valid, _ = step_options(StepSpec(command, {key: name}, 1))
        cmd = sub.add_parser(name, help=info.summary, description=info.summary)
        cmd.add_argument("input", help="a saved dataset folder, a folder of data files, a .parquet/.csv/.jsonl file, "
                                       "or a Hub dataset id")
        cmd.add_argument("--output", required=True, help="save the result (with a dataset card) here")
        cmd.add_argument("--overwrite", action="store_true", dest="overwrite_output",
                         help="replace an existing saved dataset at --output")
        cmd.add_argument("--split", default=None, help="the split of INPUT to use when it has several")
        cmd.add_argument("--input-revision", default=None, help="the Hub revision of a Hub INPUT")
        cmd.add_argument("--rows", type=int, default=None, help="use only the first ROWS rows")
        cmd.add_argument("--cache-dir", default=None, help="keep the step's output cached here (default: none kept)")
        cmd.add_argument("--offline-models", action="store_true", help="replace Hub models by tiny offline ones")
        cmd.add_argument("--no-progress", action="store_true", help="no progress bar")
        _add_executor_flags(cmd)
        options, extras = [], {}
        for option in valid:
            if option == key:
                continue
            spec = info.options.get(option)
            if spec is None:
                text = STEP_KINDS[command].extras.get(option, "")
            else:
                default = "" if spec.required else f" (default: {spec.default!r})"
                text = f"{spec.help}{default}" if spec.help else default.strip(" ()")
            # `--overwrite` is the output folder's, as in `select`; the function's own one replaces a column.
            flag = "--overwrite-column" if option == "overwrite" else "--" + option.replace("_", "-")
            cmd.add_argument(flag, dest=option, type=_value, default=None, required=spec is not None and spec.required,
                             help=text.replace("%", "%%") or option)
            options.append(option)
        cmd.set_defaults(func=_cmd_step, component_key=key, component_options=options, step_extras=extras)


def make_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``hf-prune`` parser; the ``embed``/``score`` flags are generated only when ``argv`` runs one of them.

    Example:
        >>> make_parser(["score", "ssp", "data", "--output", "out"]).parse_args(
        ...     ["score", "ssp", "data", "--output", "out", "--n-clusters", "10"]).n_clusters
        10
    """
    parser = argparse.ArgumentParser(prog="hf-prune", description="Data pruning for Hugging Face datasets.")
    sub = parser.add_subparsers(dest="command", required=True)

    # Any old demo options are accepted (no prefix makes them flags) so the message below is what users see.
    demo = sub.add_parser("demo", help="moved: run `hf-prune-demo` (recipes.demo) with the same options",
                          prefix_chars="+", add_help=False)
    demo.add_argument("options", nargs="*")
    demo.set_defaults(func=_cmd_demo)

    select = sub.add_parser("select", help="run a selector on a saved dataset, a data file or folder, or a Hub id")
    select.add_argument(
        "input", help="a saved dataset folder, a folder of data files, a .parquet/.csv/.jsonl file, or a Hub dataset id"
    )
    select.add_argument("--split", default=None, help="the split to use when INPUT has several")
    select.add_argument("--revision", default=None, help="the Hub revision (branch, tag or commit) of a Hub INPUT")
    select.add_argument("--selector", required=True, help='e.g. "gm_matching:fraction=0.1,embedding_column=emb"')
    select.add_argument("--output", default=None, help="save the subset (with a dataset card) here; must be new or empty")
    select.add_argument("--overwrite", action="store_true", help="replace an existing saved dataset at --output")
    select.add_argument("--push", default=None, help="push the subset to this Hub repo id")
    select.add_argument("--private", action="store_true")
    _add_executor_flags(select)
    select.set_defaults(func=_cmd_select)

    info = sub.add_parser("info", help="print the provenance of a saved subset (JSON)")
    info.add_argument("path")
    info.add_argument("--split", default=None, help="the split to use when PATH has several")
    info.set_defaults(func=_cmd_info)

    lister = sub.add_parser("list", help="list the selectors, one line each")
    lister.set_defaults(func=_cmd_list)

    run = sub.add_parser("run", help="run a pipeline file (load, corrupt, tokenize, embed, score, select, save, push)")
    run.add_argument("pipeline", help="a .yaml/.yml/.json pipeline file")
    run.add_argument("--dry-run", action="store_true", help="print the plan and which steps are cached; run nothing")
    run.add_argument("--cache-dir", default=None, help="where step outputs are cached (default: the file's "
                                                       "cache_dir, else $HF_PRUNE_PIPELINE_CACHE or ~/.cache/hf_prune/pipelines)")
    run.add_argument("--offline-models", action="store_true",
                     help="replace every Hub model by a tiny random one built from a config (a test run offline)")
    run.add_argument("--set", action="append", metavar="STEP.OPTION=VALUE",
                     help="change one step option, e.g. --set load.rows=200 --set 4.fraction=0.05 (repeatable; "
                          "STEP is a number or a kind that occurs once; an empty VALUE removes the option; recorded in the "
                          "subset's provenance)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (the step lines still print)")
    _add_executor_flags(run)
    run.set_defaults(func=_cmd_run)

    # The flags of embed/score come from the Python API, which loads torch: build them only when needed.
    words = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("-")]
    command = words[0] if words else None
    for name, kind, key, what in (("embed", "embedder", "embedder", "an embedder class of hf_prune.embed"),
                                  ("score", "scorer", "scorer", "a score function of hf_prune.score")):
        cmd = sub.add_parser(name, help=f"one {name} step: {what} on a dataset, saved with its provenance")
        if command == name:
            _add_component_commands(cmd, name, kind, key)
        else:
            cmd.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``hf-prune``; bad input and unusable paths or Hub access end with ``hf-prune: error: ...`` and 2.

    Example:
        >>> main(["select", "data.parquet", "--selector", "random:fraction=0.1,seed=0", "--output", "sub"])
        0
    """
    args = make_parser(argv).parse_args(argv)
    from_hub = ()
    if args.command in ("select", "info", "run", "embed", "score"):
        from .hub import HubAccessError

        from_hub = (HubAccessError,)
    if getattr(args, "executor", "local") == "ray":
        # Ray missing (an ImportError with the install hint) and a job that failed on the cluster are
        # errors of this run, not crashes; the executor module imports Ray only when it connects.
        from .parallel.ray_executor import TaskFailed

        from_hub = (*from_hub, ImportError, TaskFailed)
    try:
        return args.func(args)
    except BrokenPipeError:
        # The reader went away (`hf-prune list | head`): stop quietly, as Unix tools do; the
        # redirect keeps Python from failing again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (KeyError, ValueError, OSError, *from_hub) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err  # no repr quotes
        print(f"hf-prune: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
