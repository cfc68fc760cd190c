"""The queued path through real admission: Kueue's own controller manager (built from sigs.k8s.io/kueue v0.17.0)
against the test control plane. Two FineTuneJobs share a ClusterQueue with room for one: the second waits while
the first holds the quota, its preflight runs meanwhile (it takes no quota), and it is admitted and trains once the
first has finished. The trainer pods are real (the node agent runs them against the S3 server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubetune_api.manifests import dump

from .cluster import kueue as kueue_manager
from .cluster_helpers import condition, ftj, manifest, namespace_with_credentials, wait_for
from .s3server import S3Server

pytestmark = pytest.mark.e2e
NAMESPACE = "queued"  # watched by the session's operator (tests/conftest.py), which these jobs run under

QUEUES = f"""apiVersion: kueue.x-k8s.io/v1beta1
kind: ResourceFlavor
metadata: {{name: e2e-flavor}}
---
apiVersion: kueue.x-k8s.io/v1beta1
kind: ClusterQueue
metadata: {{name: e2e-cpus}}
spec:
  namespaceSelector: {{}}
  resourceGroups:
  - coveredResources: ["cpu"]
    flavors:
    - name: e2e-flavor
      resources:
      - {{name: cpu, nominalQuota: 1}}   # one single-worker job at a time
---
apiVersion: kueue.x-k8s.io/v1beta1
kind: LocalQueue
metadata: {{name: team, namespace: {NAMESPACE}}}
spec: {{clusterQueue: e2e-cpus}}
"""


@pytest.fixture(scope="module")
def kueue(plane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[kueue_manager.Kueue]:  # type: ignore[no-untyped-def]
    crds = Path(__file__).resolve().parent.parent / ".cache" / "testbed" / "crds"
    for path in sorted(crds.glob("kueue.x-k8s.io_*.yaml")):
        plane.kubectl("apply", "--server-side", "-f", str(path))

    def established() -> bool:
        listed = json.loads(plane.kubectl("get", "crd", "-o", "json").stdout)["items"]
        kueue = [c for c in listed if c["metadata"]["name"].endswith(".kueue.x-k8s.io")]
        conditions = [c2 for c in kueue for c2 in (c.get("status") or {}).get("conditions") or []]
        return len(kueue) >= 11 and sum(1 for c in conditions if c["type"] == "Established" and c["status"] == "True") == len(
            kueue
        )

    wait_for("Kueue's CRDs established", established)
    manager = kueue_manager.start(plane, tmp_path_factory.mktemp("kueue"))
    plane.kubectl("create", "namespace", NAMESPACE, check=False)
    plane.kubectl("apply", "-f", "-", input=QUEUES)
    yield manager
    manager.stop()


@pytest.fixture(scope="module")
def namespace(plane, s3: S3Server) -> str:  # type: ignore[no-untyped-def]
    return namespace_with_credentials(plane, s3, NAMESPACE)


def queued_job(name: str, s3: Any, stored: dict[str, str]) -> dict[str, Any]:
    body = manifest(name, s3, stored, {"maxSteps": 40, "microBatchSize": 4, "evalEverySteps": 0, "checkpointEverySteps": 0})
    body["metadata"]["namespace"] = NAMESPACE
    body["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team"}
    body["spec"]["workers"] = {"replicas": 1, "gpusPerWorker": 0, "resources": {"requests": {"cpu": "1"}}}
    return body


def workload_admitted(plane, job_name: str) -> bool | None:  # type: ignore[no-untyped-def]
    """Whether Kueue's Workload for the Job has been admitted (None: no Workload yet)."""
    listed = json.loads(plane.kubectl("get", "workloads.kueue.x-k8s.io", "-n", NAMESPACE, "-o", "json").stdout)
    for workload in listed["items"]:
        owners = workload["metadata"].get("ownerReferences") or []
        if any(o.get("kind") == "Job" and o.get("name") == job_name for o in owners):
            return any(
                c["type"] == "Admitted" and c["status"] == "True" for c in (workload.get("status") or {}).get("conditions", [])
            )
    return None


@pytest.mark.usefixtures("namespace")
def test_a_queued_job_waits_for_quota_after_its_preflight_and_runs_when_it_frees(
    plane,
    operator,
    node_agent,
    kueue,
    s3,
    stored,
    tmp_path,
) -> None:  # type: ignore[no-untyped-def]
    first, second = queued_job("queued-first", s3, stored), queued_job("queued-second", s3, stored)
    for body in (first, second):
        path = tmp_path / f"{body['metadata']['name']}.yaml"
        path.write_text(dump(body))
    plane.kubectl("apply", "-f", str(tmp_path / "queued-first.yaml"))
    wait_for(
        "the first job running",
        lambda: (ftj(plane, "queued-first", NAMESPACE).get("status") or {}).get("phase") == "Running",
        timeout=300,
    )
    assert workload_admitted(plane, "queued-first") is True
    plane.kubectl("apply", "-f", str(tmp_path / "queued-second.yaml"))
    # its preflight runs while the first holds the quota, then it waits: Kueue has not admitted its Workload
    waiting = wait_for(
        "the second job queued after its preflight",
        lambda: (s := ftj(plane, "queued-second", NAMESPACE)).get("status", {}).get("phase") == "Queued" and s,
        timeout=300,
    )
    assert waiting["status"]["preflight"]["passed"] and condition(waiting, "Preflight")["status"] == "True"
    assert condition(waiting, "Queued")["reason"] == "WaitingForQueue"
    if (ftj(plane, "queued-first", NAMESPACE).get("status") or {}).get("phase") == "Running":
        assert workload_admitted(plane, "queued-second") is False  # no quota while the first one runs
        job = json.loads(plane.kubectl("get", "job", "queued-second", "-n", NAMESPACE, "-o", "json").stdout)
        assert job["spec"]["suspend"] is True
    done = wait_for(
        "the first job done",
        lambda: (ftj(plane, "queued-first", NAMESPACE).get("status") or {}).get("phase") in ("Succeeded", "Failed"),
        timeout=420,
    )
    assert done
    final_first = ftj(plane, "queued-first", NAMESPACE)
    assert final_first["status"]["phase"] == "Succeeded", json.dumps(final_first["status"], indent=1)
    wait_for(
        "the second job done",
        lambda: (ftj(plane, "queued-second", NAMESPACE).get("status") or {}).get("phase") in ("Succeeded", "Failed"),
        timeout=420,
    )
    final = ftj(plane, "queued-second", NAMESPACE)
    assert final["status"]["phase"] == "Succeeded", json.dumps(final["status"], indent=1)
    assert condition(final, "Queued")["reason"] == "Admitted" and workload_admitted(plane, "queued-second") is True
