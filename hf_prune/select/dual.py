"""DUAL pruning and pruning-ratio-adaptive Beta sampling (Cho et al., Eq. 3–5, App. C Alg. 1).

`dual` keeps the rows with the highest DUAL score; `dual_beta` samples them with probability
∝ Beta(α_r, β_r) pdf of each row's prediction mean × its DUAL score, the Beta moving towards easy
rows as the pruning ratio r grows; `beta_sampling` does the same over any score column.

Scores are columns: `dual` reads ``score_column`` (written by `hf_prune.score.dual`) and
`beta_sampling` reads ``score_column`` plus the prediction mean (``mean_column``, which
``hp.score.dual(..., mean_output_column=...)`` writes, or the dynamics). The one-call forms
(`dual` and `dual_beta` with ``dynamics_column``) compute both with the function behind
`hf_prune.score.dual` (`hf_prune.score.dynamics.score_arrays`, float64, not rounded to a float32
column) and run the same selection.
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset
from scipy.stats import beta as beta_distribution

from ..ops.checks import check_positive_int
from ..ops.columns import check_columns, read_vector
from ..ops.sampling import weighted_sample_without_replacement
from ..score.dynamics import Epochs, prediction_mean, score_arrays
from ._core import resolve_budget, run_selection
from .registry import selector

__all__ = ["dual", "dual_beta", "beta_sampling", "beta_parameters", "beta_weights"]

# Prediction means are clipped into [EPS, 1 − EPS] before the pdf, so rows at exactly 0 or 1
# (saturated float32 probabilities) get the finite density of their neighbourhood, not 0 or inf.
EPS = 1e-6
# β_r is floored here: β_r → 0 (r → 1, or μ_D = 1) is the limit where the Beta piles all its mass
# at 1, i.e. "prefer the easiest rows", which a tiny positive β reproduces with a valid density.
MIN_BETA = 1e-6


def _check_number(name: str, value, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not np.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"`{name}` must be > 0, got {value!r}")
    return float(value)


def beta_parameters(mu_d: float, ratio: float, *, c_d: float = 5.5, C: float = 15.0) -> tuple[float, float]:
    r"""(α_r, β_r) of the ratio-adaptive Beta distribution (Eq. 5 with App. C's +1 on α).

        β_r = C · (1 − μ_D) · (1 − r^{c_D}),   α_r = C − β_r + 1,

    r the pruning ratio (the *pruned* fraction, 1 − |S|/|D|) and μ_D the prediction mean of the
    highest-score rows. The Beta mean α/(α+β) = (C − β_r + 1)/(C + 1) goes from ≈ μ_D at r = 0 to
    1 as r → 1, and stays almost flat for small r because r^{c_D} ≈ 0 there. App. C adds 1 to α_r
    "to keep the pdf stationary at low ratios" (the authors' code uses α = 16 − β with C = 15);
    that is done here. β_r is floored at 1e-6 (r = 1 or μ_D = 1 would make it 0, an invalid
    Beta): the limit of piling the mass on the easiest rows.

    Example:
        >>> a, b = beta_parameters(0.25, 0.9, c_d=5.5, C=15)
        >>> round(a, 3), round(b, 3)
        (11.052, 4.948)
    """
    mu_d = _check_number("mu_d", mu_d, positive=False)
    if not 0 <= mu_d <= 1:
        raise ValueError(f"`mu_d` must be in [0, 1], got {mu_d}")
    ratio = _check_number("ratio", ratio, positive=False)
    if not 0 <= ratio <= 1:
        raise ValueError(f"`ratio` (the pruning ratio) must be in [0, 1], got {ratio}")
    c_d, C = _check_number("c_d", c_d), _check_number("C", C)
    b = max(C * (1.0 - mu_d) * (1.0 - ratio**c_d), MIN_BETA)
    return C - b + 1.0, b


def beta_weights(
    mean: np.ndarray,
    score: np.ndarray,
    *,
    ratio: float,
    c_d: float = 5.5,
    C: float = 15.0,
    anchor_size: int = 10,
) -> np.ndarray:
    """Unnormalised sampling weights φ̃ = Beta(α_r, β_r).pdf(prediction mean) × score (Alg. 1).

    μ_D is the average prediction mean of the ``anchor_size`` highest-score rows (App. C uses the
    10 highest for stability; ties broken by position); all rows when there are fewer.

    Example:
        >>> w = beta_weights(pred_mean, dual_score, ratio=0.9, c_d=5.5, C=15)
    """
    mean = np.asarray(mean, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    anchor_size = check_positive_int("anchor_size", anchor_size)
    top = np.argsort(-score, kind="stable")[:anchor_size]
    a, b = beta_parameters(float(mean[top].mean()), ratio, c_d=c_d, C=C)
    return beta_distribution.pdf(np.clip(mean, EPS, 1 - EPS), a, b) * score


def _pruning_ratio(dataset: Dataset, fraction, size) -> float:
    # The paper's r is the pruned fraction of the whole dataset; per class the same r is used.
    return 1.0 - resolve_budget(len(dataset), fraction=fraction, size=size) / len(dataset)


def _beta_pick(score: np.ndarray, mean: np.ndarray, ratio: float, c_d: float, C: float, anchor_size: int):
    def pick(rows, k, rng):
        weights = beta_weights(mean[rows], score[rows], ratio=ratio, c_d=c_d, C=C, anchor_size=anchor_size)
        return weighted_sample_without_replacement(weights, k, rng)

    return pick


def _beta_selection(dataset: Dataset, *, method: str, params: dict, score: np.ndarray, mean: np.ndarray, c_d, C,
                    anchor_size, fraction, size, label_column, seed) -> Dataset:
    """The Beta sampling selection shared by `dual_beta` and `beta_sampling` (same checks, same draws)."""
    _check_number("c_d", c_d)
    _check_number("C", C)
    check_positive_int("anchor_size", anchor_size)
    ratio = _pruning_ratio(dataset, fraction, size)
    return run_selection(
        dataset, method=method,
        params={**params, "c_d": c_d, "C": C, "anchor_size": anchor_size, "pruning_ratio": ratio},
        fraction=fraction, size=size, seed=seed, label_column=label_column,
        pick=_beta_pick(score, mean, ratio, c_d, C, anchor_size),
    )


def _read_score(dataset: Dataset, score_column: str) -> np.ndarray:
    if not isinstance(dataset, Dataset):
        raise TypeError(f"expected a datasets.Dataset, got {type(dataset).__name__}")
    check_columns(dataset, score_column)
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    return read_vector(dataset, score_column, dtype=np.float64)


@selector(family="seed paper", needs=("dynamics_column",))
def dual(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    score_column: str | None = None,
    dynamics_column: str | None = None,
    window: int | None = None,
    epochs: Epochs = None,
    label_column: str | None = None,
    seed: int | np.random.Generator = 0,
) -> Dataset:
    """Keep the rows with the highest DUAL score (Alg. 1 without β-sampling).

    The score comes from exactly one of two places:

    - ``score_column``: a DUAL column already computed by `hf_prune.score.dual` (read as is; its
      provenance step says how it was made).
    - ``dynamics_column`` (default ``"dynamics"`` when no ``score_column`` is given), ``window``
      (default 10) and ``epochs``: computed here by the function behind `hf_prune.score.dual`
      (Eq. 3–4), in float64.

    Both rank the same numbers; a column holds them rounded to float32, so two rows whose scores
    differ only past float32 precision can swap places at the cut. Deterministic: ties go to the
    lower row position; ``seed`` is only recorded. Per class when ``label_column`` is given.

    Args:
        dataset: rows with a DUAL score column or a dynamics column (struct with ``true_prob`` or a
            plain list column).
        fraction / size: the kept fraction (0 < f ≤ 1) or number of rows; exactly one.
        score_column: the DUAL score column (`ValueError` together with ``dynamics_column``,
            ``window`` or ``epochs``, which only apply to computing it).
        dynamics_column: the dynamics column to compute DUAL from.
        window: J, the sliding-window length.
        epochs: which recorded epochs to use (e.g. ``slice(0, 30)`` for the paper's T = 30).
        label_column: split the budget per class and select inside each class.
        seed: recorded in the provenance.

    Example:
        >>> sub = hp.select.dual(ds, fraction=0.5, dynamics_column="dynamics", window=10)
        >>> ds = hp.score.dual(ds, dynamics_column="dynamics", window=10)   # or: the column first
        >>> sub = hp.select.dual(ds, fraction=0.5, score_column="dual")
    """
    if score_column is not None:
        given = [name for name, value in (("dynamics_column", dynamics_column), ("window", window),
                                          ("epochs", epochs)) if value is not None]
        if given:
            raise ValueError(
                f"pass either `score_column` (a DUAL column from hp.score.dual) or the dynamics to compute it from, "
                f"not both: {', '.join(f'`{name}`' for name in given)} only apply to computing it"
            )
        score = _read_score(dataset, score_column)
        params = {"score_column": score_column}
    else:
        dynamics_column = "dynamics" if dynamics_column is None else dynamics_column
        window = 10 if window is None else window
        score = score_arrays("dual", dataset, dynamics_column=dynamics_column, window=window, epochs=epochs)["score"]
        params = {"dynamics_column": dynamics_column, "window": window, "epochs": epochs}

    def pick(rows, k, rng):
        return np.argsort(-score[rows], kind="stable")[:k]

    return run_selection(
        dataset, method="dual", params=params,
        fraction=fraction, size=size, seed=seed, label_column=label_column, pick=pick,
    )


@selector(family="seed paper", needs=("dynamics_column",))
def dual_beta(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    dynamics_column: str = "dynamics",
    window: int = 10,
    c_d: float = 5.5,
    C: float = 15,
    epochs: Epochs = None,
    anchor_size: int = 10,
    label_column: str | None = None,
    seed: int | np.random.Generator = 0,
) -> Dataset:
    r"""DUAL pruning with pruning-ratio-adaptive Beta sampling (Eq. 5, App. C Alg. 1), in one call.

    For each row: DUAL score (Eq. 3–4) and prediction mean P̄ = (1/T) Σ_t P_t over the epochs
    used. Rows are drawn without replacement with probability ∝ Beta(α_r, β_r).pdf(P̄) × DUAL
    (sequential weighted sampling, as the authors' ``np.random.choice(p=…, replace=False)``),
    where β_r = C(1 − μ_D)(1 − r^{c_D}), α_r = C − β_r + 1 (`beta_parameters`), r = 1 − kept /
    total the pruning ratio of the whole dataset and μ_D the mean P̄ of the ``anchor_size`` = 10
    highest-DUAL rows (App. C). As r grows the Beta moves towards P̄ = 1, so the subset takes in
    more easy rows; at small r it stays near μ_D and the selection follows DUAL.

    The convenience form of two steps: DUAL and P̄ are computed by the function behind
    `hf_prune.score.dual` (in float64), then the selection is `beta_sampling`'s. With the columns
    already written, ``hp.score.dual(ds, mean_output_column="dual_mean")`` then
    ``hp.select.beta_sampling(ds, score_column="dual", mean_column="dual_mean")`` is the same
    selection over float32-rounded values.

    Choices where the paper is silent:
      - per class (``label_column``): μ_D is taken inside each class (classes differ in
        difficulty) and every class uses the global r.
      - rows with zero weight (DUAL = 0, i.e. a constant prediction in every window) are drawn
        only once every positive-weight row is taken, uniformly among themselves; the authors'
        sampler would raise there.
      - prediction means are clipped to [1e-6, 1 − 1e-6] and β_r floored at 1e-6 (r = 1 or
        μ_D = 1), so the pdf is finite and valid.

    Args:
        dataset: rows with a dynamics column.
        fraction / size: the kept fraction 1 − r or number of rows; exactly one.
        dynamics_column, window, epochs: as in `hf_prune.score.dual`.
        c_d: c_D ("dataset simplicity"; paper: 5.5 CIFAR-10, 4 CIFAR-100, 11 ImageNet; ≥ 1
            recommended, any value > 0 accepted).
        C: the Beta concentration (15 in every experiment of the paper).
        anchor_size: how many of the highest-DUAL rows average into μ_D.
        label_column: split the budget per class and sample inside each class.
        seed: seeds the sampling.

    Example:
        >>> sub = hp.select.dual_beta(ds, fraction=0.1, dynamics_column="dynamics", c_d=5.5, C=15)
    """
    values = score_arrays("dual", dataset, dynamics_column=dynamics_column, window=window, epochs=epochs,
                          extras=("mean",))
    return _beta_selection(
        dataset, method="dual_beta", params={"dynamics_column": dynamics_column, "window": window, "epochs": epochs},
        score=values["score"], mean=values["mean"], c_d=c_d, C=C, anchor_size=anchor_size,
        fraction=fraction, size=size, label_column=label_column, seed=seed,
    )


@selector(family="seed paper", needs=("score_column", "dynamics_column"))
def beta_sampling(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    score_column: str,
    mean_column: str | None = None,
    dynamics_column: str | None = None,
    c_d: float = 5.5,
    C: float = 15,
    epochs: Epochs = None,
    anchor_size: int = 10,
    label_column: str | None = None,
    seed: int | np.random.Generator = 0,
) -> Dataset:
    r"""Ratio-adaptive Beta sampling (Eq. 5) over any score column (the paper's App. B.4 / Table 4).

    Weights are Beta(α_r, β_r).pdf(x) × score, with x each row's prediction mean taken from
    exactly one of ``mean_column`` (a scalar column in [0, 1], e.g. the ``mean_output_column`` of
    `hf_prune.score.dual`) or ``dynamics_column`` (the mean true-class probability over
    ``epochs``), and μ_D the mean x of the ``anchor_size`` highest-score rows; everything else as in
    `dual_beta`. The score must be non-negative with higher = more important (DUAL, EL2N,
    forgetting, Dyn-Unc, GraNd, …); flip scores like AUM or margin first. Over a DUAL column and
    its mean column this is `dual_beta` reading columns instead of the dynamics.

    Example:
        >>> ds = hp.score.dual(ds, dynamics_column="dynamics", mean_output_column="dual_mean")
        >>> sub = hp.select.beta_sampling(ds, fraction=0.1, score_column="dual", mean_column="dual_mean")
        >>> ds = hp.score.el2n(ds, dynamics_column="dynamics")
        >>> sub = hp.select.beta_sampling(ds, fraction=0.1, score_column="el2n", dynamics_column="dynamics")
    """
    if (mean_column is None) == (dynamics_column is None):
        raise ValueError("pass exactly one of `mean_column` or `dynamics_column` (the x-axis of the Beta pdf)")
    check_columns(dataset, score_column, mean_column, dynamics_column)
    score = _read_score(dataset, score_column)
    if (score < 0).any():
        raise ValueError(
            f"column {score_column!r} has negative values (min {score.min():.4g}); Beta sampling weights rows "
            "by the score, which must be ≥ 0 with higher = more important"
        )
    if mean_column is not None:
        mean = read_vector(dataset, mean_column, dtype=np.float64)
        if mean.min() < 0 or mean.max() > 1:
            raise ValueError(f"column {mean_column!r} must hold prediction means in [0, 1]")
    else:
        mean = prediction_mean(dataset, dynamics_column=dynamics_column, epochs=epochs)
    return _beta_selection(
        dataset, method="beta_sampling",
        params={"score_column": score_column, "mean_column": mean_column, "dynamics_column": dynamics_column,
                "epochs": epochs},
        score=score, mean=mean, c_d=c_d, C=C, anchor_size=anchor_size,
        fraction=fraction, size=size, label_column=label_column, seed=seed,
    )
