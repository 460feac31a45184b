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


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_exact_search_is_the_same_on_one_and_two_threads(backend):
    # A BLAS product of 384-wide rows rounds differently with the thread count (≈5e-7 here); the
    # re-ranked exact search must give identical values and neighbours on 1 and 2 threads.
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    x = np.random.default_rng(1).standard_normal((3000, 384)).astype(np.float32)
    tables = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            faiss.omp_set_num_threads(threads)
            with threadpool_limits(threads):
                tables.append(knn(x, 5, metric="cosine", backend=backend))
    finally:
        torch.set_num_threads(before)
        faiss.omp_set_num_threads(before)
    np.testing.assert_array_equal(tables[0][0], tables[1][0])
    np.testing.assert_array_equal(tables[0][1], tables[1][1])
    # ... and the values are the exact cosines of the rows found.
    y = x / np.linalg.norm(x, axis=1, keepdims=True)
    found = np.einsum("id,ikd->ik", y.astype(np.float64), y[tables[0][1]].astype(np.float64))
    np.testing.assert_allclose(tables[0][0], found, atol=2e-6)


def test_exact_search_ties_go_to_the_lower_row():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    _, idx = knn(x, 2, metric="ip", queries=np.array([[0.0, 1.0]], dtype=np.float32))
    np.testing.assert_array_equal(idx, [[1, 2]])


# ---------------------------------------------------------------------------------------------
# The CPU k-means (`_lloyd`): faiss's algorithm step for step, its assignment as parallel steps.


def _faiss_kmeans(x, k, **kw):
    import faiss

    km = faiss.Kmeans(x.shape[1], k, seed=kw.pop("seed"), niter=kw.pop("iterations", 25),
                      spherical=kw.pop("spherical", False), max_points_per_centroid=10**7,
                      min_points_per_centroid=1, verbose=False)
    km.train(x, init_centroids=kw.pop("init", None))
    return km


@pytest.mark.parametrize("case", ["random start", "one iteration", "no iteration", "given start", "cosine"])
def test_lloyd_steps_are_faiss_kmeans(case):
    from hf_prune.ops.kmeans import _assign, _lloyd

    x = np.random.default_rng(4).standard_normal((3000, 24)).astype(np.float32)
    kw = {"seed": 7}
    if case == "one iteration":
        kw["iterations"] = 1
    if case == "no iteration":
        kw["iterations"] = 0  # the starting rows alone: faiss's rand_perm(N, seed + 1)
    if case == "given start":
        kw["init"] = x[100:115].copy()
    if case == "cosine":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        kw["spherical"] = True
    expected = _faiss_kmeans(x, 15, **dict(kw))
    ours, _ = _lloyd(x, 15, kw.get("iterations", 25), kw["seed"], kw.get("spherical", False), kw.get("init"))
    np.testing.assert_allclose(ours, expected.centroids, rtol=0, atol=1e-5)
    _, faiss_assign = expected.index.search(x, 1)
    assert np.array_equal(_assign(x, ours, inner_product=kw.get("spherical", False))[0], faiss_assign[:, 0])


def test_lloyd_splits_empty_clusters_as_faiss_does():
    # Five points repeated 200 times and 10 loose ones into 30 clusters: 25 random starting rows are
    # duplicates, so the first iteration empties 25 clusters and splits others to refill them.
    from hf_prune.ops.kmeans import _lloyd

    rng = np.random.default_rng(0)
    x = np.concatenate([np.repeat(rng.standard_normal((5, 8)), 200, axis=0),
                        rng.standard_normal((10, 8))]).astype(np.float32)
    expected = _faiss_kmeans(x, 30, seed=1, iterations=1)
    assert expected.iteration_stats[0]["nsplit"] == 25
    np.testing.assert_allclose(_lloyd(x, 30, 1, 1, False)[0], expected.centroids, rtol=0, atol=1e-6)


def test_split_of_an_empty_cluster_by_hand():
    # counts (0, 3), N = 3, K = 2: cluster 1 is drawn with p = (3 − 1)/(3 − 2) ≥ 1 (cluster 0's p < 0),
    # copied into cluster 0 with factors (1 + ε, 1 − ε), pushed to (1 − ε, 1 + ε), the count shared.
    from hf_prune.ops.kmeans import _split_empty_clusters

    centroids = np.array([[0.0, 0.0], [1.0, 2.0]], dtype=np.float32)
    counts = np.array([0.0, 3.0], dtype=np.float32)
    assert _split_empty_clusters(centroids, counts, 3) == 1
    eps = 1 / 1024
    np.testing.assert_array_equal(centroids, np.array([[1 + eps, 2 * (1 - eps)], [1 - eps, 2 * (1 + eps)]], np.float32))
    np.testing.assert_array_equal(counts, [1.5, 1.5])


def test_faiss_random_streams_are_reproduced():
    import faiss

    from hf_prune.ops.kmeans import _faiss_permutation_head, _mersenne_twister, _UniformDraws

    for n, k, seed in [(10, 9, 1), (1000, 37, 12345), (50_000, 500, 2**31 - 1)]:
        perm = np.empty(n, dtype=np.int32)
        faiss.rand_perm(faiss.swig_ptr(perm), n, seed)
        np.testing.assert_array_equal(_faiss_permutation_head(n, k, seed), perm[:k])
    generator = faiss.RandomGenerator(1234)
    stream = [generator.rand_float() for _ in range(20_000)]

    def faiss_walk(position, p):  # split_clusters' loop: one draw per cluster visited, cyclically
        cj = 0
        while True:
            r, position = stream[position], position + 1
            if r < p[cj]:
                return cj, position
            cj = (cj + 1) % len(p)

    draws = _UniformDraws(_mersenne_twister(1234))
    rng = np.random.default_rng(0)
    position = 0
    for _ in range(40):  # chances of 0.01–0.05 per cluster, some clusters never drawn (p < 0)
        p = rng.uniform(-0.02, 0.05, size=int(rng.integers(3, 60))).astype(np.float32)
        p[0] = max(p[0], 0.01)
        expected, position = faiss_walk(position, p)
        assert draws.first_success(p) == expected


def test_kmeans_steps_are_the_same_on_one_and_two_threads_and_policy_off():
    import torch

    from hf_prune.ops.threads import thread_policy

    x = np.random.default_rng(2).standard_normal((20_000, 96)).astype(np.float32)
    before = torch.get_num_threads()
    results = []
    try:
        for threads, policy in [(1, True), (2, True), (2, False)]:
            torch.set_num_threads(threads)
            with thread_policy(policy):
                results.append(kmeans(x, 40, seed=3, backend="torch"))
    finally:
        torch.set_num_threads(before)
    for centroids, assign, dist in results[1:]:
        np.testing.assert_array_equal(centroids, results[0][0])
        np.testing.assert_array_equal(assign, results[0][1])
        np.testing.assert_array_equal(dist, results[0][2])


def test_torch_block_kernel_matches_the_numpy_one():
    import torch

    from hf_prune.ops.kmeans import _nearest_numpy, _nearest_torch

    rng = np.random.default_rng(5)
    x = rng.standard_normal((500, 32)).astype(np.float32)
    c = rng.standard_normal((12, 32)).astype(np.float32)
    for inner_product in (False, True):
        i_np, v_np = _nearest_numpy(c, inner_product)(x)
        i_t, v_t = _nearest_torch(c, inner_product, torch.device("cpu"))(x)
        np.testing.assert_array_equal(i_t, i_np)
        np.testing.assert_allclose(v_t, v_np, rtol=1e-5, atol=1e-4)
        reference = x @ c.T if inner_product else ((x[:, None] - c[None]) ** 2).sum(-1)
        np.testing.assert_array_equal(i_np, reference.argmax(1) if inner_product else reference.argmin(1))


def test_lloyd_stops_at_a_fixed_point_with_the_centroids_of_every_iteration(monkeypatch):
    from hf_prune.ops import kmeans as kmeans_module

    rng = np.random.default_rng(3)
    x = np.concatenate([c + rng.normal(size=(300, 4)) for c in rng.normal(scale=6, size=(6, 4))]).astype(np.float32)
    calls = []
    assign = kmeans_module._assign
    monkeypatch.setattr(kmeans_module, "_assign", lambda *a, **kw: calls.append(1) or assign(*a, **kw))
    stopped, settled = kmeans_module._lloyd(x, 6, 300, 0, False)
    assert 2 <= len(calls) < 300  # it stopped once an assignment repeated
    monkeypatch.setattr(kmeans_module, "_assign", assign)
    # The centroids of the iterations that moved anything are those of 300 iterations, and faiss's.
    np.testing.assert_array_equal(kmeans_module._lloyd(x, 6, len(calls) - 1, 0, False)[0], stopped)
    np.testing.assert_allclose(stopped, _faiss_kmeans(x, 6, seed=0, iterations=300).centroids, rtol=0, atol=1e-5)
    # The last pass is returned: it is the assignment to the centroids returned.
    for got, expected in zip(settled, assign(x, stopped)):
        np.testing.assert_array_equal(got, expected)
    # `kmeans` of an in-memory array takes that pass as its assignment instead of running it again.
    lloyd_calls = len(calls)
    calls.clear()
    monkeypatch.setattr(kmeans_module, "_assign", lambda *a, **kw: calls.append(1) or assign(*a, **kw))
    centroids, labels, dist = kmeans_module.kmeans(x, 6, iterations=300, seed=0)
    monkeypatch.setattr(kmeans_module, "_assign", assign)
    assert len(calls) == lloyd_calls  # the steps' passes, and no further one
    np.testing.assert_array_equal(centroids, stopped)
    for got, expected in zip((labels, dist), assign(x, centroids)):
        np.testing.assert_array_equal(got, expected)


def test_default_cpu_kmeans_gives_faiss_kmeans_assignment_on_a_sampled_column():
    # The CPU default (the steps) against faiss.Kmeans through the same entry point: a seeded training
    # sample smaller than the pool, k-means++-style starting centroids, every row assigned in blocks.
    from datasets import Dataset

    from hf_prune.ops.matrix import open_matrix

    rng = np.random.default_rng(8)
    centres = rng.normal(scale=3, size=(40, 64))
    x = (centres[rng.integers(0, 40, 30_000)] + rng.normal(size=(30_000, 64))).astype(np.float32)
    column = open_matrix(Dataset.from_dict({"emb": x}), "emb")
    init = x[rng.choice(len(x), 40, replace=False)]
    steps = kmeans(column, 40, seed=2, init=init, train_size=8_000, batch_size=7_000)
    reference = kmeans(column, 40, seed=2, init=init, train_size=8_000, batch_size=7_000, backend="faiss")
    np.testing.assert_allclose(steps[0], reference[0], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(steps[1], reference[1])
    np.testing.assert_allclose(steps[2], reference[2], rtol=1e-5, atol=1e-4)


def test_the_cpu_default_runs_the_steps(monkeypatch):
    from hf_prune.ops import kmeans as kmeans_module

    calls = []
    lloyd = kmeans_module._lloyd
    monkeypatch.setattr(kmeans_module, "_lloyd", lambda *a, **kw: calls.append(1) or lloyd(*a, **kw))
    x = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
    kmeans(x, 5, seed=0)
    kmeans(x, 5, seed=0, device="cpu", backend="auto")
    kmeans(x, 5, seed=0, backend="faiss")
    assert len(calls) == 2
