"""The GPU-hour ledger (status.usage): pod seconds from start and end times, attempts that end in a gang restart
counted as lost once each, a failed end lost too, cost from the platform's price; the Prometheus counters grow
by what a status write adds. Pure functions, table-tested; tests/test_e2e.py checks a real forced restart."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from prometheus_client import REGISTRY

from kubetune_api.status import Usage
from kubetune_operator import builders, metrics
from kubetune_operator.ledger import ledger, pod_seconds

from .operator_helpers import plan_for

AT = datetime.datetime(2026, 11, 26, 12, 0, 0, tzinfo=datetime.UTC)


def pod(start: str | None, end: str | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if start and end:
        state = {"terminated": {"startedAt": start, "finishedAt": end, "exitCode": 0}}
    elif start:
        state = {"running": {"startedAt": start}}
    else:
        state = {"waiting": {"reason": "ContainerCreating"}}
    return {"status": {"containerStatuses": [{"name": "trainer", "state": state}]}}


def test_pod_seconds_count_running_and_ended_containers_not_waiting_ones() -> None:
    pods = [pod("2026-11-26T11:00:00Z"), pod("2026-11-26T11:30:00Z", "2026-11-26T11:40:00Z"), pod(None)]
    assert pod_seconds(pods, AT) == 3600 + 600
    assert pod_seconds([pod("not a time")], AT) == 0  # what a pod's status says is not trusted blindly


H = 3600.0
CASES = [
    # previous usage, running seconds, attempt, restarting, failed, final -> podSeconds, lost pod seconds, closed
    ("first attempt running (whole minutes)", None, 119.0, 0, False, False, False, 60.0, 0.0, 0),
    ("first attempt succeeds", None, 119.0, 0, False, False, True, 119.0, 0.0, 0),
    ("first attempt ends in a restart", None, H, 0, True, False, False, H, H, 1),
    ("the same restart seen again", {"restartedPodSeconds": H, "closedAttempts": 1}, H, 0, True, False, False, H, H, 1),
    ("its pods still going away", {"restartedPodSeconds": H, "closedAttempts": 1}, H, 0, False, False, False, H, H, 1),
    ("second attempt succeeds", {"restartedPodSeconds": H, "closedAttempts": 1}, 3 * H, 1, False, False, True, 4 * H, H, 1),
    ("second attempt fails for good", {"restartedPodSeconds": H, "closedAttempts": 1}, H, 1, False, True, True, 2 * H, 2 * H, 1),
]


@pytest.mark.parametrize(
    ("previous", "running", "attempt", "restarting", "failed", "final", "total", "lost", "closed"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_the_ledger(
    previous: dict[str, Any] | None,
    running: float,
    attempt: int,
    restarting: bool,
    failed: bool,
    final: bool,
    total: float,
    lost: float,
    closed: int,
) -> None:
    before = Usage.model_validate(previous) if previous is not None else None
    usage = ledger(
        before, running, attempt, restarting=restarting, failed=failed, final=final, gpus=8, gpu_type="H100", price=4.0
    )
    assert usage.podSeconds == total and usage.closedAttempts == closed
    assert usage.gpuHours == pytest.approx(total * 8 / H, abs=1e-3)
    assert usage.lostGpuHours == pytest.approx(lost * 8 / H, abs=1e-3)
    assert usage.estimatedCost == pytest.approx(usage.gpuHours * 4.0, abs=0.01)
    if total:
        assert usage.lostShare == pytest.approx(lost / total, abs=1e-3)


def test_a_cpu_job_has_pod_time_and_a_lost_share_but_no_gpu_hours_or_cost() -> None:
    usage = ledger(None, H, 0, restarting=True, failed=False, gpus=0, gpu_type="", price=4.0)
    assert usage.gpuHours == 0 and usage.lostShare == 1.0 and usage.estimatedCost is None and usage.gpuType is None


def test_the_plan_carries_the_gpu_type_and_price_of_the_platforms_table() -> None:
    plan = plan_for(
        **{"spec.workers": {"replicas": 1, "gpusPerWorker": 8, "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"}}}
    )
    assert plan.gpu_type == "NVIDIA-L4" and plan.gpu_price == 0.0
    job = builders.build_preflight_job(plan)
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBETUNE_GPU_TYPE"] == "NVIDIA-L4" and '"24Gi"' in env["KUBETUNE_GPU"]
    limits = job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert not any("gpu" in key for key in limits) and "nodeSelector" not in job["spec"]["template"]["spec"]


def test_counters_grow_by_what_a_status_write_adds_by_namespace_queue_and_gpu_type() -> None:
    labels = {"namespace": "team-ledger", "queue": "gpu", "gpu_type": "H100"}

    def value(name: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    metrics.usage_changed(
        "team-ledger", "gpu", None, {"gpuHours": 2.0, "lostGpuHours": 0.5, "estimatedCost": 8.0, "gpuType": "H100"}
    )
    metrics.usage_changed("team-ledger", "gpu", {"gpuHours": 2.0}, {"gpuHours": 3.0, "lostGpuHours": 0.5, "gpuType": "H100"})
    metrics.usage_changed("team-ledger", "gpu", {"gpuHours": 3.0}, {"gpuHours": 2.5, "gpuType": "H100"})  # never down
    assert value("kubetune_gpu_hours_total") == 3.0
    assert value("kubetune_lost_gpu_hours_total") == 1.0
    assert value("kubetune_gpu_cost_total") == 8.0
