import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from threadpoolctl import threadpool_info

import recipes.demo as demo
from recipes.demo import DEMO_FAMILIES, demo_selectors, plot_results, run_demo
from recipes.trainer.probe import LinearProbe, linear_probe_accuracy


def _features(x, y):
    return Dataset.from_dict({"emb": np.asarray(x, dtype=np.float32).tolist(), "label": list(y)})


def test_linear_probe_on_separable_and_single_class_subsets():
    train = _features([[0, 0], [0, 1], [5, 5], [5, 6]], [0, 0, 1, 1])
    test = _features([[0, 0.5], [5, 5.5], [4.5, 5]], [0, 1, 1])
    assert linear_probe_accuracy(train, test, embedding_column="emb") == 1.0
    # A subset with one class predicts that class: accuracy is that class's share of the test set.
    one_class = _features([[5, 5], [5, 6]], [1, 1])
    assert linear_probe_accuracy(one_class, test, embedding_column="emb") == pytest.approx(2 / 3)
    probe = LinearProbe(test, embedding_column="emb")
    assert probe.accuracy(train) == 1.0 and probe.accuracy(one_class) == pytest.approx(2 / 3)


def test_linear_probe_string_labels_when_the_subset_misses_a_class():
    # Coding labels per dataset would map the subset's "b"/"c" to 0/1 and the test set's to 1/2.
    train = _features([[0, 0], [0, 1], [5, 5], [5, 6]], ["b", "b", "c", "c"])
    test = _features([[0, 0.5], [5, 5.5], [-9, -9]], ["b", "c", "a"])
    assert linear_probe_accuracy(train, test, embedding_column="emb") == pytest.approx(2 / 3)


def test_linear_probe_rejects_mismatched_features_and_empty_subsets():
    test = _features([[0, 0.5], [5, 5.5]], [0, 1])
    probe = LinearProbe(test, embedding_column="emb")
    with pytest.raises(ValueError, match="'emb'"):
        probe.accuracy(_features([[0, 0, 0], [1, 1, 1]], [0, 1]))
    with pytest.raises(ValueError, match="empty"):
        probe.accuracy(test.select([]))


def test_demo_runs_every_selector_and_writes_table_json_and_plot(tmp_path):
    results = run_demo(fractions=(0.3,), seeds=(0,), epochs=4, max_train_rows=400, output_dir=str(tmp_path))
    assert set(results) == set(demo_selectors(window=2))
    accuracies = {name: r[0.3][0] for name, r in results.items()}
    # 120 of 400 rows at 10 classes (chance 0.1): every selector's probe is far above chance (the lowest,
    # TypiClust, measured 0.52), and the typical one is close to random's.
    assert min(accuracies.values()) > 0.4 and np.median(list(accuracies.values())) > 0.8
    assert accuracies["random"] > 0.8  # 120 digits rows already give a decent pixel probe
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["accuracy"]["random"]["0.3"] == [accuracies["random"]]
    table = (tmp_path / "results.md").read_text()
    assert "| Gram–Schmidt |" in table
    # One seed: no spread to show, and the note says so instead of printing "± 0.0".
    assert "±" not in table.split("\n\n")[1] and "One seed" in table
    assert (tmp_path / "accuracy_vs_fraction.png").read_bytes()[:4] == b"\x89PNG"


class _RecordingBar:
    """Stands in for tqdm: records the total, every description and every update."""

    made: list = []

    def __init__(self, *args, total=None, **kwargs):
        self.total, self.descriptions, self.updates, self.lines = total, [], 0, []
        _RecordingBar.made.append(self)

    def set_description(self, desc):
        self.descriptions.append(desc)

    def update(self, n=1):
        self.updates += n

    def write(self, line):
        self.lines.append(line)
        print(line)

    def close(self):
        pass


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    _RecordingBar.made = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "tqdm", _RecordingBar)
        results = run_demo(
            fractions=(0.5, 0.2), seeds=(0, 1), epochs=2, max_train_rows=200, output_dir=str(out),
            selectors=["random", "herding"],
        )
    (bar,) = _RecordingBar.made
    return results, bar, out


def test_progress_names_selector_budget_and_seed_with_the_right_total(small_run):
    results, bar, _ = small_run
    assert set(results) == {"random", "herding"}
    expected = [f"[{i}/2] {name} {f} seed {s}" for i, name in enumerate(["random", "herding"], 1)
                for f in ("20%", "50%") for s in (0, 1)]
    assert bar.descriptions == expected
    assert bar.total == bar.updates == 8
    # One summary line per selector, naming it.
    assert [line.split(":")[0] for line in bar.lines] == ["random", "herding"]


def test_selectors_with_the_same_rows_for_every_seed_are_marked(small_run, capsys):
    results, _, out = small_run
    table = (out / "results.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    # herding draws nothing at random: the same rows (and accuracy) for both seeds, marked † without a ±.
    assert results["herding"][0.2][0] == results["herding"][0.2][1]
    assert rows["herding"].count("†") == 2 and "±" not in rows["herding"]
    assert rows["random"].count("±") == 2 and "†" not in rows["random"]
    footnote = table.split("\n\n")[-1]
    assert footnote.startswith("† every seed selected exactly the same rows") and "herding" in footnote
    assert "random" not in footnote.split("so there is no spread to show:")[1].split(".")[0]
    saved = json.loads((out / "results.json").read_text())
    assert saved["same_rows_for_every_seed"] == {"random": {"0.2": False, "0.5": False},
                                                 "herding": {"0.2": True, "0.5": True}}


def _fake_results(names, fractions):
    rng = np.random.default_rng(0)
    return {n: {f: list(rng.uniform(0.5, 1.0, size=2)) for f in fractions} for n in names}


def test_figure_has_one_panel_per_family_with_random_on_each(tmp_path):
    names = list(demo_selectors(window=2))
    # Every demo selector but the reference is on exactly one panel.
    listed = [n for family in DEMO_FAMILIES.values() for n in family]
    assert sorted(listed) == sorted(n for n in names if n != "random")
    fractions = [0.1, 0.5]
    same_rows = {n: dict.fromkeys(fractions, n == "herding") for n in names}
    fig = plot_results(_fake_results(names, fractions), fractions, 0.97, str(tmp_path / "f.png"), "t",
                       same_rows=same_rows)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == list(DEMO_FAMILIES)
    for ax, family in zip(panels, DEMO_FAMILIES.values()):
        labels = ax.get_legend_handles_labels()[1]
        assert labels[:2] == ["random (reference)", "full data (97.0%)"]
        assert [label.removesuffix(" †") for label in labels[2:]] == family
    assert "herding †" in panels[3].get_legend_handles_labels()[1]
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_figure_puts_unlisted_selectors_on_an_other_panel(tmp_path):
    fig = plot_results(_fake_results(["random", "herding", "mine"], [0.2]), [0.2], 0.9,
                       str(tmp_path / "f.png"), "t")
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["coverage and geometry baselines", "other"]


def test_demo_runs_on_one_thread_and_restores_the_settings(tmp_path, monkeypatch):
    seen = []

    def recording_random(d, f, s):
        blas = {info["num_threads"] for info in threadpool_info() if info["internal_api"] == "openblas"}
        seen.append((torch.get_num_threads(), blas))
        return demo.select.random(d, fraction=f, seed=s)

    monkeypatch.setattr(demo, "demo_selectors", lambda window: {"random": recording_random})
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_demo(fractions=(0.5,), seeds=(0,), epochs=2, max_train_rows=100, output_dir=str(tmp_path))
        assert seen == [(1, {1})]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_demo_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="`threads`"):
        run_demo(threads=0, output_dir=str(tmp_path))
    with pytest.raises(KeyError, match="`selectors`.*nope"):
        run_demo(selectors=["random", "nope"], output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="`seeds`"):
        run_demo(seeds=(), output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="`dataset`"):
        run_demo(dataset="cifar", selectors=["random"], output_dir=str(tmp_path))


def test_demo_command_line_options_reach_run_demo(tmp_path, capsys):
    out = tmp_path / "demo"
    code = demo.main(["--fractions", "0.3", "--seeds", "0", "--epochs", "2", "--max-train-rows", "300",
                      "--selectors", "random", "GM matching", "--threads", "1", "--output-dir", str(out)])
    assert code == 0
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["accuracy"]) == {"random", "GM matching"}
    assert saved["fractions"] == [0.3] and saved["seeds"] == [0] and saved["threads"] == 1
    assert demo.main(["--selectors", "nope", "--output-dir", str(tmp_path / "bad")]) == 2
    assert "unknown ['nope']" in capsys.readouterr().err


def test_demo_runs_as_a_module_and_as_the_console_script(tmp_path):
    # `bash scripts/dev.sh demo` runs `python -m recipes.demo`; pip installs `hf-prune-demo`.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for command in ([sys.executable, "-m", "recipes.demo"], [str(Path(sys.executable).parent / "hf-prune-demo")]):
        done = subprocess.run([*command, "--help"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "--max-train-rows" in done.stdout and "--threads" in done.stdout
