"""Least privilege, proven: the API server's audit log holds every request the operator's ServiceAccount made during
the whole session (every cluster, fault and admission test ran the operator in-process under it; the e2e tests run
it in its pod under the e2e release's own, with the same rules). It was never refused,
and every verb it is granted was used: a grant no test needs is a grant the operator does not need.

Marked `audit`: tests/conftest.py runs it after every other test of the session."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from kubetune_operator.rbac import RULES

from ..cluster.plane import IN_CLUSTER_OPERATOR_USER, OPERATOR_USER

pytestmark = [pytest.mark.cluster, pytest.mark.audit]


def granted() -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in RULES
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def used(entries: list[dict[str, Any]]) -> Counter[tuple[str, str, str]]:
    out: Counter[tuple[str, str, str]] = Counter()
    for entry in entries:
        ref = entry.get("objectRef") or {}
        if not ref.get("resource"):
            continue  # discovery (/api, /apis): allowed to every authenticated user
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        out[(ref.get("apiGroup", ""), resource, entry["verb"])] += 1
    return out


def standby_watching_everything(plane, kubeconfig: Path, log: Path) -> None:  # type: ignore[no-untyped-def]
    """The one mode no other test runs: the operator watching every namespace with peering, which keeps its
    record in a ClusterKopfPeering. It starts as a standby behind a live peer of higher priority (Kopf starts
    paused until peering says otherwise), so it touches nothing but the peering record, and is stopped once its
    record is there."""
    import datetime
    import os
    import subprocess
    import sys
    import time

    from kubetune_api.manifests import dump

    from ..conftest import ROOT
    from ..s3server import free_port

    now = datetime.datetime.now(datetime.UTC).isoformat()
    peering = {
        "apiVersion": "kopf.dev/v1",
        "kind": "ClusterKopfPeering",
        "metadata": {"name": "kubetune-audit"},
        "status": {"active-elsewhere": {"priority": 2**31 - 1, "lifetime": 600, "lastseen": now}},
    }
    plane.kubectl("apply", "--server-side", "-f", "-", input=dump(peering))
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "KUBETUNE_NAMESPACES": "",
        "KUBETUNE_PEERING": "kubetune-audit",
        "KUBETUNE_METRICS_PORT": "0",
        "KUBETUNE_HEALTH_PORT": str(free_port()),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "kubetune_cli", "operator"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("w")
    )
    try:
        deadline = time.monotonic() + 60

        def peers() -> int:
            out = plane.kubectl("get", "clusterkopfpeering", "kubetune-audit", "-o", "json").stdout
            return len(json.loads(out).get("status") or {})

        while peers() < 2:  # its own record beside the active one: it listed, watched and patched the peering
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        assert "Resuming" not in log.read_text()  # it never became active
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


def test_the_operator_used_exactly_the_verbs_it_is_granted(plane, operator, operator_kubeconfig, tmp_path) -> None:  # type: ignore[no-untyped-def]
    standby_watching_everything(plane, operator_kubeconfig, tmp_path / "standby.log")
    entries = [json.loads(line) for line in plane.audit_log.read_text().splitlines() if line.strip()]
    # the chart's ServiceAccount as the tests run it in-process, and as the e2e tests' release runs it in its pod
    # (the same rules, a Role in its one watched namespace)
    users = (OPERATOR_USER, IN_CLUSTER_OPERATOR_USER)
    mine = [e for e in entries if (e.get("user") or {}).get("username") in users and e.get("stage") == "ResponseComplete"]
    assert mine, "no request of the operator's service account in the audit log"
    refused = Counter(
        (e["verb"], (e.get("objectRef") or {}).get("resource"), (e.get("objectRef") or {}).get("namespace"))
        for e in mine
        if (e.get("responseStatus") or {}).get("code") == 403
    )
    assert not refused, f"the operator was refused (a grant is missing): {refused}"
    counts = used(mine)
    unused = sorted(granted() - set(counts))
    assert not unused, f"granted but never used in the whole session: {unused}; used: {sorted(counts.items())}"
    assert set(counts) <= granted(), sorted(set(counts) - granted())
