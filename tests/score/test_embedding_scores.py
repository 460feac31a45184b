import numpy as np
import pytest
from datasets import Dataset, Value

import hf_prune as hp
from hf_prune.ops.columns import add_column
from tests.conftest import make_dataset


def blob_data(seed=0, n_per=(30, 25, 20), d=6, scale=60.0):
    """Far-apart Gaussian blobs: k-means recovers them exactly, so its centroids are the blob means."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=scale, size=(len(n_per), d))
    labels = np.repeat(np.arange(len(n_per)), n_per)
    x = (centers[labels] + rng.normal(size=(len(labels), d))).astype(np.float32)
    return x, labels


def nearest_mean_distance(x, groups):
    means = np.stack([x[groups == g].mean(0) for g in np.unique(groups)])
    return np.sqrt(((x[:, None, :] - means[None]) ** 2).sum(-1)).min(1)


# ----------------------------------------------------------------------------- SSP
@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_ssp_equals_distance_to_blob_means(backend):
    x, blobs = blob_data()
    out = hp.score.ssp(make_dataset(x), n_clusters=3, seed=0, backend=backend)
    assert out.features["ssp"] == Value("float32")
    np.testing.assert_allclose(np.asarray(out["ssp"]), nearest_mean_distance(x.astype(np.float64), blobs), rtol=1e-4, atol=1e-4)


def test_ssp_trains_on_a_sample():
    # 3 far-apart blobs of 400 rows: centroids trained on 60 sampled rows sit near the blob means, and
    # every row is still scored (the distance to its own blob's centroid).
    x, blobs = blob_data(n_per=(400, 400, 400))
    out = hp.score.ssp(make_dataset(x), n_clusters=3, seed=0, train_size=60)
    full = nearest_mean_distance(x.astype(np.float64), blobs)
    scores = np.asarray(out["ssp"])
    # |score − full| ≤ ‖sampled centroid − blob mean‖, about √(d/20) ≈ 0.55 for 20 rows per blob in 6-d.
    assert len(scores) == 1200 and np.abs(scores - full).max() < 1.5 and not np.allclose(scores, full, atol=1e-4)
    assert hp.provenance(out)[-1]["params"]["train_size"] == 60
    with pytest.raises(ValueError, match="train_size"):
        hp.score.ssp(make_dataset(x), n_clusters=3, train_size=0)


def test_ssp_cosine_metric():
    x, blobs = blob_data(seed=1)
    out = hp.score.ssp(make_dataset(x), n_clusters=3, metric="cosine", seed=0)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    centroids = np.stack([unit[blobs == g].mean(0) for g in range(3)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)  # spherical k-means centroids
    expected = 1 - (unit @ centroids.T).max(1)
    np.testing.assert_allclose(np.asarray(out["ssp"]), expected, rtol=1e-3, atol=1e-5)


def test_ssp_per_class():
    # Two classes, each made of two far blobs: per-class k-means with 2 clusters finds each class's blobs.
    x, blobs = blob_data(seed=2, n_per=(15, 12, 18, 10))
    labels = np.array(["b", "a"])[blobs // 2]  # blobs 0,1 -> "b"; blobs 2,3 -> "a"
    out = hp.score.ssp(make_dataset(x, label=labels), n_clusters=2, label_column="label", seed=0)
    expected = np.empty(len(x))
    for cls in (0, 1):
        rows = blobs // 2 == cls
        expected[rows] = nearest_mean_distance(x[rows].astype(np.float64), blobs[rows])
    np.testing.assert_allclose(np.asarray(out["ssp"]), expected, rtol=1e-4, atol=1e-4)
    # A global k-means with 2 clusters on the same data cannot match those prototypes.
    glob = np.asarray(hp.score.ssp(make_dataset(x), n_clusters=2, seed=0)["ssp"])
    assert glob.mean() > 2 * expected.mean()


def test_ssp_ranks_outliers_as_least_prototypical():
    """Sorscher et al.: distance to the prototype measures difficulty; atypical points score highest."""
    rng = np.random.default_rng(3)
    x, _ = blob_data(seed=3, n_per=(200, 200, 200), d=8, scale=10.0)
    outliers = rng.normal(scale=10.0, size=(12, 8)) * 4  # far from every prototype
    ds = make_dataset(np.concatenate([x, outliers]))
    scores = np.asarray(hp.score.ssp(ds, n_clusters=3, seed=0)["ssp"])
    top = np.argsort(-scores)[:12]
    assert (top >= 600).sum() >= 11


def test_ssp_determinism_and_input_untouched():
    x, _ = blob_data(seed=4, d=4, scale=2.0)  # overlapping blobs: k-means depends on the seed
    ds = make_dataset(x)
    a = np.asarray(hp.score.ssp(ds, n_clusters=5, seed=0)["ssp"])
    b = np.asarray(hp.score.ssp(ds, n_clusters=5, seed=0)["ssp"])
    np.testing.assert_array_equal(a, b)
    assert ds.column_names == ["idx", "emb"]


def test_ssp_bad_inputs():
    x, blobs = blob_data()
    ds = make_dataset(x, label=blobs)
    with pytest.raises(KeyError, match="'features'"):
        hp.score.ssp(ds, embedding_column="features", n_clusters=2)
    with pytest.raises(KeyError, match="'y'"):
        hp.score.ssp(ds, n_clusters=2, label_column="y")
    with pytest.raises(ValueError, match="n_clusters"):
        hp.score.ssp(ds, n_clusters=len(x))
    with pytest.raises(ValueError, match=r"class 2 of 'label' \(20\)"):
        hp.score.ssp(ds, n_clusters=20, label_column="label")
    with pytest.raises(ValueError, match="n_clusters"):
        hp.score.ssp(ds, n_clusters=0)
    with pytest.raises(ValueError, match="metric"):
        hp.score.ssp(ds, n_clusters=2, metric="manhattan")
    with pytest.raises(ValueError, match="seed"):
        hp.score.ssp(ds, n_clusters=2, seed=-1)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="'emb' has NaN"):
        hp.score.ssp(make_dataset(bad), n_clusters=2)
    zero = x.copy()
    zero[5] = 0
    with pytest.raises(ValueError, match="zero vector"):
        hp.score.ssp(make_dataset(zero), n_clusters=2, metric="cosine")
    out = hp.score.ssp(ds, n_clusters=2)
    with pytest.raises(ValueError, match="overwrite=True"):
        hp.score.ssp(out, n_clusters=2)
    assert hp.score.ssp(out, n_clusters=3, overwrite=True).column_names == out.column_names
    with pytest.raises(ValueError, match="empty"):
        hp.score.ssp(ds.select([]), n_clusters=1)


# ----------------------------------------------------------------------------- feature norm
def test_feature_norm_hand_computed():
    ds = make_dataset([[3.0, -4.0], [0.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(hp.score.feature_norm(ds)["feature_norm"], [5, 0, np.sqrt(2)], rtol=1e-6)
    np.testing.assert_allclose(hp.score.feature_norm(ds, p=1, output_column="l1")["l1"], [7, 0, 2])
    np.testing.assert_allclose(hp.score.feature_norm(ds, p="inf")["feature_norm"], [4, 0, 1])
    np.testing.assert_allclose(hp.score.feature_norm(ds, p=np.inf)["feature_norm"], [4, 0, 1])
    assert hp.score.feature_norm(ds).features["feature_norm"] == Value("float32")


def test_feature_norm_streams_in_chunks_and_after_select():
    x = np.random.default_rng(0).normal(size=(103, 5)).astype(np.float32)
    ds = make_dataset(x)
    got = np.asarray(hp.score.feature_norm(ds, batch_size=10)["feature_norm"])
    np.testing.assert_allclose(got, np.linalg.norm(x, axis=1), rtol=1e-6)
    rows = [100, 4, 50, 7]
    picked = hp.score.feature_norm(ds.select(rows), batch_size=3)
    np.testing.assert_allclose(picked["feature_norm"], np.linalg.norm(x[rows], axis=1), rtol=1e-6)


def test_feature_norm_bad_inputs():
    x = np.ones((6, 3), np.float32)
    x[4, 2] = np.inf
    with pytest.raises(ValueError, match=r"'emb' has NaN/inf values \(first: row 4\)"):
        hp.score.feature_norm(make_dataset(x), batch_size=4)
    ragged = Dataset.from_dict({"emb": [[1.0, 2.0], [1.0]]})
    with pytest.raises(ValueError, match="ragged"):
        hp.score.feature_norm(ragged)
    ragged_across_chunks = Dataset.from_dict({"emb": [[1.0, 2.0], [1.0, 2.0, 3.0]]})
    with pytest.raises(ValueError, match="ragged"):
        hp.score.feature_norm(ragged_across_chunks, batch_size=1)
    with pytest.raises(ValueError, match="expected a list"):
        hp.score.feature_norm(Dataset.from_dict({"emb": ["a", "b"]}))
    ds = make_dataset(np.ones((3, 2)))
    with pytest.raises(ValueError, match="`p`"):
        hp.score.feature_norm(ds, p=0.5)
    with pytest.raises(KeyError, match="'z'"):
        hp.score.feature_norm(ds, embedding_column="z")
    with pytest.raises(ValueError, match="overwrite=True"):
        hp.score.feature_norm(ds, output_column="idx")
    with pytest.raises(ValueError, match="empty"):
        hp.score.feature_norm(ds.select([]))


# ----------------------------------------------------------------------------- CLIP score
def test_clip_score_hand_computed_and_matching_pairs():
    ds = add_column(make_dataset([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]), "text_emb",
                    np.array([[2.0, 0.0], [-1.0, -1.0], [3.0, 0.0]], np.float32))
    ds = ds.rename_column("emb", "image_emb")
    np.testing.assert_allclose(hp.score.clip_score(ds)["clip_score"], [1.0, -1.0, 0.0], atol=1e-6)
    # Matched pairs (text = image + noise) score above mismatched ones, row by row.
    rng = np.random.default_rng(0)
    image = rng.normal(size=(50, 16)).astype(np.float32)
    text = image + 0.3 * rng.normal(size=image.shape).astype(np.float32)
    pairs = add_column(add_column(make_dataset(image), "t", text), "t_shuffled", np.roll(text, 1, axis=0))
    good = np.asarray(hp.score.clip_score(pairs, image_embedding_column="emb", text_embedding_column="t")["clip_score"])
    bad = np.asarray(hp.score.clip_score(pairs, image_embedding_column="emb", text_embedding_column="t_shuffled",
                                         batch_size=7)["clip_score"])
    assert (good > bad).all() and good.min() > 0.8


def test_clip_score_bad_inputs():
    ds = add_column(make_dataset(np.ones((4, 3))), "t", np.ones((4, 2), np.float32))
    with pytest.raises(ValueError, match="same width"):
        hp.score.clip_score(ds, image_embedding_column="emb", text_embedding_column="t")
    zero = add_column(make_dataset(np.ones((4, 2))), "t", np.array([[1, 0], [0, 0], [1, 1], [2, 2]], np.float32))
    with pytest.raises(ValueError, match=r"'t' has a zero vector \(row 1\)"):
        hp.score.clip_score(zero, image_embedding_column="emb", text_embedding_column="t")
    with pytest.raises(KeyError, match="'text_emb'"):
        hp.score.clip_score(ds, image_embedding_column="emb")
    with pytest.raises(ValueError, match="overwrite=True"):
        hp.score.clip_score(zero, image_embedding_column="emb", text_embedding_column="t", output_column="idx")


# ----------------------------------------------------------------------------- provenance
def test_embedding_scores_record_a_provenance_step():
    x, labels = blob_data()
    ds = add_column(make_dataset(x, label=labels), "text_emb", x[::-1].copy())
    before = ds.info.description
    runs = {
        "score.feature_norm": (lambda: hp.score.feature_norm(ds, embedding_column="emb", p=1, output_column="fn"),
                               {"embedding_column": "emb", "p": 1.0, "output_column": "fn"}),
        "score.clip_score": (lambda: hp.score.clip_score(ds, image_embedding_column="emb"),
                             {"image_embedding_column": "emb", "text_embedding_column": "text_emb",
                              "output_column": "clip_score"}),
        "score.ssp": (lambda: hp.score.ssp(ds, n_clusters=3, label_column="label", seed=np.random.default_rng(1),
                                           backend="torch"),
                      {"embedding_column": "emb", "n_clusters": 3, "label_column": "label", "metric": "l2",
                       "iterations": 25, "backend": "torch", "output_column": "ssp"}),
        "score.grand": (lambda: hp.score.grand(ds, gradient_column=["emb", "text_emb"]),
                        {"gradient_column": ["emb", "text_emb"], "output_column": "grand"}),
    }
    for method, (run, params) in runs.items():
        out = run()
        (step,) = hp.provenance(out)
        assert step["method"] == method and step["stale"] is False
        assert {k: step["params"][k] for k in params} == params, method
        assert step["input_fingerprint"] == ds._fingerprint and step["output_fingerprint"] == out._fingerprint
    # A Generator seed is recorded as the integer it gave (so the step can be replayed).
    seed = hp.provenance(runs["score.ssp"][0]())[0]["params"]["seed"]
    assert isinstance(seed, int)
    replay = hp.score.ssp(ds, n_clusters=3, label_column="label", seed=seed, backend="torch")
    assert replay["ssp"] == runs["score.ssp"][0]()["ssp"]
    assert ds.info.description == before
