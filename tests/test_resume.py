"""Kill one rank mid-run, start again: the run resumes from its newest complete checkpoint and finishes the plan."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil
import pytest

from .s3server import S3Server
from .trainer_helpers import Outcome, resumable, run, start

pytestmark = pytest.mark.trainer


def rank_process(launcher: int, rank: str) -> psutil.Process | None:
    for child in psutil.Process(launcher).children(recursive=True):
        try:
            if "kubetune_trainer.recipe.train" in " ".join(child.cmdline()) and child.environ().get("RANK") == rank:
                return child
        except psutil.Error:
            continue
    return None


def test_killed_rank_resumes_from_the_newest_checkpoint(s3: S3Server, stored: dict[str, str], tmp_path: Path) -> None:
    out = "s3://adapters/resume/"
    every, total = 4, 24
    body = resumable("resume", s3, stored, out, maxSteps=total, checkpointEverySteps=every, keepCheckpoints=2)
    first = start(body, s3, tmp_path)
    killed_after = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        if "checkpoints/step-000008/COMPLETE" in s3.keys(out):
            victim = rank_process(first.pid, "1")
            if victim is not None:
                victim.send_signal(signal.SIGKILL)
                killed_after = 8
                break
        time.sleep(0.2)
    stdout, stderr = first.communicate(timeout=300)
    killed = Outcome(first.returncode, stdout, stderr)
    assert killed_after is not None, "the first run ended before a rank could be killed: " + stdout[-2000:]
    assert killed.returncode != 0 and killed.summary["status"] == "Failed"
    assert "_SUCCESS" not in s3.keys(out)
    last_logged = max(e["step"] for e in killed.of("progress"))

    second = run(body, s3, tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    resumed = second.of("resumed")[0]
    assert resumed["optimizerRestored"] is True
    assert resumed["step"] % every == 0 and resumed["step"] >= killed_after
    # lost at most one checkpoint interval and the steps its background upload took before COMPLETE was written
    assert last_logged - resumed["step"] <= 2 * every
    steps = [e["step"] for e in second.of("progress")]
    assert steps == list(range(resumed["step"] + 1, total + 1))  # no step done twice in the second run, none skipped
    assert second.summary["steps"] == total
    kept = sorted({k.split("/")[0] for k in s3.keys(out + "checkpoints/")})
    assert len(kept) <= 2  # keepCheckpoints
