"""The records one run leaves in storage for a later one: a checkpoint's COMPLETE and the best adapter's BEST.

Storage is untrusted input: a record is read by one parser (`read`, which refuses anything but the fields kubetune
writes, with their types) and trusted by one rule (`Identity.refusal`: the job and the spec that wrote it), which
resuming a checkpoint and restoring the best adapter both use."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .layout import checkpoint_tag
from .metrics import Counts

Digest = Annotated[str, Field(max_length=64)]
Uid = Annotated[str, Field(max_length=128)]


class _Record(BaseModel):
    # fields an earlier or later version wrote are ignored, never trusted: what is read is what is declared
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


class Identity(_Record):
    """Who wrote a record: the digest of the spec's training sections and the FineTuneJob's uid (empty outside a
    cluster)."""

    specDigest: Digest
    jobUid: Uid = ""

    def refusal(self, mine: Identity, digests: set[str], where: str) -> str | None:
        """Why a record this job did not write must not be used (None: it may). `digests`: the forms of this job's
        spec digest that a checkpoint may carry (checkpoint.spec_digests)."""
        if self.specDigest not in digests:
            return (
                f"{where} was written for another spec (training digest {self.specDigest[:12] or 'none'}, this job's is "
                f"{mine.specDigest[:12]}); not resuming it. Delete the checkpoints or choose another output.uri"
            )
        if mine.jobUid and self.jobUid != mine.jobUid:  # in a cluster a record without this job's uid is never used
            return (
                f"{where} was written by another FineTuneJob (uid {self.jobUid or 'none'}, this one is {mine.jobUid}); "
                "not resuming it. Delete the checkpoints or choose another output.uri"
            )
        return None


class CheckpointRecord(Identity):
    """checkpoints/step-N/COMPLETE: written by rank 0 once every worker's part of step N is in storage."""

    step: int = Field(ge=1)
    worldSize: int = Field(ge=1)


class BestRecord(Identity):
    """checkpoints/best/BEST: the best adapter so far, kept under best/<tag>/ (uploaded before this record)."""

    step: int = Field(ge=1)
    tag: str
    evalLoss: float | None = None

    def names(self, step: int) -> bool:
        return self.step == step and self.tag == checkpoint_tag(step)


R = TypeVar("R", bound=_Record)


def read(model: type[R], text: str) -> R | None:
    """The record in `text`, or None when it is not one kubetune wrote (not JSON, a field missing or mistyped)."""
    try:
        return model.model_validate_json(text)
    except ValidationError:
        return None


class SplitCounts(_Record):
    """What happened to each split's records on their way to samples (metrics.Counts)."""

    train: Counts
    validation: Counts


class SplitRows(_Record):
    train: int = Field(ge=0)
    validation: int = Field(ge=0)


class PreparedMeta(_Record):
    """prepared/<digest>/meta.json: what a prepared dataset was made from and holds (kubetune_trainer.data.prepared
    writes it last; the token arrays beside it are checked on their own)."""

    format: int
    digest: Digest | None = None  # of the data, the tokenizer and the dataset settings it was made from
    records: int = Field(ge=0)
    vocabulary: int = Field(ge=1)
    maxSeqLength: int = Field(ge=1)
    packing: bool
    pairs: bool = False
    counts: SplitCounts
    rows: SplitRows
    packingOff: Annotated[str, Field(max_length=64)] | None = None  # the model family packing was turned off for

    def refusal(self, version: int, made_from: str | None, vocabulary: int, max_len: int, pairs: bool) -> str | None:
        """Why this set cannot serve a job that needs these (None: it can): one rule for a set fetched from storage
        and one a worker prepared itself."""
        if self.format != version:
            return f"meta.json: not format {version}"
        if made_from is not None and self.digest != made_from:
            return "made from other data, tokenizer or dataset settings (digest differs)"
        if self.vocabulary != vocabulary or self.maxSeqLength != max_len:
            return "made for another vocabulary or maxSeqLength"
        if self.pairs is not pairs:
            return f"made {'without' if pairs else 'with'} preference pairs"
        return None

    def tokens(self) -> int:
        return self.counts.train.tokens + self.counts.validation.tokens


class Digested(_Record):
    """A file or folder the run read, and the sha256 it had."""

    uri: str
    sha256: str


class BaseModelFiles(_Record):
    uri: str
    revision: str | None = None
    filesSha256: str | None = None  # None: a hub id, whose files transformers fetched


class Adjustment(_Record):
    """A setting the trainer changed from the spec to make the model train (e.g. LoRA dropout on fused experts)."""

    asked: float | int | str | None = None
    used: float | int | str | None = None
    why: str


class Kernels(_Record):
    attention: str  # model.attnImplementation as resolved
    lossChunkTokens: int = 0  # 0: the loss over the whole batch at once


class MergedFiles(_Record):
    """merged/: the base model with the adapter folded in."""

    uri: str
    shards: int
    bytes: int
    largestShardBytes: int
    mergedLayers: int


class RunManifest(_Record):
    """manifest.json beside the adapter: exactly what ran (the spec, the files read and their digests, the
    DeepSpeed config, the libraries' versions), for a person, an audit or a registry's lineage."""

    job: str
    restarts: int = 0  # gang restarts before the attempt that finished
    specSha256: str
    spec: dict[str, Any]  # the FineTuneJobSpec as it ran (its JSON; FineTuneJobSpec reads it back)
    adjusted: dict[str, Adjustment] = Field(default_factory=dict)
    baseModel: BaseModelFiles
    datasets: dict[str, Digested]  # train, and validation when a file was given
    startAdapter: Digested | None = None  # model.adapter: the adapter this one continued, byte for byte
    worldSize: int
    deepspeed: dict[str, Any]  # DeepSpeed's own config format (kubetune_api.ds_config with this run's world)
    kernels: Kernels | None = None
    versions: dict[str, str]
    completedAt: str
    merged: MergedFiles | None = None


Word = Annotated[int, Field(ge=0, lt=2**32)]


class RngState(_Record):
    """checkpoints/step-N/rng-rank<R>.json: Python's random state of one rank, as random.getstate() gives it (torch's
    is beside it, in safetensors): resuming reads no pickle."""

    version: int
    state: list[Word] = Field(min_length=625, max_length=625)
    gauss: float | None = None
