"""spec.runPolicy: retries, deadlines, clean-up and suspension, as in a batch/v1 Job."""

from __future__ import annotations

from pydantic import Field, StrictBool, StrictInt

from ._base import Section


class RunPolicySpec(Section):
    """Lifecycle of the whole gang of workers."""

    backoffLimit: StrictInt = Field(
        3,
        ge=0,
        le=100,
        description="Gang restarts allowed after a worker fails, 0 to 100; each resumes from the newest checkpoint.",
    )
    activeDeadlineSeconds: StrictInt | None = Field(
        None, ge=1, description="Fail the job when it has been running longer than this many seconds."
    )
    ttlSecondsAfterFinished: StrictInt | None = Field(
        None, ge=0, description="Delete the finished job (and its pods) this many seconds after it ends; output stays."
    )
    preflight: StrictBool = Field(
        True,
        description="Check storage, records, memory per GPU and GPU-hours in a CPU-only pod before any GPU is requested "
        "(the platform may turn preflights off for every job).",
    )
    terminationGracePeriodSeconds: StrictInt | None = Field(
        None,
        ge=5,
        le=3600,
        description="Seconds a worker has, once told to stop (preempted, evicted, suspended), to checkpoint the step it "
        "reached and upload it, 5 to 3600; unset: the platform's default (the chart's graceSeconds, 120). The preflight "
        "warns when the job's checkpoint may not fit in it.",
    )
    suspend: StrictBool = Field(
        False, description="Stop the pods and keep checkpoints; setting it back to false resumes from the newest checkpoint."
    )
