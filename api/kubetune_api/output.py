"""spec.output: where the adapter, metrics and checkpoints go."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictFloat, StrictStr

from ._base import Rule, Section
from ._types import OutputUri, is_s3, s3_cel
from .serving import ServingSpec
from .tracking import TrackingSpec


class OutputSpec(Section):
    """Where results are written (kubetune_api.layout): adapter/, metrics.json, manifest.json, curves.svg, merged/,
    checkpoints/, prepared/ and _SUCCESS last."""

    uri: OutputUri = Field(description="s3://bucket/prefix/ (or, for kubetune run only, a local path).")
    overwrite: StrictBool = Field(
        False,
        description="Replace a finished output (one with _SUCCESS): everything the earlier run wrote is removed first "
        "(prepared/ is kept: its digest names what it holds). Off: a finished output is never overwritten.",
    )
    adapter: Literal["best", "last"] = Field(
        "best",
        description="Which adapter is written: best (the lowest held-out loss among the evaluations, the final one "
        "included) or last (the final step's). metrics.json records both.",
    )
    minImprovement: StrictFloat | None = Field(
        None,
        gt=0,
        lt=1,
        description="Quality gate: the relative drop of held-out loss against the base model the adapter must reach "
        "(0.1: 10% lower). Below it the job fails with BelowThreshold and _SUCCESS is not written; the adapter and "
        "metrics stay for inspection. Empty: no gate.",
    )
    minPreferenceAccuracy: StrictFloat | None = Field(
        None,
        gt=0,
        le=1,
        description="Quality gate of DPO jobs: the held-out preference accuracy (pairs whose chosen response gets the "
        "higher implicit reward; a tie counts half) the adapter must reach, 0 < x <= 1. Below it the job fails with "
        "BelowThreshold and _SUCCESS is not written. Empty: no gate.",
    )
    minTaskScore: dict[StrictStr, Annotated[StrictFloat, Field(ge=0, le=1)]] | None = Field(
        None,
        max_length=16,
        description="Quality gate on tasks (spec.evaluation.tasks): task name -> the least score the adapter must reach "
        "with the task's first grader, 0 to 1. Below it the job fails with BelowThreshold and _SUCCESS is not written; "
        "the adapter, metrics and samples stay for inspection.",
    )
    merged: StrictBool = Field(
        False,
        description="Also write the base model with the adapter merged in under merged/ (safetensors shards, config, "
        "tokenizer, generation config), one shard at a time. Needs the base weights as safetensors.",
    )
    serving: ServingSpec | None = Field(None, description=ServingSpec.__doc__)
    tracking: TrackingSpec | None = Field(None, description=TrackingSpec.__doc__)

    rules = (
        Rule(
            field="uri",
            message="a cluster job writes to s3://bucket/prefix/ (no . or .. segments); local paths are for kubetune run only",
            cel=s3_cel("self.uri"),
            check=lambda o: is_s3(o.uri),
            cluster=True,
        ),
    )
