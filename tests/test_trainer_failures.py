"""Bad input stops the trainer early with one clear reason, before training, leaving earlier checkpoints alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .s3server import S3Server
from .trainer_helpers import manifest, run

pytestmark = pytest.mark.trainer


def spec_for(stored: dict[str, str], out: str, **changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": stored["model"]},
        "dataset": {"train": stored["train"], "validation": stored["validation"], "maxSeqLength": 128},
        "training": {"maxSteps": 2},
        "output": {"uri": out},
    }
    for section, value in changes.items():
        spec[section] = {**spec.get(section, {}), **value}
    return spec


CASES = [
    (
        "dataset-missing",
        {"dataset": {"train": "s3://data/nope/train.jsonl"}},
        None,
        "DatasetMissing",
        "s3://data/nope/train.jsonl",
    ),
    ("model-missing", {"model": {"uri": "s3://models/nothing-here/"}}, None, "ModelMissing", "s3://models/nothing-here/"),
    ("wrong-credentials", {}, {"AWS_SECRET_ACCESS_KEY": "wrong-secret-value-1234"}, "AccessDenied", "access denied"),
    ("empty", {"dataset": {"train": "s3://data/bad/empty.jsonl"}}, None, "EmptyDataset", "training set has no records"),
    (
        "malformed",
        {"dataset": {"train": "s3://data/bad/malformed.jsonl"}},
        None,
        "BadRecord",
        "malformed.jsonl line 2: invalid JSON",
    ),
    ("no-field", {"dataset": {"train": "s3://data/bad/nofield.jsonl"}}, None, "BadRecord", "missing field 'completion'"),
    (
        "no-module",
        {"lora": {"targetModules": ["q_proj", "qkv_proj"]}},
        None,
        "TargetModulesNotFound",
        "['qkv_proj'] match no layer",
    ),
]


@pytest.fixture(scope="module")
def bad_data(s3: S3Server) -> None:
    s3.bucket("data")
    s3.put("data", "bad/empty.jsonl", b"")
    s3.put("data", "bad/malformed.jsonl", b'{"prompt": "a", "completion": "b"}\n{"prompt": oops\n')
    s3.put("data", "bad/nofield.jsonl", b'{"prompt": "a", "answer": "b"}\n' * 20)


@pytest.mark.parametrize(("name", "changes", "env", "reason", "needle"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_early_with_its_reason(
    s3: S3Server,
    stored: dict[str, str],
    bad_data: None,
    tmp_path: Path,
    name: str,
    changes: dict[str, Any],
    env: dict[str, str] | None,
    reason: str,
    needle: str,
) -> None:
    out = f"s3://adapters/failures/{name}/"
    s3.bucket("adapters")
    earlier = s3.put("adapters", f"failures/{name}/checkpoints/step-000004/COMPLETE", b'{"step": 4}')
    outcome = run(manifest(f"bad-{name}", s3, spec_for(stored, out, **changes)), s3, tmp_path, processes=1, **(env or {}))
    assert outcome.returncode == 1, outcome.stdout[-2000:]
    summary = outcome.summary
    assert summary["status"] == "Failed" and summary["reason"] == reason, summary
    assert needle in summary["message"]
    assert not outcome.of("progress"), "training started"
    termination = json.loads((tmp_path / f"work-bad-{name}" / "termination-log").read_text())
    assert termination == summary
    if env is None:
        assert s3.get(earlier) == b'{"step": 4}'  # earlier checkpoints intact
    log = tmp_path / f"work-bad-{name}" / "trainer.log"
    logged = log.read_text() if log.is_file() else ""
    for secret in (s3.secret_key, "wrong-secret-value-1234"):
        assert secret not in outcome.stdout + outcome.stderr + logged
    # the terminal ends with the reason and where the full log is; tracebacks stay in that log
    assert f"Failed: {reason}: " in outcome.stdout
    assert "Traceback" not in outcome.stderr and "ChildFailedError" not in outcome.stderr, outcome.stderr[-2000:]
    if logged:  # failures after the ranks started: their report and torch elastic's are in the log it names
        assert f"the full log, with every rank's output: {log}" in outcome.stdout
        assert f"failed: {reason}: " in logged and "ChildFailedError" in logged


def test_finished_output_is_never_overwritten(s3: S3Server, stored: dict[str, str], tmp_path: Path) -> None:
    s3.bucket("adapters")
    s3.put("adapters", "failures/done/_SUCCESS", b"")
    outcome = run(manifest("done", s3, spec_for(stored, "s3://adapters/failures/done/")), s3, tmp_path, processes=1)
    assert outcome.returncode == 1 and outcome.summary["reason"] == "OutputExists"


def test_overwrite_starts_a_finished_output_afresh(s3: S3Server, stored: dict[str, str], tmp_path: Path) -> None:
    out = "s3://adapters/failures/again/"
    s3.bucket("adapters")
    s3.put("adapters", "failures/again/_SUCCESS", b"")
    s3.put("adapters", "failures/again/checkpoints/step-000100/COMPLETE", b'{"step": 100, "worldSize": 2}')
    outcome = run(manifest("again", s3, spec_for(stored, out, output={"overwrite": True})), s3, tmp_path, processes=1)
    assert outcome.returncode == 0, outcome.stdout[-2000:] + outcome.stderr[-2000:]
    assert not outcome.of("resumed")
    assert [e["step"] for e in outcome.of("progress")] == [1, 2]
    assert "checkpoints/step-000100/COMPLETE" not in s3.keys(out)
