"""Device choice shared by embedders and selectors."""

from __future__ import annotations

import warnings

import numpy as np
import torch

__all__ = ["resolve_device", "autocast_dtype", "to_device"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` → CUDA when available, else CPU; anything else is passed to `torch.device`."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was requested but CUDA is not available")
    return device


def autocast_dtype(device: torch.device, dtype: torch.dtype | str | None = None) -> torch.dtype | None:
    """The autocast dtype for a device: bf16 on GPUs that support it, else fp16; none on CPU."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype is not None:
        return dtype
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def to_device(matrix: np.ndarray, dev: torch.device, dtype: np.dtype | type | None = np.float32) -> torch.Tensor:
    """A tensor on ``dev`` over ``matrix`` (cast to ``dtype``; ``None`` keeps its dtype), zero-copy on CPU.

    Callers never write to the result: Arrow-backed arrays are read-only and share its memory.
    """
    matrix = np.ascontiguousarray(matrix, dtype=dtype)
    with warnings.catch_warnings():
        # torch warns about read-only arrays even though we only read.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(matrix).to(dev)
