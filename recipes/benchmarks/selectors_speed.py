"""Selector speed: every ``hp.select`` selector against a straightforward reference implementation.

Each selector is timed **end to end through the public API**: a ``datasets.Dataset`` with the
synthetic columns goes in (``hp.select.herding(ds, fraction=0.1, embedding_column="emb", ...)``)
and the selected ``Dataset`` comes out, so reading the Arrow columns, validation, the per-class
machinery, ``dataset.select`` and the provenance step are all inside the timing. The reference is
timed on the NumPy array / torch tensor **already in memory**, with no Dataset round trip; that
favours the reference.

Data (seeded, synthetic): N rows, ``emb`` a float32 fixed-length list column of width d (a mixture
of 10 classes × 20 sub-clusters with a random per-row scale, so norms vary and neighbourhoods mean
something), ``label`` an int64 column with 10 classes, ``score`` a float32 column uniform in
[0, 1), and for the DUAL methods a ``dynamics`` struct column with ``T = 30`` epochs laid out as
`hf_prune.dynamics.DynamicsRecorder` writes it (``true_prob`` a noisy sigmoid trajectory per row;
the other fields, which DUAL does not read, are zeros). Selections are over the whole set (no
``label_column``), so both sides get the same budget. Columns are built from Arrow arrays
(``pa.FixedSizeListArray``), not from Python lists.

The references live in ``recipes/benchmarks/references/`` and are written the way public research
code writes these methods:

* ``herding.py``: ``reference_herding`` re-sorts all N scores every step and walks the sorted list
  past the rows already chosen; ``reference_gm_matching`` = plain Weiszfeld + that herding;
  ``reference_k_center_greedy`` builds the N×N distance matrix and takes the minimum over all
  chosen columns again every step. Compared with ``herding`` / ``gm_matching`` with
  ``metric="l2"`` (the reference works on raw inner products) and ``k_center_greedy`` with
  ``init="first"`` (the reference starts from row 0); these pick the same rows by design.
* ``norm_gs.py``: ``norm_sampling_reference`` (``np.random.choice`` with p ∝ norm);
  ``gram_schmidt_reference`` re-orthogonalises every remaining row against the whole basis every
  step (O(N·s²·d)); ``typiclust_reference`` (scikit-learn k-means, a fresh scikit-learn kNN per
  pick); ``probcover_reference`` (δ-graph from dense distance blocks, every greedy step recounts
  all edges and filters them with ``np.isin``).
* ``infomax.py``: ``reference_infomax`` is the library's InfoMax update on dense N×N matrices
  (k-NN found by sorting every row), compared with ``infomax(kernel="sparse")``;
  ``reference_infomax_literal`` is Algorithm 1 of the paper as printed (a different update, timed
  once for context); ``reference_d2_pruning`` builds the N×N×d difference tensor and takes an
  argmax over all rows per pick.
* ``dual.py``: ``dual_window_loop`` (a loop over windows, the DUAL release's structure) and
  ``dual_per_sample`` (a loop over samples) against ``hp.score.dual``; ``dual_window_loop`` +
  ``beta_sampling`` against ``hp.select.dual_beta``; ``stratified_sampling`` against
  ``hp.select.ccs``.
* ``moderate``, ``random`` and ``top_k`` have trivial references (a NumPy distance + argsort,
  ``rng.choice``, ``np.argsort``); they show the overhead of the Dataset path.

Problem sizes: the headline is N = 100,000, d = 384, 10% kept. References that need O(N²) memory
(dense InfoMax, D²-Pruning's N×N×d tensor, k-center's distance matrix) or O(N·s²·d) time
(Gram–Schmidt), and the greedy ProbCover / TypiClust loops, run at a smaller N (``--reference-rows``,
per method); ours is timed at that same N for the ratio, and again alone at the headline N (the
reference column then says ``n/a``). Herding and GM Matching references re-sort all N rows per
step; they run at the headline N with fewer kept rows (``--reference-kept``), ours likewise. The
ratio ``ref/ours`` always compares equal (N, d, kept).

Agreement: where the two sides pick the same rows by design, the Jaccard overlap of the kept sets
(1 = identical); for DUAL scores the largest absolute difference (ours is stored as a float32
column); for CCS whether the number of rows taken from each score stratum is the same; for ProbCover
the fraction of rows within δ of a kept row (its objective) on each side, with the overlap;
random samplers (different random streams) show ``—``. TypiClust / ProbCover / InfoMax-literal
overlaps are given for context only (different k-means, random tie-breaking among equal coverage
gains, or a different update). ProbCover gets the same explicit δ on both sides (chosen so a
ball holds about 20 rows), so ours skips its k-means purity rule here.

Timing: ``time.perf_counter``; every method is run once on a tiny input first (imports, faiss and
BLAS warm-up), then ``--repeats`` timed runs (median). Torch uses one thread
(``torch.set_num_threads``, ``--threads``), and NumPy's BLAS inherits ``OMP_NUM_THREADS`` etc.
from the environment: set ``OMP_NUM_THREADS=1`` for a single-core comparison.

Default (about 50 minutes on one CPU core):
    OMP_NUM_THREADS=1 python recipes/benchmarks/selectors_speed.py --output selectors_speed.json

Smoke check (well under a minute):
    python recipes/benchmarks/selectors_speed.py --quick

A subset, or a larger run on a GPU (selectors that take ``device=`` and the torch references of
``herding.py`` run on it; the NumPy references stay on the CPU):
    python recipes/benchmarks/selectors_speed.py --methods herding,k_center_greedy,infomax
    python recipes/benchmarks/selectors_speed.py --device cuda --rows 1000000 --threads 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset, DatasetInfo, Features, Sequence, Value, disable_progress_bars
from datasets.table import InMemoryTable

import hf_prune as hp
from hf_prune.dynamics import DYNAMICS_FIELDS, dynamics_features, dynamics_struct
from hf_prune.select._core import resolve_budget
from hf_prune.select.ccs import ccs_strata
from recipes.benchmarks.references import dual as REF_DUAL
from recipes.benchmarks.references import herding as REF_HERDING
from recipes.benchmarks.references import infomax as REF_INFOMAX
from recipes.benchmarks.references import norm_gs as REF_NORM_GS
from recipes.trainer.config import library_versions, write_json
from recipes.trainer.metrics import timed

EPOCHS, WINDOW = 30, 10



# Smaller N for references that are O(N²) in memory or much slower than linear in time, sized so
# each reference run takes at most a few minutes on one core at d = 384 (see the module docstring).
REFERENCE_ROWS = {
    "gram_schmidt": 2_000,  # O(N·s²·d) Python loop: ~45 s at 2,000
    "gram_schmidt_det": 2_000,
    "k_center_greedy": 6_000,  # N×N matrix, O(N·s²) gathers: ~45 s at 6,000 (~210 s at 10,000)
    "infomax": 10_000,  # several dense N×N float64 matrices (~3 GiB at 10,000)
    "infomax_literal": 10_000,
    "d2_pruning": 1_000,  # an N×N×d float64 tensor: 3 GiB per temporary at 1,000
    "typiclust": 20_000,  # the reference fails at 100,000 / 10% (a cluster runs out of points)
    "probcover": 50_000,  # dense distance blocks + an edge-list rescan per pick: ~55 s at 50,000
    "dual_per_sample": 10_000,  # a Python loop over rows and windows
}
# Kept rows for references run at the headline N with a smaller budget (they re-sort N per step).
REFERENCE_KEPT = {"herding": 1_000, "gm_matching": 1_000}

METHODS = [
    "norm_sampling", "gram_schmidt", "gram_schmidt_det", "herding", "gm_matching", "k_center_greedy",
    "infomax", "infomax_literal", "d2_pruning", "typiclust", "probcover", "dual_score",
    "dual_per_sample", "dual_beta", "ccs", "moderate", "random", "top_k",
]


# ----------------------------------------------------------------------------------------------
# Data


class Data:
    """Seeded synthetic arrays at the largest N, and Datasets built from their first n rows (cached)."""

    def __init__(self, rows: int, dim: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.rows, self.dim = rows, dim
        classes, subclusters = 10, 20
        class_centres = rng.standard_normal((classes, dim)).astype(np.float32)
        sub_centres = 0.8 * rng.standard_normal((classes, subclusters, dim)).astype(np.float32)
        self.label = rng.integers(0, classes, rows).astype(np.int64)
        sub = rng.integers(0, subclusters, rows)
        emb = np.empty((rows, dim), dtype=np.float32)
        step = 50_000
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            noise = rng.standard_normal((stop - start, dim), dtype=np.float32)
            emb[start:stop] = class_centres[self.label[start:stop]] + sub_centres[self.label[start:stop], sub[start:stop]]
            emb[start:stop] += 0.6 * noise
        emb *= rng.lognormal(0.0, 0.25, (rows, 1)).astype(np.float32)
        self.emb = emb
        self.score = rng.random(rows, dtype=np.float32)
        # True-class probability over EPOCHS epochs: sigmoid of a per-row drift plus noise.
        drift = rng.normal(0.15, 0.1, (rows, 1))
        start_logit = rng.normal(-1.0, 1.0, (rows, 1))
        t = np.arange(EPOCHS)[None, :]
        logits = start_logit + drift * t + rng.normal(0, 0.6, (rows, EPOCHS))
        self.true_prob = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        self._cache: dict[tuple[int, bool], Dataset] = {}
        self._deltas: dict[int, float] = {}

    def dataset(self, n: int, *, dynamics: bool = False) -> Dataset:
        key = (n, dynamics)
        if key not in self._cache:
            d = self.dim
            columns = {
                "emb": pa.FixedSizeListArray.from_arrays(pa.array(self.emb[:n].reshape(-1)), d),
                "label": pa.array(self.label[:n]),
                "score": pa.array(self.score[:n]),
            }
            features = {
                "emb": Sequence(Value("float32"), length=d),
                "label": Value("int64"),
                "score": Value("float32"),
            }
            if dynamics:
                fields = dict.fromkeys(DYNAMICS_FIELDS, np.zeros((n, EPOCHS), dtype=np.float32))
                columns["dynamics"] = dynamics_struct(fields | {"true_prob": self.true_prob[:n]})
                features["dynamics"] = dynamics_features(EPOCHS)
            features = Features(features)
            table = pa.table(columns).cast(features.arrow_schema)
            self._cache[key] = Dataset(InMemoryTable(table), info=DatasetInfo(features=features))
        return self._cache[key]

    def delta(self, n: int) -> float:
        """ProbCover's δ on the first n rows (`probcover_delta`, cached)."""
        if n not in self._deltas:
            self._deltas[n] = probcover_delta(self.emb[:n])
        return self._deltas[n]


def probcover_delta(x: np.ndarray, target_degree: int = 20, queries: int = 256, seed: int = 1) -> float:
    """A ball radius on unit-normalised rows whose balls hold about ``target_degree`` other rows."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    q = unit[rng.choice(len(unit), size=min(queries, len(unit)), replace=False)]
    dist = np.sqrt(np.maximum(2.0 - 2.0 * q @ unit.T, 0.0))
    kth = np.partition(dist, min(target_degree, dist.shape[1] - 1), axis=1)[:, min(target_degree, dist.shape[1] - 1)]
    return float(np.median(kth))


# ----------------------------------------------------------------------------------------------
# Cases: ours(ds, n, k) -> Dataset, reference(n, k) -> indices (or scores), and how to compare them


@dataclass
class Case:
    name: str
    label: str
    ours: Callable[[Dataset, int, int], Any]
    reference: Callable[[int, int], Any]
    # "jaccard"; "context" (overlap shown, not expected equal); "coverage" (ProbCover: overlap and the
    # fraction of rows covered by each selection); "scores"; "strata"; "random"
    agreement: str
    reference_rows: int | None = None  # None: the headline N (set in main from REFERENCE_ROWS / --reference-rows)
    reference_kept: int | None = None  # None: fraction × N (set in main from REFERENCE_KEPT / --reference-kept)
    dynamics: bool = False
    note: str = ""
    reference_warmup_rows: int | None = None  # a smaller warm-up input for the reference (None: --warmup-rows)
    ours_at_headline: bool = True  # also time ours alone at the headline N when the reference ran smaller


def jaccard(a, b) -> float:
    a, b = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    return len(a & b) / max(1, len(a | b))


def build_cases(data: Data, args) -> list[Case]:
    dev_kw = {"device": args.device}  # only for selectors that take `device=`
    torch_dev = torch.device(args.device)

    def x_np(n):
        return data.emb[:n]

    def x_torch(n):
        return torch.from_numpy(data.emb[:n]).to(torch_dev)

    def minmax(n):
        s = data.score[:n].astype(np.float64)
        return (s - s.min()) / (s.max() - s.min())

    def moderate_reference(n, k):
        x = data.emb[:n].astype(np.float64)
        dist = np.linalg.norm(x - x.mean(0), axis=1)
        return np.argsort(np.abs(dist - np.median(dist)), kind="stable")[:k]

    def dual_beta_reference(n, k):
        probs = data.true_prob[:n].T  # (T, N), epochs first as the public code stores them
        score = REF_DUAL.dual_window_loop(probs, WINDOW)
        return REF_DUAL.beta_sampling(1 - k / n, 5.5, probs, score, np.random.default_rng(0), C=15.0)

    sel = hp.select
    cases = [
        Case("norm_sampling", "norm_sampling (random, p=2)",
             lambda ds, n, k: sel.norm_sampling(ds, size=k, embedding_column="emb", p=2, seed=0),
             lambda n, k: REF_NORM_GS.norm_sampling_reference(x_np(n), k, p=2, seed=0), "random"),
        Case("gram_schmidt", "gram_schmidt (random)",
             lambda ds, n, k: sel.gram_schmidt(ds, size=k, embedding_column="emb", mode="random", seed=0, **dev_kw),
             lambda n, k: REF_NORM_GS.gram_schmidt_reference(x_np(n), k, seed=0), "random"),
        Case("gram_schmidt_det", "gram_schmidt (deterministic)",
             lambda ds, n, k: sel.gram_schmidt(ds, size=k, embedding_column="emb", mode="deterministic", **dev_kw),
             lambda n, k: REF_NORM_GS.gram_schmidt_reference(x_np(n), k, deterministic=True), "jaccard"),
        Case("herding", "herding (metric=l2)",
             lambda ds, n, k: sel.herding(ds, size=k, embedding_column="emb", metric="l2", seed=0, **dev_kw),
             lambda n, k: REF_HERDING.reference_herding(x_torch(n), k), "jaccard"),
        Case("gm_matching", "gm_matching (metric=l2)",
             lambda ds, n, k: sel.gm_matching(ds, size=k, embedding_column="emb", metric="l2", eps=1e-5, seed=0, **dev_kw),
             lambda n, k: REF_HERDING.reference_gm_matching(x_torch(n), k, eps=1e-5), "jaccard",
             note="ours: relative ε=1e-5; ref.: absolute ε=1e-5"),
        Case("k_center_greedy", "k_center_greedy (l2, init=first)",
             lambda ds, n, k: sel.k_center_greedy(ds, size=k, embedding_column="emb", init="first", **dev_kw),
             lambda n, k: REF_HERDING.reference_k_center_greedy(x_torch(n), k, first=0), "jaccard"),
        Case("infomax", "infomax (sparse k=5) vs dense",
             lambda ds, n, k: sel.infomax(ds, size=k, score_column="score", embedding_column="emb", k=5,
                                          kernel="sparse", seed=0, **dev_kw),
             lambda n, k: REF_INFOMAX.reference_infomax(minmax(n), x_np(n), k, k=5), "jaccard"),
        Case("infomax_literal", "infomax (sparse) vs literal Alg. 1",
             lambda ds, n, k: sel.infomax(ds, size=k, score_column="score", embedding_column="emb", k=5,
                                          kernel="sparse", seed=0, **dev_kw),
             lambda n, k: REF_INFOMAX.reference_infomax_literal(minmax(n), x_np(n), k), "context",
             note="different update (Eq. 3 as printed)", ours_at_headline=False),  # ours: as "infomax"
        Case("d2_pruning", "d2_pruning (k=10)",
             lambda ds, n, k: sel.d2_pruning(ds, size=k, score_column="score", embedding_column="emb", k=10, **dev_kw),
             lambda n, k: REF_INFOMAX.reference_d2_pruning(data.score[:n], x_np(n), k, k=10), "jaccard",
             reference_warmup_rows=200),  # its reference materialises an N×N×d float64 tensor
        Case("typiclust", "typiclust",
             lambda ds, n, k: sel.typiclust(ds, size=k, embedding_column="emb", seed=0),
             lambda n, k: REF_NORM_GS.typiclust_reference(x_np(n), k, seed=0), "context",
             note="different k-means (faiss vs scikit-learn)"),
        Case("probcover", "probcover (same δ)",
             lambda ds, n, k: sel.probcover(ds, size=k, embedding_column="emb", delta=data.delta(n), seed=0, **dev_kw),
             lambda n, k: REF_NORM_GS.probcover_reference(x_np(n), k, delta=data.delta(n)), "coverage",
             note="ours breaks ties at random"),
        Case("dual_score", "hp.score.dual vs window loop",
             lambda ds, n, k: hp.score.dual(ds, dynamics_column="dynamics", window=WINDOW),
             lambda n, k: REF_DUAL.dual_window_loop(data.true_prob[:n].T, WINDOW), "scores", dynamics=True),
        Case("dual_per_sample", "hp.score.dual vs per-sample loop",
             lambda ds, n, k: hp.score.dual(ds, dynamics_column="dynamics", window=WINDOW),
             lambda n, k: REF_DUAL.dual_per_sample(data.true_prob[:n].T, WINDOW), "scores", dynamics=True,
             ours_at_headline=False),  # ours: as "dual_score"
        Case("dual_beta", "dual_beta (DUAL + β-sampling)",
             lambda ds, n, k: sel.dual_beta(ds, size=k, dynamics_column="dynamics", window=WINDOW, c_d=5.5, C=15, seed=0),
             dual_beta_reference, "random", dynamics=True),
        Case("ccs", "ccs (50 strata, no cutoff)",
             lambda ds, n, k: sel.ccs(ds, size=k, score_column="score", hard_cutoff=0.0, bins=50, seed=0),
             lambda n, k: REF_DUAL.stratified_sampling(data.score[:n].astype(np.float64), k, np.random.default_rng(0), 50),
             "strata"),
        Case("moderate", "moderate (mean centre)",
             lambda ds, n, k: sel.moderate(ds, size=k, embedding_column="emb", center="mean", seed=0),
             moderate_reference, "jaccard"),
        Case("random", "random",
             lambda ds, n, k: sel.random(ds, size=k, seed=0),
             lambda n, k: np.random.default_rng(0).choice(n, size=k, replace=False), "random"),
        Case("top_k", "top_k",
             lambda ds, n, k: sel.top_k(ds, size=k, score_column="score", seed=0),
             lambda n, k: np.argsort(-data.score[:n], kind="stable")[:k], "jaccard"),
    ]
    return cases


# ----------------------------------------------------------------------------------------------
# Timing and agreement


def kept_rows(result: Dataset) -> np.ndarray:
    return np.asarray(result["row_id"], dtype=np.int64)


def compare(case: Case, data: Data, n: int, ours_out, ref_out) -> str:
    if case.agreement == "random":
        return "—"
    if case.agreement == "scores":
        ours = np.asarray(ours_out["dual"], dtype=np.float64)
        diff = float(np.max(np.abs(ours - np.asarray(ref_out, dtype=np.float64))))
        return f"max abs diff {diff:.1e}"
    if case.agreement == "strata":
        strata = ccs_strata(data.score[:n], 50)
        same = np.array_equal(np.bincount(strata[kept_rows(ours_out)], minlength=50),
                              np.bincount(strata[np.asarray(ref_out)], minlength=50))
        return "strata counts equal" if same else "strata counts differ"
    j = jaccard(kept_rows(ours_out), ref_out)
    if case.agreement == "coverage":
        ours_cov = coverage(data.emb[:n], kept_rows(ours_out), data.delta(n))
        ref_cov = coverage(data.emb[:n], np.asarray(ref_out), data.delta(n))
        return f"J={j:.3f} (context); δ-coverage {ours_cov:.3f} vs {ref_cov:.3f}"
    return f"J={j:.3f}" + (" (context)" if case.agreement == "context" else "")


def coverage(x: np.ndarray, selected: np.ndarray, delta: float, chunk: int = 8192) -> float:
    """Fraction of rows within ``delta`` of a selected row, on L2-normalised rows (ProbCover's objective)."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    centres = unit[selected]
    covered = 0
    for start in range(0, len(unit), chunk):
        sims = unit[start : start + chunk] @ centres.T
        covered += int((np.sqrt(np.maximum(2.0 - 2.0 * sims.max(axis=1), 0.0)) < delta).sum())
    return covered / len(unit)


def run_case(case: Case, data: Data, args, log) -> list[dict]:
    headline_n = args.rows
    ref_n = headline_n if case.reference_rows is None else min(case.reference_rows, headline_n)
    ref_k = case.reference_kept
    if ref_k is None:
        ref_k = resolve_budget(ref_n, fraction=args.fraction, size=None)
    ref_k = min(ref_k, ref_n)
    headline_k = resolve_budget(headline_n, fraction=args.fraction, size=None)

    # Warm-up on a tiny input (imports, faiss/BLAS initialisation, Arrow paths).
    tiny = min(args.warmup_rows, headline_n)
    tiny_k = max(2, tiny // 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        case.ours(data.dataset(tiny, dynamics=case.dynamics), tiny, tiny_k)
        ref_tiny = tiny if case.reference_warmup_rows is None else min(tiny, case.reference_warmup_rows)
        case.reference(ref_tiny, max(2, ref_tiny // 10))

    rows = []

    def ours_at(n, k):
        ds = data.dataset(n, dynamics=case.dynamics)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return timed(lambda: case.ours(ds, n, k), args.repeats, cuda_sync=True)

    log(f"[{case.name}] ours N={ref_n} kept={ref_k} ...")
    ours_t, ours_out = ours_at(ref_n, ref_k)
    log(f"[{case.name}]   ours {ours_t:.3f}s; reference ...")
    ref_t, ref_out = timed(lambda: case.reference(ref_n, ref_k), args.repeats, cuda_sync=True)
    agreement = compare(case, data, ref_n, ours_out, ref_out)
    log(f"[{case.name}]   reference {ref_t:.3f}s; ratio {fmt_ratio(ref_t / ours_t)}; {agreement}")
    rows.append({
        "method": case.name, "label": case.label, "N": ref_n, "d": args.dim, "kept": ref_k,
        "ours_s": ours_t, "reference_s": ref_t, "ratio": ref_t / ours_t, "agreement": agreement,
        "note": case.note, "scores_only": case.agreement == "scores",
    })
    if (ref_n, ref_k) != (headline_n, headline_k) and case.ours_at_headline:
        log(f"[{case.name}] ours alone N={headline_n} kept={headline_k} ...")
        t, _ = ours_at(headline_n, headline_k)
        log(f"[{case.name}]   ours {t:.3f}s")
        rows.append({
            "method": case.name, "label": case.label, "N": headline_n, "d": args.dim, "kept": headline_k,
            "ours_s": t, "reference_s": None, "ratio": None, "agreement": "n/a",
            "note": "reference not run at this size",
        })
    return rows


# ----------------------------------------------------------------------------------------------


def versions() -> dict:
    out = {
        **library_versions(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "pyarrow": pa.__version__,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
    }
    for name in ("faiss", "sklearn", "scipy"):
        try:
            module = __import__(name)
            out[name] = getattr(module, "__version__", "?")
        except ImportError:
            out[name] = "not installed"
    return out


def fmt_seconds(x) -> str:
    if x is None:
        return "n/a"
    if x < 0.01:
        return f"{x:.2g}"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def fmt_ratio(x) -> str:
    if x is None:
        return "n/a"
    return f"{x:.2g}" if x < 0.1 else (f"{x:.2f}" if x < 100 else f"{x:.0f}")


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| method | N | d | kept | ours (s) | reference (s) | ref/ours | agreement |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ratio = fmt_ratio(r["ratio"])
        lines.append(
            f"| {r['label']} | {r['N']:,} | {r['d']} | {'—' if r.get('scores_only') else format(r['kept'], ',')} | "
            f"{fmt_seconds(r['ours_s'])} | "
            f"{fmt_seconds(r['reference_s'])} | {ratio} | {r['agreement']} |"
        )
    return "\n".join(lines)


def parse_per_method(value: str | None, defaults: dict[str, int], name: str) -> dict[str, int]:
    """``"8000"`` (every method in ``defaults``) or ``"infomax=8000,d2_pruning=1000"``."""
    out = dict(defaults)
    if not value:
        return out
    for part in value.split(","):
        part = part.strip()
        if "=" in part:
            key, number = part.split("=", 1)
            key = key.strip()
            if key not in defaults:
                raise SystemExit(f"{name}: {key!r} has no reduced size; choose from {sorted(defaults)}")
            out[key] = int(number)
        else:
            out = {key: int(part) for key in defaults}
    return out


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=None, help="headline N (default 100000; --quick: 2000)")
    p.add_argument("--dim", type=int, default=None, help="embedding width d (default 384; --quick: 32)")
    p.add_argument("--fraction", type=float, default=0.1, help="kept fraction (default 0.1)")
    p.add_argument("--reference-rows", default=None,
                   help="N for the references that cannot run at the headline N: one number for all, or "
                        "method=N pairs, e.g. 'infomax=8000,d2_pruning=1000' (defaults: " +
                        ", ".join(f"{k}={v}" for k, v in REFERENCE_ROWS.items()) + ")")
    p.add_argument("--reference-kept", default=None,
                   help="kept rows for the herding / gm_matching references at the headline N (one number, or "
                        "method=k pairs; default 1000 each)")
    p.add_argument("--methods", default=None, help=f"comma-separated subset of: {', '.join(METHODS)}")
    p.add_argument("--device", default="cpu", help="cpu or cuda, passed to selectors that take device= (default cpu)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, a smoke check in well under a minute")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per side, median reported (default 1; --quick 3)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--warmup-rows", type=int, default=600, help="rows of the warm-up input (default 600)")
    p.add_argument("--output", default=None, help="write all measurements as JSON here")
    return p


def main(argv=None) -> None:
    args = make_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    disable_progress_bars()
    if args.quick:
        args.rows = args.rows or 2_000
        args.dim = args.dim or 32
        args.repeats = args.repeats or 3
        args.warmup_rows = min(args.warmup_rows, 300)
        quick_rows = {k: min(v, 800) for k, v in REFERENCE_ROWS.items()}
        quick_rows["d2_pruning"] = 300
        reference_rows = parse_per_method(args.reference_rows, quick_rows, "--reference-rows")
        reference_kept = parse_per_method(args.reference_kept, {k: 50 for k in REFERENCE_KEPT}, "--reference-kept")
    else:
        args.rows = args.rows or 100_000
        args.dim = args.dim or 384
        args.repeats = args.repeats or 1
        reference_rows = parse_per_method(args.reference_rows, REFERENCE_ROWS, "--reference-rows")
        reference_kept = parse_per_method(args.reference_kept, REFERENCE_KEPT, "--reference-kept")
    methods = METHODS if not args.methods else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {METHODS}")

    env = versions()

    def log(msg):
        print(msg, flush=True)

    log("environment: " + json.dumps(env))
    log(f"settings: rows={args.rows} dim={args.dim} fraction={args.fraction} repeats={args.repeats} "
        f"device={args.device} reference_rows={reference_rows} reference_kept={reference_kept}")
    start = time.perf_counter()
    data = Data(args.rows, args.dim, seed=0)
    log(f"data: {args.rows}×{args.dim} built in {time.perf_counter() - start:.1f}s")

    cases = {c.name: c for c in build_cases(data, args)}
    results = []
    for name in methods:
        case = cases[name]
        case.reference_rows = reference_rows.get(name)
        case.reference_kept = reference_kept.get(name)
        results.extend(run_case(case, data, args, log))
    total = time.perf_counter() - start
    log(f"\ntotal wall time {total / 60:.1f} min\n")
    table = markdown_table(results)
    print(table)
    if args.output:
        write_json(args.output, {"environment": env, "settings": vars(args), "reference_rows": reference_rows,
                                 "reference_kept": reference_kept, "total_seconds": total, "results": results,
                                 "table": table})
        log(f"wrote {args.output}")


if __name__ == "__main__":
    main()
