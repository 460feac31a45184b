import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator

import hf_prune as hp
from hf_prune.data import load_digits
from hf_prune.dynamics import DYNAMICS_FIELDS, read_dynamics
from recipes.image_classification import TrainConfig, _batch_size_for, main
from recipes.trainer.checkpoints import (
    CHECKPOINT_MARKER,
    CheckpointError,
    checkpoint_problem,
    complete_checkpoints,
)
from recipes.trainer.data import augment, channel_statistics
from recipes.trainer.metrics import aggregate
from recipes.trainer.models import build_model

REPO = Path(__file__).resolve().parents[2]
# A few hundred digits rows, 8×8 images: one epoch takes well under a second on CPU.
BASE = [
    "--dataset", "digits", "--max_train_samples", "400", "--max_test_samples", "200", "--batch_size", "64",
    "--crop_padding", "1", "--learning_rate", "0.05", "--cpu",
]


def read(path):
    return json.loads(Path(path).read_text())


def dynamics_arrays(path):
    from datasets import load_from_disk

    ds = load_from_disk(str(path))
    return ds, read_dynamics(ds, "dynamics", DYNAMICS_FIELDS)


FULL = BASE + ["--epochs", "3", "--record_dynamics"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted 3-epoch run with dynamics (read-only: tests copy it before changing anything)."""
    full = tmp_path_factory.mktemp("full_run") / "full"
    summary = main(FULL + ["--output_dir", str(full)])
    return full, summary


def copy_run(full, target, drop=()):
    """A copy of ``full`` as a run interrupted after its checkpoints, with the ``drop`` checkpoints removed."""
    shutil.copytree(full, target)
    for name in drop:
        shutil.rmtree(target / "seed_0" / "checkpoints" / name)
    shutil.rmtree(target / "seed_0" / "dynamics")
    (target / "seed_0" / "metrics.json").unlink()
    return target


def assert_same_results(run, full):
    """``run`` ended with exactly the metrics and dynamics of the uninterrupted ``full`` run."""
    metrics, again = read(full / "seed_0" / "metrics.json"), read(run / "seed_0" / "metrics.json")
    for key in ("test_accuracy", "test_loss", "per_class_accuracy", "iterations", "epochs"):
        assert again[key] == metrics[key], key
    assert [h["train_loss"] for h in again["history"]] == [h["train_loss"] for h in metrics["history"]]
    _, dyn = dynamics_arrays(full / "seed_0" / "dynamics")
    _, dyn_again = dynamics_arrays(run / "seed_0" / "dynamics")
    for field in DYNAMICS_FIELDS:
        np.testing.assert_array_equal(dyn_again[field], dyn[field])


def test_end_to_end_dynamics_checkpoint_and_resume(tmp_path, full_run):
    full, summary = full_run
    metrics = read(full / "seed_0" / "metrics.json")
    assert metrics["epochs"] == 3 and metrics["iterations"] == 3 * math.ceil(400 / 64)
    assert metrics["train_size"] == 400 and metrics["test_size"] == 200 and metrics["batch_size"] == 64
    assert metrics["test_accuracy"] > 0.3  # 3 short epochs from scratch, 10 classes: far above chance
    assert set(metrics["per_class_accuracy"]) == {str(d) for d in range(10)}
    assert len(metrics["epoch_times_s"]) == 3 and metrics["train_time_s"] > 0
    assert summary["test_accuracy"]["mean"] == metrics["test_accuracy"] and summary["test_accuracy"]["n"] == 1
    config = read(full / "config.json")
    assert config["configs"]["train"]["epochs"] == 3 and "git_sha" in config and config["versions"]["hf_prune"]
    assert sorted(p.name for p in (full / "seed_0" / "checkpoints").iterdir()) == ["epoch_1", "epoch_2", "epoch_3"]

    # The dynamics record: one row per training row, joinable by row_id, one value per epoch.
    ds, dyn = dynamics_arrays(full / "seed_0" / "dynamics")
    assert ds.column_names == ["row_id", "dynamics"] and ds["row_id"] == list(range(400))
    assert all(dyn[f].shape == (400, 3) for f in DYNAMICS_FIELDS)
    assert ((dyn["true_prob"] >= 0) & (dyn["true_prob"] <= 1)).all() and set(np.unique(dyn["correct"])) <= {0.0, 1.0}
    np.testing.assert_array_equal(dyn["kl_to_previous"][:, 0], 0)
    # Training accuracy logged per epoch is the mean of the recorded correctness (same forward pass).
    logged = [h["train_accuracy"] for h in metrics["history"]]
    np.testing.assert_allclose(dyn["correct"].mean(0), logged, atol=1e-6)

    # Interrupt after epoch 1 (drop later checkpoints and outputs), resume: identical final results.
    resumed = copy_run(full, tmp_path / "resumed", drop=("epoch_2", "epoch_3"))
    main(FULL + ["--output_dir", str(resumed), "--resume_from_checkpoint", "latest"])
    assert_same_results(resumed, full)


def test_recorded_dynamics_attach_to_the_train_split_and_a_shuffled_subset_and_score(full_run):
    from datasets import load_from_disk

    full, _ = full_run
    path = full / "seed_0" / "dynamics"
    train = load_digits()["train"].select(range(400))  # the run's --max_train_samples 400: no row_id, positions
    attached = hp.dynamics.attach_dynamics(train, path)
    assert attached.features["dynamics"] == load_from_disk(str(path)).features["dynamics"]  # float32 kept
    scored = hp.score.dual(attached, window=2)
    reference = hp.score.dual(load_from_disk(str(path)), window=2)["dual"]  # the record itself, rows in order
    assert scored.features["dual"].dtype == "float32" and scored["dual"] == reference
    # A selected, shuffled subset carries row_id: each row gets its own record.
    sub = hp.select.random(train, size=100, label_column="label", seed=4).shuffle(seed=1)
    sub_scored = hp.score.dual(hp.dynamics.attach_dynamics(sub, path), window=2)
    np.testing.assert_array_equal(sub_scored["dual"], np.asarray(reference, dtype=np.float32)[sub["row_id"]])
    picked = hp.select.dual_beta(hp.dynamics.attach_dynamics(sub, path), size=30, window=2, seed=0)
    assert len(picked) == 30 and set(picked["row_id"]) <= set(sub["row_id"])


class Killed(BaseException):
    """Stands in for a kill: a BaseException, so nothing in the recipe catches it."""


def kill_during_save(monkeypatch, name):
    """Make the save of checkpoint ``name`` die half-way: weights truncated, recorder state not written yet."""
    original = Accelerator.save_state

    def save_state(self, output_dir=None, **kwargs):
        if Path(output_dir).name.split(".")[0] != name:
            return original(self, output_dir, **kwargs)
        original(self, output_dir, **kwargs)
        weights = Path(output_dir) / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        for state in Path(output_dir).glob("custom_checkpoint_*.pkl"):
            state.unlink()
        raise Killed

    monkeypatch.setattr(Accelerator, "save_state", save_state)


def test_a_kill_during_a_save_resumes_from_the_previous_checkpoint(tmp_path, monkeypatch, full_run):
    full, _ = full_run
    out = tmp_path / "killed"
    kill_during_save(monkeypatch, "epoch_3")
    with pytest.raises(Killed):
        main(FULL + ["--output_dir", str(out)])
    monkeypatch.undo()
    main(FULL + ["--output_dir", str(out), "--resume_from_checkpoint", "latest"])
    assert_same_results(out, full)
    checkpoints = out / "seed_0" / "checkpoints"
    # The re-save of epoch 3 cleared what the kill left; only complete checkpoints remain.
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch_1", "epoch_2", "epoch_3"]
    assert all(checkpoint_problem(p) is None for p in checkpoints.iterdir())


def test_latest_skips_a_partial_checkpoint_folder(tmp_path, capsys, full_run):
    full, _ = full_run
    # An `epoch_3` without marker and weights, as a kill left it when checkpoints were written in place.
    out = copy_run(full, tmp_path / "partial")
    partial = out / "seed_0" / "checkpoints" / "epoch_3"
    (partial / CHECKPOINT_MARKER).unlink(missing_ok=True)
    (partial / "model.safetensors").unlink()
    main(FULL + ["--output_dir", str(out), "--resume_from_checkpoint", "latest"])
    printed = capsys.readouterr().out
    assert f"skipping incomplete checkpoint {partial}" in printed and "resumed from" in printed and "epoch_2" in printed
    assert_same_results(out, full)
    assert checkpoint_problem(partial) is None  # rewritten whole


def test_a_corrupt_checkpoint_names_it_and_the_previous_good_one(tmp_path, full_run):
    full, _ = full_run
    out = copy_run(full, tmp_path / "corrupt")
    checkpoints = out / "seed_0" / "checkpoints"
    epoch_1, epoch_2, epoch_3 = (checkpoints / f"epoch_{k}" for k in (1, 2, 3))

    def resume(spec):
        main(FULL + ["--output_dir", str(out), "--resume_from_checkpoint", str(spec)])

    def names(path):
        return rf"checkpoint {re.escape(str(path))} .*the previous good checkpoint is {re.escape(str(epoch_2))}\b"

    weights = epoch_3 / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated after its save
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(epoch_3))} is corrupt: .*model.safetensors.* size"):
        resume(epoch_3)
    with pytest.raises(CheckpointError, match=names(epoch_3)):
        resume("latest")  # the newest checkpoint has a marker: corrupt, not skipped

    # A folder without a marker (an older layout) is tried; the failure names it and the previous good one.
    (epoch_3 / CHECKPOINT_MARKER).unlink()
    weights.unlink()
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(epoch_3))} could not be loaded .*pytorch_model.bin"):
        resume(epoch_3)
    with pytest.raises(CheckpointError, match=names(epoch_3)):
        resume(epoch_3)

    # Same size, garbled bytes: the checksum catches it, and the previous good one is now epoch_1.
    recorder = epoch_2 / "custom_checkpoint_1.pkl"
    recorder.write_bytes(b"\0" * recorder.stat().st_size)
    for spec in (epoch_2, "latest"):  # latest skips the unmarked epoch_3 and stops at the corrupt epoch_2
        with pytest.raises(CheckpointError, match=rf"{re.escape(str(epoch_2))} is corrupt: .*SHA-256") as info:
            resume(spec)
        assert f"the previous good checkpoint is {epoch_1} " in str(info.value)
    with pytest.raises(CheckpointError, match=rf"epoch_7 not found; the previous good checkpoint is {re.escape(str(epoch_1))} "):
        resume(checkpoints / "epoch_7")
    (epoch_1 / "optimizer.bin").unlink()
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(epoch_1))} is corrupt: .*optimizer.bin.*no complete checkpoint before it"):
        resume(epoch_1)
    assert not (out / "seed_0" / "metrics.json").exists()  # nothing was resumed, so nothing was written


def test_save_total_limit_never_deletes_the_last_good_checkpoint(tmp_path, full_run):
    full, _ = full_run
    out = copy_run(full, tmp_path / "limit", drop=("epoch_2",))
    checkpoints = out / "seed_0" / "checkpoints"
    # A newer partial folder (a kill mid-save in the old in-place layout) must not count as one of the kept.
    (checkpoints / "epoch_3" / CHECKPOINT_MARKER).unlink(missing_ok=True)
    (checkpoints / "epoch_3" / "model.safetensors").unlink()
    main(
        BASE + ["--epochs", "2", "--record_dynamics", "--save_total_limit", "1", "--output_dir", str(out),
                "--resume_from_checkpoint", str(checkpoints / "epoch_1")]
    )
    assert (checkpoints / "epoch_2").is_dir() and not (checkpoints / "epoch_1").exists()
    assert [p.name for p in complete_checkpoints(checkpoints)] == ["epoch_2"]
    assert (checkpoints / "epoch_3").is_dir()  # not ours to count or delete: numbered after the run's last save
    with pytest.raises(ValueError, match="save_total_limit"):
        main(BASE + ["--epochs", "1", "--save_total_limit", "0", "--output_dir", str(tmp_path / "zero")])


def test_inline_selector_subset_and_row_ids(tmp_path):
    out = tmp_path / "sel"
    main(BASE + ["--epochs", "1", "--record_dynamics", "--selector", "random:size=120,label_column=label", "--output_dir", str(out)])
    metrics = read(out / "seed_0" / "metrics.json")
    assert metrics["train_size"] == 120 and metrics["pruning_ratio"] == pytest.approx(1 - 120 / 400)
    assert metrics["subset"]["source"] == "selector" and metrics["subset"]["provenance"][-1]["method"] == "random"
    # The run's seed is used when the spec has none; dynamics row_id = positions in the train split.
    train = load_digits()["train"].select(range(400))
    expected = hp.select.random(train, size=120, label_column="label", seed=0)["row_id"]
    ds, dyn = dynamics_arrays(out / "seed_0" / "dynamics")
    assert ds["row_id"] == expected and dyn["true_prob"].shape == (120, 1)


def test_subset_path_and_label_check(tmp_path):
    train = load_digits()["train"].select(range(400))
    subset = hp.select.random(train, fraction=0.5, seed=5)
    subset.save_to_disk(str(tmp_path / "subset"))
    out = tmp_path / "run"
    main(BASE + ["--epochs", "1", "--record_dynamics", "--subset_path", str(tmp_path / "subset"), "--output_dir", str(out)])
    metrics = read(out / "seed_0" / "metrics.json")
    assert metrics["train_size"] == 200 and metrics["subset"]["source"] == "path"
    ds, _ = dynamics_arrays(out / "seed_0" / "dynamics")
    assert ds["row_id"] == subset["row_id"]
    # A subset made from other data (labels disagree at its row_ids) is refused.
    wrong = subset.map(lambda r: {"label": (r["label"] + 1) % 10})
    wrong.save_to_disk(str(tmp_path / "wrong"))
    with pytest.raises(ValueError, match="different 'label'"):
        main(BASE + ["--epochs", "1", "--subset_path", str(tmp_path / "wrong"), "--output_dir", str(tmp_path / "w")])
    with pytest.raises(ValueError, match="at most one"):
        main(BASE + ["--subset_path", str(tmp_path / "subset"), "--selector", "random:size=5", "--output_dir", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="unknown selector"):
        main(BASE + ["--selector", "magic:size=5", "--output_dir", str(tmp_path / "y")])


def test_equal_iterations_and_batch_size_by_pruning_ratio(tmp_path):
    out = tmp_path / "iters"
    main(
        BASE
        + ["--epochs", "1", "--budget", "iterations", "--selector", "random:size=100", "--record_dynamics",
           "--batch_size_by_pruning_ratio", "0.5:32,0.9:16", "--save_total_limit", "1", "--output_dir", str(out)]
    )
    assert [p.name for p in (out / "seed_0" / "checkpoints").iterdir()] == ["epoch_2"]
    metrics = read(out / "seed_0" / "metrics.json")
    # Full run: 1 epoch of 400 rows at 64 → 7 steps. Pruning ratio 0.75 → batch 32 → 4 steps per epoch.
    assert metrics["batch_size"] == 32 and metrics["iterations"] == 7 and metrics["epochs"] == 2
    assert [h["complete_epoch"] for h in metrics["history"]] == [True, False]
    assert metrics["dynamics_epochs"] == 1  # the cut-short epoch is not recorded


def test_batch_size_rule():
    cfg = TrainConfig(batch_size=128, batch_size_by_pruning_ratio="0.3:128,0.5:128,0.7:128,0.8:64,0.9:32")
    assert [_batch_size_for(cfg, r) for r in (0.0, 0.3, 0.75, 0.8, 0.85, 0.9, 0.95)] == [128, 128, 128, 64, 64, 32, 32]
    with pytest.raises(ValueError, match="ratio:batch_size"):
        _batch_size_for(TrainConfig(batch_size_by_pruning_ratio="0.5"), 0.6)


def test_seeds_aggregate_and_yaml_config(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 5\nseeds: [0, 1]\nweight_decay: 0.001\n")
    out = tmp_path / "seeds"
    summary = main(BASE + ["--config", str(config), "--epochs", "1", "--output_dir", str(out)])  # CLI overrides YAML
    runs = [read(out / f"seed_{s}" / "metrics.json") for s in (0, 1)]
    assert all(r["epochs"] == 1 and r["train_size"] == 400 for r in runs)
    assert read(out / "config.json")["configs"]["train"]["weight_decay"] == 0.001
    accs = [r["test_accuracy"] for r in runs]
    assert summary["test_accuracy"]["values"] == accs and summary["test_accuracy"]["n"] == 2
    assert summary["test_accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
    assert read(out / "metrics.json")["seeds"] == [0, 1]
    assert summary["per_class_accuracy"]["3"]["mean"] == pytest.approx(np.mean([r["per_class_accuracy"]["3"] for r in runs]))
    config.write_text("epoch: 5\n")
    with pytest.raises(ValueError, match="unknown option"):
        main(BASE + ["--config", str(config), "--output_dir", str(out)])


def test_saved_dataset_with_other_column_names(tmp_path):
    digits = load_digits()
    digits = digits.rename_columns({"image": "img", "label": "target"})
    digits.save_to_disk(str(tmp_path / "dd"))
    out = tmp_path / "run"
    args = ["--dataset", str(tmp_path / "dd"), "--image_column", "img", "--label_column", "target"]
    main(BASE[2:] + args + ["--epochs", "1", "--output_dir", str(out), "--checkpointing", "false"])
    metrics = read(out / "seed_0" / "metrics.json")
    assert metrics["train_size"] == 400 and metrics["test_size"] == 200 and not (out / "seed_0" / "checkpoints").exists()


def test_corruption_scenarios_are_counted(tmp_path):
    out = tmp_path / "noisy"
    main(BASE + ["--epochs", "1", "--label_noise", "0.2", "--image_corruption", "0.1", "--output_dir", str(out)])
    assert read(out / "seed_0" / "metrics.json")["corrupted_in_train"] == {"is_noisy_label": 80, "is_corrupted": 40}


def test_transformers_model_from_a_local_directory(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16, patch_size=4,
        num_channels=3, num_labels=3,
    )
    ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    out = tmp_path / "hf"
    main(BASE + ["--epochs", "1", "--model", str(tmp_path / "vit"), "--max_train_samples", "64", "--output_dir", str(out)])
    metrics = read(out / "seed_0" / "metrics.json")
    # Accuracy over the 200 test rows (--max_test_samples): a whole number of correct rows.
    correct = metrics["test_accuracy"] * 200
    assert metrics["model"] == str(tmp_path / "vit") and abs(correct - round(correct)) < 1e-9
    # 1-channel 8×8 digits are repeated to 3 channels and resized to the model's 16×16; head resized to 10.
    model = build_model(str(tmp_path / "vit"), 10, 1)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


# Known sizes of the CIFAR-style (3×3 stem, no max-pool) ResNets for 10 classes; the small CNN by hand:
# convs 3·32·9 + 32·64·9 + 64·128·9, BN 2·(32+64+128), head 128·10 + 10.
@pytest.mark.parametrize(
    "name,params",
    [("small_cnn", 864 + 18432 + 73728 + 448 + 1290), ("resnet18", 11_173_962), ("resnet34", 21_282_122), ("resnet50", 23_520_842)],
)
def test_models(name, params):
    model = build_model(name, 10, 3)
    assert sum(p.numel() for p in model.parameters()) == params
    model.eval()
    assert model(torch.zeros(2, 3, 28, 28)).shape == (2, 10)
    assert build_model(name, 10, 1)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_augment_is_a_padded_crop_and_flip():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).reshape(2, 1, 4, 4)
    out = augment(x, torch.Generator().manual_seed(0), padding=2, hflip=True)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for image, source in zip(out, padded):
        windows = [source[:, i : i + 4, j : j + 4] for i in range(5) for j in range(5)]
        assert any(torch.equal(image, w) or torch.equal(image, w.flip(2)) for w in windows)
    same = augment(x, torch.Generator().manual_seed(0), padding=2, hflip=True)
    assert torch.equal(out, same)
    assert torch.equal(augment(x, torch.Generator(), padding=0, hflip=False), x)


def test_channel_statistics_match_a_direct_computation():
    pixels = torch.randint(0, 256, (37, 3, 5, 4), dtype=torch.uint8)
    mean, std = channel_statistics(pixels, chunk=10)
    flat = pixels.transpose(0, 1).reshape(3, -1).double() / 255
    np.testing.assert_allclose(mean, flat.mean(1).numpy(), rtol=1e-10)
    np.testing.assert_allclose(std, flat.std(1).numpy(), rtol=1e-10)


def test_aggregate_is_mean_and_sample_std():
    agg = aggregate([0.5, 0.7])
    assert agg["mean"] == pytest.approx(0.6) and agg["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert aggregate([0.4])["std"] == 0.0


@pytest.mark.slow  # a subprocess re-imports torch/transformers: ~15 s
def test_accelerate_launch_with_the_cpu_config(tmp_path):
    out = tmp_path / "launched"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "recipes/accelerate_configs/cpu.yaml"),
        str(REPO / "recipes/image_classification.py"), *BASE, "--epochs", "1", "--max_train_samples", "128",
        "--output_dir", str(out),
    ]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert read(out / "seed_0" / "metrics.json")["train_size"] == 128


@pytest.mark.slow  # two torch.distributed CPU processes (gloo), started twice: ~1 min
def test_two_processes_write_whole_checkpoints_and_resume(tmp_path):
    # accelerate starts several CPU processes only through MPI; torchrun gives the same MULTI_CPU state.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = BASE + ["--max_train_samples", "128", "--batch_size", "32", "--eval_batch_size", "64", "--epochs", "2", "--record_dynamics"]

    def launch(out, *extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "recipes/image_classification.py"), *args, "--output_dir", str(out), *extra]
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    full = tmp_path / "full"
    launch(full)
    epoch_2 = full / "seed_0" / "checkpoints" / "epoch_2"
    marker = json.loads((epoch_2 / CHECKPOINT_MARKER).read_text())
    assert marker["num_processes"] == 2 and {"random_states_0.pkl", "random_states_1.pkl"} <= set(marker["files"])
    assert checkpoint_problem(epoch_2) is None
    # A kill while saving epoch 2 left its staging folder (here with the second process's file only).
    resumed = copy_run(full, tmp_path / "resumed", drop=("epoch_2",))
    staging = resumed / "seed_0" / "checkpoints" / "epoch_2.incomplete"
    staging.mkdir()
    shutil.copy(epoch_2 / "random_states_1.pkl", staging)
    assert "resumed from" in launch(resumed, "--resume_from_checkpoint", "latest")
    assert_same_results(resumed, full)
    assert sorted(p.name for p in (resumed / "seed_0" / "checkpoints").iterdir()) == ["epoch_1", "epoch_2"]
