"""The platform policy offline: each rule refuses what a tenant may not choose, with the field path and what is
allowed; `kubetune validate --policy` says it in the words the API server uses; the chart's admission policy is the
one generated from these rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetune_api import validate_object
from kubetune_api.policy import Policy, PolicyError, admission_policy_template, check, load_policy

from ..conftest import ROOT, job, kubetune
from .policy_cases import ALLOWED, ATTACKS, PLATFORM, STRICT


def spec_of(**changes: Any) -> Any:
    result = validate_object(job(**{**ALLOWED, **changes}))
    assert result.job is not None, result.problems
    return result.job.spec


def test_an_allowed_job_passes() -> None:
    assert check(spec_of(), "team-a", STRICT) == []


@pytest.mark.parametrize(("changes", "field", "words"), ATTACKS, ids=[a[1] + ":" + str(i) for i, a in enumerate(ATTACKS)])
def test_each_choice_outside_the_policy_is_refused(changes: dict[str, Any], field: str, words: str) -> None:
    problems = check(spec_of(**changes), "team-a", STRICT)
    assert [p.path for p in problems] == [field], problems
    assert words in str(problems[0]), str(problems[0])


def test_the_namespace_decides_the_prefix() -> None:
    assert check(spec_of(), "team-b", STRICT) != []  # team-a's prefixes are not team-b's


def test_every_shipped_example_passes_the_shipped_platform_policy() -> None:
    from ..conftest import EXAMPLES

    policy = load_policy(PLATFORM)
    for path in EXAMPLES:
        result = validate_object(__import__("yaml").safe_load(path.read_text()), cluster=True)
        if path.name.endswith("quickstart.yaml"):  # local paths: `kubetune run` only, refused in a cluster
            assert result.job is None
            continue
        namespace = result.job.metadata.get("namespace") or "team-a"  # minimal.yaml: the namespace it is applied to
        assert result.job is not None and check(result.job.spec, namespace, policy) == [], path


def test_validate_cli_with_a_policy(tmp_path: Path, tmp_manifest) -> None:  # type: ignore[no-untyped-def]
    policy = tmp_path / "policy.yaml"
    policy.write_text("writePrefixes: ['s3://adapters/{namespace}/']\npriorityClasses: [batch-low]\n")
    bad = tmp_manifest(job(**{"spec.output.uri": "s3://adapters/team-b/x/", "spec.workers.priorityClassName": "high"}))
    result = kubetune("validate", "--policy", str(policy), "--namespace", "team-a", str(bad))
    assert result.returncode == 1
    assert "spec.output.uri: the platform policy lets this namespace write only under: s3://adapters/team-a/ " in result.stdout
    assert (
        'spec.workers.priorityClassName: this priority class is not allowed by the platform policy; allowed: batch-low (got "high")'
        in result.stdout
    )
    good = tmp_manifest(job(**{"spec.output.uri": "s3://adapters/team-a/x/"}), "good.yaml")
    assert kubetune("validate", "--policy", str(policy), "-n", "team-a", str(good)).returncode == 0
    shipped = tmp_manifest(job(**{**ALLOWED, "spec.model.uri": "s3://models/base/"}), "shipped.yaml")
    assert kubetune("validate", "--policy", str(PLATFORM), "-n", "team-a", str(shipped)).returncode == 0  # chart values too


@pytest.mark.parametrize("text", ["images: ['a,b']\n", "imagez: []\n", "maxGpusPerJob: -1\n", "images: [' x']\n"])
def test_a_wrong_policy_file_is_a_usage_error(tmp_path: Path, tmp_manifest, text: str) -> None:  # type: ignore[no-untyped-def]
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    with pytest.raises(PolicyError):
        load_policy(policy)
    assert kubetune("validate", "--policy", str(policy), str(tmp_manifest(job()))).returncode == 2


def test_the_chart_holds_the_generated_admission_policy() -> None:
    shipped = (ROOT / "charts" / "kubetune" / "templates" / "admission-policy.yaml").read_text()
    assert shipped == admission_policy_template(), "run `make generate`"


def test_a_platform_can_require_the_preflight() -> None:
    required = Policy(requirePreflight=True)
    skipping = spec_of(**{"spec.runPolicy": {"preflight": False}})
    problems = check(skipping, "team-a", required)
    assert [p.path for p in problems] == ["spec.runPolicy.preflight"], problems
    assert "requires the preflight" in str(problems[0])
    assert check(spec_of(**{"spec.runPolicy": {"preflight": True}}), "team-a", required) == []
    assert check(skipping, "team-a", Policy()) == []  # not required: a tenant may skip it
