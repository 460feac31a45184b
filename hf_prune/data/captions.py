"""Templated captions from class names, so classification datasets (digits, Fashion-MNIST, any
`ClassLabel` column) become image–caption pools.

Each row's caption is one template, drawn uniformly at random, filled with its class name:
``"a photo of a {}."`` and the class ``"sneaker"`` give ``"a photo of a sneaker."``. The same names
and templates serve zero-shot classification (`DIGIT_TEMPLATES` with `DIGIT_CAPTION_NAMES`, and so on).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Value

from ..ops.checks import as_generator, check_columns, check_new_column, seed_int
from ..ops.columns import add_column, read_labels
from .digits import load_digits
from .fashion_mnist import DEFAULT_FASHION_MNIST_DIR, load_fashion_mnist

__all__ = [
    "DEFAULT_TEMPLATES", "DIGIT_CAPTION_NAMES", "DIGIT_TEMPLATES", "FASHION_MNIST_CAPTION_NAMES", "FASHION_MNIST_TEMPLATES",
    "load_digits_captions", "load_fashion_mnist_captions", "with_captions",
]

DEFAULT_TEMPLATES = [
    "a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a {}.", "{}", "a close-up photo of a {}.",
    "a low resolution photo of a {}.",
]
DIGIT_CAPTION_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_TEMPLATES = [
    "a handwritten digit {}.", "the number {}.", "a photo of the digit {}.", "{} written by hand",
    "a scan of a handwritten {}.", "a blurry image of the number {}.", "the digit {}", "a black and white {}.",
]
# Readable names in the order of `FASHION_MNIST_CLASSES` (whose "T - shirt / top" reads badly in a sentence).
FASHION_MNIST_CAPTION_NAMES = [
    "t-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
]
FASHION_MNIST_TEMPLATES = [
    "a photo of a {}.", "a product photo of a {}.", "a grayscale photo of a {}.", "a {} on a black background.",
    "a low resolution photo of a {}.", "a {}", "a small picture of a {}.", "catalogue image of a {}",
]


def _check_templates(templates) -> list[str]:
    if isinstance(templates, str):
        templates = [templates]
    templates = list(templates)
    if not templates:
        raise ValueError("`templates` is empty")
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1 or template.replace("{}", "").count("{"):
            raise ValueError(f"every entry of `templates` must be a string with exactly one '{{}}', got {template!r}")
    return templates


def with_captions(
    dataset: Dataset,
    *,
    label_column: str = "label",
    templates: Sequence[str] = tuple(DEFAULT_TEMPLATES),
    class_names: Sequence[str] | None = None,
    seed: int | np.random.Generator = 0,
    output_column: str = "caption",
    overwrite: bool = False,
) -> Dataset:
    """Add a caption column: per row, a uniformly random template filled with the row's class name.

    Class names come from ``class_names`` (indexed by label id), else from the `ClassLabel` of
    ``label_column``; a string label column is its own names. ``templates`` are strings with one
    ``{}``. ``seed`` is an integer ≥ 0 or a NumPy Generator (one draw). The input is not modified;
    an existing ``output_column`` is replaced only with ``overwrite=True``.

    Example:
        >>> ds = with_captions(load_digits()["train"], class_names=DIGIT_CAPTION_NAMES, templates=DIGIT_TEMPLATES)
        >>> ds[0]["caption"]
        'the digit one'
    """
    check_columns(dataset, label_column)
    templates = _check_templates(templates)
    check_new_column(dataset, output_column, overwrite)
    if output_column == label_column:
        raise ValueError(f"`output_column` must differ from `label_column` ({label_column!r})")
    seed = seed_int(seed)
    feature = dataset.features[label_column]
    if class_names is not None:
        names = list(class_names)
        if not all(isinstance(n, str) and n for n in names):
            raise ValueError("`class_names` must be non-empty strings")
        if isinstance(feature, ClassLabel) and len(names) != feature.num_classes:
            raise ValueError(f"`class_names` has {len(names)} names; {label_column!r} has {feature.num_classes} classes")
        labels = read_labels(dataset, label_column)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            raise ValueError(f"label column {label_column!r} has ids outside 0..{len(names) - 1} of `class_names`")
        row_names = np.asarray(names, dtype=object)[labels]
    elif isinstance(feature, ClassLabel):
        row_names = np.asarray(feature.names, dtype=object)[read_labels(dataset, label_column)]
    elif isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
        row_names = np.asarray(dataset[label_column], dtype=object)
    else:
        raise ValueError(
            f"label column {label_column!r} ({feature}) has no class names: use a ClassLabel or pass `class_names`"
        )
    picks = as_generator(seed).integers(len(templates), size=len(dataset))
    captions = [_fill(templates[t], name) for t, name in zip(picks.tolist(), row_names.tolist())]
    return add_column(dataset, output_column, np.asarray(captions, dtype=str), overwrite=overwrite,
                      feature=Value("string"))


def _fill(template: str, name: str) -> str:
    """``template`` with ``name`` in its ``{}``; an article ``a`` right before it becomes ``an`` before a vowel."""
    before, after = template.split("{}")
    if name[:1].lower() in "aeiou" and (before == "a " or before.endswith((" a ", "(a "))):
        before = before[:-2] + "an "
    elif name[:1].lower() in "aeiou" and before == "A ":
        before = "An "
    return before + name + after


def _caption_splits(ds: DatasetDict, seed: int, **kwargs) -> DatasetDict:
    # Independent caption streams per split, so the test captions do not depend on the train size.
    return DatasetDict({split: with_captions(part, seed=np.random.default_rng([seed, 1, index]), **kwargs)
                        for index, (split, part) in enumerate(ds.items())})


def load_digits_captions(
    *,
    test_fraction: float = 0.2,
    templates: Sequence[str] = tuple(DIGIT_TEMPLATES),
    class_names: Sequence[str] = tuple(DIGIT_CAPTION_NAMES),
    seed: int | np.random.Generator = 0,
) -> DatasetDict:
    """`load_digits` with a templated ``caption`` column in both splits (`with_captions`).

    Example:
        >>> ds = load_digits_captions()
        >>> ds["train"].column_names
        ['image', 'label', 'caption']
    """
    seed = seed_int(seed)
    ds = load_digits(test_fraction=test_fraction, seed=np.random.default_rng([seed, 0]))
    return _caption_splits(ds, seed, templates=templates, class_names=class_names)


def load_fashion_mnist_captions(
    data_dir: str | os.PathLike | None = DEFAULT_FASHION_MNIST_DIR,
    *,
    templates: Sequence[str] = tuple(FASHION_MNIST_TEMPLATES),
    class_names: Sequence[str] = tuple(FASHION_MNIST_CAPTION_NAMES),
    seed: int | np.random.Generator = 0,
    **load_kwargs,
) -> DatasetDict:
    """`load_fashion_mnist` with a templated ``caption`` column in both splits (`with_captions`).

    ``load_kwargs`` go to `load_fashion_mnist` (``allow_hub``, ``cache_dir``, ...).

    Example:
        >>> ds = load_fashion_mnist_captions()
        >>> ds["test"][0]["caption"]
        'a product photo of an ankle boot.'
    """
    ds = load_fashion_mnist(data_dir, **load_kwargs)
    return _caption_splits(ds, seed_int(seed), templates=templates, class_names=class_names)
