"""InfoMax (Tan et al., ICLR 2025): data pruning as a quadratic program over scores and similarities.

The selection maximises the set information of Eq. 2,

    max_{X ∈ {0,1}^N, ΣX = p}   Σ_z X_z I_z − α Σ_{z,s} K_zs X_z X_s,

where ``I`` is a per-sample score (any score column) and ``K`` holds inner products of an embedding
column, sparsified to each row's ``k`` nearest neighbours (Sec. 3.2). The binary constraint is
relaxed to ``X ∈ [0,1]^N, ΣX = p`` and solved by the proximal-gradient iteration of App. D.1
(Eq. 8–13), after which the ``p`` largest entries of ``X^T`` are kept (Alg. 1). The data set can be
cut into ``d`` random parts solved independently (Alg. 1, "dataset partition").

Choices where the paper is ambiguous or degenerate (each one is tested):

* **The scale of X and the update.** Eq. 3 writes ``X ← Softmax(p·I − 2pα·K X)``, which sums to 1,
  while the relaxed problem (Eq. 7) has ``ΣX = p`` and Sec. 3.2 relaxes to ``[0, 1]^N``. Taken
  literally the logits ``p·I`` put 99 % of the mass on far fewer than ``p`` rows (a single row
  for N = 5000 at 5–30 % budgets in our runs), so ``X`` stops being a selection probability and
  ``K X`` only penalises the neighbours of those few rows, not of the selected set.
  Re-deriving App. D.1 on the stated domain: the sub-problem (Eq. 8) is
  ``min −Xᵀg + λ·h(X/p) + (1/β)·KL(X/p ‖ Xᵗ/p)`` with ``g = I − 2αK Xᵗ`` the gradient of Eq. 7,
  ``h`` the negative entropy, over ``{0 ≤ X ≤ 1, ΣX = p}``. Its solution is

      X^{t+1} = min(1, exp(ℓ + c)),   ℓ = (η·g + log Xᵗ) / (1 + η·τ),   c such that ΣX = p,

  with temperature ``τ = λ/p`` and step ``η = pβ``. Without the upper bound this is exactly
  ``p · Softmax(ℓ)``; ``β → ∞`` gives ``ℓ = g/τ``, and with the paper's ``λ = 1`` that is
  ``ℓ = p·I − 2pα·K X`` — Eq. 3/13, now with ``X`` on the ``ΣX = p`` scale and capped at 1, so
  ``X_z`` keeps its meaning of a selection probability and never saturates to one-hot.
  ``temperature=None`` uses the paper's ``λ = 1`` (``τ = 1/p``).
* **The step (proximal weight β).** The paper sets ``β → ∞`` (no proximal term). That undamped
  fixed-point iteration oscillates between complementary sets: on sklearn digits its final top-p
  fell below top-k by score, and in several settings below random selection, on the Eq. 2 objective
  (e.g. SSP scores, k = 5, α = 0.3, 30–50 % budgets). We keep the proximal term of Eq. 8 with a
  normalised step ``η_t = step_size / std(g^t)`` (the gradient's spread); on the same data that was
  on par with a greedy maximiser of Eq. 2 on average over α ∈ [0.1, 3], k ∈ {5, 20} and budgets
  5–50 %, and above top-k and random everywhere. ``step_size=None`` restores the ``β → ∞`` update.
* **Scores.** ``I`` is min-max normalised to ``[0, 1]`` over the whole column (``normalize_scores``),
  so ``α`` (recommended 0.3–4, Sec. 4.4) weighs the same against any score (EL2N, SSP, CLIP, LESS)
  and cosine similarities in ``[−1, 1]``. The paper does not state a normalisation.
* **K.** Inner products of the embeddings, L2-normalised first (``metric="cosine"``, the default: a
  scale-free choice; ``metric="ip"`` takes the raw inner products). The diagonal is dropped (the derivation in Sec. 3.3/Eq. 5 sums over
  ``z ≠ s``; for cosine and binary ``X`` it is the constant ``α·p``). The k-NN sparsified ``K`` is
  not symmetric; we use ``(K + Kᵀ)/2``, which leaves the objective ``XᵀKX`` unchanged and makes
  ``2αK X`` in Eq. 3 the exact gradient.
* **Dense K.** ``kernel="dense"`` uses every pair (Eq. 2 without sparsification) and is allowed up
  to ``DENSE_MAX_ROWS = 4096`` rows per solved group (a float64 N×N matrix of 128 MiB);
  ``kernel="auto"`` takes it for groups up to that size and the k-NN ``K`` above. With
  ``k = N − 1`` both give the same ``K``.
* **Initial point.** ``X⁰ = p/N`` everywhere (Alg. 1's uniform ``1/N`` on the ``ΣX = p`` scale).
* **Ranking.** The kept rows are the top-``p`` of the last logits ``ℓ`` (``X^T`` is a monotone
  function of them that ties at the cap 1); remaining ties go to the lower row index.
* **Partitions.** ``partitions=d`` shuffles each class (or the whole set) with the seeded
  generator, splits it into ``d`` near-equal parts, gives each part ``split_budget`` of the budget
  (largest remainders), builds its own ``I``/``K`` and solves it independently (Alg. 1).
* **Hard cutoff (our addition).** With a hardest-first ``I`` (EL2N, forgetting, GraNd, entropy) and
  a small budget, Eq. 2's optimum is mostly the hardest rows: the redundancy term only penalises
  pairs of k-NN neighbours, so hard rows that are not each other's neighbours cost nothing, and run
  globally the selection also piles into the hardest classes. ``hard_cutoff=β`` first removes the
  ``⌊β·n⌋`` highest-scoring rows of each class (of all rows without ``label_column``), with
  CCS's rule (`infomax_hard_cut`), and solves on the rest; ``normalize_scores`` then min-maxes
  over the rows left, so ``α`` keeps its weight. The removed rows are never kept, and a cutoff that
  leaves a group fewer rows than its budget is an error. The partitions split the rows left.

Parallel partitions (the paper runs its CC12M parts on 16 GPUs, App. B.2). The partitions of a group are
independent problems, so they can be solved anywhere; the rows kept depend only on the data, ``seed``
and ``partitions``, never on where or how many at a time the parts were solved:

* ``workers=n`` solves the parts of each group on a local pool of ``n`` spawned processes (CPU only),
  each limited to ``cores // n`` torch, BLAS and faiss threads so the pool does not oversubscribe the
  machine. The parent copies each part's rows once into one shared-memory block (the column's size in
  all, no pickling of embeddings); a task carries only its slice bounds, scores and budget. Where
  ``/dev/shm`` has too little room for the block (64 MiB in a default Docker container) the rows are
  pickled to the workers instead, at most two parts per worker in flight.
* Under ``torch.distributed`` (``accelerate launch``, ``torchrun``; any backend with
  ``all_gather_object``, e.g. gloo on CPU) rank ``r`` of ``W`` solves parts ``r, r + W, …`` of each group
  and the picks are gathered, so every rank returns the same Dataset (rows and fingerprint; only the
  rank's own ``read_s``, ``pool_start_s`` and ``wall_s`` differ in its stage times). ``distributed=False`` solves
  everything on each rank instead. Every rank must make the same call (the groups and parts are the
  same on every rank since they depend only on the data and ``seed``). Both can be combined.
* Inside ``with hp.parallel.ray(...)`` (`hf_prune.parallel`) the work goes to Ray tasks, one of two ways:

  - per class (``label_column`` with more than one class to pick from): each class is one task, as for
    every selector (`hf_prune.select._core.run_selection`), and its parts are solved in that task, one
    after another;
  - one group (no ``label_column``) split into ``partitions > 1``: each part is one task
    (`solve_infomax_part`), at most the executor's ``workers`` at once. The driver gathers a part's
    rows from the column and puts them into the object store when its task is submitted, so the store
    holds at most ``workers`` parts and no task reads the column. A group of one part (``partitions=1``)
    is one global problem with nothing to split and is solved on the driver.

  Each task holds ``cpus_per_task`` CPUs (and as many torch, BLAS and faiss threads); a task whose worker
  dies is re-run by Ray up to ``max_retries`` times, and one that still fails ends the call with
  `hf_prune.parallel.ray_executor.TaskFailed` naming its class or its part and row count. Ray's tasks
  hold CPUs only, so the parts are solved on the CPU (an explicit GPU ``device`` is an error), and
  ``workers`` of this call is ignored with a log line (the executor's ``workers`` decides). The rows are
  those of the one-process call either way. The step's ``"executor"`` record (`RayExecutor.record`:
  workers, nodes, CPUs; ``split``/``tasks``/``reason`` from the per-class runner) gets
  ``infomax_parts`` (parts solved on Ray) and ``infomax_part_tasks`` (parts that were a task each).

Stage times (App. B.2 reports its kernel and solve stages separately): the step recorded by
`hf_prune.provenance` carries ``stage_times`` next to its ``params`` (measured facts stay out of the
replayable parameters): ``read_s`` (gathering the parts' embedding rows), ``pool_start_s`` (starting
the ``workers``: an interpreter and the imports each, a few seconds; ``0`` on Ray, whose workers belong
to the cluster), ``share_s`` (putting the parts' rows into Ray's object store), ``kernel_s`` (normalising and
the k-NN search that builds ``K``) and ``solve_s`` (the iteration and the top-``p``), each summed over
the parts (on parallel workers more than the time they took: compare ``wall_s``, the whole call),
with the largest part's as ``kernel_s_max``/``solve_s_max``; ``backend`` (``"in_process"``,
``"process_pool"`` or ``"ray"``), ``workers``, ``worker_threads``, ``transport`` (``"shared_memory"``,
``"pickle"``, ``"object_store"`` on Ray, or ``None`` in process), ``world_size``, ``parts``
and, for at most `STAGE_TIMES_PARTS` parts, one record per part. The same numbers are logged (logger
``hf_prune.select.infomax``: INFO for the totals, DEBUG per part).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from datasets import Dataset
from threadpoolctl import threadpool_limits

from ..ops.checks import (
    check_bool,
    check_choice,
    check_nonnegative,
    check_optional_positive,
    check_positive_int,
    check_probability,
)
from ..ops.columns import check_columns, class_groups, read_vector
from ..ops.deprecation import renamed
from ..ops.device import resolve_device
from ..ops.faiss_import import faiss_available, import_faiss
from ..ops.knn import knn, neighbour_pairs, normalize_rows
from ..ops.matrix import open_matrix
from ..ops.threads import small_step_threads
from ..parallel import current_executor
from ..provenance import provenance, with_measurements
from ._core import run_selection, split_budget
from ._knn_step import KnnLog, check_knn_index, with_knn_record
from .registry import selector

__all__ = [
    "infomax", "infomax_kernel", "infomax_solve", "infomax_objective", "infomax_hard_cut", "DENSE_MAX_ROWS",
    "STAGE_TIMES_PARTS",
]

logger = logging.getLogger(__name__)

DENSE_MAX_ROWS = 4096
# Parts listed one by one in the recorded stage times; beyond this only the totals (the step lives in
# the dataset's description and card, which must stay small for 1,000 classes × 10 parts).
STAGE_TIMES_PARTS = 256
_KERNELS = ("sparse", "dense", "auto")
_METRICS = ("cosine", "ip")


@selector(family="seed paper", needs=("score_column", "embedding_column"), device=True)
def infomax(
    dataset: Dataset,
    *,
    fraction: float | None = None,
    size: int | None = None,
    score_column: str,
    embedding_column: str = "emb",
    k: int = 5,
    alpha: float = 0.3,
    iterations: int = 20,
    partitions: int = 1,
    hard_cutoff: float = 0.0,
    kernel: str = "sparse",
    metric: str = "cosine",
    normalize_scores: bool = True,
    temperature: float | None = None,
    step_size: float | None = 1.0,
    knn_index: str = "auto",
    label_column: str | None = None,
    seed: int | np.random.Generator = 0,
    workers: int = 1,
    distributed: bool = True,
    device: str | torch.device | None = None,
    normalize: bool | None = None,
) -> Dataset:
    """Keep the rows that maximise InfoMax's set information (score minus pairwise redundancy).

    Solves Eq. 2 of the paper, ``max Σ I_z X_z − α Σ K_zs X_z X_s`` with ``ΣX = p``, by the relaxed
    proximal iteration of App. D.1 and keeps the top-``p`` of ``X^T``. See the module docstring for
    the exact update and the choices made where the paper is ambiguous.

    Args:
        dataset: the input Dataset (not modified).
        fraction / size: kept fraction in (0, 1] or number of rows; exactly one.
        score_column: per-row score ``I`` (higher = more informative), e.g. EL2N, SSP, CLIP score.
        embedding_column: fixed-length embedding column whose inner products give ``K``.
        k: neighbours kept per row in the sparsified ``K`` (paper: 5).
        alpha: weight of the redundancy term (paper: 0.3).
        iterations: solver iterations ``T`` (paper: 20).
        partitions: number ``d`` of random parts solved independently (paper: 1; 10 on CC12M).
        hard_cutoff: share of the highest-scoring (hardest) rows removed before solving, in [0, 1),
            as CCS's ``hard_cutoff`` (see "Hard cutoff" below). ``0`` (default) keeps every row.
        kernel: ``"sparse"`` (k-NN ``K``), ``"dense"`` (all pairs, at most ``DENSE_MAX_ROWS`` rows
            per solved group) or ``"auto"`` (dense for groups up to that size).
        metric: ``"cosine"`` (default: embeddings L2-normalised first, so ``K`` holds cosine
            similarities) or ``"ip"`` (raw inner products).
        normalize_scores: min-max the score column to ``[0, 1]`` before solving.
        temperature: entropy weight ``τ``; ``None`` is the paper's ``λ = 1``, i.e. ``τ = 1/p``.
        step_size: proximal step (normalised by the gradient's standard deviation each iteration);
            ``None`` is the paper's ``β → ∞`` (Eq. 13, no damping).
        knn_index: the k-NN index of the sparse kernel (`hf_prune.select._knn_step`): ``"auto"`` (default:
            exact up to 50,000 rows per part, then IVF), ``"flat"``/``"exact"``, ``"ivf"``, ``"ivfpq"`` or
            ``"hnsw"``; the index used and its measured recall@k are on the provenance step's ``"knn"``.
        label_column: when given, the budget is split per class and InfoMax runs inside each class.
        seed: seeds the random partition (the only random choice; ``partitions=1`` is deterministic).
        workers: local processes that solve the partitions of each group in parallel (default 1: in
            this process). CPU only; each worker gets ``cores // workers`` threads. Started with
            ``spawn``, so a script calling this with ``workers > 1`` needs ``if __name__ == "__main__":``.
            Starting the pool costs a few seconds (each worker imports torch), worth it from parts of
            roughly 10k rows. Not recorded in ``params``: the rows do not depend on it. Ignored (with a
            log line) inside ``hp.parallel.ray(...)``, where the executor's ``workers`` decide.
        distributed: under an initialised ``torch.distributed`` process group, spread the partitions
            over the ranks and gather the picks (default); ``False`` solves every part on every rank.
            Not recorded in ``params`` either.
        device: torch device for the solver and k-NN search; ``None`` picks CUDA when available (under
            ``torch.distributed`` the current CUDA device of each rank, which accelerate sets; inside
            ``hp.parallel.ray(...)`` the CPU of each task, and a GPU device is an error).
        normalize: deprecated spelling of ``metric`` (hf_prune 0.1.0): ``True`` is ``"cosine"``,
            ``False`` is ``"ip"``; it warns with a `FutureWarning` and will be removed.

    When to use ``hard_cutoff``: when ``I`` is a hardest-first score (EL2N, forgetting, GraNd,
    entropy), a small share is kept (10% or less on digits, 20% or less on Fashion-MNIST, whose
    hardest rows hurt more) and ``label_column`` is given. Measured (test accuracy, mean ± std;
    ``recipes/benchmarks/infomax_hard_cutoff.py`` and ``reproduce_fashion_mnist.py``):

    * sklearn digits, EL2N from a softmax-regression proxy, ``K`` on pixels, linear probe, 10 seeds,
      per class: at 10% kept ``hard_cutoff=0.1`` 93.6 ± 1.2 against 88.9 ± 1.8 without (random
      89.9 ± 2.1, CCS 90.8 ± 1.7; 0.3 gave 91.9 ± 1.9); at 5% kept 0.3 gave 87.4 ± 1.6 against
      70.3 ± 1.5 (random 86.4 ± 2.2); at 20% kept no cutoff was better than none (95.8 ± 0.5).
    * Fashion-MNIST, the paper's supervised setting (EL2N and penultimate features of the trained
      proxy CNN), 2,000-row pool, 3 seeds, CCS's rates (0.3 at 10% kept, 0.1 at 20–30%): per class
      66.7 ± 0.5 at 10% kept against 43.9 ± 2.5 without (random 61.1 ± 3.1, CCS 65.1 ± 0.7) and
      68.7 ± 0.6 against 64.6 ± 0.6 at 20% (random 70.2 ± 0.8).

    A global cutoff (no ``label_column``) removes the hardest classes' rows first and can starve
    those classes instead (Fashion-MNIST at 10%: 59.2 ± 2.9, shirts 7 of 200 rows), so cut per
    class. Start from CCS's rates by pruning ratio; leave it at 0 for larger budgets and for scores
    that do not rank the hardest rows first (SSP-like prototypicality, CLIP score).

    Returns:
        ``dataset.select(kept rows)`` with a ``row_id`` column and a provenance step ``"infomax"``
        whose ``stage_times`` hold the measured read, kernel and solve times (module docstring).

    Example:
        >>> sub = hp.select.infomax(ds, fraction=0.1, score_column="el2n", embedding_column="emb",
        ...                         k=5, alpha=0.3, iterations=20, seed=0)
        >>> hp.provenance(sub)[-1]["method"]
        'infomax'
        >>> # A hardest-first score at a small budget: drop each class's hardest 10% first.
        >>> sub = hp.select.infomax(ds, fraction=0.1, score_column="el2n", embedding_column="emb",
        ...                         hard_cutoff=0.1, label_column="label")
        >>> # Ten parts on four local processes; the same rows as workers=1.
        >>> sub = hp.select.infomax(ds, fraction=0.1, score_column="el2n", partitions=10, workers=4)
        >>> hp.provenance(sub)[-1]["stage_times"]["kernel_s"]  # seconds spent building K
        >>> # The same ten parts as Ray tasks on a cluster (`ray start --head`); the same rows again.
        >>> with hp.parallel.ray(address="auto"):
        ...     sub = hp.select.infomax(ds, fraction=0.1, score_column="el2n", partitions=10)
        >>> hp.provenance(sub)[-1]["executor"]["infomax_parts"]
        10
    """
    metric = _resolve_metric("infomax", metric, normalize, stacklevel=5)  # through the decorator
    check_columns(dataset, score_column, embedding_column, label_column)
    k = check_positive_int("k", k)
    iterations = check_positive_int("iterations", iterations)
    partitions = check_positive_int("partitions", partitions)
    hard_cutoff = check_probability("hard_cutoff", hard_cutoff)
    if hard_cutoff >= 1:
        raise ValueError(f"`hard_cutoff` must be in [0, 1), got {hard_cutoff}")
    alpha = check_nonnegative("alpha", alpha)
    temperature = check_optional_positive("temperature", temperature)
    step_size = check_optional_positive("step_size", step_size)
    check_choice("kernel", kernel, _KERNELS)
    knn_index = check_knn_index(knn_index)
    workers = check_positive_int("workers", workers)
    distributed = check_bool("distributed", distributed)
    started = time.perf_counter()
    scores = read_vector(dataset, score_column, dtype=np.float64)
    # Validated in one streamed pass; rows are gathered part by part, never as one N×d copy here.
    embeddings = open_matrix(dataset, embedding_column)
    # Rows the cutoff leaves in play; decided per class (or over all rows) on the raw scores.
    eligible = np.ones(len(scores), dtype=bool)
    if hard_cutoff > 0 and len(scores):
        for rows in class_groups(dataset, label_column)[1]:
            eligible[rows[infomax_hard_cut(scores[rows], hard_cutoff)]] = False
    if normalize_scores and len(scores):
        # Over the rows that can be picked, so `alpha` weighs the same with and without a cutoff.
        low, high = scores[eligible].min(), scores[eligible].max()
        scores = (scores - low) / (high - low) if high > low else np.zeros_like(scores)
    executor = current_executor()
    if executor is not None:
        # Checked before resolving: asking for a GPU here is the mistake, whether or not this machine has one.
        if device not in (None, "auto") and torch.device(device).type != "cpu":
            raise ValueError(
                f"`device`={str(device)!r}: inside hp.parallel.ray(...) InfoMax's parts are Ray tasks that hold "
                "CPUs only; pass device='cpu' (or None), or run one process per GPU under torch.distributed"
            )
        if workers > 1:
            logger.warning("infomax: `workers`=%d is ignored inside hp.parallel.ray(...); the executor runs at most "
                           "%d part(s) at once (hp.parallel.ray(workers=...))", workers, executor.workers)
        workers, torch_device = 1, torch.device("cpu")
    else:
        torch_device = resolve_device(device)
    if workers > 1 and torch_device.type != "cpu":
        raise ValueError(
            f"`workers`={workers} starts CPU processes, but the device is {str(torch_device)!r}; "
            "pass device='cpu', or run one process per GPU under torch.distributed (accelerate launch)"
        )
    rank, world = _ranks() if distributed else (0, 1)
    settings = _Settings(k=k, kernel=kernel, metric=metric, knn_index=knn_index, alpha=alpha,
                         iterations=iterations, temperature=temperature, step_size=step_size)
    runner = _PartRunner(embeddings, scores, settings, torch_device, workers=workers, rank=rank, world=world,
                         executor=executor)

    def pick(rows, budget, rng):
        pool = np.flatnonzero(eligible[rows])
        if len(pool) < budget:
            raise ValueError(
                f"`hard_cutoff`={hard_cutoff} leaves {len(pool)} of {len(rows)} rows, fewer than the budget {budget}"
            )
        return pool[pick_pool(rows[pool], budget, rng)]

    def pick_pool(rows, budget, rng):
        if partitions > len(rows):
            raise ValueError(f"`partitions`={partitions} is larger than the number of rows in a group ({len(rows)})")
        if partitions == 1:
            parts = [np.arange(len(rows))]
        else:
            # Sorted parts keep ties broken by row order; the split itself is the seeded shuffle.
            parts = [np.sort(part) for part in np.array_split(rng.permutation(len(rows)), partitions)]
        budgets = split_budget(np.array([len(part) for part in parts]), budget)
        solved = [(part, int(b)) for part, b in zip(parts, budgets) if b > 0]
        for part, _ in solved:
            settings.check_part(len(part))  # on every rank and before any work: no rank waits on a failed one
        picks = runner.run([rows[part] for part, _ in solved], [b for _, b in solved])
        return np.concatenate([part[local] for (part, _), local in zip(solved, picks)])

    params = {
        "score_column": score_column, "embedding_column": embedding_column, "k": k, "alpha": alpha,
        "iterations": iterations, "partitions": partitions, "hard_cutoff": hard_cutoff, "kernel": kernel,
        "metric": metric, "normalize_scores": normalize_scores, "temperature": temperature,
        "step_size": step_size, "knn_index": knn_index,
    }
    try:
        result = run_selection(
            dataset, method="infomax", params=params, fraction=fraction, size=size, seed=seed,
            label_column=label_column, pick=pick, collect=(runner.records, runner.knn_reports, runner.reads),
            driver_reason=None if partitions == 1 else (
                f"one group, split into its {partitions} partitions: one Ray task a partition"),
        )
    finally:
        runner.close()
    runner.renumber_groups()
    stage_times = runner.stage_times(time.perf_counter() - started)
    logger.info(
        "infomax: %d part(s) (%s) on %d worker(s) × %d rank(s): read %.3f s, pool start %.3f s, kernel %.3f s, "
        "solve %.3f s (summed over parts), wall %.3f s", stage_times["parts"], stage_times["backend"],
        stage_times["workers"], world, stage_times["read_s"], stage_times["pool_start_s"], stage_times["kernel_s"],
        stage_times["solve_s"], stage_times["wall_s"],
    )
    knn_log = KnnLog(knn_index)
    for report in runner.knn_reports:
        knn_log.add(report)
    result = with_knn_record(_with_stage_times(result, stage_times), knn_log)
    if executor is not None:
        result = _with_executor_record(result, executor, runner)
    return result


def _with_executor_record(result: Dataset, executor, runner: _PartRunner) -> Dataset:
    """``result`` with the executor's record on its last step, merged into the one the selection runner left.

    `hf_prune.select._core.run_selection` records how it ran the groups (``split``, ``tasks``, ``reason``);
    those keys stay, and InfoMax adds ``infomax_parts`` (parts solved in Ray tasks: their own, or their
    class's) and ``infomax_part_tasks`` (parts that were a Ray task each).
    """
    step = provenance(result, warn=False)[-1]
    facts = dict(step.get("executor") or {})
    facts.update({key: value for key, value in executor.record().items() if key not in facts})
    facts["infomax_parts"] = sum(record["backend"] == "ray" for record in runner.records)
    facts["infomax_part_tasks"] = runner.ray_parts
    return with_measurements(result, "executor", facts)


def _with_stage_times(result: Dataset, stage_times: dict[str, Any]) -> Dataset:
    """``result`` with ``stage_times`` on its last provenance step, beside (not inside) its ``params``."""
    return with_measurements(result, "stage_times", stage_times)


def _ranks() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised torch.distributed group, ``(0, 1)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@dataclass(frozen=True)
class _Settings:
    """What solving one part needs besides its rows, scores and budget (picklable for the workers)."""

    k: int
    kernel: str
    metric: str
    knn_index: str
    alpha: float
    iterations: int
    temperature: float | None
    step_size: float | None

    def dense(self, n: int) -> bool:
        return self.kernel == "dense" or (self.kernel == "auto" and n <= DENSE_MAX_ROWS)

    def check_part(self, n: int) -> None:
        if self.kernel == "dense" and n > DENSE_MAX_ROWS:
            raise ValueError(
                f"kernel='dense' builds an N×N matrix and is limited to {DENSE_MAX_ROWS} rows per "
                f"solved group, got {n}; use kernel='sparse' or more `partitions`"
            )
        if not self.dense(n) and self.k >= n:
            raise ValueError(f"`k`={self.k} must be smaller than the number of rows in a solved group ({n})")


def _solve_part(embeddings, scores, budget, settings, device) -> tuple[np.ndarray, float, float, dict | None]:
    """``(kept positions, kernel seconds, solve seconds, kNN report)`` for one part: build ``K``, iterate,
    take the top. The report (`hf_prune.ops.knn.knn`'s) is ``None`` when no search ran (dense kernel)."""
    n = len(scores)
    if budget == n:
        return np.arange(n), 0.0, 0.0, None
    started = time.perf_counter()
    K, report = infomax_kernel(
        embeddings, k=settings.k, kernel="dense" if settings.dense(n) else "sparse", metric=settings.metric,
        knn_index=settings.knn_index, device=device, return_report=True,
    )
    built = time.perf_counter()
    _, logits = _solve(scores, K, budget, settings.alpha, settings.iterations, settings.temperature,
                       settings.step_size, device)
    kept = _top(logits, budget)
    return kept, built - started, time.perf_counter() - built, report


class _PartRunner:
    """Solves lists of parts: this rank's share (``r, r + W, …``), in process or on a worker pool; gathers.

    The pool is started on the first list that needs it and kept for the call's later groups (a worker
    costs an interpreter start and the imports); each list's rows get their own shared block, freed once
    the list is solved. With a Ray ``executor`` the parts are Ray tasks instead (`_solve_ray`). A part
    record's ``group`` counts the solved groups (classes in sorted order).
    """

    def __init__(self, embeddings, scores, settings, device, *, workers, rank, world, executor=None):
        self.embeddings, self.scores, self.settings, self.device = embeddings, scores, settings, device
        self.workers, self.rank, self.world, self.executor = workers, rank, world, executor
        # The ranks of one machine share its cores with their pools (torchrun sets LOCAL_WORLD_SIZE).
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if world > 1 else 1
        self.threads = max(1, _cores() // (workers * max(1, local_ranks))) if workers > 1 else None
        self.records: list[dict[str, Any]] = []
        self.knn_reports: list[dict[str, Any]] = []
        self.reads: list[float] = []  # seconds gathering rows, one entry a gather (summed as read_s)
        self.share_s = 0.0
        self.pool_start_s = 0.0
        # How the rows reached the workers: "shared_memory", "pickle" or "object_store" (Ray).
        self.transport: str | None = None
        self.pool: ProcessPoolExecutor | None = None
        self.group = 0
        self.ray_parts = 0  # parts solved as their own Ray task
        self.shipped = False  # this runner is a copy inside a Ray task (its group is the task)

    def __getstate__(self):
        # Shipped into a Ray task with `pick` (per-class groups, `run_selection`): the copy solves its
        # group's parts there, in process; no executor (work never nests) and no pool go with it.
        state = dict(self.__dict__, executor=None, pool=None, shipped=True)
        return state

    def run(self, parts: list[np.ndarray], budgets: list[int]) -> list[np.ndarray]:
        """Kept positions within each part (every part, on every rank)."""
        mine = list(range(self.rank, len(parts), self.world))
        try:
            done = self._solve_mine(parts, budgets, mine)
            failure = None
        except Exception as error:  # noqa: BLE001 - re-raised below, after the other ranks hear of it
            done, failure = {}, error
        if self.world > 1:
            gathered: list[Any] = [None] * self.world
            torch.distributed.all_gather_object(gathered, (done, None if failure is None else repr(failure)))
            if failure is None:
                failed = [(r, message) for r, (_, message) in enumerate(gathered) if message is not None]
                if failed:
                    raise RuntimeError(f"infomax failed on rank {failed[0][0]}: {failed[0][1]}")
                done = {i: value for part_done, _ in gathered for i, value in part_done.items()}
        if failure is not None:
            raise failure
        picks = []
        backend = "ray" if self.shipped or (self.executor is not None and len(parts) > 1) else (
            "process_pool" if self.workers > 1 and len(mine) > 1 else "in_process")
        for i, (part, budget) in enumerate(zip(parts, budgets)):
            kept, kernel_s, solve_s, report, rank = done[i]
            if report is not None:
                self.knn_reports.append(report)
            record = {"group": self.group, "part": i, "rows": len(part), "budget": budget, "rank": rank,
                      "backend": backend, "kernel_s": kernel_s, "solve_s": solve_s}
            logger.debug("infomax part %s", record)
            self.records.append(record)
            picks.append(np.asarray(kept, dtype=np.int64))
        self.group += 1
        return picks

    def _solve_mine(self, parts, budgets, mine) -> dict[int, tuple[np.ndarray, float, float, dict | None, int]]:
        if self.executor is not None and len(parts) > 1 and mine:
            return self._solve_ray(parts, budgets, mine)
        if self.executor is not None and mine:
            logger.info("infomax: group %d is one part (nothing to split); solved on the driver", self.group)
        if self.workers == 1 or len(mine) <= 1:
            done = {}
            for i in mine:
                started = time.perf_counter()
                x = self.embeddings.take(parts[i])
                self.reads.append(time.perf_counter() - started)
                done[i] = (*_solve_part(x, self.scores[parts[i]], budgets[i], self.settings, self.device), self.rank)
            return done
        sizes = [len(parts[i]) for i in mine]
        needed = int(sum(sizes)) * self.embeddings.shape[1] * 4
        room = _shared_memory_room()
        if room is not None and room < needed:
            # Writing past a too-small /dev/shm (64 MiB in a default Docker container) would kill the process
            # with SIGBUS, so the rows travel pickled instead, a few parts at a time.
            logger.info("infomax: %d MiB of rows do not fit the %d MiB free in /dev/shm; sending them pickled",
                        needed >> 20, room >> 20)
            self.transport = "pickle"
            return self._solve_pickled(parts, budgets, mine)
        self.transport = "shared_memory"
        return self._solve_shared(parts, budgets, mine, sizes)

    def _solve_shared(self, parts, budgets, mine, sizes):
        # This rank's parts, one after another in one shared block; each task names its slice of it.
        started = time.perf_counter()
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        dim = self.embeddings.shape[1]
        block = shared_memory.SharedMemory(create=True, size=max(1, int(bounds[-1]) * dim * 4))
        try:
            shared = np.ndarray((int(bounds[-1]), dim), dtype=np.float32, buffer=block.buf)
            for j, i in enumerate(mine):
                shared[bounds[j] : bounds[j + 1]] = self.embeddings.take(parts[i])
            del shared  # the parent's view must go before the block can be closed
            self.reads.append(time.perf_counter() - started)
            pool = self._pool()
            futures = {
                i: pool.submit(_worker_solve, block.name, (int(bounds[-1]), dim), int(bounds[j]), int(bounds[j + 1]),
                               self.scores[parts[i]], budgets[i], self.settings)
                for j, i in enumerate(mine)
            }
            return {i: (*future.result(), self.rank) for i, future in futures.items()}
        finally:
            _close(block)
            block.unlink()

    def _solve_ray(self, parts, budgets, mine):
        # One Ray task a part; `_SharedParts` gathers and shares a part's rows only when its task is submitted.
        self.transport = "object_store"
        calls = _SharedParts(self, parts, budgets, mine)
        labels = [f"group {self.group}, part {i} of {len(parts)} ({len(parts[i])} rows)" for i in mine]
        solved = self.executor.run_tasks(solve_infomax_part, calls, labels=labels,
                                         rows=[len(parts[i]) for i in mine], desc="infomax partitions")
        self.ray_parts += len(mine)
        return {i: (*value, self.rank) for i, value in zip(mine, solved)}

    def _solve_pickled(self, parts, budgets, mine):
        pool, done, running = self._pool(), {}, {}
        waiting = list(mine)
        while waiting or running:
            # At most two parts per worker in flight: the parent never holds more than that many copies.
            while waiting and len(running) < 2 * self.workers:
                i = waiting.pop(0)
                started = time.perf_counter()
                rows = self.embeddings.take(parts[i])
                self.reads.append(time.perf_counter() - started)
                running[pool.submit(_solve_part, rows, self.scores[parts[i]], budgets[i], self.settings,
                                    torch.device("cpu"))] = i
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                done[running.pop(future)] = (*future.result(), self.rank)
        return done

    def _pool(self) -> ProcessPoolExecutor:
        if self.pool is None:
            started = time.perf_counter()
            self.pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init, initargs=(self.threads,),
            )
            # All spawned workers start together; the first answers time their start (interpreter, imports).
            list(self.pool.map(_worker_ready, range(self.workers)))
            self.pool_start_s = time.perf_counter() - started
        return self.pool

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def renumber_groups(self) -> None:
        """Number the part records' groups in order: a group's parts start at 0. Copies of this runner in
        Ray tasks (one a class) each counted from 0; their records come back here in group order."""
        group = -1
        for record in self.records:
            group += record["part"] == 0
            record["group"] = group

    @property
    def backend(self) -> str:
        backends = {record["backend"] for record in self.records}
        return next((b for b in ("ray", "process_pool") if b in backends), "in_process")

    def stage_times(self, wall_s: float) -> dict[str, Any]:
        on_ray = self.executor is not None and self.backend == "ray"
        if on_ray:
            from ..parallel.ray_executor import task_threads  # Ray itself is not imported by it
        out = {
            "backend": self.backend,
            "read_s": float(sum(self.reads)),
            "share_s": self.share_s,
            "pool_start_s": self.pool_start_s,
            "kernel_s": float(sum(r["kernel_s"] for r in self.records)),
            "solve_s": float(sum(r["solve_s"] for r in self.records)),
            "wall_s": wall_s,
            "workers": self.executor.workers if on_ray else self.workers,
            "worker_threads": task_threads(self.executor.cpus_per_task) if on_ray else self.threads,
            # Parts solved inside their class's task had their rows sent with the selection's inputs.
            "transport": "object_store" if on_ray else self.transport,
            "world_size": self.world,
            "parts": len(self.records),
            "kernel_s_max": max((r["kernel_s"] for r in self.records), default=0.0),
            "solve_s_max": max((r["solve_s"] for r in self.records), default=0.0),
        }
        if len(self.records) <= STAGE_TIMES_PARTS:
            out["per_part"] = self.records
        return out


class _SharedParts(Sequence):
    """The Ray task arguments of a runner's parts, made when a task is submitted (``calls[j]``).

    Each item gathers its part's rows from the column and puts them into the object store; the reference
    goes with the task and Ray frees the rows when it is done, so at most the parts in flight are held.
    """

    def __init__(self, runner: _PartRunner, parts, budgets, mine):
        self.runner, self.parts, self.budgets, self.mine = runner, parts, budgets, mine

    def __len__(self) -> int:
        return len(self.mine)

    def __getitem__(self, j: int) -> tuple:
        runner, i = self.runner, self.mine[j]
        started = time.perf_counter()
        rows = runner.embeddings.take(self.parts[i])
        read = time.perf_counter()
        ref = runner.executor.share(rows)
        runner.reads.append(read - started)
        runner.share_s += time.perf_counter() - read
        return ref, runner.scores[self.parts[i]], self.budgets[i], runner.settings


def solve_infomax_part(rows, scores, budget, settings) -> tuple[np.ndarray, float, float, dict | None]:
    """One InfoMax part in a Ray task: `_solve_part` on the CPU, BLAS and faiss held to the task's threads.

    The executor has set torch's threads to the task's CPUs (``cpus_per_task``); the BLAS/OpenMP pools
    and faiss get the same number, as the local pool's workers do. ``rows`` arrive read-only from the
    object store.

    Example:
        >>> kept, kernel_s, solve_s, report = solve_infomax_part(rows, scores, 10, settings)
    """
    with _limit_native_threads(torch.get_num_threads()):
        return _solve_part(rows, scores, budget, settings, torch.device("cpu"))


def _shared_memory_room() -> int | None:
    """Free bytes where `multiprocessing.shared_memory` puts its blocks on Linux; ``None`` where unknown."""
    try:
        stats = os.statvfs("/dev/shm")
    except (AttributeError, OSError):  # not Linux: POSIX shared memory lives elsewhere, unmeasured
        return None
    return stats.f_bavail * stats.f_frsize


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# Worker-process state: the thread limit kept for the worker's life, and the shared block in use.
_WORKER: dict[str, Any] = {}


def _worker_init(threads: int) -> None:
    """Pool initializer: ``threads`` for torch, the BLAS/OpenMP pools and faiss, so workers share the cores."""
    torch.set_num_threads(threads)
    _WORKER["limits"] = _limit_native_threads(threads)


def _limit_native_threads(threads: int) -> threadpool_limits:
    """Hold the BLAS/OpenMP pools to ``threads`` (until the returned limits exit) and set faiss's threads."""
    limits = threadpool_limits(limits=threads)
    if faiss_available():
        import_faiss().omp_set_num_threads(threads)
    return limits


def _worker_ready(_: int) -> int:
    return os.getpid()


def _worker_solve(name, shape, start, stop, scores, budget, settings) -> tuple[np.ndarray, float, float, dict | None]:
    """Solve the part stored at rows ``start:stop`` of the shared block ``name`` (in a worker process)."""
    if _WORKER.get("name") != name:
        _worker_detach()
        # Spawned workers share the parent's resource tracker, so attaching registers nothing new and the
        # parent's unlink is the one clean-up (unregistering here would make that unlink fail in the tracker).
        block = shared_memory.SharedMemory(name=name)
        _WORKER.update(name=name, block=block)
    rows = np.ndarray(shape, dtype=np.float32, buffer=_WORKER["block"].buf)[start:stop]
    try:
        return _solve_part(rows, scores, budget, settings, torch.device("cpu"))
    finally:
        del rows


def _worker_detach() -> None:
    block = _WORKER.pop("block", None)
    _WORKER.pop("name", None)
    if block is not None:
        _close(block)


def _close(block: shared_memory.SharedMemory) -> None:
    try:
        block.close()
    except BufferError:  # a view is still alive (an error mid-copy): the mapping goes with that view
        pass


def infomax_hard_cut(scores: np.ndarray, hard_cutoff: float) -> np.ndarray:
    """Positions of the ``⌊hard_cutoff · n⌋`` highest scores: the rows `infomax` removes first.

    The same rule as CCS's ``hard_cutoff`` (with ``descending=True``): the product is floored as
    computed in floating point, and among equal scores the lower position is removed first.

    Example:
        >>> infomax_hard_cut(np.array([0.2, 0.9, 0.5, 0.9, 0.1]), 0.5)
        array([1, 3])
    """
    scores = np.asarray(scores, dtype=np.float64)
    n_cut = int(np.floor(hard_cutoff * len(scores)))
    return np.sort(np.argsort(-scores, kind="stable")[:n_cut])


def infomax_kernel(
    embeddings: np.ndarray,
    *,
    k: int = 5,
    kernel: str = "sparse",
    metric: str = "cosine",
    knn_index: str = "auto",
    device: str | torch.device | None = None,
    normalize: bool | None = None,
    return_report: bool = False,
) -> sp.csr_matrix | np.ndarray | tuple[sp.csr_matrix | np.ndarray, dict | None]:
    """The similarity matrix ``K`` InfoMax uses: inner products, zero diagonal, symmetric.

    ``kernel="sparse"`` keeps each row's ``k`` nearest neighbours (found with `hf_prune.ops.knn`,
    values recomputed exactly in float64) and returns ``(K + Kᵀ)/2`` as a SciPy CSR matrix with
    at most ``2·N·k`` entries. ``kernel="dense"`` returns the full ``(N, N)`` float64 array
    (at most ``DENSE_MAX_ROWS`` rows). ``metric="cosine"`` (default) L2-normalises the rows first,
    ``metric="ip"`` keeps them as they are; ``normalize`` is the deprecated spelling (``True`` is
    ``"cosine"``, ``False`` is ``"ip"``). ``knn_index`` is any `hf_prune.ops.knn_index` kind (``"auto"``:
    exact up to 50,000 rows). ``return_report=True`` returns ``(K, report)``, the search's report (index,
    recall@k, seconds; ``None`` for the dense kernel, which searches nothing).

    Example:
        >>> K = infomax_kernel(embeddings, k=5)
        >>> infomax_objective(scores, K, selected_rows, alpha=0.3)
    """
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError("`embeddings` must be a finite (N, d) array")
    metric = _resolve_metric("infomax_kernel", metric, normalize)
    if metric == "cosine":
        x = normalize_rows(x)
    n = len(x)
    if kernel == "dense":
        if n > DENSE_MAX_ROWS:
            raise ValueError(f"kernel='dense' is limited to {DENSE_MAX_ROWS} rows, got {n}")
        x64 = x.astype(np.float64)
        K = x64 @ x64.T
        np.fill_diagonal(K, 0.0)
        return (K, None) if return_report else K
    if kernel != "sparse":
        raise ValueError(f"`kernel` must be 'sparse' or 'dense', got {kernel!r}")
    k = check_positive_int("k", k)
    if k >= n:
        raise ValueError(f"`k`={k} must be smaller than the number of rows ({n})")
    _, neighbours, report = knn(x, k, metric="ip", index=check_knn_index(knn_index), device=device, return_report=True)
    # Exact float64 ⟨x_i, x_j⟩ for each row and its neighbours.
    values = neighbour_pairs(x, neighbours, lambda rows, nb: np.einsum("id,ikd->ik", rows, nb))
    rows = np.repeat(np.arange(n), k)
    K = sp.csr_matrix((values.ravel(), (rows, neighbours.ravel())), shape=(n, n))
    K = ((K + K.T) * 0.5).tocsr()
    return (K, report) if return_report else K


def _resolve_metric(method: str, metric: str, normalize: bool | None, stacklevel: int = 4) -> str:
    # "cosine" is the default, so it cannot be told apart from "not passed" and yields to `normalize`.
    metric = renamed(method, "normalize", normalize, "metric", metric, default="cosine",
                     values={True: "cosine", False: "ip"}, stacklevel=stacklevel)
    if metric not in _METRICS:
        # K must be a similarity (larger = more redundant): a distance such as "l2" has no place here.
        raise ValueError(f"`metric` must be one of {_METRICS} (K holds inner products), got {metric!r}")
    return metric


def infomax_solve(
    scores: np.ndarray,
    K: sp.spmatrix | np.ndarray,
    *,
    budget: int,
    alpha: float = 0.3,
    iterations: int = 20,
    temperature: float | None = None,
    step_size: float | None = 1.0,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Run the relaxed InfoMax iteration and return ``X^T`` (``0 ≤ X ≤ 1``, ``ΣX = budget``).

    ``scores`` are used as given (no normalisation) and ``K`` as given (dense array or SciPy
    sparse matrix, expected symmetric). Each step is
    ``X ← min(1, exp(ℓ + c))`` with ``ℓ = (η·g + log X)/(1 + η·τ)``, ``g = I − 2αK X``,
    ``η = step_size / std(g)``; ``step_size=None`` gives ``ℓ = g/τ`` and, with ``temperature=None``
    (``τ = 1/p``), the paper's Eq. 3 logits ``p·I − 2pα·K X``. For ``budget=1`` the cap is inactive
    and the update is exactly Eq. 3's softmax.

    Example:
        >>> X = infomax_solve(scores, infomax_kernel(emb, k=5), budget=100, alpha=0.3)
        >>> keep = np.argsort(-X)[:100]
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or not np.isfinite(scores).all():
        raise ValueError("`scores` must be a finite one-dimensional array")
    n = len(scores)
    if K.shape != (n, n):
        raise ValueError(f"`K` has shape {K.shape}; expected ({n}, {n})")
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or not 1 <= budget <= n:
        raise ValueError(f"`budget` must be an integer in [1, {n}], got {budget!r}")
    log_x, _ = _solve(
        scores, K, int(budget), check_nonnegative("alpha", alpha), check_positive_int("iterations", iterations),
        check_optional_positive("temperature", temperature), check_optional_positive("step_size", step_size),
        resolve_device(device),
    )
    return np.exp(log_x)


def infomax_objective(
    scores: np.ndarray,
    K: sp.spmatrix | np.ndarray,
    selection: np.ndarray,
    *,
    alpha: float,
) -> float:
    """Eq. 2 at a binary selection: ``Σ_{z∈S} I_z − α Σ_{z,s∈S} K_zs``.

    ``selection`` is a boolean mask or integer row indices. With ``K`` from `infomax_kernel` (zero
    diagonal) this is the ``z ≠ s`` form of Eq. 5 that the selector optimises.

    Example:
        >>> infomax_objective(scores, infomax_kernel(emb, k=5), sub["row_id"], alpha=0.3)
    """
    scores = np.asarray(scores, dtype=np.float64)
    selection = np.asarray(selection)
    mask = np.zeros(len(scores), dtype=np.float64)
    if selection.dtype == bool:
        if selection.shape != scores.shape:
            raise ValueError("a boolean `selection` must have one entry per score")
        mask[selection] = 1.0
    else:
        mask[selection.astype(np.int64)] = 1.0
    return float(scores @ mask - alpha * (mask @ (K @ mask)))


def _solve(scores, K, budget, alpha, iterations, temperature, step_size, device):
    """``(log X^T, ℓ^T)`` as NumPy float64 arrays; see `infomax_solve` for the update."""
    n = len(scores)
    if budget >= n:
        zeros = np.zeros(n)
        return zeros, zeros
    matvec = _matvec(K, device)
    scores_t = torch.as_tensor(scores, dtype=torch.float64, device=device)
    tau = 1.0 / budget if temperature is None else temperature
    log_x = torch.full((n,), math.log(budget / n), dtype=torch.float64, device=device)
    logits = log_x
    product = K.nnz if sp.issparse(K) else n * n
    # Many small O(N) torch steps: one torch thread below the rule's size (hf_prune.ops.threads), so a
    # shared CPU does not stall each step at a thread barrier; in a worker it is one thread anyway.
    with small_step_threads(int(product), device, vector_work=n):
        return _iterate(scores_t, matvec, log_x, logits, budget, alpha, iterations, tau, step_size)


def _iterate(scores_t, matvec, log_x, logits, budget, alpha, iterations, tau, step_size):
    for _ in range(iterations):
        grad = scores_t - 2.0 * alpha * matvec(torch.exp(log_x))
        if step_size is None:
            logits = grad / tau
        else:
            spread = float(grad.std(correction=0))
            if spread <= 0.0:
                break  # a constant gradient leaves X where it is
            eta = step_size / spread
            logits = (eta * grad + log_x) / (1.0 + eta * tau)
        log_x = _capped_log_projection(logits, budget)
    return log_x.cpu().numpy(), logits.cpu().numpy()


def _capped_log_projection(logits: torch.Tensor, budget: int) -> torch.Tensor:
    """``log X`` for ``X = min(1, exp(ℓ + c))`` with ``ΣX = budget``: the KL projection on the capped simplex.

    With the ``m`` largest logits capped, ``c_m = log(p − m) − logsumexp(ℓ_(m+1..N))``; the answer
    is the smallest ``m`` whose next logit stays under the cap (it then also satisfies the KKT
    conditions of the capped ones), found with one sort and a suffix log-sum-exp.
    """
    ordered = torch.sort(logits, descending=True).values
    suffix = torch.logcumsumexp(ordered.flip(0), 0).flip(0)[:budget]
    capped = torch.arange(budget, dtype=logits.dtype, device=logits.device)
    shift = torch.log(budget - capped) - suffix
    first = int(torch.argmax((ordered[:budget] + shift <= 0).to(torch.int8)))
    return torch.clamp(logits + shift[first], max=0.0)


def _matvec(K, device):
    if sp.issparse(K) and device.type == "cpu":
        # SciPy's CSR product is the fastest O(nnz) CPU kernel (torch's CPU sparse paths are slower).
        csr = sp.csr_matrix(K, dtype=np.float64)
        return lambda x: torch.from_numpy(csr @ x.numpy())
    if sp.issparse(K):
        coo = K.tocoo()
        rows = torch.as_tensor(coo.row.astype(np.int64), device=device)
        cols = torch.as_tensor(coo.col.astype(np.int64), device=device)
        vals = torch.as_tensor(coo.data, dtype=torch.float64, device=device)
        n = K.shape[0]

        def sparse(x):
            # O(nnz) gather/scatter over the edge list: no N×N matrix.
            return torch.zeros(n, dtype=torch.float64, device=device).index_add_(0, rows, vals * x[cols])

        return sparse
    dense = torch.as_tensor(np.asarray(K, dtype=np.float64), device=device)
    return lambda x: dense @ x


def _top(logits: np.ndarray, budget: int) -> np.ndarray:
    """Positions of the ``budget`` largest logits, ties to the lower position."""
    order = np.lexsort((np.arange(len(logits)), -logits))
    return order[:budget]

