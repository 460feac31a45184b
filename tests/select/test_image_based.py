"""DataComp's image-based filter: planted pool clusters, a target that lands in some of them."""

import numpy as np
import pytest
import torch

import hf_prune as hp
from hf_prune.select.image_based import image_based, image_based_filter, target_clusters
from tests.conftest import make_dataset


def ids(sub):
    return np.asarray(sub["row_id"]).tolist()


CENTRES = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
SIZES = (5, 4, 3, 6)


def pool():
    """Blobs P0..P3 of 5/4/3/6 rows around `CENTRES`, interleaved; returns (Dataset, blob of each row, emb)."""
    blob = np.repeat(np.arange(4), SIZES)
    rng = np.random.default_rng(0)
    blob = blob[rng.permutation(len(blob))]
    emb = CENTRES[blob] + rng.uniform(-0.4, 0.4, size=(len(blob), 2))
    return make_dataset(emb, label=(np.arange(len(blob)) % 2).tolist()), blob, emb


def target():
    """Three target rows near P0 and one near P2; none near P1 or P3 (P1's centre is the nearer to (1, 0))."""
    return make_dataset(np.array([[0.2, 0.1], [-0.1, 0.3], [1.0, 0.0], [0.0, 9.0]]))


def blob_rows(blob, b):
    return np.flatnonzero(blob == b).tolist()


def closest_to_mean(emb, blob, b, n):
    """The ``n`` rows of blob ``b`` closest to the blob mean (the k-means centre of a recovered blob)."""
    rows = np.flatnonzero(blob == b)
    distance = np.linalg.norm(emb[rows] - emb[rows].mean(0), axis=1)
    return rows[np.argsort(distance, kind="stable")[:n]].tolist()


def test_the_filter_keeps_the_clusters_the_target_lands_in():
    ds, blob, _ = pool()
    sub = image_based_filter(ds, target=target(), n_clusters=4, metric="l2")
    assert ids(sub) == sorted(blob_rows(blob, 0) + blob_rows(blob, 2))
    step = hp.provenance(sub)[-1]
    assert step["method"] == "image_based_filter" and step["params"]["n_clusters_used"] == 4
    assert step["params"]["target_fingerprint"] == target()._fingerprint
    assert step["output_fingerprint"] == sub._fingerprint
    # Only the target near P0: one cluster.
    near_p0 = make_dataset(np.array([[0.2, 0.1], [1.0, 0.0]]))
    assert ids(image_based_filter(ds, target=near_p0, n_clusters=4, metric="l2")) == blob_rows(blob, 0)


def test_the_budget_takes_whole_clusters_by_target_count_then_the_last_by_distance_to_its_centre():
    ds, blob, emb = pool()
    kw = dict(target=target(), n_clusters=4, metric="l2")
    p0, p1, p2 = blob_rows(blob, 0), blob_rows(blob, 1), blob_rows(blob, 2)
    assert ids(image_based(ds, size=5, **kw)) == p0  # P0: three target rows
    assert ids(image_based(ds, size=3, **kw)) == sorted(closest_to_mean(emb, blob, 0, 3))
    assert ids(image_based(ds, size=6, **kw)) == sorted(p0 + closest_to_mean(emb, blob, 2, 1))  # P2: one
    filtered = ids(image_based_filter(ds, **kw))
    assert ids(image_based(ds, size=8, **kw)) == filtered == sorted(p0 + p2)
    # Beyond the filter: P1, whose centre is nearer to a target row than P3's, then P3.
    assert ids(image_based(ds, size=10, **kw)) == sorted(filtered + closest_to_mean(emb, blob, 1, 2))
    assert ids(image_based(ds, size=12, **kw)) == sorted(filtered + p1)
    assert len(image_based(ds, size=18, **kw)) == 18
    # A target row at (4, 8) lands in P2 but brings P3's centre nearer than P1's: P3 comes first now.
    other = dict(kw, target=make_dataset(np.array([[0.2, 0.1], [0.0, 9.0], [4.0, 8.0]])))
    assert ids(image_based(ds, size=10, **other)) == sorted(p0 + p2 + closest_to_mean(emb, blob, 3, 2))
    assert len(image_based(ds, fraction=0.5, **kw)) == 9


def test_cosine_default_clusters_directions_whatever_the_norms():
    rng = np.random.default_rng(1)
    axes = np.repeat(np.eye(3), [4, 5, 3], axis=0)
    emb = (axes + rng.uniform(-0.05, 0.05, size=axes.shape)) * rng.uniform(0.5, 5.0, size=(12, 1))
    ds = make_dataset(emb)
    goal = make_dataset(np.array([[0.0, 3.0, 0.1], [0.1, 0.2, 0.0]]))  # both along e1 (the second with norm 0.22)
    assert ids(image_based_filter(ds, target=goal, n_clusters=3)) == list(range(4, 9))
    assert ids(image_based(ds, size=5, target=goal, n_clusters=3)) == list(range(4, 9))


def test_per_class_budget_and_a_differently_named_target_column():
    ds, blob, _ = pool()
    goal = target().rename_column("emb", "imagenet_emb")
    kw = dict(target=goal, target_embedding_column="imagenet_emb", n_clusters=4, metric="l2")
    assert ids(image_based_filter(ds, **kw)) == ids(image_based_filter(ds, target=target(), n_clusters=4, metric="l2"))
    sub = image_based(ds, size=6, label_column="label", **kw)
    labels = np.asarray(ds["label"])
    assert np.bincount(labels[ids(sub)], minlength=2).tolist() == [3, 3]
    # Each class takes its own P0 rows first.
    for label in (0, 1):
        own_p0 = [r for r in blob_rows(blob, 0) if labels[r] == label]
        assert set(own_p0[:3]) <= set(ids(sub))


def test_target_clusters_counts_and_gaps():
    _, blob, emb = pool()
    info = target_clusters(emb.astype(np.float32), np.asarray(target()["emb"], dtype=np.float32), 4, metric="l2")
    by_blob = {b: int(info["assign"][blob == b][0]) for b in range(4)}
    assert all(len(set(info["assign"][blob == b])) == 1 for b in range(4))
    assert [int(info["target_count"][by_blob[b]]) for b in range(4)] == [3, 0, 1, 0]
    centre_p1 = emb[blob == 1].mean(0)
    assert info["target_gap"][by_blob[1]] == pytest.approx(np.linalg.norm(centre_p1 - [1.0, 0.0]), rel=1e-5)


def test_same_seed_same_rows_and_inputs_untouched():
    ds, _, _ = pool()
    goal = target()
    prints, tables = (ds._fingerprint, goal._fingerprint), (ds.data.table, goal.data.table)
    a = image_based(ds, size=7, target=goal, n_clusters=4, seed=2)
    assert ids(a) == ids(image_based(ds, size=7, target=goal, n_clusters=4, seed=2))
    gen = image_based(ds, size=7, target=goal, n_clusters=4, seed=np.random.default_rng(3))
    assert ids(gen) == ids(image_based(ds, size=7, target=goal, n_clusters=4, seed=hp.provenance(gen)[-1]["params"]["seed"]))
    image_based_filter(ds, target=goal, n_clusters=4, seed=np.random.default_rng(3))
    assert (ds._fingerprint, goal._fingerprint) == prints
    assert ds.data.table.equals(tables[0]) and goal.data.table.equals(tables[1])
    assert goal.column_names == ["idx", "emb"]


def test_bad_input_names_the_column_or_parameter():
    ds, _, _ = pool()
    goal = target()
    for fn, budget in ((image_based, {"size": 4}), (image_based_filter, {})):
        with pytest.raises(KeyError, match="'clip_emb' \\(`target_embedding_column`\\) not found in `target`"):
            fn(ds, target=goal, target_embedding_column="clip_emb", **budget)
        with pytest.raises(KeyError, match="'nope'"):
            fn(ds, target=goal, embedding_column="nope", **budget)
        wide = make_dataset(np.ones((3, 5)))
        with pytest.raises(ValueError, match="`target` column 'emb' has dimension 5 but the dataset's 'emb' has 2"):
            fn(ds, target=wide, **budget)
        with pytest.raises(ValueError, match="`target` is empty"):
            fn(ds, target=goal.select([]), **budget)
        with pytest.raises(TypeError, match="`target` must be a datasets.Dataset"):
            fn(ds, target=np.zeros((3, 2)), **budget)
        with pytest.raises(ValueError, match="`metric`"):
            fn(ds, target=goal, metric="ip", **budget)
        with pytest.raises(ValueError, match="`n_clusters`=19 is larger than the number of rows in the dataset"):
            fn(ds, target=goal, n_clusters=19, **budget)
        with pytest.raises(ValueError, match="`max_iter`"):
            fn(ds, target=goal, max_iter=0, **budget)
        with pytest.raises(ValueError, match="column 'emb' has a zero vector"):
            fn(ds, target=make_dataset(np.zeros((2, 2))), **budget)
        nan_target = make_dataset(np.array([[np.nan, 1.0]]))
        with pytest.raises(ValueError, match="column 'emb' has NaN"):
            fn(ds, target=nan_target, **budget)
    with pytest.raises(ValueError, match="`seed`"):
        image_based_filter(ds, target=goal, seed=-1)
    with pytest.raises(TypeError):
        image_based(ds, size=4)  # the target is required


def test_device_is_honoured():
    ds, blob, _ = pool()
    kw = dict(target=target(), n_clusters=4, metric="l2")
    assert ids(image_based(ds, size=5, device="cpu", **kw)) == blob_rows(blob, 0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            image_based_filter(ds, device="cuda", **kw)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_gpu_keep_the_same_rows():
    ds, _, _ = pool()
    for metric in ("cosine", "l2"):
        kw = dict(target=target(), n_clusters=4, metric=metric)
        assert ids(image_based_filter(ds, device="cuda", **kw)) == ids(image_based_filter(ds, device="cpu", **kw))
        assert ids(image_based(ds, size=11, device="cuda", **kw)) == ids(image_based(ds, size=11, device="cpu", **kw))
