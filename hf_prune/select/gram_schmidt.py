"""Gram–Schmidt subset selection (Bar & Giryes, "Effective Subset Selection Through The Lens of Neural
Network Pruning", Algorithm 1).

Each step draws an example with probability proportional to the norm of its *residual* feature (its
component outside the span of the examples already chosen), then removes the chosen direction from every
residual. Examples are thus large in the subspace not yet covered, which keeps the subset diverse. The
residual matrix lives on the device and is updated in place, ``R ← R − (R q) qᵀ`` (modified
Gram–Schmidt, as the paper prescribes for stability): O(N·d) per pick, O(s·N·d) in all, O(N·d) memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from datasets import Dataset

from ..ops.checks import check_choice, check_positive_int
from ..ops.columns import read_matrix
from ..ops.device import resolve_device
from ._ordered import run_ordered_selection
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
    2. forms ``q = R_i / ‖R_i‖``, re-orthogonalised twice against the basis picked so far ("twice is
       enough") so the basis stays orthonormal to working precision even when ``R_i`` is small;
    3. updates every residual, ``R ← R − (R q) qᵀ``, which is the projection step of Algorithm 1.

    Other rows' residuals are updated once per step (modified Gram–Schmidt); a second pass over all N
    rows would double the cost and is unnecessary because a row's residual is re-orthogonalised in step
    2 when it is picked. Residual norms are downdated from the inner products ``R q`` of step 3 and
    recomputed exactly where cancellation would spoil them (LAPACK's rule for pivoted QR), so a step
    reads the N×d matrix twice. Work is float32 on the device; randomness is one uniform number per step from
    the seeded NumPy generator (inverse-CDF over the residual norms, accumulated in float64), so CPU and
    GPU give the same rows up to floating-point near-ties.

    **More picks than dimensions.** Once the chosen rows span the remaining ones (after at most ``d``
    picks, or the data's rank), every residual is numerically zero (≤ ``tol`` × the largest remaining
    original norm) and Algorithm 1 would sample rounding noise. Instead the basis is *restarted*:
    residuals of the remaining rows are reset to their original features and the procedure continues,
    so each round of up to ``d`` picks is again linearly independent and norm-driven. Rows whose
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
        device: torch device for the residual matrix; ``None`` picks CUDA when available.
        batch_size: rows per block of the in-place residual update (``None``: all rows at once). The
            update never materialises an N×d temporary either way; blocks only bound the N-vector
            ``R q`` temporaries and let very large matrices be updated piecewise.
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
    features = read_matrix(dataset, embedding_column)
    dev = resolve_device(device)

    def order(rows, k, rng, initial):
        uniforms = rng.random(k)
        picks, norms = gram_schmidt_order(
            features[rows], k, uniforms=None if mode == "deterministic" else uniforms,
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
    features: np.ndarray,
    k: int,
    *,
    uniforms: np.ndarray | None = None,
    device: str | torch.device | None = "cpu",
    batch_size: int | None = None,
    tol: float = 1e-4,
    initial: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` rows chosen by Algorithm 1 on ``features`` (N, d), in the order chosen.

    ``uniforms`` (k numbers in [0, 1)) drive the norm-proportional draws; ``None`` picks the largest
    residual each step. Returns ``(picks, picked_residual_norms)``; the norms are those of the picked
    residuals (the ``|R_ii|`` of pivoted QR in deterministic mode). ``initial`` rows (distinct, at
    most ``k``) take the first steps, in the given order, instead of a draw: the basis starts from them.

    Residual norms are downdated, ``‖r − (r·q)q‖² = ‖r‖² − (r·q)²``, from the inner products the
    projection computes anyway, and recomputed exactly for the rows whose norm has fallen below
    ``√ε`` of its last exact value, where cancellation would make the downdate inaccurate (LAPACK's rule
    for column-pivoted QR). Each step thus reads the residual matrix twice (``R q`` and the update).

    Example:
        >>> picks, norms = gram_schmidt_order(x, 3)  # deterministic: pivoted QR order
    """
    x = np.ascontiguousarray(features, dtype=np.float32)
    n, d = x.shape
    initial = np.asarray(initial, dtype=np.int64).ravel()
    if len(initial) and (initial.min() < 0 or initial.max() >= n or len(np.unique(initial)) != len(initial)):
        raise ValueError(f"`initial` must hold distinct row positions in [0, {n})")
    if len(initial) > k:
        raise ValueError(f"`initial` has {len(initial)} rows, more than `k` ({k})")
    dev = resolve_device(device)
    residual = torch.from_numpy(x.copy()).to(dev)
    original_sq = _row_sq_norms(residual)
    squares, reference = original_sq.clone(), original_sq.clone()
    recompute_below = float(np.sqrt(np.finfo(np.float32).eps))
    available = torch.ones(n, dtype=torch.bool, device=dev)
    basis = torch.empty((min(k, d), d), dtype=torch.float32, device=dev)
    rank = 0
    picks = np.empty(k, dtype=np.int64)
    picked_norms = np.empty(k, dtype=np.float64)
    block = batch_size or n
    for step in range(k):
        norms = squares.clamp_min(0.0).sqrt_().masked_fill_(~available, 0.0)
        scale = float(original_sq.masked_fill(~available, 0.0).max().sqrt())
        if rank > 0 and float(norms.max()) <= tol * scale:
            # The basis spans every remaining row: start a new round from the original features.
            left = torch.nonzero(available).squeeze(1)
            residual[left] = torch.from_numpy(x[left.cpu().numpy()]).to(dev)
            squares[left] = reference[left] = original_sq[left]
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
        q = residual[i].clone()
        picked_norms[step] = float(torch.linalg.vector_norm(q))
        if rank:
            for _ in range(2):
                q -= basis[:rank].T @ (basis[:rank] @ q)
        q_norm = float(torch.linalg.vector_norm(q))
        if q_norm <= tol * float(original_sq[i].sqrt()):
            continue  # numerically inside the span already: nothing to project out
        q /= q_norm
        if rank == basis.shape[0]:
            basis = torch.cat([basis, torch.empty_like(basis[:1])])
        basis[rank] = q
        rank += 1
        for start in range(0, n, block):
            part = residual[start : start + block]
            coefficients = part @ q
            part.addmm_(coefficients[:, None], q[None, :], alpha=-1.0)
            squares[start : start + block] -= coefficients.double().square()
        stale = torch.nonzero(available & (squares <= recompute_below * reference)).squeeze(1)
        if len(stale):
            exact = _row_sq_norms(residual[stale])
            squares[stale] = exact
            reference[stale] = exact
    return picks, picked_norms


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
