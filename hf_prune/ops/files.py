"""Folders replaced whole (a finished folder is renamed into place, never written into it), and
hf_prune's cache root.

`replace_folder` is used by `hf_prune.hub.save_subset` and by the recipes' checkpoints and dynamics output, so that a
kill or an error leaves either the old folder or the new one at the target path, never a mix.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["replace_folder", "cache_root"]


def cache_root() -> Path:
    """hf_prune's own cache folder: ``$HF_PRUNE_CACHE``, else ``~/.cache/hf_prune``.

    Example:
        >>> cache_root().name
        'hf_prune'
    """
    return Path(os.environ.get("HF_PRUNE_CACHE", Path.home() / ".cache" / "hf_prune"))


def _sync_folder(path: Path) -> None:
    try:  # makes the rename durable; some platforms/filesystems cannot open or sync a folder
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def replace_folder(staging: str | os.PathLike, path: str | os.PathLike, *, aside: str | os.PathLike | None = None) -> Path:
    """Rename the finished folder ``staging`` to ``path``; an existing ``path`` is replaced only once the new one is in place.

    An existing ``path`` is first renamed to ``aside`` (default ``<path>.replaced``; a leftover one is
    removed), then ``staging`` takes its name, then ``aside`` is deleted. If the second rename fails or
    is interrupted, the old folder is put back at ``path``. A kill at any point leaves the old ``path``
    or the new one (plus a leftover ``staging`` or ``aside``), never a half-written ``path``.

    Example:
        >>> dataset.save_to_disk("out/dynamics.incomplete")
        >>> replace_folder("out/dynamics.incomplete", "out/dynamics")
    """
    staging, path = Path(staging), Path(path)
    aside = Path(aside) if aside is not None else path.with_name(path.name + ".replaced")
    moved = False
    if os.path.lexists(path):
        if aside.exists():
            shutil.rmtree(aside)
        os.rename(path, aside)
        moved = True
    try:
        os.rename(staging, path)
    except BaseException:  # KeyboardInterrupt too: never leave the old folder moved aside
        if moved and not os.path.lexists(path):
            os.rename(aside, path)
        raise
    _sync_folder(path.parent)
    if moved:
        shutil.rmtree(aside, ignore_errors=True)
    return path
