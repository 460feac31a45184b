"""Linear probes on frozen features: the quick quality check of a subset (the Gram–Schmidt seed's
low-budget protocol, and the demo's per-selector accuracy)."""

from __future__ import annotations

import numpy as np
from datasets import Dataset

from .ops.columns import read_labels, read_matrix

__all__ = ["linear_probe_accuracy"]


def linear_probe_accuracy(
    train: Dataset,
    test: Dataset,
    *,
    feature_column: str,
    label_column: str = "label",
    C: float = 1.0,
    max_iter: int = 1000,
    standardize: bool = True,
) -> float:
    """Fit multinomial logistic regression on ``train``'s features, return top-1 accuracy on ``test``.

    Features are standardised with statistics of the *training subset* (what a user of the subset
    would have). Classes absent from the subset are simply never predicted.

    Example:
        >>> acc = linear_probe_accuracy(sub, test, feature_column="emb")
    """
    from sklearn.linear_model import LogisticRegression

    x_train, y_train = read_matrix(train, feature_column), read_labels(train, label_column)
    x_test, y_test = read_matrix(test, feature_column), read_labels(test, label_column)
    if standardize:
        mean, std = x_train.mean(0), x_train.std(0) + 1e-6
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    if len(np.unique(y_train)) < 2:
        return float((y_test == y_train[0]).mean())
    model = LogisticRegression(C=C, max_iter=max_iter)
    model.fit(x_train, y_train)
    return float((model.predict(x_test) == y_test).mean())
