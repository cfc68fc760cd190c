"""Records to sequences: loss masks per format, packing isolation, overlength handling, splits and rank sharding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune_api.conditions import Reason
from kubetune_api.dataset import DatasetSpec
from kubetune_trainer import tiny
from kubetune_trainer.data import batching, formats, reading
from kubetune_trainer.errors import TrainerFailure

from .data_helpers import read_records

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return tiny.byte_tokenizer()


def spec(**fields: object) -> DatasetSpec:
    return DatasetSpec.model_validate({"train": "./t.jsonl", **fields})


def labelled_text(tokenizer, sample: formats.Sample) -> str:  # type: ignore[no-untyped-def]
    return str(
        tokenizer.decode([t for t, label in zip(sample.input_ids, sample.labels, strict=True) if label != batching.IGNORE])
    )


def test_prompt_completion_takes_loss_on_the_completion_only(tokenizer) -> None:  # type: ignore[no-untyped-def]
    samples, counts = formats.tokenize([{"prompt": "add: 2 + 2\n", "completion": " 4"}], spec(), tokenizer, "t")
    assert labelled_text(tokenizer, samples[0]) == " 4<|eos|>"
    assert counts.loss_tokens == 3


def test_chat_takes_loss_on_assistant_turns_only(tokenizer) -> None:  # type: ignore[no-untyped-def]
    record = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "ANSWER-ONE"},
            {"role": "user", "content": "second question"},
            {"role": "assistant", "content": "ANSWER-TWO"},
        ]
    }
    samples, _ = formats.tokenize([record], spec(format="chat"), tokenizer, "t")
    text = labelled_text(tokenizer, samples[0])
    assert "ANSWER-ONE" in text and "ANSWER-TWO" in text
    for hidden in ("be brief", "question", "<|user|>", "<|system|>"):
        assert hidden not in text


def test_text_takes_loss_on_every_token_but_the_first(tokenizer) -> None:  # type: ignore[no-untyped-def]
    samples, _ = formats.tokenize([{"text": "hello"}], spec(format="text"), tokenizer, "t")
    assert labelled_text(tokenizer, samples[0]) == "hello<|eos|>"


@pytest.mark.parametrize(("overlength", "kept", "truncated", "dropped"), [("truncate", 2, 1, 0), ("drop", 1, 0, 1)])
def test_overlength_samples_are_truncated_or_dropped_and_counted(tokenizer, overlength, kept, truncated, dropped) -> None:  # type: ignore[no-untyped-def]
    records = [{"prompt": "p", "completion": "short"}, {"prompt": "p", "completion": "x" * 100}]
    samples, counts = formats.tokenize(records, spec(maxSeqLength=32, overlength=overlength), tokenizer, "t")
    assert (len(samples), counts.truncated, counts.dropped) == (kept, truncated, dropped)
    assert all(len(s.input_ids) <= 32 for s in samples)


def test_packed_samples_cannot_see_each_other(tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = tiny.tiny_llama(tokenizer, seed=3).eval()
    a, b = (
        formats.tokenize([{"text": t}], spec(format="text"), tokenizer, "t")[0][0]
        for t in ("first sample, long enough", "second")
    )
    packed = batching.pack([a, b], 128)
    assert len(packed) == 1
    row = packed[0]
    start = list(row.input_ids).index(b.input_ids[0], 1)

    def logits(row: batching.Row) -> torch.Tensor:
        batch = batching.collate([row], tokenizer.pad_token_id)
        with torch.no_grad():
            return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]

    alone = logits(batching.Row(b.input_ids, b.labels, list(range(len(b.input_ids)))))
    together = logits(row)[start : start + len(b.input_ids)]
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    # the control: without positions restarting at the boundary, B does see A, so the check above can fail
    leaky = logits(batching.Row(row.input_ids, row.labels, list(range(len(row.input_ids)))))[start : start + len(b.input_ids)]
    assert not torch.allclose(leaky, alone, atol=1e-3)


def test_packing_fills_rows_and_keeps_every_token(tokenizer) -> None:  # type: ignore[no-untyped-def]
    samples, _ = formats.tokenize(tiny.records(200, seed=5), spec(maxSeqLength=128), tokenizer, "t")
    rows = batching.pack(samples, 128)
    assert all(len(r.input_ids) <= 128 for r in rows)
    assert sum(len(r.input_ids) for r in rows) == sum(len(s.input_ids) for s in samples)
    assert len(rows) < len(samples) / 1.4  # packed, not one sample per row


def test_split_is_seeded_and_disjoint() -> None:
    train, held = reading.split_positions(100, 0.1, seed=7)
    assert len(held) == 10 and len(train) == 90
    assert set(train).isdisjoint(held) and sorted(train + held) == list(range(100))
    assert reading.split_positions(100, 0.1, seed=7) == (train, held)
    assert reading.split_positions(100, 0.1, seed=8)[1] != held


def test_every_rank_runs_the_agreed_number_of_batches_and_every_row_is_used() -> None:
    """Every rank shuffles all rows with the same seed, wraps them to a multiple of world x micro x accumulation,
    and takes every world-th: equal counts, every row used, none twice before all were used once."""
    rows = [batching.Row([i], [i], [0]) for i in range(37)]
    count = batching.micro_batches_per_epoch(37, micro=2, world=3, multiple=2)
    assert count == 8  # 37 rows -> 48 (a multiple of 3 x 2 x 2) -> 16 per rank -> 8 micro-batches of 2
    per_rank = [batching.global_micro_batches(rows, micro=2, world=3, rank=r, multiple=2, seed=11) for r in range(3)]
    assert {len(b) for b in per_rank} == {count} and all(len(batch) == 2 for b in per_rank for batch in b)
    seen = [row.input_ids[0] for batches in per_rank for batch in batches for row in batch]
    assert set(seen) == set(range(37)) and len(seen) == 48
    again = batching.global_micro_batches(rows, micro=2, world=3, rank=0, multiple=2, seed=11)
    assert [[r.input_ids for r in b] for b in again] == [[r.input_ids for r in b] for b in per_rank[0]]  # seeded
    other = batching.global_micro_batches(rows, micro=2, world=3, rank=0, multiple=2, seed=12)
    assert [[r.input_ids for r in b] for b in other] != [[r.input_ids for r in b] for b in per_rank[0]]


def test_a_rank_reads_only_its_records_and_knows_where_they_came_from(tmp_path: Path) -> None:
    records = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(10)]
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:4]) + "\n")
    (shards / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[4:]) + "not json, never parsed\n")
    assert reading.count_records(shards, "shards/") == 11
    mine, origins, indices = reading.read_dataset(shards, "shards/", lambda i: i % 2 == 1 and i < 10)
    assert [r["prompt"] for r in mine] == ["p1", "p3", "p5", "p7", "p9"]
    assert origins == [
        ("shards/a.jsonl", 1),
        ("shards/a.jsonl", 3),
        ("shards/b.jsonl", 1),
        ("shards/b.jsonl", 3),
        ("shards/b.jsonl", 5),
    ]
    assert indices == [1, 3, 5, 7, 9]


@pytest.mark.parametrize(
    ("content", "suffix", "needle"),
    [
        ("not json\n", ".jsonl", "line 1: invalid JSON"),
        ('{"prompt": "a"}\n[1]\n', ".jsonl", "record 2: must be a JSON object"),
        ('{"a": 1}', ".json", "must be a list of objects"),
        ("\xff", ".jsonl", "not UTF-8"),
    ],
)
def test_malformed_files_name_the_position(tmp_path: Path, content: str, suffix: str, needle: str) -> None:
    path = tmp_path / f"d{suffix}"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(TrainerFailure) as failure:
        read_records(path, path.name)
    assert failure.value.reason == Reason.BAD_RECORD and needle in failure.value.message


def test_a_record_without_its_field_is_named(tokenizer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TrainerFailure, match=r"train.jsonl record 2: missing field 'completion' \(has: prompt, answer\)"):
        formats.tokenize([{"prompt": "a", "completion": "b"}, {"prompt": "a", "answer": "b"}], spec(), tokenizer, "train.jsonl")


def test_a_long_prompt_keeps_its_completion_by_default(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """keep-end (the default for prompt-completion): a prompt longer than maxSeqLength loses its start, not the
    completion; cut from the end instead, nothing would be left to learn."""
    records = [{"prompt": "context " * 20 + "Q: 2+2?", "completion": " 4"}]
    kept, counts = formats.tokenize(records, spec(maxSeqLength=32), tokenizer, "t")
    assert counts.kept_end == 1 and counts.empty == 0
    assert labelled_text(tokenizer, kept[0]) == " 4<|eos|>" and len(kept[0].input_ids) == 32
    right, counts = formats.tokenize(records, spec(maxSeqLength=32, overlength="right"), tokenizer, "t")
    assert len(right) == 0 and counts.truncated == 1 and counts.empty == 1
    text, _ = formats.tokenize([{"text": "y" * 100}], spec(format="text", maxSeqLength=32), tokenizer, "t")
    assert tokenizer.decode(text[0].input_ids).startswith("<|bos|>yyy")  # text keeps its start by default


def test_a_bad_record_is_named_by_its_place_in_the_file(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """With a held-out split, record N of the file is still record N in the error (not its place in a part)."""
    records = [{"prompt": "p", "completion": "c"} for _ in range(40)]
    records[30] = {"prompt": "p"}
    keep, held = reading.split_positions(len(records), 0.25, seed=7)
    assert sorted(keep + held) == list(range(40))
    part, at = (keep, [records[i] for i in keep]) if 30 in keep else (held, [records[i] for i in held])
    with pytest.raises(TrainerFailure, match=r"t\.jsonl record 31: missing field 'completion'"):
        formats.tokenize(at, spec(), tokenizer, "t.jsonl", part)


def test_files_as_they_come(tmp_path: Path) -> None:
    """A BOM, CRLF line ends and blank lines in JSONL; gzip and zstd variants of each format."""
    import gzip
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(5)]
    jsonl = "\ufeff" + "\r\n\r\n".join(json.dumps(r) for r in rows) + "\r\n\r\n"
    (tmp_path / "a.jsonl").write_bytes(jsonl.encode())
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(jsonl.encode()))
    with pa.output_stream(str(tmp_path / "c.json.zst"), compression="zstd") as out:
        out.write(json.dumps(rows).encode())
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    (tmp_path / "d.parquet.gz").write_bytes(gzip.compress(buffer.getvalue().to_pybytes()))
    for name in ("a.jsonl", "b.jsonl.gz", "c.json.zst", "d.parquet.gz"):
        assert read_records(tmp_path / name, name) == rows, name
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(TrainerFailure, match=r"bad\.jsonl\.gz: cannot be decompressed"):
        read_records(tmp_path / "bad.jsonl.gz", "bad.jsonl.gz")
