"""A plan for a FineTuneJob built from the conftest job with changes."""

from __future__ import annotations

from typing import Any

from kubetune_api import FineTuneJob
from kubetune_operator.plan import make_plan
from kubetune_operator.settings import Settings

from .conftest import job


def plan_for(**changes: Any):  # type: ignore[no-untyped-def]
    body = job(**changes)
    body["metadata"].update({"namespace": "team-a", "uid": "uid-1"})
    return make_plan(body, FineTuneJob.model_validate(body), Settings(trainer_image="trainer:test"))
