"""Feature norm ‖F_i‖_p of an embedding column (the Gram–Schmidt seed, Sec. 3: p_i ∝ ‖F_i‖)."""

from __future__ import annotations

import numpy as np
from datasets import Dataset

from ..ops.columns import add_column, check_columns, check_new_column, iter_matrix
from ..ops.norms import check_norm_order, row_norms
from ..provenance import with_provenance

__all__ = ["feature_norm"]


def feature_norm(
    dataset: Dataset,
    *,
    embedding_column: str = "emb",
    p: float | str = 2,
    output_column: str = "feature_norm",
    overwrite: bool = False,
    batch_size: int = 65536,
) -> Dataset:
    """Add the ℓp norm of each row of ``embedding_column`` as a float32 column.

    The seed weights samples by ‖F_i‖ with ℓ2 by default and compares ℓ1 and ℓ∞ (Fig. 4c–d);
    any ``p >= 1`` is accepted. The column is streamed in ``batch_size`` chunks (norms computed in
    float64, stored as float32). Records a ``"score.feature_norm"`` provenance step.

    Example:
        >>> ds = hp.score.feature_norm(ds, embedding_column="emb", p=2)
        >>> ds.features["feature_norm"]
        Value('float32')
    """
    p = check_norm_order(p)
    check_columns(dataset, embedding_column)
    check_new_column(dataset, output_column, overwrite)
    norms = np.empty(len(dataset), dtype=np.float32)
    for start, chunk in iter_matrix(dataset, embedding_column, batch_size=batch_size):
        norms[start : start + len(chunk)] = row_norms(chunk, p)
    result = add_column(dataset, output_column, norms, overwrite=overwrite)
    params = {"embedding_column": embedding_column, "p": p, "output_column": output_column}
    return with_provenance(result, dataset, method="score.feature_norm", params=params)
