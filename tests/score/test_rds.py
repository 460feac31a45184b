"""hp.score.rds: per-task cosine reductions by hand, task order, streaming, bad input, and InfoMax over RDS."""

import numpy as np
import pytest
from datasets import ClassLabel, Dataset

import hf_prune as hp
from hf_prune.data.instructions import MESSAGES_FEATURE
from tests.conftest import make_dataset

POOL = np.array([[1, 0, 0], [0, 2, 0], [1, 1, 0], [0, 0, -3]], dtype=np.float32)
TARGETS = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1]], dtype=np.float32)
TASKS = ["qa", "qa", "math", "math", "math"]


def cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T


def test_hand_computed_per_task_scores_and_reductions():
    s = 1 / np.sqrt(2)
    # Cosines of the pool rows to qa's targets (rows 0-1) and math's (rows 2-4).
    qa = np.array([[1, s], [0, s], [s, 1], [0, 0]])
    math = np.array([[0, 0, 0], [1, s, 0], [s, 0.5, 0], [0, -s, -1]])
    pool, targets = make_dataset(POOL), make_dataset(TARGETS, task=TASKS)
    out = hp.score.rds(pool, targets, per_task_column="per_task")
    # Tasks in sorted order: math, then qa.
    per_task = np.stack([math.max(1), qa.max(1)], axis=1)
    np.testing.assert_allclose(np.asarray(out["per_task"]), per_task, atol=1e-6)
    np.testing.assert_allclose(out["rds"], per_task.max(1), atol=1e-6)
    step = hp.provenance(out)[-1]
    assert step["method"] == "score.rds" and step["params"]["tasks"] == ["math", "qa"]
    assert step["params"]["examples_per_task"] == [3, 2] and out.features["per_task"].length == 2
    mean = hp.score.rds(pool, targets, example_reduce="mean", reduce="mean", per_task_column="per_task")
    per_task = np.stack([math.mean(1), qa.mean(1)], axis=1)
    np.testing.assert_allclose(np.asarray(mean["per_task"]), per_task, atol=1e-6)
    np.testing.assert_allclose(mean["rds"], per_task.mean(1), atol=1e-6)
    # Given task order; one task without a task column.
    ordered = hp.score.rds(pool, targets, tasks=["qa", "math"], per_task_column="per_task")
    np.testing.assert_allclose(np.asarray(ordered["per_task"]), np.asarray(out["per_task"])[:, ::-1], atol=1e-6)
    one = hp.score.rds(pool, targets, task_column=None)
    np.testing.assert_allclose(one["rds"], cos(POOL, TARGETS).max(1), atol=1e-6)
    assert pool.column_names == ["idx", "emb"]  # input untouched


def test_a_pool_row_identical_to_a_target_ranks_first_for_its_task():
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(200, 12)).astype(np.float32)
    targets = rng.normal(size=(9, 12)).astype(np.float32)
    tasks = np.repeat(["a", "b", "c"], 3)
    pool[57], pool[131] = targets[4], targets[8] * 3  # a copy of a "b" example, a scaled "c" example
    out = hp.score.rds(make_dataset(pool), make_dataset(targets, task=tasks), per_task_column="t")
    per_task = np.asarray(out["t"])
    assert np.argmax(per_task[:, 1]) == 57 and np.argmax(per_task[:, 2]) == 131
    np.testing.assert_allclose(per_task[[57, 131], [1, 2]], 1.0, atol=1e-6)


def test_streaming_blocks_views_and_label_tasks_give_the_direct_result():
    rng = np.random.default_rng(1)
    pool = rng.normal(size=(300, 16)).astype(np.float32)
    targets = rng.normal(size=(20, 16)).astype(np.float32)
    tasks = rng.integers(0, 4, 20)
    direct = np.stack([cos(pool, targets[tasks == j]).max(1) for j in range(4)], axis=1)
    ds = make_dataset(pool)
    target_ds = make_dataset(targets, task=tasks).rename_column("emb", "h")
    out = hp.score.rds(ds, target_ds, target_column="h", chunk_size=7, per_task_column="t")
    np.testing.assert_allclose(np.asarray(out["t"]), direct, atol=1e-5)
    assert hp.provenance(out)[-1]["params"]["tasks"] == [0, 1, 2, 3]
    view = ds.shuffle(seed=0)
    shuffled = hp.score.rds(view, target_ds, target_column="h", chunk_size=64)
    np.testing.assert_allclose(shuffled["rds"], direct.max(1)[np.asarray(view["idx"])], atol=1e-5)
    # ClassLabel tasks are recorded by name.
    named = target_ds.cast_column("task", ClassLabel(names=["w", "x", "y", "z"]))
    assert hp.provenance(hp.score.rds(ds, named, target_column="h"))[-1]["params"]["tasks"] == ["w", "x", "y", "z"]


def test_bad_input_names_the_option_or_column():
    pool, targets = make_dataset(POOL), make_dataset(TARGETS, task=TASKS)
    with pytest.raises(ValueError, match="task 'bbh' of `tasks` has no target examples"):
        hp.score.rds(pool, targets, tasks=["qa", "math", "bbh"])
    with pytest.raises(ValueError, match="task 'math', which `tasks` does not list"):
        hp.score.rds(pool, targets, tasks=["qa"])
    with pytest.raises(ValueError, match="pool column 'emb' has dimension 2 but targets column 'emb' has 3"):
        hp.score.rds(make_dataset(POOL[:, :2]), targets)
    with pytest.raises(ValueError, match="`targets` is empty"):
        hp.score.rds(pool, targets.select([]))
    with pytest.raises(ValueError, match="`pool` is empty"):
        hp.score.rds(pool.select([]), targets)
    with pytest.raises(KeyError, match="'task'"):
        hp.score.rds(pool, make_dataset(TARGETS))
    with pytest.raises(KeyError, match="'h'"):
        hp.score.rds(pool, targets, embedding_column="h")
    with pytest.raises(ValueError, match="`example_reduce`"):
        hp.score.rds(pool, targets, example_reduce="min")
    with pytest.raises(ValueError, match="`reduce`"):
        hp.score.rds(pool, targets, reduce="sum")
    with pytest.raises(ValueError, match="already"):
        hp.score.rds(pool, targets, output_column="emb")
    with pytest.raises(ValueError, match="both 'rds'"):
        hp.score.rds(pool, targets, per_task_column="rds")
    nan_targets = make_dataset(np.where(TARGETS == 1, np.nan, TARGETS), task=TASKS)
    with pytest.raises(ValueError, match="NaN"):
        hp.score.rds(pool, nan_targets)


def test_infomax_over_rds_from_hidden_states():
    """InfoMax's I = the RDS score and K = the hidden-state embeddings: it composes with hp.select.infomax."""
    from tests.data.test_chat import CHATML, word_tokenizer
    from tests.embed.test_hidden_states import MODEL

    words = ["what is two plus two ?", "hi", "what ?", "two plus two is four", "hi hi", "four", "is two four ?"]
    rng = np.random.default_rng(0)
    conversations = [[{"role": "user", "content": " ".join(rng.choice(words, 2))},
                      {"role": "assistant", "content": str(rng.choice(words))}] for _ in range(30)]
    conversations[7] = conversations[3]  # an exact duplicate in the pool
    pool = Dataset.from_dict({"messages": conversations}).cast_column("messages", MESSAGES_FEATURE)
    targets = Dataset.from_dict({"messages": [conversations[3], conversations[11]], "task": ["x", "y"]})
    targets = targets.cast_column("messages", MESSAGES_FEATURE)
    emb = hp.embed.HiddenStateEmbedder(MODEL, tokenizer=word_tokenizer(CHATML), output_column="h", device="cpu")
    pool = hp.score.rds(emb.map(pool), emb.map(targets), embedding_column="h", per_task_column="rds_tasks")
    scores = np.asarray(pool["rds"])
    assert scores[3] == scores[7] == pytest.approx(1.0, abs=1e-6) and scores[11] == pytest.approx(1.0, abs=1e-6)
    top = hp.select.top_k(pool, size=4, score_column="rds")
    assert {3, 7, 11} <= set(top["row_id"])
    # alpha=0: no redundancy term, InfoMax keeps the top scores.
    plain = hp.select.infomax(pool, size=4, score_column="rds", embedding_column="h", alpha=0.0, k=3)
    assert sorted(plain["row_id"]) == sorted(top["row_id"])
    # With the redundancy term the duplicate pair is not both kept.
    diverse = hp.select.infomax(pool, size=4, score_column="rds", embedding_column="h", alpha=3.0, k=3)
    assert len({3, 7} & set(diverse["row_id"])) == 1
    assert [s["method"] for s in hp.provenance(diverse)][-2:] == ["score.rds", "infomax"]
