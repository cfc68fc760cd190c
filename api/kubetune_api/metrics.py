"""metrics.json: what a run measured, one model for rank 0 that writes it, the launcher that summarises it and the
people and tools that read it. A metric that could not be measured (nothing held out to score) is null, never NaN."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict
from pydantic.dataclasses import dataclass

from .contract import TrackingOutcome


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


Metric = Annotated[float | None, BeforeValidator(_finite_or_none)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Evaluation(_Model):
    """One pass over the held-out rows (evaluate.metrics; for DPO jobs preference.metrics: evalLoss is then the DPO
    loss and the preference fields are set)."""

    evalLoss: Metric = None
    perplexity: Metric = None
    tokenAccuracy: Metric = None
    evalTokens: int = 0
    preferenceAccuracy: Metric = None  # pairs whose chosen response gets the higher implicit reward (a tie: half)
    rewardMargin: Metric = None  # mean chosen reward minus rejected reward
    chosenReward: Metric = None  # mean beta x log(policy / reference) of the chosen responses
    rejectedReward: Metric = None
    evalPairs: int | None = None


class Evaluated(Evaluation):
    """An evaluation of the adapter during training."""

    step: int


class AdapterChoice(_Model):
    choice: str  # "last" or "best" (output.adapter; "last" when no evaluation was kept)
    step: int


class TrainPoint(_Model):
    step: int
    loss: Metric = None
    learningRate: float


class EvalPoint(_Model):
    step: int
    evalLoss: Metric = None


class Curves(_Model):
    train: list[TrainPoint] = []
    eval: list[EvalPoint] = []


class EarlyStop(_Model):
    stoppedAtStep: int
    reason: str


class TrainStats(_Model):
    steps: int
    epochs: float
    loss: Metric = None  # the last logged training loss
    usefulTokensPerSecond: Metric = None
    worldSize: int
    earlyStopping: EarlyStop | None = None
    peakMemoryBytes: int | None = None
    peakMemoryMeasuredBy: str | None = None
    estimatedMemoryBytes: int | None = None
    estimatedMemoryParts: dict[str, int] | None = None


@dataclass(config=ConfigDict(extra="forbid"))
class Counts:
    """What happened to one split's records on their way to samples: counted record by record while tokenizing
    (a pydantic dataclass: plain attribute writes, validated where it is read back)."""

    records: int = 0
    samples: int = 0
    truncated: int = 0  # cut from the end (right)
    kept_end: int = 0  # cut from the start (keep-end): the completion or the latest turns kept
    dropped: int = 0
    empty: int = 0  # samples with no token to learn from (e.g. the completion was truncated away)
    system_folded: int = 0  # conversations whose system message went into the first user turn (Gemma's templates)
    tokens: int = 0
    loss_tokens: int = 0
    pairs: int = 0  # preference pairs (method dpo): two samples each, chosen and rejected

    def as_dict(self) -> dict[str, int]:
        """Every count; pairs only for preference data."""
        return {k: v for k, v in self.__dict__.items() if k != "pairs" or v}

    def values(self) -> list[float]:
        return [float(v) for v in self.__dict__.values()]

    @classmethod
    def of(cls, values: list[float]) -> Counts:
        return cls(*(round(v) for v in values))


class DataReport(_Model):
    """The dataset as the run saw it, before any step (also the `data` log event)."""

    train: Counts
    validation: Counts
    trainSequences: int
    packing: bool
    modelType: str


class Fetch(_Model):
    """Where the base model's bytes came from (also the launcher's `fetch` log event)."""

    what: str = "base model"
    uri: str
    fromCache: int  # bytes found in the node's cache and verified
    fromStorage: int  # bytes fetched from storage
    verifySeconds: float
    fetchSeconds: float


class QualityGate(_Model):
    minImprovement: float | None = None
    improvement: Metric = None
    minPreferenceAccuracy: float | None = None
    preferenceAccuracy: Metric = None
    minTaskScore: dict[str, float] | None = None  # output.minTaskScore
    taskScore: dict[str, Metric] | None = None  # the adapter's score on each gated task (its first grader)
    passed: bool


class Score(_Model):
    """A task's score (the mean grade, 0 to 1) and its standard error over the items."""

    score: Metric = None
    stderr: Metric = None


class GraderResult(_Model):
    grader: str  # its type (spec.evaluation.tasks[].graders[].type)
    base: Score  # the base model's answers
    adapter: Score  # the adapter's (the written one)


class TaskResult(_Model):
    """spec.evaluation.tasks: one task's items and each grader's scores, base model against adapter."""

    items: int
    skipped: int = 0  # held-out records with no prompt before their reference (nothing to answer), or a choice task's
    # reference that is none of its options
    graders: list[GraderResult]
    answerTokens: int = 0  # new tokens the adapter generated (base and adapter: twice about this many in all)
    seconds: float = 0.0  # the task's time, both models, on this run's devices
    error: str | None = None  # why the task has no scores (it failed; the run went on and wrote the adapter)

    def headline(self) -> GraderResult:
        return self.graders[0] if self.graders else GraderResult(grader="", base=Score(), adapter=Score())


class Metrics(_Model):
    """metrics.json."""

    base: Evaluation  # the base model, before training
    final: Evaluation  # what the written adapter scores
    adapter: AdapterChoice
    best: Evaluated | None = None
    last: Evaluation  # the adapter after the last step
    history: list[Evaluated] = []
    curves: Curves
    train: TrainStats
    data: DataReport
    fetch: Fetch | None = None
    qualityGate: QualityGate | None = None
    tasks: dict[str, TaskResult] | None = None  # spec.evaluation.tasks, by name
    tracking: TrackingOutcome | None = None  # the MLflow run, and the version registered once _SUCCESS is written

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=True)
