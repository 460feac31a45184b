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

`HadamardProjection` (``kind="srht"``) is the structured alternative: a subsampled randomized
Hadamard transform, ``x ↦ (1/√dim) · S H D x``, with ``D`` seeded random signs, ``H`` the
(unnormalised, ±1) Walsh–Hadamard matrix of the input zero-padded to the next power of two ``n``,
and ``S`` a seeded choice of ``dim`` of its ``n`` outputs without replacement. It holds no matrix
and costs ``O(n log n)`` per row instead of ``O(n · dim)``; `make_projection` builds either kind.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from .checks import check_choice, check_positive_int
from .device import resolve_device

__all__ = ["HadamardProjection", "RandomProjection", "make_projection", "random_projection", "walsh_hadamard"]

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


# ----------------------------------------------------------------------------------- SRHT
# Kronecker factors of the Walsh–Hadamard transform: 2^6 = 64 was the fastest size on CPU at n = 2^23
# (0.26 s a row, against 0.27 s for 32, 0.61 s for 128 and 1.2 s for radix-2 butterflies, one thread).
_HADAMARD_FACTOR_LOG = 6
# Input rows transformed at once: about 16M entries (64 MB float32), as the transform makes two copies.
_SRHT_ENTRIES = 1 << 24
# The sampling keys hash·n + index must fit in int64.
_SRHT_MAX_LOG = 31


@functools.lru_cache(maxsize=16)
def _sylvester(size: int, device: str) -> torch.Tensor:
    """The ±1 Sylvester–Hadamard matrix of a power-of-two ``size`` (symmetric, exact in float32)."""
    h = torch.ones(1, 1)
    while h.shape[0] < size:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h.to(device)


def _hadamard_factors(log_n: int) -> list[int]:
    """Power-of-two factor sizes of ``n = 2**log_n``, largest first, each at most 2**_HADAMARD_FACTOR_LOG."""
    factors = []
    while log_n > 0:
        step = min(_HADAMARD_FACTOR_LOG, log_n)
        factors.append(1 << step)
        log_n -= step
    return factors or [1]


def walsh_hadamard(x: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
    """The unnormalised Walsh–Hadamard transform ``x H`` of the rows of ``x`` (``(rows, n)``, n a power of two).

    ``H = H_f₁ ⊗ … ⊗ H_fₚ`` (Sylvester order, equal to ``scipy.linalg.hadamard(n)``) is applied one
    factor at a time as a small matrix product, with no permutation copies. ``columns`` (int64
    indices): return only ``(x H)[:, columns]``, the last factor evaluated at those outputs only.
    ``x`` is not modified.

    Example:
        >>> walsh_hadamard(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
        tensor([[1., 1., 1., 1.]])
    """
    rows, n = x.shape
    if n & (n - 1):
        raise ValueError(f"the Walsh–Hadamard transform needs a power-of-two length, got {n}")
    y, after = x, n
    for f in _hadamard_factors(n.bit_length() - 1):
        after //= f
        h = _sylvester(f, str(x.device)).to(x.dtype)
        if after == 1 and columns is not None:
            # Output q·f + r is row q of the last axis times column r of H_f: only the sampled ones.
            blocks = y.reshape(rows, -1, f)[:, torch.div(columns, f, rounding_mode="floor")]
            return (blocks * h[:, columns % f].T).sum(-1)
        # Axis of size f between a leading block and `after` trailing entries: H_f from the left.
        y = y.reshape(-1, f) @ h if after == 1 else torch.matmul(h, y.reshape(-1, f, after))
    y = y.reshape(rows, n)
    return y if columns is None else y[:, columns]


def _on_device(cache: dict[str, torch.Tensor], device, build) -> torch.Tensor:
    """``cache[device]``: ``build()`` once on the CPU (the values never depend on the device), then copied."""
    device = resolve_device(device)
    if str(device) not in cache:
        if "cpu" not in cache:
            cache["cpu"] = build()
        cache[str(device)] = cache["cpu"].to(device)
    return cache[str(device)]


class HadamardProjection:
    """A seeded subsampled randomized Hadamard transform (SRHT) from ``in_features`` to ``dim``.

    ``z = (1/√dim) · (H (D x̃))[S]``: ``x̃`` is ``x`` zero-padded to ``n = 2^⌈log₂ in_features⌉``,
    ``D`` a diagonal of random signs, ``H`` the ±1 Walsh–Hadamard matrix (``HᵀH = n I``) and ``S``
    ``dim`` distinct coordinates of ``n`` drawn uniformly. Since ``(1/√n) H D`` is orthogonal and
    ``S`` uniform, ``E[⟨z_x, z_y⟩] = ⟨x, y⟩`` exactly, as for the dense projection.

    Determinism: the signs and the sampled coordinates are pure functions of ``(seed, index)`` (the
    same counter-based hash as `RandomProjection`), computed on the CPU in exact integer arithmetic,
    so the map is the same on every device and for every ``chunk_size``.

    Cost: ``log₂ n / 6`` small matrix products per row (Kronecker factors of 64), ``O(n log n)``
    with no matrix to generate, against ``O(n · dim)`` (plus regenerating ``R``) for the dense
    projection. Measured at 7,372,800 inputs (SmolLM2-135M, LoRA r=64 on q/k/v/o) → 8,192 on one
    shared CPU thread: 0.11 s a row, against 5.2 s a row for the dense projection in passes of 64
    rows and 12 s in passes of 16 (``recipes/benchmarks/lora_gradient_throughput.py``).

    Memory: the ``n`` signs (4 bytes each, cached per device) and about three ``chunk_size × n``
    float32 buffers while transforming.

    Distortion: after ``(1/√n) H D`` the coordinates of a vector are spread nearly evenly
    (each of size about ``‖x‖/√n`` with high probability), so sampling ``dim`` of them estimates
    inner products with the variance of a dense Gaussian projection, ``(‖x‖²‖y‖² + ⟨x,y⟩²)/dim``,
    up to the factor ``(n − dim)/(n − 1)`` of sampling without replacement; vectors with mass on
    very few coordinates are the worst case (bounds then lose a ``log n`` factor). Measured on real
    LoRA gradients (RMS over pairs, times √dim; JL predicts about 1): SmolLM2-135M, 16 rows, 8,192
    dims: inner products 0.67 (dense Rademacher 0.76), cosines 0.47 (0.62); a tiny Llama in the
    tests: 0.99 (dense 0.97).

    Args:
        in_features: Length of the input rows (at most 2**31).
        dim: Output dimension, at most the padded length ``n``.
        seed: Non-negative integer below 2**64; with ``in_features`` and ``dim`` it fixes the map.
        chunk_size: Input rows transformed at once (memory only, never the result); default: about
            16M padded entries.

    Example:
        >>> proj = HadamardProjection(7_372_800, dim=8192, seed=0)
        >>> z = proj(torch.randn(2, 7_372_800))      # (2, 8192)
        >>> proj.config["kind"]
        'srht'
    """

    kind = "srht"

    def __init__(self, in_features: int, dim: int = 8192, *, seed: int = 0, chunk_size: int | None = None):
        check_positive_int("in_features", in_features)
        check_positive_int("dim", dim)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 1 << 64:
            raise ValueError(f"`seed` must be an integer in [0, 2**64), got {seed!r}")
        log_n = (int(in_features) - 1).bit_length()
        if log_n > _SRHT_MAX_LOG:
            raise ValueError(f"`in_features` must be at most 2**{_SRHT_MAX_LOG} for kind='srht', got {in_features}")
        self.padded = 1 << log_n
        if dim > self.padded:
            raise ValueError(f"`dim` ({dim}) must be at most the padded input length {self.padded} for kind='srht' "
                             f"(in_features={in_features}); use kind='rademacher' to project up")
        if chunk_size is None:
            chunk_size = max(1, _SRHT_ENTRIES // self.padded)
        check_positive_int("chunk_size", chunk_size)
        self.in_features, self.dim, self.seed, self.chunk_size = int(in_features), int(dim), int(seed), int(chunk_size)
        base = _mix32_int(_mix32_int(self.seed & _M32) ^ (self.seed >> 32) ^ (len(_KINDS) + 1))
        self._keys = [_mix32_int(base + _GOLDEN * (j + 1)) for j in range(4)]
        self._signs: dict[str, torch.Tensor] = {}
        self._rows: dict[str, torch.Tensor] = {}

    def __getstate__(self):
        # The cached signs and samples (tens of MB) are rebuilt from the seed rather than pickled.
        return {**self.__dict__, "_signs": {}, "_rows": {}}

    def __repr__(self) -> str:
        return (f"HadamardProjection(in_features={self.in_features}, dim={self.dim}, seed={self.seed}, "
                f"chunk_size={self.chunk_size})")

    @property
    def config(self) -> dict:
        """What determines the map (``chunk_size`` does not): for fingerprints and provenance."""
        return {"in_features": self.in_features, "dim": self.dim, "seed": self.seed, "kind": self.kind}

    def _index_hash(self, first: int, second: int) -> torch.Tensor:
        """A 32-bit hash of every index in ``[0, n)`` under two of the keys (int64, on the CPU)."""
        i = torch.arange(self.padded, dtype=torch.int64)
        return _mix32(_mix32(i ^ self._keys[first]) ^ self._keys[second])

    def signs(self, device=None) -> torch.Tensor:
        """The diagonal ``D`` as a ``(n,)`` float32 tensor of ±1 (cached per device)."""
        return _on_device(self._signs, device, lambda: 1.0 - 2.0 * (self._index_hash(0, 1) & 1).to(torch.float32))

    def sampled(self, device=None) -> torch.Tensor:
        """The ``dim`` sampled output coordinates ``S`` (ascending int64 indices into ``[0, n)``)."""

        def build() -> torch.Tensor:
            # The dim smallest of the distinct keys hash·n + index: a uniform sample without replacement.
            keys = self._index_hash(2, 3) * self.padded + torch.arange(self.padded, dtype=torch.int64)
            return torch.sort(torch.topk(keys, self.dim, largest=False).values % self.padded).values

        return _on_device(self._rows, device, build)

    def __call__(self, x):
        return self.project(x)

    def project(self, x):
        """The SRHT of ``x`` of shape ``(..., in_features)`` in float32 (tensors on their device, NumPy on the CPU).

        Example:
            >>> HadamardProjection(1000, 64, seed=1).project(np.ones((3, 1000))).shape
            (3, 64)
        """
        as_numpy = isinstance(x, np.ndarray)
        t = torch.from_numpy(np.asarray(x, dtype=np.float32)) if as_numpy else x
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor or numpy array, got {type(x).__name__}")
        if t.shape[-1] != self.in_features:
            raise ValueError(f"input has {t.shape[-1]} features; the projection expects {self.in_features}")
        lead = t.shape[:-1]
        flat = t.reshape(-1, self.in_features)
        signs, rows = self.signs(flat.device), self.sampled(flat.device)
        out = torch.empty(flat.shape[0], self.dim, dtype=torch.float32, device=flat.device)
        scale = 1.0 / math.sqrt(self.dim)
        for start in range(0, flat.shape[0], self.chunk_size):
            block = flat[start : start + self.chunk_size]
            padded = torch.zeros(len(block), self.padded, dtype=torch.float32, device=flat.device)
            torch.mul(block, signs[: self.in_features], out=padded[:, : self.in_features])
            out[start : start + len(block)] = walsh_hadamard(padded, rows) * scale
        out = out.reshape(*lead, self.dim)
        return out.numpy() if as_numpy else out

    def materialize(self, *, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The equivalent ``(in_features, dim)`` matrix ``R`` (``project(x) = x @ R``): for tests and small problems."""
        device = resolve_device(device)
        return self.project(torch.eye(self.in_features, device=device)).to(dtype)


def make_projection(in_features: int, dim: int = 8192, *, seed: int = 0, kind: str = "rademacher",
                    chunk_size: int | None = None):
    """The projection of a ``kind``: ``"rademacher"``/``"gaussian"`` (`RandomProjection`) or ``"srht"`` (`HadamardProjection`).

    ``chunk_size`` is rows of ``R`` per pass for the dense kinds, input rows per pass for ``"srht"``.

    Example:
        >>> make_projection(10_000, 256, seed=0, kind="srht")
        HadamardProjection(in_features=10000, dim=256, seed=0, chunk_size=1024)
    """
    check_choice("kind", kind, (*_KINDS, HadamardProjection.kind))
    if kind == HadamardProjection.kind:
        return HadamardProjection(in_features, dim, seed=seed, chunk_size=chunk_size)
    return RandomProjection(in_features, dim, seed=seed, kind=kind, chunk_size=chunk_size)
