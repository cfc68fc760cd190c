"""SIGTERM (a preemption, an eviction, a suspend): the ranks agree on a step, checkpoint it and end with reason
Preempted; the next run resumes there and ends with the adapter an uninterrupted run makes."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from kubetune_api.contract import EXIT_PREEMPTED

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
    seen, read = 0, []
    deadline = time.monotonic() + 300
    for line in first.stdout:  # progress lines are JSON, one per step
        read.append(line)
        if '"event": "progress"' in line or '"event":"progress"' in line:
            seen += 1
            if seen == after_step:
                first.send_signal(signal.SIGTERM)
                break
        if time.monotonic() > deadline:
            break
    stdout, stderr = first.communicate(timeout=300)
    return Outcome(first.returncode, "".join(read) + stdout, stderr), seen  # every line, those read before the signal too


def test_sigterm_checkpoints_the_step_and_the_resumed_run_matches_an_uninterrupted_one(
    s3: S3Server, stored: dict[str, str], tmp_path: Path
) -> None:
    out = "s3://adapters/preempted/"
    body = job("preempted", s3, stored, out)
    stopped, signalled_at = terminated(body, s3, tmp_path, after_step=5)
    assert signalled_at == 5, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    assert stopped.returncode == EXIT_PREEMPTED and stopped.summary["status"] == "Failed", stopped.stdout[-2000:]
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
    assert stopped.returncode == EXIT_PREEMPTED and stopped.summary["reason"] == "Preempted", stdout[-2000:] + stderr[-2000:]
    assert not [k for k in s3.keys(out) if k.startswith("checkpoints/")]
    again = run(body, s3, tmp_path)
    assert again.returncode == 0 and not again.of("resumed"), again.stdout[-3000:]


def signalled_on(body: dict[str, Any], s3: S3Server, tmp: Path, seen: Callable[[str], bool]) -> Outcome:
    """`kubetune run`, SIGTERM'd when a line it prints (or the storage it writes) says so."""
    first = start(body, s3, tmp)
    assert first.stdout is not None
    read = []
    for line in first.stdout:
        read.append(line)
        if seen(line):
            first.send_signal(signal.SIGTERM)
            break
    stdout, stderr = first.communicate(timeout=300)
    return Outcome(first.returncode, "".join(read) + stdout, stderr)


def test_sigterm_during_the_base_evaluation_ends_with_a_reason_and_the_next_run_starts_clean(
    s3: S3Server, stored: dict[str, str], tmp_path: Path
) -> None:
    from kubetune_trainer import tiny

    out = "s3://adapters/preempted-eval/"
    body = job("preempted-eval", s3, stored, out)
    # a held-out set large enough that the base evaluation lasts seconds, not the time a loaded machine takes to
    # pass the signal on (with the stored 80 records the ranks were at step 6 before they heard of it)
    held = tiny.write_jsonl(tmp_path / "held.jsonl", tiny.records(4000, seed=5))
    body["spec"]["dataset"]["validation"] = s3.put("data", "pc/held-large.jsonl", held.read_bytes())
    # the ranks' timing line for "resume" comes just before the base model's held-out evaluation
    stopped = signalled_on(body, s3, tmp_path, lambda line: '"phase": "resume"' in line or '"phase":"resume"' in line)
    assert stopped.returncode == EXIT_PREEMPTED and stopped.summary["reason"] == "Preempted", stopped.stdout[-2000:]
    assert "no step since the last checkpoint" in stopped.summary["message"] and not stopped.of("progress")
    assert not [k for k in s3.keys(out) if k.startswith("checkpoints/")]
    again = run(body, s3, tmp_path)
    assert again.returncode == 0 and not again.of("resumed"), again.stdout[-3000:]
    assert [e["step"] for e in again.of("progress")] == list(range(1, TOTAL + 1))


def test_sigterm_during_a_periodic_upload_waits_for_it_and_checkpoints_the_step_after(
    s3: S3Server, stored: dict[str, str], tmp_path: Path
) -> None:
    out = "s3://adapters/preempted-upload/"
    body = resumable("preempted-upload", s3, stored, out, maxSteps=TOTAL, logEverySteps=1, checkpointEverySteps=4)
    # the progress line of step 4 comes as its checkpoint's upload starts (in the background, training goes on)
    stopped = signalled_on(body, s3, tmp_path, lambda line: '"event": "progress"' in line and '"step": 4,' in line)
    assert stopped.returncode == EXIT_PREEMPTED and stopped.summary["reason"] == "Preempted", stopped.stdout[-2000:]
    written = sorted(e["step"] for e in stopped.of("checkpoint"))
    step = stopped.summary["steps"]
    assert written[0] == 4 and written[-1] == step >= 4  # the periodic one completed, then the step reached
    keys = s3.keys(out)
    assert all(f"checkpoints/step-{s:06d}/COMPLETE" in keys for s in written)
    resumed = run(body, s3, tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert resumed.of("resumed")[0]["step"] == step
    assert [e["step"] for e in resumed.of("progress")] == list(range(step + 1, TOTAL + 1))


def test_a_grace_period_that_runs_out_leaves_the_previous_checkpoint_and_nothing_partial_is_read(
    s3: S3Server, stored: dict[str, str], tmp_path: Path
) -> None:
    """The kubelet's SIGKILL at the end of the grace period, right after the SIGTERM: the just-in-time checkpoint
    never completes (its upload cut off leaves files without COMPLETE), the periodic one before it stands."""
    out = "s3://adapters/grace-ran-out/"
    body = resumable("grace-ran-out", s3, stored, out, maxSteps=TOTAL, logEverySteps=1, checkpointEverySteps=4)
    first = start(body, s3, tmp_path)
    assert first.stdout is not None
    for line in first.stdout:
        if '"event": "checkpoint"' in line and '"step": 4,' in line:  # step 4's checkpoint is COMPLETE
            everyone = [first.pid, *(p.pid for p in psutil.Process(first.pid).children(recursive=True))]
            first.send_signal(signal.SIGTERM)
            for pid in everyone:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            break
    first.communicate(timeout=120)
    assert first.returncode == -signal.SIGKILL
    keys = s3.keys(out)
    complete = sorted(k.split("/")[1] for k in keys if k.startswith("checkpoints/") and k.endswith("/COMPLETE"))
    assert complete and complete[0] == "step-000004", keys  # (a fast rank may have completed step 8's too)
    newest, at = complete[-1], int(complete[-1].removeprefix("step-"))
    # what a cut-off upload leaves: a later checkpoint's files, without COMPLETE
    partial = f"step-{at + 3:06d}"
    for key in [k for k in keys if k.startswith(f"checkpoints/{newest}/") and not k.endswith("COMPLETE")]:
        s3.put("adapters", f"grace-ran-out/{key.replace(newest, partial)}", s3.get(out + key))
    resumed = run(body, s3, tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert resumed.of("resumed")[0]["step"] == at and resumed.of("resumed")[0]["checkpoint"] == newest
    assert [e["step"] for e in resumed.of("progress")] == list(range(at + 1, TOTAL + 1))
