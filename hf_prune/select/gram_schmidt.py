"""Gram–Schmidt subset selection (Bar & Giryes, "Effective Subset Selection Through The Lens of Neural
Network Pruning", Algorithm 1).

Each step draws an example with probability proportional to the norm of its *residual* feature (its
component outside the span of the examples already chosen), then removes the chosen direction from every
residual. Examples are thus large in the subspace not yet covered, which keeps the subset diverse. Only
the residual *norms* are needed for the draws, and they follow from one product of the original features
with each new basis vector, so a pick costs one read pass over the N×d features (the memory-bandwidth
floor) and no residual matrix is stored: O(N·d) per pick, O(s·N·d) in all, O(N + s·d) memory beyond the
features.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from datasets import Dataset

from ..ops.checks import check_choice, check_positive_int
from ..ops.device import resolve_device
from ..ops.matrix import open_matrix
from ..ops.threads import small_step_threads
from ._ordered import run_ordered_selection
from ._stream import FeatureRows
from .registry import selector

__all__ = ["gram_schmidt", "gram_schmidt_order"]

_MODES = ("random", "deterministic")


@selector(family="seed paper", needs=("embedding_column",), device=True)
def gram_schmidt(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    embedding_column: str = "emb",
    mode: str = "random",
    label_column: str | None = None,
    rank_column: str | None = None,
    gain_column: str | None = None,
    overwrite: bool = False,
    initial_subset: Sequence[int] | None = None,
    seed: int | np.random.Generator = 0,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    tol: float = 1e-4,
) -> Dataset:
    """Select rows with Algorithm 1: norm-proportional sampling on Gram–Schmidt residuals.

    Starting from ``R = F`` (the embeddings, neither centred nor normalised: the paper uses the raw
    features, whose norms carry the signal), each of the ``s`` steps

    1. picks row ``i`` among those not yet chosen with probability ``‖R_i‖ / Σ_j ‖R_j‖``
       (``mode="random"``, the paper's method) or the largest ``‖R_i‖`` (``mode="deterministic"``, the
       paper's ablation; this is column-pivoted QR of ``Fᵀ``, ties to the earlier row);
    2. forms ``q = R_i / ‖R_i‖`` with ``R_i = F_i`` minus its projection on the basis picked so far,
       projected twice ("twice is enough") so the basis stays orthonormal to working precision even
       when ``R_i`` is small;
    3. removes ``q`` from every residual, ``R ← R − (R q) qᵀ``, the projection step of Algorithm 1.

    Step 3 is carried out on the residual norms only: ``q`` is orthogonal to the earlier basis, so
    ``R q = F q`` and ``‖R_i‖² ← ‖R_i‖² − (F_i·q)²``, one read pass over the features per step; the
    picked row's residual is formed in step 2 from ``F_i`` and the basis. Norms are recomputed exactly
    from ``F_i`` and the basis where the downdate has cancelled most of them (LAPACK's rule for pivoted
    QR), which happens to few rows. Work is float32 on the device; randomness is one uniform number per
    step from the seeded NumPy generator (inverse-CDF over the residual norms, accumulated in float64),
    so CPU and GPU give the same rows up to floating-point near-ties. A residual norm is known to
    about ``ε ‖F_i‖`` (float32 rounding of the features, ``ε ≈ 1.2e-7``), so rows whose residuals are
    a small fraction of their norm (e.g. tight clusters after their centre is picked) are near-ties
    at that accuracy.

    **More picks than dimensions.** Once the chosen rows span the remaining ones (after at most ``d``
    picks, or the data's rank), every residual is numerically zero (≤ ``tol`` × the largest remaining
    original norm) and Algorithm 1 would sample rounding noise. Instead the basis is *restarted*:
    residuals of the remaining rows are reset to their original features and the procedure continues,
    so each round of up to ``d`` picks is again linearly independent and norm-driven. Within a round,
    a row whose residual is numerically zero (≤ ``tol`` × its own norm, e.g. a duplicate of a picked
    row) is not drawn again before the restart; picking it would add nothing to the basis. Rows whose
    features are all zero are picked last, uniformly at random (first ones in deterministic mode).

    **Order.** Step ``t`` uses the ``t``-th uniform number of the group's generator (drawn in order,
    whatever the budget), so in both modes a smaller budget's picks are the first picks of a larger
    one's with the same ``seed`` (per class when ``label_column`` is given): ``rank_column`` turns
    one run into every smaller budget. ``gain_column`` holds each pick's residual norm ``‖R_i‖``
    when it was picked (the ``|R_ii|`` of pivoted QR in deterministic mode; it starts again from the
    original norms after a basis restart). ``initial_subset`` rows are the first picks, in the given
    order: the basis starts from them (they take the first steps and their uniforms), so with the
    same ``seed`` the result is exactly what a run whose first picks were those rows gives.

    Args:
        dataset: the input `datasets.Dataset` (never modified).
        fraction: kept fraction in (0, 1]; exactly one of ``fraction`` / ``size``.
        size: number of rows to keep.
        embedding_column: fixed-length float list column holding the features ``F_i``.
        mode: ``"random"`` or ``"deterministic"``.
        label_column: if given, the budget is split per class and Algorithm 1 runs inside each class.
        rank_column: if given, an int64 column with each kept row's pick position (0 first; per
            class when ``label_column`` is given).
        gain_column: if given, a float64 column with each kept row's residual norm when picked.
        overwrite: replace an existing ``rank_column`` / ``gain_column``.
        initial_subset: row positions (in ``dataset``) kept first, in the given order; they count
            towards the budget (per class: towards their class's budget, which they must not exceed).
        seed: seed of the random draws.
        device: torch device for the features and the norms (one float32 copy of the features on a
            non-CPU device; on CPU the column is read block by block from its Arrow chunks, no copy);
            ``None`` picks CUDA when available.
        batch_size: rows per block of the product ``F q`` (``None``: the column's blocks,
            `hf_prune.ops.matrix.DEFAULT_BLOCK_ROWS` rows at most). No N×d temporary is made either way.
        tol: relative threshold below which residuals count as zero (triggers a basis restart).

    Returns:
        The selected rows with a ``row_id`` column and a ``gram_schmidt`` provenance step.

    Example:
        >>> sub = hp.select.gram_schmidt(ds, size=100, embedding_column="emb", seed=0)
        >>> per_class = hp.select.gram_schmidt(ds, fraction=0.01, label_column="label")
        >>> ranked = hp.select.gram_schmidt(ds, size=400, rank_column="rank", gain_column="residual")
    """
    check_choice("mode", mode, _MODES)
    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size)
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)) or not 0 < tol < 1:
        raise ValueError(f"`tol` must be a number in (0, 1), got {tol!r}")
    matrix = open_matrix(dataset, embedding_column)
    dev = resolve_device(device)

    def order(rows, k, rng, initial):
        uniforms = rng.random(k)
        picks, norms = gram_schmidt_order(
            matrix.subset(rows), k, uniforms=None if mode == "deterministic" else uniforms,
            device=dev, batch_size=batch_size, tol=tol, initial=initial,
        )
        return picks if gain_column is None else (picks, norms)

    params = {"embedding_column": embedding_column, "mode": mode, "tol": tol}
    return run_ordered_selection(
        dataset, method="gram_schmidt", params=params, fraction=fraction, size=size, seed=seed,
        label_column=label_column, order=order, rank_column=rank_column, gain_column=gain_column,
        overwrite=overwrite, initial_subset=initial_subset,
    )


@torch.inference_mode()
def gram_schmidt_order(
    features,
    k: int,
    *,
    uniforms: np.ndarray | None = None,
    device: str | torch.device | None = "cpu",
    batch_size: int | None = None,
    tol: float = 1e-4,
    initial: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` rows chosen by Algorithm 1 on ``features`` (N, d), in the order chosen.

    ``features`` is an array, a tensor, a `hf_prune.ops.matrix.ColumnMatrix` (read block by block)
    or `FeatureRows`.

    ``uniforms`` (k numbers in [0, 1)) drive the norm-proportional draws; ``None`` picks the largest
    residual each step. Returns ``(picks, picked_residual_norms)``; the norms are those of the picked
    residuals (the ``|R_ii|`` of pivoted QR in deterministic mode). ``initial`` rows (distinct, at
    most ``k``) take the first steps, in the given order, instead of a draw: the basis starts from them.

    No residual matrix is kept. The new basis vector ``q`` is orthogonal to the earlier ones, so a
    row's residual has the same inner product with it as the row itself, ``r_i·q = x_i·q``: one
    product ``c = X q`` over the original features (read only, ``batch_size`` rows at a time)
    downdates every squared residual norm, ``‖r_i‖² ← ‖r_i‖² − c_i²``. The picked row's residual is
    ``x_i − Bᵀ(B x_i)`` against the basis ``B``, projected twice. Where the downdate has cancelled
    most of a norm, the norm is recomputed exactly from ``x_i`` and the basis, a few rows at a time:
    first below ``√ε ‖x_i‖²`` (LAPACK's rule for column-pivoted QR), later below ``√ε`` times the
    geometric mean of the last exact value and ``‖x_i‖²`` (``c_i`` carries rounding of the size of
    ``ε‖x_i‖``, not of the residual) and at most half the last exact value. Rows found numerically
    inside the span (``≤ tol ‖x_i‖``, e.g. duplicates of a pick) wait for the next round.

    Cost per pick: one read pass over the N×d features plus O(N) (and O(k·d) for the picked row);
    memory: the float32 features (the input itself when it is float32 and C-contiguous, the Arrow
    chunks of a ColumnMatrix; one copy on a non-CPU device), O(N) vectors and the ``k×d`` basis,
    never an N×d temporary. Threads follow `hf_prune.ops.threads.small_step_threads` (one for small
    products; one torch thread for the O(N) bookkeeping below 4M rows).

    Example:
        >>> picks, norms = gram_schmidt_order(x, 3)  # deterministic: pivoted QR order
    """
    if isinstance(features, FeatureRows):
        x = features
    else:
        if isinstance(features, torch.Tensor):
            features = features.to(torch.float32)
        x = FeatureRows(features, device=device, batch_rows=batch_size)  # read only, no copy on CPU
    n, d = x.shape
    initial = np.asarray(initial, dtype=np.int64).ravel()
    if len(initial) and (initial.min() < 0 or initial.max() >= n or len(np.unique(initial)) != len(initial)):
        raise ValueError(f"`initial` must hold distinct row positions in [0, {n})")
    if len(initial) > k:
        raise ValueError(f"`initial` has {len(initial)} rows, more than `k` ({k})")
    with small_step_threads(n * d, x.device, vector_work=n):
        return _order(x, k, uniforms, tol, initial)


def _order(x: FeatureRows, k, uniforms, tol, initial):
    n, d = x.shape
    dev = x.device
    original_sq = torch.cat([_row_sq_norms(block) for _, block in x.blocks()])
    squares = original_sq.clone()
    recompute_below = float(np.sqrt(np.finfo(np.float32).eps))
    zero_below = tol * tol
    # A row's norm is recomputed once ``squares`` falls to its threshold; -inf for rows that need no
    # check (picked, all-zero, or known to lie in the span until the next round).
    fresh_threshold = (recompute_below * original_sq).masked_fill_(original_sq == 0, -np.inf)
    threshold = fresh_threshold.clone()
    available = torch.ones(n, dtype=torch.bool, device=dev)
    basis = torch.empty((min(k, d), d), dtype=torch.float32, device=dev)
    coefficients = x.new_vector(torch.float32)
    rank = 0
    picks = np.empty(k, dtype=np.int64)
    picked_norms = np.empty(k, dtype=np.float64)
    for step in range(k):
        norms = squares.clamp_min(0.0).sqrt_().masked_fill_(~available, 0.0)
        scale = float(original_sq.masked_fill(~available, 0.0).max().sqrt())
        if rank > 0 and float(norms.max()) <= tol * scale:
            # The basis spans every remaining row: start a new round from the original features.
            squares.copy_(original_sq)
            threshold = fresh_threshold.masked_fill(~available, -np.inf)
            rank = 0
            norms = squares.sqrt().masked_fill_(~available, 0.0)
        if step < len(initial):
            i = int(initial[step])
        elif scale == 0.0:
            # Only all-zero rows remain: no direction to prefer.
            left = torch.nonzero(available).squeeze(1)
            u = 0.0 if uniforms is None else float(uniforms[step])
            i = int(left[min(int(u * len(left)), len(left) - 1)])
        elif uniforms is None:
            i = int(torch.argmax(norms))
        else:
            i = _draw(norms, float(uniforms[step]))
        picks[step] = i
        available[i] = False
        threshold[i] = -np.inf
        # Twice is enough: the second projection removes what rounding left in the span.
        q = _residuals(x.take([i]), basis[:rank], passes=2)[0]
        q_norm = float(torch.linalg.vector_norm(q))
        picked_norms[step] = q_norm
        if q_norm <= tol * float(original_sq[i].sqrt()):
            continue  # numerically inside the span already: nothing to project out
        q /= q_norm
        if rank == basis.shape[0]:
            basis = torch.cat([basis, torch.empty_like(basis[:1])])
        basis[rank] = q
        rank += 1
        x.matvec(q, coefficients)
        squares -= coefficients.double().square_()
        if rank >= d:
            squares.zero_()  # a basis of the whole space: every residual is zero
            threshold.fill_(-np.inf)
            continue
        stale = torch.nonzero(squares <= threshold).squeeze(1)
        for start in range(0, len(stale), _STALE_ROWS):
            rows = stale[start : start + _STALE_ROWS]
            exact = _row_sq_norms(_residuals(x.take(rows), basis[:rank], passes=1))
            zero = exact <= zero_below * original_sq[rows]
            squares[rows] = exact.masked_fill(zero, 0.0)
            # LAPACK's √ε rule against √(exact · ‖x‖²), the scale of the rounding in x·q; at least a
            # halving, so that a recomputed norm is not flagged again by rounding alone.
            again = torch.minimum(recompute_below * (exact * original_sq[rows]).sqrt(), exact / 2)
            threshold[rows] = again.masked_fill_(zero, -np.inf)
    return picks, picked_norms


# Rows per block of exact residual recomputation: a (rows × d) temporary, small next to N×d.
_STALE_ROWS = 1024


def _residuals(rows: torch.Tensor, basis: torch.Tensor, *, passes: int) -> torch.Tensor:
    """``rows`` minus their projection on the orthonormal ``basis`` (a new tensor; ``rows`` is read only)."""
    residual = rows.clone()
    for _ in range(passes if len(basis) else 0):
        residual -= (residual @ basis.T) @ basis
    return residual


def _row_sq_norms(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x, dim=1).double().square()


def _draw(weights: torch.Tensor, u: float) -> int:
    """Inverse-CDF draw of one index with probability ∝ ``weights`` (non-negative, not all zero)."""
    cumulative = torch.cumsum(weights.double(), dim=0)
    target = torch.tensor([u], dtype=torch.float64, device=weights.device) * cumulative[-1]
    i = int(torch.searchsorted(cumulative, target, right=True))
    if i >= len(weights) or float(weights[i]) <= 0.0:
        # u·total rounded onto the last bucket edge: take the last positive weight.
        i = int(torch.nonzero(weights > 0).max())
    return i
