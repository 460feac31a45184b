"""The package's import direction and its one door to `datasets` internals, read from the source.

Layers, bottom to top: ``ops`` (and ``version``) → ``embed``, ``score``, ``data``, ``corrupt``,
``dynamics``, ``provenance``, ``probe``, ``nets`` → ``select`` → ``hub``, ``cli``, ``demo``. A module
may import its own layer and the ones below, never one above; imports inside functions and under
``TYPE_CHECKING`` count too, so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_prune"
LAYERS = [
    {"ops", "version"},
    {"embed", "score", "data", "corrupt", "dynamics", "provenance", "probe", "nets"},
    {"select"},
    {"hub", "cli", "demo", ""},  # "": the package root, which can reach everything
]
# Dataset internals: only hf_prune/ops/arrow.py may touch them.
PRIVATE = {"_indices", "_fingerprint", "_info", "_data", "_format_type", "_format_kwargs", "_format_columns",
           "_output_all_columns", "_split", "_arrow_column"}
ARROW_MODULE = "hf_prune.ops.arrow"


def layer_of(module: str) -> int:
    parts = module.split(".")
    assert parts[0] == "hf_prune", module
    top = parts[1] if len(parts) > 1 else ""
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"{module}: the package {top!r} has no layer; add it to LAYERS in this test")


def module_name(path: Path) -> str:
    parts = ["hf_prune", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, absolute hf_prune module)`` for every import in ``source``, at any depth."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            # `from . import select` imports the submodule named after `import`.
            found += [(node.lineno, f"{target}.{alias.name}") if not node.module else (node.lineno, target)
                      for alias in node.names]
    return [(line, name) for line, name in found if name == "hf_prune" or name.startswith("hf_prune.")]


def package_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, module_name(path), path.name == "__init__.py"


def layering_violations(files) -> list[str]:
    bad = []
    for path, module, is_package in files:
        source = path.read_text() if isinstance(path, Path) else path
        mine = layer_of(module)
        for line, target in imported_modules(source, module, is_package):
            if layer_of(target) > mine:
                bad.append(f"{module}:{line} imports {target} (a layer above)")
    return bad


def private_uses(files) -> list[str]:
    bad = []
    for path, module, _ in files:
        if module == ARROW_MODULE:
            continue
        source = path.read_text() if isinstance(path, Path) else path
        for node in ast.walk(ast.parse(source)):
            name = None
            if isinstance(node, ast.Attribute):
                name = node.attr
            elif isinstance(node, ast.Name):
                name = node.id
            elif isinstance(node, ast.alias):
                name = node.name
            if name in PRIVATE:
                bad.append(f"{module}:{getattr(node, 'lineno', '?')} uses {name}")
    return bad


def test_imports_point_down():
    assert layering_violations(package_modules()) == []


def test_only_ops_arrow_touches_dataset_internals():
    assert private_uses(package_modules()) == []


@pytest.mark.parametrize(
    "module, source",
    [
        ("hf_prune.score.ssp", "from ..select import random\n"),
        ("hf_prune.score.ssp", "def f():\n    from ..select._core import run_selection\n"),
        ("hf_prune.corrupt._common", "from .. import select\n"),
        ("hf_prune.ops.knn", "from ..score import dual\n"),
        ("hf_prune.data.digits", "import hf_prune.select.spec\n"),
        ("hf_prune.select.dual", "from ..hub import push_subset\n"),
        ("hf_prune.ops.columns", "import hf_prune as hp\n"),
    ],
)
def test_an_upward_import_is_caught(module, source):
    assert layering_violations([(source, module, False)]), source


def test_allowed_imports_pass():
    files = [
        ("from ..score import dual\nfrom ..ops.checks import check_seed\n", "hf_prune.select.dual", False),
        ("from .select import random\nfrom . import hub\n", "hf_prune.cli", False),
        ("from ..data.images import decode_images\n", "hf_prune.corrupt._common", False),
        ("from .checks import check_columns\n", "hf_prune.ops.arrow", False),
    ]
    assert layering_violations(files) == []


def test_a_private_attribute_use_is_caught():
    assert private_uses([("def f(ds):\n    return ds._indices\n", "hf_prune.select._core", False)])
    assert private_uses([("from ..ops.columns import _arrow_column\n", "hf_prune.data.images", False)])
    assert private_uses([("def f(ds):\n    return ds._fingerprint\n", ARROW_MODULE, False)]) == []
