"""A fleet of running FineTuneJobs for the operator benchmark's steady state (bench/operator_bench.py --steady N):
the test node agent's Nodes, with every trainer container faked by a log that grows (a progress line per pod
every few seconds, after a megabyte of older lines), so the operator sees N jobs Running and reads their logs
through the API server's pods/log as it would in a cluster, without N training processes on this machine."""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path
from typing import Any

from tests.cluster.node_agent import Container, NodeAgent, PodRun, now

OLD_LOG = 1 << 20  # bytes of older log each container starts with: a read that is not bounded pays for it each time


class Forever:
    """A container process that never exits (until the pod is deleted)."""

    pid = os.getpid()

    def __init__(self) -> None:
        self.done = False

    def poll(self) -> int | None:
        return 0 if self.done else None

    def wait(self) -> int:
        return 0


class FleetAgent(NodeAgent):
    """The node agent with faked containers, and a count of the log bytes it served to the API server."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logs: list[Path] = []
        self.served = 0
        self.requests = 0
        self.count_lock = threading.Lock()

    def _start_container(self, pod: Any, run: PodRun, container: Any, volumes: dict[str, Path], restarts: int = 0) -> Container:
        log = run.directory / f"{container.name}.log"
        line = json.dumps({"event": "progress", "step": 1, "totalSteps": 100000, "epoch": 0.0, "loss": 2.5}) + "\n"
        log.write_text(line * (OLD_LOG // len(line)))
        termination = run.directory / f"{container.name}.termination-log"
        termination.write_text("")
        with self.count_lock:
            self.logs.append(log)
        return Container(container.name, Forever(), log, termination, now(), restarts)  # type: ignore[arg-type]

    def _kill(self, run: PodRun, grace: int, pod: Any = None) -> None:
        for c in run.containers.values():
            if isinstance(c.process, Forever):
                c.process.done = True
        run.deleting = True
        run.finished = True

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()

    def grow(self, every: float, stop: threading.Event) -> None:
        """A progress line per container every `every` seconds, as rank 0 prints them."""
        step = 1
        while not stop.wait(every):
            step += 1
            line = json.dumps({"event": "progress", "step": step, "totalSteps": 100000, "epoch": step / 1000, "loss": 2.0}) + "\n"
            with self.count_lock:
                logs = list(self.logs)
            for log in logs:
                with log.open("a") as handle:
                    handle.write(line)

    def _handler(self) -> Any:
        base = super()._handler()
        agent = self

        class Counting(base):  # type: ignore[misc, valid-type]
            def do_GET(self) -> None:  # noqa: N802  (the name BaseHTTPRequestHandler calls)
                real = self.wfile
                buffer = io.BytesIO()
                self.wfile = buffer
                try:
                    super().do_GET()
                finally:
                    self.wfile = real
                data = buffer.getvalue()
                real.write(data)
                with agent.count_lock:
                    agent.served += len(data)
                    agent.requests += 1

        return Counting
