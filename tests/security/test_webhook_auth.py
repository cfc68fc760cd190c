"""Finding 7 of the second tenancy review: the admission webhook answers the API server only. Against the real API
server (which shows its webhook client certificate, tests/cluster/plane.py) and the operator's real TLS server: a
caller without a certificate does not get past the handshake, and one with another certificate of the same CA (an
admin's) is refused before anything about any job is said."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from kubetune_operator import webhook_auth
from kubetune_operator.settings import Settings

from ..admission_helpers import NAMESPACE, body, webhook_port
from ..admission_helpers import webhook as webhook


def review(obj: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": str(uuid.uuid4()),
                "kind": {"group": "kubetune.dev", "version": "v1alpha1", "kind": "FineTuneJob"},
                "resource": {"group": "kubetune.dev", "version": "v1alpha1", "resource": "finetunejobs"},
                "operation": "CREATE",
                "namespace": obj["metadata"]["namespace"],
                "name": obj["metadata"]["name"],
                "userInfo": {"username": "someone"},
                "object": obj,
                "dryRun": False,
            },
        }
    ).encode()


def call(plane: Any, pair: Any | None, obj: dict[str, Any]) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=str(plane.ca))
    if pair is not None:
        context.load_cert_chain(str(pair.cert), str(pair.key))
    request = urllib.request.Request(
        f"https://127.0.0.1:{webhook_port[0]}/validate", data=review(obj), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        return dict(json.loads(response.read())["response"])


@pytest.mark.cluster
def test_the_webhook_answers_only_the_api_servers_certificate(webhook, plane) -> None:  # type: ignore[no-untyped-def]
    mine = body("auth-probe", "s3://adapters/auth-probe/")
    deadline = time.monotonic() + 90
    while True:  # the API server's own certificate is answered (the server may still be starting)
        try:
            answer = call(plane, plane.webhook_client, mine)
            break
        except (urllib.error.URLError, ConnectionError, ssl.SSLError):
            assert time.monotonic() < deadline, webhook.read_text()[-3000:]
            time.sleep(1)
    assert answer["allowed"] is True, answer
    # no certificate: the TLS handshake fails, nothing reaches the handler
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        call(plane, None, mine)
    # a certificate of the same CA that is not the API server's: refused, and the answer names no job or namespace
    other = plane.authority.issue("not-the-apiserver", "kubetune-admin", ("system:masters",))
    for obj in (mine, body("overlap-probe", "s3://adapters/shared/run-9/")):
        refused = call(plane, other, obj)
        assert refused["allowed"] is False and refused["status"]["message"] == webhook_auth.NOT_THE_API_SERVER
        assert NAMESPACE + "/" not in json.dumps(refused)


def test_the_operator_refuses_to_serve_the_webhook_without_client_authentication() -> None:
    with pytest.raises(SystemExit, match="KUBETUNE_WEBHOOK_CLIENT_CA is required"):
        webhook_auth.server(Settings(webhook_port=9443))
    assert webhook_auth.server(Settings(webhook_port=9443, webhook_any_client=True)).verify_mode is None
    served = webhook_auth.server(Settings(webhook_port=9443, webhook_client_ca="/ca.crt"))
    assert served.verify_mode == ssl.CERT_REQUIRED and served.verify_cafile == "/ca.crt"


def test_only_the_configured_common_names_pass() -> None:
    peer = {"subject": ((("organizationName", "system:masters"),), (("commonName", "kube-apiserver-webhook-client"),))}
    assert webhook_auth.allowed(peer, ("kube-apiserver-webhook-client",))
    assert not webhook_auth.allowed({"subject": ((("commonName", "kubetune-admin"),),)}, ("kube-apiserver-webhook-client",))
    assert not webhook_auth.allowed(None, ("kube-apiserver-webhook-client",))
    assert webhook_auth.allowed(peer, ())  # no names: the CA alone decides (the TLS layer has checked it)
