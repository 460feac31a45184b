"""The LLM evaluator against hand-computed toys: a character tokenizer and a tiny Llama turned into a
bigram lookup table (its logits depend only on the current token, so every log-probability is a number
from the table), plus a random tiny Llama for the batching checks."""

import math
import string

import numpy as np
import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from recipes.trainer.llm_eval import (
    _encode_pair,
    answers_match,
    build_prompts,
    choice_loglikelihoods,
    encode_text,
    evaluate_tasks,
    generate_answers,
    multiple_choice_outcomes,
    normalize_answer,
)

CHAT_TEMPLATE = ("<s>{% for m in messages %}[{{ m['role'] }}]: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}[assistant]:{% endif %}")
MERGES = [("A", "n"), ("An", "s")]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character, specials <s> </s> <pad>, merges A+n -> An, An+s -> Ans;
    a plain encode prepends <s> (as a Llama tokenizer does)."""
    vocab = {"<s>": 0, "</s>": 1, "<pad>": 2}
    for char in string.printable:
        if char not in "\r\x0b\x0c\t":
            vocab.setdefault(char, len(vocab))
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=MERGES))
    backend.decoder = decoders.Fuse()  # tokens are characters: decode by concatenation
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def bigram_llama(tok, table: np.ndarray) -> LlamaForCausalLM:
    """A Llama whose logits at a position are ``table[current token]``: the residual stream is the one-hot
    embedding (attention and MLP outputs zeroed), RMSNorm scales it by sqrt(H), lm_head reads the table."""
    vocab = len(tok)
    hidden = vocab + vocab % 2  # RoPE wants an even head size
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=8, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=256,
                         rms_norm_eps=1e-30, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1,
                         pad_token_id=2)
    model = LlamaForCausalLM(config).double()
    with torch.no_grad():
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, :vocab] = torch.eye(vocab, dtype=torch.float64)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, :vocab] = torch.tensor(table, dtype=torch.float64).T / math.sqrt(hidden)
    return model.eval()


def random_llama(tok, seed=0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=0, eos_token_id=1, pad_token_id=2)
    return LlamaForCausalLM(config).double().eval()


def conv(question, answer, system=None):
    turns = [{"role": "system", "content": system}] if system else []
    return turns + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def rows(*items):
    """Rows (task, question, answer, choices) in the evaluation schema."""
    return Dataset.from_dict({
        "messages": [conv(q, a) for _, q, a, _ in items], "source": ["test"] * len(items),
        "task": [t for t, _, _, _ in items], "answer": [a for _, _, a, _ in items],
        "choices": [list(c) for _, _, _, c in items]})


def ids(tok, text):
    return tok.encode(text, add_special_tokens=False)


# ------------------------------------------------------------------------------------------ prompts
def test_few_shot_prompt_plain_exact_string(tok):
    eval_rows = Dataset.from_dict({
        "messages": [conv("Is 3 odd?", "yes", system="Answer briefly.")], "task": ["parity"],
        "answer": ["yes"], "choices": [["yes", "no"]]})
    shots = rows(("parity", "Is 2 odd?", "no", ["yes", "no"]), ("other", "Colour?", "red", []),
                 ("parity", "Is 5 odd?", "yes", ["yes", "no"]))
    prompt = build_prompts(eval_rows, tok, shots=shots, few_shot=2, template="plain")[0]
    # The row's system turn first, then both parity shots (row order), then the question; eos after answers.
    assert prompt == ("<|system|>\nAnswer briefly.\n"
                      "<|user|>\nIs 2 odd?\n<|assistant|>\nno</s>\n"
                      "<|user|>\nIs 5 odd?\n<|assistant|>\nyes</s>\n"
                      "<|user|>\nIs 3 odd?\n<|assistant|>\n")
    # Plain text gets the tokenizer's default special tokens (BOS here), chat text none added.
    assert encode_text(tok, prompt, template="plain") == [0] + ids(tok, prompt)


def test_few_shot_prompt_chat_template_and_tokens(tok):
    eval_rows = rows(("t", "Q2", "b", []))
    shots = rows(("t", "Q1", "a", []))
    prompt = build_prompts(eval_rows, tok, shots=shots, few_shot=1, template="chat")[0]
    assert prompt == "<s>[user]: Q1\n[assistant]: a\n[user]: Q2\n[assistant]:"
    encoded = encode_text(tok, prompt, template="chat")
    assert encoded == ids(tok, prompt) and encoded.count(0) == 1  # one BOS, written by the template


def test_shots_drawn_per_task_seeded_and_deterministic(tok):
    shots = rows(*[("t", f"Q{i}", f"a{i}", []) for i in range(8)], *[("u", f"U{i}", "b", []) for i in range(3)])
    eval_rows = rows(("t", "X", "y", []), ("t", "Z", "w", []), ("u", "V", "c", []))
    first = build_prompts(eval_rows, tok, shots=shots, few_shot=3, template="plain", seed=1)
    again = build_prompts(eval_rows, tok, shots=shots, few_shot=3, template="plain", seed=1)
    assert first == again
    # One draw per task: both "t" rows share their shots; shots never cross tasks.
    assert first[0].replace("X", "Z") == first[1]
    assert "U" not in first[0] and "Q" not in first[2] and first[0].count("<|user|>") == 4
    others = {build_prompts(eval_rows, tok, shots=shots, few_shot=3, template="plain", seed=s)[0] for s in range(6)}
    assert len(others) > 1


# ---------------------------------------------------------------------------------- multiple choice
def test_encode_pair_moves_whitespace_and_handles_a_merged_boundary(tok):
    # Trailing whitespace of the context moves to the continuation.
    context, cont = _encode_pair(tok, "Q:\n", "yes", "chat")
    assert context == ids(tok, "Q:") and cont == ids(tok, "\nyes")
    # "A|ns" merges into one token "Ans": split at the context's length leaves nothing, so the split
    # moves back to the common prefix and the merged token is the continuation.
    context, cont = _encode_pair(tok, "xA", "ns", "chat")
    assert context == ids(tok, "x") and cont == ids(tok, "Ans") and len(cont) == 1
    # "A|nsz": lm-eval's rule, the merged token counts as context and only "z" is scored.
    context, cont = _encode_pair(tok, "yA", "nsz", "chat")
    assert context == ids(tok, "yAns") and cont == ids(tok, "z")


def test_choice_sums_and_acc_norm_on_a_lookup_table(tok):
    vocab = len(tok)
    table = np.zeros((vocab, vocab))
    nl, y, n, a_ns = (tok.convert_tokens_to_ids(t) for t in ("\n", "y", "n", "Ans"))
    table[nl, y] = 2.0     # after "\n": "y" is e^2 times likelier than any other token
    table[nl, a_ns] = 1.0
    model = bigram_llama(tok, table)
    prompt = "Q:\n"        # "\n" moves into each continuation: "\nyes", "\nno", "\nAns"
    lls, truncated = choice_loglikelihoods(model, tok, [(prompt, "yes"), (prompt, "no"), (prompt, "Ans")],
                                           template="chat", batch_size=2)
    z_nl = math.log(vocab - 2 + math.exp(2.0) + math.exp(1.0))   # log-normaliser of the "\n" row
    z = math.log(vocab)                                          # every other row is uniform
    # log P(\n | ":") + log P(first | \n) + the uniform rest
    expected = [-z + (2.0 - z_nl) - 2 * z, -z + (0.0 - z_nl) - z, -z + (1.0 - z_nl)]
    np.testing.assert_allclose(lls, expected, rtol=0, atol=1e-6)  # Llama's RMSNorm runs in float32
    assert not truncated.any()
    # acc takes the largest sum ("Ans": fewest tokens); acc_norm divides by 3, 2, 3 characters.
    assert int(np.argmax(lls)) == 2
    norm = np.array(expected) / [3, 2, 3]
    assert multiple_choice_outcomes(lls, ["yes", "no", "Ans"], "Ans") == (True, int(np.argmax(norm)) == 2)
    assert multiple_choice_outcomes([-2.0, -3.0], ["a", "bbbb"], "bbbb") == (False, True)
    assert multiple_choice_outcomes([-1.0, -1.0], ["a", "b"], "a") == (True, True)   # ties: lower position


@pytest.mark.parametrize("share_context,batch_size", [(True, 2), (True, 8), (False, 3)])
def test_batched_choice_loglikelihoods_equal_unbatched_full_forward(tok, share_context, batch_size):
    model = random_llama(tok)
    requests = [("<|user|>\nWhich?\n<|assistant|>\n", c) for c in ("alpha", "be", "gamma ray", "d")]
    requests += [("short:", " x"), ("<|user|>\nOther\n<|assistant|>\n", "no"), ("short:", " yes")]
    lls, _ = choice_loglikelihoods(model, tok, requests, template="plain", batch_size=batch_size,
                                   share_context=share_context)
    for (context, cont), got in zip(requests, lls):
        context_ids, cont_ids = _encode_pair(tok, context, cont, "plain")
        full = torch.tensor([context_ids + cont_ids])
        with torch.no_grad():
            logprobs = model(full).logits[0].log_softmax(-1)
        want = sum(float(logprobs[len(context_ids) + j - 1, t]) for j, t in enumerate(cont_ids))
        assert got == pytest.approx(want, abs=1e-9)


def test_evaluate_tasks_metrics_on_lookup_table(tok):
    vocab = len(tok)
    table = np.zeros((vocab, vocab))
    colon, y, e, s, nl = (tok.convert_tokens_to_ids(t) for t in (":", "y", "e", "s", "\n"))
    # Greedy after the chat prompt's final ":" writes "yes" then a newline.
    table[colon, y], table[y, e], table[e, s], table[s, nl] = 5.0, 5.0, 5.0, 5.0
    model = bigram_llama(tok, table)
    data = rows(("mc", "Q1", "yes", ["no", "yes"]), ("mc", "Q2", "no", ["no", "yes"]),
                ("gen", "Q3", "Yes.", []), ("gen", "Q4", "maybe", []))
    out = evaluate_tasks(model, tok, data, template="chat", max_new_tokens=6, batch_size=2, progress=False,
                         return_predictions=True)
    assert [p["generation"] for p in out["predictions"]] == ["yes"] * 4
    mc, gen = out["tasks"]["mc"], out["tasks"]["gen"]
    assert (mc["n"], mc["n_multiple_choice"], gen["n_multiple_choice"]) == (2, 2, 0)
    assert mc["exact_match"] == 0.5 and gen["exact_match"] == 0.5        # "Yes." normalises to "yes"
    assert mc["multiple_choice_acc"] == 0.5                             # "yes" wins both rows
    assert gen["multiple_choice_acc"] is None
    assert (mc["accuracy_metric"], gen["accuracy_metric"]) == ("multiple_choice_acc", "exact_match")
    assert out["average"] == 0.5 and out["average_multiple_choice_acc"] == 0.5
    unshared = evaluate_tasks(model, tok, data, template="chat", max_new_tokens=6, batch_size=2, progress=False,
                              share_context=False)
    assert unshared["tasks"] == out["tasks"] and unshared["settings"]["share_context"] is False
    only_em = evaluate_tasks(model, tok, data, metrics=("exact_match",), max_new_tokens=6, progress=False)
    assert only_em["tasks"]["mc"]["accuracy_metric"] == "exact_match"


# ---------------------------------------------------------------------------------------- exact match
def test_normalisation_and_option_labels():
    assert normalize_answer("  Yes. ") == "yes"
    assert normalize_answer('"Paris"') == "paris"
    assert normalize_answer("(B)") == "b" and normalize_answer("B)") == "b"
    assert normalize_answer("Hello,   World!") == "hello, world"
    assert answers_match("(A)", "(A)") and answers_match("A", "(A)") and answers_match("(a) first", "(A)")
    assert answers_match("True.", "True") and not answers_match("False", "True")
    assert not answers_match("(B) first", "(A)") and not answers_match("Apple", "(A)")
    assert not answers_match("yes indeed", "yes")


def test_left_padded_batched_generation_equals_unbatched_and_a_manual_greedy_loop(tok):
    model = random_llama(tok, seed=3)
    prompts = ["<|user|>\nHi\n<|assistant|>\n", "<|user|>\nA much longer question here?\n<|assistant|>\n",
               "<|user|>\nMid size\n<|assistant|>\n", "x"]
    batched, _ = generate_answers(model, tok, prompts, template="plain", max_new_tokens=8, batch_size=4)
    single, _ = generate_answers(model, tok, prompts, template="plain", max_new_tokens=8, batch_size=1)
    assert batched == single
    for prompt, got in zip(prompts, single):
        seq = encode_text(tok, prompt, template="plain")
        new = []
        with torch.no_grad():
            for _ in range(8):
                token = int(model(torch.tensor([seq + new])).logits[0, -1].argmax())
                if token == tok.eos_token_id:
                    break
                new.append(token)
                if "\n" in tok.decode(new, skip_special_tokens=True).lstrip():
                    break
        assert got == tok.decode(new, skip_special_tokens=True).lstrip().split("\n")[0]


def test_generation_ends_at_eos_even_when_padding_is_an_ordinary_token():
    tok = make_tokenizer()
    tok.pad_token = "z"  # an ordinary character: rows that finished early are padded with it
    table = np.zeros((len(tok), len(tok)))
    colon, semi, y, q, eos = (tok.convert_tokens_to_ids(t) for t in (":", ";", "y", "q", "</s>"))
    table[colon, y], table[y, eos], table[semi, q], table[q, q] = 5.0, 5.0, 5.0, 5.0
    answers, _ = generate_answers(bigram_llama(tok, table), tok, ["a:", "b;"], template="chat", max_new_tokens=5,
                                  batch_size=2)
    assert answers == ["y", "qqqqq"]


def test_truncation_is_counted(tok):
    model = random_llama(tok)
    data = rows(("t", "word " * 40, "a", ["a", "b"]), ("t", "short", "b", ["a", "b"]))
    out = evaluate_tasks(model, tok, data, template="plain", max_length=60, max_new_tokens=4, progress=False)
    assert out["tasks"]["t"]["n_truncated"] == 1


def test_model_mode_restored_and_inputs_untouched(tok):
    model = random_llama(tok)
    model.train()
    data = rows(("t", "Q", "a", ["a", "b"]))
    fingerprint, side = data._fingerprint, tok.padding_side
    evaluate_tasks(model, tok, data, template="plain", max_new_tokens=2, progress=False)
    assert model.training and data._fingerprint == fingerprint and tok.padding_side == side
    assert data["messages"][0][-1] == {"role": "assistant", "content": "a"}


# ------------------------------------------------------------------------------------------ bad input
def test_bad_input_names_the_column_or_row(tok):
    model = random_llama(tok)
    good = rows(("t", "Q", "a", ["a", "b"]))
    kwargs = {"max_new_tokens": 2, "progress": False}
    with pytest.raises(KeyError, match="'answer'"):
        evaluate_tasks(model, tok, good.remove_columns("answer"), **kwargs)
    with pytest.raises(ValueError, match=r"row 1: the answer 'c' is not among its choices.*'choices'"):
        evaluate_tasks(model, tok, rows(("t", "Q", "a", ["a"]), ("t", "R", "c", ["a", "b"])), **kwargs)
    with pytest.raises(ValueError, match="empty"):
        evaluate_tasks(model, tok, good.select([]), **kwargs)
    with pytest.raises(ValueError, match=r"`tasks` \['missing'\] have no rows"):
        evaluate_tasks(model, tok, good, tasks=["missing"], **kwargs)
    with pytest.raises(ValueError, match="task 't' has 1 rows in `shots`, fewer than few_shot=2"):
        evaluate_tasks(model, tok, good, shots=good, few_shot=2, **kwargs)
    with pytest.raises(ValueError, match="few_shot=1 needs `shots`"):
        evaluate_tasks(model, tok, good, few_shot=1, **kwargs)
    no_answer_turn = good.map(lambda r: {"messages": r["messages"][:-1]})
    with pytest.raises(ValueError, match="row 0: column 'messages'.*no assistant turn"):
        evaluate_tasks(model, tok, no_answer_turn, **kwargs)
    ends_with_user = good.map(lambda r: {"messages": r["messages"] + [{"role": "user", "content": "more?"}]})
    with pytest.raises(ValueError, match="row 0: column 'messages' must end with the gold assistant turn"):
        evaluate_tasks(model, tok, ends_with_user, **kwargs)
    odd_role = good.map(lambda r: {"messages": [{"role": "robot", "content": "x"}] + r["messages"]})
    with pytest.raises(ValueError, match="unknown role"):
        evaluate_tasks(model, tok, odd_role, **kwargs)
    with pytest.raises(ValueError, match="row 0: column 'answer'"):
        evaluate_tasks(model, tok, good.map(lambda r: {"answer": " "}), **kwargs)
    no_template = make_tokenizer()
    no_template.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        evaluate_tasks(model, no_template, good, template="chat", **kwargs)
    with pytest.raises(ValueError, match="`template`"):
        evaluate_tasks(model, tok, good, template="tulu", **kwargs)
    with pytest.raises(ValueError, match="`metrics`"):
        evaluate_tasks(model, tok, good, metrics=("bleu",), **kwargs)
    with pytest.raises(ValueError, match="`backend`"):
        evaluate_tasks(model, tok, good, backend="vllm", **kwargs)


# ------------------------------------------------------------------------------------- lm-eval backend
@pytest.mark.slow
@pytest.mark.parametrize("template", ["plain", "chat"])
def test_native_multiple_choice_equals_lm_eval(tok, template):
    pytest.importorskip("lm_eval")
    model = random_llama(tok, seed=1)
    data = rows(*[("alpha", f"Pick {i}", c[i % len(c)], c) for i, c in
                  enumerate([["red", "green", "blue"], ["yes", "no"], ["(A)", "(B)"]] * 3)],
                ("beta", "Free text", "Ans", []), ("beta", "Which one?", "no", ["no", "yes"]))
    shots = rows(("alpha", "Pick a", "red", ["red", "green"]), ("beta", "Free b", "yes", []))
    kwargs = {"shots": shots, "few_shot": 1, "template": template, "max_new_tokens": 5, "batch_size": 4,
              "return_predictions": True, "progress": False}
    native = evaluate_tasks(model, tok, data, **kwargs)
    harness = evaluate_tasks(model, tok, data, backend="lm_eval", **kwargs)
    for task in ("alpha", "beta"):
        for metric in ("multiple_choice_acc", "multiple_choice_acc_norm", "exact_match", "n", "n_truncated"):
            assert native["tasks"][task][metric] == harness["tasks"][task][metric], (task, metric)
    for ours, theirs in zip(native["predictions"], harness["predictions"]):
        assert ours["generation"] == theirs["generation"]
        if ours["choice_loglikelihoods"] is not None:
            np.testing.assert_allclose(ours["choice_loglikelihoods"], theirs["choice_loglikelihoods"], atol=1e-6)
    assert model.training is False


def test_lora_model_shared_context_equals_full_sequences(tok):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(random_llama(tok, seed=2), LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                                 init_lora_weights=False))
    data = rows(("t", "Q one", "no", ["no", "yes", "maybe"]), ("t", "Q two", "yes", ["no", "yes"]))
    prompts = build_prompts(data, tok, template="chat")
    requests = [(p, c) for p, options in zip(prompts, data["choices"]) for c in options]
    shared, _ = choice_loglikelihoods(model.eval(), tok, requests, template="chat", share_context=True)
    full, _ = choice_loglikelihoods(model, tok, requests, template="chat", share_context=False)
    np.testing.assert_allclose(shared, full, atol=1e-9)


@pytest.mark.slow
def test_smollm2_native_equals_lm_eval_and_knows_paris():
    pytest.importorskip("lm_eval")
    from recipes.trainer.llm import load_causal_lm

    model, tokenizer = load_causal_lm("smollm2")
    data = rows(("facts", "What is the capital of France? Answer with one word.", "Paris",
                 ["London", "Paris", "Berlin"]),
                ("facts", "How many legs does a spider have? Answer with a number.", "8", ["6", "8", "10"]),
                ("yes_no", "Is the sun hot? Answer yes or no.", "Yes", ["Yes", "No"]))
    kwargs = {"template": "chat", "max_new_tokens": 4, "batch_size": 4, "return_predictions": True,
              "progress": False, "max_length": 256}
    native = evaluate_tasks(model, tokenizer, data, **kwargs)
    harness = evaluate_tasks(model, tokenizer, data, backend="lm_eval", **kwargs)
    # The 135M model (de-quantised from Q4_1) misses the spider's legs, but knows this one: a wrong prompt
    # format or a shifted continuation split would lose it.
    assert int(np.argmax(native["predictions"][0]["choice_loglikelihoods"])) == 1
    assert native["predictions"][0]["prompt"].endswith("<|im_start|>assistant\n")
    for ours, theirs in zip(native["predictions"], harness["predictions"]):
        np.testing.assert_allclose(ours["choice_loglikelihoods"], theirs["choice_loglikelihoods"], atol=1e-3)
        assert ours["generation"] == theirs["generation"]
    for task in ("facts", "yes_no"):
        assert native["tasks"][task]["multiple_choice_acc"] == harness["tasks"][task]["multiple_choice_acc"]


def test_lm_eval_task_files_and_the_install_hint(tok, tmp_path, monkeypatch):
    import json
    import sys

    from recipes.trainer.lm_eval_backend import write_task_files

    names = write_task_files(tmp_path, ["P0", "P1", "P2"], ["a b", "a b", "c"], ["x", "free", "y"],
                             [["w", "x"], [], ["y", "z"]], max_new_tokens=7)
    assert sorted(names.values()) == [("a b", "exact_match"), ("a b", "multiple_choice"), ("c", "exact_match"),
                                      ("c", "multiple_choice")]
    mc = next(name for name, value in names.items() if value == ("a b", "multiple_choice"))
    lines = [json.loads(line) for line in (tmp_path / f"{mc}.jsonl").read_text().splitlines()]
    assert lines == [{"row": 0, "prompt": "P0", "answer": "x", "choices": ["w", "x"], "gold": 1}]
    yaml = (tmp_path / f"{mc}.yaml").read_text()
    assert "output_type: multiple_choice" in yaml and "doc_to_text: prompt" in yaml and 'target_delimiter: ""' in yaml
    gen = next(name for name, value in names.items() if value == ("a b", "exact_match"))
    assert "max_gen_toks: 7" in (tmp_path / f"{gen}.yaml").read_text()
    assert len((tmp_path / f"{gen}.jsonl").read_text().splitlines()) == 2
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match="pip install lm-eval"):
        evaluate_tasks(random_llama(tok), tok, rows(("t", "Q", "a", ["a", "b"])), backend="lm_eval", progress=False)


# ------------------------------------------------------------------------------------- several processes
def _sharded_rows():
    return rows(("mc", "Q1", "yes", ["no", "yes"]), ("mc", "Which one? Q2", "no", ["no", "yes", "maybe"]),
                ("gen", "Q3", "Yes.", []), ("gen", "a longer question Q4", "maybe", []),
                ("mc", "Q5", "b", ["a", "b"]), ("gen", "Q6", "x", []), ("mc", "Q7 again", "a", ["a", "b"]))


def _evaluate_sharded(tok):
    return evaluate_tasks(random_llama(tok), tok, _sharded_rows(), template="chat", max_new_tokens=4,
                          batch_size=2, progress=False, return_predictions=True)


def _eval_worker(rank, world, port, queue):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        queue.put((rank, _evaluate_sharded(make_tokenizer())))
    finally:
        dist.destroy_process_group()


def test_two_processes_share_the_rows_and_return_the_one_process_result(tok):
    import socket

    import torch.multiprocessing as mp

    single = _evaluate_sharded(tok)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    procs = [context.Process(target=_eval_worker, args=(rank, 2, port, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=180) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    assert single["settings"]["processes"] == 1
    for rank in (0, 1):  # every rank gets the whole result, equal to one process's
        out = results[rank]
        assert out["settings"]["processes"] == 2 and out["tasks"] == single["tasks"]
        assert out["average"] == single["average"] and out["n"] == single["n"] == 7
        for mine, ref in zip(out["predictions"], single["predictions"]):
            assert (mine["row"], mine["generation"], mine["exact_match"]) == (ref["row"], ref["generation"], ref["exact_match"])
            np.testing.assert_allclose(mine["choice_loglikelihoods"] or [], ref["choice_loglikelihoods"] or [], rtol=1e-10)
