import numpy as np
import pytest
from datasets import Dataset, load_from_disk

from recipes.benchmarks import reproduce_clip_pretraining as bench
from recipes.benchmarks.reproduce_clip_pretraining import FULL, QUICK, build_pool, claim_lines, main


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce_clip")
    return out, main(["--quick", "--output-dir", str(out)])


def test_quick_runs_end_to_end_and_trains_on_the_selected_rows(quick):
    out, results = quick
    assert set(results["runs"]) == {f"{FULL}|1.0|0", "random|0.3|0", "InfoMax|0.3|0"}
    full, subset = results["runs"][f"{FULL}|1.0|0"], results["runs"]["InfoMax|0.3|0"]
    assert full["rows"] == QUICK["num_train"] and subset["rows"] == round(0.3 * QUICK["num_train"])
    assert full["corrupted kept"] == pytest.approx(0.3)  # the pool's 30% web noise, as the recipe built it
    # Equal iterations: the 30% subset trains for ~1/0.3 as many epochs as the full pool.
    assert (full["epochs"], subset["epochs"]) == (1, 3)
    for entry in results["runs"].values():
        assert 0.0 <= entry["zero-shot mean"] <= 1.0 and 0.0 <= entry["i2t R@5"] <= 1.0
        assert sum(entry["corrupted by kind"].values()) == pytest.approx(entry["corrupted kept"])
    # The subset's row_id index the recipe's pool: its flags are the recipe's count (checked in the run too).
    sub = load_from_disk(str(out / "subsets" / "InfoMax_0.3_0"))
    pool = build_pool(type("A", (), {"num_train": QUICK["num_train"], "num_test": QUICK["num_test"]})())
    kept = np.array(pool["is_corrupted"])[np.array(sub["row_id"])]
    assert kept.mean() == pytest.approx(subset["corrupted kept"])
    scored = load_from_disk(str(out / "scored_pool"))
    assert np.array_equal(np.array(scored["is_corrupted"]), np.array(pool["is_corrupted"]))
    report = (out / "report.md").read_text()
    assert "| InfoMax |" in report and "not measured at 10% kept" in report
    assert (out / "metrics_vs_fraction.png").stat().st_size > 0


def test_rerun_resumes_without_training(quick, monkeypatch):
    out, results = quick
    import recipes.benchmarks.reproduce_clip_pretraining as bench

    monkeypatch.setattr(bench, "run_recipe", lambda argv: pytest.fail("trained again"))
    again = main(["--quick", "--output-dir", str(out)])
    assert again["runs"] == results["runs"]
    # --report-only without the run's options reports the settings the runs were made with.
    assert main(["--report-only", "--output-dir", str(out)])["settings"]["num_train"] == QUICK["num_train"]
    with pytest.raises(SystemExit, match="made with"):
        main(["--quick", "--schedule", "epochs", "--output-dir", str(out)])


def _entry(value):
    return {"zero-shot mean": value, "i2t R@5": value, "t2i R@5": 1.0 - value}


def test_claim_is_marked_agree_or_disagree_from_the_seed_means():
    runs = {}
    for seed, (ours, d2, clustering) in enumerate([(0.5, 0.4, 0.3), (0.7, 0.4, 0.5)]):
        runs[f"InfoMax|0.1|{seed}"] = _entry(ours)
        runs[f"D² (CLIP score)|0.1|{seed}"] = _entry(d2)
        runs[f"Clustering + CLIP|0.1|{seed}"] = _entry(clustering)
    lines = claim_lines({"runs": runs})
    assert (
        lines[0].startswith("- zero-shot mean: **agree**") and "(+20.0)" in lines[0] and "n = 2" in lines[0]
    )
    assert lines[2].startswith("- t2i R@5: **disagree**")  # 1 - value: InfoMax is the lowest


def test_bad_options_and_gpu_commands(tmp_path, capsys):
    with pytest.raises(ValueError, match="--methods"):
        main(["--methods", "Infomax", "--output-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--fractions"):
        main(["--fractions", "1.0", "--output-dir", str(tmp_path)])
    assert main(["--gpu"]) == {}
    printed = capsys.readouterr().out
    assert "clip_vitb32_cc12m.yaml" in printed and "hp.select.infomax" in printed


def test_every_method_selects_from_a_pool_with_negative_clip_scores():
    from hf_prune.ops.columns import add_column
    from recipes.benchmarks.reproduce_clip_pretraining import methods

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(200, 8)).astype(np.float32)
    pool = add_column(
        Dataset.from_dict(
            {
                "clip_score": rng.uniform(-0.8, 0.8, 200).tolist(),
                "is_corrupted": (np.arange(200) % 3 == 0).tolist(),
            }
        ),
        "image_emb",
        emb / np.linalg.norm(emb, axis=1, keepdims=True),
    )
    for name, select in methods().items():
        sub = select(pool, 0.1, 0)
        assert len(sub) == 20 and len(set(sub["row_id"])) == 20, name
    assert pool.column_names == [
        "clip_score",
        "is_corrupted",
        "image_emb",
    ]  # nothing added to the caller's pool


def test_resuming_with_another_reference_clip_is_refused():
    stored = {"reference_zero_shot_mean": 0.547, "clip_score_clean_mean": 0.5217, "embed_s": 17.0}
    bench.check_same_reference(None, stored)
    bench.check_same_reference(stored, {**stored, "embed_s": 30.0})  # timings may differ
    with pytest.raises(SystemExit, match="clip_score_clean_mean"):
        bench.check_same_reference(stored, {**stored, "clip_score_clean_mean": 0.5216})
