"""What the trainer tells the world: progress lines for the operator, a bar for humans, the final summary."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from kubetune_api import events
from kubetune_api.contract import ProgressLine, Summary
from kubetune_trainer import terminal


def format_eta(seconds: float | None) -> str | None:
    if seconds is None or not math.isfinite(seconds):
        return None
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@dataclass
class Progress:
    """Rank 0's progress reporter: JSON lines (pods) or a tqdm bar (a person at a terminal, the other events as
    words above it: kubetune_trainer.terminal)."""

    total_steps: int
    style: str = "json"  # json | bar
    stream: TextIO | None = None  # None: where event lines go (events.write)
    tracker: Any = None  # tracking.Tracker: the curves go to MLflow too, and its trouble into the progress lines
    _bar: Any = None
    _started: float = field(default_factory=time.monotonic)
    _first_step: int = 0

    def start(self, step: int) -> None:
        self._started = time.monotonic()
        self._first_step = step
        if self.style == "bar":
            from tqdm import tqdm

            shown = terminal.active
            out = shown.stream if shown is not None else sys.stdout
            self._bar = tqdm(total=self.total_steps, initial=step, unit="step", dynamic_ncols=True, file=out)
            if shown is not None:
                shown.bar = self._bar

    def step(
        self, step: int, epoch: float, loss: float, lr: float, tokens_per_second: float, checkpoint_step: int | None = None
    ) -> ProgressLine:
        done = step - self._first_step
        elapsed = time.monotonic() - self._started
        eta = elapsed / done * (self.total_steps - step) if done else None
        line = ProgressLine(
            event="progress",
            step=step,
            totalSteps=self.total_steps,
            epoch=round(epoch, 4),
            loss=round(loss, 6) if math.isfinite(loss) else None,
            learningRate=lr,
            tokensPerSecond=round(tokens_per_second, 1),
            etaSeconds=None if eta is None else round(eta, 1),
            eta=format_eta(eta),
            checkpointStep=checkpoint_step,
            trackingDegraded=self.tracker.degraded() if self.tracker is not None else None,
        )
        if self.tracker is not None:
            self.tracker.on_progress(line)
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_second:.0f}", refresh=True)
        else:
            self.emit(line)
        return line

    def emit(self, event: events.Event) -> None:
        if self.tracker is not None and isinstance(event, events.Eval):
            self.tracker.on_eval(event.step, event.model, event.model_dump(exclude={"event", "step", "model"}))
        if self._bar is not None and terminal.active is None:
            self._bar.write(events.line(event), file=sys.stdout)
        else:
            events.emit(event, self.stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            if terminal.active is not None:
                terminal.active.bar = None


class Silent:
    """Where the other ranks' events go: nowhere (rank 0 alone reports: Progress)."""

    def start(self, step: int) -> None:
        pass

    def step(
        self, step: int, epoch: float, loss: float, lr: float, tokens_per_second: float, checkpoint_step: int | None = None
    ) -> None:
        pass

    def emit(self, event: events.Event) -> None:
        pass

    def close(self) -> None:
        pass


def summary(status: str, **fields: Any) -> Summary:
    """The final summary, through the same model the operator reads it with (bounded, finite, known reasons)."""
    metrics = fields.get("metrics")
    if isinstance(metrics, dict):  # a non-finite metric is reported as missing rather than breaking the summary
        fields["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    return Summary.model_validate({"status": status, **{k: v for k, v in fields.items() if v is not None}})


def say(summary: Summary) -> None:
    """The summary as the last line of the log."""
    events.emit(summary)


def write_termination(path: Path | None, summary: Summary) -> None:
    """Write the summary where Kubernetes reads the termination message: valid JSON within its 4 KiB limit."""
    if path is None:
        return
    text = summary.termination_message()
    try:
        path.write_text(text)
    except OSError as exc:
        print(f"kubetune: cannot write termination message to {path}: {exc}", file=sys.stderr)
