"""The resumable ``results.json`` of a reproduction benchmark: one entry a run, tied to its settings.

A benchmark records every finished run under ``results["runs"][key]`` and saves the file after each, so
rerunning the same command skips what is done. The settings that change what a run measures are stored
with it: resuming with other settings would mix two experiments in one table, so it is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

from recipes.trainer.config import write_json

__all__ = ["load_results", "run_slug", "save_results"]


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
