import json

import numpy as np
from datasets import load_from_disk

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
