"""The reconcile's decision (kubetune_operator.transition.transition), table-tested across every phase: the
preflight (created, running, stale, passed, failed), the training Job (created, queued, suspended, resumed,
pending with the scheduler's words, running with progress, succeeded, failed for good, restarted once per
attempt) and the ledger. Pure: no API server; the cluster tests run the same function for real."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from kubetune_api.contract import PreparingLine
from kubetune_api.status import FineTuneJobStatus, Progress
from kubetune_operator import polling
from kubetune_operator.preflight_outcome import preparing_status
from kubetune_operator.transition import (
    CountRestart,
    CreateJob,
    CreatePreflight,
    DeleteJob,
    DeletePreflight,
    Emit,
    EnsureChildren,
    Expire,
    Observed,
    SuspendJob,
    WriteStatus,
    finished,
    invalid,
    refused,
    transition,
    typed_status,
)

from .operator_helpers import plan_for

NOW = datetime.datetime(2026, 11, 26, 12, 0, 0, tzinfo=datetime.UTC)
GEN = 1


def plan(**changes: Any) -> Any:
    return plan_for(**{"spec.runPolicy": {"preflight": True, **changes.pop("run", {})}, **changes})


def job(
    *, uid: str = "job-1", condition: str | None = None, suspend: bool = False, attempt: int = 0, reason: str = ""
) -> dict[str, Any]:
    conditions = [{"type": condition, "status": "True", "reason": reason}] if condition else []
    return {
        "metadata": {"uid": uid, "annotations": {"kubetune.dev/attempt": str(attempt), "kubetune.dev/generation": str(GEN)}},
        "spec": {"suspend": suspend},
        "status": {"conditions": conditions},
    }


def pod(
    index: int, phase: str = "Running", started: str = "2026-11-26T11:00:00Z", message: str = "", ended: str = ""
) -> dict[str, Any]:
    state: dict[str, Any] = {"running": {"startedAt": started}}
    if ended or message:
        state = {"terminated": {"startedAt": started, "finishedAt": ended or "2026-11-26T11:30:00Z", "message": message}}
    return {
        "metadata": {"name": f"job-{index}", "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
        "status": {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}]},
    }


def pending_pod() -> dict[str, Any]:
    return {
        "metadata": {"name": "job-0"},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "message": "0/2 nodes have 16 GPUs"}],
        },
    }


def report(passed: bool, reason: str = "", message: str = "") -> str:
    body: dict[str, Any] = {"passed": passed, "totalSteps": 40, "memoryPerGpuBytes": 2**30}
    if not passed:
        body.update(reason=reason, message=message)
    return json.dumps(body)


def summary(status: str, reason: str = "", message: str = "") -> str:
    body: dict[str, Any] = {"event": "summary", "status": status}
    if status == "Succeeded":
        body.update(metrics={"evalLoss": 1.2, "baseEvalLoss": 2.0}, steps=40)
    else:
        body.update(reason=reason, message=message)
    return json.dumps(body)


def passed_preflight() -> dict[str, Any]:
    return {
        "conditions": [
            {
                "type": "Preflight",
                "status": "True",
                "reason": "PreflightPassed",
                "message": "",
                "lastTransitionTime": "2026-11-26T10:00:00Z",
                "observedGeneration": GEN,
            }
        ]
    }


def run(p: Any, previous: dict[str, Any] | None = None, **seen: Any) -> tuple[dict[str, Any], list[Any]]:
    """The status and the actions of one transition, less those every sync has (the children ensured, the phase
    change announced after the status is written): those are tested on their own below."""
    status, actions = transition(p, Observed(GEN, NOW, **seen), FineTuneJobStatus.model_validate(previous or {}))
    return status.model_dump(mode="json", exclude_none=True), core(actions)


def core(actions: list[Any]) -> list[Any]:
    out = [a for a in actions if not isinstance(a, EnsureChildren)]
    if out and isinstance(out[-1], Emit) and " -> " in out[-1].message:  # the phase change
        out.pop()
        if out and isinstance(out[-1], WriteStatus):
            out.pop()
    return out


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


# the preflight


def test_a_new_job_gets_a_preflight_and_no_training_job() -> None:
    status, actions = run(plan())
    assert actions == [CreatePreflight()]
    assert status["phase"] == "Preflight" and cond(status, "Preflight")["reason"] == "PodsPending"  # until its pod runs
    assert cond(status, "Validated")["status"] == "True" and status["observedGeneration"] == GEN


def test_a_preflight_running_holds_the_job() -> None:
    status, actions = run(plan(), preflight=job(uid="pf"), preflight_pods=[pod(0)])
    assert actions == [] and status["phase"] == "Preflight"


@pytest.mark.parametrize(
    ("pods", "reason", "polled"),
    [
        ([], "PodsPending", "waiting"),  # the Job made no pod yet
        ([pod(0, "Pending")], "PodsPending", "waiting"),
        ([pending_pod()], "Unschedulable", "waiting"),  # in the scheduler's words
        ([pod(0)], "PreflightRunning", "busy"),  # its preparing lines are read every sync interval
    ],
)
def test_a_waiting_preflight_says_why_and_is_looked_at_less_often(pods: list[Any], reason: str, polled: str) -> None:
    status, _ = run(plan(), preflight=job(uid="pf"), preflight_pods=pods)
    assert cond(status, "Preflight")["reason"] == reason
    assert (polling.busy(status), polling.waiting(status, {})) == (polled == "busy", polled == "waiting")


@pytest.mark.parametrize(
    ("status", "spec", "polled"),
    [
        ({"phase": "Running"}, {}, "busy"),
        ({"phase": "Pending"}, {}, "waiting"),
        ({}, {}, "waiting"),  # never synced: its first sync failed and is looked at again
        ({"phase": "Queued"}, {}, None),  # Kueue's admission is an event of the Job
        ({"phase": "Suspended"}, {}, None),
        ({"phase": "Succeeded"}, {}, None),
        ({"phase": "Failed"}, {"runPolicy": {"ttlSecondsAfterFinished": 60}}, "waiting"),
    ],
)
def test_which_jobs_are_looked_at_without_an_event(status: dict[str, Any], spec: dict[str, Any], polled: str | None) -> None:
    assert (polling.busy(status), polling.waiting(status, spec)) == (polled == "busy", polled == "waiting")


def test_preparing_the_dataset_shows_in_the_status_while_the_preflight_runs() -> None:
    line = PreparingLine(event="preparing", records=40_000, of=100_000, tokens=24_000_000, recordsPerSecond=2000, etaSeconds=30)
    status, _ = run(plan(), preflight=job(uid="pf"), preflight_pods=[pod(0)], preparing=preparing_status(line))
    assert status["preparing"] == {
        "records": 40_000,
        "totalRecords": 100_000,
        "tokens": 24_000_000,
        "recordsPerSecond": 2000.0,
        "etaSeconds": 30.0,
        "summary": "preparing the dataset: 40,000 of 100,000 records (40%), 24,000,000 tokens, 2,000 records/s, about 30 s left",
    }
    assert cond(status, "Preflight")["message"] == status["preparing"]["summary"]
    # no newer line read this sync (reads are at most one per interval): the last one stands
    again, _ = run(plan(), status, preflight=job(uid="pf"), preflight_pods=[pod(0)])
    assert again["preparing"] == status["preparing"] and cond(again, "Preflight")["message"] == status["preparing"]["summary"]
    # once the preflight has passed the report has the totals; preparing is gone
    done = job(uid="pf", condition="Complete")
    passed, _ = run(plan(), status, preflight=done, preflight_pods=[pod(0, "Succeeded", message=report(True))])
    assert "preparing" not in passed and passed["preflight"]["totalSteps"] == 40


def test_a_preflight_for_an_older_spec_is_replaced() -> None:
    stale = job(uid="pf")
    stale["metadata"]["annotations"]["kubetune.dev/generation"] = "0"
    _, actions = run(plan(), preflight=stale)
    assert actions == [DeletePreflight("pf"), CreatePreflight()]


def test_a_passed_preflight_releases_the_training_job() -> None:
    done = job(uid="pf", condition="Complete")
    status, actions = run(plan(), preflight=done, preflight_pods=[pod(0, "Succeeded", message=report(True))])
    assert actions == [CreateJob()]
    assert status["phase"] == "Pending" and cond(status, "Preflight")["status"] == "True"
    assert status["preflight"]["totalSteps"] == 40


def test_a_passed_preflight_with_a_queue_waits_for_the_queue() -> None:
    p = plan(**{"metadata.labels": {"kueue.x-k8s.io/queue-name": "gpus"}})
    done = job(uid="pf", condition="Complete")
    status, actions = run(p, preflight=done, preflight_pods=[pod(0, "Succeeded", message=report(True))])
    assert actions == [CreateJob()] and status["phase"] == "Queued" and cond(status, "Queued")["reason"] == "WaitingForQueue"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (report(False, "WontFit", "needs about 90 GiB per GPU"), "WontFit"),
        (report(False, "BadRecord", "train.jsonl record 7: missing field 'completion'"), "BadRecord"),
        (report(False, "AdapterMismatch", "model.adapter: lora.r is 16 here, 8 in the adapter"), "AdapterMismatch"),
        (report(False, "TargetModulesNotFound", "lora.targetModules matches no module"), "TargetModulesNotFound"),
        (report(False, "Pwned", "a reason no preflight gives"), "PreflightError"),  # the pod's word is not trusted
        (report(False, "NaNLoss", "a reason only training gives"), "PreflightError"),
        ("not a report", "PreflightError"),
    ],
)
def test_a_failed_preflight_fails_the_job_without_a_training_job(message: str, reason: str) -> None:
    failed = job(uid="pf", condition="Failed")
    status, actions = run(plan(), preflight=failed, preflight_pods=[pod(0, "Failed", message=message)])
    assert actions == [] and status["phase"] == "Failed"
    assert cond(status, "Failed")["reason"] == reason and cond(status, "Preflight")["reason"] == reason


def test_a_passed_preflight_is_not_run_again_after_a_restart() -> None:
    status, actions = run(plan(), previous={**passed_preflight(), "restarts": 1})
    assert actions == [CreateJob()] and status["phase"] == "Pending"


def test_a_job_without_preflight_creates_its_job_at_once() -> None:
    _, actions = run(plan(run={"preflight": False}))
    assert actions == [CreateJob()]


# the training Job


def test_a_suspended_job_stays_suspended_and_resumes() -> None:
    p = plan(run={"suspend": True})
    status, actions = run(p, previous=passed_preflight(), job=job(suspend=True))
    assert actions == [] and status["phase"] == "Suspended" and cond(status, "Suspended")["status"] == "True"
    status, actions = run(plan(), previous=status, job=job(suspend=True))
    assert actions == [SuspendJob(False, "job-1")] and status["phase"] == "Pending"
    assert cond(status, "Suspended")["status"] == "False"


def test_a_suspended_job_starts_no_preflight_until_it_is_resumed() -> None:
    status, actions = run(plan(run={"suspend": True}))
    assert actions == [] and status["phase"] == "Suspended"
    assert cond(status, "Suspended")["status"] == "True" and "preflight runs when" in cond(status, "Suspended")["message"]
    resumed, actions = run(plan(), previous=status)
    assert actions == [CreatePreflight()] and resumed["phase"] == "Preflight"
    assert cond(resumed, "Suspended")["status"] == "False"
    # a preflight already running when the job is suspended finishes, and its outcome counts
    done = job(uid="pf", condition="Complete")
    passed, actions = run(
        plan(run={"suspend": True}), previous=resumed, preflight=done, preflight_pods=[pod(0, "Succeeded", message=report(True))]
    )
    assert cond(passed, "Preflight")["status"] == "True" and actions == [CreateJob()] and passed["phase"] == "Suspended"


@pytest.mark.parametrize("run_policy", [{"suspend": True}, {}], ids=["suspended", "queued"])
def test_the_sync_that_creates_a_waiting_job_leaves_the_next_one_nothing_to_write(run_policy: dict[str, Any]) -> None:
    """A suspended or queued job costs one status write: the next sync (its Job's first event) finds it current."""
    p = plan(
        run={"preflight": False, **run_policy}, **({} if run_policy else {"metadata.labels": {"kueue.x-k8s.io/queue-name": "q"}})
    )
    first, actions = transition(p, Observed(GEN, NOW), FineTuneJobStatus())
    assert CreateJob() in actions
    later = datetime.datetime(2026, 11, 26, 12, 0, 30, tzinfo=datetime.UTC)
    second, actions = transition(p, Observed(GEN, later, job=job(suspend=True)), first)
    assert second == first and not [a for a in actions if not isinstance(a, EnsureChildren)]


def test_suspending_a_running_job_suspends_its_job() -> None:
    _, actions = run(plan(run={"suspend": True}), previous=passed_preflight(), job=job(), pods=[pod(0)])
    assert actions == [SuspendJob(True, "job-1")]


def test_pending_workers_say_why_in_the_schedulers_words() -> None:
    status, actions = run(plan(), previous=passed_preflight(), job=job(), pods=[pending_pod()])
    assert actions == [] and status["phase"] == "Pending"
    assert cond(status, "Running")["reason"] == "Unschedulable" and "16 GPUs" in cond(status, "Running")["message"]


def test_running_workers_report_progress_and_usage_in_whole_minutes() -> None:
    progress = Progress(step=10, totalSteps=40, epoch=0.25, summary="10/40 (25%)")
    status, _ = run(
        plan(), previous=passed_preflight(), job=job(), pods=[pod(0, started="2026-11-26T11:58:30Z")], progress=progress
    )
    assert status["phase"] == "Running" and status["progress"]["summary"] == "10/40 (25%)"
    assert status["startTime"] == "2026-11-26T12:00:00Z" and status["usage"]["podSeconds"] == 60.0


def test_a_finished_job_succeeds_with_its_metrics() -> None:
    done = job(condition="Complete")
    status, actions = run(plan(), previous=passed_preflight(), job=done, pods=[pod(0, "Succeeded", message=summary("Succeeded"))])
    assert actions == [] and status["phase"] == "Succeeded" and status["metrics"]["evalLoss"] == 1.2
    assert cond(status, "Succeeded")["reason"] == "Completed" and status["usage"]["podSeconds"] == 1800.0


def test_a_permanent_failure_fails_at_once() -> None:
    failed = job(condition="Failed")
    pods = [pod(0, "Failed", message=summary("Failed", "DatasetMissing", "s3://data/x.jsonl not found"))]
    status, actions = run(plan(), previous=passed_preflight(), job=failed, pods=pods)
    assert actions == [] and status["phase"] == "Failed" and cond(status, "Failed")["reason"] == "DatasetMissing"
    assert status["usage"]["lostShare"] == 1.0


def test_a_transient_failure_restarts_the_gang_once_per_attempt() -> None:
    failed = job(condition="Failed", attempt=0)
    pods = [pod(0, "Failed", message=summary("Failed", "OutOfMemory", "CUDA out of memory")), pod(1)]
    status, actions = run(plan(), previous=passed_preflight(), job=failed, pods=pods)
    assert actions == [WriteStatus(), DeleteJob("job-1"), Emit("GangRestarting", actions[2].message, True), CountRestart()]
    assert status["restarts"] == 1 and status["phase"] == "Pending" and status["lastFailureReason"] == "OutOfMemory"
    assert status["usage"]["closedAttempts"] == 1 and status["usage"]["lostShare"] == 1.0
    # the same failed Job seen again (the delete failed and is retried): counted once
    again, _ = run(plan(), previous=status, job=failed, pods=pods)
    assert again["restarts"] == 1 and again["usage"]["restartedPodSeconds"] == status["usage"]["restartedPodSeconds"]


def test_the_gang_restarts_up_to_the_backoff_limit() -> None:
    failed = job(condition="Failed", attempt=3)
    pods = [pod(0, "Failed", message=summary("Failed", "OutOfMemory", "CUDA out of memory"))]
    status, actions = run(plan(run={"backoffLimit": 3}), previous={**passed_preflight(), "restarts": 3}, job=failed, pods=pods)
    assert actions == [] and cond(status, "Failed")["reason"] == "BackoffLimitExceeded"


def test_a_deadline_fails_the_job() -> None:
    failed = job(condition="Failed", reason="DeadlineExceeded")
    status, _ = run(plan(), previous=passed_preflight(), job=failed, pods=[])
    assert cond(status, "Failed")["reason"] == "DeadlineExceeded"


def test_an_old_gang_going_away_waits() -> None:
    going = job()
    going["metadata"]["deletionTimestamp"] = "2026-11-26T11:59:00Z"
    status, actions = run(plan(), previous={**passed_preflight(), "restarts": 1}, job=going, pods=[pod(0)])
    assert actions == [] and cond(status, "Running")["reason"] == "GangRestarting"


def test_conditions_keep_their_time_until_they_flip() -> None:
    first, _ = run(plan())
    later, _ = transition(plan(), Observed(GEN, NOW + datetime.timedelta(minutes=5)), FineTuneJobStatus.model_validate(first))
    assert later.conditions[0].lastTransitionTime == cond(first, later.conditions[0].type)["lastTransitionTime"]


# what every sync does, and the decisions outside the training path (invalid, refused, finished)


def test_the_children_are_ensured_first_and_created_at_once_for_a_new_gang() -> None:
    _, first = transition(plan(run={"preflight": False}), Observed(GEN, NOW), FineTuneJobStatus())
    assert first[0] == EnsureChildren(fresh=True)
    _, later = transition(
        plan(),
        Observed(GEN, NOW, job=job(), pods=[pod(0), pod(1)]),
        FineTuneJobStatus.model_validate({**passed_preflight(), "phase": "Pending"}),
    )
    assert later[0] == EnsureChildren(fresh=False)  # an existing gang's children are read and put back if changed
    waiting, _ = transition(plan(), Observed(GEN, NOW), FineTuneJobStatus())
    assert waiting.phase == "Preflight"
    _, again = transition(plan(), Observed(GEN, NOW, preflight=job(uid="pf"), preflight_pods=[pending_pod()]), waiting)
    assert again[0] == EnsureChildren(fresh=False)  # a job waiting for its preflight does not create them at every sync


@pytest.mark.parametrize(
    ("previous", "seen", "event"),
    [
        ({}, {}, ("PodsPending", "New -> Preflight", False)),
        (
            {"phase": "Running"},
            {"job": job(condition="Failed"), "pods": [pod(0, "Failed", message=summary("Failed", "DatasetMissing", "gone"))]},
            ("DatasetMissing", "Running -> Failed: gone", True),
        ),
    ],
)
def test_a_phase_change_is_announced_after_the_status_that_says_it(
    previous: dict[str, Any], seen: dict[str, Any], event: tuple[str, str, bool]
) -> None:
    before = {**passed_preflight(), **previous} if previous else {}
    _, actions = transition(plan(), Observed(GEN, NOW, **seen), FineTuneJobStatus.model_validate(before))
    *_, written, said = actions
    assert isinstance(written, WriteStatus) and isinstance(said, Emit)
    assert (said.reason, said.warning) == (event[0], event[2]) and said.message.startswith(event[1])


def test_no_event_when_the_phase_stays() -> None:
    status, _ = transition(plan(), Observed(GEN, NOW), FineTuneJobStatus())
    _, again = transition(plan(), Observed(GEN, NOW, preflight=job(), preflight_pods=[pending_pod()]), status)
    assert not any(isinstance(a, Emit) for a in again)


@pytest.mark.parametrize(
    ("seen", "reason", "stops"),
    [
        ({"denied": ("spec.model.uri: outside readPrefixes",)}, "PolicyDenied", False),
        ({"denied": ("spec.model.uri: outside readPrefixes",), "job": job()}, "PolicyDenied", True),
        ({"spec_changed": True, "job": job()}, "SpecChanged", True),
    ],
)
def test_the_policy_and_a_changed_spec_refuse_before_any_child_is_made(seen: dict[str, Any], reason: str, stops: bool) -> None:
    status, actions = transition(plan(), Observed(GEN, NOW, **seen), FineTuneJobStatus.model_validate(passed_preflight()))
    assert status.phase == "Failed" and status.completionTime is not None
    assert cond(status.model_dump(mode="json"), "Failed")["reason"] == reason
    assert not any(isinstance(a, (EnsureChildren, CreateJob, CreatePreflight)) for a in actions)
    assert (DeleteJob("job-1") in actions) == stops  # running workers stop too


@pytest.mark.parametrize(
    ("previous", "phase", "conditions"),
    [
        ({}, "Failed", {"Validated": ("False", "InvalidSpec"), "Failed": ("True", "InvalidSpec")}),
        ({"phase": "Running"}, "Failed", {"Validated": ("False", "InvalidSpec"), "Failed": ("True", "InvalidSpec")}),
    ],
)
def test_an_invalid_spec_fails_in_the_offline_words(previous: dict[str, Any], phase: str, conditions: dict[str, Any]) -> None:
    new, actions = invalid(FineTuneJobStatus.model_validate(previous), "spec.lora.r: must be > 0", 3, NOW)
    assert new.phase == phase and new.observedGeneration == 3
    for type_, (value, reason) in conditions.items():
        found = cond(new.model_dump(mode="json"), type_)
        assert (found["status"], found["reason"]) == (value, reason) and found["message"] == "spec.lora.r: must be > 0"
    assert isinstance(actions[-1], Emit) and actions[-1].warning


def test_a_refusal_found_while_carrying_out_fails_the_job() -> None:
    new, actions = refused(FineTuneJobStatus.model_validate({"phase": "Pending"}), "NameConflict", "ConfigMap x exists", 1, NOW)
    assert new.phase == "Failed" and cond(new.model_dump(mode="json"), "Running")["reason"] == "NameConflict"
    assert actions == [WriteStatus(), Emit("NameConflict", "Pending -> Failed: ConfigMap x exists", True)]


@pytest.mark.parametrize(
    ("ttl", "completed", "expired"),
    [
        (None, "2026-11-26T11:00:00Z", False),  # no TTL: kept
        (3600, "2026-11-26T11:30:00Z", False),  # 30 minutes of 60
        (3600, "2026-11-26T11:00:00Z", True),
        (0, "2026-11-26T12:00:00Z", True),
        (0, None, False),  # never completed: nothing to count from
    ],
)
def test_a_finished_job_is_deleted_after_its_ttl(ttl: int | None, completed: str | None, expired: bool) -> None:
    previous = FineTuneJobStatus.model_validate({"phase": "Succeeded", "completionTime": completed})
    assert finished(previous, ttl, "uid-1", NOW) == ([Expire("uid-1")] if expired else [])


@pytest.mark.parametrize(
    ("written", "phase"),
    [
        ({"phase": "Running", "restarts": 2}, "Running"),
        ({"phase": "Running", "fromANewerVersion": 1}, "Running"),  # unknown fields are dropped
        ({"phase": "NoSuchPhase"}, None),  # unreadable: starts afresh
        ({}, None),
    ],
)
def test_the_written_status_is_read_back_typed(written: dict[str, Any], phase: str | None) -> None:
    assert typed_status(written).phase == phase
