"""Coverage-centric Coreset Selection (Zheng et al., ICLR 2023): stratified sampling over a score."""

from __future__ import annotations

import numpy as np
from datasets import Dataset

from ..ops.checks import check_bool, check_positive_int, check_probability
from ..ops.columns import check_columns, read_vector
from ._core import run_selection
from .registry import selector

__all__ = ["ccs", "ccs_allocation", "ccs_strata"]


def ccs_strata(score: np.ndarray, bins: int) -> np.ndarray:
    """Stratum of each score: ``bins`` equal-width intervals over [min, max] (max in the last one).

    All rows fall in stratum 0 when every score is equal.

    Example:
        >>> ccs_strata(np.array([0.0, 0.1, 0.5, 1.0]), 2)
        array([0, 0, 1, 1])
    """
    score = np.asarray(score, dtype=np.float64)
    low, high = score.min(), score.max()
    if high == low:
        return np.zeros(len(score), dtype=np.int64)
    return np.minimum(((score - low) / (high - low) * bins).astype(np.int64), bins - 1)


def ccs_allocation(counts: np.ndarray, budget: int) -> np.ndarray:
    """Per-stratum budgets by the CCS rule (Zheng et al., Alg. 1).

    While strata remain: take the smallest one (ties: the lower stratum), give it
    min(its size, ⌊budget left / strata left⌋), remove it. Small strata are taken whole and their
    unused share is spread over the larger ones; the budget is always met when Σ counts ≥ budget.

    Example:
        >>> ccs_allocation(np.array([1, 10, 3, 10]), 12)
        array([1, 4, 3, 4])
    """
    counts = np.asarray(counts, dtype=np.int64)
    if budget > counts.sum():
        raise ValueError(f"budget {budget} exceeds the {counts.sum()} rows in the strata")
    allocation = np.zeros_like(counts)
    order = [i for i in np.argsort(counts, kind="stable") if counts[i] > 0]
    left = int(budget)
    # One step per stratum (≤ bins), never per row.
    for position, stratum in enumerate(order):
        take = min(int(counts[stratum]), left // (len(order) - position))
        allocation[stratum] = take
        left -= take
    return allocation


@selector(family="score-based", needs=("score_column",))
def ccs(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    score_column: str,
    hard_cutoff: float = 0.0,
    bins: int = 50,
    descending: bool = True,
    label_column: str | None = None,
    seed: int | np.random.Generator = 0,
) -> Dataset:
    r"""Coverage-centric Coreset Selection: drop the hardest rows, then sample evenly across score strata.

    Zheng et al.'s Algorithm 1: (1) remove the ⌊``hard_cutoff``·n⌋ hardest rows (likely label
    noise or outliers; ties by position); (2) split the remaining score range [min, max] into
    ``bins`` equal-width strata; (3) allocate the budget with `ccs_allocation` (repeatedly give the
    smallest non-empty stratum min(its size, an equal share of what is left)); (4) sample each
    stratum's share uniformly without replacement. Per class when ``label_column`` is given
    (cutoff, strata and allocation all inside the class).

    On Ray (``hp.parallel.ray``) each class is one task. The strata are not split into tasks: all of
    them are sampled in one vectorised pass (a sort by score, then one lexsort by stratum and a random
    key), which costs less than shipping the strata to workers, so without ``label_column`` CCS runs
    on the driver and its provenance says why.

    The paper uses AUM (hard = low, ``descending=False``), forgetting or EL2N (hard = high,
    ``descending=True``), 50 strata, and a cutoff tuned per pruning ratio (e.g. 0, 0, 10%, 10%,
    30% for CIFAR-10 at 30/50/70/80/90% pruning, as the DUAL paper reports).

    Args:
        dataset: rows with a scalar score column.
        fraction / size: the kept fraction or number of rows; exactly one.
        score_column: the difficulty score.
        hard_cutoff: fraction of the hardest rows removed first, in [0, 1).
        bins: number of strata (the paper's k = 50).
        descending: ``True`` if higher scores are harder, ``False`` if lower are.
        label_column: split the budget per class and select inside each class.
        seed: seeds the within-stratum sampling.

    Raises:
        ValueError: the cutoff leaves fewer rows than the budget, NaN scores, bad parameters.

    Example:
        >>> ds = hp.score.aum(ds, dynamics_column="dynamics")
        >>> sub = hp.select.ccs(ds, fraction=0.1, score_column="aum", hard_cutoff=0.3, descending=False)
    """
    check_columns(dataset, score_column)
    hard_cutoff = check_probability("hard_cutoff", hard_cutoff)
    if hard_cutoff >= 1:
        raise ValueError(f"`hard_cutoff` must be in [0, 1), got {hard_cutoff}")
    bins = check_positive_int("bins", bins)
    check_bool("descending", descending)
    score = read_vector(dataset, score_column, dtype=np.float64)

    def pick(rows, k, rng):
        local = score[rows]
        n_cut = int(np.floor(hard_cutoff * len(rows)))
        # Hardest first (stable, so ties are cut by position), then keep the rest.
        hardest_first = np.argsort(-local if descending else local, kind="stable")
        pool = np.sort(hardest_first[n_cut:])
        if len(pool) < k:
            raise ValueError(
                f"`hard_cutoff`={hard_cutoff} leaves {len(pool)} of {len(rows)} rows, fewer than the budget {k}"
            )
        strata = ccs_strata(local[pool], bins)
        allocation = ccs_allocation(np.bincount(strata, minlength=bins), k)
        # Uniform sampling inside every stratum at once: order by (stratum, random key), keep
        # each stratum's first `allocation` rows.
        order = np.lexsort((rng.random(len(pool)), strata))
        sorted_strata = strata[order]
        starts = np.searchsorted(sorted_strata, np.arange(bins))
        rank = np.arange(len(pool)) - starts[sorted_strata]
        return pool[order[rank < allocation[sorted_strata]]]

    return run_selection(
        dataset, method="ccs",
        params={"score_column": score_column, "hard_cutoff": hard_cutoff, "bins": bins, "descending": descending},
        fraction=fraction, size=size, seed=seed, label_column=label_column, pick=pick,
        driver_reason=("the strata are sampled in one vectorised pass over the rows (a sort and a lexsort), cheaper "
                       "than sending them to workers; it ran on the driver"),
    )
