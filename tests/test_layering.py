"""The package's import direction and its one door to `datasets` internals, read from the source.

Layers, bottom to top: ``ops`` (and ``version``) → ``embed``, ``score``, ``data``, ``corrupt``,
``dynamics``, ``provenance`` → ``select`` → ``hub``, ``cli``; ``recipes`` (the demo, the trainer core,
the benchmarks) sit above the whole package and no ``hf_prune`` module imports them. A module may
import its own layer and the ones below, never one above; imports inside functions and under
``TYPE_CHECKING`` count too, so a lazy import cannot hide a cycle. The recipes and benchmarks import
each other as the package they are (no ``sys.path`` edits, no loading files by path).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_prune"
RECIPES = PACKAGE.parent / "recipes"
LAYERS = [
    {"ops", "version", "parallel"},  # parallel: the executor switch, below everything that splits work
    {"embed", "score", "data", "corrupt", "dynamics", "provenance"},
    {"select"},
    {"hub", "pipeline", "cli", ""},  # "": the package root, which can reach everything in hf_prune
]
ABOVE_THE_PACKAGE = "recipes"
# Dataset internals: only hf_prune/ops/arrow.py may touch them.
PRIVATE = {"_indices", "_fingerprint", "_info", "_data", "_format_type", "_format_kwargs", "_format_columns",
           "_output_all_columns", "_split", "_arrow_column"}
ARROW_MODULE = "hf_prune.ops.arrow"


def layer_of(module: str) -> int:
    parts = module.split(".")
    if parts[0] == ABOVE_THE_PACKAGE:
        return len(LAYERS)
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
    return [(line, name) for line, name in found if name.split(".")[0] in ("hf_prune", ABOVE_THE_PACKAGE)]


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


def test_the_old_top_level_modules_are_gone():
    # demo and probe moved to recipes, nets to hf_prune.embed.cifar_resnet (the README's upgrade table).
    assert [name for name in ("demo", "probe", "nets") if (PACKAGE / f"{name}.py").exists()] == []
    import hf_prune as hp

    # Not offered lazily either: `hp.demo` is a plain AttributeError, not a failed import.
    assert [name for name in ("demo", "probe", "nets") if name in dir(hp) or hasattr(hp, name)] == []


def path_loading(files) -> list[str]:
    """Lines that edit ``sys.path`` or load a module from a file path instead of importing it."""
    bad = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("spec_from_file_location", "module_from_spec"):
                bad.append(f"{path}:{node.lineno} uses {node.attr}")
            if (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                    and node.value.id == "sys"):
                bad.append(f"{path}:{node.lineno} uses sys.path")
    return bad


def test_recipes_import_as_a_package():
    files = sorted(RECIPES.rglob("*.py"))
    assert path_loading(files) == []
    folders = {path.parent for path in files}
    assert sorted(str(f.relative_to(RECIPES.parent)) for f in folders if not (f / "__init__.py").exists()) == []


def test_path_loading_is_caught(tmp_path):
    bad, good = tmp_path / "bad.py", tmp_path / "good.py"
    bad.write_text("import sys\nimport importlib.util\nsys.path.insert(0, '..')\n"
                   "spec = importlib.util.spec_from_file_location('r', 'r.py')\n")
    good.write_text("import sys\nfrom recipes.benchmarks.references import herding\nprint(sys.argv)\n")
    assert len(path_loading([bad])) == 2 and path_loading([good]) == []


def test_recipes_are_installed_with_the_package(tmp_path):
    # From another directory, without PYTHONPATH: only the installed package can provide `recipes`.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("import recipes.image_classification, recipes.demo, recipes.benchmarks.references.herding, "
            "hf_prune; print(recipes.image_classification.__file__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).resolve() == (RECIPES / "image_classification.py").resolve()


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
        ("hf_prune.cli", "from recipes.demo import run_demo\n"),
        ("hf_prune", "import recipes\n"),
        ("hf_prune.embed.random_net", "def f():\n    from recipes.trainer.models import cifar_resnet\n"),
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
        ("from ..data.prompts import IGNORE_INDEX\n", "hf_prune.embed.lora_gradients", False),
    ]
    assert layering_violations(files) == []


def test_a_private_attribute_use_is_caught():
    assert private_uses([("def f(ds):\n    return ds._indices\n", "hf_prune.select._core", False)])
    assert private_uses([("from ..ops.columns import _arrow_column\n", "hf_prune.data.images", False)])
    assert private_uses([("def f(ds):\n    return ds._fingerprint\n", ARROW_MODULE, False)]) == []
