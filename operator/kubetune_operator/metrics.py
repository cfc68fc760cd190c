"""Prometheus metrics: jobs by phase, reconcile latency, gang restarts, and the GPU-hour ledger by namespace,
queue and GPU type (what a platform charges teams back from: docs/platform.md)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

JOBS = Gauge("kubetune_finetunejobs", "FineTuneJobs by phase, as this operator last wrote them", ["phase"])
RECONCILE = Histogram(
    "kubetune_reconcile_seconds", "Time to reconcile one FineTuneJob", buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
)
RESTARTS = Counter("kubetune_gang_restarts_total", "Gang restarts after a worker failed")
LEDGER = ["namespace", "queue", "gpu_type"]
GPU_HOURS = Counter("kubetune_gpu_hours_total", "GPU-hours held by FineTuneJobs' worker pods", LEDGER)
LOST_GPU_HOURS = Counter("kubetune_lost_gpu_hours_total", "GPU-hours of attempts that failed (restarts, failed ends)", LEDGER)
COST = Counter("kubetune_gpu_cost_total", "gpu_hours times the platform's price per GPU-hour", LEDGER)
_started = False


def serve(port: int) -> None:
    global _started
    if port and not _started:
        start_http_server(port, addr="0.0.0.0")
        _started = True


def phase_changed(old: str | None, new: str | None) -> None:
    if old:
        JOBS.labels(old).dec()
    if new:
        JOBS.labels(new).inc()


def reconciled(seconds: float) -> None:
    RECONCILE.observe(seconds)


def restarted() -> None:
    RESTARTS.inc()


def usage_changed(namespace: str, queue: str, old: dict[str, object] | None, new: dict[str, object] | None) -> None:
    """Add what a status write added to the job's usage (never less: a counter only grows)."""
    if not new:
        return
    before, after = old or {}, new
    labels = (namespace, queue, str(after.get("gpuType") or ""))
    for counter, key in ((GPU_HOURS, "gpuHours"), (LOST_GPU_HOURS, "lostGpuHours"), (COST, "estimatedCost")):
        grown = float(after.get(key) or 0.0) - float(before.get(key) or 0.0)  # type: ignore[arg-type]
        if grown > 0:
            counter.labels(*labels).inc(grown)
