"""Text-side embedders batch by length inside each map batch: same vectors as unsorted batching, input order kept."""

import numpy as np
import peft
import pytest
import torch
import transformers as T
from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers

import hf_prune as hp

WORDS = ["[PAD]", "[UNK]", "[EOS]", "the", "cat", "dog", "sat", "on", "mat", "ran", "a", "red"]
# Lengths 1..9 in a scrambled order, so sorting moves rows across chunks.
TEXTS = ["the cat sat on the mat", "dog", "the dog ran on a red mat", "cat cat", "a red dog sat",
         "the cat ran on the red mat and sat", "red", "a cat sat on a mat", "the dog"]


def word_tokenizer():
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")


def text_embedder():
    torch.manual_seed(0)
    model = T.BertModel(T.BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=16), add_pooling_layer=False).eval()
    return hp.embed.TextEmbedder(model, tokenizer=word_tokenizer(), normalize=False, batch_size=2, device="cpu"), \
        Dataset.from_dict({"text": TEXTS})


def clip_embedder():
    torch.manual_seed(0)
    config = T.CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=len(WORDS), max_position_embeddings=12, eos_token_id=2, bos_token_id=1,
                         pad_token_id=0),
        vision_config=dict(hidden_size=16, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )
    processor = getattr(T, "ViTImageProcessorPil", T.ViTImageProcessor)(size={"height": 32, "width": 32})
    emb = hp.embed.CLIPEmbedder(T.CLIPModel(config).eval(), image_processor=processor, tokenizer=word_tokenizer(),
                                batch_size=2, device="cpu")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in TEXTS]
    ds = Dataset.from_dict({"image": images, "text": TEXTS}).cast_column("image", ImageFeature())
    return emb, ds


def _token_rows(seed=0, lengths=(4, 9, 3, 12, 5, 8, 2, 10, 6)):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 30, n).tolist() for n in lengths]


def hidden_state_embedder():
    torch.manual_seed(0)
    config = T.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    emb = hp.embed.HiddenStateEmbedder(T.LlamaForCausalLM(config).eval(), input_ids_column="input_ids",
                                       batch_size=2, device="cpu")
    return emb, Dataset.from_dict({"input_ids": _token_rows()})


def lora_gradient_embedder():
    torch.manual_seed(0)
    config = T.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           num_key_value_heads=2, vocab_size=32)
    lora = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = peft.get_peft_model(T.LlamaForCausalLM(config), lora)
    emb = hp.embed.LoRAGradientEmbedder(model, dim=16, batch_size=2, projection_batch_size=4, device="cpu")
    ids = _token_rows()
    labels = [[-100] + row[1:] for row in ids]
    return emb, Dataset.from_dict({"input_ids": ids, "labels": labels})


BUILDERS = {"text": text_embedder, "clip": clip_embedder, "hidden_states": hidden_state_embedder,
            "lora_gradients": lora_gradient_embedder}


def _columns(ds, columns):
    return {c: np.asarray(ds[c], dtype=np.float64) for c in columns}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_length_sorted_batching_gives_the_unsorted_vectors(name):
    emb, ds = BUILDERS[name]()
    got = _columns(emb.map(ds, batch_size=len(ds), load_from_cache_file=False), emb.output_columns)
    emb.sort_by_length = False  # the old path: chunks in input order
    plain = _columns(emb.map(ds, batch_size=len(ds), load_from_cache_file=False), emb.output_columns)
    for column in emb.output_columns:
        np.testing.assert_allclose(got[column], plain[column], atol=1e-6, rtol=0, err_msg=column)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_rows_are_embedded_longest_first_and_returned_in_input_order(name, monkeypatch):
    emb, ds = BUILDERS[name]()
    batch = ds[:]
    lengths = list(emb._prepare(batch)[1])
    assert lengths != sorted(lengths, reverse=True)  # the input is not already in processing order
    seen, real = [], emb._embed

    def spy(chunk, device):
        seen.extend(emb._prepare(chunk)[1])
        return real(chunk, device)

    with monkeypatch.context() as patch:
        patch.setattr(emb, "_embed", spy)
        out = emb(batch)
    # The chunks held the rows sorted by length, longest first ...
    assert seen == sorted(lengths, reverse=True)
    # ... and each output row is that input row's, as if it were embedded alone (no padding, no partners).
    for i in range(len(ds)):
        alone = emb({c: batch[c][i : i + 1] for c in emb.input_columns})
        for column in emb.output_columns:
            np.testing.assert_allclose(out[column][i], alone[column][0], atol=2e-5, rtol=1e-4,
                                       err_msg=f"{column}, row {i}")


def test_chunks_are_cut_from_the_length_sorted_rows(monkeypatch):
    emb, ds = text_embedder()
    widths, real = [], emb._forward_tokens

    def spy(rows, device):
        widths.append([len(r["input_ids"]) for r in rows])
        return real(rows, device)

    monkeypatch.setattr(emb, "_forward_tokens", spy)
    emb(ds[:])
    flat = [n for chunk in widths for n in chunk]
    assert flat == sorted(flat, reverse=True)
    expected = sorted((len(word_tokenizer()(t)["input_ids"]) for t in TEXTS), reverse=True)
    assert flat == expected
    widths.clear()
    emb.sort_by_length = False
    emb(ds[:])
    assert [n for chunk in widths for n in chunk] == [len(word_tokenizer()(t)["input_ids"]) for t in TEXTS]


def test_equal_lengths_keep_their_input_order(monkeypatch):
    emb, _ = text_embedder()
    texts = ["cat dog", "the mat", "red cat", "dog", "a dog"]  # stable: the three 2-token rows stay in order
    order, real = [], emb._forward_tokens

    def spy(rows, device):
        order.extend(tuple(r["input_ids"]) for r in rows)
        return real(rows, device)

    monkeypatch.setattr(emb, "_forward_tokens", spy)
    emb({"text": texts})
    ids = [tuple(word_tokenizer()(t)["input_ids"]) for t in texts]
    assert order == [ids[0], ids[1], ids[2], ids[4], ids[3]]


@pytest.mark.parametrize("name", ["text", "clip"])
def test_each_text_is_tokenised_once(name, monkeypatch):
    emb, ds = BUILDERS[name]()
    calls, real = [], emb._tokenize

    def counting(texts):
        calls.append(len(texts))
        return real(texts)

    monkeypatch.setattr(emb, "_tokenize", counting)
    emb(ds[:])
    assert calls == [len(ds)]  # one call for the whole map batch, reused by every chunk's forward


def test_a_tokenizer_without_a_pad_token_is_a_clear_error():
    emb, _ = text_embedder()
    emb.tokenizer = word_tokenizer()
    emb.tokenizer.pad_token = None
    with pytest.raises(ValueError, match="no pad token"):
        emb({"text": ["the cat sat", "dog"]})


@pytest.mark.parametrize("name", ["text", "hidden_states"])
def test_the_default_map_batch_spans_many_forward_chunks(name, monkeypatch):
    emb, ds = BUILDERS[name]()
    seen, real = [], emb._embed

    def spy(chunk, device):
        seen.extend(emb._prepare(chunk)[1])
        return real(chunk, device)

    monkeypatch.setattr(emb, "_embed", spy)
    emb.map(ds, load_from_cache_file=False)  # no batch_size: one map batch of all 9 rows, chunks of 2
    assert seen == sorted(emb._prepare(ds[:])[1], reverse=True)
