"""A task's items from tokenized samples: the prompt is everything before the sample's last scored run of tokens
(the completion, or the last assistant message, rendered exactly as training rendered it: the chat template, the
system prompt, the truncation), the reference is that run, decoded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_api.job import FineTuneJobSpec

IGNORE = -100  # batching.IGNORE: a label that scores nothing


@dataclass(frozen=True)
class Item:
    index: int  # the sample's place in the held-out split
    prompt: list[int]
    reference: str


def last_scored_run(labels: Sequence[int]) -> tuple[int, int] | None:
    """[start, end) of the last run of scored tokens, or None when nothing is scored."""
    end = len(labels)
    while end and labels[end - 1] == IGNORE:
        end -= 1
    if not end:
        return None
    start = end
    while start and labels[start - 1] != IGNORE:
        start -= 1
    return start, end


def from_samples(samples: Sequence[Any], tokenizer: Any, limit: int | None) -> tuple[list[Item], int]:
    """The items of the first `limit` samples (Sample: input_ids, labels), and how many had no prompt before their
    reference or no reference (skipped)."""
    items, skipped = [], 0
    for index in range(min(len(samples), limit or len(samples))):
        sample = samples[index]
        run = last_scored_run(sample.labels)
        if run is None or run[0] == 0:
            skipped += 1
            continue
        start, end = run
        reference = tokenizer.decode(list(sample.input_ids[start:end]), skip_special_tokens=True)
        items.append(Item(index, list(sample.input_ids[:start]), reference.strip()))
    return items, skipped


def own_samples(path: Path, spec: FineTuneJobSpec, tokenizer: Any, task: str, limit: int | None) -> Sequence[Any]:
    """A task's own items (spec.evaluation.tasks[].items, fetched to `path`: a file or a directory of shards), the
    first `limit` records tokenized as the dataset's records are (its format, fields and overlength policy)."""
    import itertools

    from kubetune_trainer.data import formats, reading

    read = itertools.islice(reading.iter_dataset(path, f"task {task} items"), limit)
    records, positions = [], []
    for record, where, _ in read:
        records.append(record)
        positions.append(where)
    table, _ = formats.tokenize(records, spec.dataset, tokenizer, f"task {task} items", positions)
    return table
