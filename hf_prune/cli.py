"""The ``hf-prune`` command.

    hf-prune demo [--dataset digits|fashion_mnist] [--output-dir demo_output]
    hf-prune select INPUT --selector "gm_matching:fraction=0.1,embedding_column=emb" --output OUT [--push REPO]
    hf-prune info PATH          # the provenance of a saved subset
    hf-prune list               # available selectors
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main", "make_parser"]


def _load(path_or_id: str, split: str | None):
    from datasets import load_dataset, load_from_disk

    from .data.hub import is_saved_dataset

    # A single saved Dataset is fine here (unlike `load_image_dataset`, which needs train/test splits).
    if is_saved_dataset(path_or_id):
        data = load_from_disk(path_or_id)
    else:
        data = load_dataset(path_or_id, split=split)
    if hasattr(data, "keys"):  # a DatasetDict
        if split is None:
            raise SystemExit(f"{path_or_id} has splits {list(data.keys())}; pass --split")
        data = data[split]
    return data


def _cmd_select(args) -> int:
    from . import hub
    from .select.spec import run_spec

    dataset = _load(args.input, args.split)
    subset = run_spec(dataset, args.selector)
    print(f"kept {len(subset):,} of {len(dataset):,} rows")
    if args.output:
        hub.save_subset(subset, args.output, source=args.input)
        print(f"saved to {args.output}")
    if args.push:
        hub.push_subset(subset, args.push, source=args.input, private=args.private)
        print(f"pushed to {args.push}")
    return 0


def _cmd_info(args) -> int:
    from datasets import load_from_disk

    from .provenance import provenance

    print(json.dumps(provenance(load_from_disk(args.path)), indent=2, sort_keys=True))
    return 0


def _cmd_list(args) -> int:
    from .select.spec import available_selectors

    print("\n".join(available_selectors()))
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(
        dataset=args.dataset, fractions=args.fractions, output_dir=args.output_dir, seeds=args.seeds,
        epochs=args.epochs, max_train_rows=args.max_train_rows,
    )
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-prune", description="Data pruning for Hugging Face datasets.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run every selector on a small offline dataset and compare linear probes")
    demo.add_argument("--dataset", default="digits", choices=["digits", "fashion_mnist"])
    demo.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.5])
    demo.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    demo.add_argument("--epochs", type=int, default=15, help="epochs of the proxy model that records dynamics")
    demo.add_argument("--max-train-rows", type=int, default=None, help="subsample the training split first")
    demo.add_argument("--output-dir", default="demo_output")
    demo.set_defaults(func=_cmd_demo)

    select = sub.add_parser("select", help="run a selector on a saved dataset or Hub id")
    select.add_argument("input", help="path of a saved dataset, or a Hub dataset id")
    select.add_argument("--split", default=None)
    select.add_argument("--selector", required=True, help='e.g. "gm_matching:fraction=0.1,embedding_column=emb"')
    select.add_argument("--output", default=None, help="save the subset (with a dataset card) here")
    select.add_argument("--push", default=None, help="push the subset to this Hub repo id")
    select.add_argument("--private", action="store_true")
    select.set_defaults(func=_cmd_select)

    info = sub.add_parser("info", help="print the provenance of a saved subset")
    info.add_argument("path")
    info.set_defaults(func=_cmd_info)

    lister = sub.add_parser("list", help="list the selectors")
    lister.set_defaults(func=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError) as err:
        print(f"hf-prune: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
