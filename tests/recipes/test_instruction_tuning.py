"""The instruction-tuning recipe on a tiny Llama + LoRA: response-only loss, packing, schedule, warm-up
checkpoints, resume, subsets by row_id, evaluation of the untuned model, and bad input."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict, load_from_disk

import hf_prune as hp
from recipes.instruction_tuning import (
    PadCollate,
    linear_schedule,
    main,
    pack_examples,
    response_loss,
    truncate_tokenized,
    warmup_rows,
)
from recipes.trainer.llm import tiny_llama, train_chat_tokenizer
from recipes.trainer.warmup import load_warmup

WORDS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "olive", "peach"]


def _conversation(i: int) -> list[dict]:
    a, b = WORDS[i % 8], WORDS[(3 * i + 1) % 8]
    return [{"role": "user", "content": f"Which comes first, {a} or {b}?"},
            {"role": "assistant", "content": min(a, b)}]


def _pool(n=24) -> Dataset:
    return Dataset.from_dict({"messages": [_conversation(i) for i in range(n)], "source": ["toy"] * n,
                              "task": ["order" if i % 2 else "pick" for i in range(n)]})


def _eval_rows() -> Dataset:
    rows = [_conversation(i) for i in range(100, 106)]
    answers = [m[-1]["content"] for m in rows]
    choices = [sorted({m[0]["content"].split(", ")[1].split(" or ")[0], m[0]["content"].split(" or ")[1][:-1]})
               for m in rows]
    return Dataset.from_dict({"messages": rows, "source": ["toy"] * 6, "task": ["order", "pick"] * 3,
                              "answer": answers, "choices": [c if i % 2 else [] for i, c in enumerate(choices)]})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("instr")
    DatasetDict({"train": _pool(), "test": _eval_rows()}).save_to_disk(str(root / "pool"))
    return root


def _base(data_dir) -> list[str]:
    return ["--train_path", str(data_dir / "pool"), "--model", "tiny", "--vocab_size", "300", "--tiny_hidden_size", "32",
            "--max_length", "48", "--batch_size", "4", "--learning_rate", "5e-3", "--lora_r", "4", "--lora_alpha", "8",
            "--max_new_tokens", "3", "--eval_batch_size", "8", "--cpu"]


def read(path):
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------ units


def test_response_loss_is_the_token_mean_over_response_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7, requires_grad=True)
    labels = torch.tensor([[-100, -100, 3, -100], [-100, 1, 2, 5]])  # 1 + 3 response tokens
    loss, predictions, targets = response_loss(logits, labels)
    by_hand = [-torch.log_softmax(logits[b, t - 1], -1)[labels[b, t]] for b, t in [(0, 2), (1, 1), (1, 2), (1, 3)]]
    assert loss.item() == pytest.approx((sum(by_hand) / 4).item(), rel=1e-6)
    assert targets.tolist() == [3, 1, 2, 5] and predictions.shape == (4,)
    loss.backward()
    # Positions predicting a prompt token (label -100) and the last position take no gradient.
    assert torch.all(logits.grad[0, [0, 2, 3]] == 0) and torch.all(logits.grad[1, 3] == 0)
    assert torch.all(logits.grad[0, 1] != 0)
    with pytest.raises(ValueError, match="without any response token"):
        response_loss(torch.zeros(1, 3, 5), torch.full((1, 3), -100))


def _tiny_model_and_rows(seed: int, conversations, model_length: int = 64):
    """A seeded tiny Llama with its chat tokenizer, and those ``_conversation`` rows encoded (64 tokens)."""
    tokenizer = train_chat_tokenizer(["Which comes first, apple or mango? apple"], vocab_size=300)
    torch.manual_seed(seed)
    model = tiny_llama(tokenizer, max_length=model_length, hidden_size=16).eval()
    rows = [hp.data.encode_messages(tokenizer, _conversation(i), max_length=64) for i in conversations]
    return tokenizer, model, rows


def _padded(tokenizer, rows):
    return PadCollate(tokenizer.pad_token_id)([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])


def test_response_loss_matches_transformers_on_a_padded_batch():
    tokenizer, model, rows = _tiny_model_and_rows(0, (0, 5))
    batch = _padded(tokenizer, rows)
    assert batch["attention_mask"].sum(1).tolist() == [len(r["input_ids"]) for r in rows]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ours, _, targets = response_loss(logits, batch["labels"])
    theirs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)
    # The response tokens are the answer and the end of its turn, nothing of the prompt.
    response = [t for t, lab in zip(rows[0]["input_ids"], rows[0]["labels"]) if lab != -100]
    assert tokenizer.decode(response).startswith("apple<|im_end|>") and len(targets) == sum(r["num_response_tokens"] for r in rows)


def test_packing_keeps_examples_apart():
    tokenizer, model, rows = _tiny_model_and_rows(1, (0, 1, 2), model_length=128)
    packed = pack_examples([r["input_ids"] for r in rows], [r["labels"] for r in rows], max_length=128)
    assert len(packed) == 1 and packed[0]["position_ids"][: len(rows[0]["input_ids"]) + 1][-1] == 0
    batch = PadCollate(tokenizer.pad_token_id)(packed + [dict(packed[0], input_ids=packed[0]["input_ids"][:10],
                                                               labels=packed[0]["labels"][:10],
                                                               position_ids=packed[0]["position_ids"][:10])])
    assert "attention_mask" not in batch
    logits = model(input_ids=batch["input_ids"][:1], position_ids=batch["position_ids"][:1], use_cache=False).logits
    start = 0
    for r in rows:  # each example's logits inside the pack equal its logits alone
        alone = model(input_ids=torch.tensor([r["input_ids"]])).logits
        torch.testing.assert_close(logits[0, start:start + len(r["input_ids"])], alone[0], rtol=1e-4, atol=1e-5)
        start += len(r["input_ids"])
    packed_loss, _, _ = response_loss(logits, batch["labels"][:1])
    unpacked = PadCollate(tokenizer.pad_token_id)([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    unpacked_loss, _, _ = response_loss(model(**{k: unpacked[k] for k in ("input_ids", "attention_mask")}).logits,
                                        unpacked["labels"])
    assert float(packed_loss) == pytest.approx(float(unpacked_loss), rel=1e-4)
    with pytest.raises(ValueError, match="does not fit --max_length 4"):
        pack_examples([[1, 2, 3, 4, 5]], [[1, 2, 3, 4, 5]], max_length=4)


def test_linear_schedule_and_warmup_rows():
    f = linear_schedule(100, 10)
    assert [f(0), f(9), f(10), f(55), f(100)] == [0.1, 1.0, 1.0, 0.5, 0.0]
    assert linear_schedule(10, 0)(0) == 1.0
    rows = warmup_rows(200, 0.05, seed=3)
    assert len(rows) == 10 and len(set(rows.tolist())) == 10 and rows.tolist() == sorted(rows.tolist())
    assert rows.tolist() == warmup_rows(200, 0.05, seed=3).tolist() != warmup_rows(200, 0.05, seed=4).tolist()
    with pytest.raises(ValueError, match="--warmup_fraction"):
        warmup_rows(10, 0.0, seed=0)


def test_pretokenized_rows_are_truncated_and_rows_without_response_dropped():
    ds = Dataset.from_dict({"input_ids": [[1, 2, 3, 4], [5, 6, 7, 8, 9, 10], [1, 2]],
                            "labels": [[-100, -100, 3, 4], [-100, -100, -100, -100, 9, 10], [-100, 2]]})
    rows, stats = truncate_tokenized(ds, max_length=4)
    assert rows["input_ids"] == [[1, 2, 3, 4], [1, 2]] and stats["kept"] == 2
    assert stats["dropped"] == {"no response token": 1} and stats["truncated"] == 0 and stats["truncated_all"] == 1
    assert ds["input_ids"][1] == [5, 6, 7, 8, 9, 10]  # the input is not modified
    with pytest.raises(ValueError, match="row 0"):
        truncate_tokenized(Dataset.from_dict({"input_ids": [[1, 2]], "labels": [[1]]}), max_length=4)


# ------------------------------------------------------------------------------------------------ recipe runs


@pytest.fixture(scope="module")
def full_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    summary = main(_base(data_dir) + ["--epochs", "2", "--eval_path", str(data_dir / "pool"), "--eval_each_epoch",
                                      "--output_dir", str(out)])
    return out, summary


def test_training_writes_per_task_accuracy_and_counts(full_run):
    out, summary = full_run
    metrics = read(out / "seed_0" / "metrics.json")
    assert set(metrics["tasks"]) == {"order", "pick"} and 0 <= metrics["average"] <= 1
    assert summary["average"]["n"] == 1 and summary["average"]["mean"] == metrics["average"]
    assert metrics["evaluation"]["tasks"]["pick"]["multiple_choice_acc"] is not None
    assert metrics["tokenization"]["kept"] == 24 and metrics["train_rows"] == 24 and metrics["iterations"] == 12
    assert metrics["response_tokens"] == metrics["tokenization"]["response_tokens"] > 0
    assert metrics["train_tokens"] == metrics["tokenization"]["tokens"]
    assert metrics["trainable_parameters"] < metrics["num_parameters"]
    history = metrics["history"]
    assert history[1]["train_loss"] < history[0]["train_loss"]  # it learns
    assert history[1]["test_accuracy"] == metrics["average"]  # the last epoch's evaluation is the final one
    assert len(metrics["epoch_mean_lr"]) == 2 and metrics["epoch_mean_lr"][0] > metrics["epoch_mean_lr"][1] > 0
    assert (out / "seed_0" / "adapter" / "adapter_config.json").is_file()
    assert (out / "seed_0" / "base_model" / "config.json").is_file() and (out / "config.json").is_file()


def test_resume_gives_the_uninterrupted_metrics(full_run, data_dir, tmp_path):
    full, _ = full_run
    resumed = tmp_path / "resumed"
    shutil.copytree(full / "seed_0" / "checkpoints" / "epoch_1", resumed / "seed_0" / "checkpoints" / "epoch_1")
    main(_base(data_dir) + ["--epochs", "2", "--eval_path", str(data_dir / "pool"), "--eval_each_epoch", "--output_dir",
                            str(resumed), "--resume_from_checkpoint", "latest"])
    a, b = read(full / "seed_0" / "metrics.json"), read(resumed / "seed_0" / "metrics.json")
    assert a["tasks"] == b["tasks"] and a["average"] == b["average"] and a["epoch_mean_lr"] == b["epoch_mean_lr"]
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert [h["test_accuracy"] for h in a["history"]] == [h["test_accuracy"] for h in b["history"]]


def test_warmup_mode_writes_what_the_gradient_embedder_needs(data_dir, tmp_path):
    out = tmp_path / "warm"
    summary = main(_base(data_dir) + ["--warmup_fraction", "0.5", "--warmup_epochs", "2", "--output_dir", str(out),
                                      "--no_checkpointing", "--gradient_accumulation_steps", "2"])
    assert summary["mode"] == "warmup" and summary["train_rows"] == 12
    metrics = read(out / "seed_0" / "metrics.json")
    checkpoints = load_warmup(out / "seed_0" / "warmup")
    assert [c.epoch for c in checkpoints] == [1, 2]
    assert [c.mean_lr for c in checkpoints] == metrics["epoch_mean_lr"]
    assert checkpoints[1].info["step"] == 4 and checkpoints[0].info["updates_in_epoch"] == 2  # 3 batches, 2 updates
    rows = read(out / "seed_0" / "warmup" / "row_ids.json")["row_ids"]
    assert len(rows) == 12 and rows == sorted(rows) and max(rows) < 24
    ckpt = checkpoints[-1]
    tokenizer = ckpt.load_tokenizer()
    pool = hp.data.tokenize_messages(_pool().select(rows[:3]), tokenizer, max_length=ckpt.info["max_length"])
    embedder = hp.embed.LoRAGradientEmbedder(ckpt.model, dim=64, pad_token_id=tokenizer.pad_token_id,
                                             **ckpt.embedder_kwargs())
    grads = np.asarray(embedder.map(pool.select_columns(["input_ids", "labels"]), batch_size=3)["grad"])
    assert grads.shape == (3, 64) and np.isfinite(grads).all() and np.abs(grads).sum() > 0


def test_subset_by_row_id_and_selector(data_dir, tmp_path):
    subset = hp.select.random(_pool(), fraction=0.25, seed=1)
    subset.save_to_disk(str(tmp_path / "subset"))
    common = ["--epochs", "1", "--no_checkpointing", "--no_save_model"]
    main(_base(data_dir) + common + ["--subset_path", str(tmp_path / "subset"), "--output_dir", str(tmp_path / "sub")])
    metrics = read(tmp_path / "sub" / "seed_0" / "metrics.json")
    assert metrics["train_rows"] == 6 and metrics["subset"]["source"] == "path"
    assert metrics["pruning_ratio"] == pytest.approx(0.75) and metrics["average"] is None
    main(_base(data_dir) + common + ["--selector", "random:fraction=0.5", "--output_dir", str(tmp_path / "sel")])
    assert read(tmp_path / "sel" / "seed_0" / "metrics.json")["train_rows"] == 12
    big = hp.select.random(_pool(60), fraction=0.5, seed=0)
    big.save_to_disk(str(tmp_path / "big"))
    with pytest.raises(ValueError, match=r"row_id values must be distinct positions in the train split \(0\.\.23\)"):
        main(_base(data_dir) + common + ["--subset_path", str(tmp_path / "big"), "--output_dir", str(tmp_path / "bad")])


def test_untuned_model_is_evaluated_with_zero_epochs_and_shots_from_the_eval_pool(data_dir, tmp_path):
    DatasetDict({"test": _eval_rows(), "validation": _eval_rows().select(range(4))}).save_to_disk(str(tmp_path / "eval"))
    summary = main(_base(data_dir) + ["--epochs", "0", "--eval_path", str(tmp_path / "eval"), "--few_shot", "1",
                                      "--output_dir", str(tmp_path / "base")])
    metrics = read(tmp_path / "base" / "seed_0" / "metrics.json")
    assert metrics["evaluation"]["settings"]["few_shot"] == 1
    assert metrics["iterations"] == 0 and metrics["history"] == [] and not (tmp_path / "base" / "seed_0" / "adapter").exists()
    assert summary["average"]["mean"] == metrics["average"] and set(metrics["tasks"]) == {"order", "pick"}


def test_packing_run_trains_on_fewer_longer_rows_and_gradient_checkpointing_changes_nothing(data_dir, tmp_path):
    args = _base(data_dir) + ["--epochs", "2", "--packing", "--max_length", "96", "--no_checkpointing", "--no_save_model"]
    main(args + ["--output_dir", str(tmp_path / "packed")])
    main(args + ["--gradient_checkpointing", "--output_dir", str(tmp_path / "recomputed")])
    metrics = read(tmp_path / "packed" / "seed_0" / "metrics.json")
    assert metrics["train_examples"] == 24 and metrics["train_sequences"] < 24
    assert math.isfinite(metrics["history"][0]["train_loss"])
    recomputed = read(tmp_path / "recomputed" / "seed_0" / "metrics.json")
    assert [h["train_loss"] for h in recomputed["history"]] == pytest.approx([h["train_loss"] for h in metrics["history"]],
                                                                              rel=1e-5)


def test_bad_input_is_an_error_or_a_counted_skip(data_dir, tmp_path):
    common = ["--epochs", "1", "--no_checkpointing", "--no_save_model"]
    bad = _pool(8).to_dict()
    bad["messages"][2] = [{"role": "user", "content": "no answer here"}]
    bad["messages"][5] = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]
    bad["messages"][6] = [{"role": "narrator", "content": "hi"}, {"role": "assistant", "content": "apple"}]
    Dataset.from_dict(bad).save_to_disk(str(tmp_path / "bad"))
    args = _base(data_dir) + common + ["--train_path", str(tmp_path / "bad")]
    with pytest.raises(ValueError, match="row 2"):
        main(args + ["--output_dir", str(tmp_path / "r1")])
    main(args + ["--on_invalid", "skip", "--output_dir", str(tmp_path / "r2")])
    stats = read(tmp_path / "r2" / "seed_0" / "metrics.json")["tokenization"]
    assert stats["kept"] == 5 and sum(stats["dropped"].values()) == 3

    # A prompt longer than --max_length: truncated rows lose their response and are dropped, counted.
    long = _pool(8).to_dict()
    long["messages"][0] = [{"role": "user", "content": " ".join(WORDS * 20)}, {"role": "assistant", "content": "apple"}]
    Dataset.from_dict(long).save_to_disk(str(tmp_path / "long"))
    main(_base(data_dir) + common + ["--train_path", str(tmp_path / "long"), "--output_dir", str(tmp_path / "r3")])
    stats = read(tmp_path / "r3" / "seed_0" / "metrics.json")["tokenization"]
    assert stats["kept"] == 7 and stats["dropped"] == {"no response after truncation": 1}

    with pytest.raises(ValueError, match=r"\['c_attn'\].*q_proj"):
        main(_base(data_dir) + common + ["--lora_target_modules", "c_attn", "--output_dir", str(tmp_path / "r4")])
    plain = train_chat_tokenizer(WORDS, vocab_size=300, template="plain")
    plain.save_pretrained(str(tmp_path / "plain_tok"))
    with pytest.raises(ValueError, match="chat template"):
        main(_base(data_dir) + common + ["--tokenizer", str(tmp_path / "plain_tok"), "--output_dir", str(tmp_path / "r5")])
    with pytest.raises(ValueError, match="--warmup_fraction draws its own rows"):
        main(_base(data_dir) + ["--warmup_fraction", "0.1", "--selector", "random:fraction=0.5"])
    with pytest.raises(ValueError, match="--few_shot 2 needs solved examples"):  # the pool has no validation split
        main(_base(data_dir) + common + ["--eval_path", str(data_dir / "pool"), "--few_shot", "2",
                                         "--output_dir", str(tmp_path / "r7")])
    assert not (tmp_path / "r7" / "seed_0" / "metrics.json").exists()
    with pytest.raises(ValueError, match="exactly one of --train_path"):
        main(["--output_dir", str(tmp_path / "r6")])
    assert load_from_disk(str(tmp_path / "bad"))["messages"][2] == [{"role": "user", "content": "no answer here"}]


@pytest.mark.slow
def test_smollm2_trains_a_few_steps_and_evaluates(data_dir, tmp_path):
    summary = main(["--train_path", str(data_dir / "pool"), "--model", "smollm2", "--max_length", "64", "--batch_size", "4",
                    "--max_train_samples", "8", "--epochs", "1", "--lora_r", "4", "--learning_rate", "1e-4",
                    "--eval_path", str(data_dir / "pool"), "--max_new_tokens", "4", "--cpu", "--no_checkpointing",
                    "--output_dir", str(tmp_path / "smol")])
    metrics = read(tmp_path / "smol" / "seed_0" / "metrics.json")
    assert metrics["iterations"] == 2 and math.isfinite(metrics["history"][0]["train_loss"])
    assert metrics["num_parameters"] > 100_000_000 and 0 <= summary["average"]["mean"] <= 1


def test_configs_hold_the_documented_settings():
    from recipes.instruction_tuning import make_parser
    from recipes.trainer.config import parse_config

    _, gpu = parse_config(make_parser(), ["--config", "recipes/configs/instruction_less_gpu.yaml"])
    assert (gpu.lora_r, gpu.learning_rate, gpu.epochs, gpu.batch_size, gpu.gradient_accumulation_steps) == (64, 1e-5, 4, 8, 16)
    assert gpu.lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"] and gpu.mixed_precision == "bf16"
    _, cpu = parse_config(make_parser(), ["--config", "recipes/configs/instruction_smollm2_cpu.yaml", "--lora_r", "4"])
    assert cpu.model == "smollm2" and cpu.lora_r == 4 and cpu.mixed_precision == "no"


@pytest.mark.slow  # two torch.distributed CPU processes (gloo) re-importing torch/transformers: ~30 s
def test_two_processes_warm_up_like_one(data_dir, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    args = _base(data_dir) + ["--warmup_fraction", "0.5", "--warmup_epochs", "2", "--no_checkpointing",
                              "--eval_path", str(data_dir / "pool")]
    main(args + ["--output_dir", str(tmp_path / "one")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(repo / "recipes/instruction_tuning.py"), *args, "--output_dir", str(tmp_path / "two")]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics_one, metrics_two = (read(tmp_path / run / "seed_0" / "metrics.json") for run in ("one", "two"))
    assert metrics_two["num_processes"] == 2 and metrics_two["evaluation"]["settings"]["processes"] == 2
    assert metrics_two["evaluation"]["tasks"] == metrics_one["evaluation"]["tasks"]  # the rows shared out, then gathered
    one, two = load_warmup(tmp_path / "one" / "seed_0"), load_warmup(tmp_path / "two" / "seed_0")
    assert [c.mean_lr for c in one] == [c.mean_lr for c in two]
    for a, b in zip(one, two):  # the update is the global batch's token-mean on 1 or 2 processes
        assert a.info["step"] == b.info["step"]
        for name, moments in a.optimizer_state.items():
            torch.testing.assert_close(b.optimizer_state[name]["exp_avg"], moments["exp_avg"], rtol=1e-4, atol=1e-7)
            torch.testing.assert_close(b.optimizer_state[name]["exp_avg_sq"], moments["exp_avg_sq"], rtol=1e-4, atol=1e-10)


@pytest.mark.slow  # reads ShareGPT and the BIG-bench sdist: ~1.5 min
def test_offline_pool_trains_and_scores_the_target_tasks(tmp_path):
    from hf_prune.data.bigbench import bigbench_path

    try:
        bigbench_path()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    pool = {"pool_size": 40, "target_tasks": ["logical_deduction"], "validation_per_task": 2, "test_per_task": 6,
            "source_examples_per_task": 2}
    summary = main(["--dataset", "offline", "--pool_kwargs", json.dumps(pool), "--model", "tiny", "--vocab_size", "300",
                    "--tiny_hidden_size", "32", "--max_length", "128", "--batch_size", "8", "--epochs", "1",
                    "--max_new_tokens", "4", "--few_shot", "1", "--cpu", "--no_checkpointing", "--seeds", "0", "1",
                    "--output_dir", str(tmp_path / "offline")])
    assert summary["full_train_size"] == 40 and summary["average"]["n"] == 2
    metrics = read(tmp_path / "offline" / "seed_0" / "metrics.json")
    assert list(metrics["tasks"]) and all(task.startswith("logical_deduction") for task in metrics["tasks"])
    # logical_deduction's subtasks are the target tasks, 6 test rows each.
    assert all(entry["n"] == 6 for entry in metrics["evaluation"]["tasks"].values())


def test_alpaca_rows_are_converted_before_training(data_dir, tmp_path):
    rows = {"instruction": [f"Which comes first, {a} or {b}?" for a, b in zip(WORDS, WORDS[::-1])],
            "input": ["", "Think.", "", "", "", "", "", ""], "output": [min(a, b) for a, b in zip(WORDS, WORDS[::-1])]}
    Dataset.from_dict(rows).save_to_disk(str(tmp_path / "alpaca"))
    common = _base(data_dir) + ["--train_path", str(tmp_path / "alpaca"), "--epochs", "1", "--no_checkpointing",
                                "--no_save_model"]
    main(common + ["--dataset_format", "alpaca", "--selector", "random:fraction=0.5", "--output_dir", str(tmp_path / "a")])
    metrics = read(tmp_path / "a" / "seed_0" / "metrics.json")
    assert metrics["full_train_size"] == 8 and metrics["train_rows"] == 4 and metrics["tokenization"]["kept"] == 4
    with pytest.raises(KeyError, match="messages"):
        main(common + ["--output_dir", str(tmp_path / "b")])  # Alpaca columns read as the schema: no 'messages'
    with pytest.raises(ValueError, match="--dataset_format must be one of"):
        main(common + ["--dataset_format", "sharegpt", "--output_dir", str(tmp_path / "c")])


def test_resumed_warmup_rebuilds_the_checkpoint_a_kill_lost(data_dir, tmp_path):
    args = _base(data_dir) + ["--warmup_fraction", "0.5", "--warmup_epochs", "2"]
    main(args + ["--output_dir", str(tmp_path / "full")])
    # Killed after epoch 1's accelerator checkpoint, before its warm-up checkpoint was written.
    resumed = tmp_path / "resumed" / "seed_0"
    shutil.copytree(tmp_path / "full" / "seed_0" / "checkpoints" / "epoch_1", resumed / "checkpoints" / "epoch_1")
    main(args + ["--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint", "latest"])
    full, again = load_warmup(tmp_path / "full" / "seed_0"), load_warmup(resumed)
    assert [c.epoch for c in again] == [1, 2]
    for a, b in zip(full, again):
        assert (a.mean_lr, a.info["step"], a.info["updates_in_epoch"]) == (b.mean_lr, b.info["step"], b.info["updates_in_epoch"])
        for name, moments in a.optimizer_state.items():
            assert torch.equal(moments["exp_avg"], b.optimizer_state[name]["exp_avg"]), name
            assert torch.equal(moments["exp_avg_sq"], b.optimizer_state[name]["exp_avg_sq"]), name


def test_logits_at_the_predicting_positions_give_the_same_loss_and_gradients():
    from recipes.instruction_tuning import predicting_positions

    tokenizer, model, rows = _tiny_model_and_rows(2, (0, 3))
    batch = _padded(tokenizer, rows)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    positions = predicting_positions(batch["labels"])
    assert 0 < len(positions) < batch["input_ids"].shape[1] - 1
    full, _, _ = response_loss(model(**inputs).logits, batch["labels"])
    full.backward()
    expected = model.model.embed_tokens.weight.grad.clone()
    model.zero_grad()
    kept, _, targets = response_loss(model(**inputs, logits_to_keep=positions).logits, batch["labels"], positions)
    kept.backward()
    assert kept.item() == pytest.approx(full.item(), rel=1e-6) and len(targets) == sum(r["num_response_tokens"] for r in rows)
    torch.testing.assert_close(model.model.embed_tokens.weight.grad, expected, rtol=1e-5, atol=1e-7)


def test_token_rows_read_the_columns_through_arrow_and_pack_consecutive_examples():
    from recipes.instruction_tuning import TokenRows, pack_boundaries

    assert pack_boundaries(np.array([2, 3, 4, 1]), 5).tolist() == [[0, 2], [2, 4]]
    assert pack_boundaries(np.array([5, 5]), 5).tolist() == [[0, 1], [1, 2]]
    assert pack_boundaries(np.array([], dtype=np.int64), 5).shape == (0, 2)
    ds = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]],
                            "labels": [[-100, 2, 3], [-100, 5], [-100, -100, 8, 9], [10]], "task": list("abcd")})
    view = ds.select([3, 0, 2])  # an indices mapping: rows in the view's order
    rows = TokenRows.from_dataset(view)
    assert len(rows) == 3 and rows.response_tokens == 5
    assert [rows[i]["input_ids"].tolist() for i in range(3)] == [[10], [1, 2, 3], [6, 7, 8, 9]]
    assert [rows[i]["labels"].tolist() for i in range(3)] == [[10], [-100, 2, 3], [-100, -100, 8, 9]]
    packed = TokenRows.from_dataset(view, pack_to=4)
    assert len(packed) == 2 and packed.response_tokens == 5
    assert packed[0]["input_ids"].tolist() == [10, 1, 2, 3] and packed[0]["labels"].tolist() == [-100, -100, 2, 3]
    assert packed[0]["position_ids"].tolist() == [0, 0, 1, 2] and packed[1]["position_ids"].tolist() == [0, 1, 2, 3]
    assert ds["labels"][3] == [10]  # the dataset is not modified
    bad = Dataset.from_dict({"input_ids": [[1, 2], [3]], "labels": [[1, 2], [3, 4]]})
    with pytest.raises(ValueError, match="row 1: 'input_ids' has 1 tokens but 'labels' 2"):
        TokenRows.from_dataset(bad)


def test_a_pool_saved_again_to_the_same_path_is_read_again(data_dir, tmp_path):
    common = _base(data_dir) + ["--train_path", str(tmp_path / "pool"), "--epochs", "1", "--no_checkpointing",
                                "--no_save_model"]
    _pool(8).save_to_disk(str(tmp_path / "pool"))
    main(common + ["--output_dir", str(tmp_path / "a")])
    shutil.rmtree(tmp_path / "pool")
    _pool(12).save_to_disk(str(tmp_path / "pool"))
    main(common + ["--output_dir", str(tmp_path / "b")])
    assert read(tmp_path / "a" / "seed_0" / "metrics.json")["full_train_size"] == 8
    assert read(tmp_path / "b" / "seed_0" / "metrics.json")["full_train_size"] == 12
