"""Provenance of a subset: which steps (method, parameters, seed) produced it, from which input.

Stored as JSON inside ``dataset.info.description`` (between markers), because DatasetInfo travels
with ``select``/``map``/``save_to_disk`` and into the Hub card, while attributes on a Dataset object
do not. Chained steps append to the list, so the full history of a subset is readable.

Each step records what it read and what it produced: ``input_fingerprint``/``input_rows`` and
``output_fingerprint``/``output_rows``, plus a short digest of the ``row_id`` column on either side
(``input_row_id_digest``/``output_row_id_digest``, ``None`` without such a column). The first step
also records ``source``: what `datasets` knows about where its input came from (builder, config,
split and, for data loaded from the Hub, the repo id and commit of its cache folder).

The DatasetInfo also survives operations hf_prune does not record (``filter``, ``shuffle``, another
``select``), so `provenance` checks that each step still describes the rows after it; see there.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:  # datasets is imported lazily so `import hf_prune` stays light
    from datasets import Dataset

__all__ = ["provenance", "with_provenance", "with_measurements", "stamp_output", "input_fingerprint", "row_id_digest",
           "source_info"]

_START, _END = "<!-- hf_prune:provenance ", " -->"
_PATTERN = re.compile(re.escape(_START) + r"(.*?)" + re.escape(_END), re.DOTALL)
_ROW_ID = "row_id"
_COMMIT = re.compile(r"[0-9a-f]{40}")
# The fields `with_provenance` writes on every step (plus ``stale``, added on reading).
_STEP_FIELDS = ("method", "params", "input_fingerprint", "input_rows", "input_row_id_digest", "output_fingerprint",
                "output_rows", "output_row_id_digest", "library", "version", "source", "stale")


def _stored_steps(dataset: Dataset) -> list[dict[str, Any]]:
    match = _PATTERN.search(dataset.info.description or "")
    return json.loads(match.group(1)) if match else []


def provenance(dataset: Dataset, *, warn: bool = True) -> list[dict[str, Any]]:
    """The list of steps that produced ``dataset`` (oldest first); empty when none is recorded.

    Every returned step carries ``stale``: ``True`` when the rows it produced are no longer the rows
    after it — the next step's input, or ``dataset`` itself for the last step — because they were
    filtered, reordered or re-selected by an operation hf_prune does not record. The check: the same
    fingerprint means unchanged; a different row count means changed; with the same row count the
    ``row_id`` digests (row ids in row order) decide, so adding columns with ``map``, saving and
    reloading, or pushing to the Hub keep a step current while ``shuffle`` makes it stale. With the same
    row count and no ``row_id`` on one side the step is taken as current (nothing tells a ``map``
    from a reorder there). With ``warn=True`` a `UserWarning` names the stale steps.

    Example:
        >>> sub = hp.select.random(ds, fraction=0.5, seed=0)
        >>> hp.provenance(sub)[-1]["method"], hp.provenance(sub)[-1]["stale"]
        ('random', False)
        >>> hp.provenance(sub.filter(lambda row: row["label"] == 0))[-1]["stale"]  # also warns
        True
    """
    steps = _stored_steps(dataset)
    describe = {"input_fingerprint": input_fingerprint, "input_rows": len, "input_row_id_digest": row_id_digest}

    def in_hand(key: str) -> Any:
        # The dataset in hand, described like a step's input; the digest reads a column, so only on demand.
        return describe[key](dataset)

    for i, step in enumerate(steps):
        after = steps[i + 1] if i + 1 < len(steps) else None
        step["stale"] = not _describes(step, (after.get if after is not None else in_hand))
    stale = [i + 1 for i, step in enumerate(steps) if step["stale"]]
    if warn and stale:
        last = steps[-1]
        if not last["stale"]:
            detail = "an earlier step's rows were changed before the next step read them"
        elif last["output_rows"] != len(dataset):
            detail = f"the last step ({last['method']}) produced {last['output_rows']:,} rows; this dataset has {len(dataset):,}"
        else:
            detail = f"this dataset's rows are not the ones the last step ({last['method']}) produced, in its order"
        warnings.warn(
            f"provenance steps {stale} no longer describe the rows after them: {detail} "
            "(filter/shuffle/select are not recorded); see each step's 'stale' field",
            UserWarning,
            stacklevel=2,
        )
    return steps


def _describes(step: dict[str, Any], after) -> bool:
    """Whether the rows ``step`` produced are the rows described by ``after`` (an input_* lookup)."""
    fingerprint = step.get("output_fingerprint")
    if fingerprint is not None and fingerprint == after("input_fingerprint"):
        return True
    if step["output_rows"] != after("input_rows"):
        return False
    expected, found = step.get("output_row_id_digest"), after("input_row_id_digest")
    return expected is None or found is None or expected == found


def input_fingerprint(dataset: Dataset) -> str:
    from .ops.arrow import fingerprint  # on use, like datasets itself: `import hf_prune` stays light

    return fingerprint(dataset)


def row_id_digest(dataset: Dataset) -> str | None:
    """A 16-hex digest of the ``row_id`` column in row order (``None`` without an integer one).

    Two views with the same digest hold the same rows in the same order, whatever columns were added.

    Example:
        >>> row_id_digest(sub) == row_id_digest(sub.map(lambda row: {"x": 1}))
        True
    """
    if _ROW_ID not in dataset.column_names:
        return None
    import numpy as np
    import pyarrow as pa

    from .ops.arrow import arrow_table, indices_mapping

    column = arrow_table(dataset).column(_ROW_ID)
    if not pa.types.is_integer(column.type) or column.null_count:
        return None  # a user's own row_id of another kind: nothing to compare
    ids = column.to_numpy()
    mapping = indices_mapping(dataset)
    if mapping is not None:  # after select/shuffle: the rows in view order, gathered in NumPy
        ids = ids[mapping]
    return hashlib.blake2b(np.ascontiguousarray(ids, dtype="<i8").tobytes(), digest_size=8).hexdigest()


def source_info(dataset: Dataset) -> dict[str, Any]:
    """What `datasets` reliably knows about where ``dataset`` came from; keys only when known.

    ``dataset_name``, ``config_name``, ``builder_name``, ``version`` (from ``dataset.info``) and
    ``split``; for data loaded from the Hub with `load_dataset`, ``hub_id`` and ``revision`` (the
    commit) read from its cache folder ``<namespace>___<name>/<config>/<version>/<commit>/``. The
    name part of ``hub_id`` is the one `datasets` caches: lower ``snake_case``. In-memory datasets
    (``Dataset.from_dict``) have none of these; their fingerprint is all there is.

    Example:
        >>> source_info(load_dataset("uoft-cs/cifar10", split="train"))["hub_id"]
        'uoft-cs/cifar10'
    """
    info, out = dataset.info, {}
    for key in ("dataset_name", "config_name", "builder_name"):
        if getattr(info, key, None):
            out[key] = str(getattr(info, key))
    if info.version is not None:
        out["version"] = str(info.version)
    if dataset.split is not None:
        out["split"] = str(dataset.split)
    files = dataset.cache_files
    if files and info.dataset_name:
        parts = Path(files[0]["filename"]).parts
        # <namespace>___<name>/<config>/<version>/<commit>/<file>: the layout load_dataset gives a Hub repo.
        if len(parts) >= 5 and _COMMIT.fullmatch(parts[-2]) and "___" in parts[-5]:
            namespace, _, name = parts[-5].partition("___")
            if name == info.dataset_name:
                out["hub_id"], out["revision"] = f"{namespace}/{name}", parts[-2]
    return out


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
    """Return ``result`` with one more provenance step describing how it was made from ``source``.

    Generic over steps: selectors, scorers and embedders call it with the Dataset they read and the
    one they return (``result`` is the final object; a later transform would change its fingerprint).
    ``result`` is updated in place (its info only) and returned.

    Example:
        >>> scored = with_provenance(scored, ds, method="el2n", params={"output_column": "el2n"})
    """
    steps = _stored_steps(source)
    step = {
        "method": method,
        "params": _jsonable(params),
        "input_fingerprint": input_fingerprint(source),
        "input_rows": len(source),
        "input_row_id_digest": row_id_digest(source),
        "output_fingerprint": input_fingerprint(result),
        "output_rows": len(result),
        "output_row_id_digest": row_id_digest(result),
        "library": "hf_prune",
        "version": __version__,
    }
    if not steps:
        step["source"] = source_info(source)
    steps.append(step)
    return _with_steps(result, steps)


def _with_steps(result: Dataset, steps: list[dict[str, Any]]) -> Dataset:
    info = copy.deepcopy(result.info)
    base = _PATTERN.sub("", info.description or "").rstrip()
    blob = _START + json.dumps(steps, sort_keys=True) + _END
    info.description = f"{base}\n\n{blob}" if base else blob
    from .ops.arrow import with_info

    # Dataset.info is read-only; set it on the new object only.
    return with_info(result, info)


def with_measurements(result: Dataset, key: str, facts: dict[str, Any]) -> Dataset:
    """``result`` with ``facts`` stored as ``key`` on its last provenance step, beside its ``params``.

    For what a step measured rather than was asked (seconds per stage, the kNN index used and its
    recall): it is kept out of ``params``, which stay the arguments that replay the step. ``key`` must
    not be one of the step's own fields. ``result`` must be the Dataset the step just created; it is
    updated in place and returned.

    Example:
        >>> sub = with_measurements(sub, "stage_times", {"solve_s": 1.5})
        >>> provenance(sub)[-1]["stage_times"]
        {'solve_s': 1.5}
    """
    steps = _stored_steps(result)
    if not steps:
        raise ValueError("the dataset has no provenance step to add measurements to")
    if key in _STEP_FIELDS:
        raise ValueError(f"`key`={key!r} is a field of every step; pick another name for measured facts")
    steps[-1][key] = _jsonable(facts)
    return _with_steps(result, steps)


def stamp_output(result: Dataset, fingerprint: str) -> Dataset:
    """``result`` with the fingerprint ``fingerprint``, recorded as its last step's ``output_fingerprint``.

    For a step that derives its output's fingerprint from its input and parameters (selectors do,
    see `hf_prune.select.registry`), so the recorded fingerprint is the returned Dataset's.
    ``result`` must be the Dataset the step just created; it is updated in place and returned.

    Example:
        >>> sub = stamp_output(sub, "0123456789abcdef")
        >>> provenance(sub)[-1]["output_fingerprint"]
        '0123456789abcdef'
    """
    steps = _stored_steps(result)
    if not steps:
        raise ValueError("the dataset has no provenance step to stamp")
    steps[-1]["output_fingerprint"] = fingerprint
    from .ops.arrow import with_fingerprint

    return with_fingerprint(_with_steps(result, steps), fingerprint)
