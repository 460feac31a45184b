import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import DatasetDict, load_from_disk

import hf_prune as hp
from recipes.clip_pretraining import (
    ZeroShotTask,
    build_clip,
    class_embeddings,
    main,
    retrieval_recall,
    train_tokenizer,
    zero_shot_accuracy,
)
from recipes.trainer.checkpoints import complete_checkpoints

# 128 scenes, batch 32, two epochs: a few seconds on one CPU thread.
BASE = ["--num_train", "128", "--num_test", "64", "--batch_size", "32", "--eval_batch_size", "64", "--cpu",
        "--probe_train_size", "128"]
METRIC_KEYS = ("zero_shot", "retrieval", "linear_probe", "logit_scale")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Two threads on a shared two-core machine are several times slower than one for this tiny model.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read(path):
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip") / "full"
    summary = main(BASE + ["--epochs", "2", "--record_dynamics", "--output_dir", str(out)])
    return out, summary


def test_end_to_end_metrics_dynamics_and_saved_model(full_run):
    out, summary = full_run
    metrics = read(out / "seed_0" / "metrics.json")
    assert metrics["epochs"] == 2 and metrics["iterations"] == 8 and metrics["train_size"] == 128
    assert set(metrics["zero_shot"]) == {"shape", "color"} == set(metrics["linear_probe"])
    assert set(metrics["retrieval"]) == {f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
    values = [*metrics["zero_shot"].values(), *metrics["retrieval"].values(), *metrics["linear_probe"].values()]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert metrics["retrieval"]["i2t_R@1"] <= metrics["retrieval"]["i2t_R@5"] <= metrics["retrieval"]["i2t_R@10"]
    assert metrics["logit_scale"] <= np.log(100) + 1e-6
    assert summary["zero_shot"]["color"]["n"] == 1 and summary["retrieval"]["t2i_R@5"]["mean"] == metrics["retrieval"]["t2i_R@5"]
    config = read(out / "config.json")
    assert config["configs"]["train"]["weight_decay"] == 0.2 and config["git_sha"] and "transformers" in config["versions"]
    assert [p.name for p in complete_checkpoints(out / "seed_0" / "checkpoints")] == ["epoch_1", "epoch_2"]

    # Dynamics: one record per pair and epoch, joinable by row_id, readable by the dynamics scores.
    dynamics = load_from_disk(str(out / "seed_0" / "dynamics"))
    assert sorted(dynamics["row_id"]) == list(range(128))
    ranks = np.array(dynamics["i2t_rank"])
    assert ranks.shape == (128, 2) and ranks.min() >= 0 and ranks.max() <= 31  # rank within a batch of 32
    struct = dynamics["dynamics"]
    correct = np.array([row["correct"] for row in struct])
    np.testing.assert_array_equal(correct, (ranks == 0).astype(np.float32))
    assert np.all(np.array(dynamics["pair_loss"]) > 0)
    pool = hp.data.load_scenes(num_train=128, num_test=64)["train"]
    scored = hp.score.el2n(hp.dynamics.attach_dynamics(pool, dynamics))
    assert len(scored["el2n"]) == 128

    # The saved model and tokenizer load back and give the recipe's features.
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(str(out / "seed_0" / "model"))
    tokenizer = AutoTokenizer.from_pretrained(str(out / "seed_0" / "model"))
    assert len(tokenizer) <= model.config.text_config.vocab_size
    assert float(model.logit_scale.detach()) == pytest.approx(metrics["logit_scale"])
    # ... and hp.embed.CLIPEmbedder loads the folder as it is (a reference CLIP) and embeds as the recipe does.
    from recipes.clip_pretraining import Normalizer, _tokenize, encode, images_to_tensor

    test = hp.data.load_scenes(num_train=128, num_test=64)["test"].select(range(16))
    embedded = hp.embed.CLIPEmbedder(str(out / "seed_0" / "model"), image_column="image", text_column="caption").map(test)
    processor = read(out / "seed_0" / "model" / "preprocessor_config.json")
    ids, mask = _tokenize(tokenizer, list(test["caption"]), 32)
    images, texts = encode(model.eval(), Normalizer(processor["image_mean"], processor["image_std"]),
                           images_to_tensor(test, "image", 64), ids, mask, 16, "cpu")
    np.testing.assert_allclose(np.array(embedded["image_emb"]), images.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.array(embedded["text_emb"]), texts.numpy(), atol=1e-5)


def test_resume_from_a_checkpoint_gives_the_uninterrupted_metrics(tmp_path, full_run):
    full, _ = full_run
    resumed = tmp_path / "resumed"
    shutil.copytree(full / "seed_0" / "checkpoints" / "epoch_1", resumed / "seed_0" / "checkpoints" / "epoch_1")
    main(BASE + ["--epochs", "2", "--record_dynamics", "--output_dir", str(resumed), "--resume_from_checkpoint", "latest"])
    a, b = read(full / "seed_0" / "metrics.json"), read(resumed / "seed_0" / "metrics.json")
    for key in METRIC_KEYS:
        assert a[key] == b[key], key
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    da, db = load_from_disk(str(full / "seed_0" / "dynamics")), load_from_disk(str(resumed / "seed_0" / "dynamics"))
    assert da["pair_loss"] == db["pair_loss"] and da["dynamics"] == db["dynamics"]


def test_selector_spec_saved_subset_and_a_row_id_outside_the_pool(tmp_path):
    summary = main(BASE + ["--epochs", "1", "--selector", "random:fraction=0.5", "--output_dir", str(tmp_path / "sel"),
                           "--no_linear_probe", "--no_checkpointing", "--no_save_model"])
    metrics = read(tmp_path / "sel" / "seed_0" / "metrics.json")
    assert summary["train_size"] == 64 and metrics["subset"]["source"] == "selector"
    assert metrics["pruning_ratio"] == pytest.approx(0.5)

    pool = hp.data.load_scenes(num_train=128, num_test=64)["train"]
    subset = hp.select.random(pool, fraction=0.25, seed=3)
    subset.save_to_disk(str(tmp_path / "subset"))
    main(BASE + ["--epochs", "1", "--subset_path", str(tmp_path / "subset"), "--output_dir", str(tmp_path / "saved"),
                 "--no_linear_probe", "--no_checkpointing", "--no_save_model"])
    assert read(tmp_path / "saved" / "seed_0" / "metrics.json")["train_size"] == 32

    # A subset of a larger pool: its row_id values do not fit this one.
    big = hp.select.random(hp.data.load_scenes(num_train=400, num_test=8)["train"], fraction=0.5, seed=0)
    big.save_to_disk(str(tmp_path / "big"))
    with pytest.raises(ValueError, match=r"row_id values must be distinct positions in the train split \(0\.\.127\)"):
        main(BASE + ["--epochs", "1", "--subset_path", str(tmp_path / "big"), "--output_dir", str(tmp_path / "bad")])
    assert not (tmp_path / "bad" / "seed_0" / "metrics.json").exists()


def test_web_noise_share_is_reported(tmp_path):
    main(BASE + ["--epochs", "1", "--web_noise_rates", '{"mismatch": 0.25, "uninformative": 0.125}',
                 "--output_dir", str(tmp_path / "noisy"), "--no_linear_probe", "--no_checkpointing", "--no_save_model"])
    counts = read(tmp_path / "noisy" / "seed_0" / "metrics.json")["corrupted_in_train"]
    assert counts["is_corrupted"] == 48 and counts["share"] == pytest.approx(0.375)
    assert counts["by_kind"] == {"mismatch": 32, "uninformative": 16}


def _saved_pool(tmp_path, **renames):
    ds = hp.data.load_scenes(num_train=32, num_test=16)
    ds = DatasetDict({split: d.select_columns(["image", "caption", "color"]) for split, d in ds.items()})
    for old, new in renames.items():
        ds = ds.rename_column(old, new)
    path = tmp_path / "pool"
    ds.save_to_disk(str(path))
    return path, ds


def test_a_saved_pool_with_other_column_names_trains_and_bad_columns_are_named(tmp_path):
    path, _ = _saved_pool(tmp_path, image="jpg", caption="txt")
    args = ["--dataset", str(path), "--image_column", "jpg", "--text_column", "txt", "--label_column", "color",
            "--batch_size", "16", "--epochs", "1", "--cpu", "--no_checkpointing", "--no_save_model"]
    main(args + ["--output_dir", str(tmp_path / "ok")])
    metrics = read(tmp_path / "ok" / "seed_0" / "metrics.json")
    assert set(metrics["zero_shot"]) == {"color"} and metrics["train_size"] == 32
    with pytest.raises(KeyError, match="'caption'"):
        main(args[:4] + args[6:] + ["--output_dir", str(tmp_path / "bad")])  # default caption column is missing
    assert not (tmp_path / "bad" / "seed_0").exists()


def test_empty_captions_are_an_error_naming_the_column(tmp_path):
    _, ds = _saved_pool(tmp_path / "x")
    captions = list(ds["train"]["caption"])
    captions[3] = "  "
    ds["train"] = ds["train"].remove_columns("caption").add_column("caption", captions)
    ds.save_to_disk(str(tmp_path / "blank"))
    with pytest.raises(ValueError, match="caption"):
        main(["--dataset", str(tmp_path / "blank"), "--batch_size", "16", "--epochs", "1", "--cpu",
              "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "seed_0").exists()


def test_a_tokenizer_larger_than_the_checkpoint_is_an_error_naming_both_sizes(tmp_path, full_run):
    full, _ = full_run
    big = train_tokenizer([f"word{i}" for i in range(3000)], vocab_size=4000, max_length=32)
    big.save_pretrained(str(tmp_path / "big_tokenizer"))
    model_dir = full / "seed_0" / "model"
    rows = read(model_dir / "config.json")["text_config"]["vocab_size"]
    with pytest.raises(ValueError, match=rf"tokenizer has {len(big)} tokens .* text embedding of {rows} rows"):
        main(BASE + ["--epochs", "1", "--model", str(model_dir), "--tokenizer", str(tmp_path / "big_tokenizer"),
                     "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "seed_0").exists()
    # The matching tokenizer (saved beside the weights) continues training the checkpoint.
    main(BASE + ["--epochs", "1", "--model", str(model_dir), "--output_dir", str(tmp_path / "cont"), "--no_linear_probe",
                 "--no_checkpointing", "--no_save_model"])
    assert read(tmp_path / "cont" / "seed_0" / "metrics.json")["vocab_size"] == read(full / "seed_0" / "metrics.json")["vocab_size"]


def test_bad_options_are_named(tmp_path):
    for flag, value, message in (("--mixed_precision", "fp8", "--mixed_precision"),
                                 ("--gradient_accumulation_steps", "0", "--gradient_accumulation_steps"),
                                 ("--templates", '["no placeholder"]', "--templates")):
        with pytest.raises(ValueError, match=message):
            main(BASE + ["--epochs", "1", flag, value, "--output_dir", str(tmp_path / flag.strip("-"))])


def test_retrieval_recall_by_hand():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    texts = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])
    # sim = images @ texts.T = [[1, 1, .6], [0, 0, .8], [1, 1, .6]]
    # i2t ranks: row 0: tie with col 1 at a higher position → 0; row 1: col 2 higher and col 0 ties at a lower
    # position → 2; row 2: cols 0, 1 higher → 2.
    # t2i ranks: col 0 vs image 0: image 2 ties at a higher position → 0; col 1 vs image 1: images 0, 2 higher → 2;
    # col 2 vs image 2: image 1 higher (.8 > .6), image 0 ties at a lower position → 2.
    r = retrieval_recall(images, texts, ks=(1, 2, 3))
    assert r["i2t_R@1"] == pytest.approx(1 / 3) and r["i2t_R@2"] == pytest.approx(1 / 3) and r["i2t_R@3"] == 1.0
    assert r["t2i_R@1"] == pytest.approx(1 / 3) and r["t2i_R@2"] == pytest.approx(1 / 3) and r["t2i_R@3"] == 1.0


def test_zero_shot_by_hand_and_template_averaging():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert zero_shot_accuracy(images, classes, np.array([0, 1, 0])) == 1.0  # the tie goes to class 0
    assert zero_shot_accuracy(images, classes, np.array([1, 1, 1])) == pytest.approx(1 / 3)

    tokenizer = train_tokenizer(["a red circle", "a blue circle", "red", "blue"], vocab_size=32, max_length=8)
    model = build_clip("tiny", tokenizer, image_size=16, max_length=8).eval()
    task = ZeroShotTask("color", ["red", "blue"], ["a {} circle", "{}"], "color")
    got = class_embeddings(model, tokenizer, task, 8, "cpu")
    tokens = tokenizer(["a red circle", "red", "a blue circle", "blue"], padding="max_length", max_length=8, return_tensors="pt")
    with torch.no_grad():
        feats = model.get_text_features(**tokens)
    feats = torch.nn.functional.normalize(getattr(feats, "pooler_output", feats), dim=-1).view(2, 2, -1).mean(1)
    torch.testing.assert_close(got, torch.nn.functional.normalize(feats, dim=-1))
    assert torch.allclose(got.norm(dim=1), torch.ones(2))


def test_tokenizer_keeps_bos_and_eos_when_truncating():
    tokenizer = train_tokenizer(["one two three four five six"], vocab_size=32, max_length=4)
    ids = tokenizer(["one two three four five six"], truncation=True, max_length=4)["input_ids"][0]
    assert len(ids) == 4 and ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer("purple")["input_ids"][1] == tokenizer.unk_token_id


@pytest.mark.slow  # ~1 min on one CPU thread: the loss leaves its ln(batch) plateau after ~150 steps
def test_tiny_clip_learns_colour_above_chance(tmp_path):
    summary = main(["--num_train", "2048", "--num_test", "256", "--batch_size", "64", "--epochs", "8",
                    "--learning_rate", "1e-3", "--cpu", "--no_checkpointing", "--no_save_model", "--output_dir", str(tmp_path)])
    # 8 colours (chance 0.125) and 256 test captions (chance R@5 ≈ 0.02).
    assert summary["zero_shot"]["color"]["mean"] > 0.125 + 0.15
    assert summary["retrieval"]["i2t_R@5"]["mean"] > 0.1


def test_gpu_yaml_config_holds_the_app_a2_settings():
    from recipes.clip_pretraining import make_parser
    from recipes.trainer.config import parse_config

    path = Path(__file__).resolve().parents[2] / "recipes" / "configs" / "clip_vitb32_cc12m.yaml"
    data, train = parse_config(make_parser(), ["--config", str(path), "--epochs", "2"])
    assert (train.batch_size, train.learning_rate, train.weight_decay, train.warmup_epochs) == (2048, 1e-4, 0.2, 1)
    assert train.epochs == 2 and train.mixed_precision == "bf16" and not train.pretrained  # flags override the file
    assert (data.image_column, data.text_column, data.test_size) == ("jpg", "txt", 10000)


def test_a_pool_without_a_test_split_holds_out_test_size_rows(tmp_path):
    ds = hp.data.load_scenes(num_train=48, num_test=1)["train"].select_columns(["image", "caption"])
    DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "pool"))
    main(["--dataset", str(tmp_path / "pool"), "--test_size", "16", "--batch_size", "16", "--epochs", "1", "--cpu",
          "--no_checkpointing", "--no_save_model", "--output_dir", str(tmp_path / "out")])
    metrics = read(tmp_path / "out" / "seed_0" / "metrics.json")
    assert (metrics["train_size"], metrics["test_size"]) == (32, 16) and metrics["zero_shot"] == {}
    with pytest.raises(KeyError, match="no split 'test'"):
        main(["--dataset", str(tmp_path / "pool"), "--epochs", "1", "--cpu", "--output_dir", str(tmp_path / "bad")])


@pytest.mark.slow  # two torch.distributed CPU processes (gloo) re-importing torch/transformers: ~30 s
def test_two_processes_train_on_the_global_batch_and_record_every_pair(tmp_path):
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    # 120 rows, batch 32: the last batch (24 rows) is split unevenly across the processes.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(repo / "recipes/clip_pretraining.py"), *BASE, "--num_train", "120", "--epochs", "2", "--record_dynamics",
           "--output_dir", str(tmp_path / "out")]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = read(tmp_path / "out" / "seed_0" / "metrics.json")
    assert metrics["num_processes"] == 2 and metrics["iterations"] == 8
    dynamics = load_from_disk(str(tmp_path / "out" / "seed_0" / "dynamics"))
    assert sorted(dynamics["row_id"]) == list(range(120))
    ranks = np.array(dynamics["i2t_rank"])
    assert ranks.max() <= 31 and ranks.max() > 15  # ranks run over the global batch of 32, not a shard of 16


# The schedule advances per batch while AdamW skips the accumulating batches, which torch warns about.
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")
def test_gradient_accumulation_updates_once_per_k_batches(tmp_path):
    for k in (1, 2):
        out = tmp_path / f"k{k}"
        main(BASE + ["--epochs", "1", "--gradient_accumulation_steps", str(k), "--no_linear_probe", "--no_save_model",
                     "--output_dir", str(out)])
        optimizer = torch.load(out / "seed_0" / "checkpoints" / "epoch_1" / "optimizer.bin", weights_only=False)
        steps = {float(state["step"]) for state in optimizer["state"].values()}
        assert steps == {4.0 / k}, k  # 128 rows in batches of 32: 4 batches, 4 / k AdamW updates


def test_digits_captions_with_grey_images_resized_for_the_model(tmp_path):
    main(["--dataset", "digits_captions", "--max_train_samples", "64", "--max_test_samples", "32", "--image_size", "16",
          "--batch_size", "32", "--epochs", "1", "--cpu", "--no_checkpointing", "--no_save_model", "--probe_train_size", "64",
          "--output_dir", str(tmp_path)])
    metrics = read(tmp_path / "seed_0" / "metrics.json")
    assert set(metrics["zero_shot"]) == {"label"} == set(metrics["linear_probe"]) and metrics["image_size"] == 16


def test_an_undecodable_image_is_an_error_naming_the_column(tmp_path):
    from datasets import Image

    _, ds = _saved_pool(tmp_path / "x", image="jpg")
    train = ds["train"].cast_column("jpg", Image(decode=False))
    images = list(train["jpg"])
    images[5] = {"bytes": b"not an image", "path": None}
    ds["train"] = train.remove_columns("jpg").add_column("jpg", images).cast_column("jpg", Image())
    ds.save_to_disk(str(tmp_path / "broken"))
    with pytest.raises(ValueError, match="'jpg'"):
        main(["--dataset", str(tmp_path / "broken"), "--image_column", "jpg", "--batch_size", "16", "--epochs", "1",
              "--cpu", "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "seed_0").exists()
