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


def _tiny_clip_pairs(tmp_path, n=12):
    from datasets import Image as ImageFeature
    from PIL import Image

    from tests.embed.test_clip import ViTProcessor, tiny_clip, word_tokenizer

    path = tmp_path / "tiny-clip"
    tiny_clip().save_pretrained(path)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]
    texts = ["a photo of a red cat", "blue dog", "a cat", "dog dog", "red", "a blue cat"] * (n // 6)
    ds = Dataset.from_dict({"image": images, "text": texts, "label": [0, 1] * (n // 2)})
    clip = hp.embed.CLIPEmbedder(str(path), image_processor=ViTProcessor(size={"height": 32, "width": 32}),
                                 tokenizer=word_tokenizer(), revision="v1", batch_size=4)
    return ds.cast_column("image", ImageFeature()), clip, str(path)


def test_embed_score_select_is_one_chain(tmp_path):
    from hf_prune.embed._base import weights_checksum

    ds, clip, path = _tiny_clip_pairs(tmp_path)
    embedded = clip.map(ds)
    scored = hp.score.feature_norm(embedded, embedding_column="image_emb")
    sub = hp.select.top_k(scored, fraction=0.5, score_column="clip_score")
    steps = _quiet_provenance(sub)  # warns on any stale step
    assert [s["method"] for s in steps] == ["embed.CLIPEmbedder", "score.feature_norm", "top_k"]
    assert [s["stale"] for s in steps] == [False, False, False]
    embed = steps[0]
    assert embed["params"]["model"] == path and embed["params"]["revision"] == "v1"
    assert embed["params"]["weights_checksum"] == weights_checksum(clip.model)
    assert embed["params"]["output_columns"] == ["image_emb", "text_emb", "clip_score"]
    assert embed["params"]["fingerprint"] == clip.fingerprint()
    assert embed["input_fingerprint"] == ds._fingerprint and embed["output_fingerprint"] == embedded._fingerprint
    assert "source" in embed  # the first step says where the data came from
    assert steps[1]["params"]["embedding_column"] == "image_emb"
    assert ds.info.description in ("", None) or "hf_prune:provenance" not in ds.info.description


def test_record_provenance_after_a_plain_map(tmp_path):
    ds, clip, _ = _tiny_clip_pairs(tmp_path)
    sub = hp.select.random(ds, size=6, seed=0)  # an earlier step, which the embedding must not make stale
    by_hand = sub.map(clip, batched=True, features=clip.features_for(sub))
    assert [s["method"] for s in _quiet_provenance(by_hand)] == ["random"]  # map copies the info: no step
    recorded = clip.record_provenance(by_hand, sub)
    steps = _quiet_provenance(recorded)
    assert [s["method"] for s in steps] == ["random", "embed.CLIPEmbedder"]
    assert steps[-1]["params"] == _quiet_provenance(clip.map(sub))[-1]["params"]
    assert [s["method"] for s in _quiet_provenance(by_hand)] == ["random"]  # nothing else was changed
    # Replacing the columns: the step's input is the dataset passed in, so the chain stays current.
    again = clip.map(recorded, overwrite=True)
    assert [s["stale"] for s in _quiet_provenance(again)] == [False, False, False]
    with pytest.raises(ValueError, match="rows"):
        clip.record_provenance(by_hand.select(range(3)), sub)
    with pytest.raises(KeyError, match="image_emb"):  # not the embedder's output
        clip.record_provenance(sub, sub)


def test_an_embedder_without_a_model_records_its_step(tmp_path):
    ds, _, _ = _tiny_clip_pairs(tmp_path)
    pixels = hp.embed.PixelEmbedder(image_column="image", size=8, output_column="px")
    (step,) = _quiet_provenance(pixels.map(ds))
    assert step["method"] == "embed.PixelEmbedder" and step["params"]["models"] == {}
    assert step["params"]["model"] is None and step["params"]["weights_checksum"] is None
    assert step["params"]["output_columns"] == ["px"] and step["params"]["fingerprint"] == pixels.fingerprint()


def test_stamp_output_sets_the_fingerprint_the_last_step_records():
    from hf_prune.provenance import stamp_output

    ds = _data()
    sub = with_provenance(ds.select([1, 3]), ds, method="pick", params={})
    stamped = stamp_output(sub, "0123456789abcdef")
    assert stamped._fingerprint == "0123456789abcdef"
    assert _quiet_provenance(stamped)[-1]["output_fingerprint"] == "0123456789abcdef"
    with pytest.raises(ValueError, match="no provenance step"):
        stamp_output(ds.select([0]), "0123456789abcdef")
    with pytest.raises(ValueError):  # `datasets` rejects characters a cache file name cannot hold
        stamp_output(sub, "a/b")


def test_measurements_sit_beside_the_params_of_the_last_step():
    from hf_prune.provenance import with_measurements

    ds = Dataset.from_dict({"x": list(range(10))})
    sub = hp.select.random(ds, size=4, seed=0)
    measured = with_measurements(sub, "stage_times", {"solve_s": np.float64(1.5), "parts": np.int64(2)})
    step = hp.provenance(measured)[-1]
    assert step["stage_times"] == {"solve_s": 1.5, "parts": 2} and "stage_times" not in step["params"]
    assert step["params"] == hp.provenance(sub)[-1]["params"]
    with pytest.raises(ValueError, match="`key`='params'"):
        with_measurements(sub, "params", {})
    with pytest.raises(ValueError, match="no provenance step"):
        with_measurements(ds, "stage_times", {})
