"""The kNN-based selectors: every ``knn_index`` kind, ``"auto"`` exact at small N, and what the
provenance step records (index used, recall@k) beside the replayable params."""

import numpy as np
import pytest

import hf_prune as hp
from tests.conftest import make_dataset

SELECTORS = {
    "d2_pruning": dict(score_column="score"),
    "facility_location": {},
    "graph_cut": {},
    "typiclust": dict(n_clusters=4),
    "probcover": dict(n_pseudo_labels=4),
    "infomax": dict(score_column="score", kernel="sparse", partitions=2),
}


@pytest.fixture(scope="module")
def pool():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=3.0, size=(8, 8))
    emb = centres[rng.integers(0, 8, 500)] + rng.normal(size=(500, 8))
    return make_dataset(emb.astype(np.float32), score=rng.random(500))


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_auto_is_exact_here_and_recorded(pool, name):
    fn = getattr(hp.select, name)
    auto = fn(pool, size=40, seed=0, **SELECTORS[name])
    exact = fn(pool, size=40, seed=0, knn_index="exact", **SELECTORS[name])
    assert auto["row_id"] == exact["row_id"]
    step = hp.provenance(auto)[-1]
    assert step["params"].get("knn_index", "auto") == "auto"
    record = step["knn"]
    assert record["knn_index"] == "auto" and record["indexes_used"] == ["flat"]
    assert record["searches"] >= 1 and record["recall_at_k_min"] == 1.0 and record["recall_measured"] is False
    assert "knn" not in step["params"]  # measured facts beside the params, not among them


@pytest.mark.parametrize("name", sorted(SELECTORS))
@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_recall_is_recorded(pool, name, kind):
    fn = getattr(hp.select, name)
    sub = fn(pool, size=40, seed=0, knn_index=kind, **SELECTORS[name])
    assert len(sub) == 40
    record = hp.provenance(sub)[-1]["knn"]
    # ProbCover's purity pass (a masked self-join) and δ-graph (a radius search) run on IVF-Flat lists
    # for every approximate kind: HNSW has neither.
    used = "ivf" if name == "probcover" else kind
    assert record["indexes_used"] == [used] and record["recall_measured"] is True
    assert 0.5 < record["recall_at_k_min"] <= 1.0
    first = record["reports"][0]
    assert first["index"] == used and first["recall_queries"] >= 1 and first["params"]
    if kind == "ivf":
        assert {"nlist", "nprobe", "train_size"} <= set(first["params"])
    # Seeded: the same call gives the same rows.
    again = fn(pool, size=40, seed=0, knn_index=kind, **SELECTORS[name])
    assert again["row_id"] == sub["row_id"]


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_unknown_index_names_the_parameter(pool, name):
    with pytest.raises(ValueError, match="knn_index"):
        getattr(hp.select, name)(pool, size=10, knn_index="annoy", **SELECTORS[name])
