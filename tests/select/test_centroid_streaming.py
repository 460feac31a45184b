"""Moderate / easy / hard over a column read block by block keep the rows the in-RAM array gives."""

import numpy as np
import pytest

import hf_prune as hp
from hf_prune.ops.matrix import open_matrix
from hf_prune.select.centroid import distances_to_center
from tests.conftest import make_dataset
from tests.select.test_k_center_streaming import blob_rows, views


@pytest.mark.parametrize("center", ["mean", "median", "geometric_median"])
def test_streamed_views_keep_what_the_array_keeps(tmp_path, center):
    x, labels = blob_rows(n=500, offset=1.5)
    for name, (ds, values) in views(x, labels, tmp_path).items():
        reference = make_dataset(values, label=np.asarray(ds["label"]))
        for method in ("moderate", "easy", "hard"):
            kwargs = dict(fraction=0.2, center=center, label_column="label", device="cpu")
            got = getattr(hp.select, method)(ds, **kwargs)["row_id"]
            assert got == getattr(hp.select, method)(reference, **kwargs)["row_id"], (name, method)
        streamed = distances_to_center(open_matrix(ds, "emb"), center, device="cpu")
        assert np.allclose(streamed, distances_to_center(values, center, device="cpu"), rtol=1e-6), name
