"""Seeded random projections generated chunk by chunk, never holding the whole matrix.

A projection maps ``in_features``-dimensional rows (e.g. flattened LoRA gradients, millions of
entries) to ``dim`` dimensions with a Johnson–Lindenstrauss matrix ``R`` of shape
``(in_features, dim)`` scaled by ``1/√dim``, so ``E[‖xR‖²] = ‖x‖²`` and ``E[⟨xR, yR⟩] = ⟨x, y⟩``.
``R`` is never materialised: ``x @ R`` is accumulated over chunks of ``chunk_size`` rows of ``R``,
and chunk ``i`` is regenerated on demand from ``(seed, i)``.

Every entry ``R[r, c]`` is a pure function of ``(seed, r, c)``: a counter-based integer hash
(Wellons' *lowbias32*, evaluated exactly in int64 arithmetic) rather than a stateful generator.
Hence the matrix is the same whatever the chunk size and on every device (CPU or GPU), which
matters because training and validation gradients must be projected into the *same* space even
when they are computed on different machines.

- ``kind="rademacher"`` (the default, as in TRAK/LESS): ``R[r, c] = ±1/√dim``, one hash bit per
  entry (one 32-bit hash yields 32 entries).
- ``kind="gaussian"``: ``R[r, c] ≈ N(0, 1/dim)``: each 16-bit half of a hash picks one of 65,536
  equiprobable Gaussian quantiles (rescaled to unit variance). Entries are therefore bit-identical on
  every device; the tails are cut at ≈4.3σ, which the JL guarantee (sub-Gaussian entries of unit
  variance) does not need.

Both kinds are table look-ups of hash bits, so generating a chunk costs a few passes over it.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from .checks import check_choice, check_positive_int
from .device import resolve_device

__all__ = ["RandomProjection", "random_projection"]

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9
_KINDS = ("rademacher", "gaussian")
# Default chunk: about 1M entries of R; larger chunks were slower on CPU (allocation, cache misses).
_CHUNK_ENTRIES = 1 << 20


def _as_signed(constant: int) -> int:
    # x·C ≡ x·(C − 2³²) (mod 2³²); with |C − 2³²| < 2³¹ and x < 2³² the int64 product cannot overflow.
    return constant - (1 << 32) if constant >= 1 << 31 else constant


_MUL1 = _as_signed(0x7FEB352D)
_MUL2 = _as_signed(0x846CA68B)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding values in [0, 2³²); in place, exact on every device."""
    # torch.bitwise_right_shift with a Python int is vectorised on CPU; the ``>>`` operator is not.
    x.bitwise_xor_(torch.bitwise_right_shift(x, 16))
    x.mul_(_MUL1).bitwise_and_(_M32)
    x.bitwise_xor_(torch.bitwise_right_shift(x, 15))
    x.mul_(_MUL2).bitwise_and_(_M32)
    x.bitwise_xor_(torch.bitwise_right_shift(x, 16))
    return x


def _mix32_int(x: int) -> int:
    """The same hash on a Python int (for deriving keys from the seed)."""
    x &= _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    x ^= x >> 16
    return x


@functools.lru_cache(maxsize=32)
def _lookup_table(kind: str, dim: int, device: str) -> torch.Tensor:
    """Entry values by table index, already scaled by 1/√dim (so exact and identical on every device).

    Rademacher: ``(256, 8)``, row ``b`` holds the signs ``1 − 2·bit_k(b)``. Gaussian: ``(65536,)``
    equiprobable quantiles ``Φ⁻¹((u + ½)/65536)``, rescaled to unit variance.
    """
    if kind == "rademacher":
        bits = (torch.arange(256, dtype=torch.int64).unsqueeze(1) >> torch.arange(8)) & 1
        table = 1.0 - 2.0 * bits.to(torch.float64)
    else:
        quantiles = torch.special.ndtri((torch.arange(1 << 16, dtype=torch.float64) + 0.5) / (1 << 16))
        table = quantiles / quantiles.square().mean().sqrt()
    return (table / math.sqrt(dim)).to(torch.float32).to(device)


class RandomProjection:
    """A seeded ``(in_features, dim)`` random projection applied chunk by chunk.

    Args:
        in_features: Length of the input rows (number of rows of ``R``).
        dim: Output dimension (number of columns of ``R``).
        seed: Non-negative integer; with ``in_features``, ``dim`` and ``kind`` it fixes ``R``.
        kind: ``"rademacher"`` (±1/√dim) or ``"gaussian"`` (N(0, 1/dim)).
        chunk_size: Rows of ``R`` generated at once (default: about 1M entries per chunk). Only
            memory and speed depend on it, never the result.

    Example:
        >>> proj = RandomProjection(1_000_000, dim=8192, seed=0)
        >>> z = proj(torch.randn(4, 1_000_000))   # (4, 8192); R itself is never held
        >>> torch.equal(proj.chunk(3), RandomProjection(1_000_000, dim=8192, seed=0).chunk(3))
        True
    """

    def __init__(
        self,
        in_features: int,
        dim: int = 8192,
        *,
        seed: int = 0,
        kind: str = "rademacher",
        chunk_size: int | None = None,
    ):
        check_positive_int("in_features", in_features)
        check_positive_int("dim", dim)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 1 << 64:
            raise ValueError(f"`seed` must be an integer in [0, 2**64), got {seed!r}")
        check_choice("kind", kind, _KINDS)
        if chunk_size is None:
            chunk_size = max(1, _CHUNK_ENTRIES // int(dim))
        check_positive_int("chunk_size", chunk_size)
        self.in_features = int(in_features)
        self.dim = int(dim)
        self.seed = int(seed)
        self.kind = kind
        self.chunk_size = int(chunk_size)
        # Independent 32-bit keys per seed and kind (the kind is mixed in so the two never share bits).
        base = _mix32_int(_mix32_int(self.seed & _M32) ^ (self.seed >> 32) ^ (_KINDS.index(kind) + 1))
        self._keys = [_mix32_int(base + _GOLDEN * (j + 1)) for j in range(4)]

    def __repr__(self) -> str:
        return (
            f"RandomProjection(in_features={self.in_features}, dim={self.dim}, seed={self.seed}, "
            f"kind={self.kind!r}, chunk_size={self.chunk_size})"
        )

    @property
    def config(self) -> dict:
        """What determines ``R`` (``chunk_size`` does not): for fingerprints and provenance."""
        return {"in_features": self.in_features, "dim": self.dim, "seed": self.seed, "kind": self.kind}

    @property
    def num_chunks(self) -> int:
        return -(-self.in_features // self.chunk_size)

    def chunk(self, index: int, *, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows ``[index·chunk_size, (index+1)·chunk_size)`` of ``R``, regenerated from ``(seed, index)``."""
        if not 0 <= index < self.num_chunks:
            raise IndexError(f"chunk {index} out of range for {self.num_chunks} chunks")
        start = index * self.chunk_size
        return self.rows(start, min(start + self.chunk_size, self.in_features), device=device, dtype=dtype)

    def rows(self, start: int, stop: int, *, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows ``start:stop`` of ``R`` as a ``(stop − start, dim)`` tensor (scaled by 1/√dim)."""
        if not 0 <= start <= stop <= self.in_features:
            raise IndexError(f"rows {start}:{stop} out of range for in_features={self.in_features}")
        device = resolve_device(device)
        r = torch.arange(start, stop, dtype=torch.int64, device=device)
        table = _lookup_table(self.kind, self.dim, str(device))
        if self.kind == "rademacher":
            # 32 signs per hash: split it into 4 bytes and look each byte's 8 signs up in a table.
            words = -(-self.dim // 32)
            shifts = torch.tensor([0, 8, 16, 24], dtype=torch.int64, device=device)
            index = torch.bitwise_right_shift(self._hash(r, words).unsqueeze(-1), shifts) & 0xFF
            values = torch.nn.functional.embedding(index, table)  # (rows, words, 4, 8)
        else:
            # Two 16-bit uniforms per hash, each mapped to a Gaussian quantile by table lookup.
            pairs = -(-self.dim // 2)
            h = self._hash(r, pairs)
            values = torch.empty(len(r), pairs, 2, dtype=torch.float32, device=device)
            values[..., 0] = table[h & 0xFFFF]
            values[..., 1] = table[torch.bitwise_right_shift(h, 16)]
        return values.reshape(len(r), -1)[:, : self.dim].to(dtype)

    def _hash(self, r: torch.Tensor, width: int) -> torch.Tensor:
        """A ``(len(r), width)`` table of 32-bit hashes of ``(seed, kind, row, column)``.

        Row and column are hashed separately and combined by XOR before a final mix, so two rows
        never share a (shifted) run of columns, as an additive counter would allow.
        """
        row = _mix32((r & _M32) ^ self._keys[0])
        row = _mix32(row ^ torch.bitwise_right_shift(r, 32) ^ self._keys[1])
        cols = _mix32(torch.arange(width, dtype=torch.int64, device=r.device) ^ self._keys[2])
        return _mix32(row.unsqueeze(1) ^ cols.unsqueeze(0))

    def materialize(self, *, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The full ``(in_features, dim)`` matrix: for tests and small problems only."""
        return self.rows(0, self.in_features, device=device, dtype=dtype)

    def __call__(self, x):
        return self.project(x)

    def project(self, x):
        """``x @ R`` for ``x`` of shape ``(..., in_features)``, accumulated chunk by chunk in float32.

        Tensors are projected on their own device; NumPy arrays on the CPU and returned as NumPy.
        """
        as_numpy = isinstance(x, np.ndarray)
        t = torch.from_numpy(np.asarray(x, dtype=np.float32)) if as_numpy else x
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor or numpy array, got {type(x).__name__}")
        if t.shape[-1] != self.in_features:
            raise ValueError(f"input has {t.shape[-1]} features; the projection expects {self.in_features}")
        lead = t.shape[:-1]
        flat = t.reshape(-1, self.in_features).to(torch.float32)
        out = torch.zeros(flat.shape[0], self.dim, dtype=torch.float32, device=flat.device)
        for i in range(self.num_chunks):
            start = i * self.chunk_size
            stop = min(start + self.chunk_size, self.in_features)
            out.addmm_(flat[:, start:stop], self.rows(start, stop, device=flat.device))
        out = out.reshape(*lead, self.dim)
        return out.numpy() if as_numpy else out


def random_projection(
    x,
    dim: int = 8192,
    *,
    seed: int = 0,
    kind: str = "rademacher",
    chunk_size: int | None = None,
):
    """Project the rows of ``x`` (``(..., d)`` tensor or array) to ``dim`` with a seeded JL matrix.

    Example:
        >>> z = random_projection(np.random.randn(10, 50_000), dim=512, seed=0)   # (10, 512)
    """
    return RandomProjection(x.shape[-1], dim, seed=seed, kind=kind, chunk_size=chunk_size).project(x)
