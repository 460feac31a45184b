"""The ordered-selection contract of the greedy selectors: pick order, gains, prefixes, initial rows."""

import functools

import numpy as np
import pytest

import hf_prune as hp
from tests.conftest import make_dataset

SELECTORS = {
    "k_center_random": functools.partial(hp.select.k_center_greedy, init="random", seed=3),
    "k_center_first_cosine": functools.partial(hp.select.k_center_greedy, init="first", metric="cosine"),
    "k_center_mean": functools.partial(hp.select.k_center_greedy, init="mean"),
    "herding": hp.select.herding,
    "herding_random": functools.partial(hp.select.herding, init="random", seed=2),
    "gm_matching": hp.select.gm_matching,
    "gm_matching_cosine_renormalised": functools.partial(
        hp.select.gm_matching, metric="cosine", renormalize_median=True, init="mean"
    ),
    "gram_schmidt_random": functools.partial(hp.select.gram_schmidt, seed=4),
    "gram_schmidt_deterministic": functools.partial(hp.select.gram_schmidt, mode="deterministic"),
}
parametrize = pytest.mark.parametrize("selector", list(SELECTORS.values()), ids=list(SELECTORS))


def pick_order(sub, rank_column="rank"):
    """Kept row ids in pick order (a single group)."""
    return np.array(sub["row_id"])[np.argsort(sub[rank_column], kind="stable")]


def class_orders(sub, labels):
    """``{class: row ids in pick order}`` of a per-class selection."""
    ids, ranks = np.array(sub["row_id"]), np.array(sub["rank"])
    return {c: ids[labels[ids] == c][np.argsort(ranks[labels[ids] == c])] for c in np.unique(labels[ids])}


@parametrize
def test_smaller_budget_is_a_prefix_of_a_larger_one(selector, blobs):
    ds, _, labels = blobs
    # 20 picks in 8-d: Gram–Schmidt restarts its basis twice, k-center and herding run on.
    small, large = selector(ds, size=10, rank_column="rank"), selector(ds, size=20, rank_column="rank")
    np.testing.assert_array_equal(pick_order(small), pick_order(large)[:10])
    assert sorted(large["rank"]) == list(range(20)) and large.features["rank"].dtype == "int64"
    # Per class every class has its own order, and the 4/3/2 budgets are prefixes of 8/6/4.
    small = selector(ds, fraction=0.1, label_column="label", rank_column="rank")
    large = selector(ds, fraction=0.2, label_column="label", rank_column="rank")
    small_orders, large_orders = class_orders(small, labels), class_orders(large, labels)
    assert [len(o) for o in small_orders.values()] == [4, 3, 2]
    for c, order in small_orders.items():
        np.testing.assert_array_equal(order, large_orders[c][: len(order)])
    assert sorted(large["rank"]) == sorted([*range(8), *range(6), *range(4)])


@parametrize
def test_default_output_is_unchanged_by_the_ordering(selector, blobs):
    ds, _, _ = blobs
    fingerprint = ds._fingerprint
    plain = selector(ds, size=12)
    ranked = selector(ds, size=12, rank_column="rank", gain_column="gain")
    assert plain.column_names == [*ds.column_names, "row_id"]
    assert ranked.column_names == [*ds.column_names, "row_id", "rank", "gain"]
    assert plain["row_id"] == ranked["row_id"]
    assert ranked.features["gain"].dtype == "float64" and np.isfinite(ranked["gain"]).sum() >= 11
    params = hp.provenance(plain)[-1]["params"]
    assert params["rank_column"] is None and params["initial_subset"] is None and "gain_column" not in params
    assert hp.provenance(ranked)[-1]["params"]["gain_column"] == "gain"
    assert ds._fingerprint == fingerprint and "row_id" not in ds.column_names


@parametrize
def test_initial_subset_continues_the_greedy(selector, blobs):
    ds, _, labels = blobs
    free = selector(ds, size=12, rank_column="rank", gain_column="gain")
    order = pick_order(free)
    for j in (1, 5, 12):
        again = selector(ds, size=12, initial_subset=order[:j].tolist(), rank_column="rank", gain_column="gain")
        assert again["row_id"] == free["row_id"] and again["rank"] == free["rank"]
        np.testing.assert_array_equal(again["gain"], free["gain"])
        assert hp.provenance(again)[-1]["params"]["initial_subset"] == order[:j].tolist()
    # Per class: the first two picks of each class as initial rows give the same selection.
    free = selector(ds, fraction=0.2, label_column="label", rank_column="rank")
    start = [int(i) for o in class_orders(free, labels).values() for i in o[:2]]
    again = selector(ds, fraction=0.2, label_column="label", rank_column="rank", initial_subset=start)
    assert again["row_id"] == free["row_id"] and again["rank"] == free["rank"]


@parametrize
def test_initial_rows_come_first_and_count_towards_the_budget(selector, blobs):
    ds, _, _ = blobs
    sub = selector(ds, size=12, initial_subset=[50, 7], rank_column="rank")
    ranks = dict(zip(sub["row_id"], sub["rank"]))
    assert len(sub) == 12 and ranks[50] == 0 and ranks[7] == 1
    # Without rank_column the initial rows are still kept (and nothing else changes).
    assert selector(ds, size=12, initial_subset=np.array([50, 7]))["row_id"] == sub["row_id"]
    per_class = selector(ds, fraction=0.1, label_column="label", initial_subset=[0, 45, 46], rank_column="rank")
    kept = dict(zip(per_class["row_id"], per_class["rank"]))
    assert kept[0] == 0 and kept[45] == 0 and kept[46] == 1 and len(per_class) == 9


@parametrize
def test_bad_input_names_the_parameter(selector, blobs):
    ds, _, _ = blobs
    with pytest.raises(ValueError, match=r"`initial_subset` must hold distinct row positions in \[0, 90\)"):
        selector(ds, size=5, initial_subset=[3, 3])
    with pytest.raises(ValueError, match="`initial_subset` must hold distinct"):
        selector(ds, size=5, initial_subset=[90])
    with pytest.raises(ValueError, match="`initial_subset` must hold distinct"):
        selector(ds, size=5, initial_subset=[-1])
    with pytest.raises(ValueError, match="`initial_subset` must be a sequence"):
        selector(ds, size=5, initial_subset=[1.5])
    with pytest.raises(ValueError, match=r"`initial_subset` has 3 rows, more than the budget \(2\)"):
        selector(ds, size=2, initial_subset=[1, 2, 3])
    with pytest.raises(ValueError, match="`initial_subset` has 3 rows in a group whose budget is 2"):
        selector(ds, fraction=0.1, label_column="label", initial_subset=[80, 81, 82])
    # size=2 splits 40/30/20 rows into budgets 1/1/0: a row of the last class cannot be kept.
    with pytest.raises(ValueError, match="`initial_subset` has 1 rows in a group whose budget is 0"):
        selector(ds, size=2, label_column="label", initial_subset=[85])
    with pytest.raises(ValueError, match="`rank_column`"):
        selector(ds, size=5, rank_column="row_id")
    with pytest.raises(ValueError, match="`gain_column`"):
        selector(ds, size=5, gain_column="")
    with pytest.raises(ValueError, match="must differ"):
        selector(ds, size=5, rank_column="r", gain_column="r")
    ranked = selector(ds, size=10, rank_column="rank", gain_column="gain")
    with pytest.raises(ValueError, match="'rank' already exists"):
        selector(ranked, size=5, rank_column="rank")
    with pytest.raises(ValueError, match="'gain' already exists"):
        selector(ranked, size=5, gain_column="gain")
    again = selector(ranked, size=5, rank_column="rank", gain_column="gain", overwrite=True)
    assert sorted(again["rank"]) == list(range(5))
    assert ranked["rank"] == selector(ds, size=10, rank_column="rank")["rank"]  # input untouched


def test_chained_selection_takes_positions_in_its_own_input(blobs):
    ds, emb, _ = blobs
    first = hp.select.k_center_greedy(ds, size=30, init="first", rank_column="rank")
    # Positions are into the dataset passed in (here the 30-row subset), not row ids of the original.
    second = hp.select.k_center_greedy(first.remove_columns("rank"), size=5, initial_subset=[29], rank_column="rank")
    assert dict(zip(second["row_id"], second["rank"]))[first["row_id"][29]] == 0
    np.testing.assert_allclose(np.array(second["emb"]), emb[second["row_id"]])


def test_helper_rejects_an_order_that_drops_the_initial_rows():
    from hf_prune.select._ordered import run_ordered_selection

    ds = make_dataset(np.zeros((6, 2)))

    def order(rows, budget, rng, initial):
        return np.arange(budget)  # ignores `initial`

    with pytest.raises(RuntimeError, match="must start with this group's initial rows"):
        run_ordered_selection(ds, method="broken", params={}, fraction=None, size=3, seed=0, label_column=None,
                              order=order, initial_subset=[5])
    with pytest.raises(TypeError, match="no gains"):
        run_ordered_selection(ds, method="broken", params={}, fraction=None, size=3, seed=0, label_column=None,
                              order=order, gain_column="gain")


SUBMODULAR = [hp.select.facility_location, hp.select.graph_cut, hp.select.log_determinant,
              hp.select.disparity_sum, hp.select.disparity_min]


@pytest.mark.parametrize("selector", [*SELECTORS.values(), *SUBMODULAR],
                         ids=[*SELECTORS, *(f.__name__ for f in SUBMODULAR)])
def test_initial_rows_in_a_class_without_budget_are_an_error(selector, blobs):
    ds, _, _ = blobs
    # size=2 splits 40/30/20 rows into budgets 1/1/0: row 85 (last class) cannot be kept. The
    # submodular selectors used to drop it silently.
    kwargs = {"k": 5} if selector in (hp.select.facility_location, hp.select.graph_cut) else {}
    with pytest.raises(ValueError, match="`initial_subset` has 1 rows in a group whose budget is 0"):
        selector(ds, size=2, label_column="label", initial_subset=[85], **kwargs)
    assert len(selector(ds, size=2, label_column="label", initial_subset=[45], **kwargs)) == 2


# --- prefix: a smaller budget from one ranked run ---------------------------------------------------


# The prefix property itself is tested above for every greedy; `prefix` needs a random, a deterministic
# and a submodular one.
@pytest.mark.parametrize("selector", [SELECTORS["k_center_random"], SELECTORS["gram_schmidt_deterministic"],
                                      hp.select.facility_location],
                         ids=["k_center_random", "gram_schmidt_deterministic", "facility_location"])
def test_prefix_is_the_smaller_budget_s_selection(selector, blobs):
    ds, _, labels = blobs
    kwargs = {"k": 5} if selector in (hp.select.facility_location, hp.select.graph_cut) else {}
    ranked = selector(ds, size=20, rank_column="rank", **kwargs)
    first = hp.select.prefix(ranked, size=8)
    direct = selector(ds, size=8, rank_column="rank", **kwargs)
    assert first["row_id"] == direct["row_id"] and first["rank"] == direct["rank"]
    assert first.column_names == ranked.column_names
    # Per class: 8/6/4 ranked rows, size=9 → 4/3/2 by the same largest-remainder split, each class's
    # first picks; here that is also the direct per-class run's split of 9 over 40/30/20 rows.
    ranked = selector(ds, fraction=0.2, label_column="label", rank_column="rank", **kwargs)
    first = hp.select.prefix(ranked, size=9)
    direct = selector(ds, fraction=0.1, label_column="label", rank_column="rank", **kwargs)
    assert np.bincount(labels[first["row_id"]]).tolist() == [4, 3, 2]
    assert first["row_id"] == direct["row_id"] and first["rank"] == direct["rank"]


def test_prefix_records_a_step_and_is_not_stale_where_a_filter_is(blobs):
    ds, _, _ = blobs
    ranked = hp.select.k_center_greedy(ds, size=20, rank_column="rank", seed=1)
    first = hp.select.prefix(ranked, size=5)
    steps = hp.provenance(first)
    assert [s["method"] for s in steps] == ["k_center_greedy", "prefix"] and not any(s["stale"] for s in steps)
    assert steps[-1]["params"] == {"size": 5, "rank_column": "rank", "label_column": None}
    assert steps[-1]["output_fingerprint"] == first._fingerprint
    assert hp.select.prefix(ranked, size=5)._fingerprint == first._fingerprint
    assert hp.select.prefix(ranked, size=6)._fingerprint != first._fingerprint
    with pytest.warns(UserWarning, match="no longer describe"):
        assert hp.provenance(ranked.filter(lambda r: r < 5, input_columns="rank"))[-1]["stale"]
    # A prefix of a prefix is the smaller prefix; row ids still point at the original rows.
    again = hp.select.prefix(first, size=2)
    assert again["row_id"] == hp.select.prefix(ranked, size=2)["row_id"]
    np.testing.assert_array_equal(np.array(again["emb"]), np.array(ds.select(again["row_id"])["emb"]))
    assert sorted(again["rank"]) == [0, 1]


def test_prefix_bad_input(blobs):
    ds, _, _ = blobs
    ranked = hp.select.k_center_greedy(ds, size=10, rank_column="rank")
    with pytest.raises(KeyError, match="'order'"):
        hp.select.prefix(ranked, size=3, rank_column="order")
    for size in (0, 1.5, None):
        with pytest.raises(ValueError, match="`size`"):
            hp.select.prefix(ranked, size=size)
    with pytest.raises(ValueError, match="`size`=11 is larger than the number of rows \\(10\\)"):
        hp.select.prefix(ranked, size=11)
    with pytest.raises(ValueError, match="ordered selection made with rank_column='rank'"):
        hp.select.prefix(ranked.filter(lambda r: r < 5, input_columns="rank"), size=3)  # changed since
    with pytest.raises(ValueError, match="column 'rank' is not a pick order"):
        hp.select.prefix(ranked.map(lambda row: {"rank": 0}), size=3)  # a map keeps the step current
    unranked = hp.select.random(ds, size=10).add_column("rank", list(range(10)))
    with pytest.raises(ValueError, match="ordered selection"):
        hp.select.prefix(unranked, size=3)
    with pytest.raises(TypeError, match="Dataset"):
        hp.select.prefix(ranked.to_dict(), size=3)
