import math
import pickle

import numpy as np
import pytest
import torch

from hf_prune.ops.projection import (
    HadamardProjection,
    RandomProjection,
    make_projection,
    random_projection,
    walsh_hadamard,
)

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


# ----------------------------------------------------------------------------------- SRHT
@pytest.mark.parametrize("log_n", [0, 1, 5, 6, 7, 12])
def test_walsh_hadamard_is_sylvesters_matrix(log_n):
    import scipy.linalg

    n = 1 << log_n
    x = torch.randn(3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(log_n))
    before = x.clone()
    expected = x @ torch.from_numpy(scipy.linalg.hadamard(n)).to(torch.float64)
    torch.testing.assert_close(walsh_hadamard(x), expected, rtol=1e-10, atol=1e-9)
    columns = torch.tensor(sorted({0, n - 1, n // 3, n // 2}), dtype=torch.int64)
    torch.testing.assert_close(walsh_hadamard(x, columns), expected[:, columns], rtol=1e-10, atol=1e-9)
    assert torch.equal(x, before)  # input untouched
    with pytest.raises(ValueError, match="power-of-two"):
        walsh_hadamard(torch.zeros(1, 12))


@pytest.mark.parametrize("log_n", [13, 19])
def test_walsh_hadamard_doubling_rule_on_three_and_four_factors(log_n):
    # Sylvester: H_2n [x₁, x₂] = [H_n x₁ + H_n x₂, H_n x₁ − H_n x₂], checked against the smaller transform.
    n = 1 << log_n
    x = torch.randn(2, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    half = walsh_hadamard(x.reshape(2 * 2, n // 2)).reshape(2, 2, n // 2)
    torch.testing.assert_close(walsh_hadamard(x), torch.cat([half[:, 0] + half[:, 1], half[:, 0] - half[:, 1]], 1))


def test_srht_is_deterministic_chunk_invariant_and_a_fixed_linear_map():
    a = HadamardProjection(1000, 96, seed=3, chunk_size=2)
    b = HadamardProjection(1000, 96, seed=3)
    assert a.padded == 1024 and a.config == {"in_features": 1000, "dim": 96, "seed": 3, "kind": "srht"}
    x = torch.randn(5, 1000, generator=torch.Generator().manual_seed(0))
    before = x.clone()
    za = a(x)
    assert torch.equal(x, before)
    torch.testing.assert_close(za, b(x), rtol=1e-6, atol=1e-6)
    r = a.materialize(device="cpu")
    assert r.shape == (1000, 96)
    torch.testing.assert_close(za, x @ r, rtol=1e-5, atol=1e-5)
    # R = D H[:, S] / √dim with ±1 entries: every entry is ±1/√dim
    np.testing.assert_allclose(np.abs(r.numpy()), 1 / math.sqrt(96), rtol=1e-6)
    signs, rows = a.signs("cpu"), a.sampled("cpu")
    assert set(signs.unique().tolist()) == {-1.0, 1.0} and abs(float(signs.mean())) < 4 / math.sqrt(1024)
    assert len(rows.unique()) == 96 and torch.equal(rows, rows.sort().values) and 0 <= rows.min() and rows.max() < 1024
    other = HadamardProjection(1000, 96, seed=4)
    assert not torch.equal(other.sampled("cpu"), rows) and (other.signs("cpu") != signs).float().mean() > 0.4
    z64 = a.project(x.numpy().astype(np.float64))
    assert isinstance(z64, np.ndarray) and z64.dtype == np.float32
    np.testing.assert_allclose(z64, za.numpy(), rtol=1e-5, atol=1e-5)
    assert a(x.reshape(5, 1, 1000)).shape == (5, 1, 96)
    # pickled without its caches, and the same map after unpickling
    clone = pickle.loads(pickle.dumps(a))
    assert clone._signs == {} and torch.equal(clone(x), za)


def test_srht_with_every_coordinate_is_orthogonal():
    # dim = n = in_features: (1/√n) H D is orthogonal, so inner products are kept exactly.
    proj = HadamardProjection(256, 256, seed=1)
    x = torch.randn(6, 256, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z = proj(x).double()
    torch.testing.assert_close(z @ z.T, x @ x.T, rtol=1e-4, atol=1e-4)


def test_srht_sampled_coordinates_are_uniform():
    # Each of n coordinates is sampled with probability dim/n: over 200 seeds the counts are Binomial.
    n, dim, seeds = 64, 16, 200
    counts = np.zeros(n)
    for seed in range(seeds):
        counts[HadamardProjection(n, dim, seed=seed).sampled("cpu").numpy()] += 1
    p = dim / n
    assert np.abs(counts - seeds * p).max() < 4.5 * math.sqrt(seeds * p * (1 - p))


def test_srht_inner_products_are_unbiased_with_the_dense_projections_error():
    rng = np.random.default_rng(0)
    d, k = 3000, 512
    x = rng.normal(size=(12, d)) + rng.normal(size=(1, d))
    x[:, :50] *= 5
    true = x @ x.T
    var = (np.outer((x**2).sum(1), (x**2).sum(1)) + true**2) / k  # a Gaussian projection's variance
    iu = np.triu_indices(12)
    z = make_projection(d, k, seed=11, kind="srht").project(x.astype(np.float32)).astype(np.float64)
    zscores = ((z @ z.T - true) / np.sqrt(var))[iu]
    assert np.abs(zscores).max() < 4.5
    assert 0.5 < np.sqrt((zscores**2).mean()) < 1.5
    # the mean over seeds converges to the true inner products (unbiased)
    mean = np.mean([(lambda z: z @ z.T)(HadamardProjection(d, k, seed=s).project(x.astype(np.float32)).astype(np.float64))
                    for s in range(20)], axis=0)
    assert np.abs(((mean - true) / np.sqrt(var / 20))[iu]).max() < 4.5
    errors = []
    for dim in (64, 1024):
        z = HadamardProjection(d, dim, seed=0).project(x.astype(np.float32)).astype(np.float64)
        errors.append(np.sqrt(((z @ z.T - true)[~np.eye(12, dtype=bool)] ** 2).mean()))
    assert 2.5 < errors[0] / errors[1] < 6.5  # √(1024/64) = 4


def test_make_projection_and_srht_bad_arguments():
    assert isinstance(make_projection(100, 8, kind="rademacher"), RandomProjection)
    assert isinstance(make_projection(100, 8, kind="srht"), HadamardProjection)
    with pytest.raises(ValueError, match="kind"):
        make_projection(100, 8, kind="hadamard")
    with pytest.raises(ValueError, match="dim"):
        HadamardProjection(100, 200)  # more outputs than the padded length 128
    with pytest.raises(ValueError, match="in_features"):
        HadamardProjection(0, 4)
    with pytest.raises(ValueError, match="in_features"):
        HadamardProjection(2**31 + 1, 4)
    with pytest.raises(ValueError, match="seed"):
        HadamardProjection(10, 4, seed=-1)
    with pytest.raises(ValueError, match="chunk_size"):
        HadamardProjection(10, 4, chunk_size=0)
    with pytest.raises(ValueError, match="features"):
        HadamardProjection(10, 4)(torch.zeros(2, 11))
    with pytest.raises(TypeError):
        HadamardProjection(10, 4)([[0.0] * 10])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_srht_same_map_on_gpu():
    proj = HadamardProjection(5000, 300, seed=9)
    x = torch.randn(4, 5000)
    torch.testing.assert_close(proj(x.cuda()).cpu(), proj(x), rtol=1e-4, atol=1e-4)
