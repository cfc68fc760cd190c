"""Every field of the spec that names storage is under the platform's read or write policy: the spec's JSON schema
is walked for string fields that take a URI (a pattern or description with ://), and each must be a field
policy.URI_FIELDS (prefixes) or an endpoints rule names. A new URI field cannot be forgotten: this test fails until it
is placed under a rule, and then each such field is refused outside its prefixes, in the policy's words."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune_api import validate_object
from kubetune_api.job import FineTuneJobSpec
from kubetune_api.policy import LIST_URI_FIELDS, RULES, URI_FIELDS, Policy, check

from ..conftest import job


def uri_fields() -> set[str]:
    schema = FineTuneJobSpec.model_json_schema()
    defs = schema.get("$defs", {})
    found: set[str] = set()

    def walk(node: dict[str, Any], path: str) -> None:
        if "$ref" in node:
            walk(defs[node["$ref"].rsplit("/", 1)[-1]], path)
        for key in ("anyOf", "oneOf", "allOf"):
            for sub in node.get(key, []):
                walk(sub, path)
        for name, sub in (node.get("properties") or {}).items():
            walk(sub, f"{path}.{name}")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}.*")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")
        if node.get("type") == "string" and "://" in f"{node.get('pattern', '')} {node.get('description', '')}":
            found.add(path)

    walk(schema, "spec")
    return found


def test_every_uri_field_is_under_a_policy_rule() -> None:
    endpoints = {rule.field for rule in RULES if rule.allowed == "endpoints"}
    found = uri_fields()
    assert {"spec.model.uri", "spec.model.adapter", "spec.dataset.train", "spec.output.uri"} <= found  # the walk works
    missing = found - set(URI_FIELDS) - set(LIST_URI_FIELDS) - endpoints
    assert not missing, f"URI fields outside the read/write policy (add them to kubetune_api.policy.URI_FIELDS): {missing}"
    assert set(URI_FIELDS) | set(LIST_URI_FIELDS) <= found  # and the tables name no field the spec lost
    assert set(LIST_URI_FIELDS) <= {rule.field for rule in RULES}  # each list field has its rule


@pytest.mark.parametrize("path", sorted(URI_FIELDS))
def test_each_uri_field_is_refused_outside_its_prefixes(path: str) -> None:
    mine = {"spec.model.uri": "s3://mine/m/", "spec.dataset.train": "s3://mine/t.jsonl", "spec.output.uri": "s3://mine/o/"}
    result = validate_object(job(**{**mine, path: "s3://theirs/x/"}))
    assert result.job is not None, result.problems
    policy = Policy(readPrefixes=["s3://mine/"], writePrefixes=["s3://mine/"])
    problems = check(result.job.spec, "team-a", policy)
    verb = "read" if URI_FIELDS[path] == "readPrefixes" else "write"
    assert [(p.path, p.message) for p in problems] == [
        (path, f"the platform policy lets this namespace {verb} only under: s3://mine/")
    ]
    allowed = validate_object(job(**{**mine, path: "s3://mine/x/"})).job
    assert allowed is not None and check(allowed.spec, "team-a", policy) == []


def test_a_tasks_own_items_are_refused_outside_the_read_prefixes() -> None:
    """spec.evaluation.tasks[].items, a URI inside a list: every element is under readPrefixes, in the same words."""
    mine = {"spec.model.uri": "s3://mine/m/", "spec.dataset.train": "s3://mine/t.jsonl", "spec.output.uri": "s3://mine/o/"}
    policy = Policy(readPrefixes=["s3://mine/"], writePrefixes=["s3://mine/"])

    def tasks(*items: str | None) -> Any:
        body = job(**mine)
        body["spec"]["evaluation"] = {
            "tasks": [
                {"name": f"t{i}", "graders": [{"type": "exactMatch"}], **({"items": u} if u else {})} for i, u in enumerate(items)
            ]
        }
        result = validate_object(body)
        assert result.job is not None, result.problems
        return result.job.spec

    assert check(tasks("s3://mine/a.jsonl", None), "team-a", policy) == []
    problems = check(tasks("s3://mine/a.jsonl", "s3://theirs/b.jsonl"), "team-a", policy)
    assert [(p.path, p.message) for p in problems] == [
        ("spec.evaluation.tasks[].items", "the platform policy lets this namespace read only under: s3://mine/")
    ]
