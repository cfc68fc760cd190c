"""The prepared dataset: every record read, tokenized, split and packed once per worker, before the ranks start, into
arrays the ranks memory-map read-only (the page cache holds one copy however many ranks a node runs).

Layout of a prepared directory (numpy's .npy, loaded with allow_pickle=False: never unpickled):
  meta.json                       format version, digest of what it was made from, counts, packing, vocabulary size
  {train,validation}.ids.npy      int32 token ids, every sample end to end
  {train,validation}.mask.npy     bool, loss on this token
  {train,validation}.offsets.npy  int64 sample boundaries (samples + 1, from 0 to the number of tokens)
  {train,validation}.members.npy  int64 samples in row order
  {train,validation}.rows.npy     int64 row boundaries into members (rows + 1)

Rows do not depend on the number of ranks: each epoch every rank shuffles the rows with the same seed and takes
every world-th (records.global_micro_batches), so a prepared dataset serves any world size. Whatever reads one checks
it first (`load`): dtypes and shapes, offsets monotone and consistent, every id below the vocabulary, every sample
in exactly one row, no row longer than maxSeqLength; anything else is refused, never trained on."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kubetune_api import events, records
from kubetune_api.conditions import Reason
from kubetune_api.contract import ENV_PREPARED, ENV_STALL, PreparingLine, stall_seconds
from kubetune_api.job import FineTuneJobSpec
from kubetune_api.method import row_limit
from kubetune_api.records import PreparedMeta, SplitCounts, SplitRows
from kubetune_trainer.data.formats import Counts
from kubetune_trainer.data.packing import best_fit_decreasing, one_per_row, shuffled_best_fit
from kubetune_trainer.data.pairs import tokenize_any
from kubetune_trainer.data.reading import count_records, data_digest, iter_dataset, shown_name, split_positions
from kubetune_trainer.data.tokens import Rows, TokenTable, offsets_of
from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.forks import ForkPool, HelperDied, Stalled, cpus

FORMAT = 2  # 2: training rows packed by shuffled best fit
PARTS = ("train", "validation")
ARRAYS = {"ids": np.int32, "mask": np.bool_, "offsets": np.int64, "members": np.int64, "rows": np.int64}


class PreparedInvalid(ValueError):
    """A prepared directory that is not what it claims: prepare again, never train on it."""


@dataclass(frozen=True)
class Prepared:
    train: Rows
    validation: Rows
    meta: PreparedMeta


def split(spec: FineTuneJobSpec, train: Path, validation: Path | None) -> tuple[list[int], list[int]]:
    """The indices of the training and held-out records (a validation file, or a seeded split of one dataset)."""
    ds = spec.dataset
    total = count_records(train, shown_name(ds.train))
    if validation is not None:
        return list(range(total)), list(range(count_records(validation, shown_name(ds.validation or ""))))
    return split_positions(total, spec.validation_split, spec.training.seed)


def tokenize_sets(
    spec: FineTuneJobSpec, tokenizer: Any, train: Path, validation: Path | None, staging: Path
) -> tuple[_Part, _Part, int]:
    """Both sets read and tokenized (errors name the shard and record) into files under `staging`, and how many
    training records there were."""
    ds = spec.dataset
    train_name = shown_name(ds.train)
    val_name = shown_name(ds.validation) if ds.validation else train_name
    train_pos, held_pos = split(spec, train, validation)
    if not train_pos and held_pos and validation is None:  # a split of a file too small to give both a record
        raise TrainerFailure(
            Reason.EMPTY_DATASET,
            f"the training set has no records: {train_name} has {len(held_pos)} and the held-out split "
            f"(dataset.validationSplit {spec.validation_split:g}, at least one record) took "
            f"{'it' if len(held_pos) == 1 else 'them'}; give more records, or held-out ones in dataset.validation",
        )
    for name, positions in (("training", train_pos), ("held-out", held_pos)):
        if not positions:
            raise TrainerFailure(Reason.EMPTY_DATASET, f"the {name} set has no records")
    progress = _Progress(len(train_pos) + len(held_pos))
    with tokenizing_pool(spec, tokenizer, min(CHUNK_RECORDS, len(train_pos) + len(held_pos))) as pool:
        train_acc = _Chunks(spec, tokenizer, train_name, staging / "train", progress, pool)
        val_acc = _Chunks(spec, tokenizer, val_name, staging / "validation", progress, pool)
        if validation is not None:
            for record, at, _ in iter_dataset(train, train_name):
                train_acc.add(record, at)
            for record, at, _ in iter_dataset(validation, val_name):
                val_acc.add(record, at)
        else:  # one dataset split: errors still give each record's place in its file
            held = np.zeros(len(train_pos) + len(held_pos), dtype=bool)
            held[held_pos] = True
            for record, at, index in iter_dataset(train, train_name):
                (val_acc if held[index] else train_acc).add(record, at)
        train_set, val_set = train_acc.finish(), val_acc.finish()
    for name, counts in (("training", train_set.counts), ("held-out", val_set.counts)):
        if not counts.samples:
            raise TrainerFailure(
                Reason.EMPTY_DATASET,
                f"the {name} set has no usable samples: {counts.records} records, {counts.dropped} dropped as too long, "
                f"{counts.empty} with nothing to learn",
            )
    return train_set, val_set, len(train_pos)


CHUNK_RECORDS = 16_384  # records held as Python objects at once while preparing: memory grows with neither


class _Progress:
    """A `preparing` event every EVERY seconds while preparing runs longer: records done of all, tokens, rate, ETA."""

    EVERY = 5.0

    def __init__(self, total: int) -> None:
        import time

        self.total, self.done, self.tokens = total, 0, 0
        self.started = self.shown = time.monotonic()

    def add(self, records: int, tokens: int) -> None:
        import time

        self.done, self.tokens = self.done + records, self.tokens + tokens
        now = time.monotonic()
        if now - self.shown < self.EVERY:
            return
        self.shown = now
        rate = self.done / max(now - self.started, 1e-9)
        line = PreparingLine(
            event="preparing",
            records=self.done,
            of=self.total,
            tokens=self.tokens,
            recordsPerSecond=round(rate),
            etaSeconds=round(max(self.total - self.done, 0) / max(rate, 1e-9), 1),
        )
        events.write(line.model_dump_json())


@dataclass(frozen=True)
class _Part:
    """One set, tokenized: its token ids and loss mask in raw files (written a chunk at a time, never all in
    memory), each sample's length, and the counts."""

    ids: Path  # raw int32
    mask: Path  # raw bool
    lengths: np.ndarray  # int64, one per sample
    counts: Counts


class _Chunks:
    """Records streamed in, tokenized a chunk at a time (on every CPU), appended to files as arrays."""

    def __init__(
        self,
        spec: FineTuneJobSpec,
        tokenizer: Any,
        name: str,
        stem: Path,
        progress: _Progress | None = None,
        pool: ForkPool | None = None,
    ) -> None:
        self.spec, self.tokenizer, self.name, self.progress, self.pool = spec, tokenizer, name, progress, pool
        self.records: list[dict[str, Any]] = []
        self.at: list[tuple[str, int]] = []
        self.ids, self.mask = stem.with_suffix(".ids.raw"), stem.with_suffix(".mask.raw")
        for path in (self.ids, self.mask):
            path.write_bytes(b"")
        self.lengths: list[np.ndarray] = []
        self.counts = Counts()

    def add(self, record: dict[str, Any], at: tuple[str, int]) -> None:
        self.records.append(record)
        self.at.append(at)
        if len(self.records) >= CHUNK_RECORDS:
            self._flush()

    def _flush(self) -> None:
        if not self.records:
            return
        if self.pool is None or len(self.records) < 1000:  # a small remainder costs less here than in the pool
            table, counts = tokenize_any(self.records, self.spec.dataset, self.tokenizer, self.name, self.at)
        else:
            table, counts = tokenize_parallel(self.records, self.spec, self.tokenizer, self.name, self.at, self.pool)
        if self.progress is not None:
            self.progress.add(len(self.records), len(table.ids))
        self.records, self.at = [], []
        with self.ids.open("ab") as ids, self.mask.open("ab") as mask:
            ids.write(np.ascontiguousarray(table.ids, dtype=np.int32).tobytes())
            mask.write(np.ascontiguousarray(table.mask, dtype=np.bool_).tobytes())
        self.lengths.append(table.lengths())
        for key, value in counts.as_dict().items():
            setattr(self.counts, key, getattr(self.counts, key) + value)

    def finish(self) -> _Part:
        self._flush()
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, dtype=np.int64)
        return _Part(self.ids, self.mask, lengths, self.counts)


def _pack(lengths: np.ndarray, max_len: int, packing: bool, train: bool, seed: int, pairs: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows over samples (members, offsets). Pairs (samples 2k, 2k+1) are packed as units into rows of up to twice
    maxSeqLength, a pair's chosen and rejected always side by side in one row."""
    units = lengths[0::2] + lengths[1::2] if pairs else lengths
    capacity = row_limit(max_len, pairs)
    if not packing:
        members, offsets = one_per_row(len(units))
    elif train:  # mixed rows (packing.py says why)
        members, offsets = shuffled_best_fit(units, capacity, seed)
    else:  # held-out rows: order does not matter, the fewest rows do
        members, offsets = best_fit_decreasing(units, capacity)
    if not pairs:
        return members, offsets
    return np.stack([2 * members, 2 * members + 1], axis=1).reshape(-1), 2 * offsets


def _save(path: Path, array: np.ndarray) -> None:
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)


def _save_raw(path: Path, raw: Path, dtype: Any) -> None:
    """A raw file as a .npy file, copied in blocks (never all in memory), then the raw file removed."""
    count = raw.stat().st_size // np.dtype(dtype).itemsize
    with path.open("wb") as out, raw.open("rb") as source:
        np.lib.format.write_array_header_1_0(
            out, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (count,)}
        )
        shutil.copyfileobj(source, out, 64 << 20)
    raw.unlink()


def _tokenize_task(shared: tuple[Any, ...], task: tuple[Any, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    spec, tokenizer = shared  # inherited by fork, never sent
    records, name, positions = task
    table, counts = tokenize_any(records, spec.dataset, tokenizer, name, positions)
    return table.ids, table.mask, table.lengths(), counts.as_dict()


def helpers_for(records: int) -> int:
    """Tokenizing processes for a set of this many records: every CPU, none below 2,000 records (forking costs more)."""
    processes = min(cpus(), records // 1000)
    return processes if processes >= 2 else 0


@contextlib.contextmanager
def tokenizing_pool(spec: FineTuneJobSpec, tokenizer: Any, records: int) -> Iterator[ForkPool | None]:
    """One pool of forked tokenizing processes for a whole preparation (None: tokenize in this process)."""
    processes = helpers_for(records)
    if not processes:
        yield None
        return
    with ForkPool(processes, _tokenize_task, (spec, tokenizer), "tokenizing", stall_seconds()) as pool:
        try:
            yield pool
        except Stalled as exc:
            raise TrainerFailure(
                Reason.TRAINER_ERROR,
                f"preparing the data stalled: {exc}; the tokenizer made no progress (raise {ENV_STALL} if a chunk of "
                f"{CHUNK_RECORDS} records can take that long)",
            ) from exc
        except HelperDied as exc:
            reason = Reason.OUT_OF_MEMORY if exc.out_of_memory else Reason.TRAINER_ERROR
            raise TrainerFailure(reason, f"preparing the data failed: {exc}") from exc


def tokenize_parallel(
    records: list[dict[str, Any]],
    spec: FineTuneJobSpec,
    tokenizer: Any,
    name: str,
    positions: list[tuple[str, int]],
    pool: ForkPool | None = None,
) -> tuple[TokenTable, Counts]:
    """Tokenize on every CPU of the worker (forked processes, chunks in order: the same arrays as one process, and
    the first bad record in file order is the one reported); `pool`: the preparation's, else one for this call."""
    if pool is None:
        with tokenizing_pool(spec, tokenizer, len(records)) as own:
            if own is None:
                return tokenize_any(records, spec.dataset, tokenizer, name, positions)
            return tokenize_parallel(records, spec, tokenizer, name, positions, own)
    step = -(-len(records) // (len(pool.helpers) * 4))
    tasks = ((records[k : k + step], name, positions[k : k + step]) for k in range(0, len(records), step))
    counts = Counts()
    ids, masks, lengths = [], [], []
    for chunk_ids, chunk_mask, chunk_lengths, chunk_counts in pool.map(tasks):
        ids.append(chunk_ids)
        masks.append(chunk_mask)
        lengths.append(chunk_lengths)
        for key, value in chunk_counts.items():
            setattr(counts, key, getattr(counts, key) + value)
    offsets = offsets_of(np.concatenate(lengths))
    return TokenTable(np.concatenate(ids), np.concatenate(masks), offsets), counts


def digest(spec: FineTuneJobSpec, data_digests: list[str], tokenizer_dir: Path | None) -> str:
    """What a prepared dataset was made from: the data files, the tokenizer's files, the dataset spec, the seed and
    this format. Equal digests: the same arrays would be made again."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT, "dataset": spec.dataset.model_dump(mode="json"), "seed": spec.training.seed}).encode())
    for d in data_digests:
        h.update(d.encode())
    if tokenizer_dir is not None and tokenizer_dir.is_dir():
        wanted = ("token", "template", "config.json")
        for path in sorted(p for p in tokenizer_dir.iterdir() if p.is_file() and any(w in p.name for w in wanted)):
            h.update(path.name.encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def prepare(
    spec: FineTuneJobSpec,
    tokenizer: Any,
    family: str,
    train: Path,
    validation: Path | None,
    out: Path,
    made_from: str = "",
) -> PreparedMeta:
    """Read, tokenize, split and pack both sets into `out` (replaced atomically); returns its meta. Memory holds a
    chunk of records and each sample's length, never every token: the tokens go to files as they are made.
    `family` is the model's type: packing is on when the spec asks for it and the family keeps packed samples apart."""
    from kubetune_trainer.model import PACKING_FAMILIES

    pairs = spec.method.type == "dpo"
    if pairs and family not in PACKING_FAMILIES:
        raise TrainerFailure(
            Reason.ATTENTION_UNSUPPORTED,
            f"method dpo puts each pair's chosen and rejected responses in one sequence, kept apart by restarting "
            f"positions, and {family} models do not keep such sequences apart (their attention mask ignores position "
            f"ids); families that do: {', '.join(sorted(PACKING_FAMILIES))}",
        )
    packing = spec.packs and family in PACKING_FAMILIES
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    train_part, val_part, records = tokenize_sets(spec, tokenizer, train, validation, staging)
    max_len = spec.dataset.maxSeqLength
    rows = {}
    for part, made in (("train", train_part), ("validation", val_part)):
        members, offsets = _pack(made.lengths, max_len, packing, part == "train", spec.training.seed, pairs)
        sample_offsets = offsets_of(made.lengths)
        _save_raw(staging / f"{part}.ids.npy", made.ids, np.int32)
        _save_raw(staging / f"{part}.mask.npy", made.mask, np.bool_)
        _save(staging / f"{part}.offsets.npy", sample_offsets)
        _save(staging / f"{part}.members.npy", members.astype(np.int64))
        _save(staging / f"{part}.rows.npy", offsets.astype(np.int64))
        rows[part] = len(offsets) - 1
    meta = PreparedMeta(
        format=FORMAT,
        digest=made_from,
        records=records,
        vocabulary=len(tokenizer),
        maxSeqLength=max_len,
        packing=packing,
        pairs=pairs,
        counts=SplitCounts(train=train_part.counts, validation=val_part.counts),
        rows=SplitRows(**rows),
        packingOff=family if spec.packs and not packing else None,
    )
    (staging / "meta.json").write_text(meta.model_dump_json(indent=1, exclude_none=True))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)
    return meta


def _array(path: Path, dtype: Any) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise PreparedInvalid(f"{path.name}: not a plain array file: {exc}") from exc
    if array.dtype != np.dtype(dtype) or array.ndim != 1:
        raise PreparedInvalid(f"{path.name}: expected a 1-D {np.dtype(dtype)} array, got {array.ndim}-D {array.dtype}")
    out: np.ndarray = array
    return out


def _rows(directory: Path, part: str, vocabulary: int, max_len: int, full: bool, pairs: bool = False) -> Rows:
    a = {key: _array(directory / f"{part}.{key}.npy", dtype) for key, dtype in ARRAYS.items()}
    ids, mask, offsets, members, rows = a["ids"], a["mask"], a["offsets"], a["members"], a["rows"]
    samples = len(offsets) - 1
    if len(mask) != len(ids) or samples < 0 or offsets[0] != 0 or offsets[-1] != len(ids):
        raise PreparedInvalid(f"{part}: offsets and token arrays disagree")
    if len(members) != samples or rows[0] != 0 or rows[-1] != samples:
        raise PreparedInvalid(f"{part}: rows and samples disagree")
    if pairs and samples % 2:
        raise PreparedInvalid(f"{part}: preference pairs with an odd number of samples")
    if not full:  # the worker's launcher checked every element of these very files before the ranks started
        return Rows(TokenTable(ids, mask, offsets), members, rows)
    lengths = np.diff(offsets)
    if samples and (lengths.min() < 1 or lengths.max() > max_len):
        raise PreparedInvalid(f"{part}: a sample is empty or longer than {max_len} tokens")
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= vocabulary):
        raise PreparedInvalid(f"{part}: a token id is outside the vocabulary (0..{vocabulary - 1})")
    if len(members) != samples or rows[0] != 0 or rows[-1] != samples or np.any(np.diff(rows) < 1):
        raise PreparedInvalid(f"{part}: rows and samples disagree")
    if samples and (members.min() < 0 or members.max() >= samples or np.any(np.bincount(members, minlength=samples) != 1)):
        raise PreparedInvalid(f"{part}: a sample is in no row or in more than one")
    if pairs and (np.any(rows % 2) or np.any(members[0::2] % 2) or np.any(members[1::2] != members[0::2] + 1)):
        raise PreparedInvalid(f"{part}: a row does not hold whole preference pairs (chosen, then its rejected)")
    table = TokenTable(ids, mask, offsets)
    out = Rows(table, members, rows)
    limit = row_limit(max_len, pairs)
    if len(out) and out.lengths().max() > limit:
        raise PreparedInvalid(f"{part}: a row is longer than {limit} tokens")
    return out


def load(
    directory: Path, vocabulary: int, max_len: int, made_from: str | None = None, full: bool = True, pairs: bool = False
) -> Prepared:
    """A prepared directory, checked throughout (PreparedInvalid otherwise); `made_from`: the digest it must carry;
    `pairs`: whether the job trains on preference pairs (the job's method says so, never the directory).
    full=False: dtypes, shapes and ends only (constant time), for ranks reading what their launcher checked."""
    try:
        text = (directory / "meta.json").read_text()
    except (OSError, ValueError) as exc:
        raise PreparedInvalid(f"meta.json: {exc}") from exc
    meta = records.read(PreparedMeta, text)
    if meta is None:
        raise PreparedInvalid(f"meta.json: not format {FORMAT}, or not a record kubetune wrote")
    refusal = meta.refusal(FORMAT, made_from, vocabulary, max_len, pairs)
    if refusal is not None:
        raise PreparedInvalid(refusal)
    parts = {part: _rows(directory, part, vocabulary, max_len, full, pairs) for part in PARTS}
    return Prepared(parts["train"], parts["validation"], meta)


def made_from(spec: FineTuneJobSpec, model_source: str, train: Path, validation: Path | None) -> str:

    digests = [data_digest(train)] + ([data_digest(validation)] if validation is not None else [])
    source = Path(model_source)
    return digest(spec, digests, source if source.is_dir() else None)


def uri_for(spec: FineTuneJobSpec, made: str) -> str:
    """Where the preflight leaves a job's prepared dataset: beside its outputs, named by what it was made from."""
    from kubetune_api import layout
    from kubetune_trainer.storage import join

    return join(spec.output.uri, layout.PREPARED, made)


def publish(store: Any, directory: Path, uri: str) -> None:
    """Upload a prepared directory; meta.json last, so a reader never takes a half-written one for whole."""
    from kubetune_trainer.storage import join

    for path in sorted(directory.glob("*.npy")):
        store.upload_file(path, join(uri, path.name))
    store.upload_file(directory / "meta.json", join(uri, "meta.json"))


FILES = ("meta.json", *(f"{part}.{key}.npy" for part in PARTS for key in ARRAYS))  # all a prepared set holds
META_LIMIT = 1 << 20  # bytes of meta.json fetched


def contents_digest(directory: Path) -> str:
    """SHA-256 over every file of a prepared set, by name: what the preflight records in its report and the
    workers check before they train on a set fetched from storage."""
    h = hashlib.sha256()
    for name in FILES:
        file_hash = hashlib.sha256()
        with (directory / name).open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                file_hash.update(block)
        h.update(f"{name}\n{file_hash.hexdigest()}\n".encode())
    return h.hexdigest()


def fetch(
    store: Any,
    uri: str,
    dest: Path,
    vocabulary: int,
    max_len: int,
    made: str,
    pairs: bool = False,
    contents: str | None = None,
    limit: int = 0,
) -> tuple[Prepared | None, str]:
    """The prepared dataset at uri, or None and why not (then it is prepared again here, never trained on): no
    record of its contents (`contents`, the digest the preflight reported; whoever can write the output prefix
    could otherwise choose the training tokens), absent, larger than `limit` bytes, or not what was recorded.
    Only its known files are fetched (verified, in parallel), and it is checked throughout."""
    from kubetune_trainer.storage import join

    if not contents:
        return None, "no record of its contents from the preflight"
    if not store.exists(join(uri, "meta.json")):
        return None, "none in storage"
    known = set(FILES).__contains__
    sizes = {o.relative: o.size for o in store.listing(uri, Reason.TRAINER_ERROR, "prepared dataset", keep=known)}
    if sizes.keys() != set(FILES):
        return None, f"not used: {', '.join(sorted(set(FILES) - sizes.keys()))} missing"
    if sizes["meta.json"] > META_LIMIT or (limit and sum(sizes.values()) > limit):
        return None, "not used: larger than the room left for it"
    shutil.rmtree(dest, ignore_errors=True)
    store.download_prefix(uri, dest, Reason.TRAINER_ERROR, "prepared dataset", keep=known)  # concurrent, verified
    try:
        if contents_digest(dest) != contents:
            raise PreparedInvalid("its files are not those the preflight made (contents digest differs)")
        return load(dest, vocabulary, max_len, made_from=made, pairs=pairs), "storage"
    except (PreparedInvalid, OSError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        return None, f"not used: {exc}"


def for_worker(
    spec: FineTuneJobSpec,
    model_source: str,
    train: Path,
    validation: Path | None,
    work: Path,
    store: Any = None,
    room: int = 0,
) -> Path:
    """The worker's prepared dataset under `work`: the one the preflight left in storage when it is there and
    checks out, else made here once (before any rank starts, so no GPU waits on a tokenizer, and the ranks share
    it); prints one `prepared` event saying which and what it took."""
    import time

    from kubetune_trainer.model import load_tokenizer, model_type

    started = time.monotonic()
    tokenizer = load_tokenizer(model_source, spec.model)
    made = made_from(spec, model_source, train, validation)
    out = work / "prepared"
    pairs, recorded = spec.method.type == "dpo", os.environ.get(ENV_PREPARED, "")
    ready, source = (
        (None, "no storage")
        if store is None
        else fetch(store, uri_for(spec, made), out, len(tokenizer), spec.dataset.maxSeqLength, made, pairs, recorded, room)
    )
    if ready is not None:
        meta = ready.meta
    else:
        meta = prepare(spec, tokenizer, model_type(model_source, spec.model), train, validation, out, made_from=made)
    events.emit(
        events.Prepared(
            source="storage" if ready is not None else "here",
            why=source if ready is None else None,
            records=meta.records,
            tokens=meta.tokens(),
            rows=meta.rows.model_dump(),
            seconds=round(time.monotonic() - started, 2),
        )
    )
    return out
