"""Plan to Kubernetes objects: pure functions, no API calls (what `kubetune render` prints)."""

from __future__ import annotations

import json
from typing import Any

from kubetune_api import contract
from kubetune_api._types import quantity_value
from kubetune_api.ds_config import deepspeed_config
from kubetune_api.job import pods_digest
from kubetune_api.manifests import dump

from .plan import Plan

CACHE_DIR = "/var/cache/kubetune"
MODEL_CACHE_DIR = "/var/cache/kubetune-models"  # the node's model cache, when the chart gives one


HOSTPATH_MAX_BYTES = 500 << 30  # a node directory is bounded even when the chart sets no bound (the node's whole)
USAGE = ".usage"  # within a node directory: each namespace's cache total (no namespace name starts with a dot)


def model_cache_volume(setting: str) -> dict[str, Any] | None:
    """The volume for Settings.model_cache: hostPath:/dir (a directory on the node) or pvc:claim; None for none.
    The trainer keys its entries per namespace within it (model_cache_dir)."""
    kind, _, where = setting.partition(":")
    if kind == "hostPath" and where.startswith("/"):
        return {"name": "models", "hostPath": {"path": where, "type": "DirectoryOrCreate"}}
    if kind == "pvc" and where:
        return {"name": "models", "persistentVolumeClaim": {"claimName": where}}
    if setting:
        raise ValueError(f"model cache {setting!r}: expected hostPath:/absolute/dir or pvc:claim-name")
    return None


def model_cache_mounts(plan: Plan) -> list[dict[str, Any]]:
    """Where the pod sees the model cache. A node directory (hostPath) is shared by every namespace's pods on the
    node, so a pod mounts only its namespace's directory (a subPath) and the totals' record beside it (.usage/), each
    at the path it would have in the whole: no pod can list, read or write another namespace's models. The kubelet
    makes a missing subPath with the node directory's own mode, so the platform makes that directory 1777 (docs/
    platform.md). A claim (pvc) is the namespace's own: it is mounted whole."""
    if not plan.model_cache.startswith("hostPath:"):
        return [{"name": "models", "mountPath": MODEL_CACHE_DIR}]
    return [
        {"name": "models", "mountPath": f"{MODEL_CACHE_DIR}/{plan.namespace}", "subPath": plan.namespace},
        {"name": "models", "mountPath": f"{MODEL_CACHE_DIR}/{USAGE}", "subPath": USAGE},
    ]


def model_cache_bound(plan: Plan) -> int:
    """Bytes the cache may hold before least recently used entries go: the chart's bound, else HOSTPATH_MAX_BYTES for
    a node directory."""
    if plan.model_cache_max_bytes or not plan.model_cache.startswith("hostPath:"):
        return plan.model_cache_max_bytes
    return HOSTPATH_MAX_BYTES


CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def _meta(plan: Plan, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": plan.namespace, "labels": dict(plan.labels), "ownerReferences": [plan.owner]}


def build_configmap(plan: Plan) -> dict[str, Any]:
    """The resolved trainer config and the DeepSpeed JSON; never a credential (the spec holds none)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(plan, plan.config_name),
        "data": {
            contract.CONFIG_FILE: dump(plan.spec.model_dump(mode="json")),
            contract.DEEPSPEED_FILE: json.dumps(deepspeed_config(plan.spec), indent=2, sort_keys=True),
        },
    }


def build_service(plan: Plan) -> dict[str, Any]:
    """Headless Service so pod 0 is reachable as <job>-0.<service> before it is ready."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(plan, plan.service_name),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {k: v for k, v in plan.labels.items() if k != "kueue.x-k8s.io/queue-name"},
            "ports": [{"name": "rendezvous", "port": plan.master_port, "targetPort": plan.master_port}],
        },
    }


def build_network_policy(plan: Plan) -> dict[str, Any]:
    """Only this job's own pods may reach its pods, on any port: torch.distributed's rendezvous and the collectives'
    ports carry no authentication, so nothing else in the cluster (another tenant's pod above all) may connect.
    Egress stays open: the pods need DNS and object storage."""
    selector = {k: v for k, v in plan.labels.items() if k != "kueue.x-k8s.io/queue-name"}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(plan, plan.network_policy_name),
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": selector}}]}],
        },
    }


def _env(plan: Plan, estimates: dict[str, float] | None = None, tracked: bool = True) -> list[dict[str, Any]]:
    spec = plan.spec
    env: list[dict[str, Any]] = [
        {"name": contract.ENV_CONFIG, "value": f"{contract.CONFIG_DIR}/{contract.CONFIG_FILE}"},
        {"name": contract.ENV_JOB_NAME, "value": plan.name},
        {"name": contract.ENV_JOB_UID, "value": plan.uid},
        {"name": contract.ENV_NUM_WORKERS, "value": str(plan.workers)},
        {"name": contract.ENV_PROCS_PER_WORKER, "value": str(plan.processes)},
        {"name": contract.ENV_MASTER_ADDR, "value": plan.master_addr},
        {"name": contract.ENV_MASTER_PORT, "value": str(plan.master_port)},
        {"name": contract.ENV_TERMINATION_LOG, "value": contract.TERMINATION_MESSAGE_PATH},
        {"name": contract.ENV_RESTART_COUNT, "value": str(plan.restart)},
        {"name": contract.ENV_CACHE, "value": f"{CACHE_DIR}/cache"},
        {"name": contract.ENV_WORK_DIR, "value": f"{CACHE_DIR}/work"},
        *(
            [
                # entries are kept per namespace: no job finds, verifies against or loads another tenant's model
                {"name": contract.ENV_MODEL_CACHE, "value": f"{MODEL_CACHE_DIR}/{plan.namespace}"},
                {"name": contract.ENV_MODEL_CACHE_MAX_BYTES, "value": str(model_cache_bound(plan))},
                *(
                    [{"name": contract.ENV_MODEL_CACHE_USAGE, "value": f"{MODEL_CACHE_DIR}/{USAGE}"}]
                    if plan.model_cache.startswith("hostPath:")
                    else []
                ),
            ]
            if plan.model_cache
            else []
        ),
        {"name": "HOME", "value": "/tmp"},
        {"name": "PYTHONNOUSERSITE", "value": "1"},  # nothing under the writable HOME is ever imported
        {"name": "PYTHONSAFEPATH", "value": "1"},  # nor from the working directory (/tmp, writable)
    ]
    if spec.storage.credentialsSecret:
        env += [
            {
                "name": key,
                "valueFrom": {
                    "secretKeyRef": {"name": spec.storage.credentialsSecret, "key": key, "optional": key == "AWS_SESSION_TOKEN"}
                },
            }
            for key in CREDENTIAL_KEYS
        ]
    env += _tracking_env(plan, estimates) if tracked else []  # the preflight tracks nothing: no credentials for it
    env += [{"name": e.name, "value": e.value} for e in spec.workers.env]
    return env


TRACKING_KEYS = contract.TRACKING_CREDENTIALS


def _tracking_env(plan: Plan, estimates: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """The platform's MLflow server for rank 0 (MLflow's own variable names); its credentials by reference to the
    platform's Secret in the job's namespace, each key optional (a token, or a user and password)."""
    tracking = plan.spec.output.tracking
    if not plan.mlflow_uri or (tracking is not None and not tracking.enabled):
        return []
    env: list[dict[str, Any]] = [
        {"name": "MLFLOW_TRACKING_URI", "value": plan.mlflow_uri},
        {"name": contract.ENV_NAMESPACE, "value": plan.namespace},
    ]
    if plan.shared_tracking_names:
        env.append({"name": contract.ENV_SHARED_NAMES, "value": "true"})
    if estimates:
        env.append({"name": contract.ENV_PREFLIGHT, "value": json.dumps(estimates, sort_keys=True)})
    if plan.mlflow_secret:
        env += [
            {"name": key, "valueFrom": {"secretKeyRef": {"name": plan.mlflow_secret, "key": key, "optional": True}}}
            for key in TRACKING_KEYS
        ]
    return env


TMP_SIZE = "4Gi"  # /tmp (HOME): compiled kernels, torch's caches


def _resources(plan: Plan) -> dict[str, Any]:
    requests = dict(plan.spec.workers.resources.requests)
    limits = dict(plan.spec.workers.resources.limits)
    if (
        "ephemeral-storage" not in requests and "ephemeral-storage" not in limits
    ):  # the cache and /tmp volumes, so the scheduler places the pod where they fit
        total = int(quantity_value(plan.spec.workers.cacheSize) + quantity_value(TMP_SIZE))
        requests["ephemeral-storage"] = f"{total >> 30}Gi" if total % (1 << 30) == 0 else str(total)
    if plan.gpus:
        limits[plan.spec.workers.gpuResourceName] = plan.gpus
        requests[plan.spec.workers.gpuResourceName] = plan.gpus
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = {k: str(v) for k, v in requests.items()}
    if limits:
        out["limits"] = {k: str(v) for k, v in limits.items()}
    return out


def build_pod_spec(
    plan: Plan, estimates: dict[str, float] | None = None, tracked: bool = True, prepared: str | None = None
) -> dict[str, Any]:
    spec = plan.spec
    pod: dict[str, Any] = {
        "subdomain": plan.service_name,
        "restartPolicy": "Never",  # a failed rank fails the gang; the operator restarts all workers together
        # time to checkpoint the step reached and upload it when preempted, evicted or suspended
        "terminationGracePeriodSeconds": plan.grace,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "trainer",
                "image": plan.image,
                "command": ["python", "-m", "kubetune_trainer"],
                "env": _env(plan, estimates, tracked)
                + ([{"name": contract.ENV_PREPARED, "value": prepared}] if prepared else []),
                "resources": _resources(plan),
                "ports": [{"name": "rendezvous", "containerPort": plan.master_port}],
                "volumeMounts": [
                    {"name": "config", "mountPath": contract.CONFIG_DIR, "readOnly": True},
                    {"name": "cache", "mountPath": CACHE_DIR},
                    {"name": "tmp", "mountPath": "/tmp"},
                    {"name": "shm", "mountPath": "/dev/shm"},
                ],
                "terminationMessagePath": contract.TERMINATION_MESSAGE_PATH,
                # the file only: a log line can never be taken for the summary
                "terminationMessagePolicy": "File",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
        "volumes": [
            {"name": "config", "configMap": {"name": plan.config_name}},
            {"name": "cache", "emptyDir": {"sizeLimit": str(spec.workers.cacheSize)}},
            {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": str(spec.workers.sharedMemory)}},
        ],
    }
    models = model_cache_volume(plan.model_cache)
    if models is not None:
        pod["volumes"].append(models)
        pod["containers"][0]["volumeMounts"] += model_cache_mounts(plan)
    if spec.storage.serviceAccountName:
        pod["serviceAccountName"] = spec.storage.serviceAccountName
    if spec.workers.nodeSelector:
        pod["nodeSelector"] = dict(spec.workers.nodeSelector)
    if spec.workers.tolerations:
        pod["tolerations"] = [t.model_dump(mode="json", exclude_none=True) for t in spec.workers.tolerations]
    if spec.workers.priorityClassName:
        pod["priorityClassName"] = spec.workers.priorityClassName
    return pod


ATTEMPT_ANNOTATION = "kubetune.dev/attempt"  # gang restarts before this Job: a failure is counted once per Job
SPEC_ANNOTATION = "kubetune.dev/spec-digest"  # job.pods_digest of the spec the Job's pods read


def attempt_of(job: dict[str, Any], default: int) -> int:
    try:
        return int(((job.get("metadata") or {}).get("annotations") or {})[ATTEMPT_ANNOTATION])
    except (KeyError, ValueError):
        return default


def build_job(plan: Plan, estimates: dict[str, float] | None = None, prepared: str | None = None) -> dict[str, Any]:
    """An Indexed Job, one pod per worker; the completion index is the node rank. `estimates`: the preflight's
    figures, which a tracked run logs beside its own; `prepared`: the digest of the prepared dataset it left (the
    workers fetch that set only if it still has it)."""
    job: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            **_meta(plan, plan.job_name),
            "annotations": {ATTEMPT_ANNOTATION: str(plan.restart), SPEC_ANNOTATION: pods_digest(plan.spec)},
        },
        "spec": {
            "completionMode": "Indexed",
            "completions": plan.workers,
            "parallelism": plan.workers,
            "backoffLimit": 0,  # gang semantics: one failed pod fails this Job; the operator recreates it
            # a worker taken off its node (preempted, evicted, drained) or one that stopped because a peer was, having
            # checkpointed, is not a failure: the Job controller starts it again, and it resumes from that checkpoint
            "podFailurePolicy": {
                "rules": [
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                    {
                        "action": "Ignore",
                        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [contract.EXIT_PREEMPTED]},
                    },
                ]
            },
            "suspend": plan.suspend or bool(plan.queue),  # a queued Job waits for Kueue to admit it
            "template": {
                "metadata": {"labels": {k: v for k, v in plan.labels.items() if k != "kueue.x-k8s.io/queue-name"}},
                "spec": build_pod_spec(plan, estimates, prepared=prepared),
            },
        },
    }
    if plan.active_deadline is not None:
        job["spec"]["activeDeadlineSeconds"] = plan.active_deadline
    return job


PREFLIGHT_ROLE = {"kubetune.dev/role": "preflight"}


def build_preflight_job(plan: Plan) -> dict[str, Any]:
    """The preflight: one pod with no GPU and none of the GPU nodes' placement, the job's own credentials and
    config, running the CPU-only checks (kubetune_trainer.preflight). Never queued: it takes no GPU quota."""
    pod = build_pod_spec(plan, tracked=False)
    for key in ("subdomain", "nodeSelector", "tolerations", "priorityClassName"):
        pod.pop(key, None)
    container = pod["containers"][0]
    container["command"] = ["python", "-m", "kubetune_trainer.preflight"]
    container.pop("ports", None)
    cpu, memory = plan.preflight_resources
    storage = container["resources"].get("requests", {}).get("ephemeral-storage")
    container["resources"] = {
        "requests": {"cpu": cpu, "memory": memory, **({"ephemeral-storage": storage} if storage else {})},
        "limits": {"memory": memory},
    }
    container["env"] = [
        e
        for e in container["env"]
        if e["name"] not in (contract.ENV_MODEL_CACHE, contract.ENV_MODEL_CACHE_MAX_BYTES, contract.ENV_MODEL_CACHE_USAGE)
    ]
    if plan.gpu_type:
        container["env"] += [{"name": contract.ENV_GPU_TYPE, "value": plan.gpu_type}]
    if plan.gpu:
        container["env"] += [{"name": contract.ENV_GPU, "value": plan.gpu}]
    container["env"] += [{"name": contract.ENV_GRACE, "value": str(plan.grace)}]  # the workers' grace, for its warning
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "models"]
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] != "models"]
    labels = {k: v for k, v in plan.labels.items() if k != "kueue.x-k8s.io/queue-name"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {**_meta(plan, plan.preflight_name), "labels": {**labels, **PREFLIGHT_ROLE}},
        "spec": {
            "completions": 1,
            "parallelism": 1,
            "backoffLimit": 0,
            "activeDeadlineSeconds": plan.preflight_deadline,
            "template": {"metadata": {"labels": {**labels, **PREFLIGHT_ROLE}}, "spec": pod},
        },
    }


def build_children(plan: Plan) -> list[dict[str, Any]]:
    preflight = [build_preflight_job(plan)] if plan.preflight else []
    return [build_configmap(plan), build_service(plan), build_network_policy(plan), *preflight, build_job(plan)]
