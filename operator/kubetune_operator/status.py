"""From the Job, its pods and rank 0's words to a FineTuneJob status: pure functions, Kubernetes-style conditions."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from typing import Any

from kubetune_api.conditions import TRAINER_FAILURE_REASONS, ConditionType, Reason
from kubetune_api.contract import PROGRESS_EVENT, SUMMARY_EVENT

# Failures that another attempt cannot fix: the job fails at once instead of restarting the gang.
PERMANENT = frozenset(TRAINER_FAILURE_REASONS - {Reason.OUT_OF_MEMORY, Reason.TRAINER_ERROR, Reason.NAN_LOSS})


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]], type_: str, status: bool, reason: str, message: str, generation: int | None
) -> list[dict[str, Any]]:
    """Conditions with one set; lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    out = [dict(c) for c in conditions if c.get("type") != type_]
    old = next((c for c in conditions if c.get("type") == type_), None)
    changed = old is None or old.get("status") != value
    out.append(
        {
            "type": type_,
            "status": value,
            "reason": reason,
            "message": message[:2000],
            "lastTransitionTime": now() if changed else old["lastTransitionTime"],  # type: ignore[index]
            "observedGeneration": generation,
        }
    )
    order = [t.value for t in ConditionType]
    return sorted(out, key=lambda c: order.index(c["type"]) if c["type"] in order else len(order))


def summary_of(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The trainer's final summary from a pod's termination message, if it left one."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        message = ((status.get("state") or {}).get("terminated") or {}).get("message") or ""
        for line in reversed(message.strip().splitlines()):
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict) and data.get("event") == SUMMARY_EVENT:
                return data
    return None


def last_progress(log: str) -> dict[str, Any] | None:
    """The newest structured progress line of rank 0's log."""
    for line in reversed(log.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and data.get("event") == PROGRESS_EVENT:
            return data
    return None


def progress_status(line: dict[str, Any]) -> dict[str, Any]:
    step, total = int(line.get("step", 0)), int(line.get("totalSteps", 0))
    percent = int(100 * step / total) if total else 0
    return {
        "step": step,
        "totalSteps": total,
        "epoch": line.get("epoch", 0.0),
        "loss": line.get("loss"),
        "learningRate": line.get("learningRate"),
        "tokensPerSecond": line.get("tokensPerSecond"),
        "eta": line.get("eta"),
        "summary": f"{step}/{total} ({percent}%)",
    }


def _job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_ and condition.get("status") == "True":
            return dict(condition)
    return None


@dataclass(frozen=True)
class Observation:
    """What the Job and its pods say, reduced to what the status needs."""

    state: str  # missing | queued | suspended | pending | running | succeeded | failed
    reason: str = ""
    message: str = ""
    ready: int = 0
    summary: dict[str, Any] | None = None


def pending_reason(pods: list[dict[str, Any]]) -> tuple[str, str]:
    """Why pods are not running yet, in the scheduler's or kubelet's own words."""
    for pod in pods:
        status = pod.get("status") or {}
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                return Reason.UNSCHEDULABLE.value, f"{pod['metadata']['name']}: {condition.get('message', '')}"
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            why, message = waiting.get("reason", ""), waiting.get("message", "")
            if why in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
                return Reason.IMAGE_PULL_FAILED.value, f"{pod['metadata']['name']}: {message or why}"
            if why == "CreateContainerConfigError" and "secret" in message.lower():
                return Reason.SECRET_MISSING.value, f"{pod['metadata']['name']}: {message}"
            if why == "CreateContainerConfigError":
                return Reason.PODS_PENDING.value, f"{pod['metadata']['name']}: {message}"
        if status.get("phase") == "Failed" and status.get("reason") == "CreateContainerConfigError":
            message = status.get("message", "")
            reason = Reason.SECRET_MISSING if "secret" in message.lower() else Reason.PODS_PENDING
            return reason.value, f"{pod['metadata']['name']}: {message}"
    return Reason.PODS_PENDING.value, "waiting for worker pods to start"


def observe(job: dict[str, Any] | None, pods: list[dict[str, Any]], workers: int) -> Observation:
    if job is None or (job.get("metadata") or {}).get("deletionTimestamp"):
        return Observation("missing")
    if _job_condition(job, "Complete") or _job_condition(job, "SuccessCriteriaMet"):
        summaries = [s for s in (summary_of(p) for p in pods) if s and s.get("status") == "Succeeded"]
        rank0 = next((s for s in summaries if s.get("metrics")), summaries[0] if summaries else None)
        return Observation("succeeded", Reason.COMPLETED.value, "adapter, metrics and _SUCCESS written", summary=rank0)
    failed = _job_condition(job, "Failed") or _job_condition(job, "FailureTarget")
    finished = next((s for s in (summary_of(p) for p in pods) if s and s.get("status") == "Succeeded" and s.get("metrics")), None)
    if failed and finished:  # worker 0 wrote the adapter and _SUCCESS; a worker failing afterwards changes nothing
        return Observation("succeeded", Reason.COMPLETED.value, "adapter, metrics and _SUCCESS written", summary=finished)
    if failed:
        if failed.get("reason") == "DeadlineExceeded":
            return Observation("failed", Reason.DEADLINE_EXCEEDED.value, "runPolicy.activeDeadlineSeconds passed")
        summaries = [s for s in (summary_of(p) for p in pods) if s and s.get("status") == "Failed"]
        summaries.sort(key=lambda s: s.get("reason") == Reason.TRAINER_ERROR.value)
        if summaries:
            return Observation("failed", str(summaries[0].get("reason")), str(summaries[0].get("message", "")))
        pending = pending_reason(pods)
        if pending[0] != Reason.PODS_PENDING.value:
            return Observation("failed", *pending)
        return Observation("failed", Reason.TRAINER_ERROR.value, failed.get("message") or "a worker failed without a summary")
    if (job.get("spec") or {}).get("suspend"):
        return Observation("suspended")
    running = [
        p for p in pods if (p.get("status") or {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]
    if len(running) >= workers:
        return Observation("running", ready=len(running))
    why, message = pending_reason(pods)
    return Observation("pending", why, message, ready=len(running))
