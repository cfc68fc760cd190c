"""The operator-to-pod contract: the mounted config files and the environment, named once, read once."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

CONFIG_DIR = "/etc/kubetune"
CONFIG_FILE = "trainer.yaml"  # the resolved FineTuneJob spec (every default filled), ConfigMap key and file name
DEEPSPEED_FILE = "deepspeed.json"  # the DeepSpeed config derived from it, ConfigMap key and file name
TERMINATION_MESSAGE_PATH = "/dev/termination-log"

ENV_CONFIG = "KUBETUNE_CONFIG"  # path of CONFIG_FILE; DEEPSPEED_FILE (for people: ds_config runs) sits beside it
ENV_JOB_NAME = "KUBETUNE_JOB_NAME"  # the FineTuneJob's name, for log lines and the manifest
ENV_JOB_UID = "KUBETUNE_JOB_UID"  # the FineTuneJob's uid: recorded in checkpoints, which only this job resumes
ENV_NUM_WORKERS = "KUBETUNE_NUM_WORKERS"  # workers.replicas
ENV_PROCS_PER_WORKER = "KUBETUNE_PROCS_PER_WORKER"  # training processes in this pod
ENV_WORKER_RANK = "JOB_COMPLETION_INDEX"  # this pod's node rank: the Indexed Job completion index
ENV_MASTER_ADDR = "KUBETUNE_MASTER_ADDR"  # pod 0's stable DNS name, <job>-0.<service>
ENV_MASTER_PORT = "KUBETUNE_MASTER_PORT"  # rendezvous port on pod 0
ENV_TERMINATION_LOG = "KUBETUNE_TERMINATION_LOG"  # where the final summary goes; TERMINATION_MESSAGE_PATH in pods
ENV_RESTART_COUNT = "KUBETUNE_RESTART_COUNT"  # gang restarts before this attempt: recorded in manifest.json
ENV_CACHE = "KUBETUNE_CACHE"  # node-local download cache (datasets, the pod's own model cache)
ENV_WORK_DIR = "KUBETUNE_WORK_DIR"  # node-local scratch: the prepared dataset, checkpoint staging, results
ENV_MODEL_CACHE = "KUBETUNE_MODEL_CACHE"  # the shared model cache (the chart's hostPath or PVC), per namespace
ENV_MODEL_CACHE_MAX_BYTES = "KUBETUNE_MODEL_CACHE_MAX_BYTES"  # least recently used entries go above it; 0: no bound
ENV_MODEL_CACHE_USAGE = "KUBETUNE_MODEL_CACHE_USAGE"  # a node directory: each namespace's cache total (a node bound)
ENV_GPU_TYPE = "KUBETUNE_GPU_TYPE"  # preflight: the GPU type the job will get (nvidia.com/gpu.product)
ENV_GPU = "KUBETUNE_GPU"  # preflight: that type's memory, TFLOP/s and price (policy.GpuType as JSON)
ENV_GRACE = "KUBETUNE_GRACE_SECONDS"  # preflight: the grace period the workers get (its checkpoint warning)
ENV_NAMESPACE = "KUBETUNE_NAMESPACE"  # the FineTuneJob's namespace: the default MLflow experiment
# MLflow's own credential variables (the platform's Secret in the job's namespace): only rank 0 of worker 0 tracks,
# so the launchers of other workers and the other ranks drop them before any model or library code runs
TRACKING_CREDENTIALS = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def drop_tracking_credentials(environ: MutableMapping[str, str]) -> None:
    for key in TRACKING_CREDENTIALS:
        environ.pop(key, None)


ENV_SHARED_NAMES = "KUBETUNE_SHARED_TRACKING_NAMES"  # "true": the policy lets MLflow names stand as written
ENV_PREFLIGHT = "KUBETUNE_PREFLIGHT"  # the preflight's estimates (PREFLIGHT_FIGURES, JSON): tracked with the run
ENV_PREPARED = "KUBETUNE_PREPARED_SHA256"  # the preflight's record of the prepared set's contents (report.preparedSha256)
ENV_EVENTS = "KUBETUNE_EVENTS"  # ranks in a pod: the FIFO their event lines go to (the launcher forwards them)
ENV_STALL = "KUBETUNE_STALL_SECONDS"  # preparing or fetching with no progress (no record, no byte) this long fails
STALL_SECONDS = 600.0


def stall_seconds() -> float:
    """How long a launcher's stage (tokenizing, waiting for another pod's model download) may go without progress
    before it fails as stalled, naming what it waited for (ENV_STALL, else STALL_SECONDS)."""
    try:
        value = float(os.environ.get(ENV_STALL, STALL_SECONDS))
    except ValueError:
        return STALL_SECONDS
    return value if value > 0 else STALL_SECONDS


PREFLIGHT_FIGURES = (
    "records",
    "tokens",
    "stepsPerEpoch",
    "totalSteps",
    "memoryPerGpuBytes",
    "gpuHours",
    "estimatedHours",
    "estimatedCost",
    "checkpointBytes",
    "checkpointSeconds",
)


DEFAULT_MASTER_PORT = 29500
# a worker that stopped on SIGTERM (its own or a peer's) after checkpointing the step it reached: the Job's
# podFailurePolicy does not count this exit against the gang, and the Job controller starts the pod again
EXIT_PREEMPTED = 75


class ContractError(ValueError):
    """The pod's environment does not satisfy the contract."""


@dataclass(frozen=True)
class WorkerEnv:
    """What one trainer pod learns from its environment at start-up."""

    config_path: Path
    job_name: str
    job_uid: str
    num_workers: int
    procs_per_worker: int
    worker_rank: int
    master_addr: str
    master_port: int
    termination_log: Path | None
    restarts: int = 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> WorkerEnv:
        env = os.environ if environ is None else environ

        def integer(name: str, default: int, minimum: int) -> int:
            raw = env.get(name, str(default))
            try:
                value = int(raw)
            except ValueError:
                raise ContractError(f"{name} must be an integer, got {raw!r}") from None
            if value < minimum:
                raise ContractError(f"{name} must be >= {minimum}, got {value}")
            return value

        config = env.get(ENV_CONFIG, f"{CONFIG_DIR}/{CONFIG_FILE}")
        num_workers = integer(ENV_NUM_WORKERS, 1, 1)
        rank = integer(ENV_WORKER_RANK, 0, 0)
        if rank >= num_workers:
            raise ContractError(f"{ENV_WORKER_RANK}={rank} must be below {ENV_NUM_WORKERS}={num_workers}")
        termination = env.get(ENV_TERMINATION_LOG)
        return cls(
            config_path=Path(config),
            job_name=env.get(ENV_JOB_NAME, "local"),
            job_uid=env.get(ENV_JOB_UID, ""),
            num_workers=num_workers,
            procs_per_worker=integer(ENV_PROCS_PER_WORKER, 1, 1),
            worker_rank=rank,
            master_addr=env.get(ENV_MASTER_ADDR, "127.0.0.1"),
            master_port=integer(ENV_MASTER_PORT, DEFAULT_MASTER_PORT, 1),
            termination_log=Path(termination) if termination else None,
            restarts=integer(ENV_RESTART_COUNT, 0, 0),
        )

    def to_environ(self) -> dict[str, str]:
        """The variables from_environ reads back as this WorkerEnv: what the ranks inherit from their launcher."""
        env = {
            ENV_CONFIG: str(self.config_path),
            ENV_JOB_NAME: self.job_name,
            ENV_JOB_UID: self.job_uid,
            ENV_NUM_WORKERS: str(self.num_workers),
            ENV_PROCS_PER_WORKER: str(self.procs_per_worker),
            ENV_WORKER_RANK: str(self.worker_rank),
            ENV_MASTER_ADDR: self.master_addr,
            ENV_MASTER_PORT: str(self.master_port),
            ENV_RESTART_COUNT: str(self.restarts),
        }
        if self.termination_log is not None:
            env[ENV_TERMINATION_LOG] = str(self.termination_log)
        return env


# What pods say: rank 0's progress lines, the launcher's summary (the termination message) and each rank's failure
# file. Pods are untrusted input to the operator, so the writer and the reader share these models: integers and
# floats are bounded and finite, reasons come from the enum, strings are bounded and stripped of control characters
# (ANSI escapes included). A line that does not fit is ignored, never copied.

TERMINATION_LIMIT = 4096  # bytes Kubernetes keeps of a termination message
MESSAGE_LIMIT = 1000  # characters of a failure message kept in a summary
_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_text(value: object, limit: int = MESSAGE_LIMIT) -> str:
    """Printable text of at most `limit` characters: escapes and control characters removed, newlines kept."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    text = _CONTROL.sub("", _ANSI.sub("", value)).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


Text = Annotated[str, BeforeValidator(clean_text)]
ShortText = Annotated[str, BeforeValidator(lambda v: clean_text(v, 64))]
Count = Annotated[int, Field(strict=True, ge=0, le=10**12)]
Number = Annotated[float, Field(allow_inf_nan=False, ge=-1e15, le=1e15)]
NonNegative = Annotated[float, Field(allow_inf_nan=False, ge=0, le=1e15)]


def _known_reason(value: str | None) -> str | None:
    """Only reasons of the enum: a pod cannot invent one (nor turn a permanent failure into a retried one)."""
    from .conditions import TRAINER_FAILURE_REASONS

    if value is not None and value not in {r.value for r in TRAINER_FAILURE_REASONS}:
        raise ValueError("must be a trainer failure reason")
    return value


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


M = TypeVar("M", bound=_Message)


class ProgressLine(_Message):
    """One of rank 0's progress lines (event: progress)."""

    event: Literal["progress"]
    step: Count
    totalSteps: Count
    epoch: NonNegative = 0.0
    loss: Number | None = None
    learningRate: NonNegative | None = None
    tokensPerSecond: NonNegative | None = None
    etaSeconds: NonNegative | None = None
    eta: ShortText | None = None
    checkpointStep: Count | None = None  # the newest checkpoint marked COMPLETE (this run's or the one resumed from)
    trackingDegraded: Text | None = None  # the tracker's trouble (unreachable, slow, data dropped); training goes on


class TrackingOutcome(_Message):
    """Where rank 0 tracked the run and what it registered (metrics.json, the summary, status.tracking)."""

    experiment: Text | None = None
    runId: ShortText | None = None  # every attempt of the job continues this MLflow run
    registeredModel: Text | None = None
    registeredVersion: ShortText | None = None
    degraded: Text | None = None  # why tracking is behind or incomplete; training went on


def preflight_figures(raw: str) -> dict[str, float]:
    """The preflight's estimates from ENV_PREFLIGHT: the known figures that are finite numbers, nothing else."""
    try:
        data = json.loads(raw[:4096]) if raw else {}
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    out: dict[str, float] = {}
    for key in PREFLIGHT_FIGURES:
        value = data.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < 1e18 and value == value:
            out[key] = float(value)
    return out


class PreparingLine(_Message):
    """A preparing line (event: preparing): how far preparing the dataset has got (the preflight's, or a
    launcher's that prepares it itself)."""

    event: Literal["preparing"]
    records: Count
    of: Count
    tokens: Count
    recordsPerSecond: NonNegative
    etaSeconds: NonNegative

    def summary(self) -> str:
        percent = int(100 * min(self.records, self.of) / self.of) if self.of else 0
        return (
            f"preparing the dataset: {self.records:,} of {self.of:,} records ({percent}%), {self.tokens:,} tokens, "
            f"{self.recordsPerSecond:,.0f} records/s, about {self.etaSeconds:.0f} s left"
        )


class SummaryMetrics(_Message):
    """Held-out metrics before and after training, as the summary reports them."""

    baseEvalLoss: Number | None = None
    evalLoss: Number | None = None
    basePerplexity: Number | None = None
    perplexity: Number | None = None
    baseTokenAccuracy: Number | None = None
    tokenAccuracy: Number | None = None
    trainLoss: Number | None = None
    basePreferenceAccuracy: Number | None = None
    preferenceAccuracy: Number | None = None
    rewardMargin: Number | None = None
    baseTaskScore: Number | None = None
    taskScore: Number | None = None


class Summary(_Message):
    """The launcher's final word: the last line of its log and its termination message."""

    event: Literal["summary"] = "summary"
    status: Literal["Succeeded", "Failed"]
    reason: str | None = None
    message: Text = ""
    metrics: SummaryMetrics | None = None
    steps: Count | None = None
    usefulTokensPerSecond: NonNegative | None = None
    adapterUri: Text | None = None  # for a person reading `kubetune run`; the operator derives its own
    tracking: TrackingOutcome | None = None

    _reason = field_validator("reason")(classmethod(lambda cls, value: _known_reason(value)))

    def termination_message(self) -> str:
        """JSON of at most TERMINATION_LIMIT bytes: the message is shortened, never the JSON."""
        data = self.model_dump(mode="json", exclude_none=True)
        text = json.dumps(data, allow_nan=False)
        message = str(data.get("message", ""))
        while len(text.encode()) > TERMINATION_LIMIT and message:
            message = message[: max(0, len(message) - max(16, len(text.encode()) - TERMINATION_LIMIT))]
            data["message"] = message + "..." if message else ""
            text = json.dumps(data, allow_nan=False)
        if len(text.encode()) > TERMINATION_LIMIT:  # nothing left to shorten but the optional parts
            text = json.dumps({k: data[k] for k in ("event", "status", "reason") if k in data}, allow_nan=False)
        return text


class RankFailure(_Message):
    """What a failed rank leaves for its launcher (failure-<rank>.json)."""

    rank: Count
    reason: str
    message: Text
    step: Count | None = None  # the step a preempted rank checkpointed

    _reason = field_validator("reason")(classmethod(lambda cls, value: _known_reason(value)))


def parse_line(line: str, model: type[M]) -> M | None:
    """One structured log line as `model`, or None for any line that is not a valid one."""
    line = line.strip()
    if not line.startswith("{") or len(line) > 4096:
        return None
    try:
        return model.model_validate_json(line)
    except ValueError:
        return None


def parse_progress(line: str) -> ProgressLine | None:
    """A progress line, or None for any line that is not a valid one."""
    return parse_line(line, ProgressLine)


def last_line(log: str, model: type[M]) -> M | None:
    """The newest valid line of `model` in a log."""
    for line in reversed(log.splitlines()):
        found = parse_line(line, model)
        if found is not None:
            return found
    return None


def parse_summary(text: str) -> Summary | None:
    """The summary in a termination message (its last JSON line), or None when there is no valid one."""
    for line in reversed(text.strip().splitlines()[-20:]):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            return Summary.model_validate_json(line)
        except ValueError:
            continue
    return None
