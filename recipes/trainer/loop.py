"""The accelerate training loop the recipes share: cosine schedule with warmup, resumable epochs
(every random draw derives from ``(seed, epoch)``), per-epoch history, checkpoints, dynamics.

A recipe builds its model, optimizer and loaders, then hands the loop a ``step`` function that turns
one batch into a `StepOutput` (the loss, and the logits/labels/positions that accuracy and dynamics
need). The loop owns everything else, so a resumed run replays exactly what the uninterrupted run did.

Example:
    >>> def step(batch, generator):
    ...     logits = model(batch["pixels"])
    ...     return StepOutput(F.cross_entropy(logits.float(), batch["labels"]), logits, batch["labels"],
    ...                       batch["positions"])
    >>> state = TrainState()
    >>> accelerator.register_for_checkpointing(state)
    >>> train_epochs(accelerator, model, optimizer, scheduler, train_loader, sampler, step, state=state,
    ...              num_epochs=3, total_steps=3 * len(train_loader), seed=0)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed

from .checkpoints import find_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from .dynamics import DynamicsBuffer

__all__ = ["TrainState", "StepOutput", "lr_lambda", "evaluate", "resume", "train_epochs"]


class TrainState:
    """Progress saved with every checkpoint (epochs done, steps, timing, per-epoch history)."""

    def __init__(self):
        self.epoch, self.step, self.train_time, self.dynamics_time, self.history = 0, 0, 0.0, 0.0, []

    def state_dict(self):
        return {k: getattr(self, k) for k in ("epoch", "step", "train_time", "dynamics_time", "history")}

    def load_state_dict(self, state):
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class StepOutput:
    """What a training step returns: ``loss`` (a scalar tensor to backpropagate) and, for accuracy and
    dynamics, the step's ``logits`` ``(B, C)``, ``labels`` ``(B,)`` and row ``positions`` ``(B,)``.

    ``labels`` also count the examples of the step (the loss is weighted by it in the epoch's mean).
    ``extras`` (optional) are passed to the dynamics buffer's ``add`` as keyword arguments (the
    contrastive recipe hands it per-pair statistics that the logits alone do not give).
    """

    loss: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor | None = None
    extras: dict[str, Any] | None = None


def lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The per-step learning-rate factor: linear warmup over ``warmup_steps``, then cosine decay to 0.

    Example:
        >>> scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps=1000, warmup_steps=50))
    """

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return schedule


@torch.no_grad()
def evaluate(model, loader, accelerator: Accelerator, num_classes: int, *, input_key: str = "pixels") -> dict[str, Any]:
    """Top-1 accuracy, mean cross-entropy and per-class accuracy of ``model`` over ``loader`` (all processes).

    Batches are mappings with the model input under ``input_key`` and ``labels``; a class absent from
    the loader has a per-class accuracy of NaN.

    Example:
        >>> evaluate(model, test_loader, accelerator, num_classes=10)["accuracy"]
    """
    model.eval()
    correct = torch.zeros(num_classes, dtype=torch.float64)
    total = torch.zeros(num_classes, dtype=torch.float64)
    loss_sum = 0.0
    for batch in loader:
        logits = model(batch[input_key]).float()
        losses = F.cross_entropy(logits, batch["labels"], reduction="none")
        preds, labels, losses = accelerator.gather_for_metrics((logits.argmax(1), batch["labels"], losses))
        labels = labels.cpu()
        total += torch.bincount(labels, minlength=num_classes).double()
        correct += torch.bincount(labels[preds.cpu() == labels], minlength=num_classes).double()
        loss_sum += float(losses.sum())
    n = float(total.sum())
    per_class = torch.where(total > 0, correct / total.clamp_min(1), torch.full_like(total, float("nan")))
    return {"accuracy": float(correct.sum()) / n, "loss": loss_sum / n, "per_class": per_class.tolist(), "count": int(n)}


def resume(accelerator: Accelerator, checkpoint_dir: str | Path, spec: str | None, state: TrainState) -> Path | None:
    """Load the checkpoint ``spec`` (``"latest"`` or a folder) into everything registered with ``accelerator``.

    ``None`` (and nothing loaded) when ``spec`` is ``None`` or ``latest`` finds no complete checkpoint;
    ``latest`` skips folders a kill left half-written, and a bad explicit path is a `CheckpointError`
    naming the previous good one. Call it after ``accelerator.prepare`` and the
    ``register_for_checkpointing`` calls.

    Example:
        >>> resume(accelerator, output_dir / "checkpoints", "latest", state)
    """
    if not spec:
        return None
    path = find_checkpoint(checkpoint_dir, spec, log=accelerator.print)
    if path is None:
        accelerator.print(f"no complete checkpoint in {checkpoint_dir}; starting from scratch")
        return None
    load_checkpoint(accelerator, path)
    accelerator.print(f"resumed from {path} after epoch {state.epoch} (step {state.step})")
    return path


def train_epochs(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    train_loader,
    sampler,
    step: Callable[[Any, torch.Generator], StepOutput],
    *,
    state: TrainState,
    num_epochs: int,
    total_steps: int,
    seed: int,
    buffer: DynamicsBuffer | None = None,
    evaluate_epoch: Callable[[], float] | None = None,
    checkpoint_dir: str | Path | None = None,
    save_total_limit: int | None = None,
) -> TrainState:
    """Train from ``state.epoch`` until ``num_epochs`` epochs or ``total_steps`` optimizer steps are done.

    Each epoch sets the order of ``sampler`` and ``train_loader`` from the epoch, seeds every library with
    ``seed * 1000 + epoch`` and hands ``step`` a `torch.Generator` seeded from ``(seed, epoch, process)``
    for its own draws (augmentation), so a resumed run repeats the uninterrupted one exactly. With a
    ``buffer`` the step's logits are recorded as training dynamics; an epoch cut short by ``total_steps``
    is discarded there. After every epoch: a history entry in ``state`` (printed as JSON, with the test
    accuracy from ``evaluate_epoch`` when given) and, with ``checkpoint_dir``, a checkpoint
    ``epoch_<k>`` (`save_checkpoint`), keeping the newest ``save_total_limit`` complete ones.

    Example:
        >>> train_epochs(accelerator, model, optimizer, scheduler, train_loader, sampler, step, state=state,
        ...              num_epochs=3, total_steps=3 * len(train_loader), seed=0, checkpoint_dir=out / "checkpoints")
    """
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    for epoch in range(state.epoch, num_epochs):
        if state.step >= total_steps:
            break
        sampler.set_epoch(epoch)
        train_loader.set_epoch(epoch)
        # Every random draw of the epoch derives from (seed, epoch): resuming reproduces it exactly.
        set_seed(seed * 1000 + epoch)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * epoch + accelerator.process_index)
        model.train()
        loss_sum, correct, seen, dyn_time, completed = 0.0, 0, 0, 0.0, True
        start = time.perf_counter()
        for batch in train_loader:
            if state.step >= total_steps:
                completed = False
                break
            # With Accelerator(gradient_accumulation_steps=k) the prepared optimizer steps every k-th batch
            # (and at the end of the loader); with k = 1 this is a plain step.
            with accelerator.accumulate(model):
                out = step(batch, generator)
                accelerator.backward(out.loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            state.step += 1
            if buffer is not None:
                t = time.perf_counter()
                if out.extras is None:
                    buffer.add(out.positions, out.logits, out.labels)
                else:
                    buffer.add(out.positions, out.logits, out.labels, **out.extras)
                dyn_time += time.perf_counter() - t
            loss_sum += out.loss.detach() * len(out.labels)
            correct += (out.logits.detach().argmax(1) == out.labels).sum()
            seen += len(out.labels)
        if buffer is not None:
            t = time.perf_counter()
            if completed:
                buffer.flush()
                buffer.recorder.end_epoch()
            else:
                buffer.discard()
            dyn_time += time.perf_counter() - t
        elapsed = time.perf_counter() - start
        state.epoch, state.train_time, state.dynamics_time = epoch + 1, state.train_time + elapsed, state.dynamics_time + dyn_time
        entry = {
            "epoch": epoch + 1, "step": state.step, "lr": scheduler.get_last_lr()[0], "time_s": elapsed,
            "dynamics_time_s": dyn_time, "train_loss": float(loss_sum) / max(seen, 1),
            "train_accuracy": float(correct) / max(seen, 1), "complete_epoch": completed,
        }
        if evaluate_epoch is not None:
            entry["test_accuracy"] = evaluate_epoch()
        state.history.append(entry)
        accelerator.print(json.dumps({"seed": seed, **entry}))
        if checkpoint_dir is not None:
            saved = save_checkpoint(accelerator, checkpoint_dir / f"epoch_{epoch + 1}")
            if save_total_limit and accelerator.is_main_process:
                prune_checkpoints(checkpoint_dir, save_total_limit, saved)
            accelerator.wait_for_everyone()
    return state
