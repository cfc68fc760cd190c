"""The API server's view of a manifest, offline: structural defaulting, the generated JSON Schema and its CEL rules.

Used to prove that the generated CRD and the pydantic models agree; the cluster tier repeats this against a
real API server.
"""

from __future__ import annotations

import copy
from typing import Any

import celpy
import jsonschema

from kubetune_api._types import quantity_value
from kubetune_api.crd import object_schema
from kubetune_api.validate import drop_nulls

_CEL = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}
# Kubernetes' CEL quantity library, as far as the CRD's rules use it
_FUNCTIONS = {
    "quantity": lambda text: celpy.celtypes.DoubleType(quantity_value(str(text))),
    "compareTo": lambda a, b: celpy.celtypes.IntType((a > b) - (a < b)),
}


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Fill defaults the way the API server does for structural schemas."""
    if isinstance(value, dict) and schema.get("type") == "object":
        for name, prop in schema.get("properties", {}).items():
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
            if name in value:
                value[name] = apply_defaults(prop, value[name])
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _int_or_string(validator: Any, enabled: Any, instance: Any, schema: Any) -> Any:
    if enabled and (isinstance(instance, bool) or not isinstance(instance, (int, str))):
        yield jsonschema.ValidationError(f"{instance!r} must be an integer or a string")


# Draft 4 matches OpenAPI v3.0's boolean exclusiveMinimum; the extension is what the API server adds.
_Validator = jsonschema.validators.extend(jsonschema.Draft4Validator, {"x-kubernetes-int-or-string": _int_or_string})


def _schema_error_paths(schema: dict[str, Any], body: Any) -> list[str]:
    paths = []
    for error in _Validator(schema).iter_errors(body):
        base = list(error.absolute_path)
        if error.validator == "additionalProperties":
            known = set(error.schema.get("properties", {}))
            paths += [_path([*base, extra]) for extra in error.instance if extra not in known]
        elif error.validator == "required":
            paths += [_path([*base, name]) for name in error.validator_value if name not in error.instance]
        else:
            paths.append(_path(base))
    return paths


def _cel_error_paths(schema: dict[str, Any], value: Any, where: list[Any]) -> list[str]:
    paths: list[str] = []
    if schema.get("type") == "object" and isinstance(value, dict):
        for name, prop in schema.get("properties", {}).items():
            if name in value:
                paths += _cel_error_paths(prop, value[name], [*where, name])
    elif schema.get("type") == "array" and isinstance(value, list):
        for i, item in enumerate(value):
            paths += _cel_error_paths(schema.get("items", {}), item, [*where, i])
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue  # a transition rule: only checked on update, against the stored object
        program = _PROGRAMS.get(rule["rule"])
        if program is None:
            program = _PROGRAMS[rule["rule"]] = _CEL.program(_CEL.compile(rule["rule"]), functions=_FUNCTIONS)
        if not bool(program.evaluate({"self": celpy.json_to_cel(value)})):
            paths.append(_path(where) + rule.get("fieldPath", "") if where else rule.get("fieldPath", "").lstrip("."))
    return paths


def error_paths(body: dict[str, Any]) -> list[str]:
    """Field paths the API server would reject: schema errors first, then (on a schema-valid object) CEL rules."""
    strict = object_schema(strict=True)
    body = apply_defaults(strict, drop_nulls(copy.deepcopy(body)))
    paths = _schema_error_paths(strict, body)
    if paths:
        return paths
    return _cel_error_paths(strict, body, [])
