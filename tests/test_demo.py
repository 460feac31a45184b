import json

import numpy as np
import pytest
from datasets import Dataset

from hf_prune.demo import demo_selectors, run_demo
from hf_prune.probe import linear_probe_accuracy


def _features(x, y):
    return Dataset.from_dict({"emb": np.asarray(x, dtype=np.float32).tolist(), "label": list(y)})


def test_linear_probe_on_separable_and_single_class_subsets():
    train = _features([[0, 0], [0, 1], [5, 5], [5, 6]], [0, 0, 1, 1])
    test = _features([[0, 0.5], [5, 5.5], [4.5, 5]], [0, 1, 1])
    assert linear_probe_accuracy(train, test, feature_column="emb") == 1.0
    # A subset with one class predicts that class: accuracy is that class's share of the test set.
    one_class = _features([[5, 5], [5, 6]], [1, 1])
    assert linear_probe_accuracy(one_class, test, feature_column="emb") == pytest.approx(2 / 3)


def test_demo_runs_every_selector_and_writes_table_json_and_plot(tmp_path):
    results = run_demo(fractions=(0.3,), seeds=(0,), epochs=4, max_train_rows=400, output_dir=str(tmp_path))
    assert set(results) == set(demo_selectors(window=2))
    accuracies = {name: r[0.3][0] for name, r in results.items()}
    assert all(0.0 <= a <= 1.0 for a in accuracies.values())
    assert accuracies["random"] > 0.8  # 120 digits rows already give a decent pixel probe
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["accuracy"]["random"]["0.3"] == [accuracies["random"]]
    assert "| Gram–Schmidt |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "accuracy_vs_fraction.png").read_bytes()[:4] == b"\x89PNG"
