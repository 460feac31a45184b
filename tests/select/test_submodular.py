import inspect
import math

import numpy as np
import pytest
import scipy.sparse as sp

import hf_prune as hp
from hf_prune.select.submodular import (
    disparity_min_objective,
    disparity_order,
    disparity_sum_objective,
    facility_location_objective,
    facility_location_order,
    graph_cut_objective,
    graph_cut_order,
    lazy_greedy,
    log_determinant_objective,
    log_determinant_order,
    similarity_graph,
)
from tests.conftest import make_dataset

SELECTORS = [
    hp.select.facility_location, hp.select.graph_cut, hp.select.log_determinant,
    hp.select.disparity_min, hp.select.disparity_sum,
]
# A path 0–1–2–3 with dyadic similarities, so every gain below is exact in floating point.
PATH = sp.csr_matrix(np.array([
    [1.0, 0.75, 0.0, 0.0],
    [0.75, 1.0, 0.25, 0.0],
    [0.0, 0.25, 1.0, 0.5],
    [0.0, 0.0, 0.5, 1.0],
]))
LINE = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]])


def random_points(seed, n=40, d=5):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


# --- hand-computed cases ---------------------------------------------------------------------------


def test_facility_location_by_hand():
    # Empty-set gains are the row sums (1.75, 2, 1.75, 1.5) → row 1. Then row 0 gains 1 − .75 = .25,
    # row 2 gains (1 − .25) + .5 = 1.25 and row 3 gains (.5 − .25) + 1 = 1.25: a tie, to row 2.
    # Then row 3 gains .5 > row 0's .25.
    np.testing.assert_array_equal(facility_location_order(PATH, 4), [1, 2, 3, 0])
    assert facility_location_objective(PATH, [1, 2]) == 0.75 + 1 + 1 + 0.5
    assert facility_location_objective(PATH, []) == 0.0


def test_graph_cut_by_hand():
    # λ = .5: gains Σ_i s_ij − λ s_jj = (1.25, 1.5, 1.25, 1) → 1; then 0: 1.75 − .5(1.5 + 1) = .5,
    # 2: 1.75 − .5(.5 + 1) = 1, 3: 1.5 − .5 = 1 → tie to 2; then 0 and 3 both gain .5 → 0.
    np.testing.assert_array_equal(graph_cut_order(PATH, 4, lambdaVal=0.5), [1, 2, 0, 3])
    assert graph_cut_objective(PATH, [1, 2], lambdaVal=0.5) == 1.5 + 1.0
    # λ = 0 is the modular "total similarity" score: rows by their sums, ties to the lower row.
    np.testing.assert_array_equal(graph_cut_order(PATH, 4, lambdaVal=0.0), [1, 0, 2, 3])


def test_log_determinant_by_hand():
    # L = X Xᵀ = [[1,0,1],[0,1,1],[1,1,2]], λ = 1: diagonal gains log 2, log 2, log 3 → row 2; then
    # both others have Schur complement 2 − 1/3 → tie to row 0; det [[3,1],[1,2]] = 5.
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_array_equal(log_determinant_order(x, 3, metric="ip", regularizer=1.0), [2, 0, 1])
    assert math.isclose(log_determinant_objective(x, [2, 0], metric="ip"), math.log(5.0), rel_tol=1e-12)
    assert math.isclose(log_determinant_objective(x, [0, 1, 2], metric="ip"), math.log(8.0), rel_tol=1e-12)


def test_disparity_by_hand():
    # Sum: 0 first (all gains 0); then 10 away → 4; then rows 1, 2, 3 are each 10 from {0, 4}: tie
    # to 1; then 3 (6 + 4 + 5 = 15) beats 2 (3 + 7 + 2 = 12).
    np.testing.assert_array_equal(disparity_order(LINE, 5, metric="l2", reduce="sum"), [0, 4, 1, 3, 2])
    # Min: farthest point from the kept rows each time: 4 (10), 3 (4 from 4), 2 (3), 1.
    np.testing.assert_array_equal(disparity_order(LINE, 5, metric="l2", reduce="min"), [0, 4, 3, 2, 1])
    assert disparity_sum_objective(LINE, [0, 4, 1], metric="l2") == 10 + 1 + 9
    assert disparity_min_objective(LINE, [0, 4, 3], metric="l2") == 4
    assert disparity_min_objective(LINE, [2], metric="l2") == 0.0


def test_disparity_min_matches_k_center_first():
    x = random_points(3, n=60)
    ds = make_dataset(x)
    a = hp.select.disparity_min(ds, size=12, metric="l2")
    b = hp.select.k_center_greedy(ds, size=12, metric="l2", init="first")
    assert a["row_id"] == b["row_id"]


def test_similarity_graph_values():
    x = random_points(0, n=30, d=4)
    W = similarity_graph(x, metric="cosine", k=3)
    assert abs(W - W.T).max() == 0
    np.testing.assert_allclose(W.diagonal(), 1.0, rtol=1e-6)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = np.clip(xn.astype(np.float64) @ xn.T.astype(np.float64), 0, None)
    rows, cols = W.nonzero()
    np.testing.assert_allclose(W[rows, cols].A1, cos[rows, cols], rtol=1e-5)
    # The union of the 3-NN lists plus the diagonal: at most N·(2k + 1) entries.
    assert W.nnz <= 30 * 7
    # l2 with a given bandwidth: exp(−d²/σ²) exactly.
    W = similarity_graph(x, metric="l2", k=3, bandwidth=2.0)
    rows, cols = W.nonzero()
    d2 = ((x[rows].astype(np.float64) - x[cols]) ** 2).sum(1)
    np.testing.assert_allclose(W[rows, cols].A1, np.exp(-d2 / 4.0), rtol=1e-6)
    assert (np.diff(W.indptr) >= 4).all()


# --- greedy == brute-force greedy --------------------------------------------------------------------


def brute_force_greedy(objective, n, budget, tie=None, tol=1e-9, start=()):
    """Naive greedy: recompute f(S ∪ {j}) − f(S) for every row at every step; ties to the lower row.

    Gains within ``tol`` (relative) of the best count as ties: differences of objectives carry
    rounding that the incremental gains do not, and symmetric data produces exact ties. ``tie(S, j)``
    breaks them first where a method defines a secondary key.
    """
    chosen = list(start)
    for _ in range(budget - len(chosen)):
        base = objective(chosen)
        rest = [j for j in range(n) if j not in chosen]
        rest = _near_best(rest, [objective(chosen + [j]) - base for j in rest], tol)
        if tie is not None:
            rest = _near_best(rest, [tie(chosen, j) for j in rest], tol)
        chosen.append(min(rest))
    return chosen


def _near_best(rows, values, tol):
    best = max(values)
    return [j for j, v in zip(rows, values) if v >= best - tol * max(1.0, abs(best))]


def dense_facility_location(Wd):
    return lambda s: float(Wd[:, s].max(axis=1).sum()) if s else 0.0


def dense_graph_cut(Wd, lam):
    return lambda s: float(Wd[:, s].sum() - lam * Wd[np.ix_(s, s)].sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_facility_location_and_graph_cut_equal_brute_force(seed, metric):
    x = random_points(seed)
    for k in (4, 39):  # a sparse graph and the full similarity
        W = similarity_graph(x, metric=metric, k=k)
        # The naive greedy evaluates the objectives on the dense matrix (thousands of evaluations);
        # they are the library's objectives, checked here on a few subsets.
        Wd = W.toarray()
        for subset in ([0], [3, 17, 8], list(range(0, 40, 3))):
            assert dense_facility_location(Wd)(subset) == pytest.approx(facility_location_objective(W, subset))
            assert dense_graph_cut(Wd, 0.7)(subset) == pytest.approx(graph_cut_objective(W, subset, lambdaVal=0.7))
        picks = facility_location_order(W, 12)
        naive = brute_force_greedy(dense_facility_location(Wd), len(x), 12)
        np.testing.assert_array_equal(picks, naive)
        for lam in (0.3, 0.5, 2.0):
            picks = graph_cut_order(W, 12, lambdaVal=lam)
            naive = brute_force_greedy(dense_graph_cut(Wd, lam), len(x), 12)
            np.testing.assert_array_equal(picks, naive)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_log_determinant_equals_brute_force(seed, metric):
    x = random_points(seed)
    for lam in (0.1, 1.0):
        picks = log_determinant_order(x, 10, metric=metric, regularizer=lam)
        naive = brute_force_greedy(
            lambda s, lam=lam: log_determinant_objective(x, s, metric=metric, regularizer=lam), len(x), 10
        )
        np.testing.assert_array_equal(picks, naive)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_disparity_equals_brute_force(seed, metric):
    x = random_points(seed)
    xd = x.astype(np.float64)
    if metric == "cosine":
        xn = xd / np.linalg.norm(xd, axis=1, keepdims=True)
        D = 1 - xn @ xn.T
    else:
        D = np.sqrt(((xd[:, None] - xd[None]) ** 2).sum(-1))
    picks = disparity_order(x, 10, metric=metric, reduce="sum")
    naive = brute_force_greedy(lambda s: disparity_sum_objective(x, s, metric=metric), len(x), 10)
    np.testing.assert_array_equal(picks, naive)
    # Disparity-min ties whenever f(S ∪ {j}) = f(S): the farthest row from S wins, then the lower row.
    picks = disparity_order(x, 10, metric=metric, reduce="min")
    naive = brute_force_greedy(
        lambda s: disparity_min_objective(x, s, metric=metric), len(x), 10,
        tie=lambda s, j: D[j, s].min() if s else 0.0,
    )
    np.testing.assert_array_equal(picks, naive)


def test_lazy_greedy_on_a_coverage_function():
    rng = np.random.default_rng(0)
    sets = [rng.choice(50, size=rng.integers(1, 12), replace=False) for _ in range(60)]
    weights = rng.random(50)

    def coverage(chosen):
        covered = np.zeros(50, bool)
        for j in chosen:
            covered[sets[j]] = True
        return weights[covered].sum()

    covered = np.zeros(50, bool)
    evaluations = []

    def gain(j):
        evaluations.append(j)
        return weights[sets[j]][~covered[sets[j]]].sum()

    picks = lazy_greedy([weights[s].sum() for s in sets], 15, gain, lambda j: covered.__setitem__(sets[j], True))
    np.testing.assert_array_equal(picks, brute_force_greedy(coverage, 60, 15))
    assert len(evaluations) < 14 * 60  # lazy: fewer re-evaluations than the naive greedy's


def test_initial_rows_then_brute_force_greedy():
    x = random_points(21)
    start = [17, 3, 30]
    W = similarity_graph(x, metric="cosine", k=6)
    np.testing.assert_array_equal(
        facility_location_order(W, 10, initial=start),
        brute_force_greedy(lambda s: facility_location_objective(W, s), 40, 10, start=start),
    )
    np.testing.assert_array_equal(
        graph_cut_order(W, 10, lambdaVal=0.4, initial=start),
        brute_force_greedy(lambda s: graph_cut_objective(W, s, lambdaVal=0.4), 40, 10, start=start),
    )
    np.testing.assert_array_equal(
        log_determinant_order(x, 10, initial=start),
        brute_force_greedy(lambda s: log_determinant_objective(x, s), 40, 10, start=start),
    )
    np.testing.assert_array_equal(
        disparity_order(x, 10, metric="l2", reduce="sum", initial=start),
        brute_force_greedy(lambda s: disparity_sum_objective(x, s, metric="l2"), 40, 10, start=start),
    )
    # The initial rows open the order, also when they are the whole budget.
    np.testing.assert_array_equal(disparity_order(x, 3, reduce="min", initial=start), start)
    with pytest.raises(ValueError, match="`initial`"):
        facility_location_order(W, 2, initial=start)


# --- the Dataset API ---------------------------------------------------------------------------------


@pytest.mark.parametrize("selector", SELECTORS, ids=lambda f: f.__name__)
def test_rank_column_and_prefix(selector):
    ds = make_dataset(random_points(5, n=80, d=6))
    small = selector(ds, size=8, rank_column="rank")
    large = selector(ds, size=20, rank_column="rank")
    order_small = np.array(small["row_id"])[np.argsort(small["rank"])]
    order_large = np.array(large["row_id"])[np.argsort(large["rank"])]
    np.testing.assert_array_equal(order_small, order_large[:8])
    assert sorted(large["rank"]) == list(range(20))
    assert large.features["rank"].dtype == "int64"
    assert hp.provenance(large)[-1]["method"] == selector.__name__
    with pytest.raises(ValueError, match="'rank' already exists"):
        selector(large, size=5, rank_column="rank")
    again = selector(large, size=5, rank_column="rank", overwrite=True)
    assert sorted(again["rank"]) == list(range(5))
    with pytest.raises(ValueError, match="rank_column"):
        selector(ds, size=5, rank_column="row_id")


@pytest.mark.parametrize("selector", SELECTORS, ids=lambda f: f.__name__)
def test_initial_subset(selector, blobs):
    ds, _, labels = blobs
    sub = selector(ds, size=12, initial_subset=[50, 7], rank_column="rank")
    ranks = dict(zip(sub["row_id"], sub["rank"]))
    assert ranks[50] == 0 and ranks[7] == 1 and len(sub) == 12
    assert hp.provenance(sub)[-1]["params"]["initial_subset"] == [50, 7]
    # Starting from the greedy's own first picks changes nothing.
    free = selector(ds, size=12, rank_column="rank")
    order = np.array(free["row_id"])[np.argsort(free["rank"])]
    again = selector(ds, size=12, initial_subset=order[:4].tolist(), rank_column="rank")
    assert again["row_id"] == free["row_id"] and again["rank"] == free["rank"]
    # Per class: the initial rows count towards their own class's budget.
    per_class = selector(ds, fraction=0.1, label_column="label", initial_subset=[0, 45, 46], rank_column="rank")
    kept = dict(zip(per_class["row_id"], per_class["rank"]))
    assert kept[0] == 0 and {kept[45], kept[46]} == {0, 1}
    with pytest.raises(ValueError, match="`initial_subset` has 3 rows in a group whose budget is 2"):
        selector(ds, fraction=0.1, label_column="label", initial_subset=[80, 81, 82])
    with pytest.raises(ValueError, match="`initial_subset` must hold distinct row positions in \\[0, 90\\)"):
        selector(ds, size=5, initial_subset=[3, 3])
    with pytest.raises(ValueError, match="`initial_subset` must hold distinct"):
        selector(ds, size=5, initial_subset=[90])
    with pytest.raises(ValueError, match="`initial_subset` must be a sequence"):
        selector(ds, size=5, initial_subset=[1.5])
    with pytest.raises(ValueError, match="more than the budget|budget is 2"):
        selector(ds, size=2, initial_subset=[1, 2, 3])


def test_selector_matches_the_order_functions():
    x = random_points(7, n=70)
    ds = make_dataset(x)
    W = similarity_graph(x, metric="l2", k=6)
    sub = hp.select.facility_location(ds, size=9, metric="l2", k=6)
    assert sub["row_id"] == sorted(facility_location_order(W, 9).tolist())
    sub = hp.select.graph_cut(ds, size=9, metric="l2", k=6, lambdaVal=0.3)
    assert sub["row_id"] == sorted(graph_cut_order(W, 9, lambdaVal=0.3).tolist())
    sub = hp.select.log_determinant(ds, size=9, metric="l2", regularizer=0.5)
    assert sub["row_id"] == sorted(log_determinant_order(x, 9, metric="l2", regularizer=0.5).tolist())


def test_facility_location_beats_k_center_and_random_on_mean_distance():
    # Twelve Gaussian clusters of very different sizes: k-center spends its budget on the rim and on
    # outliers (minimax), facility location on where the rows are (the mean nearest-kept distance).
    rng = np.random.default_rng(0)
    sizes = rng.integers(10, 120, size=12)
    centres = rng.normal(scale=6.0, size=(12, 8))
    x = np.concatenate([c + rng.normal(scale=rng.uniform(0.5, 2.0), size=(s, 8)) for c, s in zip(centres, sizes)])
    ds = make_dataset(x)

    def mean_nearest(sub):
        kept = x[sub["row_id"]]
        return np.sqrt(((x[:, None] - kept[None]) ** 2).sum(-1)).min(1).mean()

    fl = mean_nearest(hp.select.facility_location(ds, size=40, metric="l2", k=15))
    kc = mean_nearest(hp.select.k_center_greedy(ds, size=40, metric="l2", seed=0))
    rnd = np.mean([mean_nearest(hp.select.random(ds, size=40, seed=s)) for s in range(5)])
    assert fl < 0.85 * kc
    assert fl < 0.85 * rnd


def test_objective_beats_random_subsets():
    x = random_points(11, n=120)
    W = similarity_graph(x, metric="cosine", k=8)
    picks = facility_location_order(W, 10)
    rng = np.random.default_rng(0)
    randoms = [facility_location_objective(W, rng.choice(120, 10, replace=False)) for _ in range(20)]
    assert facility_location_objective(W, picks) > max(randoms)
    picks = log_determinant_order(x, 10)
    randoms = [log_determinant_objective(x, rng.choice(120, 10, replace=False)) for _ in range(20)]
    assert log_determinant_objective(x, picks) > max(randoms)


def test_ties_go_to_the_lower_row_through_the_dataset():
    # Four copies of two points: every greedy keeps the first copy of each point.
    x = np.array([[1.0, 0.0], [0.0, 1.0]] * 4)
    ds = make_dataset(x)
    for selector in SELECTORS:
        kwargs = {"k": 3} if "k" in inspect.signature(selector).parameters else {}
        assert selector(ds, size=2, **kwargs)["row_id"] == [0, 1], selector.__name__


# --- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("selector", SELECTORS, ids=lambda f: f.__name__)
def test_bad_input(selector, blobs):
    ds, _, _ = blobs
    with pytest.raises(ValueError, match="`metric`"):
        selector(ds, size=5, metric="euclidean")
    bad = make_dataset(np.where(np.arange(90)[:, None] == 3, np.nan, 1.0) * np.ones((90, 4)))
    with pytest.raises(ValueError, match="'emb' has NaN"):
        selector(bad, size=5)


def test_bad_parameters(blobs):
    ds, x, _ = blobs
    with pytest.raises(ValueError, match="`k`"):
        hp.select.facility_location(ds, size=5, k=0)
    with pytest.raises(ValueError, match="`k`=40"):
        hp.select.facility_location(ds, size=5, k=40, label_column="label")
    with pytest.raises(ValueError, match="`knn_index`"):
        hp.select.graph_cut(ds, size=5, knn_index="annoy")
    with pytest.raises(ValueError, match="`lambdaVal`"):
        hp.select.graph_cut(ds, size=5, lambdaVal=-0.1)
    with pytest.raises(ValueError, match="`bandwidth`"):
        hp.select.facility_location(ds, size=5, metric="l2", bandwidth=0)
    with pytest.raises(ValueError, match="`regularizer`"):
        hp.select.log_determinant(ds, size=5, regularizer=0)
    with pytest.raises(ValueError, match="`metric`"):
        hp.select.disparity_sum(ds, size=5, metric="ip")
    with pytest.raises(ValueError, match="`budget`"):
        facility_location_order(PATH, 5)
    with pytest.raises(ValueError, match="non-negative"):
        facility_location_order(-PATH, 2)
    with pytest.raises(ValueError, match="`subset`"):
        facility_location_objective(PATH, [0, 0])
    with pytest.raises(ValueError, match="`reduce`"):
        disparity_order(x, 3, reduce="max")


def test_spec_strings(blobs):
    ds, _, _ = blobs
    from hf_prune.select.spec import run_spec

    sub = run_spec(ds, "graph_cut:size=10,lambdaVal=0.4,k=5,metric=l2")
    assert sub["row_id"] == hp.select.graph_cut(ds, size=10, lambdaVal=0.4, k=5, metric="l2")["row_id"]


@pytest.mark.slow
def test_same_picks_as_apricot_and_submodlib():
    apricot = pytest.importorskip("apricot")
    submodlib = pytest.importorskip("submodlib")
    x = random_points(13, n=300, d=8)
    W = similarity_graph(x, metric="l2", k=10)
    ours = facility_location_order(W, 30)
    peer = apricot.FacilityLocationSelection(30, metric="precomputed", optimizer="lazy").fit(W).ranking
    np.testing.assert_array_equal(peer, ours)
    fl = submodlib.FacilityLocationFunction(n=300, mode="sparse", sijs=W, num_neighbors=10)
    peer = [i for i, _ in fl.maximize(budget=30, optimizer="LazyGreedy", show_progress=False)]
    np.testing.assert_array_equal(peer, ours)
    # Graph cut: submodlib's λ; apricot's α·Σ_V Σ_S − Σ_S Σ_S is α·f_λ with α = 1/λ.
    ours = graph_cut_order(W, 30, lambdaVal=0.5)
    gc = submodlib.GraphCutFunction(n=300, mode="sparse", lambdaVal=0.5, ggsijs=W, num_neighbors=10)
    peer = [i for i, _ in gc.maximize(budget=30, optimizer="LazyGreedy", show_progress=False)]
    np.testing.assert_array_equal(peer, ours)
    peer = apricot.GraphCutSelection(30, metric="precomputed", alpha=2.0, optimizer="lazy").fit(W).ranking
    np.testing.assert_array_equal(peer, ours)
