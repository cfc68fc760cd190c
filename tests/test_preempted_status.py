"""Preempted is not failed (issue 25), in the reconcile's decision: a worker taken off its node (the Eviction API,
the scheduler's preemption, a drain) or stopped because a peer was, having checkpointed, is counted as a preemption,
not a restart; the queue taking the workers back (Kueue suspends the Job) waits Queued and says why; the newest
checkpoint reaches status.lastCheckpoint and the Job's and pods' annotations; the ledger keeps preempted time apart
from lost time. Pure, as tests/test_transition.py; tests/test_preemption_cluster.py runs it for real."""

from __future__ import annotations

import json
from typing import Any

from kubetune_api.contract import EXIT_PREEMPTED
from kubetune_operator import builders
from kubetune_operator.transition import Annotate, DeleteJob, Emit

from .test_transition import cond, job, passed_preflight, plan, pod, run

EVICTED = {
    "type": "DisruptionTarget",
    "status": "True",
    "reason": "EvictionByEvictionAPI",
    "message": "Eviction API: evicting",
    "lastTransitionTime": "2026-11-26T11:30:00Z",
}


def preempted_pod(
    index: int, uid: str, *, evicted: bool = False, step: int | None = 12, code: int = EXIT_PREEMPTED
) -> dict[str, Any]:
    said = {"event": "summary", "status": "Failed", "reason": "Preempted", "message": f"rank 0: stopped at step {step}"}
    if step:
        said["steps"] = step
    out = pod(index, "Failed", message=json.dumps(said), started="2026-11-26T11:00:00Z", ended="2026-11-26T11:30:00Z")
    out["metadata"].update(uid=uid, creationTimestamp="2026-11-26T11:00:00Z")
    out["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] = code
    if evicted:
        out["status"]["conditions"] = [EVICTED]
    return out


def replacement(index: int) -> dict[str, Any]:
    out = pod(index, "Pending")
    out["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "ContainerCreating"}}
    out["metadata"]["creationTimestamp"] = "2026-11-26T11:31:00Z"
    return out


def test_the_training_job_does_not_count_a_preempted_worker_and_gives_it_time_to_checkpoint() -> None:
    p = plan(run={"terminationGracePeriodSeconds": 300})
    built = builders.build_job(p)
    rules = built["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    assert any(r.get("onExitCodes", {}).get("values") == [EXIT_PREEMPTED] and r["action"] == "Ignore" for r in rules)
    assert built["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 300
    assert builders.build_job(plan())["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120  # the chart's


def test_an_evicted_gang_is_counted_once_as_a_preemption_not_a_restart() -> None:
    pods = [preempted_pod(0, "p0"), preempted_pod(1, "p1", evicted=True), replacement(0), replacement(1)]
    previous = {**passed_preflight(), "phase": "Running"}
    status, actions = run(plan(), previous=previous, job=job(), pods=pods)
    assert status["restarts"] == 0 and status["preemptions"] == 1 and status["phase"] == "Pending"
    last = status["lastPreemption"]
    assert last["reason"] == "EvictionByEvictionAPI" and last["step"] == 12 and last["id"] == "p0"
    running = cond(status, "Running")
    assert running["reason"] == "Preempted" and "step 12" in running["message"] and "EvictionByEvictionAPI" in running["message"]
    assert status["lastCheckpoint"]["step"] == 12
    assert status["lastCheckpoint"]["uri"] == "s3://out/job/checkpoints/step-000012/"
    assert not any(isinstance(a, DeleteJob) for a in actions)  # the Job controller starts them again
    assert any(isinstance(a, Emit) and a.reason == "Preempted" for a in actions)
    assert any(isinstance(a, Annotate) for a in actions)
    # preempted time is held, not lost
    assert status["usage"]["preemptedPodSeconds"] == 2 * 1800.0 and status["usage"]["lostShare"] == 0
    again, more = run(plan(), previous=status, job=job(), pods=pods)
    assert again["preemptions"] == 1 and not any(isinstance(a, (Emit, Annotate)) for a in more)


def test_a_worker_that_ended_without_a_word_after_a_disruption_is_preempted_too() -> None:
    killed = preempted_pod(0, "p0", evicted=True, step=None, code=137)  # the grace period ran out
    killed["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = ""
    status, _ = run(plan(), previous={**passed_preflight(), "phase": "Running"}, job=job(), pods=[killed, replacement(0)])
    assert status["preemptions"] == 1 and "lastCheckpoint" not in status and status["phase"] == "Pending"


def test_a_failed_job_is_judged_by_its_failed_workers_not_its_preempted_ones() -> None:
    failed = job(condition="Failed")
    crash = pod(0, "Failed", message=json.dumps({"event": "summary", "status": "Failed", "reason": "DatasetMissing"}))
    status, _ = run(plan(), previous=passed_preflight(), job=failed, pods=[preempted_pod(0, "p0"), crash])
    assert cond(status, "Failed")["reason"] == "DatasetMissing"


def test_a_preempted_reason_on_a_failed_job_restarts_the_gang() -> None:
    """Were the Job failed anyway (a peer killed before it could agree), Preempted is not a permanent failure."""
    failed = job(condition="Failed")
    crash = pod(1, "Failed", message=json.dumps({"event": "summary", "status": "Failed", "reason": "Preempted"}))
    crash["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] = 1
    crash["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] = "1"
    status, actions = run(plan(), previous=passed_preflight(), job=failed, pods=[crash])
    assert status["phase"] == "Pending" and status["restarts"] == 1 and any(isinstance(a, DeleteJob) for a in actions)


def test_the_queue_taking_the_workers_back_waits_queued_and_keeps_their_time() -> None:
    queued = plan(**{"metadata.labels": {"kueue.x-k8s.io/queue-name": "team-a"}})
    previous = {
        **passed_preflight(),
        "phase": "Running",
        "usage": {"podSeconds": 1200.0},
        "lastCheckpoint": {"step": 20, "time": "2026-11-26T11:50:00Z", "uri": "s3://out/job/checkpoints/step-000020/"},
    }
    suspended = job(suspend=True)
    suspended["metadata"]["generation"] = 2
    status, actions = run(queued, previous=previous, job=suspended, pods=[])
    assert status["phase"] == "Queued" and status["preemptions"] == 1 and status["restarts"] == 0
    q = cond(status, "Queued")
    assert q["reason"] == "Preempted" and "team-a" in q["message"] and "step 20" in q["message"]
    assert cond(status, "Running")["status"] == "False" and cond(status, "Running")["reason"] == "Preempted"
    assert status["usage"]["podSeconds"] == 1200.0 and status["usage"]["preemptedPodSeconds"] == 1200.0
    assert status["usage"]["lostShare"] == 0 and any(isinstance(a, Emit) and a.reason == "Preempted" for a in actions)
    # the next sync while it waits: nothing new, and the words stay
    again, more = run(queued, previous=status, job=suspended, pods=[])
    assert again == status and not any(isinstance(a, Emit) for a in more)
    # readmitted: new workers, the time of the old ones kept
    resumed = job()
    resumed["metadata"]["generation"] = 3
    back, _ = run(queued, previous=again, job=resumed, pods=[pod(0, started="2026-11-26T11:59:00Z")])
    assert back["phase"] == "Running" and cond(back, "Queued")["status"] == "False" and back["preemptions"] == 1
    assert back["usage"]["podSeconds"] == 1200.0 + 60.0


def test_the_queue_taking_the_workers_back_is_one_preemption_whenever_their_endings_are_seen() -> None:
    """Kueue suspends the Job, then its workers stop with a checkpoint: one preemption, whether their endings come in
    the same sync or later, and still one after readmission while the old pods are listed; a later one counts."""
    queued = plan(**{"metadata.labels": {"kueue.x-k8s.io/queue-name": "team-a"}})
    previous = {**passed_preflight(), "phase": "Running"}
    suspended = job(suspend=True)
    stopped = preempted_pod(0, "p0", step=88)
    together, _ = run(queued, previous=previous, job=suspended, pods=[stopped])
    first, _ = run(queued, previous=previous, job=suspended, pods=[])
    later, _ = run(queued, previous=first, job=suspended, pods=[stopped])
    for status in (together, later):
        assert status["phase"] == "Queued" and status["preemptions"] == 1, status
        assert status["lastPreemption"]["step"] == 88 and status["lastCheckpoint"]["step"] == 88
        assert "stopped at step 88" in status["lastPreemption"]["message"]
    resumed = job()
    resumed["metadata"]["generation"] = 3
    back, _ = run(queued, previous=later, job=resumed, pods=[stopped, pod(1, started="2026-11-26T12:01:00Z")])
    assert back["preemptions"] == 1 and back["phase"] == "Running"
    again = preempted_pod(0, "p0-again", evicted=True, step=120)
    again["metadata"]["creationTimestamp"] = "2026-11-26T12:01:00Z"  # a worker of the readmitted run
    twice, _ = run(queued, previous=back, job=resumed, pods=[stopped, again])
    assert twice["preemptions"] == 2 and twice["lastPreemption"]["id"] == "p0-again" and twice["lastCheckpoint"]["step"] == 120


def test_a_newer_checkpoint_from_rank_0s_progress_is_recorded_and_annotated() -> None:
    previous = {**passed_preflight(), "phase": "Running"}
    status, actions = run(plan(), previous=previous, job=job(), pods=[pod(0)], checkpoint_step=200)
    assert status["lastCheckpoint"] == {
        "step": 200,
        "time": "2026-11-26T12:00:00Z",
        "uri": "s3://out/job/checkpoints/step-000200/",
    }
    (note,) = [a for a in actions if isinstance(a, Annotate)]
    assert note.at == "2026-11-26T12:00:00Z" and note.pods == (("job-0", ""),)
    same, more = run(plan(), previous=status, job=job(), pods=[pod(0)], checkpoint_step=200)
    assert same["lastCheckpoint"] == status["lastCheckpoint"] and not any(isinstance(a, Annotate) for a in more)


def test_a_preempted_worker_whose_pod_went_away_is_still_counted_from_the_watch() -> None:
    from kubetune_operator import ended

    gone = preempted_pod(0, "gone-0", evicted=True)
    gone["metadata"]["ownerReferences"] = [{"kind": "Job", "uid": "job-1", "controller": True}]
    ended.ours("job-1")  # a Job this operator made (a sync read it)
    ended.seen(gone)
    ended.seen({**pod(0), "metadata": {"uid": "alive", "ownerReferences": gone["metadata"]["ownerReferences"]}})  # not kept
    pods = ended.with_ended("job-1", [replacement(0)])
    assert [p["metadata"].get("uid") for p in pods] == [None, "gone-0"] and ended.with_ended("job-2", []) == []
    status, _ = run(plan(), previous={**passed_preflight(), "phase": "Running"}, job=job(), pods=pods)
    assert status["preemptions"] == 1 and status["lastPreemption"]["reason"] == "EvictionByEvictionAPI"
    assert status["lastCheckpoint"]["step"] == 12


def test_the_preflight_warns_when_a_checkpoint_may_not_fit_in_the_grace_period() -> None:
    from kubetune_api import grace
    from kubetune_api.job import FineTuneJobSpec
    from kubetune_api.preflight_report import Report
    from kubetune_operator.preflight_outcome import preflight_summary
    from kubetune_trainer.preflight import checkpoint_in_grace

    from .conftest import job as body

    # a 70B-shaped adapter (r 16 on every linear layer: about 207M trainable parameters) on 8 workers
    size = grace.checkpoint_bytes(207_000_000, 2)
    assert size == 207_000_000 * 14 and grace.checkpoint_seconds(size, 8) < 10
    assert grace.warning(grace.checkpoint_seconds(size, 8), size, 120) is None
    # one worker and a 10 s grace: warned, with the setting that would fit
    short = grace.warning(grace.checkpoint_seconds(size, 1), size, 10)
    assert short is not None and "runPolicy.terminationGracePeriodSeconds" in short and "10 s" in short
    spec = FineTuneJobSpec.model_validate(body(**{"spec.runPolicy": {"terminationGracePeriodSeconds": 5}})["spec"])
    report = checkpoint_in_grace(Report(passed=True), spec, 207_000_000)
    assert report.passed and report.checkpointBytes == size and len(report.warnings) == 1
    assert "warning: a preempted worker's checkpoint" in preflight_summary(report)
    roomy = FineTuneJobSpec.model_validate(body(**{"spec.runPolicy": {"terminationGracePeriodSeconds": 3600}})["spec"])
    assert checkpoint_in_grace(Report(passed=True), roomy, 1_000_000).warnings == []
