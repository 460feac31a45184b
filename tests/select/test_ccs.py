import numpy as np
import pytest

import hf_prune as hp
from hf_prune.select.ccs import ccs_allocation, ccs_strata
from tests.conftest import make_dataset


def test_allocation_by_hand():
    # Smallest first: stratum 0 (1 row) takes min(1, 12//4=3)=1; stratum 2 (3) takes min(3, 11//3)=3;
    # stratum 1 (10) takes 8//2=4; stratum 3 takes the last 4.
    np.testing.assert_array_equal(ccs_allocation(np.array([1, 10, 3, 10]), 12), [1, 4, 3, 4])
    # Empty strata get nothing and do not count in the equal share.
    np.testing.assert_array_equal(ccs_allocation(np.array([0, 2, 5, 9]), 10), [0, 2, 4, 4])
    # Ties in size go to the lower stratum first; budget = everything takes everything.
    np.testing.assert_array_equal(ccs_allocation(np.array([3, 3, 3]), 4), [1, 1, 2])
    np.testing.assert_array_equal(ccs_allocation(np.array([2, 0, 5]), 7), [2, 0, 5])
    with pytest.raises(ValueError, match="budget"):
        ccs_allocation(np.array([1, 1]), 3)


def test_allocation_always_meets_the_budget():
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = rng.integers(0, 30, size=rng.integers(1, 12))
        if counts.sum() == 0:
            continue
        budget = int(rng.integers(1, counts.sum() + 1))
        alloc = ccs_allocation(counts, budget)
        assert alloc.sum() == budget and (alloc <= counts).all() and (alloc >= 0).all()
        # No stratum that could take more gets less than a fuller stratum's share minus one.
        open_strata = alloc < counts
        if open_strata.any():
            assert alloc[open_strata].max() - alloc[open_strata].min() <= 1


def test_strata_are_equal_width():
    np.testing.assert_array_equal(ccs_strata(np.array([0.0, 0.24, 0.26, 0.5, 0.99, 1.0]), 4), [0, 0, 1, 2, 3, 3])
    np.testing.assert_array_equal(ccs_strata(np.array([-3.0, -1.0, 1.0]), 2), [0, 1, 1])
    np.testing.assert_array_equal(ccs_strata(np.full(4, 7.0), 5), [0, 0, 0, 0])


def test_ccs_selection_by_hand():
    # Scores 0..19 with hard = high. Cut the hardest 20 % (16..19); the rest 0..15 in 4 strata of
    # width 3.75: {0..3}, {4..7}, {8..11}, {12..15}; budget 8 -> 2 per stratum.
    score = np.arange(20, dtype=np.float32)
    ds = make_dataset(score=score)
    for seed in range(5):
        kept = np.array(hp.select.ccs(ds, size=8, score_column="score", hard_cutoff=0.2, bins=4, seed=seed)["row_id"])
        assert kept.max() < 16
        np.testing.assert_array_equal(np.bincount(kept // 4, minlength=4), [2, 2, 2, 2])
    # descending=False: the lowest scores are the hardest and are cut instead.
    kept = np.array(hp.select.ccs(ds, size=8, score_column="score", hard_cutoff=0.2, bins=4, descending=False)["row_id"])
    assert kept.min() >= 4
    np.testing.assert_array_equal(np.bincount((kept - 4) // 4, minlength=4), [2, 2, 2, 2])


def test_ccs_skewed_strata_follow_the_rule():
    # 2 rows in the low stratum, 30 in the high one: the small stratum is taken whole, the rest of
    # the budget goes to the large stratum, where CCS over-samples relative to its share.
    score = np.concatenate([[0.0, 0.1], np.linspace(0.9, 1.0, 30)]).astype(np.float32)
    kept = np.array(hp.select.ccs(make_dataset(score=score), size=10, score_column="score", bins=2)["row_id"])
    assert {0, 1} <= set(kept) and len(kept) == 10


def test_within_stratum_sampling_is_uniform():
    # One stratum of 10 rows holding 5 of the budget; each row should be kept half the time.
    score = np.concatenate([np.zeros(10), np.ones(2)]).astype(np.float32)
    ds = make_dataset(score=score)
    runs = 200
    counts = np.zeros(12)
    for seed in range(runs):
        counts[hp.select.ccs(ds, size=7, score_column="score", bins=2, seed=seed)["row_id"]] += 1
    assert (counts[10:] == runs).all()  # the small stratum is always taken whole
    freq = counts[:10] / runs
    assert np.all(np.abs(freq - 0.5) < 4 * np.sqrt(0.25 / runs)), freq


def test_ccs_covers_the_score_range_better_than_thresholding():
    # The paper's claim: at high pruning rates keeping only the hardest loses coverage; CCS keeps
    # rows from every difficulty level.
    rng = np.random.default_rng(0)
    score = rng.beta(5, 2, 2000).astype(np.float32)  # dense at the hard end
    ds = make_dataset(score=score)
    kept = score[hp.select.ccs(ds, fraction=0.05, score_column="score", bins=10)["row_id"]]
    hardest = np.sort(score)[-100:]
    strata = ccs_strata(score, 10)
    assert len(np.unique(ccs_strata(np.concatenate([score, kept]), 10)[2000:])) == len(np.unique(strata))
    assert kept.min() < hardest.min() - 0.3 and kept.std() > 2 * hardest.std()


def test_ccs_per_class_cutoff_seed_and_params(blobs):
    ds, _, labels = blobs
    sub = hp.select.ccs(ds, fraction=0.2, score_column="score", hard_cutoff=0.1, bins=5, label_column="label", seed=1)
    ids = np.array(sub["row_id"])
    score = np.array(ds["score"])
    for c in range(3):
        rows = np.flatnonzero(labels == c)
        cut = rows[np.argsort(-score[rows], kind="stable")[: int(0.1 * len(rows))]]
        assert not set(cut) & set(ids[labels[ids] == c])  # each class's hardest 10 % removed
    assert sub["row_id"] != hp.select.ccs(ds, fraction=0.2, score_column="score", label_column="label", hard_cutoff=0.1,
                                          bins=5, seed=2)["row_id"]
    step = hp.provenance(sub)[-1]
    assert step["method"] == "ccs" and step["params"]["hard_cutoff"] == 0.1 and step["params"]["bins"] == 5


def test_errors(blobs):
    ds, _, _ = blobs
    for kwargs, word in [
        ({"hard_cutoff": 1.0}, "hard_cutoff"), ({"hard_cutoff": -0.1}, "hard_cutoff"), ({"bins": 0}, "bins"),
        ({"descending": "yes"}, "descending"), ({"hard_cutoff": 0.9}, "hard_cutoff.*fewer than the budget"),
    ]:
        with pytest.raises(ValueError, match=word):
            hp.select.ccs(ds, fraction=0.5, score_column="score", **kwargs)
    with pytest.raises(ValueError, match="x.*NaN"):
        hp.select.ccs(make_dataset(x=[0.1, float("nan")]), size=1, score_column="x")
