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
come from one of three strategies, which give the same numbers (to float32 rounding):

- ``"hooks"`` (the default whenever every LoRA parameter is the weight or bias of a plain
  ``torch.nn.Linear``, as peft's ``lora_A``/``lora_B`` are): ONE forward and backward of the *sum*
  of the per-example losses over the right-padded batch. Under causal attention with right padding
  the examples do not interact, so the gradient of that sum with respect to a layer's output at
  example ``i`` is example ``i``'s own. A forward hook on every LoRA ``Linear`` keeps its input
  ``x`` and a tensor hook its output gradient ``δ``; since peft computes
  ``base(x) + lora_B(lora_A(dropout(x))) · scaling`` (dropout is the identity in eval mode), the
  per-example weight gradients are ``∂W_i = Σ_t δ_{i,t} x_{i,t}ᵀ`` for each of ``lora_A`` (``x``
  the layer input, ``δ = scaling · B ᵀ·(∂ℓ/∂result)``) and ``lora_B`` (``x = A x``, ``δ = scaling ·
  ∂ℓ/∂result``): one ``einsum`` over tokens per module (the idea of Opacus' per-sample gradients).
  Every batch is checked: the per-example gradients must sum to autograd's gradient of the summed
  loss, which catches a LoRA weight used outside its module's forward (e.g. DoRA's weight norm).
- ``"vmap"``: ``torch.func.vmap(grad(loss))`` over the LoRA parameters through ``functional_call``.
- ``"loop"``: one ``autograd`` backward per unpadded example (what LESS's ``collect_grads`` does).

The projection (`hf_prune.ops.projection.RandomProjection`, ``projection="rademacher"``, LESS's
own) is generated chunk by chunk from the seed, so the ``(num_lora_params, dim)`` matrix is never
held, and it is identical on every device, so training and validation gradients computed on
different machines share one space. Generating it costs as much as projecting dozens of rows, so
the rows of a whole ``map`` batch (up to ``projection_batch_size``) are projected in one pass,
after their gradients were computed in micro-batches of ``batch_size``. Its cost is ``O(num_lora_params
· dim)`` per row whatever the batching; ``projection="srht"`` (a subsampled randomized Hadamard
transform, `hf_prune.ops.projection.HadamardProjection`) costs ``O(n log n)`` with about the same
distortion, and applies to Adam directions too, which a per-layer factorised projection of the
layer inputs and output gradients (LoGra) cannot: ``m̂/(√v̂ + ε)`` needs the whole gradient.
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

from ..data.prompts import IGNORE_INDEX, predicting_positions, takes_logits_to_keep
from ..ops.checks import check_choice, check_positive_int, seed_int
from ..ops.deprecation import renamed
from ..ops.device import autocast_dtype
from ..ops.projection import make_projection
from ._base import Embedder

__all__ = ["LoRAGradientEmbedder", "lora_parameter_names"]

_METHODS = ("hooks", "vmap", "loop")
# Default rows per projection pass: generating R costs about as much as projecting ~50 rows with it
# (one CPU thread, dim 2048), so 64 rows cut the projection's cost per row ~4x against 8 rows.
_PROJECTION_ROWS = 64


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


def _linear_targets(model: torch.nn.Module, names: Sequence[str]) -> dict[torch.nn.Module, list[tuple[str, str]]]:
    """``{Linear module: [(parameter name, "weight" | "bias")]}`` for the hooks strategy.

    Raises `ValueError` naming the first LoRA parameter that is not the weight or bias of a module
    running ``torch.nn.Linear.forward`` (DoRA's magnitude vector, LoRA on embeddings or convolutions):
    its per-example gradient is not an outer product of the module's input and output gradient.
    """
    targets: dict[torch.nn.Module, list[tuple[str, str]]] = {}
    for name in names:
        owner, _, kind = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        if not (isinstance(module, torch.nn.Linear) and type(module).forward is torch.nn.Linear.forward
                and kind in ("weight", "bias")):
            raise ValueError(f"LoRA parameter {name!r} is not the weight or bias of a plain torch.nn.Linear "
                             f"({type(module).__name__}); use method='vmap' or 'loop'")
        targets.setdefault(module, []).append((name, kind))
    return targets


class _HooksUnsupported(RuntimeError):
    """The hooks strategy cannot give exact per-example gradients for this model (message says why)."""


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
    - The per-example gradient strategy (``method``, module docstring) changes the speed, never
      the column: ``"hooks"``, ``"vmap"`` and ``"loop"`` agree to float32 rounding, and the
      fingerprint does not include the choice. ``method=None`` takes ``"hooks"`` when every LoRA
      parameter belongs to a plain ``nn.Linear`` (peft's LoRA on linear layers, any number of
      adapters, active or not) and otherwise ``"vmap"``; when the chosen strategy fails on a batch
      (the hooks' sum check, a model ``vmap`` cannot trace: ``.item()``, data-dependent branches)
      the failure is reported once in a warning and the next strategy (``"vmap"``, then
      ``"loop"``) is used from then on. An explicit ``method`` raises instead. On one CPU thread
      the cost is the model's FLOPs whatever the batching, so hooks gain little there (SmolLM2-135M
      shapes, LoRA r=8 on q/k/v/o, 128 tokens, batches of 8: hooks 0.95, loop 0.78, vmap 0.73,
      LESS's own loop 0.76 rows/s; ``recipes/benchmarks/lora_gradient_throughput.py``); they replace
      ``batch_size`` small backward passes by one large one, which is where accelerators gain.
    - ``"hooks"`` and ``"loop"`` ask the model for the logits of the positions that predict a
      response token only (``logits_to_keep``, when its forward takes it): the other positions take
      no loss, so the loss and gradients are the same, without the vocabulary projection of prompts
      and padding. ``"vmap"`` computes every position's logits (the positions would depend on the
      vmapped labels).
    - Projection amortisation: generating the matrix ``R`` once costs about as much as projecting
      dozens of rows with it, so `Embedder.__call__` hands each ``_embed`` call up to
      ``projection_batch_size`` rows (also the default ``map`` batch), whose gradients are computed
      in micro-batches of ``batch_size`` and projected in one pass. Only time and memory depend on
      either size: a row's value is the same (to float32 rounding, 1e-6) whatever the batching.
      Measured (0.92M LoRA parameters, ``dim=2048``, one CPU thread): 0.39 s a row in passes of 8
      rows, 0.10 s in passes of 64.

    Memory: the gradients of one projection batch, ``projection_batch_size × num_parameters``
    float32 (e.g. 64 × 0.92M × 4 B = 236 MB for SmolLM2-135M with r=8 on q/k/v/o), plus, per
    micro-batch, the activations of ``batch_size`` sequences and their logits (``batch_size ×
    length × vocab`` float32); the hooks keep each LoRA layer's input until the backward (autograd
    keeps it anyway) and the ``(batch_size, num_parameters)`` per-example gradients; the projection
    adds one chunk of the matrix at a time.

    Args:
        model: a causal LM with LoRA adapters (e.g. ``peft.get_peft_model(model, LoraConfig(...))``),
            called as ``model(input_ids=...)`` and returning ``.logits``.
        input_ids_column, labels_column: the token columns.
        output_column: the new column (fixed-length float32 list of length ``dim``).
        dim: projection dimension (LESS uses 8192); ``None`` stores the raw gradient.
        seed, projection: the random projection's seed (an integer in [0, 2**64), or a NumPy
            Generator: one draw from it gives the integer) and kind: ``"rademacher"`` (dense, as in
            LESS: exactly LESS's features up to the random draw), ``"gaussian"`` (dense), or
            ``"srht"`` (`hf_prune.ops.projection.HadamardProjection`, a subsampled randomized
            Hadamard transform: the same inner products in expectation and about the dense
            projection's distortion, at ``O(n log n)`` per row instead of ``O(n · dim)`` plus
            regenerating the matrix; the choice for large adapters, see that class). Train and
            validation embedders must use the same ones.
        chunk_size: memory only, never the result: rows of the dense matrix generated at a time, or
            gradient rows transformed at a time for ``"srht"``.
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
        method: the per-example gradient strategy: ``"hooks"`` (one batched backward, per-example
            gradients from layer hooks), ``"vmap"`` (``torch.func.vmap``), ``"loop"`` (one backward per
            example), or ``None`` (``"hooks"`` when the LoRA layers are plain ``nn.Linear``, else
            ``"vmap"``, falling back with a warning; see above).
        vectorize: deprecated spelling of ``method`` (hf_prune 0.1.0): ``True`` is ``"vmap"``, ``False``
            ``"loop"``; accepted with a `FutureWarning`.
        pad_token_id: the id used to right-pad a batch (any valid id; default 0).
        device, dtype: as in `hf_prune.embed.Embedder`.
        batch_size: examples per gradient forward/backward (a micro-batch); memory grows with it and
            with the sequence length.
        storage_dtype: ``"float32"`` or ``"float16"`` for the embedding columns (`hf_prune.embed.Embedder`).
        projection_batch_size: rows whose gradients are held and projected together, and the default
            ``map`` batch (a ``map`` batch larger than it is split into pieces of it). Default: 64,
            lowered so the held gradients stay within 1 GiB, never below ``batch_size``. The
            attributes: ``gradient_batch_size`` is the micro-batch, ``batch_size`` (`Embedder`'s
            chunk per ``_embed`` call and default ``map`` batch) equals ``projection_batch_size``.

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
        method: str | None = None,
        vectorize: bool | None = None,
        pad_token_id: int = 0,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        batch_size: int = 8,
        projection_batch_size: int | None = None,
        storage_dtype: str = "float32",
    ):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.parameter_names = lora_parameter_names(model)
        params = dict(model.named_parameters())
        self.num_parameters = int(sum(params[n].numel() for n in self.parameter_names))
        self.input_ids_column, self.labels_column = input_ids_column, labels_column
        self.output_column = output_column
        method = renamed("LoRAGradientEmbedder", "vectorize", vectorize, "method", method, default=None,
                         values={True: "vmap", False: "loop"})
        if method is not None:
            check_choice("method", method, _METHODS)
        self.method = method
        self._linear_error: str | None = None
        self._keep_logits = takes_logits_to_keep(model)
        try:
            _linear_targets(model, self.parameter_names)
        except ValueError as err:
            if method == "hooks":
                raise
            self._linear_error = str(err)
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, (int, np.integer)) or pad_token_id < 0:
            raise ValueError(f"`pad_token_id` must be a non-negative integer, got {pad_token_id!r}")
        self.pad_token_id = int(pad_token_id)
        self.projection = None
        if dim is not None:
            self.projection = make_projection(self.num_parameters, dim, seed=_projection_seed(seed), kind=projection,
                                              chunk_size=chunk_size)
        self.dim = self.num_parameters if dim is None else int(dim)
        self._set_adam(optimizer_state, adam_betas, adam_eps, adam_step)
        check_positive_int("batch_size", batch_size)
        if projection_batch_size is None:
            fits = (1 << 30) // (4 * self.num_parameters)
            projection_batch_size = max(int(batch_size), min(_PROJECTION_ROWS, fits))
        check_positive_int("projection_batch_size", projection_batch_size)
        # Embedder.__call__ hands `_embed` chunks of its `batch_size`: here, one projection batch.
        super().__init__(input_columns=[input_ids_column, labels_column], device=device, dtype=dtype,
                         batch_size=projection_batch_size, storage_dtype=storage_dtype)
        self.projection_batch_size = int(projection_batch_size)
        self.gradient_batch_size = int(batch_size)
        self._failed: dict[str, str] = {}
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
    def _summed_loss(self, params: dict[str, torch.Tensor], input_ids: torch.Tensor, labels: torch.Tensor,
                     keep_logits: bool) -> torch.Tensor:
        """Σ over the rows of ``(B, L)`` inputs of each row's mean next-token cross-entropy over labels ≠ -100.

        ``keep_logits``: ask the model (``logits_to_keep``) for the logits of the positions that
        predict a response token of some row only; the others take no loss, so the loss and its
        gradients are the same while the vocabulary projection skips prompts and padding.
        """
        kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": False}
        target = labels[:, 1:]
        if keep_logits:
            positions = predicting_positions(labels)
            kwargs["logits_to_keep"] = positions
            target = target[:, positions]
        out = torch.func.functional_call(self.model, params, args=(), kwargs=kwargs)
        logits = (out.logits if keep_logits else out.logits[:, :-1]).float()
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                               ignore_index=IGNORE_INDEX, reduction="none")
        # Padding and prompt positions carry weight 0, so their output gradients are exactly 0.
        return (ce.view(len(target), -1).sum(1) / (target != IGNORE_INDEX).sum(1)).sum()

    def _loss(self, params: dict[str, torch.Tensor], input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of one sequence (what ``vmap`` differentiates; full logits, as
        the positions to keep would depend on the vmapped labels)."""
        return self._summed_loss(params, input_ids.unsqueeze(0), labels.unsqueeze(0), keep_logits=False)

    def _vmapped(self, params, input_ids, labels, lengths) -> dict[str, torch.Tensor]:
        with warnings.catch_warnings():
            # sdpa has no batching rule yet: vmap loops over it internally, which is still correct.
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
            return torch.func.vmap(torch.func.grad(self._loss), in_dims=(None, 0, 0))(params, input_ids, labels)

    def _looped(self, params, input_ids, labels, lengths) -> dict[str, torch.Tensor]:
        leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        out: dict[str, list[torch.Tensor]] = {n: [] for n in params}
        with torch.enable_grad():
            for i, length in enumerate(lengths.tolist()):
                loss = self._summed_loss(leaves, input_ids[i : i + 1, :length], labels[i : i + 1, :length],
                                         self._keep_logits)
                grads = torch.autograd.grad(loss, list(leaves.values()))
                for n, g in zip(leaves, grads):
                    out[n].append(g)
        return {n: torch.stack(g) for n, g in out.items()}

    def _hooked(self, params, input_ids, labels, lengths) -> dict[str, torch.Tensor]:
        """One backward of Σ_i mean-loss_i; per-example Linear weight gradients from hooks (module docstring)."""
        targets = _linear_targets(self.model, self.parameter_names)
        rows = len(input_ids)
        grads: dict[str, torch.Tensor] = {}

        def capture(module, args, output):
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor) or x.dim() < 3 or x.shape[0] != rows or output.shape[0] != rows:
                raise _HooksUnsupported(f"a LoRA layer ({type(module).__name__}) was called with input of shape "
                                        f"{None if x is None else tuple(x.shape)}, not (batch={rows}, tokens, "
                                        "features): its rows are not the batch's examples")
            saved = x.detach()

            def per_example(delta):
                # float32 whatever the autocast dtype: these sums are the feature itself.
                d = delta.reshape(rows, -1, delta.shape[-1]).float()
                for name, kind in targets[module]:
                    if kind == "weight":
                        g = torch.einsum("bto,bti->boi", d, saved.reshape(rows, -1, saved.shape[-1]).float())
                    else:
                        g = d.sum(1)
                    # A module called more than once per forward (shared layers) sums its calls.
                    grads[name] = grads[name] + g if name in grads else g

            output.register_hook(per_example)

        leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        handles = [module.register_forward_hook(capture) for module in targets]
        try:
            with torch.enable_grad():
                loss = self._summed_loss(leaves, input_ids, labels, self._keep_logits)
                total = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        finally:
            for handle in handles:
                handle.remove()
        half = autocast_dtype(input_ids.device, self.dtype) not in (None, torch.float32)
        tolerance = 2e-2 if half else 1e-4
        for (name, p), whole in zip(leaves.items(), total):
            per = grads.get(name)
            if per is None:  # the module never ran (e.g. a merged adapter): its gradient is 0
                per = grads[name] = torch.zeros((rows, *p.shape), dtype=torch.float32, device=p.device)
            if per.shape[1:] != p.shape:
                raise _HooksUnsupported(f"the per-example gradient of {name!r} has shape {tuple(per.shape[1:])}, "
                                        f"the parameter {tuple(p.shape)}")
            whole = torch.zeros_like(per[0]) if whole is None else whole.float()
            # An exact per-example split sums to the batch gradient; a weight also used outside its
            # Linear's forward (DoRA's weight norm, a tied copy) does not.
            error = float((per.sum(0) - whole).norm())
            scale = float(per.abs().sum(0).norm()) + float(whole.norm())
            if error > tolerance * scale:
                raise _HooksUnsupported(f"the per-example gradients of {name!r} from the Linear hooks do not sum to "
                                        f"the batch gradient (relative error {error / scale:.2g}): the parameter "
                                        "is also used outside its module's forward")
        return grads

    @property
    def gradient_method(self) -> str:
        """The strategy the next batch uses: ``method``, or what ``method=None`` resolved to so far.

        Example:
            >>> LoRAGradientEmbedder(peft_llama).gradient_method   # LoRA on nn.Linear layers
            'hooks'
        """
        return self._strategies()[0]

    def _strategies(self) -> list[str]:
        if self.method is not None:
            return [self.method]
        first = ["vmap", "loop"] if self._linear_error is not None else ["hooks", "vmap", "loop"]
        return [m for m in first if m not in self._failed]

    def per_example_gradients(self, input_ids: torch.Tensor, labels: torch.Tensor,
                              lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Flattened LoRA gradients ``(B, num_parameters)`` of right-padded ``(B, L)`` batches (float32).

        The columns follow `lora_parameter_names` order, each parameter flattened row-major. The
        strategy is the embedder's ``method`` (class docstring); all give the same values.

        Example:
            >>> emb = LoRAGradientEmbedder(model, dim=None)
            >>> g = emb.per_example_gradients(torch.tensor([[5, 7, 9, 0]]), torch.tensor([[-100, 7, 9, -100]]))
            >>> g.shape == (1, emb.num_parameters)
            True
        """
        if lengths is None:
            lengths = torch.full((len(input_ids),), input_ids.shape[1], dtype=torch.int64)
        named = dict(self.model.named_parameters())
        params = {n: named[n].detach() for n in self.parameter_names}
        run = {"hooks": self._hooked, "vmap": self._vmapped, "loop": self._looped}
        training = self.model.training
        self.model.eval()
        try:
            strategies = self._strategies()
            for k, method in enumerate(strategies):
                try:
                    grads = run[method](params, input_ids, labels, lengths)
                    break
                except Exception as err:  # a model this strategy cannot handle: the next one gives the same numbers
                    if self.method is not None or k == len(strategies) - 1:
                        raise
                    self._failed[method] = f"{type(err).__name__}: {err}"
                    warnings.warn(f"{method} per-example gradients failed on {type(self.model).__name__} "
                                  f"({self._failed[method]}); using {strategies[k + 1]!r} from now on", stacklevel=2)
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

    def _prepare(self, batch: Mapping[str, Any]) -> tuple[Mapping[str, Any], np.ndarray]:
        # Rows of similar length share a micro-batch (sorted, longest first; outputs in the input
        # order), so each backward pads to a length its rows nearly share (`hf_prune.embed.Embedder`).
        return batch, _ragged(batch[self.input_ids_column], self.input_ids_column)[1]

    def _embed(self, batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        ids, labels, lengths = self._tokens(batch)
        rows, micro = len(ids), self.gradient_batch_size
        # The whole projection batch's gradients are held, so R is generated once for all of them.
        out: torch.Tensor | None = None
        for start in range(0, rows, micro):
            stop = min(start + micro, rows)
            # Each micro-batch is padded to its own longest row only.
            width = int(lengths[start:stop].max())
            grads = self.per_example_gradients(torch.from_numpy(ids[start:stop, :width]).to(device),
                                               torch.from_numpy(labels[start:stop, :width]).to(device),
                                               torch.from_numpy(lengths[start:stop]))
            if self.adam:
                grads = self.adam_direction(grads)
            if out is None:
                out = torch.empty(rows, grads.shape[1], dtype=torch.float32, device=grads.device)
            out[start:stop] = grads
        if self.projection is not None:
            out = self.projection(out)
        return {self.output_column: out}


def _projection_seed(seed):
    """A Generator gives one draw (the shared rule); an int keeps the projection's own 64-bit range check."""
    return seed_int(seed) if isinstance(seed, np.random.Generator) else seed
