"""Validation shared by `kubetune validate`, the operator and the admission webhook: one code path, one set of messages."""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from ._base import CLUSTER, RULE_ERROR
from .job import FineTuneJob
from .manifests import ManifestError, load
from .names import API_VERSION, GROUP, KIND, MAX_NAME_LENGTH

NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
NAME_MESSAGE = (
    f"metadata.name must be a DNS label of at most {MAX_NAME_LENGTH} characters: lowercase letters, digits and '-', "
    "starting with a letter and ending with a letter or digit"
)
_VALUE_WIDTH = 60


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest: where (a field path), what is allowed, and what was given."""

    path: str
    message: str
    value: str | None = None

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        got = f" (got {self.value})" if self.value is not None else ""
        return f"{where}{self.message}{got}"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "message": self.message, "value": self.value}


@dataclass
class Result:
    """The outcome for one document."""

    source: str
    index: int = 0
    line: int | None = None
    name: str | None = None
    problems: list[Problem] = field(default_factory=list)
    job: FineTuneJob | None = None

    @property
    def valid(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "document": self.index,
            "line": self.line,
            "name": self.name,
            "valid": self.valid,
            "errors": [p.to_dict() for p in self.problems],
        }


_USERINFO = re.compile(r"(://)[^/\s@\"']*@")


def show(value: Any) -> str:
    """A short, JSON-like rendering of a given value for messages; a URL's user:password@ is never echoed."""
    try:
        text = json.dumps(value, default=str, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    text = _USERINFO.sub(r"\1***@", text)
    return text if len(text) <= _VALUE_WIDTH else text[: _VALUE_WIDTH - 3] + "..."


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the object at loc, for listing its fields."""
    current: Any = FineTuneJob
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        current = _model_in(current.model_fields[part].annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, (types.UnionType, typing._GenericAlias)) or typing.get_origin(annotation):  # type: ignore[attr-defined]
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _unknown_field(loc: tuple[int | str, ...]) -> str:
    model = _model_at(loc[:-1])
    if model is None:
        return "unknown field"
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown field{hint}; allowed: {', '.join(allowed)}"


_TYPES = {
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "list_type": "must be a list",
    "missing": "required field is missing",
}


def _message(error: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind in _TYPES:
        return _TYPES[kind]
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"must be {bounds[kind]} {limit}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}"
    if kind == "string_too_short":
        return f"must be at least {ctx['min_length']} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters"
    if kind == "too_short":
        return f"must have at least {ctx['min_length']} items"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} items"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx['pattern']}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return str(error["msg"])


def problems_from(exc: ValidationError) -> list[Problem]:
    """pydantic errors as Problems with Kubernetes-style field paths."""
    out = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        kind = error["type"]
        if kind == RULE_ERROR:
            ctx_field = str((error.get("ctx") or {}).get("field", ""))
            loc = loc + tuple(ctx_field.split("."))
            out.append(Problem(_path(loc), error["msg"]))
        elif kind == "extra_forbidden":
            out.append(Problem(_path(loc), _unknown_field(loc), show(error["input"])))
        elif kind == "missing":
            out.append(Problem(_path(loc), _message(error)))
        else:
            out.append(Problem(_path(loc), _message(error), show(error["input"])))
    return out


def _check_header(body: Mapping[str, Any]) -> list[Problem]:
    problems = []
    api_version, kind = body.get("apiVersion"), body.get("kind")
    if kind != KIND:
        problems.append(Problem("kind", f"must be {KIND}", show(kind)))
    if api_version != API_VERSION:
        hint = " (this version serves only that one)" if isinstance(api_version, str) and api_version.startswith(GROUP) else ""
        problems.append(Problem("apiVersion", f"must be {API_VERSION}{hint}", show(api_version)))
    metadata = body.get("metadata")
    if metadata is None:
        problems.append(Problem("metadata.name", "required field is missing"))
    elif not isinstance(metadata, Mapping):
        problems.append(Problem("metadata", "must be a mapping", show(metadata)))
    else:
        name = metadata.get("name")
        if name is None and not metadata.get("generateName"):
            problems.append(Problem("metadata.name", "required field is missing"))
        elif name is not None and (not isinstance(name, str) or len(name) > MAX_NAME_LENGTH or not re.match(NAME_PATTERN, name)):
            problems.append(Problem("metadata.name", NAME_MESSAGE, show(name)))
    return problems


def drop_nulls(value: Any) -> Any:
    """Remove null-valued keys, as the API server prunes nulls of non-nullable fields before defaulting."""
    if isinstance(value, Mapping):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def validate_object(
    body: Any, source: str = "<object>", index: int = 0, line: int | None = None, cluster: bool = False
) -> Result:
    """Validate one FineTuneJob object (a parsed manifest or an API server body). cluster: as a job for a cluster
    (the operator, admission, `kubetune validate`): the CRD's cluster-only rules too (no local paths)."""
    result = Result(source=source, index=index, line=line)
    if not isinstance(body, Mapping):
        got = type(body).__name__ if not isinstance(body, (str, int, float, bool)) else show(body)
        result.problems.append(Problem("", "a manifest must be a mapping with apiVersion, kind, metadata and spec", got))
        return result
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping) and isinstance(metadata.get("name"), str):
        result.name = metadata["name"]
    result.problems.extend(_check_header(body))
    if result.problems and any(p.path in ("kind", "apiVersion") for p in result.problems):
        return result  # not a FineTuneJob: its spec would only add noise
    try:
        result.job = FineTuneJob.model_validate(
            drop_nulls({k: v for k, v in body.items() if k != "status"}), context=CLUSTER if cluster else None
        )
    except ValidationError as exc:
        result.problems.extend(problems_from(exc))
    if result.problems:
        result.job = None
    return result


def validate_bytes(data: bytes, source: str, cluster: bool = False) -> list[Result]:
    """Validate every document of a manifest file; an unreadable file is one Result with one Problem."""
    try:
        documents = load(data)
    except ManifestError as exc:
        return [Result(source=source, problems=[Problem("", str(exc))])]
    if not documents:
        return [Result(source=source, problems=[Problem("", "no YAML documents found (the file is empty)")])]
    return [validate_object(doc.body, source, doc.index, doc.line, cluster) for doc in documents]
