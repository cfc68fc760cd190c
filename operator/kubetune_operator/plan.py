"""Spec to plan: every decision about the child objects, made once, frozen, with defaults resolved."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from kubetune_api.job import FineTuneJob
from kubetune_api.names import API_VERSION, JOB_NAME_LABEL, KIND, MANAGED_BY_LABEL, QUEUE_LABEL
from kubetune_api.policy import Policy
from kubetune_api.preflight import gpu_type_of, gpu_types

from .settings import Settings


@dataclass(frozen=True)
class Plan:
    name: str
    namespace: str
    uid: str
    job: FineTuneJob
    image: str
    workers: int
    processes: int
    gpus: int
    queue: str | None
    suspend: bool
    master_port: int
    restart: int  # gang restarts so far; passed to pods for their logs
    active_deadline: int | None  # seconds left of runPolicy.activeDeadlineSeconds, counted from the first start
    model_cache: str = ""  # Settings.model_cache: where the node keeps base models between pods and jobs
    model_cache_max_bytes: int = 0
    preflight: bool = True
    preflight_resources: tuple[str, str] = ("1", "4Gi")  # CPU and memory of the preflight pod
    preflight_deadline: int = 1800
    gpu_type: str = ""  # the GPU type the job runs on, and its entry in the platform's table (JSON), if it has one
    gpu: str = ""
    gpu_price: float = 0.0  # the platform's price of one GPU-hour of that type
    grace: int = 120  # seconds a worker has to checkpoint and upload once told to stop (terminationGracePeriodSeconds)
    mlflow_uri: str = ""  # Settings.mlflow_uri: the platform's tracking server; empty: nothing tracked
    mlflow_secret: str = ""  # Settings.mlflow_secret: the Secret with the tracking credentials, in the job's namespace
    shared_tracking_names: bool = False  # the policy's sharedTrackingNames: MLflow names not bound to the namespace

    @property
    def spec(self) -> Any:
        return self.job.spec

    @property
    def job_name(self) -> str:
        return self.name

    @property
    def service_name(self) -> str:
        return self.name

    @property
    def network_policy_name(self) -> str:
        return self.name

    @property
    def preflight_name(self) -> str:
        return f"{self.name}-preflight"

    @property
    def config_name(self) -> str:
        return f"{self.name}-config"

    @property
    def master_addr(self) -> str:
        return f"{self.job_name}-0.{self.service_name}"

    @property
    def labels(self) -> dict[str, str]:
        labels = {JOB_NAME_LABEL: self.name, MANAGED_BY_LABEL: "kubetune"}
        if self.queue:
            labels[QUEUE_LABEL] = self.queue
        return labels

    @property
    def owner(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def make_plan(
    body: dict[str, Any],
    job: FineTuneJob,
    settings: Settings,
    restart: int = 0,
    elapsed: float = 0.0,
    queue: str | None = None,
    policy: Policy | None = None,
) -> Plan:
    """The plan for a FineTuneJob; `queue` is the queue its existing Job was made with, which then wins."""
    meta = body.get("metadata", {})
    spec = job.spec
    table = gpu_types(settings.gpu_types)
    gpu_name, gpu = gpu_type_of(spec, table, settings.default_gpu_type)
    return Plan(
        name=meta["name"],
        namespace=meta.get("namespace", "default"),
        uid=meta.get("uid", ""),
        job=job,
        image=spec.workers.image or settings.trainer_image,
        workers=spec.workers.replicas,
        processes=spec.workers.processes,
        gpus=spec.workers.gpusPerWorker,
        queue=queue or (meta.get("labels") or {}).get(QUEUE_LABEL),
        suspend=spec.runPolicy.suspend,
        master_port=settings.master_port,
        restart=restart,
        active_deadline=None
        if spec.runPolicy.activeDeadlineSeconds is None
        else max(1, int(spec.runPolicy.activeDeadlineSeconds - elapsed)),
        model_cache=settings.model_cache,
        model_cache_max_bytes=settings.model_cache_max_bytes,
        preflight=settings.preflight and spec.runPolicy.preflight,
        preflight_resources=(settings.preflight_cpu, settings.preflight_memory),
        preflight_deadline=settings.preflight_deadline,
        gpu_type=gpu_name if spec.workers.gpusPerWorker else "",
        gpu=gpu.model_dump_json() if gpu is not None and spec.workers.gpusPerWorker else "",
        gpu_price=gpu.pricePerHour if gpu is not None else 0.0,
        grace=spec.runPolicy.terminationGracePeriodSeconds or settings.grace_seconds,
        mlflow_uri=settings.mlflow_uri,
        mlflow_secret=settings.mlflow_secret,
        shared_tracking_names=policy is not None and policy.sharedTrackingNames,
    )


def billed_on(plan: Plan, product: str, settings: Settings) -> Plan:
    """The plan with the GPU type the workers ran on (their node's product label, or the type the status recorded
    when they did): GPU-hours are billed at it, whatever the spec's nodeSelector says; a type the platform's table
    lacks is billed at the default type's price. Unchanged without GPUs or a known product."""
    if not plan.gpus or not product or product == plan.gpu_type:
        return plan
    table = gpu_types(settings.gpu_types)
    known = table.get(product) or table.get(settings.default_gpu_type)
    return dataclasses.replace(plan, gpu_type=product, gpu_price=known.pricePerHour if known is not None else 0.0)
