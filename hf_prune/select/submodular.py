"""Facility location and the submodular family (as in apricot and submodlib), greedy at 100k+ rows.

Five set functions over the rows of a group, each maximised greedily under a cardinality budget:

==================  ==========================================================  ===============  =========
function            ``f(S)``                                                    similarity       greedy
==================  ==========================================================  ===============  =========
facility location   ``Σ_{i∈V} max_{j∈S} s_ij``                                  sparse k-NN      lazy
graph cut           ``Σ_{i∈V} Σ_{j∈S} s_ij − λ Σ_{i∈S} Σ_{j∈S} s_ij``           sparse k-NN      lazy
log-determinant     ``log det(L_S + λ I)``                                      dense, on demand exact
disparity-sum       ``Σ_{i<j ∈ S} d_ij``                                        dense, on demand plain
disparity-min       ``min_{i≠j ∈ S} d_ij``                                      dense, on demand plain
==================  ==========================================================  ===============  =========

**Similarity from** ``metric``. Facility location and graph cut use a sparse symmetric similarity
``W`` built from each row's ``k`` nearest neighbours (`hf_prune.ops.knn`, values recomputed exactly
in float64): ``W_ij = s(x_i, x_j)`` when ``j`` is among ``i``'s neighbours or ``i`` among ``j``'s,
plus the diagonal ``W_ii = s(x_i, x_i)``, zero elsewhere; at most ``N·(2k + 1)`` entries. With

* ``"cosine"``: ``s = max(0, cos(x_i, x_j))`` (clipped so that ``W ≥ 0``, which both functions need
  to be submodular; facility location ignores negative similarities anyway);
* ``"ip"``: ``s = max(0, ⟨x_i, x_j⟩)``;
* ``"l2"``: the Gaussian kernel ``s = exp(−‖x_i − x_j‖² / σ²)`` with ``σ = bandwidth``, by default
  ``σ²`` = the mean squared distance over the k-NN edges (the graph's own local scale). apricot
  instead uses "largest distance minus distance"; the Gaussian kernel keeps near neighbours close
  to 1 and far ones near 0 whatever the largest distance is.

Log-determinant uses the dense kernel ``L`` (cosine similarities, inner products, or the Gaussian
kernel with ``σ²`` = the mean squared distance between all pairs of rows, ``2·tr Cov(x)``), all
positive semi-definite, and evaluates only the ``b`` columns of the picked rows: never ``N×N``.
The disparity functions use the distance ``d = 1 − cos`` (``"cosine"``, submodlib's ``1 − s_ij``)
or the Euclidean distance (``"l2"``), also one column per pick.

**Greedy.** Facility location and graph cut are submodular (``W ≥ 0``, ``λ ≥ 0``), so the *lazy
greedy* (Minoux 1978) is exact: a max-heap holds each row's gain from an earlier step, which is
an upper bound of its current gain; the top entry is re-evaluated until it is up to date, and an
up-to-date top is the true argmax. Log-determinant's gains are all updated exactly each step by an
incremental Cholesky factorisation (Chen, Zhang & Zhou, NeurIPS 2018), which is cheaper than lazy
re-evaluation. Disparity-sum is supermodular (gains only grow) and disparity-min is neither
submodular nor supermodular: they use the plain greedy, like submodlib, with ``O(N·d)`` per pick.
Every greedy takes the largest gain with ties to the lower row position, so the picks equal the
naive greedy that recomputes every gain; a smaller budget's picks are a prefix of a larger one's.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from datasets import Dataset

from ..ops.checks import (
    check_choice,
    check_nonnegative,
    check_optional_positive,
    check_positive,
    check_positive_int,
)
from ..ops.columns import read_matrix
from ..ops.device import resolve_device, to_device
from ..ops.knn import knn, neighbour_pairs, normalize_rows
from ..ops.matrix import ColumnMatrix, open_matrix
from ..ops.norms import squared_row_norms
from ._knn_step import KnnLog, check_knn_index, with_knn_record
from ._ordered import check_initial_subset, run_ordered_selection
from .registry import selector

__all__ = [
    "facility_location",
    "graph_cut",
    "log_determinant",
    "disparity_min",
    "disparity_sum",
    "similarity_graph",
    "lazy_greedy",
    "facility_location_order",
    "graph_cut_order",
    "log_determinant_order",
    "disparity_order",
    "facility_location_objective",
    "graph_cut_objective",
    "log_determinant_objective",
    "disparity_sum_objective",
    "disparity_min_objective",
]

_METRICS = ("cosine", "l2", "ip")
_DISTANCE_METRICS = ("cosine", "l2")


# --------------------------------------------------------------------------------------------------
# Selectors
# --------------------------------------------------------------------------------------------------


@selector(family="submodular", needs=("embedding_column",), device=True)
def facility_location(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    embedding_column: str = "emb",
    metric: str = "cosine",
    k: int = 10,
    knn_index: str = "auto",
    bandwidth: float | None = None,
    label_column: str | None = None,
    rank_column: str | None = None,
    overwrite: bool = False,
    initial_subset: Sequence[int] | None = None,
    seed: int | np.random.Generator = 0,
    device: str | torch.device | None = None,
) -> Dataset:
    """Keep the rows that best represent all others: maximise ``f(S) = Σ_i max_{j∈S} s_ij``.

    Every row ``i`` is credited with its similarity to the most similar kept row, on the sparse
    k-NN similarity described in the module docstring (a row with no kept neighbour counts 0).
    Monotone submodular, so the lazy greedy is exact and within ``1 − 1/e`` of the optimum
    (Nemhauser, Wolsey & Fisher 1978). A gain is re-evaluated over one row of the graph (its ``k``
    neighbours, the rows that list it, itself), so a selection costs one k-NN search plus a few
    re-evaluations per pick.

    Args:
        dataset: the input Dataset (not modified).
        fraction / size: the budget (exactly one).
        embedding_column: fixed-length numeric embedding column.
        metric: ``"cosine"`` (default), ``"ip"`` or ``"l2"``; see the module docstring.
        k: neighbours per row in the similarity graph (``k`` < rows per group).
        knn_index: the k-NN index (`hf_prune.select._knn_step`): ``"auto"`` (default: exact up to
            50,000 rows per group, IVF above), ``"exact"``/``"flat"``, ``"ivf"``, ``"ivfpq"`` or
            ``"hnsw"``; the index used and its measured recall@k are recorded on the provenance
            step under ``"knn"``.
        bandwidth: ``σ`` of the Gaussian kernel for ``metric="l2"`` (``None``: from the graph).
        label_column: run per class with a proportional budget split (`hf_prune.select._core`).
        rank_column: if given, an int64 column with each kept row's pick position (0 first; per
            class when ``label_column`` is given).
        overwrite: replace an existing ``rank_column``.
        initial_subset: row positions (in ``dataset``) that are kept first, in the given order; the
            greedy continues from them and they count towards the budget (per class: towards their
            class's budget, which they must not exceed).
        seed: seeds an approximate index's training sample (per group); the greedy itself makes no
            random choice.
        device: device of the k-NN search (``None`` → CUDA when available).

    Example:
        >>> sub = hp.select.facility_location(ds, fraction=0.1, embedding_column="emb", k=10)
        >>> ranked = hp.select.facility_location(ds, size=100, metric="l2", rank_column="fl_rank")
    """
    return _graph_selector(
        "facility_location", dataset, fraction=fraction, size=size, embedding_column=embedding_column,
        metric=metric, k=k, knn_index=knn_index, bandwidth=bandwidth, label_column=label_column,
        rank_column=rank_column, overwrite=overwrite, initial_subset=initial_subset, seed=seed, device=device,
        order=lambda W, budget, initial: facility_location_order(W, budget, initial=initial), extra={},
    )


@selector(family="submodular", needs=("embedding_column",), device=True)
def graph_cut(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    embedding_column: str = "emb",
    lambdaVal: float = 0.5,  # submodlib's name for the trade-off
    metric: str = "cosine",
    k: int = 10,
    knn_index: str = "auto",
    bandwidth: float | None = None,
    label_column: str | None = None,
    rank_column: str | None = None,
    overwrite: bool = False,
    initial_subset: Sequence[int] | None = None,
    seed: int | np.random.Generator = 0,
    device: str | torch.device | None = None,
) -> Dataset:
    """Keep rows similar to the whole data but not to each other: the graph-cut function.

    ``f(S) = Σ_{i∈V} Σ_{j∈S} s_ij − λ Σ_{i∈S} Σ_{j∈S} s_ij`` (submodlib's ``GraphCutFunction``;
    the double sum over ``S`` runs over ordered pairs and includes ``i = j``). The gain of row ``j``
    is ``Σ_i s_ij − λ(2 Σ_{i∈S} s_ij + s_jj)``. The first term rewards representative rows, the
    second penalises redundancy: this is the pairwise term InfoMax's objective is built on.
    Submodular for ``λ ≥ 0`` (lazy greedy is exact) and monotone for ``λ ≤ 0.5``; for larger ``λ``
    the greedy still keeps exactly the budget, taking the best (possibly negative) gain each step.

    Args:
        dataset: the input Dataset (not modified).
        fraction / size: the budget (exactly one).
        embedding_column: fixed-length numeric embedding column.
        lambdaVal: the redundancy weight ``λ ≥ 0`` (named as in submodlib; default 0.5).
        metric, k, knn_index, bandwidth: the sparse similarity, as in `facility_location`.
        label_column, rank_column, overwrite, initial_subset, seed, device: as in `facility_location`.

    Example:
        >>> sub = hp.select.graph_cut(ds, fraction=0.1, lambdaVal=0.4, k=10)
    """
    lam = check_nonnegative("lambdaVal", lambdaVal)
    return _graph_selector(
        "graph_cut", dataset, fraction=fraction, size=size, embedding_column=embedding_column,
        metric=metric, k=k, knn_index=knn_index, bandwidth=bandwidth, label_column=label_column,
        rank_column=rank_column, overwrite=overwrite, initial_subset=initial_subset, seed=seed, device=device,
        order=lambda W, budget, initial: graph_cut_order(W, budget, lambdaVal=lam, initial=initial),
        extra={"lambdaVal": lam},
    )


@selector(family="submodular", needs=("embedding_column",), device=True)
def log_determinant(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    embedding_column: str = "emb",
    regularizer: float = 1.0,
    metric: str = "cosine",
    bandwidth: float | None = None,
    label_column: str | None = None,
    rank_column: str | None = None,
    overwrite: bool = False,
    initial_subset: Sequence[int] | None = None,
    seed: int | np.random.Generator = 0,
    device: str | torch.device | None = None,
) -> Dataset:
    """Keep a diverse set of rows: maximise ``log det(L_S + λ I)`` (a DPP's MAP objective).

    ``L`` is the dense kernel of the module docstring; ``λ`` is the regulariser (submodlib's
    ``lambdaVal`` of ``LogDeterminantFunction``), which keeps every principal minor positive, so
    gains stay finite even for duplicate rows. The greedy keeps an incremental Cholesky factor:
    after picking ``j`` it computes the kernel column ``L[:, j]`` (``O(N·d)``) and updates all
    gains ``log d_i²`` exactly (``O(N·t)`` at step ``t``), so ``b`` picks cost ``O(N·b·(d + b))``
    time and ``O(N·b)`` float64 memory (the factor), on ``device``. Submodular (lazy evaluation
    would be exact too, but updating all gains is cheaper here); not monotone when ``L_ii + λ < 1``.

    Args:
        dataset: the input Dataset (not modified).
        fraction / size: the budget (exactly one).
        embedding_column: fixed-length numeric embedding column.
        regularizer: ``λ > 0`` added to the kernel's diagonal.
        metric: ``"cosine"`` (default; Gram matrix of normalised rows), ``"ip"`` or ``"l2"``
            (Gaussian kernel).
        bandwidth: ``σ`` for ``metric="l2"`` (``None``: ``σ²`` = mean squared pairwise distance).
        label_column, rank_column, overwrite, initial_subset: as in `facility_location`.
        seed: recorded for provenance; the greedy makes no random choice.
        device: torch device of the factorisation (``None`` → CUDA when available).

    Example:
        >>> sub = hp.select.log_determinant(ds, size=500, regularizer=1.0, metric="cosine")
    """
    lam = check_positive("regularizer", regularizer)
    check_choice("metric", metric, _METRICS)
    bandwidth = check_optional_positive("bandwidth", bandwidth)
    dev = resolve_device(device)
    emb = read_matrix(dataset, embedding_column)

    def order(rows, budget, initial):
        return log_determinant_order(emb[rows], budget, regularizer=lam, metric=metric, bandwidth=bandwidth,
                                     device=dev, initial=initial)

    params = {"embedding_column": embedding_column, "regularizer": lam, "metric": metric, "bandwidth": bandwidth,
              "device": str(dev)}
    return _select("log_determinant", dataset, fraction, size, seed, label_column, rank_column, overwrite,
                   initial_subset, params, order)


@selector(family="submodular", needs=("embedding_column",), device=True)
def disparity_sum(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    embedding_column: str = "emb",
    metric: str = "cosine",
    label_column: str | None = None,
    rank_column: str | None = None,
    overwrite: bool = False,
    initial_subset: Sequence[int] | None = None,
    seed: int | np.random.Generator = 0,
    device: str | torch.device | None = None,
) -> Dataset:
    """Keep rows far apart on average: maximise the sum of pairwise distances ``Σ_{i<j∈S} d_ij``.

    ``d = 1 − cos`` (``"cosine"``, submodlib's ``1 − s_ij``) or the Euclidean distance (``"l2"``).
    The function is supermodular (a row's gain ``Σ_{i∈S} d_ij`` only grows), not submodular, so
    there is no lazy shortcut: the plain greedy adds each pick's distance column to every row's
    gain, ``O(N·d)`` per pick on ``device``. The first pick (all gains 0) is the group's first row.

    Args:
        dataset: the input Dataset (not modified).
        fraction / size: the budget (exactly one).
        embedding_column: fixed-length numeric embedding column.
        metric: ``"cosine"`` (default) or ``"l2"``.
        label_column, rank_column, overwrite, initial_subset: as in `facility_location`.
        seed: recorded for provenance; the greedy makes no random choice.
        device: torch device (``None`` → CUDA when available).

    Example:
        >>> sub = hp.select.disparity_sum(ds, size=100, metric="cosine")
    """
    return _disparity_selector("disparity_sum", "sum", dataset, fraction, size, embedding_column, metric,
                               label_column, rank_column, overwrite, initial_subset, seed, device)


@selector(family="submodular", needs=("embedding_column",), device=True)
def disparity_min(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    embedding_column: str = "emb",
    metric: str = "cosine",
    label_column: str | None = None,
    rank_column: str | None = None,
    overwrite: bool = False,
    initial_subset: Sequence[int] | None = None,
    seed: int | np.random.Generator = 0,
    device: str | torch.device | None = None,
) -> Dataset:
    """Keep rows no two of which are close: maximise the smallest pairwise distance ``min_{i≠j∈S} d_ij``.

    Not submodular (nor supermodular), so no lazy greedy: the plain greedy, as in submodlib. Its
    gain ``min(f(S), min_{i∈S} d_ij) − f(S)`` is 0 for every row at least ``f(S)`` away from the kept
    ones (and negative otherwise), so many rows tie; we take the one farthest from ``S``, which always
    has the best gain (then the lower position): that is the farthest-point greedy, a 2-approximation of max–min dispersion (Ravi,
    Rosenkrantz & Tayi 1994), and for ``metric="l2"`` the same order as ``k_center_greedy`` with
    ``init="first"``. Distances as in `disparity_sum`; ``O(N·d)`` per pick on ``device``.

    Args:
        dataset: the input Dataset (not modified).
        fraction / size: the budget (exactly one).
        embedding_column: fixed-length numeric embedding column.
        metric: ``"cosine"`` (default) or ``"l2"``.
        label_column, rank_column, overwrite, initial_subset: as in `facility_location`.
        seed: recorded for provenance; the greedy makes no random choice.
        device: torch device (``None`` → CUDA when available).

    Example:
        >>> sub = hp.select.disparity_min(ds, size=100, metric="l2")
    """
    return _disparity_selector("disparity_min", "min", dataset, fraction, size, embedding_column, metric,
                               label_column, rank_column, overwrite, initial_subset, seed, device)


def _graph_selector(method, dataset, *, fraction, size, embedding_column, metric, k, knn_index, bandwidth,
                    label_column, rank_column, overwrite, initial_subset, seed, device, order, extra):
    check_choice("metric", metric, _METRICS)
    k = check_positive_int("k", k)
    log = KnnLog(knn_index)
    bandwidth = check_optional_positive("bandwidth", bandwidth)
    dev = resolve_device(device)
    emb = open_matrix(dataset, embedding_column)  # validated; groups are views, never copies

    def group_order(rows, budget, rng, initial):
        if k >= len(rows):
            raise ValueError(f"`k`={k} must be smaller than the number of rows in a group ({len(rows)})")
        W, report = similarity_graph(emb.subset(rows), metric=metric, k=k, knn_index=knn_index, bandwidth=bandwidth,
                                     device=dev, seed=int(rng.integers(2**31 - 1)), return_report=True)
        log.add(report)
        return order(W, budget, initial)

    params = {"embedding_column": embedding_column, **extra, "metric": metric, "k": k, "knn_index": knn_index,
              "bandwidth": bandwidth, "device": str(dev)}
    result = run_ordered_selection(
        dataset, method=method, params=params, fraction=fraction, size=size, seed=seed, label_column=label_column,
        order=group_order, rank_column=rank_column, overwrite=overwrite, initial_subset=initial_subset,
        collect=(log.reports,),
    )
    return with_knn_record(result, log)


def _disparity_selector(method, reduce, dataset, fraction, size, embedding_column, metric, label_column,
                        rank_column, overwrite, initial_subset, seed, device):
    check_choice("metric", metric, _DISTANCE_METRICS)
    dev = resolve_device(device)
    emb = read_matrix(dataset, embedding_column)

    def order(rows, budget, initial):
        return disparity_order(emb[rows], budget, metric=metric, reduce=reduce, device=dev, initial=initial)

    params = {"embedding_column": embedding_column, "metric": metric, "device": str(dev)}
    return _select(method, dataset, fraction, size, seed, label_column, rank_column, overwrite, initial_subset,
                   params, order)


def _select(method, dataset, fraction, size, seed, label_column, rank_column, overwrite, initial_subset, params,
            order):
    """`run_ordered_selection` with a greedy ``order(rows, budget, initial)`` (which draws nothing)."""
    return run_ordered_selection(
        dataset, method=method, params=params, fraction=fraction, size=size, seed=seed, label_column=label_column,
        order=lambda rows, budget, rng, initial: order(rows, budget, initial), rank_column=rank_column,
        overwrite=overwrite, initial_subset=initial_subset,
    )


def _check_budget(budget, n) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or not 1 <= budget <= n:
        raise ValueError(f"`budget` must be an integer in [1, {n}], got {budget!r}")
    return int(budget)


def _check_embeddings(embeddings) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0 or not np.isfinite(x).all():
        raise ValueError("`embeddings` must be a finite, non-empty (N, d) array")
    return x


# --------------------------------------------------------------------------------------------------
# Similarities
# --------------------------------------------------------------------------------------------------


def similarity_graph(
    embeddings: np.ndarray,
    *,
    metric: str = "cosine",
    k: int = 10,
    knn_index: str = "auto",
    bandwidth: float | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    return_report: bool = False,
):
    """The sparse symmetric similarity ``W`` (float64 CSR, ``W ≥ 0``, diagonal included) of the module docstring.

    ``knn_index`` (see `hf_prune.ops.knn_index`) and ``seed`` choose and seed the k-NN index;
    ``return_report=True`` returns ``(W, report)`` with the search's report (index, recall@k).
    ``embeddings`` is an array or a `hf_prune.ops.matrix.ColumnMatrix` (validated when opened, read
    block by block): the memory beside it is the graph and, for ``"cosine"``, one normalised float32
    copy of the rows (at 1M × 384 the selectors held five copies, 8.2 GB, before they read the column
    this way).

    Example:
        >>> W = similarity_graph(embeddings, metric="l2", k=10)
        >>> W, report = similarity_graph(embeddings, k=10, knn_index="ivf", return_report=True)
        >>> facility_location_objective(W, facility_location_order(W, 100))
    """
    check_choice("metric", metric, _METRICS)
    x = embeddings if isinstance(embeddings, ColumnMatrix) else _check_embeddings(embeddings)
    k = check_positive_int("k", k)
    check_knn_index(knn_index)
    bandwidth = check_optional_positive("bandwidth", bandwidth)
    n = len(x)
    if k >= n:
        raise ValueError(f"`k`={k} must be smaller than the number of rows ({n})")
    if metric == "cosine":
        x = normalize_rows(x)
    search = "l2" if metric == "l2" else "ip"
    _, neighbours, report = knn(x, k, metric=search, index=knn_index, device=device, seed=seed, return_report=True)
    # `knn` refills short approximate lists exactly; -1 entries are still dropped, defensively.
    valid = neighbours >= 0
    safe = np.where(valid, neighbours, 0)
    if metric == "l2":
        values = neighbour_pairs(x, safe, _squared_distances)
        scale = bandwidth**2 if bandwidth is not None else _mean_or_one(values[valid])
        values = np.exp(-values / scale)
        diagonal = np.ones(n)
    else:
        values = np.maximum(neighbour_pairs(x, safe, _inner_products), 0.0)
        diagonal = squared_row_norms(x)
        if metric == "cosine":  # cos(x, x) = 1 exactly (0 for an all-zero row), not a rounded norm
            diagonal = (diagonal > 0).astype(np.float64)
    rows = np.repeat(np.arange(n), k).reshape(n, k)
    K = sp.csr_matrix((values[valid], (rows[valid], safe[valid])), shape=(n, n))
    # s is symmetric, so the union of both directions keeps the same value for each pair; the k-NN
    # lists never hold a row itself, so the diagonal is added to an empty one.
    W = (K.maximum(K.T) + sp.diags(diagonal, format="csr")).tocsr()
    W.sort_indices()
    return (W, report) if return_report else W


def _inner_products(rows: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    return np.einsum("id,ikd->ik", rows, neighbours)


def _squared_distances(rows: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    diff = neighbours - rows[:, None]
    return np.einsum("ikd,ikd->ik", diff, diff)


def _mean_or_one(values: np.ndarray) -> float:
    mean = float(values.mean()) if values.size else 0.0
    return mean if mean > 0 else 1.0  # all neighbours coincide: any scale gives similarity 1


def _kernel_columns(x: torch.Tensor, metric: str, scale: float) -> tuple[Callable[[int], torch.Tensor], torch.Tensor]:
    """``(column(j) → L[:, j], diag(L))`` of the dense kernel on float64 rows ``x`` (already normalised for cosine)."""
    sq = (x * x).sum(1)
    if metric == "l2":
        def column(j):
            dist = torch.addmv(sq, x, x[j], alpha=-2.0).add_(sq[j]).clamp_min_(0.0)
            return torch.exp(-dist / scale)

        return column, torch.ones_like(sq)
    if metric == "cosine":  # cos(x, x) = 1 exactly (0 for an all-zero row), not a rounded norm
        sq = (sq > 0).to(x.dtype)
    return (lambda j: x @ x[j]), sq


def _pairwise_scale(x: np.ndarray) -> float:
    """Mean squared distance over all ordered pairs of distinct rows: ``2·n/(n−1)·tr Cov(x)``."""
    n = len(x)
    if n < 2:
        return 1.0
    x64 = x.astype(np.float64)
    value = 2.0 * n / (n - 1) * float(((x64 - x64.mean(0)) ** 2).sum(1).mean())
    return value if value > 0 else 1.0


def _distance_column(x: torch.Tensor, metric: str) -> Callable[[int], torch.Tensor]:
    if metric == "cosine":
        return lambda j: 1.0 - x @ x[j]
    sq = (x * x).sum(1)
    return lambda j: torch.addmv(sq, x, x[j], alpha=-2.0).add_(sq[j]).clamp_min_(0.0).sqrt_()


def _prepare_rows(embeddings, metric, device) -> torch.Tensor:
    x = _check_embeddings(embeddings).astype(np.float64)
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    elif metric == "l2":
        x = x - x.mean(0)  # distances are translation invariant; centring keeps them accurate
    return to_device(x, resolve_device(device), np.float64)


# --------------------------------------------------------------------------------------------------
# Greedy optimisers
# --------------------------------------------------------------------------------------------------


def lazy_greedy(
    gains: np.ndarray,
    budget: int,
    gain: Callable[[int], float],
    commit: Callable[[int], None],
    initial=(),
) -> np.ndarray:
    """Lazy greedy maximisation of a submodular function; returns the picks in order.

    ``gains`` are the gains of all rows on the empty set, ``gain(j)`` the current gain of row ``j``
    and ``commit(j)`` adds ``j`` to the set. A max-heap keyed by ``(−bound, row)`` holds upper
    bounds (diminishing returns: a gain never grows); the top is re-evaluated until it was
    evaluated at the current step, which makes it the exact argmax, ties to the lower row.
    ``initial`` rows are committed first and count towards ``budget`` (they open the result).

    Example:
        >>> cover = np.zeros(3, bool); sets = [[0], [0, 1], [2]]
        >>> lazy_greedy(np.array([1.0, 2.0, 1.0]), 2, lambda j: float((~cover[sets[j]]).sum()),
        ...             lambda j: cover.__setitem__(sets[j], True))
        array([1, 2])
    """
    gains = np.asarray(gains, dtype=np.float64)
    n = len(gains)
    budget = _check_budget(budget, n)
    initial = check_initial_subset(initial, n, budget=budget, name="initial")
    picks: list[int] = initial.tolist()
    for j in picks:
        commit(j)
    rest = np.setdiff1d(np.arange(n), initial)
    heap = list(zip((-gains[rest]).tolist(), rest.tolist()))
    heapq.heapify(heap)
    # Empty-set gains are still upper bounds after the initial rows; they are stale unless S is empty.
    evaluated_at = np.full(n, 0 if not len(initial) else -1, dtype=np.int64)
    while len(picks) < budget:
        _, j = heap[0]
        if evaluated_at[j] == len(picks):
            heapq.heappop(heap)
            picks.append(j)
            commit(j)
        else:
            evaluated_at[j] = len(picks)
            heapq.heapreplace(heap, (-float(gain(j)), j))
    return np.asarray(picks, dtype=np.int64)


def _check_graph(W) -> sp.csr_matrix:
    if not sp.issparse(W) or W.shape[0] != W.shape[1]:
        raise ValueError("`W` must be a square SciPy sparse similarity matrix")
    W = sp.csr_matrix(W, dtype=np.float64)
    if W.nnz and (not np.isfinite(W.data).all() or W.data.min() < 0):
        raise ValueError("`W` must hold finite, non-negative similarities")
    W.sort_indices()
    return W


def facility_location_order(W: sp.spmatrix, budget: int, *, initial=()) -> np.ndarray:
    """Lazy-greedy facility-location picks on a symmetric non-negative similarity ``W``, in pick order.

    Example:
        >>> facility_location_order(similarity_graph(embeddings, k=10), 50)
    """
    W = _check_graph(W)
    indptr, indices, data = W.indptr, W.indices, W.data
    best = np.zeros(W.shape[0])  # each row's similarity to its most similar pick so far

    def gain(j):
        lo, hi = indptr[j], indptr[j + 1]
        return np.maximum(data[lo:hi] - best[indices[lo:hi]], 0.0).sum()

    def commit(j):
        lo, hi = indptr[j], indptr[j + 1]
        cols = indices[lo:hi]
        best[cols] = np.maximum(best[cols], data[lo:hi])

    # W is symmetric, so row j lists the rows j would cover and the empty-set gain is a row sum.
    return lazy_greedy(np.asarray(W.sum(1)).ravel(), budget, gain, commit, initial)


def graph_cut_order(W: sp.spmatrix, budget: int, *, lambdaVal: float = 0.5, initial=()) -> np.ndarray:
    """Lazy-greedy graph-cut picks (submodlib's definition, see `graph_cut`) on ``W``, in pick order.

    Example:
        >>> graph_cut_order(similarity_graph(embeddings, k=10), 50, lambdaVal=0.5)
    """
    W = _check_graph(W)
    lam = check_nonnegative("lambdaVal", lambdaVal)
    indptr, indices, data = W.indptr, W.indices, W.data
    total = np.asarray(W.sum(0)).ravel()  # Σ_{i∈V} s_ij
    diagonal = W.diagonal()
    with_subset = np.zeros(W.shape[0])  # Σ_{i∈S} s_ij

    def gain(j):
        return total[j] - lam * (2.0 * with_subset[j] + diagonal[j])

    def commit(j):
        lo, hi = indptr[j], indptr[j + 1]
        with_subset[indices[lo:hi]] += data[lo:hi]

    return lazy_greedy(total - lam * diagonal, budget, gain, commit, initial)


@torch.inference_mode()
def log_determinant_order(
    embeddings: np.ndarray,
    budget: int,
    *,
    regularizer: float = 1.0,
    metric: str = "cosine",
    bandwidth: float | None = None,
    device: str | torch.device | None = "cpu",
    initial=(),
) -> np.ndarray:
    """Greedy ``log det(L_S + λI)`` picks by incremental Cholesky (see `log_determinant`), in pick order.

    ``initial`` rows are taken first (in the given order) and count towards ``budget``.

    Example:
        >>> log_determinant_order(embeddings, 20, regularizer=1.0)
    """
    lam = check_positive("regularizer", regularizer)
    check_choice("metric", metric, _METRICS)
    bandwidth = check_optional_positive("bandwidth", bandwidth)
    x_np = _check_embeddings(embeddings)
    budget = _check_budget(budget, len(x_np))
    initial = check_initial_subset(initial, len(x_np), budget=budget, name="initial")
    scale = (bandwidth**2 if bandwidth is not None else _pairwise_scale(x_np)) if metric == "l2" else 1.0
    x = _prepare_rows(x_np, metric, device)
    column, diagonal = _kernel_columns(x, metric, scale)
    n = x.shape[0]
    # d2[i] = L_ii + λ − ‖c_i‖²: the Schur complement of row i given S, so the gain is log d2[i].
    d2 = diagonal + lam
    # Row t of the factor holds every row's t-th Cholesky coordinate (rows, so slices stay contiguous).
    factor = torch.zeros((budget, n), dtype=x.dtype, device=x.device)
    picks = np.empty(budget, dtype=np.int64)
    for t in range(budget):
        # The first maximum: ties go to the lower row.
        j = int(initial[t]) if t < len(initial) else int(torch.argmax(d2))
        picks[t] = j
        if t == budget - 1:
            break
        e = column(j)
        if t:
            e -= factor[:t].T @ factor[:t, j]
        e /= torch.sqrt(d2[j])
        factor[t] = e
        d2.sub_(e * e)
        d2[j] = -torch.inf  # picked rows stay at −inf
    return picks


@torch.inference_mode()
def disparity_order(
    embeddings: np.ndarray,
    budget: int,
    *,
    metric: str = "cosine",
    reduce: str = "sum",
    device: str | torch.device | None = "cpu",
    initial=(),
) -> np.ndarray:
    """Plain-greedy disparity-sum (``reduce="sum"``) or disparity-min (``"min"``) picks, in pick order.

    Each row keeps ``Σ_{i∈S} d_ij`` (sum) or ``min_{i∈S} d_ij`` (min), updated with one distance
    column per pick; the next pick is the unpicked row with the largest value, ties to the lower row.
    ``initial`` rows are taken first (in the given order) and count towards ``budget``.

    Example:
        >>> disparity_order(embeddings, 10, metric="l2", reduce="min")
    """
    check_choice("metric", metric, _DISTANCE_METRICS)
    if reduce not in ("sum", "min"):
        raise ValueError(f"`reduce` must be 'sum' or 'min', got {reduce!r}")
    x = _prepare_rows(embeddings, metric, device)
    n = x.shape[0]
    budget = _check_budget(budget, n)
    initial = check_initial_subset(initial, n, budget=budget, name="initial")
    distance = _distance_column(x, metric)
    value = torch.full((n,), 0.0 if reduce == "sum" else torch.inf, dtype=x.dtype, device=x.device)
    picks = np.empty(budget, dtype=np.int64)
    j = int(initial[0]) if len(initial) else 0  # every gain on the empty set is 0: the lower row
    for t in range(budget):
        picks[t] = j
        if t == budget - 1:
            break
        if reduce == "sum":
            value.add_(distance(j))
        else:
            torch.minimum(value, distance(j), out=value)
        value[j] = -torch.inf  # picked rows stay at −inf under both updates
        j = int(initial[t + 1]) if t + 1 < len(initial) else int(torch.argmax(value))
    return picks


# --------------------------------------------------------------------------------------------------
# Objectives (one evaluator for every implementation, used by the tests and the benchmark)
# --------------------------------------------------------------------------------------------------


def _subset(subset, n) -> np.ndarray:
    subset = np.asarray(subset, dtype=np.int64).ravel()
    if subset.size and (subset.min() < 0 or subset.max() >= n or len(np.unique(subset)) != len(subset)):
        raise ValueError(f"`subset` must hold distinct row positions in [0, {n})")
    return subset


def facility_location_objective(W: sp.spmatrix, subset) -> float:
    """``Σ_i max_{j∈S} W_ij`` (0 for rows without a similar kept row).

    Example:
        >>> facility_location_objective(similarity_graph(embeddings, k=10), [0, 5, 9])
    """
    W = _check_graph(W)
    subset = _subset(subset, W.shape[0])
    if not subset.size:
        return 0.0
    return float(np.asarray(W[:, subset].max(axis=1).todense()).sum())


def graph_cut_objective(W: sp.spmatrix, subset, *, lambdaVal: float = 0.5) -> float:
    """``Σ_{i∈V} Σ_{j∈S} W_ij − λ Σ_{i,j∈S} W_ij``.

    Example:
        >>> graph_cut_objective(similarity_graph(embeddings, k=10), [0, 5, 9], lambdaVal=0.5)
    """
    W = _check_graph(W)
    subset = _subset(subset, W.shape[0])
    lam = check_nonnegative("lambdaVal", lambdaVal)
    return float(W[:, subset].sum() - lam * W[subset][:, subset].sum())


def log_determinant_objective(
    embeddings: np.ndarray, subset, *, regularizer: float = 1.0, metric: str = "cosine",
    bandwidth: float | None = None,
) -> float:
    """``log det(L_S + λI)`` with the dense kernel of `log_determinant` (0 for the empty set).

    Example:
        >>> log_determinant_objective(embeddings, [0, 5, 9], regularizer=1.0)
    """
    lam = check_positive("regularizer", regularizer)
    check_choice("metric", metric, _METRICS)
    x_np = _check_embeddings(embeddings)
    subset = _subset(subset, len(x_np))
    if not subset.size:
        return 0.0
    scale = (bandwidth**2 if bandwidth is not None else _pairwise_scale(x_np)) if metric == "l2" else 1.0
    x = _prepare_rows(x_np, metric, "cpu")[torch.from_numpy(subset)]
    if metric == "l2":
        L = torch.exp(-torch.cdist(x, x).square() / scale)
    else:
        L = x @ x.T
        if metric == "cosine":
            L.diagonal().copy_((L.diagonal() > 0).to(L.dtype))
    sign, logdet = np.linalg.slogdet(L.numpy() + lam * np.eye(len(subset)))
    return float(logdet) if sign > 0 else -np.inf


def _pair_distances(embeddings, subset, metric) -> np.ndarray:
    check_choice("metric", metric, _DISTANCE_METRICS)
    x_np = _check_embeddings(embeddings)
    subset = _subset(subset, len(x_np))
    x = _prepare_rows(x_np, metric, "cpu")[torch.from_numpy(subset)]
    D = 1.0 - x @ x.T if metric == "cosine" else torch.cdist(x, x)
    return D.numpy()[np.triu_indices(len(subset), 1)]


def disparity_sum_objective(embeddings: np.ndarray, subset, *, metric: str = "cosine") -> float:
    """``Σ_{i<j∈S} d_ij``.

    Example:
        >>> disparity_sum_objective(embeddings, [0, 5, 9], metric="l2")
    """
    return float(_pair_distances(embeddings, subset, metric).sum())


def disparity_min_objective(embeddings: np.ndarray, subset, *, metric: str = "cosine") -> float:
    """``min_{i≠j∈S} d_ij`` (0 for fewer than two rows, as in submodlib).

    Example:
        >>> disparity_min_objective(embeddings, [0, 5, 9], metric="l2")
    """
    d = _pair_distances(embeddings, subset, metric)
    return float(d.min()) if d.size else 0.0
