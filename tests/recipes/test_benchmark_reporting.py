import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from recipes.benchmarks import reproduce_fashion_mnist  # noqa: E402
from recipes.benchmarks.reporting import mean_std_table, save_with_shared_legend  # noqa: E402


def test_one_legend_entry_per_method_across_panels(tmp_path):
    fig, axes = plt.subplots(1, 2)
    axes[0].plot([0, 1], label="random")
    axes[0].plot([1, 0], label="infomax")
    axes[1].plot([0, 1], label="random")
    axes[1].plot([1, 1], label="semdedup")
    save_with_shared_legend(fig, axes, tmp_path / "fig.png")
    (legend,) = fig.legends
    assert [text.get_text() for text in legend.get_texts()] == ["random", "infomax", "semdedup"]
    assert Image.open(tmp_path / "fig.png").size[0] > 0
    assert not plt.fignum_exists(fig.number)  # closed, so loops over many plots do not pile up figures


def test_fashion_mnist_reproduction_plots_an_empty_result(tmp_path):
    # No runs yet: every panel is empty, the figure is still written (the report can be rebuilt at any time).
    reproduce_fashion_mnist.plot({"runs": {}, "cost": {}}, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_mean_std_table_scales_and_marks_missing_cells():
    summary = {"random": {0.1: {"mean": 0.5, "std": 0.01}}, "infomax": {0.1: {"mean": 0.625, "std": 0.0},
                                                                       1.0: {"mean": 0.9, "std": 0.02}}}
    assert mean_std_table(summary, [0.1, 1.0]).splitlines() == [
        "| method | 10% kept | 100% kept |",
        "|---|---|---|",
        "| random | 50.0 ± 1.0 | – |",
        "| infomax | 62.5 ± 0.0 | 90.0 ± 2.0 |",
    ]
    assert mean_std_table(summary, [0.1], header="budget", fmt=lambda c: f"{c} ex.").splitlines()[0] == "| budget | 0.1 ex. |"


def test_results_store_resumes_only_with_the_same_settings(tmp_path):
    from recipes.benchmarks.results_store import load_results, run_slug, save_results

    fresh = load_results(tmp_path, {"pool_size": 10}, cost={})
    assert fresh == {"runs": {}, "cost": {}, "settings": {"pool_size": 10}}
    fresh["runs"]["random|0.1|0"] = {"accuracy": 0.5}
    save_results(tmp_path, fresh)
    assert load_results(tmp_path, {"pool_size": 10})["runs"] == {"random|0.1|0": {"accuracy": 0.5}}
    with pytest.raises(SystemExit, match="was made with .*pool_size.*10"):
        load_results(tmp_path, {"pool_size": 20})
    # --report-only reports the settings the runs were made with, not the new ones
    assert load_results(tmp_path, {"pool_size": 20}, report_only=True)["settings"] == {"pool_size": 10}
    assert run_slug("D² (CLIP score)") == "D2__CLIP_score_" and run_slug("random") == "random"


def test_prepare_run_applies_the_shared_options(tmp_path, capsys):
    from argparse import Namespace

    from recipes.benchmarks.results_store import prepare_run

    def args(**kw):
        base = {"gpu": False, "quick": False, "methods": None, "fractions": [0.1], "threads": None,
                "output_dir": str(tmp_path / "out")}
        return Namespace(**{**base, **kw})

    assert prepare_run(args(gpu=True), methods=["random"], quick={}, gpu_commands="accelerate launch ...") is None
    assert "accelerate launch ..." in capsys.readouterr().out and not (tmp_path / "out").exists()
    quick = args(quick=True)
    assert prepare_run(quick, methods=["random"], quick={"fractions": [0.3]}, gpu_commands="") == tmp_path / "out"
    assert quick.fractions == [0.3] and (tmp_path / "out").is_dir()
    with pytest.raises(ValueError, match=r"--methods: unknown \['InfoMx'\]"):
        prepare_run(args(methods=["InfoMx"]), methods=["InfoMax"], quick={}, gpu_commands="")
    with pytest.raises(ValueError, match="--fractions must lie in"):
        prepare_run(args(fractions=[1.0]), methods=["random"], quick={}, gpu_commands="")


def test_group_by_method_orders_methods_and_fractions_and_aggregates_seeds():
    from recipes.benchmarks.reporting import group_by_method

    runs = [("other", 0.3, 0.2), ("InfoMax", 0.3, 0.6), ("random", 0.1, 0.5), ("InfoMax", 0.1, 0.4),
            ("random", 0.1, 0.7)]
    summary = group_by_method(runs, ["random", "InfoMax"])
    assert list(summary) == ["random", "InfoMax", "other"]  # the given order, unknown names last
    assert list(summary["InfoMax"]) == [0.1, 0.3]
    assert summary["random"][0.1]["mean"] == pytest.approx(0.6) and summary["random"][0.1]["n"] == 2


def test_plot_methods_vs_fraction_draws_one_line_per_method_and_the_baseline(tmp_path):
    from recipes.benchmarks.reporting import group_by_method, plot_methods_vs_fraction

    summary = group_by_method([("full pool", 1.0, 0.9), ("random", 0.1, 0.5), ("random", 0.3, 0.6),
                               ("InfoMax", 0.1, 0.7)], ["full pool", "random", "InfoMax"])
    fig, ax = plt.subplots()
    plot_methods_vs_fraction(ax, summary, baseline="full pool", baseline_fraction=1.0, highlight=["InfoMax"])
    assert ax.get_legend_handles_labels()[1] == ["full pool", "random", "InfoMax"]
    widths = {container.get_label(): container.lines[0].get_linewidth() for container in ax.containers}
    assert widths == {"random": 1.2, "InfoMax": 2.5}  # the highlighted method drawn thicker
    assert ax.lines[-1].get_ydata()[0] == pytest.approx(90.0)  # the baseline at its mean, in %
    plt.close(fig)
