"""scikit-learn's 8×8 handwritten digits (1,797 images, bundled with sklearn, no download)."""

from __future__ import annotations

import numpy as np
from datasets import DatasetDict

from ..ops.checks import as_generator, check_probability
from .images import png_label_dataset

__all__ = ["load_digits"]


def load_digits(*, test_fraction: float = 0.2, seed: int | np.random.Generator = 0) -> DatasetDict:
    """The sklearn digits as a `DatasetDict` with ``train``/``test`` splits (stratified by class).

    Pixels (0–16 in sklearn) are rescaled to ``uint8`` as ``round(v · 255 / 16)`` and stored as
    8×8 grayscale `datasets.Image` PNGs in ``image``; ``label`` is a `ClassLabel` ``"0"``–``"9"``.
    Each class puts ``round(test_fraction · n_c)`` randomly chosen rows into ``test``, drawn with
    ``seed`` (an integer ≥ 0, or a NumPy Generator used as is); rows keep their original order
    inside each split.

    Example:
        >>> ds = load_digits(test_fraction=0.2, seed=0)
        >>> ds["train"].num_rows, ds["test"].num_rows
        (1438, 359)
    """
    from sklearn.datasets import load_digits as sk_load_digits

    test_fraction = check_probability("test_fraction", test_fraction)
    if not 0 < test_fraction < 1:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction}")
    rng = as_generator(seed)
    bunch = sk_load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    is_test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):  # ten classes, not rows
        rows = np.flatnonzero(labels == c)
        is_test[rng.choice(rows, size=int(round(test_fraction * len(rows))), replace=False)] = True
    names = [str(d) for d in range(10)]
    return DatasetDict({
        "train": png_label_dataset(images[~is_test][..., None], labels[~is_test], names),
        "test": png_label_dataset(images[is_test][..., None], labels[is_test], names),
    })
