import importlib

import numpy as np
import pytest
from scipy.stats import beta as scipy_beta

import hf_prune as hp
from hf_prune.score.dynamics import dual_from_probs
from hf_prune.select.dual import beta_parameters, beta_weights
from tests.conftest import make_dataset

# `hf_prune.select.dual` as an attribute is the selector function; the module is needed for the spy.
dual_module = importlib.import_module("hf_prune.select.dual")


def population(n=2000, epochs=30, seed=0):
    """Synthetic learning curves: sample i is learned around epoch 45·d_i − 5, d_i ~ U(0, 1)."""
    rng = np.random.default_rng(seed)
    onset = 45 * rng.random(n) - 5
    t = np.arange(epochs)
    probs = 1 / (1 + np.exp(-0.4 * (t[None] - onset[:, None])))
    return np.clip(probs + rng.normal(0, 0.03, probs.shape), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def synthetic():
    probs = population()
    labels = np.repeat([0, 1], 1000)
    return make_dataset(dynamics=probs, label=labels), probs


def test_dual_keeps_the_highest_scores(synthetic):
    ds, probs = synthetic
    score = dual_from_probs(probs, 10)
    sub = hp.select.dual(ds, fraction=0.1, dynamics_column="dynamics", window=10)
    kept = np.array(sub["row_id"])
    assert len(kept) == 200
    assert score[kept].min() >= np.sort(score)[-200]
    # Per class: the top 10 % of each class.
    sub = hp.select.dual(ds, fraction=0.1, label_column="label")
    kept = np.array(sub["row_id"])
    for c in (0, 1):
        rows = np.flatnonzero(np.array(ds["label"]) == c)
        expect = rows[np.argsort(-score[rows], kind="stable")[:100]]
        np.testing.assert_array_equal(np.sort(kept[np.isin(kept, rows)]), np.sort(expect))
    step = hp.provenance(sub)[-1]
    assert step["method"] == "dual" and step["params"]["window"] == 10 and step["params"]["label_column"] == "label"
    assert hp.select.dual(ds, fraction=0.1, seed=5)["row_id"] == hp.select.dual(ds, fraction=0.1, seed=5)["row_id"]


def test_dual_uses_the_chosen_epochs(synthetic):
    ds, probs = synthetic
    kept = np.array(hp.select.dual(ds, size=50, epochs=slice(0, 12), window=5)["row_id"])
    score = dual_from_probs(probs[:, :12], 5)
    assert set(kept) == set(np.argsort(-score, kind="stable")[:50])


def test_beta_parameters_follow_eq5():
    C, c_d, mu = 15.0, 5.5, 0.25
    for r in (0.0, 0.3, 0.7, 0.9):
        b = C * (1 - mu) * (1 - r**c_d)
        assert beta_parameters(mu, r, c_d=c_d, C=C) == pytest.approx((C - b + 1, b))
    # The Beta mean starts near mu_D and moves to 1 as the pruning ratio grows.
    means = [a / (a + b) for a, b in (beta_parameters(mu, r, c_d=c_d, C=C) for r in np.linspace(0, 0.99, 12))]
    assert means[0] == pytest.approx((C * mu + 1) / (C + 1)) and abs(means[0] - mu) < 0.05
    assert np.all(np.diff(means) > 0) and means[-1] > 0.95
    # Nearly stationary at low ratios (the point of the r^{c_D} form).
    assert abs(means[1] - means[0]) < 1e-3
    # Degenerate r = 1 or mu_D = 1: beta floored to a tiny positive value, alpha = C + 1.
    for a, b in (beta_parameters(mu, 1.0), beta_parameters(1.0, 0.5)):
        assert 0 < b <= 1e-6 and a == pytest.approx(16.0)
    for bad in ({"mu_d": 1.5, "ratio": 0.5}, {"mu_d": 0.5, "ratio": -0.1}, {"mu_d": 0.5, "ratio": 0.5, "c_d": 0},
                {"mu_d": 0.5, "ratio": 0.5, "C": -1}, {"mu_d": float("nan"), "ratio": 0.5}):
        with pytest.raises(ValueError):
            beta_parameters(**bad)


def test_beta_weights_match_scipy_pdf_times_score():
    rng = np.random.default_rng(0)
    mean = rng.uniform(0.01, 0.99, 40)
    score = rng.random(40)
    top10 = np.argsort(-score)[:10]
    mu = mean[top10].mean()
    for r in (0.3, 0.7, 0.9):
        b = 15 * (1 - mu) * (1 - r**4)
        expected = scipy_beta.pdf(mean, 15 - b + 1, b) * score
        np.testing.assert_allclose(beta_weights(mean, score, ratio=r, c_d=4, C=15), expected, rtol=1e-10)
    # anchor_size=1: mu_D is the prediction mean of the single highest-score sample.
    b = 15 * (1 - mean[np.argmax(score)]) * (1 - 0.5**4)
    np.testing.assert_allclose(
        beta_weights(mean, score, ratio=0.5, c_d=4, anchor_size=1), scipy_beta.pdf(mean, 16 - b, b) * score
    )
    # Prediction means of exactly 0 or 1 get finite weights.
    w = beta_weights(np.array([0.0, 0.5, 1.0]), np.ones(3), ratio=0.99, c_d=1)
    assert np.isfinite(w).all() and w[2] > w[1] > w[0]


def test_dual_beta_samples_with_eq5_weights(synthetic, monkeypatch):
    ds, probs = synthetic
    captured = []
    real = dual_module.weighted_sample_without_replacement

    def spy(weights, k, rng):
        captured.append(np.array(weights))
        return real(weights, k, rng)

    monkeypatch.setattr(dual_module, "weighted_sample_without_replacement", spy)
    hp.select.dual_beta(ds, fraction=0.2, label_column="label", c_d=4, C=15, seed=1)
    score = dual_from_probs(probs, 10)
    mean = probs.astype(np.float64).mean(axis=1)
    labels = np.array(ds["label"])
    for c, weights in zip((0, 1), captured):
        rows = np.flatnonzero(labels == c)
        mu = mean[rows][np.argsort(-score[rows])[:10]].mean()  # per-class mu_D
        b = 15 * (1 - mu) * (1 - 0.8**4)  # global pruning ratio r = 0.8
        np.testing.assert_allclose(weights, scipy_beta.pdf(mean[rows], 16 - b, b) * score[rows], rtol=1e-8)


def test_dual_beta_draw_frequencies_follow_the_weights():
    # Six rows, one kept: each row should be drawn with probability weight / sum(weights).
    # C = 2 flattens the Beta so that every row has a sizeable probability (5 % to 33 %).
    probs = np.array([
        [0.1, 0.3, 0.2, 0.4], [0.5, 0.7, 0.6, 0.9], [0.2, 0.1, 0.3, 0.2],
        [0.6, 0.9, 0.7, 1.0], [0.0, 0.4, 0.1, 0.5], [0.3, 0.5, 0.3, 0.5],
    ], dtype=np.float32)
    ds = make_dataset(dynamics=probs)
    weights = beta_weights(probs.mean(1), dual_from_probs(probs, 3), ratio=1 - 1 / 6, c_d=2, C=2, anchor_size=2)
    expected = weights / weights.sum()
    assert expected.min() > 0.04 and expected.max() > 6 * expected.min()  # a wrong weighting would show
    runs = 200
    counts = np.zeros(6)
    for seed in range(runs):
        counts[hp.select.dual_beta(ds, size=1, window=3, c_d=2, C=2, anchor_size=2, seed=seed)["row_id"][0]] += 1
    sigma = np.sqrt(expected * (1 - expected) / runs)
    assert np.all(np.abs(counts / runs - expected) < 4 * sigma), (counts / runs, expected)


def test_beta_sampling_keeps_easier_samples_at_high_pruning(synthetic):
    # The paper's claim (Sec. 3.3): as r grows, Beta sampling takes in easier samples (higher
    # prediction mean), while plain DUAL thresholding keeps a narrow band of hard ones.
    ds, probs = synthetic
    mean = probs.mean(axis=1)
    plain = mean[hp.select.dual(ds, fraction=0.1)["row_id"]].mean()
    by_ratio = {}
    for kept in (0.5, 0.3, 0.1):
        by_ratio[kept] = np.mean(
            [mean[hp.select.dual_beta(ds, fraction=kept, seed=s)["row_id"]].mean() for s in range(3)]
        )
    assert by_ratio[0.1] > plain + 0.2
    assert by_ratio[0.1] > by_ratio[0.3] + 0.1 > by_ratio[0.5] + 0.12


def test_dual_beta_per_class_matches_each_class_alone(synthetic):
    ds, _ = synthetic
    both = np.array(hp.select.dual_beta(ds, fraction=0.1, label_column="label", seed=7)["row_id"])
    labels = np.array(ds["label"])
    for c in (0, 1):
        rows = np.flatnonzero(labels == c)
        alone = hp.select.dual_beta(ds.select(rows), fraction=0.1, seed=7)
        # Group c is seeded with (seed, c); alone, the single group is (seed, 0): compare class 0.
        if c == 0:
            np.testing.assert_array_equal(rows[np.array(alone["row_id"])], both[labels[both] == 0])
        assert (labels[both] == c).sum() == 100


def test_dual_beta_determinism_and_provenance(synthetic):
    ds, _ = synthetic
    a = hp.select.dual_beta(ds, fraction=0.1, seed=3)
    assert a["row_id"] == hp.select.dual_beta(ds, fraction=0.1, seed=3)["row_id"]
    assert a["row_id"] != hp.select.dual_beta(ds, fraction=0.1, seed=4)["row_id"]
    step = hp.provenance(a)[-1]
    assert step["method"] == "dual_beta" and step["params"]["c_d"] == 5.5 and step["params"]["C"] == 15
    assert step["params"]["pruning_ratio"] == pytest.approx(0.9) and step["params"]["seed"] == 3
    assert len(hp.select.dual_beta(ds, fraction=1.0)) == len(ds)  # r = 0 keeps everything


def test_dual_beta_zero_weights_are_drawn_last():
    # Rows 0-2 never change prediction (DUAL = 0): they are taken only after every other row.
    probs = np.array([[0.5] * 4, [0.2] * 4, [0.9] * 4, [0.1, 0.4, 0.2, 0.6], [0.3, 0.5, 0.6, 0.9]], dtype=np.float32)
    ds = make_dataset(dynamics=probs)
    for seed in range(5):
        assert sorted(hp.select.dual_beta(ds, size=2, window=2, seed=seed)["row_id"]) == [3, 4]
        assert {3, 4} <= set(hp.select.dual_beta(ds, size=4, window=2, seed=seed)["row_id"])
    # All weights zero: a uniform draw, still valid.
    flat = make_dataset(dynamics=np.full((6, 4), 0.3, dtype=np.float32))
    assert len(hp.select.dual_beta(flat, size=3, window=2)) == 3


def test_beta_sampling_over_other_columns(synthetic):
    ds, probs = synthetic
    mean = probs.astype(np.float64).mean(axis=1)
    scored = hp.score.dual(ds, window=10)
    scored = scored.add_column("pred_mean", mean.tolist())
    via_dynamics = hp.select.beta_sampling(scored, fraction=0.2, score_column="dual", dynamics_column="dynamics", seed=2)
    via_column = hp.select.beta_sampling(scored, fraction=0.2, score_column="dual", mean_column="pred_mean", seed=2)
    reference = hp.select.dual_beta(ds, fraction=0.2, seed=2)
    assert via_dynamics["row_id"] == via_column["row_id"] == reference["row_id"]
    assert hp.provenance(via_column)[-1]["method"] == "beta_sampling"
    # On EL2N-like difficulty (1 - mean), thresholding keeps the hardest; Beta sampling at 90 %
    # pruning moves to easier rows.
    hard = scored.add_column("difficulty", (1 - mean).tolist())
    beta_sub = hp.select.beta_sampling(hard, fraction=0.1, score_column="difficulty", mean_column="pred_mean")
    assert mean[beta_sub["row_id"]].mean() > np.sort(mean)[:200].mean() + 0.3


def test_errors(synthetic):
    ds, _ = synthetic
    scored = hp.score.dual(ds, window=10)
    with pytest.raises(KeyError, match="nope"):
        hp.select.dual(ds, fraction=0.1, dynamics_column="nope")
    with pytest.raises(ValueError, match="window"):
        hp.select.dual_beta(ds, fraction=0.1, window=31)
    with pytest.raises(ValueError, match="fraction"):
        hp.select.dual_beta(ds, fraction=0.0)
    with pytest.raises(ValueError, match="size"):
        hp.select.dual(ds, size=len(ds) + 1)
    with pytest.raises(ValueError, match="exactly one"):
        hp.select.dual_beta(ds, fraction=0.1, size=3)
    with pytest.raises(ValueError, match="c_d"):
        hp.select.dual_beta(ds, fraction=0.1, c_d=0)
    with pytest.raises(ValueError, match="C"):
        hp.select.dual_beta(ds, fraction=0.1, C=-1)
    with pytest.raises(ValueError, match="anchor_size"):
        hp.select.dual_beta(ds, fraction=0.1, anchor_size=0)
    with pytest.raises(KeyError, match="label"):
        hp.select.dual_beta(ds, fraction=0.1, label_column="labelz")
    with pytest.raises(ValueError, match="exactly one of `mean_column`"):
        hp.select.beta_sampling(scored, fraction=0.1, score_column="dual")
    with pytest.raises(ValueError, match="exactly one of `mean_column`"):
        hp.select.beta_sampling(scored, fraction=0.1, score_column="dual", mean_column="dual", dynamics_column="dynamics")
    with pytest.raises(KeyError, match="missing"):
        hp.select.beta_sampling(scored, fraction=0.1, score_column="missing", dynamics_column="dynamics")
    negative = scored.add_column("neg", [-1.0] + [1.0] * (len(ds) - 1))
    with pytest.raises(ValueError, match="neg.*negative"):
        hp.select.beta_sampling(negative, fraction=0.1, score_column="neg", dynamics_column="dynamics")
    with pytest.raises(ValueError, match="neg.*in \\[0, 1\\]"):
        hp.select.beta_sampling(negative, fraction=0.1, score_column="dual", mean_column="neg")
    nan = scored.add_column("nan", [float("nan")] + [1.0] * (len(ds) - 1))
    with pytest.raises(ValueError, match="nan.*NaN"):
        hp.select.beta_sampling(nan, fraction=0.1, score_column="nan", dynamics_column="dynamics")
    logits = make_dataset(dynamics=np.full((4, 3), 3.0, dtype=np.float32))
    with pytest.raises(ValueError, match="probabilities"):
        hp.select.dual_beta(logits, size=2, window=2)
    with pytest.raises(TypeError):
        hp.select.dual_beta(ds, 0.1)


def test_dual_reads_the_score_column(synthetic):
    ds, _ = synthetic
    scored = hp.score.dual(ds, window=10)
    via_column = hp.select.dual(scored, fraction=0.1, score_column="dual")
    assert via_column["row_id"] == hp.select.dual(ds, fraction=0.1)["row_id"]
    per_class = hp.select.dual(hp.score.dual(ds, window=5, epochs=slice(0, 12), output_column="d5"), fraction=0.2,
                               score_column="d5", label_column="label")
    assert per_class["row_id"] == hp.select.dual(ds, fraction=0.2, window=5, epochs=slice(0, 12),
                                                 label_column="label")["row_id"]
    # What is read is the column: another score there is what gets ranked (ties to the lower row).
    other = scored.add_column("other", np.tile([1.0, 3.0, 2.0, 3.0], len(ds) // 4).tolist())
    assert hp.select.dual(other, size=3, score_column="other")["row_id"] == [1, 3, 5]
    steps = hp.provenance(via_column)
    assert [s["method"] for s in steps] == ["score.dual", "dual"] and not any(s["stale"] for s in steps)
    assert steps[-1]["params"]["score_column"] == "dual" and "window" not in steps[-1]["params"]
    # The one-call form records what it computed, as before.
    params = hp.provenance(hp.select.dual(ds, size=5))[-1]["params"]
    assert {k: params[k] for k in ("dynamics_column", "window", "epochs")} == {"dynamics_column": "dynamics",
                                                                              "window": 10, "epochs": None}
    assert "score_column" not in params


def test_dual_score_column_errors(synthetic):
    ds, _ = synthetic
    scored = hp.score.dual(ds, window=10)
    for extra in ({"dynamics_column": "dynamics"}, {"window": 10}, {"epochs": slice(0, 5)}):
        with pytest.raises(ValueError, match=f"`{next(iter(extra))}`"):
            hp.select.dual(scored, fraction=0.1, score_column="dual", **extra)
    with pytest.raises(KeyError, match="nope"):
        hp.select.dual(scored, fraction=0.1, score_column="nope")
    nan = scored.add_column("nan", [float("nan")] + [1.0] * (len(ds) - 1))
    with pytest.raises(ValueError, match="nan.*NaN"):
        hp.select.dual(nan, fraction=0.1, score_column="nan")
    with pytest.raises(ValueError, match="empty"):
        hp.select.dual(scored.select([]), size=1, score_column="dual")


def test_dual_beta_is_score_dual_then_beta_sampling(synthetic, monkeypatch):
    ds, _ = synthetic
    # The one-call form computes through the function behind hp.score.dual: one code path.
    calls = []
    real = dual_module.score_arrays

    def spy(method, dataset, **kwargs):
        calls.append(method)
        return real(method, dataset, **kwargs)

    monkeypatch.setattr(dual_module, "score_arrays", spy)
    one_call = hp.select.dual_beta(ds, fraction=0.3, label_column="label", window=5, epochs=slice(0, 20), seed=4)
    assert calls == ["dual"]
    # The two-step form over the columns hp.score.dual writes gives the same rows here.
    scored = hp.score.dual(ds, window=5, epochs=slice(0, 20), mean_output_column="dual_mean")
    two_steps = hp.select.beta_sampling(scored, fraction=0.3, label_column="label", score_column="dual",
                                        mean_column="dual_mean", seed=4)
    assert one_call["row_id"] == two_steps["row_id"]
    assert [s["method"] for s in hp.provenance(two_steps)] == ["score.dual", "beta_sampling"]
    assert not any(s["stale"] for s in hp.provenance(two_steps))
