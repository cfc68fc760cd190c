"""The optional validating webhook against the real API server: the operator serves it over TLS, the API server
calls it on every FineTuneJob create, and a job whose output overlaps another's is refused with the words
`kubetune validate` prints for the same two manifests."""

from __future__ import annotations

import time

import pytest

from kubetune_api.manifests import dump

from .admission_helpers import NAMESPACE, body
from .admission_helpers import webhook as webhook
from .cluster_helpers import ftj, wait_for
from .conftest import kubetune

pytestmark = pytest.mark.cluster


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
