import numpy as np
import pytest

from hf_prune.ops.knn import RadiusGraphTooLarge, normalize_rows, radius_neighbors


def as_dense(indptr, indices, n):
    out = np.zeros((n, n), dtype=bool)
    out[np.repeat(np.arange(n), np.diff(indptr)), indices] = True
    return out


def distances(x):
    x = np.asarray(x, dtype=np.float64)
    return np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_radius_graph_equals_dense_float64(backend):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(700, 6)) * rng.uniform(0.5, 2.0, size=(700, 1))  # float64, varied norms
    for radius in (0.8, 2.5):
        indptr, indices = radius_neighbors(x, radius, backend=backend, chunk_size=64)
        dense = distances(x) < radius
        np.testing.assert_array_equal(as_dense(indptr, indices, len(x)), dense)
        assert len(indices) == dense.sum() and indices.dtype == np.int32  # no duplicates
    unit = normalize_rows(x)
    indptr, indices = radius_neighbors(x, 0.4, metric="cosine", backend=backend)
    np.testing.assert_array_equal(as_dense(indptr, indices, len(x)), distances(unit) < 0.4)
    # Every pair within the radius: the complete graph, found in blocks that shrink to fit.
    indptr, indices = radius_neighbors(unit, 2.5, backend=backend, chunk_size=512)
    assert np.diff(indptr).tolist() == [len(x)] * len(x)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_pairs_at_the_radius_are_decided_in_float64(backend):
    # Two unit vectors and one far point; the radius sits a hair (1e-9, far below float32's
    # resolution) above or below their float64 distance.
    x = np.array([[1.0, 0.0], [np.cos(0.3), np.sin(0.3)], [-1.0, 0.0]], dtype=np.float32)
    gap = distances(x)[0, 1]
    for radius, linked in ((gap * (1 + 1e-9), True), (gap * (1 - 1e-9), False)):
        indptr, indices = radius_neighbors(x, radius, backend=backend)
        dense = as_dense(indptr, indices, 3)
        assert dense[0, 1] == dense[1, 0] == linked
        assert dense.diagonal().all() and not dense[2, :2].any()


def test_too_many_edges_and_bad_input():
    x = normalize_rows(np.random.default_rng(1).normal(size=(300, 4)))
    with pytest.raises(RadiusGraphTooLarge, match=r"max_edges=500 edges: [\d,]+ in its first \d+ of 300 rows"):
        radius_neighbors(x, 1.0, max_edges=500)
    assert len(radius_neighbors(x, 1.0, max_edges=None)[1]) == (distances(x) < 1.0).sum()
    for kwargs, word in [
        ({"radius": 0.0}, "radius"),
        ({"radius": float("inf")}, "radius"),
        ({"radius": 0.5, "metric": "ip"}, "metric"),
        ({"radius": 0.5, "max_edges": 0}, "max_edges"),
        ({"radius": 0.5, "chunk_size": 0}, "chunk_size"),
        ({"radius": 0.5, "backend": "annoy"}, "backend"),
    ]:
        with pytest.raises(ValueError, match=word):
            radius_neighbors(x, **kwargs)
    before = x.copy()
    radius_neighbors(x, 0.5, metric="cosine")
    np.testing.assert_array_equal(x, before)


def test_torch_blocks_switch_to_float64_under_reduced_matmul_precision():
    import torch

    x = np.random.default_rng(2).normal(size=(400, 5)).astype(np.float32)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")  # TF32/bf16 matmuls where the hardware has them
    try:
        indptr, indices = radius_neighbors(x, 1.5, backend="torch", chunk_size=100)
    finally:
        torch.set_float32_matmul_precision(previous)
    np.testing.assert_array_equal(as_dense(indptr, indices, len(x)), distances(x) < 1.5)


def clustered_unit_rows(n=3000, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, d))
    return normalize_rows(centres[rng.integers(0, 30, n)] + 0.35 * rng.normal(size=(n, d)))


def test_ivf_radius_graph_is_a_symmetric_part_of_the_exact_one_with_its_recall_measured():
    x = clustered_unit_rows()
    n = len(x)
    exact = distances(x) < 0.45
    indptr, indices, report = radius_neighbors(x, 0.45, index="ivf", nlist=60, nprobe=2, return_report=True,
                                               recall_queries=n, chunk_size=500)
    found = as_dense(indptr, indices, n)
    assert len(indices) == found.sum()  # no repeated edge
    assert not (found & ~exact).any()  # nothing beyond the radius
    np.testing.assert_array_equal(found, found.T)  # kept at both ends
    assert found.diagonal().all()
    true_recall = found.sum() / exact.sum()
    assert 0.5 < true_recall < 1.0  # two of 60 lists probed: some pairs are missed
    assert report["recall_at_k"] == pytest.approx(true_recall) and report["recall_measured"] is True
    assert report["index"] == "ivf" and report["params"]["nprobe"] == 2 and report["edges"] == len(indices)
    # A sample of the rows estimates it; probing every list finds the exact graph.
    sampled = radius_neighbors(x, 0.45, index="ivf", nlist=60, nprobe=2, return_report=True, recall_queries=300)
    assert abs(sampled[2]["recall_at_k"] - true_recall) < 0.05
    indptr, indices, report = radius_neighbors(x, 0.45, index="ivf", nlist=60, nprobe=60, return_report=True)
    np.testing.assert_array_equal(as_dense(indptr, indices, n), exact)
    assert report["recall_at_k"] == 1.0
    # "auto" is exact at this size, and says so.
    indptr, indices, report = radius_neighbors(x, 0.45, index="auto", return_report=True)
    np.testing.assert_array_equal(as_dense(indptr, indices, n), exact)
    assert report["index"] == "flat" and report["recall_measured"] is False


def test_ivf_radius_graph_bad_index():
    x = clustered_unit_rows(200)
    for index in ("hnsw", "ivfpq", "kd"):
        with pytest.raises(ValueError, match="index"):
            radius_neighbors(x, 0.5, index=index)


def test_ivf_graph_keeps_the_float32_margin_under_reduced_matmul_precision():
    # The IVF join multiplies float32 rows with NumPy whatever torch's setting: pairs a hair inside or
    # outside the radius must still be decided in float64 (a float64 margin would trust float32 values).
    import torch

    rng = np.random.default_rng(4)
    x = normalize_rows(rng.normal(size=(60, 384))).astype(np.float32)
    gaps = distances(x)[0, 1:]
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        for radius in (gaps * (1 + 1e-9)).tolist()[:20] + (gaps * (1 - 1e-9)).tolist()[:20]:
            indptr, indices = radius_neighbors(x, radius, backend="torch", index="ivf", nlist=1)
            np.testing.assert_array_equal(as_dense(indptr, indices, len(x)), distances(x) < radius)
    finally:
        torch.set_float32_matmul_precision(previous)


def test_ivf_radius_graph_filled_in_many_row_ranges_is_the_same(monkeypatch):
    import hf_prune.ops.knn as knn_module

    x = clustered_unit_rows(2000)
    options = dict(index="ivf", nlist=40, nprobe=3)
    whole = radius_neighbors(x, 0.45, **options)
    monkeypatch.setattr(knn_module, "_CHUNK_ELEMENTS", 997)  # dozens of ranges, one row's edges may exceed it
    ranges = radius_neighbors(x, 0.45, **options)
    np.testing.assert_array_equal(whole[0], ranges[0])
    np.testing.assert_array_equal(whole[1], ranges[1])
    for row in range(0, 2000, 97):  # each row's columns ascending
        assert (np.diff(whole[1][whole[0][row] : whole[0][row + 1]]) > 0).all()
