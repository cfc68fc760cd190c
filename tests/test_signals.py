"""A SIGTERM handler belongs to the process that installed it: a forked child (a tokenizing pool's worker) dies of
the signal as usual instead of running it (a handler raising inside a pool worker hung the pool's shutdown)."""

from __future__ import annotations

import os
import signal
import time

from kubetune_trainer.signals import in_this_process


def test_a_forked_child_dies_of_sigterm_and_the_installer_runs_its_handler() -> None:
    ran: list[int] = []
    previous = signal.signal(signal.SIGTERM, in_this_process(lambda signum, frame: ran.append(os.getpid())))
    try:
        child = os.fork()
        if child == 0:  # the child: wait to be signalled; reaching the end means the handler swallowed the signal
            time.sleep(30)
            os._exit(7)
        time.sleep(0.2)
        os.kill(child, signal.SIGTERM)
        _, status = os.waitpid(child, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert ran == [os.getpid()]
    finally:
        signal.signal(signal.SIGTERM, previous)
