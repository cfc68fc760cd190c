"""This process's peak memory while it trains, measured: written to metrics.json beside the estimate, so every
run checks the preflight's arithmetic. On a GPU it is torch's own count (max_memory_allocated); on CPUs, where
torch keeps none, the allocator's events through torch's profiler when KUBETUNE_MEASURE_MEMORY=1 (slow: for tests
and benchmarks)."""

from __future__ import annotations

import os
import time
from typing import Any


class Meter:
    def __init__(self, device: Any) -> None:
        self.device = device
        self.profiler: Any = None
        self.peak: int | None = None
        self.marked = 0  # the profiler's clock (ns) at mark()

    @property
    def on(self) -> bool:
        return self.device.type == "cuda" or os.environ.get("KUBETUNE_MEASURE_MEMORY") == "1"

    def start(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.on:
            from torch.profiler import ProfilerActivity, profile

            self.profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self.profiler.start()

    def mark(self) -> None:
        """Training starts: the peak counts from here, with everything still allocated since start (the weights,
        DeepSpeed's buffers) but not the transient peak of loading the model, which is not a GPU's (weights are
        read into host memory first)."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.profiler is not None:
            self.marked = time.time_ns()

    def stop(self) -> int | None:
        """Peak bytes allocated since mark() (the first call measures; later calls return the same)."""
        import torch

        if self.peak is not None or not self.on:
            return self.peak
        if self.device.type == "cuda":
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        elif self.profiler is not None:
            self.profiler.stop()
            self.peak = peak_of(self.profiler, self.marked)
            self.profiler = None
        return self.peak


def peak_of(profiler: Any, since_ns: int = 0) -> int:
    """The highest running sum of the CPU allocator's allocations (positive) and frees (negative) from since_ns."""
    import torch

    events = [
        e
        for e in profiler.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU  # type: ignore[attr-defined]
    ]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        if event.start_ns() >= since_ns:
            peak = max(peak, live)
    return peak
