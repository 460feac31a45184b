"""Saving, pushing and loading subsets with a dataset card that records how they were selected.

A subset is written as its rows, or as indices only (``row_id`` plus chosen columns, rebuilt from the
source by `load_subset`, see `hf_prune.hub.rebuild`), always with a card (`hf_prune.hub.card`), an
``hf_prune.json`` (source, revision, fingerprint, column digests, provenance) and a class-balance plot.

`save_subset` never writes into a folder that holds something else: a non-empty target is refused
unless ``overwrite=True`` (and then only when it is a saved dataset), and the subset is written to a
temporary sibling that is renamed into place, so an interrupted save leaves the old folder or the new
one. `push_subset` checks offline mode, the token and the Hub's answer before any work, then writes
the data shards, card, metadata and plot in ONE commit (`HfApi.create_commit`): a failure before the
commit leaves the repo as it was, and a re-run uploads only the LFS files the Hub does not hold yet.
`check_save_path` and `check_push` run those checks alone, so a long selection can be preceded by them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from typing import Any

from datasets import Dataset

from ..ops.files import replace_folder
from .card import PLOT_FILE, class_balance_png, class_counts, dataset_card, source_license
from .rebuild import META_FILE, SourceMismatchError, load_subset, subset_metadata

__all__ = ["dataset_card", "save_subset", "push_subset", "load_subset", "check_save_path", "check_push",
           "HubAccessError", "SourceMismatchError"]


class HubAccessError(RuntimeError):
    """The Hub cannot be used for a push (offline mode, no token, rejected token, no network)."""


def check_save_path(path: str | os.PathLike, *, overwrite: bool = False, dataset: Dataset | None = None) -> str:
    """Raise unless `save_subset` can write ``path``; returns the resolved path.

    `FileExistsError` for a file, or for a non-empty folder without ``overwrite=True`` or one that is
    not a saved dataset (so ``overwrite`` never deletes other files); `ValueError` when ``dataset``
    reads its own data from that folder; `PermissionError` when the folder cannot be created there.

    Example:
        >>> hp.hub.check_save_path("subsets/fmnist_gm_10pct")  # before a long selection
    """
    from ..data.hub import is_saved_dataset

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


def _card_files(
    dataset: Dataset,
    written: Dataset,
    meta: dict[str, Any],
    *,
    repo_id: str | None,
    source: str | None,
    source_revision: str | None,
    card_options: dict[str, Any],
    configs: list[dict[str, Any]] | None = None,
) -> dict[str, bytes]:
    """``{file name: bytes}`` written beside the data: README.md, hf_prune.json and the plot when there are classes."""
    from .card import _label_column

    label = _label_column(dataset, card_options.get("label_column"))
    files: dict[str, bytes] = {}
    if label is not None:
        source_dataset = card_options.get("source_dataset")
        source_counts = (class_counts(source_dataset, label)
                         if source_dataset is not None and label in source_dataset.column_names else None)
        files[PLOT_FILE] = class_balance_png(class_counts(dataset, label), source_counts)
    card = dataset_card(dataset, repo_id=repo_id, source=source, source_revision=source_revision, subset_meta=meta,
                        plot=PLOT_FILE if PLOT_FILE in files else None, configs=configs, **card_options)
    files["README.md"] = str(card).encode()
    files[META_FILE] = json.dumps(meta, indent=1, sort_keys=True).encode()
    return files


def _card_options(license, task_categories, label_column, source_dataset, reason, reproduce) -> dict[str, Any]:
    if source_dataset is not None and not isinstance(source_dataset, Dataset):
        raise TypeError(f"`source_dataset` must be a datasets.Dataset, got {type(source_dataset).__name__}")
    return {"license": license, "task_categories": task_categories, "label_column": label_column,
            "source_dataset": source_dataset, "reason": reason, "reproduce": reproduce}


def save_subset(
    dataset: Dataset,
    path: str | os.PathLike,
    *,
    source: str | None = None,
    source_revision: str | None = None,
    overwrite: bool = False,
    indices_only: bool = False,
    columns: list[str] | None = None,
    source_config: str | None = None,
    source_split: str | None = None,
    reproduce: str | None = None,
    license: str | None = None,
    task_categories: list[str] | None = None,
    label_column: str | None = None,
    source_dataset: Dataset | None = None,
    reason: str | None = None,
) -> str:
    """`save_to_disk` plus a ``README.md`` dataset card, ``hf_prune.json`` and a class-balance plot; returns ``path``.

    With ``indices_only=True`` only ``row_id`` and ``columns`` are saved, with the ``source`` to
    rebuild from (see `hf_prune.hub.rebuild.subset_metadata`); `load_subset` reads either kind.
    ``reproduce`` (a pipeline file or the Python call), ``license``, ``task_categories``,
    ``label_column``, ``source_dataset`` and ``reason`` go into the card (see `dataset_card`); without
    ``license``, the source's own card gives it when it has one (`hf_prune.hub.card.source_license`).
    A non-empty ``path`` is refused unless ``overwrite=True`` (see `check_save_path`). Everything is
    written to a temporary sibling folder first, then renamed into place; if anything fails or is
    interrupted, the temporary folder is removed and an old ``path`` is left as it was.

    Example:
        >>> hp.hub.save_subset(sub, "subsets/fmnist_gm_10pct", reproduce="hp.select.random(ds, fraction=0.1, seed=0)")
        >>> hp.hub.save_subset(sub2, "subsets/fmnist_gm_10pct", overwrite=True)  # replaces it whole
        >>> hp.hub.save_subset(sub, "subsets/ids", indices_only=True, source="subsets/fmnist_full")
    """
    options = _card_options(license or source_license(source), task_categories, label_column, source_dataset, reason,
                            reproduce)
    written, meta = subset_metadata(dataset, indices_only=indices_only, columns=columns, source=source,
                                    source_revision=source_revision, source_config=source_config,
                                    source_split=source_split)
    target = check_save_path(path, overwrite=overwrite, dataset=dataset)
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:12]}")
    os.mkdir(tmp)  # respects the umask, unlike mkdtemp's 0700
    try:
        written.save_to_disk(tmp)
        files = _card_files(dataset, written, meta, repo_id=None, source=source, source_revision=source_revision,
                            card_options=options)
        for file_name, content in files.items():
            with open(os.path.join(tmp, file_name), "wb") as f:
                f.write(content)
        # A hidden, unique name for the old folder while it is swapped: never one of the user's own.
        replace_folder(tmp, target, aside=f"{tmp}-old")
    except BaseException:  # KeyboardInterrupt too
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return os.fspath(path)


def check_push(repo_id: str, *, token: str | None = None, endpoint: str | None = None) -> str:
    """Raise unless a push to ``repo_id`` can work now; returns the Hub user name.

    Checked in this order, before any data is converted or sent: ``repo_id`` is a valid repo id
    (`ValueError`); offline mode (``HF_HUB_OFFLINE``) is off, a token is passed or stored (``hf auth
    login``/``HF_TOKEN``), and the Hub (``endpoint``, default ``HF_ENDPOINT``) accepts it
    (`HubAccessError`, saying what to do).

    Example:
        >>> hp.hub.check_push("me/fmnist-gm-matching-10pct")
        'me'
    """
    from huggingface_hub import HfApi, constants, get_token
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
        return HfApi(endpoint=endpoint).whoami(token=token)["name"]
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status == 401:
            raise HubAccessError(
                f"cannot push to {repo_id!r}: the Hub rejected the token ({err}). Log in again with `hf auth login`."
            ) from None
        raise HubAccessError(f"cannot push to {repo_id!r}: the Hub answered {err}; retry later, or {save_hint}.") from None
    except Exception as err:  # no network: the transport's own error types vary
        raise HubAccessError(
            f"cannot push to {repo_id!r}: could not reach the Hub at {endpoint or constants.ENDPOINT} ({type(err).__name__}: "
            f"{err}). Check the network connection, or set HF_HUB_OFFLINE=1 and {save_hint}."
        ) from None




def _write_shards(dataset: Dataset, folder: str, *, split: str, data_dir: str, num_shards: int | None,
                  max_shard_size: int | str | None, embed_external_files: bool, num_proc: int | None) -> list[str]:
    """Parquet shards of ``dataset`` under ``folder/data_dir`` named as `Dataset.push_to_hub` names them."""
    from datasets.features.features import require_storage_embed
    from datasets.table import embed_table_storage
    from datasets.utils.py_utils import convert_file_size_to_int

    from ..ops.arrow import arrow_table

    if num_shards is None:
        table = arrow_table(dataset)
        nbytes = table.nbytes * len(dataset) / max(1, table.num_rows)  # the view's share of its table
        limit = convert_file_size_to_int(max_shard_size or "500MB")
        num_shards = max(1, min(len(dataset), math.ceil(nbytes / limit)))
    os.makedirs(os.path.join(folder, data_dir), exist_ok=True)
    embed = embed_external_files and any(require_storage_embed(f) for f in dataset.features.values())
    paths = []
    for index in range(num_shards):
        shard = dataset.shard(num_shards=num_shards, index=index, contiguous=True)
        if embed:  # image/audio files referenced by path travel inside the parquet, as push_to_hub does
            shard = shard.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True,
                                                   num_proc=num_proc).with_format(**shard.format)
        path = f"{data_dir}/{split}-{index:05d}-of-{num_shards:05d}.parquet"
        shard.to_parquet(os.path.join(folder, path))
        paths.append(path)
    return paths


def push_subset(
    dataset: Dataset,
    repo_id: str,
    *,
    source: str | None = None,
    source_revision: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    indices_only: bool = False,
    columns: list[str] | None = None,
    source_config: str | None = None,
    source_split: str | None = None,
    reproduce: str | None = None,
    license: str | None = None,
    task_categories: list[str] | None = None,
    label_column: str | None = None,
    source_dataset: Dataset | None = None,
    reason: str | None = None,
    split: str | None = None,
    config_name: str = "default",
    set_default: bool | None = None,
    data_dir: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = None,
    num_shards: int | None = None,
    embed_external_files: bool = True,
    num_proc: int | None = None,
    endpoint: str | None = None,
):
    """Push a subset (its rows, or ``indices_only``) with its card, ``hf_prune.json`` and plot in ONE commit.

    `check_push` runs first, so offline mode or a missing or rejected token is reported before any
    work. The parquet shards (named and sharded as `Dataset.push_to_hub` does: ``max_shard_size``,
    ``num_shards``, ``split``, ``data_dir``, ``config_name``), the card (see `dataset_card`; the
    ``reproduce``/``license``/``task_categories``/``label_column``/``source_dataset``/``reason``
    options; ``license`` defaults to the source card's), ``hf_prune.json`` and the class-balance plot go to the Hub in a single
    `HfApi.create_commit`, on the branch ``revision`` (created from ``main`` when missing) or as a pull
    request (``create_pr``), with the branch head read first as the parent commit, so a push that
    raced another one fails instead of mixing them. The repo is created when missing (``private``
    applies then). If anything fails before the commit, the repo is unchanged; re-running uploads
    only the LFS files the Hub does not hold yet (same rows give the same shard bytes), and re-running
    after a success makes no new commit. Shards of an earlier push of this split that the new one
    does not write are deleted in the same commit. Returns the `CommitInfo`.

    ``indices_only=True`` pushes ``row_id`` plus ``columns`` and the ``source`` (Hub id or path,
    ``source_revision``, config, split) to rebuild from with `load_subset`; see
    `hf_prune.hub.rebuild.subset_metadata`. ``endpoint`` is the Hub's URL (default ``HF_ENDPOINT``).

    Example:
        >>> hp.hub.push_subset(sub, "me/fmnist-gm-matching-10pct", private=True)
        >>> hp.hub.push_subset(sub, "me/fmnist-ids", indices_only=True, columns=["el2n"],
        ...                    source="zalando-datasets/fashion_mnist", source_revision="531be5e", revision="v1")
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import RevisionNotFoundError

    check_push(repo_id, token=token, endpoint=endpoint)
    license = license or source_license(source, token=token, endpoint=endpoint)
    options = _card_options(license, task_categories, label_column, source_dataset, reason, reproduce)
    written, meta = subset_metadata(dataset, indices_only=indices_only, columns=columns, source=source,
                                    source_revision=source_revision, source_config=source_config,
                                    source_split=source_split)
    split = split or "train"
    data_dir = data_dir or ("data" if config_name == "default" else config_name)
    meta["data_dir"] = data_dir
    config = {"config_name": config_name, "data_files": [{"split": split, "path": f"{data_dir}/{split}-*"}]}
    if set_default:
        config["default"] = True
    api = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory(prefix="hf_prune_push_") as folder:
        shards = _write_shards(written, folder, split=split, data_dir=data_dir, num_shards=num_shards,
                               max_shard_size=max_shard_size, embed_external_files=embed_external_files,
                               num_proc=num_proc)
        files = _card_files(dataset, written, meta, repo_id=repo_id, source=source, source_revision=source_revision,
                            card_options=options, configs=[config])
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        branch = revision or "main"
        try:
            head = api.repo_info(repo_id, repo_type="dataset", revision=branch)
        except RevisionNotFoundError:
            api.create_branch(repo_id, repo_type="dataset", branch=branch, exist_ok=True)
            head = api.repo_info(repo_id, repo_type="dataset", revision=branch)
        existing = [s.rfilename for s in head.siblings or []]
        stale = [p for p in existing if p.startswith(f"{data_dir}/{split}-") and p.endswith(".parquet")
                 and p not in shards]
        operations = [CommitOperationAdd(p, os.path.join(folder, p)) for p in shards]
        operations += [CommitOperationAdd(name, content) for name, content in files.items()]
        operations += [CommitOperationDelete(p) for p in stale]
        kind = "indices of" if indices_only else "rows of"
        return api.create_commit(
            repo_id,
            operations,
            repo_type="dataset",
            revision=branch,
            commit_message=commit_message or f"hf_prune: {kind} a {len(dataset):,}-row subset",
            commit_description=commit_description,
            create_pr=create_pr,
            parent_commit=head.sha,
        )
