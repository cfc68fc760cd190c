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
    passed: bool


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
    tracking: TrackingOutcome | None = None  # the MLflow run, and the version registered once _SUCCESS is written

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=True)
