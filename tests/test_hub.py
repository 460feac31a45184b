import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk
from huggingface_hub import DatasetCard

import hf_prune as hp
from tests.conftest import make_dataset


def _subset():
    ds = make_dataset(np.eye(10), label=[0, 1] * 5)
    first = hp.select.random(ds, size=6, seed=1)
    return ds, hp.select.random(first, size=3, label_column="label", seed=2)


def test_card_lists_every_step_with_parameters():
    ds, sub = _subset()
    card = hp.hub.dataset_card(sub, repo_id="me/tiny", source="toy")
    text = card.content
    assert "# tiny" in text and "Source dataset: `toy`" in text
    assert text.count("| `random` |") == 2 and "`seed=2`" in text and ds._fingerprint in text
    blob = text.split("```json\n")[1].split("```")[0]
    assert json.loads(blob) == hp.provenance(sub)
    assert card.data.tags == ["hf_prune", "data-pruning", "coreset"]


def test_save_subset_round_trip(tmp_path):
    _, sub = _subset()
    path = hp.hub.save_subset(sub, tmp_path / "sub")
    loaded = load_from_disk(path)
    assert loaded["row_id"] == sub["row_id"]
    assert hp.provenance(loaded) == hp.provenance(sub)  # provenance survives save_to_disk
    assert "`random`" in DatasetCard.load(tmp_path / "sub" / "README.md").content


def test_card_says_what_row_id_refers_to():
    ds, sub = _subset()
    text = hp.hub.dataset_card(sub).content
    assert "original dataset" not in text
    assert f"position (0-based) in the Dataset passed to step 1 (`random`): the 10-row view with fingerprint `{ds._fingerprint}`" in text
    assert "Warning" not in text


def test_card_of_a_filtered_subset_says_the_steps_no_longer_match():
    _, sub = _subset()
    kept = sub.filter(lambda row: row["label"] == 0)
    text = hp.hub.dataset_card(kept).content
    assert f"**Warning:** this dataset ({len(kept)} rows) is not the output of the last recorded step (`random`, 3 rows)" in text
    assert text.count("changed afterwards") == 1 and text.count("| current |") == 1


def test_card_names_the_source_and_revision_given():
    _, sub = _subset()
    text = hp.hub.dataset_card(sub, source="me/data", source_revision="v1.0").content
    assert "Source dataset: `me/data` at revision `v1.0`." in text


def _listing(path):
    return sorted(p.name for p in path.iterdir())


def test_save_subset_refuses_a_non_empty_folder(tmp_path):
    _, sub = _subset()
    target = tmp_path / "mine"
    target.mkdir()
    (target / "README.md").write_text("my own notes")
    with pytest.raises(FileExistsError, match="not empty; pass overwrite=True"):
        hp.hub.save_subset(sub, target)
    # overwrite=True does not delete a folder that is not a saved dataset
    with pytest.raises(FileExistsError, match="holds no saved dataset"):
        hp.hub.save_subset(sub, target, overwrite=True)
    assert (target / "README.md").read_text() == "my own notes" and _listing(target) == ["README.md"]
    assert _listing(tmp_path) == ["mine"]
    (tmp_path / "empty").mkdir()
    hp.hub.save_subset(sub, tmp_path / "empty")  # an empty folder is fine
    assert len(load_from_disk(tmp_path / "empty")) == 3


def test_save_subset_overwrite_replaces_the_old_shards(tmp_path):
    ds, sub = _subset()
    target = tmp_path / "sub"
    ds.save_to_disk(target, num_shards=3)
    assert "data-00002-of-00003.arrow" in _listing(target)
    hp.hub.save_subset(sub, target, overwrite=True)
    assert _listing(target) == ["README.md", "class_balance.png", "data-00000-of-00001.arrow", "dataset_info.json",
                                "hf_prune.json", "state.json"]
    assert load_from_disk(target)["row_id"] == sub["row_id"]
    assert _listing(tmp_path) == ["sub"]  # no temporary sibling left


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_save_keeps_the_old_folder(tmp_path, monkeypatch, error):
    ds, sub = _subset()
    target = tmp_path / "sub"
    hp.hub.save_subset(ds, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def fail(*args, **kwargs):
        raise error("interrupted while writing the card")

    monkeypatch.setattr(hp.hub, "dataset_card", fail)  # after the data was written to the temporary folder
    with pytest.raises(error):
        hp.hub.save_subset(sub, target, overwrite=True)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert len(load_from_disk(target)) == 10 and _listing(tmp_path) == ["sub"]


def test_failure_between_the_renames_restores_the_old_folder(tmp_path, monkeypatch):
    ds, sub = _subset()
    target = tmp_path / "sub"
    hp.hub.save_subset(ds, target)
    rename, calls = os.rename, []

    def second_rename_fails(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # old folder moved aside, new one not yet in place
            raise OSError("disk full")
        return rename(src, dst)

    monkeypatch.setattr(os, "rename", second_rename_fails)
    with pytest.raises(OSError, match="disk full"):
        hp.hub.save_subset(sub, target, overwrite=True)
    monkeypatch.undo()
    assert len(load_from_disk(target)) == 10 and _listing(tmp_path) == ["sub"]


def test_save_subset_refuses_to_replace_the_folder_its_data_is_read_from(tmp_path):
    ds, _ = _subset()
    hp.hub.save_subset(ds, tmp_path / "sub")
    loaded = load_from_disk(tmp_path / "sub")
    sub = hp.select.random(loaded, size=3, seed=0)
    with pytest.raises(ValueError, match="reads its data from that folder"):
        hp.hub.save_subset(sub, tmp_path / "sub", overwrite=True)
    assert len(load_from_disk(tmp_path / "sub")) == 10


def test_save_subset_refuses_a_file(tmp_path):
    _, sub = _subset()
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        hp.hub.save_subset(sub, tmp_path / "f", overwrite=True)


def test_push_subset_offline_says_what_to_do_before_any_work(monkeypatch):
    # The test session runs with HF_HUB_OFFLINE=1 (conftest).
    _, sub = _subset()
    calls = []
    monkeypatch.setattr(type(sub), "push_to_hub", lambda self, repo_id, **kw: calls.append(repo_id))
    with pytest.raises(hp.hub.HubAccessError, match="offline mode is on \\(HF_HUB_OFFLINE=1\\).*save the subset locally"):
        hp.hub.push_subset(sub, "me/tiny", token="hf_not_checked")
    assert calls == []
    with pytest.raises(ValueError, match="`repo_id`"):
        hp.hub.push_subset(sub, "not a repo id")


def _run_push(tmp_path, monkeypatch, **env):
    """push_subset in a fresh interpreter: the Hub client reads HF_* variables at import."""
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored token there
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code = (
        "from datasets import Dataset\nimport hf_prune as hp\n"
        "sub = hp.select.random(Dataset.from_dict({'x': list(range(6))}), size=3, seed=0)\n"
        "Dataset.push_to_hub = lambda *a, **k: print('PUSHED')\n"
        "try:\n    hp.hub.push_subset(sub, 'me/tiny')\n"
        "except hp.hub.HubAccessError as err:\n    print('ERROR', err)\n"
    )
    # The child imports the same hf_prune as this test run.
    monkeypatch.setenv("PYTHONPATH", str(Path(hp.__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_push_subset_without_a_token_says_log_in(tmp_path, monkeypatch):
    out = _run_push(tmp_path, monkeypatch)
    assert "ERROR cannot push to 'me/tiny': no Hugging Face token found. Log in with `hf auth login`" in out
    assert "HF_HUB_OFFLINE=1" in out and "PUSHED" not in out


def test_push_subset_without_a_network_says_so(tmp_path, monkeypatch):
    # A closed local port: the connection is refused at once, as with no network.
    out = _run_push(tmp_path, monkeypatch, HF_TOKEN="hf_unchecked", HF_ENDPOINT="http://127.0.0.1:9")
    assert "ERROR cannot push to 'me/tiny': could not reach the Hub at http://127.0.0.1:9" in out
    assert "Check the network connection" in out and "PUSHED" not in out


def test_card_shows_the_chain_embedding_scores_selection_and_the_pipeline_to_rerun():
    from hf_prune.provenance import with_provenance

    ds = make_dataset(np.eye(10), label=[0, 1] * 5)
    embedded = with_provenance(ds.map(lambda row: {"e": [1.0, 0.0]}), ds, method="embed.FakeEmbedder",
                               params={"model": "org/encoder", "revision": "r1", "weights_checksum": "c0ffee",
                                       "input_columns": ["x"], "output_columns": ["e"]})
    scored = with_provenance(embedded.map(lambda row: {"s": 0.5}), embedded, method="score.feature_norm",
                             params={"column": "e", "output_column": "s"})
    sub = hp.select.random(scored, size=4, seed=7)
    pipeline = "steps:\n  - load: {path: me/data}\n  - select: {method: random, size: 4, seed: 7}\n"
    text = hp.hub.dataset_card(sub, reproduce=pipeline).content
    assert "**Embeddings**" in text and "model `org/encoder` at revision `r1`, weights checksum `c0ffee`" in text
    assert "**Scores**" in text and "`output_column=\"s\"`" in text
    assert "**Selection**" in text and "seed `7`" in text and "(40.00% of 10 source rows)" in text
    assert "run `hf-prune run pipeline.yaml`" in text and f"```yaml\n{pipeline}```" in text
    assert hp.hub.card.size_category(4_500) == "1K<n<10K" and hp.hub.card.size_category(10**12) == "n>10B"


def test_column_digests_follow_values_not_chunks_or_views():
    from datasets import Dataset, concatenate_datasets

    from hf_prune.hub.rebuild import column_digests

    ds = Dataset.from_dict({"v": [[1.0, 2.0], [3.0], [4.0, 5.0]], "t": ["a", "b", None], "n": [1, 2, 3]})
    view = ds.select([2, 0])
    chunked = concatenate_datasets([ds.select([2]).flatten_indices(), ds.select([0]).flatten_indices()])
    assert column_digests(view) == column_digests(view.flatten_indices()) == column_digests(chunked)
    assert column_digests(ds.select([0, 2])) != column_digests(view)  # order counts
    with pytest.raises(KeyError, match="nope"):
        column_digests(ds, ["nope"])
