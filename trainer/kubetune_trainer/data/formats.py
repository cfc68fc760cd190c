"""Records to token sequences with loss masks: each dataset format renders a record to text and the spans the loss
covers (chat templates, ShareGPT, Alpaca, prompt/completion, text); `tokenize` encodes them in batches."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kubetune_api.conditions import Reason
from kubetune_api.dataset import DatasetSpec
from kubetune_api.metrics import Counts as Counts
from kubetune_trainer.data.tokens import IGNORE, TableBuilder, TokenTable
from kubetune_trainer.data.tokens import Sample as Sample
from kubetune_trainer.errors import TrainerFailure


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


def special_table(special: np.ndarray) -> np.ndarray:
    """A lookup of special ids (True at each), one past the largest False: table[min(id, len - 1)] for any id."""
    table = np.zeros(int(special.max()) + 2 if len(special) else 1, dtype=bool)
    table[special] = True
    return table


def _span_labels_encoded(
    text: str, ids: np.ndarray, encoding: Any, spans: Sequence[tuple[int, int]], special: np.ndarray
) -> np.ndarray:
    """_span_labels from the fast tokenizer's Encoding itself: the tokens at a span's ends are looked up
    (char_to_token, token_to_chars) instead of every token's offsets being made into Python tuples and an array (a
    sixth of preparing's time). The same labels: tests/test_chat_masks.py compares the two on every template.
    `special`: special_table's lookup."""
    plain = ~special[np.minimum(ids, len(special) - 1)]
    labels = np.full(len(ids), IGNORE, dtype=np.int64)
    count = len(ids)

    def overlaps(token: int, start: int, end: int) -> bool:
        chars = encoding.token_to_chars(token)
        return chars is not None and chars[1] > start and chars[0] < end

    for start, end in spans:
        first = next((t for c in range(start, end) if (t := encoding.char_to_token(c)) is not None), None)
        if first is None:
            continue
        last = next(t for c in range(end - 1, start - 1, -1) if (t := encoding.char_to_token(c)) is not None)
        while first > 0 and overlaps(first - 1, start, end):  # a character split over several tokens
            first -= 1
        while last + 1 < count and overlaps(last + 1, start, end):
            last += 1
        hit = first + np.flatnonzero(plain[first : last + 1])
        if not len(hit):
            continue
        labels[hit] = ids[hit]
        follower = int(hit[-1]) + 1
        while follower < count and plain[follower]:
            chars = encoding.token_to_chars(follower)
            if chars is not None and text[chars[0] : chars[1]].strip():
                break
            follower += 1
        if follower < count and not plain[follower]:
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
        if backend is not None:  # the Encoding itself: offsets are read only where a span needs them
            encoded[flag] = [(e.ids, e) for e in backend.encode_batch(texts, add_special_tokens=flag)]
        else:
            out_ = tokenizer(texts, add_special_tokens=flag, return_offsets_mapping=True)
            encoded[flag] = list(zip(out_["input_ids"], out_["offset_mapping"], strict=True))
    eos = tokenizer.eos_token_id
    table = special_table(special)
    out = []
    for r, places in zip(rendered, where, strict=True):
        ids_parts, label_parts = [], []
        for p, (flag, at) in enumerate(places):
            piece_ids, piece_offsets = encoded[flag][at]
            ids = np.array(piece_ids, dtype=np.int64)
            if r.spans is not None and backend is not None:
                labels = _span_labels_encoded(r.pieces[p][0], ids, piece_offsets, r.spans, table)
            elif r.spans is not None:
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


def place(positions: Sequence[int | tuple[str, int]] | None, name: str, index: int) -> tuple[str, int]:
    """Record `index`'s file (or shard) and place in it, for its errors."""
    at = positions[index] if positions else index
    return at if isinstance(at, tuple) else (name, at)


def fit(ids: np.ndarray, labels: np.ndarray, spec: DatasetSpec, counts: Counts) -> tuple[np.ndarray, np.ndarray] | None:
    """A sample cut to maxSeqLength by the overlength policy (counted; None: dropped, for the caller to count). The
    first token is never predicted; masking it also keeps packed neighbours from scoring across the boundary."""
    limit = spec.maxSeqLength
    if len(ids) > limit:
        policy = spec.overlength_policy
        if policy == "drop":
            return None
        if policy == "keep-end":
            counts.kept_end += 1
            ids, labels = ids[-limit:], labels[-limit:]
        else:
            counts.truncated += 1
            ids, labels = ids[:limit], labels[:limit]
    labels = labels.copy()
    labels[0] = IGNORE
    return ids, labels


def tokenize(
    records: Sequence[dict[str, Any]],
    spec: DatasetSpec,
    tokenizer: Any,
    name: str,
    positions: Sequence[int | tuple[str, int]] | None = None,
) -> tuple[TokenTable, Counts]:
    """Every record as a sample (in a TokenTable), with overlength samples truncated or dropped and counted.
    positions: each record's place in its file (0-based), or (shard, place) for a prefix of shards, so an error
    names the record a person can find there. Records are rendered one by one and tokenized BATCH at a time.
    Preference formats are pairs.py's."""
    counts = Counts(records=len(records))
    table = TableBuilder()
    special = special_ids(tokenizer)
    for first in range(0, len(records), BATCH):
        rendered = [
            render_record(records[index], spec, tokenizer, *place(positions, name, index))
            for index in range(first, min(first + BATCH, len(records)))
        ]
        for r, encoded in zip(rendered, encode(rendered, tokenizer, special), strict=True):
            counts.system_folded += r.folded
            kept = fit(*encoded, spec, counts)
            if kept is None:
                counts.dropped += 1
                continue
            ids, labels = kept
            learned = int(np.count_nonzero(labels != IGNORE))
            if not learned:
                counts.empty += 1
                continue
            table.add(ids, labels)
            counts.tokens += len(ids)
            counts.loss_tokens += learned
            counts.samples += 1
    return table.table(), counts
