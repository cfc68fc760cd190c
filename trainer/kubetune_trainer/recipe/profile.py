"""Where a training step's time goes, for the benchmarks (bench/gpu_bench.py): with KUBETUNE_PROFILE_STEPS=N set,
rank 0 times N steps after two warm-up steps, section by section (data: collate and the copy to the device;
forward; backward; optimizer: DeepSpeed's step, with ZeRO's reduction), and writes profile.json into its work
directory, with the device time of the communication kernels and the ten kernels that took longest (torch.profiler).
On a GPU a section's time is the device's (CUDA events around it on the stream); on the CPU it is the host's.
Unset (every job's case), each section is a no-op."""

from __future__ import annotations

import contextlib
import json
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

WARMUP = 2
SECTIONS = ("data", "forward", "backward", "optimizer")


class StepProfile:
    def __init__(self, device: Any, steps: int, out: Path | None) -> None:
        self.device, self.steps, self.out = device, steps, out
        self.on = False
        self.spans: dict[str, list[Any]] = defaultdict(list)
        self.walls: list[float] = []
        self.profiler: Any = None
        self._began = 0.0

    @classmethod
    def disabled(cls) -> StepProfile:
        return cls(None, 0, None)

    def begin(self, step: int, start: int) -> None:
        """Before `step` (the run began at `start`): profiling covers steps start+WARMUP .. +steps."""
        if not self.steps or self.out is None or step != start + WARMUP:
            return
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
            torch.cuda.synchronize(self.device)
        self.profiler = torch.profiler.profile(activities=activities)
        self.profiler.__enter__()
        self.on = True

    def step_started(self) -> None:
        if self.on:
            self._sync()
            self._began = time.perf_counter()

    def step_ended(self) -> None:
        if not self.on:
            return
        self._sync()
        self.walls.append(time.perf_counter() - self._began)
        if len(self.walls) == self.steps:
            self.finish()

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        if not self.on:
            yield
            return
        if self.device.type == "cuda":
            import torch

            begin = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            begin.record()
            yield
            end.record()
            self.spans[name].append((begin, end))
        else:
            began = time.perf_counter()
            yield
            self.spans[name].append(time.perf_counter() - began)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def seconds(self, name: str) -> float:
        spans = self.spans.get(name, [])
        if self.device.type == "cuda":
            return float(sum(b.elapsed_time(e) for b, e in spans)) / 1000
        return float(sum(spans))

    def finish(self) -> None:
        self.on = False
        self.profiler.__exit__(None, None, None)
        kernels = []
        communication = 0.0
        for event in self.profiler.key_averages():
            device_us = float(getattr(event, "self_device_time_total", 0.0) or 0.0)
            if device_us <= 0:
                continue
            kernels.append((device_us, event.key))
            if "nccl" in event.key.lower():
                communication += device_us
        kernels.sort(reverse=True)
        steps = len(self.walls)
        report = {
            "steps": steps,
            "measuredOn": "device (CUDA events)" if self.device.type == "cuda" else "host",
            "stepSeconds": sum(self.walls) / steps,
            "sections": {name: self.seconds(name) / steps for name in SECTIONS},
            "communicationSeconds": communication / 1e6 / steps,
            "topKernels": [{"name": name[:120], "seconds": us / 1e6 / steps} for us, name in kernels[:10]],
        }
        assert self.out is not None
        self.out.write_text(json.dumps(report, indent=1) + "\n")
