"""LESS warm-up checkpoints: what `hf_prune.embed.LoRAGradientEmbedder` and `hf_prune.score.less` need
from each warm-up epoch, saved so that another process (or machine) can rebuild it.

LESS (Xia et al., 2024) trains LoRA briefly on a random part of the pool and keeps, after every epoch,
the adapter, the Adam moments of every LoRA parameter and the epoch's mean learning rate (the weight of
that checkpoint in the LESS score). One checkpoint is the folder ``<seed dir>/warmup/epoch_<i>/``:

- ``adapter/``: the peft adapter (``save_pretrained``);
- ``optimizer_moments.pt``: ``{LoRA parameter name: {"exp_avg", "exp_avg_sq", "step"}}``, float32 CPU
  tensors keyed by the names `hf_prune.embed.lora_parameter_names` gives for the peft model (so the
  mapping from an optimizer's positional state back to names is done once, here);
- ``warmup.json``: ``epoch``, ``mean_lr`` (mean learning rate over the epoch's optimizer updates),
  ``adam_betas``, ``adam_eps``, ``step`` (optimizer updates so far), ``base_model`` (``name`` as given to
  the recipe and ``path``, a saved base model relative to the checkpoint folder, or ``None`` when
  ``name`` loads by itself), ``tokenizer_dir`` (relative to the checkpoint folder), ``lora`` (the
  LoraConfig fields), ``max_length`` and ``template``, plus anything the caller adds;
- `recipes.trainer.checkpoints.CHECKPOINT_MARKER`: sizes and SHA-256 of the files above. The folder is
  written as ``epoch_<i>.incomplete`` and renamed once whole, so `load_warmup` never sees a half-written
  checkpoint and `recipes.trainer.checkpoints.checkpoint_problem` can verify one.

Example:
    >>> save_warmup_checkpoint(seed_dir / "warmup" / "epoch_1", peft_model, optimizer, epoch=1, mean_lr=1.9e-5,
    ...                        base_model={"name": "smollm2", "path": None}, tokenizer_dir=seed_dir / "tokenizer",
    ...                        lora=LoRASettings(r=64), max_length=512, template="chat")
    >>> ckpt = load_warmup(seed_dir / "warmup")[0]
    >>> embedder = hp.embed.LoRAGradientEmbedder(ckpt.load_model(), dim=8192, **ckpt.embedder_kwargs())
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hf_prune.embed.lora_gradients import lora_parameter_names

from .checkpoints import _INCOMPLETE, CHECKPOINT_MARKER, _sha256, checkpoint_problem, replace_folder
from .config import write_json
from .llm import LoRASettings

__all__ = ["WARMUP_INFO", "MOMENTS_FILE", "ADAPTER_DIR", "WarmupCheckpoint", "adam_moments_by_name",
           "save_warmup_checkpoint", "load_warmup"]

WARMUP_INFO = "warmup.json"
MOMENTS_FILE = "optimizer_moments.pt"
ADAPTER_DIR = "adapter"
_EPOCH = re.compile(r"epoch_(\d+)")


def _inner(optimizer):
    # accelerate wraps the optimizer; its state lives on the wrapped torch optimizer.
    return getattr(optimizer, "optimizer", optimizer)


def adam_moments_by_name(model: torch.nn.Module, optimizer) -> dict[str, dict[str, Any]]:
    """``{LoRA parameter name: {"exp_avg", "exp_avg_sq", "step"}}`` from an Adam/AdamW ``optimizer`` over ``model``.

    Names are `hf_prune.embed.lora_parameter_names` of ``model`` (the unwrapped peft model); tensors
    are float32 CPU copies, ``step`` an int. A LoRA parameter without optimizer state (no step taken
    yet, or not in the optimizer) is a `ValueError` naming it.

    Example:
        >>> moments = adam_moments_by_name(peft_model, optimizer)
        >>> sorted(next(iter(moments.values())))
        ['exp_avg', 'exp_avg_sq', 'step']
    """
    state = _inner(optimizer).state
    params = dict(model.named_parameters())
    out = {}
    for name in lora_parameter_names(model):
        entry = state.get(params[name])
        if not entry or "exp_avg" not in entry or "exp_avg_sq" not in entry:
            raise ValueError(f"the optimizer has no Adam state for LoRA parameter {name!r}: take at least one "
                             "optimizer step with an Adam/AdamW optimizer over the LoRA parameters first")
        out[name] = {
            "exp_avg": entry["exp_avg"].detach().to("cpu", torch.float32).clone(),
            "exp_avg_sq": entry["exp_avg_sq"].detach().to("cpu", torch.float32).clone(),
            "step": int(torch.as_tensor(entry["step"]).item()),
        }
    return out


def _relative(target: str | os.PathLike | None, start: Path) -> str | None:
    return None if target is None else os.path.relpath(Path(target).resolve(), start.resolve())


def save_warmup_checkpoint(
    path: str | os.PathLike, model: torch.nn.Module, optimizer, *, epoch: int, mean_lr: float,
    base_model: dict[str, Any], tokenizer_dir: str | os.PathLike, lora: LoRASettings, max_length: int,
    template: str, extra: dict[str, Any] | None = None,
) -> Path:
    """Write one warm-up checkpoint folder (module docstring) for the unwrapped peft ``model`` and its ``optimizer``.

    ``base_model`` is ``{"name": ..., "path": saved base model folder or None}``; paths are stored
    relative to ``path`` so the run folder can be moved. Call it on the main process only. Returns ``path``.

    Example:
        >>> save_warmup_checkpoint(out / "warmup" / "epoch_2", model, optimizer, epoch=2, mean_lr=1e-5,
        ...                        base_model={"name": "tiny", "path": out / "base_model"},
        ...                        tokenizer_dir=out / "tokenizer", lora=settings, max_length=256, template="chat")
    """
    path = Path(path)
    if not _EPOCH.fullmatch(path.name):
        raise ValueError(f"a warm-up checkpoint folder is named epoch_<i>, got {path.name!r}")
    if not (isinstance(mean_lr, (int, float)) and mean_lr >= 0):
        raise ValueError(f"`mean_lr` must be a non-negative number, got {mean_lr!r}")
    moments = adam_moments_by_name(model, optimizer)
    group = _inner(optimizer).param_groups[0]
    steps = {m["step"] for m in moments.values()}
    staging = path.with_name(path.name + _INCOMPLETE)
    if staging.exists():
        shutil.rmtree(staging)  # left by a run killed while saving this checkpoint
    staging.mkdir(parents=True)
    model.save_pretrained(staging / ADAPTER_DIR)
    torch.save(moments, staging / MOMENTS_FILE)
    info = {
        **(extra or {}),
        "epoch": int(epoch), "mean_lr": float(mean_lr), "step": max(steps),
        "adam_betas": [float(b) for b in group.get("betas", (0.9, 0.999))], "adam_eps": float(group.get("eps", 1e-8)),
        "weight_decay": float(group.get("weight_decay", 0.0)),
        "base_model": {"name": str(base_model["name"]), "path": _relative(base_model.get("path"), path)},
        "tokenizer_dir": _relative(tokenizer_dir, path), "lora": lora.to_dict(), "max_length": int(max_length),
        "template": template, "lora_parameter_names": list(moments),
    }
    write_json(staging / WARMUP_INFO, info)
    files = {f.relative_to(staging).as_posix(): {"size": f.stat().st_size, "sha256": _sha256(f)}
             for f in sorted(p for p in staging.rglob("*") if p.is_file())}
    write_json(staging / CHECKPOINT_MARKER, {"files": files, "num_processes": 1})
    replace_folder(staging, path)
    return path


@dataclass
class WarmupCheckpoint:
    """One saved warm-up epoch: ``epoch``, ``mean_lr``, ``optimizer_state`` (name-keyed Adam moments,
    accepted by ``LoRAGradientEmbedder(optimizer_state=...)``), ``info`` (``warmup.json`` with absolute
    paths) and the model, built on first use of ``.model`` or by `load_model`.

    Pass `embedder_kwargs` (moments *and* Adam's betas/eps/step) to the gradient embedder: the moments
    alone would leave it on its default betas.

    Example:
        >>> for ckpt in load_warmup("runs/warmup/seed_0"):
        ...     embedder = hp.embed.LoRAGradientEmbedder(ckpt.model, dim=8192, **ckpt.embedder_kwargs())
        ...     weight = ckpt.mean_lr
    """

    path: Path
    epoch: int
    mean_lr: float
    info: dict[str, Any]
    optimizer_state: dict[str, dict[str, Any]]
    _model: Any = field(default=None, repr=False)

    @property
    def adam_betas(self) -> tuple[float, float]:
        """Adam's (β₁, β₂) of the warm-up optimizer."""
        return tuple(self.info["adam_betas"])

    @property
    def adam_eps(self) -> float:
        """Adam's ε of the warm-up optimizer."""
        return float(self.info["adam_eps"])

    def embedder_kwargs(self) -> dict[str, Any]:
        """``optimizer_state``, ``adam_betas``, ``adam_eps`` and ``adam_step`` for `LoRAGradientEmbedder`.

        A name-keyed moments mapping carries no hyperparameters, so without these the embedder would
        fall back to (0.9, 0.999) and 1e-8 even when the warm-up used others.

        Example:
            >>> ckpt = load_warmup("runs/x/seed_0/warmup")[0]
            >>> embedder = hp.embed.LoRAGradientEmbedder(ckpt.model, dim=8192, **ckpt.embedder_kwargs())
        """
        return {"optimizer_state": self.optimizer_state, "adam_betas": self.adam_betas, "adam_eps": self.adam_eps,
                "adam_step": int(self.info["step"])}

    def load_tokenizer(self):
        """The run's tokenizer (from ``tokenizer_dir``).

        Example:
            >>> tokenizer = load_warmup("runs/x/seed_0/warmup")[0].load_tokenizer()
        """
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.info["tokenizer_dir"])

    def load_model(self, *, dtype: torch.dtype | None = None, cache_dir: str | os.PathLike | None = None):
        """A fresh peft model: the base model with this epoch's adapter, on the CPU, in eval mode.

        The LoRA parameters keep ``requires_grad`` (gradient features need them); nothing else does.

        Example:
            >>> model = load_warmup("runs/x/seed_0/warmup")[-1].load_model()
        """
        from peft import PeftModel

        from .llm import load_causal_lm

        base = self.info["base_model"]
        tokenizer = self.load_tokenizer()
        base_model, _ = load_causal_lm(base["path"] or base["name"], tokenizer=tokenizer, dtype=dtype, cache_dir=cache_dir)
        model = PeftModel.from_pretrained(base_model, str(self.path / ADAPTER_DIR), is_trainable=True)
        names = lora_parameter_names(model)
        if names != list(self.optimizer_state):
            raise ValueError(f"the rebuilt model's LoRA parameters differ from the saved moments in {self.path} "
                             f"(e.g. {names[:1]} vs {list(self.optimizer_state)[:1]}); was the base model changed?")
        model.eval()
        return model

    @property
    def model(self):
        """The peft model of this checkpoint (built once by `load_model`, then reused)."""
        if self._model is None:
            self._model = self.load_model()
        return self._model


def _read(path: Path) -> WarmupCheckpoint:
    problem = checkpoint_problem(path, checksums=False)
    if problem is not None:
        raise ValueError(f"the warm-up checkpoint {path} cannot be used: {problem}")
    info = json.loads((path / WARMUP_INFO).read_text())
    for key in ("tokenizer_dir",):
        info[key] = str((path / info[key]).resolve())
    if info["base_model"].get("path"):
        info["base_model"]["path"] = str((path / info["base_model"]["path"]).resolve())
    moments = torch.load(path / MOMENTS_FILE, map_location="cpu", weights_only=True)
    return WarmupCheckpoint(path=path, epoch=int(info["epoch"]), mean_lr=float(info["mean_lr"]), info=info,
                            optimizer_state=moments)


def load_warmup(directory: str | os.PathLike) -> list[WarmupCheckpoint]:
    """The complete warm-up checkpoints in ``directory``, oldest epoch first.

    ``directory`` is a ``warmup`` folder of ``epoch_<i>`` checkpoints, a seed folder holding ``warmup/``,
    or one ``epoch_<i>`` folder. ``.incomplete`` folders (a save cut short) are skipped; a numbered folder
    whose files disagree with its marker, or no checkpoint at all, is a `ValueError` naming the folder.
    Models are not built until ``.model``/``load_model()`` is used.

    Example:
        >>> checkpoints = load_warmup("runs/warmup/seed_0/warmup")
        >>> [(c.epoch, round(c.mean_lr, 8)) for c in checkpoints]
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"the warm-up folder {directory} does not exist")
    if _EPOCH.fullmatch(directory.name) and (directory / WARMUP_INFO).is_file():
        return [_read(directory)]
    if (directory / "warmup").is_dir():
        directory = directory / "warmup"
    found = sorted((int(m.group(1)), p) for p in directory.iterdir() if p.is_dir() and (m := _EPOCH.fullmatch(p.name)))
    if not found:
        raise ValueError(f"{directory} holds no warm-up checkpoint (epoch_<i> folders); run the recipe with --warmup_fraction")
    return [_read(p) for _, p in found]
