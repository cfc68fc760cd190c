"""How a run finishes: early stopping, the best adapter rather than the last, and a quality gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .s3server import S3Server
from .trainer_helpers import manifest, run

pytestmark = pytest.mark.trainer


def spec(stored: dict[str, str], out: str, training: dict[str, Any], output: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "model": {"uri": stored["model"]},
        "dataset": {"train": stored["train"], "validation": stored["validation"], "maxSeqLength": 128},
        "lora": {"r": 4, "alpha": 8},
        "training": {"microBatchSize": 4, "checkpointEverySteps": 0, "scheduler": "constant", "warmupSteps": 0, **training},
        "output": {"uri": out, **(output or {})},
    }


def test_early_stopping_stops_when_the_held_out_loss_stalls(s3: S3Server, stored: dict[str, str], tmp_path: Path) -> None:
    out = "s3://adapters/outcomes/early/"
    training = {"maxSteps": 30, "learningRate": 1e-9, "evalEverySteps": 1, "earlyStopping": {"patience": 2, "minDelta": 0.01}}
    outcome = run(manifest("early", s3, spec(stored, out, training)), s3, tmp_path, processes=1)
    assert outcome.returncode == 0, outcome.stdout[-2000:] + outcome.stderr[-2000:]
    (stopped,) = outcome.of("earlyStopping")
    assert stopped["stoppedAtStep"] == 3  # step 1 sets the reference, steps 2 and 3 do not beat it by 0.01
    metrics = json.loads(s3.get(out + "metrics.json"))
    assert metrics["train"]["steps"] == 3 and metrics["train"]["earlyStopping"]["stoppedAtStep"] == 3
    assert "did not improve by more than 0.01 for 2 evaluations" in metrics["train"]["earlyStopping"]["reason"]
    assert max(e["step"] for e in outcome.of("progress")) == 3
    assert "stopped early at step 3" in outcome.summary["message"]
    assert "_SUCCESS" in s3.keys(out)


def one_word(s3: S3Server, stored: dict[str, str]) -> dict[str, str]:
    """The stored datasets with training records that teach one repeated word: the held-out loss falls at first
    (the format is learned), then climbs as the model learns to say nothing else. Best and last differ by design,
    not by the noise of a tiny model's curve."""
    records = [{"prompt": f"Question {i}: what is {i} plus {i}?", "completion": " zz" * 40} for i in range(200)]
    train = s3.put("data", "outcomes/one-word.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
    return {**stored, "train": train}


@pytest.fixture(scope="module")
def best_run(s3: S3Server, stored: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run on one_word with a checkpoint at step 10, shared: what it wrote (read before anything changes it) is
    what test_the_best_adapter_is_written_not_the_last checks, and test_the_best_adapter_survives_a_gang_restart
    restarts it."""
    out = "s3://adapters/outcomes/best-restart/"
    training = {"maxSteps": 12, "learningRate": 0.05, "evalEverySteps": 2, "checkpointEverySteps": 10}
    body = manifest("best-restart", s3, spec(one_word(s3, stored), out, training))
    first = run(body, s3, tmp_path_factory.mktemp("best-first"))
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    return {"out": out, "body": body, "outcome": first, "metrics": json.loads(s3.get(out + "metrics.json"))}


def test_the_best_adapter_is_written_not_the_last(best_run: dict[str, Any]) -> None:
    """The held-out loss falls, then climbs (one_word). The adapter written is the one of the lowest evaluation, and
    reloads to exactly that loss."""
    outcome, metrics = best_run["outcome"], best_run["metrics"]
    losses = {h["step"]: h["evalLoss"] for h in metrics["history"]}
    best = min(losses, key=lambda s: losses[s])
    assert best != max(losses), f"the loss never climbed back: {losses}"  # the case this test is about
    assert metrics["adapter"] == {"choice": "best", "step": best}
    assert metrics["final"]["evalLoss"] == losses[best] and metrics["last"]["evalLoss"] == losses[max(losses)]
    assert f"adapter from step {best} (best)" in outcome.summary["message"]
    assert outcome.summary["metrics"]["evalLoss"] == pytest.approx(losses[best])


def test_an_adapter_below_the_quality_gate_is_not_marked_done(s3: S3Server, stored: dict[str, str], tmp_path: Path) -> None:
    out = "s3://adapters/outcomes/gate/"
    training = {"maxSteps": 2, "evalEverySteps": 0}
    body = spec(stored, out, training, {"minImprovement": 0.95, "minTaskScore": {"exact": 1.0}})  # a task no tiny model aces
    body["evaluation"] = {"tasks": [{"name": "exact", "graders": [{"type": "exactMatch"}], "limit": 8, "samples": 2}]}
    outcome = run(manifest("gate", s3, body), s3, tmp_path, processes=1)
    assert outcome.returncode == 1
    assert outcome.summary["reason"] == "BelowThreshold"
    assert "output.minImprovement asks for 95.0%" in outcome.summary["message"]
    assert "the adapter's score on task exact is 0.000; output.minTaskScore asks for 1.0" in outcome.summary["message"]
    keys = s3.keys(out)
    assert "_SUCCESS" not in keys and "metrics.json" in keys and any(k.startswith("adapter/") for k in keys)
    assert "samples.jsonl" in keys  # what it answered stays to be read
    gate = json.loads(s3.get(out + "metrics.json"))["qualityGate"]
    assert gate["passed"] is False and gate["minImprovement"] == 0.95 and gate["improvement"] < 0.95
    assert gate["minTaskScore"] == {"exact": 1.0} and gate["taskScore"] == {"exact": 0.0}


def test_the_best_adapter_survives_a_gang_restart(s3: S3Server, best_run: dict[str, Any], tmp_path: Path) -> None:
    """The best adapter is kept beside the checkpoints: a gang that died after its step-10 checkpoint, restarted on
    a fresh node (a new work directory, so nothing local survives), still writes the best one, not the last."""
    out, body, first = best_run["out"], best_run["body"], best_run["outcome"]
    evals = {e["step"]: e["evalLoss"] for e in first.of("eval") if e["model"] == "adapter"}
    best = min(evals, key=lambda s: evals[s])
    assert best <= 10, f"the loss still fell at step 12: {evals}"  # the best was evaluated before the checkpoint
    # the gang "dies" after its step-10 checkpoint: what a finished run adds beyond it is not there
    client = s3.client()
    client.delete_object(Bucket="adapters", Key="outcomes/best-restart/_SUCCESS")
    for key in [k for k in s3.keys(out) if k.startswith("adapter/")]:
        client.delete_object(Bucket="adapters", Key=f"outcomes/best-restart/{key}")
    (tmp_path / "second").mkdir()
    second = run(body, s3, tmp_path / "second")
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert second.of("resumed")[0]["step"] == 10
    metrics = json.loads(s3.get(out + "metrics.json"))
    assert metrics["adapter"] == {"choice": "best", "step": best}
    assert metrics["final"]["evalLoss"] == pytest.approx(evals[best])
