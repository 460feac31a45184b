import numpy as np
import pytest
import torch
from datasets import Dataset

import hf_prune as hp
from hf_prune.ops.columns import add_column
from tests.conftest import make_dataset


def test_single_column_is_the_row_norm():
    ds = make_dataset(np.array([[3.0, 4.0], [0.0, 0.0], [1.0, -1.0]]))
    out = hp.score.grand(ds, gradient_column="emb")
    np.testing.assert_allclose(out["grand"], [5.0, 0.0, np.sqrt(2)], rtol=1e-6)
    assert "grand" not in ds.column_names


def test_several_columns_are_averaged_and_may_differ_in_width():
    ds = make_dataset(np.array([[3.0, 4.0], [6.0, 8.0]]))
    ds = add_column(ds, "g2", np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=np.float32))
    out = hp.score.grand(ds, gradient_column=["emb", "g2"], output_column="gn")
    np.testing.assert_allclose(out["gn"], [(5 + 1) / 2, (10 + 2) / 2], rtol=1e-6)


def test_last_layer_gradient_norm_matches_autograd():
    # GraNd from last-layer gradients: for a linear head W h with cross-entropy, the per-sample
    # gradient wrt W is (p - onehot(y)) h^T, so its norm is ||p - onehot|| * ||h||.
    torch.manual_seed(0)
    n, d, c = 12, 6, 4
    h, y = torch.randn(n, d), torch.randint(0, c, (n,))
    head = torch.nn.Linear(d, c, bias=False)
    grads = []
    for i in range(n):
        head.zero_grad()
        torch.nn.functional.cross_entropy(head(h[i : i + 1]), y[i : i + 1]).backward()
        grads.append(head.weight.grad.flatten().clone())
    ds = make_dataset(torch.stack(grads).numpy())
    scores = np.array(hp.score.grand(ds, gradient_column="emb")["grand"])
    p = torch.softmax(head(h), dim=1).detach()
    closed_form = (p - torch.nn.functional.one_hot(y, c)).norm(dim=1) * h.norm(dim=1)
    np.testing.assert_allclose(scores, closed_form.numpy(), rtol=1e-5)
    assert np.ptp(scores) > 0.1  # not a degenerate case


def test_errors():
    ds = make_dataset(np.ones((3, 2)))
    with pytest.raises(KeyError, match="nope"):
        hp.score.grand(ds, gradient_column="nope")
    with pytest.raises(KeyError, match="nope"):
        hp.score.grand(ds, gradient_column=["emb", "nope"])
    with pytest.raises(ValueError, match="gradient_column"):
        hp.score.grand(ds, gradient_column=[])
    with pytest.raises(ValueError, match="NaN"):
        hp.score.grand(make_dataset(np.array([[1.0, np.nan]])), gradient_column="emb")
    with pytest.raises(ValueError, match="ragged"):
        hp.score.grand(Dataset.from_dict({"g": [[1.0], [1.0, 2.0]]}), gradient_column="g")
    with pytest.raises(ValueError, match="empty"):
        hp.score.grand(Dataset.from_dict({"g": []}), gradient_column="g")
    out = hp.score.grand(ds, gradient_column="emb")
    with pytest.raises(ValueError, match="overwrite"):
        hp.score.grand(out, gradient_column="emb")
    np.testing.assert_allclose(
        hp.score.grand(out, gradient_column="emb", overwrite=True)["grand"], [np.sqrt(2)] * 3, rtol=1e-6
    )
