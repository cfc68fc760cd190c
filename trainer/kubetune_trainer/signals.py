"""SIGTERM handlers that belong to one process. A child forked while one is installed (the tokenizing pool while the
launcher prepares the data) inherits it, and a pool stops its workers with SIGTERM: there the handler must not run
(raising in a pool worker can leave the pool's lock held and the parent waiting for ever), so a forked child gets
the default action back and dies as a SIGTERM'd process does."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from types import FrameType

Handler = Callable[[int, FrameType | None], None]


def in_this_process(handler: Handler) -> Handler:
    """`handler` in the process that calls this; in a process forked from it, SIGTERM's default action."""
    owner = os.getpid()

    def guarded(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        handler(signum, frame)

    return guarded
