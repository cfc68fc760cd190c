"""Specs a tenant can write that used to reach the children unchecked: credentials and the contract's own variables
in env, credentials in the endpoint, tolerations, node selectors and resources the API server rejects for a pod,
and unbounded disk. Each is refused with its field path, by pydantic and by the CRD (where CEL may afford it)."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune_api import validate_object
from kubetune_operator import builders
from kubetune_operator.plan import make_plan
from kubetune_operator.settings import Settings

from ..conftest import job, kubetune
from ..schema_layer import error_paths

CASES = [
    (
        {"spec.workers.env": [{"name": "AWS_SECURITY_TOKEN", "value": "x"}]},
        "spec.workers.env",
        "may set only the variables the trainer honours",
    ),
    (
        {"spec.workers.env": [{"name": "HUGGING_FACE_HUB_TOKEN", "value": "x"}]},
        "spec.workers.env",
        "may set only the variables the trainer honours",
    ),
    (
        {"spec.workers.env": [{"name": "WANDB_API_KEY", "value": "x"}]},
        "spec.workers.env",
        "may set only the variables the trainer honours",
    ),
    (
        {"spec.workers.env": [{"name": "KUBETUNE_CONFIG", "value": "/tmp/evil.yaml"}]},
        "spec.workers.env",
        "may set only the variables the trainer honours",
    ),
    (
        {"spec.workers.env": [{"name": "HOME", "value": "/evil"}]},
        "spec.workers.env",
        "may set only the variables the trainer honours",
    ),
    (
        {"spec.workers.env": [{"name": "PYTHONPATH", "value": "/evil"}]},
        "spec.workers.env",
        "may set only the variables the trainer honours",
    ),
    (
        {"spec.workers.env": [{"name": "LD_PRELOAD", "value": "/evil.so"}]},
        "spec.workers.env",
        "may set only the variables the trainer honours",
    ),
    (
        {"spec.workers.env": [{"name": "JOB_COMPLETION_INDEX", "value": "0"}]},
        "spec.workers.env",
        "may set only the variables the trainer honours",
    ),
    ({"spec.storage.endpoint": "https://AKIAX:hunter2@s3.example.com"}, "spec.storage.endpoint", "user:password@"),
    ({"spec.workers.tolerations": [{"operator": "Exists", "value": "x"}]}, "spec.workers.tolerations[0].value", "takes no value"),
    (
        {"spec.workers.tolerations": [{"key": "a", "tolerationSeconds": 5}]},
        "spec.workers.tolerations[0].tolerationSeconds",
        "NoExecute",
    ),
    ({"spec.workers.tolerations": [{"value": "x"}]}, "spec.workers.tolerations[0].key", "must use operator Exists"),
    (
        {"spec.workers.resources": {"requests": {"cpu": "8"}, "limits": {"cpu": "4"}}},
        "spec.workers.resources.requests",
        "must not exceed its limit",
    ),
    ({"spec.workers.resources": {"requests": {"memory": "-1Gi"}}}, "spec.workers.resources.requests.memory", "at least 0"),
    ({"spec.workers.sharedMemory": "-8Gi"}, "spec.workers.sharedMemory", "at least 0"),
    ({"spec.workers.cacheSize": "-1"}, "spec.workers.cacheSize", "at least 0"),
    ({"spec.workers.nodeSelector": {"k": "x" * 64}}, "spec.workers.nodeSelector.k", "at most 63"),
]


@pytest.mark.parametrize(("changes", "path", "words"), CASES, ids=[f"{c[1]}:{i}" for i, c in enumerate(CASES)])
def test_refused_by_both_layers_on_the_same_path(changes: dict[str, Any], path: str, words: str) -> None:
    result = validate_object(job(**changes), cluster=True)
    assert [p.path for p in result.problems] == [path], result.problems
    assert words in result.problems[0].message
    assert error_paths(job(**changes)) == [path]


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"spec.workers.nodeSelector": {"bad key!": "v"}}, "is not a label key"),
        ({"spec.workers.resources": {"requests": {"Bad Name": "1"}}}, "is not a resource name"),
    ],
)
def test_map_keys_are_checked_where_cel_cannot_afford_it(changes: dict[str, Any], words: str) -> None:
    """CEL over map keys costs more than the API server allows: pydantic checks them (offline, the webhook, the
    operator's status), and the Job's own validation would too (a rejected child fails as InvalidSpec)."""
    problems = validate_object(job(**changes)).problems
    assert len(problems) == 1 and words in problems[0].message


def test_a_credential_in_the_endpoint_is_never_echoed(tmp_manifest) -> None:  # type: ignore[no-untyped-def]
    result = kubetune("validate", str(tmp_manifest(job(**{"spec.storage.endpoint": "https://AKIAX:hunter2@s3.example.com"}))))
    assert result.returncode == 1 and "hunter2" not in result.stdout + result.stderr and "***@" in result.stdout


def test_the_cache_is_bounded_and_the_user_site_is_off() -> None:
    body = job(**{"spec.workers.cacheSize": "300Gi"})
    body["metadata"]["uid"] = "u-1"
    result = validate_object(body)
    assert result.job is not None
    pod = builders.build_job(make_plan(body, result.job, Settings()))["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cache"]["emptyDir"]["sizeLimit"] == "300Gi" and volumes["tmp"]["emptyDir"]["sizeLimit"] == "4Gi"
    container = pod["containers"][0]
    assert container["resources"]["requests"]["ephemeral-storage"] == "304Gi"  # the cache and /tmp
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PYTHONNOUSERSITE"] == "1" and env["KUBETUNE_JOB_UID"] == "u-1"
