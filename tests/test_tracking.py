"""MLflow tracking and registry (issue 26), against a real `mlflow server` (tests/mlflowserver.py): a run's
parameters, tags, live curves and final metrics read back through MLflow's own client and compared with
metrics.json; the version a succeeded run registers, with its lineage; a resumed run continuing the same MLflow run;
and the server stopped in the middle of a run, which trains on to the same end and says tracking is degraded."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from .mlflowserver import MlflowServer, start
from .s3server import S3Server
from .trainer_helpers import Outcome, resumable, run

pytestmark = pytest.mark.trainer

STEPS = 12


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    server = start(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


def tracked(name: str, s3: S3Server, stored: dict[str, str], **tracking: Any) -> dict[str, Any]:
    body = resumable(name, s3, stored, f"s3://adapters/{name}/", maxSteps=STEPS, logEverySteps=1, evalEverySteps=4)
    body["spec"]["output"]["tracking"] = {"experiment": "kubetune-tests", **tracking}
    return body


def history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_a_run_is_tracked_live_and_its_adapter_registered_with_its_lineage(
    mlflow: MlflowServer, s3: S3Server, stored: dict[str, str], tmp_path: Path
) -> None:
    body = tracked("tracked", s3, stored, registeredModel="support-adapter")
    figures = '{"totalSteps": 12, "memoryPerGpuBytes": 11967488, "gpuHours": 0.25, "evil": "x"}'  # as the operator passes them
    done = run(body, s3, tmp_path, MLFLOW_TRACKING_URI=mlflow.uri, KUBETUNE_PREFLIGHT=figures)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    said = done.summary["tracking"]
    assert said["experiment"] == "kubetune-tests" and said["registeredModel"] == "support-adapter"
    assert said["registeredVersion"] == "1" and "degraded" not in said, said
    client = mlflow.client()
    got = client.get_run(said["runId"])
    assert got.info.status == "FINISHED" and got.info.run_name == "tracked"
    params, tags = got.data.params, got.data.tags
    assert params["lora.r"] == "4" and params["training.maxSteps"] == str(STEPS) and params["model.uri"] == stored["model"]
    assert "storage.endpoint" not in params  # where the bucket is, not what was trained
    assert (params["preflight.totalSteps"], params["preflight.memoryPerGpuBytes"], params["preflight.gpuHours"]) == (
        "12",
        "11967488",
        "0.25",
    )
    assert "preflight.evil" not in params
    assert tags["kubetune.base-model"] == stored["model"] and tags["kubetune.job-name"] == "tracked"
    assert tags["kubetune.adapter-uri"] == "s3://adapters/tracked/adapter/"
    metrics = json.loads(s3.get("s3://adapters/tracked/metrics.json"))
    manifest = json.loads(s3.get("s3://adapters/tracked/manifest.json"))
    # the training curve, step by step, as metrics.json has it
    curve = [(p["step"], p["loss"]) for p in metrics["curves"]["train"]]
    logged = history(client, said["runId"], "loss")
    assert [s for s, _ in logged] == [s for s, _ in curve] == list(range(1, STEPS + 1))
    assert all(abs(a - b) < 1e-6 for (_, a), (_, b) in zip(logged, curve, strict=True))
    assert [s for s, _ in history(client, said["runId"], "eval.evalLoss")] == [4, 8]
    assert history(client, said["runId"], "base.evalLoss") == [(0, pytest.approx(metrics["base"]["evalLoss"]))]
    assert got.data.metrics["final.evalLoss"] == pytest.approx(metrics["final"]["evalLoss"])
    assert metrics["tracking"]["runId"] == said["runId"]  # metrics.json names the run
    version = client.get_model_version("support-adapter", "1")
    assert version.source == "s3://adapters/tracked/adapter/" and version.run_id == said["runId"]
    assert version.tags["kubetune.spec-sha256"] == manifest["specSha256"]
    assert client.get_run(said["runId"]).data.tags["kubetune.dataset.train.sha256"] == manifest["datasets"]["train"]["sha256"]
    assert version.tags["kubetune.dataset.train.sha256"] == manifest["datasets"]["train"]["sha256"]
    assert float(version.tags["heldout.final.evalLoss"]) == pytest.approx(metrics["final"]["evalLoss"])


def test_a_resumed_run_continues_the_same_mlflow_run(
    mlflow: MlflowServer, s3: S3Server, stored: dict[str, str], tmp_path: Path
) -> None:
    body = tracked("tracked-resumed", s3, stored, registerModel=False)
    env = {"MLFLOW_TRACKING_URI": mlflow.uri}
    process = _start_tracked(body, s3, tmp_path, env)
    _sigterm_after(process, steps=5)
    stdout, stderr = process.communicate(timeout=300)
    stopped = Outcome(process.returncode, stdout, stderr)
    assert stopped.summary["reason"] == "Preempted", stdout[-2000:] + stderr[-2000:]
    again = run(body, s3, tmp_path, **env)
    assert again.returncode == 0 and again.of("resumed"), again.stdout[-3000:] + again.stderr[-3000:]
    client = mlflow.client()
    (experiment,) = [e for e in client.search_experiments() if e.name == "kubetune-tests"]
    runs = client.search_runs([experiment.experiment_id], "tags.`kubetune.job-name` = 'tracked-resumed'")
    assert len(runs) == 1 and runs[0].info.run_id == again.summary["tracking"]["runId"]
    assert runs[0].info.status == "FINISHED"
    steps = {s for s, _ in history(client, runs[0].info.run_id, "loss")}
    assert steps == set(range(1, STEPS + 1))  # both attempts' curves in the one run
    assert "registeredVersion" not in again.summary["tracking"]  # registerModel: false


def test_the_tracking_server_going_away_never_stops_training(
    s3: S3Server, stored: dict[str, str], tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = start(tmp_path_factory.mktemp("mlflow-down"))
    body = tracked("tracked-down", s3, stored)
    # twice the steps after the server goes, so the tracker meets its absence while the run still prints progress
    # (on a loaded machine 9 steps could end before its next delivery and the progress lines would never say so)
    body["spec"]["training"]["maxSteps"] = 2 * STEPS
    # the end waits 15 s (a request in flight times out in 10), not production's 30, for what cannot be delivered
    process = _start_tracked(body, s3, tmp_path, {"MLFLOW_TRACKING_URI": server.uri, "KUBETUNE_TRACKING_CLOSE_SECONDS": "15"})
    try:
        lines = _lines_until(process, steps=2)
        server.stop()  # early in the run
        stdout, stderr = process.communicate(timeout=300)
    finally:
        server.stop()
    done = Outcome(process.returncode, "".join(lines) + stdout, stderr)
    log = tmp_path / "work-tracked-down" / "trainer.log"  # every rank's stderr, for a failure's cause
    said = log.read_text()[-4000:] if log.is_file() else ""
    assert done.returncode == 0 and done.summary["steps"] == 2 * STEPS, stdout[-2000:] + stderr[-2000:] + said
    outcome = done.summary["tracking"]
    assert outcome["degraded"] and "unavailable" in outcome["degraded"] and "registeredVersion" not in outcome, outcome
    assert any(p.get("trackingDegraded") for p in done.of("progress"))  # what status.tracking shows while it runs


def _start_tracked(body: dict[str, Any], s3: S3Server, tmp: Path, env: dict[str, str]) -> Any:
    import subprocess

    from .conftest import ROOT
    from .trainer_helpers import command, environment

    return subprocess.Popen(
        command(body, tmp), env=environment(s3, tmp, **env), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _lines_until(process: Any, steps: int) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + 300
    for line in process.stdout:
        seen.append(line)
        if sum('"event": "progress"' in s for s in seen) >= steps or time.monotonic() > deadline:
            break
    return seen


def _sigterm_after(process: Any, steps: int) -> None:
    _lines_until(process, steps)
    process.send_signal(signal.SIGTERM)
