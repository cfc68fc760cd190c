"""`kubetune render MANIFEST`: the exact child objects the operator would create, for review in a pull request."""

from __future__ import annotations

from typing import Any

from kubetune_api.job import FineTuneJob

from .builders import build_children
from .plan import make_plan
from .settings import Settings


def render(job: FineTuneJob, namespace: str | None = None) -> list[dict[str, Any]]:
    body = {
        "metadata": {
            **job.metadata,
            "namespace": namespace or job.metadata.get("namespace", "default"),
            "uid": "<uid of the FineTuneJob>",
        }
    }
    return build_children(make_plan(body, job, Settings.from_environ()))
