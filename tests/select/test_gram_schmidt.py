import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import torch

import hf_prune as hp
from hf_prune.select.gram_schmidt import gram_schmidt_order
from tests.conftest import make_dataset


def explicit_projection_order(x, k):
    """Algorithm 1 with the largest residual, written with explicit projections in float64."""
    residual = x.astype(np.float64).copy()
    chosen, norms = [], []
    for _ in range(k):
        r = np.linalg.norm(residual, axis=1)
        r[chosen] = -1
        i = int(np.argmax(r))
        chosen.append(i)
        norms.append(r[i])
        f_i = residual[i].copy()
        residual -= np.outer(residual @ f_i / (f_i @ f_i), f_i)
    return np.array(chosen), np.array(norms)


def test_deterministic_matches_pivoted_qr_and_explicit_projections():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(60, 12)) * rng.uniform(0.2, 3.0, size=(60, 1))).astype(np.float32)
    picks, norms = gram_schmidt_order(x, 12)
    _, r, pivots = scipy.linalg.qr(x.T.astype(np.float64), pivoting=True)
    np.testing.assert_array_equal(picks, pivots[:12])
    np.testing.assert_allclose(norms, np.abs(np.diag(r)), rtol=1e-4)
    ref_picks, ref_norms = explicit_projection_order(x, 12)
    np.testing.assert_array_equal(picks, ref_picks)
    np.testing.assert_allclose(norms, ref_norms, rtol=1e-4)
    assert (np.diff(norms) <= 1e-6).all()  # the largest residual norm never grows
    sub = hp.select.gram_schmidt(make_dataset(x), size=5, mode="deterministic")
    assert sub["row_id"] == sorted(picks[:5].tolist())


def test_random_picks_have_the_residual_norms_of_algorithm_1():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 10)).astype(np.float32)
    picks, norms = gram_schmidt_order(x, 10, uniforms=rng.random(10))
    assert len(set(picks.tolist())) == 10
    for step, i in enumerate(picks):
        basis = x[picks[:step]].astype(np.float64)
        f = x[i].astype(np.float64)
        # Norm of F_i outside span(previous picks), by least squares: what Algorithm 1's residual is.
        inside = basis.T @ np.linalg.lstsq(basis.T, f, rcond=None)[0] if step else 0.0
        assert norms[step] == pytest.approx(np.linalg.norm(f - inside), rel=1e-4)
        assert norms[step] <= np.linalg.norm(f) + 1e-5  # projections only shrink a residual


def test_pair_probabilities_by_hand():
    # a=(3,0), b=(0,1), c=(1,1). First draw ∝ 3, 1, √2. Residuals after a: b,c -> (0,1), (0,1);
    # after b: a,c -> (3,0), (1,0); after c: a,b -> (1.5,-1.5), (-.5,.5), norms 1.5√2, .5√2.
    s = 4 + np.sqrt(2)
    pa, pb, pc = 3 / s, 1 / s, np.sqrt(2) / s
    expected = {(0, 1): pa / 2 + pb * 3 / 4, (0, 2): pa / 2 + pc * 3 / 4, (1, 2): pb / 4 + pc / 4}
    assert sum(expected.values()) == pytest.approx(1.0)
    # Plain norm sampling of the same pairs differs by > 0.05 (above 4σ = 0.044 at 2000 draws), so the
    # test tells the methods apart.
    norm_ab = pa * pb / (1 - pa) + pb * pa / (1 - pb)
    assert abs(norm_ab - expected[(0, 1)]) > 0.05
    groups = 2000
    trio = np.array([[3.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    ds = make_dataset(np.tile(trio, (groups, 1)), label=np.repeat(np.arange(groups), 3))
    sub = hp.select.gram_schmidt(ds, size=2 * groups, label_column="label", seed=2, device="cpu")
    kept = (np.array(sub["row_id"]) % 3).reshape(groups, 2)
    for (i, j), p in expected.items():
        freq = np.mean((kept[:, 0] == i) & (kept[:, 1] == j))
        assert abs(freq - p) <= 4 * np.sqrt(p * (1 - p) / groups), ((i, j), freq, p)


def test_picks_are_linearly_independent_and_span_more_than_norm_sampling():
    rng = np.random.default_rng(2)
    # 60 rows that are multiples of one direction (large norms) and 20 rows in other directions.
    line = np.outer(rng.uniform(5, 10, size=60), rng.normal(size=16))
    other = rng.normal(size=(20, 16))
    x = np.concatenate([line, other]).astype(np.float32)
    ds = make_dataset(x)
    gs_ranks, norm_ranks = [], []
    for seed in range(8):
        gs = np.array(hp.select.gram_schmidt(ds, size=8, seed=seed)["row_id"])
        gs_ranks.append(np.linalg.matrix_rank(x[gs]))
        ns = np.array(hp.select.norm_sampling(ds, size=8, seed=seed)["row_id"])
        norm_ranks.append(np.linalg.matrix_rank(x[ns]))
    assert gs_ranks == [8] * 8  # never two rows of the same line before the span is exhausted
    assert max(norm_ranks) < 8  # norm sampling alone keeps picking the collinear large rows


def test_more_picks_than_dimensions_restarts_the_basis():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    picks, _ = gram_schmidt_order(x, 12, uniforms=rng.random(12))
    assert len(set(picks.tolist())) == 12
    for start in (0, 4, 8):  # each round of d picks is a basis
        assert np.linalg.matrix_rank(x[picks[start : start + 4]]) == 4
    # Rank-2 data in 6-d: rounds of 2.
    low_rank = (rng.normal(size=(20, 2)) @ rng.normal(size=(2, 6))).astype(np.float32)
    picks, norms = gram_schmidt_order(low_rank, 6, uniforms=rng.random(6))
    for start in (0, 2, 4):
        assert np.linalg.matrix_rank(low_rank[picks[start : start + 2]], tol=1e-4) == 2
    assert (norms > 1e-3).all()  # no pick is made on rounding noise
    sub = hp.select.gram_schmidt(make_dataset(x), size=30, seed=0)  # every row
    assert sub["row_id"] == list(range(30))


def test_zero_rows_come_last():
    rng = np.random.default_rng(4)
    x = np.zeros((8, 6), dtype=np.float32)
    x[[1, 4, 6]] = rng.normal(size=(3, 6))
    for seed in range(5):
        ids = hp.select.gram_schmidt(make_dataset(x), size=4, seed=seed)["row_id"]
        assert {1, 4, 6} < set(ids)
    ids = hp.select.gram_schmidt(make_dataset(x), size=4, mode="deterministic")["row_id"]
    assert ids == [0, 1, 4, 6]


def test_batch_size_and_dtype_do_not_change_the_rows():
    rng = np.random.default_rng(5)
    ds = make_dataset(rng.normal(size=(50, 7)))
    full = hp.select.gram_schmidt(ds, size=10, seed=3)["row_id"]
    assert hp.select.gram_schmidt(ds, size=10, seed=3, batch_size=7)["row_id"] == full


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_gpu_give_the_same_rows():
    rng = np.random.default_rng(6)
    ds = make_dataset(rng.normal(size=(2000, 64)), label=rng.integers(0, 3, size=2000))
    for mode in ("random", "deterministic"):
        cpu = hp.select.gram_schmidt(ds, size=100, mode=mode, label_column="label", device="cpu")
        gpu = hp.select.gram_schmidt(ds, size=100, mode=mode, label_column="label", device="cuda")
        assert cpu["row_id"] == gpu["row_id"]


def test_the_random_mode_depends_on_the_seed_and_params(blobs):
    ds, _, _ = blobs
    sub = hp.select.gram_schmidt(ds, fraction=0.2, label_column="label", seed=3)
    assert hp.select.gram_schmidt(ds, fraction=0.2, label_column="label", seed=4)["row_id"] != sub["row_id"]
    step = hp.provenance(sub)[-1]
    assert step["method"] == "gram_schmidt" and step["params"]["mode"] == "random"
    assert step["params"]["seed"] == 3 and step["params"]["label_column"] == "label"


def test_bad_input(blobs):
    ds, _, _ = blobs
    with pytest.raises(ValueError, match="mode"):
        hp.select.gram_schmidt(ds, size=3, mode="max")
    with pytest.raises(ValueError, match="batch_size"):
        hp.select.gram_schmidt(ds, size=3, batch_size=0)
    with pytest.raises(ValueError, match="tol"):
        hp.select.gram_schmidt(ds, size=3, tol=0)
    with pytest.raises(ValueError, match="'emb'.*NaN"):
        hp.select.gram_schmidt(make_dataset(np.array([[1.0, np.inf], [1.0, 2.0]])), size=1)
    with pytest.raises(ValueError, match="score"):
        hp.select.gram_schmidt(ds, size=3, embedding_column="score")  # a scalar column, not a list


def test_hand_computed_rank_residual_norms_and_initial_subset():
    # Norms 3, √2, 2 -> row 0; residuals (0, 1), (0, 2) -> row 2 (2); then nothing is left outside the
    # span, the basis restarts and row 1 comes with its own norm √2.
    ds = make_dataset(np.array([[3.0, 0.0], [1.0, 1.0], [0.0, 2.0]]))
    sub = hp.select.gram_schmidt(ds, size=3, mode="deterministic", rank_column="rank", gain_column="residual")
    assert sub["rank"] == [0, 2, 1]
    np.testing.assert_allclose(sub["residual"], [3.0, np.sqrt(2), 2.0], rtol=1e-6)
    # Row 1 first: residuals (1.5, -1.5) (norm 3/√2) and (-1, 1) (√2) -> row 0; row 2 is then in the span.
    start = hp.select.gram_schmidt(ds, size=3, mode="deterministic", initial_subset=[1], rank_column="rank",
                                   gain_column="residual")
    assert start["rank"] == [1, 0, 2]
    np.testing.assert_allclose(start["residual"], [3 / np.sqrt(2), np.sqrt(2), 2.0], rtol=1e-6)


def test_random_mode_draws_one_uniform_per_step_in_order(blobs):
    ds, emb, _ = blobs
    # The picks of the free run are those of gram_schmidt_order with the group generator's uniforms,
    # and a shorter run uses the first of the same uniforms: hence the prefix property.
    sub = hp.select.gram_schmidt(ds, size=20, seed=9, rank_column="rank")
    picks, _ = gram_schmidt_order(emb, 20, uniforms=np.random.default_rng([9, 0]).random(20))
    assert np.array(sub["row_id"])[np.argsort(sub["rank"])].tolist() == picks.tolist()
    assert np.array_equal(np.random.default_rng([9, 0]).random(20)[:7], np.random.default_rng([9, 0]).random(7))
    # Initial rows take the first steps (and their uniforms): rows 5 and 6 first, then the same draws.
    start = hp.select.gram_schmidt(ds, size=20, seed=9, initial_subset=[5, 6], rank_column="rank")
    expected, _ = gram_schmidt_order(emb, 20, uniforms=np.random.default_rng([9, 0]).random(20), initial=[5, 6])
    assert np.array(start["row_id"])[np.argsort(start["rank"])].tolist() == expected.tolist()
    assert expected[:2].tolist() == [5, 6]
    with pytest.raises(ValueError, match="more than `k`"):
        gram_schmidt_order(emb, 1, initial=[5, 6])


def algorithm_1_in_float64(x, k, uniforms=None, tol=1e-4, initial=()):
    """Algorithm 1 with an explicit float64 residual matrix, basis restarts and inverse-CDF draws."""
    features = x.astype(np.float64)
    residual = features.copy()
    original = np.linalg.norm(features, axis=1)
    available = np.ones(len(x), dtype=bool)
    rank, picks, norms = 0, [], []
    for step in range(k):
        r = np.where(available, np.linalg.norm(residual, axis=1), 0.0)
        scale = original[available].max()
        if rank and r.max() <= tol * scale:
            residual, rank = features.copy(), 0
            r = np.where(available, original, 0.0)
        if step < len(initial):
            i = initial[step]
        elif uniforms is None:
            i = int(np.argmax(r))
        else:
            cumulative = np.cumsum(r)
            i = int(np.searchsorted(cumulative, uniforms[step] * cumulative[-1], side="right"))
        picks.append(i)
        norms.append(r[i])
        available[i] = False
        if r[i] > tol * original[i]:
            q = residual[i] / r[i]
            residual -= np.outer(residual @ q, q)
            rank += 1
    return np.array(picks), np.array(norms)


@pytest.mark.parametrize("kind", ["gaussian", "scaled", "rank_deficient"])
def test_one_pass_downdating_matches_explicit_residuals_over_several_rounds(kind):
    rng = np.random.default_rng(7)
    n, d = 150, 12
    if kind == "gaussian":
        x = rng.normal(size=(n, d))
    elif kind == "scaled":
        x = rng.normal(size=(n, d)) * rng.uniform(0.05, 20.0, size=(n, 1))
    else:  # rank 4 in 12-d: rounds of 4 picks
        x = rng.normal(size=(n, 4)) @ rng.normal(size=(4, d))
    x = x.astype(np.float32)
    k = 3 * d + 5 if kind != "rank_deficient" else 14  # several rounds (a partial one last)
    for uniforms in (None, rng.random(k)):
        for batch_size, initial in ((None, ()), (16, (3, 90))):
            picks, norms = gram_schmidt_order(x, k, uniforms=uniforms, batch_size=batch_size, initial=initial)
            ref_picks, ref_norms = algorithm_1_in_float64(x, k, uniforms=uniforms, initial=initial)
            np.testing.assert_array_equal(picks, ref_picks)
            np.testing.assert_allclose(norms, ref_norms, rtol=1e-4)


def test_duplicates_of_a_pick_wait_for_the_next_round():
    # Ten copies of each of three directions in 5-d: every round of three picks takes one of each.
    rng = np.random.default_rng(8)
    x = np.repeat(rng.normal(size=(3, 5)), 10, axis=0).astype(np.float32)
    for seed in range(5):
        picks, norms = gram_schmidt_order(x, 9, uniforms=np.random.default_rng(seed).random(9))
        for start in (0, 3, 6):
            assert sorted(picks[start : start + 3] // 10) == [0, 1, 2]
        assert (norms > 0.1).all()  # never a pick on rounding noise


def test_the_features_are_read_only_and_not_copied():
    # Peak memory of a run beside a 48 MB float32 matrix stays far below a second copy of it (a
    # fresh process, so earlier tests' peaks do not hide it); the matrix is read-only, so any write fails.
    script = (
        "import resource, numpy as np, torch\n"
        "from hf_prune.select.gram_schmidt import gram_schmidt_order\n"
        "torch.set_num_threads(1)\n"
        "x = np.random.default_rng(0).standard_normal((60_000, 200), dtype=np.float32)\n"
        "x.setflags(write=False)\n"
        "gram_schmidt_order(x[:50], 3, uniforms=np.full(3, 0.5))\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "picks, _ = gram_schmidt_order(x, 4, uniforms=np.full(4, 0.5), batch_size=20_000)\n"
        "grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024\n"
        "print(grown / x.nbytes, len(set(picks.tolist())))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    ratio, distinct = out.stdout.split()
    assert distinct == "4"
    assert float(ratio) < 0.25, out.stdout
