"""The reconcile's decisions, pure: `transition(plan, observed, previous status) -> (new status, actions)`, and its
siblings for a spec that is invalid (`invalid`), a job that cannot go on (`refused`) and a finished one (`finished`).

The handler observes (the Job, its pods, the preflight Job and its pods, rank 0's progress line, the policy's word,
the time), calls one of these, carries out the actions in order and writes the status once if it changed: observe,
decide, carry out, nothing in between. Nothing here calls the API, so every phase is table-tested
(tests/test_transition.py). The conditions are set through small named setters, as kubeflow/trainer does."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubetune_api.conditions import ConditionType, Phase, Reason
from kubetune_api.layout import checkpoint_uri
from kubetune_api.status import (
    PREEMPTED_PODS_KEPT,
    Checkpoint,
    FineTuneJobStatus,
    Preemption,
    Preparing,
    Progress,
    Workers,
)

from . import builders
from .conditions import set_condition
from .ledger import ledger, parse_time, pod_seconds
from .observation import PERMANENT, Observation, State, job_condition, observe, succeeded_fields, was_preempted
from .plan import Plan
from .preflight_outcome import PreflightState, preflight_outcome, preflight_stale

# actions, carried out by the handler in the order given


@dataclass(frozen=True)
class EnsureChildren:
    """Create the ConfigMap, Service and NetworkPolicy, or put back what someone changed by hand; on a job's first
    sync (fresh) they are created straight away, later they are read first (a create that finds one costs more)."""

    fresh: bool


@dataclass(frozen=True)
class CreatePreflight:
    """Create the preflight Job for the spec's current generation."""


@dataclass(frozen=True)
class DeletePreflight:
    uid: str  # the stale preflight Job's uid (a precondition of the delete)


@dataclass(frozen=True)
class CreateJob:
    """Create the training Job (suspended when queued or suspended)."""


@dataclass(frozen=True)
class SuspendJob:
    suspend: bool
    uid: str


@dataclass(frozen=True)
class WriteStatus:
    """Write the new status now, before the actions after it (a restart's count before its delete)."""


@dataclass(frozen=True)
class DeleteJob:
    uid: str


@dataclass(frozen=True)
class Emit:
    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class CountRestart:
    """The gang-restart metric."""


@dataclass(frozen=True)
class Annotate:
    """The newest complete checkpoint's time on the Job and its running pods, in the words schedulers read."""

    at: str
    pods: tuple[tuple[str, str], ...] = ()  # (name, uid) of the Job's running workers


@dataclass(frozen=True)
class Expire:
    """runPolicy.ttlSecondsAfterFinished has passed: delete the FineTuneJob, the uid read as a precondition."""

    uid: str


Action = (
    EnsureChildren
    | CreatePreflight
    | DeletePreflight
    | CreateJob
    | SuspendJob
    | WriteStatus
    | DeleteJob
    | Emit
    | CountRestart
    | Annotate
    | Expire
)


@dataclass(frozen=True)
class Observed:
    """What the handler saw, all of it already checked to be this job's own (owner references)."""

    generation: int | None
    now: datetime.datetime
    job: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)
    preflight: dict[str, Any] | None = None
    preflight_pods: list[dict[str, Any]] = field(default_factory=list)
    progress: Progress | None = None  # from rank 0's newest progress line, when it was read this time
    preparing: Preparing | None = None  # from the preflight's newest `preparing` line, when it was read this time
    denied: tuple[str, ...] = ()  # the platform policy's refusals, checked at every sync
    spec_changed: bool = False  # the Job's pods read another spec than this one (builders.SPEC_ANNOTATION)
    checkpoint_step: int | None = None  # the newest complete checkpoint rank 0's progress line names
    observation: Observation | None = None  # observe(job, pods, workers), made once per sync; None: made here

    def of_job(self, workers: int) -> Observation:
        return self.observation if self.observation is not None else observe(self.job, self.pods, workers)


def stamp(at: datetime.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


class Status:
    """The status being written: a copy of the typed status before, and the named setters that change it."""

    def __init__(self, previous: FineTuneJobStatus, generation: int | None, now: datetime.datetime) -> None:
        self.old = previous
        # shallow: the setters replace a field's value whole (set_condition builds new conditions), never change one
        # in place, so nothing of `previous` is touched
        self.new = previous.model_copy()
        self.generation, self.now = generation, stamp(now)

    def set(self, type_: ConditionType, value: bool, reason: str, message: str) -> None:
        self.new.conditions = set_condition(self.new.conditions, type_, value, reason, message, self.generation, at=self.now)

    def is_true(self, type_: ConditionType) -> bool:
        return any(c.type == type_ and c.status == "True" for c in self.new.conditions)

    # named setters

    def validated(self) -> None:
        self.new.observedGeneration = self.generation
        self.set(ConditionType.VALIDATED, True, Reason.SPEC_VALID, "the spec is valid")

    def preflight_running(self, reason: str, message: str, preparing: Preparing | None = None) -> None:
        """Preparing the dataset shows in status.preparing and, in words, in the condition's message (the last line
        read stands until a newer one is: logs are read at most once per sync interval)."""
        self.new.phase = Phase.PREFLIGHT
        if preparing is not None:
            self.new.preparing = preparing
        if reason == Reason.PREFLIGHT_RUNNING and self.new.preparing is not None:
            message = self.new.preparing.summary
        self.set(ConditionType.PREFLIGHT, False, reason, message)

    def preflight_passed(self, message: str) -> None:
        self.set(ConditionType.PREFLIGHT, True, Reason.PREFLIGHT_PASSED, message)

    def queued(self, queue: str, preempted: bool = False) -> None:
        """Waiting for the queue; after a preemption the condition says so until the queue admits the job again."""
        self.new.phase = Phase.QUEUED
        was = next((c for c in self.new.conditions if c.type == ConditionType.QUEUED and c.status == "True"), None)
        if preempted or (was is not None and was.reason == Reason.PREEMPTED):
            at = self.new.lastCheckpoint
            since = f" from its checkpoint at step {at.step}" if at is not None else " from its newest checkpoint"
            message = f"preempted: waiting for queue {queue} to admit the workers again; they resume{since}"
            self.set(ConditionType.QUEUED, True, Reason.PREEMPTED, message)
            self.set(ConditionType.RUNNING, False, Reason.PREEMPTED, message)
            return
        self.set(ConditionType.QUEUED, True, Reason.WAITING_FOR_QUEUE, f"waiting for queue {queue}")

    def suspended(self, message: str) -> None:
        self.new.phase = Phase.SUSPENDED
        self.set(ConditionType.SUSPENDED, True, Reason.USER_SUSPENDED, message)

    def pending(self, reason: str, message: str) -> None:
        self.new.phase = Phase.PENDING
        self.set(ConditionType.RUNNING, False, reason, message)

    def running(self, ready: int, progress: Progress | None) -> None:
        self.new.phase = Phase.RUNNING
        if self.new.startTime is None:
            self.new.startTime = self.now
        self.set(ConditionType.RUNNING, True, Reason.TRAINING, f"{ready} workers training")
        if progress is not None:
            self.new.progress = progress

    def succeeded(self, fields: dict[str, Any], message: str) -> None:
        self.new.phase = Phase.SUCCEEDED
        self.new.completionTime = self.now
        if self.new.startTime is None:
            self.new.startTime = self.now
        self.new = self.new.model_validate({**self.new.model_dump(exclude_none=True), **fields})
        self.set(ConditionType.RUNNING, False, Reason.COMPLETED, "finished")
        self.set(ConditionType.SUCCEEDED, True, Reason.COMPLETED, message)

    def failed(self, reason: str, message: str, *, also: ConditionType = ConditionType.RUNNING) -> None:
        self.new.phase = Phase.FAILED
        self.new.completionTime = self.now
        self.set(also, False, reason, message)
        self.set(ConditionType.FAILED, True, reason, message)
        if reason == Reason.BELOW_THRESHOLD:  # the run finished; its adapter missed output.minImprovement
            self.set(ConditionType.QUALITY_GATE, False, reason, message)

    def preempted(self, id_: str, reason: str, message: str, step: int | None, started: str = "") -> bool:
        """A preemption seen for the first time is counted (a restart is not); False when this one was counted.
        A worker started before the newest counted preemption ended with it (the queue suspended the Job, then its
        workers stopped and said at which step): its step and words complete that one, not a second count."""
        last = self.new.lastPreemption
        if last is not None and last.id == id_:
            return False
        began, counted = parse_time(started), parse_time(last.time) if last is not None else None
        if last is not None and began is not None and counted is not None and began < counted:
            if step is not None and last.step is None:
                self.new.lastPreemption = last.model_copy(update={"step": step, "message": f"{last.message}; {message}"[:1000]})
            return False
        self.new.preemptions += 1
        self.new.lastPreemption = Preemption(time=self.now, reason=reason, message=message, step=step, id=id_)
        return True

    def checkpointed(self, step: int | None, output_uri: str) -> bool:
        """A newer complete checkpoint than the status names: recorded, True."""
        if not step or (self.new.lastCheckpoint is not None and self.new.lastCheckpoint.step >= step):
            return False
        self.new.lastCheckpoint = Checkpoint(step=step, time=self.now, uri=checkpoint_uri(output_uri, step))
        return True

    def refused(self, reason: str, message: str) -> None:
        """The job cannot go on (a name taken, a child the API server rejects, the policy, a changed spec)."""
        self.new.phase = Phase.FAILED
        self.new.completionTime = self.now
        self.set(ConditionType.RUNNING, False, reason, message)
        self.set(ConditionType.FAILED, True, reason, message)

    def result(self) -> FineTuneJobStatus:
        return self.new


def preflight_passed(status: FineTuneJobStatus, generation: int | None) -> bool:
    """Whether the preflight passed for this generation of the spec (a changed spec is checked again)."""
    return any(
        c.type == ConditionType.PREFLIGHT and c.status == "True" and c.observedGeneration == generation for c in status.conditions
    )


def _preflight(plan: Plan, seen: Observed, status: Status) -> tuple[bool, list[Action]]:
    """The preflight's part: whether the job is held (checks running or failed) and what to do."""
    found = seen.preflight
    actions: list[Action] = []
    if found is not None and preflight_stale(found, seen.generation):
        actions.append(DeletePreflight(found["metadata"]["uid"]))  # the spec changed since: checked again
        found = None
    if found is None:
        status.new.preparing = None  # of an earlier preflight, if any
        if plan.suspend:  # a suspended job starts no pod, the preflight's neither (one already running finishes)
            status.suspended("runPolicy.suspend is true; the preflight runs when the job is resumed")
            return True, actions
        if status.is_true(ConditionType.SUSPENDED):
            status.set(ConditionType.SUSPENDED, False, Reason.RESUMED, "resumed: the preflight runs first")
        status.preflight_running(
            Reason.PODS_PENDING,  # PreflightRunning once its pod runs (and its progress is read)
            "the preflight checks storage, records, memory per GPU and GPU-hours on a CPU before any GPU is requested; "
            "waiting for its pod",
        )
        return True, [*actions, CreatePreflight()]
    outcome = preflight_outcome(found, seen.preflight_pods)
    if outcome.state == PreflightState.RUNNING:
        status.preflight_running(outcome.reason, outcome.message, seen.preparing)
        return True, []
    status.new.preparing = None  # passed or failed: the report has the totals
    if outcome.report is not None:
        status.new.preflight = outcome.report
    if outcome.state == PreflightState.PASSED:
        status.preflight_passed(outcome.message)
        said = outcome.report.warnings if outcome.report is not None else []
        return False, [Emit(Reason.PREFLIGHT_PASSED.value, f"preflight warning: {w}", warning=True) for w in said]
    status.failed(outcome.reason, outcome.message, also=ConditionType.PREFLIGHT)
    return True, []


def _uid(pod: dict[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("uid") or "")


def _usage(
    plan: Plan,
    status: Status,
    seen: Observed,
    attempt: int,
    *,
    restarting: bool,
    failed: bool,
    final: bool,
    stopped: bool = False,
    suspended: bool = False,
) -> None:
    """The ledger's inputs: the time of the workers that run or failed, apart from those preempted (kept); none
    of a suspended Job's (its pods are going away, their time closed when it was stopped)."""
    before = status.old.usage
    counted = list(before.preemptedPods) if before is not None else []
    taken = [p for p in seen.pods if was_preempted(p) and _uid(p) and _uid(p) not in counted]
    rest = [] if suspended else [p for p in seen.pods if not was_preempted(p)]
    counted = [*counted, *(_uid(p) for p in taken)][-PREEMPTED_PODS_KEPT:]
    status.new.usage = ledger(
        before,
        pod_seconds(rest, seen.now),
        attempt,
        restarting=restarting,
        failed=failed,
        final=final,
        preempted=pod_seconds(taken, seen.now),
        stopped=stopped,
        gpus=plan.gpus,
        gpu_type=plan.gpu_type,
        price=plan.gpu_price,
        preempted_pods=counted,
    )


def transition(plan: Plan, seen: Observed, previous: FineTuneJobStatus) -> tuple[FineTuneJobStatus, list[Action]]:
    """The new status and what to do, from what was observed and the status before (with the phase-change Event)."""
    new, actions = _decide(plan, seen, previous)
    return new, _with_phase_event(previous, new, actions)


def _decide(plan: Plan, seen: Observed, previous: FineTuneJobStatus) -> tuple[FineTuneJobStatus, list[Action]]:
    status = Status(previous, seen.generation, seen.now)
    status.validated()
    job = seen.job
    if seen.denied or seen.spec_changed:  # before any child is made or put back; the running workers stop
        return _stopped_by_change(seen, status)
    # created straight away on the first sync only; later syncs read them (a waiting job is not re-created each time)
    actions: list[Action] = [EnsureChildren(fresh=previous.phase is None)]
    if job is None and plan.preflight and not preflight_passed(previous, seen.generation):
        held, more = _preflight(plan, seen, status)
        actions += more
        if held:
            return status.result(), actions
    obs = seen.of_job(plan.workers)
    status.new.workers = Workers(ready=obs.ready, total=plan.workers)
    restarts = previous.restarts
    stopped, more = _interrupted(plan, seen, obs, previous, status)
    actions += more
    if obs.state == State.MISSING:
        actions += _missing(plan, job, status)
    elif obs.state == State.SUSPENDED:
        actions += _suspended(plan, job, status, stopped)
    elif plan.suspend and obs.state in (State.PENDING, State.RUNNING):
        actions += _suspending(job, status)
        stopped = True
    elif obs.state == State.FAILED:
        assert job is not None
        # the failed gang's own attempt number, not the status's count: counting is idempotent, so a delete that
        # fails after the count was written, and is tried again, never counts the same failure twice
        restarts = builders.attempt_of(job, restarts)
        restart = _failed(plan, seen, obs, status, restarts)
        if restart:
            return status.result(), actions + restart
    else:
        _live(plan, seen, obs, status)
    # from the sync that creates the Job on, so the one after it finds nothing to write
    done = status.new.phase in (Phase.SUCCEEDED, Phase.FAILED)
    attempt = builders.attempt_of(job, restarts) if job is not None else restarts
    _usage(
        plan,
        status,
        seen,
        attempt,
        restarting=False,
        failed=status.new.phase == Phase.FAILED,
        final=done,
        stopped=stopped,
        suspended=obs.state == State.SUSPENDED,
    )
    return status.result(), actions


def _stopped_by_change(seen: Observed, status: Status) -> tuple[FineTuneJobStatus, list[Action]]:
    """A policy tightened since admission, or the spec the workers read changed: the workers stop, nothing applied."""
    stop: list[Action] = [DeleteJob(seen.job["metadata"]["uid"])] if seen.job is not None else []
    if seen.denied:
        status.refused(Reason.POLICY_DENIED, "; ".join(seen.denied))
    else:  # the ConfigMap is not rewritten: no pod runs a spec the preflight and the policy did not see
        status.refused(
            Reason.SPEC_CHANGED,
            "the spec the workers read changed after their Job was created; the workers were stopped and nothing "
            "was applied. Create a new FineTuneJob",
        )
    return status.result(), stop


def _missing(plan: Plan, job: dict[str, Any] | None, status: Status) -> list[Action]:
    """No workers: the previous gang is still being torn down, or the Job is created (suspended, queued or pending)."""
    if job is not None:
        status.set(ConditionType.RUNNING, False, Reason.GANG_RESTARTING, "waiting for the old workers to stop")
        return []
    if plan.suspend:  # as the next sync will see it: the Job is created suspended
        status.suspended("runPolicy.suspend is true")
        status.set(ConditionType.RUNNING, False, Reason.USER_SUSPENDED, "suspended")
    elif plan.queue:
        status.queued(plan.queue)
    else:
        status.new.phase = Phase.PENDING
    return [CreateJob()]


def _suspended(plan: Plan, job: dict[str, Any] | None, status: Status, stopped: bool) -> list[Action]:
    """The Job is suspended: by the user (it stays so), by the queue (waiting for quota), or to be resumed."""
    assert job is not None
    if plan.suspend:
        status.suspended("runPolicy.suspend is true")
        status.set(ConditionType.RUNNING, False, Reason.USER_SUSPENDED, "suspended")
        return []
    if plan.queue:
        status.queued(plan.queue, preempted=stopped)
        return []
    status.new.phase = Phase.PENDING
    status.set(ConditionType.SUSPENDED, False, Reason.RESUMED, "resumed from the newest checkpoint")
    return [SuspendJob(False, job["metadata"]["uid"])]


def _suspending(job: dict[str, Any] | None, status: Status) -> list[Action]:
    """runPolicy.suspend set while the workers run or wait: they checkpoint the step they reached and stop."""
    assert job is not None
    status.suspended("stopping the workers: each checkpoints the step it reached; checkpoints are kept")
    return [SuspendJob(True, job["metadata"]["uid"])]


def _admitted(plan: Plan, status: Status) -> None:
    if plan.queue:
        status.set(ConditionType.QUEUED, False, Reason.ADMITTED, f"admitted by queue {plan.queue}")
    if status.is_true(ConditionType.SUSPENDED):
        status.set(ConditionType.SUSPENDED, False, Reason.RESUMED, "resumed")


def _live(plan: Plan, seen: Observed, obs: Observation, status: Status) -> None:
    """The workers wait to be scheduled, run, or have succeeded."""
    _admitted(plan, status)
    if obs.state == State.PENDING and obs.reason == Reason.PODS_PENDING and _restarting_after(obs, status.new):
        last = status.new.lastPreemption
        assert last is not None
        at = f" at step {last.step}" if last.step else ""
        status.pending(Reason.PREEMPTED, f"preempted{at} ({last.reason}: {last.message}); the workers start again and resume")
    elif obs.state == State.PENDING:
        status.pending(obs.reason, obs.message)
    elif obs.state == State.RUNNING:
        status.running(obs.ready, seen.progress)
    elif obs.state == State.SUCCEEDED:
        status.succeeded(succeeded_fields(obs.summary, plan.spec.output.uri, status.new.progress), obs.message)


def _failed(plan: Plan, seen: Observed, obs: Observation, status: Status, restarts: int) -> list[Action]:
    """A worker failed: the job fails (a permanent reason, the deadline, the backoff limit reached), or the gang
    restarts from its newest checkpoint (the actions returned: the decision ends there)."""
    _admitted(plan, status)
    spec, job = plan.spec, seen.job
    assert job is not None
    status.new.lastFailureReason = obs.reason
    if obs.reason in PERMANENT or obs.reason == Reason.DEADLINE_EXCEEDED or restarts >= spec.runPolicy.backoffLimit:
        kept = obs.reason in PERMANENT or obs.reason == Reason.DEADLINE_EXCEEDED
        reason = obs.reason if kept else Reason.BACKOFF_LIMIT_EXCEEDED.value
        message = obs.message if kept else f"{restarts} restarts; last failure {obs.reason}: {obs.message}"
        status.failed(reason, message)
        return []
    status.new.restarts = restarts + 1
    status.new.phase = Phase.PENDING
    message = f"restart {restarts + 1} of {spec.runPolicy.backoffLimit} after {obs.reason}: {obs.message}"
    status.set(ConditionType.RUNNING, False, Reason.GANG_RESTARTING, message)
    _usage(plan, status, seen, restarts, restarting=True, failed=False, final=False)
    # counted first: were the count written after the delete and lost, the gang would restart for ever
    return [WriteStatus(), DeleteJob(job["metadata"]["uid"]), Emit(Reason.GANG_RESTARTING.value, message, True), CountRestart()]


def _restarting_after(obs: Observation, status: FineTuneJobStatus) -> bool:
    """Whether the workers are pending because the newest preemption took them off (their replacements start)."""
    return obs.preemption is not None and status.lastPreemption is not None and status.lastPreemption.id == obs.preemption.id


def _interrupted(
    plan: Plan, seen: Observed, obs: Observation, previous: FineTuneJobStatus, status: Status
) -> tuple[bool, list[Action]]:
    """Preemptions, each counted once (not a restart), and the newest complete checkpoint; True when the queue
    has just taken the workers back (Kueue suspends the Job of a workload it preempts or evicts)."""
    actions: list[Action] = []
    pre = obs.preemption
    job = seen.job
    stopped = (
        job is not None
        and obs.state == State.SUSPENDED
        and bool(plan.queue)
        and not plan.suspend
        and previous.phase in (Phase.RUNNING, Phase.PENDING)
    )
    if stopped:
        assert job is not None
        meta = job["metadata"]
        said = job_condition(job, "Suspended") or {}
        message = (
            f"queue {plan.queue} took the workers back (Kueue suspended the Job: its workload was preempted or "
            f"evicted); each worker checkpoints the step it reached, and the job resumes when readmitted"
        )
        if status.preempted(f"{meta.get('uid', '')}/suspended/{meta.get('generation', 0)}", "Preempted", message, None):
            actions.append(Emit(Reason.PREEMPTED.value, f"{message} ({said.get('reason', 'JobSuspended')})"))
    # after the suspend's own count: its workers' endings, seen in the same sync or later, complete it
    if pre is not None and status.preempted(pre.id, pre.reason, pre.message, pre.step, pre.started):
        at = f" at step {pre.step}, checkpointed" if pre.step else ""
        actions.append(Emit(Reason.PREEMPTED.value, f"workers preempted{at}: {pre.reason}: {pre.message}"))
    step = max((s for s in (seen.checkpoint_step, pre.step if pre else None) if s), default=None)
    if status.checkpointed(step, plan.spec.output.uri):
        assert status.new.lastCheckpoint is not None
        running = [p["metadata"] for p in seen.pods if (p.get("status") or {}).get("phase") == "Running"]
        actions.append(Annotate(status.new.lastCheckpoint.time, tuple((m["name"], m.get("uid", "")) for m in running)))
    return stopped, actions


def _with_phase_event(previous: FineTuneJobStatus, new: FineTuneJobStatus, actions: list[Action]) -> list[Action]:
    """A phase change is announced in an Event (a Warning when the job failed), after the status that says it."""
    if previous.phase == new.phase or new.phase is None:
        return actions
    said = next((c for c in new.conditions if c.type == new.phase), None)
    reason = said.reason if said is not None else str(new.phase)
    message = f"{previous.phase or 'New'} -> {new.phase}: {said.message if said is not None else ''}"
    written = [] if any(isinstance(a, WriteStatus) for a in actions) else [WriteStatus()]
    return [*actions, *written, Emit(str(reason), message, warning=new.phase == Phase.FAILED)]


def typed_status(status: Mapping[str, Any]) -> FineTuneJobStatus:
    """The status as written before, typed; fields this version does not know are dropped, an unreadable one
    starts afresh (only the operator writes the status subresource)."""
    known = {k: v for k, v in status.items() if k in FineTuneJobStatus.model_fields}
    try:
        return FineTuneJobStatus.model_validate(known)
    except ValueError:
        return FineTuneJobStatus()


def invalid(
    previous: FineTuneJobStatus, message: str, generation: int | None, now: datetime.datetime
) -> tuple[FineTuneJobStatus, list[Action]]:
    """A spec that fails validation (one stored before a stricter version, say): Failed, in the offline words."""
    status = Status(previous, generation, now)
    status.new.phase = Phase.FAILED
    status.new.observedGeneration = generation
    status.set(ConditionType.VALIDATED, False, Reason.INVALID_SPEC, message)
    status.set(ConditionType.FAILED, True, Reason.INVALID_SPEC, message)
    new = status.result()
    return new, _with_phase_event(previous, new, [])


def refused(
    previous: FineTuneJobStatus, reason: str, message: str, generation: int | None, now: datetime.datetime
) -> tuple[FineTuneJobStatus, list[Action]]:
    """The job cannot go on because of what carrying out found (a name taken, a child the API server rejects)."""
    status = Status(previous, generation, now)
    status.refused(reason, message)
    new = status.result()
    return new, _with_phase_event(previous, new, [])


def finished(previous: FineTuneJobStatus, ttl: int | None, uid: str, now: datetime.datetime) -> list[Action]:
    """A finished job waits for runPolicy.ttlSecondsAfterFinished, as a batch/v1 Job does, then is deleted."""
    done = parse_time(previous.completionTime)
    if ttl is None or done is None or (now - done).total_seconds() < ttl:
        return []
    return [Expire(uid)]
