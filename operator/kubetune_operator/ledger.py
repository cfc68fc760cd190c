"""status.usage: GPU-hours used and lost, from the pods' run times and the attempts before."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from kubetune_api.status import Usage


def parse_time(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return None


def pod_seconds(pods: list[dict[str, Any]], at: datetime.datetime) -> float:
    """Seconds the pods' trainer containers have run: from their start to their end, or to `at` while running."""
    total = 0.0
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            state = container.get("state") or {}
            running, ended = state.get("running") or {}, state.get("terminated") or {}
            start = parse_time(running.get("startedAt") or ended.get("startedAt"))
            end = parse_time(ended.get("finishedAt")) if ended else at
            if start is not None and end is not None and end > start:
                total += (end - start).total_seconds()
    return total


def ledger(
    previous: Usage | None,
    running: float,
    attempt: int,
    *,
    restarting: bool,
    failed: bool,
    final: bool = False,
    preempted: float = 0.0,
    stopped: bool = False,
    gpus: int,
    gpu_type: str,
    price: float,
    preempted_pods: Sequence[str] = (),
) -> Usage:
    """status.usage from the attempts before (kept in the status) and this attempt's pod seconds: `running` of its
    workers, `preempted` of workers that ended preempted or evicted and were not counted before (closed into the
    status at once, so neither an operator restart nor the pod going away loses them; kept: they checkpointed the
    step they reached; the caller keeps their uids in the status so each is counted once). An attempt that ends in a gang restart is added to the lost time once (its attempt number, not a
    count, decides); a failed end loses the last attempt too; an attempt the queue or a suspend `stopped` is kept
    (its pods go away, so their time is closed now). While an attempt runs its time moves in whole minutes, so the
    status is not rewritten for the ledger alone at every sync; an attempt's end is counted to the second."""
    prev = previous or Usage()
    if not (restarting or failed or final or stopped):
        running = running // 60 * 60
    restarted, kept, closed = prev.restartedPodSeconds, prev.closedPreemptedPodSeconds, prev.closedAttempts
    kept += preempted  # first seen now: closed at once (the caller counts each pod once, by uid)
    if attempt < closed:
        running = 0.0  # this attempt ended in a restart and was counted then (its pods may still be going away)
    elif restarting:
        restarted, closed, running = restarted + running, attempt + 1, 0.0
    if stopped:  # the pods may be gone already: at least what the status last said they had run
        before = prev.podSeconds - restarted - prev.preemptedPodSeconds
        kept, running = kept + max(running, before), 0.0
    total = restarted + kept + running
    lost = restarted + (running if failed else 0.0)
    hours = total * gpus / 3600
    return Usage(
        podSeconds=round(total, 1),
        gpuHours=round(hours, 4),
        lostGpuHours=round(lost * gpus / 3600, 4),
        lostShare=round(lost / total, 4) if total > 0 else None,
        gpuType=gpu_type if gpus and gpu_type else None,
        estimatedCost=round(hours * price, 2) if gpus and price else None,
        restartedPodSeconds=round(restarted, 1),
        preemptedPodSeconds=round(kept, 1),
        closedPreemptedPodSeconds=round(kept, 1),
        closedAttempts=closed,
        preemptedPods=list(preempted_pods),
    )
