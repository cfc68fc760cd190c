"""Loss masks under the chat templates of the major model families (their Jinja in tests/fixtures/chat_templates):
exactly each assistant message's content and the end-of-turn token after it carry loss, in every turn of a
multi-turn conversation, however the template renders earlier turns. Fails with masks found by rendering prefixes
(Qwen3 renders the last assistant turn with a think block and earlier ones without)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kubetune_api.dataset import DatasetSpec
from kubetune_trainer.data import batching, formats
from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.tiny import byte_tokenizer

from .chat_helpers import ANSWERS, FAMILIES, conversation, tokenizer_for, tool_conversation
from .data_helpers import read_records


def learned(sample: formats.Sample, tokenizer: Any) -> list[str]:
    """The runs of tokens that carry loss, decoded."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(sample.input_ids, sample.labels, strict=True):
        on = label != batching.IGNORE
        if on and not previous:
            runs.append([])
        if on:
            runs[-1].append(token)
        previous = on
    return [tokenizer.decode(run) for run in runs]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_exactly_the_assistant_content_and_its_end_of_turn_carry_loss(family: str) -> None:
    tokenizer = tokenizer_for(family)
    eot = FAMILIES[family][2]
    sample = formats.tokenize_record(
        {"messages": conversation(FAMILIES[family][4])}, DatasetSpec(train="./t.jsonl", format="chat"), tokenizer, "t", 0
    )
    assert learned(sample, tokenizer) == [answer + eot for answer in ANSWERS]
    rendered = tokenizer.apply_chat_template(conversation(FAMILIES[family][4]), tokenize=False)
    assert tokenizer.decode(sample.input_ids) == rendered  # the one rendering, tokenized as the template wrote it


def test_weight_zero_turns_carry_no_loss() -> None:
    tokenizer = tokenizer_for("chatml")
    sample = formats.tokenize_record(
        {"messages": conversation(True, weight=0)}, DatasetSpec(train="./t.jsonl", format="chat"), tokenizer, "t", 0
    )
    assert learned(sample, tokenizer) == [ANSWERS[1] + "<|im_end|>"]


def test_parquet_chat_with_weights_on_some_messages_reads_as_written(tmp_path: Path) -> None:
    """A columnar file holds every key of any message on every message: `weight: null` where it was absent and
    0.0 as a float. Null is absent and 0.0 is 0: the same ids and labels as the JSONL the user wrote."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [
        {"messages": conversation(True, weight=0)},
        {"messages": conversation(False)},
        {"messages": [*conversation(True)[:-1], {"role": "assistant", "content": ANSWERS[1], "weight": 1}]},
    ]
    jsonl = tmp_path / "chat.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    parquet = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist(records), parquet)
    read = read_records(parquet, "chat.parquet")
    assert read[1]["messages"][0]["weight"] is None and read[0]["messages"][2]["weight"] == 0.0  # as Parquet gives it
    spec, tokenizer = DatasetSpec(train="./chat.parquet", format="chat"), tokenizer_for("chatml")
    from_parquet, _ = formats.tokenize(read, spec, tokenizer, "chat.parquet")
    from_jsonl, _ = formats.tokenize(read_records(jsonl, "chat.jsonl"), spec, tokenizer, "chat.jsonl")
    assert list(from_parquet) == list(from_jsonl) and len(from_jsonl) == 3


def test_a_bad_weight_and_a_refusing_template_name_the_record() -> None:
    spec = DatasetSpec(train="./t.jsonl", format="chat")
    with pytest.raises(TrainerFailure, match=r"t record 4: message 2: weight must be 0 or 1"):
        formats.tokenize_record({"messages": conversation(False, weight=0.5)}, spec, tokenizer_for("chatml"), "t", 3)
    twice = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(TrainerFailure, match=r"t record 1: the chat template refused it: Conversation roles must alternate"):
        formats.tokenize_record({"messages": twice}, spec, tokenizer_for("mistral"), "t", 0)


ALPACA = {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"}


def test_alpaca_keeps_the_input_and_learns_only_the_output() -> None:
    spec = DatasetSpec(train="./t.jsonl", format="alpaca")
    chat = tokenizer_for("chatml")
    sample = formats.tokenize_record(ALPACA, spec, chat, "t", 0)
    assert "Translate to French.\n\nGood morning" in chat.decode(sample.input_ids)
    assert learned(sample, chat) == ["Bonjour<|im_end|>"]
    plain = byte_tokenizer()
    plain.chat_template = None
    sample = formats.tokenize_record(ALPACA, spec, plain, "t", 0)
    text = plain.decode(sample.input_ids, skip_special_tokens=True)
    assert "### Instruction:\nTranslate to French.\n\n### Input:\nGood morning\n\n### Response:\nBonjour" in text
    assert learned(sample, plain) == ["Bonjour<|eos|>"]


def test_mapping_alpacas_instruction_to_the_prompt_cannot_drop_its_input() -> None:
    spec = DatasetSpec(train="./t.jsonl", promptField="instruction", completionField="output")
    with pytest.raises(
        TrainerFailure, match=r"non-empty 'input' that promptField: instruction would drop; use dataset\.format: alpaca"
    ):
        formats.tokenize_record(ALPACA, spec, byte_tokenizer(), "t", 0)
    assert formats.tokenize_record({**ALPACA, "input": ""}, spec, byte_tokenizer(), "t", 0).input_ids  # nothing dropped


def test_sharegpt_and_openai_text_parts_train_like_chat() -> None:
    tokenizer = tokenizer_for("chatml")
    chat = formats.tokenize_record(
        {"messages": conversation(True)}, DatasetSpec(train="./t.jsonl", format="chat"), tokenizer, "t", 0
    )
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    share = {"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in conversation(True)]}
    assert formats.tokenize_record(share, DatasetSpec(train="./t.jsonl", format="sharegpt"), tokenizer, "t", 0) == chat
    parts = [
        {**m, "content": [{"type": "text", "text": m["content"][:5]}, {"type": "text", "text": m["content"][5:]}]}
        for m in conversation(True)
    ]
    assert formats.tokenize_record({"messages": parts}, DatasetSpec(train="./t.jsonl", format="chat"), tokenizer, "t", 0) == chat
    with pytest.raises(TrainerFailure, match=r"t record 1: conversation turn 1 needs 'from'"):
        formats.tokenize_record(
            {"conversations": [{"from": "bot", "value": "x"}]},
            DatasetSpec(train="./t.jsonl", format="sharegpt"),
            tokenizer,
            "t",
            0,
        )


def test_a_template_without_a_system_role_gets_it_in_the_first_user_turn() -> None:
    tokenizer = tokenizer_for("gemma")
    samples, counts = formats.tokenize(
        [{"messages": conversation(True)}], DatasetSpec(train="./t.jsonl", format="chat"), tokenizer, "t"
    )
    assert counts.system_folded == 1
    assert "<start_of_turn>user\nYou answer briefly.\n\nWhat is the capital of France?" in tokenizer.decode(samples[0].input_ids)
    assert learned(samples[0], tokenizer) == [answer + "<end_of_turn>" for answer in ANSWERS]


def chat(record: dict[str, Any], family: str) -> formats.Sample:
    return formats.tokenize_record(record, DatasetSpec(train="./t.jsonl", format="chat"), tokenizer_for(family), "t.jsonl", 6)


def test_tool_calls_carry_loss_as_the_template_writes_them_and_tool_results_do_not() -> None:
    tokenizer = tokenizer_for("qwen2.5")
    sample = chat(tool_conversation(), "qwen2.5")
    assert learned(sample, tokenizer) == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        "It is 18 degrees.<|im_end|>",
    ]
    text = tokenizer.decode(sample.input_ids)
    assert '"name": "get_weather"' in text.split("<|im_end|>")[0]  # the tool definitions reach the system turn
    assert '<tool_response>\n{"celsius": 18}\n</tool_response>' in text


def test_a_template_without_tool_support_is_a_clear_error_not_a_silent_drop() -> None:
    with pytest.raises(TrainerFailure) as caught:
        chat(tool_conversation(), "chatml")
    assert caught.value.message == "t.jsonl record 7: has 'tools' but the model's chat template does not render tool definitions"
    record = tool_conversation()
    del record["tools"]
    with pytest.raises(TrainerFailure) as caught:
        chat(record, "chatml")
    assert "t.jsonl record 7: message 2 has tool_calls but the model's chat template does not render tool calls" in (
        caught.value.message
    )


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        ("{city: Paris}", "tool call 1 (get_weather): arguments are not JSON"),
        ('["Paris"]', "tool call 1: arguments must be a JSON object"),
    ],
)
def test_bad_tool_call_arguments_name_the_record_and_the_call(arguments: str, words: str) -> None:
    with pytest.raises(TrainerFailure) as caught:
        chat(tool_conversation(arguments), "qwen2.5")
    assert caught.value.message.startswith("t.jsonl record 7: message 2: ") and words in caught.value.message


def test_an_empty_assistant_message_is_skipped_not_refused() -> None:
    messages = conversation(True)
    messages[2] = {"role": "assistant", "content": ""}
    sample = chat({"messages": messages}, "chatml")
    assert learned(sample, tokenizer_for("chatml")) == [ANSWERS[1] + "<|im_end|>"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_labels_from_the_encoding_equal_labels_from_every_tokens_offsets(family: str) -> None:
    """The fast path (_span_labels_encoded: the span's end tokens looked up in the Encoding) gives exactly the labels
    of the reference (_span_labels over every token's offsets), on each family's template, with characters a
    byte-level tokenizer splits over several tokens, whitespace and tool calls."""
    tokenizer = tokenizer_for(family)
    special = formats.special_ids(tokenizer)
    spec = DatasetSpec(train="./t.jsonl", format="chat")
    records = [
        {"messages": conversation(FAMILIES[family][4])},
        {"messages": [{"role": "user", "content": "Grüße 🌍?"}, {"role": "assistant", "content": "  Très bien 👍🏽 — 東京 \n"}]},
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "\n\n  \t"}]},
    ]
    if FAMILIES[family][4]:
        records.append(tool_conversation())
    compared = 0
    for index, record in enumerate(records):
        try:
            rendered = formats.render_record(record, spec, tokenizer, "t", index)
        except TrainerFailure:
            continue  # a template that refuses the record: nothing to label
        ((text, _),) = rendered.pieces
        assert rendered.spans is not None
        encoding = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
        ids = np.array(encoding.ids, dtype=np.int64)
        offsets = np.array(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        reference = formats._span_labels(text, ids, offsets, rendered.spans, special)
        table = formats.special_table(special)
        assert np.array_equal(formats._span_labels_encoded(text, ids, encoding, rendered.spans, table), reference), index
        compared += 1
    assert compared >= 2
