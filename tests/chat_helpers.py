"""Conversations, tools and the chat-template tokenizers the chat-format tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubetune_trainer.tiny import byte_tokenizer

# family: (bos, eos, end-of-turn, extra special tokens, whether the template takes a system message)
FAMILIES: dict[str, tuple[str, str, str, list[str], bool]] = {
    "llama3": (
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|eot_id|>",
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        True,
    ),
    "qwen2.5": ("<|endoftext|>", "<|im_end|>", "<|im_end|>", ["<|im_start|>", "<|im_end|>"], True),
    "qwen3": ("<|endoftext|>", "<|im_end|>", "<|im_end|>", ["<|im_start|>", "<|im_end|>"], True),
    "mistral": ("<s>", "</s>", "</s>", [], False),
    "gemma": ("<bos>", "<eos>", "<end_of_turn>", ["<start_of_turn>", "<end_of_turn>"], False),
    "phi3": ("<s>", "<|endoftext|>", "<|end|>", ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], True),
    "chatml": ("<s>", "<|im_end|>", "<|im_end|>", ["<|im_start|>", "<|im_end|>"], True),
}


def tokenizer_for(family: str) -> Any:
    bos, eos, _, extra, _ = FAMILIES[family]
    tokenizer = byte_tokenizer()
    tokenizer.add_special_tokens({"bos_token": bos, "eos_token": eos, "additional_special_tokens": extra})
    tokenizer.chat_template = (TEMPLATES / f"{family}.jinja").read_text()
    return tokenizer


def conversation(system: bool, **first: Any) -> list[dict[str, Any]]:
    messages = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": ANSWERS[0], **first},
        {"role": "user", "content": "How many people live there?"},
        {"role": "assistant", "content": ANSWERS[1]},
    ]
    return ([{"role": "system", "content": "You answer briefly."}] if system else []) + messages


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def tool_conversation(arguments: Any = '{"city": "Paris"}') -> dict[str, Any]:
    """An OpenAI function-calling fine-tuning record, as the API takes it (arguments as a JSON string)."""
    return {
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "How warm is it in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 18}'},
            {"role": "assistant", "content": "It is 18 degrees."},
        ],
    }


TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"
ANSWERS = ["Paris is the capital.", "About 2.1 million people live there."]
