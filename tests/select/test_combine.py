import numpy as np
import pytest

import hf_prune as hp
from hf_prune.select._core import split_budget
from tests.conftest import make_dataset


def test_baseline_then_norm_maps_back_and_records_both_steps(blobs):
    ds, emb, _ = blobs
    before = ds[:]
    sub = hp.select.combine(ds, baseline="random", then="norm", size=10, seed=1)
    assert ds[:] == before and "row_id" not in ds.column_names
    ids = np.array(sub["row_id"])
    assert len(sub) == 10 and (np.diff(ids) > 0).all()
    np.testing.assert_array_equal(np.array(sub["emb"]), emb[ids].astype(np.float32))
    steps = hp.provenance(sub)
    assert [s["method"] for s in steps] == ["random", "norm_sampling"]
    assert [s["output_rows"] for s in steps] == [20, 10]  # 2b, then b
    assert steps[0]["input_fingerprint"] == ds._fingerprint and steps[0]["input_rows"] == 90
    assert steps[1]["input_rows"] == 20
    # The second step chose among the baseline's rows: rerunning the baseline gives a superset.
    pool = hp.select.random(ds, size=20, seed=1)
    assert set(ids) <= set(pool["row_id"])


def test_the_second_step_selects_by_norm_within_the_pool(blobs):
    ds, emb, _ = blobs
    sub = hp.select.combine(
        ds, baseline=hp.select.random, then="norm", size=6, seed=2, then_kwargs={"mode": "deterministic"}
    )
    pool = np.array(hp.select.random(ds, size=12, seed=2)["row_id"])
    norms = np.linalg.norm(emb[pool], axis=1)
    assert sorted(sub["row_id"]) == sorted(pool[np.argsort(-norms)[:6]].tolist())


def test_probcover_plus_gram_schmidt_and_typiclust_plus_norm(blobs):
    ds, emb, _ = blobs
    gs = hp.select.combine(ds, baseline="probcover", then="gram_schmidt", size=8, seed=0)
    assert [s["method"] for s in hp.provenance(gs)] == ["probcover", "gram_schmidt"]
    pool = hp.select.probcover(ds, size=16, seed=0)
    assert set(gs["row_id"]) <= set(pool["row_id"])
    assert np.linalg.matrix_rank(emb[np.array(gs["row_id"])]) == 8  # GS picks are independent (8 ≤ d)
    tn = hp.select.combine(ds, baseline=hp.select.typiclust, then=hp.select.norm_sampling, fraction=0.1)
    assert len(tn) == 9 and [s["method"] for s in hp.provenance(tn)] == ["typiclust", "norm_sampling"]


def test_expansion_rounding_and_cap(blobs):
    ds, _, _ = blobs
    sub = hp.select.combine(ds, baseline="random", expansion=1.5, size=5)
    assert hp.provenance(sub)[0]["output_rows"] == 8  # ⌈1.5·5⌉ = 8
    sub = hp.select.combine(ds, baseline="random", expansion=3, fraction=0.1)  # b = 9
    assert hp.provenance(sub)[0]["output_rows"] == 27
    sub = hp.select.combine(ds, baseline="random", size=60)  # 2·60 > 90 rows: the baseline keeps all
    assert [s["output_rows"] for s in hp.provenance(sub)] == [90, 60]
    sub = hp.select.combine(ds, baseline="random", expansion=1, size=7)
    assert [s["output_rows"] for s in hp.provenance(sub)] == [7, 7]


def test_per_class_budgets(blobs):
    ds, _, labels = blobs
    sub = hp.select.combine(ds, baseline="random", then="gram_schmidt", fraction=0.2, label_column="label", seed=3)
    first_counts = split_budget(np.array([40, 30, 20]), 36)
    expected = split_budget(first_counts, 18)
    assert np.bincount(labels[np.array(sub["row_id"])]).tolist() == expected.tolist()
    assert np.abs(expected - split_budget(np.array([40, 30, 20]), 18)).max() <= 1
    assert all(s["params"]["label_column"] == "label" for s in hp.provenance(sub))


def test_chaining_on_a_selected_dataset_keeps_original_ids(blobs):
    ds, emb, _ = blobs
    first = hp.select.random(ds, size=60, seed=0)
    sub = hp.select.combine(first, baseline="random", size=10, seed=5)
    ids = np.array(sub["row_id"])
    assert set(ids) <= set(first["row_id"])
    np.testing.assert_array_equal(np.array(sub["emb"]), emb[ids].astype(np.float32))
    assert [s["method"] for s in hp.provenance(sub)] == ["random", "random", "norm_sampling"]


def test_determinism(blobs):
    ds, _, _ = blobs
    a = hp.select.combine(ds, baseline="random", size=10, seed=4)
    assert hp.select.combine(ds, baseline="random", size=10, seed=4)["row_id"] == a["row_id"]
    assert hp.select.combine(ds, baseline="random", size=10, seed=5)["row_id"] != a["row_id"]


def test_bad_input(blobs):
    ds, _, _ = blobs
    with pytest.raises(ValueError, match="unknown selector 'fancy'"):
        hp.select.combine(ds, baseline="fancy", size=5)
    with pytest.raises(ValueError, match="`then`"):
        hp.select.combine(ds, baseline="random", then="combine", size=5)
    with pytest.raises(ValueError, match="`baseline`"):
        hp.select.combine(ds, baseline=3, size=5)
    for expansion in (0.5, float("inf"), "2", True):
        with pytest.raises(ValueError, match="expansion"):
            hp.select.combine(ds, baseline="random", size=5, expansion=expansion)
    with pytest.raises(ValueError, match="baseline_kwargs"):
        hp.select.combine(ds, baseline="random", size=5, baseline_kwargs={"seed": 1})
    with pytest.raises(ValueError, match="then_kwargs"):
        hp.select.combine(ds, baseline="random", size=5, then_kwargs=["p", 1])
    with pytest.raises(ValueError, match="exactly one"):
        hp.select.combine(ds, baseline="random", size=5, fraction=0.1)
    with pytest.raises(ValueError, match="size"):
        hp.select.combine(ds, baseline="random", size=91)
    with pytest.raises(KeyError, match="feats"):
        hp.select.combine(ds, baseline="random", size=5, then_kwargs={"embedding_column": "feats"})
    with pytest.raises(TypeError):
        hp.select.combine(make_dataset(np.eye(3)).to_dict(), baseline="random", size=1)
