"""The CLIP contrastive loss over the *global* batch of a multi-process run.

Every process holds a shard of the batch: ``B_p`` image and text features. `gather_with_grad` concatenates
all shards (in process order) and routes the gradient of every process's loss back to the shard it came
from: its backward sums the incoming gradients over processes (one ``all_reduce``) and keeps the local
rows, as OpenCLIP's ``gather_with_grad`` / ``torch.distributed.nn.functional.all_gather`` do. Shards may
differ in size (the last batch of an epoch): sizes are exchanged and shards padded for the collective.

`clip_loss` computes the symmetric InfoNCE loss of the process's *local rows* against *all global
columns* (image→text: local images vs every caption; text→image: local captions vs every image), the
cheaper of OpenCLIP's two layouts (``local_loss=True``). Why the gradients equal one process's:
with ``N = Σ_p B_p`` rows in the global batch and per-row losses ``ℓ_i``, the single-process loss is
``L = (1/N) Σ_i ℓ_i``. Process ``p`` returns ``L_p = (P/N) Σ_{i∈p} ℓ_i`` (P processes), so the mean of
the ``L_p`` is ``L``. Its gradient with respect to its own features comes from its rows directly and,
through `gather_with_grad`, from every other process's rows (the summed backward); DDP then averages
the parameter gradients over processes: ``(1/P) Σ_p ∂L_p/∂θ = ∂L/∂θ``. With equal shards ``L_p`` is the
plain mean over the local rows, i.e. the usual per-process loss.

The temperature is CLIP's learnable ``logit_scale`` (log of the inverse temperature), clamped at
``ln(100)`` before ``exp`` as CLIP does, so the logits are never scaled by more than 100.

Example:
    >>> out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    >>> loss = clip_loss(out.image_embeds, out.text_embeds, unwrapped.logit_scale).loss
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = [
    "MAX_LOGIT_SCALE", "ContrastiveOutput", "gather_with_grad", "clip_loss", "pair_statistics", "PairDynamicsRecorder",
    "PairDynamicsBuffer",
]

MAX_LOGIT_SCALE = math.log(100.0)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        padded = F.pad(tensor.contiguous(), (0, 0, 0, max(sizes) - tensor.shape[0]))
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        ctx.sizes, ctx.rank = sizes, rank
        return torch.cat([part[:n] for part, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every process's loss depends on this shard: sum their gradients, keep the local rows.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def gather_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All processes' rows of ``tensor`` in process order, and the offset of the local rows in it.

    The gradient of whatever is computed from the result, on any process, flows back to the process that
    owns the rows. Outside a multi-process run it returns ``(tensor, 0)``.

    Example:
        >>> all_images, offset = gather_with_grad(image_features)
    """
    if not _distributed():
        return tensor, 0
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    every = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(every, size)
    sizes = [int(s) for s in every]
    return _GatherWithGrad.apply(tensor, sizes), sum(sizes[: dist.get_rank()])


@dataclass
class ContrastiveOutput:
    """`clip_loss`'s result: ``loss`` (this process's share, see the module docstring), the local rows'
    ``logits_per_image`` ``(B_p, N)`` and ``logits_per_text`` ``(B_p, N)`` against the global batch,
    ``labels`` (the global column of each local row's own pair) and ``global_batch_size`` N."""

    loss: torch.Tensor
    logits_per_image: torch.Tensor
    logits_per_text: torch.Tensor
    labels: torch.Tensor
    global_batch_size: int


def clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, *, normalize: bool = True
) -> ContrastiveOutput:
    """Symmetric InfoNCE of the local pairs against the global batch, with the clamped learnable temperature.

    ``image_features[i]`` and ``text_features[i]`` are the two sides of the local pair ``i``;
    ``logit_scale`` is the log inverse temperature (CLIP's parameter). ``normalize`` L2-normalises the
    features first (CLIPModel's ``image_embeds``/``text_embeds`` already are; normalising again is harmless).

    Example:
        >>> out = clip_loss(torch.randn(8, 16), torch.randn(8, 16), torch.tensor(math.log(1 / 0.07)))
        >>> out.logits_per_image.shape
        torch.Size([8, 8])
    """
    if image_features.shape != text_features.shape or image_features.ndim != 2:
        raise ValueError(
            f"image and text features must be (B, D) of one shape, got {tuple(image_features.shape)} "
            f"and {tuple(text_features.shape)}"
        )
    image_features, text_features = image_features.float(), text_features.float()
    if normalize:
        image_features, text_features = F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1)
    all_images, offset = gather_with_grad(image_features)
    all_texts, _ = gather_with_grad(text_features)
    total = all_images.shape[0]
    scale = logit_scale.float().clamp(max=MAX_LOGIT_SCALE).exp()
    logits_per_image = scale * image_features @ all_texts.T
    logits_per_text = scale * text_features @ all_images.T
    labels = torch.arange(offset, offset + image_features.shape[0], device=image_features.device)
    processes = dist.get_world_size() if _distributed() else 1
    row_sum = F.cross_entropy(logits_per_image, labels, reduction="sum") + F.cross_entropy(
        logits_per_text, labels, reduction="sum"
    )
    loss = row_sum * (processes / (2 * total))
    return ContrastiveOutput(loss, logits_per_image, logits_per_text, labels, total)


@torch.no_grad()
def pair_statistics(output: ContrastiveOutput) -> dict[str, torch.Tensor]:
    """Per local pair: its contrastive loss (image→text + text→image cross-entropy, against the global batch)
    and the rank (0 = first) of its true caption among the global batch's captions for its image.

    Ties count against the pair (a caption scored equal to the true one ranks ahead of it).

    Example:
        >>> stats = pair_statistics(clip_loss(images, texts, logit_scale))
        >>> stats["loss"].shape, stats["rank"].shape
    """
    rows = torch.arange(len(output.labels), device=output.labels.device)
    i2t, t2i = output.logits_per_image.detach().float(), output.logits_per_text.detach().float()
    loss = F.cross_entropy(i2t, output.labels, reduction="none") + F.cross_entropy(t2i, output.labels, reduction="none")
    true = i2t[rows, output.labels]
    above = (i2t >= true[:, None]).sum(1) - 1  # every other caption scored at least as high
    return {"loss": loss, "rank": above.float()}


class PairDynamicsRecorder:
    """Per-epoch training dynamics of image–text pairs, saved like `hf_prune.dynamics.DynamicsRecorder`'s.

    Per pair and epoch: ``pair_loss`` and ``i2t_rank`` (`pair_statistics`), and the seven fields of the
    standard ``dynamics`` struct computed from the pair's image→text logits row as if the batch's captions
    were the classes (`hf_prune.dynamics.epoch_statistics`): ``true_prob`` is the softmax probability of
    the true caption, ``correct`` whether it ranks first, ``el2n``/``entropy``/``logit_margin`` as for
    classes, so DUAL, EL2N and forgetting scores read pairs as they read classified rows.
    ``kl_to_previous`` is 0: the columns (the batch's captions) change every epoch, so the KL between
    epochs has no meaning. `to_dataset` gives ``row_id``, the struct column and the two extra columns.

    Example:
        >>> recorder = PairDynamicsRecorder(num_rows=len(train))
        >>> recorder.update(positions, {"true_prob": ..., "pair_loss": ..., ...})
        >>> recorder.end_epoch()
    """

    EXTRA_FIELDS = ("pair_loss", "i2t_rank")

    def __init__(self, num_rows: int):
        from hf_prune.dynamics import DYNAMICS_FIELDS

        self.num_rows, self.fields = int(num_rows), (*DYNAMICS_FIELDS, *self.EXTRA_FIELDS)
        self._epochs: list[dict[str, np.ndarray]] = []
        self._current, self._seen = self._blank(), np.zeros(self.num_rows, dtype=bool)

    def _blank(self) -> dict[str, np.ndarray]:
        return {name: np.zeros(self.num_rows, dtype=np.float32) for name in self.fields}

    def update(self, positions: torch.Tensor, values: torch.Tensor) -> None:
        """Record ``values`` ``(B, len(fields))`` (in `fields` order) for the rows at ``positions``."""
        idx = torch.as_tensor(positions).long().cpu().numpy()
        values = values.detach().float().cpu().numpy()
        for j, name in enumerate(self.fields):
            self._current[name][idx] = values[:, j]
        self._seen[idx] = True

    def end_epoch(self) -> None:
        if not self._seen.all():
            missing = np.flatnonzero(~self._seen)
            raise RuntimeError(f"{len(missing)} pairs were not seen this epoch (first: position {missing[0]})")
        self._epochs.append(self._current)
        self._current, self._seen = self._blank(), np.zeros(self.num_rows, dtype=bool)

    @property
    def epochs(self) -> int:
        return len(self._epochs)

    def state_dict(self) -> dict:
        return {"epochs": self._epochs}

    def load_state_dict(self, state: dict) -> None:
        self._epochs = list(state["epochs"])

    def arrays(self) -> dict[str, np.ndarray]:
        """``{field: (num_rows, epochs)}`` float32 arrays."""
        if not self._epochs:
            raise RuntimeError("no epoch has been recorded")
        return {name: np.stack([e[name] for e in self._epochs], axis=1) for name in self.fields}

    def to_dataset(self, column: str = "dynamics"):
        """A Dataset with ``row_id``, the dynamics struct ``column`` and the `EXTRA_FIELDS` columns."""
        import pyarrow as pa
        from datasets import Dataset, DatasetInfo, Features, Sequence, Value
        from datasets.table import InMemoryTable

        from hf_prune.dynamics import dynamics_features, dynamics_struct

        arrays = self.arrays()
        columns = {"row_id": pa.array(np.arange(self.num_rows, dtype=np.int64)), column: dynamics_struct(arrays)}
        features = {"row_id": Value("int64"), column: dynamics_features(self.epochs)}
        for name in self.EXTRA_FIELDS:
            columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(arrays[name].reshape(-1)), self.epochs)
            features[name] = Sequence(Value("float32"), length=self.epochs)
        features = Features(features)
        table = pa.table(columns).cast(features.arrow_schema)
        return Dataset(InMemoryTable(table), info=DatasetInfo(features=features))


class PairDynamicsBuffer:
    """The training loop's dynamics buffer for `PairDynamicsRecorder` (`recipes.trainer.loop.train_epochs`).

    ``add(positions, logits, labels, loss=..., rank=...)`` takes the step's image→text logits against the
    global batch and `pair_statistics`; values stay on the device until ``flush`` gathers every process's
    rows (padded to equal length for the collective) into the recorder.

    Example:
        >>> buffer = PairDynamicsBuffer(PairDynamicsRecorder(len(train)), accelerator)
    """

    def __init__(self, recorder: PairDynamicsRecorder, accelerator):
        self.recorder, self.accelerator = recorder, accelerator
        self.items: list[tuple[torch.Tensor, torch.Tensor]] = []

    @torch.no_grad()
    def add(self, positions, logits, labels, *, loss: torch.Tensor, rank: torch.Tensor) -> None:
        from hf_prune.dynamics import DYNAMICS_FIELDS, epoch_statistics

        stats, _ = epoch_statistics(logits.detach().float(), labels)
        stats["kl_to_previous"] = torch.zeros_like(stats["true_prob"])  # the columns change between epochs
        values = torch.stack([*(stats[name] for name in DYNAMICS_FIELDS), loss.float(), rank.float()], dim=1)
        self.items.append((positions.to(values.device), values))

    def flush(self) -> None:
        if not self.items:
            return
        positions = torch.cat([p for p, _ in self.items])
        values = torch.cat([v for _, v in self.items])
        positions = self.accelerator.pad_across_processes(positions, pad_index=-1)
        values = self.accelerator.pad_across_processes(values)
        positions, values = self.accelerator.gather((positions, values))
        keep = positions >= 0
        self.recorder.update(positions[keep].cpu(), values[keep].cpu())
        self.items = []

    def discard(self) -> None:
        self.items = []
