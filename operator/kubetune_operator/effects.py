"""Carrying out a decision: the actions transition.py chose, in order, on the API server (children created,
drift put back, the Job patched or deleted, Events posted, the status written). The only writes the operator
makes; what to write is decided elsewhere (transition, children, builders)."""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes import client

from kubetune_api.contract import PREFLIGHT_FIGURES
from kubetune_api.names import GROUP, PLURAL, VERSION
from kubetune_api.status import FineTuneJobStatus

from . import builders, metrics, watched
from .children import conflict, drift, owned, rejected
from .kube import API, raw, read_json
from .plan import Plan
from .preflight_outcome import GENERATION_ANNOTATION
from .transition import (
    Action,
    Annotate,
    CountRestart,
    CreateJob,
    CreatePreflight,
    DeleteJob,
    DeletePreflight,
    Emit,
    EnsureChildren,
    Expire,
    SuspendJob,
    WriteStatus,
)

PLURALS = {"ConfigMap": "configmaps", "Service": "services", "NetworkPolicy": "networkpolicies"}
CHECKPOINT_ANNOTATIONS = ("kubetune.dev/last-checkpoint-time", "volcano.sh/last-checkpoint-time")


def carry_out(
    plan: Plan | None, body: dict[str, Any], job: dict[str, Any] | None, new: FineTuneJobStatus, actions: list[Action]
) -> None:
    """The decision's actions, in order; the status is written where WriteStatus says, else at the end. Actions on
    children come only with a plan (invalid, refused and finished jobs have none)."""
    written = False
    for action in actions:
        if isinstance(action, WriteStatus):
            write_status(body, new, plan.queue if plan else None)
            written = True
        elif isinstance(action, Emit):
            event(body, action.reason, action.message, warning=action.warning)
        elif isinstance(action, CountRestart):
            metrics.restarted()
        elif isinstance(action, Expire):
            delete_self(body["metadata"], action.uid)
        elif plan is None:
            raise AssertionError(f"{action} needs the job's plan")
        elif isinstance(action, EnsureChildren):
            for child in (builders.build_configmap(plan), builders.build_service(plan), builders.build_network_policy(plan)):
                ensure(plan, child, fresh=action.fresh)
        elif isinstance(action, CreatePreflight):
            preflight = builders.build_preflight_job(plan)
            preflight["metadata"].setdefault("annotations", {})[GENERATION_ANNOTATION] = str(body["metadata"].get("generation"))
            create_job(plan, preflight)
        elif isinstance(action, DeletePreflight):
            delete_job(plan, {"metadata": {"uid": action.uid}}, plan.preflight_name)
        elif isinstance(action, CreateJob):  # the preflight's figures go with it, for the run's tracking
            figures = new.preflight.model_dump(include=set(PREFLIGHT_FIGURES), exclude_none=True) if new.preflight else {}
            contents = new.preflight.preparedSha256 if new.preflight else None
            create_job(plan, builders.build_job(plan, figures, contents))
        elif isinstance(action, Annotate):
            annotate(plan, job, action)
        elif isinstance(action, SuspendJob):
            patch_job(plan, job, {"spec": {"suspend": action.suspend}})
        elif isinstance(action, DeleteJob):
            delete_job(plan, {"metadata": {"uid": action.uid}})
    if not written:
        write_status(body, new, plan.queue if plan else None)


def event(body: dict[str, Any], reason: str, message: str, warning: bool = False) -> None:
    meta = body["metadata"]
    stamp = datetime.datetime.now(datetime.UTC)
    posted = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
        involved_object=client.V1ObjectReference(
            api_version=body["apiVersion"], kind=body["kind"], name=meta["name"], namespace=meta["namespace"], uid=meta.get("uid")
        ),
        reason=reason,
        message=message[:1000],
        type="Warning" if warning else "Normal",
        first_timestamp=stamp,
        last_timestamp=stamp,
        count=1,
        source=client.V1EventSource(component="kubetune-operator"),
    )
    with contextlib.suppress(client.ApiException):  # an Event is best effort; the status carries the same words
        raw(API.core.create_namespaced_event, meta["namespace"], posted)


def ensure(plan: Plan, obj: dict[str, Any], fresh: bool) -> None:
    """Create a ConfigMap, Service or NetworkPolicy, or put back what someone changed by hand (children.drift). For
    a new gang (fresh) it is created straight away; only if it exists already is it read and compared."""
    kind, name = obj["kind"], obj["metadata"]["name"]
    core, net = API.core, API.networking
    create, read, patch = {
        "ConfigMap": (core.create_namespaced_config_map, core.read_namespaced_config_map, core.patch_namespaced_config_map),
        "Service": (core.create_namespaced_service, core.read_namespaced_service, core.patch_namespaced_service),
        "NetworkPolicy": (
            net.create_namespaced_network_policy,
            net.read_namespaced_network_policy,
            net.patch_namespaced_network_policy,
        ),
    }[kind]
    # as the watch last saw it (watched.py); read from the API server only when it exists and the watch has not
    # shown it yet (the create's 409)
    current = None if fresh else watched.CACHE.one(PLURALS[kind], plan.namespace, name)
    if current is None:
        try:
            raw(create, plan.namespace, obj)
            return
        except client.ApiException as exc:
            if exc.status in (400, 422):
                raise rejected(kind, exc.body, exc.reason) from exc
            if exc.status != 409:
                raise kopf.TemporaryError(f"cannot create {kind} {name}: {exc.reason}", delay=5) from exc
        current = read_json(read, name, plan.namespace)
        if current is None:
            raise kopf.TemporaryError(f"{kind} {name} exists and does not: retrying", delay=1)
    if not owned(current, plan.uid):
        raise conflict(kind, plan)
    put_back = drift(current, obj)
    if put_back is not None:
        raw(patch, name, plan.namespace, put_back)


def create_job(plan: Plan, obj: dict[str, Any]) -> None:
    try:
        raw(API.batch.create_namespaced_job, plan.namespace, obj)
    except client.ApiException as exc:
        if exc.status in (400, 422):
            raise rejected("Job", exc.body, exc.reason) from exc
        if exc.status != 409:
            raise kopf.TemporaryError(f"cannot create Job {obj['metadata']['name']}: {exc.reason}", delay=5) from exc


def patch_job(plan: Plan, job: dict[str, Any] | None, patch: dict[str, Any]) -> None:
    """Patch our Job; its uid in the patch makes the API server refuse it if the Job was replaced since it was read."""
    assert job is not None
    try:
        raw(API.batch.patch_namespaced_job, plan.job_name, plan.namespace, {"metadata": {"uid": job["metadata"]["uid"]}, **patch})
    except client.ApiException as exc:
        raise kopf.TemporaryError(f"cannot patch Job {plan.job_name}: {exc.reason}", delay=5) from exc


def annotate(plan: Plan, job: dict[str, Any] | None, action: Annotate) -> None:
    """The newest checkpoint's time where a scheduler or a platform's preemption policy reads it: on the Job and its
    running workers (best effort: the status has it too; a pod that went away is skipped)."""
    annotations = dict.fromkeys(CHECKPOINT_ANNOTATIONS, action.at)
    if job is not None:
        patch_job(plan, job, {"metadata": {"annotations": annotations}})
    for name, uid in action.pods:
        with contextlib.suppress(client.ApiException):
            raw(API.core.patch_namespaced_pod, name, plan.namespace, {"metadata": {"uid": uid, "annotations": annotations}})


def delete_job(plan: Plan, job: dict[str, Any], name: str | None = None) -> None:
    """Delete our Job and, first, its pods (foreground); the uid precondition spares a Job someone put in its place."""
    options = client.V1DeleteOptions(
        propagation_policy="Foreground", preconditions=client.V1Preconditions(uid=job["metadata"]["uid"])
    )
    try:
        raw(API.batch.delete_namespaced_job, name or plan.job_name, plan.namespace, body=options)
    except client.ApiException as exc:
        if exc.status not in (404, 409):  # 409: the precondition failed, the Job is another one now
            raise kopf.TemporaryError(f"cannot delete Job {name or plan.job_name}: {exc.reason}", delay=5) from exc


def delete_self(meta: Mapping[str, Any], uid: str) -> None:
    """Delete the FineTuneJob (its children go with their owner references). The uid precondition: a FineTuneJob
    created under the same name since this one was read is spared."""
    options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))
    try:
        raw(API.custom.delete_namespaced_custom_object, GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], body=options)
    except client.ApiException as exc:
        if exc.status not in (404, 409):
            raise kopf.TemporaryError(f"cannot delete {meta['name']}: {exc.reason}", delay=5) from exc


_written: dict[str, dict[str, Any]] = {}  # namespace/name -> the status this operator wrote last


def seen_own_write(key: str, body: dict[str, Any]) -> bool:
    """Whether a watch's body already holds the status this operator wrote last for the job (a body from before that
    write must not be decided on: what the write counted, preempted seconds say, would be counted again)."""
    mine = _written.get(key)
    return mine is None or body.get("status") == mine


def forget(key: str) -> None:
    _written.pop(key, None)


def write_status(body: dict[str, Any], status: FineTuneJobStatus, queue: str | None = None) -> None:
    """Write the status when it changed; GPU time it adds is charged to `queue`, the one the Job was made with (a
    FineTuneJob's labels can be changed afterwards, the Job's queue cannot)."""
    old = body.get("status") or {}
    new = status.model_dump(mode="json", exclude_none=True)
    if new == old:
        return  # status is written only when it changed
    try:
        json.dumps(new, allow_nan=False)
    except ValueError:  # cannot happen with the contract's finite models; never let it block the status for ever
        new = {k: v for k, v in new.items() if k not in ("progress", "metrics")}
    meta = body["metadata"]
    patch = {"status": {**{k: None for k in old if k not in new}, **new}}
    try:
        raw(API.custom.patch_namespaced_custom_object_status, GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], patch)
    except client.ApiException as exc:
        if exc.status != 404:
            raise kopf.TemporaryError(f"cannot write status: {exc.reason}", delay=5) from exc
        return
    _written[f"{meta['namespace']}/{meta['name']}"] = new
    metrics.usage_changed(meta["namespace"], queue or "", old.get("usage"), new.get("usage"))
    if old.get("phase") != new.get("phase"):
        metrics.phase_changed(old.get("phase"), new.get("phase"))
