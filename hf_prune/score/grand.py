"""GraNd (Paul et al., 2021): the expected norm of a sample's loss gradient early in training."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from datasets import Dataset

from ..ops.columns import add_column, check_columns, check_new_column, column_list
from ..ops.matrix import open_matrix
from ..ops.norms import row_norms
from ..provenance import with_provenance

__all__ = ["grand"]

def grand(
    dataset: Dataset,
    *,
    gradient_column: str | Sequence[str],
    output_column: str = "grand",
    overwrite: bool = False,
) -> Dataset:
    r"""Add GraNd, ‖∇_θ ℓ(f(x; θ), y)‖₂, from per-sample gradient embedding column(s).

    Paul et al. define GraNd(x, y) = E_{θ_t} ‖g_t(x, y)‖₂: the loss-gradient norm at an early
    epoch t, averaged over independent initialisations. This function takes the gradients as
    columns (fixed-length float lists) and returns

        GraNd = (1/M) Σ_{m=1}^{M} ‖g^{(m)}‖₂

    over the M columns given in ``gradient_column`` — one per run (the paper's expectation over
    initialisations) or one per epoch. A column may hold the full gradient, a random projection
    of it (the norm is then preserved only approximately, Johnson–Lindenstrauss), or the
    last-layer gradient, e.g. (p − onehot(y)) ⊗ h for a linear head on features h, whose norm is
    ‖p − onehot(y)‖₂·‖h‖₂ (EL2N is that quantity without ‖h‖₂). Columns may differ in width.
    Higher = harder / more important (GraNd keeps the highest). Records a ``"score.grand"``
    provenance step.

    Args:
        dataset: rows with the gradient column(s).
        gradient_column: a column name, or several to average over.
        output_column: the new float32 column.
        overwrite: replace ``output_column`` if it exists.

    Raises:
        KeyError: a gradient column is missing.
        ValueError: ragged, non-numeric or NaN/inf gradients; an empty dataset or column list.

    Example:
        >>> ds = hp.score.grand(ds, gradient_column=["grad_run0", "grad_run1"], output_column="grand")
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"expected a datasets.Dataset, got {type(dataset).__name__}")
    columns = column_list(gradient_column, "gradient_column")
    check_columns(dataset, *columns)
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    check_new_column(dataset, output_column, overwrite)
    total = np.zeros(len(dataset))
    for column in columns:
        total += row_norms(open_matrix(dataset, column))
    result = add_column(dataset, output_column, total / len(columns), overwrite=overwrite)
    params = {"gradient_column": columns, "output_column": output_column}
    return with_provenance(result, dataset, method="score.grand", params=params)
