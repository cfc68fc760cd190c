"""The FineTuneJob API: models, names, conditions, the operator-to-pod contract and validation."""

from .conditions import ConditionType, Phase, Reason
from .job import FineTuneJob, FineTuneJobSpec
from .names import API_VERSION, GROUP, KIND, PLURAL, VERSION
from .validate import Problem, Result, validate_bytes, validate_object

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "ConditionType",
    "FineTuneJob",
    "FineTuneJobSpec",
    "Phase",
    "Problem",
    "Reason",
    "Result",
    "validate_bytes",
    "validate_object",
]
