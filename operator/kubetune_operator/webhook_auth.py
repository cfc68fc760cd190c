"""Who may call the validating webhook: the API server only.

An AdmissionReview names any namespace its sender likes, so a webhook that answers anyone lets any pod learn what
another namespace's jobs are called and where they write (the overlap rule names them), or flood the one process
every tenant's creates wait on. The API server authenticates to webhooks with a client certificate when the
platform configures it (an AdmissionConfiguration whose kubeconfig names one); the operator's TLS server then
requires a certificate signed by that CA, and the handler a common name from `webhook.clientAuth.commonNames`, so
that another certificate of the same CA (a kubelet's, a user's) is refused too."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import kopf

from .settings import Settings

NOT_THE_API_SERVER = "this webhook answers only the API server's client certificate"


def server(settings: Settings) -> kopf.WebhookServer:
    """The webhook's HTTPS server; client certificates required unless the platform explicitly serves anyone."""
    if not settings.webhook_client_ca and not settings.webhook_any_client:
        raise SystemExit(
            "KUBETUNE_WEBHOOK_CLIENT_CA is required with KUBETUNE_WEBHOOK_PORT (the chart's webhook.clientAuth.caBundle): "
            "the CA of the API server's webhook client certificate; webhook.clientAuth.anyClient=true serves anyone"
        )
    return kopf.WebhookServer(
        addr="0.0.0.0",
        port=settings.webhook_port,
        certfile=settings.webhook_cert,
        pkeyfile=settings.webhook_key,
        verify_cafile=settings.webhook_client_ca or None,
        verify_mode=ssl.CERT_REQUIRED if settings.webhook_client_ca else None,
    )


def common_name(peer: Mapping[str, Any] | None) -> str:
    """The subject's common name of a peer certificate as `ssl.SSLSocket.getpeercert()` gives it ('' if none)."""
    for rdn in (peer or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


def allowed(peer: Mapping[str, Any] | None, names: tuple[str, ...]) -> bool:
    """The TLS layer has verified the chain; with names configured the common name must be one of them."""
    return not names or common_name(peer) in names
