"""Clustering + CLIP score (`cluster_top_k`) and the shared k-means-to-convergence (`fit_kmeans`)."""

import numpy as np
import pytest
import torch
from datasets import Dataset, concatenate_datasets

import hf_prune as hp
from hf_prune.ops.columns import add_column
from hf_prune.select.cluster_score import cluster_top_k, fit_kmeans
from tests.conftest import make_dataset


def ids(sub):
    return np.asarray(sub["row_id"]).tolist()


def three_blobs():
    """Blobs of 6, 3 and 1 rows at (0, 0), (10, 0) and (0, 10), rows interleaved; scores by hand.

    Blob A (rows 0, 2, 4, 6, 8, 9) holds the five highest scores, so a global top-k takes only A.
    """
    centres = {"A": (0.0, 0.0), "B": (10.0, 0.0), "C": (0.0, 10.0)}
    blob = ["A", "B", "A", "B", "A", "C", "A", "B", "A", "A"]
    offsets = np.random.default_rng(0).uniform(-0.3, 0.3, size=(10, 2))
    emb = np.array([centres[b] for b in blob]) + offsets
    score = [0.8, 0.5, 0.8, 0.4, 0.95, 0.1, 0.7, 0.45, 0.8, 0.6]
    ds = make_dataset(emb, label=[0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    return add_column(ds, "score", np.asarray(score, dtype=np.float32)), blob


def test_top_scores_inside_each_cluster_with_a_proportional_budget():
    ds, _ = three_blobs()
    # size 4 over clusters of 6/3/1: quotas 2.4/1.2/0.4 → 2/1/0 and the one left to the largest
    # remainder (0.4, blob C) → 2/1/1. A: 0.95 (row 4) and the first of the 0.8 tie (rows 0, 2, 8);
    # B: 0.5 (row 1); C: row 5.
    sub = cluster_top_k(ds, size=4, score_column="score", n_clusters=3, metric="l2")
    assert ids(sub) == [0, 1, 4, 5]
    assert ids(hp.select.top_k(ds, size=4, score_column="score")) == [0, 2, 4, 8]  # no clustering: all A
    # size 7: quotas 4.2/2.1/0.7 → 4/2/0 + 1 → 4/2/1. A: 0.95 and all three 0.8s; B: 0.5, 0.45 (rows 1, 7).
    assert ids(cluster_top_k(ds, size=7, score_column="score", n_clusters=3, metric="l2")) == [0, 1, 2, 4, 5, 7, 8]
    # descending=False: the lowest scores per cluster.
    low = cluster_top_k(ds, size=4, score_column="score", n_clusters=3, metric="l2", descending=False)
    assert ids(low) == [3, 5, 6, 9]


def test_ties_go_to_the_lower_row_position():
    ds, _ = three_blobs()
    # A keeps 2 rows: 0.95 (row 4), then one of rows 0, 2, 8 (all 0.8): the lowest position, whatever the seed.
    for seed in (0, 1, 2, np.random.default_rng(5)):
        assert ids(cluster_top_k(ds, size=4, score_column="score", n_clusters=3, metric="l2", seed=seed)) == [0, 1, 4, 5]
    shuffled = ds.select([8, 1, 2, 3, 4, 5, 6, 7, 0, 9])  # row 8 (0.8) now at position 0
    assert ids(cluster_top_k(shuffled, size=4, score_column="score", n_clusters=3, metric="l2")) == [0, 1, 4, 5]
    assert shuffled[0]["score"] == pytest.approx(0.8)


def test_one_cluster_is_top_k_and_cosine_is_the_default():
    ds, _ = three_blobs()
    for size in (1, 4, 9):
        assert ids(cluster_top_k(ds, size=size, score_column="score", n_clusters=1)) == ids(
            hp.select.top_k(ds, size=size, score_column="score"))
    step = hp.provenance(cluster_top_k(ds, size=3, score_column="score"))[-1]
    assert step["method"] == "cluster_top_k" and step["params"]["metric"] == "cosine"
    assert step["params"]["n_clusters"] is None and step["params"]["max_iter"] == 100


def test_per_class_clusters_inside_each_class():
    ds, _ = three_blobs()
    # Class 0 = rows 0-4 (A: 0, 2, 4; B: 1, 3), class 1 = rows 5-9. size 4 → 2 per class; class 0's two
    # clusters of 3/2 rows get 1/1 (quotas 1.2/0.8, the remainder to B): A's 0.95 (row 4), B's 0.5 (row 1).
    sub = cluster_top_k(ds, size=4, score_column="score", n_clusters=2, metric="l2", label_column="label")
    kept = ids(sub)
    assert kept[:2] == [1, 4] and len(kept) == 4 and all(row >= 5 for row in kept[2:])


def test_input_untouched_and_deterministic():
    ds, _ = three_blobs()
    fingerprint, table = ds._fingerprint, ds.data.table
    a = cluster_top_k(ds, size=5, score_column="score", seed=3)
    assert ids(a) == ids(cluster_top_k(ds, size=5, score_column="score", seed=3))
    assert ds._fingerprint == fingerprint and ds.data.table.equals(table)


def test_bad_input_names_the_column_or_parameter():
    ds, _ = three_blobs()
    with pytest.raises(KeyError, match="'nope'"):
        cluster_top_k(ds, size=3, score_column="nope")
    with pytest.raises(KeyError, match="'nope'"):
        cluster_top_k(ds, size=3, score_column="score", embedding_column="nope")
    with pytest.raises(ValueError, match="`metric`"):
        cluster_top_k(ds, size=3, score_column="score", metric="ip")
    with pytest.raises(ValueError, match="`n_clusters`=11 is larger than the number of rows in the dataset \\(10\\)"):
        cluster_top_k(ds, size=3, score_column="score", n_clusters=11)
    with pytest.raises(ValueError, match="`n_clusters`=6 is larger than the number of rows in class 0 of 'label'"):
        cluster_top_k(ds, size=3, score_column="score", n_clusters=6, label_column="label")
    with pytest.raises(ValueError, match="`n_clusters`"):
        cluster_top_k(ds, size=3, score_column="score", n_clusters=0)
    with pytest.raises(ValueError, match="`descending`"):
        cluster_top_k(ds, size=3, score_column="score", descending="yes")
    nan = add_column(ds, "score", np.full(10, np.nan, dtype=np.float32), overwrite=True)
    with pytest.raises(ValueError, match="column 'score' has NaN"):
        cluster_top_k(nan, size=3, score_column="score")


def test_fit_kmeans_separates_planted_blobs_and_stops_on_convergence():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0], [8.0, 8.0]])
    x = np.repeat(centres, 25, axis=0) + rng.normal(scale=0.3, size=(100, 2))
    for seed in range(5):
        _, assign, steps = fit_kmeans(x, 4, seed=seed)
        # Every blob is one cluster (k-means++ seeding: random rows would often merge two blobs).
        assert sorted(len(set(assign[i * 25 : (i + 1) * 25])) for i in range(4)) == [1, 1, 1, 1]
        assert len(set(assign)) == 4 and steps < 100
    _, _, steps = fit_kmeans(x, 4, seed=0, max_iter=1)
    assert steps == 1
    with pytest.raises(ValueError, match="`max_iter`"):
        fit_kmeans(x, 4, max_iter=0)
    with pytest.raises(ValueError, match="`tol`"):
        fit_kmeans(x, 4, tol=-1)


def test_device_is_honoured():
    ds, _ = three_blobs()
    kw = dict(size=4, score_column="score", n_clusters=3, metric="l2")
    assert ids(cluster_top_k(ds, device="cpu", **kw)) == ids(cluster_top_k(ds, **kw)) == [0, 1, 4, 5]
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            cluster_top_k(ds, device="cuda", **kw)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_gpu_keep_the_same_rows(blobs):
    ds, _, _ = blobs
    for metric in ("cosine", "l2"):
        kw = dict(fraction=0.3, score_column="score", n_clusters=5, metric=metric, label_column="label")
        assert ids(cluster_top_k(ds, device="cuda", **kw)) == ids(cluster_top_k(ds, device="cpu", **kw))


def test_unit_rows_of_a_column_matrix_equals_the_array_path():
    from hf_prune.ops.matrix import open_matrix
    from hf_prune.select.cluster_score import unit_rows

    x = np.random.default_rng(0).normal(size=(300, 5)).astype(np.float32)
    chunked = concatenate_datasets([Dataset.from_dict({"emb": x[:170].tolist()}), Dataset.from_dict({"emb": x[170:].tolist()})])
    np.testing.assert_array_equal(unit_rows(open_matrix(chunked, "emb"), "emb"), unit_rows(x, "emb"))
    x[200] = 0
    zero = concatenate_datasets([Dataset.from_dict({"emb": x[:170].tolist()}), Dataset.from_dict({"emb": x[170:].tolist()})])
    with pytest.raises(ValueError, match=r"'emb' has a zero vector \(row 200\)"):
        unit_rows(open_matrix(zero, "emb"), "emb")


def test_mean_feature_variance_streams_to_numpys_value():
    from hf_prune.select.cluster_score import _mean_feature_variance

    x = np.random.default_rng(1).normal(3.0, 2.0, size=(5000, 7)).astype(np.float32)
    expected = float(x.astype(np.float64).var(axis=0).mean())
    assert _mean_feature_variance(x, block_values=333 * 7) == pytest.approx(expected, rel=1e-12)  # 333-row blocks
