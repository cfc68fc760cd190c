"""The optional validating webhook against the real API server: the operator serves it over TLS, the API server
calls it on every FineTuneJob create, and a job whose output overlaps another's is refused with the words
`kubetune validate` prints for the same two manifests."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kubetune_api.manifests import dump

from .cluster.plane import WEBHOOK_CLIENT, free_port
from .conftest import ROOT, job, kubetune
from .test_operator_cluster import ftj, wait_for

pytestmark = pytest.mark.cluster
NAMESPACE = "admission"
LABEL = "kubetune.dev/admission-test"
webhook_port = [0]  # the running webhook's port, for tests that call it themselves


@pytest.fixture(scope="module")
def webhook(plane, crd, operator_kubeconfig, tmp_path_factory):  # type: ignore[no-untyped-def]
    """`kubetune operator` with KUBETUNE_WEBHOOK_PORT, and a ValidatingWebhookConfiguration for one namespace."""
    plane.kubectl("create", "namespace", NAMESPACE, check=False)
    plane.kubectl("label", "namespace", NAMESPACE, f"{LABEL}=on", "--overwrite")
    pair = plane.authority.issue("webhook", "127.0.0.1", hosts=("127.0.0.1",), server=True)
    port = free_port()
    log = tmp_path_factory.mktemp("webhook") / "operator.log"
    env = {
        **os.environ,
        "KUBECONFIG": str(operator_kubeconfig),
        "KUBETUNE_NAMESPACES": NAMESPACE,
        "KUBETUNE_METRICS_PORT": "0",
        "KUBETUNE_HEALTH_PORT": str(free_port()),
        "KUBETUNE_WEBHOOK_PORT": str(port),
        "KUBETUNE_WEBHOOK_CERT": str(pair.cert),
        "KUBETUNE_WEBHOOK_KEY": str(pair.key),
        # only the API server's webhook client certificate (tests/cluster/plane.py configures it) is answered
        "KUBETUNE_WEBHOOK_CLIENT_CA": str(plane.ca),
        "KUBETUNE_WEBHOOK_CLIENT_NAMES": WEBHOOK_CLIENT,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "kubetune_cli", "operator"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("w")
    )
    configuration = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "kubetune-admission-test"},
        "webhooks": [
            {
                "name": "validate.finetunejobs.kubetune.dev",
                "clientConfig": {
                    "url": f"https://127.0.0.1:{port}/validate",
                    "caBundle": base64.b64encode(Path(plane.ca).read_bytes()).decode(),
                },
                "rules": [
                    {
                        "apiGroups": ["kubetune.dev"],
                        "apiVersions": ["v1alpha1"],
                        "operations": ["CREATE"],
                        "resources": ["finetunejobs"],
                    }
                ],
                "namespaceSelector": {"matchLabels": {LABEL: "on"}},
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "failurePolicy": "Fail",
                "timeoutSeconds": 10,
            }
        ],
    }
    plane.kubectl("apply", "-f", "-", input=dump(configuration))
    webhook_port[0] = port
    yield log
    plane.kubectl("delete", "validatingwebhookconfiguration", "kubetune-admission-test", check=False)
    process.kill()
    process.wait()


def body(name: str, output: str) -> dict[str, Any]:
    return job(
        **{
            "metadata.name": name,
            "metadata.namespace": NAMESPACE,
            "spec.output": {"uri": output},
            "spec.runPolicy": {"suspend": True},
        }
    )


def test_overlapping_output_is_refused_at_admission_in_the_offline_words(webhook, plane, tmp_path) -> None:  # type: ignore[no-untyped-def]
    first, second = body("first", "s3://adapters/shared/"), body("second", "s3://adapters/shared/run-2/")
    deadline = time.monotonic() + 90
    while (applied := plane.kubectl("apply", "-f", "-", input=dump(first), check=False)).returncode != 0:
        assert "failed calling webhook" in applied.stderr, applied.stderr  # refused only while the server starts
        assert time.monotonic() < deadline, webhook.read_text()[-3000:]
        time.sleep(1)
    wait_for("the first job", lambda: (ftj(plane, "first", NAMESPACE).get("status") or {}).get("phase") == "Suspended")
    refused = plane.kubectl("apply", "-f", "-", input=dump(second), check=False)
    assert refused.returncode != 0 and "denied the request" in refused.stderr, refused.stderr
    words = "spec.output.uri: overlaps the output of FineTuneJob admission/first (s3://adapters/shared/); each job needs an output prefix of its own"
    assert words in refused.stderr
    assert plane.kubectl("get", "ftj/second", "-n", NAMESPACE, check=False).returncode != 0  # nothing was stored
    both = tmp_path / "both.yaml"
    both.write_text(dump(first) + "---\n" + dump(second))
    offline = kubetune("validate", str(both))
    assert offline.returncode == 1 and words in offline.stdout
    # a job with a prefix of its own passes the webhook
    assert plane.kubectl("apply", "-f", "-", input=dump(body("third", "s3://adapters/other/"))).returncode == 0


def test_another_namespace_learns_nothing_from_the_overlap_rule(webhook, plane) -> None:  # type: ignore[no-untyped-def]
    """The rule is per namespace: a tenant elsewhere neither sees the other job's name or URI in a denial nor can it
    probe which prefixes are in use (the platform policy's writePrefixes keep tenants apart)."""
    plane.kubectl("create", "namespace", "admission-other", check=False)
    probe = body("probe", "s3://adapters/shared/")
    probe["metadata"]["namespace"] = "admission-other"
    applied = plane.kubectl("apply", "-f", "-", input=dump(probe), check=False)
    assert applied.returncode == 0, applied.stderr
    assert "admission/first" not in applied.stderr + applied.stdout
