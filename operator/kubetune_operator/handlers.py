"""Kopf handlers for FineTuneJobs: thin, typed, module-level. Validation, planning, building and status derivation
live in kubetune_api, plan, builders and status; these functions only read, decide with them, and write."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes import client, config

from kubetune_api import validate_object
from kubetune_api.conditions import Phase, Reason
from kubetune_api.contract import PREFLIGHT_FIGURES, PreparingLine, ProgressLine, last_line
from kubetune_api.names import GROUP, JOB_NAME_LABEL, PLURAL, QUEUE_LABEL, VERSION
from kubetune_api.policy import check as policy_check
from kubetune_api.preflight import PRODUCT_LABEL
from kubetune_api.status import FineTuneJobStatus

from . import builders, ended, metrics, polling, webhook_auth
from .ledger import parse_time
from .observation import State, last_progress, observe, progress_status, rank0_pods, reads_spec
from .plan import Plan, billed_on, make_plan
from .preflight_outcome import GENERATION_ANNOTATION, preparing_status
from .settings import loaded
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
    Observed,
    SuspendJob,
    WriteStatus,
    finished,
    invalid,
    preflight_passed,
    refused,
    transition,
    typed_status,
)

SETTINGS, POLICY = loaded()
LOG_LIMIT = 64 * 1024  # bytes of rank 0's log read per sync
LOG_TIMEOUT = 5  # seconds a log read may take


_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
_last_log_read: dict[str, float] = {}


class Api:
    """The kubernetes clients, created once the operator has credentials."""

    core: client.CoreV1Api
    batch: client.BatchV1Api
    networking: client.NetworkingV1Api
    custom: client.CustomObjectsApi


API = Api()


def _raw(fn: Any, *args: Any, **kwargs: Any) -> bytes:
    """Call the API and return the response's bytes, skipping the client's models (they cost more CPU than the
    rest of a sync). The body is read and the connection given back to the pool, or the next call would
    open a new TLS connection."""
    response = fn(*args, _preload_content=False, **kwargs)
    try:
        return bytes(response.data)
    finally:
        response.release_conn()


def _json(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """A read as the API server's JSON, or None for 404."""
    data = _read(_raw, fn, *args, **kwargs)
    return None if data is None else json.loads(data)


REQUEST_TIMEOUT = (10, 60)  # seconds to connect, to read a response: no sync thread (holding its job's lock) waits longer


class BoundedApiClient(client.ApiClient):  # type: ignore[misc]
    """Every request the operator makes through the kubernetes client carries a timeout (the client has none by
    default: a frozen API server would hold a sync thread, and its job's lock, for ever); a call that names its own
    keeps it."""

    def call_api(self, *args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return super().call_api(*args, _request_timeout=_request_timeout or REQUEST_TIMEOUT, **kwargs)


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # read now, not at import time
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = SETTINGS.workers  # one kept-alive connection per sync thread
    api = BoundedApiClient(configuration)
    API.core, API.batch, API.custom = client.CoreV1Api(api), client.BatchV1Api(api), client.CustomObjectsApi(api)
    API.networking = client.NetworkingV1Api(api)
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.kubetune.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kopf.kubetune.dev")
    settings.posting.level = 40  # kopf's own log lines stay out of Events; ours are posted explicitly
    settings.watching.server_timeout = 120
    settings.networking.request_timeout = 60
    # a sync mostly waits on the API server, so more threads than cores keep a burst of new jobs moving
    settings.execution.max_workers = SETTINGS.workers
    # a per-object worker (and the last body it holds) ends this long after the object's last event: short, so a
    # burst of a thousand new jobs does not keep a thousand bodies of each kind in memory at once
    settings.batching.idle_timeout = SETTINGS.idle_seconds
    if SETTINGS.peering:
        settings.peering.name = SETTINGS.peering
        settings.peering.mandatory = True
        settings.peering.lifetime = SETTINGS.peering_lifetime
        # Kopf freezes every replica of equal priority, so each takes its start time: the newest is active (a
        # rolling update hands over at once) and the others stand by until its record expires
        settings.peering.priority = time.time_ns() // 1_000_000 % 2**31
    else:
        settings.peering.standalone = True
    if SETTINGS.webhook_port:  # the chart's ValidatingWebhookConfiguration points its Service here
        settings.admission.server = webhook_auth.server(SETTINGS)
        settings.admission.managed = None
    metrics.serve(SETTINGS.metrics_port)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, its service account; elsewhere, the kubeconfig that $KUBECONFIG names when the operator starts."""
    info = kopf.login_with_service_account(**kwargs)
    if info is not None:
        return dataclasses.replace(info, server=in_cluster_server(os.environ) or info.server)
    return kopf.login_with_kubeconfig(**kwargs)


def in_cluster_server(env: Mapping[str, str]) -> str | None:
    """The API server as the kubelet tells every pod (KUBERNETES_SERVICE_HOST/PORT), as client-go and the kubernetes
    client's in-cluster configuration read it: Kopf's own guess, https://kubernetes.default.svc, needs the cluster's
    DNS, and the sync's reads would otherwise go to one address and the watches to another."""
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
def first_seen(*, name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
    """A new job, or every job when the operator starts: the watch's body is current, so it is not read again."""
    sync(namespace or "default", name, dict(body))


@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile(*, name: str, namespace: str | None, **_: Any) -> None:
    sync(namespace or "default", name)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def deleted(*, name: str, namespace: str | None, **_: Any) -> None:
    _last_log_read.pop(f"{namespace}/{name}", None)  # the children go with their owner references


@kopf.timer(GROUP, VERSION, PLURAL, interval=SETTINGS.sync_seconds, initial_delay=SETTINGS.sync_seconds, when=polling.busy)
def refresh(*, name: str, namespace: str | None, **_: Any) -> None:
    sync(namespace or "default", name)


@kopf.timer(GROUP, VERSION, PLURAL, interval=SETTINGS.wait_seconds, initial_delay=SETTINGS.sync_seconds, when=polling.waiting)
def look_again(*, name: str, namespace: str | None, **_: Any) -> None:
    sync(namespace or "default", name)


@kopf.on.event("", "v1", "pods", labels={JOB_NAME_LABEL: kopf.PRESENT})
def pod_changed(*, body: kopf.Body, **_: Any) -> None:
    """A worker that ended preempted is kept for the next sync (its pod may be gone by then): nothing else."""
    ended.seen(dict(body))


@kopf.on.event("batch", "v1", "jobs", labels={JOB_NAME_LABEL: kopf.PRESENT})
def job_changed(*, labels: Mapping[str, str], namespace: str | None, type: str, **_: Any) -> None:
    if type in ("MODIFIED", "DELETED"):  # an ADDED Job is one we just created, or one on.resume already covers
        sync(namespace or "default", labels[JOB_NAME_LABEL])


# the one reconcile function


def _read(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise kopf.TemporaryError(f"API error {exc.status}: {exc.reason}", delay=5) from exc


def _event(body: dict[str, Any], reason: str, message: str, warning: bool = False) -> None:
    meta = body["metadata"]
    stamp = datetime.datetime.now(datetime.UTC)
    event = client.CoreV1Event(
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
        _raw(API.core.create_namespaced_event, meta["namespace"], event)


class Refused(Exception):
    """The job cannot go on: a name is taken by an object it does not own, or the API server rejects a child."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def owned(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether obj's controller owner reference is the object with this uid: the only children the operator touches."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return bool(uid) and any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def _conflict(kind: str, plan: Plan) -> Refused:
    name = plan.config_name if kind == "ConfigMap" else plan.job_name  # the Job, Service and NetworkPolicy: the job's name
    return Refused(
        Reason.NAME_CONFLICT,
        f"{kind} {plan.namespace}/{name} exists and is not owned by this FineTuneJob; it was left untouched. "
        "Rename the FineTuneJob or remove that object",
    )


def _rejected(kind: str, exc: client.ApiException) -> Refused:
    """A 422 (or 400) on a child: the API server's own words, as InvalidSpec. Retrying cannot help."""
    try:
        message = str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        message = str(exc.reason)
    return Refused(Reason.INVALID_SPEC, f"the API server rejected the {kind}: {message}"[:2000])


def _ensure(plan: Plan, obj: dict[str, Any], fresh: bool) -> None:
    """Create a ConfigMap or Service, or put back what someone changed by hand. For a new gang (fresh) it is
    created straight away; only if it exists already is it read and compared."""
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
    current = None if fresh else _json(read, name, plan.namespace)
    if current is None:
        try:
            _raw(create, plan.namespace, obj)
            return
        except client.ApiException as exc:
            if exc.status in (400, 422):
                raise _rejected(kind, exc) from exc
            if exc.status != 409:
                raise kopf.TemporaryError(f"cannot create {kind} {name}: {exc.reason}", delay=5) from exc
        current = _json(read, name, plan.namespace)
        if current is None:
            raise kopf.TemporaryError(f"{kind} {name} exists and does not: retrying", delay=1)
    if not owned(current, plan.uid):
        raise _conflict(kind, plan)
    # the uid in the patch is a precondition: an object replaced since the read is refused, not rewritten
    uid = {"uid": current["metadata"]["uid"]}
    if kind == "ConfigMap" and current.get("data") != obj["data"]:
        _raw(patch, name, plan.namespace, {"metadata": uid, "data": obj["data"]})
    elif kind == "Service" and ((current.get("spec") or {}).get("selector") or {}) != obj["spec"]["selector"]:
        selector = replacing((current.get("spec") or {}).get("selector"), obj["spec"]["selector"])
        _raw(patch, name, plan.namespace, {"metadata": uid, "spec": {"selector": selector}})
    elif kind == "NetworkPolicy" and {k: (current.get("spec") or {}).get(k) for k in obj["spec"]} != obj["spec"]:
        _raw(patch, name, plan.namespace, {"metadata": uid, "spec": replacing(current.get("spec"), obj["spec"])})


def replacing(current: Any, desired: Any) -> Any:
    """A JSON merge patch that turns current into desired: keys someone added by hand are removed (null), not kept."""
    if not isinstance(current, dict) or not isinstance(desired, dict):
        return desired
    out = {k: None for k in current if k not in desired}
    out.update({k: replacing(current.get(k), v) for k, v in desired.items()})
    return out


def _write_status(body: dict[str, Any], status: FineTuneJobStatus, queue: str | None = None) -> None:
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
        _raw(API.custom.patch_namespaced_custom_object_status, GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], patch)
    except client.ApiException as exc:
        if exc.status != 404:
            raise kopf.TemporaryError(f"cannot write status: {exc.reason}", delay=5) from exc
        return
    metrics.usage_changed(meta["namespace"], queue or "", old.get("usage"), new.get("usage"))
    if old.get("phase") != new.get("phase"):
        metrics.phase_changed(old.get("phase"), new.get("phase"))


def _progress(plan: Plan, pods: list[dict[str, Any]], force: bool) -> ProgressLine | None:
    """Rank 0's newest progress line, read through pods/log at most once per sync interval per job."""
    rank0 = next((p for p in rank0_pods(pods) if (p.get("status") or {}).get("phase") == "Running"), None)
    return last_progress(_log_tail(plan, rank0, "workers", force))


def _preparing(plan: Plan, pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The preflight pod's newest `preparing` line (tokenizing and packing the dataset), read the same way."""
    running = next((p for p in pods if (p.get("status") or {}).get("phase") == "Running"), None)
    line = last_line(_log_tail(plan, running, "preflight", force=False), PreparingLine)
    return preparing_status(line) if line else None


def _log_tail(plan: Plan, pod: dict[str, Any] | None, which: str, force: bool) -> str:
    """The end of a pod's trainer log, at most once per sync interval per job and pod role, bounded in lines, bytes
    and time: best effort, a slow or failing read never holds up the status ("" then)."""
    key = f"{plan.namespace}/{plan.name}/{which}"
    if pod is None or (not force and time.monotonic() - _last_log_read.get(key, 0.0) < SETTINGS.sync_seconds * 0.9):
        return ""
    _last_log_read[key] = time.monotonic()
    try:
        log = API.core.read_namespaced_pod_log(
            pod["metadata"]["name"],
            plan.namespace,
            container="trainer",
            tail_lines=100,
            limit_bytes=LOG_LIMIT,
            # only lines since a little before the last read: the cost of a read does not grow with the log
            since_seconds=max(60, int(3 * SETTINGS.sync_seconds)),
            _request_timeout=LOG_TIMEOUT,
        )
    except Exception:
        return ""
    return log if isinstance(log, str) else ""


def sync(namespace: str, name: str, body: dict[str, Any] | None = None) -> None:
    with _locks[f"{namespace}/{name}"]:
        started = time.monotonic()
        try:
            _sync(namespace, name, body)
        except Refused as refusal:  # what carrying out found: the job cannot go on
            current = _read(API.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name)
            if current is not None:
                previous = typed_status(current.get("status") or {})
                at = datetime.datetime.now(datetime.UTC)
                new, actions = refused(previous, refusal.reason, refusal.message, current["metadata"].get("generation"), at)
                _carry_out(None, current, None, new, actions)
        finally:
            metrics.reconciled(time.monotonic() - started)


def _sync(namespace: str, name: str, body: dict[str, Any] | None) -> None:
    """Observe, decide (transition, pure), carry out; the status is written once, if it changed."""
    if body is None:
        body = _read(API.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    previous = typed_status(body.get("status") or {})
    generation, at = body["metadata"].get("generation"), datetime.datetime.now(datetime.UTC)
    result = validate_object(body, source=f"{namespace}/{name}", cluster=True)
    if result.job is None:
        new, actions = invalid(previous, "; ".join(str(p) for p in result.problems), generation, at)
        _carry_out(None, body, None, new, actions)
        return
    if previous.phase in (Phase.SUCCEEDED, Phase.FAILED):
        ttl = result.job.spec.runPolicy.ttlSecondsAfterFinished
        _carry_out(None, body, None, previous, finished(previous, ttl, body["metadata"]["uid"], at))
        return
    plan, seen = _observe(body, result.job, previous, at)
    new, actions = transition(plan, seen, previous)
    _carry_out(plan, body, seen.job, new, actions)


def _observe(body: dict[str, Any], job_spec: Any, previous: FineTuneJobStatus, at: datetime.datetime) -> tuple[Plan, Observed]:
    """Everything the decision needs, read once: the Job and its pods, the preflight's, the logs, the policy's word."""
    meta = body["metadata"]
    namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation")
    started = parse_time(previous.startTime)
    elapsed = (at - started).total_seconds() if started is not None else 0.0
    job = _json(API.batch.read_namespaced_job, name, namespace)
    # the queue is fixed when the Job is made: removing the label from a started job does not skip the queue
    queue = (job["metadata"].get("labels") or {}).get(QUEUE_LABEL) if job is not None else None
    plan = make_plan(body, job_spec, SETTINGS, previous.restarts, elapsed, queue=queue, policy=POLICY)
    if job is not None and not owned(job, plan.uid):
        raise _conflict("Job", plan)
    labels = (job["metadata"].get("labels") or {}) if job is not None else meta.get("labels")
    denied = policy_check(job_spec.spec, namespace, POLICY, labels) if POLICY is not None else []
    preflight, preflight_pods = None, []
    if job is None and plan.preflight and not preflight_passed(previous, generation):
        preflight = _json(API.batch.read_namespaced_job, plan.preflight_name, namespace)
        if preflight is not None and not owned(preflight, plan.uid):
            raise _conflict("Job", plan)
        preflight_pods = _pods_of(plan, preflight)
    pods = _pods_of(plan, job)
    ran_on = _gpu_product(pods) or (previous.usage.gpuType if previous.usage is not None else None) or ""
    plan = billed_on(plan, ran_on, SETTINGS)
    observation = observe(job, pods, plan.workers)
    line = _progress(plan, pods, force=False) if observation.state == State.RUNNING else None
    preparing = _preparing(plan, preflight_pods) if preflight_pods else None
    seen = Observed(
        generation,
        at,
        job,
        pods,
        preflight,
        preflight_pods,
        progress_status(line) if line else None,
        preparing,
        denied=tuple(str(p) for p in denied),
        spec_changed=job is not None and not reads_spec(job, job_spec.spec),
        observation=observation,
        checkpoint_step=line.checkpointStep if line else None,
    )
    return plan, seen


_node_products: dict[str, str] = {}  # node name -> its GPU product label ("" none): nodes keep their GPUs
NODES_KEPT = 4096


def _gpu_product(pods: list[dict[str, Any]]) -> str:
    """The GPU product label of the node worker 0 (else any worker) was scheduled on, read once per node; "" when
    none is scheduled yet, the node cannot be read, or it has no label (the GPU feature discovery's)."""
    for pod in [*rank0_pods(pods), *pods]:
        node = (pod.get("spec") or {}).get("nodeName")
        if not isinstance(node, str) or not node:
            continue
        if node not in _node_products:
            try:
                found = API.core.read_node(node, _request_timeout=REQUEST_TIMEOUT)
                labels = (found.metadata.labels or {}) if found.metadata is not None else {}
            except Exception:  # best effort: billed at the spec's type until the node can be read
                return ""
            if len(_node_products) >= NODES_KEPT:
                _node_products.clear()
            _node_products[node] = str(labels.get(PRODUCT_LABEL) or "")[:128]
        return _node_products[node]
    return ""


def _pods_of(plan: Plan, job: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A Job's own pods (its uid in their owner references): no look-alikes, and never the other Job's."""
    if job is None:
        return []
    listed = _json(API.core.list_namespaced_pod, plan.namespace, label_selector=f"{JOB_NAME_LABEL}={plan.name}")
    uid = job["metadata"]["uid"]
    ended.ours(uid)  # its pods' ends are kept from now on (the watch sees any pod with the label)
    return [p for p in ended.with_ended(uid, (listed or {}).get("items") or []) if owned(p, uid)]


def _create_job(plan: Plan, obj: dict[str, Any]) -> None:
    try:
        _raw(API.batch.create_namespaced_job, plan.namespace, obj)
    except client.ApiException as exc:
        if exc.status in (400, 422):
            raise _rejected("Job", exc) from exc
        if exc.status != 409:
            raise kopf.TemporaryError(f"cannot create Job {obj['metadata']['name']}: {exc.reason}", delay=5) from exc


def _carry_out(
    plan: Plan | None, body: dict[str, Any], job: dict[str, Any] | None, new: FineTuneJobStatus, actions: list[Action]
) -> None:
    """The decision's actions, in order; the status is written where WriteStatus says, else at the end. Actions on
    children come only with a plan (invalid, refused and finished jobs have none)."""
    written = False
    for action in actions:
        if isinstance(action, WriteStatus):
            _write_status(body, new, plan.queue if plan else None)
            written = True
        elif isinstance(action, Emit):
            _event(body, action.reason, action.message, warning=action.warning)
        elif isinstance(action, CountRestart):
            metrics.restarted()
        elif isinstance(action, Expire):
            _delete_self(body["metadata"], action.uid)
        elif plan is None:
            raise AssertionError(f"{action} needs the job's plan")
        elif isinstance(action, EnsureChildren):
            for child in (builders.build_configmap(plan), builders.build_service(plan), builders.build_network_policy(plan)):
                _ensure(plan, child, fresh=action.fresh)
        elif isinstance(action, CreatePreflight):
            preflight = builders.build_preflight_job(plan)
            preflight["metadata"].setdefault("annotations", {})[GENERATION_ANNOTATION] = str(body["metadata"].get("generation"))
            _create_job(plan, preflight)
        elif isinstance(action, DeletePreflight):
            _delete_job(plan, {"metadata": {"uid": action.uid}}, plan.preflight_name)
        elif isinstance(action, CreateJob):  # the preflight's figures go with it, for the run's tracking
            figures = new.preflight.model_dump(include=set(PREFLIGHT_FIGURES), exclude_none=True) if new.preflight else {}
            contents = new.preflight.preparedSha256 if new.preflight else None
            _create_job(plan, builders.build_job(plan, figures, contents))
        elif isinstance(action, Annotate):
            _annotate(plan, job, action)
        elif isinstance(action, SuspendJob):
            _patch_job(plan, job, {"spec": {"suspend": action.suspend}})
        elif isinstance(action, DeleteJob):
            _delete_job(plan, {"metadata": {"uid": action.uid}})
    if not written:
        _write_status(body, new, plan.queue if plan else None)


def _patch_job(plan: Plan, job: dict[str, Any] | None, patch: dict[str, Any]) -> None:
    """Patch our Job; its uid in the patch makes the API server refuse it if the Job was replaced since it was read."""
    assert job is not None
    try:
        _raw(
            API.batch.patch_namespaced_job, plan.job_name, plan.namespace, {"metadata": {"uid": job["metadata"]["uid"]}, **patch}
        )
    except client.ApiException as exc:
        raise kopf.TemporaryError(f"cannot patch Job {plan.job_name}: {exc.reason}", delay=5) from exc


CHECKPOINT_ANNOTATIONS = ("kubetune.dev/last-checkpoint-time", "volcano.sh/last-checkpoint-time")


def _annotate(plan: Plan, job: dict[str, Any] | None, action: Annotate) -> None:
    """The newest checkpoint's time where a scheduler or a platform's preemption policy reads it: on the Job and its
    running workers (best effort: the status has it too; a pod that went away is skipped)."""
    annotations = dict.fromkeys(CHECKPOINT_ANNOTATIONS, action.at)
    if job is not None:
        _patch_job(plan, job, {"metadata": {"annotations": annotations}})
    for name, uid in action.pods:
        with contextlib.suppress(client.ApiException):
            _raw(API.core.patch_namespaced_pod, name, plan.namespace, {"metadata": {"uid": uid, "annotations": annotations}})


def _delete_job(plan: Plan, job: dict[str, Any], name: str | None = None) -> None:
    """Delete our Job and, first, its pods (foreground); the uid precondition spares a Job someone put in its place."""
    options = client.V1DeleteOptions(
        propagation_policy="Foreground", preconditions=client.V1Preconditions(uid=job["metadata"]["uid"])
    )
    try:
        _raw(API.batch.delete_namespaced_job, name or plan.job_name, plan.namespace, body=options)
    except client.ApiException as exc:
        if exc.status not in (404, 409):  # 409: the precondition failed, the Job is another one now
            raise kopf.TemporaryError(f"cannot delete Job {name or plan.job_name}: {exc.reason}", delay=5) from exc


def _delete_self(meta: Mapping[str, Any], uid: str) -> None:
    """Delete the FineTuneJob (its children go with their owner references). The uid precondition: a FineTuneJob
    created under the same name since this one was read is spared."""
    options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))
    try:
        _raw(API.custom.delete_namespaced_custom_object, GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], body=options)
    except client.ApiException as exc:
        if exc.status not in (404, 409):
            raise kopf.TemporaryError(f"cannot delete {meta['name']}: {exc.reason}", delay=5) from exc


if SETTINGS.webhook_port:
    from . import admission  # noqa: F401  (registers the webhook's handlers only when it is served)
