"""spec.workers: how many pods, their GPUs, resources and placement."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictInt, StrictStr

from ._base import Rule, Section, section_default
from ._types import DnsSubdomain, EnvName, Quantity

# Credentials reach pods only from storage.credentialsSecret; these names in workers.env would leak them.
SECRET_ENV_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN")


class Toleration(Section):
    """A Kubernetes toleration, as in a pod spec."""

    key: StrictStr | None = Field(None, max_length=316, description="Taint key; empty with operator Exists matches every taint.")
    operator: Literal["Equal", "Exists"] = Field("Equal", description="Equal or Exists.")
    value: StrictStr | None = Field(None, max_length=63, description="Taint value for operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to tolerate; empty tolerates every effect."
    )
    tolerationSeconds: StrictInt | None = Field(
        None, ge=0, description="For NoExecute: seconds the pod stays after the taint appears."
    )


class Resources(Section):
    """CPU, memory and other requests and limits per worker pod (GPUs come from gpusPerWorker)."""

    requests: dict[str, Quantity] = Field(default_factory=dict, description="Minimum resources, e.g. {cpu: '8', memory: 64Gi}.")
    limits: dict[str, Quantity] = Field(default_factory=dict, description="Maximum resources, e.g. {memory: 64Gi}.")


class EnvVar(Section):
    """A plain environment variable for the trainer. Credentials belong in storage.credentialsSecret."""

    name: EnvName = Field(description="Variable name.")
    value: StrictStr = Field("", max_length=4096, description="Variable value (not secret: it is stored in the spec).")


class WorkersSpec(Section):
    """The trainer pods: one per worker, each running one process per GPU."""

    replicas: StrictInt = Field(1, ge=1, le=256, description="Worker pods (nodes), 1 to 256.")
    gpusPerWorker: StrictInt = Field(1, ge=0, le=16, description="GPUs per worker pod, 0 to 16; 0 trains on CPUs.")
    processesPerWorker: StrictInt | None = Field(
        None, ge=1, le=64, description="Training processes per worker; defaults to gpusPerWorker (1 on CPU workers)."
    )
    gpuResourceName: StrictStr = Field(
        "nvidia.com/gpu", max_length=253, pattern=r"^[a-z0-9.-]+/[a-z0-9._-]+$", description="Extended resource that counts GPUs."
    )
    image: StrictStr | None = Field(
        None, max_length=1024, description="Trainer image; defaults to the operator's configured image."
    )
    resources: Resources = Field(
        default_factory=Resources, description=Resources.__doc__, json_schema_extra=section_default(Resources)
    )
    nodeSelector: dict[str, StrictStr] = Field(default_factory=dict, description="Node labels the pods must match.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64, description="Taints the pods tolerate.")
    priorityClassName: DnsSubdomain | None = Field(
        None, description="PriorityClass of the pods, for preemption on shared clusters."
    )
    sharedMemory: Quantity = Field("8Gi", description="Size of /dev/shm (used by NCCL and data loading).")
    env: list[EnvVar] = Field(default_factory=list, max_length=128, description="Extra environment variables for the trainer.")

    rules = (
        Rule(
            field="processesPerWorker",
            message="processesPerWorker must equal gpusPerWorker when the workers have GPUs",
            cel="!has(self.processesPerWorker) || self.gpusPerWorker == 0 || self.processesPerWorker == self.gpusPerWorker",
            check=lambda w: w.processesPerWorker is None or w.gpusPerWorker == 0 or w.processesPerWorker == w.gpusPerWorker,
        ),
        Rule(
            field="resources",
            message="set GPUs with gpusPerWorker, not in resources",
            cel="!has(self.resources) || ((!has(self.resources.requests) || !(self.gpuResourceName in self.resources.requests)) "
            "&& (!has(self.resources.limits) || !(self.gpuResourceName in self.resources.limits)))",
            check=lambda w: w.gpuResourceName not in w.resources.requests and w.gpuResourceName not in w.resources.limits,
        ),
        Rule(
            field="env",
            message="credentials must not be set in env; use storage.credentialsSecret",
            cel="!has(self.env) || self.env.all(e, !(e.name in " + str(list(SECRET_ENV_NAMES)) + "))",
            check=lambda w: all(e.name not in SECRET_ENV_NAMES for e in w.env),
        ),
    )

    @property
    def processes(self) -> int:
        """Processes per worker, resolved."""
        if self.processesPerWorker is not None:
            return self.processesPerWorker
        return self.gpusPerWorker or 1

    @property
    def world_size(self) -> int:
        """Training processes across all workers."""
        return self.replicas * self.processes
