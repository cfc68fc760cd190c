"""What the training Job and its pods say, reduced to what the status needs: pure functions over the API server's JSON.

Pods are untrusted: their words (termination messages, progress lines) are read through the contract's bounded models,
and only worker 0's say that the job succeeded."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kubetune_api.conditions import TRAINER_FAILURE_REASONS, Reason
from kubetune_api.contract import EXIT_PREEMPTED, TERMINATION_LIMIT, ProgressLine, Summary, last_line, parse_summary
from kubetune_api.job import FineTuneJobSpec, pods_digests
from kubetune_api.layout import adapter_uri
from kubetune_api.status import Progress

from .builders import SPEC_ANNOTATION

# Failures that another attempt cannot fix: the job fails at once instead of restarting the gang.
PERMANENT = frozenset(TRAINER_FAILURE_REASONS - {Reason.OUT_OF_MEMORY, Reason.TRAINER_ERROR, Reason.NAN_LOSS, Reason.PREEMPTED})
DISRUPTION = "DisruptionTarget"  # the pod condition the API server, scheduler or kubelet sets before taking a pod off


def summary_of(pod: dict[str, Any]) -> Summary | None:
    """The trainer's final summary from a pod's termination message, if it left a valid one. The message is the
    pod's word: parsed by the contract's bounded model, anything else is ignored."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        message = ((status.get("state") or {}).get("terminated") or {}).get("message") or ""
        if isinstance(message, str):
            found = parse_summary(message[: TERMINATION_LIMIT * 2])
            if found is not None:
                return found
    return None


COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # set by the Job controller, not by the pod


def rank0_pods(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pods of worker 0: the only worker whose word that the job succeeded, and with what metrics, counts (it
    writes the adapter and _SUCCESS; any other worker saying so is ignored)."""
    return [p for p in pods if ((p.get("metadata") or {}).get("annotations") or {}).get(COMPLETION_INDEX) == "0"]


def _disruption(pod: dict[str, Any]) -> dict[str, Any] | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == DISRUPTION and condition.get("status") == "True":
            return dict(condition)
    return None


def _exit_codes(pod: dict[str, Any]) -> list[Any]:
    return [
        ((s.get("state") or {}).get("terminated") or {}).get("exitCode")
        for s in (pod.get("status") or {}).get("containerStatuses") or []
    ]


def was_preempted(pod: dict[str, Any]) -> bool:
    """A worker that ended because it was taken off its node, not because it failed: the Kubernetes side said so
    (DisruptionTarget), or the trainer did, having checkpointed on SIGTERM (contract.EXIT_PREEMPTED, reason
    Preempted). The Job's podFailurePolicy replaces such a pod without counting it; so does this operator."""
    if (pod.get("status") or {}).get("phase") != "Failed":
        return False
    if _disruption(pod) is not None or EXIT_PREEMPTED in _exit_codes(pod):
        return True
    summary = summary_of(pod)
    return summary is not None and summary.reason == Reason.PREEMPTED


@dataclass(frozen=True)
class Preemption:
    """The newest preemption of the gang: its worker 0's pod (one per preemption: every rank stops), the words of
    whoever took a pod off (the newest DisruptionTarget condition, else the trainer's) and the step checkpointed."""

    id: str
    reason: str
    message: str
    step: int | None = None
    started: str = ""  # the pod's creationTimestamp


def preemption_of(pods: list[dict[str, Any]]) -> Preemption | None:
    ended = [p for p in pods if was_preempted(p)]
    mine = [p for p in rank0_pods(ended)]
    if not mine:
        return None
    newest = max(mine, key=lambda p: ((p.get("metadata") or {}).get("creationTimestamp") or "", p["metadata"].get("uid", "")))
    said = [c for c in (_disruption(p) for p in ended) if c is not None]
    summary = summary_of(newest)
    steps = [s.steps for s in (summary_of(p) for p in mine) if s is not None and s.reason == Reason.PREEMPTED and s.steps]
    if said:
        words = max(said, key=lambda c: c.get("lastTransitionTime") or "")
        reason, message = str(words.get("reason") or DISRUPTION), str(words.get("message") or "")[:500]
    else:
        reason, message = Reason.PREEMPTED.value, summary.message if summary is not None else "stopped on SIGTERM"
    meta = newest["metadata"]
    return Preemption(
        str(meta.get("uid") or meta.get("name")),
        reason,
        message,
        max(steps, default=None),
        str(meta.get("creationTimestamp") or ""),
    )


def last_progress(log: str) -> ProgressLine | None:
    """The newest valid progress line of rank 0's log."""
    return last_line(log, ProgressLine)


def progress_status(line: ProgressLine) -> Progress:
    """status.progress from rank 0's newest progress line (already parsed through the contract's bounded model)."""
    step, total = min(line.step, line.totalSteps) if line.totalSteps else line.step, line.totalSteps
    percent = int(100 * step / total) if total else 0
    return Progress(
        step=step,
        totalSteps=total,
        epoch=line.epoch,
        summary=f"{step}/{total} ({percent}%)",
        loss=line.loss,
        learningRate=line.learningRate,
        tokensPerSecond=line.tokensPerSecond,
        eta=line.eta,
        trackingDegraded=line.trackingDegraded,
    )


def job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_ and condition.get("status") == "True":
            return dict(condition)
    return None


class State(StrEnum):
    """What the training Job is doing, as observed."""

    MISSING = "missing"  # no Job, or one being deleted
    SUSPENDED = "suspended"
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class Observation:
    """What the Job and its pods say, reduced to what the status needs."""

    state: State
    reason: str = ""
    message: str = ""
    ready: int = 0
    summary: Summary | None = None
    preemption: Preemption | None = None  # the newest preemption among this Job's pods


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


def _done(summary: Summary | None) -> str:
    """The Succeeded condition's message: what was written, and rank 0's notes (which adapter, an early stop)."""
    words = "adapter, metrics and _SUCCESS written"
    return f"{words}; {summary.message}" if summary is not None and summary.message else words


def observe(job: dict[str, Any] | None, pods: list[dict[str, Any]], workers: int) -> Observation:
    """What the Job and its pods say; a preempted worker is neither a failure nor a running one."""
    seen = _observe(job, [p for p in pods if not was_preempted(p)], workers)
    return dataclasses.replace(seen, preemption=preemption_of(pods)) if job is not None else seen


def _observe(job: dict[str, Any] | None, pods: list[dict[str, Any]], workers: int) -> Observation:
    if job is None or (job.get("metadata") or {}).get("deletionTimestamp"):
        return Observation(State.MISSING)
    if job_condition(job, "Complete") or job_condition(job, "SuccessCriteriaMet"):
        summaries = [s for s in (summary_of(p) for p in rank0_pods(pods)) if s and s.status == "Succeeded"]
        rank0 = next((s for s in summaries if s.metrics), summaries[0] if summaries else None)
        return Observation(State.SUCCEEDED, Reason.COMPLETED.value, _done(rank0), summary=rank0)
    failed = job_condition(job, "Failed") or job_condition(job, "FailureTarget")
    finished = next((s for s in (summary_of(p) for p in rank0_pods(pods)) if s and s.status == "Succeeded" and s.metrics), None)
    if failed and finished:  # worker 0 wrote the adapter and _SUCCESS; a worker failing afterwards changes nothing
        return Observation(State.SUCCEEDED, Reason.COMPLETED.value, _done(finished), summary=finished)
    if failed:
        if failed.get("reason") == "DeadlineExceeded":
            return Observation(State.FAILED, Reason.DEADLINE_EXCEEDED.value, "runPolicy.activeDeadlineSeconds passed")
        summaries = [s for s in (summary_of(p) for p in pods) if s and s.status == "Failed"]
        summaries.sort(key=lambda s: s.reason in (None, Reason.TRAINER_ERROR.value))
        if summaries:
            return Observation(State.FAILED, summaries[0].reason or Reason.TRAINER_ERROR.value, summaries[0].message)
        pending = pending_reason(pods)
        if pending[0] != Reason.PODS_PENDING.value:
            return Observation(State.FAILED, *pending)
        return Observation(State.FAILED, Reason.TRAINER_ERROR.value, failed.get("message") or "a worker failed without a summary")
    if (job.get("spec") or {}).get("suspend"):
        return Observation(State.SUSPENDED)
    running = [
        p for p in pods if (p.get("status") or {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]
    if len(running) >= workers:
        return Observation(State.RUNNING, ready=len(running))
    why, message = pending_reason(pods)
    return Observation(State.PENDING, why, message, ready=len(running))


def succeeded_fields(summary: Summary | None, output_uri: str, progress: Progress | None) -> dict[str, Any]:
    """The status fields of a finished job: metrics and steps from rank 0's (validated) summary, the adapter's URI
    from the spec."""
    out: dict[str, Any] = {"adapterUri": adapter_uri(output_uri)}
    if summary is not None and summary.metrics is not None:
        out["metrics"] = summary.metrics.model_dump(exclude_none=True)
    if summary is not None and summary.tracking is not None:
        out["tracking"] = summary.tracking.model_dump(exclude_none=True)
    steps = summary.steps if summary is not None else None
    if steps:
        done = {"step": steps, "totalSteps": steps, "summary": f"{steps}/{steps} (100%)"}
        out["progress"] = progress.model_copy(update=done) if progress is not None else Progress(**done)
    return out


def reads_spec(job: dict[str, Any], spec: FineTuneJobSpec) -> bool:
    """Whether the Job's pods read this spec: the digest the Job was made with (builders.SPEC_ANNOTATION) against
    the spec's now. A spec changed after the Job was made is never what its workers run."""
    annotations = (job.get("metadata") or {}).get("annotations") or {}
    return annotations.get(SPEC_ANNOTATION) in pods_digests(spec)
