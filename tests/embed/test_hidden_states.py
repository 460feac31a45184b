"""HiddenStateEmbedder: padding never changes a pooled vector, RDS+'s weights, layers, the instruction schema."""

import numpy as np
import pytest
import torch
import transformers as T
from datasets import Dataset

import hf_prune as hp
from hf_prune.data import encode_messages
from hf_prune.data.instructions import MESSAGES_FEATURE
from hf_prune.embed.hidden_states import pool_hidden_states
from tests.data.test_chat import CHATML, WORDS, word_tokenizer

U = {"role": "user", "content": "what is two plus two ?"}
A = {"role": "assistant", "content": "four"}
CONVERSATIONS = [
    [U, A],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hi hi"}],
    [{"role": "system", "content": "You are a helpful AI"}, U, A, {"role": "user", "content": "what ?"},
     {"role": "assistant", "content": "two plus two is four"}],
]


def tiny_llama(seed=0, layers=2):
    torch.manual_seed(seed)
    config = T.LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                           num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return T.LlamaForCausalLM(config).eval()


def tiny_gpt2(seed=0):
    """Absolute position embeddings: left padding changes the states unless positions skip the padding."""
    torch.manual_seed(seed)
    config = T.GPT2Config(vocab_size=len(WORDS), n_embd=16, n_layer=2, n_head=2, n_positions=64, bos_token_id=1,
                          eos_token_id=1)
    return T.GPT2LMHeadModel(config).eval()


MODEL = tiny_llama()
GPT2 = tiny_gpt2()


def embedder(model=MODEL, **kwargs):
    kwargs.setdefault("input_ids_column", "input_ids")
    return hp.embed.HiddenStateEmbedder(model, device="cpu", **kwargs)


def reference(ids, pooling, layer=-1, model=MODEL):
    """The pooled state of one row run alone (no padding), computed directly from the model's outputs."""
    with torch.no_grad():
        out = model.base_model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    h = (out.last_hidden_state if layer == -1 else out.hidden_states[layer])[0].double()
    t = torch.arange(1, len(ids) + 1, dtype=torch.float64)
    w = {"mean": torch.ones_like(t), "weighted_mean": t, "last_token": (t == len(ids)).double()}[pooling]
    return torch.nn.functional.normalize((w / w.sum()) @ h, dim=0).numpy()


@pytest.mark.parametrize("model", [MODEL, GPT2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("pooling", ["mean", "weighted_mean", "last_token"])
def test_padding_never_changes_a_pooled_vector(pooling, model):
    row = [3, 9, 12, 7, 5]
    short, long = [4, 8], [6, 11, 13, 14, 10, 9, 3, 5, 12, 8]
    expected = reference(row, pooling, model=model)
    for side in ("right", "left"):
        emb = embedder(model, pooling=pooling, padding_side=side)
        for batch in ([row], [row, short], [long, row], [short, row, long]):
            got = emb.embed_tokens(batch).numpy()[batch.index(row)]
            np.testing.assert_allclose(got, expected, atol=1e-6, err_msg=f"{side} {batch}")
    # Through Dataset.map, in map batches of different partners: every row equals itself run alone.
    ds = Dataset.from_dict({"input_ids": [row, short, long, row]})
    for side in ("right", "left"):
        out = embedder(model, pooling=pooling, padding_side=side, output_column="h", batch_size=3).map(ds, batch_size=4)
        vectors = np.asarray(out["h"])
        np.testing.assert_allclose(vectors[0], expected, atol=1e-6)
        np.testing.assert_allclose(vectors[3], expected, atol=1e-6)
        np.testing.assert_allclose(vectors[1], reference(short, pooling, model=model), atol=1e-6)
        np.testing.assert_allclose(vectors[2], reference(long, pooling, model=model), atol=1e-6)


def test_weighted_mean_weights_by_hand():
    # Row 0 left-padded (one pad), row 1 right-padded (two pads); real token t (from 1) weighs t / Σt.
    hidden = torch.tensor([[[100.0, -7.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]],
                           [[2.0, 0.0], [0.0, 4.0], [float("nan"), 5.0], [float("inf"), 0.0]]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])
    pooled = pool_hidden_states(hidden, mask, "weighted_mean")
    # Row 0: weights 1/6, 2/6, 3/6 on (1,0), (0,1), (1,1); row 1: 1/3, 2/3 on (2,0), (0,4).
    torch.testing.assert_close(pooled, torch.tensor([[4 / 6, 5 / 6], [2 / 3, 8 / 3]]))
    torch.testing.assert_close(pool_hidden_states(hidden, mask, "mean"), torch.tensor([[2 / 3, 2 / 3], [1.0, 2.0]]))
    torch.testing.assert_close(pool_hidden_states(hidden, mask, "last_token"), torch.tensor([[1.0, 1.0], [0.0, 4.0]]))
    with pytest.raises(ValueError, match="at least one real"):
        pool_hidden_states(hidden, torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0]]), "mean")
    with pytest.raises(ValueError, match="`pooling`"):
        pool_hidden_states(hidden, mask, "max")


def test_layers_and_the_layer_error():
    row = [3, 9, 12, 7]
    first, last = embedder(layer=0, pooling="mean"), embedder(layer=2, pooling="mean")
    np.testing.assert_allclose(first.embed_tokens([row])[0].numpy(), reference(row, "mean", layer=0), atol=1e-6)
    # Layer L of hidden_states is the last layer after the final norm: the same as the default -1.
    np.testing.assert_allclose(last.embed_tokens([row]).numpy(), embedder(pooling="mean").embed_tokens([row]).numpy(),
                               atol=1e-6)
    assert not np.allclose(first.embed_tokens([row]).numpy(), last.embed_tokens([row]).numpy())
    assert embedder(layer=-3).num_hidden_states == 3 and embedder().dim == 16
    for layer in (3, -4):
        with pytest.raises(ValueError, match=r"`layer`=.* 2 layers.*\[-3, 2\]"):
            embedder(layer=layer)
    with pytest.raises(ValueError, match="`layer`"):
        embedder(layer="last")


def test_messages_are_rendered_with_the_instruction_schema():
    tok = word_tokenizer(CHATML)
    ds = Dataset.from_dict({"messages": CONVERSATIONS}, features=None).cast_column("messages", MESSAGES_FEATURE)
    full = hp.embed.HiddenStateEmbedder(MODEL, tokenizer=tok, output_column="h", device="cpu").map(ds, batch_size=2)
    prompt = hp.embed.HiddenStateEmbedder(MODEL, tokenizer=tok, text="prompt", output_column="h",
                                          device="cpu").map(ds, batch_size=2)
    for i, messages in enumerate(CONVERSATIONS):
        ids = encode_messages(tok, messages)["input_ids"]
        np.testing.assert_allclose(full[i]["h"], reference(ids, "weighted_mean"), atol=1e-6)
        # Prompt only: everything before the last assistant turn, with the generation prompt.
        prompt_ids = encode_messages(tok, messages[:-1], add_generation_prompt=True)["input_ids"]
        np.testing.assert_allclose(prompt[i]["h"], reference(prompt_ids, "weighted_mean"), atol=1e-6)
    plain = hp.embed.HiddenStateEmbedder(MODEL, tokenizer=tok, template="plain", max_length=5, output_column="h",
                                         device="cpu")
    truncated = encode_messages(tok, CONVERSATIONS[2], template="plain", max_length=5)["input_ids"]
    assert len(truncated) == 5
    np.testing.assert_allclose(plain.map(ds)[2]["h"], reference(truncated, "weighted_mean"), atol=1e-6)
    assert hp.provenance(full)[-1]["method"] == "embed.HiddenStateEmbedder"
    assert full.features["h"].length == 16


def test_a_causal_lm_and_its_backbone_give_the_same_column():
    ds = Dataset.from_dict({"input_ids": [[3, 9, 12], [4, 8, 5, 6]]})
    causal = embedder(output_column="h").map(ds)
    backbone = hp.embed.HiddenStateEmbedder(MODEL.model, input_ids_column="input_ids", output_column="h",
                                            device="cpu").map(ds)
    np.testing.assert_allclose(np.asarray(causal["h"]), np.asarray(backbone["h"]), atol=1e-6)
    half = embedder(output_column="h", storage_dtype="float16").map(ds)
    assert half.features["h"].feature.dtype == "float16"
    np.testing.assert_allclose(np.asarray(half["h"], dtype=np.float32), np.asarray(causal["h"]), atol=1e-3)


def test_fingerprint_is_deterministic_and_follows_the_settings():
    assert embedder().fingerprint() == embedder().fingerprint()
    # The padding side and pad id change no vector, so they share the cache entry.
    assert embedder(padding_side="left", pad_token_id=3).fingerprint() == embedder().fingerprint()
    assert embedder(pooling="mean").fingerprint() != embedder().fingerprint()
    assert embedder(layer=1).fingerprint() != embedder().fingerprint()
    assert embedder(max_length=4).fingerprint() != embedder().fingerprint()
    other = hp.embed.HiddenStateEmbedder(tiny_llama(seed=1), input_ids_column="input_ids", device="cpu")
    assert other.fingerprint() != embedder().fingerprint()


def test_bad_input_names_the_column_or_option():
    emb = embedder(output_column="h")
    with pytest.raises(ValueError, match="'input_ids': row 1 of the batch has no tokens after truncation"):
        emb.map(Dataset.from_dict({"input_ids": [[3, 4], [], [5]]}))
    with pytest.raises(ValueError, match="'input_ids'.*outside \\[0, "):
        emb.map(Dataset.from_dict({"input_ids": [[3, 4], [len(WORDS) + 5]]}))
    with pytest.raises(KeyError, match="'input_ids'"):
        emb.map(Dataset.from_dict({"tokens": [[3, 4]]}))
    with pytest.raises(ValueError, match="`tokenizer=`"):
        hp.embed.HiddenStateEmbedder(MODEL, device="cpu")
    tok = word_tokenizer(CHATML)
    bad = Dataset.from_dict({"messages": [[U]]}).cast_column("messages", MESSAGES_FEATURE)
    with pytest.raises(ValueError, match="'messages': row 0 of the batch is not a valid conversation: no assistant"):
        hp.embed.HiddenStateEmbedder(MODEL, tokenizer=tok, device="cpu").map(bad)
    for option, value in (("pooling", "max"), ("text", "response"), ("template", "jinja"), ("padding_side", "up")):
        with pytest.raises(ValueError, match=f"`{option}`"):
            embedder(**{option: value})


@pytest.mark.slow
def test_smollm2_rds_vectors_on_real_conversations():
    """SmolLM2-135M-Instruct (the offline GGUF) over real ShareGPT rows with its own chat template."""
    from recipes.trainer.llm import load_causal_lm, smollm2_gguf_path

    try:
        smollm2_gguf_path()
        conversations = hp.data.load_sharegpt(limit=6, progress=False).select_columns(["messages"])
    except FileNotFoundError as err:
        pytest.skip(str(err))
    pytest.importorskip("gguf", reason="loading a GGUF file needs the `gguf` package")
    model, tok = load_causal_lm("smollm2")
    one = hp.embed.HiddenStateEmbedder(model, tokenizer=tok, max_length=64, batch_size=1, output_column="h",
                                       device="cpu")
    many = hp.embed.HiddenStateEmbedder(model, tokenizer=tok, max_length=64, batch_size=6, padding_side="left",
                                        output_column="h", device="cpu")
    alone, batched = np.asarray(one.map(conversations)["h"]), np.asarray(many.map(conversations)["h"])
    assert alone.shape == (6, model.config.hidden_size)
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(alone, axis=1), 1.0, atol=1e-5)
