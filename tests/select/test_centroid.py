import numpy as np
import pytest

import hf_prune as hp
from hf_prune.select.centroid import distances_to_center
from tests.conftest import make_dataset


def ids(sub):
    return set(np.array(sub["row_id"]).tolist())


def toy(corrupt_fraction=0.4, distance=5.0, seed=0):
    rng = np.random.default_rng(seed)
    cov = [[1.0, 0.5], [0.5, 1.0]]
    n_bad = int(1000 * corrupt_fraction)
    x = np.concatenate([rng.multivariate_normal([0, 0], cov, 1000 - n_bad),
                        rng.multivariate_normal([-distance, distance], cov, n_bad)])
    return x, np.r_[np.zeros(1000 - n_bad), np.ones(n_bad)].astype(bool)


def test_hand_computed_1d():
    # mean 5 -> distances 5, 4, 2, 1, 10; median distance 4 -> |d - 4| = 1, 0, 2, 3, 6
    x = np.array([[0.0], [1.0], [3.0], [6.0], [15.0]])
    ds = make_dataset(x)
    np.testing.assert_array_equal(distances_to_center(x), [5, 4, 2, 1, 10])
    assert [ids(hp.select.moderate(ds, size=k)) for k in (1, 2, 3)] == [{1}, {0, 1}, {0, 1, 2}]
    assert ids(hp.select.easy(ds, size=2)) == {2, 3}
    assert ids(hp.select.hard(ds, size=2)) == {0, 4}
    # Even count: the median is the mean of the two middle distances.
    y = np.array([[0.0], [2.0], [3.0], [9.0]])  # mean 3.5 -> d = 3.5, 1.5, .5, 5.5; median 2.5
    assert ids(hp.select.moderate(make_dataset(y), size=2)) == {0, 1}  # |d - 2.5| = 1, 1, 2, 3


def test_centers():
    x = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [100.0, 0.0]])
    np.testing.assert_allclose(distances_to_center(x, "mean"), [21.2, 20.2, 19.2, 18.2, 78.8])
    np.testing.assert_allclose(distances_to_center(x, "median"), [2, 1, 0, 1, 98])
    np.testing.assert_allclose(distances_to_center(x, "geometric_median"), [2, 1, 0, 1, 98], atol=1e-9)
    # coordinate-wise median and geometric median differ off-axis
    tri = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    np.testing.assert_allclose(distances_to_center(tri, "median"), [0, 4, 4])
    assert distances_to_center(tri, "geometric_median")[0] > 0.5


def test_ties_go_to_the_lower_row_position():
    # 0.1.0 drew a seeded permutation here; now the lower row position wins, whatever the seed.
    ds = make_dataset(np.array([[-1.0], [1.0], [-2.0], [2.0]]))  # d = 1, 1, 2, 2; median 1.5 → |d − m| all .5
    for seed in (0, 3, 11, np.random.default_rng(5)):
        assert ids(hp.select.easy(ds, size=1, seed=seed)) == {0}
        assert ids(hp.select.hard(ds, size=1, seed=seed)) == {2}
        assert ids(hp.select.moderate(ds, size=3, seed=seed)) == {0, 1, 2}
    assert ids(hp.select.easy(ds, size=2)) == {0, 1}  # no tie at the boundary
    # Per class: classes {0, 2} and {1, 3} are mirror images, each with two rows at distance .5.
    per_class = make_dataset(np.array([[-1.0], [4.0], [1.0], [6.0]]), label=[0, 1, 0, 1])
    for method in (hp.select.easy, hp.select.hard, hp.select.moderate):
        for seed in range(4):
            assert ids(method(per_class, size=2, label_column="label", seed=seed)) == {0, 1}, method.__name__


def test_mean_centre_breaks_under_corruption_geometric_median_does_not():
    # The GM Matching paper's observation (Fig. 1, Lemma 1): with 40% adversarial points the mean
    # centre sits between the clusters, so "moderate" keeps many of them; a robust centre does not.
    x, is_bad = toy()
    ds = make_dataset(x)
    with_mean = np.array(sorted(ids(hp.select.moderate(ds, fraction=0.1))))
    robust = np.array(sorted(ids(hp.select.moderate(ds, fraction=0.1, center="geometric_median"))))
    assert is_bad[with_mean].mean() > 0.25
    assert is_bad[robust].mean() < 0.02
    assert is_bad[np.array(sorted(ids(hp.select.hard(ds, fraction=0.1))))].mean() > 0.9


def test_per_class_uses_class_centres(blobs):
    ds, emb, labels = blobs
    sub = hp.select.easy(ds, fraction=0.2, label_column="label")
    rows = np.array(sub["row_id"])
    assert np.bincount(labels[rows]).tolist() == [8, 6, 4]
    for c, k in zip(range(3), [8, 6, 4]):
        members = np.flatnonzero(labels == c)
        d = np.linalg.norm(emb[members] - emb[members].mean(0), axis=1)
        assert set(rows[labels[rows] == c].tolist()) == set(members[np.argsort(d)[:k]].tolist())
    # without labels the centre is the global mean
    d = np.linalg.norm(emb - emb.mean(0), axis=1)
    assert ids(hp.select.hard(ds, size=10)) == set(np.argsort(-d)[:10].tolist())


def test_provenance_records_the_centre(blobs):
    ds, _, _ = blobs
    for name in ("moderate", "easy", "hard"):
        step = hp.provenance(getattr(hp.select, name)(ds, size=5))[-1]
        assert step["method"] == name and step["params"]["center"] == "mean"


def test_bad_input(blobs):
    ds, _, _ = blobs
    with pytest.raises(ValueError, match="center"):
        hp.select.hard(ds, size=5, center="mode")
    with pytest.raises(ValueError, match="'emb'"):
        hp.select.easy(make_dataset(np.array([[0.0, np.nan], [1.0, 1.0]])), size=1)


def test_moderate_over_a_score_keeps_the_scores_closest_to_the_median():
    # median 0.45 -> |s - 0.45| = .35, .05, .45, .25, 0 (no embedding column needed)
    ds = make_dataset(score=[0.1, 0.5, 0.9, 0.2, 0.45])
    assert [ids(hp.select.moderate(ds, size=k, score_column="score")) for k in (1, 2, 3)] == [{4}, {1, 4}, {1, 3, 4}]
    # Ties go to the lower row position: median 2 -> |s - 2| = 1, 1, 0
    tied = make_dataset(score=[1.0, 3.0, 2.0])
    assert ids(hp.select.moderate(tied, size=2, score_column="score")) == {0, 2}
    # Per class: each class's own median (class 0: 1, 5, 9 -> 5; class 1: 2, 4 -> 3, a tie -> row 3)
    labelled = make_dataset(score=[1.0, 5.0, 9.0, 2.0, 4.0], label=[0, 0, 0, 1, 1])
    assert ids(hp.select.moderate(labelled, size=2, score_column="score", label_column="label")) == {1, 3}
    step = hp.provenance(hp.select.moderate(ds, size=2, score_column="score"))[-1]
    assert step["method"] == "moderate" and step["params"]["score_column"] == "score"
    # The score, not the embedding, decides: the embedding's own Moderate row differs here.
    both = make_dataset(np.array([[0.0], [1.0], [3.0], [6.0], [15.0]]), score=[0.1, 0.5, 0.9, 0.2, 0.45])
    assert ids(hp.select.moderate(both, size=1)) == {1}
    assert ids(hp.select.moderate(both, size=1, score_column="score")) == {4}


def test_moderate_over_a_score_bad_input():
    ds = make_dataset(score=[0.1, float("nan"), 0.3])
    with pytest.raises(KeyError, match="'clip_score'"):
        hp.select.moderate(ds, size=1, score_column="clip_score")
    with pytest.raises(ValueError, match="'score'"):
        hp.select.moderate(ds, size=1, score_column="score")
