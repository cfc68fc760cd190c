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
  preemption: {{withinClusterQueue: LowerPriority}}   # a higher-priority job takes the quota back
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
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {{name: batch-low}}
value: 100
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {{name: batch-high}}
value: 1000
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


def queued_job(name: str, s3: Any, stored: dict[str, str], steps: int = 600, preflight: bool = False) -> dict[str, Any]:
    """A job long enough (about 25 ms a step here, unloaded) for a test to preempt it while it trains. The preflight
    (a pod of its own before the workers) only where the test is about it: each costs a trainer start."""
    body = manifest(name, s3, stored, {"maxSteps": steps, "microBatchSize": 4, "evalEverySteps": 0, "checkpointEverySteps": 0})
    body["spec"]["runPolicy"] = {"preflight": preflight}
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
    # the second only has to succeed once admitted: a few steps (the first's 600 keep it holding the quota meanwhile)
    first, second = queued_job("queued-first", s3, stored), queued_job("queued-second", s3, stored, steps=8, preflight=True)
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


def _status(plane, name: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return ftj(plane, name, NAMESPACE).get("status") or {}


def _training(plane, name: str, past_step: int) -> int:  # type: ignore[no-untyped-def]
    """Wait until the job trains past a step; the step its status says it reached."""
    return int(
        wait_for(
            f"{name} training past step {past_step}",
            lambda: (
                (s := _status(plane, name)).get("phase") == "Running"
                and (s.get("progress") or {}).get("step", 0) >= past_step
                and s["progress"]["step"]
            ),
            timeout=300,
        )
    )


def _finished(plane, name: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    wait_for(f"{name} done", lambda: _status(plane, name).get("phase") in ("Succeeded", "Failed"), timeout=420)
    final = ftj(plane, name, NAMESPACE)
    assert final["status"]["phase"] == "Succeeded", json.dumps(final["status"], indent=1)
    return final


def _uninterrupted_eval_loss(plane) -> float:  # type: ignore[no-untyped-def]
    """queued-first's held-out loss: the same spec as the preempted jobs here, trained in one go."""
    return float(_status(plane, "queued-first")["metrics"]["evalLoss"])


@pytest.mark.usefixtures("namespace", "kueue")
def test_an_evicted_worker_checkpoints_its_step_and_resumes_without_a_restart(
    plane, operator, node_agent, s3, stored, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """A node drain's eviction (the Eviction API): the worker checkpoints the step it reached within its grace period,
    its pod goes away, the Job controller starts it again without counting it, and it resumes from that step."""
    body = queued_job("evicted", s3, stored)
    del body["metadata"]["labels"]  # not queued: the Job controller alone brings the worker back
    path = tmp_path / "evicted.yaml"
    path.write_text(dump(body))
    plane.kubectl("apply", "-f", str(path))
    reached = _training(plane, "evicted", 5)
    pods = json.loads(plane.kubectl("get", "pods", "-n", NAMESPACE, "-l", "kubetune.dev/job-name=evicted", "-o", "json").stdout)
    (worker,) = [p for p in pods["items"] if p["status"].get("phase") == "Running"]
    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": worker["metadata"]["name"], "namespace": NAMESPACE},
    }
    (tmp_path / "eviction.json").write_text(json.dumps(eviction))
    plane.kubectl(
        "create",
        "--raw",
        f"/api/v1/namespaces/{NAMESPACE}/pods/{worker['metadata']['name']}/eviction",
        "-f",
        str(tmp_path / "eviction.json"),
    )
    final = _finished(plane, "evicted")
    status = final["status"]
    assert status["restarts"] == 0 and status["preemptions"] == 1, json.dumps(status, indent=1)
    last = status["lastPreemption"]
    assert last["reason"] == "EvictionByEvictionAPI" and last["step"] >= reached  # nothing done before it was lost
    assert status["lastCheckpoint"]["step"] >= last["step"]
    assert status["lastCheckpoint"]["uri"].endswith(f"/checkpoints/step-{status['lastCheckpoint']['step']:06d}/")
    usage = status["usage"]
    assert usage["preemptedPodSeconds"] > 0 and usage["lostShare"] == 0 and usage["restartedPodSeconds"] == 0
    job = json.loads(plane.kubectl("get", "job", "evicted", "-n", NAMESPACE, "-o", "json").stdout)
    assert job["metadata"]["annotations"]["kubetune.dev/last-checkpoint-time"] == status["lastCheckpoint"]["time"]
    assert job["metadata"]["annotations"]["volcano.sh/last-checkpoint-time"] == status["lastCheckpoint"]["time"]
    assert abs(status["metrics"]["evalLoss"] - _uninterrupted_eval_loss(plane)) < 1e-4


@pytest.mark.usefixtures("namespace")
def test_a_workload_the_queue_evicts_waits_queued_and_resumes_from_its_checkpoint(
    plane, operator, node_agent, kueue, s3, stored, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Kueue takes the quota back (here: the Workload deactivated, as an administrator or a preemption does): it
    suspends the Job, each worker checkpoints on SIGTERM, the job waits Queued saying it was preempted, not failed,
    and when readmitted resumes from that checkpoint."""
    body = queued_job("queue-evicted", s3, stored)
    path = tmp_path / "queue-evicted.yaml"
    path.write_text(dump(body))
    plane.kubectl("apply", "-f", str(path))
    reached = _training(plane, "queue-evicted", 5)
    listed = json.loads(plane.kubectl("get", "workloads.kueue.x-k8s.io", "-n", NAMESPACE, "-o", "json").stdout)
    (workload,) = [
        w["metadata"]["name"]
        for w in listed["items"]
        if any(o.get("kind") == "Job" and o.get("name") == "queue-evicted" for o in w["metadata"].get("ownerReferences") or [])
    ]

    def active(on: bool) -> None:
        patch = json.dumps({"spec": {"active": on}})
        plane.kubectl("patch", "workloads.kueue.x-k8s.io", workload, "-n", NAMESPACE, "--type=merge", "-p", patch)

    active(False)
    waiting = wait_for(
        "the job queued after the queue took its workers back",
        lambda: (s := ftj(plane, "queue-evicted", NAMESPACE)).get("status", {}).get("phase") == "Queued" and s,
        timeout=180,
    )
    said = condition(waiting, "Queued")
    assert said["reason"] == "Preempted" and "team" in said["message"], said
    assert waiting["status"]["preemptions"] == 1 and waiting["status"]["restarts"] == 0
    assert condition(waiting, "Running")["reason"] == "Preempted"
    active(True)
    final = _finished(plane, "queue-evicted")
    status = final["status"]
    assert status["restarts"] == 0 and status["preemptions"] == 1, json.dumps(status, indent=1)
    assert status["lastCheckpoint"]["step"] >= reached
    assert condition(final, "Queued")["reason"] == "Admitted"
    usage = status["usage"]
    assert usage["preemptedPodSeconds"] > 0 and usage["lostShare"] == 0
    assert usage["podSeconds"] >= usage["preemptedPodSeconds"]
    assert abs(status["metrics"]["evalLoss"] - _uninterrupted_eval_loss(plane)) < 1e-4


@pytest.mark.usefixtures("namespace")
def test_a_higher_priority_job_preempts_a_training_one_which_checkpoints_waits_and_resumes(
    plane, operator, node_agent, kueue, s3, stored, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Kueue's preemption within the queue by priority (the workers' PriorityClass is the Workload's priority): the
    low-priority job checkpoints the step it reached on SIGTERM, waits Queued saying it was preempted, is admitted
    again when the high-priority one has finished, and resumes from that step: at most one step lost, no restart,
    nothing counted against its backoffLimit, and the same held-out loss as the job trained in one go."""
    low, high = queued_job("low", s3, stored), queued_job("high", s3, stored)
    low["spec"]["workers"]["priorityClassName"] = "batch-low"
    high["spec"]["workers"]["priorityClassName"] = "batch-high"
    high["spec"]["training"]["maxSteps"] = 8
    for body in (low, high):
        (tmp_path / f"{body['metadata']['name']}.yaml").write_text(dump(body))
    plane.kubectl("apply", "-f", str(tmp_path / "low.yaml"))
    reached = _training(plane, "low", 5)
    plane.kubectl("apply", "-f", str(tmp_path / "high.yaml"))
    waiting = wait_for(
        "the low-priority job preempted and queued",
        lambda: (s := ftj(plane, "low", NAMESPACE)).get("status", {}).get("phase") == "Queued" and s,
        timeout=300,
    )
    said = condition(waiting, "Queued")
    assert said["reason"] == "Preempted", said
    assert waiting["status"]["preemptions"] == 1 and waiting["status"]["restarts"] == 0
    _finished(plane, "high")
    final = _finished(plane, "low")
    status = final["status"]
    assert status["restarts"] == 0 and status["preemptions"] == 1, json.dumps(status, indent=1)
    last, saved = status["lastPreemption"], status["lastCheckpoint"]
    # the step the workers had reached is the step they checkpointed: nothing done before the signal was lost
    assert last["step"] is not None and last["step"] >= reached and saved["step"] >= last["step"], status
    job = json.loads(plane.kubectl("get", "job", "low", "-n", NAMESPACE, "-o", "json").stdout)
    assert not job["status"].get("failed"), job["status"]  # the Job's backoff count did not move
    usage = status["usage"]
    assert usage["preemptedPodSeconds"] > 0 and usage["lostShare"] == 0 and usage["restartedPodSeconds"] == 0
    assert abs(status["metrics"]["evalLoss"] - _uninterrupted_eval_loss(plane)) < 1e-4
