"""SemDeDup: planted exact and near duplicates in three known clusters, the keep rule, budgets, blocks."""

import numpy as np
import pytest
import torch

import hf_prune as hp
from hf_prune.select.cluster_score import unit_rows
from hf_prune.select.semdedup import max_similarity_to_earlier, semdedup, semdedup_filter, semdedup_similarity
from tests.conftest import make_dataset

EPS = 0.02  # duplicates: cosine > 0.98; distinct spokes of one cluster have cosine ≤ 1/1.09 ≈ 0.917


def ids(sub):
    return np.asarray(sub["row_id"]).tolist()


def spoke(axis, direction, tilt=0.3, d=8):
    """``e_axis + tilt·(±e_|direction|)``: a row at angle atan(tilt) from its cluster's axis."""
    v = np.zeros(d)
    v[axis] = 1.0
    v[abs(direction)] = tilt * np.sign(direction)
    return v


def planted(with_duplicates=True):
    """Three clusters (axes e0, e1, e2), each of 10 spokes along ±e3…±e7, whose mean is the axis.

    Planted duplicates (rows shuffled, so positions do not follow clusters):
    * cluster 0: ``near_a``, a copy of spoke +e3 tilted 0.29 (closer to the centre than the spoke);
    * cluster 1: two exact copies of spoke +e5 (three identical rows);
    * cluster 2: ``far_c``, a copy of spoke +e4 tilted 0.32 (farther from the centre than the spoke).
    Returns the Dataset and a dict of named row positions.
    """
    rows, names = [], {}
    for axis in range(3):
        for k in range(3, 8):
            for sign in (1, -1):
                rows.append(spoke(axis, sign * k))
                names[(axis, sign * k)] = len(rows) - 1
    if with_duplicates:
        rows.append(spoke(0, 3, tilt=0.29))
        names["near_a"] = len(rows) - 1
        for copy in ("copy_1", "copy_2"):
            rows.append(spoke(1, 5))
            names[copy] = len(rows) - 1
        rows.append(spoke(2, 4, tilt=0.32))
        names["far_c"] = len(rows) - 1
    rows = np.array(rows)
    rng = np.random.default_rng(0)
    # Cosine ignores norms: scale every row, except the exact copies' group (identical rows exercise the tie rule).
    scale = rng.uniform(0.5, 3.0, size=len(rows))
    if with_duplicates:
        scale[[names[(1, 5)], names["copy_1"], names["copy_2"]]] = 2.0
    rows = rows * scale[:, None]
    perm = rng.permutation(len(rows))  # new position of each old row
    shuffled = np.empty_like(rows)
    shuffled[perm] = rows
    names = {key: int(perm[old]) for key, old in names.items()}
    cluster = np.empty(len(rows), dtype=np.int64)
    cluster[perm] = np.repeat(np.arange(3), 10).tolist() + ([0, 1, 1, 2] if with_duplicates else [])
    return make_dataset(shuffled, cluster=cluster.tolist()), names


def test_max_similarity_to_earlier_matches_the_dense_upper_triangle_in_any_block_size():
    x = torch.nn.functional.normalize(torch.randn(50, 6, generator=torch.Generator().manual_seed(0)), dim=1)
    dense = (x @ x.T).masked_fill(torch.ones(50, 50, dtype=torch.bool).triu(), -torch.inf).max(dim=1).values
    for chunk_size in (1, 3, 7, 50, 4096):
        got = max_similarity_to_earlier(x, chunk_size=chunk_size)
        assert got[0] == -np.inf
        np.testing.assert_allclose(got[1:], dense[1:].double().numpy(), rtol=0, atol=1e-6)


def test_planted_duplicates_are_removed_and_the_farthest_row_of_each_group_kept():
    ds, at = planted()
    sub = semdedup_filter(ds, eps=EPS, n_clusters=3, seed=0)
    dropped = sorted(set(range(len(ds))) - set(ids(sub)))
    # Near copy closer to the centre goes; of three identical rows the lowest position stays; in
    # cluster 2 the planted row is the farther one, so the original spoke goes.
    first_copy, *later = sorted([at[(1, 5)], at["copy_1"], at["copy_2"]])
    assert dropped == sorted([at["near_a"], *later, at[(2, 4)]])
    assert len(sub) == 30 and first_copy in ids(sub) and at["far_c"] in ids(sub) and at[(0, 3)] in ids(sub)
    step = hp.provenance(sub)[-1]
    assert step["method"] == "semdedup_filter" and step["params"]["eps"] == EPS
    assert step["params"]["metric"] == "cosine" and step["output_fingerprint"] == sub._fingerprint


def test_keep_closest_keeps_the_other_row_of_each_near_pair():
    ds, at = planted()
    sub = semdedup_filter(ds, eps=EPS, n_clusters=3, keep="closest", seed=0)
    first_copy, *later = sorted([at[(1, 5)], at["copy_1"], at["copy_2"]])
    dropped = sorted(set(range(len(ds))) - set(ids(sub)))
    assert dropped == sorted([at[(0, 3)], *later, at["far_c"]])
    # keep="random": a seeded order, so still one row per duplicate group.
    rand = semdedup_filter(ds, eps=EPS, n_clusters=3, keep="random", seed=3)
    assert len(rand) == 30 and ids(rand) == ids(semdedup_filter(ds, eps=EPS, n_clusters=3, keep="random", seed=3))
    assert len({at[(1, 5)], at["copy_1"], at["copy_2"]} & set(ids(rand))) == 1


def test_without_duplicates_every_row_is_kept():
    ds, _ = planted(with_duplicates=False)
    assert ids(semdedup_filter(ds, eps=EPS, n_clusters=3)) == list(range(30))
    assert ids(semdedup_filter(ds, eps=EPS)) == list(range(30))  # default: one cluster for 30 rows
    assert ids(semdedup(ds, size=30, n_clusters=3)) == list(range(30))
    assert len(semdedup(ds, size=29, n_clusters=3)) == 29


def test_budget_is_met_exactly_and_extends_the_filter_by_the_lowest_similarity():
    ds, at = planted()
    filtered = ids(semdedup_filter(ds, eps=EPS, n_clusters=3, seed=0))
    assert ids(semdedup(ds, size=30, n_clusters=3, seed=0)) == filtered
    # The 31st row is the dropped one least similar to its kept twin: the 0.32-tilt pair of cluster 2
    # (cosine ≈ 0.99983) comes before the 0.29 pair (≈ 0.99996) and the exact copies (1).
    assert ids(semdedup(ds, size=31, n_clusters=3, seed=0)) == sorted([*filtered, at[(2, 4)]])
    for size in (1, 3, 12, 29, 34):
        sub = semdedup(ds, size=size, n_clusters=3, seed=0)
        assert len(sub) == size
    assert len(semdedup(ds, fraction=0.5, n_clusters=3)) == 17
    # Smaller budgets keep the rows of lowest M (ties to the lower position), a prefix of larger ones.
    m = semdedup_similarity(unit_rows(np.asarray(ds["emb"], dtype=np.float32), "emb"), 3, np.random.default_rng([0, 0]))
    for size in (3, 12, 29):
        assert ids(semdedup(ds, size=size, n_clusters=3, seed=0)) == sorted(np.argsort(m, kind="stable")[:size].tolist())
    assert set(ids(semdedup(ds, size=12, n_clusters=3))) <= set(ids(semdedup(ds, size=20, n_clusters=3)))
    # Three clusters: their first rows (M = −∞) are the first three kept.
    assert np.isinf(m).sum() == 3


def test_clusters_larger_than_a_block_give_the_same_rows():
    ds, _ = planted()
    for chunk_size in (1, 4):
        assert ids(semdedup_filter(ds, eps=EPS, n_clusters=3, chunk_size=chunk_size)) == ids(
            semdedup_filter(ds, eps=EPS, n_clusters=3))
        assert ids(semdedup(ds, size=20, n_clusters=1, chunk_size=chunk_size)) == ids(semdedup(ds, size=20, n_clusters=1))


def test_per_class_deduplicates_inside_each_class():
    ds, at = planted()
    sub = semdedup_filter(ds, eps=EPS, n_clusters=1, label_column="cluster")
    assert len(sub) == 30 and at["near_a"] not in ids(sub) and at[(0, 3)] in ids(sub)
    budgeted = semdedup(ds, size=15, n_clusters=1, label_column="cluster")
    counts = np.bincount(np.asarray(ds["cluster"])[ids(budgeted)], minlength=3).tolist()
    assert counts == [5, 5, 5]  # split_budget of 15 over 11/12/11 rows


def test_determinism_and_seeds():
    ds, _ = planted()
    assert ids(semdedup(ds, size=20, n_clusters=3, seed=5)) == ids(semdedup(ds, size=20, n_clusters=3, seed=5))
    from_generator = semdedup(ds, size=20, n_clusters=3, seed=np.random.default_rng(1))
    assert ids(from_generator) == ids(semdedup(ds, size=20, n_clusters=3, seed=np.random.default_rng(1)))
    assert ids(semdedup(ds, size=20, n_clusters=3, seed=hp.provenance(from_generator)[-1]["params"]["seed"])) == ids(
        from_generator)
    assert ids(semdedup_filter(ds, eps=EPS, n_clusters=3, seed=np.random.default_rng(1))) == ids(
        semdedup_filter(ds, eps=EPS, n_clusters=3, seed=np.random.default_rng(1)))


def test_the_input_is_untouched():
    ds, _ = planted()
    fingerprint, table = ds._fingerprint, ds.data.table
    semdedup(ds, size=10, n_clusters=3)
    semdedup_filter(ds, eps=EPS, n_clusters=3, label_column="cluster")
    assert ds._fingerprint == fingerprint and ds.data.table.equals(table) and ds.column_names == ["cluster", "emb"]


def test_bad_input_names_the_column_or_parameter():
    ds, _ = planted()
    with pytest.raises(KeyError, match="'nope'"):
        semdedup_filter(ds, eps=EPS, embedding_column="nope")
    with pytest.raises(KeyError, match="'nope'"):
        semdedup(ds, size=3, embedding_column="nope")
    for eps in (0, -0.1, 1.5, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="`eps`"):
            semdedup_filter(ds, eps=eps)
    with pytest.raises(ValueError, match="`keep`"):
        semdedup(ds, size=3, keep="hard")
    with pytest.raises(ValueError, match="`n_clusters`=35 is larger than the number of rows in the dataset"):
        semdedup_filter(ds, eps=EPS, n_clusters=35)
    with pytest.raises(ValueError, match="`n_clusters`=12 is larger than the number of rows in class 0 of 'cluster'"):
        semdedup(ds, size=5, n_clusters=12, label_column="cluster")
    for name in ("max_iter", "chunk_size", "n_clusters"):
        with pytest.raises(ValueError, match=f"`{name}`"):
            semdedup(ds, size=3, **{name: 0})
    with pytest.raises(ValueError, match="`tol`"):
        semdedup(ds, size=3, tol=-1.0)
    with pytest.raises(ValueError, match="`seed`"):
        semdedup_filter(ds, eps=EPS, seed=-1)
    zero = make_dataset(np.vstack([np.eye(3), np.zeros((1, 3))]))
    with pytest.raises(ValueError, match="column 'emb' has a zero vector \\(row 3\\)"):
        semdedup_filter(zero, eps=EPS)
    with pytest.raises(ValueError, match="empty"):
        semdedup_filter(ds.select([]), eps=EPS)


def test_device_is_honoured():
    ds, _ = planted()
    assert ids(semdedup(ds, size=20, n_clusters=3, device="cpu")) == ids(semdedup(ds, size=20, n_clusters=3))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            semdedup_filter(ds, eps=EPS, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_gpu_keep_the_same_rows():
    ds, _ = planted()
    for keep in ("farthest", "closest", "random"):
        kw = dict(n_clusters=3, keep=keep, chunk_size=5)
        assert ids(semdedup_filter(ds, eps=EPS, device="cuda", **kw)) == ids(semdedup_filter(ds, eps=EPS, device="cpu", **kw))
        assert ids(semdedup(ds, size=31, device="cuda", **kw)) == ids(semdedup(ds, size=31, device="cpu", **kw))


def test_a_chain_of_near_duplicates_is_dropped_after_its_first_row_as_the_paper_does():
    # Angles 0.2 (a), 0.1 (b), 0.0 (c) and -1.0 (d): one cluster centred near -0.175, so the order is d, a, b, c.
    # b is within ε of a, c within ε of b but not of a (cos 0.2 ≈ 0.980 < 0.99): M compares with every
    # earlier row, kept or dropped, so both b and c go (a rule against kept rows only would keep c).
    angles = np.array([0.2, 0.1, 0.0, -1.0])
    ds = make_dataset(np.stack([np.cos(angles), np.sin(angles)], axis=1))
    assert ids(semdedup_filter(ds, eps=0.01, n_clusters=1)) == [0, 3]
    # b and c both have M ≈ cos 0.1 (equal up to rounding): a budget of 3 adds one of them to d and a.
    kept = ids(semdedup(ds, size=3, n_clusters=1))
    assert len(kept) == 3 and {0, 3} <= set(kept)


def test_similarity_and_its_kmeans_hold_no_float64_copy_of_wide_rows():
    # 20,000 unit rows of width 384 (29 MiB): the cluster distances, the k-means++ seeding and the
    # tolerance's variance used to convert whole blocks or the whole column to float64 (3.3× the rows).
    import tracemalloc

    from hf_prune.select.cluster_score import fit_kmeans
    from hf_prune.select.semdedup import semdedup_similarity

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((40, 384))[rng.integers(0, 40, 20_000)] + 0.3 * rng.standard_normal((20_000, 384)))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    for run in (lambda: fit_kmeans(x, 20, seed=0, spherical=True, max_iter=5),
                lambda: semdedup_similarity(x, 20, np.random.default_rng(0), max_iter=5)):
        tracemalloc.start()
        try:
            run()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1.0 * x.nbytes, f"peak {peak / x.nbytes:.2f}× the rows"
