"""Forked helper processes for the CPU work a launcher does before its ranks start (tokenizing): one pool for the
whole job, whatever the number of chunks, and no wait on it that can last for ever.

- A helper never runs the parent's Python signal handlers: SIGTERM and SIGINT are blocked in the forking thread
  across the fork, and the helper sets their default actions before unblocking them. A signal that reaches a
  helper ends it at once, on whichever of its threads (the tokenizer's own) the kernel delivers it; a Python
  handler there would only be flagged for a main thread asleep on a lock (the hang of multiprocessing.Pool's
  terminate under `kubetune run`).
- Every wait on a helper is bounded: a result must come within `stall` seconds of the last one, or the map fails
  with `Stalled` naming what it waited for; a helper that dies (killed for memory, a crash in native code) fails it
  at once with `HelperDied` and its exit code, never a wait.
- Ending the pool sends each helper an end marker, waits a bounded time for it to exit and kills (SIGKILL, which no
  handler runs for) any that has not.

Work reaches a helper by fork (the `shared` object, read-only in the helper) and per task through a pipe."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import traceback
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
JOIN_SECONDS = 10.0  # what a helper is given to exit after its end marker before it is killed


class HelperDied(RuntimeError):
    def __init__(self, what: str, pid: int, exitcode: int | None) -> None:
        if exitcode is not None and exitcode < 0:
            name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else str(-exitcode)
            how = f"was killed by {name}" + (
                " (most likely the kernel's out-of-memory killer)" if -exitcode == signal.SIGKILL else ""
            )
        else:
            how = f"exited with code {exitcode}"
        super().__init__(f"a {what} process (pid {pid}) {how}")
        self.pid, self.exitcode = pid, exitcode

    @property
    def out_of_memory(self) -> bool:
        return self.exitcode == -signal.SIGKILL


class Stalled(RuntimeError):
    def __init__(self, what: str, seconds: float, pending: int) -> None:
        super().__init__(f"{what}: no result from any of its processes in {seconds:g} s ({pending} tasks outstanding)")
        self.seconds = seconds


class HelperError(RuntimeError):
    """An exception a helper raised that did not cross back as itself; the helper's traceback is in the message."""


def _helper(conn: Connection, function: Callable[[Any, Any], Any], shared: Any) -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the parent went away
            return
        if task is None:
            return
        index, payload = task
        try:
            reply = (index, True, function(shared, payload))
        except Exception as exc:
            reply = (index, False, exc)
        try:
            conn.send(reply)  # pickled whole before a byte is written: a failure here sends nothing
        except Exception:  # a reply that does not pickle: its text does
            conn.send((index, False, HelperError(traceback.format_exc())))


class ForkPool:
    """`processes` forked helpers running `function(shared, task)`; `map` gives the results in task order."""

    def __init__(self, processes: int, function: Callable[[Any, Any], Any], shared: Any, what: str, stall: float) -> None:
        self.what, self.stall = what, stall
        context = multiprocessing.get_context("fork")
        self.helpers: list[tuple[Any, Connection]] = []
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            for _ in range(processes):
                parent, child = context.Pipe()
                process = context.Process(target=_helper, args=(child, function, shared), daemon=True)
                process.start()
                child.close()
                self.helpers.append((process, parent))
        except BaseException:
            self.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def map(self, tasks: Iterable[Any]) -> Iterator[Any]:
        """Results in task order; at most one task per helper in flight, so memory holds a few tasks, not all."""
        pending = iter(enumerate(tasks))
        busy: dict[Connection, Any] = {}
        done: dict[int, Any] = {}
        following = 0
        exhausted = False
        while True:
            if not exhausted:
                for process, conn in self.helpers:
                    if conn in busy:
                        continue
                    task = next(pending, None)
                    if task is None:
                        exhausted = True
                        break
                    try:
                        conn.send(task)
                    except OSError:  # it died between tasks
                        process.join(JOIN_SECONDS)
                        raise HelperDied(self.what, process.pid, process.exitcode) from None
                    busy[conn] = process
            while following in done:
                yield done.pop(following)
                following += 1
            if not busy:
                return
            ready = wait([*busy, *(process.sentinel for process in busy.values())], timeout=self.stall)
            if not ready:
                raise Stalled(self.what, self.stall, len(busy))
            for conn in [c for c in busy if c in ready or busy[c].sentinel in ready]:
                process = busy.pop(conn)
                try:
                    index, ok, value = conn.recv()  # ready: a reply, or the end of a helper that died without one
                except (EOFError, OSError):
                    process.join(JOIN_SECONDS)
                    raise HelperDied(self.what, process.pid, process.exitcode) from None
                if not ok:
                    raise value
                done[index] = value

    def close(self) -> None:
        """End markers, a bounded wait, then SIGKILL for any helper still there."""
        for _, conn in self.helpers:
            with contextlib.suppress(OSError, ValueError):
                conn.send(None)
        for process, conn in self.helpers:
            process.join(JOIN_SECONDS)
            if process.is_alive():
                process.kill()
                process.join(JOIN_SECONDS)
            conn.close()
        self.helpers = []

    def __enter__(self) -> ForkPool:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:  # a failure or a signal in the parent: nothing the helpers do is wanted now
            for process, _ in self.helpers:
                with contextlib.suppress(OSError):
                    process.kill()
        self.close()


def cpus() -> int:
    """The CPUs this process may use: its affinity, bounded by its cgroup's quota (a pod's CPU limit)."""
    count = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, count)
