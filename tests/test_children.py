"""The children's rules (kubetune_operator.children), as tables: which objects are ours, what a conflict and a
rejection say, and the patch that puts back a child someone changed by hand (None: nothing drifted)."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune_operator import builders
from kubetune_operator.children import conflict, drift, owned, rejected, replacing

from .operator_helpers import plan_for

OURS = {"metadata": {"uid": "child", "ownerReferences": [{"uid": "job", "controller": True}]}}


@pytest.mark.parametrize(
    ("refs", "uid", "ours"),
    [
        ([{"uid": "job", "controller": True}], "job", True),
        ([{"uid": "job", "controller": False}], "job", False),  # an owner, not the controller
        ([{"uid": "job"}], "job", False),
        ([{"uid": "other", "controller": True}], "job", False),
        ([], "job", False),
        ([{"uid": "", "controller": True}], "", False),  # no uid is never a match
    ],
)
def test_only_what_this_job_controls_is_its_child(refs: list[dict[str, Any]], uid: str, ours: bool) -> None:
    assert owned({"metadata": {"ownerReferences": refs}}, uid) is ours


@pytest.mark.parametrize(
    ("current", "desired", "patch"),
    [
        ({"a": 1}, {"a": 1}, {"a": 1}),
        ({"a": 1, "added": 2}, {"a": 1}, {"added": None, "a": 1}),  # added by hand: removed
        ({"a": {"b": 1, "c": 2}}, {"a": {"b": 1}}, {"a": {"c": None, "b": 1}}),
        (None, {"a": 1}, {"a": 1}),
        ({"a": 1}, "scalar", "scalar"),
    ],
)
def test_replacing_removes_what_was_added(current: Any, desired: Any, patch: Any) -> None:
    assert replacing(current, desired) == patch


def children() -> dict[str, dict[str, Any]]:
    plan = plan_for()
    built = (builders.build_configmap(plan), builders.build_service(plan), builders.build_network_policy(plan))
    return {obj["kind"]: obj for obj in built}


def as_read(obj: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """obj as the API server returns it: with its uid, and the fields it defaults."""
    current = {**obj, "metadata": {**obj["metadata"], **OURS["metadata"]}}
    current.update(changes)
    return current


@pytest.mark.parametrize("kind", ["ConfigMap", "Service", "NetworkPolicy"])
def test_a_child_as_built_has_not_drifted(kind: str) -> None:
    desired = children()[kind]
    assert drift(as_read(desired), desired) is None


def test_a_service_keeps_what_the_api_server_adds_and_gets_its_selector_back() -> None:
    desired = children()["Service"]
    served = as_read(desired, spec={**desired["spec"], "clusterIP": "None", "sessionAffinity": "None"})
    assert drift(served, desired) is None  # fields the API server fills in are not drift
    moved = as_read(desired, spec={**desired["spec"], "selector": {"app": "elsewhere"}})
    patch = drift(moved, desired)
    assert patch == {"metadata": {"uid": "child"}, "spec": {"selector": {"app": None, **desired["spec"]["selector"]}}}


def test_a_configmap_edited_by_hand_is_put_back_keys_added_too() -> None:
    desired = children()["ConfigMap"]
    name = next(iter(desired["data"]))
    edited = as_read(desired, data={**desired["data"], name: "tampered", "extra.yaml": "x"})
    assert drift(edited, desired) == {"metadata": {"uid": "child"}, "data": {"extra.yaml": None, **desired["data"]}}


def test_a_network_policy_opened_by_hand_is_closed_again() -> None:
    desired = children()["NetworkPolicy"]
    opened = as_read(desired, spec={**desired["spec"], "ingress": [{}]})
    patch = drift(opened, desired)
    assert patch is not None and patch["metadata"] == {"uid": "child"} and patch["spec"]["ingress"] == desired["spec"]["ingress"]


def test_a_kind_without_a_rule_is_an_error_not_silence() -> None:
    with pytest.raises(ValueError, match="no drift rule for a Secret"):
        drift(as_read({"kind": "Secret", "metadata": {}}), {"kind": "Secret", "metadata": {}})


def test_a_conflict_and_a_rejection_say_what_to_do() -> None:
    plan = plan_for()
    taken = conflict("Service", plan)
    assert taken.reason.value == "NameConflict" and f"Service {plan.namespace}/{plan.job_name} exists" in taken.message
    assert conflict("ConfigMap", plan).message.startswith(f"ConfigMap {plan.namespace}/{plan.config_name}")
    said = rejected("Job", '{"message": "spec.template: Invalid value"}', "Unprocessable Entity")
    assert said.reason.value == "InvalidSpec" and said.message == "the API server rejected the Job: spec.template: Invalid value"
    assert rejected("Job", "not json", "Bad Request").message == "the API server rejected the Job: Bad Request"
    assert len(rejected("Job", '{"message": "' + "x" * 5000 + '"}', None).message) == 2000
