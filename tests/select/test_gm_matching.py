import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import hf_prune as hp
from hf_prune.ops.median import geometric_median
from hf_prune.select.gm_matching import herd
from tests.conftest import make_dataset

BENCHMARKS = Path(__file__).resolve().parents[2] / "recipes" / "benchmarks"
REFERENCES = BENCHMARKS / "references" / "herding.py"


def load_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_references():
    return load_module("herding_references", REFERENCES)


@functools.cache
def load_benchmark():
    return load_module("gm_matching_robustness", BENCHMARKS / "gm_matching_robustness.py")


def ids(sub):
    return np.array(sub["row_id"])


def loglog_slope(x, order, target, ks):
    running = np.cumsum(x[order], axis=0)
    errors = [np.linalg.norm(running[k - 1] / k - target) for k in ks]
    return np.polyfit(np.log(ks), np.log(errors), 1)[0], errors[-1]


def test_hand_computed_herding_sequence():
    # mean μ = (0.25, -0.5) = θ0. Scores ⟨θ,x⟩: (.5, -.5, -.25, 1.5) -> x3; θ1 = 2μ - x3 = (.5, 2)
    # -> x1 (2 > 1 > -.5); θ2 = (.75, .5) -> x0 (1.5 > -.75); θ3 = (-1, 0) -> x2.
    x = np.array([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -3.0]])
    ds = make_dataset(x)
    expected = [{3}, {1, 3}, {0, 1, 3}, {0, 1, 2, 3}]
    for k, want in enumerate(expected, start=1):
        assert set(ids(hp.select.herding(ds, size=k, metric="l2")).tolist()) == want
    mu = torch.tensor(x.mean(0))
    assert herd(torch.tensor(x, dtype=torch.float32), mu, mu, 4).tolist() == [3, 1, 0, 2]


def test_hand_computed_gm_matching_sequence_in_1d():
    # GM = median = 2 (the mean is 3.2). θ0 = 2: picks 10; θ = -6: picks 0; θ = -4: picks 1;
    # θ = -3: picks 2, so 4 rows {0, 1, 2, 10}. Herding (μ = 3.2) instead goes 10, 0, 1, then
    # θ = 1.8 > 0 picks 3: {0, 1, 3, 10}.
    x = np.array([[0.0], [1.0], [2.0], [10.0], [3.0]])
    ds = make_dataset(x)
    gm = [set(ids(hp.select.gm_matching(ds, size=k, metric="l2")).tolist()) for k in (1, 2, 3, 4)]
    assert gm == [{3}, {0, 3}, {0, 1, 3}, {0, 1, 2, 3}]
    assert set(ids(hp.select.herding(ds, size=4, metric="l2")).tolist()) == {0, 1, 3, 4}


def test_herding_error_decays_as_one_over_k_random_as_one_over_sqrt_k():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 4))
    ds = make_dataset(x)
    ks = np.unique(np.geomspace(4, 300, 15).astype(int))
    mean = x.astype(np.float32).astype(np.float64).mean(0)
    mu = torch.tensor(mean)
    herd_order = herd(torch.tensor(x, dtype=torch.float32), mu, mu, 300)
    herd_slope, herd_error = loglog_slope(x, herd_order, mean, ks)
    random_errors = []
    for seed in range(8):
        order = np.random.default_rng(seed).permutation(len(x))[:300]
        random_errors.append([np.linalg.norm(x[order][:k].mean(0) - mean) for k in ks])
    random_slope = np.polyfit(np.log(ks), np.log(np.mean(random_errors, axis=0)), 1)[0]
    assert herd_slope < -0.85  # O(1/k) (fitted ≈ -1.2)
    assert -0.7 < random_slope < -0.3  # O(1/√k)
    assert herd_error < np.mean(random_errors, axis=0)[-1] / 5
    # the selector picks exactly those rows
    assert set(ids(hp.select.herding(ds, size=300, metric="l2")).tolist()) == set(herd_order.tolist())


def test_gm_matching_converges_to_the_geometric_median_as_one_over_k():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=(2000, 3)), rng.normal(loc=6.0, size=(600, 3))])
    xt = torch.tensor(x, dtype=torch.float32)
    median, _ = geometric_median(xt)
    mu = torch.tensor(median)
    order = herd(xt, mu, mu, 250)
    ks = np.unique(np.geomspace(4, 250, 15).astype(int))
    slope, error = loglog_slope(x, order, median, ks)
    assert slope < -0.85 and error < 0.02


def toy(corrupt_fraction, distance, seed=0):
    """The paper's toy: clean N([0,0], Σ) plus adversarial N(distance·[-1, 1], Σ), Σ = [[1,.5],[.5,1]]."""
    rng = np.random.default_rng(seed)
    cov = [[1.0, 0.5], [0.5, 1.0]]
    n_bad = int(1000 * corrupt_fraction)
    clean = rng.multivariate_normal([0.0, 0.0], cov, 1000 - n_bad)
    bad = rng.multivariate_normal([-distance, distance], cov, n_bad)
    return np.concatenate([clean, bad]), np.r_[np.zeros(1000 - n_bad), np.ones(n_bad)].astype(bool)


def test_gm_matching_is_robust_to_forty_percent_adversarial_points():
    x, is_bad = toy(0.4, 5.0)
    ds = make_dataset(x)
    median, _ = geometric_median(x)
    # the defaults: the paper's claim must hold for what a user gets without options
    gm = ids(hp.select.gm_matching(ds, fraction=0.1))
    hd = ids(hp.select.herding(ds, fraction=0.1))
    rnd = ids(hp.select.random(ds, fraction=0.1, seed=0))
    err = {name: np.linalg.norm(x[rows].mean(0)) for name, rows in [("gm", gm), ("herding", hd), ("random", rnd)]}
    # The subset mean tracks the geometric median (Theorem 1: within its error, + O(1/k)) ...
    assert np.linalg.norm(x[gm].mean(0) - median) < 0.1
    assert err["gm"] < np.linalg.norm(median) + 0.1
    # ... which stays far closer to the clean mean than the corrupted mean herding/random match.
    assert err["herding"] > 2.5 and err["random"] > 2.0
    assert err["gm"] < 0.45 * min(err["herding"], err["random"])
    assert is_bad[gm].mean() < is_bad[hd].mean() - 0.1


def test_gm_matching_breakdown_bounded_when_adversary_moves_away():
    errors = {}
    for distance in (5.0, 50.0):
        x, is_bad = toy(0.4, distance, seed=1)
        ds = make_dataset(x)
        gm = ids(hp.select.gm_matching(ds, fraction=0.1, metric="l2"))
        hd = ids(hp.select.herding(ds, fraction=0.1, metric="l2"))
        errors[distance] = (np.linalg.norm(x[gm].mean(0)), np.linalg.norm(x[hd].mean(0)), is_bad[gm].mean())
    # Herding's error grows with the adversary (breakdown 0); GM Matching's stays bounded.
    assert errors[50.0][1] > 8 * errors[5.0][1]
    assert errors[50.0][0] < 2.0 and errors[5.0][0] < 2.0
    assert errors[50.0][2] < 0.1  # far adversarial points are (almost) never picked


def digits_with_far_cluster(corrupt_fraction=0.2, distance=10.0, seed=0):
    """sklearn digits pixels with rows replaced by the benchmark's far-away cluster (`far_cluster` there)."""
    from sklearn.datasets import load_digits

    bench = load_benchmark()
    x = load_digits().data.astype(np.float64)
    return bench.far_cluster(x, corrupt_fraction, np.random.default_rng(seed), distance=distance)


def relative_error(x, is_bad, rows):
    """‖subset mean − clean mean‖ over the clean rows' RMS radius (the benchmark's "error")."""
    clean = x[~is_bad]
    radius = np.sqrt(((clean - clean.mean(0)) ** 2).sum(1).mean())
    return np.linalg.norm(x[rows].mean(0) - clean.mean(0)) / radius


def test_far_away_corrupted_cluster_is_left_out_by_the_default():
    x, is_bad = digits_with_far_cluster()
    ds = make_dataset(x)
    runs = {
        "default": hp.select.gm_matching(ds, fraction=0.1),
        "cosine": hp.select.gm_matching(ds, fraction=0.1, metric="cosine"),
        "cosine_unit": hp.select.gm_matching(ds, fraction=0.1, metric="cosine", renormalize_median=True),
        "herding": hp.select.herding(ds, fraction=0.1),
    }
    kept = {name: is_bad[ids(sub)].mean() for name, sub in runs.items()}
    error = {name: relative_error(x, is_bad, ids(sub)) for name, sub in runs.items()}
    # The previous default (cosine, median not renormalised) kept ~12% of the cluster (error ~1.2).
    assert kept["default"] <= 0.05 and error["default"] < 0.5
    assert kept["cosine_unit"] <= 0.05 and error["cosine_unit"] < 0.8
    assert kept["cosine"] > 0.08 and error["cosine"] > 0.8
    assert kept["herding"] > 0.15  # the mean target has no robustness at all


def test_renormalised_median_trades_diversity_for_robustness():
    # The paper's toy moved off the origin (cosine geometry needs a direction): 40% adversarial.
    x, is_bad = toy(0.4, 5.0)
    x = x + 2.0
    ds = make_dataset(x)
    unit = ids(hp.select.gm_matching(ds, fraction=0.1, metric="cosine", renormalize_median=True))
    plain = ids(hp.select.gm_matching(ds, fraction=0.1, metric="cosine"))
    assert is_bad[unit].mean() <= 0.01 < 0.04 <= is_bad[plain].mean()
    # On clean data the unit-norm target drags the subset towards the median's direction.
    clean, no_bad = digits_with_far_cluster(corrupt_fraction=0.0)
    ds = make_dataset(clean)
    unit = ids(hp.select.gm_matching(ds, fraction=0.1, metric="cosine", renormalize_median=True))
    plain = ids(hp.select.gm_matching(ds, fraction=0.1, metric="cosine"))
    assert relative_error(clean, no_bad, unit) > 4 * relative_error(clean, no_bad, plain)


def test_renormalised_cosine_matches_the_released_code_reference():
    refs = load_references()
    x = np.random.default_rng(6).normal(size=(300, 5)) + [3.0, 1.0, 0.0, 0.0, 0.0]
    ds = make_dataset(x)
    xt = torch.tensor(x, dtype=torch.float32)
    unit = ids(hp.select.gm_matching(ds, size=30, metric="cosine", renormalize_median=True, eps=1e-10))
    plain = ids(hp.select.gm_matching(ds, size=30, metric="cosine", eps=1e-10))
    assert set(refs.reference_gm_matching_cosine(xt, 30, eps=1e-12)) == set(unit.tolist())
    assert set(refs.reference_gm_matching_cosine(xt, 30, renormalize=False, eps=1e-12)) == set(plain.tolist())
    assert set(unit.tolist()) != set(plain.tolist())


def test_robustness_benchmark_runs_and_measures_what_it_says():
    bench = load_benchmark()
    cases = bench.make_cases(proxy=None)
    variants = ["random", "gm l2", "gm cosine renormalised"]
    results = bench.run(cases, ["toy_off_origin", "digits_far"], variants, [0.1], [0], ["global", "per_class"])
    assert ("toy_off_origin", "per_class", "gm l2", 0.1) not in results  # the toy has no labels
    x, is_bad, _ = cases["digits_far"](0)
    assert is_bad.mean() == pytest.approx(0.2, abs=1e-3)
    sub = hp.select.gm_matching(make_dataset(x), fraction=0.1)
    cell = results[("digits_far", "global", "gm l2", 0.1)]
    assert cell["kept"] == [is_bad[ids(sub)].mean()]
    assert cell["error"] == [pytest.approx(relative_error(x, is_bad, ids(sub)))]
    assert results[("toy_off_origin", "global", "gm cosine renormalised", 0.1)]["kept"] == [0.0]
    text = bench.report(results, variants, [0.1])
    assert "### digits_far, per_class" in text and "Most robust GM variant" in text


def test_median_without_direction_is_not_renormalised():
    # Unit rows in all directions: their geometric median is the origin, which has no direction.
    angles = np.arange(8) * np.pi / 4
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1) * np.arange(1, 9)[:, None]
    ds = make_dataset(x)
    with pytest.warns(UserWarning, match="cannot be renormalised"):
        unit = hp.select.gm_matching(ds, size=3, metric="cosine", renormalize_median=True)
    assert ids(unit).tolist() == ids(hp.select.gm_matching(ds, size=3, metric="cosine")).tolist()


def test_deprecated_geometry_spelling_maps_to_metric(blobs):
    ds, _, _ = blobs
    with pytest.warns(FutureWarning, match="metric='l2'") as caught:
        raw = hp.select.gm_matching(ds, size=10, geometry="raw")
    with pytest.warns(FutureWarning, match="metric='cosine'") as caught_herding:
        cos = hp.select.herding(ds, size=10, geometry="cosine")
    # The warning points at the line that passed `geometry=` (through the selector decorator's frame).
    assert {w.filename for w in [*caught, *caught_herding] if issubclass(w.category, FutureWarning)} == {__file__}
    assert ids(raw).tolist() == ids(hp.select.gm_matching(ds, size=10, metric="l2")).tolist()
    assert ids(cos).tolist() == ids(hp.select.herding(ds, size=10, metric="cosine")).tolist()
    assert hp.provenance(raw)[-1]["params"]["metric"] == "l2"
    with pytest.raises(ValueError, match="contradicts"):
        hp.select.gm_matching(ds, size=10, metric="cosine", geometry="raw")


def test_cosine_geometry_matches_normalised_raw(blobs):
    ds, emb, _ = blobs
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cos = hp.select.gm_matching(ds, size=20, metric="cosine")
    raw = hp.select.gm_matching(make_dataset(unit), size=20, metric="l2")
    assert ids(cos).tolist() == ids(raw).tolist()
    assert ids(hp.select.gm_matching(ds, size=20, metric="l2")).tolist() != ids(cos).tolist()


def test_per_class_budgets_and_class_medians(blobs):
    ds, emb, labels = blobs
    sub = hp.select.gm_matching(ds, fraction=0.2, label_column="label", metric="l2")
    rows = ids(sub)
    assert np.bincount(labels[rows]).tolist() == [8, 6, 4]
    for c in range(3):
        # Each class's subset matches that class's median (not the global one) by herding.
        members = np.flatnonzero(labels == c)
        median, _ = geometric_median(emb[members])
        mu = torch.tensor(median)
        order = herd(torch.tensor(emb[members]), mu, mu, len(rows[labels[rows] == c]))
        assert set(members[order].tolist()) == set(rows[labels[rows] == c].tolist())


def test_seed_matters_only_for_init_random_and_params(blobs):
    ds, _, _ = blobs
    sub = hp.select.gm_matching(ds, size=15, seed=0)
    # deterministic inits ignore the seed; init="random" depends on it
    assert ids(hp.select.gm_matching(ds, size=15, seed=5)).tolist() == ids(sub).tolist()
    r0 = ids(hp.select.gm_matching(ds, size=15, init="random", seed=0)).tolist()
    assert ids(hp.select.gm_matching(ds, size=15, init="random", seed=0)).tolist() == r0
    assert any(ids(hp.select.gm_matching(ds, size=15, init="random", seed=s)).tolist() != r0 for s in (1, 2, 3))
    assert len(hp.select.gm_matching(ds, fraction=1.0)) == len(ds)
    step = hp.provenance(sub)[-1]
    assert step["method"] == "gm_matching" and step["params"]["eps"] == 1e-5
    assert step["params"]["metric"] == "l2" and step["params"]["init"] == "target"
    assert step["params"]["renormalize_median"] is False
    assert hp.provenance(hp.select.herding(ds, size=5))[-1]["params"]["metric"] == "l2"
    assert hp.provenance(hp.select.herding(ds, size=5))[-1]["method"] == "herding"


def test_init_mean_differs_from_target_for_gm_only():
    x, _ = toy(0.3, 5.0)
    ds = make_dataset(x)
    assert ids(hp.select.herding(ds, size=20, metric="l2", init="mean")).tolist() == \
        ids(hp.select.herding(ds, size=20, metric="l2", init="target")).tolist()
    assert ids(hp.select.gm_matching(ds, size=20, metric="l2", init="mean")).tolist() != \
        ids(hp.select.gm_matching(ds, size=20, metric="l2", init="target")).tolist()


def test_agrees_with_the_benchmark_references():
    refs = load_references()
    x = torch.tensor(np.random.default_rng(5).normal(size=(400, 6)), dtype=torch.float32)
    ds = make_dataset(x.numpy())
    assert set(refs.reference_herding(x, 40)) == set(ids(hp.select.herding(ds, size=40, metric="l2")).tolist())
    median, _ = geometric_median(x)
    mu = torch.tensor(median)
    assert refs.reference_herding(x, 40, target=mu) == herd(x, mu, mu, 40).tolist()
    # Eq. 5 bounds the objective, not the point: compare both solvers run to high accuracy
    precise, _ = geometric_median(x, eps=1e-12)
    np.testing.assert_allclose(refs.reference_weiszfeld(x, eps=1e-12).numpy(), precise, atol=1e-6)


def test_bad_input(blobs):
    ds, emb, _ = blobs
    with pytest.raises(ValueError, match="metric"):
        hp.select.gm_matching(ds, size=5, metric="l1")
    with pytest.raises(ValueError, match="metric"):
        hp.select.herding(ds, size=5, metric="ip")
    with pytest.raises(ValueError, match="renormalize_median.*cosine"):
        hp.select.gm_matching(ds, size=5, renormalize_median=True)
    with pytest.raises(ValueError, match="renormalize_median"):
        hp.select.gm_matching(ds, size=5, metric="cosine", renormalize_median="yes")
    with pytest.raises(ValueError, match="geometry"):
        hp.select.gm_matching(ds, size=5, geometry="l1")
    with pytest.raises(ValueError, match="init"):
        hp.select.herding(ds, size=5, init="zeros")
    with pytest.raises(ValueError, match="eps"):
        hp.select.gm_matching(ds, size=5, eps=-1.0)
    with pytest.raises(ValueError, match="max_iter"):
        hp.select.gm_matching(ds, size=5, max_iter=0)
    with pytest.raises(ValueError, match="'emb'"):
        bad = emb.copy()
        bad[3, 2] = np.nan
        hp.select.gm_matching(make_dataset(bad), size=5)
    with pytest.raises(ValueError, match="'emb'"):
        hp.select.herding(make_dataset(None, emb=[[1.0, 2.0], [3.0]]), size=1)


def test_non_converged_median_warns():
    x, _ = toy(0.2, 5.0)
    with pytest.warns(UserWarning, match="did not converge"):
        hp.select.gm_matching(make_dataset(x), size=10, metric="l2", eps=1e-15, max_iter=1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_gpu_pick_the_same_rows(blobs):
    ds, _, _ = blobs
    renormalised = functools.partial(hp.select.gm_matching, metric="cosine", renormalize_median=True)
    for f in (hp.select.gm_matching, hp.select.herding, renormalised):
        cpu = f(ds, fraction=0.3, label_column="label", device="cpu")
        gpu = f(ds, fraction=0.3, label_column="label", device="cuda")
        assert cpu["row_id"] == gpu["row_id"]
    median_cpu, _ = geometric_median(np.asarray(ds["emb"]), device="cpu")
    median_gpu, _ = geometric_median(np.asarray(ds["emb"]), device="cuda")
    np.testing.assert_allclose(median_cpu, median_gpu, rtol=1e-10, atol=1e-12)


def test_hand_computed_rank_gains_and_initial_subset():
    # The sequence of test_hand_computed_herding_sequence: 3, 1, 0, 2 with scores 1.5, 2, 1.5, 1.
    x = np.array([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -3.0]])
    ds = make_dataset(x)
    sub = hp.select.herding(ds, size=4, metric="l2", rank_column="rank", gain_column="score")
    assert sub["rank"] == [2, 1, 3, 0]  # every row is kept, yet the rank is the herding order
    np.testing.assert_allclose(sub["score"], [1.5, 2.0, 1.0, 1.5])
    # Row 2 first: its score is ⟨μ, x2⟩ = -0.25 and θ1 = 2μ - x2 = (1.5, -1); x0 and x3 then tie at 3,
    # the lower row wins; θ2 = (-0.25, -1.5) -> x3 (4.5).
    start = hp.select.herding(ds, size=3, metric="l2", initial_subset=[2], rank_column="rank", gain_column="score")
    assert start["row_id"] == [0, 2, 3] and start["rank"] == [1, 0, 2]
    np.testing.assert_allclose(start["score"], [3.0, -0.25, 4.5])
    mu = torch.tensor(x.mean(0))
    picks, scores = herd(torch.tensor(x, dtype=torch.float32), mu, mu, 3, initial=[2], return_gains=True)
    assert picks.tolist() == [2, 0, 3] and scores.tolist() == [-0.25, 3.0, 4.5]
    with pytest.raises(ValueError, match="more than `k`"):
        herd(torch.tensor(x, dtype=torch.float32), mu, mu, 1, initial=[2, 0])


def test_gm_matching_initial_rows_move_theta_but_not_the_target():
    # 1-d, GM = 2 (see test_hand_computed_gm_matching_sequence_in_1d). Starting from row 0 (x = 0):
    # θ1 = 2 + 2 - 0 = 4 -> 10; θ2 = 4 + 2 - 10 = -4 -> 1; θ3 = -4 + 2 - 1 = -3 -> 2.
    x = np.array([[0.0], [1.0], [2.0], [10.0], [3.0]])
    ds = make_dataset(x)
    sub = hp.select.gm_matching(ds, size=4, metric="l2", initial_subset=[0], rank_column="rank")
    assert sub["row_id"] == [0, 1, 2, 3] and sub["rank"] == [0, 2, 3, 1]
    # Starting from row 4 (x = 3): θ1 = 1 -> 10; θ2 = -7 -> 0; θ3 = -5 -> 1.
    sub = hp.select.gm_matching(ds, size=4, metric="l2", initial_subset=[4], rank_column="rank")
    assert sub["row_id"] == [0, 1, 3, 4] and sub["rank"] == [2, 3, 1, 0]
