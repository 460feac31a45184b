import json

import numpy as np
import pytest
from datasets import Dataset, DatasetDict, load_from_disk

import hf_prune as hp
from recipes.benchmarks import reproduce_instruction_tuning as bench
from recipes.benchmarks.reproduce_instruction_tuning import BASE, QUICK, claim_lines, main, methods


def _conversation(user, answer):
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def synthetic_pool(seed=0):
    """A small instruction pool: sums and word copies to prune, two target tasks (one multiple-choice)."""
    rng = np.random.default_rng(seed)
    words = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"]
    train = []
    for i in range(240):
        if i % 2:
            a, b = rng.integers(0, 9, 2)
            train.append(
                {
                    "messages": _conversation(f"What is {a} plus {b}?", str(a + b)),
                    "source": "sums",
                    "task": "sums",
                }
            )
        else:
            w = " ".join(rng.choice(words, 3))
            train.append({"messages": _conversation(f"Repeat: {w}", w), "source": "chat", "task": "copy"})
    targets = []
    for _ in range(22):
        a, b = rng.integers(0, 9, 2)
        wrong = str(a + b + 1)
        targets.append(
            {
                "messages": _conversation(f"What is {a} plus {b}? Options: {a + b}, {wrong}", str(a + b)),
                "source": "targets",
                "task": "sum_choice",
                "answer": str(a + b),
                "choices": [str(a + b), wrong],
            }
        )
        w = str(rng.choice(words))
        targets.append(
            {
                "messages": _conversation(f"Say {w}", w),
                "source": "targets",
                "task": "say",
                "answer": w,
                "choices": [],
            }
        )
    train = Dataset.from_list(train, features=hp.data.INSTRUCTION_FEATURES)
    train = train.add_column("row_id", np.arange(len(train)))
    target = Dataset.from_list(targets, features=hp.data.EVAL_FEATURES)
    first = {"sum_choice": [], "say": []}
    for i, t in enumerate(target["task"]):
        first[t].append(i)
    validation = [i for rows in first.values() for i in rows[:3]]
    test = [i for rows in first.values() for i in rows[3:]]
    return DatasetDict(train=train, validation=target.select(validation), test=target.select(test))


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce_instruction")
    synthetic_pool().save_to_disk(str(root / "synthetic"))
    out = root / "out"
    return (
        out,
        main(["--quick", "--pool-path", str(root / "synthetic"), "--output-dir", str(out)]),
        root / "synthetic",
    )


def test_quick_runs_the_chain_end_to_end_on_the_selected_rows(quick):
    out, results, _ = quick
    assert set(results["runs"]) == {f"{BASE}|0.0|0", "LESS|0.05|0", "InfoMax|0.05|0", "D² (LESS)|0.05|0"}
    for key, entry in results["runs"].items():
        assert 0.0 <= entry["average"] <= 1.0 and set(entry["tasks"]) == {"sum_choice", "say"}
        assert entry["rows"] == (240 if key.startswith(BASE) else 12)
    # LESS's subset is the top 5% of the cached score, and the recipe trained on those rows.
    scored = load_from_disk(str(out / "scored_pool"))
    less = np.array(scored["less"])
    top = set(np.array(scored["row_id"])[np.argsort(-less, kind="stable")[:12]].tolist())
    assert set(load_from_disk(str(out / "subsets" / "LESS_0.05_0"))["row_id"]) == top
    assert len(scored["grad"][0]) == QUICK["dim"] * QUICK["warmup_epochs"]
    f = results["features"]
    assert f["gradient_rows"] == QUICK["warmup_epochs"] * (240 + 6) and f["gradient_s_per_1k_rows"] > 0
    assert results["warmup"]["warmup_rows"] == 12 and results["warmup"]["epochs"] == QUICK["warmup_epochs"]
    report = (out / "report.md").read_text()
    assert "| InfoMax |" in report and "per 1k rows" in report and "#### sum_choice (%)" in report
    claim = report.split("InfoMax above LESS and D² at 5% kept")[1]
    assert "**agree**" in claim or "**disagree**" in claim
    assert (out / "accuracy_vs_budget.png").stat().st_size > 0


def test_rerun_resumes_without_training_or_features(quick, monkeypatch):
    out, results, pool_path = quick
    monkeypatch.setattr(bench, "run_recipe", lambda argv: pytest.fail("trained again"))
    monkeypatch.setattr(bench.features, "less_features", lambda *a, **k: pytest.fail("features again"))
    again = main(["--quick", "--pool-path", str(pool_path), "--output-dir", str(out)])
    assert again["runs"] == results["runs"]
    assert main(["--report-only", "--output-dir", str(out)])["settings"]["pool_size"] == QUICK["pool_size"]
    with pytest.raises(SystemExit, match="made with"):
        main(["--quick", "--pool-path", str(pool_path), "--batch-size", "4", "--output-dir", str(out)])


def _entry(value, task=None):
    return {"average": value, "tasks": {"t": value if task is None else task}}


def test_claim_is_marked_from_the_seed_means():
    runs = {}
    for seed, (ours, less, d2) in enumerate([(0.5, 0.4, 0.45), (0.7, 0.4, 0.5)]):
        runs[f"InfoMax|0.05|{seed}"] = _entry(ours)
        runs[f"LESS|0.05|{seed}"] = _entry(less)
        runs[f"D² (LESS)|0.05|{seed}"] = _entry(d2)
    lines = claim_lines({"runs": runs})
    assert (
        lines[0].startswith("- average accuracy: **agree**") and "(+20.0)" in lines[0] and "n = 2" in lines[0]
    )
    assert "t: InfoMax 60.0" in lines[1] and "(InfoMax above both)" in lines[1]
    runs["D² (LESS)|0.05|1"] = _entry(0.9)  # D²'s mean 0.675 > InfoMax's 0.6
    assert claim_lines({"runs": runs})[0].startswith("- average accuracy: **disagree**")
    del runs["LESS|0.05|0"], runs["LESS|0.05|1"]
    assert "not measured" in claim_lines({"runs": runs})[0]


def test_every_method_selects_from_a_scored_pool_with_negative_scores():
    rng = np.random.default_rng(0)
    grad = rng.normal(size=(200, 8)).astype(np.float32)
    grad /= np.linalg.norm(grad, axis=1, keepdims=True)
    less = rng.uniform(-2e-4, 2e-4, 200)
    pool = Dataset.from_dict(
        {
            "row_id": np.arange(200),
            "less": less,
            "less_01": (1 + less / 4e-4) / 2,
            "grad": grad.tolist(),
            "source": ["a"] * 200,
        }
    )
    for name, select in methods().items():
        for fraction in (0.05, 0.1):
            sub = select(pool, fraction, 0)
            assert len(sub) == round(fraction * 200) and len(set(sub["row_id"])) == len(sub), name
    assert pool.column_names == ["row_id", "less", "less_01", "grad", "source"]


def test_bad_options_and_gpu_commands(tmp_path, capsys):
    with pytest.raises(ValueError, match="--methods"):
        main(["--methods", "Infomax", "--output-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--fractions"):
        main(["--fractions", "1.0", "--output-dir", str(tmp_path)])
    bad = tmp_path / "bad_pool"
    Dataset.from_dict({"x": [1]}).save_to_disk(str(bad))
    with pytest.raises(ValueError, match="train/validation/test"):
        main(["--quick", "--pool-path", str(bad), "--output-dir", str(tmp_path / "o")])
    assert main(["--gpu"]) == {}
    printed = capsys.readouterr().out
    assert "--warmup_fraction 0.05" in printed and "recipes.less_features" in printed and "mmlu" in printed
    assert json.dumps(QUICK)  # the quick settings are JSON (shown in --help)
