"""push_subset / load_subset with the real huggingface_hub client against the local Hub stand-in."""

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import ClassLabel, Dataset, Features, Sequence, Value, load_from_disk
from huggingface_hub import DatasetCard, HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

import hf_prune as hp
from hf_prune.ops.columns import add_column
from tests.hub_server import HubServer

TOKEN = "hf_me_write"


@pytest.fixture
def hub(monkeypatch):
    # The suite runs offline; these tests talk to a local server only. The stand-in offers no Xet storage,
    # so the client uses the LFS protocol, as HF_HUB_DISABLE_XET=1 makes it do.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with HubServer(tokens={TOKEN: "me"}) as server:
        yield server


def _source(n=12):
    rng = np.random.default_rng(0)
    features = Features({"x": Sequence(Value("float32"), length=3), "text": Value("string"),
                         "label": ClassLabel(names=["cat", "dog", "owl"])})
    return Dataset.from_dict({"x": rng.normal(size=(n, 3)).astype(np.float32).tolist(),
                              "text": [f"row {i}" for i in range(n)], "label": [i % 3 for i in range(n)]},
                             features=features)


def _subset(ds):
    sub = hp.select.random(ds, size=6, label_column="label", seed=3)
    return add_column(sub, "score", np.linspace(0, 1, len(sub)))


def _push(hub, sub, repo_id="me/tiny", **kw):
    return hp.hub.push_subset(sub, repo_id, token=TOKEN, endpoint=hub.url, **kw)


def _load(hub, repo_id, tmp_path, **kw):
    return hp.hub.load_subset(repo_id, token=TOKEN, endpoint=hub.url, cache_dir=str(tmp_path / "hub_cache"), **kw)


def test_push_rows_is_one_commit_with_card_plot_and_reads_back(hub, tmp_path):
    ds = _source()
    sub = _subset(ds)
    _push(hub, sub, source="me/animals", source_revision="a" * 40, license="cc-by-4.0", source_dataset=ds,
          reproduce="hp.select.random(ds, size=6, label_column='label', seed=3)", reason="a uniform baseline")
    assert hub.commits("me/tiny") == ["hf_prune: rows of a 6-row subset", "initial commit"]
    files = hub.files("me/tiny")
    assert sorted(files) == [".gitattributes", "README.md", "class_balance.png", "data/train-00000-of-00001.parquet",
                             "hf_prune.json"]
    assert files["class_balance.png"].startswith(b"\x89PNG")
    card = DatasetCard(files["README.md"].decode())
    data = card.data.to_dict()
    assert data["license"] == "cc-by-4.0" and data["source_datasets"] == ["me/animals"]
    assert data["size_categories"] == ["n<1K"] and data["task_categories"] == ["text-classification"]
    assert data["tags"] == ["hf_prune", "data-pruning", "coreset"]
    assert data["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    assert data["hf_prune"]["format"] == "rows" and data["hf_prune"]["source"] == "me/animals"
    text = card.text
    assert "A subset of 6 rows (50.00% of 12 source rows)" in text
    assert "| cat | 4 | 2 | 50.0% |" in text and "![Class balance, source vs subset](class_balance.png)" in text
    assert "Selector: `random`" in text and "Why this selector: a uniform baseline" in text
    assert "hp.select.random(ds, size=6, label_column='label', seed=3)" in text and "seed `3`" in text
    table = pq.read_table(io.BytesIO(files["data/train-00000-of-00001.parquet"]))
    assert table.column_names == ["x", "text", "label", "row_id", "score"]
    loaded = _load(hub, "me/tiny", tmp_path)
    assert loaded.to_dict() == sub.to_dict() and loaded.features == sub.features
    assert [s["method"] for s in hp.provenance(loaded)] == ["random"] and not hp.provenance(loaded)[0]["stale"]


def test_the_source_license_is_carried_when_none_is_given(hub):
    ds = _source()
    _push(hub, ds, "me/animals", license="cc-by-sa-4.0")
    _push(hub, _subset(ds), source="me/animals")
    assert DatasetCard(hub.files("me/tiny")["README.md"].decode()).data.to_dict()["license"] == "cc-by-sa-4.0"


def test_re_push_of_the_same_subset_uploads_and_commits_nothing(hub):
    sub = _subset(_source())
    _push(hub, sub)
    uploads, commits = hub.state.count("PUT", "/lfs-upload/"), hub.commits("me/tiny")
    _push(hub, sub)
    assert hub.state.count("PUT", "/lfs-upload/") == uploads and hub.commits("me/tiny") == commits


def test_indices_only_push_rebuilds_from_a_local_source(hub, tmp_path):
    ds = _source()
    ds.save_to_disk(tmp_path / "source")
    source = load_from_disk(tmp_path / "source")
    sub = _subset(source)
    listing = sorted(p.name for p in (tmp_path / "source").iterdir())
    _push(hub, sub, "me/ids", indices_only=True, columns=["score"], source=str(tmp_path / "source"),
          source_revision="v1")
    files = hub.files("me/ids")
    table = pq.read_table(io.BytesIO(files["data/train-00000-of-00001.parquet"]))
    assert table.column_names == ["row_id", "score"] and table.column("row_id").to_pylist() == sub["row_id"]
    meta = json.loads(files["hf_prune.json"])
    assert meta["source_fingerprint"] == source._fingerprint and meta["source_rows"] == 12
    yaml_meta = DatasetCard(files["README.md"].decode()).data.to_dict()["hf_prune"]
    assert yaml_meta["format"] == "indices" and yaml_meta["source_revision"] == "v1"
    assert yaml_meta["source_fingerprint"] == source._fingerprint
    assert "hp.hub.load_subset('me/ids')" in files["README.md"].decode()
    rebuilt = _load(hub, "me/ids", tmp_path)
    assert rebuilt.column_names == sub.column_names and rebuilt.to_dict() == sub.to_dict()
    assert [s["method"] for s in hp.provenance(rebuilt)] == ["random"] and not hp.provenance(rebuilt)[0]["stale"]
    assert sorted(p.name for p in (tmp_path / "source").iterdir()) == listing  # nothing written beside the source


def test_indices_only_save_works_offline_and_refuses_a_changed_source(tmp_path):
    # No server here: the session is offline (HF_HUB_OFFLINE=1).
    ds = _source()
    hp.hub.save_subset(ds, tmp_path / "source", license="mit")
    sub = _subset(load_from_disk(tmp_path / "source"))
    hp.hub.save_subset(sub, tmp_path / "ids", indices_only=True, columns=["score"], source=str(tmp_path / "source"),
                       source_revision="v1")
    assert sorted(p.name for p in (tmp_path / "ids").iterdir()) == [
        "README.md", "class_balance.png", "data-00000-of-00001.arrow", "dataset_info.json", "hf_prune.json", "state.json"]
    assert DatasetCard.load(tmp_path / "ids" / "README.md").data.license == "mit"  # carried from the source's card
    assert load_from_disk(tmp_path / "ids").column_names == ["row_id", "score"]
    assert hp.hub.load_subset(tmp_path / "ids").to_dict() == sub.to_dict()
    with pytest.raises(hp.hub.SourceMismatchError, match="revision 'v1' of .*; revision 'v2' .* was asked for"):
        hp.hub.load_subset(tmp_path / "ids", source_revision="v2")
    # The source folder is replaced by other rows of the same length.
    changed = ds.map(lambda row: {"text": row["text"].upper()})
    changed.save_to_disk(tmp_path / "source2")
    with pytest.raises(hp.hub.SourceMismatchError, match=r"differ from the selected ones in columns \['text'\]"):
        hp.hub.load_subset(tmp_path / "ids", source=str(tmp_path / "source2"))
    with pytest.warns(UserWarning, match="despite a source mismatch"):
        forced = hp.hub.load_subset(tmp_path / "ids", source=str(tmp_path / "source2"), ignore_source_mismatch=True)
    assert forced["row_id"] == sub["row_id"] and forced["text"][0] == sub["text"][0].upper()
    shorter = ds.select(range(8))
    shorter.save_to_disk(tmp_path / "source3")
    with pytest.raises(hp.hub.SourceMismatchError, match="selected from 12 rows .*the source now has 8"):
        hp.hub.load_subset(tmp_path / "ids", source=str(tmp_path / "source3"))


def test_private_push_to_a_branch(hub, tmp_path):
    sub = _subset(_source())
    _push(hub, sub, "me/secret", private=True, revision="v1")
    assert hub.state.repos["datasets/me/secret"].private
    assert sorted(hub.files("me/secret", "main")) == [".gitattributes"]  # main untouched
    assert "hf_prune.json" in hub.files("me/secret", "v1")
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token=False).repo_info("me/secret", repo_type="dataset")
    assert _load(hub, "me/secret", tmp_path, revision="v1").to_dict() == sub.to_dict()


def test_failed_commit_leaves_the_repo_unchanged_and_a_re_run_resumes(hub):
    ds = _source()
    _push(hub, _subset(ds))
    before, commits = hub.files("me/tiny"), hub.commits("me/tiny")
    other = add_column(hp.select.random(ds, size=4, seed=9), "score", np.zeros(4))
    hub.state.fail_commits = 1
    uploads = hub.state.count("PUT", "/lfs-upload/")
    with pytest.raises(HfHubHTTPError, match="injected failure"):
        _push(hub, other)
    assert hub.files("me/tiny") == before and hub.commits("me/tiny") == commits
    after_failure = hub.state.count("PUT", "/lfs-upload/")
    assert after_failure > uploads  # the data had reached the Hub's storage before the commit failed
    _push(hub, other)
    assert hub.state.count("PUT", "/lfs-upload/") == after_failure  # nothing uploaded twice
    assert len(hub.commits("me/tiny")) == len(commits) + 1
    table = pq.read_table(io.BytesIO(hub.files("me/tiny")["data/train-00000-of-00001.parquet"]))
    assert table.column("row_id").to_pylist() == other["row_id"]


def test_fewer_shards_delete_the_old_ones_in_the_same_commit(hub):
    ds = _source()
    _push(hub, _subset(ds), num_shards=3)
    assert sum(p.startswith("data/") for p in hub.files("me/tiny")) == 3
    _push(hub, _subset(ds))
    assert [p for p in hub.files("me/tiny") if p.startswith("data/")] == ["data/train-00000-of-00001.parquet"]


def test_a_rejected_token_stops_before_any_work(hub):
    sub = _subset(_source())
    with pytest.raises(hp.hub.HubAccessError, match="rejected the token"):
        hp.hub.push_subset(sub, "me/tiny", token="hf_wrong", endpoint=hub.url)
    assert hub.state.repos == {} and hub.state.requests == [("GET", "/api/whoami-v2")]


def test_indices_only_needs_row_id_and_a_source(hub):
    ds = _source()
    with pytest.raises(ValueError, match="needs a `row_id` column"):
        _push(hub, ds, indices_only=True, source="me/animals")
    with pytest.raises(ValueError, match="needs `source`"):
        _push(hub, _subset(ds), indices_only=True)
    with pytest.raises(KeyError, match=r"`columns` \['nope'\]"):
        _push(hub, _subset(ds), indices_only=True, source="me/animals", columns=["nope"])
    assert hub.state.repos == {}


@pytest.fixture
def hub_as_endpoint(hub, monkeypatch, tmp_path):
    """The stand-in as the endpoint `datasets`' load_dataset reads from (its settings are read at import)."""
    import datasets.config

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", hub.url)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")
    return hub


def test_indices_only_subset_of_a_hub_source_is_rebuilt_at_its_commit(hub_as_endpoint, tmp_path):
    from datasets import load_dataset

    hub = hub_as_endpoint
    ds = _source()
    first = _push(hub, ds, "me/animals").oid
    source = load_dataset("me/animals", split="train", revision=first, token=TOKEN)
    sub = _subset(source)
    _push(hub, sub, "me/ids", indices_only=True, columns=["score"], source="me/animals")
    meta = json.loads(hub.files("me/ids")["hf_prune.json"])
    assert meta["source_revision"] == first and meta["source_split"] == "train"  # the commit datasets loaded
    _push(hub, ds.map(lambda row: {"text": row["text"] + "!"}), "me/animals")  # the source moves on
    assert _load(hub, "me/ids", tmp_path).to_dict() == sub.to_dict()  # still rebuilt from the recorded commit
    head = hub.state.repos["datasets/me/animals"].branches["main"]
    with pytest.raises(hp.hub.SourceMismatchError, match=f"revision '{first}' of 'me/animals'; revision 'main'"):
        _load(hub, "me/ids", tmp_path, source_revision="main")
    with pytest.warns(UserWarning, match=r"despite a source mismatch.*columns \['text'\]"):
        moved = _load(hub, "me/ids", tmp_path, source_revision=head, ignore_source_mismatch=True)
    assert moved["row_id"] == sub["row_id"] and moved["text"] == [t + "!" for t in sub["text"]]
