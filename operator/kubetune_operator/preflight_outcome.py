"""How the preflight Job went, from its condition and its pod's report; and status.preparing while it runs."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kubetune_api.conditions import TRAINER_FAILURE_REASONS, Reason
from kubetune_api.contract import PreparingLine
from kubetune_api.preflight_report import Report, parse_report
from kubetune_api.status import Preparing

from .observation import job_condition, pending_reason


def preparing_status(line: PreparingLine) -> Preparing:
    """status.preparing from the preflight's newest `preparing` line."""
    return Preparing(
        records=line.records,
        totalRecords=line.of,
        tokens=line.tokens,
        recordsPerSecond=line.recordsPerSecond,
        etaSeconds=line.etaSeconds,
        summary=line.summary(),
    )


GENERATION_ANNOTATION = "kubetune.dev/generation"  # the spec's generation a preflight Job checked


# Reasons a preflight report may give: any the trainer fails with, but those only a training run can meet; any other
# word from the pod is PreflightError
TRAINING_ONLY = frozenset({Reason.NAN_LOSS, Reason.BELOW_THRESHOLD, Reason.PREEMPTED, Reason.CHECKPOINT_MISMATCH})
PREFLIGHT_REASONS = TRAINER_FAILURE_REASONS - TRAINING_ONLY


class PreflightState(StrEnum):
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"


@dataclass(frozen=True)
class PreflightOutcome:
    state: PreflightState
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
    done = job_condition(job, "Complete") or job_condition(job, "SuccessCriteriaMet")
    failed = job_condition(job, "Failed") or job_condition(job, "FailureTarget")
    report = _report_of(pods)
    if done and report is not None and report.passed:
        return PreflightOutcome(PreflightState.PASSED, Reason.PREFLIGHT_PASSED.value, preflight_summary(report), report)
    if done or failed:
        if report is not None and not report.passed:
            reason = report.reason if report.reason in PREFLIGHT_REASONS else Reason.PREFLIGHT_ERROR.value
            return PreflightOutcome(PreflightState.FAILED, reason, f"preflight: {report.message or 'a check failed'}", report)
        if failed and failed.get("reason") == "DeadlineExceeded":
            return PreflightOutcome(PreflightState.FAILED, Reason.PREFLIGHT_ERROR.value, "the preflight ran past its deadline")
        why = pending_reason(pods)
        if why[0] != Reason.PODS_PENDING.value:
            return PreflightOutcome(PreflightState.FAILED, *why)
        return PreflightOutcome(
            PreflightState.FAILED, Reason.PREFLIGHT_ERROR.value, "the preflight pod ended without a report; its log says why"
        )
    why = pending_reason(pods)
    if why[0] != Reason.PODS_PENDING.value:  # the scheduler's or the kubelet's words
        return PreflightOutcome(PreflightState.RUNNING, *why)
    if not any((pod.get("status") or {}).get("phase") == "Running" for pod in pods):
        return PreflightOutcome(PreflightState.RUNNING, Reason.PODS_PENDING.value, "waiting for the preflight pod to start")
    # running: the operator reads its progress (status.preparing) every sync interval
    return PreflightOutcome(PreflightState.RUNNING, Reason.PREFLIGHT_RUNNING.value, "the preflight checks are running")


def preflight_summary(report: Report) -> str:
    words = ["every check passed"]
    if report.totalSteps is not None:
        words.append(f"{report.totalSteps} steps")
    if report.memoryPerGpuBytes is not None:
        words.append(f"about {report.memoryPerGpuBytes / 2**30:.1f} GiB per GPU")
    if report.gpuHours is not None:
        words.append(f"about {report.gpuHours:.2f} GPU-hours")
    words += [f"warning: {w}" for w in report.warnings]
    return "; ".join(words)
