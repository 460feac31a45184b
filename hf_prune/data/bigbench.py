"""BIG-bench JSON tasks as instruction data, read straight from the ``bigbench`` sdist (or an extracted copy).

BIG-bench's tasks are ``bigbench/benchmark_tasks/<task>/task.json`` (and ``<task>/<subtask>/task.json``),
which the ``bigbench`` source distribution on PyPI ships; ``pip download --no-deps bigbench==1.0.0``
fetches it without installing anything. Programmatic tasks (a ``task.py`` and no ``task.json``) need
BIG-bench's runtime and are skipped and counted.

Rows (the instruction schema with ``answer`` and ``choices``, plus an ``id`` ``"<task>/<i>"``, ``i`` the
example's position in its ``task.json``):

- ``task``: the task's folder name; a subtask is ``"<task>:<subtask>"`` (BIG-bench's own naming, e.g.
  ``"logical_deduction:three_objects"``). ``tasks=``/``exclude=`` match a name or its parent's name.
- ``messages``: a user turn with the prompt as BIG-bench builds it (`json_task.default_format_fn`):
  ``task_prefix + example_input_prefix + input`` (+ the choices, each after ``choice_prefix``, when the task
  appends them — in a seeded order, as BIG-bench shuffles them) ``+ example_output_prefix``, with
  BIG-bench's defaults (``"\\nQ: "``, ``"\\nA: "``, ``"\\n  choice: "``) and surrounding whitespace
  stripped (the chat template separates the turns); then an assistant turn with the answer.
- ``answer``: for a multiple-choice example the choice with the highest ``target_scores`` value (the
  first one on ties, as BIG-bench does), else the first ``target``.
- ``choices``: the ``target_scores`` keys in file order, ``[]`` for a generative example.

Duplicate examples are dropped (as BIG-bench does: the same JSON twice; the first copy met is kept);
examples without a usable target are skipped and counted.

Example:
    >>> bbh = load_bigbench("bigbench-1.0.0.tar.gz", tasks=BBH_TASKS, max_examples_per_task=100)
    >>> sorted(set(bbh["task"]))[:2]
    ['causal_judgment', 'date_understanding']
"""

from __future__ import annotations

import json
import os
import tarfile
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import Dataset, DatasetInfo, Features, Value
from datasets.fingerprint import Hasher
from datasets.table import InMemoryTable
from datasets.utils.tqdm import tqdm

from ..ops.checks import check_bool, check_positive_int, check_seed, seed_int
from ..ops.files import cache_root
from ..version import __version__
from .instructions import EVAL_FEATURES

__all__ = ["BBH_TASKS", "BIGBENCH_ENV", "BIGBENCH_FEATURES", "bigbench_path", "load_bigbench"]

BIGBENCH_ENV = "HF_PRUNE_BIGBENCH"
BIGBENCH_FEATURES = Features({**EVAL_FEATURES, "id": Value("string")})
# The BIG-bench tasks BIG-Bench Hard draws from (Suzgun et al., 2022), as the sdist names them: BBH's
# "causal_judgement", "formal_fallacies" and "multistep_arithmetic_two" are BIG-bench's causal_judgment,
# formal_fallacies_syllogisms_negation and multistep_arithmetic. boolean_expressions, multistep_arithmetic
# and web_of_lies are programmatic in BIG-bench 1.0.0 (no task.json), so a JSON load finds the other 20
# (24 with the three-, five- and seven-object subtasks of logical_deduction and tracking_shuffled_objects).
BBH_TASKS = (
    "boolean_expressions", "causal_judgment", "date_understanding", "disambiguation_qa", "dyck_languages",
    "formal_fallacies_syllogisms_negation", "geometric_shapes", "hyperbaton", "logical_deduction",
    "movie_recommendation", "multistep_arithmetic", "navigate", "object_counting", "penguins_in_a_table",
    "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection", "snarks",
    "sports_understanding", "temporal_sequences", "tracking_shuffled_objects", "web_of_lies", "word_sorting",
)
_SDIST = "bigbench-1.0.0.tar.gz"
_DOWNLOAD = "pip download --no-deps bigbench==1.0.0 -d <dir>"
_TASKS_DIR = "benchmark_tasks"
_DEFAULT_PREFIXES = {"example_input_prefix": "\nQ: ", "example_output_prefix": "\nA: ", "choice_prefix": "\n  choice: "}


def bigbench_path() -> Path:
    """The BIG-bench sdist (``.tar.gz``) or extracted folder: ``$HF_PRUNE_BIGBENCH``, else the cached sdist.

    The cached sdist is ``bigbench-1.0.0.tar.gz`` in ``$HF_PRUNE_CACHE`` (default ``~/.cache/hf_prune``),
    where ``bash scripts/dev.sh llm`` downloads it. `FileNotFoundError` with the download command when
    neither names anything.

    Example:
        >>> os.environ["HF_PRUNE_BIGBENCH"] = "downloads/bigbench-1.0.0.tar.gz"
        >>> bigbench_path().name
        'bigbench-1.0.0.tar.gz'
    """
    value = os.environ.get(BIGBENCH_ENV)
    if value:
        path = Path(value)
        if not path.exists():
            raise FileNotFoundError(f"{BIGBENCH_ENV}={value!r} does not exist; fetch the sdist with `{_DOWNLOAD}`")
        return path
    cached = cache_root() / _SDIST
    if cached.exists():
        return cached
    raise FileNotFoundError(
        f"no BIG-bench path: pass path=, set {BIGBENCH_ENV} to the bigbench sdist fetched with `{_DOWNLOAD}` "
        f"(or to an extracted copy of it), or put the sdist at {cached} (`bash scripts/dev.sh llm` does)"
    )


def _task_name(relative: PurePosixPath) -> str:
    return ":".join(relative.parent.parts)


def _relative(parts: Sequence[str]) -> PurePosixPath | None:
    """The path below the last ``benchmark_tasks`` folder, or ``None`` for a file outside one."""
    if _TASKS_DIR not in parts:
        return None
    below = parts[len(parts) - list(reversed(parts)).index(_TASKS_DIR):]
    return PurePosixPath(*below) if len(below) >= 2 else None


def _tasks_root(folder: Path) -> Path:
    for candidate in (folder / _TASKS_DIR, folder / "bigbench" / _TASKS_DIR, *folder.glob(f"*/bigbench/{_TASKS_DIR}")):
        if candidate.is_dir():
            return candidate
    return folder  # the tasks folder itself (any name)


def _task_files(path: Path, bar) -> Iterator[tuple[str, str, Any]]:
    """``(task name, "task.json" | "task.py", read())`` for every task file, read lazily."""
    if path.is_dir():
        root = _tasks_root(path)
        for file in sorted(root.rglob("task.*")):
            parts = file.relative_to(root).parts
            if file.name in ("task.json", "task.py") and 2 <= len(parts):
                yield _task_name(PurePosixPath(*parts)), file.name, file.read_bytes
        return
    if not tarfile.is_tarfile(path):
        raise ValueError(f"{path} is neither a folder nor a tar archive (the bigbench sdist is a .tar.gz: `{_DOWNLOAD}`)")
    with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as archive:
        last = 0
        for member in archive:  # stream mode: one pass over the compressed bytes, nothing extracted
            bar.update(raw.tell() - last)
            last = raw.tell()
            name = PurePosixPath(member.name)
            if not member.isfile() or name.name not in ("task.json", "task.py"):
                continue
            relative = _relative(name.parts)
            if relative is not None:  # read() must be called before the next member (stream mode)
                yield _task_name(relative), name.name, lambda m=member: archive.extractfile(m).read()


def _names(value: Any, parameter: str) -> set[str]:
    names = [value] if isinstance(value, str) else list(value)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"`{parameter}` must be a task name or a non-empty list of task names, got {value!r}")
    return set(names)


def _matches(task: str, names: set[str] | None) -> bool:
    return names is not None and (task in names or task.split(":")[0] in names)


def _example_row(task: str, index: int, example: dict, spec: dict, seed: int) -> dict | str:
    """One example as a row, or the reason it is skipped."""
    if not isinstance(example, dict) or "input" not in example:
        return "no input"
    scores = example.get("target_scores")
    choices: list[str] = []
    if isinstance(scores, dict) and scores:
        choices = [str(c) for c in scores]
        values = [float(v) for v in scores.values()]
        if (len(values) == 1 and values[0] == 0) or (len(values) > 1 and max(values) <= min(values)):
            return "no correct choice"
        answer = choices[int(np.argmax(values))]  # argmax: the first of the tied best, as BIG-bench
    else:
        target = example.get("target")
        if isinstance(target, list):
            target = target[0] if target else None
        if target is None:
            return "no target"
        answer = str(target)
    if not answer.strip():
        return "empty target"
    text = str(example["input"])
    if choices and spec["append_choices_to_input"]:
        order = np.random.default_rng([seed, zlib.crc32(task.encode()), index]).permutation(len(choices))
        ordered = sorted(choices)
        text += spec["choice_prefix"] + spec["choice_prefix"].join(ordered[i] for i in order)
    prompt = (spec["task_prefix"] + spec["example_input_prefix"] + text + spec["example_output_prefix"]).strip()
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            "source": "bigbench", "task": task, "answer": answer, "choices": choices, "id": f"{task}/{index}"}


def _task_rows(task: str, data: dict, max_examples: int | None, seed: int, skipped: dict) -> list[dict]:
    spec = {key: str(data.get(key, default)) for key, default in (("task_prefix", ""), *_DEFAULT_PREFIXES.items())}
    spec["append_choices_to_input"] = bool(data.get("append_choices_to_input", True))
    examples = data["examples"]
    order = range(len(examples))
    if max_examples is not None and len(examples) > max_examples:
        # Examples are formatted in a seeded random order until enough are usable: a capped load of a
        # large task formats only what it keeps (and counts skips among the examples it looked at).
        order = np.random.default_rng([seed, zlib.crc32(task.encode())]).permutation(len(examples)).tolist()
    seen, kept = set(), []
    for index in order:
        key = json.dumps(examples[index])  # BIG-bench's duplicate test; the first copy met is kept
        if key in seen:
            skipped["duplicate example"] = skipped.get("duplicate example", 0) + 1
            continue
        seen.add(key)
        row = _example_row(task, index, examples[index], spec, seed)
        if isinstance(row, str):
            skipped[row] = skipped.get(row, 0) + 1
            continue
        kept.append((index, row))
        if max_examples is not None and len(kept) == max_examples:
            break
    return [row for _, row in sorted(kept, key=lambda pair: pair[0])]


def load_bigbench(
    path: str | os.PathLike | None = None,
    *,
    tasks: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    max_examples_per_task: int | None = None,
    seed: int | np.random.Generator = 0,
    return_stats: bool = False,
    progress: bool = True,
) -> Dataset | tuple[Dataset, dict[str, Any]]:
    """BIG-bench JSON tasks as instruction rows with ``answer`` and ``choices`` (rules in the module docstring).

    ``path``: the ``bigbench`` sdist ``.tar.gz`` (read in one streaming pass, nothing extracted) or an
    extracted folder (the sdist root or its ``benchmark_tasks``); default: the ``HF_PRUNE_BIGBENCH``
    environment variable (`bigbench_path`). ``tasks`` keeps those tasks (a name keeps its subtasks too),
    ``exclude`` drops tasks; naming a task that does not exist is a `ValueError`, naming a programmatic
    one skips it (counted). ``max_examples_per_task`` keeps a seeded random sample of each task's
    examples (in file order); BIG-bench holds 2.6 million examples, so cap it for a full load. Rows are
    sorted by task, then example.

    With ``return_stats=True`` returns ``(dataset, stats)``: ``json_tasks`` (tasks with examples, after
    filtering), ``multiple_choice_tasks``, ``generative_tasks``, ``mixed_tasks`` (both kinds of example),
    ``programmatic_tasks`` (names skipped), ``examples`` (rows kept), ``per_task`` (``{task: rows}``),
    ``skipped`` (``{reason: count}``), ``seconds``.

    Example:
        >>> ds = load_bigbench("bigbench-1.0.0.tar.gz", tasks=["logical_deduction"], max_examples_per_task=50)
        >>> sorted(set(ds["task"]))
        ['logical_deduction:five_objects', 'logical_deduction:seven_objects', 'logical_deduction:three_objects']
    """
    path = Path(path) if path is not None else bigbench_path()
    if not path.exists():
        raise FileNotFoundError(f"no BIG-bench sdist or folder at {path}; fetch it with `{_DOWNLOAD}`")
    wanted = _names(tasks, "tasks") if tasks is not None else None
    dropped = _names(exclude, "exclude") if exclude is not None else set()
    if max_examples_per_task is not None:
        max_examples_per_task = check_positive_int("max_examples_per_task", max_examples_per_task)
    seed = seed_int(check_seed(seed))
    return_stats, progress = check_bool("return_stats", return_stats), check_bool("progress", progress)
    started = time.perf_counter()
    schema = BIGBENCH_FEATURES.arrow_schema
    tables: dict[str, pa.Table] = {}
    kinds: dict[str, set[bool]] = {}
    python_tasks, seen_names, skipped = set(), set(), {}
    size = path.stat().st_size if path.is_file() else None
    bar = tqdm(total=size, unit="B", unit_scale=True, desc="BIG-bench", disable=not progress or size is None)
    try:
        for task, kind, read in _task_files(path, bar):
            seen_names.update({task, task.split(":")[0]})
            if (wanted is not None and not _matches(task, wanted)) or _matches(task, dropped):
                continue
            if kind == "task.py":
                python_tasks.add(task)
                continue
            try:
                data = json.loads(read())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ValueError(f"BIG-bench task {task!r}: task.json does not parse ({error})") from error
            if not isinstance(data, dict) or not data.get("examples"):
                continue  # a parent listing its subtasks
            rows = _task_rows(task, data, max_examples_per_task, seed, skipped)
            kinds[task] = {bool(r["choices"]) for r in rows}
            tables[task] = pa.Table.from_pylist(rows, schema=schema)
    finally:
        bar.close()
    unknown = sorted(name for name in (wanted or set()) | dropped if name not in seen_names)
    if unknown:
        raise ValueError(f"BIG-bench has no task named {unknown} in {path}")
    programmatic = sorted(python_tasks - set(tables))
    if programmatic:
        skipped["programmatic task (task.py)"] = len(programmatic)
    names = sorted(tables)
    table = pa.concat_tables([tables[n] for n in names]) if names else schema.empty_table()
    stat = path.stat()
    fingerprint = Hasher.hash(["load_bigbench", __version__, str(path.resolve()), stat.st_size, stat.st_mtime_ns,
                               sorted(wanted) if wanted is not None else None, sorted(dropped), max_examples_per_task,
                               seed])
    dataset = Dataset(InMemoryTable(table), info=DatasetInfo(features=BIGBENCH_FEATURES, description="BIG-bench tasks"),
                      fingerprint=fingerprint)
    if not return_stats:
        return dataset
    stats = {
        "path": str(path), "json_tasks": len(names),
        "multiple_choice_tasks": sum(kinds[n] == {True} for n in names),
        "generative_tasks": sum(kinds[n] == {False} for n in names),
        "mixed_tasks": sum(kinds[n] == {True, False} for n in names),
        "programmatic_tasks": programmatic, "examples": len(dataset),
        "per_task": {n: tables[n].num_rows for n in names}, "skipped": dict(sorted(skipped.items())),
        "seconds": round(time.perf_counter() - started, 2),
    }
    return dataset, stats
