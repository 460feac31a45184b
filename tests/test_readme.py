"""The README's examples marked as runnable run as printed, offline, in one fresh directory, in order.

A marked ```bash block runs with the virtual environment's scripts first on PATH and ``recipes/``
linked into the directory (its commands are written from the repository root).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = "<!-- runs as printed -->"


def runnable_blocks() -> list[tuple[str, str]]:
    """``(language, code)`` of every ```python / ```bash block that directly follows the marker line."""
    pattern = re.compile(re.escape(MARKER) + r"\s*\n```(python|bash)\n(.*?)\n```", re.DOTALL)
    return pattern.findall(README.read_text())


def test_the_first_use_example_is_marked_runnable():
    use = README.read_text().split("## Use", 1)[1]
    assert use.split("```python", 1)[0].rstrip().endswith(MARKER)
    assert [language for language, _ in runnable_blocks()].count("python") >= 2


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("readme")
    (directory / "recipes").symlink_to(ROOT / "recipes")
    return directory


@pytest.mark.parametrize("index", range(len(runnable_blocks())))
def test_readme_example_runs_as_printed(index, workdir):
    language, code = runnable_blocks()[index]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(workdir / "hf_home")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    command = [sys.executable, "-c", code] if language == "python" else ["bash", "-euo", "pipefail", "-c", code]
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"README block {index} failed:\n{code}\n--- stderr ---\n{done.stderr[-4000:]}"
