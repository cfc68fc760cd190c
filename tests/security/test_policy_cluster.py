"""The platform policy in a real cluster: the API server enforces it at admission (a ValidatingAdmissionPolicy from
the chart, no webhook) in the words of `kubetune validate --policy`; the operator checks it again before it creates
anything; a job's output cannot be moved by an UPDATE."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune_api.manifests import dump
from kubetune_api.policy import Policy

from ..cluster_helpers import condition, ftj, wait_for
from ..conftest import RELEASE, RELEASE_NAMESPACE, job, kubetune
from .policy_cases import ALLOWED, ATTACKS, PLATFORM, STRICT

pytestmark = pytest.mark.cluster

TENANT = "tenant-x"


@pytest.fixture(scope="module")
def strict_tenant(plane, crd, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """A namespace held to a stricter policy: the chart's admission policy bound a second time, to parameters of
    its own, for this namespace only (how a platform team gives some tenants tighter rules)."""
    plane.kubectl("create", "namespace", TENANT, check=False)
    params = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "strict-policy", "namespace": RELEASE_NAMESPACE},
        "data": STRICT.params(),
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": "strict-tenants"},
        "spec": {
            "policyName": f"{RELEASE}-policy",
            "validationActions": ["Deny"],
            "paramRef": {"name": "strict-policy", "namespace": RELEASE_NAMESPACE, "parameterNotFoundAction": "Deny"},
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": TENANT}}},
        },
    }
    plane.kubectl("apply", "-f", "-", input=dump(params) + "---\n" + dump(binding))
    path = tmp_path_factory.mktemp("policy") / "strict.yaml"
    path.write_text(yaml.safe_dump(STRICT.model_dump()))
    return path


def offline_lines(manifest: Path, *policies: Path) -> set[str]:
    lines: set[str] = set()
    for policy in policies:
        result = kubetune("validate", "--policy", str(policy), "-n", TENANT, str(manifest))
        lines |= {re.sub(r"^.*?\(\w[-\w]*\): ", "", line) for line in result.stdout.splitlines() if "platform policy" in line}
    return lines


@pytest.mark.parametrize(("changes", "field", "words"), ATTACKS, ids=[a[1] + ":" + str(i) for i, a in enumerate(ATTACKS)])
def test_the_api_server_refuses_in_the_offline_words(  # type: ignore[no-untyped-def]
    plane, strict_tenant: Path, tmp_path: Path, changes: dict[str, Any], field: str, words: str
) -> None:
    body = job(**{**ALLOWED, **changes})
    body["metadata"].update(name="attack", namespace=TENANT)
    body["spec"]["dataset"]["train"] = body["spec"]["dataset"]["train"].replace("team-a", TENANT)
    body["spec"]["output"]["uri"] = body["spec"]["output"]["uri"].replace("team-a", TENANT)
    manifest = tmp_path / "attack.yaml"
    manifest.write_text(dump(body))
    refused = plane.kubectl("apply", "-f", str(manifest), check=False)
    assert refused.returncode != 0, "admitted: " + json.dumps(changes)
    denial = refused.stderr.split("denied request: ", 1)[-1].strip()
    expected = offline_lines(manifest, strict_tenant, PLATFORM)
    assert denial in expected, (denial, expected)
    assert plane.kubectl("get", "ftj", "attack", "-n", TENANT, check=False).returncode != 0  # nothing stored


def test_an_allowed_job_is_admitted(plane, strict_tenant: Path) -> None:  # type: ignore[no-untyped-def]
    body = job(**{**ALLOWED, "spec.runPolicy": {"suspend": True}})
    body["metadata"].update(name="allowed", namespace=TENANT)
    body["spec"]["dataset"]["train"] = f"s3://datasets/{TENANT}/train.jsonl"
    body["spec"]["output"]["uri"] = f"s3://adapters/{TENANT}/run-1/"
    plane.kubectl("apply", "-f", "-", input=dump(body))


def test_the_output_cannot_be_moved_onto_another_prefix(plane, strict_tenant: Path) -> None:  # type: ignore[no-untyped-def]
    test_an_allowed_job_is_admitted(plane, strict_tenant)
    moved = plane.kubectl(
        "patch",
        "ftj/allowed",
        "-n",
        TENANT,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"output": {"uri": f"s3://adapters/{TENANT}/run-2/"}}}),
        check=False,
    )
    assert moved.returncode != 0 and "spec.output.uri is immutable" in moved.stderr, moved.stderr


def test_the_operator_refuses_a_job_stored_before_the_policy(plane, operator) -> None:  # type: ignore[no-untyped-def]
    """Defence in depth: with the admission policy unbound (say, before the platform team installed it), a job the
    policy forbids gets stored; the operator fails it with the same words and creates nothing for it."""
    saved = json.loads(plane.kubectl("get", "validatingadmissionpolicybinding", f"{RELEASE}-policy", "-o", "json").stdout)
    plane.kubectl("delete", "validatingadmissionpolicybinding", f"{RELEASE}-policy")
    try:
        body = job(
            **{
                "metadata.name": "sneaky",
                "spec.output.uri": "s3://out/sneaky/",
                "spec.workers.priorityClassName": "system-node-critical",
            }
        )
        applied = wait_for(
            "the job to be stored once the binding is gone",
            lambda: plane.kubectl("apply", "-n", "research", "-f", "-", input=dump(body), check=False).returncode == 0,
            timeout=180,  # the API server drops the binding from its cache within a minute; longer on a loaded machine
        )
        assert applied
    finally:
        for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
            saved["metadata"].pop(key, None)
        saved.pop("status", None)
        plane.kubectl("apply", "-f", "-", input=json.dumps(saved))
    failed = wait_for(
        "PolicyDenied",
        lambda: (
            condition(ftj(plane, "sneaky", "research"), "Failed").get("reason") == "PolicyDenied"
            and ftj(plane, "sneaky", "research")
        ),
        timeout=180,
    )
    message = condition(failed, "Failed")["message"]
    assert message == (
        "spec.workers.priorityClassName: this priority class is not allowed by the platform policy; allowed: batch-low, batch-high "
        '(got "system-node-critical")'
    )
    for kind in ("job", "configmap", "service"):
        assert plane.kubectl("get", kind, "-n", "research", "-l", "kubetune.dev/job-name=sneaky", "-o", "name").stdout == ""


def test_a_queue_can_be_required_by_the_api_server(plane, crd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """requireQueue: a job without a Kueue queue label is refused at creation, in the offline words; one with a queue
    is admitted (the label is fixed on the Job when the operator makes it, and checked again until then)."""
    namespace = "tenant-queued"
    plane.kubectl("create", "namespace", namespace, check=False)
    policy = Policy(requireQueue=True, endpoints=["*"], credentialSecrets=["*"])
    params = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "queued-policy", "namespace": RELEASE_NAMESPACE}}
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": "queued-tenants"},
        "spec": {
            "policyName": f"{RELEASE}-policy",
            "validationActions": ["Deny"],
            "paramRef": {"name": "queued-policy", "namespace": RELEASE_NAMESPACE, "parameterNotFoundAction": "Deny"},
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}},
        },
    }
    plane.kubectl("apply", "-f", "-", input=dump({**params, "data": policy.params()}) + "---\n" + dump(binding))
    policy_file = tmp_path / "queued.yaml"
    policy_file.write_text(yaml.safe_dump(policy.model_dump()))
    body = job(**{"metadata.name": "unqueued", "metadata.namespace": namespace, "spec.runPolicy": {"suspend": True}})
    manifest = tmp_path / "unqueued.yaml"
    manifest.write_text(dump(body))
    offline = kubetune("validate", "--policy", str(policy_file), str(manifest))
    (line,) = [x for x in offline.stdout.splitlines() if "requires a Kueue queue" in x]
    # A dry-run create (admission runs, nothing is stored): an apply that lands before the binding is live would
    # store the job, and every later apply would be an UPDATE, which the rule (CREATE only) rightly lets through
    wait_for(
        "the binding to take effect",
        lambda: plane.kubectl("create", "--dry-run=server", "-f", str(manifest), check=False).returncode != 0,
    )
    refused = plane.kubectl("create", "-f", str(manifest), check=False)
    assert refused.returncode != 0, refused.stdout
    denial = refused.stderr.split("denied request: ", 1)[-1].strip()
    assert denial == re.sub(r"^.*?\(\w[-\w]*\): ", "", line), (denial, line)
    body["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-queue"}
    assert plane.kubectl("apply", "-f", "-", input=dump(body), check=False).returncode == 0
    plane.kubectl("delete", "ftj", "unqueued", "-n", namespace, "--wait=false", check=False)
    plane.kubectl("delete", "validatingadmissionpolicybinding", "queued-tenants", check=False)
