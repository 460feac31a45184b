"""Linear probes on frozen features: the quick quality check of a subset (the Gram–Schmidt seed's
low-budget protocol, and the demo's per-selector accuracy)."""

from __future__ import annotations

import numpy as np
from datasets import Dataset, Value

from hf_prune.ops.columns import read_labels, read_matrix
from hf_prune.ops.deprecation import renamed

__all__ = ["LinearProbe", "linear_probe_accuracy", "required_embedding_column"]


def required_embedding_column(method: str, embedding_column: str | None, feature_column: str | None) -> str:
    """``embedding_column``, accepting its deprecated spelling ``feature_column`` with a `FutureWarning`.

    Example:
        >>> required_embedding_column("LinearProbe", "emb", None)
        'emb'
    """
    # stacklevel 4: renamed → this helper → the public function → the user's call.
    column = renamed(method, "feature_column", feature_column, "embedding_column", embedding_column,
                     default=None, stacklevel=4)
    if column is None:
        raise ValueError(f"{method}: `embedding_column` is required (the column the probe is trained on)")
    return column


def _labels(dataset: Dataset, column: str) -> np.ndarray:
    # String labels stay strings: `read_labels` codes them by each dataset's own sorted values, so a
    # subset missing a class would shift its codes against the test set's.
    if column in dataset.column_names and dataset.features[column] in (Value("string"), Value("large_string")):
        labels = np.asarray(dataset[column], dtype=object)
        if any(label is None for label in labels):
            raise ValueError(f"label column {column!r} has null rows")
        return labels.astype(str)
    return read_labels(dataset, column)


class LinearProbe:
    """Multinomial logistic regression on a feature column, scored on a fixed test set.

    The test features and labels are read once, so scoring many subsets (the demo's hundreds of
    selections) reads only each subset. Features are standardised with statistics of the *training
    subset* (what a user of the subset would have). Classes absent from the subset are simply never
    predicted. The fit is deterministic (L-BFGS from zero weights): the same rows give the same accuracy.

    Args:
        test: the evaluation `datasets.Dataset` (never modified).
        embedding_column: fixed-length float list column the probe is trained on (required).
        label_column: integer, ClassLabel or string labels.
        C: inverse L2 regularisation strength of the logistic regression.
        max_iter: cap on L-BFGS iterations.
        standardize: standardise features with the training subset's mean and std.
        feature_column: deprecated spelling of ``embedding_column`` (hf_prune 0.1.0), accepted with a
            `FutureWarning`.

    Example:
        >>> probe = LinearProbe(test, embedding_column="emb")
        >>> acc = probe.accuracy(sub)
    """

    def __init__(
        self, test: Dataset, *, embedding_column: str | None = None, label_column: str = "label", C: float = 1.0,
        max_iter: int = 1000, standardize: bool = True, feature_column: str | None = None,
    ):
        embedding_column = required_embedding_column("LinearProbe", embedding_column, feature_column)
        if len(test) == 0:
            raise ValueError("the probe's test dataset is empty")
        self.embedding_column, self.label_column = embedding_column, label_column
        self.C, self.max_iter, self.standardize = C, max_iter, standardize
        self.x_test = read_matrix(test, embedding_column)
        self.y_test = _labels(test, label_column)

    def accuracy(self, train: Dataset) -> float:
        """Top-1 test accuracy of the probe fitted on ``train``'s features and labels."""
        if len(train) == 0:
            raise ValueError("the probe's training subset is empty")
        return self.accuracy_of(read_matrix(train, self.embedding_column), _labels(train, self.label_column))

    def accuracy_of(self, x_train: np.ndarray, y_train: np.ndarray) -> float:
        """`accuracy` for features and labels already read as arrays."""
        from sklearn.linear_model import LogisticRegression

        if x_train.ndim != 2 or x_train.shape[1] != self.x_test.shape[1]:
            raise ValueError(
                f"{self.embedding_column!r} has shape {x_train.shape} in the subset but "
                f"{self.x_test.shape[1]} features in the test set"
            )
        x_test = self.x_test
        if self.standardize:
            mean, std = x_train.mean(0), x_train.std(0) + 1e-6
            x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
        if len(np.unique(y_train)) < 2:
            return float((self.y_test == y_train[0]).mean())
        model = LogisticRegression(C=self.C, max_iter=self.max_iter)
        model.fit(x_train, y_train)
        return float((model.predict(x_test) == self.y_test).mean())


def linear_probe_accuracy(
    train: Dataset,
    test: Dataset,
    *,
    embedding_column: str | None = None,
    label_column: str = "label",
    C: float = 1.0,
    max_iter: int = 1000,
    standardize: bool = True,
    feature_column: str | None = None,
) -> float:
    """Fit multinomial logistic regression on ``train``'s features, return top-1 accuracy on ``test``.

    A one-off `LinearProbe`; build a `LinearProbe` once to score many subsets against one test set.
    ``embedding_column`` is required; ``feature_column`` is its deprecated spelling (hf_prune 0.1.0).

    Example:
        >>> acc = linear_probe_accuracy(sub, test, embedding_column="emb")
    """
    embedding_column = required_embedding_column("linear_probe_accuracy", embedding_column, feature_column)
    probe = LinearProbe(
        test, embedding_column=embedding_column, label_column=label_column, C=C, max_iter=max_iter,
        standardize=standardize,
    )
    return probe.accuracy(train)
