import numpy as np
import pytest
from datasets import Dataset

import hf_prune as hp
from hf_prune.select._core import resolve_budget, split_budget
from tests.conftest import make_dataset


def test_resolve_budget_rounding_and_errors():
    assert resolve_budget(10, fraction=0.25, size=None) == 2  # round half to even: 2.5 -> 2
    assert resolve_budget(10, fraction=0.35, size=None) == 4
    assert resolve_budget(10, fraction=0.01, size=None) == 1  # never zero
    assert resolve_budget(10, fraction=None, size=7) == 7
    for kwargs, word in [
        ({"fraction": 0.5, "size": 3}, "exactly one"),
        ({"fraction": None, "size": None}, "exactly one"),
        ({"fraction": 0.0, "size": None}, "fraction"),
        ({"fraction": 1.5, "size": None}, "fraction"),
        ({"fraction": None, "size": 11}, "size"),
        ({"fraction": None, "size": 0}, "size"),
    ]:
        with pytest.raises(ValueError, match=word):
            resolve_budget(10, **kwargs)
    with pytest.raises(ValueError, match="empty"):
        resolve_budget(0, fraction=0.5, size=None)


def test_split_budget_largest_remainder():
    # quotas 2.5, 1.5, 1.0 -> floors 2,1,1, one left: tie between .5 remainders goes to the first class
    np.testing.assert_array_equal(split_budget(np.array([5, 3, 2]), 5), [3, 1, 1])
    np.testing.assert_array_equal(split_budget(np.array([1, 1, 1]), 3), [1, 1, 1])
    budgets = split_budget(np.array([7, 13, 80]), 33)
    assert budgets.sum() == 33 and (budgets <= [7, 13, 80]).all()


def test_random_conventions(blobs):
    ds, _, labels = blobs
    before = ds[:]
    sub = hp.select.random(ds, fraction=0.2, label_column="label", seed=3)
    assert ds[:] == before and "row_id" not in ds.column_names  # input untouched
    assert len(sub) == 18
    ids = np.array(sub["row_id"])
    assert (np.diff(ids) > 0).all()
    np.testing.assert_array_equal(np.array(sub["label"]), labels[ids])
    assert np.bincount(labels[ids]).tolist() == [8, 6, 4]  # proportional per-class budgets
    again = hp.select.random(ds, fraction=0.2, label_column="label", seed=3)
    assert again["row_id"] == sub["row_id"]
    other = hp.select.random(ds, fraction=0.2, label_column="label", seed=4)
    assert other["row_id"] != sub["row_id"]
    step = hp.provenance(sub)[-1]
    assert step["method"] == "random" and step["params"]["seed"] == 3
    assert step["input_fingerprint"] == ds._fingerprint and step["output_rows"] == 18


def test_chained_selection_keeps_original_row_id(blobs):
    ds, _, _ = blobs
    first = hp.select.random(ds, size=50, seed=0)
    second = hp.select.random(first, size=10, seed=1)
    assert set(second["row_id"]) <= set(first["row_id"])
    np.testing.assert_array_equal(np.array(ds.select(second["row_id"])["emb"]), np.array(second["emb"]))
    assert [s["method"] for s in hp.provenance(second)] == ["random", "random"]


def test_selection_on_a_shuffled_view():
    ds = make_dataset(np.eye(6), label=[0, 0, 0, 1, 1, 1]).shuffle(seed=0)
    sub = hp.select.random(ds, size=3, seed=0)
    np.testing.assert_array_equal(np.array(ds.select(sub["row_id"])["emb"]), np.array(sub["emb"]))


def test_errors_name_the_problem(blobs):
    ds, _, _ = blobs
    with pytest.raises(KeyError, match="nope"):
        hp.select.random(ds, fraction=0.5, label_column="nope")
    with pytest.raises(ValueError, match="seed"):
        hp.select.random(ds, fraction=0.5, seed=None)
    with pytest.raises(ValueError, match="empty"):
        hp.select.random(Dataset.from_dict({"a": []}), fraction=0.5)
    with pytest.raises(TypeError):
        hp.select.random(ds, 0.5)  # keyword-only
