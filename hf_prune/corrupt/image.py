"""The five image corruptions of the GM Matching and DUAL robustness experiments.

GM Matching (Sec. 5, "Robustness to image corruption") corrupts a fraction of the training images
with "Gaussian noise, random occlusion, resolution reduction, fog, and motion blur": if ``m`` samples
are corrupted, each type goes to a random ``m/5`` of them. DUAL (App. B.2) uses the same five with
equal shares (4% each at a 20% corruption rate). Neither paper gives the corruption strengths, so
they are set here as follows, with a ``severity`` from 1 to 5 (default 3) and pixel sizes given for
a 32-pixel image and scaled by ``min(H, W) / 32``:

| corruption      | definition                                                        | severity 1 … 5                    |
|-----------------|-------------------------------------------------------------------|-----------------------------------|
| `gaussian_noise`| ``clip(x + N(0, σ²))`` per pixel and channel (CIFAR-10-C)          | σ = .04, .06, .08, .09, .10        |
| `occlusion`     | one axis-aligned rectangle of uniform random pixels; each side     | a = .2, .3, .4, .5, .6             |
|                 | uniform in ``[a/2, a]`` of the image side, placed uniformly inside  |                                   |
| `resolution`    | area-downsample to ``round(f · side)``, nearest-upsample back      | f = .6, .5, .4, .3, .25            |
| `fog`           | ``clip((x + c · plasma) · max x / (max x + c))`` with a diamond-    | (c, decay) = (.2, 3), (.5, 3),     |
|                 | square plasma fractal (CIFAR-10-C)                                 | (.75, 2.5), (1, 2), (1.5, 1.75)   |
| `motion_blur`   | one-sided line kernel, weights ``exp(−i²/2s²)``, ``i = 0..2r``,    | (r, s) = (10, 1), (10, 1.5),      |
|                 | integer pixel offsets along an angle ~ U(−45°, 45°), edge pixels   | (10, 2), (10, 2.5), (12, 3)       |
|                 | repeated (ImageMagick's motion blur, as used for CIFAR-10-C)       |                                   |

Gaussian noise, fog and motion blur follow Hendrycks & Dietterich's CIFAR-10-C definitions (the
benchmark both papers cite for these corruptions), re-implemented in vectorised NumPy/torch;
occlusion and resolution reduction are not part of that benchmark and are defined as above.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from datasets import Dataset, Value

from ..ops.arrow import column_array
from ..ops.checks import as_generator, check_positive_int
from ._common import (
    check_corruption_args,
    choose_rows,
    flag_array,
    image_chunks,
    replace_image_rows,
)

__all__ = ["CORRUPTIONS", "apply_corruption", "corrupt_images", "plasma_fractal"]

_GAUSSIAN_SIGMA = (0.04, 0.06, 0.08, 0.09, 0.10)
_OCCLUSION_SIDE = (0.2, 0.3, 0.4, 0.5, 0.6)
_RESOLUTION_SCALE = (0.6, 0.5, 0.4, 0.3, 0.25)
_FOG = ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75))
_MOTION = ((10, 1.0), (10, 1.5), (10, 2.0), (10, 2.5), (12, 3.0))


def _scale(x: torch.Tensor) -> float:
    return min(x.shape[-2:]) / 32.0


def _gaussian_noise(x: torch.Tensor, rng: np.random.Generator, severity: int) -> torch.Tensor:
    noise = rng.normal(0.0, _GAUSSIAN_SIGMA[severity - 1], size=tuple(x.shape))
    return (x + torch.from_numpy(noise).to(x)).clamp(0, 1)


def _occlusion(x: torch.Tensor, rng: np.random.Generator, severity: int) -> torch.Tensor:
    b, c, h, w = x.shape
    side = _OCCLUSION_SIDE[severity - 1]

    def extent(length: int) -> tuple[np.ndarray, np.ndarray]:
        low, high = max(1, math.ceil(side / 2 * length)), max(1, math.ceil(side * length))
        size = rng.integers(low, high + 1, size=b)
        start = rng.integers(0, length - size + 1)
        return start, start + size

    top, bottom = extent(h)
    left, right = extent(w)
    fill = torch.from_numpy(rng.random(size=(b, c, h, w))).to(x)
    ys, xs = np.arange(h), np.arange(w)
    inside = ((ys[None, :] >= top[:, None]) & (ys[None, :] < bottom[:, None]))[:, :, None] & (
        (xs[None, :] >= left[:, None]) & (xs[None, :] < right[:, None])
    )[:, None, :]
    return torch.where(torch.from_numpy(inside)[:, None].to(x.device), fill, x)


def _resolution(x: torch.Tensor, rng: np.random.Generator, severity: int) -> torch.Tensor:
    factor = _RESOLUTION_SCALE[severity - 1]
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, round(factor * h)), max(1, round(factor * w))), mode="area")
    return F.interpolate(small, size=(h, w), mode="nearest")


def plasma_fractal(batch: int, mapsize: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """``(batch, mapsize, mapsize)`` diamond-square plasma fractals scaled to [0, 1] (CIFAR-10-C's fog).

    ``mapsize`` must be a power of two. Each level's random offsets are ``w · U(−w, w)`` with ``w``
    starting at 100 and divided by ``decay`` per level (CIFAR-10-C's choice: a larger decay gives
    smoother fog); the map wraps around at its edges.
    """
    if mapsize < 2 or mapsize & (mapsize - 1):
        raise ValueError(f"`mapsize` must be a power of two ≥ 2, got {mapsize}")
    m = np.zeros((batch, mapsize, mapsize))
    step, wibble = mapsize, 100.0
    while step >= 2:
        half = step // 2
        corners = m[:, 0::step, 0::step]
        square = corners + np.roll(corners, -1, axis=1)
        square = square + np.roll(square, -1, axis=2)
        m[:, half::step, half::step] = square / 4 + wibble * rng.uniform(-wibble, wibble, square.shape)
        centers, corners = m[:, half::step, half::step], m[:, 0::step, 0::step]
        # Midpoints on corner rows: the centers above/below plus the corners left/right.
        top = centers + np.roll(centers, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        m[:, 0::step, half::step] = top / 4 + wibble * rng.uniform(-wibble, wibble, top.shape)
        # Midpoints on corner columns: the centers left/right plus the corners above/below.
        left = centers + np.roll(centers, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        m[:, half::step, 0::step] = left / 4 + wibble * rng.uniform(-wibble, wibble, left.shape)
        step //= 2
        wibble /= decay
    m -= m.min(axis=(1, 2), keepdims=True)
    return m / np.maximum(m.max(axis=(1, 2), keepdims=True), 1e-12)


def _fog(x: torch.Tensor, rng: np.random.Generator, severity: int) -> torch.Tensor:
    strength, decay = _FOG[severity - 1]
    b, _, h, w = x.shape
    mapsize = 1 << max(1, math.ceil(math.log2(max(h, w))))
    plasma = torch.from_numpy(plasma_fractal(b, mapsize, decay, rng)[:, None, :h, :w]).to(x)
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x + strength * plasma) * peak / (peak + strength)).clamp(0, 1)


def motion_blur_kernel(radius: float, sigma: float) -> np.ndarray:
    """Normalised one-sided weights ``exp(−i²/2σ²)`` for ``i = 0 .. 2⌈radius⌉``."""
    taps = np.arange(2 * math.ceil(radius) + 1, dtype=np.float64)
    weights = np.exp(-(taps**2) / (2 * sigma**2))
    return weights / weights.sum()


def _motion_blur(x: torch.Tensor, rng: np.random.Generator, severity: int) -> torch.Tensor:
    radius, sigma = _MOTION[severity - 1]
    scale = _scale(x)
    weights = motion_blur_kernel(radius * scale, sigma * scale)
    b, _, h, w = x.shape
    angle = np.deg2rad(rng.uniform(-45.0, 45.0, size=b))
    taps = np.arange(len(weights))
    # Integer offsets along the direction, rounded half up as ImageMagick does.
    dx = np.ceil(taps[None, :] * np.cos(angle)[:, None] - 0.5).astype(np.int64)
    dy = np.ceil(taps[None, :] * np.sin(angle)[:, None] - 0.5).astype(np.int64)
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    flat = x.reshape(b, -1, h * w)
    out = torch.zeros_like(flat)
    for t, weight in enumerate(weights):  # loop over kernel taps (≤ 25), not rows
        r = (rows[None, :] + torch.from_numpy(dy[:, t]).to(x.device)[:, None]).clamp(0, h - 1)
        c = (cols[None, :] + torch.from_numpy(dx[:, t]).to(x.device)[:, None]).clamp(0, w - 1)
        index = (r[:, :, None] * w + c[:, None, :]).reshape(b, 1, h * w).expand_as(flat)
        out += float(weight) * flat.gather(2, index)
    out = out.reshape(x.shape)
    return out.clamp(0, 1)


CORRUPTIONS = {
    "gaussian_noise": _gaussian_noise,
    "occlusion": _occlusion,
    "resolution": _resolution,
    "fog": _fog,
    "motion_blur": _motion_blur,
}


def _check_severity(severity) -> int:
    severity = check_positive_int("severity", severity)
    if severity > 5:
        raise ValueError(f"`severity` must be an integer in 1..5, got {severity}")
    return severity


def apply_corruption(
    images: np.ndarray,
    name: str,
    *,
    severity: int = 3,
    rng: np.random.Generator | int = 0,
    device: str | torch.device | None = "cpu",
) -> np.ndarray:
    """Apply corruption ``name`` to ``(N, H, W, C)`` ``uint8`` images; returns new ``uint8`` images.

    ``rng`` is a NumPy Generator (or a seed): all randomness (noise, rectangles, fog maps, blur
    angles) comes from it, so CPU and GPU give the same draws. Definitions: module docstring.

    Example:
        >>> blurred = apply_corruption(pixels, "motion_blur", severity=3, rng=np.random.default_rng(0))
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {sorted(CORRUPTIONS)}")
    severity = _check_severity(severity)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"`images` must be a (N, H, W, C) uint8 array, got {images.dtype} {images.shape}")
    rng = as_generator(rng, name="rng")
    x = torch.tensor(images, device=device).permute(0, 3, 1, 2).float() / 255.0
    out = CORRUPTIONS[name](x, rng, severity)
    return (out * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def corrupt_images(
    dataset: Dataset,
    *,
    rate: float,
    image_column: str = "image",
    corruptions: Sequence[str] = tuple(CORRUPTIONS),
    severity: int = 3,
    seed: int | np.random.Generator = 0,
    batch_size: int = 256,
    flag_column: str = "is_corrupted",
    type_column: str | None = "corruption",
    device: str | torch.device | None = "cpu",
    overwrite: bool = False,
) -> Dataset:
    """Corrupt a random ``rate`` fraction of the images, split equally between ``corruptions``.

    Exactly ``m = round(rate · N)`` rows are drawn uniformly without replacement and dealt in random
    order into ``len(corruptions)`` parts of sizes ``⌈m/K⌉`` or ``⌊m/K⌋`` (the first ``m mod K``
    corruptions get one more), as in GM Matching (``m/5`` each). Only those rows are decoded and
    re-encoded; the others keep their stored bytes. The result has ``flag_column`` (bool) and, unless
    ``type_column=None``, the corruption name per row (null for clean rows).

    All randomness comes from NumPy generators seeded by ``seed``; rows are processed in chunks of
    ``batch_size``, which is part of the random stream (same seed and batch size → same images).
    Images must share one size. Existing flag/type columns are replaced only with ``overwrite=True``.

    Example:
        >>> corrupted = corrupt_images(ds["train"], rate=0.2, seed=0)
        >>> corrupted.filter(lambda r: r["is_corrupted"])["corruption"][:3]
        ['fog', 'gaussian_noise', 'motion_blur']
    """
    seed = check_corruption_args(
        dataset, rate=rate, seed=seed, sources={"image_column": image_column},
        outputs={"flag_column": flag_column, "type_column": type_column}, overwrite=overwrite,
    )
    severity = _check_severity(severity)
    batch_size = check_positive_int("batch_size", batch_size)
    corruptions = list(corruptions)
    if not corruptions:
        raise ValueError("`corruptions` is empty")
    unknown = [c for c in corruptions if c not in CORRUPTIONS]
    if unknown or len(set(corruptions)) != len(corruptions):
        raise ValueError(f"`corruptions` must be distinct names from {sorted(CORRUPTIONS)}, got {corruptions}")

    rows = choose_rows(len(dataset), rate, np.random.default_rng([seed, 0]))
    parts = [np.sort(part) for part in np.array_split(rows, len(corruptions))]
    column = column_array(dataset, image_column)  # read once; chunks take from it
    feature = dataset.features[image_column]
    corrupted, kinds = [], np.full(len(dataset), None, dtype=object)
    for k, (name, part) in enumerate(zip(corruptions, parts)):
        kinds[part] = name
        for _, images, rng in image_chunks(column, feature, image_column, part, batch_size, (seed, 1 + k)):
            corrupted.append(apply_corruption(images, name, severity=severity, rng=rng, device=device))
    columns = {flag_column: flag_array(len(dataset), rows)}
    if type_column is not None:
        columns[type_column] = (pa.array(kinds.tolist(), type=pa.string()), Value("string"))
    params = {"rate": rate, "corruptions": corruptions, "severity": severity, "seed": seed, "batch_size": batch_size}
    return replace_image_rows(
        dataset, image_column, column, np.concatenate(parts), corrupted, columns, method="corrupt_images", params=params
    )
