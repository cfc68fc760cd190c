"""The job's children and the rules that keep them: which objects are ours, what a conflict or a rejection says,
and what patch puts back a child someone changed by hand. Pure: effects.py carries them out."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kubetune_api.conditions import Reason

from .plan import Plan


class Refused(Exception):
    """The job cannot go on: a name is taken by an object it does not own, or the API server rejects a child."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def owned(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether obj's controller owner reference is the object with this uid: the only children the operator touches."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return bool(uid) and any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def conflict(kind: str, plan: Plan) -> Refused:
    name = plan.config_name if kind == "ConfigMap" else plan.job_name  # the Job, Service and NetworkPolicy: the job's name
    return Refused(
        Reason.NAME_CONFLICT,
        f"{kind} {plan.namespace}/{name} exists and is not owned by this FineTuneJob; it was left untouched. "
        "Rename the FineTuneJob or remove that object",
    )


def rejected(kind: str, body: str | None, reason: str | None) -> Refused:
    """A 422 (or 400) on a child: the API server's own words (its response body, else its reason), as InvalidSpec.
    Retrying cannot help."""
    try:
        message = str(json.loads(body or "{}").get("message") or reason)
    except (ValueError, AttributeError):
        message = str(reason)
    return Refused(Reason.INVALID_SPEC, f"the API server rejected the {kind}: {message}"[:2000])


def replacing(current: Any, desired: Any) -> Any:
    """A JSON merge patch that turns current into desired: keys someone added by hand are removed (null), not kept."""
    if not isinstance(current, dict) or not isinstance(desired, dict):
        return desired
    out = {k: None for k in current if k not in desired}
    out.update({k: replacing(current.get(k), v) for k, v in desired.items()})
    return out


def drift(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch that puts back what the operator owns in a ConfigMap (its data), a Service (its selector) or a
    NetworkPolicy (its spec), or None when nothing drifted. What else someone added (labels, other fields) is left.
    The current object's uid in the patch is a precondition: an object replaced since the read is refused, not
    rewritten."""
    kind = desired["kind"]
    uid = {"uid": current["metadata"]["uid"]}
    spec = current.get("spec") or {}
    if kind == "ConfigMap":  # a key added by hand is removed too: it would be one more file in the trainer's config
        if current.get("data") == desired["data"]:
            return None
        return {"metadata": uid, "data": replacing(current.get("data"), desired["data"])}
    if kind == "Service":
        selector = spec.get("selector") or {}
        if selector == desired["spec"]["selector"]:
            return None
        return {"metadata": uid, "spec": {"selector": replacing(spec.get("selector"), desired["spec"]["selector"])}}
    if kind == "NetworkPolicy":
        if {k: spec.get(k) for k in desired["spec"]} == desired["spec"]:
            return None
        return {"metadata": uid, "spec": replacing(current.get("spec"), desired["spec"])}
    raise ValueError(f"no drift rule for a {kind}")
