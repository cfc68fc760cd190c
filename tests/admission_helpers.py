"""The admission webhook under a real API server: the operator serving it for one namespace, and jobs to send it."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kubetune_api.manifests import dump

from .cluster.plane import WEBHOOK_CLIENT, free_port
from .conftest import ROOT, job

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
