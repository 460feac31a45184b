"""A reproduction benchmark's run: its shared options and its resumable ``results.json``.

`prepare_run` applies the options every reproduction has (``--gpu`` prints the paper-sized commands,
``--quick``, ``--methods``, ``--fractions``, ``--threads``). A benchmark records every finished run under ``results["runs"][key]`` and saves the file after each, so
rerunning the same command skips what is done. The settings that change what a run measures are stored
with it: resuming with other settings would mix two experiments in one table, so it is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from datasets import disable_progress_bars

from recipes.trainer.config import write_json

__all__ = ["load_results", "prepare_run", "run_slug", "save_results"]


def prepare_run(args, *, methods: Iterable[str], quick: Mapping, gpu_commands: str) -> Path | None:
    """Apply the shared options to parsed ``args``; the output folder (created), or ``None`` after ``--gpu``.

    ``--gpu`` prints ``gpu_commands`` (nothing runs); ``--quick`` overrides ``args`` with ``quick``;
    unknown ``--methods`` and ``--fractions`` outside (0, 1) are `ValueError`s naming the option (the full
    pool is run by the benchmark itself); ``--threads`` sets torch's CPU threads.

    Example:
        >>> out = prepare_run(args, methods=methods(), quick=QUICK, gpu_commands=GPU_COMMANDS)
    """
    if args.gpu:
        print(gpu_commands)
        return None
    if args.quick:
        for key, value in quick.items():
            setattr(args, key, value)
    known = list(methods)
    unknown = sorted(set(args.methods or []) - set(known))
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; known: {known}")
    bad = [f for f in args.fractions if not 0.0 < f < 1.0]
    if bad:
        raise ValueError(f"--fractions must lie in (0, 1), got {bad}")
    if args.threads:
        torch.set_num_threads(args.threads)
    disable_progress_bars()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def load_results(out: Path, settings: dict, *, report_only: bool = False, **empty) -> dict:
    """``out/results.json`` (or a fresh ``{"runs": {}, **empty}``), checked against ``settings``.

    With other stored settings this is a `SystemExit` naming them, unless ``report_only`` (then the stored
    settings, those the runs were made with, are kept for the report).

    Example:
        >>> results = load_results(Path("runs/x"), {"pool_size": 1000}, cost={})
        >>> sorted(results)
        ['cost', 'runs', 'settings']
    """
    path = Path(out) / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {"runs": {}, **empty}
    if results.get("settings", settings) != settings and not report_only:
        raise SystemExit(f"{path} was made with {results['settings']}; use another --output-dir")
    results.setdefault("settings", settings)
    return results


def save_results(out: Path, results: dict) -> None:
    """Write ``out/results.json`` atomically (a kill leaves the previous complete file).

    Example:
        >>> save_results(Path("runs/x"), {"runs": {}})
    """
    write_json(Path(out) / "results.json", results)


def run_slug(name: str) -> str:
    """A folder name for a method's runs: letters and digits kept, everything else ``_`` ("D²" → "D2").

    Example:
        >>> run_slug("D² (CLIP score)")
        'D2__CLIP_score_'
    """
    return "".join(c if c.isalnum() else "_" for c in name.replace("²", "2"))
