import numpy as np
import pytest

from hf_prune.ops.other_label import nearest_other_label


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(x, labels):
    sims = x.astype(np.float64) @ x.astype(np.float64).T
    sims[np.asarray(labels)[:, None] == np.asarray(labels)[None, :]] = -np.inf
    return sims.max(axis=1)


def clustered(n, d, clusters, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    member = rng.integers(0, clusters, n)
    return unit(centres[member] + spread * rng.standard_normal((n, d))), member


def test_hand_computed_points_on_a_circle():
    # Unit vectors at these angles; labels A A A B: each A's nearest B is the point at 1.0 rad, and
    # B's nearest A is the one at 0.2 rad.
    angles = np.array([0.0, 0.1, 0.2, 1.0])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    sims = nearest_other_label(x, ["a", "a", "a", "b"])
    np.testing.assert_allclose(sims, np.cos([1.0, 0.9, 0.8, 0.8]), atol=1e-6)
    # One label: nobody has another label.
    assert np.all(nearest_other_label(x, [7, 7, 7, 7]) == -np.inf)


def test_exact_scan_equals_brute_force_across_query_blocks_and_column_tiles():
    # 9,000 rows: 9 query blocks of 1,024 and 3 column tiles of 4,096; 40 clusters of ~225 rows, so
    # most rows' 32 nearest share their label (the case that defeated the widening k-NN search).
    x, member = clustered(9000, 16, 40)
    sims, report = nearest_other_label(x, member, return_report=True)
    assert sims.dtype == np.float32 and sims.shape == (9000,)
    np.testing.assert_allclose(sims, brute_force(x, member), atol=2e-6)
    # The value is the exact (einsum) product of a row with another label.
    assert report["index"] == "flat" and report["recall_at_k"] == 1.0


def test_the_value_does_not_depend_on_the_thread_count_or_the_policy():
    import torch
    from threadpoolctl import threadpool_limits

    from hf_prune.ops.threads import thread_policy

    x, member = clustered(5000, 384, 20, seed=3)
    runs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with threadpool_limits(threads):
                runs.append(nearest_other_label(x, member))
        with thread_policy(False):
            runs.append(nearest_other_label(x, member))
    finally:
        torch.set_num_threads(before)
    for other in runs[1:]:
        np.testing.assert_array_equal(runs[0], other)


def test_ivf_never_finds_a_closer_row_than_exact_and_reports_its_measured_recall():
    x, member = clustered(20_000, 32, 200, seed=1)
    exact = nearest_other_label(x, member, index="flat")
    approx, report = nearest_other_label(x, member, index="ivf", seed=0, return_report=True)
    # Each value is a real other-label row's product: at most the best one.
    assert np.all(approx <= exact)
    assert report["index"] == "ivf" and report["recall_measured"] and report["recall_queries"] == 1000
    sample = np.sort(np.random.default_rng(0).choice(len(x), size=1000, replace=False))
    assert report["recall_at_k"] == pytest.approx(np.mean(approx[sample] == exact[sample]))
    assert 0.9 < report["recall_at_k"] <= 1.0
    assert np.mean(approx == exact) > 0.9
    # Every approximate kind runs the masked IVF-Flat join.
    for kind in ("ivfpq", "hnsw"):
        np.testing.assert_array_equal(nearest_other_label(x, member, index=kind, seed=0), approx)


def test_ivf_searches_more_lists_for_the_rows_whose_probed_lists_hold_no_other_label():
    # A big label fills every list its rows probe; the other label is a small far-away group. The rows
    # left are searched again in 4x the lists until every list is probed: then the answer is exact.
    rng = np.random.default_rng(2)
    big = unit(np.array([1.0] + [0.0] * 15) + 0.05 * rng.standard_normal((6000, 16)))
    small = unit(np.array([0.0] * 15 + [1.0]) + 0.05 * rng.standard_normal((60, 16)))
    x = np.concatenate([big, small])
    labels = np.r_[np.zeros(6000, int), np.ones(60, int)]
    values, report = nearest_other_label(x, labels, index="ivf", return_report=True)
    assert len(report["widened"]) >= 2 and report["widened"][0] > 0
    np.testing.assert_allclose(values, brute_force(x, labels), atol=2e-6)


def test_bad_input_names_the_parameter():
    x = unit(np.random.default_rng(0).standard_normal((10, 4)))
    with pytest.raises(ValueError, match="labels"):
        nearest_other_label(x, np.zeros(9))
    with pytest.raises(ValueError, match="index"):
        nearest_other_label(x, np.zeros(10), index="kdtree")
    with pytest.raises(ValueError, match="recall_queries"):
        nearest_other_label(x, np.zeros(10), recall_queries=0)
    before = x.copy()
    nearest_other_label(x, np.arange(10) % 2)
    np.testing.assert_array_equal(x, before)  # the input is not modified


@pytest.mark.gpu
def test_gpu_scan_gives_the_cpu_values():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    x, member = clustered(30_000, 64, 100)
    np.testing.assert_allclose(nearest_other_label(x, member, device="cuda"), nearest_other_label(x, member),
                               atol=2e-6)
