"""Herding and GM matching over a column read block by block: the same picks as the in-RAM array and as the
previous implementation (one float32 product over a copy of the rows per pick), and no copy of a
memory-mapped column."""

import numpy as np
import pytest

import hf_prune as hp
from hf_prune.ops.matrix import open_matrix
from hf_prune.ops.median import geometric_median
from tests.conftest import make_dataset
from tests.select import test_k_center_streaming as shared
from tests.select.test_k_center_streaming import assert_no_copy, blob_rows, views

block_rows = shared.block_rows  # the fixture: one block, or blocks of 64 rows


def previous_herding(x, k, mu):
    """The previous implementation: scores ⟨θ, x⟩ over all rows in float32, θ kept in float64, θ_0 = μ."""
    x32 = x.astype(np.float32)
    theta, chosen = mu.astype(np.float64).copy(), []
    penalty = np.zeros(len(x), dtype=np.float32)
    for _ in range(k):
        i = int(np.argmax(x32 @ theta.astype(np.float32) + penalty))
        chosen.append(i)
        penalty[i] = -np.inf
        theta += mu - x32[i].astype(np.float64)
    return chosen


@pytest.mark.usefixtures("block_rows")
@pytest.mark.parametrize("method", ["herding", "gm_matching"])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_streamed_views_pick_what_the_array_and_the_previous_implementation_pick(tmp_path, method, metric):
    x, labels = blob_rows(n=500, offset=2.0)
    select = getattr(hp.select, method)
    for name, (ds, values) in views(x, labels, tmp_path).items():
        reference = make_dataset(values, label=np.asarray(ds["label"]))
        for label_column in (None, "label"):
            kwargs = dict(size=60, metric=metric, label_column=label_column, device="cpu", rank_column="rank",
                          gain_column="score")
            got, want = select(ds, **kwargs), select(reference, **kwargs)
            assert got["row_id"] == want["row_id"] and got["rank"] == want["rank"], (name, label_column)
            assert np.allclose(got["score"], want["score"], rtol=1e-5, atol=1e-5), name
        rows = values / np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-12) if metric == "cosine" else values
        rows = rows.astype(np.float32)
        mu = rows.astype(np.float64).mean(0) if method == "herding" else geometric_median(rows)[0]
        got = select(ds, size=60, metric=metric, device="cpu", rank_column="rank")
        order = np.array(got["row_id"])[np.argsort(got["rank"])]
        assert order.tolist() == previous_herding(rows, 60, mu), name


@pytest.mark.usefixtures("block_rows")
def test_the_geometric_median_of_a_column_matrix_is_that_of_its_array(tmp_path):
    x, labels = blob_rows(n=500, offset=1.0)
    for name, (ds, values) in views(x, labels, tmp_path).items():
        streamed, info = geometric_median(open_matrix(ds, "emb"), eps=1e-9)
        in_ram, _ = geometric_median(values, eps=1e-9)
        assert np.allclose(streamed, in_ram, rtol=1e-9, atol=1e-9), name
        assert info["converged"]


@pytest.mark.parametrize("method", ["herding", "gm_matching"])
def test_a_memory_mapped_column_is_not_copied(tmp_path, method):
    assert_no_copy(method, tmp_path)
