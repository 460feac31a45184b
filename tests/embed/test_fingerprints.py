"""Fingerprints are deterministic for every embedder and follow the weights a map actually uses."""

import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers as T
from datasets import Dataset, load_from_disk
from datasets import Image as ImageFeature
from datasets.fingerprint import Hasher
from PIL import Image

import hf_prune as hp
from hf_prune.embed import _base
from hf_prune.embed._base import Embedder
from tests.embed.test_clip import WORDS, tiny_clip, word_tokenizer
from tests.embed.test_image import processor, tiny_dinov2

peft = pytest.importorskip("peft")

def image_embedder(model=None):
    return hp.embed.ImageEmbedder(tiny_dinov2() if model is None else model, processor=processor())


def clip_embedder():
    return hp.embed.CLIPEmbedder(tiny_clip(), image_processor=processor(), tokenizer=word_tokenizer(),
                                 text_column="caption")


def text_embedder():
    torch.manual_seed(0)
    model = T.BertModel(T.BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=16), add_pooling_layer=False).eval()
    return hp.embed.TextEmbedder(model, tokenizer=word_tokenizer(), text_column="caption")


def lora_embedder():
    torch.manual_seed(0)
    config = T.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           num_key_value_heads=2, vocab_size=len(WORDS))
    lora = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return hp.embed.LoRAGradientEmbedder(peft.get_peft_model(T.LlamaForCausalLM(config), lora), dim=8, device="cpu")


def hidden_state_embedder():
    torch.manual_seed(0)
    config = T.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           num_key_value_heads=2, vocab_size=len(WORDS))
    return hp.embed.HiddenStateEmbedder(T.LlamaForCausalLM(config), input_ids_column="input_ids", device="cpu")


def random_net_embedder():
    config = T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_channels=3)
    return hp.embed.RandomNetEmbedder(seed=0, config=config, image_size=16)


# One builder per embedder class; every call builds a new, identical instance.
BUILDERS = {
    "CLIPEmbedder": clip_embedder,
    "HiddenStateEmbedder": hidden_state_embedder,
    "ImageEmbedder": image_embedder,
    "LoRAGradientEmbedder": lora_embedder,
    "PixelEmbedder": lambda: hp.embed.PixelEmbedder(image_column="image"),  # width learned from the data
    "PixelEmbedder(size=8)": lambda: hp.embed.PixelEmbedder(image_column="image", size=8),
    "RandomNetEmbedder": random_net_embedder,
    "TextEmbedder": text_embedder,
}


def rows(n=6):
    rng = np.random.default_rng(0)
    ids = [rng.integers(3, len(WORDS), 6).tolist() for _ in range(n)]
    return {
        "image": [Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)) for _ in range(n)],
        "caption": ["a photo of a red cat", "blue dog", "a cat", "dog dog dog", "red", "a blue cat"][:n],
        "input_ids": ids,
        "labels": [[-100, -100] + row[2:] for row in ids],
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A dataset loaded from disk, so maps on it are written to (and read back from) a cache folder."""
    path = tmp_path_factory.mktemp("fingerprints") / "ds"
    Dataset.from_dict(rows()).cast_column("image", ImageFeature()).save_to_disk(str(path))
    return str(path)


def test_every_embedder_class_is_covered():
    classes = {n for n in hp.embed.__all__ if isinstance(getattr(hp.embed, n), type) and issubclass(getattr(hp.embed, n), Embedder)}
    assert classes == {name.split("(")[0] for name in BUILDERS}


def fail(*args, **kwargs):
    raise AssertionError("recomputed instead of loading from the cache")


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_identical_runs_hash_the_same_and_hit_the_cache(name, saved, random_hash_records):
    build = BUILDERS[name]
    ds = load_from_disk(saved)
    first = build().map(ds, batch_size=4)
    again = build()
    again._embed = fail  # a new identical instance must load the cached column
    second = again.map(ds, batch_size=4)
    assert second._fingerprint == first._fingerprint
    assert [f["filename"] for f in second.cache_files] == [f["filename"] for f in first.cache_files]
    for column in build().output_columns:  # known before any data is seen
        np.testing.assert_array_equal(np.asarray(second[column]), np.asarray(first[column]))

    # By hand, without `features=` (nothing learned from the data before hashing): the same holds.
    by_hand = ds.map(build(), batched=True, batch_size=4)
    again = build()
    again._embed = fail
    assert ds.map(again, batched=True, batch_size=4)._fingerprint == by_hand._fingerprint
    assert random_hash_records == []


@pytest.mark.parametrize("name", ["ImageEmbedder", "PixelEmbedder"])
def test_in_memory_runs_have_the_same_fingerprint(name, random_hash_records):
    ds = Dataset.from_dict({"image": rows()["image"]}).cast_column("image", ImageFeature())
    build = BUILDERS[name]
    assert build().map(ds)._fingerprint == build().map(ds)._fingerprint
    assert ds.map(build(), batched=True)._fingerprint == ds.map(build(), batched=True)._fingerprint
    assert random_hash_records == []


# ----------------------------------------------------------------------------- weights changed in place
def test_in_place_weight_change_gives_a_fresh_column(saved):
    ds = load_from_disk(saved).select_columns(["image"])
    emb = image_embedder()
    first = emb.map(ds, batch_size=4)
    with torch.no_grad():
        emb.model.embeddings.patch_embeddings.projection.weight.add_(1)
    second = emb.map(ds, batch_size=4)
    assert second._fingerprint != first._fingerprint
    fresh = image_embedder(copy.deepcopy(emb.model)).map(ds, batch_size=4, load_from_cache_file=False)
    np.testing.assert_allclose(np.asarray(second["emb"]), np.asarray(fresh["emb"]), rtol=1e-6)
    assert not np.allclose(np.asarray(second["emb"]), np.asarray(first["emb"]))


@pytest.mark.parametrize("assign", [False, True])
def test_loading_a_state_dict_changes_the_fingerprint(assign):
    emb = image_embedder(tiny_dinov2(0))
    before = Hasher.hash(emb)
    emb.model.load_state_dict(tiny_dinov2(1).state_dict(), assign=assign)
    assert Hasher.hash(emb) != before
    assert Hasher.hash(emb) == Hasher.hash(image_embedder(tiny_dinov2(1)))
    emb.model.load_state_dict(tiny_dinov2(0).state_dict(), assign=assign)
    assert Hasher.hash(emb) == before


def test_dtype_and_replaced_data_change_the_fingerprint():
    emb = image_embedder(tiny_dinov2(0))
    before = emb.fingerprint()
    emb.model.double()  # same parameter objects and versions, other bytes
    assert emb.fingerprint() != before
    emb.model.float()
    assert emb.fingerprint() == before
    weight = emb.model.embeddings.patch_embeddings.projection.weight
    weight.data = weight.data + 1  # a new storage behind the same parameter, version unchanged
    assert emb.fingerprint() != before


def test_an_unchanged_model_is_checksummed_once(monkeypatch):
    emb = image_embedder()
    ds = Dataset.from_dict({"image": rows(3)["image"]}).cast_column("image", ImageFeature())
    calls = []
    original = _base._checksum_tensors
    monkeypatch.setattr(_base, "_checksum_tensors", lambda items: calls.append(1) or original(items))
    first = emb.fingerprint()
    emb.map(ds)
    emb.map(ds)  # the forward passes and the move to the device leave the weights as they were
    assert emb.fingerprint() == first and Hasher.hash(emb) == Hasher.hash(emb)
    assert len(calls) == 1
    with torch.no_grad():
        next(emb.model.parameters()).mul_(2)
    assert emb.fingerprint() != first
    assert len(calls) == 2


def test_fingerprint_is_the_same_in_another_process():
    code = (
        "import transformers as T, hf_prune as hp\n"
        "from datasets.fingerprint import Hasher\n"
        "config = T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_channels=3)\n"
        "print(Hasher.hash(hp.embed.RandomNetEmbedder(seed=0, config=config, image_size=16)))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip().splitlines()[-1] == Hasher.hash(random_net_embedder())


def test_refresh_fingerprint_sees_edits_through_data():
    emb = image_embedder(tiny_dinov2(0))
    before = emb.fingerprint()
    emb.model.embeddings.patch_embeddings.projection.weight.data.add_(1)  # torch does not count this edit
    assert emb.fingerprint() == before  # the documented limit of the version counter
    changed = emb.refresh_fingerprint()
    assert changed != before and emb.fingerprint() == changed


def test_tokenize_prompt_response_hashes_deterministically(tmp_path, random_hash_records):
    Dataset.from_dict({"prompt": ["a red", "blue"], "response": [" cat", " dog dog"]}).save_to_disk(str(tmp_path / "ds"))
    ds = load_from_disk(str(tmp_path / "ds"))
    first = hp.embed.tokenize_prompt_response(ds, word_tokenizer())
    second = hp.embed.tokenize_prompt_response(ds, word_tokenizer())
    assert second._fingerprint == first._fingerprint
    assert [f["filename"] for f in second.cache_files] == [f["filename"] for f in first.cache_files]
    assert random_hash_records == []
