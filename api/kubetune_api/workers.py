"""spec.workers: how many pods, their GPUs, resources and placement."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import Field, StrictInt, StrictStr, field_validator

from ._base import Rule, Section, section_default
from ._types import DnsSubdomain, EnvName, NonNegativeQuantity, quantity_value

# workers.env is an allow-list: only the variables the trainer and its libraries honour as tuning knobs, never one
# that makes a process load code or files (OPENSSL_CONF, CUDA_INJECTION64_PATH, NCCL_*_PLUGIN, GCONV_PATH,
# PYTHON*, LD_*), expose devices (NVIDIA_VISIBLE_DEVICES), redirect traffic (proxies, endpoints), change torchrun's
# options (PET_*) or carry a credential. Credentials come from storage.credentialsSecret only.
TRAINER_ENV = (
    # NCCL: logging, the fabric and the algorithms (never its plugins, topology or dump files)
    "NCCL_DEBUG",
    "NCCL_DEBUG_SUBSYS",
    "NCCL_SOCKET_IFNAME",
    "NCCL_SOCKET_NTHREADS",
    "NCCL_NSOCKS_PERTHREAD",
    "NCCL_IB_DISABLE",
    "NCCL_IB_HCA",
    "NCCL_IB_GID_INDEX",
    "NCCL_IB_TIMEOUT",
    "NCCL_IB_RETRY_CNT",
    "NCCL_IB_QPS_PER_CONNECTION",
    "NCCL_CROSS_NIC",
    "NCCL_NET_GDR_LEVEL",
    "NCCL_P2P_DISABLE",
    "NCCL_P2P_LEVEL",
    "NCCL_SHM_DISABLE",
    "NCCL_NVLS_ENABLE",
    "NCCL_ALGO",
    "NCCL_PROTO",
    "NCCL_MIN_NCHANNELS",
    "NCCL_MAX_NCHANNELS",
    "NCCL_BUFFSIZE",
    # torch.distributed and gloo
    "TORCH_NCCL_ASYNC_ERROR_HANDLING",
    "TORCH_NCCL_BLOCKING_WAIT",
    "TORCH_NCCL_ENABLE_MONITORING",
    "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC",
    "TORCH_DISTRIBUTED_DEBUG",
    "TORCH_CPP_LOG_LEVEL",
    "TORCH_SHOW_CPP_STACKTRACES",
    "GLOO_SOCKET_IFNAME",
    # CUDA and torch's allocator
    "PYTORCH_CUDA_ALLOC_CONF",
    "CUDA_LAUNCH_BLOCKING",
    "CUDA_DEVICE_MAX_CONNECTIONS",
    "NVIDIA_TF32_OVERRIDE",
    # threads and logging
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "TOKENIZERS_PARALLELISM",
    "TRANSFORMERS_VERBOSITY",
    "TZ",
)
ENV_ALLOWED_MESSAGE = (
    "env may set only the variables the trainer honours: "
    + ", ".join(TRAINER_ENV)
    + " (credentials belong in storage.credentialsSecret)"
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


# resources holds what the ledger and maxGpusPerJob need not count: GPUs and every other device (nvidia.com/gpu,
# amd.com/gpu, google.com/tpu, rdma/...) come only from gpusPerWorker and gpuResourceName, which are counted and billed
PLAIN_RESOURCES = ("cpu", "memory", "ephemeral-storage")
RESOURCES_MESSAGE = (
    "resources may name only cpu, memory and ephemeral-storage; GPUs and other devices come from gpusPerWorker and "
    "gpuResourceName"
)


def _plain_rule(side: str) -> Rule:
    names = json.dumps(list(PLAIN_RESOURCES))
    return Rule(
        field=side,
        message=RESOURCES_MESSAGE,
        cel=f"!has(self.{side}) || self.{side}.all(k, k in {names})",
        check=lambda r: all(k in PLAIN_RESOURCES for k in getattr(r, side)),
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
        _plain_rule("requests"),
        _plain_rule("limits"),
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
            field="env",
            message=ENV_ALLOWED_MESSAGE,
            cel="!has(self.env) || self.env.all(e, e.name in " + json.dumps(list(TRAINER_ENV)) + ")",
            check=lambda w: all(e.name in TRAINER_ENV for e in w.env),
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
    def gpus(self) -> int:
        """GPUs the job holds at once (replicas x gpusPerWorker): what the policy counts and GPU-hours multiply."""
        return self.replicas * self.gpusPerWorker

    @property
    def world_size(self) -> int:
        """Training processes across all workers."""
        return self.replicas * self.processes
