"""status: what the operator reports; written only by the operator through the status subresource."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .conditions import ConditionType, Phase
from .preflight_report import Report

PHASES = [p.value for p in Phase]
CONDITION_TYPES = [c.value for c in ConditionType]


class _Status(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Condition(_Status):
    """A Kubernetes-style condition; lastTransitionTime moves only when status flips."""

    type: str = Field(description=f"{', '.join(CONDITION_TYPES[:-1])} or {CONDITION_TYPES[-1]}.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason code, e.g. InvalidSpec, BackoffLimitExceeded.")
    message: str = Field("", description="Human-readable detail.")
    lastTransitionTime: str = Field(description="RFC 3339 time the status last changed.")
    observedGeneration: int | None = Field(None, description="metadata.generation this condition was computed from.")


class Progress(_Status):
    """Training progress, from rank 0's structured log lines."""

    step: int = Field(0, description="Optimizer steps done.")
    totalSteps: int = Field(0, description="Optimizer steps planned.")
    epoch: float = Field(0.0, description="Fractional epoch.")
    loss: float | None = Field(None, description="Training loss at the last logged step.")
    learningRate: float | None = Field(None, description="Learning rate at the last logged step.")
    tokensPerSecond: float | None = Field(None, description="Training tokens per second across all processes.")
    eta: str | None = Field(None, description="Estimated time left, e.g. 1h02m.")
    summary: str = Field("", description="step/totalSteps (percent), as shown by kubectl get.")
    trackingDegraded: str | None = Field(
        None, description="Why experiment tracking is behind (the MLflow server unreachable or slow); training goes on."
    )


class Preparing(_Status):
    """Preparing the dataset (the preflight's tokenizing and packing), from its structured log lines; gone once
    the preflight has passed (its report has the totals)."""

    records: int = Field(0, description="Records prepared so far.")
    totalRecords: int = Field(0, description="Records to prepare.")
    tokens: int = Field(0, description="Tokens made so far.")
    recordsPerSecond: float = Field(0.0, description="Records prepared per second.")
    etaSeconds: float = Field(0.0, description="Estimated seconds left.")
    summary: str = Field("", description="The same in words, as the Preflight condition's message shows it.")


class Metrics(_Status):
    """Held-out metrics of the base model and of the trained adapter."""

    baseEvalLoss: float | None = Field(None, description="Held-out loss of the base model (adapter disabled).")
    evalLoss: float | None = Field(None, description="Held-out loss with the adapter.")
    basePerplexity: float | None = Field(None, description="exp(baseEvalLoss).")
    perplexity: float | None = Field(None, description="exp(evalLoss).")
    baseTokenAccuracy: float | None = Field(None, description="Next-token accuracy of the base model on held-out tokens.")
    tokenAccuracy: float | None = Field(None, description="Next-token accuracy with the adapter on held-out tokens.")
    trainLoss: float | None = Field(None, description="Training loss at the last step.")
    basePreferenceAccuracy: float | None = Field(
        None, description="DPO: held-out preference accuracy before training (0.5 where the policy is the reference)."
    )
    preferenceAccuracy: float | None = Field(
        None,
        description="DPO: share of held-out pairs whose chosen response gets the higher implicit reward with the adapter "
        "(a tie counts half).",
    )
    rewardMargin: float | None = Field(None, description="DPO: mean held-out chosen reward minus rejected reward.")
    baseTaskScore: float | None = Field(
        None, description="spec.evaluation.tasks: the base model's score on the first task (its first grader, 0 to 1)."
    )
    taskScore: float | None = Field(
        None, description="spec.evaluation.tasks: the adapter's score on the first task (its first grader, 0 to 1)."
    )


class Workers(_Status):
    """Worker pods by state."""

    ready: int = Field(0, description="Worker pods running.")
    total: int = Field(0, description="Worker pods wanted.")


PREEMPTED_PODS_KEPT = 256  # uids in status.usage.preemptedPods: more than any gang's workers


class Usage(_Status):
    """What the job held: worker pods' running time over every attempt, from their pods' start and end times."""

    podSeconds: float = Field(0.0, description="Seconds worker pods ran, summed over pods and attempts.")
    gpuHours: float = Field(0.0, description="GPU-hours held: podSeconds times the GPUs of each pod, in hours.")
    lostGpuHours: float = Field(
        0.0, description="The part of gpuHours spent in attempts that failed (gang restarts, a failed end)."
    )
    lostShare: float | None = Field(None, description="lostGpuHours / gpuHours (of pod time, for jobs without GPUs).")
    gpuType: str | None = Field(None, description="The GPU type the hours were held on.")
    estimatedCost: float | None = Field(None, description="gpuHours times the platform's price per GPU-hour of the type.")
    restartedPodSeconds: float = Field(0.0, description="Pod seconds of the attempts that ended in a gang restart.")
    preemptedPodSeconds: float = Field(
        0.0,
        description="Pod seconds of workers that were preempted, evicted or suspended: part of gpuHours, not of "
        "lostGpuHours (they checkpointed the step they reached, and the job resumes from it).",
    )
    closedPreemptedPodSeconds: float = Field(
        0.0, description="The part of preemptedPodSeconds whose pods are gone (counted once, when they went)."
    )
    closedAttempts: int = Field(0, description="Attempts whose time is in restartedPodSeconds (counted once each).")
    preemptedPods: list[str] = Field(
        default_factory=list,
        max_length=PREEMPTED_PODS_KEPT,
        description="The newest preempted worker pods (uids) whose seconds are in preemptedPodSeconds: each is counted "
        "once, when its end is first seen.",
    )


class Checkpoint(_Status):
    """The newest complete checkpoint, as rank 0 last reported it."""

    step: int = Field(description="The optimizer step it holds.")
    time: str = Field(description="RFC 3339 time the operator first saw it (also the Job's and pods' annotation).")
    uri: str = Field(description="Where it is: output.uri + checkpoints/step-NNNNNN/.")


class Preemption(_Status):
    """The newest time the workers were taken off their nodes without failing (preempted, evicted, suspended)."""

    time: str = Field(description="RFC 3339 time the operator saw it.")
    reason: str = Field(description="In the scheduler's words, e.g. EvictionByEvictionAPI, PreemptionByScheduler, Preempted.")
    message: str = Field("", description="What the scheduler or the trainer said.")
    step: int | None = Field(None, description="The step the workers reached and checkpointed, when they said.")
    id: str = Field("", description="What was preempted (a pod, or a Job's suspension), so it is counted once.")


class Tracking(_Status):
    """The job's MLflow run and the model version it registered (the chart's tracking.mlflow)."""

    experiment: str | None = Field(None, description="The MLflow experiment.")
    runId: str | None = Field(None, description="The MLflow run; every attempt of the job continues it.")
    registeredModel: str | None = Field(None, description="The registered model the adapter was added to.")
    registeredVersion: str | None = Field(None, description="The model version registered for the adapter.")
    degraded: str | None = Field(None, description="Why tracking is incomplete (the server was unreachable or slow).")


class FineTuneJobStatus(_Status):
    """Where the job is and how it went."""

    phase: Phase | None = Field(None, description=f"{', '.join(PHASES[:-1])} or {PHASES[-1]}.")
    conditions: list[Condition] = Field(default_factory=list, description=f"{', '.join(CONDITION_TYPES)}: one each at most.")
    progress: Progress | None = Field(None, description=Progress.__doc__)
    metrics: Metrics | None = Field(None, description=Metrics.__doc__)
    workers: Workers | None = Field(None, description=Workers.__doc__)
    preparing: Preparing | None = Field(None, description=Preparing.__doc__)
    preflight: Report | None = Field(None, description=Report.__doc__)
    usage: Usage | None = Field(None, description=Usage.__doc__)
    adapterUri: str | None = Field(None, description="Where the finished adapter is (output.uri + adapter/).")
    tracking: Tracking | None = Field(None, description=Tracking.__doc__)
    startTime: str | None = Field(None, description="RFC 3339 time the workers first started.")
    completionTime: str | None = Field(None, description="RFC 3339 time the job succeeded or failed.")
    restarts: int = Field(0, description="Gang restarts so far.")
    preemptions: int = Field(
        0, description="Times the workers were preempted, evicted or suspended by the queue; not counted as restarts."
    )
    lastPreemption: Preemption | None = Field(None, description=Preemption.__doc__)
    lastCheckpoint: Checkpoint | None = Field(None, description=Checkpoint.__doc__)
    lastFailureReason: str | None = Field(None, description="Reason of the most recent worker failure, kept across restarts.")
    observedGeneration: int | None = Field(None, description="metadata.generation the status reflects.")
