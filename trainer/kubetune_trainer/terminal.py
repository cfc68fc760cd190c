"""The events as a person at a terminal reads them (`kubetune run`, progress `bar`): one plain line for each event
that matters, the phases' timings in one short table at the end, nothing for what the closing report says anyway.
Pods and `--progress json` keep the JSON lines (kubetune_api.events), which is what the operator reads."""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from kubetune_api import events
from kubetune_api.contract import PreparingLine


def _n(value: int) -> str:
    return f"{value:,}"


def _evaluated(event: events.Eval) -> str:
    who = "base model" if event.model == "base" else f"step {event.step}"
    if event.preferenceAccuracy is not None:
        return f"held-out at {who}: DPO loss {event.evalLoss:.4f}, preference accuracy {event.preferenceAccuracy:.3f}"
    loss = "n/a" if event.evalLoss is None else f"{event.evalLoss:.4f}"
    accuracy = "" if event.tokenAccuracy is None else f", token accuracy {event.tokenAccuracy:.4f}"
    return f"held-out at {who}: loss {loss}{accuracy}"


def render(event: events.Event) -> str | None:
    """The event's line for a person; None: not shown (timings are tabled at the end, the summary is the report)."""
    if isinstance(event, events.Prepared):
        rows = ", ".join(f"{count:,} {split} rows" for split, count in event.rows.items())
        where = "prepared" if event.source == "here" else "fetched the preflight's prepared set"
        return f"data {where}: {_n(event.records)} records, {_n(event.tokens)} tokens, {rows} ({event.seconds:.1f} s)"
    if isinstance(event, events.DataLine):
        train, held = event.train, event.validation
        dropped = f", {_n(train.dropped)} dropped" if train.dropped else ""
        return (
            f"data: {_n(train.records)} training records ({_n(train.tokens)} tokens{dropped}), "
            f"{_n(held.records)} held out; {_n(event.trainSequences)} training rows, packing {'on' if event.packing else 'off'}"
        )
    if isinstance(event, events.FetchLine):
        return f"{event.what}: {event.fromCache:,} bytes from the node's cache, {event.fromStorage:,} from storage"
    if isinstance(event, events.Eval):
        return _evaluated(event)
    if isinstance(event, events.Checkpoint):
        return f"checkpoint saved at step {event.step}: {event.uri}"
    if isinstance(event, events.Resumed):
        return f"resumed from {event.checkpoint} (step {event.step})"
    if isinstance(event, events.EarlyStopping):
        return f"stopped early at step {event.stoppedAtStep}: {event.reason}"
    if isinstance(event, events.Merged):
        return f"merged model written: {event.uri} ({event.shards} shards)"
    if isinstance(event, events.Notice):
        return f"note: {event.message}"
    if isinstance(event, PreparingLine):
        return f"preparing the dataset: {event.summary()}"
    return None  # Timing (tabled at the end), Summary (the closing report), ProgressLine (the bar)


class Terminal:
    """Where a terminal's lines go, and the timings kept for the table. `install` routes this process's events
    here; a rank also moves the libraries' prints (fd 1) to its stderr, which `kubetune run` logs to a file."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.timings: list[tuple[str, float]] = []
        self.bar: Any = None  # the progress bar while it is drawn: lines are written above it

    def show(self, event: events.Event) -> None:
        if isinstance(event, events.Timing):
            self.timings.append((event.phase, event.seconds))
            return
        text = render(event)
        if text is not None:
            self.write(text)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def table(self) -> str:
        if not self.timings:
            return ""
        width = max(len(phase) for phase, _ in self.timings)
        lines = [f"  {phase:<{width}}  {seconds:>7.1f} s" for phase, seconds in self.timings]
        return "time by phase:\n" + "\n".join(lines)


active: Terminal | None = None


def install(quiet_libraries: bool = False) -> Terminal:
    """Render this process's events for a person. `quiet_libraries` (a rank): what libraries print to stdout goes to
    stderr instead, so only kubetune's lines and the bar reach the terminal."""
    global active
    stream: TextIO = sys.stdout
    if quiet_libraries:
        sys.stdout.flush()
        stream = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)
    active = Terminal(stream)
    events.install_renderer(active.show)
    return active
