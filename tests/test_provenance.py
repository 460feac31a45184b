import copy
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, load_dataset, load_dataset_builder, load_from_disk

import hf_prune as hp
from hf_prune.provenance import row_id_digest, source_info, with_provenance
from tests.conftest import make_dataset


def _data(n=10):
    return make_dataset(np.eye(n), label=[0, 1] * (n // 2))


def _quiet_provenance(dataset):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a current chain must not warn
        return hp.provenance(dataset)


def test_each_step_records_what_it_read_and_produced():
    ds = _data()
    first = hp.select.random(ds, size=6, seed=1)
    sub = hp.select.random(first, size=3, seed=2)
    one, two = _quiet_provenance(sub)
    assert one["input_fingerprint"] == ds._fingerprint and one["input_rows"] == 10
    assert one["input_row_id_digest"] is None  # the input had no row_id
    assert one["output_fingerprint"] == first._fingerprint and one["output_rows"] == 6
    assert one["output_row_id_digest"] == row_id_digest(first) == two["input_row_id_digest"]
    assert two["output_fingerprint"] == sub._fingerprint and two["output_row_id_digest"] == row_id_digest(sub)
    assert not one["stale"] and not two["stale"]
    assert "source" in one and "source" not in two  # where the data came from: first step only


def test_map_save_and_reload_keep_the_chain_current(tmp_path):
    sub = hp.select.random(_data(), size=6, seed=1)
    mapped = sub.map(lambda row: {"extra": 1.0})  # new columns, same rows: legitimate
    assert mapped._fingerprint != sub._fingerprint
    assert [s["stale"] for s in _quiet_provenance(mapped)] == [False]
    mapped.save_to_disk(tmp_path / "saved")
    loaded = load_from_disk(tmp_path / "saved")
    assert loaded._fingerprint != sub._fingerprint  # save_to_disk flattens the indices
    assert [s["stale"] for s in _quiet_provenance(loaded)] == [False]
    assert [s["stale"] for s in _quiet_provenance(sub.flatten_indices())] == [False]


def test_filter_makes_the_last_step_stale_and_warns():
    sub = hp.select.random(_data(), size=6, seed=1)
    kept = sub.filter(lambda row: row["label"] == 0)
    assert len(kept) < 6
    with pytest.warns(UserWarning, match=f"produced 6 rows; this dataset has {len(kept)}"):
        steps = hp.provenance(kept)
    assert steps[-1]["stale"] is True and steps[-1]["output_rows"] == 6
    assert hp.provenance(kept, warn=False)[-1]["stale"] is True


@pytest.mark.parametrize("change", ["shuffle", "reverse", "other_rows"])
def test_same_row_count_in_another_order_or_other_rows_is_stale(change):
    ds = _data()
    sub = hp.select.random(ds, size=6, seed=1)
    changed = {
        "shuffle": lambda: sub.shuffle(seed=0),
        "reverse": lambda: sub.select(range(5, -1, -1)),
        # The same number of rows, but not the ones the selection kept: row_id tells them apart.
        "other_rows": lambda: ds.map(lambda row, i: {"row_id": i}, with_indices=True).select(range(6)),
    }[change]()
    changed._info = copy.deepcopy(sub.info)  # a transform that carries the provenance text over
    with pytest.warns(UserWarning, match="not the ones the last step"):
        assert hp.provenance(changed)[-1]["stale"] is True


def test_a_gap_between_steps_is_flagged():
    first = hp.select.random(_data(), size=6, seed=1)
    filtered = first.filter(lambda row: row["label"] == 1)
    sub = hp.select.random(filtered, size=2, seed=0)
    with pytest.warns(UserWarning, match="earlier step"):
        steps = hp.provenance(sub)
    assert [s["stale"] for s in steps] == [True, False]
    assert steps[1]["input_rows"] == len(filtered) != steps[0]["output_rows"]


def test_steps_saved_without_output_fields_are_still_checked_by_row_count():
    # Provenance written before output fingerprints and digests were recorded.
    old = {"method": "random", "params": {}, "input_fingerprint": "abc", "input_rows": 10, "output_rows": 4,
           "library": "hf_prune", "version": "0.1.0"}
    ds = Dataset.from_dict({"x": [1, 2, 3, 4]})
    ds.info.description = "<!-- hf_prune:provenance " + json.dumps([old]) + " -->"
    assert _quiet_provenance(ds)[0]["stale"] is False
    with pytest.warns(UserWarning):
        assert hp.provenance(ds.select([0, 1]))[0]["stale"] is True


def test_with_provenance_leaves_the_source_untouched():
    ds = _data()
    before = ds.info.description
    sub = hp.select.random(ds, size=4, seed=0)
    again = with_provenance(sub.select(range(2)), sub, method="custom", params={"f": np.float32(0.5)})
    assert ds.info.description == before and len(hp.provenance(sub)) == 1
    assert [s["method"] for s in _quiet_provenance(again)] == ["random", "custom"]
    assert again.info.description.count("hf_prune:provenance") == 1


def test_in_memory_source_has_no_hub_origin():
    info = source_info(_data())
    assert "hub_id" not in info and "revision" not in info


def _hub_cache(tmp_path, data_file, repo="me___tiny", commit="a" * 40):
    """A datasets cache holding ``me/tiny`` as `load_dataset` leaves a Hub repo (offline: read from it)."""
    builder = load_dataset_builder("parquet", data_files={"train": str(data_file)}, cache_dir=str(tmp_path / "build"))
    builder.download_and_prepare()
    target = tmp_path / "cache" / repo / "default" / "0.0.0" / commit
    shutil.copytree(builder.cache_dir, target)
    (target / "parquet-train.arrow").rename(target / "tiny-train.arrow")
    info = json.loads((target / "dataset_info.json").read_text())
    info.update(dataset_name="tiny", config_name="default")
    (target / "dataset_info.json").write_text(json.dumps(info))
    return tmp_path / "cache"


def test_source_of_a_hub_dataset_is_recorded(tmp_path):
    Dataset.from_dict({"x": list(range(8)), "label": [0, 1] * 4}).to_parquet(tmp_path / "tiny.parquet")
    cache = _hub_cache(tmp_path, tmp_path / "tiny.parquet")
    ds = load_dataset("me/tiny", split="train", cache_dir=str(cache))  # HF_HUB_OFFLINE=1: from the cache
    sub = hp.select.random(ds.map(lambda row: {"y": row["x"] * 2}), size=4, seed=0)  # map keeps the origin
    source = hp.provenance(sub)[0]["source"]
    assert source == {
        "hub_id": "me/tiny", "revision": "a" * 40, "dataset_name": "tiny", "config_name": "default",
        "builder_name": "parquet", "version": "0.0.0", "split": "train",
    }
    card = hp.hub.dataset_card(sub).content
    assert "Hub dataset `me/tiny`" in card and f"revision `{'a' * 40}`" in card


def test_source_of_a_local_file_has_no_hub_id(tmp_path):
    Dataset.from_dict({"x": list(range(8))}).to_parquet(tmp_path / "local.parquet")
    cache = tmp_path / "cache"
    ds = load_dataset("parquet", data_files=str(tmp_path / "local.parquet"), split="train", cache_dir=str(cache))
    info = source_info(ds)
    assert info["builder_name"] == "parquet" and info["split"] == "train"
    assert "hub_id" not in info and "revision" not in info
    assert Path(ds.cache_files[0]["filename"]).is_relative_to(cache)
