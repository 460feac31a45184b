"""Provenance of a selection: which method, parameters and seed produced a subset, from which input.

Stored as JSON inside ``dataset.info.description`` (between markers), because DatasetInfo travels
with ``select``/``map``/``save_to_disk`` and into the Hub card, while attributes on a Dataset object
do not. Chained selections append a step, so the full history of a subset is readable.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from datasets import Dataset

from .version import __version__

__all__ = ["provenance", "with_provenance", "input_fingerprint"]

_START, _END = "<!-- hf_prune:provenance ", " -->"
_PATTERN = re.compile(re.escape(_START) + r"(.*?)" + re.escape(_END), re.DOTALL)


def provenance(dataset: Dataset) -> list[dict[str, Any]]:
    """The list of selection steps that produced ``dataset`` (oldest first); empty when none.

    Example:
        >>> sub = hp.select.random(ds, fraction=0.5, seed=0)
        >>> hp.provenance(sub)[-1]["method"]
        'random'
    """
    match = _PATTERN.search(dataset.info.description or "")
    return json.loads(match.group(1)) if match else []


def input_fingerprint(dataset: Dataset) -> str:
    return dataset._fingerprint


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return value.item()
    if callable(value):
        return getattr(value, "__qualname__", repr(value))
    return repr(value)


def with_provenance(result: Dataset, source: Dataset, *, method: str, params: dict[str, Any]) -> Dataset:
    """Return ``result`` with one more provenance step describing how it was made from ``source``."""
    steps = provenance(source)
    steps.append(
        {
            "method": method,
            "params": _jsonable(params),
            "input_fingerprint": input_fingerprint(source),
            "input_rows": len(source),
            "output_rows": len(result),
            "library": "hf_prune",
            "version": __version__,
        }
    )
    info = copy.deepcopy(result.info)
    base = _PATTERN.sub("", info.description or "").rstrip()
    blob = _START + json.dumps(steps, sort_keys=True) + _END
    info.description = f"{base}\n\n{blob}" if base else blob
    # Dataset.info is a property over a private attribute; set it on the new object only.
    result._info = info
    return result
