"""The records one run leaves in storage for a later one: a checkpoint's COMPLETE and the best adapter's BEST.

Storage is untrusted input: a record is read by one parser (`read`, which refuses anything but the fields kubetune
writes, with their types) and trusted by one rule (`Identity.refusal`: the job and the spec that wrote it), which
resuming a checkpoint and restoring the best adapter both use."""

from __future__ import annotations

from typing import Annotated, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .layout import checkpoint_tag

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
