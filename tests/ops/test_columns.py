import numpy as np
import pytest
from datasets import Dataset

from hf_prune.ops.columns import add_column, read_labels, read_matrix, read_vector


def test_read_matrix_and_errors():
    ds = Dataset.from_dict({"e": [[1.0, 2.0], [3.0, 4.0]], "r": [[1.0], [1.0, 2.0]], "n": [[1.0, float("nan")], [0.0, 0.0]], "s": ["a", "b"]})
    np.testing.assert_array_equal(read_matrix(ds, "e"), [[1, 2], [3, 4]])
    assert read_matrix(ds, "e").dtype == np.float32
    with pytest.raises(ValueError, match="'r' is ragged"):
        read_matrix(ds, "r")
    with pytest.raises(ValueError, match="'n' has NaN"):
        read_matrix(ds, "n")
    with pytest.raises(ValueError, match="'s'"):
        read_matrix(ds, "s")
    with pytest.raises(KeyError, match="'missing'"):
        read_matrix(ds, "missing")


def test_read_vector_and_labels():
    ds = Dataset.from_dict({"x": [1.0, float("inf")], "l": ["b", "a"], "i": [3, 1]})
    with pytest.raises(ValueError, match="'x' has NaN/inf"):
        read_vector(ds, "x")
    assert read_labels(ds, "l").tolist() == [1, 0]
    assert read_labels(ds, "i").tolist() == [3, 1]


def test_add_column_declares_features_and_protects_existing():
    ds = Dataset.from_dict({"a": [1, 2, 3]})
    out = add_column(ds, "emb", np.ones((3, 4)))
    assert out.features["emb"].length == 4 and out.features["emb"].feature.dtype == "float32"
    assert "emb" not in ds.column_names
    with pytest.raises(ValueError, match="overwrite=True"):
        add_column(out, "emb", np.zeros((3, 4)))
    replaced = add_column(out, "emb", np.zeros((3, 2)), overwrite=True)
    assert replaced.features["emb"].length == 2
    with pytest.raises(ValueError, match="3 rows"):
        add_column(ds, "s", np.ones(2))
