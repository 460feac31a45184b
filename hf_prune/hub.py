"""Saving and pushing subsets with a dataset card that records how they were selected."""

from __future__ import annotations

import json
import os
from typing import Any

from datasets import Dataset
from huggingface_hub import DatasetCard

from .provenance import provenance
from .version import __version__

__all__ = ["dataset_card", "save_subset", "push_subset"]


def _params_text(params: dict[str, Any]) -> str:
    shown = {k: v for k, v in params.items() if v is not None}
    return ", ".join(f"`{k}={json.dumps(v)}`" for k, v in sorted(shown.items())) or "—"


def dataset_card(dataset: Dataset, *, repo_id: str | None = None, source: str | None = None) -> DatasetCard:
    """A Hub dataset card for a subset: YAML tags, a provenance table of every selection step, and the
    raw provenance JSON (method, parameters, seed, input fingerprint, library version).

    Example:
        >>> card = hp.hub.dataset_card(sub, source="fashion_mnist")
        >>> print(card.content[:200])
    """
    steps = provenance(dataset)
    title = repo_id.split("/")[-1] if repo_id else "hf_prune subset"
    rows = "\n".join(
        f"| {i + 1} | `{s['method']}` | {s['input_rows']:,} → {s['output_rows']:,} | {_params_text(s['params'])} "
        f"| `{s['input_fingerprint']}` |"
        for i, s in enumerate(steps)
    )
    table = (
        "| step | method | rows | parameters | input fingerprint |\n|---|---|---|---|---|\n" + rows
        if steps
        else "No hf_prune selection step is recorded on this dataset."
    )
    source_line = f"Source dataset: `{source}`.\n\n" if source else ""
    content = f"""---
tags:
- hf_prune
- data-pruning
- coreset
---

# {title}

A subset of {len(dataset):,} rows selected with hf_prune {__version__}.
{source_line}The column `row_id` holds each row's index in the original dataset.

## Selection

{table}

<details><summary>Provenance (JSON)</summary>

```json
{json.dumps(steps, indent=2, sort_keys=True)}
```
</details>
"""
    return DatasetCard(content)


def save_subset(dataset: Dataset, path: str | os.PathLike, *, source: str | None = None) -> str:
    """`save_to_disk` plus a ``README.md`` dataset card beside the data; returns the path.

    Example:
        >>> hp.hub.save_subset(sub, "subsets/fmnist_gm_10pct")
    """
    path = os.fspath(path)
    dataset.save_to_disk(path)
    dataset_card(dataset, source=source).save(os.path.join(path, "README.md"))
    return path


def push_subset(
    dataset: Dataset,
    repo_id: str,
    *,
    source: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    **push_kwargs: Any,
):
    """Push a subset to the Hub with a dataset card carrying its provenance.

    Example:
        >>> hp.hub.push_subset(sub, "me/fmnist-gm-matching-10pct", private=True)
    """
    info = dataset.push_to_hub(repo_id, private=private, token=token, **push_kwargs)
    dataset_card(dataset, repo_id=repo_id, source=source).push_to_hub(repo_id, repo_type="dataset", token=token)
    return info
