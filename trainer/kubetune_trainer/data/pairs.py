"""Preference records to pairs of token sequences (method: dpo). Each record becomes two samples, chosen then
rejected, rendered as the SFT formats render (the chat template once per conversation, loss spans on the responses
only; a prompt and a completion tokenized as prompt-completion) and kept side by side in the TokenTable: sample 2k
is pair k's chosen, 2k+1 its rejected. A pair one of whose sides is dropped or has nothing to learn is left out
whole. Formats:
  preference         TRL's: prompt, chosen, rejected (strings, or message lists); or chosen and rejected alone
                     (the implicit prompt: the leading messages, or for texts the prefix, they share)
  openai-preference  OpenAI's DPO records: input {messages, tools?}, preferred_output, non_preferred_output
  shared-prefix      chosen and rejected full texts (Anthropic's HH data): the prompt is their common prefix"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from kubetune_api.conditions import Reason
from kubetune_api.dataset import DatasetSpec
from kubetune_api.metrics import Counts
from kubetune_trainer.data import formats
from kubetune_trainer.data.formats import Rendered, _chat_render, _message, _prompt_completion, encode, special_ids
from kubetune_trainer.data.tokens import IGNORE, TableBuilder, TokenTable
from kubetune_trainer.errors import TrainerFailure


def _bad(where: str, what: str) -> TrainerFailure:
    return TrainerFailure(Reason.BAD_RECORD, f"{where}: {what}")


def _get(record: dict[str, Any], key: str, where: str) -> Any:
    if key not in record or record[key] is None:
        raise _bad(where, f"missing field '{key}' (has: {', '.join(map(str, record)) or 'nothing'})")
    return record[key]


def _messages(value: Any, where: str, field: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise _bad(where, f"'{field}' must be a non-empty list of {{role, content}} messages")
    return [_message(m, f"{where}: '{field}'", turn) for turn, m in enumerate(value)]


def _responses(messages: list[dict[str, Any]], where: str, field: str) -> list[dict[str, Any]]:
    """A response: assistant messages, something written in them."""
    for turn, m in enumerate(messages):
        if m["role"] != "assistant":
            raise _bad(where, f"'{field}' message {turn + 1} has role '{m['role']}': a response holds assistant messages only")
    if not any(m["content"].strip() or m.get("tool_calls") for m in messages):
        raise _bad(where, f"'{field}' is empty: the response has no text")
    return messages


def _text(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str):
        raise _bad(where, f"field '{field}' must be a str, got {type(value).__name__}")
    return value


def _differ(chosen: Any, rejected: Any, where: str) -> None:
    if chosen == rejected:
        raise _bad(where, "chosen and rejected are the same response: a pair must prefer one over another")


def _chat_pair(
    tokenizer: Any,
    prompt: list[dict[str, Any]],
    chosen: list[dict[str, Any]],
    rejected: list[dict[str, Any]],
    where: str,
    index: int,
    tools: Any = None,
) -> tuple[Rendered, Rendered]:
    """Prompt messages then each response through the chat template; loss on the response's messages only (the
    prompt's own assistant turns carry weight 0), through the end of the rendering: the template's end-of-turn
    text after the reply (a literal `<|end|>` as much as a special token) is scored as TRL's DPO scores it, and the
    likelihood of ending the turn after each reply is part of what the pair teaches."""
    _differ(chosen, rejected, where)
    if not any(m["role"] == "user" for m in prompt):
        raise _bad(where, "the prompt has no user message")
    quiet = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in prompt]
    name, _, _ = where.rpartition(" record ")
    out = []
    for response in (chosen, rejected):
        rendered = _chat_render(tokenizer, [*quiet, *[{**m, "weight": 1} for m in response]], name, index, tools)
        end, text = (rendered.spans or ((0, 0),))[-1][1], rendered.pieces[0][0]
        if rendered.spans and end < len(text):  # whatever the template writes after the reply is the reply's too
            rendered = dataclasses.replace(rendered, spans=(*rendered.spans, (end, len(text))))
        out.append(rendered)
    return out[0], out[1]


def _string_pair(tokenizer: Any, prompt: str, chosen: str, rejected: str, where: str) -> tuple[Rendered, Rendered]:
    _differ(chosen, rejected, where)
    for field, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise _bad(where, f"'{field}' is empty: the response has no text")
    if not prompt.strip():
        raise _bad(where, "'prompt' is empty")
    return _prompt_completion(tokenizer, prompt, chosen), _prompt_completion(tokenizer, prompt, rejected)


def _preference(record: dict[str, Any], tokenizer: Any, where: str, index: int) -> tuple[Rendered, Rendered]:
    chosen, rejected = _get(record, "chosen", where), _get(record, "rejected", where)
    if "prompt" in record and record["prompt"] is not None:
        prompt = record["prompt"]
        if isinstance(prompt, str) and isinstance(chosen, str) and isinstance(rejected, str):
            return _string_pair(tokenizer, prompt, chosen, rejected, where)
        if isinstance(prompt, list) and isinstance(chosen, list) and isinstance(rejected, list):
            return _chat_pair(
                tokenizer,
                _messages(prompt, where, "prompt"),
                _responses(_messages(chosen, where, "chosen"), where, "chosen"),
                _responses(_messages(rejected, where, "rejected"), where, "rejected"),
                where,
                index,
                record.get("tools"),
            )
        raise _bad(where, "prompt, chosen and rejected must be all strings or all message lists")
    if isinstance(chosen, str) and isinstance(rejected, str):  # TRL's implicit prompt of texts: their shared prefix
        return _shared_prefix(record, tokenizer, where, index)
    if isinstance(chosen, str) or isinstance(rejected, str):
        raise _bad(where, "chosen and rejected must be both strings or both message lists")
    full_chosen, full_rejected = _messages(chosen, where, "chosen"), _messages(rejected, where, "rejected")
    _differ(full_chosen, full_rejected, where)
    shared = 0  # the implicit prompt: the leading messages both conversations have
    while shared < min(len(full_chosen), len(full_rejected)) and full_chosen[shared] == full_rejected[shared]:
        shared += 1
    tail_c, tail_r = full_chosen[shared:], full_rejected[shared:]
    prompts_differ = not shared or any(m["role"] != "assistant" for m in tail_c + tail_r)
    if prompts_differ:
        raise _bad(
            where,
            f"the chosen and rejected conversations must share their prompt (every message before the responses); "
            f"they differ at message {shared + 1}",
        )
    if not tail_c or not tail_r:
        side = "chosen" if not tail_c else "rejected"
        raise _bad(where, f"'{side}' is empty: the conversation has no response after the shared prompt")
    return _chat_pair(
        tokenizer,
        full_chosen[:shared],
        _responses(tail_c, where, "chosen"),
        _responses(tail_r, where, "rejected"),
        where,
        index,
        record.get("tools"),
    )


def _openai(record: dict[str, Any], tokenizer: Any, where: str, index: int) -> tuple[Rendered, Rendered]:
    given = _get(record, "input", where)
    if not isinstance(given, dict):
        raise _bad(where, "'input' must be an object {messages, tools?}")
    prompt = _messages(_get(given, "messages", f"{where}: 'input'"), where, "input.messages")
    chosen = _responses(_messages(_get(record, "preferred_output", where), where, "preferred_output"), where, "preferred_output")
    rejected = _responses(
        _messages(_get(record, "non_preferred_output", where), where, "non_preferred_output"), where, "non_preferred_output"
    )
    return _chat_pair(tokenizer, prompt, chosen, rejected, where, index, given.get("tools"))


HH_TURN = "\n\nAssistant:"  # Anthropic HH's texts: "\n\nHuman: ...\n\nAssistant: ..." turns


def prompt_end(chosen: str, rejected: str) -> int:
    """Where the implicit prompt of two full texts ends. In HH's form, after the last `\n\nAssistant:` both share
    (TRL's HH preprocessing), so a rejected reply that stops a few words into the chosen one still has its own
    text; elsewhere at their common prefix, moved back to a word boundary when it ends inside a word or swallows
    a whole reply (one text the start of the other), so both replies are non-empty where that can be."""
    cut = 0
    while cut < min(len(chosen), len(rejected)) and chosen[cut] == rejected[cut]:
        cut += 1
    turn = chosen.rfind(HH_TURN, 0, cut)  # the last turn marker wholly within the common prefix
    if turn >= 0:
        return turn + len(HH_TURN)
    shorter = min(len(chosen), len(rejected))
    inside_word = 0 < cut < shorter and not chosen[cut - 1].isspace()
    swallowed = cut == shorter and (not chosen[cut:].strip() or not rejected[cut:].strip())
    if inside_word or swallowed:  # the responses begin at that word (after the last whitespace before it)
        space = max(chosen.rfind(c, 0, cut - 1 if swallowed else cut) for c in " \n\t")
        cut = space + 1 if space >= 0 else cut
    return cut


def _shared_prefix(record: dict[str, Any], tokenizer: Any, where: str, index: int) -> tuple[Rendered, Rendered]:
    chosen = _text(_get(record, "chosen", where), where, "chosen")
    rejected = _text(_get(record, "rejected", where), where, "rejected")
    _differ(chosen, rejected, where)
    cut = prompt_end(chosen, rejected)
    if not chosen[:cut].strip():
        raise _bad(where, "chosen and rejected share no prefix: the prompt (their common beginning) is empty")
    for field, text in (("chosen", chosen), ("rejected", rejected)):
        if not text[cut:].strip():
            raise _bad(where, f"'{field}' is empty after the shared prefix: nothing follows the prompt")
    return _prompt_completion(tokenizer, chosen[:cut], chosen[cut:]), _prompt_completion(
        tokenizer, rejected[:cut], rejected[cut:]
    )


PAIR_FORMATS: dict[str, Callable[[dict[str, Any], Any, str, int], tuple[Rendered, Rendered]]] = {
    "preference": _preference,
    "openai-preference": _openai,
    "shared-prefix": _shared_prefix,
}


def render_pair(record: dict[str, Any], spec: DatasetSpec, tokenizer: Any, name: str, index: int) -> tuple[Rendered, Rendered]:
    if not isinstance(record, dict):
        raise _bad(f"{name} record {index + 1}", "a record must be a JSON object")
    return PAIR_FORMATS[spec.format](record, tokenizer, f"{name} record {index + 1}", index)


BATCH = 512  # records rendered, then tokenized in one call


def tokenize_pairs(
    records: Sequence[dict[str, Any]],
    spec: DatasetSpec,
    tokenizer: Any,
    name: str,
    positions: Sequence[int | tuple[str, int]] | None = None,
) -> tuple[TokenTable, Counts]:
    """Every record as two samples, chosen then rejected (formats.tokenize's contract, in pairs); counts.samples
    counts sequences (two per pair), counts.pairs the pairs."""
    counts = Counts(records=len(records))
    table = TableBuilder()
    special = special_ids(tokenizer)
    for first in range(0, len(records), BATCH):
        rendered: list[Rendered] = []
        for index in range(first, min(first + BATCH, len(records))):
            rendered.extend(render_pair(records[index], spec, tokenizer, *formats.place(positions, name, index)))
        encoded = encode(rendered, tokenizer, special)
        for k in range(0, len(encoded), 2):
            counts.system_folded += rendered[k].folded
            sides = [formats.fit(ids, labels, spec, counts) for ids, labels in encoded[k : k + 2]]
            if any(side is None for side in sides):
                counts.dropped += 1
                continue
            if any(not np.count_nonzero(labels != IGNORE) for _, labels in sides):  # type: ignore[misc]
                counts.empty += 1
                continue
            for ids, labels in sides:  # type: ignore[misc]
                table.add(ids, labels)
                counts.tokens += len(ids)
                counts.loss_tokens += int(np.count_nonzero(labels != IGNORE))
                counts.samples += 1
            counts.pairs += 1
    return table.table(), counts


def tokenize_any(
    records: Sequence[dict[str, Any]],
    spec: DatasetSpec,
    tokenizer: Any,
    name: str,
    positions: Sequence[int | tuple[str, int]] | None = None,
) -> tuple[TokenTable, Counts]:
    """Any dataset format: preference pairs here, the rest by formats.tokenize."""
    if spec.format in PAIR_FORMATS:
        return tokenize_pairs(records, spec, tokenizer, name, positions)
    return formats.tokenize(records, spec, tokenizer, name, positions)
