"""What a pipeline step can call, read from the Python API itself.

Every embedder class in `hf_prune.embed`, every scorer in `hf_prune.score`, every registered selector
(and ``combine``), every dataset-level corruption in `hf_prune.corrupt` and every ``load_*``/``build_*``
loader in `hf_prune.data` is a `Component`; its options are the parameters of its signature, with the
help text of its docstring's ``Args:`` section. The pipeline file's validation and the ``hf-prune
embed``/``score`` flags are both generated from these tables, so they cannot drift from the functions.

Each option is sorted into one of three roles by its name, the vocabulary's convention
(``../DESIGN.md``): an **input column** (``*_column``, read from the dataset), an **output column**
(``output_column``, ``*_output_column`` and the corruptions' flag/type columns, written to it) or a
plain **value**. Parameters that take Python objects (a module, a callable, an optimizer state) cannot
be written in a file and are left out, except the few the pipeline builds from text
(`OBJECT_OPTIONS`); parameters the docstring calls deprecated are left out too.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Option", "Component", "OBJECT_OPTIONS", "check_value", "embedders", "scorers", "selectors", "corruptions", "loaders",
           "tokenizers", "components"]

# Options whose Python value is an object that the pipeline builds from what the file says (see steps.py).
OBJECT_OPTIONS = {
    "model": "a Hub model id or local folder (from_pretrained)",
    "processor": "a Hub id or folder for AutoProcessor/AutoImageProcessor (default: the model's)",
    "tokenizer": "a Hub id or folder for AutoTokenizer (default: the model's)",
    "image_processor": "a Hub id or folder for AutoImageProcessor (default: the model's)",
    "config": "a transformers config as a mapping with `model_type` (AutoConfig.for_model)",
    "validation_gradients": "built by the pipeline from the step's `validation` load options",
}
# Output columns that do not follow the ``*output_column`` spelling.
_OUTPUT_NAMES = {"flag_column", "type_column", "original_column", "duplicate_column", "rank_column"}
# `*_column` parameters that name a column of some other dataset, not of the step's input.
_NOT_INPUT = {"validation_column"}
# Annotations that no file can express.
_OBJECT_TYPES = re.compile(r"\b(Callable|Module|Any|Dataset|DatasetDict|Selector|torch\.device|torch\.dtype)\b")
# What a value read from YAML/JSON can be, per annotation alternative (the others are not checked).
_BASIC_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "os.PathLike": (str,),
                "None": (type(None),), "dict": (dict,), "list": (list,)}
_CONTAINERS = {"Sequence": (list,), "tuple": (list,), "list": (list,), "Mapping": (dict,), "dict": (dict,)}
_ARG_LINE = re.compile(r"^(\s*)([\w][\w, ]*):\s*(.*)$")


@dataclass(frozen=True)
class Option:
    """One keyword a component takes.

    Attributes:
        name: the parameter name (the key in a pipeline file, ``--name-with-dashes`` on the command line).
        role: ``"input"`` (a column read), ``"output"`` (a column written), ``"value"`` or ``"object"``
            (built by the pipeline from text, see `OBJECT_OPTIONS`).
        default: the signature's default; `Option.required` when there is none.
        annotation: the annotation as text (``""`` when there is none).
        help: the docstring's description of the parameter.

    Example:
        >>> scorers()["ssp"].options["n_clusters"].required
        True
    """

    name: str
    role: str
    default: Any
    annotation: str
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


@dataclass(frozen=True)
class Component:
    """A callable a step can name: its kind, name, the callable, options and one-line summary.

    Example:
        >>> info = embedders()["PixelEmbedder"]
        >>> sorted(o.name for o in info.inputs())
        ['image_column']
    """

    kind: str
    name: str
    fn: Callable[..., Any]
    options: dict[str, Option] = field(default_factory=dict)
    summary: str = ""
    takes_any: bool = False  # it takes **kwargs, so any other key is passed on

    def inputs(self) -> list[Option]:
        """The options that name a column the component reads."""
        return [o for o in self.options.values() if o.role == "input"]

    def outputs(self) -> list[Option]:
        """The options that name a column the component writes."""
        return [o for o in self.options.values() if o.role == "output"]


def _docstring_args(doc: str) -> dict[str, str]:
    """``{parameter: description}`` from a Google-style ``Args:`` section (``a, b: text`` names both)."""
    found: dict[str, str] = {}
    lines = inspect.cleandoc(doc or "").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() in ("Args:", "Arguments:", "Parameters:"))
    except StopIteration:
        return found
    indent, current = None, []
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        match = _ARG_LINE.match(line)
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        if depth < indent:
            break  # the next section
        if match and depth == indent:
            current = [name.strip() for name in match.group(2).split(",")]
            for name in current:
                found[name] = match.group(3).strip()
        else:
            for name in current:
                found[name] = f"{found[name]} {line.strip()}".strip()
    return found


def _alternatives(annotation: str) -> list[str]:
    """The top-level ``|`` alternatives of an annotation's text (brackets kept whole)."""
    parts, depth, current = [], 0, ""
    for char in annotation:
        depth += char == "["
        depth -= char == "]"
        if char == "|" and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [p for p in [*parts, current.strip()] if p]


def _writable(alternative: str) -> bool:
    """Whether a file can hold a value of this annotation alternative (a container of Datasets cannot)."""
    base = alternative.split("[", 1)[0].strip()
    if base in _CONTAINERS:
        return not re.search(r"\b(Dataset|DatasetDict|Module)\b", alternative)
    return alternative != "None" and not _OBJECT_TYPES.search(alternative)


def _value_types(annotation: str) -> tuple[type, ...] | None:
    """The Python types a file value may have for this annotation, or ``None`` when it is not checked."""
    allowed: list[type] = []
    for alternative in _alternatives(annotation):
        base = alternative.split("[", 1)[0].strip()
        if alternative in _BASIC_TYPES:
            allowed += _BASIC_TYPES[alternative]
        elif base in _CONTAINERS and _writable(alternative):
            allowed += _CONTAINERS[base]
        elif not _writable(alternative):
            continue  # an object alternative: a file value is one of the others
        else:
            return None  # a type alias (``Epochs``) or anything else: left to the function's own checks
    return tuple(allowed) or None


def check_value(option: Option, value: Any) -> str | None:
    """Why ``value`` (read from a file) cannot be ``option``'s, from its annotation; ``None`` when it can.

    Example:
        >>> check_value(scorers()["ssp"].options["n_clusters"], "ten")
        "`n_clusters` takes int, got 'ten' (str)"
    """
    if option.role == "object" or not option.annotation:
        return None
    types = _value_types(option.annotation)
    if types is None:
        return None
    if isinstance(value, bool) and bool not in types:
        ok = False  # True is an int to Python, never a count or a fraction
    else:
        ok = isinstance(value, types)
    if ok:
        return None
    names = " or ".join(a for a in _alternatives(option.annotation) if a == "None" or _writable(a))
    return f"`{option.name}` takes {names}, got {value!r} ({type(value).__name__})"


def _role(name: str) -> str:
    if name in OBJECT_OPTIONS:
        return "object"
    if name == "output_column" or name.endswith("output_column") or name in _OUTPUT_NAMES:
        return "output"
    if name.endswith("_column") and name not in _NOT_INPUT:
        return "input"
    return "value"


def _component(kind: str, name: str, fn: Callable[..., Any], *, skip: tuple[str, ...] = (),
               outputs: tuple[str, ...] = ()) -> Component:
    target = fn.__init__ if inspect.isclass(fn) else fn
    params = list(inspect.signature(fn).parameters.values())
    helps = {**_docstring_args(fn.__doc__ or ""), **(_docstring_args(target.__doc__ or "") if target is not fn else {})}
    options, takes_any = {}, False
    for p in params:
        if p.kind is p.VAR_KEYWORD:
            takes_any = True
            continue
        if p.kind is p.VAR_POSITIONAL or p.name in skip:
            continue
        text = helps.get(p.name, "")
        if "deprecated" in text.lower():
            continue
        annotation = "" if p.annotation is p.empty else str(p.annotation)
        role = "output" if p.name in outputs else _role(p.name)
        if role != "object" and annotation and not any(_writable(a) for a in _alternatives(annotation)):
            continue  # a module, callable, Dataset or state object: nothing a file can write
        options[p.name] = Option(p.name, role, p.default, annotation, text)
    summary = (inspect.cleandoc(fn.__doc__ or "").splitlines() or [""])[0]
    return Component(kind, name, fn, options, summary, takes_any)


@functools.cache
def embedders() -> dict[str, Component]:
    """Every embedder class exported by `hf_prune.embed`, by class name.

    Example:
        >>> "ImageEmbedder" in embedders()
        True
    """
    from .. import embed
    from ..embed._base import Embedder

    found = {}
    for name in embed.__all__:
        obj = getattr(embed, name)
        if inspect.isclass(obj) and issubclass(obj, Embedder):
            found[name] = _component("embedder", name, obj)
    return found


@functools.cache
def scorers() -> dict[str, Component]:
    """Every score function exported by `hf_prune.score`, by name.

    Example:
        >>> sorted(scorers())[:3]
        ['aum', 'clip_score', 'dual']
    """
    from .. import score

    return {name: _component("scorer", name, getattr(score, name), skip=("dataset",)) for name in score.__all__}


@functools.cache
def selectors() -> dict[str, Component]:
    """Every registered selector and ``combine``, by name (the names `hf_prune.select.spec` accepts).

    Example:
        >>> "infomax" in selectors() and "combine" in selectors()
        True
    """
    from ..select import registry
    from ..select.combine import combine

    found = {info.name: _component("selector", info.name, info.fn, skip=("dataset",)) for info in registry.selectors()}
    found["combine"] = _component("selector", "combine", combine, skip=("dataset",))
    return found


@functools.cache
def corruptions() -> dict[str, Component]:
    """The Dataset-level corruptions of `hf_prune.corrupt` that a file can configure (no model argument).

    Example:
        >>> "symmetric_label_noise" in corruptions()
        True
    """
    from .. import corrupt

    found = {}
    for name in corrupt.__all__:
        fn = getattr(corrupt, name)
        if not callable(fn) or inspect.isclass(fn):
            continue
        params = list(inspect.signature(fn).parameters)
        if not params or params[0] != "dataset":
            continue
        info = _component("corruption", name, fn, skip=("dataset",))
        # Adversarial attacks need a trained model object, which a file cannot name.
        if not any(o.role == "object" for o in info.options.values()):
            found[name] = info
    return found


@functools.cache
def loaders() -> dict[str, Component]:
    """The offline/Hub loaders of `hf_prune.data` (``load_x`` as ``x``, ``build_x`` as ``x``).

    Example:
        >>> "fashion_mnist" in loaders()
        True
    """
    from .. import data

    found = {}
    for name in data.__all__:
        fn = getattr(data, name)
        if callable(fn) and not inspect.isclass(fn) and name.startswith(("load_", "build_")):
            found[name.split("_", 1)[1]] = _component("loader", name.split("_", 1)[1], fn,
                                                        skip=("return_stats", "return_summary", "progress"))
    return found


@functools.cache
def tokenizers() -> dict[str, Component]:
    """The tokenisation steps of `hf_prune.data` (``messages`` → ``tokenize_messages``, ``prompt_response``).

    Example:
        >>> sorted(tokenizers())
        ['messages', 'prompt_response']
    """
    from .. import data

    return {
        name.removeprefix("tokenize_"): _component("tokenizer", name.removeprefix("tokenize_"), getattr(data, name),
                                                   skip=("dataset", "return_stats"),
                                                   outputs=("input_ids_column", "labels_column"))
        for name in ("tokenize_messages", "tokenize_prompt_response")
    }


def components(kind: str) -> dict[str, Component]:
    """The table for one kind: ``embedder``, ``scorer``, ``selector``, ``corruption``, ``loader``, ``tokenizer``.

    Example:
        >>> components("scorer") is scorers()
        True
    """
    tables = {"embedder": embedders, "scorer": scorers, "selector": selectors, "corruption": corruptions,
              "loader": loaders, "tokenizer": tokenizers}
    if kind not in tables:
        raise ValueError(f"unknown component kind {kind!r}; expected one of {', '.join(tables)}")
    return tables[kind]()
