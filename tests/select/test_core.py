import numpy as np
import pytest

import hf_prune as hp
from hf_prune.select._core import resolve_budget, split_budget


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


def test_random_depends_on_the_seed(blobs):
    # The rest of the contract (budgets, row_id, provenance, errors) is tests/select/test_contract.py.
    ds, _, _ = blobs
    sub = hp.select.random(ds, fraction=0.2, label_column="label", seed=3)
    assert hp.select.random(ds, fraction=0.2, label_column="label", seed=4)["row_id"] != sub["row_id"]


def test_group_rows_copies_only_a_proper_subset():
    from hf_prune.select._core import group_rows

    x = np.arange(12.0).reshape(6, 2)
    assert group_rows(x, np.arange(6)) is x
    np.testing.assert_array_equal(group_rows(x, np.array([4, 1])), x[[4, 1]])
