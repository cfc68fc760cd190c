"""Property-based checks: any bytes and any spec get an answer, never a traceback, and both layers agree."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetune_api import validate_bytes, validate_object
from kubetune_api.crd import object_schema

from .conftest import MINIMAL, dump
from .schema_layer import error_paths

# messages of the checks pydantic makes (offline, in the operator's status and in the webhook) that the CRD cannot
BEYOND_CRD = ("or example.com/device", "at most 63 letters, digits, '-', '_' or '.'")


def _leaf_paths(schema: dict[str, Any], prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
    out = []
    for name, prop in schema.get("properties", {}).items():
        path = (*prefix, name)
        out.append(path)
        if prop.get("type") == "object":
            out += _leaf_paths(prop, path)
    return out


FIELDS = _leaf_paths(object_schema()["properties"]["spec"], ("spec",))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.sampled_from(["", "all-linear", "s3://bucket-a/x.jsonl", "./m/", "cosine", "none", "all", "16Gi", "a" * 300])
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)


def _set(body: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = body
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_any_bytes_get_results_not_exceptions(data: bytes) -> None:
    results = validate_bytes(data, "fuzz")
    assert results
    for result in results:
        assert result.valid or all(str(p) for p in result.problems)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from(list("{}[]:,-&*!|>'\"#%@` \n\tabc01.")), max_size=300))
def test_yaml_punctuation_soup_never_crashes(text: str) -> None:
    assert validate_bytes(text.encode(), "fuzz")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(FIELDS), json_values), min_size=1, max_size=3))
def test_generated_specs_agree_across_layers(changes: list[tuple[tuple[str, ...], Any]]) -> None:
    body = copy.deepcopy(MINIMAL)
    for path, value in changes:
        _set(body, path, value)
    result = validate_object(body, cluster=True)  # the CRD is the cluster's layer
    again = validate_bytes(dump(body), "gen", cluster=True)[0]
    assert [str(p) for p in again.problems] == [str(p) for p in result.problems]  # YAML round trip changes nothing
    server = error_paths(body)
    if not result.valid and not server:  # only the map-key checks are beyond what CEL may cost in the CRD
        assert all(p.message.endswith(BEYOND_CRD) for p in result.problems), (body, result.problems)
        return
    assert result.valid == (not server), (body, result.problems, server)
    if not result.valid:
        assert {p.path for p in result.problems} & set(server), (result.problems, server)
