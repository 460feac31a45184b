"""Renamed parameters (DESIGN "Vocabulary"): the new spelling gives the old default's output, the old
spelling still works with a FutureWarning that names the replacement, and a contradiction is an error."""

import warnings

import numpy as np
import pytest
import torch

import hf_prune as hp
from hf_prune.ops.deprecation import renamed, renamed_value
from hf_prune.select.d2_pruning import d2_graph
from hf_prune.select.infomax import infomax_kernel
from recipes.trainer.dynamics import record_proxy_dynamics
from recipes.trainer.probe import LinearProbe, linear_probe_accuracy
from tests.conftest import make_dataset


@pytest.fixture
def ds():
    rng = np.random.default_rng(0)
    # Rows of different norms, so cosine and l2 / ip geometries pick different rows.
    emb = rng.normal(size=(60, 6)) * rng.uniform(0.5, 3, size=(60, 1)) + 1
    return make_dataset(emb, score=rng.uniform(size=60).astype(np.float32), label=np.arange(60) % 3)


def _ids(subset):
    return list(subset["row_id"])


def _warns_here(match):
    """pytest.warns that also checks the warning points at this file (the user's call), not the library."""
    class _Check:
        def __enter__(self):
            self._cm = pytest.warns(FutureWarning, match=match)
            self.record = self._cm.__enter__()
            return self.record

        def __exit__(self, *exc):
            out = self._cm.__exit__(*exc)
            if exc[0] is None:
                assert any(w.filename == __file__ for w in self.record if issubclass(w.category, FutureWarning))
            return out

    return _Check()


# --- the shared helper --------------------------------------------------------------------------

def test_renamed_passes_through_translates_and_rejects():
    assert renamed("f", "old", None, "new", "x", default="x") == "x"
    with pytest.warns(FutureWarning, match=r"f: `old` is deprecated, use new='ip'"):
        assert renamed("f", "old", False, "new", "cosine", default="cosine", values={True: "cosine", False: "ip"}) == "ip"
    with pytest.warns(FutureWarning):
        assert renamed("f", "old", np.bool_(True), "new", "cosine", default="cosine", values={True: "cosine"}) == "cosine"
    with pytest.raises(ValueError, match="`old` must be one of"):
        renamed("f", "old", 1, "new", "cosine", default="cosine", values={True: "cosine", False: "ip"})
    with pytest.raises(ValueError, match="`old='a'` contradicts `new='b'`"):
        renamed("f", "old", "a", "new", "b", default=None)
    with pytest.warns(FutureWarning, match="use metric='l2'"):
        assert renamed_value("f", "metric", "euclidean", {"euclidean": "l2"}) == "l2"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert renamed_value("f", "metric", "cosine", {"euclidean": "l2"}) == "cosine"


# --- SSP: metric="euclidean" → "l2" -------------------------------------------------------------

@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_ssp_l2_is_the_old_euclidean_default(ds, backend):
    kw = dict(embedding_column="emb", n_clusters=4, backend=backend, label_column="label")
    default = np.asarray(hp.score.ssp(ds, **kw)["ssp"])
    new = np.asarray(hp.score.ssp(ds, metric="l2", **kw)["ssp"])
    with _warns_here("use metric='l2'"):
        old = np.asarray(hp.score.ssp(ds, metric="euclidean", **kw)["ssp"])
    np.testing.assert_array_equal(new, default)
    np.testing.assert_array_equal(old, default)
    assert not np.array_equal(np.asarray(hp.score.ssp(ds, metric="cosine", **kw)["ssp"]), default)


def test_ssp_rejects_other_metrics(ds):
    with pytest.raises(ValueError, match="`metric` must be one of"):
        hp.score.ssp(ds, embedding_column="emb", n_clusters=4, metric="ip")


# --- InfoMax: normalize → metric ∈ {"cosine", "ip"} ---------------------------------------------

@pytest.mark.parametrize("kernel", ["sparse", "dense"])
def test_infomax_metric_matches_normalize(ds, kernel):
    kw = dict(fraction=0.3, score_column="score", kernel=kernel, label_column="label")
    default = _ids(hp.select.infomax(ds, **kw))
    assert _ids(hp.select.infomax(ds, metric="cosine", **kw)) == default
    with _warns_here("use metric='cosine'"):
        assert _ids(hp.select.infomax(ds, normalize=True, **kw)) == default
    with _warns_here("use metric='ip'"):
        old_ip = hp.select.infomax(ds, normalize=False, **kw)
    new_ip = hp.select.infomax(ds, metric="ip", **kw)
    assert _ids(old_ip) == _ids(new_ip) != default
    assert hp.provenance(old_ip)[-1]["params"]["metric"] == "ip"
    with pytest.raises(ValueError, match="contradicts"):
        hp.select.infomax(ds, normalize=True, metric="ip", **kw)
    with pytest.raises(ValueError, match="`metric` must be one of"):
        hp.select.infomax(ds, metric="l2", **kw)


def test_infomax_kernel_metric(ds):
    x = np.asarray(ds["emb"], dtype=np.float32)
    for kernel in ("sparse", "dense"):
        ip = infomax_kernel(x, k=5, kernel=kernel, metric="ip")
        with _warns_here("use metric='ip'"):
            old = infomax_kernel(x, k=5, kernel=kernel, normalize=False)
        assert (abs(ip - old)).max() == 0
        cosine = infomax_kernel(x, k=5, kernel=kernel)
        assert abs(cosine).max() <= 1 + 1e-9 < abs(ip).max()


# --- D²-Pruning: normalize → metric ∈ {"l2", "cosine"} ------------------------------------------

def test_d2_metric_matches_normalize(ds):
    kw = dict(fraction=0.3, score_column="score", k=5, label_column="label", rank_column="rank")
    default = hp.select.d2_pruning(ds, **kw)
    assert hp.select.d2_pruning(ds, metric="l2", **kw)["rank"] == default["rank"]
    with _warns_here("use metric='l2'"):
        assert hp.select.d2_pruning(ds, normalize=False, **kw)["rank"] == default["rank"]
    with _warns_here("use metric='cosine'"):
        old = hp.select.d2_pruning(ds, normalize=True, **kw)
    new = hp.select.d2_pruning(ds, metric="cosine", **kw)
    assert _ids(old) == _ids(new) and old["rank"] == new["rank"] and _ids(new) != _ids(default)
    with pytest.raises(ValueError, match="contradicts"):
        hp.select.d2_pruning(ds, normalize=False, metric="cosine", **kw)
    with pytest.raises(ValueError, match="`metric` must be one of"):
        hp.select.d2_pruning(ds, metric="ip", **kw)


def test_d2_graph_cosine_is_euclidean_on_unit_rows(ds):
    x = np.asarray(ds["emb"], dtype=np.float32)
    neighbours, distances = d2_graph(x, 4, metric="cosine")
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    ref_n, ref_d = d2_graph(unit, 4)
    np.testing.assert_array_equal(neighbours, ref_n)
    np.testing.assert_allclose(distances, ref_d, rtol=1e-6)
    with _warns_here("use metric='cosine'"):
        old_n, old_d = d2_graph(x, 4, normalize=True)
    np.testing.assert_array_equal(old_n, neighbours)
    np.testing.assert_array_equal(old_d, distances)


# --- probe / demo: feature_column → embedding_column --------------------------------------------

def test_probe_embedding_column(ds):
    train, test = ds.select(range(45)), ds.select(range(45, 60))
    new = linear_probe_accuracy(train, test, embedding_column="emb")
    with _warns_here("use embedding_column='emb'"):
        assert linear_probe_accuracy(train, test, feature_column="emb") == new
    with _warns_here("use embedding_column='emb'"):
        probe = LinearProbe(test, feature_column="emb")
    assert probe.accuracy(train) == LinearProbe(test, embedding_column="emb").accuracy(train) == new
    with pytest.raises(ValueError, match="contradicts"):
        LinearProbe(test, embedding_column="emb", feature_column="other")
    with pytest.raises(ValueError, match="`embedding_column` is required"):
        linear_probe_accuracy(train, test)


def test_record_proxy_dynamics_embedding_column(ds):
    new = record_proxy_dynamics(ds, embedding_column="emb", epochs=2)
    with _warns_here("use embedding_column='emb'"):
        old = record_proxy_dynamics(ds, feature_column="emb", epochs=2)
    assert old["dynamics"] == new["dynamics"]
    with pytest.raises(ValueError, match="`embedding_column` is required"):
        record_proxy_dynamics(ds, epochs=2)


# --- device wherever torch or faiss runs --------------------------------------------------------

def test_every_selector_running_torch_or_faiss_takes_device():
    import inspect
    import sys

    for name in hp.select.__all__:
        fn = getattr(hp.select, name)
        module = sys.modules[fn.__module__]
        if "torch" in vars(module) or "knn" in vars(module) or "kmeans" in vars(module):
            assert "device" in inspect.signature(fn).parameters, name


def test_typiclust_device(ds):
    kw = dict(size=9, k=4, label_column="label", rank_column="rank", seed=1)
    default = hp.select.typiclust(ds, **kw)
    on_cpu = hp.select.typiclust(ds, device="cpu", **kw)
    assert _ids(on_cpu) == _ids(default) and on_cpu["rank"] == default["rank"]
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            hp.select.typiclust(ds, device="cuda", **kw)


@pytest.mark.gpu
def test_typiclust_and_torch_kmeans_on_gpu_match_cpu(ds):
    from hf_prune.ops.kmeans import kmeans

    x = np.asarray(ds["emb"], dtype=np.float32)
    cpu = kmeans(x, 4, seed=0, backend="torch", device="cpu")
    gpu = kmeans(x, 4, seed=0, backend="torch", device="cuda")
    np.testing.assert_array_equal(cpu[1], gpu[1])
    kw = dict(size=9, k=4, label_column="label", seed=1)
    assert _ids(hp.select.typiclust(ds, device="cuda", **kw)) == _ids(hp.select.typiclust(ds, device="cpu", **kw))
