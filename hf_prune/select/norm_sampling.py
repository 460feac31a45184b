"""Feature-norm sampling (Bar & Giryes, "Effective Subset Selection Through The Lens of Neural Network
Pruning", Eq. 1 and Appendix I).

Borrowing magnitude pruning's criterion, an example is kept with probability proportional to the norm of
its feature vector, ``p_i = ‖F_i‖ / Σ_j ‖F_j‖``; the paper draws the subset at random by these weights
(and shows the randomisation matters), compares ℓ1/ℓ2/ℓ∞ norms, and uses the inverse weights
``p_i ∝ max_j ‖F_j‖ − ‖F_i‖`` to show the opposite (low-norm) selection.
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset

from ..ops.checks import check_bool, check_choice
from ..ops.matrix import open_matrix
from ..ops.norms import check_norm_order
from ..ops.norms import row_norms as feature_norms  # public here: the ℓp norms the weights use
from ..ops.sampling import weighted_sample_without_replacement
from ._core import run_selection
from .registry import selector

__all__ = ["norm_sampling", "feature_norms", "norm_weights"]

_MODES = ("random", "deterministic")


def norm_weights(norms: np.ndarray, *, inverse: bool = False) -> np.ndarray:
    """Sampling weights from norms: ``‖F_i‖`` (Eq. 1), or ``max_j ‖F_j‖ − ‖F_i‖`` with ``inverse=True``.

    Weights are unnormalised; probabilities are ``w / w.sum()``. With ``inverse=True`` the largest-norm
    row gets weight 0, so it is drawn only once every other row has been (see
    `weighted_sample_without_replacement`); when all norms are equal every weight is 0 and the draw is
    uniform.

    Example:
        >>> norm_weights(np.array([1.0, 2.0, 4.0]), inverse=True)
        array([3., 2., 0.])
    """
    norms = np.asarray(norms, dtype=np.float64)
    return norms.max() - norms if inverse else norms


@selector(family="seed paper", needs=("embedding_column",))
def norm_sampling(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    embedding_column: str = "emb",
    p: float | str = 2,
    mode: str = "random",
    inverse: bool = False,
    label_column: str | None = None,
    seed: int | np.random.Generator = 0,
) -> Dataset:
    """Keep rows sampled with probability proportional to the norm of their embedding (Eq. 1).

    ``mode="random"`` draws the subset without replacement, each successive draw with probability
    ``‖F_i‖ / Σ_{j left} ‖F_j‖`` (the paper's randomised selection; Gumbel-top-k, exact and O(N)).
    ``mode="deterministic"`` keeps the largest norms (the paper's "without randomisation" ablation);
    ties go to the earlier row. ``inverse=True`` uses ``p_i ∝ max_j ‖F_j‖ − ‖F_i‖`` (Appendix I), or
    the smallest norms when deterministic. The maximum is taken over the rows being selected from (the
    class, when ``label_column`` is given). Features are used as they are: the method relies on their
    norms, so they must not be L2-normalised beforehand (the paper's stated limitation).

    Args:
        dataset: the input `datasets.Dataset` (never modified).
        fraction: kept fraction in (0, 1]; exactly one of ``fraction`` / ``size``.
        size: number of rows to keep.
        embedding_column: fixed-length float list column holding the features ``F_i``.
        p: the norm: ``2`` (the paper's default), ``1``, ``float("inf")`` / ``"inf"`` (Appendix D), or any
            real ``p ≥ 1``.
        mode: ``"random"`` (weighted sampling) or ``"deterministic"`` (top norms).
        inverse: favour small norms instead of large ones.
        label_column: if given, the budget is split per class and the method runs inside each class.
        seed: seed of the random draw.

    Returns:
        The selected rows with a ``row_id`` column and a ``norm_sampling`` provenance step.

    Example:
        >>> sub = hp.select.norm_sampling(ds, size=100, embedding_column="emb", p=2, seed=0)
        >>> low = hp.select.norm_sampling(ds, fraction=0.1, inverse=True, label_column="label")
    """
    p_value = check_norm_order(p)
    check_choice("mode", mode, _MODES)
    check_bool("inverse", inverse)
    norms = feature_norms(open_matrix(dataset, embedding_column), p_value)

    def pick(rows, k, rng):
        local = norms[rows]
        if mode == "deterministic":
            keys = local if inverse else -local
            return np.argsort(keys, kind="stable")[:k]
        return weighted_sample_without_replacement(norm_weights(local, inverse=bool(inverse)), k, rng)

    params = {
        "embedding_column": embedding_column,
        "p": "inf" if np.isinf(p_value) else p_value,
        "mode": mode,
        "inverse": bool(inverse),
    }
    return run_selection(
        dataset, method="norm_sampling", params=params, fraction=fraction, size=size, seed=seed,
        label_column=label_column, pick=pick,
    )
