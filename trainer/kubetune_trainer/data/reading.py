"""Reading datasets: JSONL, JSON and Parquet files or folders of shards (optionally gzip or zstd), bounded as they
are decompressed, every record with its place in its file; the seeded held-out split."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kubetune_api.conditions import Reason
from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.storage import file_digest

COMPRESSION = {".gz": "gzip", ".zst": "zstd"}


def _open(path: Path, name: str) -> tuple[str, Any]:
    """The file's format suffix and a binary stream of its content, decompressed (.gz, .zst) as it is read."""
    import pyarrow as pa

    suffixes = [s.lower() for s in path.suffixes]
    codec = COMPRESSION.get(suffixes[-1]) if suffixes else None
    fmt = suffixes[-2] if codec and len(suffixes) > 1 else (suffixes[-1] if suffixes else "")
    try:
        return fmt, pa.input_stream(str(path), compression=codec)
    except (OSError, pa.ArrowInvalid) as exc:
        raise TrainerFailure(Reason.BAD_RECORD, f"{name}: cannot be read: {exc}") from exc


def read_indexed(
    path: Path, name: str, keep: Callable[[int], bool] | None = None
) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """(index, record) of the records `keep` selects, and how many records the file holds; JSONL line by line, so
    memory holds only the selected ones."""
    fmt, stream = _open(path, name)
    total = 0
    chosen = keep or (lambda _: True)
    out: list[tuple[int, Any]] = []
    if fmt == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            with stream:
                rows = pq.read_table(pa.BufferReader(_whole(stream, name))).to_pylist()
        except TrainerFailure:
            raise
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise TrainerFailure(Reason.BAD_RECORD, f"{name}: not a readable Parquet file: {exc}") from exc
        out, total = [(i, r) for i, r in enumerate(rows) if chosen(i)], len(rows)
    elif fmt == ".json":
        text = _text(stream, name)
        try:
            data = _loads(text, name)
        except json.JSONDecodeError as exc:
            raise TrainerFailure(Reason.BAD_RECORD, f"{name}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
        if not isinstance(data, list):
            raise TrainerFailure(Reason.BAD_RECORD, f"{name}: a .json dataset must be a list of objects")
        out, total = [(i, r) for i, r in enumerate(data) if chosen(i)], len(data)
    else:
        index = -1
        for number, line in enumerate(_lines(stream, name), start=1):
            if not line.strip():
                continue
            index += 1
            if not chosen(index):
                continue
            try:
                if len(line) > MAX_LINE:
                    raise TrainerFailure(Reason.BAD_RECORD, f"{name} line {number}: longer than {MAX_LINE >> 20} MiB")
                out.append((index, _loads(line, f"{name} line {number}")))
            except json.JSONDecodeError as exc:
                raise TrainerFailure(Reason.BAD_RECORD, f"{name} line {number}: invalid JSON: {exc.msg}") from exc
        total = index + 1
    for index, record in out:
        if not isinstance(record, dict):
            raise TrainerFailure(
                Reason.BAD_RECORD, f"{name} record {index + 1}: must be a JSON object, got {type(record).__name__}"
            )
    return out, total


def count_records(path: Path, name: str) -> int:
    """How many records a file (or a directory of shards) holds: JSONL lines are counted, not parsed."""
    if path.is_dir():
        return sum(count_records(shard, name) for shard in shards_of(path))
    fmt, stream = _open(path, name)
    if fmt != ".jsonl":
        stream.close()
        return _count_structured(path, name, fmt)
    return sum(1 for line in _lines(stream, name) if line.strip())


def _count_structured(path: Path, name: str, fmt: str) -> int:
    if fmt == ".parquet":
        import pyarrow.parquet as pq

        _, stream = _open(path, name)
        try:
            with stream:
                import pyarrow as pa

                return int(pq.read_metadata(pa.BufferReader(_whole(stream, name))).num_rows)
        except Exception as exc:
            raise TrainerFailure(Reason.BAD_RECORD, f"{name}: not a readable Parquet file: {exc}") from exc
    return read_indexed(path, name, lambda _: False)[1]


def _lines(stream: Any, name: str) -> Iterator[str]:
    """Text lines of a (decompressed) stream: a byte-order mark dropped, CRLF read as LF."""
    try:
        with io.TextIOWrapper(stream, encoding="utf-8-sig") as text:
            while line := text.readline(MAX_LINE + 1):  # a longer line is refused by its reader, never held whole
                yield line
    except UnicodeDecodeError as exc:
        raise TrainerFailure(Reason.BAD_RECORD, f"{name}: not UTF-8 at byte {exc.start}") from exc
    except OSError as exc:  # a corrupt .gz or .zst
        raise TrainerFailure(Reason.BAD_RECORD, f"{name}: cannot be decompressed: {exc}") from exc


DATA_SUFFIX = re.compile(r"\.(jsonl|json|parquet)(\.gz|\.zst)?$", re.IGNORECASE)


def is_data_file(relative: str) -> bool:
    """A shard under a data prefix: a data file whose name does not start with _ or . (Spark's _SUCCESS, .crc)."""
    leaf = relative.rsplit("/", 1)[-1]
    return bool(DATA_SUFFIX.search(leaf)) and not leaf.startswith(("_", "."))


def shown_name(uri: str) -> str:
    """How errors name a dataset: a file by its name, a prefix of shards by its last folder (each shard by its path)."""
    return uri.rstrip("/").rsplit("/", 1)[-1] + ("/" if uri.endswith("/") else "")


def shards_of(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and is_data_file(str(p.relative_to(path))))


def data_digest(path: Path) -> str:
    """A file's SHA-256; for a directory of shards, the SHA-256 of its (name, SHA-256) list."""
    if not path.is_dir():
        return file_digest(path, "sha256")
    listing = [(str(p.relative_to(path)), file_digest(p, "sha256")) for p in shards_of(path)]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def read_dataset(
    path: Path, name: str, keep: Callable[[int], bool] | None = None
) -> tuple[list[dict[str, Any]], list[tuple[str, int]], list[int]]:
    """The records `keep` selects (by 0-based index across the dataset) of a file, or of every shard of a
    directory in name order; where each came from (the shard's name and the record's place in it); and each
    one's index in the whole dataset."""
    if not path.is_dir():
        found, _ = read_indexed(path, name, keep)
        return [r for _, r in found], [(name, i) for i, _ in found], [i for i, _ in found]
    shards = shards_of(path)
    if not shards:
        raise TrainerFailure(Reason.DATASET_MISSING, f"{name}: no .jsonl, .json or .parquet files (optionally .gz or .zst)")
    records: list[dict[str, Any]] = []
    origins: list[tuple[str, int]] = []
    indices: list[int] = []
    offset = 0
    for shard in shards:
        shard_name = f"{name.rstrip('/')}/{shard.relative_to(path)}"
        shard_keep: Callable[[int], bool] | None = None
        if keep is not None:
            shard_keep = functools.partial(lambda start, i: keep(start + i), offset)
        found, count = read_indexed(shard, shard_name, shard_keep)
        records += [r for _, r in found]
        origins += [(shard_name, i) for i, _ in found]
        indices += [offset + i for i, _ in found]
        offset += count
    return records, origins, indices


def iter_dataset(path: Path, name: str) -> Iterator[tuple[dict[str, Any], tuple[str, int], int]]:
    """Every record of a file, or of every shard of a directory in name order, with where it came from (the
    shard's name and its place there) and its index in the whole dataset. JSONL is streamed line by line; a
    .json or .parquet shard is read whole (bounded by MAX_WHOLE_FILE), one shard at a time."""
    if not path.is_dir():
        files = [(path, name)]
    else:
        shards = shards_of(path)
        if not shards:
            raise TrainerFailure(Reason.DATASET_MISSING, f"{name}: no .jsonl, .json or .parquet files (optionally .gz or .zst)")
        files = [(shard, f"{name.rstrip('/')}/{shard.relative_to(path)}") for shard in shards]
    offset = 0
    for file, shown in files:
        count = 0
        for index, record in _records(file, shown):
            count = index + 1
            yield record, (shown, index), offset + index
        offset += count  # records in this shard (blank JSONL lines are not records)


def _records(path: Path, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    fmt, stream = _open(path, name)
    if fmt != ".jsonl":
        stream.close()
        yield from read_indexed(path, name)[0]
        return
    index = -1
    for number, line in enumerate(_lines(stream, name), start=1):
        if not line.strip():
            continue
        index += 1
        if len(line) > MAX_LINE:
            raise TrainerFailure(Reason.BAD_RECORD, f"{name} line {number}: longer than {MAX_LINE >> 20} MiB")
        try:
            record = _loads(line, f"{name} line {number}")
        except json.JSONDecodeError as exc:
            raise TrainerFailure(Reason.BAD_RECORD, f"{name} line {number}: invalid JSON: {exc.msg}") from exc
        if not isinstance(record, dict):
            raise TrainerFailure(
                Reason.BAD_RECORD, f"{name} record {index + 1}: must be a JSON object, got {type(record).__name__}"
            )
        yield index, record


# A .json or .parquet shard is read whole, and a JSONL line is one record: both bounded after decompression, so a
# small compressed object cannot expand into all of a pod's memory. Larger data goes in more shards.
MAX_WHOLE_FILE = 2 << 30
MAX_LINE = 64 << 20


def _whole(stream: Any, name: str) -> bytes:
    """A stream's content, at most MAX_WHOLE_FILE bytes decompressed."""
    raw = bytes(stream.read(MAX_WHOLE_FILE + 1))
    if len(raw) > MAX_WHOLE_FILE:
        raise TrainerFailure(
            Reason.BAD_RECORD,
            f"{name}: more than {MAX_WHOLE_FILE >> 30} GiB once decompressed; a .json or .parquet file is read whole: "
            "split it into shards under a prefix (or use JSONL, which is streamed)",
        )
    return raw


def _loads(text: str, where: str) -> Any:
    """json.loads, with a record nested beyond Python's recursion limit a bad record rather than a crash."""
    try:
        return json.loads(text)
    except RecursionError:
        raise TrainerFailure(Reason.BAD_RECORD, f"{where}: nested too deeply to be a record") from None


def _text(stream: Any, name: str) -> str:
    try:
        with stream:
            raw = _whole(stream, name)
    except OSError as exc:  # a corrupt .gz or .zst
        raise TrainerFailure(Reason.BAD_RECORD, f"{name}: cannot be decompressed: {exc}") from exc
    try:
        return bytes(raw).decode("utf-8-sig")  # a leading byte-order mark is not part of the first record
    except UnicodeDecodeError as exc:
        raise TrainerFailure(Reason.BAD_RECORD, f"{name}: not UTF-8 at byte {exc.start}") from exc


def split_positions(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """The positions (in the file) of the training and held-out records of a seeded split."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    held = max(1, round(count * fraction)) if count else 0
    return sorted(order[held:]), sorted(order[:held])
