"""The generated CRD: fresh, structural, and in agreement with pydantic on every example and invalid manifest."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from kubetune_api import validate_object
from kubetune_api.crd import build_crd, object_schema, render

from .cases import CRD_FILE, SCHEMA_CASES
from .conftest import EXAMPLES, job
from .schema_layer import error_paths


def walk(schema: dict[str, Any], path: str = ""):  # type: ignore[no-untyped-def]
    yield path, schema
    for name, prop in schema.get("properties", {}).items():
        yield from walk(prop, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from walk(schema[key], f"{path}[{key}]")


def test_checked_in_crd_is_fresh() -> None:
    assert CRD_FILE.read_text() == render(), "crds/finetunejob.yaml is stale: run `kubetune crd > crds/finetunejob.yaml`"


def test_crd_is_structural_and_described() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        assert not {"$ref", "anyOf", "allOf", "oneOf", "$defs", "title"} & set(node), path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        if path.startswith(".spec") and "[" not in path.rsplit(".", 1)[-1]:
            assert node.get("description"), f"{path} has no description (kubectl explain would be empty)"
        if node.get("type") == "object" and path.startswith(".spec"):
            kept = "properties" in node or "additionalProperties" in node or node.get("x-kubernetes-preserve-unknown-fields")
            assert kept, f"{path} would be pruned"  # (a JSON Schema a grader takes is kept whole)


def test_crd_names_status_and_printer_columns() -> None:
    crd = build_crd()
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("FineTuneJob", "finetunejobs", ["ftj"])
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Progress"] == ".status.progress.summary"
    assert columns["Eval Loss"] == ".status.metrics.evalLoss"
    assert columns["Task"] == ".status.metrics.taskScore"  # spec.evaluation.tasks: the first task, the adapter
    assert columns["Age"] == ".metadata.creationTimestamp"


def _sections(model: Any) -> set[Any]:
    from pydantic import BaseModel

    from kubetune_api.validate import _model_in

    found = {model}
    for info in model.model_fields.values():
        inner = _model_in(info.annotation)
        if inner is not None and issubclass(inner, BaseModel):
            found |= _sections(inner)
    return found


def test_every_pydantic_rule_is_a_cel_rule_with_the_same_message() -> None:
    from kubetune_api import FineTuneJobSpec

    schema = object_schema()
    cel = {(r["rule"], r["message"]) for _, node in walk(schema) for r in node.get("x-kubernetes-validations", [])}
    rules = [rule for model in _sections(FineTuneJobSpec) for rule in getattr(model, "rules", ())]
    assert len(rules) >= 8
    for rule in rules:
        assert (rule.cel, rule.message) in cel


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_pass_both_layers(example: Any) -> None:
    for body in yaml.safe_load_all(example.read_text()):
        assert validate_object(body, str(example)).problems == []
        cluster = [p.path for p in validate_object(body, str(example), cluster=True).problems]
        assert error_paths(body) == cluster
        # the quickstart runs with `kubetune run` from local paths, which no cluster layer admits
        expected = ["spec.model.uri", "spec.dataset.train", "spec.output.uri"] if example.name.endswith("quickstart.yaml") else []
        assert sorted(cluster) == sorted(expected)


@pytest.mark.parametrize("changes", SCHEMA_CASES, ids=lambda c: ",".join(f"{k}={v!r}" for k, v in c.items())[:60])
def test_invalid_manifests_fail_both_layers_on_the_same_path(changes: dict[str, Any]) -> None:
    body = job(**changes)
    pydantic_paths = [p.path for p in validate_object(body, cluster=True).problems]
    assert error_paths(body) == pydantic_paths


def test_cel_rules_carry_the_pydantic_messages() -> None:
    schema = object_schema()
    messages = {r["message"] for _, node in walk(schema) for r in node.get("x-kubernetes-validations", [])}
    bad = job(**{"spec.dataset.validation": "s3://data/v.jsonl", "spec.dataset.validationSplit": 0.1})
    assert next(p.message for p in validate_object(bad).problems) in messages
