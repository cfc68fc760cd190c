"""A tenant with rights in one namespace must not be able to make the operator act on objects that are not its
job's children, nor leave a job retrying for ever. The real API server, the operator under the chart's RBAC."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubetune_api.manifests import dump

from ..cluster_helpers import condition, ftj, wait_for
from ..conftest import job

pytestmark = pytest.mark.cluster

NS = "team-a"


def failed_with(plane: Any, name: str, reason: str) -> dict[str, Any]:
    return wait_for(  # type: ignore[no-any-return]
        f"{name} Failed/{reason}",
        lambda: condition(ftj(plane, name, NS), "Failed").get("reason") == reason and ftj(plane, name, NS),
    )


THEIRS = {  # another application's objects, named as a new job's children would be (no kubetune label: not watched)
    "Service": ("web", "service", {"spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}, ("spec", "selector")),
    "ConfigMap": ("settings-config", "configmap", {"data": {"app.conf": "theirs"}}, ("data",)),
    "NetworkPolicy": (
        "fence",
        "networkpolicy",
        {"spec": {"podSelector": {"matchLabels": {"app": "fence"}}}},
        ("spec", "podSelector"),
    ),
}


def _at(obj: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


@pytest.mark.parametrize("kind", THEIRS)
def test_a_job_named_like_another_object_leaves_it_alone(plane, operator, kind: str) -> None:  # type: ignore[no-untyped-def]
    """Each child kind: the create finds an object the watch does not show (not ours), the operator reads it, finds
    another owner, fails the job with NameConflict and changes nothing."""
    name, resource, body, field = THEIRS[kind]
    api = "networking.k8s.io/v1" if kind == "NetworkPolicy" else "v1"
    theirs = {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": NS}, **body}
    plane.kubectl("apply", "-f", "-", input=dump(theirs))
    job_name = name.removesuffix("-config")
    plane.kubectl(
        "apply", "-n", NS, "-f", "-", input=dump(job(**{"metadata.name": job_name, "spec.output.uri": f"s3://out/{job_name}/"}))
    )
    failed = failed_with(plane, job_name, "NameConflict")
    assert failed["status"]["phase"] == "Failed"
    assert f"{kind} team-a/{name} exists and is not owned by this FineTuneJob" in condition(failed, "Failed")["message"]
    after = json.loads(plane.kubectl("get", resource, name, "-n", NS, "-o", "json").stdout)
    assert _at(after, field) == _at(theirs, field) and not after["metadata"].get("ownerReferences")  # not rewritten
    assert plane.kubectl("get", "job", job_name, "-n", NS, check=False).returncode != 0  # no Job made under its name


def test_a_leftover_complete_job_does_not_make_a_new_job_succeed(plane, operator, node_agent) -> None:  # type: ignore[no-untyped-def]
    leftover = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "old-run", "namespace": NS, "labels": {"kubetune.dev/job-name": "old-run"}},
        "spec": {
            "template": {
                "metadata": {"labels": {"kubetune.dev/job-name": "old-run"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x", "command": ["true"]}]},
            },
        },
    }
    plane.kubectl("apply", "-f", "-", input=dump(leftover))
    wait_for(
        "the leftover Job to complete",
        lambda: (
            "Complete" in plane.kubectl("get", "job", "old-run", "-n", NS, "-o", "jsonpath={.status.conditions[*].type}").stdout
        ),
        timeout=90,
    )
    plane.kubectl(
        "apply", "-n", NS, "-f", "-", input=dump(job(**{"metadata.name": "old-run", "spec.output.uri": "s3://out/old/"}))
    )
    failed = failed_with(plane, "old-run", "NameConflict")
    assert "adapterUri" not in failed["status"] and condition(failed, "Succeeded") == {}
    assert plane.kubectl("get", "job", "old-run", "-n", NS).returncode == 0  # left untouched, not deleted


def test_a_device_in_resources_is_refused_at_admission(plane, operator) -> None:  # type: ignore[no-untyped-def]
    # an extended resource in workers.resources (here without its limit, which the Job's validation used to refuse only
    # after admission) is refused by the CRD itself: devices come only from gpusPerWorker, counted and billed
    body = job(
        **{
            "metadata.name": "no-limit",
            "spec.output.uri": "s3://out/spaced/",
            "spec.workers.resources": {"requests": {"example.com/fpga": "1"}},
        }
    )
    result = plane.kubectl("apply", "-n", NS, "-f", "-", input=dump(body), check=False)
    assert result.returncode != 0 and "resources may name only cpu, memory and ephemeral-storage" in result.stderr


def test_only_the_jobs_own_pods_reach_its_rendezvous(plane, operator) -> None:  # type: ignore[no-untyped-def]
    """torch.distributed's rendezvous and collectives are unauthenticated: each job gets a NetworkPolicy that admits
    its own pods and nothing else (no namespaceSelector: no other namespace's pod either)."""
    name = "fenced"
    plane.kubectl(
        "apply",
        "-n",
        NS,
        "-f",
        "-",
        input=dump(job(**{"metadata.name": name, "spec.output.uri": "s3://out/fenced/", "spec.workers": {"gpusPerWorker": 16}})),
    )
    policy = wait_for(
        "the NetworkPolicy",
        lambda: (
            (got := plane.kubectl("get", "networkpolicy", name, "-n", NS, "-o", "json", check=False)).returncode == 0
            and json.loads(got.stdout)
        ),
    )
    jobs = json.loads(plane.kubectl("get", "job", name, "-n", NS, "-o", "json").stdout)
    pod_labels = jobs["spec"]["template"]["metadata"]["labels"]
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    assert all(pod_labels.get(k) == v for k, v in spec["podSelector"]["matchLabels"].items())  # it selects the workers
    (rule,) = spec["ingress"]
    assert rule["from"] == [{"podSelector": spec["podSelector"]}]  # from the same job's pods, this namespace only
    owner = policy["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "FineTuneJob" and owner["uid"] == ftj(plane, name, NS)["metadata"]["uid"]
    plane.kubectl("patch", "networkpolicy", name, "-n", NS, "--type=merge", "-p", json.dumps({"spec": {"ingress": [{}]}}))
    wait_for(  # opened by hand: the next sync (the unschedulable job is polled) closes it again
        "the NetworkPolicy put back",
        lambda: (
            json.loads(plane.kubectl("get", "networkpolicy", name, "-n", NS, "-o", "json").stdout)["spec"]["ingress"] == [rule]
        ),
    )


def test_removing_the_queue_label_does_not_skip_the_queue(plane, operator) -> None:  # type: ignore[no-untyped-def]
    """The queue is fixed when the Job is made: a tenant who drops the Kueue label from a waiting job does not get
    its workers started past the quota."""
    name = "queue-jumper"
    body = job(
        **{
            "metadata.name": name,
            "metadata.labels": {"kueue.x-k8s.io/queue-name": "team-gpus"},
            "spec.output.uri": "s3://out/queue-jumper/",
            "spec.workers": {"gpusPerWorker": 16},
        }
    )
    plane.kubectl("apply", "-n", NS, "-f", "-", input=dump(body))
    wait_for("Queued", lambda: (ftj(plane, name, NS).get("status") or {}).get("phase") == "Queued")
    plane.kubectl("label", "ftj", name, "-n", NS, "kueue.x-k8s.io/queue-name-")
    import time

    time.sleep(6)  # several syncs (every 2 s in the tests)
    suspended = plane.kubectl("get", "job", name, "-n", NS, "-o", "jsonpath={.spec.suspend}").stdout
    assert suspended == "true", "the Job was started without the queue's admission"
    assert (ftj(plane, name, NS).get("status") or {}).get("phase") == "Queued"


def test_a_service_pointed_elsewhere_is_pointed_back(plane, operator) -> None:  # type: ignore[no-untyped-def]
    name = "repointed"
    body = job(**{"metadata.name": name, "spec.output.uri": "s3://out/repointed/", "spec.workers": {"gpusPerWorker": 16}})
    plane.kubectl("apply", "-n", NS, "-f", "-", input=dump(body))
    wait_for("the Service", lambda: plane.kubectl("get", "service", name, "-n", NS, check=False).returncode == 0)
    original = json.loads(plane.kubectl("get", "service", name, "-n", NS, "-o", "json").stdout)["spec"]["selector"]
    plane.kubectl("patch", "service", name, "-n", NS, "--type=merge", "-p", json.dumps({"spec": {"selector": {"app": "other"}}}))
    wait_for(  # the unschedulable job is polled: the next sync restores the selector exactly, extra keys removed
        "the Service's selector put back",
        lambda: json.loads(plane.kubectl("get", "service", name, "-n", NS, "-o", "json").stdout)["spec"]["selector"] == original,
    )


def test_a_failed_job_goes_after_its_ttl(plane, operator) -> None:  # type: ignore[no-untyped-def]
    plane.kubectl("create", "configmap", "taken-config", "-n", NS, check=False)  # the name its ConfigMap needs
    body = job(
        **{"metadata.name": "taken", "spec.output.uri": "s3://out/taken/", "spec.runPolicy": {"ttlSecondsAfterFinished": 3}}
    )
    plane.kubectl("apply", "-n", NS, "-f", "-", input=dump(body))
    failed_with(plane, "taken", "NameConflict")
    wait_for("the failed job to be deleted after its TTL", lambda: not ftj(plane, "taken", NS), timeout=90)
    assert plane.kubectl("get", "configmap", "taken-config", "-n", NS).returncode == 0  # the other object stays


def test_a_held_job_cannot_change_what_its_pods_read(plane, operator) -> None:  # type: ignore[no-untyped-def]
    """A job held suspended (its Job exists, no startTime) used to take a new model, data or trustRemoteCode and then
    resume with them, past the preflight and the policy: the API server now refuses the change."""
    name = "held"
    body = job(**{"metadata.name": name, "spec.output.uri": "s3://out/held/", "spec.runPolicy": {"suspend": True}})
    plane.kubectl("apply", "-n", NS, "-f", "-", input=dump(body))
    wait_for("Suspended", lambda: ftj(plane, name, NS).get("status", {}).get("phase") == "Suspended")
    changed = plane.kubectl(
        "patch", "-n", NS, f"ftj/{name}", "--type=merge", "-p", '{"spec": {"model": {"uri": "s3://models/other/"}}}', check=False
    )
    assert changed.returncode != 0 and "immutable once the job's workers may exist" in changed.stderr
    resumed = plane.kubectl(
        "patch", "-n", NS, f"ftj/{name}", "--type=merge", "-p", '{"spec": {"runPolicy": {"suspend": false}}}', check=False
    )
    assert resumed.returncode == 0, resumed.stderr
    plane.kubectl("delete", "-n", NS, f"ftj/{name}")
