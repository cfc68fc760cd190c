"""Preference pairs (method: dpo): every accepted shape renders chosen and rejected with loss on exactly the
response, under the chat templates of the major families; every way a record can be wrong is refused with the file,
the record and what is wrong; prepared pairs stay whole, and a prepared directory that does not hold whole pairs,
or holds pairs for a job that expects none, is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kubetune_api.dataset import DatasetSpec
from kubetune_api.validate import validate_object
from kubetune_trainer.data import formats, pairs, prepared
from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.tiny import byte_tokenizer, preference_records

from .chat_helpers import FAMILIES, tokenizer_for
from .test_chat_masks import learned

FORMATS = {
    "preference": "preference",
    "preference-chat": "preference",
    "preference-implicit": "preference",
    "openai-preference": "openai-preference",
    "shared-prefix": "shared-prefix",
}


def two(record: dict[str, Any], fmt: str, tokenizer: Any, max_len: int = 512) -> list[formats.Sample]:
    table, counts = pairs.tokenize_pairs(
        [record], DatasetSpec(train="./p.jsonl", format=fmt, maxSeqLength=max_len), tokenizer, "p.jsonl"
    )
    assert counts.pairs == 1 and counts.samples == 2 and len(table) == 2
    return list(table)


@pytest.mark.parametrize("shape", sorted(FORMATS))
def test_every_shape_takes_loss_on_exactly_each_response(shape: str) -> None:
    tokenizer = byte_tokenizer()
    (record,) = preference_records(1, seed=7, fmt=shape)
    chosen, rejected = two(record, FORMATS[shape], tokenizer)
    said = [learned(chosen, tokenizer), learned(rejected, tokenizer)]
    if shape in ("preference", "shared-prefix"):  # text: the completion, then EOS
        assert [s[0].strip() for s in said] == [w.strip() + "<|eos|>" for w in _answers(record, shape)]
    else:  # the chat template: the assistant content and what the template writes after it (as TRL's DPO scores)
        assert said == [[a + "<|end|>\n"] for a in _answers(record, shape)]
    # the same prompt tokens before each response
    first = next(i for i, label in enumerate(chosen.labels) if label != -100)
    assert chosen.input_ids[:first] == rejected.input_ids[:first]


def _answers(record: dict[str, Any], shape: str) -> list[str]:
    if shape == "preference":
        return [record["chosen"], record["rejected"]]
    if shape == "shared-prefix":
        return [record["chosen"].rsplit("Assistant: ", 1)[1], record["rejected"].rsplit("Assistant: ", 1)[1]]
    if shape == "openai-preference":
        return [record["preferred_output"][0]["content"], record["non_preferred_output"][0]["content"]]
    return [record["chosen"][-1]["content"], record["rejected"][-1]["content"]]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_conversation_pairs_under_each_familys_template(family: str) -> None:
    """A multi-turn prompt (with an earlier assistant turn, which carries no loss) and one-message responses."""
    tokenizer = tokenizer_for(family)
    eot = FAMILIES[family][2]
    prompt = [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ]
    record = {
        "input": {"messages": prompt},
        "preferred_output": [{"role": "assistant", "content": "Green, like grass."}],
        "non_preferred_output": [{"role": "assistant", "content": "No."}],
    }
    chosen, rejected = two(record, "openai-preference", tokenizer)
    # the reply, its end-of-turn token, and whatever the template writes after it to the end (a newline, mostly)
    for side, reply in ((chosen, "Green, like grass."), (rejected, "No.")):
        rendered = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": reply}], tokenize=False)
        tail = rendered.rsplit(reply, 1)[1]
        assert tail.startswith(eot) and "".join(learned(side, tokenizer)) == reply + tail, (learned(side, tokenizer), tail)


BAD = [
    ("preference", {"prompt": "p", "rejected": "b"}, "missing field 'chosen'"),
    ("preference", {"prompt": "p", "chosen": "a"}, "missing field 'rejected'"),
    ("preference", {"prompt": "p", "chosen": "  ", "rejected": "b"}, "'chosen' is empty"),
    ("preference", {"prompt": "p", "chosen": "a", "rejected": ""}, "'rejected' is empty"),
    ("preference", {"prompt": "p", "chosen": "same", "rejected": "same"}, "chosen and rejected are the same"),
    ("preference", {"prompt": "", "chosen": "a", "rejected": "b"}, "'prompt' is empty"),
    ("preference", {"chosen": "a", "rejected": "b"}, "share no prefix"),
    ("preference", {"chosen": "a b", "rejected": [{"role": "assistant", "content": "b"}]}, "both strings or both message lists"),
    ("preference", {"prompt": "p", "chosen": ["a"], "rejected": "b"}, "all strings or all message lists"),
    (
        "preference",
        {
            "prompt": [{"role": "user", "content": "q"}],
            "chosen": [{"role": "user", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}],
        },
        "'chosen' message 1 has role 'user'",
    ),
    (
        "preference",
        {
            "prompt": [{"role": "user", "content": "q"}],
            "chosen": [{"role": "assistant", "content": ""}],
            "rejected": [{"role": "assistant", "content": "b"}],
        },
        "'chosen' is empty",
    ),
    (
        "preference",
        {"prompt": [{"role": "user", "content": "q"}], "chosen": [], "rejected": [{"role": "assistant", "content": "b"}]},
        "'chosen' must be a non-empty list",
    ),
    (
        "preference",
        {
            "chosen": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a"}],
            "rejected": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "b"}],
        },
        "must share their prompt",
    ),
    (
        "preference",
        {
            "chosen": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a"},
            ],
            "rejected": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "q2"},
                {"role": "assistant", "content": "b"},
            ],
        },
        "they differ at message 2",
    ),
    (
        "preference",
        {
            "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "rejected": [{"role": "user", "content": "q"}],
        },
        "'rejected' is empty",
    ),
    (
        "preference",
        {
            "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        },
        "chosen and rejected are the same",
    ),
    ("openai-preference", {"preferred_output": [], "non_preferred_output": []}, "missing field 'input'"),
    ("openai-preference", {"input": [], "preferred_output": [], "non_preferred_output": []}, "'input' must be an object"),
    (
        "openai-preference",
        {
            "input": {"messages": [{"role": "user", "content": "q"}]},
            "non_preferred_output": [{"role": "assistant", "content": "b"}],
        },
        "missing field 'preferred_output'",
    ),
    (
        "openai-preference",
        {"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": [{"role": "assistant", "content": "a"}]},
        "missing field 'non_preferred_output'",
    ),
    (
        "openai-preference",
        {
            "input": {"messages": [{"role": "system", "content": "s"}]},
            "preferred_output": [{"role": "assistant", "content": "a"}],
            "non_preferred_output": [{"role": "assistant", "content": "b"}],
        },
        "the prompt has no user message",
    ),
    (
        "openai-preference",
        {
            "input": {"messages": [{"role": "user", "content": "q"}]},
            "preferred_output": [{"role": "assistant", "content": "a"}],
            "non_preferred_output": [{"role": "assistant", "content": "a"}],
        },
        "chosen and rejected are the same",
    ),
    (
        "openai-preference",
        {
            "input": {"messages": [{"role": "user", "content": "q"}]},
            "preferred_output": [{"role": "assistant", "content": "a"}],
            "non_preferred_output": [{"role": "assistant", "content": "  "}],
        },
        "'non_preferred_output' is empty",
    ),
    ("shared-prefix", {"chosen": "Human: q Assistant: a"}, "missing field 'rejected'"),
    ("shared-prefix", {"rejected": "Human: q Assistant: a"}, "missing field 'chosen'"),
    ("shared-prefix", {"chosen": "x", "rejected": "x"}, "chosen and rejected are the same"),
    ("shared-prefix", {"chosen": "apple", "rejected": "pear"}, "share no prefix"),
    ("shared-prefix", {"chosen": "qa", "rejected": "qa-and-more"}, "'chosen' is empty after the shared prefix"),
    ("shared-prefix", {"chosen": 3, "rejected": "b"}, "field 'chosen' must be a str"),
]


@pytest.mark.parametrize(("fmt", "record", "said"), BAD, ids=[f"{f}-{s}" for f, _, s in BAD])
def test_each_wrong_record_is_refused_with_its_place_and_reason(fmt: str, record: dict[str, Any], said: str) -> None:
    good = preference_records(2, seed=1, fmt="shared-prefix" if fmt == "shared-prefix" else fmt)
    with pytest.raises(TrainerFailure) as raised:
        pairs.tokenize_pairs([*good, record], DatasetSpec(train="./p.jsonl", format=fmt), byte_tokenizer(), "p.jsonl")
    assert raised.value.reason == "BadRecord"
    assert raised.value.message.startswith("p.jsonl record 3: ") and said in raised.value.message, raised.value.message


def test_trls_implicit_prompt_of_texts_is_their_shared_prefix() -> None:
    """TRL's standard implicit-prompt records ({chosen, rejected} texts) read as shared-prefix ones."""
    tokenizer = byte_tokenizer()
    record = {"chosen": "The sky is blue.", "rejected": "The sky is green."}
    chosen, rejected = two(record, "preference", tokenizer)
    assert learned(chosen, tokenizer) == ["blue.<|eos|>"] and learned(rejected, tokenizer) == ["green.<|eos|>"]
    assert (chosen.input_ids, rejected.input_ids) == tuple(s.input_ids for s in two(record, "shared-prefix", tokenizer))


@pytest.mark.parametrize(
    ("chosen", "rejected", "responses"),
    [
        (  # Anthropic HH: the rejected reply is a truncation of the chosen one; the prompt ends at the last turn
            "\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in boiling water for nine minutes.",
            "\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in boiling",
            (" Put it in boiling water for nine minutes.", " Put it in boiling"),
        ),
        (  # several turns: the last one both share
            "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d e f",
            "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d",
            (" d e f", " d"),
        ),
        ("Human: q Assistant: a", "Human: q Assistant: a and more", ("a", "a and more")),  # back to a word boundary
        ("The sky is blue.", "The sky is green.", ("blue.", "green.")),
    ],
)
def test_the_implicit_prompt_leaves_each_reply_its_text(chosen: str, rejected: str, responses: tuple[str, str]) -> None:
    tokenizer = byte_tokenizer()
    end = pairs.prompt_end(chosen, rejected)
    assert (chosen[end:], rejected[end:]) == responses
    good, bad = two({"chosen": chosen, "rejected": rejected}, "shared-prefix", tokenizer)
    assert learned(good, tokenizer) == [responses[0] + "<|eos|>"] and learned(bad, tokenizer) == [responses[1] + "<|eos|>"]


def test_a_pair_with_a_side_too_long_to_keep_is_dropped_whole() -> None:
    tokenizer = byte_tokenizer()
    records = [{"prompt": "q: ", "chosen": "a" * 10, "rejected": "b" * 200}, *preference_records(3, seed=2)]
    spec = DatasetSpec(train="./p.jsonl", format="preference", maxSeqLength=64, overlength="drop")
    table, counts = pairs.tokenize_pairs(records, spec, tokenizer, "p.jsonl")
    assert counts.pairs == 3 and counts.dropped == 1 and len(table) == 6


def test_prepared_rows_hold_whole_pairs_and_a_tampered_directory_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    from kubetune_trainer.model import load_tokenizer

    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in preference_records(300, seed=3)))
    job = validate_object(
        {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "p"},
            "spec": {
                "model": {"uri": str(tiny_model)},
                "method": {"type": "dpo"},
                "dataset": {"train": str(data), "format": "preference", "maxSeqLength": 64, "packing": True},
                "output": {"uri": str(tmp_path / "out")},
            },
        },
        cluster=False,
    ).job
    assert job is not None
    spec = job.spec
    tokenizer = load_tokenizer(str(tiny_model), spec.model)
    out = tmp_path / "prepared"
    meta = prepared.prepare(spec, tokenizer, "llama", data, None, out)
    assert meta.pairs and meta.counts.train.pairs + meta.counts.validation.pairs == 300
    ready = prepared.load(out, len(tokenizer), 64, pairs=True)
    for rows in (ready.train, ready.validation):
        assert len(rows.members) % 2 == 0 and np.all(rows.members[1::2] == rows.members[0::2] + 1)
        assert rows.lengths().max() <= 128  # two sequences of at most maxSeqLength each
        assert any(rows.offsets[r + 1] - rows.offsets[r] > 2 for r in range(len(rows)))  # packed: several pairs a row
    with pytest.raises(prepared.PreparedInvalid, match="made with preference pairs"):
        prepared.load(out, len(tokenizer), 64, pairs=False)
    members = np.load(out / "train.members.npy")
    members[[0, 1]] = members[[1, 0]]  # a rejected before its chosen
    np.save(out / "train.members.npy", members, allow_pickle=False)
    with pytest.raises(prepared.PreparedInvalid, match="whole preference pairs"):
        prepared.load(out, len(tokenizer), 64, pairs=True)


def test_render_pair_refuses_a_record_that_is_not_an_object() -> None:
    with pytest.raises(TrainerFailure, match="p record 1: a record must be a JSON object"):
        pairs.render_pair(["a"], DatasetSpec(train="./p.jsonl", format="preference"), byte_tokenizer(), "p", 0)  # type: ignore[arg-type]
