import numpy as np
import pytest

from hf_prune.ops.kmeans import kmeans
from hf_prune.ops.knn import knn
from hf_prune.ops.sampling import weighted_sample_without_replacement


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_knn_matches_brute_force(metric):
    x = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32)
    y = x / np.linalg.norm(x, axis=1, keepdims=True) if metric == "cosine" else x
    if metric == "l2":
        full = ((y[:, None] - y[None]) ** 2).sum(-1)
        np.fill_diagonal(full, np.inf)
        expected = np.argsort(full, axis=1)[:, :4]
    else:
        full = y @ y.T
        np.fill_diagonal(full, -np.inf)
        expected = np.argsort(-full, axis=1)[:, :4]
    for backend in ["faiss", "torch"]:
        _, idx = knn(x, 4, metric=metric, backend=backend, batch_size=37)
        np.testing.assert_array_equal(idx, expected)


def test_knn_rejects_k_too_large():
    with pytest.raises(ValueError, match="`k`=5"):
        knn(np.zeros((5, 2), np.float32), 5)


def test_kmeans_recovers_blobs():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [10, 10], [-10, 10]], dtype=np.float32)
    x = np.concatenate([c + rng.normal(size=(100, 2)) for c in centers]).astype(np.float32)
    for backend in ["faiss", "torch"]:
        c, assign, dist = kmeans(x, 3, seed=0, backend=backend)
        found = c[np.argsort(c[:, 0] + 0.01 * c[:, 1])]
        np.testing.assert_allclose(found, centers[np.argsort(centers[:, 0] + 0.01 * centers[:, 1])], atol=0.5)
        np.testing.assert_allclose(dist, ((x - c[assign]) ** 2).sum(1), rtol=1e-4, atol=1e-4)


def test_weighted_sampling_distribution():
    rng = np.random.default_rng(0)
    w = np.array([1.0, 2.0, 7.0, 0.0])
    firsts = np.array([weighted_sample_without_replacement(w, 1, rng)[0] for _ in range(4000)])
    np.testing.assert_allclose(np.bincount(firsts, minlength=4) / 4000, w / w.sum(), atol=0.03)
    assert weighted_sample_without_replacement(w, 4, rng).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        weighted_sample_without_replacement(np.array([1.0, -1.0]), 1, rng)
