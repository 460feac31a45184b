"""Symmetric label noise (DUAL, App. B.1; also the GM Matching label-noise setting)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from datasets import ClassLabel, Dataset, Value

from ..ops.columns import read_labels
from ._common import check_corruption_args, choose_rows, flag_array, replace_columns

__all__ = ["symmetric_label_noise"]


def symmetric_label_noise(
    dataset: Dataset,
    *,
    rate: float,
    label_column: str = "label",
    num_classes: int | None = None,
    seed: int | np.random.Generator = 0,
    flag_column: str = "is_noisy_label",
    original_column: str | None = "clean_label",
    overwrite: bool = False,
) -> Dataset:
    """Replace the labels of a random ``rate`` fraction of rows with a different, uniformly random class.

    As in DUAL (App. B.1): exactly ``round(rate · N)`` rows are drawn uniformly without
    replacement, and each gets a new label drawn uniformly from the *other* ``C − 1`` classes
    (probability ``1/(C−1)`` each), so every marked row is really mislabeled. The draw is global,
    not per class. ``C`` is the `ClassLabel`'s number of classes, else ``num_classes``, else
    ``max(label) + 1`` (integer labels ``0..C−1`` are required).

    Returns a new Dataset with ``label_column`` replaced (same feature), a boolean ``flag_column``
    marking the changed rows and, unless ``original_column=None``, the clean labels. Existing
    ``flag_column``/``original_column`` columns are replaced only with ``overwrite=True``.

    Example:
        >>> noisy = symmetric_label_noise(ds, rate=0.2, seed=0)
        >>> sum(noisy["is_noisy_label"]) == round(0.2 * len(ds))
        True
    """
    seed = check_corruption_args(
        dataset, rate=rate, seed=seed, sources={"label_column": label_column},
        outputs={"flag_column": flag_column, "original_column": original_column}, overwrite=overwrite,
    )
    feature = dataset.features[label_column]
    labels = read_labels(dataset, label_column)
    if isinstance(feature, ClassLabel):
        classes = feature.num_classes
    elif isinstance(feature, Value) and feature.dtype.startswith(("int", "uint")):
        classes = int(num_classes) if num_classes is not None else (int(labels.max()) + 1 if len(labels) else 0)
    else:
        raise ValueError(f"label column {label_column!r} must hold integer class ids (ClassLabel or int), got {feature}")
    if num_classes is not None and int(num_classes) != classes:
        raise ValueError(f"`num_classes`={num_classes} disagrees with the ClassLabel of {label_column!r} ({classes})")
    if classes < 2:
        raise ValueError(f"label noise needs at least 2 classes; {label_column!r} has {classes}")
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"label column {label_column!r} has labels outside 0..{classes - 1}")

    rng = np.random.default_rng(seed)
    rows = choose_rows(len(dataset), rate, rng)
    noisy = labels.copy()
    # y + U{1..C−1} mod C is uniform over the C−1 classes other than y.
    noisy[rows] = (labels[rows] + rng.integers(1, classes, size=len(rows))) % classes
    columns = {label_column: (pa.array(noisy), feature), flag_column: flag_array(len(dataset), rows)}
    if original_column is not None:
        columns[original_column] = (pa.array(labels), feature)
    params = {"rate": rate, "label_column": label_column, "num_classes": classes, "seed": seed}
    return replace_columns(dataset, columns, method="symmetric_label_noise", params=params)
