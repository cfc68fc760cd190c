"""Kubernetes-style conditions on a FineTuneJob status: set one, and its transition time moves only when it flips."""

from __future__ import annotations

import datetime
from typing import Any

from kubetune_api.conditions import ConditionType


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    at: str | None = None,
) -> list[dict[str, Any]]:
    """Conditions with one set; lastTransitionTime (at, default now) moves only when the status flips."""
    value = "True" if status else "False"
    out = [dict(c) for c in conditions if c.get("type") != type_]
    old = next((c for c in conditions if c.get("type") == type_), None)
    changed = old is None or old.get("status") != value
    out.append(
        {
            "type": type_,
            "status": value,
            "reason": reason,
            "message": message[:2000],
            "lastTransitionTime": (at or now()) if changed else old["lastTransitionTime"],  # type: ignore[index]
            "observedGeneration": generation,
        }
    )
    order = [t.value for t in ConditionType]
    return sorted(out, key=lambda c: order.index(c["type"]) if c["type"] in order else len(order))
