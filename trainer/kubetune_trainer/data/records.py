"""Records to token sequences: read JSONL/JSON/Parquet, split, tokenize with loss masks, pack, batch per rank."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kubetune_api.conditions import Reason
from kubetune_api.dataset import DatasetSpec
from kubetune_api.metrics import Counts as Counts
from kubetune_api.training import TrainingSpec
from kubetune_trainer.data.packing import best_fit_decreasing, one_per_row
from kubetune_trainer.data.tokens import IGNORE as IGNORE
from kubetune_trainer.data.tokens import Row as Row
from kubetune_trainer.data.tokens import Rows as Rows
from kubetune_trainer.data.tokens import Sample as Sample
from kubetune_trainer.data.tokens import TableBuilder, TokenTable
from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.storage import file_digest

# reading


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


# tokenizing


def _field(record: dict[str, Any], key: str, name: str, index: int, kind: type) -> Any:
    if key not in record:
        raise TrainerFailure(
            Reason.BAD_RECORD,
            f"{name} record {index + 1}: missing field '{key}' (has: {', '.join(map(str, record)) or 'nothing'})",
        )
    value = record[key]
    if not isinstance(value, kind):
        raise TrainerFailure(
            Reason.BAD_RECORD, f"{name} record {index + 1}: field '{key}' must be a {kind.__name__}, got {type(value).__name__}"
        )
    return value


@dataclass(frozen=True)
class Rendered:
    """A record as text, before tokenization: pieces tokenized separately (each with or without the tokenizer's
    special tokens) and joined; a piece carries loss whole (`learn`), or, for a chat rendering, on the tokens
    that overlap `spans` (characters of the one piece) and the end-of-turn token right after each span."""

    pieces: tuple[tuple[str, bool], ...]  # (text, add_special_tokens)
    learn: tuple[bool, ...] = ()
    spans: tuple[tuple[int, int], ...] | None = None  # a chat rendering's assistant messages
    eos: bool = False  # the end-of-sequence token appended, with loss
    folded: bool = False


def _chat_render(
    tokenizer: Any, messages: list[dict[str, Any]], name: str, index: int, tools: list[Any] | None = None
) -> Rendered:
    """Render the conversation once with the model's chat template and take loss on exactly each assistant
    message's content and the end-of-turn token after it. Each message is located in that one rendering by its own
    text, in order, so a template that renders earlier turns differently from the last one (Qwen3's think block)
    cannot shift a span. An assistant message with OpenAI's `weight: 0` carries no loss. An assistant message with
    tool calls is located by rendering the conversation a second time with only that message replaced by a
    marker: what differs is exactly how the template wrote the calls."""
    if not getattr(tokenizer, "chat_template", None):
        raise TrainerFailure(Reason.BAD_RECORD, "dataset.format is chat but the model's tokenizer has no chat template")
    where = f"{name} record {index + 1}"
    messages = [_message(message, where, turn) for turn, message in enumerate(messages)]
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise TrainerFailure(Reason.BAD_RECORD, f"{where}: 'tools' must be a list of objects")

    def render(conversation: list[dict[str, Any]], with_tools: list[Any] | None = tools) -> str:
        try:
            return str(tokenizer.apply_chat_template(conversation, tools=with_tools or None, tokenize=False))
        except Exception as exc:  # jinja2's TemplateError and the template's own raise_exception
            raise TrainerFailure(Reason.BAD_RECORD, f"{where}: the chat template refused it: {exc}") from exc

    folded = False
    try:
        text = render(messages)
    except TrainerFailure:
        if not (len(messages) > 1 and messages[0]["role"] == "system" and messages[1]["role"] == "user"):
            raise
        # templates that refuse a system role (Gemma's): the system text opens the first user turn instead
        first = {**messages[1], "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}
        messages, folded = [first, *messages[2:]], True
        text = render(messages)
    if tools and render(messages, None) == text:
        raise TrainerFailure(
            Reason.BAD_RECORD, f"{where}: has 'tools' but the model's chat template does not render tool definitions"
        )
    spans: list[tuple[int, int]] = []
    cursor = 0
    for turn, message in enumerate(messages):
        span: tuple[int, int] | None
        if message.get("tool_calls"):
            span = _tool_call_span(render, messages, turn, text, where)
        elif message["role"] == "assistant" and not message["content"].strip():
            continue  # nothing written, nothing to learn
        else:
            span = _locate(text, message["content"], cursor)
        if span is None:
            if message["role"] == "assistant":
                raise TrainerFailure(
                    Reason.BAD_RECORD,
                    f"{where}: the chat template does not render assistant message {turn + 1} as written, so its loss "
                    "span cannot be found",
                )
            continue
        cursor = span[1]
        if message["role"] == "assistant" and message.get("weight", 1) != 0:
            spans.append(span)
    return Rendered(((text, False),), spans=tuple(spans), folded=folded)


def _span_labels(
    text: str, ids: np.ndarray, offsets: np.ndarray, spans: Sequence[tuple[int, int]], special: np.ndarray
) -> np.ndarray:
    """Loss on every non-special token overlapping a span, and on the special token (end of turn) that follows the
    span's last one, past whitespace only."""
    plain = ~np.isin(ids, special)
    labels = np.full(len(ids), IGNORE, dtype=np.int64)
    for start, end in spans:
        hit = np.flatnonzero((offsets[:, 1] > start) & (offsets[:, 0] < end) & plain)
        if not len(hit):
            continue
        labels[hit] = ids[hit]
        follower = int(hit[-1]) + 1
        while follower < len(ids) and plain[follower] and not text[offsets[follower, 0] : offsets[follower, 1]].strip():
            follower += 1
        if follower < len(ids) and not plain[follower]:
            labels[follower] = ids[follower]
    return labels


MARKER = "\x00kubetune-marker\x00"


def _tool_call_span(render: Any, messages: list[dict[str, Any]], turn: int, text: str, where: str) -> tuple[int, int]:
    """Where the template wrote assistant message `turn` (its text and tool calls): the rendering differs from
    one with that message's content replaced by a marker exactly there (the marker shares no first or last
    character with anything a template writes, so the common prefix and suffix end where the message does)."""
    plain = {k: v for k, v in messages[turn].items() if k != "tool_calls"}
    other = render([*messages[:turn], {**plain, "content": MARKER}, *messages[turn + 1 :]])
    start = 0
    while start < min(len(text), len(other)) and text[start] == other[start]:
        start += 1
    end = 0
    while end < min(len(text), len(other)) - start and text[-1 - end] == other[-1 - end]:
        end += 1
    span = (start, len(text) - end)
    if not text[span[0] : span[1]].strip() or MARKER not in other:
        raise TrainerFailure(
            Reason.BAD_RECORD,
            f"{where}: message {turn + 1} has tool_calls but the model's chat template does not render tool calls",
        )
    return span


def _tool_calls(calls: Any, where: str, turn: int) -> list[dict[str, Any]]:
    """OpenAI's tool calls as chat templates take them: arguments as an object, not a JSON string."""
    shape = "a list of {id, type: function, function: {name, arguments}}"
    if not isinstance(calls, list) or not calls:
        raise TrainerFailure(Reason.BAD_RECORD, f"{where}: message {turn + 1}: tool_calls must be {shape}")
    out = []
    for number, call in enumerate(calls, start=1):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise TrainerFailure(Reason.BAD_RECORD, f"{where}: message {turn + 1}: tool call {number} must be {shape}")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as exc:
                raise TrainerFailure(
                    Reason.BAD_RECORD,
                    f"{where}: message {turn + 1}: tool call {number} ({function['name']}): arguments are not JSON: {exc.msg}",
                ) from exc
        if not isinstance(arguments, dict):
            raise TrainerFailure(
                Reason.BAD_RECORD, f"{where}: message {turn + 1}: tool call {number}: arguments must be a JSON object"
            )
        out.append({**call, "type": "function", "function": {"name": function["name"], "arguments": arguments}})
    return out


def _message(message: Any, where: str, turn: int) -> dict[str, Any]:
    """One message as the template wants it: OpenAI's content as a list of text parts is joined; weight is 0 or 1;
    an assistant message may carry tool_calls (its content then may be empty or null)."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise TrainerFailure(Reason.BAD_RECORD, f"{where}: message {turn + 1} needs string 'role' and 'content'")
    # columnar files (Parquet) give every message every key of any message, null where absent: null is absent
    message = {k: v for k, v in message.items() if v is not None or k == "content"}
    content = message.get("content")
    if message.get("tool_calls") is not None:
        if message["role"] != "assistant":
            raise TrainerFailure(Reason.BAD_RECORD, f"{where}: message {turn + 1}: only assistant messages have tool_calls")
        message = {**message, "tool_calls": _tool_calls(message["tool_calls"], where, turn)}
        content = "" if content is None else content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) != len(content) or not all(isinstance(t, str) for t in parts):
            raise TrainerFailure(
                Reason.BAD_RECORD, f"{where}: message {turn + 1}: only text parts ({{type: text, text}}) are supported"
            )
        content = "".join(str(t) for t in parts)
    if not isinstance(content, str):
        raise TrainerFailure(Reason.BAD_RECORD, f"{where}: message {turn + 1} needs string 'role' and 'content'")
    if "weight" in message:  # 0 or 1, as written in JSON (0) or as Parquet's float column holds it (0.0)
        weight = message["weight"]
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight not in (0, 1):
            raise TrainerFailure(
                Reason.BAD_RECORD, f"{where}: message {turn + 1}: weight must be 0 or 1 (got {json.dumps(weight)})"
            )
        message = {**message, "weight": int(weight)}
    return {**message, "content": content}


SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "tool": "tool",
}


def _sharegpt(record: dict[str, Any], tokenizer: Any, name: str, index: int) -> Rendered:
    """{conversations: [{from: human|gpt|system|tool, value}]} as chat messages."""
    turns = _field(record, "conversations", name, index, list)
    messages = []
    for turn, item in enumerate(turns):
        role = SHAREGPT_ROLES.get(str(item.get("from"))) if isinstance(item, dict) else None
        if role is None or not isinstance(item.get("value"), str):
            raise TrainerFailure(
                Reason.BAD_RECORD,
                f"{name} record {index + 1}: conversation turn {turn + 1} needs 'from' ({', '.join(SHAREGPT_ROLES)}) and a "
                "string 'value'",
            )
        messages.append({"role": role, "content": item["value"]})
    return _chat_render(tokenizer, messages, name, index)


def _locate(text: str, content: str, cursor: int) -> tuple[int, int] | None:
    """Where a message's text stands in the rendering, from cursor on (templates may trim it)."""
    for candidate in (content, content.strip()):
        if candidate:
            at = text.find(candidate, cursor)
            if at >= 0:
                return at, at + len(candidate)
    return None


ALPACA_PROMPT = (
    "Below is an instruction that describes a task{paired}. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{instruction}\n\n{input}### Response:\n"
)


def _alpaca(record: dict[str, Any], tokenizer: Any, name: str, index: int) -> Rendered:
    """instruction, optional input, output: through the chat template when the model has one, else the prompt the
    Alpaca data was written for. Loss on the output (and the end of turn) only."""
    instruction = _field(record, "instruction", name, index, str)
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise TrainerFailure(Reason.BAD_RECORD, f"{name} record {index + 1}: field 'input' must be a str")
    output = _field(record, "output", name, index, str)
    if getattr(tokenizer, "chat_template", None):
        user = instruction + (f"\n\n{extra}" if extra else "")
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        return _chat_render(tokenizer, messages, name, index)
    prompt = ALPACA_PROMPT.format(
        paired=", paired with an input that provides further context" if extra else "",
        instruction=instruction,
        input=f"### Input:\n{extra}\n\n" if extra else "",
    )
    return _prompt_completion(tokenizer, prompt, output)


def _prompt_completion(tokenizer: Any, prompt_text: str, completion_text: str) -> Rendered:
    """The prompt with the tokenizer's special tokens (BOS), the completion without, then EOS: loss on both last."""
    eos = tokenizer.eos_token_id is not None
    return Rendered(((prompt_text, True), (completion_text, False)), learn=(False, True), eos=eos)


def _prompt_completion_record(record: dict[str, Any], spec: DatasetSpec, tokenizer: Any, name: str, index: int) -> Rendered:
    if spec.promptField == "instruction" and isinstance(record.get("input"), str) and record["input"].strip():
        # mapping Alpaca's instruction to the prompt would silently train without its input
        raise TrainerFailure(
            Reason.BAD_RECORD,
            f"{name} record {index + 1}: has a non-empty 'input' that promptField: instruction would drop; "
            "use dataset.format: alpaca for instruction/input/output records",
        )
    prompt = _field(record, spec.promptField, name, index, str)
    return _prompt_completion(tokenizer, prompt, _field(record, spec.completionField, name, index, str))


def _text_record(record: dict[str, Any], spec: DatasetSpec, tokenizer: Any, name: str, index: int) -> Rendered:
    text = _field(record, spec.textField, name, index, str)
    return Rendered(((text, True),), learn=(True,), eos=tokenizer.eos_token_id is not None)


# Each format: a record to its rendering (text and where the loss goes). A new format is one function and one line here.
FORMATS: dict[str, Any] = {
    "prompt-completion": _prompt_completion_record,
    "chat": lambda r, spec, tok, name, i: _chat_render(
        tok, _field(r, spec.messagesField, name, i, list), name, i, r.get("tools")
    ),
    "text": _text_record,
    "alpaca": lambda r, spec, tok, name, i: _alpaca(r, tok, name, i),
    "sharegpt": lambda r, spec, tok, name, i: _sharegpt(r, tok, name, i),
}


def render_record(record: dict[str, Any], spec: DatasetSpec, tokenizer: Any, name: str, index: int) -> Rendered:
    return FORMATS[spec.format](record, spec, tokenizer, name, index)  # type: ignore[no-any-return]


def special_ids(tokenizer: Any) -> np.ndarray:
    """Every special token's id (never a loss token inside a message's span)."""
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return np.array(sorted(special), dtype=np.int64)


def encode(rendered: Sequence[Rendered], tokenizer: Any, special: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, labels) of each rendering. Every piece of the batch goes through the fast tokenizer in one call per
    special-token setting (Rust, on the pod's cores), never one call per record."""
    calls: dict[bool, list[str]] = {True: [], False: []}
    where: list[list[tuple[bool, int]]] = []
    for r in rendered:
        where.append([(flag, len(calls[flag])) for _, flag in r.pieces])
        for text, flag in r.pieces:
            calls[flag].append(text)
    backend = getattr(tokenizer, "backend_tokenizer", None)  # the Rust tokenizer itself: no per-encoding conversion
    encoded: dict[bool, list[Any]] = {}
    for flag, texts in calls.items():
        if not texts:
            continue
        if backend is not None:
            encoded[flag] = [(e.ids, e.offsets) for e in backend.encode_batch(texts, add_special_tokens=flag)]
        else:
            out_ = tokenizer(texts, add_special_tokens=flag, return_offsets_mapping=True)
            encoded[flag] = list(zip(out_["input_ids"], out_["offset_mapping"], strict=True))
    eos = tokenizer.eos_token_id
    out = []
    for r, places in zip(rendered, where, strict=True):
        ids_parts, label_parts = [], []
        for p, (flag, at) in enumerate(places):
            piece_ids, piece_offsets = encoded[flag][at]
            ids = np.array(piece_ids, dtype=np.int64)
            if r.spans is not None:
                offsets = np.array(piece_offsets, dtype=np.int64).reshape(-1, 2)
                labels = _span_labels(r.pieces[p][0], ids, offsets, r.spans, special)
            else:
                labels = ids.copy() if r.learn[p] else np.full(len(ids), IGNORE, dtype=np.int64)
            ids_parts.append(ids)
            label_parts.append(labels)
        if r.eos:
            ids_parts.append(np.array([eos], dtype=np.int64))
            label_parts.append(np.array([eos], dtype=np.int64))
        out.append((np.concatenate(ids_parts), np.concatenate(label_parts)))
    return out


def tokenize_record(record: dict[str, Any], spec: DatasetSpec, tokenizer: Any, name: str, index: int) -> Sample:
    rendered = render_record(record, spec, tokenizer, name, index)
    ((ids, labels),) = encode([rendered], tokenizer, special_ids(tokenizer))
    return Sample(ids.tolist(), labels.tolist(), rendered.folded)


BATCH = 1024  # records rendered, then tokenized in one call


def tokenize(
    records: Sequence[dict[str, Any]],
    spec: DatasetSpec,
    tokenizer: Any,
    name: str,
    positions: Sequence[int | tuple[str, int]] | None = None,
) -> tuple[TokenTable, Counts]:
    """Every record as a sample (in a TokenTable), with overlength samples truncated or dropped and counted.
    positions: each record's place in its file (0-based), or (shard, place) for a prefix of shards, so an error
    names the record a person can find there. Records are rendered one by one and tokenized BATCH at a time."""
    counts = Counts(records=len(records))
    table = TableBuilder()
    special = special_ids(tokenizer)
    limit = spec.maxSeqLength
    for first in range(0, len(records), BATCH):
        rendered = []
        for index in range(first, min(first + BATCH, len(records))):
            at = positions[index] if positions else index
            shard, number = at if isinstance(at, tuple) else (name, at)
            rendered.append(render_record(records[index], spec, tokenizer, shard, number))
        for r, (ids, labels) in zip(rendered, encode(rendered, tokenizer, special), strict=True):
            counts.system_folded += r.folded
            if len(ids) > limit:
                policy = spec.overlength_policy
                if policy == "drop":
                    counts.dropped += 1
                    continue
                if policy == "keep-end":
                    counts.kept_end += 1
                    ids, labels = ids[-limit:], labels[-limit:]
                else:
                    counts.truncated += 1
                    ids, labels = ids[:limit], labels[:limit]
            # the first token is never predicted; masking it also keeps packed neighbours from scoring across the
            # boundary
            labels = labels.copy()
            labels[0] = IGNORE
            learned = int(np.count_nonzero(labels != IGNORE))
            if not learned:
                counts.empty += 1
                continue
            table.add(ids, labels)
            counts.tokens += len(ids)
            counts.loss_tokens += learned
            counts.samples += 1
    return table.table(), counts


# packing and batching


def pack(samples: Sequence[Sample], max_len: int) -> Rows:
    """Best-fit-decreasing packing into rows of at most max_len tokens (packing.py); positions restart per sample."""
    table = TokenTable.of(samples)
    return Rows(table, *best_fit_decreasing(table.lengths(), max_len))


def rows(samples: Sequence[Sample], max_len: int, packing: bool) -> Rows:
    if packing:
        return pack(samples, max_len)
    table = TokenTable.of(samples)
    return Rows(table, *one_per_row(len(table)))


class EpochBatches(Sequence[list[Row]]):
    """A rank's micro-batches of one epoch, made when asked for: a row's tokens are read (from the memory-mapped
    prepared dataset) only for the step that trains on it, never all at the start of an epoch."""

    def __init__(self, rows: Sequence[Row], mine: np.ndarray, micro: int) -> None:
        self.rows, self.mine, self.micro = rows, mine, micro

    def __len__(self) -> int:
        return -(-len(self.mine) // self.micro)

    def _batch(self, k: int) -> list[Row]:
        return [self.rows[int(i)] for i in self.mine[k * self.micro : (k + 1) * self.micro]]

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self._batch(i) for i in range(*k.indices(len(self)))]
        if not -len(self) <= k < len(self):
            raise IndexError(k)
        return self._batch(k % len(self))


def global_micro_batches(
    rows: Sequence[Row], *, micro: int, world: int, rank: int, multiple: int, seed: int | None
) -> EpochBatches:
    """This rank's micro-batches of an epoch: every row of the dataset shuffled (seeded, the same order on every
    rank; None keeps order), wrapped to a multiple of world x micro x `multiple`, and dealt round-robin."""
    order = np.arange(len(rows))
    if seed is not None:
        order = np.random.default_rng(seed).permutation(len(rows))
    unit = world * micro * multiple
    order = np.resize(order, len(order) + (-len(order) % unit))  # wraps around from the start
    return EpochBatches(rows, order[rank::world], micro)


def micro_batches_per_epoch(rows: int, *, micro: int, world: int, multiple: int) -> int:
    """Micro-batches each rank runs per epoch (global_micro_batches' count)."""
    unit = world * micro * multiple
    return math.ceil(rows / unit) * multiple if rows else 0


def steps_per_epoch(rows: int, *, micro: int, world: int, accumulate: int) -> int:
    """Optimizer steps per epoch over `rows` for `world` ranks."""
    return max(1, micro_batches_per_epoch(rows, micro=micro, world=world, multiple=accumulate) // accumulate)


@dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps a run takes: the trainer's plan and the preflight's count, from one function."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


def step_plan(rows: int, training: TrainingSpec, world: int) -> StepPlan:
    """The plan for `rows` training rows dealt to `world` ranks (every rank sees every row and takes its share)."""
    t = training
    per_epoch = steps_per_epoch(rows, micro=t.microBatchSize, world=world, accumulate=t.gradientAccumulationSteps)
    total = t.maxSteps or t.epochs * per_epoch
    warmup = t.warmupSteps if t.warmupSteps is not None else math.ceil(t.warmupRatio * total)
    return StepPlan(per_epoch, total, warmup)


def collate(batch: Sequence[Row], pad_id: int) -> dict[str, Any]:
    """Right-pad to the longest row; padding is its own position run with no loss, so nothing attends across it."""
    import torch

    width = max(len(r.input_ids) for r in batch)
    ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    labels = np.full((len(batch), width), IGNORE, dtype=np.int64)
    positions = np.tile(np.arange(width, dtype=np.int64), (len(batch), 1))
    for k, r in enumerate(batch):
        n = len(r.input_ids)
        ids[k, :n], labels[k, :n], positions[k, :n] = r.input_ids, r.labels, r.position_ids
        positions[k, n:] -= n  # the padding's own run, from 0
    return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels), "position_ids": torch.from_numpy(positions)}


def useful_tokens(batch: list[Row]) -> int:
    return sum(len(r.input_ids) for r in batch)
