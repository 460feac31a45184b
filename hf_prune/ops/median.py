"""Geometric median (Fermat–Weber point) by Weiszfeld's algorithm with the Vardi–Zhang fix.

The geometric median of points ``x_1..x_n`` with weights ``w_i ≥ 0`` minimises
``ρ(z) = Σ_i w_i ‖z − x_i‖`` (GM Matching, Eq. 4). It has breakdown point 1/2: moving fewer than
half of the (weighted) points arbitrarily far moves it by a bounded amount, unlike the mean.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .checks import check_positive, check_positive_int
from .device import resolve_device, to_device

__all__ = ["geometric_median"]

# Rows per chunk so one float64 chunk holds about 2**23 numbers (64 MiB) whatever ``d`` is.
_CHUNK_NUMBERS = 2**23
# A point within this distance (relative to the data's scale) of the iterate counts as "at" it.
_COINCIDE_RTOL = 1e-10


def geometric_median(
    x,
    *,
    weights=None,
    eps: float = 1e-5,
    max_iter: int = 500,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, dict]:
    """ε-approximate geometric median of the rows of ``x`` (Weiszfeld iterations, Vardi–Zhang step).

    Starting from the weighted mean, each iteration moves to
    ``T(z) = Σ_i (w_i/‖x_i − z‖) x_i / Σ_i (w_i/‖x_i − z‖)``. Plain Weiszfeld divides by zero when an
    iterate lands on a data point; we use the Vardi–Zhang (2000) modification: with ``η`` the weight
    of the points at ``z`` (within ``1e-10`` × the data's scale), ``R(z) = Σ_{x_i≠z} w_i (x_i − z)/‖x_i − z‖``
    and ``r = ‖R(z)‖``, the next iterate is ``(1 − η/r)⁺ T̃(z) + min(1, η/r) z``; ``r ≤ η`` proves that data
    point optimal, and it is returned exactly. The objective never increases.

    Stopping, with ``ε = eps`` the *relative* accuracy of the GM Matching paper (Eq. 5,
    ``ρ(z) ≤ (1 + ε) ρ(z*)``): the loop stops as soon as either

    * a certificate proves Eq. 5: by convexity and ``‖z* − z‖ ≤ 2ρ(z)/W`` (``W = Σ w_i``),
      ``ρ(z)/ρ(z*) − 1 ≤ a/(1 − a)`` with ``a = 2‖g‖/W`` and ``g`` the minimum-norm subgradient at ``z``;
      ``info["gap_bound"]`` reports this bound; or
    * the objective stalls: its relative decrease in one iteration is below ``eps / 100``.

    ``info["converged"]`` is ``False`` only when ``max_iter`` ran out first. The certificate is
    conservative, so on many inputs the stall rule ends the loop with a larger ``gap_bound``
    than ``eps`` while the true gap is far smaller.

    Memory is O(N·d): points are processed in row chunks (each chunk cast to float64, which
    keeps the result the same on CPU and GPU up to rounding), never as an N×N matrix. ``x`` may
    also be a block source, e.g. a `hf_prune.ops.matrix.ColumnMatrix` over a memory-mapped column:
    every iteration then streams its ``blocks()`` and nothing but one chunk and O(N) is held.

    Args:
        x: ``(N, d)`` array or tensor of finite numbers, or an object with ``shape``,
            ``blocks(batch_rows)`` yielding ``(start, rows)`` and ``take(indices)`` (already
            validated as finite, as `hf_prune.ops.matrix.open_matrix` does).
        weights: optional ``(N,)`` non-negative weights with a positive sum (default: all 1).
        eps: relative accuracy ε > 0.
        max_iter: maximum number of Weiszfeld iterations (≥ 1).
        device: torch device; ``None`` picks CUDA when available.

    Returns:
        ``(median, info)``: the ``(d,)`` float64 median and a dict with ``iterations``, ``converged``,
        ``objective`` (``ρ`` at the median), ``gap_bound`` and ``at_data_point``.

    Example:
        >>> m, info = geometric_median(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [9.0, 9.0]]))
        >>> info["converged"]
        True
    """
    dev = resolve_device(device)
    xt = _as_matrix(x, dev)
    n, d = xt.shape
    w = _as_weights(weights, n, dev)
    check_positive("eps", eps)
    check_positive_int("max_iter", max_iter)

    total = float(w.sum())
    keep = w > 0
    chunk = max(1, _CHUNK_NUMBERS // max(d, 1))
    z = _weighted_sum(xt, w, chunk) / total
    info = {"iterations": 0, "converged": True, "objective": 0.0, "gap_bound": 0.0, "at_data_point": False}
    if n == 1 or int(keep.sum()) == 1:
        point = _row(xt, int(keep.nonzero()[0, 0]), dev)
        return point.cpu().numpy(), {**info, "at_data_point": True}

    # Coincidence tolerance scales with the data so the algorithm is scale invariant.
    scale = _objective(xt, w, z, chunk) / total
    if scale == 0.0:  # every weighted point equals the mean
        return z.cpu().numpy(), {**info, "at_data_point": True}
    tol = _COINCIDE_RTOL * scale
    f_prev = math.inf
    tried = math.inf  # distance to the nearest point when we last tested it for optimality
    for it in range(int(max_iter)):
        stats = _pass(xt, w, z, chunk, tol)
        f = stats["objective"]
        info.update(iterations=it, objective=f)
        done = _vardi_zhang_optimum(stats, z)
        if done is not None:
            return done.cpu().numpy(), {**info, "gap_bound": 0.0, "at_data_point": True}
        eta, den, r = stats["eta"], stats["den"], stats["r"]
        a = 2.0 * (r - eta) / total  # the mass at z shrinks the min-norm subgradient by eta
        info["gap_bound"] = a / (1.0 - a) if a < 1 else math.inf
        stop = info["gap_bound"] <= eps or f_prev - f <= 0.01 * eps * f
        # Iterates approach an optimal data point only linearly and never land on it: test the
        # nearest point directly when close (geometrically spaced tests) and before stopping.
        near = stats["nearest_dist"]
        if stop or (near <= 1e-3 * scale and near <= 0.1 * tried):
            tried = near
            point = _row(xt, stats["nearest"], dev)
            at_point = _pass(xt, w, point, chunk, tol)
            if _vardi_zhang_optimum(at_point, point) is not None:
                return point.cpu().numpy(), {
                    **info, "objective": at_point["objective"], "gap_bound": 0.0, "at_data_point": True,
                }
        if stop:
            return z.cpu().numpy(), info
        t = stats["num"] / den
        z = t if eta == 0 else (1 - eta / r) * t + (eta / r) * z
        f_prev = f
    info.update(iterations=int(max_iter), objective=_objective(xt, w, z, chunk), converged=False)
    return z.cpu().numpy(), info


def _vardi_zhang_optimum(stats: dict, z: torch.Tensor) -> torch.Tensor | None:
    """The point at ``z`` when the mass there outweighs the pull ``r`` of all other points."""
    if stats["eta"] > 0 and stats["r"] <= stats["eta"]:
        return stats["at_sum"] / stats["eta"]
    return None


def _is_block_source(x) -> bool:
    return not isinstance(x, (torch.Tensor, np.ndarray)) and hasattr(x, "blocks") and hasattr(x, "take")


def _chunks(xt, chunk: int, dev: torch.device):
    """``(start, float64 rows on dev)`` of a tensor or block source, ``chunk`` rows at a time."""
    if isinstance(xt, torch.Tensor):
        for s in range(0, len(xt), chunk):
            yield s, xt[s : s + chunk].to(torch.float64)
        return
    for start, block in xt.blocks(chunk):
        block = block if isinstance(block, torch.Tensor) else to_device(np.asarray(block), dev, dtype=None)
        for lo in range(0, len(block), chunk):
            yield start + lo, block[lo : lo + chunk].to(device=dev, dtype=torch.float64)


def _row(xt, i: int, dev: torch.device) -> torch.Tensor:
    if isinstance(xt, torch.Tensor):
        return xt[i].to(torch.float64)
    row = xt.take([i])
    row = row if isinstance(row, torch.Tensor) else to_device(np.asarray(row), dev, dtype=None)
    return row[0].to(device=dev, dtype=torch.float64)


def _as_matrix(x, dev: torch.device):
    if _is_block_source(x):
        n, d = x.shape
        if n == 0:
            raise ValueError("`x` has no rows")
        if d == 0:
            raise ValueError("`x` has zero columns")
        return x
    if isinstance(x, torch.Tensor):
        xt = x.detach()
    else:
        arr = np.asarray(x)
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise ValueError(f"`x` must hold real numbers, got dtype {arr.dtype}")
        # Stays on the CPU until validated; the dtype is kept (integers become float64 below).
        xt = to_device(arr, torch.device("cpu"), dtype=None)
    if xt.ndim != 2:
        raise ValueError(f"`x` must be a 2-d (N, d) array, got shape {tuple(xt.shape)}")
    if xt.shape[0] == 0:
        raise ValueError("`x` has no rows")
    if xt.shape[1] == 0:
        raise ValueError("`x` has zero columns")
    if not xt.is_floating_point():
        xt = xt.to(torch.float64)
    if not torch.isfinite(xt).all():
        raise ValueError("`x` has NaN/inf values")
    return xt.to(dev)


def _as_weights(weights, n: int, dev: torch.device) -> torch.Tensor:
    if weights is None:
        return torch.ones(n, dtype=torch.float64, device=dev)
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64) if not isinstance(weights, torch.Tensor)
                        else weights.detach().to(torch.float64))
    if w.shape != (n,):
        raise ValueError(f"`weights` must have shape ({n},), got {tuple(w.shape)}")
    if not torch.isfinite(w).all() or (w < 0).any() or not w.sum() > 0:
        raise ValueError("`weights` must be finite, non-negative and not all zero")
    return w.to(dev)


def _weighted_sum(xt, w: torch.Tensor, chunk: int) -> torch.Tensor:
    out = torch.zeros(xt.shape[1], dtype=torch.float64, device=w.device)
    for s, xc in _chunks(xt, chunk, w.device):
        out += w[s : s + len(xc)] @ xc
    return out


def _objective(xt, w, z, chunk) -> float:
    total = 0.0
    for s, xc in _chunks(xt, chunk, w.device):
        total += float(w[s : s + len(xc)] @ torch.linalg.vector_norm(xc - z, dim=1))
    return total


def _pass(xt, w, z, chunk, tol):
    """One sweep over the points: objective, Weiszfeld sums, the mass at ``z`` and the nearest point."""
    num = torch.zeros_like(z)
    at_sum = torch.zeros_like(z)
    den = eta = obj = 0.0
    nearest, nearest_dist = 0, math.inf
    for s, xc in _chunks(xt, chunk, w.device):
        wc = w[s : s + len(xc)]
        dist = torch.linalg.vector_norm(xc - z, dim=1)
        obj += float(wc @ dist)
        at = dist <= tol
        inv = (wc / torch.where(at, torch.ones_like(dist), dist)).masked_fill(at, 0.0)
        num += inv @ xc
        den += float(inv.sum())
        if at.any():
            w_at = wc.masked_fill(~at, 0.0)
            eta += float(w_at.sum())
            at_sum += w_at @ xc
        # Only points that carry weight are candidates for the median.
        d_min, i_min = dist.masked_fill(wc <= 0, math.inf).min(0)
        if float(d_min) < nearest_dist:
            nearest, nearest_dist = s + int(i_min), float(d_min)
    r = float(torch.linalg.vector_norm(num - den * z))  # ‖R(z)‖: pull of the points not at z
    return {"objective": obj, "num": num, "den": den, "eta": eta, "at_sum": at_sum, "r": r,
            "nearest": nearest, "nearest_dist": nearest_dist}
