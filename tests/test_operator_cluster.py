"""The operator against the real API server, under exactly its RBAC: children, Kueue, unschedulable pods,
hand-deleted children, suspension, garbage collection, and `kubetune render` accepted by the server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kubetune_api.manifests import dump

from .cluster_helpers import condition, ftj, wait_for
from .conftest import ROOT, job
from .gitops_health import argocd_health, flux_health

pytestmark = pytest.mark.cluster


def test_render_is_accepted_by_the_api_server(plane, crd) -> None:  # type: ignore[no-untyped-def]
    rendered = subprocess.run(
        [sys.executable, "-m", "kubetune_cli", "render", str(ROOT / "examples" / "full.yaml")],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    result = plane.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == 5  # ConfigMap, Service, NetworkPolicy, the preflight Job, Job


def test_unschedulable_gang_is_pending_with_the_schedulers_words(plane, operator, node_agent) -> None:  # type: ignore[no-untyped-def]
    body = job(**{"metadata.name": "too-big", "spec.workers": {"replicas": 2, "gpusPerWorker": 16}})
    plane.kubectl("apply", "-f", "-", input=dump(body))
    running = wait_for(
        "Running=False Unschedulable",
        lambda: condition(ftj(plane, "too-big"), "Running").get("reason") == "Unschedulable" and ftj(plane, "too-big"),
    )
    assert running["status"]["phase"] == "Pending"
    assert "Insufficient nvidia.com/gpu" in condition(running, "Running")["message"]
    health, message = argocd_health(running)  # GitOps tools show the scheduler's words too
    assert health == "Progressing" and "Insufficient nvidia.com/gpu" in message and flux_health(running) == "InProgress"
    assert condition(running, "Validated")["reason"] == "SpecValid"
    children = {
        k: plane.kubectl("get", k, "-l", "kubetune.dev/job-name=too-big", "-o", "name").stdout.split()
        for k in ("job", "configmap", "service")
    }
    assert children == {"job": ["job.batch/too-big"], "configmap": ["configmap/too-big-config"], "service": ["service/too-big"]}
    plane.kubectl("delete", "configmap", "too-big-config")  # someone deletes a child by hand
    wait_for(
        "the ConfigMap to come back", lambda: plane.kubectl("get", "configmap", "too-big-config", check=False).returncode == 0
    )
    plane.kubectl("patch", "ftj/too-big", "--type=merge", "-p", json.dumps({"spec": {"runPolicy": {"suspend": True}}}))
    suspended = wait_for(
        "Suspended", lambda: ftj(plane, "too-big").get("status", {}).get("phase") == "Suspended" and ftj(plane, "too-big")
    )
    assert condition(suspended, "Suspended")["reason"] == "SuspendedByUser"
    assert argocd_health(suspended)[0] == "Suspended" and flux_health(suspended) == "InProgress"
    assert plane.kubectl("get", "job/too-big", "-o", "jsonpath={.spec.suspend}").stdout == "true"
    wait_for(
        "the pods to go",
        lambda: not plane.kubectl("get", "pods", "-l", "kubetune.dev/job-name=too-big", "-o", "name").stdout.strip(),
    )
    events = plane.kubectl("get", "events", "--field-selector", "involvedObject.name=too-big", "-o", "json").stdout
    assert "Suspended" in events
    plane.kubectl("delete", "ftj/too-big", "--wait=true")
    wait_for(
        "garbage collection",
        lambda: (
            not plane.kubectl("get", "job,configmap,service", "-l", "kubetune.dev/job-name=too-big", "-o", "name").stdout.strip()
        ),
    )


def test_queued_job_waits_for_kueue_to_admit_it(plane, operator) -> None:  # type: ignore[no-untyped-def]
    body = job(
        **{
            "metadata.name": "queued",
            "metadata.labels": {"kueue.x-k8s.io/queue-name": "team-gpus"},
            "spec.workers": {"gpusPerWorker": 16},
        }
    )
    plane.kubectl("apply", "-f", "-", input=dump(body))
    queued = wait_for("Queued", lambda: ftj(plane, "queued").get("status", {}).get("phase") == "Queued" and ftj(plane, "queued"))
    assert condition(queued, "Queued")["reason"] == "WaitingForQueue"
    assert argocd_health(queued)[0] == "Progressing" and flux_health(queued) == "InProgress"
    job_obj = json.loads(plane.kubectl("get", "job/queued", "-o", "json").stdout)
    assert job_obj["spec"]["suspend"] is True and job_obj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-gpus"
    # what Kueue does on admission (no Kueue runs here; tests/test_kueue.py has the real admission)
    plane.kubectl("patch", "job/queued", "--type=merge", "-p", '{"spec": {"suspend": false}}')
    admitted = wait_for(
        "admission", lambda: condition(ftj(plane, "queued"), "Queued").get("reason") == "Admitted" and ftj(plane, "queued")
    )
    assert admitted["status"]["phase"] == "Pending"
    plane.kubectl("delete", "ftj/queued")


def test_spec_is_immutable_once_started_except_run_policy(plane, operator) -> None:  # type: ignore[no-untyped-def]
    plane.kubectl("apply", "-f", "-", input=dump(job(**{"metadata.name": "frozen", "spec.workers": {"gpusPerWorker": 16}})))
    plane.kubectl(
        "patch", "ftj/frozen", "--subresource=status", "--type=merge", "-p", '{"status": {"startTime": "2026-01-01T00:00:00Z"}}'
    )
    changed = plane.kubectl("patch", "ftj/frozen", "--type=merge", "-p", '{"spec": {"lora": {"r": 8}}}', check=False)
    assert changed.returncode != 0 and "immutable once the job's workers may exist" in changed.stderr
    assert (
        plane.kubectl(
            "patch", "ftj/frozen", "--type=merge", "-p", '{"spec": {"runPolicy": {"suspend": true}}}', check=False
        ).returncode
        == 0
    )
    plane.kubectl("delete", "ftj/frozen")
