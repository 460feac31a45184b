import json

import numpy as np
import pytest
from datasets import Dataset, DatasetDict, load_from_disk

import hf_prune as hp
from recipes.benchmarks import reproduce_instruction_tuning as bench
from recipes.benchmarks.reproduce_instruction_tuning import (
    BASE,
    QUICK,
    claim_lines,
    main,
    method_costs,
    methods,
    rds_claim_lines,
    rr_claim_lines,
)


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
    assert set(results["runs"]) == {f"{BASE}|0.0|0"} | {f"{m}|0.05|0" for m in QUICK["methods"]}
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


def test_quick_rds_stage_scores_the_same_rows_and_reports_their_cost(quick):
    out, results, _ = quick
    h = results["hidden_states"]
    assert h["hidden_rows"] == 240 + 6 and h["hidden_s_per_1k_rows"] > 0 and h["scoring_s"] >= 0
    assert h["tasks"] == ["say", "sum_choice"] == results["features"]["tasks"]
    pool = load_from_disk(str(out / "rds_pool"))
    assert pool["row_id"] == load_from_disk(str(out / "scored_pool"))["row_id"]  # the same rows, same order
    hidden = np.array(pool["hidden"], dtype=np.float64)
    assert np.allclose(np.linalg.norm(hidden, axis=1), 1.0, atol=1e-5)  # RDS+'s normalised vectors
    rds_tasks, less_tasks = np.array(pool["rds_tasks"]), np.array(pool["less_tasks"])
    assert rds_tasks.shape == less_tasks.shape == (240, 2)
    assert np.allclose(pool["rds"], rds_tasks.max(axis=1)) and np.allclose(pool["less"], less_tasks.max(axis=1))
    row_ids = np.array(pool["row_id"])
    rds_top = set(row_ids[np.argsort(-np.array(pool["rds"]), kind="stable")[:12]].tolist())
    assert set(load_from_disk(str(out / "subsets" / "RDS__0.05_0"))["row_id"]) == rds_top
    rr = hp.select.round_robin(pool, size=12, score_column="less_tasks")
    assert set(load_from_disk(str(out / "subsets" / "LESS_RR_0.05_0"))["row_id"]) == set(rr["row_id"])
    costs = method_costs(results)
    assert costs["RDS+"]["warmup_s"] == 0.0 and costs["RDS+"]["features_s_per_1k"] == h["hidden_s_per_1k_rows"]
    assert costs["LESS-RR"]["warmup_s"] == results["warmup"]["warmup_s"] > 0
    assert costs["LESS"]["features_s_per_1k"] == pytest.approx(
        1000 * results["features"]["gradient_s"] / (240 + 6)
    )
    report = (out / "report.md").read_text()
    assert "#### Quality vs cost" in report and "| RDS+ | " in report and "| InfoMax over RDS | " in report
    for claim in ("RDS+ above LESS (average accuracy): **", "at small budgets (5% kept, the smallest measured): **"):
        assert claim + "agree**" in report or claim + "disagree**" in report
    assert "RDS+ (top-k): best task say" in report
    resolution = "- test rows per task: say 19, sum_choice 19: one answer = 5.3 points of a task, 2.6 of the average"
    assert resolution in report
    assert f"of {len(QUICK['methods'])} trained runs have every task's accuracy equal" in report


def test_rerun_resumes_without_training_or_features(quick, monkeypatch):
    out, results, pool_path = quick
    monkeypatch.setattr(bench, "run_recipe", lambda argv: pytest.fail("trained again"))
    monkeypatch.setattr(bench.features, "less_features", lambda *a, **k: pytest.fail("features again"))
    monkeypatch.setattr(bench.hp.embed, "HiddenStateEmbedder", lambda *a, **k: pytest.fail("hidden states again"))
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


def test_rds_and_round_robin_claims_are_marked_from_the_seed_means():
    runs = {}
    for seed in (0, 1):
        for f, values in {0.05: (0.6, 0.5, 0.7, 0.55), 0.1: (0.6, 0.5, 0.5, 0.55)}.items():
            for name, v in zip(("RDS+", "LESS", "RDS+-RR", "LESS-RR"), values):
                runs[f"{name}|{f}|{seed}"] = {**_entry(v), "sources": {"a": 0.25, "b": 0.75}}
    results = {"runs": runs}
    rds = rds_claim_lines(results)
    assert rds[0].startswith("- RDS+ above LESS (average accuracy): **agree**") and "(+10.0)" in rds[0]
    assert "n = 2 seeds" in rds[0] and any("t: 5% RDS+ 60.0 vs LESS 50.0" in line for line in rds)
    assert any("sources at 5%: RDS+ a 25%, b 75%" in line for line in rds)
    rr = rr_claim_lines(results)
    # 5%: LESS-RR 55 > LESS 50 and RDS+-RR 70 > RDS+ 60; at 10% RDS+-RR falls below: still agree at 5%.
    assert rr[0].startswith("- round-robin helps at small budgets (5% kept, the smallest measured): **agree**")
    assert "- RDS+-RR − RDS+ by budget: 5% +10.0, 10% -10.0" in [line.strip() for line in rr]
    for seed in (0, 1):
        runs[f"RDS+|0.1|{seed}"] = _entry(0.4)  # RDS+ below LESS at 10%
        runs[f"LESS-RR|0.05|{seed}"] = _entry(0.5)  # a tie is not "above"
    assert "**disagree**" in rds_claim_lines(results)[0] and "**disagree**" in rr_claim_lines(results)[0]
    assert "not measured" in rds_claim_lines({"runs": {}})[0] and "not measured" in rr_claim_lines({"runs": {}})[0]


def test_every_method_selects_from_a_scored_pool_with_negative_scores():
    rng = np.random.default_rng(0)
    grad = rng.normal(size=(200, 8)).astype(np.float32)
    grad /= np.linalg.norm(grad, axis=1, keepdims=True)
    hidden = rng.normal(size=(200, 6)).astype(np.float32)
    hidden /= np.linalg.norm(hidden, axis=1, keepdims=True)
    less_tasks = rng.uniform(-2e-4, 2e-4, (200, 3))
    rds_tasks = rng.uniform(-1, 1, (200, 3))
    columns = {
        "row_id": np.arange(200),
        "less": less_tasks.max(axis=1),
        "less_tasks": less_tasks.tolist(),
        "less_01": (1 + less_tasks.max(axis=1) / 4e-4) / 2,
        "grad": grad.tolist(),
        "hidden": hidden.tolist(),
        "rds": rds_tasks.max(axis=1),
        "rds_tasks": rds_tasks.tolist(),
        "source": ["a"] * 200,
    }
    pool = Dataset.from_dict(columns)
    assert set(bench.FEATURES) == set(methods())
    for name, select in methods().items():
        for fraction in (0.05, 0.1):
            sub = select(pool, fraction, 0)
            assert len(sub) == round(fraction * 200) and len(set(sub["row_id"])) == len(sub), name
    assert pool.column_names == list(columns)
    # RDS+-RR: the three tasks take turns (10 rows: task 0 picks 4, tasks 1 and 2 pick 3), each its best
    # row not taken yet; RDS+ is the top 10 of the max over tasks.
    rr = methods()["RDS+-RR"](pool, 0.05, 0)
    taken, expected = set(), []
    order = [np.argsort(-rds_tasks[:, j], kind="stable") for j in range(3)]
    for turn in range(10):
        row = next(int(r) for r in order[turn % 3] if int(r) not in taken)
        taken.add(row)
        expected.append(row)
    assert sorted(rr["row_id"]) == sorted(expected)
    assert set(methods()["RDS+"](pool, 0.05, 0)["row_id"]) == set(np.argsort(-rds_tasks.max(axis=1))[:10].tolist())


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
