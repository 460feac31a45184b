"""LESS-style gradient features: per-example LoRA gradients, Adam-normalised, randomly projected.

LESS (Xia et al., 2024, "Selecting Influential Data for Targeted Instruction Tuning") represents a
training example ``z`` by the gradient of its language-modelling loss with respect to the LoRA
parameters of a briefly warmed-up model, turned into the direction Adam would move,

    Γ(z, θ_t) = m̂_{t+1} / (√v̂_{t+1} + ε),
    m_{t+1} = β₁·m_t + (1 − β₁)·∇ℓ(z; θ_t),      m̂_{t+1} = m_{t+1} / (1 − β₁^{s+1}),
    v_{t+1} = β₂·v_t + (1 − β₂)·∇ℓ(z; θ_t)²,     v̂_{t+1} = v_{t+1} / (1 − β₂^{s+1}),

with ``(m_t, v_t)`` the warm-up optimizer's moments, then projects it to ``dim`` dimensions with a
random (Rademacher) matrix. Validation examples use the plain SGD gradient ∇ℓ(z'; θ_t), projected
with the same matrix; `hf_prune.score.less` scores each training example by cosine similarity to
them.

`LoRAGradientEmbedder` computes these features as a ``Dataset.map`` column. Per-example gradients
are batched with ``torch.func``: ``vmap(grad(loss))`` over the LoRA parameters only, through
``functional_call`` (falling back to one ``autograd`` call per example for models that ``vmap``
cannot trace). The projection (`hf_prune.ops.projection.RandomProjection`) is generated chunk by
chunk from the seed, so the ``(num_lora_params, dim)`` matrix is never held, and it is identical on
every device, so training and validation gradients computed on different machines share one space.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import xxhash

from ..data.prompts import IGNORE_INDEX
from ..ops.checks import seed_int
from ..ops.projection import RandomProjection
from ._base import Embedder

__all__ = ["LoRAGradientEmbedder", "lora_parameter_names"]


# --------------------------------------------------------------------------- LoRA parameters
def lora_parameter_names(model: torch.nn.Module) -> list[str]:
    """Names of the LoRA parameters of ``model`` (peft's ``lora_*`` tensors), in ``named_parameters`` order.

    With a peft model holding several adapters only the active ones are kept. Raises `ValueError`
    when the model has no LoRA parameters.

    Example:
        >>> model = peft.get_peft_model(base, peft.LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
        >>> lora_parameter_names(model)[0]
        'base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight'
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    names = [n for n, _ in model.named_parameters() if n.startswith("lora_") or ".lora_" in n]
    active = None
    if names:
        try:
            active = getattr(model, "active_adapters", None)
            if callable(active):  # a method on transformers models (raises when no adapter is loaded)
                active = active()
        except Exception:
            active = None
    if isinstance(active, (list, tuple)) and active:
        kept = [n for n in names if any(f".{a}." in n or n.endswith(f".{a}") for a in active)]
        names = kept or names
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no LoRA parameters (no parameter name contains 'lora_'); "
            "wrap the model with peft.get_peft_model(model, peft.LoraConfig(...)) first"
        )
    return names


# --------------------------------------------------------------------------- Adam state
def _adam_moments(
    optimizer_state: Any, model: torch.nn.Module, names: Sequence[str]
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[float | None], dict[str, Any]]:
    """``(exp_avg, exp_avg_sq, step, hyper)`` per LoRA parameter from any accepted state form."""
    params = dict(model.named_parameters())
    shapes = {n: tuple(params[n].shape) for n in names}
    hyper: dict[str, Any] = {}
    entries: list[Any]

    def group_hyper(groups):
        for g in groups:
            if "betas" in g:
                hyper.setdefault("betas", tuple(float(b) for b in g["betas"]))
            if "eps" in g:
                hyper.setdefault("eps", float(g["eps"]))

    if isinstance(optimizer_state, torch.optim.Optimizer):
        missing = [n for n in names if params[n] not in optimizer_state.state]
        if missing:
            raise ValueError(
                f"the optimizer has no state for LoRA parameter {missing[0]!r} ({len(missing)} missing): "
                "run at least one warm-up step with an optimizer built on the model's LoRA parameters"
            )
        entries = [optimizer_state.state[params[n]] for n in names]
        group_hyper(optimizer_state.param_groups)
    elif isinstance(optimizer_state, Mapping) and "state" in optimizer_state and "param_groups" in optimizer_state:
        # torch ``Optimizer.state_dict()``: states are keyed by position in the optimizer's
        # parameter list, which we take to be the LoRA parameters in model order (as built by
        # ``AdamW(p for p in model.parameters() if p.requires_grad)`` on a peft model).
        order = [i for g in optimizer_state["param_groups"] for i in g["params"]]
        if len(order) != len(names):
            raise ValueError(
                f"the optimizer state dict covers {len(order)} parameters but the model has {len(names)} "
                "LoRA parameters; pass the optimizer itself or a {name: (exp_avg, exp_avg_sq)} mapping"
            )
        state = optimizer_state["state"]
        missing = [names[k] for k, i in enumerate(order) if i not in state]
        if missing:
            raise ValueError(f"the optimizer state dict has no state for LoRA parameter {missing[0]!r}")
        entries = [state[i] for i in order]
        group_hyper(optimizer_state["param_groups"])
    elif isinstance(optimizer_state, Mapping):
        missing = [n for n in names if n not in optimizer_state]
        if missing:
            raise ValueError(
                f"`optimizer_state` has no entry for LoRA parameter {missing[0]!r} ({len(missing)} missing); "
                f"its keys must be the names from lora_parameter_names(model)"
            )
        entries = [optimizer_state[n] for n in names]
    elif isinstance(optimizer_state, Sequence) and not isinstance(optimizer_state, (str, bytes)):
        if len(optimizer_state) != len(names):
            raise ValueError(
                f"`optimizer_state` has {len(optimizer_state)} entries for {len(names)} LoRA parameters"
            )
        entries = list(optimizer_state)
    else:
        raise TypeError(
            "`optimizer_state` must be a torch optimizer, its state_dict(), a mapping {name: (exp_avg, "
            f"exp_avg_sq)}} or a list of (exp_avg, exp_avg_sq) pairs, got {type(optimizer_state).__name__}"
        )
    avg, avg_sq, steps = [], [], []
    for name, entry in zip(names, entries):
        if isinstance(entry, Mapping):
            if "exp_avg" not in entry or "exp_avg_sq" not in entry:
                raise ValueError(f"the state of {name!r} has no exp_avg/exp_avg_sq (is it an Adam state?)")
            m, v, step = entry["exp_avg"], entry["exp_avg_sq"], entry.get("step")
        elif isinstance(entry, (tuple, list)) and len(entry) in (2, 3):
            m, v, step = entry[0], entry[1], entry[2] if len(entry) == 3 else None
        else:
            raise ValueError(f"the state of {name!r} must be (exp_avg, exp_avg_sq) or a dict with those keys")
        m = torch.as_tensor(m).detach().to("cpu", torch.float32)
        v = torch.as_tensor(v).detach().to("cpu", torch.float32)
        for label, t in (("exp_avg", m), ("exp_avg_sq", v)):
            if tuple(t.shape) != shapes[name]:
                raise ValueError(f"{label} of {name!r} has shape {tuple(t.shape)}, the parameter {shapes[name]}")
            if not torch.isfinite(t).all():
                raise ValueError(f"{label} of {name!r} has NaN/inf values")
        if (v < 0).any():
            raise ValueError(f"exp_avg_sq of {name!r} has negative values")
        avg.append(m)
        avg_sq.append(v)
        steps.append(None if step is None else float(torch.as_tensor(step).item()))
    return avg, avg_sq, steps, hyper


# --------------------------------------------------------------------------- ragged inputs
def _ragged(values: Any, column: str) -> tuple[np.ndarray, np.ndarray]:
    """``(flat int64 values, row lengths)`` of a batch of token lists, without a loop over rows."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if isinstance(values, np.ndarray) and values.ndim == 2:
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"column {column!r} holds {values.dtype} values; expected token ids (integers)")
        return values.astype(np.int64).reshape(-1), np.full(len(values), values.shape[1], dtype=np.int64)
    values = list(values) if isinstance(values, (np.ndarray, tuple)) else values
    if values and isinstance(values[0], torch.Tensor):  # a torch-formatted Dataset with ragged rows
        values = [v.detach().cpu().numpy() for v in values]
    try:
        arr = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise ValueError(f"column {column!r} must hold one list of integer token ids per row: {err}") from err
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type)):
        raise ValueError(f"column {column!r} has type {arr.type}; expected a list of token ids per row")
    if arr.null_count:
        raise ValueError(f"column {column!r} has null rows")
    flat = arr.flatten()
    if not pa.types.is_integer(flat.type):
        raise ValueError(f"column {column!r} holds {flat.type} values; expected token ids (integers)")
    if flat.null_count:
        raise ValueError(f"column {column!r} has null token ids")
    if pa.types.is_fixed_size_list(arr.type):
        lengths = np.full(len(arr), arr.type.list_size, dtype=np.int64)
    else:
        lengths = np.diff(np.asarray(arr.offsets)).astype(np.int64)
    return flat.to_numpy(zero_copy_only=False).astype(np.int64), lengths


def _pad_right(flat: np.ndarray, lengths: np.ndarray, fill: int) -> np.ndarray:
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out = np.full((len(lengths), int(lengths.max(initial=0))), fill, dtype=np.int64)
    out[rows, cols] = flat
    return out


# --------------------------------------------------------------------------- the embedder
class LoRAGradientEmbedder(Embedder):
    """Per-example LoRA gradients of a causal LM, Adam-normalised and randomly projected (LESS).

    Each row's feature is the gradient, with respect to the model's LoRA parameters only, of the
    mean next-token cross-entropy over its **response** tokens: positions whose label is ``-100``
    (the prompt, padding) are excluded, exactly like ``model(input_ids, labels=labels).loss``. With
    ``optimizer_state`` the gradient is turned into Adam's update direction Γ (module docstring);
    without it the plain gradient is kept (LESS's validation features). Then it is projected to
    ``dim`` with a seeded chunked random matrix scaled by 1/√dim (``dim=None`` keeps the full
    flattened gradient, for small adapters and tests).

    Inputs are the tokenised form: ``input_ids`` and ``labels`` columns holding, per row, unpadded
    token lists of equal length with ``-100`` on the tokens that take no loss (build them from
    prompt/response text with `hf_prune.data.tokenize_prompt_response`). A batch is right-padded; under causal
    attention padding appended after a sequence cannot change the logits of its real tokens, so no
    attention mask is needed and every row's gradient equals the one of that row alone.

    The model runs in eval mode during embedding (LoRA/attention dropout off, so the features are
    deterministic) and its mode is restored afterwards; its weights are not changed. The optimizer
    moments are copied when the embedder is built, so later optimizer steps do not affect it.

    Choices where LESS leaves room (each tested):

    - Γ follows the paper's formula with bias correction and ε outside the square root (the
      reference code omits the bias correction and puts ε inside; both rescale Γ by nearly one
      common factor, which cosine scores ignore). The step count is the optimizer's, so Γ equals
      the update ``torch.optim.Adam`` would make on that example alone, divided by the learning rate.
    - LoRA parameters are those whose name contains ``lora_`` (peft's naming), restricted to the
      active adapter(s), whether or not they ``require_grad`` (LESS sets them trainable itself).
    - The per-example loss is the token-mean over the example's response tokens (LESS computes
      ``model(**batch).loss`` with batch size 1), not a sum.
    - ``torch.func.vmap`` cannot trace every model (``.item()``, data-dependent branches): with
      ``vectorize=None`` the first failure is reported once in a warning and the embedder then
      computes one ``autograd`` backward per example, which gives the same numbers more slowly.

    Memory: a batch holds ``batch_size × num_parameters`` float32 gradients plus the activations of
    ``batch_size`` sequences; the projection adds one chunk of the matrix at a time.

    Args:
        model: a causal LM with LoRA adapters (e.g. ``peft.get_peft_model(model, LoraConfig(...))``),
            called as ``model(input_ids=...)`` and returning ``.logits``.
        input_ids_column, labels_column: the token columns.
        output_column: the new column (fixed-length float32 list of length ``dim``).
        dim: projection dimension (LESS uses 8192); ``None`` stores the raw gradient.
        seed, projection: the random projection's seed (an integer in [0, 2**64), or a NumPy
            Generator: one draw from it gives the integer) and kind (``"rademacher"`` as in LESS, or
            ``"gaussian"``); train and validation embedders must use the same ones.
        chunk_size: rows of the projection matrix generated at a time (memory only, never the result).
        optimizer_state: warm-up Adam state for the Adam-normalised features. Accepted forms: the
            ``torch.optim.Adam``/``AdamW`` optimizer itself (its state for each LoRA parameter), its
            ``state_dict()`` (states in the order of the LoRA parameters), a mapping
            ``{parameter name: {"exp_avg", "exp_avg_sq"[, "step"]}}`` or ``{name: (exp_avg,
            exp_avg_sq[, step])}``, or a list of such pairs in `lora_parameter_names` order. ``None``:
            plain gradients.
        adam_betas, adam_eps: Adam's β₁, β₂ and ε; default: the optimizer's own (from its param
            groups) or else LESS's (0.9, 0.999) and 1e-8.
        adam_step: the number of optimizer steps already taken, ``s``; default: the state's
            ``step``. Bias correction uses ``s + 1``, the step the next update would be, exactly as
            ``torch.optim.Adam`` computes it.
        vectorize: ``True``: ``torch.func.vmap`` (error if the model cannot be vmapped); ``False``:
            one autograd backward per example; ``None``: try ``vmap`` and fall back to the loop with a
            warning.
        pad_token_id: the id used to right-pad a batch (any valid id; default 0).
        device, dtype, batch_size: as in `hf_prune.embed.Embedder` (``batch_size`` = examples per
            vmapped forward/backward; memory grows with it and with the sequence length).

    Raises:
        ValueError: the model has no LoRA parameters; bad optimizer state; a row with no response
            token, mismatched ``input_ids``/``labels`` lengths or token ids outside the vocabulary.
        KeyError: a missing input column.

    Example:
        >>> train_emb = hp.embed.LoRAGradientEmbedder(model, dim=8192, seed=0, optimizer_state=optimizer)
        >>> train = train_emb.map(train, batch_size=16)                 # column "grad"
        >>> val = train_emb.for_validation().map(val, batch_size=16)    # SGD gradients, same projection
        >>> train = hp.score.less(train, validation_gradients=val, task_column="task")
    """

    use_inference_mode = False  # gradients are the point

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        input_ids_column: str = "input_ids",
        labels_column: str = "labels",
        output_column: str = "grad",
        dim: int | None = 8192,
        seed: int = 0,
        projection: str = "rademacher",
        chunk_size: int | None = None,
        optimizer_state: Any = None,
        adam_betas: tuple[float, float] | None = None,
        adam_eps: float | None = None,
        adam_step: int | None = None,
        vectorize: bool | None = None,
        pad_token_id: int = 0,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        batch_size: int = 8,
    ):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.parameter_names = lora_parameter_names(model)
        params = dict(model.named_parameters())
        self.num_parameters = int(sum(params[n].numel() for n in self.parameter_names))
        self.input_ids_column, self.labels_column = input_ids_column, labels_column
        self.output_column = output_column
        if vectorize not in (None, True, False):
            raise ValueError(f"`vectorize` must be None, True or False, got {vectorize!r}")
        self.vectorize = vectorize
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, (int, np.integer)) or pad_token_id < 0:
            raise ValueError(f"`pad_token_id` must be a non-negative integer, got {pad_token_id!r}")
        self.pad_token_id = int(pad_token_id)
        self.projection = None
        if dim is not None:
            self.projection = RandomProjection(self.num_parameters, dim, seed=_projection_seed(seed), kind=projection, chunk_size=chunk_size)
        self.dim = self.num_parameters if dim is None else int(dim)
        self._set_adam(optimizer_state, adam_betas, adam_eps, adam_step)
        super().__init__(input_columns=[input_ids_column, labels_column], device=device, dtype=dtype,
                         batch_size=batch_size)
        self._vmap_failed: str | None = None
        self._adam_on: tuple[torch.device, tuple[torch.Tensor, ...]] | None = None

    def _set_adam(self, optimizer_state, betas, eps, step) -> None:
        self.adam = optimizer_state is not None
        self._adam_cpu = None
        self.adam_betas = self.adam_eps = self.adam_step = None
        self._adam_checksum = None
        if not self.adam:
            return
        avg, avg_sq, steps, hyper = _adam_moments(optimizer_state, self.model, self.parameter_names)
        betas = hyper.get("betas", (0.9, 0.999)) if betas is None else tuple(float(b) for b in betas)
        eps = hyper.get("eps", 1e-8) if eps is None else float(eps)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"`adam_betas` must be two numbers in [0, 1), got {betas!r}")
        if not eps > 0:
            raise ValueError(f"`adam_eps` must be positive, got {eps!r}")
        if step is None:
            known = {s for s in steps if s is not None}
            if not known:
                raise ValueError("the optimizer state has no `step`; pass adam_step= (optimizer steps taken)")
            if len(known) > 1:
                raise ValueError(f"the LoRA parameters were updated different numbers of times ({sorted(known)}); "
                                 "pass adam_step= explicitly")
            step = known.pop()
        if isinstance(step, bool) or float(step) != int(step) or step < 0:
            raise ValueError(f"`adam_step` must be a non-negative integer, got {step!r}")
        self.adam_betas, self.adam_eps, self.adam_step = betas, eps, int(step)
        self._adam_cpu = (torch.cat([m.reshape(-1) for m in avg]), torch.cat([v.reshape(-1) for v in avg_sq]))
        h = xxhash.xxh64()
        for t in self._adam_cpu:
            h.update(t.numpy().tobytes())
        self._adam_checksum = h.hexdigest()

    def for_validation(self) -> LoRAGradientEmbedder:
        """The same embedder (model, projection, columns) without Adam: LESS's validation features.

        Example:
            >>> val = train_emb.for_validation().map(val_ds)
        """
        other = copy.copy(self)
        other.adam = False
        other._adam_cpu = other._adam_checksum = None
        other.adam_betas = other.adam_eps = other.adam_step = None
        other._adam_on = None
        other._checksums = None
        return other

    # ------------------------------------------------------------------ Embedder hooks
    def _output_dims(self) -> dict[str, int | None]:
        return {self.output_column: self.dim}

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def _spec(self) -> dict[str, Any]:
        return {
            "lora_parameters": self.parameter_names,
            "projection": None if self.projection is None else self.projection.config,
            "adam": None if not self.adam else {
                "betas": self.adam_betas, "eps": self.adam_eps, "step": self.adam_step, "state": self._adam_checksum,
            },
            "pad_token_id": self.pad_token_id,
        }

    def __getstate__(self):
        state = super().__getstate__()
        state["_adam_on"] = None
        return state

    # ------------------------------------------------------------------ gradients
    def _loss(self, params: dict[str, torch.Tensor], input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of one sequence over positions whose label is not -100."""
        out = torch.func.functional_call(self.model, params, args=(),
                                         kwargs={"input_ids": input_ids.unsqueeze(0), "use_cache": False})
        logits = out.logits[0, :-1].float()
        target = labels[1:]
        total = torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
        return total / (target != IGNORE_INDEX).sum()

    def _vmapped(self, params, input_ids, labels) -> dict[str, torch.Tensor]:
        with warnings.catch_warnings():
            # sdpa has no batching rule yet: vmap loops over it internally, which is still correct.
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
            return torch.func.vmap(torch.func.grad(self._loss), in_dims=(None, 0, 0))(params, input_ids, labels)

    def _looped(self, params, input_ids, labels, lengths) -> dict[str, torch.Tensor]:
        leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        out: dict[str, list[torch.Tensor]] = {n: [] for n in params}
        with torch.enable_grad():
            for i, length in enumerate(lengths.tolist()):
                loss = self._loss(leaves, input_ids[i, :length], labels[i, :length])
                grads = torch.autograd.grad(loss, list(leaves.values()))
                for n, g in zip(leaves, grads):
                    out[n].append(g)
        return {n: torch.stack(g) for n, g in out.items()}

    def per_example_gradients(self, input_ids: torch.Tensor, labels: torch.Tensor,
                              lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Flattened LoRA gradients ``(B, num_parameters)`` of right-padded ``(B, L)`` batches (float32).

        The columns follow `lora_parameter_names` order, each parameter flattened row-major.
        """
        if lengths is None:
            lengths = torch.full((len(input_ids),), input_ids.shape[1], dtype=torch.int64)
        named = dict(self.model.named_parameters())
        params = {n: named[n].detach() for n in self.parameter_names}
        training = self.model.training
        self.model.eval()
        try:
            grads = None
            if self.vectorize is not False and self._vmap_failed is None:
                try:
                    grads = self._vmapped(params, input_ids, labels)
                except Exception as err:  # vmap cannot trace every model (data-dependent control flow, ...)
                    if self.vectorize:
                        raise
                    self._vmap_failed = f"{type(err).__name__}: {err}"
                    warnings.warn(f"torch.func.vmap failed on {type(self.model).__name__} ({self._vmap_failed}); "
                                  "computing per-example gradients one example at a time", stacklevel=2)
            if grads is None:
                grads = self._looped(params, input_ids, labels, lengths)
        finally:
            self.model.train(training)
        return torch.cat([grads[n].reshape(len(input_ids), -1).float() for n in self.parameter_names], dim=1)

    def adam_direction(self, gradients: torch.Tensor) -> torch.Tensor:
        """Γ = m̂/(√v̂ + ε) for flat gradients ``(B, num_parameters)`` (module docstring formula)."""
        if not self.adam:
            raise ValueError("this embedder has no optimizer state (optimizer_state=None)")
        device = gradients.device
        if self._adam_on is None or self._adam_on[0] != device:
            self._adam_on = (device, tuple(t.to(device) for t in self._adam_cpu))
        avg, avg_sq = self._adam_on[1]
        beta1, beta2 = self.adam_betas
        t = self.adam_step + 1
        m_hat = (beta1 * avg + (1 - beta1) * gradients) / (1 - beta1**t)
        v_hat = (beta2 * avg_sq + (1 - beta2) * gradients.square()) / (1 - beta2**t)
        return m_hat / (v_hat.sqrt() + self.adam_eps)

    def _tokens(self, batch: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids, id_lengths = _ragged(batch[self.input_ids_column], self.input_ids_column)
        labels, label_lengths = _ragged(batch[self.labels_column], self.labels_column)
        bad = np.flatnonzero(id_lengths != label_lengths)
        if len(bad):
            raise ValueError(f"row {bad[0]} of the batch has {id_lengths[bad[0]]} {self.input_ids_column!r} but "
                             f"{label_lengths[bad[0]]} {self.labels_column!r}; they must have equal lengths")
        vocab = getattr(getattr(self.model, "config", None), "vocab_size", None)
        if len(ids) and (ids.min() < 0 or (vocab is not None and ids.max() >= vocab)):
            raise ValueError(f"column {self.input_ids_column!r} has token ids outside [0, {vocab})")
        real = labels[labels != IGNORE_INDEX]
        if len(real) and (real.min() < 0 or (vocab is not None and real.max() >= vocab)):
            raise ValueError(f"column {self.labels_column!r} has labels that are neither -100 nor token ids")
        ids = _pad_right(ids, id_lengths, self.pad_token_id)
        labels = _pad_right(labels, label_lengths, IGNORE_INDEX)
        # Position 0 is never predicted, so a row needs a non-ignored label at position ≥ 1.
        counted = (labels[:, 1:] != IGNORE_INDEX).sum(axis=1) if labels.shape[1] > 1 else np.zeros(len(labels), int)
        empty = np.flatnonzero(counted == 0)
        if len(empty):
            raise ValueError(f"row {empty[0]} of the batch has no response token (every label after the first is "
                             f"-100 in {self.labels_column!r}): its loss and gradient are undefined")
        return ids, labels, id_lengths

    def _embed(self, batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        ids, labels, lengths = self._tokens(batch)
        grads = self.per_example_gradients(torch.from_numpy(ids).to(device), torch.from_numpy(labels).to(device),
                                           torch.from_numpy(lengths))
        if self.adam:
            grads = self.adam_direction(grads)
        if self.projection is not None:
            grads = self.projection(grads)
        return {self.output_column: grads}


def _projection_seed(seed):
    """A Generator gives one draw (the shared rule); an int keeps the projection's own 64-bit range check."""
    return seed_int(seed) if isinstance(seed, np.random.Generator) else seed
