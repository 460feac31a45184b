"""Training-dynamics scores: DUAL, Dyn-Unc, EL2N, forgetting, AUM, entropy, margin, TDDS.

Every score reads the compact per-epoch dynamics record of `hf_prune.dynamics` (a struct column of
fixed-length float32 lists, one value per recorded epoch; a plain fixed-length list column counts
as ``true_prob``) and returns the Dataset with one new float32 column. Nothing here needs the full
T×C probability tensor.

Which end is "important": DUAL, Dyn-Unc, EL2N, forgetting, entropy and TDDS are higher = harder /
more informative (the seed papers keep the highest). AUM and margin are higher = easier (the
literature prunes the *lowest* AUM as likely mislabelled, and "margin" uncertainty sampling keeps
the lowest margins).

``epochs`` selects the recorded epochs a score uses, with NumPy indexing along the epoch axis:
``None`` (all), an int (one epoch; negative counts from the end), a slice, or a list of ints. The
DUAL paper's "computed at epoch T = 30" is ``epochs=slice(0, 30)``.

The eight scores are one table, `SCORES`: each entry names the record fields it reads and its
reducer over epochs, and one body checks the arguments, reads the fields, selects the epochs,
writes the float32 column and records a provenance step ``"score.<name>"`` with its parameters
(`hf_prune.provenance`). `score_arrays` gives the same values as float64 arrays without writing
them; the selectors that score on the fly use it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from datasets import Dataset

from ..dynamics import read_dynamics
from ..ops.checks import check_positive_int
from ..ops.columns import add_column, check_columns, check_new_column
from ..provenance import with_provenance

__all__ = [
    "dual",
    "dyn_unc",
    "el2n",
    "forgetting",
    "aum",
    "entropy",
    "margin",
    "tdds",
    "score_arrays",
    "prediction_mean",
    "SCORES",
    "DynamicsScore",
    "dual_from_probs",
    "dyn_unc_from_probs",
    "tdds_from_kl",
    "epoch_index",
    "select_epochs",
]

# Rows per block for the windowed scores: bounds the float64 work arrays to CHUNK × windows and
# keeps them cache-sized (4× faster than 64k-row blocks at T = 60).
CHUNK = 1 << 13
Epochs = int | slice | Sequence[int] | None
Reducer = Callable[..., np.ndarray]


# --------------------------------------------------------------------------- helpers


def epoch_index(total: int, epochs: Epochs, *, name: str = "epochs") -> np.ndarray:
    """Positions (into ``total`` recorded epochs) that ``epochs`` selects, in order (NumPy indexing).

    Raises `ValueError` naming ``name`` for an out-of-range index, a bad type or an empty selection.
    """
    every = np.arange(total)
    if epochs is None:
        return every
    if isinstance(epochs, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be None, an int, a slice or a list of ints, got {epochs!r}")
    if isinstance(epochs, (int, np.integer)):
        if not -total <= epochs < total:
            raise ValueError(f"`{name}`={epochs} is out of range for {total} recorded epochs")
        return every[[int(epochs)]]
    if isinstance(epochs, slice):
        index = every[epochs]
    elif isinstance(epochs, Sequence) and not isinstance(epochs, str):
        index = np.asarray(epochs)
        if index.ndim != 1 or (len(index) and not np.issubdtype(index.dtype, np.integer)):
            raise ValueError(f"`{name}` must be a list of integer epoch indices, got {epochs!r}")
        if len(index) and (index.min() < -total or index.max() >= total):
            raise ValueError(f"`{name}`={list(epochs)} is out of range for {total} recorded epochs")
        index = every[index.astype(np.int64)]
    else:
        raise ValueError(f"`{name}` must be None, an int, a slice or a list of ints, got {epochs!r}")
    if len(index) == 0:
        raise ValueError(f"`{name}`={epochs!r} selects no epoch out of {total} recorded")
    return index


def select_epochs(values: np.ndarray, epochs: Epochs, *, name: str = "epochs") -> np.ndarray:
    """Columns ``epochs`` of an ``(N, T)`` per-epoch array (see `epoch_index`); always 2-d."""
    if epochs is None:
        return values
    return values[:, epoch_index(values.shape[1], epochs, name=name)]


def _check_window(window, epochs: int, *, minimum: int = 2) -> int:
    window = check_positive_int("window", window, minimum=minimum)
    if window > epochs:
        raise ValueError(f"`window`={window} is larger than the number of recorded epochs used ({epochs})")
    return int(window)


def _check_probabilities(values: np.ndarray, column: str) -> None:
    low, high = float(values.min()), float(values.max())
    if low < -1e-6 or high > 1 + 1e-6:
        raise ValueError(
            f"column {column!r} holds values in [{low:.4g}, {high:.4g}]; expected true-class probabilities in [0, 1]"
        )


def _window_moments(block: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sum of squared deviations of every length-``window`` window of each row.

    Returns two ``(n, T-J+1)`` arrays. Loops over the J offsets inside a window (J is small), each
    step one vectorised in-place pass over ``n × (T-J+1)``; the two-pass form keeps tiny variances
    exact where a running sum of squares would cancel.
    """
    count = block.shape[1] - window + 1
    mean = block[:, :count].copy()
    for j in range(1, window):
        mean += block[:, j : j + count]
    mean /= window
    ssq = np.zeros_like(mean)
    deviation = np.empty_like(mean)
    for j in range(window):
        np.subtract(block[:, j : j + count], mean, out=deviation)
        deviation *= deviation
        ssq += deviation
    return mean, ssq


# --------------------------------------------------------------------------- array-level scores


def dual_from_probs(true_prob: np.ndarray, window: int) -> np.ndarray:
    """DUAL (Eq. 3–4) of an ``(N, T)`` array of true-class probabilities: ``(N,)`` float64.

    DUAL = mean over the T−J+1 windows k of (1 − P̄_k) · std_k, std with the 1/(J−1) normaliser.
    """
    true_prob = np.asarray(true_prob)
    window = _check_window(window, true_prob.shape[1])
    out = np.empty(len(true_prob))
    for start in range(0, len(true_prob), CHUNK):
        mean, ssq = _window_moments(true_prob[start : start + CHUNK].astype(np.float64), window)
        out[start : start + CHUNK] = ((1.0 - mean) * np.sqrt(ssq / (window - 1))).mean(axis=1)
    return out


def dyn_unc_from_probs(true_prob: np.ndarray, window: int) -> np.ndarray:
    """Dyn-Unc (Eq. 1–2) of an ``(N, T)`` array of true-class probabilities: mean window std."""
    true_prob = np.asarray(true_prob)
    window = _check_window(window, true_prob.shape[1])
    out = np.empty(len(true_prob))
    for start in range(0, len(true_prob), CHUNK):
        _, ssq = _window_moments(true_prob[start : start + CHUNK].astype(np.float64), window)
        out[start : start + CHUNK] = np.sqrt(ssq / (window - 1)).mean(axis=1)
    return out


def tdds_from_kl(kl_to_previous: np.ndarray, window: int, decay: float) -> np.ndarray:
    """TDDS of an ``(N, T)`` array whose column t holds KL(p_t ‖ p_{t−1}) (column 0 is never used).

    For each window k = 0 … T−J of epochs [k, k+J−1], R_k = ‖Δ_k − mean(Δ_k)‖₂ over its J−1
    divergences Δ_k = (KL_{k+1}, …, KL_{k+J−1}); the score is Σ_k decay·(1−decay)^{T−J−k}·R_k.
    """
    kl = np.asarray(kl_to_previous)
    window = _check_window(window, kl.shape[1], minimum=3)
    if isinstance(decay, bool) or not isinstance(decay, (int, float, np.floating, np.integer)) or not 0 < decay <= 1:
        raise ValueError(f"`decay` must be a number in (0, 1], got {decay!r}")
    count = kl.shape[1] - window + 1
    weights = float(decay) * (1.0 - float(decay)) ** np.arange(count - 1, -1, -1, dtype=np.float64)
    out = np.empty(len(kl))
    for start in range(0, len(kl), CHUNK):
        # Window k of J epochs holds the J−1 divergences of epochs k+1 … k+J−1.
        _, ssq = _window_moments(kl[start : start + CHUNK, 1:].astype(np.float64), window - 1)
        out[start : start + CHUNK] = np.sqrt(ssq) @ weights
    return out


# --------------------------------------------------------------------------- the table of scores
#
# Every Dataset-level score below is one row of `SCORES`: the record fields it reads and a reducer
# over the selected epochs. One body (`_score`) does the rest for all of them: validation, reading,
# the epochs selection, the output column(s) and the provenance step.


def _mean(name: str) -> Reducer:
    def reduce(arrays: dict[str, np.ndarray]) -> np.ndarray:
        return arrays[name].mean(axis=1, dtype=np.float64)

    return reduce


def _forgetting_events(arrays: dict[str, np.ndarray]) -> np.ndarray:
    correct = arrays["correct"] > 0.5
    events = (correct[:, :-1] & ~correct[:, 1:]).sum(axis=1).astype(np.float64)
    events[~correct.any(axis=1)] = correct.shape[1]
    return events


def _margin(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return (arrays["true_prob"] - arrays["max_other_prob"]).mean(axis=1, dtype=np.float64)


@dataclass(frozen=True)
class DynamicsScore:
    """One dynamics score: the record ``fields`` it reads and ``reduce(arrays, **params)`` over epochs.

    ``arrays`` maps each field to its ``(N, T')`` float32 array over the selected epochs; ``reduce``
    returns the ``(N,)`` float64 score. ``probabilities``: the ``true_prob`` values are checked to lie
    in [0, 1]. ``consecutive``: the epochs used must be consecutive and in order (a per-epoch value
    that refers to the previous recorded epoch). ``extras``: further reducers a caller may write as
    additional columns (``{"mean": ...}`` is DUAL's prediction mean P̄, which Beta sampling needs).
    """

    name: str
    fields: tuple[str, ...]
    reduce: Reducer
    probabilities: bool = False
    consecutive: bool = False
    extras: dict[str, Reducer] = field(default_factory=dict)


SCORES: dict[str, DynamicsScore] = {
    spec.name: spec
    for spec in (
        DynamicsScore("dual", ("true_prob",), lambda a, window: dual_from_probs(a["true_prob"], window),
                      probabilities=True, extras={"mean": _mean("true_prob")}),
        DynamicsScore("dyn_unc", ("true_prob",), lambda a, window: dyn_unc_from_probs(a["true_prob"], window),
                      probabilities=True),
        DynamicsScore("el2n", ("el2n",), _mean("el2n")),
        DynamicsScore("forgetting", ("correct",), _forgetting_events),
        DynamicsScore("aum", ("logit_margin",), _mean("logit_margin")),
        DynamicsScore("entropy", ("entropy",), _mean("entropy")),
        DynamicsScore("margin", ("true_prob", "max_other_prob"), _margin),
        DynamicsScore("tdds", ("kl_to_previous",),
                      lambda a, window, decay: tdds_from_kl(a["kl_to_previous"], window, decay), consecutive=True),
    )
}


def _read(dataset: Dataset, column: str, spec: DynamicsScore, epochs: Epochs) -> dict[str, np.ndarray]:
    if not isinstance(dataset, Dataset):
        raise TypeError(f"expected a datasets.Dataset, got {type(dataset).__name__}")
    check_columns(dataset, column)
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    arrays = read_dynamics(dataset, column, spec.fields)
    if epochs is None:
        return arrays
    index = epoch_index(next(iter(arrays.values())).shape[1], epochs)
    # A value recorded relative to the previous *recorded* epoch (TDDS's KL) needs consecutive epochs.
    if spec.consecutive and (np.diff(index) != 1).any():
        raise ValueError(f"`epochs`={epochs!r} must select consecutive epochs in order for {spec.name.upper()}")
    return {name: values[:, index] for name, values in arrays.items()}


def score_arrays(
    method: str,
    dataset: Dataset,
    *,
    dynamics_column: str = "dynamics",
    epochs: Epochs = None,
    extras: Sequence[str] = (),
    **params,
) -> dict[str, np.ndarray]:
    """The float64 values the dynamics score ``method`` (a key of `SCORES`) writes, as arrays.

    Returns ``{"score": (N,), **{extra: (N,)}}``; the Dataset-level functions (`dual`, `el2n`, ...)
    store exactly these as float32 columns. Selectors that score on the fly (``hp.select.dual`` and
    ``dual_beta`` with ``dynamics_column=``) call this, so both routes run the same computation.

    Example:
        >>> values = score_arrays("dual", ds, dynamics_column="dynamics", window=10, extras=("mean",))
        >>> values["score"].shape == values["mean"].shape == (len(ds),)
        True
    """
    spec = SCORES[method]
    arrays = _read(dataset, dynamics_column, spec, epochs)
    if spec.probabilities:
        _check_probabilities(arrays["true_prob"], dynamics_column)
    values = {"score": spec.reduce(arrays, **params)}
    for extra in extras:
        values[extra] = spec.extras[extra](arrays)
    return values


def prediction_mean(dataset: Dataset, *, dynamics_column: str = "dynamics", epochs: Epochs = None) -> np.ndarray:
    """Each row's mean true-class probability P̄ over ``epochs``, ``(N,)`` float64 (DUAL's ``"mean"``).

    The x-axis of DUAL's Beta sampling; ``hp.score.dual(..., mean_output_column=...)`` writes it.

    Example:
        >>> prediction_mean(ds, dynamics_column="dynamics", epochs=slice(0, 30)).shape == (len(ds),)
        True
    """
    spec = SCORES["dual"]
    arrays = _read(dataset, dynamics_column, spec, epochs)
    _check_probabilities(arrays["true_prob"], dynamics_column)
    return spec.extras["mean"](arrays)


def _score(
    method: str,
    dataset: Dataset,
    *,
    dynamics_column: str,
    epochs: Epochs,
    output_column: str,
    overwrite: bool,
    extra_columns: dict[str, str | None] | None = None,
    **params,
) -> Dataset:
    """The one body of every dynamics score: check, compute (`score_arrays`), write, record."""
    extra_columns = {key: name for key, name in (extra_columns or {}).items() if name is not None}
    outputs = [output_column, *extra_columns.values()]
    if len(set(outputs)) != len(outputs):
        raise ValueError(f"the output columns must be distinct, got {outputs}")
    for name in outputs:
        check_new_column(dataset, name, overwrite)
    values = score_arrays(method, dataset, dynamics_column=dynamics_column, epochs=epochs,
                          extras=tuple(extra_columns), **params)
    result = add_column(dataset, output_column, values["score"], overwrite=overwrite)
    for key, name in extra_columns.items():
        result = add_column(result, name, values[key], overwrite=overwrite)
    recorded = {"dynamics_column": dynamics_column, **params, "epochs": epochs, "output_column": output_column,
                **{f"{key}_output_column": name for key, name in extra_columns.items()}}
    return with_provenance(result, dataset, method=f"score.{method}", params=recorded)


# --------------------------------------------------------------------------- Dataset-level scores


def dual(
    dataset: Dataset,
    *,
    dynamics_column: str = "dynamics",
    window: int = 10,
    epochs: Epochs = None,
    output_column: str = "dual",
    mean_output_column: str | None = None,
    overwrite: bool = False,
) -> Dataset:
    r"""Add the DUAL score (Difficulty and Uncertainty-Aware Lightweight; Cho et al., Eq. 3–4).

    With P_t the true-class probability at recorded epoch t = 1 … T and J = ``window``:

        P̄_k = (1/J) Σ_{j<J} P_{k+j},   U_k = sqrt( Σ_{j<J} (P_{k+j} − P̄_k)² / (J−1) ),
        DUAL = 1/(T−J+1) · Σ_{k=1}^{T−J+1} (1 − P̄_k) · U_k.

    Higher = more important (DUAL keeps the highest). The paper computes it early in training
    (T = 30 on CIFAR, 60 on ImageNet, J = 10): record T epochs or pass ``epochs=slice(0, T)``.
    The authors' code multiplies U_k by 10; that constant does not change any ranking and is left
    out here so the values are exactly Eq. 3–4.

    DUAL's Beta sampling (`hf_prune.select.beta_sampling`, App. C Alg. 1) also needs each row's
    prediction mean P̄ = (1/T) Σ_t P_t over the same epochs: ``mean_output_column`` writes it as a
    second float32 column, so the selection can read both columns instead of the dynamics.

    Args:
        dataset: rows with a dynamics column (struct with ``true_prob``, or a plain list column of
            true-class probabilities).
        dynamics_column: that column.
        window: J, the sliding-window length (≥ 2; `ValueError` when larger than the epochs used).
        epochs: which recorded epochs to use (see the module docstring); all by default.
        output_column: the new float32 column.
        mean_output_column: also write P̄ to this float32 column (``None``: not written).
        overwrite: replace existing output columns.

    Example:
        >>> ds = hp.score.dual(ds, dynamics_column="dynamics", window=10, epochs=slice(0, 30),
        ...                    mean_output_column="dual_mean")
        >>> sub = hp.select.dual(ds, fraction=0.1, score_column="dual")
        >>> sub = hp.select.beta_sampling(ds, fraction=0.1, score_column="dual", mean_column="dual_mean")
    """
    return _score("dual", dataset, dynamics_column=dynamics_column, epochs=epochs, output_column=output_column,
                  overwrite=overwrite, extra_columns={"mean": mean_output_column}, window=window)


def dyn_unc(
    dataset: Dataset,
    *,
    dynamics_column: str = "dynamics",
    window: int = 10,
    epochs: Epochs = None,
    output_column: str = "dyn_unc",
    overwrite: bool = False,
) -> Dataset:
    r"""Add the Dynamic Uncertainty score (He et al., CVPR 2024; DUAL paper Eq. 1–2).

        U = 1/(T−J+1) · Σ_k sqrt( Σ_{j<J} (P_{k+j} − P̄_k)² / (J−1) ),

    the mean over sliding windows of the sample std of the true-class probability. Higher = more
    uncertain = kept. He et al. compute it over the whole training run with J = 10.

    Example:
        >>> ds = hp.score.dyn_unc(ds, dynamics_column="dynamics", window=10)
    """
    return _score("dyn_unc", dataset, dynamics_column=dynamics_column, epochs=epochs, output_column=output_column,
                  overwrite=overwrite, window=window)


def el2n(
    dataset: Dataset,
    *,
    dynamics_column: str = "dynamics",
    epochs: Epochs = None,
    output_column: str = "el2n",
    overwrite: bool = False,
) -> Dataset:
    r"""Add EL2N (Paul et al., 2021): the error L2 norm ‖softmax(f(x)) − onehot(y)‖₂.

    Averaged over the selected ``epochs`` (all recorded epochs by default). Paul et al. take it at
    one early epoch (e.g. 20) averaged over several independent runs: use ``epochs=19`` for the
    snapshot, and average the columns of several runs yourself. Higher = harder = kept.

    Example:
        >>> ds = hp.score.el2n(ds, dynamics_column="dynamics", epochs=19)
    """
    return _score("el2n", dataset, dynamics_column=dynamics_column, epochs=epochs, output_column=output_column,
                  overwrite=overwrite)


def forgetting(
    dataset: Dataset,
    *,
    dynamics_column: str = "dynamics",
    epochs: Epochs = None,
    output_column: str = "forgetting",
    overwrite: bool = False,
) -> Dataset:
    r"""Add the number of forgetting events (Toneva et al., 2019).

    A forgetting event is a recorded epoch t where the sample is classified correctly and at
    t + 1 it is not (``correct`` 1 → 0). Samples never classified correctly in any selected epoch
    get the conventional "unforgettable in reverse" maximum: T, the number of selected epochs —
    more than any learned sample can reach (at most ⌊T/2⌋ events), so they rank hardest.
    Predictions are those recorded once per epoch (Toneva et al. track every mini-batch
    presentation; per-epoch records are the usual approximation). Higher = harder = kept;
    samples with 0 events are the "unforgettable" ones the paper prunes first.

    Example:
        >>> ds = hp.score.forgetting(ds, dynamics_column="dynamics")
    """
    return _score("forgetting", dataset, dynamics_column=dynamics_column, epochs=epochs,
                  output_column=output_column, overwrite=overwrite)


def aum(
    dataset: Dataset,
    *,
    dynamics_column: str = "dynamics",
    epochs: Epochs = None,
    output_column: str = "aum",
    overwrite: bool = False,
) -> Dataset:
    r"""Add the Area Under the Margin (Pleiss et al., 2020): the mean over epochs of the logit margin.

        AUM = (1/T) Σ_t ( z_{t,y} − max_{c≠y} z_{t,c} ).

    Higher = easier; low or negative AUM flags hard or mislabelled samples, which AUM pruning
    removes first (select the highest AUM to prune the lowest, or use it as CCS's difficulty
    with ``descending=False``).

    Example:
        >>> ds = hp.score.aum(ds, dynamics_column="dynamics")
    """
    return _score("aum", dataset, dynamics_column=dynamics_column, epochs=epochs, output_column=output_column,
                  overwrite=overwrite)


def entropy(
    dataset: Dataset,
    *,
    dynamics_column: str = "dynamics",
    epochs: Epochs = None,
    output_column: str = "entropy",
    overwrite: bool = False,
) -> Dataset:
    r"""Add the prediction entropy −Σ_c p_c log p_c (Coleman et al., 2020), averaged over ``epochs``.

    Coleman et al. use the entropy at the end of training: pass ``epochs=-1``. Higher = more
    uncertain = kept.

    Example:
        >>> ds = hp.score.entropy(ds, dynamics_column="dynamics", epochs=-1)
    """
    return _score("entropy", dataset, dynamics_column=dynamics_column, epochs=epochs, output_column=output_column,
                  overwrite=overwrite)


def margin(
    dataset: Dataset,
    *,
    dynamics_column: str = "dynamics",
    epochs: Epochs = None,
    output_column: str = "margin",
    overwrite: bool = False,
) -> Dataset:
    r"""Add the probability margin p_y − max_{c≠y} p_c, averaged over ``epochs``.

    Sign convention (as AUM's, on probabilities): higher = easier, confidently correct samples;
    negative = misclassified. The margin-uncertainty literature keeps the *lowest* margins, so
    select with the lowest values (or negate the column) to keep hard samples.

    Example:
        >>> ds = hp.score.margin(ds, dynamics_column="dynamics", epochs=-1)
    """
    return _score("margin", dataset, dynamics_column=dynamics_column, epochs=epochs, output_column=output_column,
                  overwrite=overwrite)


def tdds(
    dataset: Dataset,
    *,
    dynamics_column: str = "dynamics",
    window: int = 10,
    decay: float = 0.9,
    epochs: Epochs = None,
    output_column: str = "tdds",
    overwrite: bool = False,
) -> Dataset:
    r"""Add Temporal Dual-Depth Scoring (Zhang et al., CVPR 2024).

    First depth: each epoch's contribution of a sample is the divergence of its prediction from
    the previous epoch, Δ_t = KL(p_t ‖ p_{t−1}) (the recorded ``kl_to_previous``). Second depth:
    within each sliding window k = 0 … T−J of J epochs [k, k+J−1] the variability of its J−1
    contributions, R_k = ‖Δ_{k+1…k+J−1} − mean‖₂, and an exponential moving average across
    windows that favours the latest:

        TDDS = Σ_{k=0}^{T−J} decay · (1 − decay)^{T−J−k} · R_k.

    This is the authors' released formula (J = 10 and decay 0.9 by default; they tune the number
    of epochs T per pruning ratio, e.g. ``epochs=slice(0, 70)``). One difference: their Δ_t is
    Σ_c |p_{t,c} log(p_{t,c}/p_{t−1,c})|, which needs the full class vectors; the compact record
    keeps the signed sum, the KL divergence itself (equal when every term has one sign, and
    ≤ theirs otherwise). Higher = more important = kept. ``window`` must be ≥ 3 (with J = 2 a
    window holds a single divergence and has no spread) and ``epochs`` must be consecutive.

    Example:
        >>> ds = hp.score.tdds(ds, dynamics_column="dynamics", window=10, decay=0.9)
    """
    return _score("tdds", dataset, dynamics_column=dynamics_column, epochs=epochs, output_column=output_column,
                  overwrite=overwrite, window=window, decay=decay)
