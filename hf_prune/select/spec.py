"""Selector specs as strings, for the CLI and recipes: ``"name:key=value,key=value"``.

Values are parsed as JSON where possible (numbers, booleans, null, lists), otherwise kept as strings.

Example:
    >>> fn, kwargs = parse_spec("gm_matching:fraction=0.1,embedding_column=emb,label_column=label")
    >>> sub = fn(ds, **kwargs)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from datasets import Dataset

__all__ = ["parse_spec", "parse_value", "run_spec", "available_selectors"]


def available_selectors() -> list[str]:
    from . import __all__ as names

    return sorted(names)


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def parse_spec(spec: str) -> tuple[Callable[..., Dataset], dict[str, Any]]:
    """``"name:key=value,..."`` → ``(selector function, kwargs)``; `ValueError` on an unknown name or bad item."""
    from .. import select

    name, _, rest = spec.partition(":")
    name = name.strip()
    if name not in available_selectors():
        raise ValueError(f"unknown selector {name!r}; available: {', '.join(available_selectors())}")
    kwargs: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in _split_items(rest))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"selector spec item {item!r} is not key=value (in {spec!r})")
        kwargs[key.strip()] = parse_value(value.strip())
    return getattr(select, name), kwargs


def _split_items(text: str) -> list[str]:
    """Split on commas that are not inside brackets, so list values like ``k=[1,2]`` survive."""
    items, depth, current = [], 0, []
    for char in text:
        depth += char in "[{("
        depth -= char in "]})"
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return items


def run_spec(dataset: Dataset, spec: str, **overrides: Any) -> Dataset:
    """Run the selector named by ``spec`` on ``dataset`` (``overrides`` win over the spec's values)."""
    fn, kwargs = parse_spec(spec)
    return fn(dataset, **{**kwargs, **overrides})
