"""Argument checks shared by every package: integers, numbers, probabilities, choices, booleans,
seeds and column presence.

This module sits at the bottom of the import graph (it imports no other hf_prune module), so
`embed`, `score`, `data`, `corrupt` and `select` all validate with the same rules and messages. Each check
raises a `ValueError` (or `KeyError` for a missing column) naming the parameter or column, and
returns the value in its canonical form (``int``, ``float``, ...). Nothing passed in is modified.

Seeds follow one rule everywhere, the one `datasets.Dataset.shuffle` uses: an integer ≥ 0 or a
`numpy.random.Generator`. A selector turns a Generator into an integer once, with `seed_int` (one
draw from it), and then proceeds exactly as with that integer, so per-group generators
``default_rng([seed, group])`` and the provenance's recorded ``seed`` work the same for both kinds.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
from datasets import Dataset

__all__ = [
    "check_positive_int",
    "check_nonnegative",
    "check_positive",
    "check_optional_positive",
    "check_probability",
    "check_choice",
    "check_bool",
    "check_seed",
    "seed_int",
    "as_generator",
    "check_columns",
    "check_new_column",
    "check_new_columns",
    "column_list",
]

_NUMBER = (int, float, np.integer, np.floating)
# One draw from a Generator seed lands in [0, 2**63): a valid int seed for NumPy, torch and faiss alike.
_SEED_DRAW_HIGH = 2**63 - 1


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, _NUMBER)


def check_positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as an ``int`` ≥ ``minimum`` (bools are not integers here).

    Example:
        >>> check_positive_int("k", 5)
        5
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def check_nonnegative(name: str, value: Any) -> float:
    """``value`` as a finite ``float`` ≥ 0.

    Example:
        >>> check_nonnegative("gamma_r", 0)
        0.0
    """
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative number, got {value!r}")
    return float(value)


def check_positive(name: str, value: Any) -> float:
    """``value`` as a finite ``float`` > 0.

    Example:
        >>> check_positive("eps", 1e-5)
        1e-05
    """
    if not _is_number(value) or not math.isfinite(value) or not value > 0:
        raise ValueError(f"`{name}` must be a positive number, got {value!r}")
    return float(value)


def check_optional_positive(name: str, value: Any) -> float | None:
    """``None``, or ``value`` as a finite ``float`` > 0.

    Example:
        >>> check_optional_positive("delta", None) is None
        True
    """
    if value is None:
        return None
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive number or None, got {value!r}")
    return float(value)


def check_probability(name: str, value: Any, *, low: float = 0.0, high: float = 1.0) -> float:
    """``value`` as a ``float`` in ``[low, high]`` (NaN is outside every interval).

    Example:
        >>> check_probability("rate", 0.25)
        0.25
    """
    if not _is_number(value) or not low <= value <= high:
        raise ValueError(f"`{name}` must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, choices: Collection[Any]) -> Any:
    """``value`` when it is one of ``choices``; the message lists them.

    Example:
        >>> check_choice("mode", "random", ("random", "deterministic"))
        'random'
    """
    # `in` on a tuple compares with ==, so an unhashable value is simply "not one of them".
    if isinstance(value, bool) or value not in tuple(choices):
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` when it is ``True`` or ``False`` (a NumPy bool counts; 0/1 and strings do not).

    Example:
        >>> check_bool("descending", True)
        True
    """
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be True or False, got {value!r}")
    return bool(value)


def check_seed(seed: Any, name: str = "seed") -> int | np.random.Generator:
    """The one seed rule: an integer ≥ 0 (returned as ``int``) or a `numpy.random.Generator` (returned as is).

    Bools, floats, strings, ``None`` and negative integers raise a `ValueError` naming ``name``.

    Example:
        >>> check_seed(3)
        3
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`{name}` must be an integer ≥ 0 or a numpy.random.Generator, got {seed!r}")
    return int(seed)


def seed_int(seed: Any, name: str = "seed") -> int:
    """A checked seed as an integer: an int as is; a Generator gives one draw in ``[0, 2**63 − 1)``.

    Call it once per operation: the drawn integer then seeds everything (per-group generators
    ``default_rng([seed, group])``, torch, faiss) exactly as that integer would, so the same
    Generator state gives the same result, and the integer is what provenance records. The draw
    advances the Generator, as `datasets.Dataset.shuffle(generator=...)` does.

    Example:
        >>> seed_int(np.random.default_rng(0)) == seed_int(np.random.default_rng(0))
        True
    """
    seed = check_seed(seed, name)
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(_SEED_DRAW_HIGH))
    return seed


def as_generator(seed: Any, *stream: int, name: str = "seed") -> np.random.Generator:
    """A NumPy Generator from a checked seed.

    Without ``stream``: ``default_rng(seed)`` for an int, the Generator itself otherwise. With
    ``stream`` (e.g. a group index): ``default_rng([seed_int(seed), *stream])``, an independent
    stream per key.

    Example:
        >>> as_generator(0, 2).integers(10) == np.random.default_rng([0, 2]).integers(10)
        True
    """
    seed = check_seed(seed, name)
    if stream:
        return np.random.default_rng([seed_int(seed, name), *stream])
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def check_columns(dataset: Dataset, *columns: str | None) -> None:
    """Raise `KeyError` naming the first missing column (and listing the ones that exist).

    Example:
        >>> check_columns(ds, "emb", None)  # None entries are skipped
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"expected a datasets.Dataset, got {type(dataset).__name__}")
    for column in columns:
        if column is not None and column not in dataset.column_names:
            raise KeyError(f"column {column!r} not found; the dataset has {dataset.column_names}")


def check_new_column(dataset: Dataset, name: str, overwrite: bool) -> None:
    """`ValueError` if ``name`` exists and ``overwrite`` is false; scorers call it before their work.

    Example:
        >>> check_new_column(ds, "score", overwrite=False)
    """
    if name in dataset.column_names and not overwrite:
        raise ValueError(f"column {name!r} already exists; pass overwrite=True to replace it")


def check_new_columns(dataset: Dataset, names: Sequence[str], overwrite: bool) -> list[str]:
    """The ``names`` that already exist; `ValueError` listing them unless ``overwrite``.

    Example:
        >>> check_new_columns(ds, ["a", "b"], overwrite=True)
        []
    """
    existing = [c for c in names if c in dataset.column_names]
    if existing and not overwrite:
        raise ValueError(f"column(s) {existing} already exist; pass overwrite=True to replace them")
    return existing


def column_list(value: Any, parameter: str) -> list[str]:
    """A column name or a non-empty sequence of names as a list; `ValueError` naming ``parameter``.

    Example:
        >>> column_list("grad", "gradient_column")
        ['grad']
    """
    columns = [value] if isinstance(value, str) else list(value)
    if not columns or not all(isinstance(c, str) for c in columns):
        raise ValueError(f"`{parameter}` must be a column name or a non-empty list of names, got {value!r}")
    return columns
