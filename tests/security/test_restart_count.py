"""A gang restart is counted once per failed Job: the count comes from the attempt number the Job carries, so a
status written before a delete that fails (and is tried again) cannot count the same failure twice, and a count
written after a delete cannot be lost (restarting the gang for ever past backoffLimit)."""

from __future__ import annotations

from kubetune_api import validate_object
from kubetune_operator import builders
from kubetune_operator.plan import make_plan
from kubetune_operator.settings import Settings

from ..conftest import job


def test_each_job_carries_its_attempt_and_the_count_is_read_from_it() -> None:
    body = job()
    body["metadata"]["uid"] = "u"
    result = validate_object(body)
    assert result.job is not None
    for restart in (0, 2):
        built = builders.build_job(make_plan(body, result.job, Settings(), restart=restart))
        assert builders.attempt_of(built, default=99) == restart  # the same failed Job gives the same count every time
    assert builders.attempt_of({"metadata": {}}, default=3) == 3  # a Job made before the annotation: the status's count
    assert builders.attempt_of({"metadata": {"annotations": {builders.ATTEMPT_ANNOTATION: "x"}}}, default=1) == 1
