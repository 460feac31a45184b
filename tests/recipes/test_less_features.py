import copy
import json
import os
import socket
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from datasets import Dataset

import hf_prune as hp
from hf_prune.embed.lora_gradients import lora_parameter_names
from recipes import less_features as lf

VOCAB = 48


@dataclass
class Checkpoint:
    """An in-memory warm-up checkpoint with the attributes recipes.trainer.warmup's checkpoints have."""

    epoch: int
    mean_lr: float
    model: torch.nn.Module
    optimizer_state: dict
    info: dict = field(default_factory=dict)


def tiny_lora_model(seed=0):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config)
    model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    return model


def token_rows(n, seed=0, length=12, prompt=4):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(n, length)).tolist()
    labels = [[-100] * prompt + row[prompt:] for row in ids]
    return ids, labels


def warmup(model, ids, labels, epochs=2, lr=1e-2):
    """A short AdamW warm-up; one checkpoint (model copy, moments, mean lr) per epoch, as LESS keeps."""
    names = lora_parameter_names(model)
    params = dict(model.named_parameters())
    optimizer = torch.optim.AdamW([params[n] for n in names], lr=lr)
    out = []
    model.train()
    for epoch in range(1, epochs + 1):
        for start in range(0, len(ids), 4):
            x = torch.tensor(ids[start : start + 4])
            y = torch.tensor(labels[start : start + 4])
            loss = model(input_ids=x, labels=y).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        state = {
            n: {k: v.clone() if torch.is_tensor(v) else v for k, v in optimizer.state[params[n]].items()}
            for n in names
        }
        out.append(
            Checkpoint(
                epoch=epoch, mean_lr=lr / epoch, model=copy.deepcopy(model).eval(), optimizer_state=state
            )
        )
    return out


def pool_and_validation(n=24, duplicate=5):
    ids, labels = token_rows(n, seed=0)
    pool = Dataset.from_dict({"input_ids": ids, "labels": labels, "task": ["pool"] * n})
    val_ids, val_labels = token_rows(3, seed=1)
    val_ids[0], val_labels[0] = ids[duplicate], labels[duplicate]
    validation = Dataset.from_dict({"input_ids": val_ids[:1], "labels": val_labels[:1], "task": ["target"]})
    return pool, validation, ids, labels


@pytest.fixture(scope="module")
def chain():
    torch.set_num_threads(1)
    pool, validation, ids, labels = pool_and_validation()
    checkpoints = warmup(tiny_lora_model(), ids, labels)
    return pool, validation, checkpoints


def test_a_training_row_identical_to_the_validation_row_ranks_first(chain):
    pool, validation, checkpoints = chain
    out = lf.less_features(pool, validation, checkpoints, dim=256, seed=0, batch_size=8)
    less = np.array(out.pool["less"])
    assert int(np.argmax(less)) == 5
    assert out.gradient_columns == ["grad_1", "grad_2"]
    assert out.checkpoint_weights == pytest.approx([1e-2, 5e-3])
    # The combined column has unit rows whose inner products are the lr-weighted mean cosine.
    grad = np.array(out.pool["grad"], dtype=np.float64)
    assert np.allclose(np.linalg.norm(grad, axis=1), 1.0, atol=1e-5)
    g1, g2 = (np.array(out.pool[c], dtype=np.float64) for c in out.gradient_columns)
    cos = [(a[0] @ a[1]) / np.linalg.norm(a[0]) / np.linalg.norm(a[1]) for a in (g1, g2)]
    assert grad[0] @ grad[1] == pytest.approx((2 * cos[0] + cos[1]) / 3, abs=1e-5)
    assert out.timings["gradient_rows"] == 2 * (24 + 1) and out.timings["scoring_s"] >= 0
    assert out.pool["row_id"] == list(range(24))
    assert pool.column_names == ["input_ids", "labels", "task"]  # the caller's pool is untouched


def test_the_structured_projection_gives_its_own_features_and_the_same_first_row(chain):
    pool, validation, checkpoints = chain
    dense = lf.less_features(pool, validation, checkpoints, dim=256, seed=0, batch_size=8)
    srht = lf.less_features(pool, validation, checkpoints, dim=256, seed=0, batch_size=8, projection="srht")
    assert int(np.argmax(np.array(srht.pool["less"]))) == 5  # the duplicated validation row, as with the dense one
    assert not np.allclose(np.array(srht.pool["grad_1"]), np.array(dense.pool["grad_1"]))  # another projection ran
    # Both projections keep the gradients' geometry: their LESS scores rank the pool alike.
    ranks = [np.argsort(np.argsort(np.array(out.pool["less"]))) for out in (dense, srht)]
    assert np.corrcoef(*ranks)[0, 1] > 0.5


def test_the_per_task_column_holds_each_tasks_score_and_less_is_its_max(chain):
    pool, validation, checkpoints = chain
    # Two target tasks, each a copy of one pool row: row 9 for "b_task", row 5 (validation's row) for "a_task".
    two = Dataset.from_dict(
        {
            "input_ids": [pool[9]["input_ids"], validation[0]["input_ids"]],
            "labels": [pool[9]["labels"], validation[0]["labels"]],
            "task": ["b_task", "a_task"],
        }
    )
    out = lf.less_features(pool, two, checkpoints, dim=256, seed=0, batch_size=8)
    assert out.tasks == ["a_task", "b_task"]  # sorted: the order of the list entries
    per_task = np.array(out.pool["less_tasks"], dtype=np.float64)
    assert per_task.shape == (24, 2)
    assert per_task[:, 0].argmax() == 5 and per_task[:, 1].argmax() == 9
    assert np.allclose(np.array(out.pool["less"]), per_task.max(axis=1), atol=1e-6)
    # LESS-RR: the tasks take turns, so each task's copy is among the first two picks.
    rr = hp.select.round_robin(out.pool, size=2, score_column="less_tasks")
    assert sorted(rr["row_id"]) == [5, 9]
    assert "less_tasks" not in lf.less_features(
        pool, two, checkpoints, dim=256, seed=0, per_task_column=None
    ).pool.column_names


def test_a_second_call_with_the_same_checkpoints_is_a_cache_hit(chain, tmp_path, monkeypatch):
    pool, validation, checkpoints = chain
    calls = []
    original = hp.embed.LoRAGradientEmbedder.per_example_gradients

    def counting(self, input_ids, *args, **kwargs):
        calls.append(len(input_ids))
        return original(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(hp.embed.LoRAGradientEmbedder, "per_example_gradients", counting)
    first = lf.less_features(pool, validation, checkpoints, dim=64, cache_dir=tmp_path)
    assert sum(calls) == 2 * (24 + 1) and not first.timings["cache_hit"]
    second = lf.less_features(pool, validation, checkpoints, dim=64, cache_dir=tmp_path)
    assert sum(calls) == 2 * (24 + 1), "the gradients were computed again"
    assert second.timings["cache_hit"] and second.timings["gradient_rows"] == 0
    assert second.pool.cache_files and all(str(tmp_path) in f["filename"] for f in second.pool.cache_files)
    np.testing.assert_array_equal(np.array(first.pool["less"]), np.array(second.pool["less"]))
    # Other projection settings are another column: computed, not taken from the cache.
    lf.less_features(pool, validation, checkpoints, dim=32, cache_dir=tmp_path)
    assert sum(calls) == 4 * (24 + 1)


def _worker(rank, world, port, shard_dir, queue):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    from accelerate import PartialState

    state = PartialState(cpu=True)
    try:
        pool, validation, ids, labels = pool_and_validation(n=150)  # map batches of 64: shards of 64 + 86 rows
        checkpoints = warmup(tiny_lora_model(), ids, labels, epochs=1)
        out = lf.less_features(pool, validation, checkpoints, dim=64, state=state, shard_dir=shard_dir)
        queue.put(
            (
                rank,
                state.num_processes,
                np.array(out.pool["grad_1"]),
                np.array(out.pool["less"]),
                out.timings["checkpoints"][0]["pool"]["rows"],
            )
        )
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters importing torch/transformers/peft: ~40 s on 2 shared cores
def test_two_cpu_processes_give_the_one_process_gradient_column(tmp_path):
    torch.set_num_threads(1)
    pool, validation, ids, labels = pool_and_validation(n=150)
    one = lf.less_features(pool, validation, warmup(tiny_lora_model(), ids, labels, epochs=1), dim=64)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    procs = [context.Process(target=_worker, args=(r, 2, port, str(tmp_path), queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = []
    while len(results) < len(procs):  # a crashed worker fails the test at once instead of at a timeout
        try:
            results.append(queue.get(timeout=1))
        except Exception:
            assert all(p.is_alive() or p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    results.sort(key=lambda r: r[0])
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert [r[1] for r in results] == [2, 2] and [r[4] for r in results] == [64, 86]
    for _, _, grad, less, _ in results:  # every process returns the whole column: the one-process one
        np.testing.assert_array_equal(grad, np.array(one.pool["grad_1"]))
        np.testing.assert_array_equal(less, np.array(one.pool["less"]))


def test_combine_gradients_by_hand():
    ds = Dataset.from_dict({"a": [[3.0, 4.0], [0.0, 0.0]], "b": [[0.0, 2.0], [1.0, 0.0]]})
    out = lf.combine_gradients(ds, ["a", "b"], [3.0, 1.0], output_column="g")
    g = np.array(out["g"])
    np.testing.assert_allclose(
        g[0], [np.sqrt(0.75) * 0.6, np.sqrt(0.75) * 0.8, 0.0, np.sqrt(0.25)], rtol=1e-6
    )
    np.testing.assert_allclose(g[1], [0.0, 0.0, np.sqrt(0.25), 0.0])  # a zero gradient stays zero
    with pytest.raises(ValueError, match="weights"):
        lf.combine_gradients(ds, ["a", "b"], [0.0, 0.0])
    with pytest.raises(KeyError, match="'c'"):
        lf.combine_gradients(ds, ["a", "c"], [1.0, 1.0])


def test_file_backed_saves_an_in_memory_dataset_once(tmp_path):
    ds = Dataset.from_dict({"x": [1, 2, 3]})
    first = lf.file_backed(ds, tmp_path, "pool")
    assert first.cache_files and first["x"] == [1, 2, 3]
    assert len(list(tmp_path.iterdir())) == 1
    assert lf.file_backed(ds, tmp_path, "pool").cache_files == first.cache_files
    assert lf.file_backed(first, tmp_path / "other", "pool") is first  # already read from files
    assert not lf.file_backed(ds, None, "pool").cache_files


def test_bad_input_is_named(chain, tmp_path):
    pool, validation, checkpoints = chain
    with pytest.raises(KeyError, match="task"):
        lf.less_features(pool, validation.remove_columns("task"), checkpoints, dim=16)
    with pytest.raises(ValueError, match="lacks"):
        lf.less_features(pool, validation, [object()], dim=16)
    with pytest.raises(ValueError, match="no warm-up checkpoint"):
        lf.less_features(pool, validation, [], dim=16)
    bad = [copy.copy(checkpoints[0])]
    bad[0].mean_lr = float("nan")
    with pytest.raises(ValueError, match="mean learning rate"):
        lf.less_features(pool, validation, bad, dim=16)
    with pytest.raises(ValueError, match="tokenizer"):
        lf.less_features(pool.remove_columns("labels"), validation, checkpoints, dim=16)
    with pytest.raises(ValueError, match="no row of the pool has a response token"):
        masked = pool.map(lambda r: {"labels": [-100] * len(r["labels"])})
        lf.less_features(masked, validation, checkpoints, dim=16)

    two_tasks = Dataset.from_dict(
        {"input_ids": [[1, 2, 3]] * 2, "labels": [[-100, 2, 3], [-100, -100, -100]], "task": ["kept", "lost"]}
    )
    with pytest.raises(ValueError, match=r"\['lost'\] have no validation row"):
        lf.less_features(pool, two_tasks, checkpoints, dim=16)

    class TwoProcesses:
        num_processes, process_index, device = 2, 0, torch.device("cpu")

    with pytest.raises(ValueError, match="shard_dir"):
        lf.embed_sharded(
            pool, hp.embed.LoRAGradientEmbedder(checkpoints[0].model, dim=8), state=TwoProcesses()
        )


def test_response_token_counts():
    ds = Dataset.from_dict({"labels": [[-100, 5, 6], [-100, -100, 1, 2, 3], [7, -100], []]})
    assert lf.response_token_counts(ds).tolist() == [2, 3, 1, 0]
    assert lf.response_token_counts(ds, skip_first=True).tolist() == [2, 3, 0, 0]
    assert lf.response_token_counts(ds.select([1, 2]), skip_first=True).tolist() == [
        3,
        0,
    ]  # a view keeps offsets


def test_cli_on_the_recipes_warmup_checkpoints(tmp_path):
    """The recipe's LESS warm-up → ``python -m recipes.less_features`` → scored pool, subset and timings."""
    from datasets import load_from_disk

    from recipes import instruction_tuning
    from tests.recipes.test_reproduce_instruction_tuning import synthetic_pool

    pool = synthetic_pool()
    pool["train"] = pool["train"].select(range(80))
    pool.save_to_disk(str(tmp_path / "pool"))
    # The validation set: one pool row, copied (a task of its own): it must rank first by LESS.
    pool["train"].select([6]).map(lambda r: {"task": "target"}).save_to_disk(str(tmp_path / "validation"))
    instruction_tuning.main(
        [
            "--model",
            "tiny",
            "--vocab_size",
            "300",
            "--tiny_hidden_size",
            "16",
            "--lora_r",
            "2",
            "--max_length",
            "48",
            "--train_path",
            str(tmp_path / "pool"),
            "--warmup_fraction",
            "0.2",
            "--warmup_epochs",
            "2",
            "--seeds",
            "0",
            "--checkpointing",
            "false",
            "--cpu",
            "--output_dir",
            str(tmp_path / "warmup"),
        ]
    )
    report = lf.main(
        [
            "--warmup_dir",
            str(tmp_path / "warmup" / "seed_0"),
            "--train_path",
            str(tmp_path / "pool"),
            "--validation_path",
            str(tmp_path / "validation"),
            "--output_dir",
            str(tmp_path / "less"),
            "--dim",
            "512",
            "--method",
            "loop",
            "--cpu",
            "--selector",
            "top_k:fraction=0.1,score_column=less",
        ]
    )
    assert report["gradient_columns"] == ["grad_1", "grad_2"] and report["rows"] == 80
    assert (
        report["settings"]["max_length"] == 48 and report["settings"]["template"] == "chat"
    )  # from warmup.json
    assert report["tokenize_stats"]["pool"]["kept"] == 80 and report["timings"]["selection_s"] >= 0
    assert report["timings"]["warmup_s"] > 0 and report["timings"]["gradient_s_per_1k_rows"] > 0
    scored = load_from_disk(str(tmp_path / "less" / "scored_pool"))
    assert {"row_id", "less", "less_tasks", "grad", "grad_1", "grad_2"} <= set(scored.column_names)
    assert report["settings"]["tasks"] == ["target"] and len(scored[0]["less_tasks"]) == 1
    subset = load_from_disk(str(tmp_path / "less" / "subset"))
    less = np.array(scored["less"])
    assert sorted(subset["row_id"]) == sorted(np.argsort(-less, kind="stable")[:8].tolist())
    assert int(np.argmax(less)) == 6 and pool["train"]["messages"].count(pool["train"][6]["messages"]) == 1
    saved = json.loads((tmp_path / "less" / "less_features.json").read_text())
    assert (
        saved["checkpoint_weights"] == pytest.approx(report["checkpoint_weights"])
        and saved["metadata"]["git_sha"]
    )


@pytest.mark.slow
def test_smollm2_on_real_sharegpt_rows_ranks_the_duplicated_row_first():
    """SmolLM2-135M-Instruct with LoRA, a few real ShareGPT conversations, one validation copy of row 3."""
    from recipes.trainer.llm import LoRASettings, apply_lora, load_causal_lm

    torch.set_num_threads(2)
    model, tokenizer = load_causal_lm("smollm2")
    model = apply_lora(model, LoRASettings(r=4, alpha=8, target_modules=("q_proj", "v_proj")))
    rows = hp.data.load_sharegpt(limit=40)
    pool, _ = lf.tokenized(rows, tokenizer, max_length=64, on_invalid="skip")
    pool = pool.select(range(10))
    validation = pool.select([3]).map(lambda r: {"task": "target"})
    names = lora_parameter_names(model)
    params = dict(model.named_parameters())
    optimizer = torch.optim.AdamW([params[n] for n in names], lr=1e-4)
    model.train()
    for ids, labels in zip(pool["input_ids"], pool["labels"]):  # one warm-up epoch, batch size 1
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    state = {n: dict(optimizer.state[params[n]]) for n in names}
    checkpoint = Checkpoint(epoch=1, mean_lr=1e-4, model=model.eval(), optimizer_state=state)
    out = lf.less_features(pool, validation, [checkpoint], dim=512, method="loop", batch_size=4)
    less = np.array(out.pool["less"])
    assert int(np.argmax(less)) == 3 and less[3] > np.sort(less)[-2]
