"""The instruction schema's check, the Hub-format converters (Alpaca, Dolly, FLAN, OASST trees) and the
pool builder (mixing, target tasks kept apart, determinism)."""

import pytest
from datasets import Dataset

from hf_prune.data import (
    EVAL_FEATURES,
    INSTRUCTION_FEATURES,
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
