import importlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from scipy.optimize import brentq

import hf_prune as hp
from hf_prune.select._core import split_budget
from hf_prune.select.infomax import infomax_hard_cut, infomax_kernel, infomax_objective, infomax_solve
from tests.conftest import make_dataset

# The package re-exports the function under the module's name; the tests patch the module itself.
infomax_module = importlib.import_module("hf_prune.select.infomax")

REFERENCES = Path(__file__).resolve().parents[2] / "recipes" / "benchmarks" / "references" / "infomax.py"


def _minmax(s):
    s = np.asarray(s, dtype=np.float64)
    return (s - s.min()) / (s.max() - s.min())


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


@pytest.fixture(scope="module")
def mixture():
    """600 points from 12 Gaussian clusters of different spreads, with an SSP-like and a random score."""
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=4.0, size=(12, 16))
    labels = rng.integers(0, 12, 600)
    spread = rng.uniform(0.3, 1.5, 12)
    emb = (centers[labels] + spread[labels, None] * rng.normal(size=(600, 16))).astype(np.float32)
    ssp = np.linalg.norm(emb - centers[labels], axis=1).astype(np.float32)
    rand = rng.random(600).astype(np.float32)
    return make_dataset(emb, ssp=ssp, rand=rand, label=labels % 3), emb, {"ssp": ssp, "rand": rand}


# --- the solver, by hand -------------------------------------------------------------------------

TINY_EMB = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
TINY_K = TINY_EMB @ TINY_EMB.T - np.eye(4)  # unit rows: cosine similarities, zero diagonal
TINY_I = np.array([0.9, 0.2, 0.6, 0.4])


def test_kernel_dense_is_cosine_with_zero_diagonal():
    K = infomax_kernel(TINY_EMB * np.array([[2.0], [1.0], [3.0], [0.5]]), kernel="dense")
    np.testing.assert_allclose(K, TINY_K, atol=1e-7)


def test_budget_one_paper_update_is_eq3_softmax():
    # p = 1, step_size=None, temperature=None: X ← Softmax(p·I − 2pα·K X) literally (Eq. 3).
    alpha = 0.5
    x0 = np.full(4, 0.25)
    x1 = _softmax(1 * TINY_I - 2 * 1 * alpha * TINY_K @ x0)
    x2 = _softmax(1 * TINY_I - 2 * 1 * alpha * TINY_K @ x1)
    for iterations, expected in [(1, x1), (2, x2)]:
        got = infomax_solve(TINY_I, TINY_K, budget=1, alpha=alpha, iterations=iterations, step_size=None)
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    # Hand check of the first step: K x0 = row sums / 4.
    np.testing.assert_allclose(TINY_K @ x0, [(0.8 + 0 - 0.6) / 4, (0.8 + 0.6 + 0) / 4, (0 + 0.6 + 0.8) / 4,
                                             (-0.6 + 0 + 0.8) / 4])


def _capped(logits, p):
    """min(1, exp(ℓ + c)) with Σ = p, c found by a root finder (independent of the library's sort)."""
    c = brentq(lambda c: np.minimum(1.0, np.exp(logits + c)).sum() - p, -200, 200, xtol=1e-14)
    return np.minimum(1.0, np.exp(logits + c))


def test_damped_update_matches_numpy_and_caps_at_one():
    alpha, p, tau = 0.3, 2, 0.5  # temperature=None means τ = 1/p = 0.5
    x = np.full(4, p / 4)
    history = []
    for _ in range(2):
        grad = TINY_I - 2 * alpha * TINY_K @ x
        eta = 1.0 / grad.std()
        x = _capped((eta * grad + np.log(x)) / (1 + eta * tau), p)
        history.append(x)
    for iterations, expected in [(1, history[0]), (2, history[1])]:
        got = infomax_solve(TINY_I, TINY_K, budget=p, alpha=alpha, iterations=iterations)
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
        assert abs(got.sum() - p) < 1e-9 and got.max() <= 1.0
    # The paper's β → ∞ step on this case pushes one entry against the cap: it is held at exactly 1.
    undamped = infomax_solve(TINY_I, TINY_K, budget=p, alpha=alpha, iterations=1, step_size=None)
    np.testing.assert_allclose(undamped, _capped(p * (TINY_I - 2 * alpha * TINY_K @ np.full(4, 0.5)), p), rtol=1e-9)
    assert undamped.max() == 1.0 and abs(undamped.sum() - p) < 1e-9


def test_temperature_is_the_entropy_weight():
    # A large τ flattens X towards uniform p/N; a small τ makes it nearly binary.
    flat = infomax_solve(TINY_I, TINY_K, budget=2, temperature=1e6, iterations=5)
    sharp = infomax_solve(TINY_I, TINY_K, budget=2, temperature=1e-3, iterations=5)
    np.testing.assert_allclose(flat, 0.5, atol=1e-4)
    assert np.sort(sharp)[-2:].min() > 0.95


def test_objective_by_hand():
    K = np.array([[0.0, 0.5, 0.1], [0.5, 0.0, 0.2], [0.1, 0.2, 0.0]])
    scores = np.array([1.0, 2.0, 3.0])
    # S = {0, 2}: 1 + 3 − α·(K02 + K20) = 4 − 0.5·0.2
    assert infomax_objective(scores, K, np.array([0, 2]), alpha=0.5) == pytest.approx(3.9)
    assert infomax_objective(scores, K, np.array([True, True, False]), alpha=2.0) == pytest.approx(3 - 2 * 1.0)


# --- the properties the paper claims -------------------------------------------------------------


def test_alpha_zero_is_top_k_by_score(mixture):
    ds, _, scores = mixture
    order = np.argsort(-scores["rand"], kind="stable")
    for size in [7, 60, 300]:
        sub = hp.select.infomax(ds, size=size, score_column="rand", alpha=0.0)
        assert sorted(sub["row_id"]) == sorted(order[:size].tolist())
    # Negligible α (the paper's "α near zero") gives the same rows.
    sub = hp.select.infomax(ds, size=60, score_column="rand", alpha=1e-9)
    assert sorted(sub["row_id"]) == sorted(order[:60].tolist())


def test_large_alpha_takes_at_most_one_per_duplicate_group():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(30), 5)
    emb = rng.normal(size=(30, 8))[groups] + 1e-3 * rng.normal(size=(150, 8))
    score = rng.random(150).astype(np.float32)
    ds = make_dataset(emb, score=score, group=groups)
    sub = hp.select.infomax(ds, size=20, score_column="score", k=4, alpha=5.0)
    picked = np.bincount(np.array(sub["group"]), minlength=30)
    assert len(sub) == 20 and picked.max() == 1
    top = np.bincount(groups[np.argsort(-score)[:20]], minlength=30)
    assert top.max() >= 2  # the score alone does pick near-duplicates together here


@pytest.mark.parametrize("score", ["ssp", "rand"])
def test_objective_beats_top_k_and_random(mixture, score):
    ds, emb, scores = mixture
    info = _minmax(scores[score])
    K = infomax_kernel(emb, k=5)
    for fraction in [0.05, 0.1, 0.2, 0.3, 0.5]:
        ids = np.array(hp.select.infomax(ds, fraction=fraction, score_column=score, k=5, alpha=0.3)["row_id"])
        p = len(ids)
        ours = infomax_objective(info, K, ids, alpha=0.3)
        top = infomax_objective(info, K, np.argsort(-info)[:p], alpha=0.3)
        random = max(
            infomax_objective(info, K, np.random.default_rng(i).choice(len(info), p, replace=False), alpha=0.3)
            for i in range(20)
        )
        assert ours > top + 0.05 * abs(top), (fraction, ours, top)
        assert ours > random + 0.05 * abs(random), (fraction, ours, random)
        # The damped step is what makes this work: the paper's β → ∞ update ends no better.
        literal = np.array(
            hp.select.infomax(ds, fraction=fraction, score_column=score, alpha=0.3, step_size=None)["row_id"]
        )
        assert ours >= infomax_objective(info, K, literal, alpha=0.3)


def test_sparse_and_dense_agree_when_k_is_n_minus_one():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(60, 6)).astype(np.float32)
    ds = make_dataset(emb, score=rng.random(60).astype(np.float32))
    np.testing.assert_allclose(infomax_kernel(emb, k=59).toarray(), infomax_kernel(emb, kernel="dense"), atol=1e-12)
    for size in [5, 20, 45]:
        sparse = hp.select.infomax(ds, size=size, score_column="score", k=59, kernel="sparse")
        dense = hp.select.infomax(ds, size=size, score_column="score", kernel="dense")
        auto = hp.select.infomax(ds, size=size, score_column="score", kernel="auto")  # 60 rows → dense
        assert sparse["row_id"] == dense["row_id"] == auto["row_id"]


def test_sparse_kernel_is_symmetrised_knn():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(40, 5)).astype(np.float32)
    K = infomax_kernel(emb, k=3).toarray()
    cos = infomax_kernel(emb, kernel="dense")
    assert np.allclose(K, K.T) and np.all(np.diag(K) == 0)
    masked = cos - 10 * np.eye(40)
    knn = np.argsort(-masked, axis=1)[:, :3]
    directed = np.zeros_like(cos)
    directed[np.arange(40)[:, None], knn] = cos[np.arange(40)[:, None], knn]
    np.testing.assert_allclose(K, (directed + directed.T) / 2, atol=1e-12)


def test_matches_the_dense_reference_implementation(mixture):
    spec = importlib.util.spec_from_file_location("infomax_references", REFERENCES)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    ds, emb, scores = mixture
    for fraction in [0.05, 0.3]:
        for step_size in [1.0, None]:
            sub = hp.select.infomax(ds, fraction=fraction, score_column="ssp", step_size=step_size)
            expected = ref.reference_infomax(_minmax(scores["ssp"]), emb, len(sub), step_size=step_size)
            assert sub["row_id"] == expected.tolist()


# --- partitions, classes, conventions ------------------------------------------------------------


def test_partitions_exact_budget_deterministic_and_independent(mixture):
    ds, _, scores = mixture
    kwargs = dict(size=37, score_column="rand", partitions=3, normalize_scores=False)
    sub = hp.select.infomax(ds, seed=5, **kwargs)
    assert len(sub) == 37
    assert hp.select.infomax(ds, seed=5, **kwargs)["row_id"] == sub["row_id"]
    assert hp.select.infomax(ds, seed=6, **kwargs)["row_id"] != sub["row_id"]
    # The parts are the seeded shuffle split in three, each with its split_budget share, solved alone.
    perm = np.random.default_rng([5, 0]).permutation(len(ds))
    parts = [np.sort(p) for p in np.array_split(perm, 3)]
    budgets = split_budget(np.array([len(p) for p in parts]), 37)
    ids = set(sub["row_id"])
    for part, budget in zip(parts, budgets):
        assert len(ids & set(part.tolist())) == budget
        alone = hp.select.infomax(ds.select(part), size=int(budget), score_column="rand", normalize_scores=False)
        assert set(part[np.array(alone["row_id"])].tolist()) <= ids
    # One partition makes no random choice: the seed does not matter.
    one = dict(size=37, score_column="rand")
    assert hp.select.infomax(ds, seed=1, **one)["row_id"] == hp.select.infomax(ds, seed=2, **one)["row_id"]


def test_per_class_runs_each_class_alone_and_params(mixture):
    ds, _, _ = mixture
    sub = hp.select.infomax(ds, fraction=0.1, score_column="ssp", label_column="label", normalize_scores=False)
    labels = np.array(ds["label"])
    ids = np.array(sub["row_id"])
    for c in range(3):
        rows = np.flatnonzero(labels == c)
        alone = hp.select.infomax(ds.select(rows), size=int((labels[ids] == c).sum()), score_column="ssp",
                                  normalize_scores=False)
        assert sorted(rows[np.array(alone["row_id"])].tolist()) == sorted(ids[labels[ids] == c].tolist())
    step = hp.provenance(sub)[-1]
    assert step["method"] == "infomax"
    assert step["params"]["alpha"] == 0.3 and step["params"]["k"] == 5 and step["params"]["label_column"] == "label"


def test_bad_input(mixture, monkeypatch):
    ds, emb, scores = mixture
    with pytest.raises(ValueError, match="`k`"):
        hp.select.infomax(ds.select(range(5)), size=2, score_column="ssp", k=5)
    with pytest.raises(ValueError, match="`k`"):  # per class: class 2 of 6 rows
        small = make_dataset(emb[:14], s=scores["ssp"][:14], label=[0] * 8 + [1] * 6)
        hp.select.infomax(small, size=4, score_column="s", k=6, label_column="label")
    bad = scores["ssp"].copy()
    bad[4] = np.nan
    with pytest.raises(ValueError, match="'s'.*NaN"):
        hp.select.infomax(make_dataset(emb, s=bad), fraction=0.1, score_column="s")
    ragged = Dataset.from_dict({"emb": [[1.0, 2.0], [1.0], [0.0, 1.0]], "s": [0.1, 0.2, 0.3]})
    with pytest.raises(ValueError, match="ragged"):
        hp.select.infomax(ragged, size=1, score_column="s", k=1)
    for kwargs, word in [
        ({"fraction": 0.1, "alpha": -1.0}, "alpha"), ({"fraction": 0.1, "kernel": "full"}, "kernel"),
        ({"fraction": 0.1, "iterations": 0}, "iterations"), ({"fraction": 0.1, "temperature": 0.0}, "temperature"),
        ({"fraction": 0.1, "step_size": -1.0}, "step_size"), ({"fraction": 0.1, "partitions": 601}, "partitions"),
        ({"fraction": 0.1, "k": 0}, "`k`"),
    ]:
        with pytest.raises(ValueError, match=word):
            hp.select.infomax(ds, score_column="ssp", **kwargs)
    monkeypatch.setattr(infomax_module, "DENSE_MAX_ROWS", 100)
    with pytest.raises(ValueError, match="dense"):
        hp.select.infomax(ds, fraction=0.1, score_column="ssp", kernel="dense")


def test_selection_is_the_top_p_of_the_relaxed_solution(mixture):
    ds, emb, scores = mixture
    info = _minmax(scores["ssp"])
    for size in [30, 150]:
        x = infomax_solve(info, infomax_kernel(emb, k=5), budget=size)
        assert abs(x.sum() - size) < 1e-8 and x.min() >= 0 and x.max() <= 1
        ordered = np.sort(x)[::-1]
        assert ordered[size - 1] > ordered[size]  # no tie at the cut
        sub = hp.select.infomax(ds, size=size, score_column="ssp")
        assert sorted(sub["row_id"]) == sorted(np.argsort(-x)[:size].tolist())


def test_ties_go_to_the_lower_row():
    emb = np.eye(5, dtype=np.float32)  # orthogonal rows: K = 0, so only the scores matter
    ds = make_dataset(emb, score=np.array([0.5, 1.0, 1.0, 1.0, 0.0], dtype=np.float32))
    assert hp.select.infomax(ds, size=2, score_column="score", k=2)["row_id"] == [1, 2]
    assert hp.select.infomax(ds, size=4, score_column="score", k=2)["row_id"] == [0, 1, 2, 3]


# --- hard cutoff ---------------------------------------------------------------------------------


def test_hard_cut_by_hand():
    scores = np.array([0.2, 0.9, 0.5, 0.9, 0.1])
    # ⌊0.5·5⌋ = 2: the two 0.9s; ⌊0.39·5⌋ = 1: of the tied 0.9s the lower position goes first (as CCS).
    assert infomax_hard_cut(scores, 0.5).tolist() == [1, 3]
    assert infomax_hard_cut(scores, 0.39).tolist() == [1]
    assert infomax_hard_cut(scores, 0.7).tolist() == [1, 2, 3]
    assert infomax_hard_cut(scores, 0.19).tolist() == [] and infomax_hard_cut(scores, 0.0).tolist() == []


def _orthogonal(scores, labels=None):
    """Orthogonal embeddings make K = 0, so InfoMax keeps the top scores of the rows left in play."""
    n = len(scores)
    columns = {"score": np.asarray(scores, dtype=np.float32)}
    if labels is not None:
        columns["label"] = labels
    return make_dataset(np.eye(n, dtype=np.float32), **columns)


def test_hard_cutoff_per_class_by_hand():
    # class 0: rows 0–5, class 1: rows 6–9.
    scores = [0.9, 0.1, 0.8, 0.3, 0.5, 0.7, 0.6, 0.2, 1.0, 0.4]
    labels = [0] * 6 + [1] * 4
    ds = _orthogonal(scores, labels)
    # Per class: ⌊0.34·6⌋ = 2 cut in class 0 (rows 0, 2), ⌊0.34·4⌋ = 1 in class 1 (row 8).
    # Budget 5 splits as [3, 2]: class 0 keeps the top 3 of rows 1, 3, 4, 5 → 5, 4, 3;
    # class 1 the top 2 of rows 6, 7, 9 → 6, 9.
    sub = hp.select.infomax(ds, size=5, score_column="score", k=2, hard_cutoff=0.34, label_column="label")
    assert sub["row_id"] == [3, 4, 5, 6, 9]
    # Without the cutoff the hardest rows win: 0, 2, 5 and 8, 6.
    plain = hp.select.infomax(ds, size=5, score_column="score", k=2, label_column="label")
    assert plain["row_id"] == [0, 2, 5, 6, 8]
    # Globally: ⌊0.34·10⌋ = 3 cut over all rows (8, 0, 2); the top 5 of the rest are 5, 6, 4, 9, 3.
    glob = hp.select.infomax(ds, size=5, score_column="score", k=2, hard_cutoff=0.34)
    assert glob["row_id"] == [3, 4, 5, 6, 9]
    assert hp.provenance(sub)[-1]["params"]["hard_cutoff"] == 0.34


def test_hard_cutoff_drops_the_same_rows_as_ccs(mixture):
    ds, _, scores = mixture
    for cutoff in [0.1, 0.25, 0.5]:
        cut = set(infomax_hard_cut(scores["ssp"], cutoff).tolist())
        rest = len(ds) - len(cut)
        # With the budget equal to what the cutoff leaves, both keep exactly the uncut rows.
        ours = hp.select.infomax(ds, size=rest, score_column="ssp", hard_cutoff=cutoff)
        theirs = hp.select.ccs(ds, size=rest, score_column="ssp", hard_cutoff=cutoff)
        assert ours["row_id"] == theirs["row_id"] == sorted(set(range(len(ds))) - cut)


def test_hard_cut_rows_are_never_selected(mixture):
    ds, _, scores = mixture
    labels = np.array(ds["label"])
    for cutoff in [0.1, 0.3, 0.5]:
        cut_global = set(infomax_hard_cut(scores["ssp"], cutoff).tolist())
        cut_class = set()
        for c in range(3):
            rows = np.flatnonzero(labels == c)
            cut_class |= set(rows[infomax_hard_cut(scores["ssp"][rows], cutoff)].tolist())
        for kwargs, cut in [({}, cut_global), ({"label_column": "label"}, cut_class),
                            ({"partitions": 3, "seed": 2}, cut_global),
                            ({"label_column": "label", "partitions": 2, "seed": 1}, cut_class)]:
            for fraction in [0.05, 0.2, 0.45]:
                sub = hp.select.infomax(ds, fraction=fraction, score_column="ssp", hard_cutoff=cutoff, **kwargs)
                assert len(sub) == round(fraction * len(ds)) and not set(sub["row_id"]) & cut, (cutoff, kwargs)


def test_hard_cutoff_solves_on_the_rows_left(mixture):
    ds, _, scores = mixture
    # A global cutoff is InfoMax on the uncut rows alone (scores normalised over those rows).
    for cutoff in [0.1, 0.4]:
        left = np.setdiff1d(np.arange(len(ds)), infomax_hard_cut(scores["ssp"], cutoff))
        sub = hp.select.infomax(ds, size=50, score_column="ssp", hard_cutoff=cutoff)
        alone = hp.select.infomax(ds.select(left), size=50, score_column="ssp")
        assert sub["row_id"] == left[np.array(alone["row_id"])].tolist()
    # α = 0 keeps the next-hardest rows after the cut: positions 60..119 of the ranking for cutoff 0.1.
    order = np.argsort(-scores["ssp"], kind="stable")
    sub = hp.select.infomax(ds, size=60, score_column="ssp", hard_cutoff=0.1, alpha=0.0)
    assert sub["row_id"] == sorted(order[60:120].tolist())


def test_hard_cutoff_zero_is_bit_identical(mixture):
    ds, _, _ = mixture
    # Selections recorded before the option existed.
    before = {
        (("size", 12),): [81, 172, 238, 294, 338, 353, 358, 411, 477, 492, 537, 582],
        (("size", 12), ("label_column", "label")): [81, 172, 178, 238, 338, 346, 353, 358, 402, 411, 582, 594],
        (("size", 12), ("partitions", 3), ("seed", 4)): [81, 172, 238, 282, 294, 338, 346, 353, 358, 411, 477, 582],
    }
    for kwargs, expected in before.items():
        assert hp.select.infomax(ds, score_column="ssp", **dict(kwargs))["row_id"] == expected
        assert hp.select.infomax(ds, score_column="ssp", hard_cutoff=0.0, **dict(kwargs))["row_id"] == expected
    kwargs = dict(fraction=0.3, score_column="ssp", label_column="label", partitions=2, seed=1)
    assert hp.select.infomax(ds, hard_cutoff=0, **kwargs)["row_id"] == hp.select.infomax(ds, **kwargs)["row_id"]


def test_hard_cutoff_bad_values(mixture):
    ds, _, _ = mixture
    for value in [1.0, 1.5, -0.1, "0.1", True, None, float("nan")]:
        with pytest.raises(ValueError, match="hard_cutoff"):
            hp.select.infomax(ds, fraction=0.1, score_column="ssp", hard_cutoff=value)
    # The cutoff leaves 300 of 600 rows: a budget of 301 cannot be met.
    with pytest.raises(ValueError, match="`hard_cutoff`=0.5 leaves 300 of 600 rows, fewer than the budget 301"):
        hp.select.infomax(ds, size=301, score_column="ssp", hard_cutoff=0.5)
    hp.select.infomax(ds, size=300, score_column="ssp", hard_cutoff=0.5)
    with pytest.raises(ValueError, match="hard_cutoff"):  # per class: 60% of each class after cutting half
        hp.select.infomax(ds, fraction=0.6, score_column="ssp", hard_cutoff=0.5, label_column="label")
    before = ds[:3]
    hp.select.infomax(ds, fraction=0.1, score_column="ssp", hard_cutoff=0.2, label_column="label")
    assert ds[:3] == before and "row_id" not in ds.column_names
