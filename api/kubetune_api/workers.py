"""spec.workers: how many pods, their GPUs, resources and placement."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, StrictInt, StrictStr, field_validator

from ._base import Rule, Section, section_default
from ._types import DnsSubdomain, EnvName, NonNegativeQuantity, quantity_value

# Credentials reach pods only from storage.credentialsSecret: a variable whose name says it holds one is refused in
# workers.env (AWS_SECURITY_TOKEN, HUGGING_FACE_HUB_TOKEN, WANDB_API_KEY, ... all match), and so is a name the
# operator-to-pod contract sets itself (a tenant must not point the trainer at another config, rank or master).
SECRET_ENV_PATTERN = r"(?i)(SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|SESSION)"
RESERVED_ENV_PATTERN = (
    r"^(KUBETUNE_.*|JOB_COMPLETION_INDEX|HOME|PATH|PYTHON.*|LD_.*|MASTER_ADDR|MASTER_PORT|RANK|LOCAL_RANK|WORLD_SIZE|"
    r"LOCAL_WORLD_SIZE|NODE_RANK|TORCHELASTIC_.*|AWS_.*|BOTO_.*|HF_HOME|HF_ENDPOINT|TRANSFORMERS_.*|CUDA_VISIBLE_DEVICES)$"
)
# A label key (an optional DNS-subdomain prefix and '/', then a name of at most 63 characters) and a label value.
LABEL_KEY = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LabelValue = Annotated[StrictStr, Field(max_length=63, pattern=LABEL_VALUE)]
RESOURCE_NAME = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[a-z0-9]([-a-z0-9_.]{0,61}[a-zA-Z0-9])?$"


class Toleration(Section):
    """A Kubernetes toleration, as in a pod spec."""

    key: StrictStr | None = Field(
        None, max_length=316, pattern=LABEL_KEY, description="Taint key; empty with operator Exists matches every taint."
    )
    operator: Literal["Equal", "Exists"] = Field("Equal", description="Equal or Exists.")
    value: StrictStr | None = Field(None, max_length=63, pattern=LABEL_VALUE, description="Taint value for operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to tolerate; empty tolerates every effect."
    )
    tolerationSeconds: StrictInt | None = Field(
        None, ge=0, description="For NoExecute: seconds the pod stays after the taint appears."
    )

    rules = (
        Rule(
            field="value",
            message="a toleration with operator Exists takes no value",
            cel="self.operator != 'Exists' || !has(self.value) || self.value == ''",
            check=lambda t: t.operator != "Exists" or not t.value,
        ),
        Rule(
            field="key",
            message="a toleration without a key must use operator Exists",
            cel="(has(self.key) && self.key != '') || self.operator == 'Exists'",
            check=lambda t: bool(t.key) or t.operator == "Exists",
        ),
        Rule(
            field="tolerationSeconds",
            message="tolerationSeconds needs effect NoExecute",
            cel="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            check=lambda t: t.tolerationSeconds is None or t.effect == "NoExecute",
        ),
    )


def _requests_within_limits(r: Resources) -> bool:
    return all(quantity_value(r.requests[k]) <= quantity_value(v) for k, v in r.limits.items() if k in r.requests)


class Resources(Section):
    """CPU, memory and other requests and limits per worker pod (GPUs come from gpusPerWorker)."""

    requests: dict[str, NonNegativeQuantity] = Field(
        default_factory=dict,
        max_length=16,
        description="Minimum resources, e.g. {cpu: '8', memory: 64Gi}.",
        json_schema_extra={"maxProperties": 16},
    )
    limits: dict[str, NonNegativeQuantity] = Field(
        default_factory=dict,
        max_length=16,
        description="Maximum resources, e.g. {memory: 64Gi}.",
        json_schema_extra={"maxProperties": 16},
    )

    rules = (
        Rule(
            field="requests",
            message="a request must not exceed its limit",
            cel="!has(self.requests) || !has(self.limits) || self.limits.all(k, !(k in self.requests) || "
            "quantity(string(self.requests[k])).compareTo(quantity(string(self.limits[k]))) <= 0)",
            check=_requests_within_limits,
        ),
    )

    @field_validator("requests", "limits")
    @classmethod
    def _resource_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        # not in the CRD's CEL: a rule over map keys costs more than the API server allows; the operator's own
        # validation (status) and the optional webhook check it, and the Job's own validation would too
        for name in value:
            if not re.match(RESOURCE_NAME, name):
                raise ValueError(
                    f"{name!r} is not a resource name: use names like cpu, memory, ephemeral-storage or example.com/device"
                )
        return value


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
    nodeSelector: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=32,
        description="Node labels the pods must match (label keys and values).",
        json_schema_extra={"maxProperties": 32},
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64, description="Taints the pods tolerate.")
    priorityClassName: DnsSubdomain | None = Field(
        None, description="PriorityClass of the pods, for preemption on shared clusters."
    )
    sharedMemory: NonNegativeQuantity = Field("8Gi", description="Size of /dev/shm (used by NCCL and data loading).")
    cacheSize: NonNegativeQuantity = Field(
        "100Gi",
        description="Disk per worker for the base model, the datasets and checkpoints in flight: the cache volume's "
        "sizeLimit and the pod's ephemeral-storage request. A model or dataset that does not fit fails before download.",
    )
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
            message="credentials must not be set in env (names with SECRET, TOKEN, PASSWORD, CREDENTIAL, API_KEY, "
            "ACCESS_KEY, PRIVATE_KEY or SESSION); use storage.credentialsSecret",
            cel="!has(self.env) || self.env.all(e, !e.name.matches('" + SECRET_ENV_PATTERN + "'))",
            check=lambda w: all(not re.search(SECRET_ENV_PATTERN, e.name) for e in w.env),
        ),
        Rule(
            field="env",
            message="env must not set the names kubetune sets itself (KUBETUNE_*, JOB_COMPLETION_INDEX, HOME, PATH, "
            "PYTHON*, LD_*, AWS_*, torch's rank variables, ...)",
            cel="!has(self.env) || self.env.all(e, e.name.matches('"
            + SECRET_ENV_PATTERN
            + "') || !e.name.matches('"
            + RESERVED_ENV_PATTERN
            + "'))",  # a credential's name is refused by the rule above, once
            check=lambda w: all(
                re.search(SECRET_ENV_PATTERN, e.name) or not re.match(RESERVED_ENV_PATTERN, e.name) for e in w.env
            ),
        ),
    )

    @field_validator("nodeSelector")
    @classmethod
    def _label_keys(cls, value: dict[str, str]) -> dict[str, str]:
        # keys only: values are checked by the schema; a CEL rule over map keys costs more than the API server allows
        for key in value:
            if len(key) > 316 or not re.match(LABEL_KEY, key):
                raise ValueError(
                    f"{key!r} is not a label key: [prefix/]name, the name at most 63 letters, digits, '-', '_' or '.'"
                )
        return value

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
