from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers as T
from datasets import Dataset, Value
from datasets import Image as ImageFeature
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers

import hf_prune as hp

ViTProcessor = getattr(T, "ViTImageProcessorPil", T.ViTImageProcessor)
WORDS = ["[PAD]", "[UNK]", "[EOS]", "a", "red", "blue", "cat", "dog", "photo", "of"]


def word_tokenizer():
    """A real fast tokenizer over a 10-word vocabulary (no vocab files to download)."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")


def tiny_clip(seed=0):
    torch.manual_seed(seed)
    # eos_token_id=2: CLIP's text pooling then takes the highest-id token (the legacy rule), fine here.
    config = T.CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=len(WORDS), max_position_embeddings=12, eos_token_id=2, bos_token_id=1, pad_token_id=0),
        vision_config=dict(hidden_size=16, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )
    return T.CLIPModel(config).eval()


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32 + i, 30, 3), dtype=np.uint8)) for i in range(6)]
    images[2] = images[2].convert("L")  # a grayscale row among RGB ones
    texts = ["a photo of a red cat", "blue dog", "a cat", "dog dog dog", "red", "a photo of a blue cat"]
    ds = Dataset.from_dict({"image": images, "caption": texts}).cast_column("image", ImageFeature())
    return tiny_clip(), ViTProcessor(size={"height": 32, "width": 32}), word_tokenizer(), ds, images, texts


def direct(model, proc, tok, images, texts):
    pixel_values = proc(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
    tokens = tok(texts, padding=True, truncation=True, max_length=12, return_tensors="pt")
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixel_values)
        text = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    image = getattr(image, "pooler_output", image)
    text = getattr(text, "pooler_output", text)
    return image.numpy(), text.numpy()


def test_three_columns_equal_direct_forward(setup):
    model, proc, tok, ds, images, texts = setup
    clip = hp.embed.CLIPEmbedder(model, image_processor=proc, tokenizer=tok, text_column="caption", batch_size=4)
    out = clip.map(ds, batch_size=5)
    image, text = direct(model, proc, tok, images, texts)
    unit_i = image / np.linalg.norm(image, axis=1, keepdims=True)
    unit_t = text / np.linalg.norm(text, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(out["image_emb"]), unit_i, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["text_emb"]), unit_t, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["clip_score"]), (unit_i * unit_t).sum(1), rtol=1e-5, atol=1e-5)
    assert out.features["clip_score"] == Value("float32")
    assert out.features["image_emb"].length == 8 and out.features["text_emb"].length == 8
    # The separate score function over the two stored columns agrees.
    rescored = hp.score.clip_score(out, output_column="again")
    np.testing.assert_allclose(np.asarray(rescored["again"]), np.asarray(out["clip_score"]), rtol=1e-5, atol=1e-6)


def test_unnormalised_columns_and_processor_object(setup):
    model, proc, tok, ds, images, texts = setup
    processor = SimpleNamespace(image_processor=proc, tokenizer=tok)
    clip = hp.embed.CLIPEmbedder(model, processor=processor, text_column="caption", normalize=False,
                                 image_output_column="i", text_output_column="t", score_output_column="s")
    out = clip.map(ds)
    image, text = direct(model, proc, tok, images, texts)
    np.testing.assert_allclose(np.asarray(out["i"]), image, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["t"]), text, rtol=1e-5, atol=1e-5)
    cosine = (image * text).sum(1) / np.linalg.norm(image, axis=1) / np.linalg.norm(text, axis=1)
    np.testing.assert_allclose(np.asarray(out["s"]), cosine, rtol=1e-5, atol=1e-5)


def test_rows_do_not_depend_on_batch_composition(setup):
    """Texts are padded to the longest in a chunk: the attention mask must make that invisible."""
    model, proc, tok, ds, _, _ = setup
    one = hp.embed.CLIPEmbedder(model, image_processor=proc, tokenizer=tok, text_column="caption", batch_size=1).map(ds)
    six = hp.embed.CLIPEmbedder(model, image_processor=proc, tokenizer=tok, text_column="caption", batch_size=6).map(ds)
    for column in ("image_emb", "text_emb", "clip_score"):
        np.testing.assert_allclose(np.asarray(one[column]), np.asarray(six[column]), rtol=1e-5, atol=1e-5)


def test_bad_inputs(setup):
    model, proc, tok, ds, _, _ = setup
    with pytest.raises(KeyError, match="'text'"):
        hp.embed.CLIPEmbedder(model, image_processor=proc, tokenizer=tok).map(ds)
    with pytest.raises(ValueError, match="Linear has no `get_image_features`"):
        hp.embed.CLIPEmbedder(torch.nn.Linear(2, 2), image_processor=proc, tokenizer=tok)
    with pytest.raises(ValueError, match="tokenizer"):
        hp.embed.CLIPEmbedder(model, image_processor=proc)
    with pytest.raises(ValueError, match="distinct"):
        hp.embed.CLIPEmbedder(model, image_processor=proc, tokenizer=tok, image_output_column="x", text_output_column="x")
    clip = hp.embed.CLIPEmbedder(model, image_processor=proc, tokenizer=tok, text_column="caption")
    bad_text = Dataset.from_dict({"image": [np.zeros((8, 8), np.uint8).tolist()] * 2, "caption": ["a cat", None]})
    with pytest.raises(ValueError, match=r"column 'caption', row 1"):
        clip.map(bad_text)
    out = clip.map(ds)
    with pytest.raises(ValueError, match="overwrite=True"):
        clip.map(out)


def test_score_column_is_the_deprecated_spelling_of_score_output_column(setup):
    model, proc, tok, ds, _, _ = setup
    kw = dict(processor=SimpleNamespace(image_processor=proc, tokenizer=tok), text_column="caption")
    new = hp.embed.CLIPEmbedder(model, score_output_column="s", **kw)
    with pytest.warns(FutureWarning, match="use score_output_column='s'") as record:
        old = hp.embed.CLIPEmbedder(model, score_column="s", **kw)
    assert record[0].filename == __file__
    assert old.output_columns == new.output_columns and old.fingerprint() == new.fingerprint()
    assert old.map(ds)["s"] == new.map(ds)["s"]
    with pytest.raises(ValueError, match="contradicts"):
        hp.embed.CLIPEmbedder(model, score_column="s", score_output_column="t", **kw)


def test_one_route_to_the_clip_score(setup):
    model, proc, tok, _, _, _ = setup
    # 40 pairs: enough that float32 rounding differences between two computations would show.
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(40)]
    texts = [" ".join(rng.choice(WORDS[3:], size=int(rng.integers(1, 6)))) for _ in range(40)]
    ds = Dataset.from_dict({"image": images, "caption": texts}).cast_column("image", ImageFeature())
    for normalize in (True, False):
        clip = hp.embed.CLIPEmbedder(model, image_processor=proc, tokenizer=tok, text_column="caption",
                                     normalize=normalize, batch_size=16)
        out = clip.map(ds, batch_size=16)
        rescored = hp.score.clip_score(out, output_column="again")
        # Bit-identical: the embedder's score is hp.score.clip_score's function on the stored embeddings.
        np.testing.assert_array_equal(np.asarray(out["clip_score"], dtype=np.float32),
                                      np.asarray(rescored["again"], dtype=np.float32))


def test_a_zero_embedding_has_no_clip_score(setup, monkeypatch):
    model, proc, tok, ds, _, _ = setup
    clip = hp.embed.CLIPEmbedder(model, image_processor=proc, tokenizer=tok, text_column="caption")
    real = clip._forward_tokens

    def zero_text(images, rows, device):
        image, text = real(images, rows, device)
        return image, torch.zeros_like(text)

    monkeypatch.setattr(clip, "_forward_tokens", zero_text)
    # As hp.score.clip_score on a stored zero vector: the cosine is undefined, the column is named.
    with pytest.raises(ValueError, match="'text_emb' has a zero vector"):
        clip.map(ds, load_from_cache_file=False)
