"""Renamed keywords and values: the old spelling keeps working for one release with a `FutureWarning`.

One helper for every rename of the vocabulary (DESIGN "Vocabulary"), so each deprecated spelling
warns with the same message shape, says exactly what to write instead, and a call that passes the
old and the new spelling with different meanings is a `ValueError` rather than a silent choice.
Like `checks`, this module imports no other hf_prune module.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["renamed", "renamed_value"]


def renamed(
    method: str,
    old_name: str,
    old_value: Any,
    new_name: str,
    new_value: Any,
    *,
    default: Any,
    values: Mapping[Any, Any] | None = None,
    stacklevel: int = 3,
) -> Any:
    """The value of ``new_name`` after accepting the deprecated keyword ``old_name``.

    ``old_value is None`` means the old keyword was not passed: ``new_value`` is returned as is.
    Otherwise ``old_value`` is translated through ``values`` (old value → new value; ``None`` keeps
    it unchanged, for a keyword renamed without a change of meaning), a `FutureWarning` names the
    replacement to write, and that replacement is returned. A ``new_value`` other than ``default``
    that disagrees with the translation raises a `ValueError` naming both keywords (``default``
    itself cannot be told apart from "not passed", so it yields to the old keyword).

    ``stacklevel=3`` points the warning at the caller of the public function calling this helper.

    Example:
        >>> metric = renamed("infomax", "normalize", False, "metric", "cosine", default="cosine",
        ...                  values={True: "cosine", False: "ip"})  # FutureWarning: use metric='ip'
        >>> metric
        'ip'
    """
    if old_value is None:
        return new_value
    if isinstance(old_value, np.bool_):
        old_value = bool(old_value)
    if values is None:
        replacement = old_value
    else:
        # Look up by value and type, so 1 or "yes" is not taken for True.
        matches = [new for old, new in values.items() if type(old) is type(old_value) and old == old_value]
        if not matches:
            raise ValueError(f"`{old_name}` must be one of {tuple(values)}, got {old_value!r}")
        replacement = matches[0]
    if new_value != default and new_value != replacement:
        raise ValueError(
            f"`{old_name}={old_value!r}` contradicts `{new_name}={new_value!r}`; pass only `{new_name}`"
        )
    warnings.warn(
        f"{method}: `{old_name}` is deprecated, use {new_name}={replacement!r} "
        f"(`{old_name}` will be removed in a future version)",
        FutureWarning, stacklevel=stacklevel,
    )
    return replacement


def renamed_value(method: str, name: str, value: Any, old_values: Mapping[str, Any], *, stacklevel: int = 3) -> Any:
    """``value`` with a deprecated spelling of it (a key of ``old_values``) replaced by the new one.

    A replaced spelling warns with a `FutureWarning` saying what to write instead; any other value
    is returned unchanged (the caller validates it).

    Example:
        >>> renamed_value("ssp", "metric", "euclidean", {"euclidean": "l2"})  # FutureWarning: use metric='l2'
        'l2'
    """
    if isinstance(value, str) and value in old_values:
        new = old_values[value]
        warnings.warn(
            f"{method}: {name}={value!r} is deprecated, use {name}={new!r} "
            f"({value!r} will be removed in a future version)",
            FutureWarning, stacklevel=stacklevel,
        )
        return new
    return value
