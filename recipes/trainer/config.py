"""Run configuration for the recipes: config dataclasses parsed from the command line and an optional
flat YAML file, and the metadata that makes a run reproducible (configs, argv, git SHA, versions).

Example:
    >>> data_cfg, train_cfg = parse_config(HfArgumentParser((DataConfig, TrainConfig)), ["--epochs", "3"])
    >>> write_json(out / "config.json", run_metadata({"data": data_cfg, "train": train_cfg}))
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RunOptions", "RunConfig", "parse_config", "git_sha", "write_json", "library_versions", "run_metadata"]


@dataclass
class RunOptions:
    """The training options every recipe shares: seeds, dynamics, checkpoints, evaluation, device.

    A recipe's ``TrainConfig`` subclasses it and adds its own fields, so these flags mean the same in
    every recipe (and `HfArgumentParser` lists them first).
    """

    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "Training seeds; metrics aggregate mean ± std."})
    record_dynamics: bool = field(default=False, metadata={"help": "Record per-epoch training dynamics per row (pair)."})
    dynamics_column: str = field(default="dynamics", metadata={"help": "Column name of the dynamics record."})
    checkpointing: bool = field(default=True, metadata={"help": "Save accelerator state after every epoch."})
    save_total_limit: int | None = field(default=None, metadata={"help": "Keep only the newest N epoch checkpoints."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint directory."})
    eval_each_epoch: bool = field(default=False, metadata={"help": "Also evaluate on the test split after every epoch."})
    cpu: bool = field(default=False, metadata={"help": "Force CPU even when a GPU is present."})


@dataclass
class RunConfig:
    """One training run: the recipe's parsed configs plus the seed and the run's output directory."""

    data: Any
    train: Any
    seed: int
    output_dir: Path


def parse_config(parser, argv: Sequence[str] | None = None) -> tuple:
    """Parse ``argv`` into the parser's dataclasses, with an optional ``--config x.yaml`` file.

    The YAML file is a flat mapping of field names (of any of the dataclasses) to values; it sets
    defaults, and flags given on the command line override it. Unknown keys raise `ValueError`.

    Example:
        >>> data, train = parse_config(HfArgumentParser((DataConfig, TrainConfig)), ["--config", "x.yaml", "--epochs", "3"])
    """
    import yaml

    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = None
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            config_path = argv[i + 1]
            argv = argv[:i] + argv[i + 2 :]
            break
        if arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
            argv = argv[:i] + argv[i + 1 :]
            break
    if config_path is not None:
        with open(config_path) as handle:
            values = yaml.safe_load(handle) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{config_path} must hold a mapping of option names to values")
        known = {f.name for dtype in parser.dataclass_types for f in dataclasses.fields(dtype)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} in {config_path}")
        parser.set_defaults(**values)
    return tuple(parser.parse_args_into_dataclasses(args=argv))


def git_sha(path: str | os.PathLike | None = None) -> str | None:
    """The commit of the repository holding ``path`` (default: this file), ``+dirty`` when modified; ``None`` outside git."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("+dirty" if dirty.strip() else "")


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON (dataclasses, NumPy scalars and paths converted)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(_jsonable(obj), handle, indent=2, sort_keys=True)
        handle.write("\n")
    tmp.replace(path)


def library_versions() -> dict[str, str]:
    """Versions of hf_prune, its main dependencies and Python."""
    import accelerate
    import datasets
    import torch
    import transformers

    import hf_prune

    return {
        "hf_prune": hf_prune.__version__, "torch": torch.__version__, "datasets": datasets.__version__,
        "transformers": transformers.__version__, "accelerate": accelerate.__version__, "numpy": np.__version__,
        "python": platform.python_version(),
    }


def run_metadata(configs: dict[str, Any], argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Everything needed to rerun: the configs, the command line, git SHA and library versions."""
    return {
        "configs": _jsonable(configs),
        "argv": list(sys.argv if argv is None else argv),
        "git_sha": git_sha(),
        "versions": library_versions(),
    }
