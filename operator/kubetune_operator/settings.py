"""Operator settings, from the environment (the chart sets them), and the platform policy they name: read once, at
start-up, by the handlers and the admission webhook alike."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from kubetune_api.policy import Policy, load_policy

API_SERVER_CLIENT = "kube-apiserver-webhook-client"  # the common name the API server's webhook client certificate has


def client_names(text: str) -> tuple[str, ...]:
    """The common names the webhook answers: those listed; none listed, the API server's; `*`, any the CA signed."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if names == ("*",):
        return ()
    return names or (API_SERVER_CLIENT,)


@dataclass(frozen=True)
class Settings:
    trainer_image: str = "ghcr.io/kubetune/trainer:0.1.0"
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    sync_seconds: float = 10.0  # how often a live job's status is refreshed (and rank 0's log read, at most)
    # how often a waiting job (pods pending, a finished job's TTL) is looked at; its Job's events drive the rest.
    # Unset in the environment: six sync intervals
    wait_seconds: float = 60.0
    master_port: int = 29500
    # seconds a worker has, once told to stop, to checkpoint the step it reached and upload it (a job's
    # runPolicy.terminationGracePeriodSeconds wins): sized for an adapter's state, not a base model's
    grace_seconds: int = 120
    # the platform's MLflow tracking server (the chart's tracking.mlflow.uri) and the Secret, in each job's namespace,
    # whose MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD the workers get; empty: nothing is tracked
    mlflow_uri: str = ""
    mlflow_secret: str = ""
    peering: str = ""  # a peering name for a standby replica; empty runs standalone
    peering_lifetime: int = 60  # seconds a silent active replica keeps its claim before a standby takes over
    health_port: int = 8080
    webhook_port: int = 0  # the validating webhook's HTTPS port; 0: no webhook
    webhook_cert: str = "/etc/kubetune/webhook/tls.crt"
    webhook_key: str = "/etc/kubetune/webhook/tls.key"
    # the webhook answers only a client certificate signed by this CA (the API server's, as the platform configures
    # its AdmissionConfiguration) and, when names are given, only one whose common name is among them
    webhook_client_ca: str = ""
    webhook_client_names: tuple[str, ...] = ()
    webhook_any_client: bool = False  # explicitly serve unauthenticated clients (no client CA); refused otherwise
    workers: int = 8  # threads that run syncs at once; each waits on the API server most of its time
    idle_seconds: float = 1.0  # how long Kopf keeps an object's worker (and its last body) after its last event
    metrics_port: int = 9090
    policy_file: str = ""  # the platform policy (the chart mounts its ConfigMap); empty: no policy
    model_cache: str = ""  # the node's base-model cache: hostPath:/dir or pvc:claim; empty: the pod's own cache
    model_cache_max_bytes: int = 0  # least recently used models are evicted above this; 0: no bound
    preflight: bool = True  # run the CPU-only checks before any GPU is requested
    preflight_cpu: str = "1"
    preflight_memory: str = "4Gi"
    preflight_deadline: int = 1800  # seconds the preflight pod may run
    gpu_types: str = ""  # the platform's GPU table (JSON: name -> memory, tflops, pricePerHour); empty: the shipped one
    default_gpu_type: str = "NVIDIA-H100-80GB-HBM3"  # for jobs whose nodeSelector names no nvidia.com/gpu.product

    @classmethod
    def from_environ(cls) -> Settings:
        env = os.environ
        namespaces = tuple(n.strip() for n in env.get("KUBETUNE_NAMESPACES", "").split(",") if n.strip())
        return cls(
            trainer_image=env.get("KUBETUNE_TRAINER_IMAGE", cls.trainer_image),
            namespaces=namespaces,
            sync_seconds=float(env.get("KUBETUNE_SYNC_SECONDS", cls.sync_seconds)),
            wait_seconds=float(env.get("KUBETUNE_WAIT_SECONDS") or 6 * float(env.get("KUBETUNE_SYNC_SECONDS", cls.sync_seconds))),
            master_port=int(env.get("KUBETUNE_MASTER_PORT", cls.master_port)),
            grace_seconds=int(env.get("KUBETUNE_GRACE_SECONDS") or cls.grace_seconds),
            mlflow_uri=env.get("KUBETUNE_MLFLOW_URI", ""),
            mlflow_secret=env.get("KUBETUNE_MLFLOW_SECRET", ""),
            peering=env.get("KUBETUNE_PEERING", ""),
            peering_lifetime=int(env.get("KUBETUNE_PEERING_LIFETIME", cls.peering_lifetime)),
            health_port=int(env.get("KUBETUNE_HEALTH_PORT", cls.health_port)),
            workers=int(env.get("KUBETUNE_WORKERS", cls.workers)),
            webhook_port=int(env.get("KUBETUNE_WEBHOOK_PORT", cls.webhook_port)),
            webhook_cert=env.get("KUBETUNE_WEBHOOK_CERT", cls.webhook_cert),
            webhook_key=env.get("KUBETUNE_WEBHOOK_KEY", cls.webhook_key),
            webhook_client_ca=env.get("KUBETUNE_WEBHOOK_CLIENT_CA", ""),
            webhook_client_names=client_names(env.get("KUBETUNE_WEBHOOK_CLIENT_NAMES", "")),
            webhook_any_client=env.get("KUBETUNE_WEBHOOK_ANY_CLIENT", "false").lower() == "true",
            idle_seconds=float(env.get("KUBETUNE_IDLE_SECONDS", cls.idle_seconds)),
            metrics_port=int(env.get("KUBETUNE_METRICS_PORT", cls.metrics_port)),
            policy_file=env.get("KUBETUNE_POLICY", ""),
            model_cache=env.get("KUBETUNE_MODEL_CACHE_VOLUME", ""),
            model_cache_max_bytes=int(env.get("KUBETUNE_MODEL_CACHE_MAX_BYTES") or 0),
            preflight=env.get("KUBETUNE_PREFLIGHT", "true").lower() != "false",
            preflight_cpu=env.get("KUBETUNE_PREFLIGHT_CPU", cls.preflight_cpu),
            preflight_memory=env.get("KUBETUNE_PREFLIGHT_MEMORY", cls.preflight_memory),
            preflight_deadline=int(env.get("KUBETUNE_PREFLIGHT_DEADLINE") or cls.preflight_deadline),
            gpu_types=env.get("KUBETUNE_GPU_TYPES", ""),
            default_gpu_type=env.get("KUBETUNE_DEFAULT_GPU_TYPE") or cls.default_gpu_type,
        )


@functools.cache
def loaded() -> tuple[Settings, Policy | None]:
    """The operator's settings and platform policy, read once, when the operator starts (not when this module is
    first imported): a policy that cannot be read stops the operator rather than admit all."""
    settings = Settings.from_environ()
    return settings, load_policy(Path(settings.policy_file)) if settings.policy_file else None
