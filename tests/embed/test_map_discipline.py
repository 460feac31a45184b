"""map discipline: fingerprints, caching, no weight pickling, nothing half-written, multi-process."""

import os
import pickle

import multiprocess
import numpy as np
import pytest
import torch
import transformers as T
from datasets import Dataset, load_from_disk
from datasets import Image as ImageFeature
from datasets.fingerprint import Hasher
from datasets.utils import _dill
from PIL import Image

import hf_prune as hp
from hf_prune.embed._base import Embedder, _checksum_tensors

ViTProcessor = getattr(T, "ViTImageProcessorPil", T.ViTImageProcessor)


def dinov2(seed=0, hidden=32):
    torch.manual_seed(seed)
    config = T.Dinov2Config(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                            image_size=32, patch_size=8)
    return T.Dinov2Model(config).eval()


def embedder(model=None, **kw):
    return hp.embed.ImageEmbedder(model if model is not None else dinov2(), processor=ViTProcessor(size={"height": 32, "width": 32}), **kw)


def image_dataset(n=8, seed=0):
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]
    return Dataset.from_dict({"image": images}).cast_column("image", ImageFeature())


class RankProbe(Embedder):
    """Writes the rank each row was processed under (and the row's first pixel, to check order)."""

    def __init__(self):
        super().__init__(input_columns=["x"], device="cpu")

    def _output_dims(self):
        return {"rank": None, "x_out": None}

    def __call__(self, batch, rank=None):
        self._rank = -1 if rank is None else rank
        return super().__call__(batch, rank)

    def _embed(self, batch, device):
        x = np.asarray(batch["x"], np.float32)
        return {"rank": np.full(len(x), self._rank, np.float32), "x_out": x}


def test_hash_is_a_small_spec_not_the_weights(monkeypatch):
    a, b = embedder(dinov2(0)), embedder(dinov2(0))
    assert a is not b and Hasher.hash(a) == Hasher.hash(b)  # identical weights, separate instances
    assert Hasher.hash(embedder(dinov2(1))) != Hasher.hash(a)  # other weights
    assert Hasher.hash(embedder(dinov2(0), pooling="mean")) != Hasher.hash(a)  # other settings
    assert Hasher.hash(embedder(dinov2(0), output_column="z")) != Hasher.hash(a)
    tweaked = dinov2(0)
    with torch.no_grad():
        next(tweaked.parameters()).view(-1)[0] += 1e-3  # one weight differs
    assert Hasher.hash(embedder(tweaked)) != Hasher.hash(a)

    # A 45 MB network hashes to a few hundred bytes, and no tensor reaches the pickler.
    big = hp.embed.RandomNetEmbedder(seed=0)
    n_bytes = sum(p.numel() * p.element_size() for p in big.model.parameters())
    assert n_bytes > 40e6

    def refuse(pickler, obj):
        raise AssertionError("a tensor was pickled while hashing")

    monkeypatch.setitem(_dill.Pickler.dispatch, torch.Tensor, refuse)
    monkeypatch.setitem(_dill.Pickler.dispatch, torch.nn.Parameter, refuse)
    assert len(_dill.dumps(big)) < 1000
    assert len(_dill.dumps(a)) < 1000
    assert Hasher.hash(big) == Hasher.hash(hp.embed.RandomNetEmbedder(seed=0))
    assert Hasher.hash(big) != Hasher.hash(hp.embed.RandomNetEmbedder(seed=1))


def test_checksum_is_computed_once(monkeypatch):
    emb = embedder()
    calls = []
    original = _checksum_tensors
    monkeypatch.setattr("hf_prune.embed._base._checksum_tensors", lambda items: calls.append(1) or original(items))
    first = emb.fingerprint()
    assert emb.fingerprint() == first and Hasher.hash(emb) == Hasher.hash(emb)
    assert len(calls) == 1


def test_second_identical_map_hits_the_cache(tmp_path):
    image_dataset().save_to_disk(str(tmp_path / "ds"))
    ds = load_from_disk(str(tmp_path / "ds"))
    first = embedder(dinov2(0)).map(ds, batch_size=4)

    again = embedder(dinov2(0))  # a new instance, same weights and settings

    def fail(*args, **kwargs):
        raise AssertionError("recomputed instead of loading from the cache")

    again._embed = fail
    second = again.map(ds, batch_size=4)
    assert [f["filename"] for f in second.cache_files] == [f["filename"] for f in first.cache_files]
    assert second._fingerprint == first._fingerprint
    np.testing.assert_array_equal(np.asarray(second["emb"]), np.asarray(first["emb"]))
    # Different weights: a different fingerprint, so a new computation.
    other = embedder(dinov2(1)).map(ds, batch_size=4)
    assert other._fingerprint != first._fingerprint
    assert not np.allclose(np.asarray(other["emb"]), np.asarray(first["emb"]))


def test_failure_leaves_nothing_half_written(tmp_path):
    cells = [np.zeros((32, 32, 3), np.uint8).tolist()] * 5 + [None] + [np.ones((32, 32, 3), np.uint8).tolist()] * 2
    Dataset.from_dict({"image": cells, "i": list(range(8))}).save_to_disk(str(tmp_path / "ds"))
    ds = load_from_disk(str(tmp_path / "ds"))
    before = sorted(os.listdir(tmp_path / "ds"))
    with pytest.raises(ValueError, match=r"column 'image', row 1 of the batch"):
        embedder().map(ds, batch_size=4)  # the second batch fails after the first was written
    assert sorted(os.listdir(tmp_path / "ds")) == before  # no cache or temp file left behind
    assert ds.column_names == ["image", "i"] and len(ds) == 8


def test_map_by_hand_equals_helper_and_guards():
    ds = image_dataset(5)
    emb = embedder()
    by_hand = ds.map(emb, batched=True, batch_size=2, features=emb.features_for(ds))
    assert by_hand.features == emb.map(ds).features
    np.testing.assert_allclose(np.asarray(by_hand["emb"]), np.asarray(emb.map(ds)["emb"]), rtol=1e-6)
    with pytest.raises(TypeError, match="batched=True"):
        ds.map(emb)
    with pytest.raises(TypeError, match="features"):
        emb.map(ds, features=emb.features_for(ds))
    with pytest.raises(ValueError, match="batch_size"):
        embedder(batch_size=0)


def test_plain_pickle_carries_the_weights():
    ds = image_dataset(3)
    emb = embedder()
    emb.map(ds)  # places the model
    assert emb._placed_on is not None
    clone = pickle.loads(pickle.dumps(emb))
    assert clone._placed_on is None and clone.fingerprint() == emb.fingerprint()
    np.testing.assert_array_equal(np.asarray(clone.map(ds)["emb"]), np.asarray(emb.map(ds)["emb"]))


def test_num_proc_with_rank_gives_the_one_process_column():
    ds = image_dataset(10)
    emb = embedder()
    one = np.asarray(emb.map(ds, batch_size=3)["emb"])
    two = emb.map(ds, batch_size=3, num_proc=2)
    np.testing.assert_allclose(np.asarray(two["emb"]), one, rtol=1e-5, atol=1e-6)
    probe = RankProbe().map(Dataset.from_dict({"x": np.arange(10.0)}), batch_size=3, num_proc=2)
    assert probe["x_out"] == list(np.arange(10.0))  # rows come back in order
    assert sorted(set(probe["rank"])) == [0.0, 1.0]  # each worker saw its rank
    assert probe["rank"] == sorted(probe["rank"])  # contiguous shards: rank 0 first


def test_rank_selects_the_gpu(monkeypatch):
    emb = RankProbe()
    emb.device = None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert emb.target_device(None) == torch.device("cuda")
    assert emb.target_device(3) == torch.device("cuda", 1)
    emb.device = "cpu"
    assert emb.target_device(3) == torch.device("cpu")


@pytest.mark.slow
def test_spawn_workers_give_the_one_process_column():
    """The documented GPU path (spawned workers, one per device), exercised on CPU."""
    ds = image_dataset(6)
    emb = embedder()
    one = np.asarray(emb.map(ds, batch_size=3)["emb"])
    previous = multiprocess.get_start_method(allow_none=True)
    multiprocess.set_start_method("spawn", force=True)
    try:
        two = emb.map(ds, batch_size=3, num_proc=2)
    finally:
        multiprocess.set_start_method(previous, force=True)
    np.testing.assert_allclose(np.asarray(two["emb"]), one, rtol=1e-5, atol=1e-6)


def test_arrow_formatted_dataset_gives_the_same_column():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (6, 6), dtype=np.uint8) for _ in range(5)]
    ds = Dataset.from_dict({"image": [Image.fromarray(a) for a in arrays]}).cast_column("image", ImageFeature())
    embedder = hp.embed.PixelEmbedder(image_column="image")
    expected = np.asarray(embedder.map(ds)["emb"])
    got = ds.with_format("arrow").map(embedder, batched=True, batch_size=2)
    np.testing.assert_array_equal(np.asarray(got.with_format(None)["emb"]), expected)
