"""Approximate kNN indexes, the automatic choice, measured recall and the block-source path."""

import numpy as np
import pytest
from datasets import Dataset, Features, Sequence, Value

from hf_prune.ops.kmeans import kmeans
from hf_prune.ops.knn import knn
from hf_prune.ops.knn_index import DEFAULT_MEMORY_BUDGET, choose_index, resolve_spec
from hf_prune.ops.knn_recall import exact_neighbours, knn_recall
from hf_prune.ops.matrix import ColumnMatrix, open_matrix


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    # HNSW insertion on several threads depends on their timing; one thread makes every index
    # reproducible, so array and block paths can be compared exactly (and small searches run faster).
    from hf_prune.ops.faiss_import import import_faiss

    faiss = import_faiss()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered(n=3000, d=16, centres=30, spread=0.35, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d)).astype(np.float32)
    return (c[rng.integers(0, centres, n)] + spread * rng.normal(size=(n, d))).astype(np.float32)


def Blocks(x, rows=257):
    """``x`` as a chunked column (chunks of ``rows`` rows, the last one shorter), read block by block."""
    return ColumnMatrix([x[start : start + rows] for start in range(0, len(x), rows)], "x")


def brute(x, k, metric):
    y = x / np.linalg.norm(x, axis=1, keepdims=True) if metric == "cosine" else x.astype(np.float64)
    if metric == "l2":
        sq = (y * y).sum(1)
        full = sq[:, None] - 2 * y @ y.T + sq[None]
        np.fill_diagonal(full, np.inf)
        return np.argsort(full, axis=1, kind="stable")[:, :k]
    full = y @ y.T
    np.fill_diagonal(full, -np.inf)
    return np.argsort(-full, axis=1, kind="stable")[:, :k]


def test_auto_rule_by_rows_dimension_and_memory():
    assert choose_index(10_000, 384) == "flat"
    assert choose_index(50_000, 8192) == "flat"  # at most 50k rows: exact whatever d
    assert choose_index(120_000, 64) == "flat"  # N²·d = 9.2e11 ≤ 1e12: exact is cheap
    assert choose_index(200_000, 64) == "ivf"  # N²·d = 2.6e12
    assert choose_index(1_000_000, 384) == "ivf"  # 1.5 GB of float32 rows fit the 8 GiB budget
    assert 4 * 10_000_000 * 768 > DEFAULT_MEMORY_BUDGET and choose_index(10_000_000, 768) == "ivfpq"
    assert choose_index(1_000_000, 384, memory_budget=2**30) == "ivfpq"
    spec = resolve_spec("ivf", 1_000_000, 384, 11)
    assert (spec.nlist, spec.nprobe, spec.train_size) == (4000, 16, 160_000)  # 4√N lists, 40 rows per list
    pq = resolve_spec("ivfpq", 1_000_000, 384, 11)
    assert (pq.pq_m, pq.pq_bits, pq.rerank) == (96, 8, 4)  # d/4 bytes per row
    assert resolve_spec("hnsw", 1000, 8, 80).ef_search == 160
    assert resolve_spec("exact", 10**9, 768, 5).kind == "flat"
    with pytest.raises(ValueError, match="index"):
        resolve_spec("annoy", 100, 4, 5)
    with pytest.raises(ValueError, match="pq_m"):
        resolve_spec("ivfpq", 10_000, 10, 5, pq_m=4)


def test_auto_is_exact_at_small_sizes_with_recall_one():
    x = clustered(600, 8)
    flat = knn(x, 5, metric="l2", index="flat")
    values, indices, report = knn(x, 5, metric="l2", index="auto", return_report=True)
    np.testing.assert_array_equal(indices, flat[1])
    np.testing.assert_array_equal(values, flat[0])
    assert report["index"] == "flat" and report["recall_at_k"] == 1.0 and report["recall_measured"] is False
    # Measured, the exact table's recall is 1 as well.
    assert knn_recall(x, 5, indices, metric="l2", queries=600)["recall_at_k"] == 1.0


@pytest.mark.parametrize(
    "index, options, low",
    [
        # nprobe=2 of 40 lists: rows near a list boundary lose neighbours held by unprobed lists.
        ("ivf", {"nlist": 40, "nprobe": 2}, 0.85),
        # HNSW with a small graph (M=4, efSearch=12): greedy graph search misses some neighbours.
        ("hnsw", {"hnsw_m": 4, "ef_search": 12}, 0.8),
        # PQ codes of 4 bytes, re-ranked exactly among 4k candidates: misses where the codes mis-rank.
        ("ivfpq", {"nlist": 16, "nprobe": 4, "pq_m": 4}, 0.7),
    ],
)
def test_approximate_recall_is_measured_between_a_bound_and_one(index, options, low):
    x = clustered()
    exact = brute(x, 10, "l2")
    _, indices, report = knn(x, 10, metric="l2", index=index, return_report=True, recall_queries=3000, **options)
    truth = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(indices, exact)])
    assert report["index"] == index and report["recall_measured"] and report["recall_queries"] == 3000
    # Every query sampled: the measured recall is the true one, up to near-ties within float32
    # rounding that the measure counts as found (at most a few of the 30,000 neighbours).
    assert report["recall_at_k"] == pytest.approx(truth, abs=1e-4)
    assert low < report["recall_at_k"] < 1.0
    assert (indices >= 0).all() and (indices != np.arange(len(x))[:, None]).all()
    # A sample of 500 queries estimates it within a few points.
    sampled = knn_recall(x, 10, indices, metric="l2", queries=500, seed=1)["recall_at_k"]
    assert abs(sampled - truth) < 0.05


def test_default_ivf_recall_on_clustered_data():
    x = clustered(5000, 32, centres=50)
    _, _, report = knn(x, 10, metric="cosine", index="ivf", return_report=True)
    # 4√N = 283 lists capped at N/39 = 128; 16 probed lists cover the neighbours of almost every row.
    assert report["params"]["nlist"] == 128 and report["params"]["nprobe"] == 16
    assert report["recall_at_k"] > 0.97


def test_planted_neighbour_missed_by_ivf_is_reported():
    rng = np.random.default_rng(0)
    a = rng.normal([-1.0, 0.0], 0.05, size=(300, 2))
    b = rng.normal([1.0, 0.0], 0.05, size=(300, 2))
    # q and p lie either side of the boundary between the two lists, each the other's nearest row.
    planted = np.array([[-0.05, 0.0], [0.05, 0.0]])
    x = np.concatenate([a, planted, b]).astype(np.float32)
    _, indices, report = knn(x, 1, metric="l2", index="ivf", nlist=2, nprobe=1, return_report=True,
                             recall_queries=len(x))
    assert indices[300, 0] != 301 and indices[301, 0] != 300  # the single probed list holds neither
    exact = brute(x, 1, "l2")
    assert exact[300, 0] == 301 and (indices[:, 0] != exact[:, 0]).sum() == 2
    assert report["recall_at_k"] == pytest.approx(1 - 2 / len(x))
    assert knn_recall(x, 1, indices, metric="l2", queries=len(x))["misses"] == 2
    # nprobe=2 probes both lists: exact again.
    _, both = knn(x, 1, metric="l2", index="ivf", nlist=2, nprobe=2)
    np.testing.assert_array_equal(both, exact)


def test_recall_counts_ties_and_misses():
    x = clustered(400, 6)
    _, exact = knn(x, 4, metric="ip")
    assert knn_recall(x, 4, exact, metric="ip", queries=400)["recall_at_k"] == 1.0
    wrong = exact.copy()
    wrong[7, 0] = int(np.argmin(x @ x[7]))  # the least similar row instead of the most similar
    out = knn_recall(x, 4, wrong, metric="ip", queries=400)
    assert out["misses"] == 1 and out["recall_at_k"] == pytest.approx(1 - 1 / 1600)
    # Exact copies: any copy is as good a neighbour as another (a tie is not a miss); -1 is a miss.
    dup = np.repeat(x[:50], 3, axis=0)
    _, table = knn(dup, 2, metric="l2")
    swapped = table[:, ::-1].copy()
    assert knn_recall(dup, 2, swapped, metric="l2", queries=150)["recall_at_k"] == 1.0
    swapped[0, 0] = -1
    assert knn_recall(dup, 2, swapped, metric="l2", queries=150)["misses"] == 1
    with pytest.raises(ValueError, match="indices"):
        knn_recall(x, 5, exact, metric="ip")


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_exact_neighbours_of_a_few_queries_streamed(metric):
    x = clustered(700, 5)
    values, indices = exact_neighbours(Blocks(x, 64), x[:20], 6, metric=metric, self_rows=np.arange(20))
    np.testing.assert_array_equal(indices, brute(x, 6, metric)[:20])
    flat_v, _ = knn(x, 6, metric=metric)
    np.testing.assert_allclose(values, flat_v[:20], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("index", ["flat", "ivf", "hnsw", "ivfpq"])
def test_block_source_gives_the_array_neighbours(index):
    x = clustered(2000, 16)
    original = x.copy()
    options = {"nlist": 16} if index.startswith("ivf") else {}
    if index == "ivfpq":
        options["pq_m"] = 4
    v_array, i_array = knn(x, 8, metric="cosine", index=index, seed=3, batch_size=300, **options)
    v_blocks, i_blocks = knn(Blocks(x), 8, metric="cosine", index=index, seed=3, batch_size=300, **options)
    np.testing.assert_array_equal(i_blocks, i_array)
    np.testing.assert_allclose(v_blocks, v_array, rtol=1e-6)
    np.testing.assert_array_equal(x, original)  # the input is never normalised in place
    if index == "flat":  # exact up to float32 near-ties, which the recall measure counts as found
        assert knn_recall(x, 8, i_array, metric="cosine", queries=2000)["recall_at_k"] == 1.0


def test_column_matrix_and_external_queries():
    x = clustered(1500, 8)
    features = Features({"emb": Sequence(Value("float32"), length=8)})
    ds = Dataset.from_dict({"emb": x.tolist()}, features=features)
    matrix = open_matrix(ds, "emb")
    _, via_matrix, report = knn(matrix, 5, metric="l2", index="ivf", nlist=20, return_report=True)
    _, via_array = knn(x, 5, metric="l2", index="ivf", nlist=20)
    np.testing.assert_array_equal(via_matrix, via_array)
    assert 0.5 < report["recall_at_k"] <= 1.0
    q = clustered(50, 8, seed=5)
    _, found, rep = knn(matrix, 3, metric="l2", queries=q, index="hnsw", return_report=True)
    full = ((q[:, None].astype(np.float64) - x[None]) ** 2).sum(-1)
    truth = np.argsort(full, axis=1)[:, :3]
    assert rep["recall_queries"] == 50
    assert rep["recall_at_k"] == pytest.approx(np.mean([len(set(a) & set(b)) / 3 for a, b in zip(found, truth)]))


def test_short_lists_are_refilled_exactly():
    # 40 tiny lists, one probed, 30 neighbours asked: many lists hold fewer rows than that.
    x = clustered(400, 4, centres=40, spread=0.05)
    _, indices, report = knn(x, 30, metric="l2", index="ivf", nlist=10, nprobe=1, return_report=True)
    assert report["refilled"] > 0 and (indices >= 0).all()
    assert all(len(set(row)) == 30 for row in indices)


def test_bad_arguments_name_the_parameter():
    x = clustered(100, 4)
    with pytest.raises(ValueError, match="index"):
        knn(x, 3, index="lsh")
    with pytest.raises(ValueError, match="nlist"):
        knn(x, 3, index="ivf", nlist=0)
    with pytest.raises(ValueError, match="needs faiss"):
        knn(x, 3, index="ivf", backend="torch")
    with pytest.raises(ValueError, match="queries"):
        knn(x, 3, queries=np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        knn(np.zeros(5, np.float32), 1)


def test_kmeans_on_a_block_source_and_on_a_sample():
    x = clustered(3000, 8, centres=5, spread=0.02)  # spread 0.02 around unit-scale centres: well separated
    c_array, a_array, d_array = kmeans(x, 5, seed=0)
    assert len(set(a_array)) == 5
    c_blocks, a_blocks, d_blocks = kmeans(Blocks(x), 5, seed=0, batch_size=500)
    np.testing.assert_array_equal(a_blocks, a_array)
    np.testing.assert_allclose(c_blocks, c_array, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d_blocks, d_array, rtol=1e-4, atol=1e-5)
    # Trained on 600 sampled rows (from one row of each cluster, to rule out a k-means local optimum):
    # the same well-separated clusters, every row assigned.
    init = x[[int(np.flatnonzero(a_array == c)[0]) for c in range(5)]]
    c_sample, a_sample, _ = kmeans(Blocks(x), 5, seed=0, train_size=600, init=init)
    same = {(a, b) for a, b in zip(a_array, a_sample)}  # the same partition, up to the cluster ids
    assert len(same) == 5 and len(set(a_sample)) == 5 and len(a_sample) == len(x)
    np.testing.assert_allclose(np.sort(c_sample[:, 0]), np.sort(c_array[:, 0]), atol=0.01)
    with pytest.raises(ValueError, match="train_size"):
        kmeans(x, 5, train_size=0)


@pytest.mark.gpu
def test_gpu_index_gives_the_cpu_neighbours():
    torch = pytest.importorskip("torch")
    from hf_prune.ops.knn_index import gpu_count

    if not torch.cuda.is_available() or gpu_count() == 0:
        pytest.skip("needs CUDA and faiss-gpu")
    x = clustered(20_000, 32)
    for index in ["flat", "ivf"]:
        cpu_v, cpu_i = knn(x, 10, metric="l2", index=index, device="cpu", seed=0)
        gpu_v, gpu_i = knn(x, 10, metric="l2", index=index, device="cuda", seed=0)  # sharded on several GPUs
        # Same neighbours up to float ties: where the tables differ the values agree to float32 rounding.
        agree = (gpu_i == cpu_i).mean()
        assert agree > 0.999
        np.testing.assert_allclose(gpu_v, cpu_v, rtol=1e-4, atol=1e-4)
    c_cpu, a_cpu, _ = kmeans(x, 30, seed=0, device="cpu")
    c_gpu, a_gpu, _ = kmeans(x, 30, seed=0, device="cuda")
    assert (a_cpu == a_gpu).mean() > 0.99


@pytest.mark.parametrize("part_rows", [400, 1000, 10**6])  # parts of one or several record batches, or all
def test_exact_search_reads_the_rows_in_place_and_matches_faiss_flat_index(monkeypatch, part_rows):
    import hf_prune.ops.knn_index as knn_index

    monkeypatch.setattr(knn_index, "_PART_BYTES", part_rows * 16 * 4)
    from hf_prune.ops.faiss_import import import_faiss
    from hf_prune.ops.knn_index import RowsFlatIndex, build_index
    from hf_prune.ops.matrix import as_matrix

    faiss = import_faiss()
    x = clustered(n=1500, d=16)
    built, _ = build_index(as_matrix(x), resolve_spec("flat", 1500, 16, 10), "ip")
    # The caller's rows themselves, not a copy (faiss's IndexFlat.add would copy all of them).
    assert isinstance(built, RowsFlatIndex) and np.shares_memory(built.rows, x)
    reference = faiss.IndexFlatIP(16)
    reference.add(x)
    values, ids = built.search(x[:200], 10)
    ref_values, ref_ids = reference.search(x[:200], 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(values, ref_values)
    # A column of many record batches is searched chunk by chunk (no copy of it): the same neighbours.
    chunked = open_matrix(Dataset.from_dict({"emb": x}).with_format("arrow").map(lambda t: t, batched=True,
                                                                                batch_size=400), "emb")
    assert "chunks=4" in repr(chunked) and not chunked.zero_copy
    for metric, faiss_metric in (("l2", faiss.METRIC_L2), ("ip", faiss.METRIC_INNER_PRODUCT)):
        again, _ = build_index(chunked, resolve_spec("flat", 1500, 16, 7), metric)
        v, i = again.search(x[:300], 7)
        ref_v, ref_i = faiss.knn(x[:300], x, 7, metric=faiss_metric)
        np.testing.assert_array_equal(i, ref_i)
        np.testing.assert_allclose(v, ref_v, rtol=1e-5, atol=1e-5)
    # Cosine: each block is normalised before it is searched, as the whole column would be.
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos, _ = build_index(chunked, resolve_spec("flat", 1500, 16, 7), "cosine")
    np.testing.assert_array_equal(cos.search(unit[:300], 7)[1], faiss.knn(unit[:300], unit, 7, metric=faiss.METRIC_INNER_PRODUCT)[1])
