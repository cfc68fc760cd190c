"""SIGTERM (a preemption, an eviction, a suspend): the ranks agree on a step, checkpoint it and end with reason
Preempted; the next run resumes there and ends with the adapter an uninterrupted run makes."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from .s3server import S3Server
from .trainer_helpers import Outcome, resumable, run, start

pytestmark = pytest.mark.trainer

TOTAL = 16


def job(name: str, s3: S3Server, stored: dict[str, str], out: str) -> dict[str, Any]:
    # no periodic checkpoint: the one written on SIGTERM is all there is
    return resumable(name, s3, stored, out, maxSteps=TOTAL, logEverySteps=1, checkpointEverySteps=100)


def terminated(body: dict[str, Any], s3: S3Server, tmp: Path, after_step: int) -> tuple[Outcome, int]:
    """Run `kubetune run` and SIGTERM it (as the kubelet does the pod's main process) once a step is logged."""
    first = start(body, s3, tmp)
    assert first.stdout is not None
    seen = 0
    deadline = time.monotonic() + 300
    for line in first.stdout:  # progress lines are JSON, one per step
        if '"event": "progress"' in line or '"event":"progress"' in line:
            seen += 1
            if seen == after_step:
                first.send_signal(signal.SIGTERM)
                break
        if time.monotonic() > deadline:
            break
    stdout, stderr = first.communicate(timeout=300)
    return Outcome(first.returncode, stdout, stderr), seen


def test_sigterm_checkpoints_the_step_and_the_resumed_run_matches_an_uninterrupted_one(
    s3: S3Server, stored: dict[str, str], tmp_path: Path
) -> None:
    out = "s3://adapters/preempted/"
    body = job("preempted", s3, stored, out)
    stopped, signalled_at = terminated(body, s3, tmp_path, after_step=5)
    assert signalled_at == 5, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    assert stopped.returncode != 0 and stopped.summary["status"] == "Failed", stopped.stdout[-2000:]
    assert stopped.summary["reason"] == "Preempted", stopped.summary
    written = stopped.of("checkpoint")
    assert len(written) == 1, stopped.stdout[-3000:]
    step = written[0]["step"]
    assert f"stopped at step {step}" in stopped.summary["message"] and stopped.summary["steps"] == step
    # the newest progress line names the newest complete checkpoint (what status.lastCheckpoint shows)
    assert all(e.get("checkpointStep") is None for e in stopped.of("progress"))  # none was complete before the signal
    # nothing done is lost: every step logged before the ranks stopped is in the checkpoint (the step under way when
    # the signal came finished first; a tiny model makes several steps while the signal travels)
    assert step >= max(e["step"] for e in stopped.of("progress")) >= 5
    assert f"checkpoints/step-{step:06d}/COMPLETE" in s3.keys(out) and "_SUCCESS" not in s3.keys(out)

    resumed = run(body, s3, tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert resumed.of("resumed")[0] == {**resumed.of("resumed")[0], "step": step, "optimizerRestored": True}
    assert [e["step"] for e in resumed.of("progress")] == list(range(step + 1, TOTAL + 1))
    assert {e.get("checkpointStep") for e in resumed.of("progress")} == {step}

    whole = run(job("uninterrupted", s3, stored, "s3://adapters/uninterrupted/"), s3, tmp_path)
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]
    assert abs(resumed.summary["metrics"]["evalLoss"] - whole.summary["metrics"]["evalLoss"]) < 1e-4
    assert abs(resumed.summary["metrics"]["trainLoss"] - whole.summary["metrics"]["trainLoss"]) < 1e-4


def test_sigterm_before_training_ends_with_a_reason_and_nothing_to_resume(
    s3: S3Server, stored: dict[str, str], tmp_path: Path
) -> None:
    out = "s3://adapters/preempted-early/"
    body = job("preempted-early", s3, stored, out)
    first = start(body, s3, tmp_path)
    assert first.stdout is not None
    for line in first.stdout:  # the launcher fetches the model and data, then prepares the dataset
        if '"event": "fetch"' in line or '"event":"fetch"' in line:
            first.send_signal(signal.SIGTERM)
            break
    stdout, stderr = first.communicate(timeout=300)
    stopped = Outcome(first.returncode, stdout, stderr)
    assert stopped.returncode != 0 and stopped.summary["reason"] == "Preempted", stdout[-2000:] + stderr[-2000:]
    assert not [k for k in s3.keys(out) if k.startswith("checkpoints/")]
    again = run(body, s3, tmp_path)
    assert again.returncode == 0 and not again.of("resumed"), again.stdout[-3000:]
