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
