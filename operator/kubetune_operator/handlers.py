"""Kopf handlers for FineTuneJobs: the operator's registration with Kopf and the one reconcile function, `sync`:
observe (reads through kube.py), decide (transition.py, pure), carry out (effects.py). Validation, planning,
building and status derivation live in kubetune_api, plan, builders and transition; the children's rules in
children.py."""

from __future__ import annotations

import dataclasses
import datetime
import os
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import kopf

from kubetune_api import validate_object
from kubetune_api.conditions import Phase
from kubetune_api.contract import PreparingLine, ProgressLine, last_line
from kubetune_api.names import GROUP, JOB_NAME_LABEL, PLURAL, QUEUE_LABEL, VERSION
from kubetune_api.policy import check as policy_check
from kubetune_api.preflight import PRODUCT_LABEL
from kubetune_api.status import FineTuneJobStatus, Preparing

from . import effects, ended, kube, metrics, polling, watched, webhook_auth
from .children import Refused, conflict, owned
from .effects import carry_out
from .kube import API, read
from .ledger import parse_time
from .observation import State, last_progress, observe, progress_status, rank0_pods, reads_spec
from .plan import Plan, billed_on, make_plan
from .preflight_outcome import preparing_status
from .settings import loaded
from .transition import Observed, finished, invalid, preflight_passed, refused, transition, typed_status

SETTINGS, POLICY = loaded()


_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
_last_log_read: dict[str, float] = {}


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
    kube.connect(os.environ.get("KUBECONFIG"), SETTINGS.workers)
    # the children are read from watch caches (watched.py), each stream filtered by the API server to our label
    for group, version, plural in watched.KINDS:
        settings.watching.label_selectors[(group, version, plural) if group else (version, plural)] = watched.SELECTOR
    watched.CACHE.indices = {name: kwargs[name] for name in map(watched.index_name, (k[2] for k in watched.KINDS))}
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
def reconcile(*, name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
    sync(namespace or "default", name, dict(body))


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def deleted(*, name: str, namespace: str | None, **_: Any) -> None:
    _last_log_read.pop(f"{namespace}/{name}", None)  # the children go with their owner references
    effects.forget(f"{namespace}/{name}")


@kopf.timer(GROUP, VERSION, PLURAL, interval=SETTINGS.sync_seconds, initial_delay=SETTINGS.sync_seconds, when=polling.busy)
def refresh(*, name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
    sync(namespace or "default", name, dict(body))  # the watch's body is current: not read again


@kopf.timer(GROUP, VERSION, PLURAL, interval=SETTINGS.wait_seconds, initial_delay=SETTINGS.sync_seconds, when=polling.waiting)
def look_again(*, name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
    sync(namespace or "default", name, dict(body))


# the watch caches: a sync reads its children from these (watched.py), not with a request each


@kopf.index("batch", "v1", "jobs", labels={JOB_NAME_LABEL: kopf.PRESENT})
def watched_jobs(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(namespace or "", name): watched.plain(body)}


@kopf.index("", "v1", "pods", labels={JOB_NAME_LABEL: kopf.PRESENT})
def watched_pods(
    *, namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[tuple[str, str], Any] | None:
    pod = watched.pod(body)
    return {(namespace or "", labels[JOB_NAME_LABEL]): pod} if pod is not None else None


@kopf.index("", "v1", "configmaps", labels={JOB_NAME_LABEL: kopf.PRESENT})
def watched_configmaps(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(namespace or "", name): watched.plain(body)}


@kopf.index("", "v1", "services", labels={JOB_NAME_LABEL: kopf.PRESENT})
def watched_services(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(namespace or "", name): watched.plain(body)}


@kopf.index("networking.k8s.io", "v1", "networkpolicies", labels={JOB_NAME_LABEL: kopf.PRESENT})
def watched_networkpolicies(
    *, namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    return {(namespace or "", name): watched.plain(body)}


@kopf.on.event("", "v1", "pods", labels={JOB_NAME_LABEL: kopf.PRESENT})
def pod_changed(*, body: kopf.Body, **_: Any) -> None:
    """A worker that ended preempted is kept for the next sync (its pod may be gone by then): nothing else."""
    ended.seen(dict(body))


@kopf.on.event("batch", "v1", "jobs", labels={JOB_NAME_LABEL: kopf.PRESENT})
def job_changed(*, labels: Mapping[str, str], namespace: str | None, type: str, **_: Any) -> None:
    if type in ("MODIFIED", "DELETED"):  # an ADDED Job is one we just created, or one on.resume already covers
        sync(namespace or "default", labels[JOB_NAME_LABEL])


# the one reconcile function


def _progress(plan: Plan, pods: list[dict[str, Any]], force: bool) -> ProgressLine | None:
    """Rank 0's newest progress line, read through pods/log at most once per sync interval per job."""
    rank0 = next((p for p in rank0_pods(pods) if (p.get("status") or {}).get("phase") == "Running"), None)
    return last_progress(_log_tail(plan, rank0, "workers", force))


def _preparing(plan: Plan, pods: list[dict[str, Any]]) -> Preparing | None:
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
    # only lines since a little before the last read: the cost of a read does not grow with the log
    return kube.log_tail(pod["metadata"]["name"], plan.namespace, since_seconds=max(60, int(3 * SETTINGS.sync_seconds)))


def sync(namespace: str, name: str, body: dict[str, Any] | None = None) -> None:
    """One reconcile of a job, on the watch's body when it already holds this operator's last status write (else
    the job is read from the API server: the watch is a moment behind the write)."""
    key = f"{namespace}/{name}"
    with _locks[key]:
        started = time.monotonic()
        if body is not None and not effects.seen_own_write(key, body):
            body = None
        try:
            _sync(namespace, name, body)
        except Refused as refusal:  # what carrying out found: the job cannot go on
            current = read(API.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name)
            if current is not None:
                previous = typed_status(current.get("status") or {})
                at = datetime.datetime.now(datetime.UTC)
                new, actions = refused(previous, refusal.reason, refusal.message, current["metadata"].get("generation"), at)
                carry_out(None, current, None, new, actions)
        finally:
            metrics.reconciled(time.monotonic() - started)


def _sync(namespace: str, name: str, body: dict[str, Any] | None) -> None:
    """Observe, decide (transition, pure), carry out; the status is written once, if it changed."""
    if body is None:
        body = read(API.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    previous = typed_status(body.get("status") or {})
    generation, at = body["metadata"].get("generation"), datetime.datetime.now(datetime.UTC)
    result = validate_object(body, source=f"{namespace}/{name}", cluster=True)
    if result.job is None:
        new, actions = invalid(previous, "; ".join(str(p) for p in result.problems), generation, at)
        carry_out(None, body, None, new, actions)
        return
    if previous.phase in (Phase.SUCCEEDED, Phase.FAILED):
        ttl = result.job.spec.runPolicy.ttlSecondsAfterFinished
        carry_out(None, body, None, previous, finished(previous, ttl, body["metadata"]["uid"], at))
        return
    plan, seen = _observe(body, result.job, previous, at)
    new, actions = transition(plan, seen, previous)
    carry_out(plan, body, seen.job, new, actions)


def _observe(body: dict[str, Any], job_spec: Any, previous: FineTuneJobStatus, at: datetime.datetime) -> tuple[Plan, Observed]:
    """Everything the decision needs, read once: the Job and its pods, the preflight's, the logs, the policy's word."""
    meta = body["metadata"]
    namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation")
    started = parse_time(previous.startTime)
    elapsed = (at - started).total_seconds() if started is not None else 0.0
    job = watched.CACHE.one("jobs", namespace, name)
    # the queue is fixed when the Job is made: removing the label from a started job does not skip the queue
    queue = (job["metadata"].get("labels") or {}).get(QUEUE_LABEL) if job is not None else None
    plan = make_plan(body, job_spec, SETTINGS, previous.restarts, elapsed, queue=queue, policy=POLICY)
    if job is not None and not owned(job, plan.uid):
        raise conflict("Job", plan)
    labels = (job["metadata"].get("labels") or {}) if job is not None else meta.get("labels")
    denied = policy_check(job_spec.spec, namespace, POLICY, labels) if POLICY is not None else []
    preflight, preflight_pods = None, []
    if job is None and plan.preflight and not preflight_passed(previous, generation):
        preflight = watched.CACHE.one("jobs", namespace, plan.preflight_name)
        if preflight is not None and not owned(preflight, plan.uid):
            raise conflict("Job", plan)
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
                found = API.core.read_node(node, _request_timeout=kube.REQUEST_TIMEOUT)
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
    listed = watched.CACHE.objects("pods", plan.namespace, plan.name)
    uid = job["metadata"]["uid"]
    ended.ours(uid)  # its pods' ends are kept from now on (the watch sees any pod with the label)
    return [p for p in ended.with_ended(uid, listed) if owned(p, uid)]


if SETTINGS.webhook_port:
    from . import admission  # noqa: F401  (registers the webhook's handlers only when it is served)
