"""Task-balanced round-robin: the hand-computed order, ties, uneven budgets, prefixes, initial rows, per class."""

import numpy as np
import pytest

import hf_prune as hp
from hf_prune.ops.columns import add_column
from hf_prune.select.round_robin import _best_rows, round_robin_order
from tests.conftest import make_dataset

# 6 rows × 3 tasks. By hand (turn t is task t mod 3, each takes its best free row, ties to the lower row):
#   t0 task 0: best row 0 (0.9)                       → 0
#   t1 task 1: best row 0 (0.95) taken → row 2 (0.8)  → 2
#   t2 task 2: rows 3 and 5 tie at 0.7 → the lower    → 3
#   t3 task 0: row 0 taken; rows 1 and 4 tie at 0.6   → 1
#   t4 task 1: rows 0, 2 taken; row 4 (0.5)           → 4
#   t5 task 2: row 3 taken → row 5 (0.7)              → 5
SCORES = np.array([
    [0.90, 0.95, 0.10],
    [0.60, 0.20, 0.00],
    [0.30, 0.80, 0.20],
    [0.10, 0.00, 0.70],
    [0.60, 0.50, 0.30],
    [0.00, 0.40, 0.70],
], dtype=np.float32)
ORDER = [0, 2, 3, 1, 4, 5]
GAINS = [0.90, 0.80, 0.70, 0.60, 0.50, 0.70]


def pool(scores=SCORES, **columns):
    return add_column(make_dataset(None, idx=list(range(len(scores))), **columns), "tasks", scores)


def pick_order(sub, rank_column="rank"):
    return np.asarray(sub["row_id"])[np.argsort(sub[rank_column], kind="stable")].tolist()


def test_hand_computed_order_ties_and_gains():
    picks, gains = round_robin_order(SCORES, 6)
    assert picks.tolist() == ORDER
    np.testing.assert_allclose(gains, GAINS, atol=1e-6)
    sub = hp.select.round_robin(pool(), size=6, score_column="tasks", rank_column="rank", gain_column="gain")
    assert pick_order(sub) == ORDER
    np.testing.assert_allclose(np.asarray(sub["gain"])[np.argsort(sub["rank"])], GAINS, atol=1e-6)
    step = hp.provenance(sub)[-1]
    assert step["method"] == "round_robin" and step["params"]["tasks"] == 3


def test_a_task_s_best_rows_are_a_stable_sort_s_first_even_with_ties_at_the_cut():
    rng = np.random.default_rng(5)
    for _ in range(100):
        scores = rng.integers(0, 4, int(rng.integers(1, 50))).astype(np.float64)  # many ties
        count = int(rng.integers(0, len(scores) + 1))
        assert _best_rows(scores, count).tolist() == np.argsort(-scores, kind="stable")[:count].tolist()


def test_uneven_budgets_give_the_first_tasks_one_more():
    rng = np.random.default_rng(0)
    scores = rng.random((40, 3))
    picks, _ = round_robin_order(scores, 11)  # 11 = 3·3 + 2: tasks 0 and 1 take 4 rows, task 2 takes 3
    takers = np.arange(11) % 3
    assert np.bincount(takers).tolist() == [4, 4, 3]
    # Each pick is its task's best row among those not taken before it.
    for t, row in enumerate(picks):
        free = np.setdiff1d(np.arange(40), picks[:t])
        assert row == free[np.argmax(scores[free, takers[t]])]


def test_a_smaller_budget_is_a_prefix_of_a_larger_one():
    rng = np.random.default_rng(1)
    scores = rng.random((50, 4)).astype(np.float32)
    scores[:, 2] *= 0.01  # a task on a much smaller scale still gets its turns
    ds = pool(scores)
    full = hp.select.round_robin(ds, size=30, score_column="tasks", rank_column="rank")
    order = pick_order(full)
    for size in (1, 4, 7, 13, 29):
        sub = hp.select.round_robin(ds, size=size, score_column="tasks")
        assert sorted(sub["row_id"]) == sorted(order[:size])
        assert sorted(hp.select.prefix(full, size=size)["row_id"]) == sorted(order[:size])
    assert np.argmax(scores[:, 2]) in order[:4]  # task 2's best row is its first pick despite its scale


def test_initial_subset_counts_as_turns_so_a_run_continues_another():
    ds = pool()
    continued = hp.select.round_robin(ds, size=6, score_column="tasks", initial_subset=ORDER[:2], rank_column="rank")
    assert pick_order(continued) == ORDER
    other = hp.select.round_robin(ds, size=3, score_column="tasks", initial_subset=[5], rank_column="rank",
                                  gain_column="gain")
    # Row 5 is turn 0 (task 0's), so task 1 picks next: row 0, then task 2: row 3.
    assert pick_order(other) == [5, 0, 3]
    assert np.isnan(np.asarray(other["gain"])[np.asarray(other["row_id"]) == 5]).all()


def test_scalar_scores_are_one_task_and_equal_top_k():
    rng = np.random.default_rng(2)
    ds = make_dataset(None, score=rng.integers(0, 5, 40).astype(np.float32))  # many ties
    rr = hp.select.round_robin(ds, size=12, score_column="score")
    assert list(rr["row_id"]) == list(hp.select.top_k(ds, size=12, score_column="score")["row_id"])


def test_per_class_round_robin():
    labels = [0, 0, 0, 1, 1, 1]
    sub = hp.select.round_robin(pool(label=labels), size=4, score_column="tasks", label_column="label",
                                rank_column="rank")
    # Class 0 (rows 0-2): task 0 row 0, task 1 row 2; class 1 (rows 3-5): task 0 row 4, task 1 row 5.
    assert sorted(sub["row_id"]) == [0, 2, 4, 5]
    assert dict(zip(sub["row_id"], sub["rank"])) == {0: 0, 2: 1, 4: 0, 5: 1}


def test_round_robin_over_rds_and_less_per_task_columns():
    """RDS-RR and LESS-RR: a task whose similarities run low still gets half of a two-task budget."""
    rng = np.random.default_rng(3)
    pool_emb = rng.normal(size=(60, 8)).astype(np.float32)
    # Task "a": a target at the centre of many pool rows (high cosines); task "b": a lone direction.
    pool_emb[:30] += 4 * np.eye(8, dtype=np.float32)[0]
    targets = make_dataset(np.stack([np.eye(8)[0], np.eye(8)[5]]).astype(np.float32), task=["a", "b"])
    ds = make_dataset(pool_emb, idx=list(range(60)))
    scored = hp.score.rds(ds, targets, per_task_column="rds_tasks")
    top = hp.select.top_k(scored, size=10, score_column="rds")
    assert set(top["row_id"]) <= set(range(30))  # the max over tasks: task "a" takes every row
    rr = hp.select.round_robin(scored, size=10, score_column="rds_tasks", rank_column="rank")
    per_task = np.asarray(scored["rds_tasks"])
    order = pick_order(rr)
    assert order[1::2] == np.argsort(-per_task[:, 1], kind="stable")[:5].tolist()  # "b"'s own best five
    less = hp.score.less(ds.rename_column("emb", "grad"), validation_gradients=targets, validation_column="emb",
                         task_column="task", per_task_column="less_tasks")
    np.testing.assert_allclose(np.asarray(less["less_tasks"]), per_task, atol=1e-6)  # one example per task
    assert sorted(hp.select.round_robin(less, size=10, score_column="less_tasks")["row_id"]) == sorted(order)


def test_bad_scores_name_the_column():
    bad = SCORES.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="'tasks'.*NaN"):
        hp.select.round_robin(pool(bad), size=2, score_column="tasks")
    with pytest.raises(KeyError, match="'nope'"):
        hp.select.round_robin(pool(), size=2, score_column="nope")
    ragged = make_dataset(None, tasks=[[0.1, 0.2], [0.3]])
    with pytest.raises(ValueError, match="'tasks'"):
        hp.select.round_robin(ragged, size=1, score_column="tasks")
