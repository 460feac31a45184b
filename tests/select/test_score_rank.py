import numpy as np
import pytest
from datasets import Dataset

import hf_prune as hp
from hf_prune.ops.columns import add_column
from tests.conftest import make_dataset


def ids(sub):
    return np.array(sub["row_id"]).tolist()


def scored(values, **columns):
    """A float32 ``score`` column, declared as the score convention says."""
    ds = make_dataset(None, idx=list(range(len(values))), **columns)
    return add_column(ds, "score", np.asarray(values, dtype=np.float32))


def test_top_k_descending_and_ascending():
    ds = scored([0.3, 0.9, -1.0, 0.5, 2.0, 0.1])
    assert ids(hp.select.top_k(ds, size=3, score_column="score")) == [1, 3, 4]
    assert ids(hp.select.top_k(ds, size=2, score_column="score", descending=False)) == [2, 5]
    assert ids(hp.select.top_k(ds, fraction=0.5, score_column="score")) == [1, 3, 4]
    assert len(hp.select.top_k(ds, fraction=1.0, score_column="score")) == 6


def test_top_k_ties_go_to_the_lower_row_position():
    # 0.1.0 drew a seeded permutation here; now the tie rule of every selector, whatever the seed.
    ds = scored([5.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    for seed in (0, 1, 7, np.random.default_rng(3)):
        assert ids(hp.select.top_k(ds, size=2, score_column="score", seed=seed)) == [0, 1]
        assert ids(hp.select.top_k(ds, size=3, score_column="score", seed=seed)) == [0, 1, 2]
        # Ascending: 0.0 first, then the tied 1.0s from the lowest position up.
        assert ids(hp.select.top_k(ds, size=3, score_column="score", descending=False, seed=seed)) == [1, 2, 5]


def test_top_k_ties_per_class_go_to_the_lower_row_position():
    # Class 0 = rows 0, 2, 4, 6 (all tied), class 1 = rows 1, 3, 5, 7 (9 wins, then three tied 2s).
    ds = scored([1.0, 2.0, 1.0, 9.0, 1.0, 2.0, 1.0, 2.0], label=[0, 1] * 4)
    for seed in range(5):
        sub = hp.select.top_k(ds, size=4, score_column="score", label_column="label", seed=seed)
        assert ids(sub) == [0, 1, 2, 3]


def test_top_k_per_class():
    ds = scored([1, 2, 3, 4, 10, 20, 30, 40], label=[0, 0, 0, 0, 1, 1, 1, 1])
    sub = hp.select.top_k(ds, size=4, score_column="score", label_column="label")
    assert ids(sub) == [2, 3, 6, 7]
    low = hp.select.top_k(ds, size=2, score_column="score", label_column="label", descending=False)
    assert ids(low) == [0, 4]
    step = hp.provenance(sub)[-1]
    assert step["method"] == "top_k" and step["params"]["score_column"] == "score"
    assert step["params"]["descending"] is True and step["params"]["label_column"] == "label"


def test_threshold():
    ds = scored([0.3, 0.9, -1.0, 0.5, 2.0, 0.1])
    assert ids(hp.select.threshold(ds, score_column="score", min_value=0.5)) == [1, 3, 4]
    assert ids(hp.select.threshold(ds, score_column="score", max_value=0.1)) == [2, 5]  # inclusive
    sub = hp.select.threshold(ds, score_column="score", min_value=0.0, max_value=0.5)
    assert ids(sub) == [0, 3, 5]
    np.testing.assert_allclose(sub["score"], [0.3, 0.5, 0.1], rtol=1e-6)
    step = hp.provenance(sub)[-1]
    assert step["method"] == "threshold" and step["params"]["min_value"] == 0.0 and step["output_rows"] == 3
    # chained: row_id maps back to the original dataset
    again = hp.select.threshold(sub, score_column="score", min_value=0.2)
    assert ids(again) == [0, 3]


def test_bad_input():
    ds = scored([0.3, 0.9, -1.0])
    with pytest.raises(ValueError, match="'score'"):
        hp.select.top_k(scored([0.1, np.nan, 0.2]), size=1, score_column="score")
    with pytest.raises(ValueError, match="'score'"):
        hp.select.threshold(scored([0.1, np.nan, 0.2]), score_column="score", min_value=0)
    with pytest.raises(ValueError, match="no row"):
        hp.select.threshold(ds, score_column="score", min_value=5.0)
    with pytest.raises(ValueError, match="min_value"):
        hp.select.threshold(ds, score_column="score")
    with pytest.raises(ValueError, match="larger"):
        hp.select.threshold(ds, score_column="score", min_value=1.0, max_value=0.0)
    with pytest.raises(ValueError, match="max_value"):
        hp.select.threshold(ds, score_column="score", max_value=float("nan"))
    with pytest.raises(ValueError, match="descending"):
        hp.select.top_k(ds, size=1, score_column="score", descending="yes")
    with pytest.raises(ValueError, match="empty"):
        hp.select.threshold(Dataset.from_dict({"score": []}), score_column="score", min_value=0)
    with pytest.raises(ValueError, match="'score'"):
        hp.select.top_k(make_dataset(None, score=["a", "b"]), size=1, score_column="score")
