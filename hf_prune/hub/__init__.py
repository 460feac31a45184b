"""Saving and pushing subsets with a dataset card that records how they were selected.

`save_subset` never writes into a folder that holds something else: a non-empty target is refused
unless ``overwrite=True`` (and then only when it is a saved dataset), and the subset is written to a
temporary sibling that is renamed into place, so an interrupted save leaves the old folder or the new
one. `push_subset` checks offline mode, the token and the Hub's answer before pushing anything.
`check_save_path` and `check_push` run those checks alone, so a long selection can be preceded by them.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from typing import Any

from datasets import Dataset
from huggingface_hub import DatasetCard

from .ops.files import replace_folder
from .provenance import provenance
from .version import __version__

__all__ = ["dataset_card", "save_subset", "push_subset", "check_save_path", "check_push", "HubAccessError"]


class HubAccessError(RuntimeError):
    """The Hub cannot be used for a push (offline mode, no token, rejected token, no network)."""


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


def dataset_card(
    dataset: Dataset,
    *,
    repo_id: str | None = None,
    source: str | None = None,
    source_revision: str | None = None,
) -> DatasetCard:
    """A Hub dataset card for a subset: YAML tags, where it came from, what ``row_id`` refers to, a
    table of every recorded step (flagging steps the rows no longer match, see `hf_prune.provenance`)
    and the raw provenance JSON (method, parameters, seed, fingerprints, library version).

    ``source``/``source_revision`` name the dataset the subset was drawn from (e.g. a Hub id and
    commit); what `datasets` recorded about the first step's input is shown beside them.

    Example:
        >>> card = hp.hub.dataset_card(sub, source="zalando-datasets/fashion_mnist", source_revision="531be5e")
        >>> print(card.content[:200])
    """
    steps = provenance(dataset, warn=False)  # the card states staleness in its text
    title = repo_id.split("/")[-1] if repo_id else "hf_prune subset"
    rows = "\n".join(
        f"| {i + 1} | `{s['method']}` | {s['input_rows']:,} → {s['output_rows']:,} | {_params_text(s['params'])} "
        f"| `{s['input_fingerprint']}` | {'changed afterwards' if s['stale'] else 'current'} |"
        for i, s in enumerate(steps)
    )
    table = (
        "| step | method | rows | parameters | input fingerprint | its output |\n|---|---|---|---|---|---|\n" + rows
        if steps
        else "No hf_prune step is recorded on this dataset."
    )
    source_text = _source_text(steps, source, source_revision)
    about = (f"{source_text}\n\n" if source_text else "") + _row_id_text(dataset, steps) + _stale_text(dataset, steps)
    content = f"""---
tags:
- hf_prune
- data-pruning
- coreset
---

# {title}

A subset of {len(dataset):,} rows selected with hf_prune {__version__}.
{about}## Selection

{table}

<details><summary>Provenance (JSON)</summary>

```json
{json.dumps(steps, indent=2, sort_keys=True)}
```
</details>
"""
    return DatasetCard(content)


def check_save_path(path: str | os.PathLike, *, overwrite: bool = False, dataset: Dataset | None = None) -> str:
    """Raise unless `save_subset` can write ``path``; returns the resolved path.

    `FileExistsError` for a file, or for a non-empty folder without ``overwrite=True`` or one that is
    not a saved dataset (so ``overwrite`` never deletes other files); `ValueError` when ``dataset``
    reads its own data from that folder; `PermissionError` when the folder cannot be created there.

    Example:
        >>> hp.hub.check_save_path("subsets/fmnist_gm_10pct")  # before a long selection
    """
    from .data.hub import is_saved_dataset

    target = os.path.realpath(os.fspath(path))
    if os.path.lexists(target):
        if not os.path.isdir(target):
            raise FileExistsError(f"output path {os.fspath(path)!r} exists and is not a folder")
        if os.listdir(target):
            if not overwrite:
                raise FileExistsError(
                    f"output folder {os.fspath(path)!r} is not empty; pass overwrite=True (--overwrite) to replace it"
                )
            if not is_saved_dataset(target):
                raise FileExistsError(
                    f"output folder {os.fspath(path)!r} is not empty and holds no saved dataset; it is not replaced "
                    "even with overwrite=True: choose another path"
                )
            if dataset is not None and any(
                os.path.realpath(os.path.dirname(f["filename"])) == target for f in dataset.cache_files
            ):
                raise ValueError(
                    f"cannot overwrite {os.fspath(path)!r}: the dataset being saved reads its data from that folder; "
                    "save it to another path"
                )
    ancestor = os.path.dirname(target)
    while not os.path.isdir(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot create {os.fspath(path)!r}: {ancestor!r} is not writable")
    return target


def save_subset(
    dataset: Dataset,
    path: str | os.PathLike,
    *,
    source: str | None = None,
    source_revision: str | None = None,
    overwrite: bool = False,
) -> str:
    """`save_to_disk` plus a ``README.md`` dataset card beside the data; returns ``path``.

    A non-empty ``path`` is refused unless ``overwrite=True`` (see `check_save_path`). The data and
    card are written to a temporary sibling folder first, then renamed into place; if anything fails
    or is interrupted, the temporary folder is removed and an old ``path`` is left as it was.

    Example:
        >>> hp.hub.save_subset(sub, "subsets/fmnist_gm_10pct")
        >>> hp.hub.save_subset(sub2, "subsets/fmnist_gm_10pct", overwrite=True)  # replaces it whole
    """
    target = check_save_path(path, overwrite=overwrite, dataset=dataset)
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:12]}")
    os.mkdir(tmp)  # respects the umask, unlike mkdtemp's 0700
    try:
        dataset.save_to_disk(tmp)
        dataset_card(dataset, source=source, source_revision=source_revision).save(os.path.join(tmp, "README.md"))
        # A hidden, unique name for the old folder while it is swapped: never one of the user's own.
        replace_folder(tmp, target, aside=f"{tmp}-old")
    except BaseException:  # KeyboardInterrupt too
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return os.fspath(path)


def check_push(repo_id: str, *, token: str | None = None) -> str:
    """Raise unless a push to ``repo_id`` can work now; returns the Hub user name.

    Checked in this order, before any data is converted or sent: ``repo_id`` is a valid repo id
    (`ValueError`); offline mode (``HF_HUB_OFFLINE``) is off, a token is passed or stored (``hf auth
    login``/``HF_TOKEN``), and the Hub accepts it (`HubAccessError`, saying what to do).

    Example:
        >>> hp.hub.check_push("me/fmnist-gm-matching-10pct")
        'me'
    """
    from huggingface_hub import constants, get_token, whoami
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"`repo_id` {repo_id!r} is not a Hub repo id ('namespace/name'): {err}") from None
    save_hint = "save the subset locally (hp.hub.save_subset / hf-prune select --output) and push it later"
    # The client reads HF_HUB_OFFLINE once at import; the environment may have been set since.
    env_offline = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    if constants.HF_HUB_OFFLINE or env_offline:
        raise HubAccessError(
            f"cannot push to {repo_id!r}: Hub offline mode is on (HF_HUB_OFFLINE=1). Unset it on a machine with a "
            f"network connection, or {save_hint}."
        )
    token = token or get_token()
    if not token:
        raise HubAccessError(
            f"cannot push to {repo_id!r}: no Hugging Face token found. Log in with `hf auth login` (or "
            "`huggingface_hub.login()`), set HF_TOKEN, or pass token=...; or, to work without the Hub, set "
            f"HF_HUB_OFFLINE=1 and {save_hint}."
        )
    try:
        return whoami(token=token)["name"]
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status == 401:
            raise HubAccessError(
                f"cannot push to {repo_id!r}: the Hub rejected the token ({err}). Log in again with `hf auth login`."
            ) from None
        raise HubAccessError(f"cannot push to {repo_id!r}: the Hub answered {err}; retry later, or {save_hint}.") from None
    except Exception as err:  # no network: the transport's own error types vary
        raise HubAccessError(
            f"cannot push to {repo_id!r}: could not reach the Hub at {constants.ENDPOINT} ({type(err).__name__}: "
            f"{err}). Check the network connection, or set HF_HUB_OFFLINE=1 and {save_hint}."
        ) from None


def push_subset(
    dataset: Dataset,
    repo_id: str,
    *,
    source: str | None = None,
    source_revision: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    **push_kwargs: Any,
):
    """Push a subset to the Hub with a dataset card carrying its provenance.

    `check_push` runs first, so offline mode or a missing token is reported before any work.

    Example:
        >>> hp.hub.push_subset(sub, "me/fmnist-gm-matching-10pct", private=True)
    """
    check_push(repo_id, token=token)
    card = dataset_card(dataset, repo_id=repo_id, source=source, source_revision=source_revision)
    info = dataset.push_to_hub(repo_id, private=private, token=token, **push_kwargs)
    card.push_to_hub(repo_id, repo_type="dataset", token=token)
    return info
