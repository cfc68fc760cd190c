"""The GitOps health checks in examples/gitops/ on every phase, fast; the cluster and e2e tests run the same checks
against status objects the operator wrote (tests/test_operator_cluster.py, tests/test_e2e.py)."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune_api.conditions import Phase

from .gitops_health import argocd_health, flux_health


def obj(phase: str | None, generation: int = 1, observed: int = 1, **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": "job", "generation": generation}, "spec": {}}
    if phase is not None:
        body["status"] = {"phase": phase, "observedGeneration": observed, **status}
    return body


WAITING = [
    {
        "type": "Running",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu",
    }
]
QUEUED = [{"type": "Queued", "status": "True", "reason": "WaitingForQueue", "message": "waiting for queue team-a-gpus"}]
FAILED = [{"type": "Failed", "status": "True", "reason": "OutOfMemory", "message": "rank 0 ran out of GPU memory"}]


@pytest.mark.parametrize(
    ("body", "argocd", "flux"),
    [
        (obj(None), ("Progressing", "Waiting for the kubetune operator"), "InProgress"),
        (obj("Pending"), ("Progressing", "Pending"), "InProgress"),
        (
            obj("Pending", conditions=WAITING),
            ("Progressing", "Pending: 0/2 nodes are available: 2 Insufficient nvidia.com/gpu"),
            "InProgress",
        ),
        (obj("Queued", conditions=QUEUED), ("Progressing", "Queued: waiting for queue team-a-gpus"), "InProgress"),
        (obj("Queued"), ("Progressing", "Queued"), "InProgress"),
        (obj("Running", progress={"summary": "40/100 (40%)"}), ("Progressing", "Running: 40/100 (40%)"), "InProgress"),
        (obj("Suspended"), ("Suspended", "runPolicy.suspend is true"), "InProgress"),
        (obj("Failed", conditions=FAILED), ("Degraded", "OutOfMemory: rank 0 ran out of GPU memory"), "Failed"),
        (obj("Succeeded", adapterUri="s3://a/adapter/"), ("Healthy", "Adapter written to s3://a/adapter/"), "Current"),
        # a spec change the operator has not seen yet is not healthy, whatever the old status says
        (
            obj("Succeeded", generation=2, observed=1),
            ("Progressing", "Waiting for the operator to see generation 2"),
            "InProgress",
        ),
    ],
    ids=lambda v: v["status"]["phase"] if isinstance(v, dict) and "status" in v else None,
)
def test_health_of_each_phase(body: dict[str, Any], argocd: tuple[str, str], flux: str) -> None:
    assert argocd_health(body) == argocd
    assert flux_health(body) == flux


def test_every_phase_is_covered() -> None:
    for phase in Phase:
        assert argocd_health(obj(phase.value))[0] in ("Healthy", "Progressing", "Degraded", "Suspended")
