import functools
import importlib

import numpy as np
import pytest

import hf_prune as hp
from hf_prune.ops.knn import normalize_rows
from hf_prune.select.probcover import coverage_graph, max_coverage, purity_delta
from hf_prune.select.typiclust import ClusterTypicality, _typiclust_pick, typicality
from tests.conftest import make_dataset

# Four well-separated directions (tetrahedron vertices): blobs stay apart after L2 normalisation.
DIRECTIONS = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float) / np.sqrt(3)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def pairwise(x):
    return np.sqrt(np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 0))


def cored_blobs(sizes, seed=0, core_fraction=0.75):
    """Blobs around DIRECTIONS, each a dense core (σ=0.02) plus a sparse halo (σ=0.2)."""
    rng = np.random.default_rng(seed)
    emb, blob, core = [], [], []
    for b, n in enumerate(sizes):
        n_core = int(round(core_fraction * n))
        scale = np.r_[np.full(n_core, 0.02), np.full(n - n_core, 0.2)][:, None]
        emb.append(DIRECTIONS[b] + scale * rng.normal(size=(n, 3)))
        blob.append(np.full(n, b))
        core.append(np.arange(n) < n_core)
    return np.concatenate(emb), np.concatenate(blob), np.concatenate(core)


# ----------------------------------------------------------------------------------------- TypiClust


def test_typicality_by_hand():
    x = np.array([[0.0], [1.0], [3.0]])
    np.testing.assert_allclose(typicality(x, 1), [1.0, 1.0, 0.5])
    np.testing.assert_allclose(typicality(x, 2), [1 / 2, 1 / 1.5, 1 / 2.5])


def test_one_most_typical_point_per_cluster():
    emb, blob, core = cored_blobs([40, 40, 40, 40])
    ds = make_dataset(emb)
    x = unit(emb)
    for seed in range(3):
        ids = np.array(hp.select.typiclust(ds, size=4, seed=seed)["row_id"])
        assert sorted(blob[ids]) == [0, 1, 2, 3]  # one per cluster
        assert core[ids].all()  # dense points, never the halo
        for i in ids:
            members = np.flatnonzero(blob == blob[i])
            d = np.sort(pairwise(x[members]), axis=1)[:, 1:21]  # 20 nearest others (k=min(20, 40//2))
            assert members[np.argmin(d.mean(1))] == i  # the argmax of 1 / mean distance


def test_largest_clusters_first_and_small_clusters_skipped():
    emb, blob, _ = cored_blobs([60, 45, 30, 15])
    ds = make_dataset(emb)
    ids = np.array(hp.select.typiclust(ds, size=2, n_clusters=4)["row_id"])
    assert sorted(blob[ids]) == [0, 1]
    # Budget above the cluster count: the clusters are visited again, largest first.
    ids = np.array(hp.select.typiclust(ds, size=6, n_clusters=4)["row_id"])
    assert np.bincount(blob[ids], minlength=4).tolist() == [2, 2, 1, 1]
    # A 4-point cluster (≤ min_cluster_size=5) is skipped unless the threshold is lowered.
    emb, blob, _ = cored_blobs([40, 30, 4])
    ds = make_dataset(emb)
    ids = np.array(hp.select.typiclust(ds, size=3, n_clusters=3)["row_id"])
    assert np.bincount(blob[ids], minlength=3).tolist() == [2, 1, 0]
    ids = np.array(hp.select.typiclust(ds, size=3, n_clusters=3, min_cluster_size=0)["row_id"])
    assert np.bincount(blob[ids], minlength=3).tolist() == [1, 1, 1]


def test_typiclust_records_its_clusters(blobs, monkeypatch):
    ds, _, _ = blobs
    sub = hp.select.typiclust(ds, fraction=0.2, label_column="label", seed=1)
    step = hp.provenance(sub)[-1]
    assert step["method"] == "typiclust" and step["params"]["n_clusters_used"] == [8, 6, 4]
    module = importlib.import_module("hf_prune.select.typiclust")  # the name `typiclust` is the function
    monkeypatch.setattr(module, "MAX_CLUSTERS", 10)  # TypiClust's cap (500), made small
    many = hp.select.typiclust(make_dataset(np.random.default_rng(0).normal(size=(200, 4))), size=30)
    assert hp.provenance(many)[-1]["params"]["n_clusters_used"] == [10]
    assert len(many) == 30


def test_typiclust_bad_input(blobs):
    ds, _, _ = blobs
    with pytest.raises(ValueError, match="`k`=90"):
        hp.select.typiclust(ds, size=3, k=90)
    for name, value in [("k", 0), ("n_clusters", 0), ("min_cluster_size", -1), ("k", 2.5), ("n_init", 0)]:
        with pytest.raises(ValueError, match=name):
            hp.select.typiclust(ds, size=3, **{name: value})
    with pytest.raises(ValueError, match="'emb'.*NaN"):
        hp.select.typiclust(make_dataset(np.array([[np.nan, 1.0]] + [[1.0, 2.0]] * 5)), size=1, k=2)


def typiclust_order(sub):
    """Kept row ids in pick order (a single group)."""
    return np.array(sub["row_id"])[np.argsort(sub["rank"], kind="stable")]


def most_typical(x, members, k=20):
    d = np.sort(pairwise(x[members]), axis=1)[:, 1 : min(k, len(members) // 2) + 1]
    return members[np.argmin(d.mean(1))]


def test_typiclust_labelled_rows_skip_their_clusters_by_hand():
    emb, blob, _ = cored_blobs([60, 45, 30, 15])
    ds, x = make_dataset(emb), unit(emb)
    # Row 59 (a halo point of blob 0) is labelled: 1 labelled + 3 new = 4 clusters, the blobs. Blob 0
    # already holds a labelled row, so the three new picks are the most typical points of blobs 1-3,
    # largest first; without the labelled row blob 0's most typical point would be taken.
    sub = hp.select.typiclust(ds, size=4, initial_subset=[59], rank_column="rank")
    order = typiclust_order(sub)
    assert order[0] == 59 and blob[order].tolist() == [0, 1, 2, 3]
    assert order[1:].tolist() == [most_typical(x, np.flatnonzero(blob == b)) for b in (1, 2, 3)]
    assert hp.provenance(sub)[-1]["params"]["n_clusters_used"] == [4]
    assert most_typical(x, np.flatnonzero(blob == 0)) in hp.select.typiclust(ds, size=4)["row_id"]
    # Two labelled rows in blob 1: it counts as visited twice, so the second round starts with blob 0.
    sub = hp.select.typiclust(ds, size=7, n_clusters=4, initial_subset=[60, 61], rank_column="rank")
    assert blob[typiclust_order(sub)].tolist() == [1, 1, 0, 2, 3, 0, 2]


def test_typiclust_labelled_rows_as_scikit_activeml():
    # scikit-activeml's TypiClust on the same clustering: (labelled + batch) clusters, those with a
    # labelled sample skipped, the most typical point of each of the largest others. Same picks.
    skactiveml = pytest.importorskip("skactiveml.pool")
    rng = np.random.default_rng(3)
    x = unit(rng.normal(size=(210, 3)))
    blob = rng.permutation(np.repeat(np.arange(6), [50, 44, 38, 32, 26, 20]))

    class Fixed:  # the clustering both sides use: the blobs
        def __init__(self, n_clusters=None, random_state=None):
            self.n_clusters = n_clusters

        def fit_predict(self, X):
            return blob

    sizes = np.bincount(blob)
    labelled = [int(np.flatnonzero(blob == 0)[7]), int(np.flatnonzero(blob == 3)[2])]
    y = np.full(len(x), np.nan)
    y[labelled] = [0, 1]
    theirs = skactiveml.TypiClust(cluster_algo=Fixed, k=5, random_state=0).query(x, y, batch_size=4)
    ours = _typiclust_pick(x, blob, 6, k=5, min_cluster_size=0, initial=labelled)
    assert ours[:2].tolist() == labelled and ours[2:].tolist() == theirs.tolist()
    assert len(set(sizes)) == len(sizes)  # distinct cluster sizes: neither side broke a tie


def test_typiclust_round_robin_matches_the_plain_visit_loop():
    # The visit loop as first written (cycle through the clusters largest first, skip exhausted ones):
    # the least-visited rule without initial rows is the same order.
    def reference(x, assign, budget, k, min_cluster_size):
        sizes = np.bincount(assign)
        eligible = np.flatnonzero(sizes > min_cluster_size)
        if sizes[eligible].sum() < budget:
            eligible = np.flatnonzero(sizes > 0)
        order = eligible[np.lexsort((eligible, -sizes[eligible]))]
        members = {int(c): np.flatnonzero(assign == c) for c in order}
        chosen, visit = [], 0
        while len(chosen) < budget:
            cluster = int(order[visit % len(order)])
            visit += 1
            points = members[cluster]
            if len(points) == 0:
                continue
            neighbours = max(1, min(k, len(points) // 2))
            best = 0 if len(points) == 1 else int(np.argmax(typicality(x[points], neighbours)))
            chosen.append(points[best])
            members[cluster] = np.delete(points, best)
        return chosen

    rng = np.random.default_rng(0)
    for _ in range(2):
        x = rng.normal(size=(80, 3))
        assign = rng.choice(6, size=80, p=[0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
        for budget in (17, 60):  # the second visits the clusters 17 times: exhausted ones skipped
            np.testing.assert_array_equal(
                _typiclust_pick(x, assign, budget, k=4, min_cluster_size=5),
                reference(x, assign, budget, 4, 5),
            )


def test_cluster_typicality_matches_a_fresh_search_on_every_take(monkeypatch):
    # Taking every point of a cluster one by one empties every neighbour list (each point keeps 2k),
    # so lists are searched again; duplicates give infinite typicality and ties at distance 0.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(90, 5)).astype(np.float32)
    x[60:70] = x[0]  # eleven copies of one row
    x[70:75] = x[10:15]
    searched_again = []
    real = ClusterTypicality._search_again
    monkeypatch.setattr(ClusterTypicality, "_search_again",
                        lambda self, rows: (searched_again.append(len(rows)), real(self, rows)))
    for k in (1, 3, 6):
        members = rng.permutation(90)[:80]
        cluster = ClusterTypicality(x, members, k)
        remaining = list(members)
        for _ in range(80):
            points = np.array(remaining)
            if len(points) == 1:
                best = 0
            else:
                best = int(np.argmax(typicality(x[points], max(1, min(k, len(points) // 2)))))
            assert cluster.take_most_typical() == points[best]
            remaining.pop(best)
        with pytest.raises(ValueError, match="every point"):
            cluster.take_most_typical()
    assert sum(searched_again) > 0


def test_cluster_typicality_keeps_lists_not_distances():
    x = np.random.default_rng(0).normal(size=(500, 4)).astype(np.float32)
    cluster = ClusterTypicality(x, np.arange(500), k=5)
    assert cluster.near.shape == (500, 10) and cluster.near.dtype == np.int32
    assert cluster.dist2.shape == (500, 10) and cluster.dist2.dtype == np.float32


def test_typiclust_what_holds_of_the_order():
    emb, blob, _ = cored_blobs([60, 45, 30, 15], seed=2)
    ds = make_dataset(emb, label=np.arange(150) % 2)
    typiclust = functools.partial(hp.select.typiclust, n_init=1)
    # A fixed number of clusters does not depend on the budget: 5 picks are the first of 11.
    small = typiclust(ds, size=5, n_clusters=4, rank_column="rank", seed=4)
    large = typiclust(ds, size=11, n_clusters=4, rank_column="rank", seed=4)
    np.testing.assert_array_equal(typiclust_order(small), typiclust_order(large)[:5])
    # The default clustering has `budget` clusters, so budgets differ in their clustering; a run of the
    # same budget started from its own first picks gives it back (order included).
    for kwargs in [dict(size=12), dict(size=12, label_column="label")]:
        run = typiclust(ds, rank_column="rank", seed=4, **kwargs)
        first = np.array(run["row_id"])[np.array(run["rank"]) < 2].tolist()  # two picks (per class)
        resumed = typiclust(ds, rank_column="rank", seed=4, initial_subset=first, **kwargs)
        assert resumed["row_id"] == run["row_id"]
        ranks = dict(zip(resumed["row_id"], resumed["rank"]))
        assert sorted(ranks[i] for i in first) == sorted(np.array(run["rank"])[np.isin(run["row_id"], first)])
    # The pick order comes with the default selection unchanged.
    before = ds[:]
    for kwargs in [dict(size=12), dict(fraction=0.2, label_column="label"), dict(size=40, n_clusters=4)]:
        plain = typiclust(ds, seed=4, **kwargs)
        ranked = typiclust(ds, seed=4, rank_column="rank", **kwargs)
        assert ranked.remove_columns("rank")[:] == plain[:] and "rank" not in plain.column_names
    assert ds[:] == before


def test_typiclust_ordered_bad_input(blobs):
    ds, _, _ = blobs
    for kwargs, pattern in [
        ({"initial_subset": [90]}, r"`initial_subset`.*\[0, 90\)"),
        ({"initial_subset": [1, 1]}, "`initial_subset`.*distinct"),
        ({"initial_subset": 3}, "`initial_subset`"),
        ({"initial_subset": list(range(5))}, r"`initial_subset` has 5 rows, more than the budget \(4\)"),
        ({"initial_subset": [0, 1, 2], "label_column": "label"}, r"`initial_subset`.*budget is 2"),
        ({"rank_column": "label"}, "'label' already exists"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            hp.select.typiclust(ds, size=4, k=5, **kwargs)


# ----------------------------------------------------------------------------------------- ProbCover


def on_circle(angles):
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def test_probcover_hand_case():
    # A: five points 0.05 rad apart (the middle one covers all five with δ=0.12), B: two points, C: one.
    angles = np.array([-0.1, -0.05, 0.0, 0.05, 0.1, 1.5, 1.55, 3.0])
    ds = make_dataset(on_circle(angles) * 3.0)  # scale is irrelevant: embeddings are normalised
    assert hp.select.probcover(ds, size=1, delta=0.12)["row_id"] == [2]
    # 5 and 6 both cover B: the tie goes to the lower row position.
    assert hp.select.probcover(ds, size=2, delta=0.12)["row_id"] == [2, 5]
    assert hp.select.probcover(ds, size=3, delta=0.12)["row_id"] == [2, 5, 7]
    # Everything is covered after three picks: the fourth is a random unselected point.
    fourth = {seed: set(hp.select.probcover(ds, size=4, delta=0.12, seed=seed)["row_id"]) for seed in range(6)}
    assert all({2, 7} < ids for ids in fourth.values())
    assert len({frozenset(ids) for ids in fourth.values()}) > 1


def test_purity_delta_matches_brute_force():
    rng = np.random.default_rng(0)
    x = unit(rng.normal(size=(150, 5))).astype(np.float32)
    labels = (x[:, 0] > 0.1).astype(int) + (x[:, 1] > 0.4)
    d = pairwise(x.astype(np.float64))
    other = labels[:, None] != labels[None]
    radius = np.where(other, d, np.inf).min(1)  # ball B_δ(x) is pure iff δ ≤ radius[x]
    for alpha in (0.5, 0.9, 0.95, 1.0):
        delta = purity_delta(x, labels, purity=alpha)
        pure = lambda r: np.mean([not (other[i] & (d[i] < r)).any() for i in range(len(x))])  # noqa: E731
        # δ is computed in float32: compare just inside and just outside it.
        assert pure(delta * (1 - 1e-5)) >= alpha
        assert pure(delta * (1 + 1e-5)) < alpha  # the largest such δ
        assert delta == pytest.approx(np.sort(radius)[len(x) - int(np.ceil(alpha * len(x)))], rel=1e-5)
    assert purity_delta(x, np.zeros(150, dtype=int)) == np.inf


def test_purity_delta_with_clusters_larger_than_any_first_search():
    # Six labels of ~1,000 rows: almost every row's nearest hundreds share its label (a k-NN search that
    # widens until another label appears needed rounds up to all rows here). One masked pass is exact.
    rng = np.random.default_rng(4)
    member = rng.integers(0, 6, 6000)
    x = unit(rng.normal(size=(6, 8))[member] + 0.4 * rng.normal(size=(6000, 8))).astype(np.float32)
    sims = np.where(member[:, None] != member[None], x.astype(np.float64) @ x.T.astype(np.float64), -np.inf)
    radius = np.sqrt(np.clip(2 - 2 * sims.max(1), 0, None))
    from hf_prune.select._knn_step import KnnLog

    log = KnnLog("auto")
    delta = purity_delta(x, member, purity=0.95, log=log)
    assert delta == pytest.approx(np.sort(radius)[6000 - 5700], rel=1e-6)
    assert [r["search"] for r in log.reports] == ["nearest other label"]
    # The IVF pass can only overestimate an r_x, so its δ is at least the exact one.
    assert purity_delta(x, member, purity=0.95, knn_index="ivf") >= delta


def test_coverage_graph_and_greedy_match_dense_references():
    rng = np.random.default_rng(1)
    x = unit(rng.normal(size=(120, 4))).astype(np.float32)
    delta = 0.5
    indptr, indices = coverage_graph(x, delta, chunk_size=7)
    dense = pairwise(x.astype(np.float64)) < delta
    np.fill_diagonal(dense, True)
    got = np.zeros_like(dense)
    got[np.repeat(np.arange(120), np.diff(indptr)), indices] = True
    np.testing.assert_array_equal(got, dense)
    assert len(indices) == dense.sum()  # no duplicate edges
    # Greedy max coverage, recomputing every count from scratch each step.
    covered, expected = np.zeros(120, bool), []
    for _ in range(15):
        gain = (dense & ~covered).sum(1)
        expected.append(int(np.argmax(gain)))
        covered |= dense[expected[-1]]
    np.testing.assert_array_equal(max_coverage(indptr, indices, 15, np.random.default_rng(0)), expected)
    with pytest.raises(ValueError, match=r"delta=1\.5.*max_edges=100\b.*edges"):
        coverage_graph(x, 1.5, max_edges=100)


def test_probcover_covers_more_than_random():
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(20, 16))
    sizes = rng.integers(5, 40, size=20)
    emb = np.repeat(centers, sizes, axis=0) + 0.3 * rng.normal(size=(sizes.sum(), 16))
    ds = make_dataset(emb)
    x = unit(emb)
    sub = hp.select.probcover(ds, size=20, n_pseudo_labels=20)
    delta = hp.provenance(sub)[-1]["params"]["delta_used"][0]
    assert 0 < delta < 2
    d = pairwise(x)

    def coverage(ids):
        return (d[np.asarray(ids)] < delta).any(0).mean()

    ours = coverage(sub["row_id"])
    random = [coverage(hp.select.random(ds, size=20, seed=s)["row_id"]) for s in range(20)]
    assert ours > max(random) and ours > np.mean(random) + 0.1, (ours, np.mean(random))


def test_probcover_on_an_ivf_graph_covers_about_as_much_as_on_the_exact_one():
    rng = np.random.default_rng(4)
    centers = rng.normal(size=(30, 16))
    emb = centers[rng.integers(0, 30, 3000)] + 0.3 * rng.normal(size=(3000, 16))
    ds = make_dataset(emb)
    d = pairwise(unit(emb))
    exact = hp.select.probcover(ds, size=30, delta=0.6)
    approx = hp.select.probcover(ds, size=30, delta=0.6, knn_index="ivf")

    def coverage(ids):
        return (d[np.asarray(ids)] < 0.6).any(0).mean()

    assert coverage(approx["row_id"]) >= coverage(exact["row_id"]) - 0.02
    graph = hp.provenance(approx)[-1]["knn"]["reports"][-1]
    assert graph["index"] == "ivf" and graph["radius"] == 0.6 and graph["recall_measured"] is True
    assert 0.8 < graph["recall_at_k"] <= 1.0
    assert graph["edges"] == hp.provenance(approx)[-1]["params"]["graph_edges"][0] <= (d < 0.6).sum()
    assert hp.provenance(exact)[-1]["knn"]["reports"][-1]["edges"] == (d < 0.6).sum()


def test_probcover_purity_rule_on_separated_blobs():
    emb, blob, _ = cored_blobs([50, 50, 50, 50], seed=3, core_fraction=0.5)
    sub = hp.select.probcover(make_dataset(emb), size=4, n_pseudo_labels=4, purity=0.95)
    delta = hp.provenance(sub)[-1]["params"]["delta_used"][0]
    d = pairwise(unit(emb))
    other = blob[:, None] != blob[None]
    pure = lambda r: np.mean([not (other[i] & (d[i] < r)).any() for i in range(len(d))])  # noqa: E731
    assert pure(delta * 0.999) >= 0.95 and pure(delta * 1.001) < 0.95  # k-means finds the blobs exactly here
    assert sorted(blob[np.array(sub["row_id"])]) == [0, 1, 2, 3]


def test_probcover_records_its_radius_and_graph(blobs):
    ds, _, _ = blobs
    sub = hp.select.probcover(ds, fraction=0.2, label_column="label", seed=1)
    step = hp.provenance(sub)[-1]
    assert step["method"] == "probcover" and len(step["params"]["delta_used"]) == 3
    x = unit(np.array(ds["emb"]))
    edges = hp.provenance(hp.select.probcover(ds, size=5, delta=0.3))[-1]["params"]["graph_edges"]
    assert edges == [int((pairwise(x) < 0.3).sum())]


def test_probcover_bad_input(blobs):
    ds, _, _ = blobs
    for kwargs, word in [
        ({"delta": 0}, "delta"),
        ({"delta": -1.0}, "delta"),
        ({"delta": float("nan")}, "delta"),
        ({"delta": "big"}, "delta"),
        ({"purity": 0}, "purity"),
        ({"purity": 1.5}, "purity"),
        ({"n_pseudo_labels": 1}, "n_pseudo_labels"),
        ({"max_edges": 0}, "max_edges"),
        ({"max_edges": 2.5}, "max_edges"),
        ({"n_init": 0}, "n_init"),
    ]:
        with pytest.raises(ValueError, match=word):
            hp.select.probcover(ds, size=3, **kwargs)


def test_kmeans_init_and_plus_plus_seeding():
    from hf_prune.ops.kmeans import kmeans
    from hf_prune.select.typiclust import kmeans_plus_plus

    emb, blob, _ = cored_blobs([30, 30, 30, 30])
    x = unit(emb).astype(np.float32)
    # Seeds drawn ∝ squared distance land in 4 different blobs far more often than uniform seeds
    # (4!/4⁴ ≈ 9%): a seed in an already seeded blob needs a halo point (7.5% with these seeds).
    spread = [len(set(blob[kmeans_plus_plus(x, 4, np.random.default_rng(s))])) == 4 for s in range(100)]
    assert np.mean(spread) > 0.8
    centers = np.stack([x[blob == b].mean(0) for b in range(4)])
    for backend in ("faiss", "torch"):
        _, assign, _ = kmeans(x, 4, init=centers, backend=backend)
        np.testing.assert_array_equal(assign, blob)  # started at the true centres, Lloyd stays there
    with pytest.raises(ValueError, match="init"):
        kmeans(x, 4, init=centers[:3])


def textbook_plus_plus(x, n, rng):
    """k-means++ in its textbook form, on one float64 copy of the rows."""
    x64 = x.astype(np.float64)
    sq = (x64 * x64).sum(1)
    seeds = [int(rng.integers(len(x)))]
    nearest = np.maximum(sq - 2 * (x64 @ x64[seeds[0]]) + sq[seeds[0]], 0.0)
    for _ in range(1, n):
        cumulative = np.cumsum(nearest)
        seeds.append(min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), len(x) - 1))
        nearest = np.minimum(nearest, np.maximum(sq - 2 * (x64 @ x64[seeds[-1]]) + sq[seeds[-1]], 0.0))
    return np.array(seeds)


def test_plus_plus_seeding_by_blocks_matches_a_float64_copy_and_holds_no_copy(monkeypatch):
    import tracemalloc

    tc = importlib.import_module("hf_prune.select.typiclust")  # the module, not the selector function


    monkeypatch.setattr(tc, "SEEDING_BLOCK_ROWS", 1000)  # several blocks, one of them partial
    x = np.random.default_rng(0).standard_normal((5500, 64)).astype(np.float32)
    for seed in range(3):
        np.testing.assert_array_equal(tc.kmeans_plus_plus(x, 25, np.random.default_rng(seed)),
                                      textbook_plus_plus(x, 25, np.random.default_rng(seed)))
    # On clustered rows the triangle bound spares most rows of the later seeds, with the same seeds.
    rng = np.random.default_rng(5)
    centres = rng.normal(scale=4.0, size=(40, 16))
    blobs = (centres[rng.integers(0, 40, 6000)] + rng.normal(size=(6000, 16))).astype(np.float32)
    measured = []
    products = tc._products
    monkeypatch.setattr(tc, "_products", lambda x, c, out, rows=None, run=map, dtype=np.float64: (
        measured.append(len(out)), products(x, c, out, rows, run, dtype))[1])
    for seed in range(3):
        np.testing.assert_array_equal(tc.kmeans_plus_plus(blobs, 60, np.random.default_rng(seed)),
                                      textbook_plus_plus(blobs, 60, np.random.default_rng(seed)))
    assert sum(measured) < 0.5 * 3 * 60 * len(blobs)  # 37% here: the first 40 seeds (one per blob) read most rows
    # Memory: rows enough that a copy of them stands out from the 1,000-row blocks (0.77 MB in float32
    # and float64) and the few length-N vectors.
    x = np.random.default_rng(1).standard_normal((20000, 64)).astype(np.float32)
    tracemalloc.start()
    tc.best_kmeans(x, 25, np.random.default_rng(0), n_init=1)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < x.size * 8 / 2  # well under the float64 copy (10.2 MB) the seeding used to make


def test_plus_plus_seeding_in_float32_does_not_depend_on_threads_and_skips_duplicates():
    from hf_prune.ops.threads import held_threads

    tc = importlib.import_module("hf_prune.select.typiclust")
    # Large enough that BLAS splits the products over both threads.
    x = normalize_rows(np.random.default_rng(3).standard_normal((40000, 384))).astype(np.float32)
    with held_threads(1):
        one = tc.kmeans_plus_plus(x, 30, np.random.default_rng(0))
    with held_threads(2):
        two = tc.kmeans_plus_plus(x, 30, np.random.default_rng(0))
    np.testing.assert_array_equal(one, two)
    # A seed's duplicates count as distance zero although their float32 products round. Two rows repeated
    # 5,000 times each, whose ‖x‖² − 2x·x + ‖x‖² rounds above zero in float32, and a row 0.96 from each:
    # the first pass is float64, the later ones float32, and drawn from the rounding residues the last
    # seeds would be duplicates.
    rng = np.random.default_rng(4)
    groups = []
    while len(groups) < 2:
        row = (rng.standard_normal(384) * 3.7).astype(np.float32)
        residue = 2 * (row.astype(np.float64) ** 2).sum() - 2 * tc._products(row[None], row.astype(np.float64),
                                                                              np.empty(1), dtype=np.float32)[0]
        if residue > 2e-4:
            groups.append(row)
    rows = np.vstack([np.repeat(groups[0][None], 5000, axis=0), np.repeat(groups[1][None], 5000, axis=0),
                      groups[0] + np.float32(0.05), groups[1] + np.float32(0.05)])
    for seed in range(10):
        seeds = tc.kmeans_plus_plus(rows, 4, np.random.default_rng(seed))
        assert len({tuple(rows[s]) for s in seeds}) == 4  # four different points, no duplicate drawn
    # Rows far from the origin for their spread: float32 products would cancel, so they stay float64,
    # and the seeds are those of float64 products.
    far = (1000.0 + np.random.default_rng(5).standard_normal((3000, 8))).astype(np.float32)
    for seed in range(3):
        np.testing.assert_array_equal(tc.kmeans_plus_plus(far, 20, np.random.default_rng(seed)),
                                      textbook_plus_plus(far, 20, np.random.default_rng(seed)))


def test_plus_plus_init_draws_from_the_rows_kmeans_trains_on(monkeypatch):
    tc = importlib.import_module("hf_prune.select.typiclust")
    x = np.random.default_rng(2).standard_normal((3000, 8)).astype(np.float32)
    # Up to the training size (65,536 rows here): the seeds of all rows, the same draws.
    np.testing.assert_array_equal(tc.kmeans_plus_plus_init(x, 12, np.random.default_rng(0)),
                                  x[tc.kmeans_plus_plus(x, 12, np.random.default_rng(0))])
    # Beyond it: a seeded sample of that size, and the seeds are rows of the sample.
    monkeypatch.setattr(tc, "default_train_size", lambda k: 500)
    pools = []
    real = tc.kmeans_plus_plus
    monkeypatch.setattr(tc, "kmeans_plus_plus", lambda rows, k, rng, sq=None: (pools.append(len(rows)),
                                                                              real(rows, k, rng, sq=sq))[1])
    init = tc.kmeans_plus_plus_init(x, 12, np.random.default_rng(0))
    again = tc.kmeans_plus_plus_init(x, 12, np.random.default_rng(0))
    assert pools == [500, 500] and init.shape == (12, 8)
    np.testing.assert_array_equal(init, again)
    assert all((x == row).all(axis=1).any() for row in init)


def test_clusters_searched_on_parallel_workers_keep_the_rows_and_the_search_log_order():
    from hf_prune.ops.threads import held_threads, thread_policy

    rng = np.random.default_rng(7)
    centres = rng.normal(size=(40, 24))
    x = (centres[rng.integers(0, 40, 6000)] + 0.4 * rng.normal(size=(6000, 24))).astype(np.float32)
    ds = make_dataset(x)
    picks, logs = [], []
    for threads, policy in ((1, True), (2, True), (2, False)):
        with held_threads(threads), thread_policy(policy):
            out = hp.select.typiclust(ds, size=120, n_clusters=40, seed=0)
            dedup = hp.select.semdedup(ds, size=3000, seed=0)
        picks.append((out["row_id"], dedup["row_id"]))
        record = hp.provenance(out)[-1]["knn"]
        logs.append((record["searches"], [report["rows"] for report in record["reports"]]))
    assert picks[0] == picks[1] == picks[2]
    # One search per visited cluster, recorded in the order of first visits (largest cluster first).
    searches, sizes = logs[0]
    assert logs[0] == logs[1] == logs[2] and searches == 40 and sizes == sorted(sizes, reverse=True)
