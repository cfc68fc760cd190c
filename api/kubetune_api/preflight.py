"""The preflight's words and arithmetic: the report (what `kubetune preflight` prints, the preflight pod leaves in
its termination message and the operator copies into status.preflight), the GPU table a platform sets, whether
a job fits its GPUs (and the smallest change that would), and its GPU-hours. Pure: no storage, no torch."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ._types import quantity_value
from .job import FineTuneJobSpec
from .memory import Estimate, Shape, estimate, gib
from .preflight_report import REPORT_LIMIT, Check, CheckName, Report, parse_report

__all__ = ["REPORT_LIMIT", "Check", "CheckName", "Report", "parse_report"]

HEADROOM = 0.9  # of a GPU's memory the estimate may use: the rest is the CUDA context, NCCL's buffers, fragmentation


class GpuType(BaseModel):
    """One kind of GPU, as the platform describes it (chart: preflight.gpuTypes)."""

    model_config = ConfigDict(extra="forbid")

    memory: int | str = Field(description="Memory per GPU, a quantity such as 80Gi.")
    tflops: float = Field(gt=0, le=100_000, description="Training throughput per GPU in TFLOP/s that jobs reach (not the peak).")
    pricePerHour: float = Field(0.0, ge=0, le=10_000, description="What one GPU-hour costs, for chargeback.")

    @property
    def memory_bytes(self) -> int:
        return int(quantity_value(self.memory))


# What the chart ships: memory from the data sheets, throughput at about 40% of dense bf16 peak, no price.
DEFAULT_GPU_TYPES: dict[str, GpuType] = {
    "NVIDIA-H100-80GB-HBM3": GpuType(memory="80Gi", tflops=400),
    "NVIDIA-H200": GpuType(memory="141Gi", tflops=400),
    "NVIDIA-A100-SXM4-80GB": GpuType(memory="80Gi", tflops=125),
    "NVIDIA-A100-SXM4-40GB": GpuType(memory="40Gi", tflops=125),
    "NVIDIA-L4": GpuType(memory="24Gi", tflops=48),
    "NVIDIA-A10G": GpuType(memory="24Gi", tflops=50),
}
DEFAULT_GPU = "NVIDIA-H100-80GB-HBM3"
PRODUCT_LABEL = "nvidia.com/gpu.product"  # the GPU feature discovery's node label; a nodeSelector on it names the type


@functools.lru_cache(maxsize=8)
def gpu_types(text: str) -> Mapping[str, GpuType]:
    """The platform's table (JSON, as the chart passes it), or the shipped one when empty; parsed once per text
    (the operator plans every job at every sync), and read-only since it is shared."""
    if not text.strip():
        return MappingProxyType(dict(DEFAULT_GPU_TYPES))
    return MappingProxyType({name: GpuType.model_validate(value) for name, value in json.loads(text).items()})


def gpu_type_of(spec: FineTuneJobSpec, table: Mapping[str, GpuType], default: str) -> tuple[str, GpuType | None]:
    """The GPU type a job runs on: its nodeSelector's product label, else the platform's default."""
    name = spec.workers.nodeSelector.get(PRODUCT_LABEL) or default
    return name, table.get(name)


# fitting


def changed(spec: FineTuneJobSpec, **changes: Any) -> FineTuneJobSpec:
    """The spec with fields changed, by section__field (validated again)."""
    body = spec.model_dump(mode="json")
    for path, value in changes.items():
        section, field = path.split("__")
        body[section][field] = value
    return FineTuneJobSpec.model_validate(body)


def candidates(spec: FineTuneJobSpec) -> list[tuple[str, FineTuneJobSpec]]:
    """Changes that lower memory per GPU, least disruptive first: slower steps, then smaller micro-batches (the
    global batch kept through accumulation), offload, more GPUs, and last shorter sequences (different data)."""
    t, ds, w = spec.training, spec.deepspeed, spec.workers
    out: list[tuple[str, FineTuneJobSpec]] = []
    if not t.gradientCheckpointing:
        out.append(("training.gradientCheckpointing: true", changed(spec, training__gradientCheckpointing=True)))
    ckpt = {"training__gradientCheckpointing": True}
    if ds.zeroStage < 3:
        out.append((f"deepspeed.zeroStage: 3 across {w.world_size} GPUs", changed(spec, deepspeed__zeroStage=3)))
        out.append(
            (
                f"deepspeed.zeroStage: 3 across {w.world_size} GPUs with training.gradientCheckpointing: true",
                changed(spec, deepspeed__zeroStage=3, **ckpt),
            )
        )
    micro, accumulate = t.microBatchSize, t.gradientAccumulationSteps
    while micro > 1:
        micro, accumulate = micro // 2, accumulate * 2
        smaller = changed(spec, training__microBatchSize=micro, training__gradientAccumulationSteps=accumulate, **ckpt)
        out.append((f"training.microBatchSize: {micro} and gradientAccumulationSteps: {accumulate} with checkpointing", smaller))
    stage3 = {
        "deepspeed__zeroStage": 3,
        "training__microBatchSize": 1,
        "training__gradientAccumulationSteps": t.microBatchSize * t.gradientAccumulationSteps,
        **ckpt,
    }
    out.append(
        ("deepspeed.offload: optimizer with ZeRO-3, micro-batch 1", changed(spec, deepspeed__offload="optimizer", **stage3))
    )
    for replicas in (w.replicas * 2, w.replicas * 4, w.replicas * 8):
        if replicas <= 64:
            wider = changed(spec, workers__replicas=replicas, **stage3)
            out.append((f"ZeRO-3 across {wider.workers.world_size} GPUs ({replicas} workers)", wider))
    out.append(("deepspeed.offload: all with ZeRO-3, micro-batch 1", changed(spec, deepspeed__offload="all", **stage3)))
    seq = spec.dataset.maxSeqLength
    while changed(spec, dataset__maxSeqLength=seq).row_tokens > 512:  # the rows a step trains on: row_tokens
        seq //= 2
        out.append(
            (
                f"dataset.maxSeqLength: {seq} with ZeRO-3 offload all",
                changed(spec, dataset__maxSeqLength=seq, deepspeed__offload="all", **stage3),
            )
        )
    return out


def fit(shape: Shape, spec: FineTuneJobSpec, gpu_memory: int, rows: int | None = None) -> tuple[Estimate, str | None]:
    """The estimate for the spec as written, and when it does not fit, the first change (least disruptive) that does.
    `rows`: tokens per row when the data's are shorter than the spec's row_tokens (unpacked rows pad to the longest)."""
    mine = estimate(shape, spec, gpu=True, rows=rows)
    if mine.total <= HEADROOM * gpu_memory:
        return mine, None
    for words, changed in candidates(spec):
        same_rows = changed.dataset.maxSeqLength == spec.dataset.maxSeqLength
        other = estimate(shape, changed, gpu=True, rows=rows if same_rows else None)
        if other.total <= HEADROOM * gpu_memory:
            return mine, f"{words} needs about {gib(other.total)} per GPU"
    return mine, None


def roomier(shape: Shape, spec: FineTuneJobSpec, gpu_memory: int, current: int, rows: int | None = None) -> str | None:
    """When the job leaves the card half empty and gradient accumulation can trade for a larger micro-batch (the
    same global batch, so the same training): the largest micro-batch that fits, as advice. Fewer, fuller steps
    keep the GPU's matrix units busier; a GPU-hour is paid for whether its memory is used or not. `current`: the
    spec's own estimate (fit's)."""
    t = spec.training
    usable = HEADROOM * gpu_memory
    if current > usable / 2:
        return None
    micro, accumulate, best = t.microBatchSize, t.gradientAccumulationSteps, None
    while accumulate % 2 == 0 and micro * 2 <= 1024:
        micro, accumulate = micro * 2, accumulate // 2
        trial = estimate(
            shape,
            changed(spec, training__microBatchSize=micro, training__gradientAccumulationSteps=accumulate),
            gpu=True,
            rows=rows,
        )
        if trial.total > usable:
            break
        best = (micro, accumulate, trial.total)
    if best is None:
        return None
    micro, accumulate, total = best
    return (
        f"training.microBatchSize: {micro} with gradientAccumulationSteps: {accumulate} (the same global batch) fits in "
        f"about {gib(total)} of {gib(gpu_memory)} per GPU: fewer, fuller steps"
    )


def wont_fit_message(mine: Estimate, gpu_memory: int, gpu_name: str, suggestion: str | None) -> str:
    largest = sorted(mine.parts.items(), key=lambda kv: -kv[1])[:3]
    parts = ", ".join(f"{name} {gib(value)}" for name, value in largest)
    head = (
        f"needs about {gib(mine.total)} per GPU ({parts}); a {gpu_name} has {gib(gpu_memory)}, of which "
        f"{int(HEADROOM * 100)}% is usable"
    )
    return f"{head}: {suggestion}" if suggestion else f"{head}, and no change tried fits: use a larger GPU type"


# time and GPU-hours


def task_tokens(spec: FineTuneJobSpec, samples: int, sample_tokens: int) -> float:
    """Tokens spec.evaluation.tasks put through the model, base and adapter (an upper bound: every answer runs to
    maxNewTokens, one forward token each with the KV cache; every prompt the whole held-out sample; a choice grader
    reads each option after the prompt)."""
    if not samples:
        return 0.0
    mean = sample_tokens / samples
    total = 0.0
    for task in spec.evaluation.tasks:
        items = min(task.limit or samples, samples)
        generates = any(g.type != "choice" for g in task.graders)
        options = sum(len(g.options or []) for g in task.graders if g.type == "choice")
        total += 2 * items * ((mean + task.generation.maxNewTokens if generates else 0) + options * (mean + 8))
    return total


def training_flops(
    shape: Shape, spec: FineTuneJobSpec, train_tokens: float, eval_tokens: float, task_tokens: float = 0.0
) -> float:
    """Forward (2 FLOPs per parameter per token) and backward through the frozen weights (2 more: LoRA needs the
    activations' gradients but not the weights'), a forward more with gradient checkpointing; evaluation forwards;
    the tasks' forwards (task_tokens). DPO adds the reference's forward (no gradients) to each."""
    active = shape.params
    if shape.experts:  # only the routed experts run
        expert_share = shape.experts_per_token / shape.experts
        mlp = sum(
            i * o * n for name, (i, o, n) in shape.linears().items() if name.endswith(("up_proj", "gate_proj", "down_proj"))
        )
        active = int(shape.params - shape.layers * mlp * (1 - expert_share))
    per_token = (6 if spec.training.gradientCheckpointing else 4) * active
    if spec.method.type == "dpo":  # the reference's forward too, in training and in every evaluation
        return (per_token + 2 * active) * train_tokens + 4 * active * eval_tokens
    return per_token * train_tokens + 2 * active * eval_tokens + 2 * active * task_tokens


def hours(flops: float, gpus: int, gpu: GpuType) -> tuple[float, float]:
    """(wall-clock hours, GPU-hours) at the platform's throughput per GPU."""
    seconds = flops / (max(1, gpus) * gpu.tflops * 1e12)
    return seconds / 3600, seconds * max(1, gpus) / 3600


def evaluations(spec: FineTuneJobSpec, total_steps: int) -> int:
    """Held-out passes: the base model, every evalEverySteps, and the final one."""
    every = spec.training.evalEverySteps
    return 2 + (max(0, math.ceil(total_steps / every) - 1) if every else 0)


def format_report(report: Report) -> str:
    """The report as `kubetune preflight` prints it."""
    lines = [f"preflight: {'passed' if report.passed else 'FAILED'}"]
    if not report.passed and report.reason:
        lines.append(f"  {report.reason}: {report.message}")
    for check in report.checks:
        lines.append(f"  [{'ok' if check.ok else '!!'}] {check.name:8} {check.message}")
    figures = []
    if report.records is not None:
        figures.append(f"  records: {report.records:,}   tokens per epoch: {report.tokens or 0:,}")
    if report.totalSteps is not None:
        figures.append(f"  steps: {report.stepsPerEpoch} per epoch, {report.totalSteps} in all")
    if report.memoryPerGpuBytes is not None:
        have = f" of {gib(report.gpuMemoryBytes)} ({report.gpuType})" if report.gpuMemoryBytes else ""
        figures.append(f"  memory per GPU: about {gib(report.memoryPerGpuBytes)}{have}")
    if report.gpuHours is not None:
        cost = f", about {report.estimatedCost:,.2f} at the platform's price" if report.estimatedCost else ""
        figures.append(
            f"  GPU-hours: about {report.gpuHours:,.1f} ({report.estimatedHours or 0:,.2f} h wall-clock on {report.gpuType}){cost}"
        )
    if report.suggestion:
        figures.append(f"  to fit: {report.suggestion}")
    return "\n".join(lines + figures)
