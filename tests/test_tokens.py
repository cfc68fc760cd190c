"""The array path: batched tokenization gives exactly the ids and labels of the per-record path it replaced (made
by that implementation into tests/fixtures/tokenized.json) on every fixture; TokenTable, Rows and the prepared
directory keep every token; packing is exact best fit decreasing, at least as full as first fit decreasing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kubetune_trainer.data import batching, formats, packing, tokens

from .golden_cases import cases, tokenizer

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "tokenized.json").read_text())


@pytest.mark.parametrize(("case", "family", "spec", "records"), cases(), ids=[c[0] for c in cases()])
def test_the_array_path_gives_the_previous_paths_ids_and_labels(case, family, spec, records) -> None:  # type: ignore[no-untyped-def]
    table, counts = formats.tokenize(records, spec, tokenizer(family), "t")
    assert [s.input_ids for s in table] == GOLDEN[case]["ids"]
    assert [s.labels for s in table] == GOLDEN[case]["labels"]
    assert counts.as_dict() == GOLDEN[case]["counts"]
    assert table.ids.dtype == np.int32 and table.mask.dtype == np.bool_  # 5 bytes a token, no Python int per token


def _sequential_best_fit(lengths: list[int], capacity: int) -> list[int]:
    rooms: list[int] = []
    for size in sorted(lengths, reverse=True):
        fits = [b for b, room in enumerate(rooms) if room >= size]
        if fits:
            best = min(fits, key=lambda b: rooms[b])
            rooms[best] -= size
        else:
            rooms.append(capacity - size)
    return sorted(rooms)


def _packing_cases(seed: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """200 (trial, capacity, lengths) cases; every third with many equal short lengths (best fit's bulk moves)."""
    rng = np.random.default_rng(seed)
    for trial in range(200):
        capacity = int(rng.integers(4, 64))
        lengths = rng.integers(1, capacity + 1, size=int(rng.integers(0, 150)))
        if trial % 3 == 0:
            lengths = np.minimum(lengths, rng.integers(1, 6, size=len(lengths)))
        yield trial, capacity, lengths


def _fills(lengths: np.ndarray, members: np.ndarray, offsets: np.ndarray) -> list[int]:
    assert sorted(members.tolist()) == list(range(len(lengths)))  # every sample exactly once
    return [int(lengths[members[offsets[r] : offsets[r + 1]]].sum()) for r in range(len(offsets) - 1)]


def test_packing_is_exact_best_fit_decreasing_and_keeps_every_sample() -> None:
    for _, capacity, lengths in _packing_cases(0):
        members, offsets = packing.best_fit_decreasing(lengths, capacity)
        fills = _fills(lengths, members, offsets)
        assert max(fills, default=0) <= capacity
        assert sorted(capacity - f for f in fills) == _sequential_best_fit(lengths.tolist(), capacity)
        assert all(np.all(np.diff(members[offsets[r] : offsets[r + 1]]) > 0) for r in range(len(offsets) - 1))
        assert len(offsets) - 1 <= len(packing.first_fit_decreasing(lengths.tolist(), capacity))


def _sequential_shuffled_best_fit(lengths: list[int], capacity: int, seed: int) -> list[int]:
    rooms: list[int] = []
    for i in np.random.default_rng(seed).permutation(len(lengths)).tolist():
        fits = [b for b, room in enumerate(rooms) if room >= lengths[i]]
        if fits:
            rooms[min(fits, key=lambda b: rooms[b])] -= lengths[i]
        else:
            rooms.append(capacity - lengths[i])
    return sorted(rooms)


def test_shuffled_best_fit_is_best_fit_in_a_seeded_order_and_keeps_every_sample() -> None:
    for trial, capacity, lengths in _packing_cases(1):
        members, offsets = packing.shuffled_best_fit(lengths, capacity, seed=trial)
        fills = _fills(lengths, members, offsets)
        assert max(fills, default=0) <= capacity and min(fills, default=1) > 0
        assert sorted(capacity - f for f in fills) == _sequential_shuffled_best_fit(lengths.tolist(), capacity, trial)
        again = packing.shuffled_best_fit(lengths, capacity, seed=trial)  # the same rows on every rank
        assert np.array_equal(again[0], members) and np.array_equal(again[1], offsets)
    with pytest.raises(ValueError, match=r"within 1\.\.8"):
        packing.shuffled_best_fit(np.array([3, 9]), 8, seed=0)


def test_shuffled_rows_mix_the_kinds_of_record_that_decreasing_order_keeps_apart() -> None:
    """Two kinds of record of different lengths (short sums, long rewrites): longest-first packing puts each kind in
    rows of its own; shuffled best fit mixes them as random batches would, at nearly the same fill."""
    rng = np.random.default_rng(2)
    short = rng.integers(18, 24, size=3000)
    long = rng.integers(40, 100, size=3000)
    lengths = np.concatenate([short, long])
    kind = np.repeat([0, 1], 3000)

    def mixed_share(members: np.ndarray, offsets: np.ndarray) -> float:
        rows = [kind[members[offsets[r] : offsets[r + 1]]] for r in range(len(offsets) - 1)]
        return sum(len(set(r.tolist())) == 2 for r in rows) / len(rows)

    decreasing = packing.best_fit_decreasing(lengths, 192)
    shuffled = packing.shuffled_best_fit(lengths, 192, seed=0)
    assert mixed_share(*decreasing) < 0.4 < 0.7 < mixed_share(*shuffled)  # 0.30 and 0.82
    assert len(shuffled[1]) - 1 <= 1.03 * (len(decreasing[1]) - 1)


def test_rows_keep_every_token_and_restart_positions(tmp_path: Path) -> None:
    table = tokens.TokenTable.of([tokens.Sample([5, 6, 7], [-100, 6, 7]), tokens.Sample([8, 9], [-100, 9])])
    rows = batching.pack(table, 8)
    assert len(rows) == 1 and rows.lengths().tolist() == [5]
    row = rows[0]
    assert row.input_ids.tolist() == [5, 6, 7, 8, 9] and row.position_ids.tolist() == [0, 1, 2, 0, 1]
    assert row.labels.tolist() == [-100, 6, 7, -100, 9]
    batch = batching.collate([row, batching.Row([1], [-100], [0])], pad_id=0)
    assert batch["position_ids"][1].tolist() == [0, 0, 1, 2, 3]  # padding is its own run


def _prepared(tmp_path: Path) -> tuple[Path, int, int]:
    from kubetune_api import validate_object
    from kubetune_trainer import tiny
    from kubetune_trainer.data import prepared

    from .conftest import job

    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in tiny.records(300, seed=1)))
    spec = validate_object(job(**{"spec.dataset": {"train": "s3://data/train.jsonl", "maxSeqLength": 64}})).job
    assert spec is not None
    tok = tiny.byte_tokenizer()
    out = tmp_path / "prepared"
    meta = prepared.prepare(spec.spec, tok, "llama", train, None, out, made_from="digest-1")
    assert meta.counts.train.samples + meta.counts.validation.samples == 300
    return out, len(tok), 64


def test_a_prepared_dataset_loads_memory_mapped_and_keeps_every_token(tmp_path: Path) -> None:
    from kubetune_trainer.data import prepared

    out, vocabulary, max_len = _prepared(tmp_path)
    ready = prepared.load(out, vocabulary, max_len, made_from="digest-1")
    assert isinstance(ready.train.table.ids, np.memmap)  # read from the file as needed, one copy per node
    assert int(ready.train.lengths().sum()) == ready.meta.counts.train.tokens
    assert ready.train.lengths().max() <= max_len


@pytest.mark.parametrize(
    ("tamper", "words"),
    [
        (lambda d: _rewrite(d / "train.ids.npy", lambda a: _set(a, 0, 10**6)), "outside the vocabulary"),
        (lambda d: _rewrite(d / "train.offsets.npy", lambda a: _set(a, 1, a[2] + 1)), "empty or longer"),
        (lambda d: _rewrite(d / "train.members.npy", lambda a: _set(a, 0, a[1])), "in no row or in more than one"),
        (lambda d: _rewrite(d / "train.rows.npy", lambda a: a[:-1]), "rows and samples disagree"),
        (lambda d: _rewrite(d / "train.ids.npy", lambda a: a.astype(np.int64)), "expected a 1-D int32"),
        (lambda d: np.save(d / "train.ids.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True), "not a plain"),
        (lambda d: None, "digest differs"),
    ],
)
def test_a_tampered_prepared_dataset_is_refused(tmp_path: Path, tamper, words: str) -> None:  # type: ignore[no-untyped-def]
    from kubetune_trainer.data import prepared

    out, vocabulary, max_len = _prepared(tmp_path)
    tamper(out)
    made_from = "digest-2" if words == "digest differs" else "digest-1"
    with pytest.raises(prepared.PreparedInvalid, match=words):
        prepared.load(out, vocabulary, max_len, made_from=made_from)


def _set(array: np.ndarray, index: int, value: int) -> np.ndarray:
    array = array.copy()
    array[index] = value
    return array


def _rewrite(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    array = np.load(path, allow_pickle=False)
    np.save(path, change(array), allow_pickle=False)


def test_tokenizing_on_every_cpu_gives_the_same_arrays_and_the_first_bad_record(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetune_api import validate_object
    from kubetune_trainer import tiny
    from kubetune_trainer.data import prepared
    from kubetune_trainer.errors import TrainerFailure

    from .conftest import job

    monkeypatch.setattr(prepared, "cpus", lambda: 3)
    spec = validate_object(job(**{"spec.dataset": {"train": "s3://data/t.jsonl", "maxSeqLength": 64}})).job
    assert spec is not None
    records = tiny.records(6500, seed=2)
    at = [("t.jsonl", i) for i in range(len(records))]
    tok = tiny.byte_tokenizer()
    parallel, counts = prepared.tokenize_parallel(records, spec.spec, tok, "t.jsonl", at)
    serial, serial_counts = formats.tokenize(records, spec.spec.dataset, tok, "t.jsonl", at)
    assert counts == serial_counts and np.array_equal(parallel.offsets, serial.offsets)
    assert np.array_equal(parallel.ids, serial.ids) and np.array_equal(parallel.mask, serial.mask)
    for bad in (5000, 300):  # two bad records: the one earlier in the file is reported
        records[bad] = {"prompt": 1}
    with pytest.raises(TrainerFailure, match=r"t.jsonl record 301: field 'prompt' must be a str"):
        prepared.tokenize_parallel(records, spec.spec, tok, "t.jsonl", at)


def test_preparing_in_chunks_gives_the_same_arrays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records are streamed and tokenized a chunk at a time (memory grows with tokens, not records): any chunk size
    gives the same prepared dataset, across shards too."""
    from kubetune_api import validate_object
    from kubetune_trainer import tiny
    from kubetune_trainer.data import prepared

    from .conftest import job

    shards = tmp_path / "shards"
    shards.mkdir()
    records = tiny.records(250, seed=4)
    for k in range(3):
        (shards / f"part-{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[k::3]))
    spec = validate_object(job(**{"spec.dataset": {"train": "s3://data/shards/", "maxSeqLength": 64}})).job
    assert spec is not None
    tok = tiny.byte_tokenizer()
    whole = prepared.prepare(spec.spec, tok, "llama", shards, None, tmp_path / "whole")
    monkeypatch.setattr(prepared, "CHUNK_RECORDS", 7)
    chunked = prepared.prepare(spec.spec, tok, "llama", shards, None, tmp_path / "chunked")
    assert whole == chunked
    for name in sorted(p.name for p in (tmp_path / "whole").glob("*.npy")):
        assert np.array_equal(np.load(tmp_path / "whole" / name), np.load(tmp_path / "chunked" / name)), name


def test_preparing_prints_progress_lines_the_operator_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """While preparing runs, `preparing` lines (records of all, tokens, rate, ETA): the operator shows the newest in
    the job's status while the preflight runs (status.preparing)."""
    from kubetune_api import validate_object
    from kubetune_api.contract import PreparingLine, last_line
    from kubetune_trainer import tiny
    from kubetune_trainer.data import prepared

    from .conftest import job

    tiny.write_jsonl(tmp_path / "t.jsonl", tiny.records(300, seed=5))
    spec = validate_object(job(**{"spec.dataset": {"train": "s3://data/t.jsonl", "maxSeqLength": 64}})).job
    assert spec is not None
    monkeypatch.setattr(prepared, "CHUNK_RECORDS", 50)
    monkeypatch.setattr(prepared._Progress, "EVERY", 0.0)
    meta = prepared.prepare(spec.spec, tiny.byte_tokenizer(), "llama", tmp_path / "t.jsonl", None, tmp_path / "out")
    lines = [PreparingLine.model_validate_json(x) for x in capsys.readouterr().out.splitlines() if '"preparing"' in x]
    assert len(lines) >= 5 and all(x.of == 300 for x in lines)
    assert [x.records for x in lines] == sorted(x.records for x in lines) and lines[-1].records == 300
    assert lines[-1].tokens == meta.tokens()
    newest = last_line("noise\n" + "\n".join(x.model_dump_json() for x in lines) + "\n{broken", PreparingLine)
    assert newest == lines[-1] and "300 of 300 records (100%)" in newest.summary()
