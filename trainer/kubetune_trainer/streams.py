"""In a pod, only the trainer's emitter writes the lines the operator reads.

The operator takes a log line for the trainer's word (progress, the newest checkpoint, preparing) only when it
starts with `{`. Libraries share the processes' stdout and stderr and print what their inputs say (a model's
config at TRANSFORMERS_VERBOSITY=info, a tokenizer's warnings, a traceback quoting a record), so a model's own files
could write such a line. The pod's command therefore routes them apart (`Guard`):

- the container's stdout is kept for event lines (kubetune_api.events.write) and nothing else writes to it;
- file descriptors 1 and 2 of the launcher, and so of every process it starts (torchrun, the ranks, the forked
  tokenizers), become a pipe whose lines reach the container's stdout behind PREFIX, never starting with `{`;
- the ranks' event lines come through a FIFO (contract.ENV_EVENTS) the launcher forwards as they are.

Each forwarding thread is bounded: it stops when its source closes, or when `close` asks and what is pending has
been read (CLOSE_SECONDS at most).
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from kubetune_api import events

PREFIX = b"| "
CHUNK = 65536  # a library line longer than this goes out in pieces, each behind the prefix
CLOSE_SECONDS = 5.0
POLL = 0.2

active: Guard | None = None


class _Pump:
    """Reads lines from `fd` and hands each (without its newline) to `out`, in a thread of its own."""

    def __init__(self, fd: int, out: Callable[[bytes], None], name: str) -> None:
        self.fd, self.out = fd, out
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        pending = b""
        while True:
            ready, _, _ = select.select([self.fd], [], [], POLL)
            if not ready:
                if self.stopping.is_set():
                    break  # asked to stop and nothing more to read
                continue
            try:
                chunk = os.read(self.fd, CHUNK)
            except OSError:
                break
            if not chunk:
                break  # every writer closed it
            pending += chunk
            *lines, pending = pending.split(b"\n")
            while len(pending) >= CHUNK:
                lines.append(pending[:CHUNK])
                pending = pending[CHUNK:]
            for line in lines:
                self._out(line)
        if pending:
            self._out(pending)

    def _out(self, line: bytes) -> None:
        with contextlib.suppress(Exception):  # the line is lost, never the reading: writers never block on a full pipe
            self.out(line)

    def stop(self, deadline: float) -> None:
        self.stopping.set()
        self.thread.join(timeout=deadline)


class Guard:
    """The pod's streams, routed apart (see the module's words); `close` puts them back."""

    def __init__(self) -> None:
        global active
        sys.stdout.flush()
        sys.stderr.flush()
        self._out, self._err = os.dup(1), os.dup(2)  # the container's stdout (events only now) and stderr
        self._lock = threading.Lock()
        read, write = os.pipe()
        os.dup2(write, 1)
        os.dup2(write, 2)
        os.close(write)
        self._pumps = [_Pump(read, self._library, "kubetune-output")]
        self._fifo: str | None = None
        events.install(self._event)
        active = self

    def _send(self, data: bytes) -> None:
        # the container's stdout gone (the kubelet's side): nothing can be said any more
        with self._lock, contextlib.suppress(OSError):
            while data:
                data = data[os.write(self._out, data) :]

    def _event(self, text: str) -> None:
        self._send(text.encode() + b"\n")

    def _library(self, line: bytes) -> None:
        self._send(PREFIX + line + b"\n")

    def _forwarded(self, line: bytes) -> None:
        self._send(line + b"\n")

    def events_fifo(self) -> str:
        """The FIFO the ranks write their event lines to (made once; its read end stays open in this process)."""
        if self._fifo is None:
            path = Path(tempfile.mkdtemp(prefix="kubetune-events-")) / "events"
            os.mkfifo(path, 0o600)
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # read and write: opening never waits, EOF never comes
            self._pumps.append(_Pump(fd, self._forwarded, "kubetune-events"))
            self._fifo = str(path)
        return self._fifo

    def close(self) -> None:
        """Streams back as they were; what the pipe and the FIFO still hold is forwarded first (bounded)."""
        global active
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._out, 1)  # the pipe's last write ends in this process go: its reader sees the end
        os.dup2(self._err, 2)
        for pump in self._pumps:
            pump.stop(CLOSE_SECONDS)
        events.install(None)
        active = None
        with contextlib.suppress(OSError):
            os.close(self._out)
            os.close(self._err)


def guarded(main: Callable[[], int]) -> int:
    """Run a pod's command with its streams guarded; an uncaught error's traceback goes behind the prefix too."""
    import traceback

    guard = Guard()
    try:
        return main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        guard.close()
