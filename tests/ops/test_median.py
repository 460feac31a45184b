import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from hf_prune.ops.median import geometric_median


def objective(x, z, w=None):
    d = np.linalg.norm(x - z, axis=1)
    return float(d.sum() if w is None else (np.asarray(w) * d).sum())


def test_matches_scipy_minimisation():
    x = np.random.default_rng(0).normal(size=(40, 3)) * [1.0, 2.0, 0.5] + [3.0, -1.0, 0.0]
    median, info = geometric_median(x, eps=1e-7)
    best = minimize(lambda z: objective(x, z), x.mean(0), method="Nelder-Mead",
                    options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
    assert info["converged"] and not info["at_data_point"]
    # ε-accurate in the sense of Eq. 5, and the same point as a generic optimiser finds
    assert objective(x, median) <= (1 + 1e-7) * best.fun
    np.testing.assert_allclose(median, best.x, atol=1e-4)
    assert info["objective"] == pytest.approx(objective(x, median), rel=1e-12)


def test_weighted_matches_scipy_and_is_not_the_mean():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(25, 2))
    w = rng.uniform(0.1, 3.0, size=25)
    median, _ = geometric_median(x, weights=w, eps=1e-8)
    best = minimize(lambda z: objective(x, z, w), x.mean(0), method="Nelder-Mead",
                    options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
    assert objective(x, median, w) <= (1 + 1e-8) * best.fun
    assert np.linalg.norm(median - np.average(x, axis=0, weights=w)) > 1e-3


def test_one_dimensional_median_is_the_ordinary_median():
    x = np.array([[3.0], [1.0], [7.0], [2.0], [100.0], [-4.0], [5.0]])
    median, info = geometric_median(x)
    assert median[0] == 3.0 and info["at_data_point"]  # exact, via the Vardi–Zhang step
    even = np.array([[1.0], [2.0], [6.0], [9.0]])
    m, _ = geometric_median(even)
    # any point of [2, 6] minimises; the objective must equal the minimum 12
    assert 2.0 - 1e-9 <= m[0] <= 6.0 + 1e-9
    assert objective(even, m) == pytest.approx(12.0, rel=1e-6)


def test_iterate_on_a_data_point_is_handled():
    # The mean (Weiszfeld's start) is the data point (0, 0), which is also the median:
    # plain Weiszfeld would divide by zero here.
    cross = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    median, info = geometric_median(cross)
    np.testing.assert_array_equal(median, [0.0, 0.0])
    assert info["at_data_point"] and info["iterations"] == 0
    # A heavy point wins exactly when its weight exceeds the pull of the others (here 5 > 3).
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [3.0, 3.0]])
    median, info = geometric_median(x, weights=[5, 1, 1, 1])
    np.testing.assert_array_equal(median, [0.0, 0.0])
    # Lighter: the median leaves the point, towards the others.
    median, info = geometric_median(x, weights=[0.5, 1, 1, 1])
    assert not info["at_data_point"] and np.linalg.norm(median) > 0.05


def test_robust_to_forty_percent_outliers_and_bounded_breakdown():
    rng = np.random.default_rng(0)
    clean = rng.normal(size=(600, 5))
    for distance in (10.0, 1000.0):
        bad = distance + rng.normal(size=(400, 5))
        x = np.concatenate([clean, bad])
        median, _ = geometric_median(x)
        mean_error = np.linalg.norm(x.mean(0))
        # The mean is dragged 40% of the way to the outliers; the median stays within O(spread).
        assert mean_error > 0.39 * distance * np.sqrt(5)
        assert np.linalg.norm(median) < 2.0


def test_identical_points_and_single_row():
    m, info = geometric_median(np.full((6, 3), 2.5, dtype=np.float32))
    np.testing.assert_allclose(m, [2.5, 2.5, 2.5])
    assert info["converged"]
    m, _ = geometric_median(np.array([[1.0, -2.0]]))
    np.testing.assert_array_equal(m, [1.0, -2.0])


def test_chunked_pass_equals_one_chunk(monkeypatch):
    import hf_prune.ops.median as med

    x = np.random.default_rng(3).normal(size=(500, 4)).astype(np.float32)
    whole, _ = geometric_median(x)
    monkeypatch.setattr(med, "_CHUNK_NUMBERS", 4 * 37)  # 37 rows per chunk
    chunked, _ = geometric_median(torch.from_numpy(x))
    np.testing.assert_allclose(chunked, whole, rtol=1e-9, atol=1e-12)


def test_max_iter_reports_non_convergence():
    x = np.random.default_rng(4).normal(size=(100, 3))
    _, info = geometric_median(x, eps=1e-14, max_iter=2)
    assert not info["converged"] and info["iterations"] == 2


def test_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        geometric_median(np.array([[0.0, np.nan], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="2-d"):
        geometric_median(np.zeros(3))
    with pytest.raises(ValueError, match="no rows"):
        geometric_median(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="weights"):
        geometric_median(np.zeros((3, 2)), weights=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="weights"):
        geometric_median(np.zeros((3, 2)), weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="eps"):
        geometric_median(np.zeros((3, 2)), eps=0)
    with pytest.raises(ValueError, match="max_iter"):
        geometric_median(np.zeros((3, 2)), max_iter=0)
    with pytest.raises(ValueError, match="real numbers"):
        geometric_median(np.array([["a", "b"]]))
