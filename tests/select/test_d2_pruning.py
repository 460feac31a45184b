import importlib.util
from math import exp
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

import hf_prune as hp
from hf_prune.select.d2_pruning import d2_graph, d2_message_passing, d2_select
from tests.conftest import make_dataset

REFERENCES = Path(__file__).resolve().parents[2] / "recipes" / "benchmarks" / "references" / "infomax.py"

# Five points on a line; with k = 1 the undirected k-NN graph is the path 0–1–2–3–4.
LINE = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]])
LINE_SCORES = np.array([1.0, 2.0, 3.0, 1.0, 2.0])


def test_graph_on_a_line():
    neighbours, distances = d2_graph(LINE, 1)
    np.testing.assert_array_equal(neighbours.ravel(), [1, 0, 1, 2, 3])
    np.testing.assert_allclose(distances.ravel(), [1, 1, 2, 3, 4])


def test_hand_computed_forward_and_reverse_passes():
    neighbours, distances = d2_graph(LINE, 1)
    # Forward: s_i + Σ_j exp(−d_ij)·s_j over the path's edges (γ_f = 1).
    forward = [
        1 + exp(-1) * 2,
        2 + exp(-1) * 1 + exp(-2) * 3,
        3 + exp(-2) * 2 + exp(-3) * 1,
        1 + exp(-3) * 3 + exp(-4) * 2,
        2 + exp(-4) * 1,
    ]
    np.testing.assert_allclose(d2_message_passing(LINE_SCORES, neighbours, distances), forward)
    # Reverse (γ_r = 1): pick 2 (3.32); its neighbours 1 and 3 drop by 3.32·e^-2 and 3.32·e^-3.
    s1 = forward[1] - forward[2] * exp(-2)
    s3 = forward[3] - forward[2] * exp(-3)
    assert s1 > forward[4] > forward[0]  # so 1 comes next, and lowers node 0 by s1·e^-1
    s0 = forward[0] - s1 * exp(-1)
    assert forward[4] > s3 > s0  # then 4, which lowers 3 by forward[4]·e^-4, still above 0
    assert s3 - forward[4] * exp(-4) > s0
    picks = d2_select(LINE_SCORES, neighbours, distances, budget=5)
    np.testing.assert_array_equal(picks, [2, 1, 4, 3, 0])
    # Top-4 by the forward scores would keep 0 (next to the picked 1) instead of 3.
    assert set(np.argsort(forward)[::-1][:4]) == {2, 1, 4, 0}
    ds = make_dataset(LINE, score=LINE_SCORES.astype(np.float32))
    assert hp.select.d2_pruning(ds, size=4, score_column="score", k=1)["row_id"] == [1, 2, 3, 4]


def test_gamma_controls_the_messages():
    neighbours, distances = d2_graph(LINE, 1)
    # γ_f → ∞ silences the forward messages; γ_r = 0 subtracts the full picked score from neighbours.
    np.testing.assert_allclose(d2_message_passing(LINE_SCORES, neighbours, distances, gamma_f=1e9), LINE_SCORES)
    picks = d2_select(LINE_SCORES, neighbours, distances, budget=3, gamma_f=1e9, gamma_r=0.0)
    # Pick 2 (3) → 1 and 3 become 2−3 = −1 and 1−3 = −2; then 4 (2) → 3 becomes −4; then 0 (1).
    np.testing.assert_array_equal(picks, [2, 4, 0])


def test_selection_spreads_over_clusters_where_top_k_does_not():
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=10, size=(3, 4))
    cluster = np.repeat([0, 1, 2], 12)
    emb = centers[cluster] + 0.1 * rng.normal(size=(36, 4))
    score = np.where(cluster == 0, 0.9, np.where(cluster == 1, 0.5, 0.2)) + 0.05 * rng.random(36)
    ds = make_dataset(emb, score=score.astype(np.float32), cluster=cluster)
    assert np.bincount(cluster[np.argsort(-score)[:6]], minlength=3).tolist() == [6, 0, 0]
    for k in [5, 10]:
        sub = hp.select.d2_pruning(ds, size=6, score_column="score", k=k)
        counts = np.bincount(np.array(sub["cluster"]), minlength=3)
        assert (counts >= 1).all() and counts.max() <= 3, (k, counts)


def test_matches_the_dense_reference_implementation():
    spec = importlib.util.spec_from_file_location("infomax_references", REFERENCES)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(150, 6))
    score = rng.random(150)
    neighbours, distances = d2_graph(emb, 6)
    # Full budget with γ_r = 0 drives scores negative, so the heap also sees scores that rise.
    for budget, gamma_f, gamma_r in [(20, 1.0, 1.0), (75, 0.5, 2.0), (150, 1.0, 0.0)]:
        picks = d2_select(score, neighbours, distances, budget=budget, gamma_f=gamma_f, gamma_r=gamma_r)
        expected = ref.reference_d2_pruning(score, emb, budget, k=6, gamma_f=gamma_f, gamma_r=gamma_r)
        np.testing.assert_array_equal(picks, expected)


def test_per_class_graphs_no_seed_and_params(blobs):
    ds, _, labels = blobs
    sub = hp.select.d2_pruning(ds, fraction=0.2, score_column="score", label_column="label", k=5, seed=0)
    ids = np.array(sub["row_id"])
    # No random choice: the same rows for any seed.
    again = hp.select.d2_pruning(ds, fraction=0.2, score_column="score", label_column="label", k=5, seed=7)
    assert again["row_id"] == sub["row_id"]
    # Each class runs alone on its own graph.
    scores = np.array(ds["score"], dtype=np.float64)
    emb = np.array(ds["emb"], dtype=np.float32)
    for c in range(3):
        rows = np.flatnonzero(labels == c)
        budget = int((labels[ids] == c).sum())
        picks = d2_select(scores[rows], *d2_graph(emb[rows], 5), budget=budget)
        assert sorted(rows[picks].tolist()) == sorted(ids[labels[ids] == c].tolist())
    step = hp.provenance(sub)[-1]
    assert step["method"] == "d2_pruning"
    assert step["params"]["k"] == 5 and step["params"]["gamma_r"] == 1.0 and step["params"]["label_column"] == "label"


def test_normalize_uses_unit_vectors():
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(30, 4))
    scaled = emb * rng.uniform(1, 50, size=(30, 1))
    score = rng.random(30).astype(np.float32)
    a = hp.select.d2_pruning(make_dataset(emb, score=score), size=8, score_column="score", k=4, metric="cosine")
    b = hp.select.d2_pruning(make_dataset(scaled, score=score), size=8, score_column="score", k=4, metric="cosine")
    assert a["row_id"] == b["row_id"]


def test_bad_input(blobs):
    ds, emb, _ = blobs
    with pytest.raises(ValueError, match="`k`"):
        hp.select.d2_pruning(ds.select(range(5)), size=2, score_column="score", k=5)
    with pytest.raises(ValueError, match="`k`"):  # per class: the smallest class has 20 rows
        hp.select.d2_pruning(ds, fraction=0.5, score_column="score", k=25, label_column="label")
    with pytest.raises(ValueError, match="'s'.*negative"):
        hp.select.d2_pruning(make_dataset(emb, s=np.linspace(-1, 1, 90)), fraction=0.1, score_column="s")
    bad = np.ones(90)
    bad[3] = np.nan
    with pytest.raises(ValueError, match="'s'.*NaN"):
        hp.select.d2_pruning(make_dataset(emb, s=bad), fraction=0.1, score_column="s")
    ragged = Dataset.from_dict({"emb": [[1.0, 2.0], [1.0], [0.0, 1.0]], "s": [0.1, 0.2, 0.3]})
    with pytest.raises(ValueError, match="ragged"):
        hp.select.d2_pruning(ragged, size=1, score_column="s", k=1)
    for kwargs, word in [

        ({"fraction": 0.1, "gamma_f": -1.0}, "gamma_f"), ({"fraction": 0.1, "gamma_r": float("nan")}, "gamma_r"), ({"fraction": 0.1, "k": 0}, "`k`"),
        ({"fraction": 0.1, "knn_index": "annoy"}, "knn_index"),
    ]:
        with pytest.raises(ValueError, match=word):
            hp.select.d2_pruning(ds, score_column="score", **kwargs)
    with pytest.raises(ValueError, match="budget"):
        d2_select(LINE_SCORES, *d2_graph(LINE, 1), budget=6)


def test_ties_go_to_the_lower_row():
    neighbours, distances = d2_graph(LINE, 1)
    np.testing.assert_array_equal(d2_select(np.zeros(5), neighbours, distances, budget=5), [0, 1, 2, 3, 4])
    # Equal scores on an isolated pair: the lower index is picked first, then the reverse message
    # lowers its neighbour.
    pair = np.array([[0.0], [0.0], [100.0], [200.0]])
    picks = d2_select(np.array([1.0, 1.0, 0.5, 0.5]), *d2_graph(pair, 1), budget=2, gamma_f=1e9)
    np.testing.assert_array_equal(picks, [0, 2])


# ------------------------------------------------------------------------------ ordered selection


def pick_order(sub, rank_column="rank"):
    """Kept row ids in pick order (a single group)."""
    return np.array(sub["row_id"])[np.argsort(sub[rank_column], kind="stable")]


def test_rank_and_gains_by_hand():
    # The reverse pass of test_hand_computed_forward_and_reverse_passes picks 2, 1, 4, 3, 0; each
    # gain is the score the node had when it was picked.
    neighbours, distances = d2_graph(LINE, 1)
    forward = d2_message_passing(LINE_SCORES, neighbours, distances)
    s1 = forward[1] - forward[2] * exp(-2)
    s3 = forward[3] - forward[2] * exp(-3) - forward[4] * exp(-4)
    s0 = forward[0] - s1 * exp(-1)
    ds = make_dataset(LINE, score=LINE_SCORES.astype(np.float32))
    # The full budget with a rank column runs the reverse pass (without one, every row is kept as is).
    sub = hp.select.d2_pruning(ds, size=5, score_column="score", k=1, rank_column="rank", gain_column="gain")
    assert sub["row_id"] == [0, 1, 2, 3, 4] and sub["rank"] == [4, 1, 0, 3, 2]
    np.testing.assert_allclose(sub["gain"], [s0, s1, forward[2], s3, forward[4]], rtol=1e-12)
    assert sub.features["rank"].dtype == "int64" and sub.features["gain"].dtype == "float64"


def test_initial_rows_down_weight_their_neighbours_by_hand():
    neighbours, distances = d2_graph(LINE, 1)
    forward = d2_message_passing(LINE_SCORES, neighbours, distances)
    # Row 3 is kept first: it lowers 2 (d=3) and 4 (d=4) by forward[3]·e^-d. Row 2 is still the best,
    # it lowers 1 (d=2); then 1 (2.33) beats 4 (2.00) and 0 (1.74).
    s2 = forward[2] - forward[3] * exp(-3)
    s4 = forward[4] - forward[3] * exp(-4)
    s1 = forward[1] - s2 * exp(-2)
    assert s2 > forward[1] > s4 > forward[0] and s1 > s4
    picks, gains = d2_select(LINE_SCORES, neighbours, distances, budget=3, initial=[3], return_gains=True)
    np.testing.assert_array_equal(picks, [3, 2, 1])
    np.testing.assert_allclose(gains, [forward[3], s2, s1], rtol=1e-12)
    # Without row 3, 4 would come right after 2 and 1: the initial row changed the order.
    np.testing.assert_array_equal(d2_select(LINE_SCORES, neighbours, distances, budget=3), [2, 1, 4])
    ds = make_dataset(LINE, score=LINE_SCORES.astype(np.float32))
    sub = hp.select.d2_pruning(ds, size=3, score_column="score", k=1, initial_subset=[3], rank_column="rank")
    assert sub["row_id"] == [1, 2, 3] and sub["rank"] == [2, 1, 0]
    # The whole budget given as initial rows: exactly those rows, in the given order.
    sub = hp.select.d2_pruning(ds, size=2, score_column="score", k=1, initial_subset=[4, 0],
                               rank_column="rank")
    assert sub["row_id"] == [0, 4] and sub["rank"] == [1, 0]


def test_smaller_budget_is_a_prefix_and_initial_rows_continue_a_run(blobs):
    ds, _, labels = blobs
    kwargs = dict(score_column="score", k=5, rank_column="rank")
    small, large = hp.select.d2_pruning(ds, size=10, **kwargs), hp.select.d2_pruning(ds, size=30, **kwargs)
    np.testing.assert_array_equal(pick_order(small), pick_order(large)[:10])
    assert sorted(large["rank"]) == list(range(30))
    # Starting from the first 12 picks of the 30-row run gives that run back, order included.
    first = pick_order(large)[:12].tolist()
    resumed = hp.select.d2_pruning(ds, size=30, initial_subset=first, **kwargs)
    assert resumed["row_id"] == large["row_id"] and resumed["rank"] == large["rank"]
    # Per class: each class has its own order, and the 4/3/2 budgets are prefixes of 12/9/6.
    small = hp.select.d2_pruning(ds, fraction=0.1, label_column="label", **kwargs)
    large = hp.select.d2_pruning(ds, fraction=0.3, label_column="label", **kwargs)
    for c in range(3):
        s_ids, l_ids = np.array(small["row_id"]), np.array(large["row_id"])
        s_order = s_ids[labels[s_ids] == c][np.argsort(np.array(small["rank"])[labels[s_ids] == c])]
        l_order = l_ids[labels[l_ids] == c][np.argsort(np.array(large["rank"])[labels[l_ids] == c])]
        np.testing.assert_array_equal(s_order, l_order[: len(s_order)])
    assert sorted(large["rank"]) == sorted([*range(12), *range(9), *range(6)])


def test_initial_subset_continuation_matches_d2_select(blobs):
    ds, emb, labels = blobs
    scores = np.array(ds["score"], dtype=np.float64)
    initial = [50, 3, 77]  # rows of classes 1, 0 and 2, in that order
    sub = hp.select.d2_pruning(ds, size=15, score_column="score", k=5, initial_subset=initial,
                               rank_column="rank", gain_column="gain")
    picks, gains = d2_select(scores, *d2_graph(emb, 5), budget=15, initial=initial, return_gains=True)
    np.testing.assert_array_equal(pick_order(sub), picks)
    np.testing.assert_allclose(np.array(sub["gain"])[np.argsort(sub["rank"])], gains)
    assert pick_order(sub)[:3].tolist() == initial
    # Per class, each initial row starts its own class's order.
    sub = hp.select.d2_pruning(ds, fraction=0.2, score_column="score", k=5, label_column="label",
                               initial_subset=initial, rank_column="rank")
    ranks = dict(zip(sub["row_id"], sub["rank"]))
    assert [ranks[i] for i in initial] == [0, 0, 0]
    rows = np.flatnonzero(labels == 1)
    expected = d2_select(scores[rows], *d2_graph(emb[rows], 5), budget=6, initial=[50 - 40])
    assert sorted(rows[expected].tolist()) == [i for i in sub["row_id"] if labels[i] == 1]


def test_ordering_leaves_the_default_selection_unchanged(blobs):
    ds, _, _ = blobs
    before = ds[:]
    for kwargs in [dict(size=20), dict(fraction=0.3, label_column="label"), dict(fraction=1.0)]:
        plain = hp.select.d2_pruning(ds, score_column="score", k=5, **kwargs)
        ranked = hp.select.d2_pruning(ds, score_column="score", k=5, rank_column="rank", gain_column="gain",
                                      **kwargs)
        assert plain.column_names == ds.column_names + ["row_id"]
        assert ranked.remove_columns(["rank", "gain"])[:] == plain[:]
    assert ds[:] == before


def test_ordered_bad_input(blobs):
    ds, _, _ = blobs
    for kwargs, pattern in [
        ({"initial_subset": [90]}, r"`initial_subset`.*\[0, 90\)"),
        ({"initial_subset": [-1]}, "`initial_subset`"),
        ({"initial_subset": [3, 3]}, "`initial_subset`.*distinct"),
        ({"initial_subset": [0.5]}, "`initial_subset`"),
        ({"initial_subset": [[1, 2]]}, "`initial_subset`"),
        ({"initial_subset": list(range(6))}, r"`initial_subset` has 6 rows, more than the budget \(5\)"),
        ({"initial_subset": list(range(3)), "label_column": "label"}, r"`initial_subset`.*budget is 2"),
        ({"rank_column": "score"}, "'score' already exists"),
        ({"rank_column": "row_id"}, "`rank_column`"),
        ({"rank_column": "r", "gain_column": "r"}, "must differ"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            hp.select.d2_pruning(ds, size=5, score_column="score", k=5, **kwargs)
    # overwrite=True replaces an existing column.
    sub = hp.select.d2_pruning(ds, size=5, score_column="score", k=5, rank_column="score", overwrite=True)
    assert sorted(sub["score"]) == [0, 1, 2, 3, 4]
    for initial in ([5, 5], [-1], [9], [0, 1, 2]):
        with pytest.raises(ValueError, match="`initial`"):
            d2_select(LINE_SCORES, *d2_graph(LINE, 1), budget=2, initial=initial)
