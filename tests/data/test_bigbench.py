"""BIG-bench JSON tasks from a tiny sdist-shaped tar.gz built here: prompt formatting, answers and choices,
subtask names, programmatic tasks counted, duplicates and bad examples, filters, sampling, the default path."""

import io
import json
import os
import tarfile

import pytest

from hf_prune.data import BBH_TASKS, check_instructions, load_bigbench
from hf_prune.data.bigbench import BIGBENCH_ENV

ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks"
MC = {"name": "colors", "task_prefix": "Answer.\n", "metrics": ["multiple_choice_grade"], "examples": [
    {"input": "Sky?", "target_scores": {"blue": 1, "green": 0, "red": 0}},
    {"input": "Grass?", "target_scores": {"blue": 0, "green": 1, "red": 0}},
    {"input": "Sky?", "target_scores": {"blue": 1, "green": 0, "red": 0}},  # duplicate
    {"input": "Nothing?", "target_scores": {"blue": 0, "green": 0}},  # no correct choice
]}
GEN = {"name": "echo", "example_input_prefix": "Say: ", "example_output_prefix": "\nSaid:", "examples": [
    {"input": "hi", "target": ["hi", "hello"]},
    {"input": "yo", "target": "yo"},
    {"input": "nil", "target": " "},  # empty target
    {"input": "n", "target": 3},
]}
SUB = {"name": "three", "example_input_prefix": "", "example_output_prefix": " ", "append_choices_to_input": False,
       "examples": [{"input": f"q{i}", "target_scores": {"x": int(i % 2 == 0), "y": int(i % 2 == 1)}} for i in range(6)]}


def _files():
    return {
        f"{ROOT}/colors/task.json": json.dumps(MC),
        f"{ROOT}/echo/task.json": json.dumps(GEN),
        f"{ROOT}/order/task.json": json.dumps({"name": "order", "description": "parent"}),
        f"{ROOT}/order/three/task.json": json.dumps(SUB),
        f"{ROOT}/order/five/task.json": json.dumps({**SUB, "name": "five"}),
        f"{ROOT}/coded/task.py": "class Task: ...",
        "bigbench-1.0.0/bigbench/api/task.py": "# not a task",
        "bigbench-1.0.0/setup.py": "",
    }


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    path = tmp_path_factory.mktemp("bb") / "bigbench-1.0.0.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, text in _files().items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_rows_prompts_answers_and_counts(sdist):
    ds, stats = load_bigbench(sdist, return_stats=True, progress=False)
    check_instructions(ds)
    assert ds["task"] == sorted(ds["task"])
    by_id = {row["id"]: row for row in ds}
    assert sorted(by_id) == ["colors/0", "colors/1", "echo/0", "echo/1", "echo/3",
                             *[f"order:five/{i}" for i in range(6)], *[f"order:three/{i}" for i in range(6)]]
    sky = by_id["colors/0"]
    assert sky["answer"] == "blue" and sky["choices"] == ["blue", "green", "red"] and sky["source"] == "bigbench"
    prompt = sky["messages"][0]["content"]
    assert prompt.startswith("Answer.\n\nQ: Sky?\n  choice: ") and prompt.endswith("\nA:")
    assert sorted(prompt.split("\n  choice: ")[1:-1] + [prompt.split("\n  choice: ")[-1][: -len("\nA:")]]) == \
        ["blue", "green", "red"]
    assert sky["messages"][1] == {"role": "assistant", "content": "blue"}
    assert by_id["echo/0"]["messages"][0]["content"] == "Say: hi\nSaid:" and by_id["echo/0"]["answer"] == "hi"
    assert by_id["echo/3"]["answer"] == "3" and by_id["echo/0"]["choices"] == []
    assert by_id["order:three/1"]["messages"][0]["content"] == "q1" and by_id["order:three/1"]["answer"] == "y"
    assert stats["json_tasks"] == 4 and stats["multiple_choice_tasks"] == 3 and stats["generative_tasks"] == 1
    assert stats["programmatic_tasks"] == ["coded"]
    assert stats["skipped"] == {"duplicate example": 1, "empty target": 1, "no correct choice": 1,
                                "programmatic task (task.py)": 1}
    assert stats["per_task"] == {"colors": 2, "echo": 3, "order:five": 6, "order:three": 6}


def test_an_extracted_folder_reads_the_same(sdist, tmp_path):
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path, filter="data")
    from_tar = load_bigbench(sdist, progress=False)
    for folder in (tmp_path, tmp_path / "bigbench-1.0.0", tmp_path / ROOT):
        assert load_bigbench(folder, progress=False).to_dict() == from_tar.to_dict()


def test_filters_sampling_and_errors(sdist):
    assert sorted(set(load_bigbench(sdist, tasks="order", progress=False)["task"])) == ["order:five", "order:three"]
    assert set(load_bigbench(sdist, tasks=["order:five", "echo"], progress=False)["task"]) == {"order:five", "echo"}
    assert "colors" not in load_bigbench(sdist, exclude=["colors", "order"], progress=False)["task"]
    _, stats = load_bigbench(sdist, tasks=["coded", "echo"], return_stats=True, progress=False)
    assert stats["programmatic_tasks"] == ["coded"] and stats["json_tasks"] == 1
    with pytest.raises(ValueError, match=r"no task named \['nope'\]"):
        load_bigbench(sdist, tasks=["echo", "nope"], progress=False)
    with pytest.raises(ValueError, match="`tasks` must be a task name"):
        load_bigbench(sdist, tasks=[], progress=False)
    a = load_bigbench(sdist, tasks="order", max_examples_per_task=3, seed=1, progress=False)
    b = load_bigbench(sdist, tasks="order", max_examples_per_task=3, seed=1, progress=False)
    c = load_bigbench(sdist, tasks="order", max_examples_per_task=3, seed=2, progress=False)
    assert a["id"] == b["id"] and a._fingerprint == b._fingerprint and len(a) == 6
    assert a["id"] != c["id"] and a._fingerprint != c._fingerprint
    three = [i for i in a["id"] if i.startswith("order:three/")]
    assert three == sorted(three, key=lambda s: int(s.split("/")[1]))  # kept in file order


def test_default_path_from_the_environment(sdist, monkeypatch, tmp_path):
    monkeypatch.delenv(BIGBENCH_ENV, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("HF_PRUNE_CACHE", str(cache))
    with pytest.raises(FileNotFoundError, match="pip download --no-deps bigbench==1.0.0"):
        load_bigbench()
    cache.mkdir()
    (cache / "bigbench-1.0.0.tar.gz").write_bytes(sdist.read_bytes())  # where `dev.sh llm` puts it
    assert len(load_bigbench(tasks="echo", progress=False)) == 3
    monkeypatch.setenv(BIGBENCH_ENV, str(sdist))
    assert len(load_bigbench(tasks="echo", progress=False)) == 3
    monkeypatch.setenv(BIGBENCH_ENV, str(tmp_path / "missing.tar.gz"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_bigbench()
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="neither a folder nor a tar archive"):
        load_bigbench(tmp_path / "x.txt")


@pytest.mark.slow
def test_bbh_tasks_in_the_real_sdist():
    path = os.environ.get(BIGBENCH_ENV)
    if not path:
        pytest.skip(f"set {BIGBENCH_ENV} to the bigbench sdist")
    ds, stats = load_bigbench(path, tasks=BBH_TASKS, max_examples_per_task=20, return_stats=True, progress=False)
    # Every BBH source exists: 20 JSON tasks (24 with subtasks) and 3 programmatic ones.
    assert stats["programmatic_tasks"] == ["boolean_expressions", "multistep_arithmetic", "web_of_lies"]
    assert stats["json_tasks"] == 24 and stats["multiple_choice_tasks"] == 22 and len(ds) == 24 * 20
    assert {t.split(":")[0] for t in ds["task"]} | set(stats["programmatic_tasks"]) == set(BBH_TASKS)
    check_instructions(ds)
