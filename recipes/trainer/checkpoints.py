"""Checkpoints that a kill cannot leave half-written: save, verify, find (``latest`` or a path), load, prune.

A checkpoint is written into ``<name>.incomplete`` and renamed to ``<name>`` only once every process has
written its files and the main process has recorded them (name → size, SHA-256) in `CHECKPOINT_MARKER`.
A kill mid-save therefore leaves at most a ``.incomplete`` folder, which is never loaded. A numbered
folder without a marker (written in place by an older version, or a copy cut short) is incomplete:
``latest`` skips it. A folder whose files disagree with its marker was damaged after its save: it is
corrupt, and resuming from it is an error that names it and the previous good checkpoint.

Example:
    >>> saved = save_checkpoint(accelerator, checkpoint_dir / "epoch_3")
    >>> load_checkpoint(accelerator, find_checkpoint(checkpoint_dir, "latest"))
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hf_prune.ops.files import replace_folder  # also offered here, next to the checkpoint helpers

from .config import write_json

__all__ = [
    "CHECKPOINT_MARKER",
    "CheckpointError",
    "checkpoint_problem",
    "complete_checkpoints",
    "save_checkpoint",
    "replace_folder",
    "prune_checkpoints",
    "find_checkpoint",
    "load_checkpoint",
]

CHECKPOINT_MARKER = "checkpoint_complete.json"
_INCOMPLETE = ".incomplete"


class CheckpointError(ValueError):
    """A checkpoint that is incomplete, corrupt or cannot be loaded; the message names it and the previous good one."""


def _numbered(directory: Path, prefix: str) -> list[tuple[int, Path]]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)")
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if p.is_dir() and (m := pattern.fullmatch(p.name))]
    return sorted(found)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_problem(path: str | os.PathLike, *, checksums: bool = True) -> str | None:
    """Why the checkpoint folder ``path`` cannot be trusted, or ``None`` when its files match its marker.

    Checks that the marker exists and that every file it lists is there with the recorded size and
    (``checksums=True``) SHA-256, so truncated, missing and garbled files are all caught.

    Example:
        >>> checkpoint_problem("runs/x/seed_0/checkpoints/epoch_3") is None
        True
    """
    path = Path(path)
    if not path.is_dir():
        return "it is not a folder"
    marker = path / CHECKPOINT_MARKER
    if not marker.is_file():
        return f"it has no {CHECKPOINT_MARKER} (its save did not finish, or an older version wrote it)"
    try:
        files = {str(name): (int(entry["size"]), str(entry["sha256"])) for name, entry in json.loads(marker.read_text())["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"its {CHECKPOINT_MARKER} is unreadable"
    missing = [name for name in files if not (path / name).is_file()]
    if missing:
        return f"file(s) {missing} are missing"
    resized = [name for name, (size, _) in files.items() if (path / name).stat().st_size != size]
    if resized:
        return f"file(s) {resized} differ in size from when they were saved (truncated or overwritten)"
    if checksums:
        changed = [name for name, (_, digest) in files.items() if _sha256(path / name) != digest]
        if changed:
            return f"file(s) {changed} differ in content from when they were saved (SHA-256 mismatch)"
    return None


def complete_checkpoints(directory: str | os.PathLike, prefix: str = "epoch_", *, checksums: bool = False) -> list[Path]:
    """The complete checkpoints ``<prefix><N>`` in ``directory``, oldest (smallest N) first.

    Sizes are checked against each marker; ``checksums=True`` also re-hashes every file (slower).
    """
    return [p for _, p in _numbered(Path(directory), prefix) if checkpoint_problem(p, checksums=checksums) is None]


def _previous_hint(path: Path, prefix: str) -> str:
    """Names the newest verified checkpoint numbered before ``path`` (hashing only until one passes)."""
    match = re.fullmatch(re.escape(prefix) + r"(\d+)", path.name)
    number = int(match.group(1)) if match else None
    for n, candidate in reversed(_numbered(path.parent, prefix)):
        if candidate.resolve() == path.resolve() or (number is not None and n >= number):
            continue
        if checkpoint_problem(candidate) is None:
            return f"the previous good checkpoint is {candidate} (pass it to --resume_from_checkpoint)"
    return f"there is no complete checkpoint before it in {path.parent}"


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def save_checkpoint(accelerator, path: str | os.PathLike) -> Path:
    """``accelerator.save_state`` into ``path`` so that the folder exists only once it is complete.

    Every process writes into ``<path>.incomplete`` (accelerate writes per-process files such as
    ``random_states_1.pkl``); after ``wait_for_everyone`` the main process syncs the files to disk,
    records their sizes and SHA-256 in `CHECKPOINT_MARKER` and renames the folder (`replace_folder`:
    an older ``path`` is replaced only once the new one is whole). Call it on every process.

    Example:
        >>> save_checkpoint(accelerator, output_dir / "checkpoints" / f"epoch_{epoch + 1}")
    """
    path = Path(path)
    staging = path.with_name(path.name + _INCOMPLETE)
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)  # left by a run killed while saving this checkpoint
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {}
        for file in sorted(p for p in staging.rglob("*") if p.is_file()):
            _fsync(file)
            files[file.relative_to(staging).as_posix()] = {"size": file.stat().st_size, "sha256": _sha256(file)}
        write_json(staging / CHECKPOINT_MARKER, {"files": files, "num_processes": accelerator.num_processes})
        _fsync(staging / CHECKPOINT_MARKER)
        replace_folder(staging, path)
    accelerator.wait_for_everyone()
    return path


def prune_checkpoints(directory: str | os.PathLike, keep: int, current: str | os.PathLike, prefix: str = "epoch_") -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints up to ``current``; returns the deleted ones.

    Only complete checkpoints are counted or deleted, so an incomplete folder never pushes out the
    last good one; checkpoints numbered after ``current`` (left by another run) are left alone.
    Call it on the main process only, after `save_checkpoint` wrote ``current``.

    Example:
        >>> prune_checkpoints(checkpoint_dir, keep=2, current=saved)
    """
    if keep < 1:
        raise ValueError(f"`save_total_limit` must be at least 1, got {keep}")
    current = Path(current).resolve()
    good = [p.resolve() for p in complete_checkpoints(directory, prefix)]
    if current not in good:
        raise CheckpointError(f"checkpoint {current} is not complete; no checkpoint was deleted")
    deleted = good[: good.index(current) + 1][:-keep]
    for old in deleted:
        shutil.rmtree(old)
    return deleted


def find_checkpoint(
    directory: str | os.PathLike, spec: str, prefix: str = "epoch_", log: Callable[[str], Any] = print
) -> Path | None:
    """The checkpoint to resume from: ``spec`` is ``"latest"`` or a checkpoint folder.

    ``latest`` is the newest ``<prefix><N>`` in ``directory`` with a marker, ``None`` when there is
    none; folders without a marker are incomplete and skipped (each reported through ``log``).
    `CheckpointError`, naming the folder and the previous good checkpoint, for a chosen folder whose
    files disagree with its marker and for an explicit folder that does not exist. An explicit folder
    without a marker (an older layout) is returned as is; `load_checkpoint` reports it if it fails.

    Example:
        >>> path = find_checkpoint(output_dir / "checkpoints", "latest", log=accelerator.print)
    """
    directory = Path(directory)
    if spec == "latest":
        for _, candidate in reversed(_numbered(directory, prefix)):
            if not (candidate / CHECKPOINT_MARKER).exists():
                log(f"skipping incomplete checkpoint {candidate}: {checkpoint_problem(candidate)}")
                continue
            path = candidate
            break
        else:
            return None
    else:
        path = Path(spec)
        if not path.is_dir():
            raise CheckpointError(f"checkpoint {path} not found; {_previous_hint(path, prefix)}")
        if not (path / CHECKPOINT_MARKER).exists():
            return path
    problem = checkpoint_problem(path)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt: {problem}; {_previous_hint(path, prefix)}")
    return path


def load_checkpoint(accelerator, path: str | os.PathLike, prefix: str = "epoch_") -> None:
    """``accelerator.load_state(path)``; any failure becomes `CheckpointError` naming ``path`` and the previous good one.

    Example:
        >>> load_checkpoint(accelerator, find_checkpoint(checkpoint_dir, "latest"))
    """
    path = Path(path)
    try:
        accelerator.load_state(str(path))
    except Exception as error:  # a damaged file surfaces as torch's, pickle's or safetensors' own error types
        raise CheckpointError(
            f"checkpoint {path} could not be loaded ({type(error).__name__}: {error}); {_previous_hint(path, prefix)}"
        ) from error
