"""Embedders on a local Ray cluster: the column equals the one-process map, resumes, survives a killed actor."""

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import transformers as T
from datasets import Dataset, Features, Image, Value

import hf_prune as hp
from hf_prune.embed.ray_map import map_on_ray
from hf_prune.parallel.ray_executor import TaskFailed

from .test_length_batching import WORDS, word_tokenizer

pytestmark = pytest.mark.usefixtures("ray_cluster")


def tiny_text_embedder():
    torch.manual_seed(0)
    model = T.BertModel(T.BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=32), add_pooling_layer=False).eval()
    return hp.embed.TextEmbedder(model, tokenizer=word_tokenizer(), normalize=False, batch_size=2)


def texts(n, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS[3:], rng.integers(1, 12))) for _ in range(n)]


def one_process(embedder, dataset, **kwargs):
    """The plain map with the actors' torch threads (1): CPU kernels split their sums by thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return embedder.map(dataset, **kwargs)
    finally:
        torch.set_num_threads(threads)


def shard_files(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name.startswith("shard-")}


@pytest.mark.parametrize("shard_format", ["arrow", "parquet"])
def test_text_column_equals_one_process_and_resumes(tmp_path, shard_format):
    emb, ds = tiny_text_embedder(), Dataset.from_dict({"text": texts(61)})
    single = one_process(emb, ds, batch_size=8)
    suffix = f".{shard_format}"
    with hp.parallel.ray(workers=2, storage=tmp_path, progress=False, shard_format=shard_format) as executor:
        out = emb.map(ds, batch_size=8)
        assert hp.parallel.current_executor() is executor
    assert out.column_names == single.column_names and out.features == single.features
    assert np.array_equal(np.asarray(out["emb"], np.float32), np.asarray(single["emb"], np.float32))  # bit for bit
    assert out["text"] == ds["text"] and "emb" not in ds.column_names  # the input is untouched
    step, plain = hp.provenance(out)[-1], hp.provenance(single)[-1]
    assert {k: v for k, v in step.items() if k not in ("executor", "output_fingerprint")} == \
        {k: v for k, v in plain.items() if k != "output_fingerprint"}
    facts = step["executor"]
    # 61 rows in 8 map batches: 8 shards of one batch each (4 x 2 actors), all computed here.
    assert (facts["name"], facts["actors"], facts["shards"], facts["shards_computed"]) == ("ray", 2, 8, 8)
    stages = [facts["actors_start_s"], facts["shards_s"], facts["join_s"]]
    assert all(t > 0 for t in stages) and sum(stages) <= facts["seconds"]
    folder = tmp_path / facts["shard_folder"]
    before = shard_files(folder)
    assert len(before) == 16 and len([n for n in before if n.endswith(suffix)]) == 8  # a data file and a marker each
    # Arrow shards are the result's own files; parquet ones are joined into one Arrow file.
    cache = {Path(f["filename"]).name for f in out.cache_files}
    assert cache >= ({f"shard-{i:05d}-of-00008.arrow" for i in range(8)} if shard_format == "arrow"
                     else {"columns-00008.arrow"})

    # Resume: delete one shard; a rerun (with another number of workers) computes only that one.
    for name in (f"shard-00003-of-00008{suffix}", "shard-00003-of-00008.json"):
        (folder / name).unlink()
    with hp.parallel.ray(workers=1, storage=tmp_path, progress=False, shard_format=shard_format):
        again = emb.map(ds, batch_size=8)
    facts = hp.provenance(again)[-1]["executor"]
    assert (facts["shards"], facts["shards_computed"], facts["shards_reused"]) == (8, 1, 7)
    assert facts["actors_start_s"] > 0 and facts["shards_s"] > 0
    after = shard_files(folder)
    changed = sorted(name for name in after if after[name] != before.get(name))
    assert changed == sorted(["shard-00003-of-00008.json", f"shard-00003-of-00008{suffix}"])
    assert np.array_equal(np.asarray(again["emb"], np.float32), np.asarray(single["emb"], np.float32))

    # Everything written: no actor at all, same column; a changed batch size is a new layout.
    with hp.parallel.ray(workers=2, storage=tmp_path, progress=False, shard_format=shard_format):
        third = emb.map(ds, batch_size=8)
    assert hp.provenance(third)[-1]["executor"]["actors"] == 0 and third["emb"] == again["emb"]


def test_actors_are_kept_for_the_next_map_and_given_back_to_tasks(tmp_path):
    emb, ds = tiny_text_embedder(), Dataset.from_dict({"text": texts(24), "label": [i % 2 for i in range(24)]})
    with hp.parallel.ray(workers=2, storage=tmp_path, progress=False) as executor:
        first = emb.map(ds, batch_size=4)
        assert executor.ray.available_resources().get("CPU", 0) == 0  # the two idle actors keep their CPUs
        second = emb.map(ds.select(range(12)), batch_size=4)  # another dataset: new shards, the same processes
        pids = [hp.provenance(out)[-1]["executor"]["actor_pids"] for out in (first, second)]
        assert len(pids[0]) == 2 and set(pids[1]) <= set(pids[0])
        assert second["emb"] == first["emb"][:12]
        # A selector's Ray tasks get the CPUs: the actors are handed back rather than waited for.
        sub = hp.select.gm_matching(first, fraction=0.5, embedding_column="emb", label_column="label")
        assert len(sub) == 12 and hp.provenance(sub)[-1]["executor"]["name"] == "ray"
        third = emb.map(ds.select(range(8)), batch_size=4)  # new actors, new processes
        assert not set(hp.provenance(third)[-1]["executor"]["actor_pids"]) & set(pids[0])
    deadline = time.monotonic() + 30  # the block's end kills them (Ray frees their CPUs asynchronously)
    while executor.ray.available_resources().get("CPU") != 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert executor.ray.available_resources().get("CPU") == 2


def tiny_images(n):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(n)]
    features = Features({"row_id": Value("int64"), "image": Image(), "label": Value("int64")})
    return Dataset.from_dict({"row_id": list(range(n)), "image": images, "label": [i % 3 for i in range(n)]},
                             features=features)


@pytest.mark.slow  # ~40 s: two actors start, one is killed and restarted
def test_a_killed_actor_is_restarted_and_the_column_is_whole(tmp_path):
    # A shuffled, selected view (an indices mapping): shards follow its order and its row_id keys them.
    ds = tiny_images(300).shuffle(seed=0).select(range(240))
    # The untrained CIFAR ResNet-18 (conv + batch norm) at ~25 ms a row: long enough to be caught mid-shard.
    emb = hp.embed.RandomNetEmbedder(seed=3, image_column="image", output_column="emb", batch_size=4,
                                     storage_dtype="float16")
    single = one_process(emb, ds, batch_size=8)
    killed = []

    def kill_one_actor_mid_shard():
        deadline = time.monotonic() + 240
        while not killed and time.monotonic() < deadline:
            for proc in psutil.process_iter(["cmdline"]):
                cmdline = proc.info["cmdline"] or []
                if cmdline and cmdline[0].startswith("ray::ColumnActor.write_shard"):
                    time.sleep(0.2)  # into the shard's batches
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(proc.pid)
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one_actor_mid_shard, daemon=True)
    with hp.parallel.ray(workers=2, storage=tmp_path, progress=False, max_retries=2):
        killer.start()
        out = emb.map(ds, batch_size=8)
    killer.join()
    assert killed, "no actor was caught writing a shard"
    assert out["row_id"] == ds["row_id"] and out.features == single.features  # no row missing or twice, float16 kept
    assert np.array_equal(np.asarray(out["emb"], np.float16), np.asarray(single["emb"], np.float16))
    facts = hp.provenance(out)[-1]["executor"]
    assert facts["shards_computed"] == facts["shards"] == 8
    # The two actors and the restarted one, less the killed one if it had not finished a shard yet.
    assert facts["actor_processes"] in (2, 3) and facts["actors"] == 2


def test_a_failing_shard_is_named_and_left_without_a_marker(tmp_path):
    rows = texts(40)
    rows[29] = None  # map batch 7 of 10 (batch size 4): shard 6 of 8 (batches 7-7 of 10), rows 28-31
    ds = Dataset.from_dict({"text": rows})
    with hp.parallel.ray(workers=2, storage=tmp_path, progress=False, max_retries=1) as executor:
        with pytest.raises(TaskFailed, match=r"shard 6 of 8 \(rows 28-31, shard-00006-of-00008\).*expected a string"):
            tiny_text_embedder().map(ds, batch_size=4)
        (folder,) = tmp_path.iterdir()
        names = {p.name for p in folder.iterdir()}
        assert "shard-00006-of-00008.json" not in names and "shard-00006-of-00008.arrow" not in names
        assert not any(name.startswith("columns-") or ".tmp" in name for name in names), sorted(names)
        deadline = time.monotonic() + 30  # the actors' CPUs come back to the cluster (asynchronously)
        while executor.ray.available_resources().get("CPU") != 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert executor.ray.available_resources().get("CPU") == 2


def test_bad_input_is_refused_before_any_actor_starts(tmp_path):
    emb, ds = tiny_text_embedder(), Dataset.from_dict({"text": texts(6)})
    with hp.parallel.ray(workers=2, storage=tmp_path, progress=False) as executor:
        with pytest.raises(ValueError, match="empty"):
            emb.map(ds.select([]))
        with pytest.raises(KeyError, match="text"):
            emb.map(ds.rename_column("text", "words"))
        with pytest.raises(ValueError, match="emb"):
            emb.map(ds.add_column("emb", [[0.0]] * 6))
        with pytest.raises(ValueError, match="`row_id` column holds"):
            emb.map(ds.add_column("row_id", [str(i) for i in range(6)]))
        with pytest.raises(TypeError, match="cache_file_name"):
            emb.map(ds, cache_file_name=str(tmp_path / "x.arrow"))
        with pytest.raises(TypeError, match="`executor` must be a RayExecutor"):
            map_on_ray(emb, ds, executor="ray")
        with pytest.raises(ValueError, match="batch_size"):
            map_on_ray(emb, ds, executor=executor, batch_size=0)
    with pytest.raises(ValueError, match="`shard_format` must be one of"):
        hp.parallel.ray(workers=2, storage=tmp_path, shard_format="csv").__enter__()
    assert list(tmp_path.iterdir()) == []
