"""Straightforward reference implementations for the greedy-selection speed benchmark.

They mirror how herding / GM Matching and k-center greedy are commonly written in public research
code: every herding step recomputes the scores of all N rows, *re-sorts* them and walks the sorted
list past the rows already chosen (a Python list membership test); k-center greedy first builds
the full N×N distance matrix and every step takes the minimum over all chosen columns again.
They pick the same rows as `hf_prune.select.herding` / `gm_matching` / `k_center_greedy`
(same update rules, same tie-breaking: the earliest row wins), only slower, so the benchmark can
check agreement as well as time. Plain functions over a ``(N, d)`` torch tensor; not part of the
library.
"""

from __future__ import annotations

import torch


def reference_weiszfeld(x: torch.Tensor, *, eps: float = 1e-5, max_iter: int = 1000) -> torch.Tensor:
    """Plain Weiszfeld on the whole ``(N, d)`` matrix, as public GM Matching code computes it.

    Starts at the mean; zero distances are replaced by ``1e-8`` instead of the Vardi–Zhang step;
    stops when the iterate moves less than ``eps`` (absolute). Returns a float64 ``(d,)`` tensor.
    """
    x = x.to(torch.float64)
    mu = x.mean(0)
    for _ in range(max_iter):
        dist = torch.cdist(x, mu[None]).squeeze(1)
        dist = torch.where(dist == 0, torch.full_like(dist, 1e-8), dist)
        new = (x / dist[:, None]).sum(0) / (1.0 / dist).sum()
        moved = float(torch.linalg.vector_norm(new - mu))
        mu = new
        if moved <= eps:
            break
    return mu


def reference_herding(
    x: torch.Tensor, k: int, *, target: torch.Tensor | None = None, theta0: torch.Tensor | None = None
) -> list[int]:
    """Herding towards ``target`` (default: the mean of ``x``) that re-sorts all N scores per step.

    ``x_{t+1}`` = the first row, in descending order of ``⟨θ_t, x⟩``, that is not yet chosen;
    ``θ_{t+1} = θ_t + target − x_{t+1}``; ``θ_0 = target`` unless given. Returns picks in order.
    """
    x32 = x.to(torch.float32)
    target = x.to(torch.float64).mean(0) if target is None else target.to(torch.float64)
    theta = (target if theta0 is None else theta0.to(torch.float64)).clone()
    chosen: list[int] = []
    while len(chosen) < k:
        scores = x32 @ theta.to(torch.float32)
        order = torch.argsort(scores, descending=True, stable=True)
        new = next(i for i in order.tolist() if i not in chosen)
        chosen.append(new)
        theta += target - x32[new].to(torch.float64)
    return chosen


def reference_gm_matching(x: torch.Tensor, k: int, *, eps: float = 1e-5, max_iter: int = 1000) -> list[int]:
    """GM Matching as public code writes it: `reference_weiszfeld`, then `reference_herding` towards it."""
    return reference_herding(x, k, target=reference_weiszfeld(x, eps=eps, max_iter=max_iter))


def reference_gm_matching_cosine(
    x: torch.Tensor, k: int, *, renormalize: bool = True, eps: float = 1e-5, max_iter: int = 1000
) -> list[int]:
    """GM Matching in cosine geometry, the way the authors' released code computes it.

    Every row is divided by its L2 norm, the geometric median of those unit rows is computed
    (`reference_weiszfeld`), the median itself is divided by its norm (``renormalize=True``), and
    herding runs on the unit rows towards it. ``renormalize=False`` skips the median's rescaling.
    """
    unit = x.to(torch.float64)
    unit = (unit / unit.norm(dim=1, keepdim=True).clamp_min(1e-12)).to(torch.float32)
    target = reference_weiszfeld(unit, eps=eps, max_iter=max_iter)
    if renormalize:
        target = target / target.norm()
    return reference_herding(unit, k, target=target)


def reference_k_center_greedy(x: torch.Tensor, k: int, *, first: int = 0) -> list[int]:
    """k-center greedy over the full N×N distance matrix, re-taking the min over all centres per step.

    Starts at row ``first``; each step picks the unchosen row farthest from its nearest chosen row
    (earliest row on ties). Memory O(N²): only for small N. Returns picks in order.
    """
    xc = x.to(torch.float32)
    xc = xc - xc.mean(0)
    dist = torch.cdist(xc, xc)
    chosen = [first]
    while len(chosen) < k:
        nearest = dist[:, chosen].min(1).values
        nearest[chosen] = -1.0
        chosen.append(int(torch.argmax(nearest)))
    return chosen
