"""Tiny models, tokenizers and model configs that tests build here (nothing from a hub)."""

from __future__ import annotations

from typing import Any

import torch
import transformers

from kubetune_trainer.tiny import LLAMA3_8B

LLAMA_8B = {"model_type": "llama", **LLAMA3_8B}


COMMON = {
    "vocab_size": 300,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 256,
    "pad_token_id": 0,
}


CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {}),
    "mixtral": ("MixtralConfig", {"num_local_experts": 2, "num_experts_per_tok": 1}),
    "qwen2": ("Qwen2Config", {}),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        {"num_experts": 2, "num_experts_per_tok": 1, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32},
    ),
    "qwen3": ("Qwen3Config", {"head_dim": 8}),
    "gemma": ("GemmaConfig", {"head_dim": 8}),
    "gemma2": ("Gemma2Config", {"head_dim": 8}),
    "phi": ("PhiConfig", {}),
    "phi3": ("Phi3Config", {}),
    "olmo2": ("Olmo2Config", {}),
    "granite": ("GraniteConfig", {}),
    "stablelm": ("StableLmConfig", {}),
    "starcoder2": ("Starcoder2Config", {}),
    "cohere": ("CohereConfig", {}),
    "gpt2": ("GPT2Config", {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 256, "vocab_size": 300}),
    "gpt_neox": ("GPTNeoXConfig", {}),
    "falcon": ("FalconConfig", {}),
    "opt": ("OPTConfig", {"ffn_dim": 64, "word_embed_proj_dim": 32}),
}


def tiny(family: str) -> Any:
    name, extra = CONFIGS[family]
    base = {} if family == "gpt2" else dict(COMMON)
    config = getattr(transformers, name)(**{**base, **extra})
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation=ATTENTION.get(family, "sdpa")).eval()


def save_with_byte_tokenizer(family: str, directory: Any) -> Any:
    """A tiny model of the family with the byte-level tokenizer of the trainer tests, saved for `kubetune run`."""
    from kubetune_trainer.tiny import byte_tokenizer

    tokenizer = byte_tokenizer()
    model = tiny(family)
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


ATTENTION = {"gemma2": "eager"}  # Gemma 2 refuses sdpa
