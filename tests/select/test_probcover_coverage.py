"""ProbCover's coverage is exact: its δ-graph holds every pair and its greedy equals a brute-force one."""

import numpy as np
import pytest

import hf_prune as hp
from hf_prune.ops.knn import normalize_rows
from hf_prune.select.probcover import coverage_graph, max_coverage
from tests.conftest import make_dataset


def clustered_sphere(n=3000, d=8, seed=0):
    """Twelve clusters (20–600 points at n=3000, scaled with n) with spreads 0.04–0.25, plus a uniform
    background (21% of the rows), shuffled. At n=3000 and δ = 0.3 a third of the balls hold more than
    256 points (the largest 600).
    """
    rng = np.random.default_rng(seed)
    sizes = np.array([600, 450, 300, 250, 200, 150, 120, 100, 80, 60, 40, 20]) * n // 3000
    spreads = np.linspace(0.04, 0.25, len(sizes))
    centers = normalize_rows(rng.normal(size=(len(sizes), d))).astype(np.float64)
    emb = [c + s * rng.normal(size=(m, d)) for c, s, m in zip(centers, spreads, sizes)]
    emb.append(normalize_rows(rng.normal(size=(n - sizes.sum(), d))))
    return np.concatenate(emb)[rng.permutation(n)].astype(np.float32)


def dense_balls(emb, delta):
    """The N×N δ-ball matrix in float64 on the same float32 unit vectors ProbCover uses."""
    x = normalize_rows(emb).astype(np.float64)
    # Row blocks keep the (rows, N, d) difference tensor small.
    return np.concatenate([np.sqrt(((x[i : i + 256, None] - x[None]) ** 2).sum(-1)) < delta
                           for i in range(0, len(x), 256)])


def brute_force_greedy(balls, k):
    """Every step recounts each row's uncovered points from the dense matrix; ties to the lower row."""
    covered, order = np.zeros(len(balls), dtype=bool), []
    for _ in range(k):
        gain = (balls & ~covered).sum(1)
        assert gain.max() > 0  # the test stays in the regime where the greedy decides every pick
        order.append(int(np.argmax(gain)))
        covered |= balls[order[-1]]
    return order, covered.mean()


def test_greedy_matches_brute_force_on_thousands_of_rows():
    emb, delta, k = clustered_sphere(), 0.3, 40
    balls = dense_balls(emb, delta)
    assert (balls.sum(1) > 256).mean() > 0.3  # balls a 256-neighbour cap would truncate
    order, coverage = brute_force_greedy(balls, k)

    indptr, indices = coverage_graph(normalize_rows(emb), delta)
    got = np.zeros_like(balls)
    got[np.repeat(np.arange(len(emb)), np.diff(indptr)), indices] = True
    np.testing.assert_array_equal(got, balls)
    np.testing.assert_array_equal(max_coverage(indptr, indices, k, np.random.default_rng(0)), order)

    sub = hp.select.probcover(make_dataset(emb), size=k, delta=delta)
    ids = np.array(sub["row_id"])
    assert ids.tolist() == sorted(order)
    assert balls[ids].any(0).mean() == pytest.approx(coverage)
    assert hp.provenance(sub)[-1]["params"]["graph_edges"] == [int(balls.sum())]


def test_per_class_greedy_matches_brute_force():
    emb = clustered_sphere(n=2000, seed=1)
    labels = np.random.default_rng(2).integers(0, 2, size=len(emb))
    sub = hp.select.probcover(make_dataset(emb, label=labels), size=30, delta=0.3, label_column="label")
    ids = np.array(sub["row_id"])
    for c in (0, 1):
        members = np.flatnonzero(labels == c)
        order, _ = brute_force_greedy(dense_balls(emb[members], 0.3), int((labels[ids] == c).sum()))
        assert sorted(members[order]) == sorted(ids[labels[ids] == c])


def on_circle(angles):
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def test_ball_larger_than_any_neighbour_cap_by_hand():
    # A: 600 points within 0.06 rad (one ball holds all of A at δ=0.1), B: 100 points, C: one point.
    angles = np.r_[np.linspace(0.0, 0.06, 600), np.linspace(1.5, 1.52, 100), [3.0]]
    ds = make_dataset(on_circle(angles))
    # All of A ties at 600: row 0 takes it; then B's first row; then C.
    assert hp.select.probcover(ds, size=3, delta=0.1)["row_id"] == [0, 600, 700]
    # Everything is covered after three picks: the rest are seeded uniform draws among the others.
    five = hp.select.probcover(ds, size=5, delta=0.1, seed=4)["row_id"]
    assert {0, 600, 700} < set(five) and five == hp.select.probcover(ds, size=5, delta=0.1, seed=4)["row_id"]


def test_max_coverage_by_hand():
    # A path 0-1-2-3-4, each row covering itself and its neighbours: counts 2,3,3,3,2 → row 1 (lowest
    # of the tied), then rows 3 and 4 still cover {3, 4} (2 each) → row 3.
    balls = [[0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4]]
    indptr = np.cumsum([0] + [len(b) for b in balls])
    indices = np.concatenate(balls)
    assert max_coverage(indptr, indices, 2, np.random.default_rng(0)).tolist() == [1, 3]
    # A directed graph: 0 covers {0,1,2}, 1 {1}, 2 {2,3}, 3 {3,4,5}, 4 and 5 themselves. Row 0 and row
    # 3 tie at 3 → row 0; then row 3 still covers 3 → row 3; then nothing is left.
    balls = [[0, 1, 2], [1], [2, 3], [3, 4, 5], [4], [5]]
    indptr = np.cumsum([0] + [len(b) for b in balls])
    indices = np.concatenate(balls)
    picks = max_coverage(indptr, indices, 4, np.random.default_rng(0), symmetric=False)
    assert picks[:2].tolist() == [0, 3] and len(set(picks.tolist())) == 4


def test_graph_too_large_is_a_clear_error():
    emb = clustered_sphere(n=1000, seed=3)
    n_edges = int(dense_balls(emb, 0.5).sum())
    with pytest.raises(ValueError, match=r"delta=0\.5.*max_edges=1,000\b.*edges.*`max_edges`"):
        hp.select.probcover(make_dataset(emb), size=10, delta=0.5, max_edges=1000)
    sub = hp.select.probcover(make_dataset(emb), size=10, delta=0.5, max_edges=n_edges)  # exactly enough
    assert hp.provenance(sub)[-1]["params"]["graph_edges"] == [n_edges]


def test_infinite_delta_groups():
    # A class of one row, and a class whose points coincide (one pseudo-label, so δ = ∞ by the
    # purity rule): the first row covers its class, the rest are seeded draws.
    emb = np.r_[np.ones((6, 3)), [[1.0, -1.0, 0.0]], np.random.default_rng(0).normal(size=(8, 3))]
    labels = np.r_[np.zeros(6, int), [1], np.full(8, 2)]
    ds = make_dataset(emb, label=labels)
    sub = hp.select.probcover(ds, size=10, label_column="label", seed=3)  # budgets 4, 1, 5
    step = hp.provenance(sub)[-1]["params"]
    assert step["delta_used"][:2] == [float("inf"), float("inf")] and step["graph_edges"][:2] == [36, 1]
    ids = np.array(sub["row_id"])
    assert 0 in ids and 6 in ids and np.bincount(labels[ids]).tolist() == [4, 1, 5]


# ------------------------------------------------------------------------------ ordered selection


def pick_order(sub, column="row_id"):
    """``column`` of the kept rows in pick order (a single group)."""
    return np.array(sub[column])[np.argsort(sub["rank"], kind="stable")]


def test_max_coverage_from_initial_rows_by_hand():
    # The path 0-1-2-3-4 again. Row 4 is labelled: {3, 4} start covered, so row 1 gains 3 ({0, 1, 2})
    # and row 2 only 1; after row 1 everything is covered and the third pick is a seeded draw.
    balls = [[0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4]]
    indptr = np.cumsum([0] + [len(b) for b in balls])
    indices = np.concatenate(balls)
    picks, gains = max_coverage(indptr, indices, 3, np.random.default_rng(0), initial=[4], return_gains=True)
    assert picks[:2].tolist() == [4, 1] and picks[2] in (0, 2, 3) and gains.tolist() == [2, 3, 0]
    # Initial rows are taken whatever their gain, in the given order, even when they cover nothing new.
    picks, gains = max_coverage(indptr, indices, 3, np.random.default_rng(0), initial=[3, 4],
                                return_gains=True)
    assert picks.tolist() == [3, 4, 0] and gains.tolist() == [3, 0, 2]
    for initial in ([1, 1], [5], [-1], [0, 1, 2, 3]):
        with pytest.raises(ValueError, match="`initial`"):
            max_coverage(indptr, indices, 3, np.random.default_rng(0), initial=initial)


def test_rank_gain_and_labelled_rows_by_hand():
    # A: five points 0.05 rad apart, B: two points, C: one (as in test_probcover_hand_case). With δ =
    # 0.12 a point covers the points at most 0.1 rad away: row 2 covers A (5), then B (2), then C (1).
    angles = np.array([-0.1, -0.05, 0.0, 0.05, 0.1, 1.5, 1.55, 3.0])
    ds = make_dataset(on_circle(angles))
    sub = hp.select.probcover(ds, size=3, delta=0.12, rank_column="rank", gain_column="gain")
    assert pick_order(sub).tolist() == [2, 5, 7] and pick_order(sub, "gain").tolist() == [5, 2, 1]
    # C labelled: it is kept first and covers itself; then A and B as before.
    sub = hp.select.probcover(ds, size=3, delta=0.12, initial_subset=[7], rank_column="rank",
                              gain_column="gain")
    assert pick_order(sub).tolist() == [7, 2, 5] and pick_order(sub, "gain").tolist() == [1, 5, 2]
    # Row 0 labelled covers rows 0-2; rows 2, 3, 4 and 5 then each cover two new points: the lowest, 2.
    sub = hp.select.probcover(ds, size=3, delta=0.12, initial_subset=[0], rank_column="rank",
                              gain_column="gain")
    assert pick_order(sub).tolist() == [0, 2, 5] and pick_order(sub, "gain").tolist() == [3, 2, 2]
    assert sub.features["rank"].dtype == "int64" and sub.features["gain"].dtype == "float64"
    step = hp.provenance(sub)[-1]["params"]
    assert step["initial_subset"] == [0] and step["rank_column"] == "rank"


@pytest.mark.parametrize("radius", [{"delta": 0.3}, {"n_pseudo_labels": 12}])
def test_smaller_budget_is_a_prefix_and_initial_rows_continue_a_run(radius):
    # A fixed δ, or a purity rule with a fixed number of pseudo-labels: the graph does not depend on
    # the budget, so the greedy order does not either.
    ds = make_dataset(clustered_sphere(n=600))
    small = hp.select.probcover(ds, size=10, rank_column="rank", gain_column="gain", seed=1, **radius)
    large = hp.select.probcover(ds, size=30, rank_column="rank", gain_column="gain", seed=1, **radius)
    assert min(large["gain"]) > 0  # every pick is a greedy one
    np.testing.assert_array_equal(pick_order(small), pick_order(large)[:10])
    np.testing.assert_array_equal(pick_order(small, "gain"), pick_order(large, "gain")[:10])
    first = pick_order(large)[:12].tolist()
    resumed = hp.select.probcover(ds, size=30, initial_subset=first, rank_column="rank", gain_column="gain",
                                  seed=1, **radius)
    assert resumed[:] == large[:]


def test_per_class_prefix_and_initial_rows():
    emb = clustered_sphere(n=600, seed=2)
    labels = np.arange(600) % 3
    ds = make_dataset(emb, label=labels)
    small = hp.select.probcover(ds, fraction=0.02, delta=0.3, label_column="label", rank_column="rank")
    large = hp.select.probcover(ds, fraction=0.05, delta=0.3, label_column="label", rank_column="rank")
    for c in range(3):
        s, lg = (np.array(sub["row_id"])[np.argsort(sub["rank"])] for sub in (small, large))
        s, lg = s[labels[s] == c], lg[labels[lg] == c]
        np.testing.assert_array_equal(s, lg[: len(s)])
        assert len(s) == 4 and len(lg) == 10
    # One labelled row per class starts its class's order; the rest of each class is its own greedy.
    initial = [5, 1, 0]  # classes 2, 1, 0
    sub = hp.select.probcover(ds, fraction=0.05, delta=0.3, label_column="label", rank_column="rank",
                              initial_subset=initial)
    ranks = dict(zip(sub["row_id"], sub["rank"]))
    assert [ranks[i] for i in initial] == [0, 0, 0]
    rows = np.flatnonzero(labels == 2)
    indptr, indices = coverage_graph(normalize_rows(emb[rows]), 0.3)
    expected = max_coverage(indptr, indices, 10, np.random.default_rng(0), initial=[5 // 3])
    assert sorted(rows[expected].tolist()) == [i for i in sub["row_id"] if labels[i] == 2]


# Its purity search is skipped with a single δ, which it reports as a purity of -1.
@pytest.mark.filterwarnings("ignore:The maximum purity:UserWarning")
def test_labelled_rows_as_scikit_activeml_probcover():
    # scikit-activeml's ProbCover with labelled samples: covered points lose their in-edges, and each
    # query takes a candidate with the most uncovered points in its ball (random among ties). Asked
    # one query at a time with our picks so far as labelled, every one of our picks must be one of its
    # maxima, the lowest of them (our tie rule), and our gain its utility.
    skactiveml = pytest.importorskip("skactiveml.pool")
    emb = clustered_sphere(n=300, d=4, seed=4)
    x = normalize_rows(emb).astype(np.float64)
    delta, labelled = 0.45, [11, 200, 42, 7]
    sub = hp.select.probcover(make_dataset(emb), size=16, delta=delta, initial_subset=labelled,
                              rank_column="rank", gain_column="gain")
    picks, gains = pick_order(sub), pick_order(sub, "gain")
    assert picks[:4].tolist() == labelled and gains.min() > 0
    ties = 0
    for step in range(4, 16):
        y = np.full(len(x), np.nan)
        y[picks[:step]] = np.arange(step) % 2
        _, utilities = skactiveml.ProbCover(n_classes=2, deltas=[delta], random_state=0).query(
            x, y, batch_size=1, return_utilities=True
        )
        best = np.flatnonzero(utilities[0] == np.nanmax(utilities[0]))
        assert picks[step] == best[0] and utilities[0][picks[step]] == gains[step]
        ties += len(best) > 1
    # The same coverage: what the labelled and picked rows cover under scikit-activeml's δ-graph.
    covered = (np.sqrt(((x[picks][:, None] - x[None]) ** 2).sum(-1)) <= delta).any(0)
    assert covered.sum() == gains.sum()
    assert ties < 12  # not every step was decided by the tie rule alone


def test_infinite_delta_with_initial_rows():
    # Class 0's six rows coincide (δ = ∞): its labelled row 3 covers the class, the rest are drawn.
    emb = np.r_[np.ones((6, 3)), np.random.default_rng(0).normal(size=(8, 3))]
    labels = np.r_[np.zeros(6, int), np.ones(8, int)]
    ds = make_dataset(emb, label=labels)
    sub = hp.select.probcover(ds, size=6, label_column="label", initial_subset=[3], rank_column="rank",
                              gain_column="gain", seed=3)  # budgets 3 and 3
    ids, ranks, gains = np.array(sub["row_id"]), np.array(sub["rank"]), np.array(sub["gain"])
    mine = np.argsort(np.where(labels[ids] == 0, ranks, 99))[:3]
    assert ids[mine].tolist()[0] == 3 and gains[mine].tolist() == [6.0, 0.0, 0.0]
    assert hp.provenance(sub)[-1]["params"]["delta_used"][0] == float("inf")


def test_ordering_leaves_the_default_selection_unchanged():
    ds = make_dataset(clustered_sphere(n=600, seed=5), label=np.arange(600) % 2)
    before = ds[:]
    # Includes a saturated run (δ = 1.2 covers everything in a few picks; the rest are seeded draws).
    for kwargs in [dict(size=20, n_pseudo_labels=12), dict(size=200, delta=1.2),
                   dict(fraction=0.05, delta=0.3, label_column="label")]:
        plain = hp.select.probcover(ds, seed=2, **kwargs)
        ranked = hp.select.probcover(ds, seed=2, rank_column="rank", gain_column="gain", **kwargs)
        assert plain.column_names == ds.column_names + ["row_id"]
        assert ranked.remove_columns(["rank", "gain"])[:] == plain[:]
    assert ds[:] == before


def test_ordered_bad_input():
    ds = make_dataset(clustered_sphere(n=60, seed=6), label=np.arange(60) % 3)
    for kwargs, pattern in [
        ({"initial_subset": [60]}, r"`initial_subset`.*\[0, 60\)"),
        ({"initial_subset": [2, 2]}, "`initial_subset`.*distinct"),
        ({"initial_subset": ["a"]}, "`initial_subset`"),
        ({"initial_subset": list(range(7))}, r"`initial_subset` has 7 rows, more than the budget \(6\)"),
        ({"initial_subset": [0, 3, 6], "label_column": "label"}, r"`initial_subset`.*budget is 2"),
        ({"rank_column": "emb"}, "'emb' already exists"),
        ({"gain_column": ""}, "`gain_column`"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            hp.select.probcover(ds, size=6, delta=0.3, **kwargs)
