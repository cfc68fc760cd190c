"""Published configs of well-known base models (their config.json's dimensions), so `kubetune preflight` can
estimate memory and GPU-hours for a model it cannot read from here. Matched on the model URI's last part."""

from __future__ import annotations

import re
from typing import Any

LLAMA3 = {"model_type": "llama", "vocab_size": 128256, "tie_word_embeddings": False, "num_key_value_heads": 8}
CONFIGS: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": {
        **LLAMA3,
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "intermediate_size": 14336,
    },
    "llama-3.1-70b": {
        **LLAMA3,
        "hidden_size": 8192,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "intermediate_size": 28672,
    },
    "llama-3.1-405b": {
        **LLAMA3,
        "hidden_size": 16384,
        "num_hidden_layers": 126,
        "num_attention_heads": 128,
        "intermediate_size": 53248,
    },
    "mistral-7b": {
        "model_type": "mistral",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 32768,
        "tie_word_embeddings": False,
    },
    "mixtral-8x7b": {
        "model_type": "mixtral",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 32000,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "tie_word_embeddings": False,
    },
    "qwen2.5-7b": {
        "model_type": "qwen2",
        "hidden_size": 3584,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "intermediate_size": 18944,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
    },
    "qwen2.5-72b": {
        "model_type": "qwen2",
        "hidden_size": 8192,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "intermediate_size": 29568,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
    },
    "gemma-2-9b": {
        "model_type": "gemma2",
        "hidden_size": 3584,
        "num_hidden_layers": 42,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 256,
        "intermediate_size": 14336,
        "vocab_size": 256000,
        "tie_word_embeddings": True,
    },
}


def known_config(uri: str) -> tuple[str, dict[str, Any]] | None:
    """The published config a model URI names (llama-3.1-70b, Meta-Llama-3.1-70B-Instruct, ...), if any."""
    last = uri.rstrip("/").rsplit("/", 1)[-1].lower().replace("meta-", "").replace("_", "-")
    for name, config in CONFIGS.items():
        if re.search(rf"(^|[^0-9a-z.]){re.escape(name)}($|[^0-9a-z.])", last):
            return name, config
    return None
