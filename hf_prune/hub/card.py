"""The dataset card of a subset: Hub YAML metadata, a summary, the provenance chain, how to reproduce it.

The YAML carries what the Hub indexes (``source_datasets``, ``license``, ``task_categories``,
``size_categories``, ``tags``, ``configs``) plus an ``hf_prune`` block naming the source and, for an
indices-only subset, its revision and fingerprint. The text says where the rows came from, what
fraction was kept, the rows per class, which selector chose them and why, every recorded step grouped
as embedding / scores / selection (model id, revision and weights checksum; parameters, seed,
fingerprints, library version), the pipeline file or Python call that reproduces it, and links a
class-balance plot (`class_balance_png`) uploaded beside it.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

from datasets import ClassLabel, Dataset, Image
from huggingface_hub import DatasetCard, DatasetCardData

from ..provenance import provenance
from ..version import __version__

__all__ = ["dataset_card", "class_balance_png", "class_counts", "size_category", "source_license", "PLOT_FILE"]

PLOT_FILE = "class_balance.png"
_SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
          (10_000_000_000, "1B<n<10B")]


def size_category(rows: int) -> str:
    """The Hub's ``size_categories`` value for a dataset of ``rows`` rows.

    Example:
        >>> size_category(4_500)
        '1K<n<10K'
    """
    return next((name for limit, name in _SIZES if rows < limit), "n>10B")


def _label_column(dataset: Dataset, label_column: str | None) -> str | None:
    if label_column is not None:
        if label_column not in dataset.column_names:
            raise KeyError(f"`label_column` {label_column!r} is not a column of the subset: {dataset.column_names}")
        return label_column
    found = [name for name, f in dataset.features.items() if isinstance(f, ClassLabel)]
    return found[0] if found else ("label" if "label" in dataset.column_names else None)


def class_counts(dataset: Dataset, label_column: str) -> dict[str, int]:
    """Rows per class of ``label_column``, by class name when it is a `ClassLabel`, in label order.

    Example:
        >>> class_counts(sub, "label")
        {'T-shirt/top': 612, 'Trouser': 590, ...}
    """
    from ..ops.columns import class_groups

    labels, groups = class_groups(dataset, label_column)
    feature = dataset.features[label_column]
    names = feature.names if isinstance(feature, ClassLabel) else None
    return {(names[int(v)] if names is not None else str(v)): len(g) for v, g in zip(labels, groups)}


def class_balance_png(subset_counts: dict[str, int], source_counts: dict[str, int] | None = None) -> bytes:
    """A small bar chart (PNG bytes) of the share of rows per class in the subset, beside the source's.

    Example:
        >>> png = class_balance_png(class_counts(sub, "label"), class_counts(ds, "label"))
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    names = list(source_counts or subset_counts)
    names += [n for n in subset_counts if n not in names]
    fig = Figure(figsize=(max(4.0, 0.45 * len(names) + 1.5), 3.0), dpi=80)
    ax = fig.add_subplot()
    x = range(len(names))
    width = 0.4 if source_counts else 0.8
    if source_counts:
        total = sum(source_counts.values()) or 1
        ax.bar([i - 0.2 for i in x], [source_counts.get(n, 0) / total for n in names], width, label="source")
    total = sum(subset_counts.values()) or 1
    ax.bar([i + (0.2 if source_counts else 0) for i in x], [subset_counts.get(n, 0) / total for n in names], width,
           label="subset")
    ax.set_xticks(list(x), names, rotation=45 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center",
                  fontsize=7)
    ax.set_ylabel("share of rows")
    ax.set_title("Class balance")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = io.BytesIO()
    # No software/date metadata: the same counts give the same bytes, so a re-push uploads nothing new.
    fig.savefig(out, format="png", metadata={"Software": None})
    return out.getvalue()


def _is_hub_id(source: str | None) -> bool:
    if not source or os.path.exists(source) or source.startswith(("hf_prune.", ".", "/")):
        return False
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(source)
    except Exception:
        return False
    return "/" in source


def source_license(source: str | None, *, token: str | None = None, endpoint: str | None = None) -> str | None:
    """The ``license`` in the card of ``source`` (a local folder with a README.md, or a Hub id), else ``None``.

    A Hub id is asked of the Hub only when offline mode is off; any failure (no card, no network, a
    gated repo) gives ``None``: the license is then left out rather than guessed.

    Example:
        >>> source_license("uoft-cs/cifar10")
        'unknown'
    """
    if not source:
        return None
    readme = os.path.join(os.fspath(source), "README.md")
    try:
        if os.path.isfile(readme):
            return DatasetCard.load(readme).data.to_dict().get("license")
        if not _is_hub_id(source):
            return None
        from huggingface_hub import HfApi, constants

        if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return None
        info = HfApi(endpoint=endpoint, token=token).dataset_info(source)
        return (info.card_data.to_dict() if info.card_data is not None else {}).get("license")
    except Exception:  # the license is optional metadata: never a reason to fail a save or push
        return None


def _task_categories(dataset: Dataset, label: str | None) -> list[str]:
    features = dataset.features
    images = any(isinstance(f, Image) for f in features.values())
    texts = [n for n, f in features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    if label is not None and isinstance(features.get(label), ClassLabel):
        return ["image-classification"] if images else (["text-classification"] if texts else [])
    if any(n in features for n in ("messages", "conversations")) or {"prompt", "response"} <= set(features):
        return ["text-generation"]
    if images and texts:
        return ["image-to-text"]
    return []


def _params_text(params: dict[str, Any]) -> str:
    shown = {k: v for k, v in params.items() if v is not None}
    return ", ".join(f"`{k}={json.dumps(v)}`" for k, v in sorted(shown.items())) or "—"


def _source_text(steps: list[dict[str, Any]], source: str | None, source_revision: str | None) -> str:
    lines = []
    if source:
        lines.append(f"Source dataset: `{source}`" + (f" at revision `{source_revision}`." if source_revision else "."))
    elif source_revision:
        lines.append(f"Source revision: `{source_revision}`.")
    if steps:
        first, found = steps[0], steps[0].get("source") or {}
        known = [
            f"{label} `{found[key]}`"
            for key, label in (("hub_id", "Hub dataset"), ("revision", "revision"), ("config_name", "config"),
                               ("split", "split"), ("builder_name", "builder"))
            if key in found
        ]
        lines.append(
            f"The first recorded step read a Dataset of {first['input_rows']:,} rows with fingerprint "
            f"`{first['input_fingerprint']}`" + (f" ({', '.join(known)}, as recorded by `datasets`)." if known else ".")
        )
    return " ".join(lines)


def _row_id_text(dataset: Dataset, steps: list[dict[str, Any]]) -> str:
    if "row_id" not in dataset.column_names:
        return ""
    # The step that added row_id is the first whose input had none; steps saved before digests were
    # recorded lack the keys, and the first of them is that step.
    origin = next(
        (
            i
            for i, s in enumerate(steps)
            if s.get("input_row_id_digest") is None and ("output_row_id_digest" not in s or s["output_row_id_digest"])
        ),
        None,
    )
    if origin is None:
        return (
            "The column `row_id` was already in the Dataset passed to the first recorded step; hf_prune keeps it "
            "as-is.\n\n" if steps else ""
        )
    step = steps[origin]
    return (
        f"The column `row_id` holds each row's position (0-based) in the Dataset passed to step {origin + 1} "
        f"(`{step['method']}`): the {step['input_rows']:,}-row view with fingerprint `{step['input_fingerprint']}`. "
        "If that view had been shuffled, filtered or selected from a larger dataset, `row_id` indexes the view, "
        "not the original files.\n\n"
    )


def _stale_text(dataset: Dataset, steps: list[dict[str, Any]]) -> str:
    notes = []
    for i, step in enumerate(steps):
        if not step["stale"]:
            continue
        if i + 1 == len(steps):
            notes.append(
                f"**Warning:** this dataset ({len(dataset):,} rows) is not the output of the last recorded step "
                f"(`{step['method']}`, {step['output_rows']:,} rows): it was filtered, reordered or re-selected "
                "afterwards by an operation hf_prune does not record, so the steps below describe how an earlier "
                "version of it was made."
            )
        else:
            notes.append(
                f"**Warning:** the output of step {i + 1} (`{step['method']}`, {step['output_rows']:,} rows) was "
                f"changed before step {i + 2} read it ({steps[i + 1]['input_rows']:,} rows), by an operation "
                "hf_prune does not record."
            )
    return "".join(f"{note}\n\n" for note in notes)


def _kind(method: str) -> str:
    if method.startswith("embed."):
        return "embedding"
    if method.startswith("score.") or method == "el2n":
        return "scores"
    return "pipeline" if method == "pipeline" else "selection"


def _chain_text(steps: list[dict[str, Any]]) -> str:
    """The provenance chain by kind of step: what made the embeddings, the scores, the selection."""
    parts = {"embedding": [], "scores": [], "selection": []}
    for i, s in enumerate(steps):
        kind, p = _kind(s["method"]), s["params"]
        where = f"step {i + 1}, `{s['method']}`, {s['input_rows']:,} → {s['output_rows']:,} rows"
        fingerprints = f"input fingerprint `{s['input_fingerprint']}`, output `{s.get('output_fingerprint')}`"
        if kind == "embedding":
            parts[kind].append(
                f"- {where}: model `{p.get('model')}` at revision `{p.get('revision')}`, weights checksum "
                f"`{p.get('weights_checksum')}`; columns {p.get('input_columns')} → {p.get('output_columns')}; "
                f"{fingerprints}; hf_prune {s['version']}."
            )
        elif kind in parts:
            seed = f"seed `{p['seed']}`; " if p.get("seed") is not None else ""
            parts[kind].append(f"- {where}: {_params_text(p)}; {seed}{fingerprints}; hf_prune {s['version']}.")
    titles = {"embedding": "Embeddings", "scores": "Scores", "selection": "Selection"}
    return "".join(f"**{titles[k]}**\n\n" + "\n".join(v) + "\n\n" for k, v in parts.items() if v) or (
        "No hf_prune step is recorded on this dataset.\n\n"
    )


def _selector_text(steps: list[dict[str, Any]], reason: str | None) -> str:
    chosen = [s for s in steps if _kind(s["method"]) == "selection"]
    if not chosen:
        return f"Why this subset: {reason}\n\n" if reason else ""
    last = chosen[-1]
    from .. import select

    fn = getattr(select, last["method"], None)
    doc = (getattr(fn, "__doc__", None) or "").strip().split("\n\n")[0].replace("\n", " ").strip()
    text = f"Selector: `{last['method']}`" + (f" — {doc}" if doc else ".")
    return text + (f"\n\nWhy this selector: {reason}" if reason else "") + "\n\n"


def _counts_table(subset: dict[str, int], source: dict[str, int] | None) -> str:
    if source is None:
        rows = "\n".join(f"| {name} | {n:,} |" for name, n in subset.items())
        return "| class | rows |\n|---|---|\n" + rows
    rows = "\n".join(
        f"| {name} | {source.get(name, 0):,} | {subset.get(name, 0):,} | "
        f"{subset.get(name, 0) / source[name]:.1%} |" if source.get(name) else f"| {name} | 0 | {subset.get(name, 0):,} | — |"
        for name in list(source) + [n for n in subset if n not in source]
    )
    return "| class | source rows | subset rows | kept |\n|---|---|---|---|\n" + rows


def _reproduce_text(reproduce: str | None, steps: list[dict[str, Any]], repo_id: str | None,
                    meta: dict[str, Any] | None) -> str:
    if reproduce is None:  # a pipeline run records its own file
        reproduce = next((s["params"].get("text") for s in steps if s["method"] == "pipeline"), None)
    out = []
    if reproduce:
        is_pipeline = any(s["method"] == "pipeline" for s in steps) or "steps:" in reproduce
        if is_pipeline:
            out.append("Save this pipeline file as `pipeline.yaml` and run `hf-prune run pipeline.yaml`:\n\n"
                       f"```yaml\n{reproduce.rstrip()}\n```")
        else:
            out.append(f"```python\n{reproduce.rstrip()}\n```")
    if meta is not None and meta.get("format") == "indices":
        name = repo_id or "<this repo or folder>"
        out.append(
            "This repo holds only the row ids of the subset (and the columns listed in `hf_prune.json`). "
            "Rebuild the rows from the source, checked against its revision and fingerprint, with:\n\n"
            f"```python\nimport hf_prune as hp\nsubset = hp.hub.load_subset({name!r})\n```"
        )
    return "\n\n".join(out) if out else "Not recorded: pass `reproduce=` (the pipeline file or the Python call)."


def dataset_card(
    dataset: Dataset,
    *,
    repo_id: str | None = None,
    source: str | None = None,
    source_revision: str | None = None,
    reproduce: str | None = None,
    license: str | None = None,
    task_categories: list[str] | None = None,
    label_column: str | None = None,
    source_dataset: Dataset | None = None,
    reason: str | None = None,
    subset_meta: dict[str, Any] | None = None,
    plot: str | None = None,
    configs: list[dict[str, Any]] | None = None,
) -> DatasetCard:
    """A Hub dataset card for a subset: YAML metadata, a summary, the provenance chain and how to rebuild it.

    The YAML holds ``tags``, ``size_categories``, ``task_categories`` (given, else guessed from the
    features: a `ClassLabel` with images or text, conversations, image–text), ``license`` and
    ``source_datasets`` (when ``source`` is a Hub id), ``configs`` (the data files, when given) and an
    ``hf_prune`` block (format, source, revision, fingerprint; from ``subset_meta``). The text gives
    the source (``source``/``source_revision`` and what `datasets` recorded about the first step's
    input), the kept fraction, rows per class (of ``label_column``, else the first `ClassLabel`, else
    ``label``; beside ``source_dataset``'s when given), the selector and ``reason``, what ``row_id``
    refers to, the chain of steps by kind (embedding: model, revision, weights checksum; scores;
    selection: parameters, seed, fingerprints, version; steps the rows no longer match are flagged,
    see `hf_prune.provenance`), ``reproduce`` (a pipeline file or Python call; a pipeline run's own
    recorded file otherwise), a link to ``plot`` (an image file uploaded beside the card) and the raw
    provenance JSON.

    Example:
        >>> card = hp.hub.dataset_card(sub, source="zalando-datasets/fashion_mnist", source_revision="531be5e",
        ...                            reproduce="hp.select.random(ds, fraction=0.1, seed=0)")
        >>> print(card.content[:200])
    """
    steps = provenance(dataset, warn=False)  # the card states staleness in its text
    title = repo_id.split("/")[-1] if repo_id else "hf_prune subset"
    label = _label_column(dataset, label_column)
    subset_counts = class_counts(dataset, label) if label is not None else None
    source_counts = None
    if source_dataset is not None and label is not None and label in source_dataset.column_names:
        source_counts = class_counts(source_dataset, label)
    source_rows = len(source_dataset) if source_dataset is not None else (steps[0]["input_rows"] if steps else None)
    if subset_meta and subset_meta.get("source_rows") is not None:
        source_rows = subset_meta["source_rows"]
    categories = task_categories if task_categories is not None else _task_categories(dataset, label)
    data = DatasetCardData(
        license=license,
        task_categories=categories or None,
        size_categories=[size_category(len(dataset))],
        source_datasets=[source] if _is_hub_id(source) else None,
        tags=["hf_prune", "data-pruning", "coreset"],
        pretty_name=title,
        configs=configs,
        hf_prune={k: v for k, v in (subset_meta or {}).items() if k in (
            "format", "source", "source_revision", "source_config", "source_split", "source_fingerprint",
            "source_rows", "rows", "library_version")} or None,
    )
    kept = (f" ({len(dataset) / source_rows:.2%} of {source_rows:,} source rows)" if source_rows else "")
    summary = f"A subset of {len(dataset):,} rows{kept} selected with hf_prune {__version__}."
    source_text = _source_text(steps, source, source_revision)
    about = (f"{source_text}\n\n" if source_text else "") + _selector_text(steps, reason)
    about += _row_id_text(dataset, steps) + _stale_text(dataset, steps)
    balance = ""
    if subset_counts is not None:
        balance = f"## Rows per class (`{label}`)\n\n{_counts_table(subset_counts, source_counts)}\n\n"
        if plot:
            balance += f"![Class balance, source vs subset]({plot})\n\n"
    table = "\n".join(
        f"| {i + 1} | `{s['method']}` | {s['input_rows']:,} → {s['output_rows']:,} | {_params_text(s['params'])} "
        f"| `{s['input_fingerprint']}` | {'changed afterwards' if s['stale'] else 'current'} |"
        for i, s in enumerate(steps)
    )
    if steps:
        table = "| step | method | rows | parameters | input fingerprint | its output |\n|---|---|---|---|---|---|\n" + table
    content = f"""---
{data.to_yaml()}
---

# {title}

{summary}
{about}{balance}## Provenance

{_chain_text(steps)}{table}

## Reproduce

{_reproduce_text(reproduce, steps, repo_id, subset_meta)}

<details><summary>Provenance (JSON)</summary>

```json
{json.dumps(steps, indent=2, sort_keys=True)}
```
</details>
"""
    return DatasetCard(content)
