"""Which jobs the operator looks at without an event, and how often: from the status it wrote last (what Kopf's
timer filters see). Everything else a job does reaches the operator as an event of the job, its Job or its
preflight Job."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune_api.conditions import ConditionType, Phase, Reason


def busy(status: Mapping[str, Any], **_: Any) -> bool:
    """Jobs whose status moves with what their pods write, which no event reports: rank 0's progress lines while it
    trains, the preflight's `preparing` lines while its pod runs. Looked at every sync interval."""
    phase = status.get("phase")
    if phase == Phase.PREFLIGHT:
        conditions = status.get("conditions") or []
        return any(c.get("type") == ConditionType.PREFLIGHT and c.get("reason") == Reason.PREFLIGHT_RUNNING for c in conditions)
    return phase == Phase.RUNNING


def waiting(status: Mapping[str, Any], spec: Mapping[str, Any], **_: Any) -> bool:
    """Jobs that wait: pods pending (the scheduler's and the kubelet's reasons change without a Job event, so they
    are looked at now and then), a finished job's TTL. Looked at every wait interval, not every sync interval.
    Queued and suspended jobs change only through events, finished ones without a TTL never: they cost nothing."""
    phase = status.get("phase")
    if phase in (Phase.SUCCEEDED, Phase.FAILED):
        return (spec.get("runPolicy") or {}).get("ttlSecondsAfterFinished") is not None
    return phase not in (Phase.QUEUED, Phase.SUSPENDED) and not busy(status)
