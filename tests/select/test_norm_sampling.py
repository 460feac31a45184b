import numpy as np
import pytest
from datasets import Dataset

import hf_prune as hp
from hf_prune.select.norm_sampling import feature_norms, norm_weights
from tests.conftest import make_dataset

# Three vectors whose norms are easy by hand: l2 = 5, 1, 2; l1 = 7, 1, 2; linf = 4, 1, 2.
TRIO = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, -2.0]])


def replicated(vectors, groups):
    """``groups`` classes, each holding a copy of ``vectors``: one call then gives ``groups`` draws."""
    emb = np.tile(vectors, (groups, 1))
    return make_dataset(emb, label=np.repeat(np.arange(groups), len(vectors)))


def test_norms_and_probabilities_by_hand():
    np.testing.assert_allclose(feature_norms(TRIO, 2), [5, 1, 2])
    np.testing.assert_allclose(feature_norms(TRIO, 1), [7, 1, 2])
    np.testing.assert_allclose(feature_norms(TRIO, float("inf")), [4, 1, 2])
    np.testing.assert_allclose(feature_norms(TRIO, "inf"), [4, 1, 2])
    w = norm_weights(feature_norms(TRIO, 2))
    np.testing.assert_allclose(w / w.sum(), [5 / 8, 1 / 8, 2 / 8])  # Eq. 1
    inv = norm_weights(feature_norms(TRIO, 2), inverse=True)
    np.testing.assert_allclose(inv / inv.sum(), [0, 4 / 7, 3 / 7])  # Appendix I: max - norm


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"p": 2}, [5 / 8, 1 / 8, 2 / 8]),
        ({"p": 1}, [7 / 10, 1 / 10, 2 / 10]),
        ({"p": "inf"}, [4 / 7, 1 / 7, 2 / 7]),
        ({"p": 2, "inverse": True}, [0, 4 / 7, 3 / 7]),
    ],
)
def test_monte_carlo_frequencies_are_proportional_to_norms(kwargs, expected):
    groups = 2000
    ds = replicated(TRIO, groups)
    sub = hp.select.norm_sampling(ds, size=groups, label_column="label", seed=11, **kwargs)
    position = np.array(sub["row_id"]) % 3  # which of the three vectors each class kept
    assert np.bincount(np.array(sub["label"]), minlength=groups).max() == 1
    freq = np.bincount(position, minlength=3) / groups
    sigma = np.sqrt(np.array(expected) * (1 - np.array(expected)) / groups)
    assert (np.abs(freq - expected) <= 4.5 * sigma + 1e-12).all(), (freq, expected)


def test_second_draw_is_without_replacement_with_renormalised_weights():
    # Successive sampling: P({i, j}) = p_i p_j / (1 - p_i) + p_j p_i / (1 - p_j).
    p = np.array([5, 1, 2]) / 8
    pair = {
        (0, 1): p[0] * p[1] / (1 - p[0]) + p[1] * p[0] / (1 - p[1]),
        (0, 2): p[0] * p[2] / (1 - p[0]) + p[2] * p[0] / (1 - p[2]),
        (1, 2): p[1] * p[2] / (1 - p[1]) + p[2] * p[1] / (1 - p[2]),
    }
    groups = 2000
    sub = hp.select.norm_sampling(replicated(TRIO, groups), size=2 * groups, label_column="label", seed=5)
    kept = (np.array(sub["row_id"]) % 3).reshape(groups, 2)  # row ids are sorted, so pairs are (small, big)
    for (i, j), expected in pair.items():
        freq = np.mean((kept[:, 0] == i) & (kept[:, 1] == j))
        assert abs(freq - expected) <= 4.5 * np.sqrt(expected * (1 - expected) / groups), ((i, j), freq, expected)


def test_deterministic_keeps_top_norms_and_inverse_the_smallest():
    emb = np.array([[1.0, 0.0], [0.0, 3.0], [2.0, 0.0], [0.0, 3.0], [0.5, 0.0]])
    ds = make_dataset(emb)
    top = hp.select.norm_sampling(ds, size=2, mode="deterministic")
    assert top["row_id"] == [1, 3]
    top3 = hp.select.norm_sampling(ds, size=3, mode="deterministic")
    assert top3["row_id"] == [1, 2, 3]
    low = hp.select.norm_sampling(ds, size=2, mode="deterministic", inverse=True)
    assert low["row_id"] == [0, 4]
    # A tie at the cut goes to the earlier row: norms 3, 3 -> only row 1 when one row is kept.
    assert hp.select.norm_sampling(ds, size=1, mode="deterministic")["row_id"] == [1]


def test_inverse_favours_small_norms(blobs):
    ds, emb, _ = blobs
    norms = np.linalg.norm(emb, axis=1)
    high, low = [], []
    for seed in range(10):
        high.append(norms[hp.select.norm_sampling(ds, size=20, seed=seed)["row_id"]].mean())
        low.append(norms[hp.select.norm_sampling(ds, size=20, inverse=True, seed=seed)["row_id"]].mean())
    # Means over 10 draws: high-norm sampling above the dataset mean, inverse below it.
    assert np.mean(low) < norms.mean() - 0.5 < norms.mean() + 0.5 < np.mean(high)


def test_the_draw_depends_on_the_seed_and_params(blobs):
    ds, _, _ = blobs
    sub = hp.select.norm_sampling(ds, fraction=0.2, label_column="label", seed=3)
    assert hp.select.norm_sampling(ds, fraction=0.2, label_column="label", seed=4)["row_id"] != sub["row_id"]
    step = hp.provenance(sub)[-1]
    assert step["method"] == "norm_sampling"
    assert step["params"]["p"] == 2 and step["params"]["mode"] == "random" and step["params"]["seed"] == 3
    assert hp.provenance(hp.select.norm_sampling(ds, size=5, p=float("inf")))[-1]["params"]["p"] == "inf"


def test_bad_input(blobs):
    ds, _, _ = blobs
    for p in [0.5, "two", None, True, float("nan")]:
        with pytest.raises(ValueError, match="`p`"):
            hp.select.norm_sampling(ds, size=3, p=p)
    with pytest.raises(ValueError, match="mode"):
        hp.select.norm_sampling(ds, size=3, mode="greedy")
    with pytest.raises(ValueError, match="inverse"):
        hp.select.norm_sampling(ds, size=3, inverse="yes")
    with pytest.raises(ValueError, match="'emb'.*NaN"):
        hp.select.norm_sampling(make_dataset(np.array([[1.0, np.nan], [1.0, 2.0]])), size=1)
    with pytest.raises(ValueError, match="'emb' is ragged"):
        hp.select.norm_sampling(Dataset.from_dict({"emb": [[1.0, 2.0], [1.0]]}), size=1)
