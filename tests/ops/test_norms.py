import numpy as np
import pytest

from hf_prune.ops import norms
from hf_prune.ops.norms import check_norm_order, row_norms


def test_row_norms_hand_computed():
    x = np.array([[3.0, -4.0], [1.0, 0.0], [0.0, -2.0]], dtype=np.float32)
    np.testing.assert_allclose(row_norms(x), [5, 1, 2])
    np.testing.assert_allclose(row_norms(x, 1), [7, 1, 2])
    np.testing.assert_allclose(row_norms(x, "inf"), [4, 1, 2])
    assert row_norms(x).dtype == np.float64


def test_row_norms_across_block_boundaries(monkeypatch):
    # Blocks of 4 rows over 10 rows: the last block is partial; values must not depend on blocking.
    monkeypatch.setattr(norms, "CHUNK_ROWS", 4)
    x = np.random.default_rng(0).normal(size=(10, 7)).astype(np.float32)
    for p in (1, 2, 3.5, "inf"):
        expected = np.linalg.norm(x.astype(np.float64), ord=float(p) if p != "inf" else np.inf, axis=1)
        np.testing.assert_allclose(row_norms(x, p), expected, rtol=1e-12)


@pytest.mark.parametrize("p", [0.5, 0, -1, float("nan"), "l2", True, None])
def test_check_norm_order_rejects(p):
    with pytest.raises(ValueError, match="`p`"):
        check_norm_order(p)


def test_row_norms_rejects_vectors():
    with pytest.raises(ValueError, match="2-d"):
        row_norms(np.ones(3))
