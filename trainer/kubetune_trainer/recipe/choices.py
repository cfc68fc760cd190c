"""The run's decisions, pure (no torch, no storage): early stopping, the adapter to write, the checkpoints to drop.
The loop (train.py) and the checkpoint protocol (checkpoint.py) carry them out; tests/test_choices.py tables them."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from kubetune_api.metrics import EarlyStop
from kubetune_api.training import EarlyStopping

TAG = re.compile(r"^step-(\d{6,})$")


@dataclass
class Watch:
    """The held-out evaluations so far, as early stopping and best-adapter selection see them."""

    best_step: int = 0
    best_loss: float = math.inf
    reference: float = math.inf  # the loss of the last evaluation that improved by more than minDelta
    stale: int = 0  # evaluations since then
    snapshot_step: int | None = None  # the step whose adapter is kept in adapter-best/

    def see(self, step: int, loss: float, min_delta: float) -> bool:
        """Record an evaluation; True when it is the best so far."""
        if loss < self.reference - min_delta:
            self.reference, self.stale = loss, 0
        else:
            self.stale += 1
        if loss < self.best_loss:
            self.best_step, self.best_loss = step, loss
            return True
        return False


def early_stop(watch: Watch, stopping: EarlyStopping | None, step: int) -> EarlyStop | None:
    """Why the run stops at this evaluation (training.earlyStopping), or None when it goes on."""
    if stopping is None or watch.stale < stopping.patience:
        return None
    return EarlyStop(
        stoppedAtStep=step,
        reason=f"held-out loss did not improve by more than {stopping.minDelta} for {stopping.patience} evaluations "
        f"(best {watch.best_loss:.4f} at step {watch.best_step})",
    )


def wants_best(wanted: str, watch: Watch, last_step: int) -> bool:
    """Whether output.adapter asks for an adapter other than the last: the best one, evaluated before the end."""
    return wanted == "best" and watch.best_step != last_step


def adapter_choice(wanted: str, watch: Watch, last_step: int, best_kept: bool) -> str:
    """Which adapter is written (output.adapter): "best", or "last" with why when the best was wanted. `best_kept`:
    the best step's adapter is in adapter-best/ on every rank (a restart can leave only its evaluation)."""
    if not wants_best(wanted, watch, last_step):
        return "last"
    if best_kept:
        return "best"
    return "last (the best adapter was evaluated before a restart and not kept)"


def step_of(tag: str) -> int:
    found = TAG.match(tag)
    if found is None:
        raise ValueError(f"{tag!r} is not a checkpoint tag")
    return int(found.group(1))


def doomed(complete: list[str], every: list[str], keep: int) -> list[str]:
    """The checkpoints to delete: all but the newest `keep` complete ones, and incomplete ones (a rank died while
    writing) older than the newest complete one; an incomplete one newer than it may still be being written."""
    if not complete:
        return []
    newest = step_of(complete[-1])
    dropped = set(complete[:-keep])  # keep 0 (no limit) drops none
    dropped |= {t for t in every if t not in complete and TAG.match(t) and step_of(t) < newest}
    return sorted(dropped)
