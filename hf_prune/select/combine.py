""""Baseline + Norm" and "baseline + GS" (Bar & Giryes, "Effective Subset Selection Through The Lens of
Neural Network Pruning", Sec. 4 and Appendix E).

The paper adds its criteria on top of a low-budget baseline (TypiClust, ProbCover) by letting the baseline
pick twice the budget, ``2b`` examples, and then choosing ``b`` of them by feature-norm sampling (Eq. 1) or
by Gram–Schmidt (Algorithm 1). Both steps are ordinary selectors chained Dataset → Dataset, so the
result's ``row_id`` refers to the original dataset and its provenance lists both steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from datasets import Dataset

from ..ops.checks import seed_int
from . import registry
from ._core import resolve_budget

__all__ = ["combine"]

Selector = Callable[..., Dataset]
_ALIASES = {"norm": "norm_sampling", "gs": "gram_schmidt"}
_RESERVED = ("fraction", "size", "seed", "label_column")


def _resolve(selector: str | Selector, role: str) -> Selector:
    if callable(selector):
        return selector
    if not isinstance(selector, str):
        raise ValueError(f"`{role}` must be a selector function or name, got {selector!r}")
    name = _ALIASES.get(selector, selector)
    names = [info.name for info in registry.selectors() if info.budget]
    if name not in names:
        raise ValueError(f"unknown selector {selector!r} for `{role}`; available: {', '.join(['norm', *names])}")
    return registry.get(name).fn


def _kwargs(value: dict[str, Any] | None, role: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"`{role}` must be a dict of keyword arguments, got {value!r}")
    clash = sorted(set(value) & set(_RESERVED))
    if clash:
        raise ValueError(f"`{role}` must not set {clash}: combine passes the budget, seed and label column itself")
    return dict(value)


def combine(
    dataset: Dataset,
    *,
    baseline: str | Selector,
    then: str | Selector = "norm",
    expansion: float = 2.0,
    fraction: float | None = None,
    size: int | None = None,
    label_column: str | None = None,
    seed: int | np.random.Generator = 0,
    baseline_kwargs: dict[str, Any] | None = None,
    then_kwargs: dict[str, Any] | None = None,
) -> Dataset:
    """Pick ``⌈expansion·b⌉`` rows with ``baseline``, then ``b`` of those with ``then``.

    With the defaults this is the paper's "baseline + Norm": ``2b`` rows from the baseline, ``b`` of them
    sampled by feature norm; ``then="gram_schmidt"`` gives "baseline + GS". ``b`` is the budget of
    ``fraction``/``size`` on the input. ``expansion·b`` is rounded up (so the first step never keeps
    fewer than ``expansion·b`` rows) and capped at the number of rows: when ``expansion·b > N`` the
    baseline keeps every row and the second selector alone decides. Both steps receive ``seed`` and
    ``label_column``; per class, the first step splits ``⌈expansion·b⌉`` over the classes and the second
    splits ``b`` over the classes of the first step's rows (both by largest remainders), which matches
    the direct per-class split of ``b`` up to rounding.

    Args:
        dataset: the input `datasets.Dataset` (never modified).
        baseline: the first selector: a function such as ``hp.select.probcover`` or a name
            (``"probcover"``, ``"typiclust"``, ``"random"``, …, any `hf_prune.select` selector).
        then: the second selector: ``"norm"`` (feature-norm sampling), ``"gram_schmidt"``, or any
            selector function / name.
        expansion: how many times the budget the baseline keeps (the paper: 2); at least 1.
        fraction: kept fraction of the input in (0, 1]; exactly one of ``fraction`` / ``size``.
        size: number of rows to keep.
        label_column: passed to both selectors (per-class budgets).
        seed: passed to both selectors.
        baseline_kwargs: extra keyword arguments of the baseline (e.g. ``{"embedding_column": "dino"}``).
        then_kwargs: extra keyword arguments of the second selector (e.g. ``{"p": 1}``).

    Returns:
        ``b`` rows of ``dataset``; ``row_id`` maps to the input and the provenance holds both steps.

    Example:
        >>> sub = hp.select.combine(ds, baseline="probcover", then="norm", size=100, seed=0)
        >>> [step["method"] for step in hp.provenance(sub)]
        ['probcover', 'norm_sampling']
    """
    first_fn = _resolve(baseline, "baseline")
    second_fn = _resolve(then, "then")
    first_kwargs = _kwargs(baseline_kwargs, "baseline_kwargs")
    second_kwargs = _kwargs(then_kwargs, "then_kwargs")
    if (
        isinstance(expansion, bool) or not isinstance(expansion, (int, float, np.integer, np.floating))
        or not np.isfinite(expansion) or expansion < 1
    ):
        raise ValueError(f"`expansion` must be a number ≥ 1, got {expansion!r}")
    if not isinstance(dataset, Dataset):
        raise TypeError(f"expected a datasets.Dataset, got {type(dataset).__name__}")
    budget = resolve_budget(len(dataset), fraction=fraction, size=size)
    # Round up, tolerating float noise such as 2.0000000001 * b.
    expanded = min(len(dataset), math.ceil(float(expansion) * budget - 1e-9))
    seed = seed_int(seed)  # a Generator gives one draw, so both steps see the same int seed
    pool = first_fn(dataset, size=expanded, label_column=label_column, seed=seed, **first_kwargs)
    return second_fn(pool, size=budget, label_column=label_column, seed=seed, **second_kwargs)
