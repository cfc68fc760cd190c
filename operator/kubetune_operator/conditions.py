"""Kubernetes-style conditions on a FineTuneJob status: set one, and its transition time moves only when it flips."""

from __future__ import annotations

import datetime

from kubetune_api.conditions import ConditionType
from kubetune_api.status import Condition


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


ORDER = [t.value for t in ConditionType]


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    at: str | None = None,
) -> list[Condition]:
    """Conditions with one set; lastTransitionTime (at, default now) moves only when the status flips."""
    value = "True" if status else "False"
    old = next((c for c in conditions if c.type == type_), None)
    changed = old is None or old.status != value
    new = Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message[:2000],
        lastTransitionTime=(at or now()) if changed or old is None else old.lastTransitionTime,
        observedGeneration=generation,
    )
    out = [c for c in conditions if c.type != type_] + [new]
    return sorted(out, key=lambda c: ORDER.index(c.type) if c.type in ORDER else len(ORDER))
