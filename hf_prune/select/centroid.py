"""Distance-to-centre selectors: Moderate-DS, easy (prototypical) and hard (least prototypical).

Each row gets its Euclidean distance to the centre of its class (Moderate-DS, Xia et al.,
ICLR 2023; the EASY / HARD / MODERATE baselines of the GM Matching paper). ``easy`` keeps the
closest rows, ``hard`` the farthest, ``moderate`` those whose distance is closest to the median
distance. ``moderate(score_column=...)`` applies the same rule to a scalar score instead (e.g. Moderate
over CLIP scores, the InfoMax paper's image–text baseline).
"""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset

from ..ops.checks import check_choice, check_columns
from ..ops.columns import read_vector
from ..ops.matrix import ColumnMatrix, open_matrix
from ..ops.median import geometric_median
from ._core import run_selection
from .registry import selector

__all__ = ["moderate", "easy", "hard"]

_CENTERS = ("mean", "median", "geometric_median")
_CHUNK_NUMBERS = 2**23


@selector(family="baseline", needs=("embedding_column",), device=True)
def moderate(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    embedding_column: str = "emb",
    center: str = "mean",
    score_column: str | None = None,
    label_column: str | None = None,
    seed: int | np.random.Generator = 0,
    device: str | torch.device | None = None,
) -> Dataset:
    """Keep the rows whose distance to their class centre is closest to the median distance (Moderate-DS).

    With ``d_i = ‖φ(x_i) − c_y‖`` and ``m`` the median of the ``d_i`` in the class (the average of
    the two middle values for an even count), keep the ``k`` rows with the smallest ``|d_i − m|``,
    as the Moderate-DS paper states ("scores close to the score median"). The authors' code keeps
    the rank window around the middle instead; the two agree when the distances are locally
    symmetric around the median. Ties go to the lower row position (a stable sort); hf_prune 0.1.0
    broke them by a random permutation drawn with ``seed``, which no longer affects the rows (it is
    still accepted and recorded).

    Args:
        dataset: the input Dataset (not modified).
        fraction / size: the budget (exactly one).
        embedding_column: fixed-length numeric embedding column.
        center: ``"mean"`` (default; the class centroid of the paper, or the global mean without
            ``label_column``), ``"median"`` (coordinate-wise median, as in the Moderate-DS code) or
            ``"geometric_median"`` (robust to corrupted rows, see `hf_prune.ops.median`).
        score_column: a scalar score to use instead of the distance: keep the rows whose score is
            closest to the median score (``|s_i − median(s)|``, per class with ``label_column``), as
            "Moderate over CLIP scores" in the InfoMax paper (Sec. 4.2: neither the too-easy
            highest-scored rows nor the lowest). ``embedding_column`` and ``center`` are then unused.
        label_column: run per class with a proportional budget split.
        seed: accepted for the common selector signature; nothing here is random.
        device: torch device for ``center="geometric_median"`` only.

    Raises:
        KeyError: a missing embedding or score column. ValueError: NaN or null scores.

    Example:
        >>> sub = hp.select.moderate(ds, fraction=0.3, embedding_column="emb", label_column="label")
        >>> sub = hp.select.moderate(ds, fraction=0.3, score_column="clip_score")  # Moderate over a score
    """
    return _distance_selection(
        dataset, method="moderate", fraction=fraction, size=size, embedding_column=embedding_column,
        center=center, label_column=label_column, seed=seed, device=device, score_column=score_column,
    )


@selector(family="baseline", needs=("embedding_column",), device=True)
def easy(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    embedding_column: str = "emb",
    center: str = "mean",
    label_column: str | None = None,
    seed: int | np.random.Generator = 0,
    device: str | torch.device | None = None,
) -> Dataset:
    """Keep the rows closest to their class centre (the most prototypical; "EASY").

    Parameters and the tie rule (the lower row position) as in `moderate`.

    Example:
        >>> sub = hp.select.easy(ds, fraction=0.3, embedding_column="emb", label_column="label")
    """
    return _distance_selection(
        dataset, method="easy", fraction=fraction, size=size,
        embedding_column=embedding_column, center=center, label_column=label_column, seed=seed, device=device,
    )


@selector(family="baseline", needs=("embedding_column",), device=True)
def hard(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    embedding_column: str = "emb",
    center: str = "mean",
    label_column: str | None = None,
    seed: int | np.random.Generator = 0,
    device: str | torch.device | None = None,
) -> Dataset:
    """Keep the rows farthest from their class centre (the least prototypical; "HARD").

    Parameters and the tie rule (the lower row position) as in `moderate`.

    Example:
        >>> sub = hp.select.hard(ds, fraction=0.3, embedding_column="emb", label_column="label")
    """
    return _distance_selection(
        dataset, method="hard", fraction=fraction, size=size,
        embedding_column=embedding_column, center=center, label_column=label_column, seed=seed, device=device,
    )


def _distance_selection(
    dataset, *, method, fraction, size, embedding_column, center, label_column, seed, device, score_column=None,
) -> Dataset:
    check_choice("center", center, _CENTERS)
    if score_column is not None:
        check_columns(dataset, score_column)
        values = read_vector(dataset, score_column, dtype=np.float64)  # ValueError on NaN / nulls
    else:
        values = open_matrix(dataset, embedding_column)  # read block by block, never copied whole

    def pick(rows, k, rng):
        x = values if len(rows) == len(values) else (values.subset(rows) if score_column is None else values[rows])
        # With a score the "distance" is the score itself: |s − median(s)| below.
        dist = x if score_column is not None else distances_to_center(x, center, device=device)
        if method == "easy":
            key = dist
        elif method == "hard":
            key = -dist
        else:
            key = np.abs(dist - np.median(dist))
        # Stable: equal keys keep their row order, so ties go to the lower row position.
        return np.argsort(key, kind="stable")[:k]

    if score_column is not None:
        params = {"score_column": score_column}
    else:
        params = {"embedding_column": embedding_column, "center": center}
    return run_selection(
        dataset, method=method, params=params, fraction=fraction, size=size, seed=seed,
        label_column=label_column, pick=pick,
    )


def distances_to_center(x: np.ndarray | ColumnMatrix, center: str = "mean", *, device=None) -> np.ndarray:
    """Euclidean distance (float64) of each row of ``x`` to the rows' centre, in row chunks.

    ``x`` is an array or a `hf_prune.ops.matrix.ColumnMatrix`, read block by block: the mean and the
    geometric median take passes over the blocks and O(d) memory; the coordinate-wise median
    (``center="median"``) needs every value of a coordinate at once and makes one float32 copy.

    Example:
        >>> distances_to_center(np.array([[0.0], [2.0], [4.0]]))
        array([2., 0., 2.])
    """
    if center not in _CENTERS:
        raise ValueError(f"`center` must be one of {_CENTERS}, got {center!r}")
    n, d = x.shape
    chunk = max(1, _CHUNK_NUMBERS // max(d, 1))
    if center == "mean":
        c = sum((block.sum(0, dtype=np.float64) for _, block in _blocks(x, chunk)), np.zeros(d)) / max(n, 1)
    elif center == "median":
        c = np.median(np.asarray(x), axis=0).astype(np.float64)
    else:
        c, _ = geometric_median(x, device=device)
    out = np.empty(n, dtype=np.float64)
    for start, block in _blocks(x, chunk):
        out[start : start + len(block)] = np.linalg.norm(block.astype(np.float64) - c, axis=1)
    return out


def _blocks(x, rows: int):
    """``(start, rows × d block)`` of an array (views) or a ColumnMatrix (its float32 blocks)."""
    if isinstance(x, ColumnMatrix):
        yield from x.blocks(rows)
        return
    for start in range(0, len(x), rows):
        yield start, x[start : start + rows]
