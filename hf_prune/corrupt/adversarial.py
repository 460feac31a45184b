"""Adversarial perturbations of a fraction of the images: FGSM and PGD against a given model.

GM Matching (Sec. 5, "Robustness to adversarial attacks") perturbs training images with PGD (Madry
et al., 2018) and the fast gradient sign method (Goodfellow et al., 2015) against a model trained on
the same data, then prunes. The paper gives no attack budgets, so the defaults are the usual CIFAR
ones: L∞ radius ``epsilon = 8/255``; PGD with ``steps = 10``, ``step_size = 2/255`` and a uniform
random start in the ε-ball.

Pixels are attacked in [0, 1] and stored back as ``uint8``: the perturbed image is rounded to the
nearest level and clipped to ``x ± ⌊255 ε⌋/255``, so every stored perturbation is within ε.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset

from ..ops.arrow import column_array
from ..ops.checks import check_positive_int
from ..ops.columns import read_labels
from ..ops.device import resolve_device
from ._common import check_corruption_args, choose_rows, flag_array, image_chunks, replace_image_rows

__all__ = ["fgsm", "pgd", "adversarial_attack"]


def _logits(model: torch.nn.Module, x: torch.Tensor, preprocess: Callable | None) -> torch.Tensor:
    out = model(preprocess(x) if preprocess is not None else x)
    return out.logits if hasattr(out, "logits") else out


def _input_gradient(model, x, labels, preprocess) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(_logits(model, x, preprocess).float(), labels, reduction="sum")
    # Gradient with respect to the input only: the model's .grad fields are left untouched.
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def _attack_batch(model, x, labels, *, method, epsilon, step_size, steps, random_start, rng, preprocess):
    if method == "fgsm":
        return (x + epsilon * _input_gradient(model, x, labels, preprocess).sign()).clamp(0, 1)
    adv = x
    if random_start:
        start = torch.from_numpy(rng.uniform(-epsilon, epsilon, size=tuple(x.shape))).to(x)
        adv = (x + start).clamp(0, 1)
    for _ in range(steps):
        adv = adv + step_size * _input_gradient(model, adv, labels, preprocess).sign()
        adv = torch.min(torch.max(adv, x - epsilon), x + epsilon).clamp(0, 1)  # project onto the ε-ball ∩ [0, 1]
    return adv


def adversarial_attack(
    dataset: Dataset,
    *,
    model: torch.nn.Module,
    rate: float,
    method: str = "pgd",
    epsilon: float = 8 / 255,
    step_size: float = 2 / 255,
    steps: int = 10,
    random_start: bool = True,
    image_column: str = "image",
    label_column: str = "label",
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    seed: int | np.random.Generator = 0,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    flag_column: str = "is_adversarial",
    overwrite: bool = False,
) -> Dataset:
    """Replace a random ``rate`` fraction of the images by adversarial examples against ``model``.

    ``model`` maps ``(B, C, H, W)`` float images in [0, 1] (after the optional ``preprocess``, e.g.
    normalisation or resizing) to logits, or to an output with ``.logits`` (transformers models).
    Each attacked image maximises the cross-entropy of its own label: FGSM takes one step
    ``x + ε·sign(∇ₓL)``; PGD takes ``steps`` steps of ``step_size·sign(∇ₓL)``, each projected back
    onto ``‖x' − x‖∞ ≤ ε`` and [0, 1], from a uniform random start when ``random_start``.

    Exactly ``round(rate · N)`` rows are drawn uniformly (seeded) and marked in ``flag_column``. The
    model runs in eval mode (its mode is restored afterwards) and is not modified; it is copied when
    it lives on another device than ``device`` (default: CUDA when available). All randomness comes
    from NumPy generators seeded by ``seed``; chunks of ``batch_size`` rows are part of the stream.

    Example:
        >>> attacked = adversarial_attack(ds, model=net, rate=0.2, method="pgd", epsilon=8 / 255, seed=0)
    """
    seed = check_corruption_args(
        dataset, rate=rate, seed=seed, sources={"image_column": image_column, "label_column": label_column},
        outputs={"flag_column": flag_column}, overwrite=overwrite,
    )
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if method not in ("fgsm", "pgd"):
        raise ValueError(f"`method` must be 'fgsm' or 'pgd', got {method!r}")
    for name, value in (("epsilon", epsilon), ("step_size", step_size)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value <= 1:
            raise ValueError(f"`{name}` must be a number in (0, 1], got {value!r}")
    steps = check_positive_int("steps", steps)
    batch_size = check_positive_int("batch_size", batch_size)

    device = resolve_device(device)
    params = list(model.parameters())
    if params and params[0].device.type == device.type:
        device, net = params[0].device, model  # already there (e.g. cuda:1 when asked for cuda)
    else:
        net = copy.deepcopy(model).to(device) if params else model
    labels_all = read_labels(dataset, label_column)
    rows = np.sort(choose_rows(len(dataset), rate, np.random.default_rng([seed, 0])))
    levels = math.floor(epsilon * 255 + 1e-9)
    column, feature = column_array(dataset, image_column), dataset.features[image_column]
    was_training = net.training
    net.eval()
    outputs = []
    try:
        for chunk, images, rng in image_chunks(column, feature, image_column, rows, batch_size, (seed, 1)):
            pixels = torch.from_numpy(images).to(device)
            x = pixels.permute(0, 3, 1, 2).float() / 255.0
            labels = torch.from_numpy(labels_all[chunk]).to(device)
            with torch.enable_grad():
                adv = _attack_batch(
                    net, x, labels, method=method, epsilon=float(epsilon), step_size=float(step_size),
                    steps=steps, random_start=random_start, rng=rng, preprocess=preprocess,
                )
            stored = (adv.detach() * 255.0).round()
            base = pixels.permute(0, 3, 1, 2).float()
            stored = torch.min(torch.max(stored, base - levels), base + levels).clamp(0, 255)
            outputs.append(stored.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    finally:
        net.train(was_training)
    columns = {flag_column: flag_array(len(dataset), rows)}
    params = {
        "rate": rate, "method": method, "epsilon": float(epsilon), "step_size": float(step_size), "steps": steps,
        "random_start": random_start, "seed": seed, "batch_size": batch_size,
    }
    return replace_image_rows(
        dataset, image_column, column, rows, outputs, columns, method=f"adversarial_{method}", params=params
    )


def fgsm(dataset: Dataset, *, model: torch.nn.Module, rate: float, epsilon: float = 8 / 255, **kwargs) -> Dataset:
    """FGSM (Goodfellow et al., 2015): ``x' = clip(x + ε·sign(∇ₓ CE(f(x), y)), 0, 1)`` on a ``rate`` fraction.

    Other keyword arguments as in `adversarial_attack`.

    Example:
        >>> attacked = fgsm(ds, model=net, rate=0.2, epsilon=8 / 255, seed=0)
    """
    return adversarial_attack(dataset, model=model, rate=rate, method="fgsm", epsilon=epsilon, **kwargs)


def pgd(
    dataset: Dataset,
    *,
    model: torch.nn.Module,
    rate: float,
    epsilon: float = 8 / 255,
    step_size: float = 2 / 255,
    steps: int = 10,
    random_start: bool = True,
    **kwargs,
) -> Dataset:
    """PGD (Madry et al., 2018) in the L∞ ε-ball, ``steps`` signed-gradient steps, on a ``rate`` fraction.

    Other keyword arguments as in `adversarial_attack`.

    Example:
        >>> attacked = pgd(ds, model=net, rate=0.2, epsilon=8 / 255, steps=10, seed=0)
    """
    return adversarial_attack(
        dataset, model=model, rate=rate, method="pgd", epsilon=epsilon, step_size=step_size, steps=steps,
        random_start=random_start, **kwargs,
    )
