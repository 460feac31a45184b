import numpy as np
import pytest
import torch
from datasets import Dataset

import hf_prune as hp
from hf_prune.ops.columns import add_column
from tests.conftest import make_dataset


def _grads(x, name="grad", **columns):
    ds = make_dataset(x, **columns) if columns else make_dataset(x)
    return ds.rename_column("emb", name)


def _cos(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T


def test_hand_computed_scores():
    train = np.array([[1, 0, 0], [0, 2, 0], [1, 1, 0], [0, 0, -3]], dtype=np.float32)
    val = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1]], dtype=np.float32)
    tasks = ["qa", "qa", "math", "math", "math"]
    s = 1 / np.sqrt(2)
    # per-task mean cosines: qa = rows 0-1, math = rows 2-4
    qa = np.array([(1 + s) / 2, (0 + s) / 2, (s + 1) / 2, 0.0])
    math = np.array([0.0, (1 + s + 0) / 3, (s + 0.5 + 0) / 3, (0 - s - 1) / 3])
    ds = _grads(train)
    out = hp.score.less(ds, validation_gradients=val, task_column=tasks)
    np.testing.assert_allclose(out["less"], np.maximum(qa, math), rtol=1e-6, atol=1e-6)
    out = hp.score.less(ds, validation_gradients=val, task_column=tasks, reduce="mean")
    np.testing.assert_allclose(out["less"], (qa + math) / 2, rtol=1e-6, atol=1e-6)
    as_lists = hp.score.less(ds, validation_gradients=val.tolist(), task_column=tasks)  # nested lists = one array
    np.testing.assert_allclose(as_lists["less"], np.maximum(qa, math), rtol=1e-6, atol=1e-6)
    # one task: the plain mean cosine to all validation rows
    out = hp.score.less(ds, validation_gradients=torch.from_numpy(val))
    np.testing.assert_allclose(out["less"], _cos(train, val).mean(1), rtol=1e-6, atol=1e-6)
    assert out.features["less"].dtype == "float32"
    assert "less" not in ds.column_names  # input untouched


def test_against_direct_computation_random_and_dataset_inputs():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(300, 24)).astype(np.float32)
    val = rng.normal(size=(17, 24)).astype(np.float32)
    task = rng.integers(0, 3, 17)
    direct = np.stack([_cos(train, val[task == j]).mean(1) for j in range(3)], axis=1)
    val_ds = _grads(val, name="g", task=task)
    out = hp.score.less(_grads(train), validation_gradients=val_ds, validation_column="g", task_column="task",
                        batch_size=64)  # several chunks of training rows
    np.testing.assert_allclose(out["less"], direct.max(1), rtol=1e-5, atol=1e-6)
    out = hp.score.less(_grads(train).shuffle(seed=0), validation_gradients=val, task_column=task)
    order = np.array(_grads(train).shuffle(seed=0)["idx"])
    np.testing.assert_allclose(out["less"], direct.max(1)[order], rtol=1e-5, atol=1e-6)
    # cosine: positive rescaling of any gradient changes nothing
    scaled = hp.score.less(_grads(train * rng.uniform(0.1, 10, (300, 1)).astype(np.float32)),
                           validation_gradients=val * 7, task_column=task)
    np.testing.assert_allclose(scaled["less"], direct.max(1), rtol=1e-4, atol=1e-5)


def test_checkpoints_are_combined_before_the_max_over_tasks():
    # checkpoint 1 favours task 0, checkpoint 2 task 1: the max of the weighted sum differs from the
    # weighted sum of per-checkpoint maxima, so the order of operations is visible.
    train1 = np.array([[1.0, 0.0]], dtype=np.float32)
    train2 = np.array([[0.0, 1.0]], dtype=np.float32)
    val1 = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    val2 = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    ds = add_column(_grads(train1, name="g1"), "g2", train2)
    out = hp.score.less(ds, gradient_column=["g1", "g2"], validation_gradients=[val1, val2],
                        task_column=[0, 1], checkpoint_weights=[0.75, 0.25])
    # task 0: 0.75·1 + 0.25·0 = 0.75; task 1: 0.75·0 + 0.25·1 = 0.25 → max 0.75 (sum of maxima would be 1)
    assert out["less"][0] == pytest.approx(0.75)
    out = hp.score.less(ds, gradient_column=["g1", "g2"], validation_gradients=[val1, val2], task_column=[0, 1])
    assert out["less"][0] == pytest.approx(0.5)  # default weights 1/C


def test_zero_gradients_have_zero_cosine():
    train = np.array([[0, 0], [1, 0]], dtype=np.float32)
    val = np.array([[1, 0], [0, 0]], dtype=np.float32)
    out = hp.score.less(_grads(train), validation_gradients=val)
    np.testing.assert_allclose(out["less"], [0.0, 0.5])  # the zero validation row counts as cosine 0


def test_per_task_mean_makes_small_tasks_count_and_mean_vs_max():
    # LESS's claim: an example that helps any one target task is ranked high, however small the
    # task's validation set. Task A has 40 validation examples, task B only 4.
    rng = np.random.default_rng(3)
    d = 64
    a, b = np.eye(d)[0], np.eye(d)[1]
    val = np.vstack([a + 0.3 * rng.normal(size=(40, d)) / np.sqrt(d), b + 0.3 * rng.normal(size=(4, d)) / np.sqrt(d)])
    task = np.array([0] * 40 + [1] * 4)
    near_a = a + 0.3 * rng.normal(size=(20, d)) / np.sqrt(d)
    near_b = b + 0.3 * rng.normal(size=(20, d)) / np.sqrt(d)
    noise = rng.normal(size=(60, d))
    train = np.vstack([near_a, near_b, noise]).astype(np.float32)
    group = np.repeat([0, 1, 2], [20, 20, 60])
    ds = _grads(train)
    per_task = np.array(hp.score.less(ds, validation_gradients=val, task_column=task)["less"])
    pooled = np.array(hp.score.less(ds, validation_gradients=val)["less"])
    # per task then max: both helpful groups beat every noise row, and score alike (≈0.9 each)
    assert per_task[group < 2].min() > per_task[group == 2].max() + 0.3
    assert abs(per_task[group == 0].mean() - per_task[group == 1].mean()) < 0.05
    top = np.argsort(-per_task)[:40]
    assert set(group[top]) == {0, 1}
    # pooling all validation rows lets the big task drown the small one
    assert pooled[group == 0].mean() > pooled[group == 1].mean() + 0.6
    mean = np.array(hp.score.less(ds, validation_gradients=val, task_column=task, reduce="mean")["less"])
    np.testing.assert_allclose(mean[group < 2], per_task[group < 2] / 2 + 0.0, atol=0.08)  # other task ≈ 0


def test_errors_name_the_problem():
    rng = np.random.default_rng(0)
    ds = _grads(rng.normal(size=(5, 4)).astype(np.float32))
    val = rng.normal(size=(3, 4)).astype(np.float32)
    with pytest.raises(KeyError, match="nope"):
        hp.score.less(ds, gradient_column="nope", validation_gradients=val)
    with pytest.raises(ValueError, match="dimension"):
        hp.score.less(ds, validation_gradients=val[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        hp.score.less(ds, validation_gradients=np.where(np.eye(3, 4) > 0, np.nan, val))
    bad = add_column(Dataset.from_dict({"x": [0] * 2}), "grad", np.array([[1.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="grad"):
        hp.score.less(bad, validation_gradients=val[:, :2])
    with pytest.raises(ValueError, match="task ids"):
        hp.score.less(ds, validation_gradients=val, task_column=[0, 1])
    with pytest.raises(KeyError, match="task"):
        hp.score.less(ds, validation_gradients=_grads(val), validation_column="grad", task_column="task")
    with pytest.raises(ValueError, match="validation_column"):
        hp.score.less(ds, validation_gradients=_grads(val), validation_column=["a", "b"])
    with pytest.raises(ValueError, match="reduce"):
        hp.score.less(ds, validation_gradients=val, reduce="sum")
    with pytest.raises(ValueError, match="checkpoint_weights"):
        hp.score.less(ds, validation_gradients=val, checkpoint_weights=[-1.0])
    with pytest.raises(ValueError, match="validation_gradients"):
        hp.score.less(ds, validation_gradients=np.zeros((0, 4)))
    with pytest.raises(ValueError, match="one validation set per gradient column"):
        hp.score.less(ds, gradient_column=["grad", "grad"], validation_gradients=val)
    with pytest.raises(ValueError, match="empty"):
        hp.score.less(ds.select([]), validation_gradients=val)
    scored = hp.score.less(ds, validation_gradients=val)
    with pytest.raises(ValueError, match="overwrite"):
        hp.score.less(scored, validation_gradients=val)
    again = hp.score.less(scored, validation_gradients=-val, overwrite=True)
    np.testing.assert_allclose(again["less"], -np.array(scored["less"]), atol=1e-6)  # one task: mean is linear
    with pytest.raises(TypeError):
        hp.score.less(ds, val)  # keyword-only


def test_less_records_a_provenance_step():
    rng = np.random.default_rng(0)
    ds = _grads(rng.normal(size=(12, 5)).astype(np.float32))
    val = _grads(rng.normal(size=(4, 5)).astype(np.float32), task=["a", "b", "a", "b"])
    out = hp.score.less(ds, validation_gradients=val, validation_column="grad", task_column="task", reduce="mean")
    (step,) = hp.provenance(out)
    assert step["method"] == "score.less" and step["stale"] is False
    assert step["params"]["validation_gradients"] == [{"dataset_fingerprint": val._fingerprint, "rows": 4}]
    assert step["params"]["task_column"] == "task" and step["params"]["reduce"] == "mean"
    assert step["params"]["checkpoint_weights"] == [1.0] and step["params"]["gradient_column"] == ["grad"]
    as_array = hp.score.less(ds, validation_gradients=rng.normal(size=(3, 5)), task_column=[0, 1, 1])
    params = hp.provenance(as_array)[0]["params"]
    assert params["validation_gradients"] == [{"shape": [3, 5]}] and params["task_column"] == {"task_ids": 3, "tasks": 2}


def test_per_task_column_holds_the_scores_before_the_reduction_in_sorted_task_order():
    train = np.array([[1, 0, 0], [0, 2, 0], [1, 1, 0], [0, 0, -3]], dtype=np.float32)
    val = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1]], dtype=np.float32)
    s = 1 / np.sqrt(2)
    qa = np.array([(1 + s) / 2, (0 + s) / 2, (s + 1) / 2, 0.0])
    math = np.array([0.0, (1 + s + 0) / 3, (s + 0.5 + 0) / 3, (0 - s - 1) / 3])
    val_ds = _grads(val, task=["qa", "qa", "math", "math", "math"])
    out = hp.score.less(_grads(train), validation_gradients=val_ds, task_column="task", per_task_column="per_task")
    np.testing.assert_allclose(np.asarray(out["per_task"]), np.stack([math, qa], axis=1), atol=1e-6)  # sorted names
    np.testing.assert_allclose(out["less"], np.maximum(qa, math), atol=1e-6)
    step = hp.provenance(out)[-1]
    assert step["params"]["tasks"] == ["math", "qa"] and step["params"]["per_task_column"] == "per_task"
    assert out.features["per_task"].length == 2
    # Two checkpoints: the weighted per-task sums, as the reduction sees them.
    two = hp.score.less(_grads(train).add_column("grad2", _grads(train * 2)["grad"]), gradient_column=["grad", "grad2"],
                        validation_gradients=[val, val], task_column=["qa", "qa", "math", "math", "math"],
                        checkpoint_weights=[1.0, 3.0], per_task_column="per_task")
    np.testing.assert_allclose(np.asarray(two["per_task"]), 4 * np.stack([math, qa], axis=1), atol=1e-5)
    with pytest.raises(ValueError, match="both 'less'"):
        hp.score.less(_grads(train), validation_gradients=val, per_task_column="less")
    with pytest.raises(ValueError, match="already"):
        hp.score.less(_grads(train), validation_gradients=val, per_task_column="grad")


def test_integer_task_ids_with_gaps_are_tasks_too():
    rng = np.random.default_rng(3)
    train = rng.normal(size=(40, 6)).astype(np.float32)
    val = rng.normal(size=(6, 6)).astype(np.float32)
    task = np.array([2, 2, 7, 7, 7, 11])  # three tasks, not twelve
    direct = np.stack([_cos(train, val[task == j]).mean(1) for j in (2, 7, 11)], axis=1)
    out = hp.score.less(_grads(train), validation_gradients=_grads(val, task=task), task_column="task",
                        per_task_column="t", reduce="mean")
    np.testing.assert_allclose(np.asarray(out["t"]), direct, atol=1e-5)
    np.testing.assert_allclose(out["less"], direct.mean(1), atol=1e-5)
    assert hp.provenance(out)[-1]["params"]["tasks"] == [2, 7, 11]
