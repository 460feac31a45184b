"""map_distributed: one process, simulated ranks, resume, errors, and a real two-process launch."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset

import hf_prune as hp
from hf_prune.embed._base import Embedder
from hf_prune.embed.distributed import batch_aligned_bounds, map_distributed

from .distributed_embed_script import BATCH, tiny_embedder, tiny_images

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().with_name("distributed_embed_script.py")


class TinyMLP(Embedder):
    """Linear → tanh → Linear over a 5-wide float column; counts its forward chunks."""

    def __init__(self, seed=0, batch_size=3):
        torch.manual_seed(seed)
        self.model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 4))
        self.calls = 0
        super().__init__(input_columns=["x"], device="cpu", batch_size=batch_size)

    def _output_dims(self):
        return {"emb": 4, "norm": None}

    def _modules(self):
        return {"model": self.model}

    def _embed(self, batch, device):
        self.calls += 1
        out = self.model(torch.as_tensor(np.asarray(batch["x"], np.float32), device=device))
        return {"emb": out, "norm": out.norm(dim=1)}


def rank(index, world):
    return SimpleNamespace(process_index=index, num_processes=world, device=torch.device("cpu"),
                           is_main_process=index == 0)


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    return Dataset.from_dict({"row_id": list(range(23)), "x": rng.normal(size=(23, 5)).astype(np.float32).tolist(),
                              "label": rng.integers(0, 3, 23).tolist()})


def test_bounds_are_whole_batches_covering_every_row_once():
    for rows, batch, world in [(23, 4, 2), (23, 4, 3), (5, 4, 4), (1, 1, 1), (100, 7, 6)]:
        bounds = [batch_aligned_bounds(rows, batch, world, r) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == rows
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert all(start % batch == 0 or start == rows for start, _ in bounds)
    assert [batch_aligned_bounds(5, 4, 4, r) for r in range(4)] == [(0, 0), (0, 4), (4, 4), (4, 5)]
    with pytest.raises(ValueError, match="index"):
        batch_aligned_bounds(5, 4, 2, 2)


def test_one_process_equals_the_plain_map(data, tmp_path):
    emb = TinyMLP()
    single = data.map(emb, batched=True, batch_size=4, features=emb.features_for(data))
    out = map_distributed(data, emb, output_dir=tmp_path / "shards", batch_size=4, state=rank(0, 1))
    assert out.column_names == ["row_id", "x", "label", "emb", "norm"]
    for column in ("row_id", "x", "label", "emb", "norm"):
        assert out[column] == single[column], column
    assert out.features == single.features
    assert hp.provenance(out)[-1]["method"] == "embed.TinyMLP"
    assert data.column_names == ["row_id", "x", "label"]  # the input is untouched
    assert sorted(os.listdir(tmp_path / "shards")) == ["shard-00000-of-00001.arrow", "shard-00000-of-00001.json"]


def test_the_default_state_is_one_process_here(data, tmp_path):
    emb = TinyMLP()
    out = map_distributed(data, emb, output_dir=tmp_path)  # accelerate's PartialState, batch_size=3
    assert np.array_equal(np.asarray(out["emb"]), np.asarray(emb.map(data)["emb"]))


def test_ranks_write_their_shards_and_read_everyone_s(data, tmp_path):
    # Three "processes" run one after another: the first two find a shard still missing.
    single = TinyMLP().map(data, batch_size=4)
    for index, missing in ((2, 0), (0, 1)):
        with pytest.raises(ValueError, match=rf"shard {missing} of 3 .* is missing"):
            map_distributed(data, TinyMLP(), output_dir=tmp_path, batch_size=4, state=rank(index, 3))
    emb = TinyMLP()
    out = map_distributed(data, emb, output_dir=tmp_path, batch_size=4, state=rank(1, 3))
    assert emb.calls == 4  # only its own rows 8..15: two map batches of 4, each as forward chunks of 3 + 1
    assert out["emb"] == single["emb"] and out["norm"] == single["norm"] and out["row_id"] == single["row_id"]
    # Every rank returns the same whole dataset.
    again = map_distributed(data, TinyMLP(), output_dir=tmp_path, batch_size=4, state=rank(0, 3))
    assert again["emb"] == single["emb"]


def test_a_written_shard_is_skipped_and_a_changed_batch_size_recomputed(data, tmp_path):
    map_distributed(data, TinyMLP(), output_dir=tmp_path, batch_size=4, state=rank(0, 1))
    arrow = tmp_path / "shard-00000-of-00001.arrow"
    written = arrow.stat().st_mtime_ns
    emb = TinyMLP()
    out = map_distributed(data, emb, output_dir=tmp_path, batch_size=4, state=rank(0, 1))
    assert emb.calls == 0 and arrow.stat().st_mtime_ns == written
    assert out["emb"] == TinyMLP().map(data, batch_size=4)["emb"]
    emb = TinyMLP()
    out = map_distributed(data, emb, output_dir=tmp_path, batch_size=6, state=rank(0, 1))
    assert emb.calls > 0 and out["emb"] == TinyMLP().map(data, batch_size=6)["emb"]


def test_a_shard_without_its_marker_is_recomputed(data, tmp_path):
    # A process killed after the Arrow file but before the marker: the file is not trusted.
    map_distributed(data, TinyMLP(), output_dir=tmp_path, batch_size=4, state=rank(0, 1))
    (tmp_path / "shard-00000-of-00001.json").unlink()
    emb = TinyMLP()
    map_distributed(data, emb, output_dir=tmp_path, batch_size=4, state=rank(0, 1))
    assert emb.calls > 0 and (tmp_path / "shard-00000-of-00001.json").exists()


def test_shards_of_another_embedder_or_dataset_are_refused(data, tmp_path):
    map_distributed(data, TinyMLP(seed=0), output_dir=tmp_path, batch_size=4, state=rank(0, 1))
    with pytest.raises(ValueError, match="different embedder.*embedder_fingerprint"):
        map_distributed(data, TinyMLP(seed=1), output_dir=tmp_path, batch_size=4, state=rank(0, 1))
    # ... also when they were written by another number of processes
    with pytest.raises(ValueError, match="shard-00000-of-00001.json, written by a different embedder"):
        map_distributed(data, TinyMLP(seed=1), output_dir=tmp_path, batch_size=4, state=rank(0, 2))
    with pytest.raises(ValueError, match="different dataset.*dataset_fingerprint"):
        map_distributed(data.select(range(20)), TinyMLP(seed=0), output_dir=tmp_path, batch_size=4,
                        state=rank(0, 1))
    (tmp_path / "shard-00000-of-00002.json").write_text("not json")
    with pytest.raises(ValueError, match="unreadable shard marker shard-00000-of-00002.json"):
        map_distributed(data, TinyMLP(seed=0), output_dir=tmp_path, batch_size=4, state=rank(0, 1))


def test_bad_arguments_name_the_parameter(data, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"`output_dir`=.*file.* is a file"):
        map_distributed(data, TinyMLP(), output_dir=tmp_path / "file", state=rank(0, 1))
    with pytest.raises(ValueError, match="`output_dir`=.* cannot be created"):
        map_distributed(data, TinyMLP(), output_dir=tmp_path / "file" / "below", state=rank(0, 1))
    with pytest.raises(TypeError, match="`output_dir`"):
        map_distributed(data, TinyMLP(), output_dir=None, state=rank(0, 1))
    with pytest.raises(ValueError, match="empty"):
        map_distributed(data.select([]), TinyMLP(), output_dir=tmp_path, state=rank(0, 1))
    with pytest.raises(KeyError, match="'x'"):
        map_distributed(data.remove_columns("x"), TinyMLP(), output_dir=tmp_path, state=rank(0, 1))
    with pytest.raises(ValueError, match="batch_size"):
        map_distributed(data, TinyMLP(), output_dir=tmp_path, batch_size=0, state=rank(0, 1))
    with pytest.raises(TypeError, match="`num_proc` is set by map_distributed"):
        map_distributed(data, TinyMLP(), output_dir=tmp_path, num_proc=2, state=rank(0, 1))
    with pytest.raises(TypeError, match="Embedder"):
        map_distributed(data, lambda batch: batch, output_dir=tmp_path, state=rank(0, 1))
    assert not list(tmp_path.glob("shard-*"))


def test_existing_output_columns_need_overwrite(data, tmp_path):
    first = map_distributed(data, TinyMLP(seed=0), output_dir=tmp_path / "a", batch_size=4, state=rank(0, 1))
    with pytest.raises(ValueError, match="emb"):
        map_distributed(first, TinyMLP(seed=1), output_dir=tmp_path / "b", batch_size=4, state=rank(0, 1))
    out = map_distributed(first, TinyMLP(seed=1), output_dir=tmp_path / "b", batch_size=4, overwrite=True,
                          state=rank(0, 1))
    assert out.column_names == ["row_id", "x", "label", "emb", "norm"]
    assert out["emb"] == TinyMLP(seed=1).map(data, batch_size=4)["emb"]
    assert first["emb"] == TinyMLP(seed=0).map(data, batch_size=4)["emb"]


def test_only_the_main_process_shows_a_progress_bar(data, tmp_path):
    import datasets

    seen = []

    class Watching(TinyMLP):
        def _embed(self, batch, device):
            seen.append(datasets.are_progress_bars_disabled())
            return super()._embed(batch, device)

    datasets.enable_progress_bars()  # the test suite turns them off; a launched script has them on
    try:
        with pytest.raises(ValueError, match="shard 1 of 2"):  # run alone, rank 0 then misses shard 1
            map_distributed(data, Watching(), output_dir=tmp_path, batch_size=4, state=rank(0, 2))
        assert seen and not any(seen)
        seen.clear()
        map_distributed(data, Watching(), output_dir=tmp_path, batch_size=4, state=rank(1, 2))
        assert seen and all(seen)
        assert not datasets.are_progress_bars_disabled()  # switched back on after the map
    finally:
        datasets.disable_progress_bars()


def test_an_error_on_one_process_is_raised_on_every_process(monkeypatch):
    from hf_prune.embed import distributed

    monkeypatch.setattr(distributed.torch.distributed, "is_initialized", lambda: True)

    def gather(out, mine):
        out[0], out[1] = mine, "MemoryError: out of memory"

    monkeypatch.setattr(distributed.torch.distributed, "all_gather_object", gather)
    with pytest.raises(RuntimeError, match=r"rank 1: MemoryError: out of memory"):
        distributed._agree(None, 0, 2)
    with pytest.raises(KeyError):  # the failing process raises its own error
        distributed._agree(KeyError("x"), 1, 2)


# Two processes (gloo on the CPU) started by accelerate, each importing torch and datasets.
def test_two_launched_processes_equal_one_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    # --multi_gpu on a machine without GPUs starts torchrun-style CPU processes; `--cpu --num_processes 2`
    # would need mpirun and, without it, runs one process.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT), str(tmp_path)]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ds, emb = tiny_images(), tiny_embedder()
    single = emb.map(ds, batch_size=BATCH)
    expected = np.asarray(single["emb"], dtype=np.float32)
    for r in range(2):
        info = json.loads((tmp_path / f"rank_{r}.json").read_text())
        assert info["world"] == 2 and info["rank"] == r
        assert info["row_id"] == single["row_id"] and info["columns"] == ["row_id", "image", "emb"]
        assert info["method"] == "embed.RandomNetEmbedder"
        assert np.array_equal(np.load(tmp_path / f"emb_{r}.npy"), expected), f"rank {r}"
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [
        "shard-00000-of-00002.arrow", "shard-00000-of-00002.json", "shard-00001-of-00002.arrow",
        "shard-00001-of-00002.json"]
    markers = [json.loads((tmp_path / "shards" / f"shard-0000{r}-of-00002.json").read_text()) for r in range(2)]
    assert [(m["start"], m["stop"]) for m in markers] == [(0, 20), (20, 37)]
    assert markers[0]["embedder_fingerprint"] == emb.fingerprint()


def test_a_shuffled_dataset_keeps_its_order(data, tmp_path):
    shuffled = data.shuffle(seed=0)  # an indices mapping: shards are cut in the shuffled order
    single = TinyMLP().map(shuffled, batch_size=4)
    with pytest.raises(ValueError, match="shard 0 of 2"):
        map_distributed(shuffled, TinyMLP(), output_dir=tmp_path, batch_size=4, state=rank(1, 2))
    out = map_distributed(shuffled, TinyMLP(), output_dir=tmp_path, batch_size=4, state=rank(0, 2))
    assert out["row_id"] == single["row_id"] != data["row_id"]
    assert out["emb"] == single["emb"] and out["x"] == single["x"]
