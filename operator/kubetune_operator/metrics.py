"""Prometheus metrics: jobs by phase, reconcile latency, gang restarts."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

JOBS = Gauge("kubetune_finetunejobs", "FineTuneJobs by phase, as this operator last wrote them", ["phase"])
RECONCILE = Histogram(
    "kubetune_reconcile_seconds", "Time to reconcile one FineTuneJob", buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
)
RESTARTS = Counter("kubetune_gang_restarts_total", "Gang restarts after a worker failed")
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
