"""Conversation tokenisation: exact label masks (plain format, ChatML, SmolLM2's template), loss on the
response tokens only, token boundaries that merge across a span, truncation counts and bad input."""

import numpy as np
import pytest
import torch
import transformers
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers

from hf_prune.data import IGNORE_INDEX, encode_messages, render_messages, tokenize_messages
from hf_prune.data.chat import _mask_from_offsets, _mask_from_prefixes, _offsets

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>", "<|system|>"]
WORDS = ["<unk>", "<eos>", *SPECIALS, "user", "assistant", "system", "two", "plus", "is", "four", "?", "what", "hi",
         "You", "are", "a", "helpful", "AI", "named", "SmolLM", ",", "trained", "by", "Hugging", "Face"]
ID = {w: i for i, w in enumerate(WORDS)}
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# SmolLM2-135M-Instruct's template: ChatML with a default system turn.
SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
           "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
           "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
           "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def word_tokenizer(chat_template=None):
    """A word-level fast tokenizer over `WORDS` (whitespace split), the chat markers as special tokens."""
    tk = Tokenizer(models.WordLevel(dict(ID), unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", unk_token="<unk>",
                                               additional_special_tokens=SPECIALS)
    tok.chat_template = chat_template
    return tok


def ids(*words):
    return [ID[w] for w in words]


U = {"role": "user", "content": "what is two plus two ?"}
A = {"role": "assistant", "content": "four"}
U2 = {"role": "user", "content": "hi"}
A2 = {"role": "assistant", "content": "hi hi"}
QUESTION = ids("what", "is", "two", "plus", "two", "?")


def test_plain_format_masks_everything_but_the_assistant_content_and_eos():
    tok = word_tokenizer()
    out = encode_messages(tok, [U, A, U2, A2], template="plain")
    expected_ids = [*ids("<|user|>"), *QUESTION, *ids("<|assistant|>", "four", "<eos>", "<|user|>", "hi",
                                                       "<|assistant|>", "hi", "hi", "<eos>")]
    assert out["input_ids"] == expected_ids
    m = IGNORE_INDEX
    assert out["labels"] == [m] * 8 + ids("four", "<eos>") + [m, m, m] + ids("hi", "hi", "<eos>")
    assert out["num_response_tokens"] == 5 and out["truncated"] is False
    last = encode_messages(tok, [U, A, U2, A2], template="plain", train_on="last")
    assert last["input_ids"] == expected_ids
    assert last["labels"] == [m] * 13 + ids("hi", "hi", "<eos>")
    text, spans = render_messages(tok, [U, A], template="plain")
    assert text == "<|user|>\nwhat is two plus two ?\n<|assistant|>\nfour<eos>\n"
    assert [text[s:e] for s, e in spans] == ["four<eos>"]


def test_chatml_template_masks_prompt_and_role_headers():
    tok = word_tokenizer(CHATML)
    out = encode_messages(tok, [U, A, U2, A2])
    s, e = ID["<|im_start|>"], ID["<|im_end|>"]
    assert out["input_ids"] == [s, ID["user"], *QUESTION, e, s, ID["assistant"], ID["four"], e,
                                s, ID["user"], ID["hi"], e, s, ID["assistant"], ID["hi"], ID["hi"], e]
    m = IGNORE_INDEX
    # Loss on the content and the end-of-turn marker, never on "<|im_start|> assistant".
    assert out["labels"] == [m] * 11 + [ID["four"], e] + [m] * 6 + [ID["hi"], ID["hi"], e]
    last = encode_messages(tok, [U, A, U2, A2], train_on="last")
    assert last["labels"] == [m] * 19 + [ID["hi"], ID["hi"], e]
    prompt = encode_messages(tok, [U], add_generation_prompt=True)
    assert prompt["input_ids"] == [s, ID["user"], *QUESTION, e, s, ID["assistant"]]
    assert prompt["num_response_tokens"] == 0


def test_smollm2_template_with_its_default_system_turn():
    tok = word_tokenizer(SMOLLM2)
    out = encode_messages(tok, [U, A])
    system = ids("<|im_start|>", "system", "You", "are", "a", "helpful", "AI", "assistant", "named", "SmolLM", ",",
                 "trained", "by", "Hugging", "Face", "<|im_end|>")
    prompt = system + ids("<|im_start|>", "user") + QUESTION + ids("<|im_end|>", "<|im_start|>", "assistant")
    assert out["input_ids"] == prompt + ids("four", "<|im_end|>")
    assert out["labels"] == [IGNORE_INDEX] * len(prompt) + ids("four", "<|im_end|>")
    # An explicit system turn replaces the default one and is masked like the user turn.
    own = encode_messages(tok, [{"role": "system", "content": "hi"}, U, A])
    assert own["input_ids"][:4] == ids("<|im_start|>", "system", "hi", "<|im_end|>")
    assert [t for t, label in zip(own["input_ids"], own["labels"]) if label != IGNORE_INDEX] == ids("four", "<|im_end|>")


def _bpe_tokenizer(template):
    """Characters with merges across the template's boundaries: ":f" (prompt ':' + response 'f') and ".Q"."""
    chars = ["Q", "a", "b", ":", "f", "o", "."]
    vocab = {c: i for i, c in enumerate(chars)} | {":f": 7, ".Q": 8}
    tk = Tokenizer(models.BPE(vocab, [(":", "f"), (".", "Q")]))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk)
    tok.chat_template = template
    return tok


def test_a_token_merged_across_a_span_boundary_takes_loss_with_offsets_and_without():
    template = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ 'Q' + m['content'] }}{% else %}"
                "{{ ':' + m['content'] + '.' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ ':' }}{% endif %}")
    tok = _bpe_tokenizer(template)
    messages = [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "fo"}] * 2
    text, spans = render_messages(tok, messages)
    assert text == "Qab:fo.Qab:fo." and [text[s:e] for s, e in spans] == ["fo.", "fo."]
    out = encode_messages(tok, messages)
    vocab = tok.get_vocab()
    names = {i: t for t, i in vocab.items()}
    assert [names[i] for i in out["input_ids"]] == ["Q", "a", "b", ":f", "o", ".Q", "a", "b", ":f", "o", "."]
    m = IGNORE_INDEX
    # ":f" starts in the prompt and ".Q" ends in the next prompt: both hold response characters.
    assert out["labels"] == [m, m, m, vocab[":f"], vocab["o"], vocab[".Q"], m, m, vocab[":f"], vocab["o"], vocab["."]]
    token_ids, offsets = _offsets(tok, text, False)
    by_offsets = _mask_from_offsets(offsets, spans)
    by_prefixes = _mask_from_prefixes(tok, text, token_ids, spans, False)
    np.testing.assert_array_equal(by_offsets, by_prefixes)
    plain_mask = _mask_from_prefixes(word_tokenizer(), *(lambda t: (t, word_tokenizer()(t)["input_ids"]))(
        render_messages(word_tokenizer(), [U, A], template="plain")[0]), render_messages(
        word_tokenizer(), [U, A], template="plain")[1], True)
    assert plain_mask.tolist() == [False] * 8 + [True, True]


def test_loss_of_a_tiny_llama_is_the_cross_entropy_of_the_response_tokens_only():
    tok = word_tokenizer(CHATML)
    ds = Dataset.from_dict({"messages": [[U, A, U2, A2]]})
    row = tokenize_messages(ds, tok)[0]
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=2, vocab_size=len(tok))
    model = transformers.LlamaForCausalLM(config).eval()
    input_ids = torch.tensor([row["input_ids"]])
    with torch.no_grad():
        loss = model(input_ids=input_ids, labels=torch.tensor([row["labels"]])).loss
        logits = model(input_ids=input_ids).logits[0]
    # Hand-picked response positions: "four <|im_end|>" at 11-12 and "hi hi <|im_end|>" at 19-21.
    targets = [11, 12, 19, 20, 21]
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    expected = -np.mean([log_probs[t - 1, row["input_ids"][t]].item() for t in targets])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    everything = torch.nn.functional.cross_entropy(logits[:-1], input_ids[0, 1:]).item()
    assert abs(everything - expected) > 1e-3  # the masked loss is not the whole-sequence loss


def test_tokenize_messages_truncates_drops_and_counts():
    tok = word_tokenizer(CHATML)
    long_prompt = {"role": "user", "content": " ".join(["two"] * 20)}
    ds = Dataset.from_dict({"messages": [[U, A], [long_prompt, A], [U, A, U2, A2]], "task": ["x", "y", "z"]})
    out, stats = tokenize_messages(ds, tok, max_length=16, return_stats=True)
    assert out["task"] == ["x", "z"] and "input_ids" not in ds.column_names
    assert out.features["input_ids"].feature.dtype == "int64" and out.features["labels"].feature.dtype == "int64"
    third = encode_messages(tok, [U, A, U2, A2])
    assert out[1]["input_ids"] == third["input_ids"][:16] and out[1]["labels"] == third["labels"][:16]
    assert stats["rows"] == 3 and stats["kept"] == 2 and stats["truncated"] == 1
    assert stats["dropped"] == {"no response after truncation": 1}
    assert stats["response_tokens"] == 2 + 2 and stats["tokens"] == 13 + 16
    assert all(any(label != IGNORE_INDEX for label in labels) for labels in out["labels"])
    with pytest.raises(ValueError, match="`input_ids` .*exist|already"):
        tokenize_messages(out, tok)
    again = tokenize_messages(out, tok, overwrite=True, max_length=16)
    assert again["input_ids"] == out["input_ids"]


@pytest.mark.parametrize("messages, reason", [
    ([{"role": "user", "content": "hi"}], "no assistant turn"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}], "empty assistant content"),
    ([{"role": "user", "content": "hi"}, {"role": "gpt", "content": "hi"}], "unknown role"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}], "bad turn"),
])
def test_bad_conversations_raise_naming_the_row_or_are_skipped_and_counted(messages, reason):
    tok = word_tokenizer(CHATML)
    ds = Dataset.from_list([{"messages": [U, A]}, {"messages": messages}])
    with pytest.raises(ValueError, match=f"column 'messages' row 1: {reason}"):
        tokenize_messages(ds, tok)
    out, stats = tokenize_messages(ds, tok, on_invalid="skip", return_stats=True)
    assert len(out) == 1 and stats["dropped"] == {reason: 1}
    with pytest.raises(ValueError, match=reason):
        encode_messages(tok, messages)


def test_messages_that_are_not_a_list_and_bad_settings():
    tok = word_tokenizer(CHATML)
    ds = Dataset.from_dict({"messages": ["just text"]})
    with pytest.raises(ValueError, match="column 'messages' row 0: not a list"):
        tokenize_messages(ds, tok)
    with pytest.raises(KeyError, match="conversation"):
        tokenize_messages(ds, tok, messages_column="conversation")
    with pytest.raises(ValueError, match="train_on"):
        encode_messages(tok, [U, A], train_on="first")
    with pytest.raises(ValueError, match="max_length"):
        encode_messages(tok, [U, A], max_length=0)
    with pytest.raises(ValueError, match="template"):
        encode_messages(tok, [U, A], template="alpaca")


def test_a_tokenizer_without_chat_template_is_named_and_plain_is_suggested():
    tok = word_tokenizer()
    tok.name_or_path = "my-word-tokenizer"
    with pytest.raises(ValueError, match="'my-word-tokenizer' has no chat template.*template='plain'"):
        encode_messages(tok, [U, A])
    with pytest.raises(ValueError, match="no chat template"):
        tokenize_messages(Dataset.from_dict({"messages": [[U, A]]}), tok)
    assert tokenize_messages(Dataset.from_dict({"messages": [[U, A]]}), tok, template="plain")["labels"][0][-2:] == \
        ids("four", "<eos>")


def test_a_template_that_rewrites_earlier_turns_is_refused():
    # Renders only the last assistant turn in full (like templates that drop earlier reasoning).
    template = ("{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}{{ '<|im_start|>x' }}"
                "{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' }}{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    tok = word_tokenizer(template)
    with pytest.raises(ValueError, match="not render turn 1 as a prefix.*template='plain'"):
        encode_messages(tok, [U, A, U2, A2])
    assert encode_messages(tok, [U, A, U2, A2], train_on="last")["num_response_tokens"] == 3


def test_a_long_conversation_cut_to_max_length_matches_the_full_encoding_cut():
    tok = word_tokenizer(CHATML)
    long = [U, A] * 60 + [{"role": "user", "content": " ".join(["two plus"] * 300)}, A2]
    for template in ("chat", "plain"):
        full = encode_messages(tok, long, template=template, max_length=None)
        for max_length in (5, 40, 700):
            cut = encode_messages(tok, long, template=template, max_length=max_length)
            assert cut["input_ids"] == full["input_ids"][:max_length]
            assert cut["labels"] == full["labels"][:max_length] and cut["truncated"]


@pytest.mark.slow
def test_smollm2_tokenizer_on_sharegpt_rows():
    from transformers import AutoTokenizer

    from hf_prune.data import load_sharegpt
    from recipes.trainer.llm import default_cache_dir, smollm2_gguf_path

    cached = default_cache_dir() / "SmolLM2-135M-Instruct"
    if (cached / "tokenizer_config.json").is_file():
        tok = AutoTokenizer.from_pretrained(cached)
    else:
        gguf = smollm2_gguf_path()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    rows = load_sharegpt(limit=50, progress=False)
    out, stats = tokenize_messages(rows, tok, max_length=1024, return_stats=True)
    assert stats["kept"] + sum(stats["dropped"].values()) == 50
    conversations = dict(zip(rows["id"], rows["messages"]))
    for row in out:
        full = encode_messages(tok, conversations[row["id"]], max_length=None)
        assert row["input_ids"] == full["input_ids"][:1024] and row["labels"] == full["labels"][:1024]
    whole = encode_messages(tok, rows[0]["messages"], max_length=None)
    response = tok.decode([t for t, label in zip(whole["input_ids"], whole["labels"]) if label != IGNORE_INDEX])
    replies = [m["content"] for m in rows[0]["messages"] if m["role"] == "assistant"]
    assert response == "".join(r + "<|im_end|>\n" for r in replies)


def test_tokenized_columns_have_a_stable_fingerprint(random_hash_records):
    tok = word_tokenizer(CHATML)
    ds = Dataset.from_dict({"messages": [[U, A], [U2, A2]]})
    first, second = tokenize_messages(ds, tok), tokenize_messages(ds, tok)
    assert first._fingerprint == second._fingerprint and not random_hash_records
    assert tokenize_messages(ds, tok, max_length=3)._fingerprint != first._fingerprint


def test_a_template_that_raises_is_reported_with_the_row():
    template = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
                "{{ m['content'] }}{% endfor %}")
    tok = word_tokenizer(template)
    ds = Dataset.from_dict({"messages": [[U, A], [{"role": "system", "content": "hi"}, U, A]]})
    with pytest.raises(ValueError, match="column 'messages' row 1: the chat template .* refused the conversation: "
                                         ".*no system role"):
        tokenize_messages(ds, tok)
