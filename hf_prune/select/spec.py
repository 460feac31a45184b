"""Selector specs as strings, for the CLI and recipes: ``"name:key=value,key=value"``.

Values are parsed as JSON where possible (numbers, booleans, null, lists), otherwise kept as strings.

Example:
    >>> fn, kwargs = parse_spec("gm_matching:fraction=0.1,embedding_column=emb,label_column=label")
    >>> sub = fn(ds, **kwargs)
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

from datasets import Dataset

from . import registry
from .combine import combine

__all__ = ["parse_spec", "parse_value", "run_spec", "check_spec", "available_selectors", "selector_options"]


# Spec strings can also name `combine` (baseline + Norm/GS), which chains two registered selectors.
_HELPERS: dict[str, Callable[..., Dataset]] = {"combine": combine}


def available_selectors() -> list[str]:
    """The names a spec can start with: every registered selector, and ``combine``.

    Example:
        >>> "gm_matching" in available_selectors()
        True
    """
    return sorted([*registry.names(), *_HELPERS])


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def selector_options(fn: Callable[..., Dataset]) -> tuple[list[str] | None, list[str]]:
    """``(options, required)`` of a selector: its keyword arguments after the dataset, and those
    without a default. ``options`` is ``None`` when it takes ``**kwargs`` (anything goes)."""
    params = list(inspect.signature(fn).parameters.values())[1:]  # the first one is the dataset
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None, []
    named = [p for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return [p.name for p in named], [p.name for p in named if p.default is inspect.Parameter.empty]


def parse_spec(spec: str) -> tuple[Callable[..., Dataset], dict[str, Any]]:
    """``"name:key=value,..."`` → ``(selector function, kwargs)``.

    Raises `ValueError` on an unknown selector, an item that is not ``key=value``, an option given
    twice, or an option the selector does not take (the message lists the ones it takes).

    Example:
        >>> parse_spec("random:fraction=0.5,seed=1")[1]
        {'fraction': 0.5, 'seed': 1}
    """
    name, _, rest = spec.partition(":")
    name = name.strip()
    if name not in available_selectors():
        raise ValueError(f"unknown selector {name!r}; available: {', '.join(available_selectors())}")
    fn = _HELPERS[name] if name in _HELPERS else registry.get(name).fn
    options, _ = selector_options(fn)
    kwargs: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in _split_items(rest))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"selector spec item {item!r} is not key=value (in {spec!r})")
        if key in kwargs:
            raise ValueError(f"option {key!r} is given twice in {spec!r}")
        if options is not None and key not in options:
            raise ValueError(f"{name} has no option {key!r}; its options are: {', '.join(options)}")
        kwargs[key] = parse_value(value.strip())
    return fn, kwargs


def check_spec(spec: str, **overrides: Any) -> tuple[Callable[..., Dataset], dict[str, Any]]:
    """`parse_spec` plus a check that every required option is given (by the spec or ``overrides``),
    so a command line can reject a spec before loading any data.

    Example:
        >>> check_spec("gm_matching:fraction=0.1")
        Traceback (most recent call last):
        ValueError: gm_matching needs option(s) embedding_column; its options are: ...
    """
    fn, kwargs = parse_spec(spec)
    kwargs = {**kwargs, **overrides}
    options, required = selector_options(fn)
    missing = [name for name in required if name not in kwargs]
    if missing:
        raise ValueError(
            f"{fn.__name__} needs option(s) {', '.join(missing)}; its options are: {', '.join(options or [])}"
        )
    return fn, kwargs


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
    """Run the selector named by ``spec`` on ``dataset`` (``overrides`` win over the spec's values).

    Example:
        >>> sub = run_spec(ds, "random:fraction=0.5", seed=2)
    """
    fn, kwargs = check_spec(spec, **overrides)
    return fn(dataset, **kwargs)
