"""Faults: the operator killed right after a job arrives, and the API server frozen for a while. Neither loses the
job's record or duplicates a child, and the operator keeps running. With peering, a standby replica stays idle
while the active one runs and takes over when it dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from kubetune_api.manifests import dump

from .cluster.plane import free_port
from .cluster_helpers import ftj, wait_for
from .conftest import ROOT, job

pytestmark = pytest.mark.cluster
NAMESPACE = "faults"


@pytest.fixture(scope="module")
def start_operator(plane, crd, operator, operator_kubeconfig, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Start `kubetune operator` as a process watching only the faults namespace, as the chart's ServiceAccount."""
    plane.kubectl("create", "namespace", NAMESPACE, check=False)
    config = operator_kubeconfig
    env = {
        **os.environ,
        "KUBECONFIG": str(config),
        "KUBETUNE_NAMESPACES": NAMESPACE,
        "KUBETUNE_SYNC_SECONDS": "2",
        "KUBETUNE_WAIT_SECONDS": "2",
        "KUBETUNE_METRICS_PORT": "0",
    }
    processes: list[subprocess.Popen[bytes]] = []
    logs = tmp_path_factory.mktemp("operator-logs")

    def start(**extra: str) -> subprocess.Popen[bytes]:
        log = logs / f"operator-{len(processes)}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "kubetune_cli", "operator"],
            env={**env, "KUBETUNE_HEALTH_PORT": str(free_port()), **extra},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
        )
        process.log = log  # type: ignore[attr-defined]
        processes.append(process)
        return process

    def stop_all() -> None:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    start.stop_all = stop_all  # type: ignore[attr-defined]
    yield start
    stop_all()


def test_operator_killed_mid_reconcile_resumes_without_duplicates(plane, start_operator) -> None:  # type: ignore[no-untyped-def]
    first = start_operator()
    time.sleep(4)  # logged in and watching
    body = job(**{"metadata.name": "crash", "metadata.namespace": NAMESPACE, "spec.workers": {"gpusPerWorker": 16}})
    plane.kubectl("apply", "-f", "-", input=dump(body))
    time.sleep(0.3)
    first.send_signal(signal.SIGKILL)  # killed while it reconciles the new job
    first.wait()
    start_operator()
    status = wait_for(
        "a status from the restarted operator",
        lambda: (ftj(plane, "crash", NAMESPACE).get("status") or {}).get("phase") == "Pending" and ftj(plane, "crash", NAMESPACE),
        timeout=90,
    )
    assert status["status"]["observedGeneration"] == 1
    for kind in ("job", "configmap", "service"):
        names = plane.kubectl("get", kind, "-n", NAMESPACE, "-l", "kubetune.dev/job-name=crash", "-o", "name").stdout.split()
        assert len(names) == 1, (kind, names)


def test_api_server_frozen_for_a_while(plane, start_operator) -> None:  # type: ignore[no-untyped-def]
    apiserver = plane.processes["kube-apiserver"]
    start_operator.stop_all()
    running = start_operator()
    time.sleep(4)
    os.kill(apiserver.pid, signal.SIGSTOP)
    time.sleep(8)  # the operator's requests and watches stall
    os.kill(apiserver.pid, signal.SIGCONT)
    body = job(**{"metadata.name": "after-outage", "metadata.namespace": NAMESPACE, "spec.workers": {"gpusPerWorker": 16}})
    wait_for("the API server", lambda: plane.kubectl("get", "--raw", "/readyz", check=False).stdout == "ok", timeout=60)
    plane.kubectl("apply", "-f", "-", input=dump(body))
    settled = wait_for(
        "the job after the outage",
        lambda: (
            (ftj(plane, "after-outage", NAMESPACE).get("status") or {}).get("phase") == "Pending"
            and ftj(plane, "after-outage", NAMESPACE)
        ),
        timeout=120,
    )
    assert json.dumps(settled["status"])
    assert running.poll() is None, "the operator exited during the outage"


def test_standby_replica_takes_over_when_the_active_one_dies(plane, start_operator) -> None:  # type: ignore[no-untyped-def]
    start_operator.stop_all()
    peering = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "kubetune", "namespace": NAMESPACE}}
    plane.kubectl("apply", "-f", "-", input=dump(peering))  # what the chart creates with peering.enabled
    replica = {"KUBETUNE_PEERING": "kubetune", "KUBETUNE_PEERING_LIFETIME": "10"}
    standby = start_operator(**replica)
    time.sleep(3)
    active = start_operator(**replica)  # newer, so higher priority: it becomes active and the first one pauses
    wait_for("the older replica to stand by", lambda: "Pausing" in standby.log.read_text(), timeout=60)
    body = job(**{"metadata.name": "peered", "metadata.namespace": NAMESPACE, "spec.workers": {"gpusPerWorker": 16}})
    plane.kubectl("apply", "-f", "-", input=dump(body))
    wait_for("the active replica", lambda: (ftj(plane, "peered", NAMESPACE).get("status") or {}).get("phase") == "Pending")
    assert "peered" not in standby.log.read_text(), "the standby acted while the active replica was alive"
    active.send_signal(signal.SIGKILL)
    active.wait()
    body = job(**{"metadata.name": "taken-over", "metadata.namespace": NAMESPACE, "spec.workers": {"gpusPerWorker": 16}})
    plane.kubectl("apply", "-f", "-", input=dump(body))
    wait_for(
        "the standby to take over",
        lambda: (ftj(plane, "taken-over", NAMESPACE).get("status") or {}).get("phase") == "Pending",
        timeout=90,
    )
    assert standby.poll() is None and "Resuming" in standby.log.read_text()
