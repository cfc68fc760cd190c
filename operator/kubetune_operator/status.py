"""From the Job, its pods and rank 0's words to a FineTuneJob status: pure functions, Kubernetes-style conditions."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from kubetune_api.conditions import TRAINER_FAILURE_REASONS, ConditionType, Reason
from kubetune_api.contract import TERMINATION_LIMIT, PreparingLine, ProgressLine, Summary, last_line, parse_summary
from kubetune_api.layout import adapter_uri
from kubetune_api.preflight_report import Report, parse_report

# Failures that another attempt cannot fix: the job fails at once instead of restarting the gang.
PERMANENT = frozenset(TRAINER_FAILURE_REASONS - {Reason.OUT_OF_MEMORY, Reason.TRAINER_ERROR, Reason.NAN_LOSS})


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    at: str | None = None,
) -> list[dict[str, Any]]:
    """Conditions with one set; lastTransitionTime (at, default now) moves only when the status flips."""
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
            "lastTransitionTime": (at or now()) if changed else old["lastTransitionTime"],  # type: ignore[index]
            "observedGeneration": generation,
        }
    )
    order = [t.value for t in ConditionType]
    return sorted(out, key=lambda c: order.index(c["type"]) if c["type"] in order else len(order))


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


def last_progress(log: str) -> ProgressLine | None:
    """The newest valid progress line of rank 0's log."""
    return last_line(log, ProgressLine)


def preparing_status(line: PreparingLine) -> dict[str, Any]:
    """status.preparing from the preflight's newest `preparing` line."""
    return {
        "records": line.records,
        "totalRecords": line.of,
        "tokens": line.tokens,
        "recordsPerSecond": line.recordsPerSecond,
        "etaSeconds": line.etaSeconds,
        "summary": line.summary(),
    }


def progress_status(line: ProgressLine) -> dict[str, Any]:
    step, total = min(line.step, line.totalSteps) if line.totalSteps else line.step, line.totalSteps
    percent = int(100 * step / total) if total else 0
    out: dict[str, Any] = {"step": step, "totalSteps": total, "epoch": line.epoch, "summary": f"{step}/{total} ({percent}%)"}
    for key in ("loss", "learningRate", "tokensPerSecond", "eta"):
        value = getattr(line, key)
        if value is not None:
            out[key] = value
    return out


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
    summary: Summary | None = None


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
    if job is None or (job.get("metadata") or {}).get("deletionTimestamp"):
        return Observation("missing")
    if _job_condition(job, "Complete") or _job_condition(job, "SuccessCriteriaMet"):
        summaries = [s for s in (summary_of(p) for p in rank0_pods(pods)) if s and s.status == "Succeeded"]
        rank0 = next((s for s in summaries if s.metrics), summaries[0] if summaries else None)
        return Observation("succeeded", Reason.COMPLETED.value, _done(rank0), summary=rank0)
    failed = _job_condition(job, "Failed") or _job_condition(job, "FailureTarget")
    finished = next((s for s in (summary_of(p) for p in rank0_pods(pods)) if s and s.status == "Succeeded" and s.metrics), None)
    if failed and finished:  # worker 0 wrote the adapter and _SUCCESS; a worker failing afterwards changes nothing
        return Observation("succeeded", Reason.COMPLETED.value, _done(finished), summary=finished)
    if failed:
        if failed.get("reason") == "DeadlineExceeded":
            return Observation("failed", Reason.DEADLINE_EXCEEDED.value, "runPolicy.activeDeadlineSeconds passed")
        summaries = [s for s in (summary_of(p) for p in pods) if s and s.status == "Failed"]
        summaries.sort(key=lambda s: s.reason in (None, Reason.TRAINER_ERROR.value))
        if summaries:
            return Observation("failed", summaries[0].reason or Reason.TRAINER_ERROR.value, summaries[0].message)
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


def succeeded_fields(summary: Summary | None, output_uri: str, progress: dict[str, Any] | None) -> dict[str, Any]:
    """The status fields of a finished job: metrics and steps from rank 0's (validated) summary, the adapter's URI
    from the spec."""
    out: dict[str, Any] = {"adapterUri": adapter_uri(output_uri)}
    if summary is not None and summary.metrics is not None:
        out["metrics"] = summary.metrics.model_dump(exclude_none=True)
    steps = summary.steps if summary is not None else None
    if steps:
        out["progress"] = {**(progress or {}), "step": steps, "totalSteps": steps, "summary": f"{steps}/{steps} (100%)"}
    return out


# the preflight

GENERATION_ANNOTATION = "kubetune.dev/generation"  # the spec's generation a preflight Job checked
# Reasons a preflight report may give; any other word from the pod is PreflightError
PREFLIGHT_REASONS = frozenset(
    {
        Reason.MODEL_MISSING,
        Reason.DATASET_MISSING,
        Reason.ACCESS_DENIED,
        Reason.EMPTY_DATASET,
        Reason.BAD_RECORD,
        Reason.OUTPUT_EXISTS,
        Reason.UNSAFE_OBJECT_KEY,
        Reason.DATASET_TOO_LARGE,
        Reason.WONT_FIT,
        Reason.TRAINER_ERROR,
    }
)


@dataclass(frozen=True)
class PreflightOutcome:
    state: str  # running | passed | failed
    reason: str
    message: str
    report: Report | None = None


def preflight_stale(job: dict[str, Any], generation: int | None) -> bool:
    annotations = (job.get("metadata") or {}).get("annotations") or {}
    return annotations.get(GENERATION_ANNOTATION) not in (None, str(generation))


def _report_of(pods: list[dict[str, Any]]) -> Report | None:
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            message = ((status.get("state") or {}).get("terminated") or {}).get("message") or ""
            found = parse_report(message) if isinstance(message, str) else None
            if found is not None:
                return found
    return None


def preflight_outcome(job: dict[str, Any], pods: list[dict[str, Any]]) -> PreflightOutcome:
    """How the preflight Job went, from its condition and its pod's report (the pod's word: parsed, bounded, and
    its reason kept only if it is one a preflight gives)."""
    done = _job_condition(job, "Complete") or _job_condition(job, "SuccessCriteriaMet")
    failed = _job_condition(job, "Failed") or _job_condition(job, "FailureTarget")
    report = _report_of(pods)
    if done and report is not None and report.passed:
        return PreflightOutcome("passed", Reason.PREFLIGHT_PASSED.value, preflight_summary(report), report)
    if done or failed:
        if report is not None and not report.passed:
            reason = report.reason if report.reason in PREFLIGHT_REASONS else Reason.PREFLIGHT_ERROR.value
            return PreflightOutcome("failed", reason, f"preflight: {report.message or 'a check failed'}", report)
        if failed and failed.get("reason") == "DeadlineExceeded":
            return PreflightOutcome("failed", Reason.PREFLIGHT_ERROR.value, "the preflight ran past its deadline")
        why = pending_reason(pods)
        if why[0] != Reason.PODS_PENDING.value:
            return PreflightOutcome("failed", *why)
        return PreflightOutcome(
            "failed", Reason.PREFLIGHT_ERROR.value, "the preflight pod ended without a report; its log says why"
        )
    why = pending_reason(pods)
    if why[0] == Reason.PODS_PENDING.value:
        return PreflightOutcome("running", Reason.PREFLIGHT_RUNNING.value, "the preflight checks are running")
    return PreflightOutcome("running", *why)


def preflight_summary(report: Report) -> str:
    words = ["every check passed"]
    if report.totalSteps is not None:
        words.append(f"{report.totalSteps} steps")
    if report.memoryPerGpuBytes is not None:
        words.append(f"about {report.memoryPerGpuBytes / 2**30:.1f} GiB per GPU")
    if report.gpuHours is not None:
        words.append(f"about {report.gpuHours:.2f} GPU-hours")
    return "; ".join(words)


def report_status(report: Report) -> dict[str, Any]:
    """status.preflight: the report as validated (never more than its model allows)."""
    return report.model_dump(mode="json", exclude_none=True)


# the ledger


def _time(value: Any) -> datetime.datetime | None:
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
            start = _time(running.get("startedAt") or ended.get("startedAt"))
            end = _time(ended.get("finishedAt")) if ended else at
            if start is not None and end is not None and end > start:
                total += (end - start).total_seconds()
    return total


def ledger(
    previous: dict[str, Any] | None,
    running: float,
    attempt: int,
    *,
    restarting: bool,
    failed: bool,
    final: bool = False,
    gpus: int,
    gpu_type: str,
    price: float,
) -> dict[str, Any]:
    """status.usage from the attempts before (kept in the status) and this attempt's pod seconds. An attempt that
    ends in a gang restart is added to the lost time once (its attempt number, not a count, decides); a failed end
    loses the last attempt too. While an attempt runs its time moves in whole minutes, so the status is not
    rewritten for the ledger alone at every sync; an attempt's end is counted to the second."""
    prev = previous or {}
    if not (restarting or failed or final):
        running = running // 60 * 60
    restarted = float(prev.get("restartedPodSeconds") or 0.0)
    closed = int(prev.get("closedAttempts") or 0)
    if attempt < closed:
        running = 0.0  # this attempt ended in a restart and was counted then (its pods may still be going away)
    elif restarting:
        restarted, closed, running = restarted + running, attempt + 1, 0.0
    total = restarted + running
    lost = restarted + (running if failed else 0.0)
    hours = total * gpus / 3600
    out: dict[str, Any] = {
        "podSeconds": round(total, 1),
        "gpuHours": round(hours, 4),
        "lostGpuHours": round(lost * gpus / 3600, 4),
        "restartedPodSeconds": round(restarted, 1),
        "closedAttempts": closed,
    }
    if total > 0:
        out["lostShare"] = round(lost / total, 4)
    if gpus and gpu_type:
        out["gpuType"] = gpu_type
    if gpus and price:
        out["estimatedCost"] = round(hours * price, 2)
    return out
