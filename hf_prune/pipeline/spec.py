"""Reading a pipeline file (YAML or JSON) into steps that remember their line numbers.

A pipeline file is a mapping with a ``steps`` list (and optionally ``cache_dir`` and ``name``); each
step is a one-key mapping ``{kind: {option: value, ...}}``::

    steps:
      - load: {builtin: fashion_mnist, split: train, rows: 2000}
      - embed: {embedder: ImageEmbedder, model: facebook/dinov2-small}
      - select: {selector: infomax, fraction: 0.1, embedding_column: emb, score_column: ssp}
      - save: {path: subsets/fmnist_infomax}

JSON is read by the same YAML parser (JSON is YAML), so its errors name lines too; without PyYAML,
JSON is read by the standard library and errors name the step number instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PipelineError", "StepSpec", "PipelineSpec", "parse_pipeline", "read_pipeline", "apply_overrides",
           "TOP_LEVEL_KEYS"]

TOP_LEVEL_KEYS = ("steps", "cache_dir", "name", "description")


class PipelineError(ValueError):
    """A pipeline file that cannot run; the message names the file, line and valid choices.

    Example:
        >>> parse_pipeline("steps:\n  - embedd: {}\n", source="p.yaml")
        Traceback (most recent call last):
        PipelineError: p.yaml:2: unknown step 'embedd'; valid steps: load, corrupt, tokenize, embed, ...
    """


class _Mapping(dict):
    """A dict that remembers the line of each key (``lines``) and of itself (``line``)."""

    line: int | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lines: dict[Any, int] = {}


class _Sequence(list):
    line: int | None = None

    def __init__(self, *args):
        super().__init__(*args)
        self.lines: list[int] = []


def _yaml_load(text: str, where: str) -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node):
        explicit = sum(key.tag != "tag:yaml.org,2002:merge" for key, _ in node.value)
        loader.flatten_mapping(node)  # `<<: *anchor` entries come first; the mapping's own keys override them
        merged = len(node.value) - explicit
        result, own = _Mapping(), set()
        result.line = node.start_mark.line + 1
        for position, (key_node, value_node) in enumerate(node.value):
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if position >= merged and key in own:
                raise PipelineError(f"{where}:{line}: key {key!r} is given twice (first on line {result.lines[key]})")
            if position >= merged:
                own.add(key)
            result[key] = loader.construct_object(value_node, deep=True)
            result.lines[key] = line
        return result

    def sequence(loader, node):
        result = _Sequence(loader.construct_object(child, deep=True) for child in node.value)
        result.line = node.start_mark.line + 1
        result.lines = [child.start_mark.line + 1 for child in node.value]
        return result

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, sequence)
    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise PipelineError(f"{where}{line}: not valid YAML/JSON: {err.problem or err}") from None
    except yaml.YAMLError as err:
        raise PipelineError(f"{where}: not valid YAML/JSON: {err}") from None


def _load_text(text: str, where: str) -> Any:
    try:
        import yaml  # noqa: F401
    except ImportError:  # JSON still works, without line numbers
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise PipelineError(f"{where}:{err.lineno}: not valid JSON (PyYAML is not installed): {err.msg}") from None
    return _yaml_load(text, where)


@dataclass
class StepSpec:
    """One step as written: its kind, options, position and lines.

    Attributes:
        kind: ``load``, ``corrupt``, ``tokenize``, ``embed``, ``score``, ``select``, ``save`` or ``push``.
        options: the step's mapping, as written (no defaults filled in).
        index: 1-based position in ``steps``.
        line: the line of the step in the file (``None`` when unknown).
        option_lines: the line of each option key.

    Example:
        >>> StepSpec("select", {"selector": "random", "size": 10}, index=3).kind
        'select'
    """

    kind: str
    options: dict[str, Any]
    index: int
    line: int | None = None
    option_lines: dict[str, int] = field(default_factory=dict)



@dataclass
class PipelineSpec:
    """A parsed pipeline file: its steps, settings, the text it was read from and where.

    Example:
        >>> spec = parse_pipeline("steps:\\n  - load: {builtin: digits, split: train}\\n")
        >>> [s.kind for s in spec.steps]
        ['load']
    """

    steps: list[StepSpec]
    text: str
    source: str = "<pipeline>"
    settings: dict[str, Any] = field(default_factory=dict)
    setting_lines: dict[str, int] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)  # `--set` items applied after parsing

    def error(self, step: StepSpec | None, message: str, option: str | None = None) -> str:
        """``file:line: step N (kind): message``, the format of every validation error."""
        if step is None:
            line = self.setting_lines.get(option) if option else None
            return f"{self.source}{f':{line}' if line else ''}: {message}"
        line = step.option_lines.get(option, step.line) if option else step.line
        return f"{self.source}{f':{line}' if line else ''}: step {step.index} ({step.kind}): {message}"


def parse_pipeline(text: str, *, source: str = "<pipeline>", kinds: tuple[str, ...] | None = None) -> PipelineSpec:
    """Parse pipeline text (YAML or JSON) into a `PipelineSpec`; the structure is checked, not the options.

    ``kinds`` are the valid step names (default: those of `hf_prune.pipeline.steps`).

    Raises:
        PipelineError: bad syntax, a top-level key or step kind that does not exist, or a step that is
            not a one-key mapping, with the line and the valid choices.

    Example:
        >>> parse_pipeline('{"steps": [{"load": {"builtin": "digits"}}]}').steps[0].options
        {'builtin': 'digits'}
    """
    if kinds is None:
        from .steps import STEP_KINDS

        kinds = tuple(STEP_KINDS)
    data = _load_text(text, source)
    if not isinstance(data, dict):
        raise PipelineError(f"{source}: a pipeline is a mapping with a `steps` list, got {type(data).__name__}")
    lines = getattr(data, "lines", {})
    unknown = [key for key in data if key not in TOP_LEVEL_KEYS]
    if unknown:
        line = lines.get(unknown[0])
        raise PipelineError(f"{source}{f':{line}' if line else ''}: unknown key {unknown[0]!r}; valid keys: "
                            f"{', '.join(TOP_LEVEL_KEYS)}")
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        line = lines.get("steps")
        raise PipelineError(f"{source}{f':{line}' if line else ''}: `steps` must be a non-empty list of steps")
    step_lines = getattr(raw_steps, "lines", [None] * len(raw_steps))
    steps = []
    for index, (raw, line) in enumerate(zip(raw_steps, step_lines), start=1):
        where = f"{source}:{line}" if line else f"{source}: step {index}"
        if isinstance(raw, str):
            raw = {raw: {}}  # `- save` with nothing else is not useful, but `- corrupt` style reads naturally
        if not isinstance(raw, dict) or len(raw) != 1:
            raise PipelineError(f"{where}: step {index} must be a one-key mapping like `- embed: {{...}}`; valid "
                                f"steps: {', '.join(kinds)}")
        (kind, options), = raw.items()
        if kind not in kinds:
            raise PipelineError(f"{where}: unknown step {kind!r}; valid steps: {', '.join(kinds)}")
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise PipelineError(f"{where}: the options of step {index} ({kind}) must be a mapping, got "
                                f"{type(options).__name__}")
        steps.append(StepSpec(kind, dict(options), index, line, dict(getattr(options, "lines", {}))))
    settings = {key: data[key] for key in data if key != "steps"}
    return PipelineSpec(steps, text, source, settings, {k: v for k, v in lines.items() if k != "steps"})


def read_pipeline(path: str | os.PathLike) -> PipelineSpec:
    """`parse_pipeline` of a file (``.yaml``, ``.yml`` or ``.json``).

    Example:
        >>> spec = read_pipeline("recipes/pipelines/image_classification.yaml")
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such pipeline file: {path!r}")
    with open(path, encoding="utf-8") as handle:
        return parse_pipeline(handle.read(), source=path)


def apply_overrides(spec: PipelineSpec, items: list[str]) -> PipelineSpec:
    """Set step options from ``STEP.OPTION=VALUE`` items (``hf-prune run --set``); returns ``spec``, changed.

    ``STEP`` is a 1-based step number or a step kind that occurs once (``load``, ``save``, ...); ``VALUE``
    is read as YAML (``200``, ``true``, ``[a, b]``, ``{r: 8}``), else kept as text; an empty ``VALUE``
    removes the option (``load.split=``). The items are kept in
    ``spec.overrides`` so the subset's provenance records them beside the file's text.

    Example:
        >>> spec = apply_overrides(read_pipeline("p.yaml"), ["load.rows=200", "4.fraction=0.05"])
    """
    for item in items:
        target, sep, text = item.partition("=")
        step_name, dot, option = target.strip().rpartition(".")
        if not sep or not dot or not step_name or not option:
            raise PipelineError(f"--set {item!r}: expected STEP.OPTION=VALUE, e.g. load.rows=200 or 3.fraction=0.1")
        if step_name.isdigit():
            index = int(step_name)
            if not 1 <= index <= len(spec.steps):
                raise PipelineError(f"--set {item!r}: there is no step {index}; the pipeline has {len(spec.steps)}")
            step = spec.steps[index - 1]
        else:
            matches = [s for s in spec.steps if s.kind == step_name]
            if len(matches) != 1:
                kinds = ", ".join(f"{s.index}={s.kind}" for s in spec.steps)
                raise PipelineError(f"--set {item!r}: {'no' if not matches else 'more than one'} {step_name!r} step; "
                                    f"name it by number ({kinds})")
            step = matches[0]
        step.option_lines.pop(option, None)  # no longer the file's line
        if not text.strip():
            step.options.pop(option, None)
            continue
        try:
            value = _load_text(text, f"--set {item!r}")
        except PipelineError:
            value = text
        step.options[option] = value
    spec.overrides.extend(items)
    return spec
