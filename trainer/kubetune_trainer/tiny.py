"""Tiny Llama-style models, a byte-level tokenizer and synthetic variable-length tasks: for tests, benchmarks and
the quickstart. Nothing is downloaded; everything is built from a config and a seed."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "maple",
    "tiger",
    "amber",
    "delta",
    "ocean",
    "prism",
    "lunar",
    "cedar",
    "falcon",
    "quartz",
    "ember",
    "willow",
    "harbor",
    "meadow",
    "copper",
    "violet",
    "summit",
    "canyon",
    "glacier",
    "thunder",
    "orchid",
    "pepper",
    "saffron",
    "cobalt",
    "marble",
    "zephyr",
]


def byte_tokenizer() -> Any:
    """A byte-level tokenizer (256 byte tokens + specials) with BOS added and a simple chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    specials = ["<|bos|>", "<|eos|>", "<|pad|>"]
    for token in specials:
        vocab[token] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", vocab["<|bos|>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>")
    fast.add_special_tokens({"additional_special_tokens": []})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(tokenizer: Any, *, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


# The published Llama-3-8B configuration (for benchmarks and estimates at a real size: no weights involved)
LLAMA3_8B: dict[str, Any] = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
}


def save_tiny_model(directory: Path, **kwargs: Any) -> Path:
    """A tiny model and its tokenizer, saved as a Hugging Face model directory."""
    tokenizer = byte_tokenizer()
    model = tiny_llama(tokenizer, **kwargs)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_config_model(directory: Path, config_class: str, dtype: str = "float32", **config: Any) -> Path:
    """A model of any transformers family built from a config (random weights), with the byte tokenizer: e.g.
    save_config_model(d, "Qwen2Config", hidden_size=512, vocab_size=32000). The vocabulary is at least the
    tokenizer's; extra rows are never looked up."""
    import torch
    import transformers

    tokenizer = byte_tokenizer()
    config.setdefault("vocab_size", len(tokenizer))
    config["vocab_size"] = max(config["vocab_size"], len(tokenizer))
    made = getattr(transformers, config_class)(
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **config
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(made, dtype=getattr(torch, dtype))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _task(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(4)
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 6))]
    if kind == 0:
        return f"reverse: {' '.join(words)}\n", " " + " ".join(reversed(words))
    if kind == 1:
        return f"upper: {' '.join(words)}\n", " " + " ".join(words).upper()
    if kind == 2:
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        return f"add: {a} + {b}\n", f" {a + b}"
    word = rng.choice(WORDS)
    return f"repeat {len(words)}: {word}\n", " " + " ".join([word] * len(words))


def records(count: int, seed: int, fmt: str = "prompt-completion") -> list[dict[str, Any]]:
    """Synthetic records of varied length (about 15 to 110 bytes) in any dataset format."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for _ in range(count):
        prompt, completion = _task(rng)
        if fmt == "prompt-completion":
            out.append({"prompt": prompt, "completion": completion})
        elif fmt == "chat":
            out.append(
                {
                    "messages": [
                        {"role": "system", "content": "Answer briefly."},
                        {"role": "user", "content": prompt.strip()},
                        {"role": "assistant", "content": completion.strip()},
                    ]
                }
            )
        else:
            out.append({"text": prompt + completion})
    return out


def preference_records(count: int, seed: int, fmt: str = "preference") -> list[dict[str, Any]]:
    """Synthetic preference pairs whose chosen response follows a rule the rejected one breaks: the same words,
    chosen in capitals, rejected in lower case. In any preference format: preference (strings), preference-chat
    (explicit prompt messages), preference-implicit (two whole conversations), openai-preference, shared-prefix."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 4))]
        verb = rng.choice(["say", "list", "repeat", "echo"])
        prompt, answer = f"{verb}: {' '.join(words)}\n", " ".join(words)
        chosen, rejected = answer.upper(), answer
        user = {"role": "user", "content": prompt.strip()}
        if fmt == "preference":
            out.append({"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected})
        elif fmt == "preference-chat":
            out.append(
                {
                    "prompt": [user],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                }
            )
        elif fmt == "preference-implicit":
            out.append(
                {
                    "chosen": [user, {"role": "assistant", "content": chosen}],
                    "rejected": [user, {"role": "assistant", "content": rejected}],
                }
            )
        elif fmt == "openai-preference":
            out.append(
                {
                    "input": {"messages": [user]},
                    "preferred_output": [{"role": "assistant", "content": chosen}],
                    "non_preferred_output": [{"role": "assistant", "content": rejected}],
                }
            )
        else:  # shared-prefix: Anthropic's HH shape
            head = f"\n\nHuman: {prompt.strip()}\n\nAssistant: "
            out.append({"chosen": head + chosen, "rejected": head + rejected})
    return out


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_quickstart(directory: Path) -> None:
    """The quickstart's model and data (examples/quickstart/), regenerated identically from seeds."""
    save_tiny_model(directory / "tiny-llama", hidden=64, layers=2, heads=4, seed=0)
    write_jsonl(directory / "train.jsonl", records(1200, seed=1))
    write_jsonl(directory / "preferences.jsonl", preference_records(600, seed=4))
