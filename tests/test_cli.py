import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, load_from_disk

from hf_prune.cli import main
from tests.conftest import make_dataset


def test_select_info_and_list(tmp_path, capsys):
    make_dataset(np.eye(8), label=[0, 1] * 4).save_to_disk(tmp_path / "in")
    assert main([
        "select", str(tmp_path / "in"), "--selector", "random:size=4,label_column=label,seed=1",
        "--output", str(tmp_path / "out"),
    ]) == 0
    out = load_from_disk(tmp_path / "out")
    assert len(out) == 4 and sorted(out["label"]) == [0, 0, 1, 1]
    capsys.readouterr()
    assert main(["info", str(tmp_path / "out")]) == 0
    assert json.loads(capsys.readouterr().out)[0]["method"] == "random"
    assert main(["list"]) == 0
    assert "gm_matching" in capsys.readouterr().out.split()


def test_select_reports_bad_input(tmp_path, capsys):
    make_dataset(np.eye(4)).save_to_disk(tmp_path / "in")
    assert main(["select", str(tmp_path / "in"), "--selector", "random:size=9"]) == 2
    assert "size" in capsys.readouterr().err


def test_select_reads_a_directory_of_data_files(tmp_path, monkeypatch):
    # Regression: any existing path went to load_from_disk, so a folder of data files failed to load.
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    (tmp_path / "files").mkdir()
    make_dataset(label=[0, 1] * 4).to_parquet(tmp_path / "files" / "train.parquet")
    assert main([
        "select", str(tmp_path / "files"), "--split", "train", "--selector", "random:size=4,label_column=label,seed=1",
        "--output", str(tmp_path / "out"),
    ]) == 0
    assert sorted(load_from_disk(tmp_path / "out")["label"]) == [0, 0, 1, 1]


def _use_cache(monkeypatch, tmp_path):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")


@pytest.mark.parametrize("suffix", ["parquet", "csv", "jsonl"])
def test_select_reads_a_single_data_file(tmp_path, monkeypatch, suffix):
    _use_cache(monkeypatch, tmp_path)
    ds = Dataset.from_dict({"x": list(range(8)), "label": [0, 1] * 4})
    path = tmp_path / f"data.{suffix}"
    {"parquet": ds.to_parquet, "csv": ds.to_csv, "jsonl": ds.to_json}[suffix](path)
    assert main(["select", str(path), "--selector", "random:size=4,label_column=label,seed=1", "--output",
                 str(tmp_path / "out")]) == 0
    out = load_from_disk(tmp_path / "out")
    assert sorted(out["label"]) == [0, 0, 1, 1] and sorted(out["x"]) == sorted(ds.select(out["row_id"])["x"])


def test_a_missing_local_path_says_no_such_file(tmp_path, capsys):
    for missing in (str(tmp_path / "nothing"), "nothing.parquet", "./data"):
        assert main(["select", missing, "--selector", "random:size=1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("hf-prune: error: no such file or folder") and "ConnectionError" not in err
    assert main(["info", str(tmp_path / "nothing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("random:size=2,sede=1", "random has no option 'sede'; its options are: fraction, size, label_column, seed"),
        ("random:size=2,seed=1,seed=2", "option 'seed' is given twice"),
        ("top_k:size=2", "top_k needs option(s) score_column"),
        ("nope:size=2", "unknown selector 'nope'; available: "),
    ],
)
def test_bad_selector_options_are_errors_before_loading(tmp_path, capsys, spec, message):
    # The input does not exist: the spec is rejected before anything is loaded.
    assert main(["select", str(tmp_path / "absent"), "--selector", spec]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-prune: error: ") and message in err and "Traceback" not in err


def test_output_is_checked_before_loading_and_overwrite_replaces(tmp_path, capsys):
    make_dataset(np.eye(8), label=[0, 1] * 4).save_to_disk(tmp_path / "in")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "README.md").write_text("mine")
    # Input absent: the output error must come first (before any load or selection).
    assert main(["select", str(tmp_path / "absent"), "--selector", "random:size=4", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "output folder" in err and "--overwrite" in err
    assert (tmp_path / "out" / "README.md").read_text() == "mine"
    args = ["select", str(tmp_path / "in"), "--selector", "random:size=4,seed=0", "--output", str(tmp_path / "sub")]
    assert main(args) == 0
    assert main([*args[:3], "random:size=2,seed=0", *args[4:]]) == 2  # exists now
    assert main([*args[:3], "random:size=2,seed=0", *args[4:], "--overwrite"]) == 0
    assert len(load_from_disk(tmp_path / "sub")) == 2


def test_push_is_checked_before_loading(tmp_path, capsys):
    # The test session is offline (HF_HUB_OFFLINE=1): say so before loading or selecting.
    assert main(["select", str(tmp_path / "absent"), "--selector", "random:size=1", "--push", "me/x"]) == 2
    captured = capsys.readouterr()
    assert "HF_HUB_OFFLINE" in captured.err and "kept" not in captured.out


def test_list_shows_a_description_per_selector(capsys):
    import hf_prune as hp
    from hf_prune.select import registry

    assert main(["list"]) == 0
    header, *lines = capsys.readouterr().out.strip().splitlines()
    assert header.split() == ["name", "family", "needs", "summary"]
    rows = {line.split()[0]: line for line in lines}
    # Every registered selector and the spec-able `combine`; `prefix` takes a ranked selection and the two
    # filters keep what passes a threshold, so they are not budgeted selectors.
    helpers = {"prefix", "image_based_filter", "semdedup_filter"}
    assert sorted(rows) == sorted([*registry.names(), "combine"]) == sorted(set(hp.select.__all__) - helpers)
    for info in registry.selectors():
        # Columns line up under the header: family, needs and summary start where their titles do.
        line = rows[info.name]
        assert line[header.index("family"):].startswith(info.family + " ")
        assert line[header.index("needs"):].split()[0] == (",".join(info.needs) or "-")
        assert line[header.index("summary"):] == info.summary
    assert rows["random"].endswith(hp.select.random.__doc__.strip().splitlines()[0])
    assert rows["infomax"][header.index("needs"):].startswith("score_column,embedding_column ")


def test_info_says_when_there_is_no_provenance_or_it_is_stale(tmp_path, capsys):
    make_dataset(np.eye(4)).save_to_disk(tmp_path / "plain")
    assert main(["info", str(tmp_path / "plain")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == [] and "no hf_prune step is recorded" in captured.err
    import hf_prune as hp

    sub = hp.select.random(make_dataset(np.eye(6), label=[0, 1] * 3), size=4, seed=0)
    sub.filter(lambda row: row["label"] == 0).save_to_disk(tmp_path / "filtered")
    assert main(["info", str(tmp_path / "filtered")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["stale"] is True and "no longer describe" in captured.err


def _same_package_env():
    import hf_prune

    return {**os.environ, "PYTHONPATH": str(Path(hf_prune.__file__).resolve().parents[1])}


def test_help_imports_no_heavy_library():
    code = (
        "import sys\nfrom hf_prune.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "try:\n    main(['select', '--help'])\nexcept SystemExit:\n    pass\n"
        "try:\n    main(['run', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('LOADED', [m for m in ('torch', 'datasets', 'transformers', 'huggingface_hub') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_same_package_env())
    assert out.returncode == 0, out.stderr
    assert "usage: hf-prune" in out.stdout and "--overwrite" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "LOADED []"


def test_lazy_package_still_offers_every_subpackage():
    code = (
        "import sys\nimport hf_prune as hp\n"
        "assert 'torch' not in sys.modules and 'datasets' not in sys.modules\n"
        "assert {'select', 'hub', 'embed', 'score', 'data', 'corrupt', 'provenance'} <= set(dir(hp))\n"
        "assert callable(hp.select.random) and callable(hp.provenance) and hp.hub.save_subset\n"
        "assert callable(hp.dynamics.attach_dynamics) and callable(hp.ops.columns.read_matrix)\n"
        "from hf_prune import score\nprint('OK', callable(hp.provenance))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=_same_package_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "OK True"


def test_list_into_a_closed_pipe_ends_quietly():
    # `hf-prune list | head -0`: the reader is gone before anything is written; no traceback, exit 0.
    code = "import sys, time\nfrom hf_prune.cli import main\ntime.sleep(0.5)\nsys.exit(main(['list']))\n"
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_same_package_env()
    ) as proc:
        proc.stdout.close()
        stderr = proc.stderr.read().decode()
        proc.wait(timeout=120)
    assert proc.returncode == 0, stderr
    assert "Error" not in stderr and "error" not in stderr, stderr


def test_demo_says_where_it_moved(tmp_path, capsys):
    # The demo is a recipe now (hf_prune never imports recipes): old command lines get the new command.
    out = tmp_path / "demo"
    code = main(["demo", "--fractions", "0.3", "--seeds", "0", "--output-dir", str(out)])
    assert code == 2
    assert "hf-prune-demo" in capsys.readouterr().err
    assert not out.exists()


def _embedded_source(path):
    make_dataset(np.arange(24, dtype=np.float32).reshape(8, 3), label=[0, 1] * 4).save_to_disk(path)


def test_run_reports_a_bad_pipeline_with_its_line_before_loading(tmp_path, capsys):
    _embedded_source(tmp_path / "in")
    (tmp_path / "p.yaml").write_text(
        f"steps:\n  - load:\n      path: {tmp_path / 'in'}\n  - select:\n      selector: top_k\n"
        "      size: 2\n      score_column: missing\n  - save:\n      path: " + str(tmp_path / "out") + "\n"
    )
    assert main(["run", str(tmp_path / "p.yaml"), "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hf-prune: error: {tmp_path / 'p.yaml'}:7: step 2 (select): score_column='missing': no "
                          "earlier step writes the column 'missing'")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_run_dry_run_then_run(tmp_path, capsys):
    _embedded_source(tmp_path / "in")
    (tmp_path / "p.json").write_text(json.dumps({"steps": [
        {"load": {"path": str(tmp_path / "in")}},
        {"score": {"scorer": "feature_norm", "output_column": "norm"}},
        {"select": {"selector": "top_k", "size": 2, "score_column": "norm"}},
        {"save": {"path": str(tmp_path / "out")}},
    ]}))
    argv = ["run", str(tmp_path / "p.json"), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out + capsys.readouterr().err
    assert "4 steps" in out and [line.split()[2] for line in out.splitlines()[1:5]] == ["runs"] * 4
    assert not (tmp_path / "out").exists()
    assert main(argv) == 0
    assert load_from_disk(tmp_path / "out")["row_id"] == [6, 7]  # the two largest norms


def test_embed_and_score_commands_take_the_python_options(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)) for _ in range(6)]
    Dataset.from_dict({"img": images}).save_to_disk(tmp_path / "in")
    assert main(["embed", "PixelEmbedder", str(tmp_path / "in"), "--output", str(tmp_path / "emb"),
                 "--image-column", "img", "--size", "4", "--mode", "L", "--no-progress"]) == 0
    embedded = load_from_disk(tmp_path / "emb")
    assert np.asarray(embedded["emb"]).shape == (6, 16)
    assert main(["score", "feature_norm", str(tmp_path / "emb"), "--output", str(tmp_path / "scored"), "--p", "1",
                 "--no-progress"]) == 0
    scored = load_from_disk(tmp_path / "scored")
    np.testing.assert_allclose(scored["feature_norm"], np.abs(np.asarray(embedded["emb"])).sum(1), rtol=1e-5)
    capsys.readouterr()
    # An option the function does not take is argparse's error; a missing column is the pipeline's, before work.
    with pytest.raises(SystemExit):
        main(["score", "feature_norm", str(tmp_path / "emb"), "--output", str(tmp_path / "x"), "--colour", "1"])
    assert main(["score", "ssp", str(tmp_path / "emb"), "--output", str(tmp_path / "x"), "--n-clusters", "2",
                 "--embedding-column", "nope"]) == 2
    assert "embedding_column='nope': no earlier step writes the column 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_embed_and_score_flags_are_the_signatures(capsys):
    import inspect

    import hf_prune as hp
    from hf_prune.cli import make_parser

    for command, name, fn in (("score", "ssp", hp.score.ssp), ("embed", "PixelEmbedder", hp.embed.PixelEmbedder)):
        parser = make_parser([command, name])
        sub = next(a for a in parser._subparsers._group_actions[0].choices[command]._actions
                   if a.dest == "component_name").choices[name]
        flags = {a.dest for a in sub._actions if a.option_strings} - {
            "help", "output", "overwrite_output", "split", "input_revision", "rows", "cache_dir", "offline_models",
            "no_progress", "num_proc", "map_batch_size", "executor", "address", "workers", "max_retries"}
        params = set(list(inspect.signature(fn).parameters)[0 if command == "embed" else 1:])
        assert flags == params, (name, flags ^ params)
