"""Offline stand-ins for Hub models, so a pipeline written for real checkpoints runs without a network.

``hf-prune run --offline-models`` (``offline_models=True``) swaps every model a step would download for
a tiny randomly initialised one built from a config: an `ImageEmbedder` becomes a `RandomNetEmbedder`
over a small DINOv2 config, a `CLIPEmbedder`/`TextEmbedder` gets a tiny CLIP/BERT model and a byte-level
tokenizer, a `LoRAGradientEmbedder` a two-layer Llama with LoRA adapters, and a tokenize step the same
byte-level tokenizer. Column names, batch sizes and every other option are kept, so the rest of the
pipeline (scores, selection, saving) runs exactly as written. The numbers mean nothing about the real
models; the point is to test a pipeline end to end (a CI job, a laptop) before a long run.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["byte_tokenizer", "offline_embedder", "tiny_causal_lm", "OFFLINE_LLAMA"]

# The tiny causal LM that stands in for any Hub LM (the vocabulary matches `byte_tokenizer`).
OFFLINE_LLAMA = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "num_key_value_heads": 2, "max_position_embeddings": 512}
_OFFLINE_GRADIENT_DIM = 64  # LoRA gradients of the tiny model have a few hundred entries


@functools.cache
def byte_tokenizer():
    """A byte-level tokenizer built in memory (256 byte tokens and ``<pad>``/``<unk>``/``<eos>``/``<bos>``).

    Example:
        >>> tok = byte_tokenizer()
        >>> tok.decode(tok("hi")["input_ids"])
        'hi'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<eos>", "<bos>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>",
                                   bos_token="<bos>")


def _tiny_clip():
    import torch
    from transformers import CLIPConfig, CLIPModel

    size = len(byte_tokenizer())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = CLIPConfig(
            # eos_token_id=2 is <eos>; CLIP then pools the text at its highest token id (the legacy rule).
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                             vocab_size=size, max_position_embeddings=64, eos_token_id=2, bos_token_id=3,
                             pad_token_id=0),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=32, patch_size=8),
            projection_dim=16,
        )
        return CLIPModel(config).eval()


def _tiny_text_model():
    import torch
    from transformers import BertConfig, BertModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = BertConfig(vocab_size=len(byte_tokenizer()), hidden_size=32, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=64, max_position_embeddings=512, pad_token_id=0)
        return BertModel(config).eval()


def tiny_causal_lm(lora: dict[str, Any] | None):
    """The offline stand-in LM: a 2-layer Llama (byte vocabulary) with LoRA adapters (random A and B).

    Example:
        >>> model = tiny_causal_lm({"r": 2, "target_modules": ["q_proj"]})
    """
    import peft
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = LlamaForCausalLM(LlamaConfig(vocab_size=len(byte_tokenizer()), pad_token_id=0, eos_token_id=2,
                                            bos_token_id=3, **OFFLINE_LLAMA))
        options = {"r": 4, "target_modules": ["q_proj", "v_proj"], **(lora or {}), "init_lora_weights": False}
        return peft.get_peft_model(base, peft.LoraConfig(**options))


def offline_embedder(name: str, options: dict[str, Any]) -> tuple[str, dict[str, Any], str]:
    """``(class name, options, note)`` of the offline stand-in for an embedder built from ``options``.

    ``options`` are the embed step's embedder options with Python objects already built; the result
    keeps every column name and batch setting. Embedders without a Hub model are returned unchanged.

    Example:
        >>> offline_embedder("ImageEmbedder", {"model": "facebook/dinov2-small", "output_column": "emb"})[0]
        'RandomNetEmbedder'
    """
    options = dict(options)
    model = options.get("model")
    if name == "ImageEmbedder":
        from transformers import Dinov2Config

        kept = {k: v for k, v in options.items() if k in (
            "image_column", "output_column", "pooling", "normalize", "device", "dtype", "batch_size", "storage_dtype")}
        config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                              image_size=28, patch_size=7)
        return "RandomNetEmbedder", {**kept, "config": config, "seed": 0}, (
            f"ImageEmbedder({model}) -> RandomNetEmbedder(tiny random DINOv2 config)")
    if name == "CLIPEmbedder":
        from transformers import CLIPImageProcessor

        for key in ("processor", "revision", "model_kwargs", "tokenizer_kwargs"):
            options.pop(key, None)
        options.update(model=_tiny_clip(), tokenizer=byte_tokenizer(), max_length=64,
                       image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                          crop_size={"height": 32, "width": 32}))
        return name, options, f"CLIPEmbedder({model}) -> tiny random CLIP, byte-level tokenizer"
    if name == "TextEmbedder":
        for key in ("revision", "model_kwargs"):
            options.pop(key, None)
        options.update(model=_tiny_text_model(), tokenizer=byte_tokenizer(), max_length=128)
        return name, options, f"TextEmbedder({model}) -> tiny random BERT, byte-level tokenizer"
    if name == "LoRAGradientEmbedder":
        if options.get("dim") is None or options["dim"] > _OFFLINE_GRADIENT_DIM:
            options["dim"] = _OFFLINE_GRADIENT_DIM
        return name, options, (f"LoRAGradientEmbedder({model}) -> tiny random Llama with LoRA, "
                               f"dim={options['dim']}")
    return name, options, ""
