"""The example pipelines of recipes/pipelines run end to end offline (``--offline-models``) at a tiny size."""

from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Image, load_from_disk

import hf_prune as hp
from hf_prune.cli import main
from hf_prune.pipeline import read_pipeline, run_pipeline

PIPELINES = Path(__file__).resolve().parents[1] / "recipes" / "pipelines"


def tiny_fashion_mnist(path, rows=100):
    """A saved stand-in for Fashion-MNIST's train split: 28×28 grayscale images, 10 classes."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(rows, 28, 28), dtype=np.uint8)
    features = Features({"image": Image(), "label": ClassLabel(num_classes=10)})
    Dataset.from_dict({"image": list(images), "label": [i % 10 for i in range(rows)]}, features=features).save_to_disk(path)


def test_image_classification_pipeline_runs_offline_from_the_command_line(tmp_path, capsys):
    tiny_fashion_mnist(tmp_path / "fmnist")
    # The file as it is, with its Fashion-MNIST load swapped for a 100-row stand-in and the output in tmp_path.
    argv = ["run", str(PIPELINES / "image_classification.yaml"), "--offline-models", "--cache-dir",
            str(tmp_path / "cache"), "--no-progress", "--set", "load.builtin=", "--set", "load.split=", "--set",
            "load.rows=", "--set", f"load.path={tmp_path / 'fmnist'}", "--set", f"save.path={tmp_path / 'subset'}"]
    assert main(argv) == 0
    subset = load_from_disk(tmp_path / "subset")
    assert len(subset) == 10 and sorted(subset["label"]) == list(range(10))  # 10% per class
    steps = hp.provenance(subset, warn=False)
    assert [s["method"] for s in steps] == ["embed.RandomNetEmbedder", "score.ssp", "infomax", "pipeline"]
    assert steps[-1]["params"]["text"] == (PIPELINES / "image_classification.yaml").read_text()
    assert steps[-1]["params"]["overrides"][-1] == f"save.path={tmp_path / 'subset'}"
    capsys.readouterr()
    assert main(argv) == 0  # everything cached the second time
    assert "computed none" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize(("name", "size", "kept"), [
    ("image_classification", {"rows": 200}, 20),
    ("image_text", {"rows": 200}, 48),
    ("instructions", {"pool_size": 40}, 1),
])
def test_example_pipeline_runs_offline(tmp_path, name, size, kept):
    spec = read_pipeline(PIPELINES / f"{name}.yaml")
    spec.steps[0].options.update(size)
    for step in spec.steps:
        if "validation" in step.options:
            step.options["validation"].update(size)
        if step.kind == "save":
            step.options["path"] = str(tmp_path / "subset")
    result = run_pipeline(spec, cache_dir=str(tmp_path / "cache"), offline_models=True, progress=False)
    assert len(load_from_disk(tmp_path / "subset")) == len(result.dataset) == kept
    assert result.computed == len(spec.steps) - 1
