"""The optional validating webhook (on when KUBETUNE_WEBHOOK_PORT is set; the chart's `webhook.enabled`).

Every rule of a single FineTuneJob is already in the CRD's schema and CEL, which the API server checks before any
webhook; the webhook runs the same validation as `kubetune validate` once more, and adds the one rule that spans
objects: no two FineTuneJobs write to overlapping output prefixes, in the words `kubetune validate` uses for
manifests in one folder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from kubetune_api import validate_object
from kubetune_api.names import GROUP, PLURAL, VERSION
from kubetune_api.outputs import conflict
from kubetune_api.policy import check as policy_check

from . import webhook_auth
from .settings import loaded


@kopf.index(GROUP, VERSION, PLURAL)
def outputs(*, name: str, namespace: str | None, spec: kopf.Spec, **_: Any) -> dict[str, str]:
    """Every watched job's output prefix, kept in memory from the watch: admission needs no API call."""
    uri = (spec.get("output") or {}).get("uri")
    return {f"{namespace}/{name}": uri} if uri else {}


@kopf.on.validate(GROUP, VERSION, PLURAL, operations=["CREATE"], id="validate")
def admit(*, body: kopf.Body, sslpeer: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
    settings, policy = loaded()
    if not webhook_auth.allowed(sslpeer, settings.webhook_client_names):
        raise kopf.AdmissionError(webhook_auth.NOT_THE_API_SERVER, code=403)  # before anything about any job
    index: kopf.Index[str, str] = kwargs["outputs"]  # the index above, passed by name
    meta = body.get("metadata") or {}
    result = validate_object(dict(body), source=f"{meta.get('namespace')}/{meta.get('name')}", cluster=True)
    if result.job is None:
        raise kopf.AdmissionError("; ".join(str(problem) for problem in result.problems), code=422)

    namespace = str(meta.get("namespace") or "default")
    denied = policy_check(result.job.spec, namespace, policy, meta.get("labels")) if policy is not None else []
    if denied:
        raise kopf.AdmissionError("; ".join(str(problem) for problem in denied), code=403)
    me = f"{meta.get('namespace')}/{meta.get('name')}"
    # within the namespace only: across tenants the policy's writePrefixes keep outputs apart, and a denial naming
    # (or merely hinting at) another namespace's job would let a tenant probe what its neighbours run
    mine = f"{meta.get('namespace')}/"
    others = [(who, uri) for who, uris in index.items() if who != me and who.startswith(mine) for uri in uris]
    problem = conflict(result.job.spec.output.uri, others)
    if problem is not None:
        raise kopf.AdmissionError(str(problem), code=409)
