"""The records the array path is checked on against the per-record path it replaced (tests/fixtures/tokenized.json
holds that path's ids and labels, made once by the previous implementation): every chat template fixture with and
without a system message, weights, tool calls, and every other format, through a byte tokenizer."""

from __future__ import annotations

from typing import Any

from kubetune_api.dataset import DatasetSpec
from kubetune_trainer import tiny

from .chat_helpers import FAMILIES, conversation, tokenizer_for, tool_conversation


def cases() -> list[tuple[str, str, DatasetSpec, list[dict[str, Any]]]]:
    """(case id, tokenizer family or 'plain', dataset spec, records)."""
    out = []
    for family in sorted(FAMILIES):
        records = [
            {"messages": conversation(FAMILIES[family][4])},
            {"messages": conversation(FAMILIES[family][4], weight=0)},
            {"messages": conversation(True)},  # folded into the first user turn where the template refuses a system role
        ]
        if family == "qwen2.5":
            records.append(tool_conversation())
        out.append((f"chat-{family}", family, DatasetSpec(train="./t.jsonl", format="chat", maxSeqLength=512), records))
    share = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello there"}]}
    out.append(("sharegpt-chatml", "chatml", DatasetSpec(train="./t.jsonl", format="sharegpt"), [share]))
    alpaca = [{"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"}]
    out.append(("alpaca-chatml", "chatml", DatasetSpec(train="./t.jsonl", format="alpaca"), alpaca))
    out.append(("alpaca-plain", "plain", DatasetSpec(train="./t.jsonl", format="alpaca"), alpaca))
    pc = tiny.records(40, seed=3)
    out.append(("prompt-completion", "plain", DatasetSpec(train="./t.jsonl", maxSeqLength=64), pc))
    out.append(("keep-end", "plain", DatasetSpec(train="./t.jsonl", maxSeqLength=24), pc))
    out.append(("right", "plain", DatasetSpec(train="./t.jsonl", maxSeqLength=24, overlength="right"), pc))
    text = [{"text": r["prompt"] + r["completion"]} for r in pc]
    out.append(("text", "plain", DatasetSpec(train="./t.jsonl", format="text", maxSeqLength=48), text))
    return out


def tokenizer(family: str) -> Any:
    if family == "plain":
        from kubetune_trainer.tiny import byte_tokenizer

        return byte_tokenizer()
    return tokenizer_for(family)
