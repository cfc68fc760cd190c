"""Pods are untrusted input to the operator: their progress lines, termination message and per-rank failure files
are parsed by the contract's bounded models. Nothing a pod prints can crash a sync, loop a status write, point the
status at another tenant's bucket, or turn a permanent failure into a retried one."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubetune_api.contract import TERMINATION_LIMIT, RankFailure, Summary, parse_progress, parse_summary
from kubetune_operator import observation

GOOD = {"event": "progress", "step": 5, "totalSteps": 20, "epoch": 0.25, "loss": 1.5, "eta": "1m00s"}


def line(**changes: Any) -> str:
    return json.dumps({**GOOD, **changes})


@pytest.mark.parametrize(
    "hostile",
    [
        line(step=-5),
        line(step="x"),
        line(step=True),
        line(loss={"nested": "object"}),
        line(totalSteps=10**30),
        '{"event": "progress", "step": 5, "totalSteps": 20, "loss": NaN}',
        '{"event": "progress", "step": 5, "totalSteps": 20, "loss": 1e400}',
        '{"event": "progress", "step": 1e400, "totalSteps": 20}',
        line(event="summary"),
        "{" + '"a": [' * 5000,
        "x" * 100_000,
    ],
)
def test_a_hostile_progress_line_is_ignored_and_the_last_good_one_kept(hostile: str) -> None:
    log = "\n".join([line(step=3), hostile])
    found = observation.last_progress(log)
    assert found is not None and found.step == 3
    assert observation.progress_status(found).summary == "3/20 (15%)"
    json.dumps(observation.progress_status(found).model_dump(), allow_nan=False)  # always writable into a status


def test_escapes_and_control_characters_never_reach_the_status() -> None:
    found = parse_progress(line(eta="\x1b[2J\x1b]0;owned\x07\x1b[31m5m\x00\x07"))
    assert found is not None and found.eta == "5m"
    summary = parse_summary(
        json.dumps({"event": "summary", "status": "Failed", "reason": "BadRecord", "message": "\x1b[1mbad\x1b[0m\r\n"})
    )
    assert summary is not None and summary.message == "bad"


def test_adapter_uri_comes_from_the_spec_not_from_the_pod() -> None:
    told = parse_summary(
        json.dumps({"event": "summary", "status": "Succeeded", "adapterUri": "s3://other-tenant/secret/", "steps": 9})
    )
    fields = observation.succeeded_fields(told, "s3://adapters/mine/", None)
    assert fields["adapterUri"] == "s3://adapters/mine/adapter/"
    from kubetune_api.status import FineTuneJobStatus

    assert "other-tenant" not in FineTuneJobStatus.model_validate(fields).model_dump_json()


@pytest.mark.parametrize(
    "message",
    [
        {"event": "summary", "status": "Failed", "reason": "Pwned", "message": "x"},  # not a reason of the enum
        {"event": "summary", "status": "Succeeded", "metrics": {"evalLoss": "low"}},
        {"event": "summary", "status": "Whatever"},
        {"event": "summary", "status": "Succeeded", "steps": -1},
    ],
)
def test_an_invalid_summary_is_not_believed(message: dict[str, Any]) -> None:
    assert parse_summary(json.dumps(message)) is None


def test_an_oversized_termination_message_stays_valid_json_and_keeps_its_reason() -> None:
    summary = Summary(status="Failed", reason="BadRecord", message="record 7: " + "é" * 20_000)
    text = summary.termination_message()
    assert len(text.encode()) <= TERMINATION_LIMIT
    parsed = parse_summary(text)
    assert parsed is not None and parsed.reason == "BadRecord"  # still permanent: not retried as a TrainerError
    assert "BadRecord" in observation.PERMANENT


def test_a_non_finite_metric_is_dropped_not_written() -> None:
    from kubetune_trainer.recipe import report

    data = report.summary("Succeeded", metrics={"evalLoss": float("nan"), "perplexity": float("inf"), "tokenAccuracy": 0.5})
    assert data.metrics is not None and data.metrics.model_dump(exclude_none=True) == {"tokenAccuracy": 0.5}
    json.dumps(data.model_dump(mode="json"), allow_nan=False)


def test_a_malformed_rank_failure_file_is_refused() -> None:
    with pytest.raises(ValueError):
        RankFailure.model_validate_json('{"rank": 0, "reason": "NotAReason", "message": "x"}')
    ok = RankFailure.model_validate_json('{"rank": 1, "reason": "NaNLoss", "message": "\\u001b[31mloss is nan"}')
    assert ok.message == "loss is nan"


def test_pod_observation_with_a_hostile_termination_message() -> None:
    pod = {
        "metadata": {"name": "p-0"},
        "status": {
            "containerStatuses": [
                {
                    "state": {
                        "terminated": {"message": '{"event": "summary", "status": "Failed", "reason": "BadRecord", "message": "x'}
                    }
                }
            ]
        },
    }  # cut off mid-JSON: no summary, so the job falls back to TrainerError rather than crashing
    job = {"metadata": {}, "status": {"conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]}}
    observed = observation.observe(job, [pod], 1)
    assert observed.state == "failed" and observed.reason == "TrainerError"
