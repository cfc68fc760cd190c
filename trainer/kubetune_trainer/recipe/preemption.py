"""SIGTERM: the pod is being preempted (Kueue), evicted (a node drain), or its job suspended. Every rank notes it
in its handler; the ranks agree at the next step boundary (a one-number all-reduce each step, over a host-side
gloo group so the GPU's queue is not drained for it, and none at all for one rank: no rank stops alone and none
waits on a peer that already left), write a checkpoint as the periodic ones are written (same
format, identity and COMPLETE last), and end with reason Preempted. A preempted run loses at most one step; if the
grace period runs out first, the previous complete checkpoint still stands (nothing without COMPLETE is resumed)."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from kubetune_api.conditions import Reason
from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.recipe.rank import host_max
from kubetune_trainer.signals import in_this_process


class Preempted(TrainerFailure):
    def __init__(self, step: int, checkpoint: str | None) -> None:
        where = f"checkpoint {checkpoint} written" if checkpoint else "no step since the last checkpoint"
        super().__init__(Reason.PREEMPTED, f"stopped at step {step} on SIGTERM (preempted, evicted or suspended); {where}")
        self.step, self.checkpoint = step, checkpoint


class Stop:
    """Whether this rank was asked to stop, and whether every rank agrees (MAX of the flags: one asked is enough)."""

    def __init__(self) -> None:
        self.asked = False

    def install(self) -> Stop:
        signal.signal(signal.SIGTERM, in_this_process(self._asked))
        return self

    def _asked(self, signum: int, frame: FrameType | None) -> None:
        self.asked = True

    def agreed(self, group: Any, world: int) -> bool:
        """Whether any rank was asked: read on the host (no GPU synchronisation), by every rank at the same step."""
        if world == 1:
            return self.asked
        return host_max(group, float(self.asked)) > 0
