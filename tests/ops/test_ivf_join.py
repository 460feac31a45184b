"""The IVF self-join behind an IVF-Flat k-NN graph on the CPU: probes per list, exact when every list is
probed, the same table on any thread count, and its recall measured."""

import numpy as np
import pytest

from hf_prune.ops.ivf_join import ivf_self_join, ivf_self_pairs
from hf_prune.ops.knn import knn
from hf_prune.ops.knn_index import resolve_spec, trained_ivf
from hf_prune.ops.matrix import as_matrix
from hf_prune.ops.threads import held_threads
from tests.ops.test_knn_index import Blocks, brute, clustered


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_probing_every_list_is_exact_search(metric):
    x = clustered(1200, 8, centres=12)
    _, joined = knn(x, 7, metric=metric, index="ivf", nlist=12, nprobe=12)
    _, exact = knn(x, 7, metric=metric, index="flat")
    np.testing.assert_array_equal(joined, exact)
    if metric != "ip":  # inner products tie too often on these rows for an argsort reference
        np.testing.assert_array_equal(joined, brute(x, 7, metric))


def test_each_list_searches_the_lists_nearest_its_centroid():
    x = clustered(2000, 6, centres=20)
    spec = resolve_spec("ivf", len(x), 6, 5, nlist=20, nprobe=3)
    values, indices = ivf_self_join(as_matrix(x), spec, "l2", 5, seed=0)
    quantizer = (index := trained_ivf(as_matrix(x), spec, "l2", seed=0)).quantizer
    lists = quantizer.search(x, 1)[1][:, 0]
    probes = quantizer.search(quantizer.reconstruct_n(0, 20), 3)[1]
    # knn's self-search is this join (re-ranked, self dropped); a search with queries probes per query.
    _, graph = knn(x, 4, metric="l2", index="ivf", nlist=20, nprobe=3)
    _, per_query = knn(x, 5, metric="l2", index="ivf", nlist=20, nprobe=3, queries=x, exclude_self=False)
    outside = 0
    for row in range(len(x)):
        allowed = np.flatnonzero(np.isin(lists, probes[lists[row]]))
        assert np.isin(graph[row], allowed).all()
        outside += int(not np.isin(per_query[row], allowed).all())
        if row % 40:
            continue
        d2 = ((x[allowed] - x[row]) ** 2).sum(1)
        best = allowed[np.lexsort((allowed, d2))[:5]]
        assert indices[row].tolist() == best.tolist()  # the row itself first (distance 0)
        np.testing.assert_allclose(values[row], np.sort(d2)[:5], atol=1e-4)
    assert outside > 0  # the two probe rules differ on these rows
    del index


def test_the_graph_is_the_same_on_one_and_two_threads_and_from_a_column():
    x = clustered(3000, 24, centres=30)
    with held_threads(1):
        one = knn(x, 10, metric="cosine", index="ivf", nlist=40, nprobe=4)
    with held_threads(2):
        two = knn(x, 10, metric="cosine", index="ivf", nlist=40, nprobe=4)
    column = knn(Blocks(x), 10, metric="cosine", index="ivf", nlist=40, nprobe=4)
    for other in (two, column):
        np.testing.assert_array_equal(one[1], other[1])
        np.testing.assert_array_equal(one[0], other[0])
    # l2 on an array gathers each list from it (no sorted copy); from a chunked column it sorts a copy.
    in_place = knn(x, 10, metric="l2", index="ivf", nlist=40, nprobe=4)
    sorted_copy = knn(Blocks(x), 10, metric="l2", index="ivf", nlist=40, nprobe=4)
    np.testing.assert_array_equal(in_place[1], sorted_copy[1])
    np.testing.assert_array_equal(in_place[0], sorted_copy[0])


def test_recall_is_measured_and_short_lists_refilled():
    x = clustered(3000, 16, centres=30, spread=0.6)
    _, indices, report = knn(x, 10, metric="l2", index="ivf", nlist=60, nprobe=2, return_report=True,
                             recall_queries=len(x))
    exact = brute(x, 10, "l2")
    truth = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(indices, exact)])
    assert 0.3 < report["recall_at_k"] < 1.0 and report["recall_at_k"] == pytest.approx(truth, abs=1e-3)
    # Tiny lists, one probed: rows whose lists hold fewer than k + 1 rows are searched exactly.
    small = clustered(400, 4, centres=40, spread=0.05)
    _, indices, report = knn(small, 30, metric="l2", index="ivf", nlist=10, nprobe=1, return_report=True)
    assert report["refilled"] > 0 and (indices >= 0).all() and all(len(set(r)) == 30 for r in indices)


def test_crowded_lists_are_searched_in_query_blocks(monkeypatch):
    import hf_prune.ops.ivf_join as join
    from hf_prune.ops.knn import radius_neighbors

    x = clustered(2000, 8, centres=5)
    x[:600] = x[0] + 0.05 * np.random.default_rng(1).normal(size=(600, 8)).astype(np.float32)  # one dense mode
    spec = resolve_spec("ivf", len(x), 8, 5, nlist=10, nprobe=3)
    options = dict(index="ivf", nlist=10, nprobe=3)
    whole = knn(x, 6, metric="l2", **options), radius_neighbors(x, 0.1, **options)
    assert sum(q for q, *_ in ivf_self_pairs(as_matrix(x), spec, 0.01)) == len(x)
    monkeypatch.setattr(join, "_PRODUCTS", 5000)  # fewer products than one list's queries × candidates
    blocked = knn(x, 6, metric="l2", **options), radius_neighbors(x, 0.1, **options)
    for a, b in zip(whole, blocked):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    blocks = list(ivf_self_pairs(as_matrix(x), spec, 0.01))
    assert sum(q for q, *_ in blocks) == len(x) and len(blocks) > 30


def test_pairs_once_give_each_unordered_pair_one_time_and_the_same_graph():
    # nprobe 3 of 25 lists: some pairs are met from both ends (their lists probe each other), some from one.
    x = clustered(2500, 6, centres=25, spread=0.5)
    spec = resolve_spec("ivf", len(x), 6, 1, nlist=25, nprobe=3)

    def pairs(once):
        found = [(r, c) for _, rows, cols, _ in ivf_self_pairs(as_matrix(x), spec, 0.3, once=once)
                 for r, c in zip(rows.tolist(), cols.tolist())]
        return found

    both_ends = pairs(False)
    once = pairs(True)
    unordered = [(min(r, c), max(r, c)) for r, c in once]
    assert len(unordered) == len(set(unordered))  # no pair twice, self-pairs once
    assert set(unordered) == {(min(r, c), max(r, c)) for r, c in both_ends}
    # The probes are not symmetric here, so some pairs are met from one end only, and kept from it.
    assert len(set(both_ends)) < 2 * len(unordered) - sum(r == c for r, c in once)
    assert any(r > c for r, c in once)


def test_lists_trained_once_serve_a_wider_pass_over_some_rows():
    from hf_prune.ops.ivf_join import IvfLists

    x = clustered(2000, 6, centres=20)
    spec = resolve_spec("ivf", len(x), 6, 5, nlist=20, nprobe=3)
    lists = IvfLists(as_matrix(x), spec, "l2", seed=0)

    def candidates(queries, found, key, _sq, _back):
        return {int(q): set(found.tolist()) for q in queries}

    def gather(**kwargs):
        seen = {}
        for part in lists.products(candidates, **kwargs):
            seen.update(part)
        return seen

    everyone = gather()
    assert sorted(everyone) == list(range(2000))
    # The same lists as a fresh join of every row; a subset of queries gets the same candidates.
    _, fresh = ivf_self_join(as_matrix(x), spec, "l2", 5, seed=0)
    assert all(set(fresh[row]) <= everyone[row] for row in range(0, 2000, 50))
    some = np.arange(0, 2000, 7)
    subset = gather(queries=some)
    assert sorted(subset) == some.tolist() and all(subset[q] == everyone[q] for q in some)
    # Probing every list makes every row a candidate of every query.
    assert all(len(c) == 2000 for c in gather(nprobe=20, queries=some[:5]).values())
