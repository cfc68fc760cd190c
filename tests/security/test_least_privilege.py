"""Least privilege, proven: the API server's audit log holds every request the operator's ServiceAccount made during
the whole session (every cluster, fault, admission and e2e test ran the operator under it). It was never refused,
and every verb it is granted was used: a grant no test needs is a grant the operator does not need.

Marked `audit`: tests/conftest.py runs it after every other test of the session."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from kubetune_operator.rbac import RULES

from ..cluster.plane import OPERATOR_USER

pytestmark = [pytest.mark.cluster, pytest.mark.audit]


def granted() -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in RULES
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def used(entries: list[dict[str, Any]]) -> Counter[tuple[str, str, str]]:
    out: Counter[tuple[str, str, str]] = Counter()
    for entry in entries:
        ref = entry.get("objectRef") or {}
        if not ref.get("resource"):
            continue  # discovery (/api, /apis): allowed to every authenticated user
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        out[(ref.get("apiGroup", ""), resource, entry["verb"])] += 1
    return out


def test_the_operator_used_exactly_the_verbs_it_is_granted(plane, operator) -> None:  # type: ignore[no-untyped-def]
    entries = [json.loads(line) for line in plane.audit_log.read_text().splitlines() if line.strip()]
    mine = [e for e in entries if (e.get("user") or {}).get("username") == OPERATOR_USER and e.get("stage") == "ResponseComplete"]
    assert mine, "no request of the operator's service account in the audit log"
    refused = Counter(
        (e["verb"], (e.get("objectRef") or {}).get("resource"), (e.get("objectRef") or {}).get("namespace"))
        for e in mine
        if (e.get("responseStatus") or {}).get("code") == 403
    )
    assert not refused, f"the operator was refused (a grant is missing): {refused}"
    counts = used(mine)
    # events.k8s.io and core events are one grant: the client posts through one of them
    events = {("", "events", v) for v in ("create", "patch")} | {("events.k8s.io", "events", v) for v in ("create", "patch")}
    unused = sorted(g for g in granted() - set(counts) - events)
    assert not unused, f"granted but never used in the whole session: {unused}; used: {sorted(counts.items())}"
    assert set(counts) <= granted(), sorted(set(counts) - granted())
    used_events = {g for g in events if counts[g]}
    assert {v for _, _, v in used_events} == {v for g, r, v in granted() if r == "events"}, used_events
