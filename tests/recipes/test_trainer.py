"""The trainer core on its own, with a model and batches that are not images (what the CLIP and
instruction recipes will hand it), and the subset rules every recipe shares."""

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from datasets import Dataset

from hf_prune.dynamics import DynamicsRecorder
from hf_prune.ops.columns import add_column
from recipes.trainer.checkpoints import complete_checkpoints
from recipes.trainer.data import EpochSampler, batch_size_for, identity_collate, subset_rows
from recipes.trainer.dynamics import DynamicsBuffer, save_dynamics
from recipes.trainer.loop import StepOutput, TrainState, lr_lambda, resume, train_epochs


class Vectors(torch.utils.data.Dataset):
    def __init__(self, n=48, dim=5, classes=3):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, dim, generator=generator)
        self.y = torch.randint(0, classes, (n,), generator=generator)

    def __len__(self):
        return len(self.y)

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices)
        return {"features": self.x[idx], "labels": self.y[idx], "positions": idx}


def fit(out, epochs, resume_from=None, noise=0.1):
    """A linear model on vectors, with noise drawn from the loop's generator; returns (weights, state, recorder)."""
    accelerator = Accelerator(cpu=True)
    set_seed(0)
    data = Vectors()
    sampler = EpochSampler(len(data), seed=3)
    loader = torch.utils.data.DataLoader(data, batch_size=16, sampler=sampler, collate_fn=identity_collate)
    model = torch.nn.Linear(5, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    total = 3 * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, warmup_steps=2))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    state, recorder = TrainState(), DynamicsRecorder(num_rows=len(data), num_classes=3)
    accelerator.register_for_checkpointing(state)
    accelerator.register_for_checkpointing(recorder)
    resume(accelerator, out / "checkpoints", resume_from, state)

    def step(batch, generator):
        features = batch["features"] + noise * torch.randn(batch["features"].shape, generator=generator)
        logits = model(features)
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
        return StepOutput(loss, logits, batch["labels"], batch["positions"])

    train_epochs(accelerator, model, optimizer, scheduler, loader, sampler, step, state=state, num_epochs=epochs,
                 total_steps=total, seed=3, buffer=DynamicsBuffer(recorder, accelerator),
                 checkpoint_dir=out / "checkpoints", save_total_limit=2)
    weights = {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    return weights, state, recorder


def test_the_loop_resumes_a_non_image_model_exactly(tmp_path):
    full_weights, full_state, full_recorder = fit(tmp_path / "full", epochs=3)
    assert [h["epoch"] for h in full_state.history] == [1, 2, 3] and full_state.step == 9
    assert [p.name for p in complete_checkpoints(tmp_path / "full" / "checkpoints")] == ["epoch_2", "epoch_3"]
    assert full_recorder.epochs == 3

    fit(tmp_path / "cut", epochs=1)  # interrupted after its first epoch
    weights, state, recorder = fit(tmp_path / "cut", epochs=3, resume_from="latest")
    assert [h["train_loss"] for h in state.history] == [h["train_loss"] for h in full_state.history]
    assert all(torch.equal(weights[k], full_weights[k]) for k in full_weights)
    saved, again = save_dynamics(full_recorder, np.arange(48), tmp_path / "d1"), save_dynamics(recorder, np.arange(48), tmp_path / "d2")
    assert Dataset.load_from_disk(str(saved)).to_dict() == Dataset.load_from_disk(str(again)).to_dict()
    # The generator handed to `step` is what makes the noise reproducible: other noise, other weights.
    other, _, _ = fit(tmp_path / "other", epochs=3, noise=0.2)
    assert not torch.equal(other["weight"], full_weights["weight"])


def test_lr_schedule_warms_up_then_decays_to_zero():
    schedule = lr_lambda(total_steps=10, warmup_steps=2)
    assert [schedule(0), schedule(1), schedule(2)] == [0.5, 1.0, 1.0]
    assert schedule(6) == pytest.approx(0.5) and schedule(10) == pytest.approx(0.0)


def test_batch_size_for_pruning_ratio():
    assert batch_size_for(128, "0.3:128,0.8:64,0.9:32", 0.85) == 64
    assert batch_size_for(128, "0.3:96", 0.1) == 128 and batch_size_for(100, None, 0.9) == 100
    with pytest.raises(ValueError, match="ratio:batch_size"):
        batch_size_for(128, "0.3", 0.5)


def test_subset_rows_sources_and_errors(tmp_path):
    train = add_column(Dataset.from_dict({"label": [0, 1] * 10}), "emb", np.eye(20, 4, dtype=np.float32))
    labels = np.array(train["label"])
    assert subset_rows(train).info == {"source": "full"} and len(subset_rows(train).row_ids) == 20
    rows = subset_rows(train, selector="random:fraction=0.5,label_column=label", seed=1)
    again = subset_rows(train, selector="random:fraction=0.5,label_column=label,seed=1", seed=9)
    assert rows.info["source"] == "selector" and rows.info["kwargs"]["seed"] == 1
    assert np.array_equal(rows.row_ids, again.row_ids) and len(rows.row_ids) == 10

    Dataset.from_dict({"row_id": [3, 5], "label": [1, 1]}).save_to_disk(str(tmp_path / "ok"))
    saved = subset_rows(train, subset_path=str(tmp_path / "ok"), label_column="label", train_labels=labels)
    assert saved.row_ids.tolist() == [3, 5] and saved.standalone is None and saved.info["source"] == "path"
    Dataset.from_dict({"row_id": [3, 4], "label": [1, 1]}).save_to_disk(str(tmp_path / "other"))
    with pytest.raises(ValueError, match="different 'label'"):
        subset_rows(train, subset_path=str(tmp_path / "other"), label_column="label", train_labels=labels)
    Dataset.from_dict({"row_id": [3, 20]}).save_to_disk(str(tmp_path / "range"))
    with pytest.raises(ValueError, match="distinct positions"):
        subset_rows(train, subset_path=str(tmp_path / "range"))
    Dataset.from_dict({"label": [0]}).save_to_disk(str(tmp_path / "bare"))
    with pytest.raises(KeyError, match="'image'"):
        subset_rows(train, subset_path=str(tmp_path / "bare"), required_columns=("label", "image"))
    with pytest.raises(ValueError, match="at most one"):
        subset_rows(train, subset_path=str(tmp_path / "ok"), selector="random:fraction=0.5")
