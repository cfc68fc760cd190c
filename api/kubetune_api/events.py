"""The trainer's structured log lines: one model per event, one emitter.

Each line is a JSON object whose `event` names its model. The operator reads three of them (contract.ProgressLine,
contract.PreparingLine, contract.Summary); the rest are for people, log pipelines and bench/ (timing, fetch,
checkpoint). A line is written by `emit`, so what is logged is what the model says.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Literal, TextIO

from pydantic import BaseModel, ConfigDict

from .contract import ENV_EVENTS, PreparingLine, ProgressLine, Summary
from .metrics import DataReport, EarlyStop, Evaluation, Fetch


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Notice(_Event):
    """Something a person should know that changes nothing about the outcome (a setting adjusted, a cache evicted)."""

    event: Literal["notice"] = "notice"
    message: str


class FetchLine(Fetch):
    event: Literal["fetch"] = "fetch"


class Prepared(_Event):
    """The prepared dataset is in place: fetched from storage (the preflight's) or prepared here, and why."""

    event: Literal["prepared"] = "prepared"
    source: Literal["storage", "here"]
    why: str | None = None  # why it was prepared here
    records: int
    tokens: int
    rows: dict[str, int]  # per split: train, validation
    seconds: float


class DataLine(DataReport):
    event: Literal["data"] = "data"
    overlength: str


class Eval(Evaluation):
    """A held-out evaluation: of the base model at step 0, of the adapter every training.evalEverySteps."""

    event: Literal["eval"] = "eval"
    step: int
    model: Literal["base", "adapter"]


class EarlyStopping(EarlyStop):
    event: Literal["earlyStopping"] = "earlyStopping"


class Checkpoint(_Event):
    """A checkpoint is complete (COMPLETE written)."""

    event: Literal["checkpoint"] = "checkpoint"
    step: int
    uri: str
    stallSeconds: float  # how long the loop stopped for it
    completeAfterSeconds: float


class Resumed(_Event):
    event: Literal["resumed"] = "resumed"
    step: int
    checkpoint: str
    optimizerRestored: bool


class Timing(_Event):
    """Where the fixed cost of a run goes, phase by phase (bench/data_bench.py prints them)."""

    event: Literal["timing"] = "timing"
    phase: str
    seconds: float


class Merged(_Event):
    """output.merged: the base model with the adapter folded in has been written."""

    event: Literal["merged"] = "merged"
    uri: str
    shards: int
    bytes: int
    largestShardBytes: int
    mergedLayers: int


Event = (
    Notice
    | FetchLine
    | Prepared
    | DataLine
    | Eval
    | EarlyStopping
    | Checkpoint
    | Resumed
    | Timing
    | Merged
    | ProgressLine
    | PreparingLine
    | Summary
)


def line(event: Event) -> str:
    """The event as its log line, `event` first (a person or a grep finds the kind at the start of the line)."""
    data = event.model_dump(mode="json", exclude_none=True)
    return json.dumps(dict(event=data.pop("event"), **data), allow_nan=False)


# Where event lines go when no stream is given. In a pod, kubetune_trainer.streams routes them: the launcher's own
# go to the container's stdout through `_sink`, while everything else the processes print reaches the log behind
# a prefix, so the operator (which reads only lines that start with "{") never takes a library's line for the
# trainer's; the ranks' go to the launcher through the FIFO named by contract.ENV_EVENTS.
_sink: Callable[[str], None] | None = None
_fifo: int | None = None
# a person at a terminal (`kubetune run`, progress bar): events go to this instead, as words (kubetune_trainer.terminal)
_renderer: Callable[[Event], None] | None = None


def install(sink: Callable[[str], None] | None) -> None:
    global _sink
    _sink = sink


def install_renderer(renderer: Callable[[Event], None] | None) -> None:
    global _renderer
    _renderer = renderer


def write(text: str) -> None:
    """One event line to where the operator reads events (stdout outside a pod), flushed: logs are read live."""
    global _fifo
    if _sink is not None:
        _sink(text)
        return
    path = os.environ.get(ENV_EVENTS)
    if path:
        if _fifo is None:
            _fifo = os.open(path, os.O_WRONLY | os.O_APPEND)  # the launcher holds its read end open
        data = (text + "\n").encode()
        while data:
            data = data[os.write(_fifo, data) :]
        return
    print(text, file=sys.stdout, flush=True)


def emit(event: Event, stream: TextIO | None = None) -> None:
    """Write one event line (where the operator reads events, unless a stream is given) and flush it."""
    if stream is not None:
        print(line(event), file=stream, flush=True)
    elif _renderer is not None:
        _renderer(event)
    else:
        write(line(event))
