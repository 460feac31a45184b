"""Pipeline files: validation before anything runs (lines, choices, columns), caching by fingerprint, --dry-run."""

import json

import numpy as np
import pytest
from datasets import Dataset, load_from_disk

import hf_prune as hp
from hf_prune.pipeline import PipelineError, parse_pipeline, plan, run_pipeline, steps, validate
from hf_prune.pipeline.components import embedders, scorers, selectors


@pytest.fixture
def source(tmp_path):
    """A saved 40-row dataset with a 6-d embedding and two classes, and its path."""
    rng = np.random.default_rng(0)
    ds = Dataset.from_dict({"emb": rng.normal(size=(40, 6)).astype(np.float32).tolist(), "label": [0, 1] * 20})
    path = tmp_path / "source"
    ds.save_to_disk(path)
    return str(path)


def pipeline_text(source, out, fraction=0.25):
    return f"""\
steps:
  - load:
      path: {source}
  - score:
      scorer: feature_norm
      embedding_column: emb
      output_column: norm
  - select:
      selector: top_k
      fraction: {fraction}
      score_column: norm
      label_column: label
  - save:
      path: {out}
      overwrite: true
"""


@pytest.fixture
def counted(monkeypatch):
    """How many times each step kind computed (wrapping the runners the pipeline calls)."""
    calls = {}
    for kind, fn in list(steps.RUNNERS.items()):
        def wrapped(ctx, step, dataset, fn=fn, kind=kind):
            calls[kind] = calls.get(kind, 0) + 1
            return fn(ctx, step, dataset)
        monkeypatch.setitem(steps.RUNNERS, kind, wrapped)
    loads = []
    original = steps.load_source

    def load(options, memo=None):
        loads.append(options)
        return original(options, memo)
    monkeypatch.setattr("hf_prune.pipeline.runner.load_source", load)
    calls["load"] = loads
    return calls


def test_unknown_step_names_the_line_and_the_valid_steps():
    text = "steps:\n  - load: {builtin: digits, split: train}\n  - embedd: {embedder: PixelEmbedder}\n"
    with pytest.raises(PipelineError) as err:
        parse_pipeline(text, source="p.yaml")
    assert str(err.value).startswith("p.yaml:3: unknown step 'embedd'; valid steps: load, corrupt, tokenize, embed")


def test_unknown_component_and_option_name_their_lines_and_choices():
    text = (
        "steps:\n"
        "  - load: {builtin: digits, split: train}\n"
        "  - embed:\n"
        "      embedder: PixelEmbeder\n"
        "  - select:\n"
        "      selector: top_k\n"
        "      fraction: 0.1\n"
        "      score_colum: s\n"
    )
    with pytest.raises(PipelineError) as err:
        validate(parse_pipeline(text, source="p.yaml"))
    lines = str(err.value).splitlines()
    assert lines[0].startswith("p.yaml:4: step 2 (embed): unknown embedder 'PixelEmbeder'; choose one of: ")
    assert "PixelEmbedder" in lines[0] and "ImageEmbedder" in lines[0]
    assert lines[1].startswith("p.yaml:8: step 3 (select): select top_k has no option 'score_colum'; its options "
                               "are: fraction, size, score_column")
    assert any(line.startswith("p.yaml:5: step 3 (select): selector top_k needs option(s) score_column")
               for line in lines)


def test_a_column_no_earlier_step_writes_is_rejected_before_running(source, tmp_path, counted):
    text = pipeline_text(source, tmp_path / "out").replace("score_column: norm", "score_column: nrom")
    spec = parse_pipeline(text, source="p.yaml")
    with pytest.raises(PipelineError) as err:
        run_pipeline(spec, cache_dir=str(tmp_path / "cache"), progress=False)
    message = str(err.value)
    assert message.startswith("p.yaml:11: step 3 (select): score_column='nrom': no earlier step writes the column "
                              "'nrom'")
    assert "the columns here are: emb, label, norm" in message
    assert counted["load"] == [] and not (tmp_path / "out").exists()
    # The source's own columns count (read from its dataset_info.json), and so does an earlier output.
    assert "embedding_column" not in message


def test_json_pipelines_keep_line_numbers(source):
    text = json.dumps({"steps": [{"load": {"path": source}}, {"score": {"scorer": "feature_norm", "p": 2,
                                                                        "colour": 1}}]}, indent=2)
    with pytest.raises(PipelineError, match=r"^p.json:12: step 2 \(score\): score feature_norm has no option 'colour'"):
        validate(parse_pipeline(text, source="p.json"))


def test_structure_errors():
    with pytest.raises(PipelineError, match="unknown key 'step'; valid keys: steps"):
        parse_pipeline("step: []\n")
    with pytest.raises(PipelineError, match=r"^<pipeline>:2: step 1 must be a one-key mapping"):
        parse_pipeline("steps:\n  - {load: {}, save: {}}\n")
    with pytest.raises(PipelineError, match=r"<pipeline>:3: key 'rows' is given twice \(first on line 2\)"):
        parse_pipeline("steps:\n  - load: {builtin: digits, rows: 1,\n      rows: 2}\n")
    with pytest.raises(PipelineError, match="starts with one `load` step"):
        validate(parse_pipeline("steps:\n  - score: {scorer: feature_norm}\n"))
    with pytest.raises(PipelineError, match="set exactly one of `builtin`"):
        validate(parse_pipeline("steps:\n  - load: {split: train}\n"))
    with pytest.raises(PipelineError, match="`streaming: true` needs `rows`"):
        validate(parse_pipeline("steps:\n  - load: {path: user/data, streaming: true}\n"))


def test_second_run_computes_nothing_and_an_edited_later_step_reruns_only_it(source, tmp_path, counted):
    cache = str(tmp_path / "cache")
    first = run_pipeline(parse_pipeline(pipeline_text(source, tmp_path / "out")), cache_dir=cache, progress=False)
    assert [s["status"] for s in first.steps] == ["computed", "computed", "computed", "ran"]
    assert counted["score"] == counted["select"] == 1 and len(counted["load"]) == 1
    assert len(load_from_disk(tmp_path / "out")) == 10

    again = run_pipeline(parse_pipeline(pipeline_text(source, tmp_path / "out")), cache_dir=cache, progress=False)
    assert again.computed == 0 and [s["status"] for s in again.steps] == ["skipped", "skipped", "cached", "ran"]
    assert counted["score"] == counted["select"] == 1 and len(counted["load"]) == 1

    edited = run_pipeline(parse_pipeline(pipeline_text(source, tmp_path / "out", fraction=0.5)), cache_dir=cache,
                          progress=False)
    assert [s["status"] for s in edited.steps] == ["skipped", "cached", "computed", "ran"]
    assert counted["score"] == 1 and counted["select"] == 2 and len(counted["load"]) == 1
    assert len(load_from_disk(tmp_path / "out")) == 20


def test_a_changed_source_file_invalidates_its_steps(tmp_path, counted):
    path = tmp_path / "data.jsonl"
    Dataset.from_dict({"emb": [[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]], "label": [0, 1, 0]}).to_json(path)
    text = pipeline_text(str(path), tmp_path / "out").replace("label_column: label", "seed: 0")
    run_pipeline(parse_pipeline(text), cache_dir=str(tmp_path / "cache"), progress=False)
    Dataset.from_dict({"emb": [[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [5.0, 5.0]], "label": [0, 1, 0, 1]}).to_json(path)
    result = run_pipeline(parse_pipeline(text), cache_dir=str(tmp_path / "cache"), progress=False)
    assert result.computed == 3 and len(counted["load"]) == 2
    assert load_from_disk(tmp_path / "out")["row_id"] == [3]


def test_a_rerun_after_a_failure_resumes_from_the_last_finished_step(source, tmp_path, counted, monkeypatch):
    cache = str(tmp_path / "cache")
    spec = parse_pipeline(pipeline_text(source, tmp_path / "out"))

    def broken(ctx, step, dataset):
        raise KeyboardInterrupt  # an interruption in the middle of the selection

    monkeypatch.setitem(steps.RUNNERS, "select", broken)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(spec, cache_dir=cache, progress=False)
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    result = run_pipeline(spec, cache_dir=cache, progress=False)
    assert [s["status"] for s in result.steps] == ["skipped", "cached", "computed", "ran"]


def test_dry_run_prints_the_plan_and_runs_nothing(source, tmp_path, counted):
    cache = str(tmp_path / "cache")
    spec = parse_pipeline(pipeline_text(source, tmp_path / "out"), source="p.yaml")
    lines = []
    run_pipeline(spec, cache_dir=cache, dry_run=True, log=lines.append)
    assert lines[0].splitlines()[0] == f"pipeline p.yaml: 4 steps; cache {cache}"
    assert [line.split()[2] for line in lines[0].splitlines()[1:]] == ["runs", "runs", "runs", "runs"]
    assert counted["load"] == [] and not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    run_pipeline(spec, cache_dir=cache, progress=False)
    spec.steps[2].options["fraction"] = 0.5
    lines.clear()
    run_pipeline(spec, cache_dir=cache, dry_run=True, log=lines.append)
    statuses = [line.split(None, 3)[2:4] for line in lines[0].splitlines()[1:]]
    assert [s[0] for s in statuses] == ["cached", "cached", "runs", "runs"]
    assert lines[0].splitlines()[1].split()[3] == "(not" and [e.cached is not None for e in plan(spec, cache_dir=cache)] \
        == [True, True, False, False]


def test_the_subset_records_the_pipeline_text(source, tmp_path):
    text = pipeline_text(source, tmp_path / "out")
    run_pipeline(parse_pipeline(text, source="p.yaml"), cache_dir=str(tmp_path / "cache"), progress=False)
    saved = hp.provenance(load_from_disk(tmp_path / "out"), warn=False)
    assert [s["method"] for s in saved] == ["score.feature_norm", "top_k", "pipeline"]
    assert saved[-1]["params"]["text"] == text and saved[-1]["params"]["file"] == "p.yaml"
    card = (tmp_path / "out" / "README.md").read_text()
    assert "pipeline" in card
    import inspect

    if "reproduce" in inspect.signature(hp.hub.save_subset).parameters:  # the card's own reproduction section
        assert all(line in card.split("## Reproduce")[-1] for line in text.splitlines())


def test_push_is_checked_before_anything_loads(source, tmp_path, counted, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    text = pipeline_text(source, tmp_path / "out") + "  - push:\n      repo_id: me/subset\n      private: true\n"
    with pytest.raises(hp.hub.HubAccessError, match="offline mode"):
        run_pipeline(parse_pipeline(text), cache_dir=str(tmp_path / "cache"), progress=False)
    assert counted["load"] == []
    with pytest.raises(PipelineError, match=r":18: step 5 \(push\): push has no option 'privat'; its options are: "):
        validate(parse_pipeline(text.replace("private", "privat")))


def test_options_are_read_from_the_python_api():
    import inspect

    # Every public embedder class and score function is a component with its signature's options.
    assert set(embedders()) == {n for n in hp.embed.__all__ if inspect.isclass(getattr(hp.embed, n))}
    assert set(scorers()) == set(hp.score.__all__)
    from hf_prune.select.spec import available_selectors

    assert set(selectors()) == set(available_selectors())
    ssp = scorers()["ssp"]
    assert ssp.options["n_clusters"].required and [o.name for o in ssp.inputs()] == ["embedding_column", "label_column"]
    assert "score_column" not in embedders()["CLIPEmbedder"].options  # deprecated spelling left out
    assert ssp.options["metric"].help


def test_load_options_rows_and_split(tmp_path):
    path = tmp_path / "d.parquet"
    Dataset.from_dict({"x": list(range(10))}).to_parquet(path)
    assert steps.load_source({"path": str(path), "rows": 3})["x"] == [0, 1, 2]
    shuffled = steps.load_source({"path": str(path), "rows": 3, "shuffle_seed": 0})["x"]
    assert len(shuffled) == 3 and shuffled != [0, 1, 2]
    with pytest.raises(ValueError, match="one split, 'train'"):
        steps.load_source({"path": str(path), "split": "test"})
    assert steps.source_columns({"path": str(path)}) == {"x"}


def test_streaming_materialises_the_first_rows(tmp_path):
    path = tmp_path / "d.jsonl"
    Dataset.from_dict({"x": list(range(10))}).to_json(path)
    loaded = steps.load_source({"path": str(path), "streaming": True, "rows": 3})
    assert isinstance(loaded, Dataset) and loaded["x"] == [0, 1, 2]


def test_an_unpinned_hub_source_is_keyed_once_loaded(tmp_path):
    spec = parse_pipeline("steps:\n  - load: {path: someone/data, split: train}\n"
                          "  - score: {scorer: feature_norm}\n")
    assert [e.key for e in plan(spec, cache_dir=str(tmp_path))] == [None, None]
    lines = []
    run_pipeline(spec, cache_dir=str(tmp_path), dry_run=True, log=lines.append)
    assert "runs (unpinned source: known once loaded)" in lines[0]
    pinned = parse_pipeline("steps:\n  - load: {path: someone/data, revision: abc123, split: train}\n")
    assert plan(pinned, cache_dir=str(tmp_path))[0].key is not None


@pytest.mark.slow
def test_two_processes_split_the_embed_step_and_match_one(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)) for _ in range(9)]
    Dataset.from_dict({"image": images, "label": [0, 1, 2] * 3}).save_to_disk(tmp_path / "in")
    text = (f"steps:\n  - load: {{path: {tmp_path / 'in'}}}\n"
            "  - embed: {embedder: PixelEmbedder, size: 4, mode: L, batch_size: 2}\n"
            "  - score: {scorer: feature_norm}\n"
            "  - select: {selector: top_k, size: 3, score_column: feature_norm, label_column: label}\n"
            "  - save: {path: OUT}\n")
    (tmp_path / "two.yaml").write_text(text.replace("OUT", str(tmp_path / "two")))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "hf_prune.cli",
           "run", str(tmp_path / "two.yaml"), "--cache-dir", str(tmp_path / "cache2"), "--no-progress"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("saved 3 rows") == 1 and "2 processes" in done.stdout
    run_pipeline(parse_pipeline(text.replace("OUT", str(tmp_path / "one"))), cache_dir=str(tmp_path / "cache1"),
                 progress=False)
    one, two = load_from_disk(tmp_path / "one"), load_from_disk(tmp_path / "two")
    assert one["row_id"] == two["row_id"] and one["emb"] == two["emb"]
    embedded = load_from_disk(next(p for p in (tmp_path / "cache2").iterdir()
                                   if p.is_dir() and "PixelEmbedder" in (p.parent / f"{p.name}.json").read_text()))
    assert len(embedded) == 9 and [s["method"] for s in hp.provenance(embedded)] == ["embed.PixelEmbedder"]
    assert not [p for p in (tmp_path / "cache2").iterdir() if ".shards" in p.name]


def test_overrides_set_and_remove_options(source, tmp_path):
    from hf_prune.pipeline import apply_overrides

    spec = apply_overrides(parse_pipeline(pipeline_text(source, tmp_path / "out")),
                           ["select.fraction=0.5", "3.label_column=", "save.path=elsewhere", "2.p=[1]"])
    assert spec.steps[2].options == {"selector": "top_k", "fraction": 0.5, "score_column": "norm"}
    assert spec.steps[3].options["path"] == "elsewhere" and spec.steps[1].options["p"] == [1]
    assert spec.overrides[0] == "select.fraction=0.5"
    with pytest.raises(PipelineError, match="no 'embed' step; name it by number"):
        apply_overrides(spec, ["embed.size=2"])
    with pytest.raises(PipelineError, match="there is no step 9"):
        apply_overrides(spec, ["9.size=2"])
    with pytest.raises(PipelineError, match="expected STEP.OPTION=VALUE"):
        apply_overrides(spec, ["rows=2"])


def test_values_are_checked_against_the_annotations_before_running():
    text = ("steps:\n  - load: {builtin: digits, split: train}\n"
            "  - select: {selector: random, fraction: 2}\n"
            "  - select: {selector: random, size: 'x'}\n"
            "  - embed: {embedder: PixelEmbedder, num_proc: 0, size: true}\n"
            "  - score: {scorer: ssp, n_clusters: 4, seed: 1}\n")
    with pytest.raises(PipelineError) as err:
        validate(parse_pipeline(text))
    assert str(err.value).splitlines() == [
        "<pipeline>:3: step 2 (select): `fraction` is the kept fraction, 0 < fraction <= 1; got 2",
        "<pipeline>:4: step 3 (select): selector random: `size` takes int or None, got 'x' (str)",
        "<pipeline>:5: step 4 (embed): embedder PixelEmbedder: `size` takes int or tuple[int, int] or None, got True "
        "(bool)",
        "<pipeline>:5: step 4 (embed): `num_proc` must be a positive integer, got 0",
    ]


def test_a_webdataset_tar_loads(tmp_path):
    import io
    import tarfile

    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        for i in range(3):
            for suffix, data in (("json", json.dumps({"label": i}).encode()), ("txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(f"s{i}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    loaded = steps.load_source({"path": str(tmp_path / "shard.tar"), "rows": 2})
    assert loaded["txt"] == ["caption 0", "caption 1"] and loaded["__key__"] == ["s0", "s1"]
