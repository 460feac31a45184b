import math

import numpy as np
import pytest
import torch

from hf_prune.ops.projection import RandomProjection, random_projection

M32 = 0xFFFFFFFF


def _mix(x: int) -> int:
    """lowbias32 in Python integers: the reference the int64 tensor code must match bit for bit."""
    x &= M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    x ^= x >> 16
    return x


def _reference_rademacher(proj: RandomProjection, r: int, c: int) -> float:
    k0, k1, k2, _ = proj._keys
    row = _mix(_mix((r & M32) ^ k0) ^ (r >> 32) ^ k1)
    h = _mix(row ^ _mix((c // 32) ^ k2))
    bit = (h >> (c % 32)) & 1
    return (1.0 - 2.0 * bit) / math.sqrt(proj.dim)


def test_entries_match_a_pure_python_reference_including_rows_beyond_2_32():
    # The vectorised int64 hashing must equal exact integer arithmetic (no overflow anywhere), which
    # is what makes the matrix identical on every device.
    proj = RandomProjection(2**33 + 10, 40, seed=123456789012)
    for start in (0, 77, 2**32 - 1, 2**33 + 3):
        block = proj.rows(start, start + 3, device="cpu").numpy()
        expected = [[_reference_rademacher(proj, start + i, c) for c in range(40)] for i in range(3)]
        np.testing.assert_array_equal(block, np.array(expected, dtype=np.float32))


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_deterministic_and_chunking_invariant(kind):
    a = RandomProjection(1000, 96, seed=3, kind=kind, chunk_size=64)
    b = RandomProjection(1000, 96, seed=3, kind=kind, chunk_size=7)
    full = a.materialize(device="cpu")
    assert full.shape == (1000, 96)
    assert torch.equal(full, b.materialize(device="cpu"))
    # chunk i is regenerated from (seed, i): same bytes every time, and equal to that slice of R
    assert torch.equal(a.chunk(5, device="cpu"), a.chunk(5, device="cpu"))
    assert torch.equal(a.chunk(15, device="cpu"), full[960:1000])  # last, shorter chunk
    assert a.num_chunks == 16 and b.num_chunks == 143
    x = torch.randn(5, 1000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-5)  # only the summation order differs
    torch.testing.assert_close(a(x), x @ full, rtol=1e-5, atol=1e-5)
    other = RandomProjection(1000, 96, seed=4, kind=kind).materialize(device="cpu")
    assert (other != full).float().mean() > 0.4
    assert not torch.equal(RandomProjection(1000, 96, seed=3, kind="gaussian" if kind == "rademacher" else "rademacher")
                           .materialize(device="cpu").sign(), full.sign())


def test_entry_distributions():
    dim = 256
    rad = RandomProjection(4000, dim, seed=0).materialize(device="cpu").numpy() * math.sqrt(dim)
    assert set(np.unique(rad)) == {-1.0, 1.0}
    assert abs(rad.mean()) < 4 / math.sqrt(rad.size)  # fair signs (4 std)
    gauss = RandomProjection(4000, dim, seed=0, kind="gaussian").materialize(device="cpu").numpy() * math.sqrt(dim)
    n = gauss.size
    assert abs(gauss.mean()) < 4 / math.sqrt(n)
    assert abs(gauss.var() - 1) < 4 * math.sqrt(2 / n)
    assert abs((gauss**4).mean() - 3) < 0.05  # Gaussian kurtosis, not Rademacher's 1
    assert np.abs(gauss).max() < 4.5  # tails cut by the 16-bit quantile table (documented)
    # columns are nearly orthogonal: R^T R ≈ I (off-diagonals ~ N(0, 1/in_features))
    gram = rad.T @ rad / len(rad)
    off = gram[~np.eye(dim, dtype=bool)]
    assert abs(off.std() - 1 / math.sqrt(len(rad))) < 0.1 / math.sqrt(len(rad))
    assert np.abs(np.diag(gram) - 1).max() < 1e-6


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_johnson_lindenstrauss_inner_products_and_norms(kind):
    rng = np.random.default_rng(0)
    d, k = 3000, 512
    x = rng.normal(size=(12, d)) + rng.normal(size=(1, d))  # correlated vectors: non-zero inner products
    x[:, :50] *= 5  # uneven coordinates
    z = random_projection(x.astype(np.float32), k, seed=11, kind=kind)
    assert isinstance(z, np.ndarray) and z.shape == (12, k)
    true = x @ x.T
    est = z.astype(np.float64) @ z.T.astype(np.float64)
    sq = x**2
    # Var⟨Rx, Ry⟩ = (‖x‖²‖y‖² + ⟨x,y⟩² + (κ − 3) Σ x_i² y_i²)/k, κ = entry kurtosis (1 or ≈3).
    kappa = 1.0 if kind == "rademacher" else 3.0
    var = (np.outer((x**2).sum(1), (x**2).sum(1)) + true**2 + (kappa - 3) * sq @ sq.T) / k
    zscores = (est - true) / np.sqrt(var)
    iu = np.triu_indices(12)  # includes the diagonal: squared norms
    assert np.abs(zscores[iu]).max() < 4.0  # every pair within 4 std (JL tolerance, margin ≥ 3 std)
    rms = np.sqrt((zscores[iu] ** 2).mean())
    assert 0.5 < rms < 1.5, rms  # errors have the predicted size: not too small (R = I?), not too big
    norms_ratio = np.linalg.norm(z, axis=1) / np.linalg.norm(x, axis=1)
    assert np.abs(norms_ratio - 1).max() < 4 * math.sqrt(2 / k)  # ‖Rx‖ ≈ ‖x‖


def test_inner_product_error_shrinks_like_one_over_sqrt_dim():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 2000)).astype(np.float32)
    true = x @ x.T
    mask = ~np.eye(20, dtype=bool)
    errors = []
    for k in (64, 1024):
        z = random_projection(x, k, seed=0)
        errors.append(np.sqrt(((z @ z.T - true)[mask] ** 2).mean()))
    assert 2.5 < errors[0] / errors[1] < 6.5  # √(1024/64) = 4


def test_project_keeps_leading_dims_device_and_dtype():
    proj = RandomProjection(50, 8, seed=0)
    x = torch.randn(2, 3, 50, dtype=torch.float64)
    out = proj(x)
    assert out.shape == (2, 3, 8) and out.dtype == torch.float32
    torch.testing.assert_close(out[1, 2], proj(x[1, 2].unsqueeze(0))[0])
    assert proj.config == {"in_features": 50, "dim": 8, "seed": 0, "kind": "rademacher"}


def test_bad_arguments():
    with pytest.raises(ValueError, match="dim"):
        RandomProjection(10, 0)
    with pytest.raises(ValueError, match="in_features"):
        RandomProjection(-1, 4)
    with pytest.raises(ValueError, match="kind"):
        RandomProjection(10, 4, kind="sparse")
    with pytest.raises(ValueError, match="seed"):
        RandomProjection(10, 4, seed=-1)
    with pytest.raises(ValueError, match="chunk_size"):
        RandomProjection(10, 4, chunk_size=0)
    proj = RandomProjection(10, 4)
    with pytest.raises(ValueError, match="features"):
        proj(torch.zeros(2, 11))
    with pytest.raises(IndexError):
        proj.chunk(proj.num_chunks)
    with pytest.raises(TypeError):
        proj([[0.0] * 10])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_same_matrix_on_gpu(kind):
    proj = RandomProjection(5000, 300, seed=9, kind=kind, chunk_size=333)
    assert torch.equal(proj.materialize(device="cuda").cpu(), proj.materialize(device="cpu"))
