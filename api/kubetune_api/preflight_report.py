"""The preflight's report: what the preflight pod leaves in its termination message, `kubetune preflight` prints
and the operator copies into status.preflight. Bounded, because it comes from a pod."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from .conditions import Reason
from .contract import clean_text


def _text(limit: int) -> BeforeValidator:
    """Printable text (no ANSI or OSC-8 escapes, no control characters) of at most `limit` characters: a report's
    strings can carry a record's keys, and they reach status, conditions and Events."""
    return BeforeValidator(lambda v: clean_text(v, limit))


# every number from a pod is finite and bounded before it reaches the status (JSON's safe integers; an infinite or
# huge figure would make every later status write fail)
Integer = Annotated[int, Field(ge=0, le=2**53)]
Figure = Annotated[float, Field(ge=0, le=1e15, allow_inf_nan=False)]
REPORT_LIMIT = 4096  # a termination message's size limit, and so the report's
CheckName = Literal["spec", "output", "model", "adapter", "dataset", "records", "memory"]


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: CheckName
    ok: bool
    message: Annotated[str, _text(400)] = Field("", max_length=400)


class Report(BaseModel):
    """What the preflight found; every figure an estimate made before any GPU is held."""

    model_config = ConfigDict(extra="forbid", strict=True)

    passed: bool = Field(description="Every check passed: the training Job may be created.")
    reason: Annotated[str, _text(64)] | None = Field(
        None, max_length=64, description="Why it failed, as the Failed condition's reason."
    )
    message: Annotated[str, _text(1000)] | None = Field(None, max_length=1000, description="The failure in words.")
    checks: list[Check] = Field(default_factory=list, max_length=8, description="Each check and its outcome.")
    records: Integer | None = Field(None, description="Training records.")
    tokens: Integer | None = Field(None, description="Training tokens per epoch, with the model's own tokenizer.")
    stepsPerEpoch: Integer | None = Field(None, description="Optimizer steps per epoch.")
    totalSteps: Integer | None = Field(None, description="Optimizer steps planned.")
    memoryPerGpuBytes: Integer | None = Field(None, description="Estimated peak memory per GPU (per process on CPUs).")
    gpuMemoryBytes: Integer | None = Field(None, description="Memory of one GPU of the type the job runs on.")
    gpuType: Annotated[str, _text(128)] | None = Field(None, max_length=128, description="The GPU type the estimate is for.")
    gpuHours: Figure | None = Field(None, description="Estimated GPU-hours of training and evaluation.")
    estimatedHours: Figure | None = Field(None, description="Estimated wall-clock hours of training and evaluation.")
    estimatedCost: Figure | None = Field(None, description="gpuHours times the platform's price per GPU-hour.")
    suggestion: Annotated[str, _text(400)] | None = Field(
        None, max_length=400, description="The smallest change that would fit, when it does not."
    )
    checkpointBytes: Integer | None = Field(None, description="Estimated size of one checkpoint (adapter and optimizer).")
    checkpointSeconds: Figure | None = Field(
        None, description="Estimated seconds to write and upload it: what a preempted worker needs of its grace."
    )
    preparedSha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of the prepared dataset the preflight left beside the outputs: the workers train on it "
        "only when what they fetch has this digest, else they prepare the data themselves.",
    )
    warnings: list[Annotated[str, _text(400)]] = Field(
        default_factory=list, max_length=4, description="What passed but may cost (a grace period too short)."
    )

    def failed(self, reason: Reason | str, message: str) -> Report:
        return self.model_copy(update={"passed": False, "reason": str(reason), "message": message[:1000]})

    def with_check(self, name: CheckName, ok: bool, message: str) -> Report:
        return self.model_copy(update={"checks": [*self.checks, Check(name=name, ok=ok, message=message[:400])]})

    def to_json(self) -> str:
        """Compact JSON within a termination message's limit: long messages are cut before anything is lost."""
        text = self.model_dump_json(exclude_none=True)
        if len(text) <= REPORT_LIMIT:
            return text
        short = self.model_copy(
            update={
                "checks": [c.model_copy(update={"message": c.message[:120]}) for c in self.checks],
                "warnings": [w[:200] for w in self.warnings],
                "message": (self.message or "")[:400],
            }
        )
        return short.model_dump_json(exclude_none=True)[:REPORT_LIMIT]


def parse_report(text: str) -> Report | None:
    """A report from a pod's termination message: the pod's word, so bounded and validated, else None."""
    if not isinstance(text, str) or len(text) > 2 * REPORT_LIMIT:
        return None
    try:
        return Report.model_validate_json(text.strip())
    except (ValidationError, ValueError):
        return None
