"""Gram–Schmidt over a column read block by block: the same picks as the in-RAM array, and no copy of a
memory-mapped column."""

import numpy as np
import pytest

import hf_prune as hp
from hf_prune.ops.matrix import open_matrix
from hf_prune.select.gram_schmidt import gram_schmidt_order
from tests.conftest import make_dataset
from tests.select import test_k_center_streaming as shared
from tests.select.test_gram_schmidt import algorithm_1_in_float64
from tests.select.test_k_center_streaming import assert_no_copy, blob_rows, views

block_rows = shared.block_rows  # the fixture: one block, or blocks of 64 rows


@pytest.mark.usefixtures("block_rows")
@pytest.mark.parametrize("mode", ["random", "deterministic"])
def test_streamed_views_pick_what_the_array_picks(tmp_path, mode):
    x, labels = blob_rows(n=500, d=5)
    for name, (ds, values) in views(x, labels, tmp_path).items():
        reference = make_dataset(values, label=np.asarray(ds["label"]))
        for label_column in (None, "label"):
            # More picks than dimensions: the basis restarts, so every part of the loop runs.
            kwargs = dict(size=30, mode=mode, label_column=label_column, device="cpu", rank_column="rank",
                          gain_column="residual", seed=3)
            got, want = hp.select.gram_schmidt(ds, **kwargs), hp.select.gram_schmidt(reference, **kwargs)
            assert got["row_id"] == want["row_id"] and got["rank"] == want["rank"], (name, label_column)
            assert np.allclose(got["residual"], want["residual"], rtol=1e-4, atol=1e-5), name
        uniforms = None if mode == "deterministic" else np.random.default_rng(4).random(12)
        picks, _ = gram_schmidt_order(open_matrix(ds, "emb"), 12, uniforms=uniforms)
        assert picks.tolist() == list(algorithm_1_in_float64(values, 12, uniforms=uniforms)[0]), name


def test_a_memory_mapped_column_is_not_copied(tmp_path):
    assert_no_copy("gram_schmidt", tmp_path)
