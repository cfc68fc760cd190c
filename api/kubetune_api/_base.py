"""Shared base for spec sections: camelCase aliases, unknown fields rejected, cross-field rules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

RULE_ERROR = "cross_field"


@dataclass(frozen=True)
class Rule:
    """A cross-field rule, enforced by pydantic and emitted as CEL into the CRD with one message."""

    field: str  # camelCase field, relative to the object, that the error is reported on
    message: str
    cel: str  # the same rule in CEL, `self` being the object that declares it
    check: Callable[[Any], bool]  # True when the validated object satisfies the rule
    cluster: bool = False  # a rule of cluster jobs only (the CRD carries it; pydantic checks it with CLUSTER context)


CLUSTER = {"cluster": True}  # the validation context of a job for the cluster (the operator, admission, `validate`)


def _schema_rules(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    rules: tuple[Rule, ...] = getattr(cls, "rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [cel_rule(rule) for rule in rules]


def cel_rule(rule: Rule) -> dict[str, str]:
    """The CRD's x-kubernetes-validations entry for a rule."""
    return {"rule": rule.cel, "message": rule.message, "fieldPath": f".{rule.field}", "reason": "FieldValueInvalid"}


class Section(BaseModel):
    """Base of every spec section. Field names are camelCase, exactly as users write them."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        json_schema_extra=_schema_rules,
    )
    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self, info: ValidationInfo) -> Self:
        cluster = bool((info.context or {}).get("cluster"))
        for rule in self.rules:
            if (cluster or not rule.cluster) and not rule.check(self):
                raise PydanticCustomError(RULE_ERROR, rule.message, {"field": rule.field})
        return self


def section_default(section: type[BaseModel]) -> dict[str, Any]:
    """Extra schema for a section that may be omitted: the API server fills in the section's full defaults
    (a bare `{}` would be checked against the section's CEL rules before its own fields are defaulted)."""
    return {"default": section().model_dump(mode="json", exclude_none=True)}
