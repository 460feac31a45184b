import itertools

import numpy as np
import pytest
import torch

import hf_prune as hp
from hf_prune.select.k_center import greedy_k_center
from tests.conftest import make_dataset


def ids(sub):
    return np.array(sub["row_id"])


def brute_force_greedy(x, k, first):
    """Gonzalez's greedy with every distance recomputed from scratch (O(N·k²·d))."""
    chosen = [first]
    for _ in range(k - 1):
        best, best_d = None, -1.0
        for i in range(len(x)):
            if i in chosen:
                continue
            d = min(np.linalg.norm(x[i] - x[c]) for c in chosen)
            if d > best_d:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def radius(x, rows):
    d = np.linalg.norm(x[:, None, :] - x[None, rows, :], axis=2)
    return d.min(1).max()


def test_hand_computed_1d():
    # From 0 the farthest row is 10; then distances to {0, 10} are 1, 4, 4 -> tie between 4 and 6,
    # the earliest row (4) wins; then 6 (distance 2) beats 1 (distance 1).
    x = np.array([[0.0], [1.0], [4.0], [6.0], [10.0]])
    assert greedy_k_center(torch.tensor(x), 4, 0).tolist() == [0, 4, 2, 3]
    # Without the tie (6 -> 6.5), through the selector: {0, 10, 4}.
    y = np.array([[0.0], [1.0], [4.0], [6.5], [10.0]])
    ds = make_dataset(y)
    assert ids(hp.select.k_center_greedy(ds, size=3, init="first")).tolist() == [0, 2, 4]
    # init="mean" starts at the row nearest the mean 4.3 (row 2, value 4), then the farthest: 10.
    assert ids(hp.select.k_center_greedy(ds, size=2, init="mean")).tolist() == [2, 4]


def test_equals_brute_force_reference():
    x = np.random.default_rng(0).normal(size=(60, 5))
    for first in (0, 17, 42):
        expected = brute_force_greedy(x, 12, first)
        got = greedy_k_center(torch.tensor(x, dtype=torch.float32), 12, first).tolist()
        assert got == expected


def test_selector_equals_brute_force_with_random_start_and_cosine():
    x = np.random.default_rng(1).normal(size=(50, 4)) + 3.0
    ds = make_dataset(x)
    sub = hp.select.k_center_greedy(ds, size=8, init="random", seed=7)
    first = int(np.random.default_rng([7, 0]).integers(50))  # the rng run_selection hands the group
    assert set(ids(sub).tolist()) == set(brute_force_greedy(x, 8, first))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = hp.select.k_center_greedy(ds, size=8, metric="cosine", init="first")
    assert set(ids(cos).tolist()) == set(brute_force_greedy(unit, 8, 0))


def test_two_approximation_and_beats_random():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(14, 2))
    k = 3
    opt = min(radius(x, list(c)) for c in itertools.combinations(range(len(x)), k))
    for first in range(len(x)):
        assert radius(x, greedy_k_center(torch.tensor(x), k, first)) <= 2 * opt + 1e-9
    # The covering radius beats every random subset of the same size (uniform square: ≈ 0.12 vs ≥ 0.18).
    square = rng.random((2000, 2))
    ds = make_dataset(square)
    greedy_r = radius(square, ids(hp.select.k_center_greedy(ds, size=50, seed=0)))
    random_r = [radius(square, ids(hp.select.random(ds, size=50, seed=s))) for s in range(10)]
    assert greedy_r < 0.8 * min(random_r)


def test_duplicates_still_give_distinct_rows():
    x = np.array([[0.0, 0.0]] * 4 + [[1.0, 1.0]] * 3)
    sub = hp.select.k_center_greedy(make_dataset(x), size=6, init="first")
    assert len(set(ids(sub).tolist())) == 6


def test_seed_matters_only_for_init_random_and_params(blobs):
    ds, _, _ = blobs
    sub = hp.select.k_center_greedy(ds, fraction=0.2, label_column="label", seed=0)
    assert any(
        ids(hp.select.k_center_greedy(ds, fraction=0.2, label_column="label", seed=s)).tolist() != ids(sub).tolist()
        for s in (1, 2, 3)
    )
    first = hp.select.k_center_greedy(ds, size=10, init="first", seed=0)
    assert ids(hp.select.k_center_greedy(ds, size=10, init="first", seed=9)).tolist() == ids(first).tolist()
    step = hp.provenance(sub)[-1]
    assert step["method"] == "k_center_greedy" and step["params"]["metric"] == "l2"


def test_bad_input(blobs):
    ds, _, _ = blobs
    with pytest.raises(ValueError, match="metric"):
        hp.select.k_center_greedy(ds, size=5, metric="ip")
    with pytest.raises(ValueError, match="init"):
        hp.select.k_center_greedy(ds, size=5, init="kmeans++")
    with pytest.raises(ValueError, match="'emb'"):
        hp.select.k_center_greedy(make_dataset(np.array([[0.0, np.inf], [1.0, 1.0]])), size=1)
    with pytest.raises(ValueError, match="`k`"):
        greedy_k_center(torch.zeros(3, 2), 4, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_gpu_pick_the_same_rows(blobs):
    ds, _, _ = blobs
    for metric in ("l2", "cosine"):
        cpu = hp.select.k_center_greedy(ds, fraction=0.3, label_column="label", metric=metric, device="cpu")
        gpu = hp.select.k_center_greedy(ds, fraction=0.3, label_column="label", metric=metric, device="cuda")
        assert cpu["row_id"] == gpu["row_id"]


def test_hand_computed_rank_and_insertion_radius():
    # From 0: the farthest row is 10 (radius 10); distances to {0, 10} are 1, 4, 3.5 -> 4 (radius 4);
    # then row 1 is 1 away and 6.5 is 2.5 away -> 6.5.
    ds = make_dataset(np.array([[0.0], [1.0], [4.0], [6.5], [10.0]]))
    sub = hp.select.k_center_greedy(ds, size=4, init="first", rank_column="rank", gain_column="radius")
    assert sub["row_id"] == [0, 2, 3, 4] and sub["rank"] == [0, 2, 3, 1]
    np.testing.assert_allclose(sub["radius"], [np.inf, 4.0, 2.5, 10.0])
    # Starting from the rows at 4 and 1 (in that order): 10 is 6 away, then 6.5 (2.5) beats 0 (1).
    start = hp.select.k_center_greedy(ds, size=4, initial_subset=[2, 1], rank_column="rank", gain_column="radius")
    assert start["row_id"] == [1, 2, 3, 4] and start["rank"] == [1, 0, 3, 2]
    np.testing.assert_allclose(start["radius"], [3.0, np.inf, 2.5, 6.0])


def brute_force_greedy_from(x, k, start):
    chosen = list(start)
    while len(chosen) < k:
        d = np.min(np.linalg.norm(x[:, None] - x[None, chosen], axis=2), axis=1)
        d[chosen] = -1
        chosen.append(int(np.argmax(d)))
    return chosen


def test_initial_subset_matches_brute_force_and_ignores_init(blobs):
    ds, emb, labels = blobs
    for init in ("random", "first", "mean"):
        sub = hp.select.k_center_greedy(ds, size=15, init=init, initial_subset=[50, 7, 88], rank_column="rank")
        order = np.array(sub["row_id"])[np.argsort(sub["rank"])]
        assert order.tolist() == brute_force_greedy_from(emb.astype(np.float64), 15, [50, 7, 88])
    # Per class the distances start from that class's initial rows only.
    per_class = hp.select.k_center_greedy(ds, fraction=0.2, label_column="label", initial_subset=[3, 60],
                                          rank_column="rank")
    ids, ranks = np.array(per_class["row_id"]), np.array(per_class["rank"])
    for c, start in ((0, [3]), (1, [60])):
        rows = np.flatnonzero(labels == c)
        mine = ids[labels[ids] == c][np.argsort(ranks[labels[ids] == c])]
        local = brute_force_greedy_from(emb[rows].astype(np.float64), len(mine), np.searchsorted(rows, start))
        assert mine.tolist() == rows[local].tolist()


def test_greedy_k_center_initial_and_gains():
    x = torch.tensor([[0.0], [1.0], [5.0]])
    picks, radii = greedy_k_center(x, 3, 0, initial=[1], return_gains=True)
    assert picks.tolist() == [1, 2, 0] and radii.tolist() == [np.inf, 4.0, 1.0]
    assert greedy_k_center(x, 2, 0).tolist() == [0, 2]
    with pytest.raises(ValueError, match="`initial` must hold distinct"):
        greedy_k_center(x, 2, 0, initial=[1, 1])
    with pytest.raises(ValueError, match="more than `k`"):
        greedy_k_center(x, 1, 0, initial=[1, 2])
