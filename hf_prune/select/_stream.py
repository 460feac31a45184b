"""The feature rows of a greedy loop, read block by block: one matrix–vector product per pass.

The greedy selectors (k-center, herding, GM matching, Gram–Schmidt) need per pick one product
``X v`` over the rows of a group, a gather of the picked row(s), and at the start a pass or two for
norms and means. `FeatureRows` serves exactly that over

* a `ColumnMatrix` (the embedding column as Arrow chunks, memory-mapped when loaded from disk): on
  the CPU each pass iterates its ``blocks()`` (zero-copy views of float32 chunks; bounded copies
  of float16 chunks or of the gathered rows of a class), so no copy of the column is ever made;
  a group that fits in one block is gathered once instead of at every pass;
* an ndarray or a tensor, whose rows are sliced in place (zero-copy for float32 C-contiguous input).

On a non-CPU device the rows are copied there once (one float32 copy on the device, none on the
host), since streaming them over the bus at every pick would cost more than the pick.

``normalize=True`` serves the L2-normalised rows ``x_i / max(‖x_i‖, 1e-12)`` (cosine geometry)
without forming them: the products are scaled by the inverse norms, an O(N) vector.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..ops.device import resolve_device, to_device
from ..ops.matrix import DEFAULT_BLOCK_ROWS, ColumnMatrix

__all__ = ["FeatureRows"]

# normalize_rows' floor on a row norm (an all-zero row stays zero).
_NORM_FLOOR = 1e-12


class FeatureRows:
    """An ``(N, d)`` group of feature rows for a greedy loop; see the module docstring.

    Example:
        >>> rows = FeatureRows(open_matrix(ds, "emb").subset(class_rows), device="cpu")
        >>> out = torch.empty(len(rows))
        >>> rows.matvec(torch.ones(rows.dim), out)  # one read pass over the rows
    """

    def __init__(self, source, *, device=None, normalize: bool = False, batch_rows: int | None = None):
        self.batch_rows = int(batch_rows or DEFAULT_BLOCK_ROWS)
        if isinstance(source, torch.Tensor):
            if source.ndim != 2:
                raise ValueError(f"features must be a 2-d (N, d) tensor, got shape {tuple(source.shape)}")
            self._matrix = None
            self._x = source.detach() if device is None else source.detach().to(resolve_device(device))
        elif isinstance(source, ColumnMatrix):
            dev = resolve_device(device)
            self._matrix = source
            self._x = None
            if dev.type != "cpu":
                self._x = torch.empty(source.shape, dtype=torch.float32, device=dev)
                for start, block in source.blocks(self.batch_rows):
                    self._x[start : start + len(block)] = to_device(block, dev)
                self._matrix = None
            elif len(source) <= self.batch_rows and source.gathered:
                # A gathered view (a class) that fits in one block: gathered once, not at every pass.
                self._x = to_device(source.take(np.arange(len(source))), dev)
                self._matrix = None
        else:
            array = np.asarray(source)
            if array.ndim != 2:
                raise ValueError(f"features must be a 2-d (N, d) array, got shape {array.shape}")
            self._matrix = None
            self._x = to_device(array, resolve_device(device))
        if self._x is not None:
            self.device, self.dtype = self._x.device, self._x.dtype
            self.shape = tuple(self._x.shape)
        else:
            self.device, self.dtype = torch.device("cpu"), torch.float32
            self.shape = source.shape
        self.scale = None
        self._views = None
        if normalize:
            norms = torch.empty(self.shape[0], dtype=self.dtype, device=self.device)
            for start, block in self._raw_blocks():
                norms[start : start + len(block)] = torch.linalg.vector_norm(block, dim=1)
            self.scale = 1.0 / norms.clamp_min_(_NORM_FLOOR)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def dim(self) -> int:
        return self.shape[1]

    def _raw_blocks(self, batch_rows: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, rows)`` of the stored (unscaled) rows, read only."""
        batch_rows = batch_rows or self.batch_rows
        if self._x is not None:
            for start in range(0, len(self), batch_rows):
                yield start, self._x[start : start + batch_rows]
            return
        for start, block in self._matrix.blocks(batch_rows):
            yield start, to_device(block, self.device)

    def blocks(self, batch_rows: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, rows)`` covering every row once, normalised when asked (then a block-sized copy)."""
        for start, block in self._raw_blocks(batch_rows):
            if self.scale is not None:
                block = block * self.scale[start : start + len(block), None]
            yield start, block

    def take(self, indices) -> torch.Tensor:
        """The rows at ``indices`` (normalised when asked), a ``(len(indices), d)`` tensor on the device."""
        if self._x is not None and self.scale is None and isinstance(indices, list) and len(indices) == 1:
            return self._x[indices[0] : indices[0] + 1]  # the picked row: a view, read only
        if isinstance(indices, torch.Tensor):
            indices = indices.to(self.device) if self._x is not None else indices.cpu().numpy()
        if self._x is not None:
            idx = indices if isinstance(indices, torch.Tensor) else torch.as_tensor(
                np.asarray(indices, dtype=np.int64), device=self.device)
            rows = self._x[idx.reshape(-1)]
        else:
            rows = to_device(self._matrix.take(np.asarray(indices, dtype=np.int64)), self.device)
            idx = torch.as_tensor(np.asarray(indices, dtype=np.int64).reshape(-1))
        if self.scale is not None:
            rows = rows * self.scale[idx.reshape(-1)][:, None]
        return rows

    def matvec(self, v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out = X v`` over the (normalised) rows in one read pass; ``out`` is an ``(N,)`` tensor.

        On the CPU each block's product is NumPy's BLAS ``gemv`` writing into ``out`` (it shares
        memory with the tensor): it reads the rows at the memory-bandwidth floor, about twice as fast
        as torch's ``mv`` here on two threads, and the same on one.
        """
        v = v.to(device=self.device, dtype=self.dtype)
        if self.device.type == "cpu":
            v_np, out_np = v.numpy(), out.numpy()
            if self._x is not None:
                if self._views is None:  # resident rows: the block views are made once, not per pick
                    self._views = [(start, block.numpy()) for start, block in self._raw_blocks()]
                for start, block in self._views:
                    np.dot(block, v_np, out=out_np[start : start + len(block)])
            else:
                for start, block in self._raw_blocks():
                    np.dot(block.numpy(), v_np, out=out_np[start : start + len(block)])
        else:
            for start, block in self._raw_blocks():
                torch.mv(block, v, out=out[start : start + len(block)])
        if self.scale is not None:
            out.mul_(self.scale)
        return out

    def new_vector(self, dtype=None) -> torch.Tensor:
        """An uninitialised ``(N,)`` tensor on the rows' device (``dtype`` defaults to theirs)."""
        return torch.empty(len(self), dtype=dtype or self.dtype, device=self.device)

    def _float64_pieces(self) -> Iterator[tuple[int, torch.Tensor]]:
        """The (normalised) rows as float64 pieces of `_FLOAT64_ROWS` rows (a small temporary each)."""
        for start, block in self.blocks():
            for lo in range(0, len(block), _FLOAT64_ROWS):
                yield start + lo, block[lo : lo + _FLOAT64_ROWS].to(torch.float64)

    def mean(self) -> torch.Tensor:
        """The float64 mean of the (normalised) rows, in one pass."""
        total = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        for _, piece in self._float64_pieces():
            total += piece.sum(0)
        return total / max(len(self), 1)

    def sq_norms(self, center: torch.Tensor | None = None) -> torch.Tensor:
        """``‖x_i − center‖²`` of every (normalised) row in one pass, summed in float64, in the rows' dtype."""
        out = self.new_vector()
        if center is not None:
            center = center.to(device=self.device, dtype=torch.float64)
        for start, piece in self._float64_pieces():
            if center is not None:
                piece = piece - center
            out[start : start + len(piece)] = piece.square().sum(1)  # never in place: may be the input
        return out


# Rows per float64 piece in the set-up passes: 4,096 × 384 float64 is 12 MiB.
_FLOAT64_ROWS = 4096
