"""ProbCover (Yehuda, Dekel, Hacohen & Weinshall, "Active Learning Through a Covering Lens", NeurIPS
2022): the low-budget baseline of the Gram–Schmidt / feature-norm paper, which also combines it with
"+Norm" and "+GS".

ProbCover maximises *probability coverage*: every selected example covers the ball of radius δ around it
in a self-supervised embedding space, and examples are chosen greedily to cover as many not-yet-covered
points as possible. δ is the largest radius for which at least a fraction α (0.95) of the balls are
*pure*, i.e. contain only points of one k-means cluster.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from datasets import Dataset

from ..ops.columns import read_matrix
from ..ops.device import resolve_device
from ..ops.knn import knn, normalize_rows
from ._core import check_optional_positive, check_positive_int, check_probability, run_selection
from .typiclust import best_kmeans

__all__ = ["probcover", "purity_delta", "coverage_graph", "max_coverage"]

_FIRST_NEIGHBOURS = 32
#: Default number of k-means pseudo-labels is the budget, capped like TypiClust's cluster count.
MAX_PSEUDO_LABELS = 500


def probcover(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    embedding_column: str = "emb",
    delta: float | None = None,
    purity: float = 0.95,
    n_pseudo_labels: int | None = None,
    n_init: int = 3,
    max_neighbors: int = 256,
    label_column: str | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> Dataset:
    """Greedy maximum coverage with δ-balls on the L2-normalised embeddings (ProbCover).

    Embeddings are L2-normalised (as ProbCover loads its self-supervised features), so ``δ`` is a
    Euclidean distance between unit vectors (``cos ≥ 1 − δ²/2``). The graph has an edge ``x → y`` iff
    ``‖x − y‖ < δ`` (strict, as in ProbCover's code; every point covers itself) and is built sparsely
    from `hf_prune.ops.knn`: each point's neighbours are searched with 32 candidates, doubled for the
    points whose farthest candidate is still inside the ball, up to ``max_neighbors`` (balls larger
    than that are truncated, with a warning). The greedy loop picks the point with the most uncovered
    points in its ball, marks them covered and subtracts their in-edges from the counts (incremental,
    never a re-scan of the graph). Ties go to a random point (a seeded permutation). Once everything
    is covered, the remaining picks are uniform among the points not yet selected (the counts are all
    zero, so ProbCover's argmax would otherwise return arbitrary points).

    With ``delta=None`` δ follows ProbCover's purity rule: k-means into ``n_pseudo_labels`` clusters
    gives pseudo-labels, a ball ``B_δ(x)`` is pure iff no point of another cluster lies within ``δ`` of
    ``x``, and δ is the largest radius at which at least ``purity`` of the balls are pure. This is
    computed exactly (not on a grid): with ``r_x`` the distance from ``x`` to the nearest point of
    another cluster, δ is the ``(N − ⌈purity·N⌉)``-th smallest ``r_x``, found with adaptive kNN. ProbCover
    uses as many pseudo-labels as classes; without that knowledge the default is the budget (capped at
    500, like TypiClust's clusters), which equals the class count at ProbCover's typical budgets. Pass
    ``n_pseudo_labels`` (e.g. the number of classes) to follow the paper exactly. The δ used per group
    is recorded in the provenance (``delta_used``).

    Args:
        dataset: the input `datasets.Dataset` (never modified).
        fraction: kept fraction in (0, 1]; exactly one of ``fraction`` / ``size``.
        size: number of rows to keep.
        embedding_column: fixed-length float list column (self-supervised features in the paper).
        delta: ball radius on unit-normalised embeddings; ``None`` chooses it by the purity rule.
        purity: the purity threshold α in (0, 1] (ProbCover: 0.95).
        n_pseudo_labels: k-means clusters for the purity rule; default ``min(budget, 500)``, at least 2.
        n_init: k-means runs with different seeds for the pseudo-labels; the lowest inertia is used.
        max_neighbors: cap on the ball size stored per point (bounds the graph to N·max_neighbors edges).
        label_column: if given, the budget is split per class and ProbCover runs inside each class.
        seed: seeds k-means and tie-breaking.
        device: device of the kNN search (faiss on CPU, torch on CUDA); ``None`` picks CUDA when available.

    Returns:
        The selected rows with a ``row_id`` column and a ``probcover`` provenance step.

    Example:
        >>> sub = hp.select.probcover(ds, size=100, embedding_column="emb", n_pseudo_labels=10)
    """
    check_optional_positive("delta", delta)  # `delta` itself is recorded as given
    purity = check_probability("purity", purity)
    if purity == 0:
        raise ValueError("`purity` must be a number in (0, 1], got 0")
    if n_pseudo_labels is not None:
        n_pseudo_labels = check_positive_int("n_pseudo_labels", n_pseudo_labels, minimum=2)
    n_init = check_positive_int("n_init", n_init)
    max_neighbors = check_positive_int("max_neighbors", max_neighbors)
    features = read_matrix(dataset, embedding_column)
    unit = normalize_rows(features)
    dev = resolve_device(device)
    deltas: list[float] = []

    def pick(rows, k, rng):
        n = len(rows)
        perm = rng.permutation(n)  # random tie-breaking: argmax takes the first maximum
        x = unit[rows[perm]]
        first_search = None
        if delta is None:
            if n == 1:
                radius = float("inf")
            else:
                n_labels = n_pseudo_labels if n_pseudo_labels is not None else max(2, min(k, MAX_PSEUDO_LABELS))
                labels = best_kmeans(x, min(n_labels, n), rng, n_init)
                # Both the purity rule and the graph start with this search: run it once.
                first_search = knn(x, min(n, _FIRST_NEIGHBOURS), queries=x, metric="ip", device=dev)
                radius = purity_delta(x, labels, purity=purity, device=dev, first_search=first_search)
        else:
            radius = float(delta)
        deltas.append(radius)
        src, dst = coverage_graph(x, radius, max_neighbors=max_neighbors, device=dev, first_search=first_search)
        return perm[max_coverage(src, dst, n, k, rng)]

    params = {
        "embedding_column": embedding_column,
        "delta": delta,
        "purity": purity,
        "n_pseudo_labels": n_pseudo_labels,
        "n_init": n_init,
        "max_neighbors": max_neighbors,
        "delta_used": deltas,
    }
    return run_selection(
        dataset, method="probcover", params=params, fraction=fraction, size=size, seed=seed,
        label_column=label_column, pick=pick,
    )


def _unit_distances(sims: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(2.0 - 2.0 * sims.astype(np.float64), 0.0, None))


def _candidates(x, m, pending, device, first_search):
    """``(sims, idx)`` of the ``m`` most similar rows for each row in ``pending``.

    ``first_search`` is a caller's ``knn(x, m0, queries=x, metric="ip")``; it is the same search
    when every row is pending and ``m == m0``, so it is reused then.
    """
    if first_search is not None and len(pending) == len(x) and first_search[1].shape[1] == m:
        return first_search
    return knn(x, m, queries=x[pending], metric="ip", device=device)


def purity_delta(
    x: np.ndarray,
    labels: np.ndarray,
    *,
    purity: float = 0.95,
    device: str | torch.device | None = "cpu",
    first_neighbors: int = _FIRST_NEIGHBOURS,
    first_search: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """The largest δ such that at least ``purity`` of the balls ``{y : ‖x − y‖ < δ}`` are label-pure.

    ``x`` must be L2-normalised. A ball around ``x`` is pure iff ``δ ≤ r_x``, the distance to the
    nearest point with another label, so the answer is an order statistic of ``r``. Each point's
    neighbours are searched with ``first_neighbors`` candidates; points without another label among
    them only get a lower bound, and are searched again with twice as many candidates while that bound
    could still change the order statistic. Returns ``inf`` when every point has the same label.
    ``first_search`` may pass ``knn(x, min(N, first_neighbors), queries=x, metric="ip")`` when the
    caller already ran it.

    Example:
        >>> purity_delta(unit_embeddings, kmeans_labels, purity=0.95)
    """
    n = len(x)
    labels = np.asarray(labels)
    need = n - int(np.ceil(purity * n - 1e-9))  # position of δ among the sorted r_x
    r = np.full(n, np.inf)
    bound_only = np.zeros(n, dtype=bool)  # r holds a lower bound, not the exact distance
    pending = np.arange(n)
    m = min(n, first_neighbors)
    while True:
        sims, idx = _candidates(x, m, pending, device, first_search)
        dist = _unit_distances(sims)
        other = labels[idx] != labels[pending][:, None]
        found = other.any(axis=1)
        first = np.argmax(other, axis=1)
        r[pending[found]] = dist[found, first[found]]
        if m >= n:
            r[pending[~found]] = np.inf  # every point was a candidate: no other label anywhere
            bound_only[pending] = False
        else:
            # Other labels lie beyond every candidate: the farthest candidate's distance is a lower bound.
            r[pending[~found]] = dist[~found, -1]
            bound_only[pending] = ~found
        estimate = np.partition(r, need)[need]
        # A bound above the estimate cannot change the order statistic (the true value is larger still).
        pending = np.flatnonzero(bound_only & (r <= estimate))
        if len(pending) == 0:
            break
        m = min(n, 2 * m)
    return float(np.partition(r, need)[need])


def coverage_graph(
    x: np.ndarray,
    delta: float,
    *,
    max_neighbors: int = 256,
    device: str | torch.device | None = "cpu",
    first_neighbors: int = _FIRST_NEIGHBOURS,
    first_search: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Edges ``(src, dst)`` with ``‖x_src − x_dst‖ < delta`` on L2-normalised rows, self-loops included.

    Memory is bounded by ``N · max_neighbors`` edges: each row's ball is searched with
    ``first_neighbors`` candidates, doubled while its farthest candidate is still inside the ball.
    ``first_search`` may pass an earlier ``knn(x, m, queries=x, metric="ip")``; it is used when ``m``
    equals this first candidate count.

    Example:
        >>> src, dst = coverage_graph(unit_embeddings, 0.5)
    """
    n = len(x)
    cap = max(1, min(n, max_neighbors))
    m = min(cap, first_neighbors)
    pending = np.arange(n)
    srcs, dsts = [pending], [pending]
    truncated = 0
    while len(pending):
        sims, idx = _candidates(x, m, pending, device, first_search)
        inside = _unit_distances(sims) < delta
        grow = inside[:, -1] & (m < n)
        if m >= cap:
            truncated += int(grow.sum())
            grow[:] = False
        done = ~grow
        inside &= idx != pending[:, None]  # self-loops are added explicitly
        rows, cols = np.nonzero(inside[done])
        srcs.append(pending[done][rows])
        dsts.append(idx[done][rows, cols])
        pending = pending[grow]
        m = min(cap, 2 * m)
    if truncated:
        warnings.warn(
            f"ProbCover: {truncated} balls hold more than max_neighbors={max_neighbors} points and were "
            "truncated; raise `max_neighbors` or lower `delta` for exact coverage",
            stacklevel=3,
        )
    return np.concatenate(srcs).astype(np.int64), np.concatenate(dsts).astype(np.int64)


def max_coverage(src: np.ndarray, dst: np.ndarray, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy max coverage over the graph ``src → dst`` (``src`` covers ``dst``): ``k`` distinct rows.

    Each step takes the row covering the most uncovered rows (first index on ties), marks its ball
    covered and removes the in-edges of the newly covered rows from the counts. When nothing is left
    to cover, the remaining picks are uniform among unselected rows.

    Example:
        >>> picks = max_coverage(src, dst, n, 10, np.random.default_rng(0))
    """
    out_order = np.argsort(src, kind="stable")
    out_dst = dst[out_order]
    out_ptr = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n))])
    in_order = np.argsort(dst, kind="stable")
    in_src = src[in_order]
    in_ptr = np.concatenate([[0], np.cumsum(np.bincount(dst, minlength=n))])
    degree = np.bincount(src, minlength=n).astype(np.int64)
    covered = np.zeros(n, dtype=bool)
    chosen = np.zeros(n, dtype=bool)
    picks: list[int] = []
    for _ in range(k):
        cur = int(np.argmax(degree))
        if degree[cur] == 0:
            break
        ball = out_dst[out_ptr[cur] : out_ptr[cur + 1]]
        new = np.unique(ball[~covered[ball]])
        covered[new] = True
        starts, lengths = in_ptr[new], in_ptr[new + 1] - in_ptr[new]
        # Positions of all in-edges of the newly covered rows, without a Python loop.
        offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        degree -= np.bincount(in_src[offsets + np.arange(lengths.sum())], minlength=n)
        picks.append(cur)
        chosen[cur] = True
    rest = k - len(picks)
    if rest:
        picks.extend(rng.choice(np.flatnonzero(~chosen), size=rest, replace=False).tolist())
    return np.asarray(picks, dtype=np.int64)
