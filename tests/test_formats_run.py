"""The newer record formats train end to end, from an S3 prefix of shards as data pipelines write them (JSONL.gz,
JSONL and a zstd JSON array beside a _SUCCESS marker and a .crc file), in one process with ZeRO-2 and in two with ZeRO-3:
alpaca, sharegpt, and OpenAI chat records with tools, tool calls, tool results and weight 0."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from kubetune_trainer import tiny

from .chat_helpers import WEATHER_TOOL, tokenizer_for
from .s3server import S3Server
from .trainer_helpers import manifest, run

pytestmark = pytest.mark.trainer


def as_format(fmt: str, count: int, seed: int) -> list[dict[str, Any]]:
    out = []
    for i, record in enumerate(tiny.records(count, seed=seed)):
        prompt, completion = record["prompt"].strip(), record["completion"].strip()
        if fmt == "alpaca":
            instruction, _, rest = prompt.partition(":")
            out.append({"instruction": instruction, "input": rest.strip(), "output": completion})
        elif fmt == "sharegpt":
            out.append({"conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": completion}]})
        elif i % 3 == 0:  # OpenAI chat fine-tuning records with a tool round trip
            call = {"id": f"c{i}", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
            out.append(
                {
                    "tools": [WEATHER_TOOL],
                    "messages": [
                        {"role": "user", "content": [{"type": "text", "text": prompt}]},
                        {"role": "assistant", "content": None, "tool_calls": [call]},
                        {"role": "tool", "tool_call_id": f"c{i}", "content": '{"celsius": 3}'},
                        {"role": "assistant", "content": completion},
                    ],
                }
            )
        else:
            out.append(
                {
                    "messages": [
                        {"role": "system", "content": "Answer briefly."},
                        {"role": "user", "content": prompt},
                        {"role": "assistant", "content": "Let me think.", "weight": 0},
                        {"role": "user", "content": "Go on."},
                        {"role": "assistant", "content": completion, "weight": 1},
                    ]
                }
            )
    return out


def shards(s3: S3Server, prefix: str, records: list[dict[str, Any]]) -> str:
    """Three shards in three encodings, and the files a pipeline leaves beside them (never read)."""
    import pyarrow as pa

    third = len(records) // 3
    first, second, rest = records[:third], records[third : 2 * third], records[2 * third :]
    s3.put("data", f"{prefix}part-0.jsonl.gz", gzip.compress("".join(json.dumps(r) + "\n" for r in first).encode()))
    packed = pa.BufferOutputStream()
    with pa.CompressedOutputStream(packed, "zstd") as stream:
        stream.write(json.dumps(rest).encode())
    s3.put("data", f"{prefix}part-2.json.zst", packed.getvalue().to_pybytes())
    s3.put("data", f"{prefix}part-1.jsonl", "".join(json.dumps(r) + "\n" for r in second).encode())
    s3.put("data", f"{prefix}_SUCCESS", b"")
    s3.put("data", f"{prefix}.part-0.jsonl.gz.crc", b"\x00\x01")
    return f"s3://data/{prefix}"


@pytest.fixture(scope="module")
def qwen_style_model(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny model whose tokenizer has Qwen 2.5's chat template (it renders tools and tool calls)."""
    tokenizer = tokenizer_for("qwen2.5")
    directory = tmp_path_factory.mktemp("qwen-style") / "model"
    tiny.tiny_llama(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    s3.bucket("models")
    return s3.upload_dir(directory, "models", "qwen-style")


# every format once and each process count: a format is read and tokenized by the launcher, before any rank, the same
# whatever the number of ranks; the OpenAI records (tool calls, weights) under both (alpaca-2proc and sharegpt-1proc,
# runs of their own until 2026-12, checked nothing the others do not)
CASES = [("alpaca", 1), ("sharegpt", 2), ("openai", 1), ("openai", 2)]


@pytest.mark.parametrize(("fmt", "processes"), CASES, ids=[f"{f}-{p}proc" for f, p in CASES])
def test_a_format_trains_from_a_prefix_of_shards(
    s3: S3Server, qwen_style_model: str, tmp_path: Path, fmt: str, processes: int
) -> None:
    s3.bucket("data")
    s3.bucket("adapters")
    train = shards(s3, f"formats/{fmt}-{processes}/train/", as_format(fmt, 90, seed=1))
    out = f"s3://adapters/formats/{fmt}-{processes}/"
    body = manifest(
        f"{fmt}-{processes}",
        s3,
        {
            "model": {"uri": qwen_style_model},
            "dataset": {"train": train, "format": "chat" if fmt == "openai" else fmt, "maxSeqLength": 256},
            "lora": {"r": 4, "alpha": 8},
            "training": {"maxSteps": 2, "evalEverySteps": 0, "checkpointEverySteps": 0},
            "deepspeed": {"zeroStage": 3 if processes == 2 else 2},
            "workers": {"replicas": processes},
            "output": {"uri": out},
        },
    )
    outcome = run(body, s3, tmp_path, processes=processes)
    assert outcome.returncode == 0, outcome.stdout[-3000:] + outcome.stderr[-3000:]
    (counts,) = outcome.of("data")
    assert counts["train"]["records"] + counts["validation"]["records"] == 90  # every shard, no marker file
    assert counts["train"]["dropped"] == counts["train"]["empty"] == 0
    assert "_SUCCESS" in s3.keys(out)
    recorded = json.loads(s3.get(out + "manifest.json"))["datasets"]["train"]
    assert recorded["uri"] == train and len(recorded["sha256"]) == 64


def test_a_bad_record_in_a_shard_is_named_by_its_shard_and_line(s3: S3Server, qwen_style_model: str, tmp_path: Path) -> None:
    s3.bucket("data")
    good = "".join(json.dumps(r) + "\n" for r in tiny.records(20, seed=1)).encode()
    s3.put("data", "formats/bad/a.jsonl", good)
    s3.put("data", "formats/bad/b.jsonl", good + b'{"prompt": "x"}\n')
    body = manifest(
        "bad-shard",
        s3,
        {
            "model": {"uri": qwen_style_model},
            "dataset": {"train": "s3://data/formats/bad/", "validationSplit": 0.2},
            "output": {"uri": str(tmp_path / "out")},
        },
    )
    outcome = run(body, s3, tmp_path, processes=1)
    assert outcome.returncode == 1 and outcome.summary["reason"] == "BadRecord"
    assert outcome.summary["message"].startswith("bad/b.jsonl record 21: missing field 'completion'")  # before any rank
