"""The third tenancy review (issue 39), one test per finding, in each layer it concerns."""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from kubetune_api import validate_object
from kubetune_api.contract import (
    TRACKING_CREDENTIALS,
    PreparingLine,
    ProgressLine,
    RankFailure,
    Summary,
    SummaryMetrics,
    TrackingOutcome,
    WorkerEnv,
)
from kubetune_api.policy import Policy
from kubetune_api.preflight_report import Report, parse_report
from kubetune_api.tracking import TrackingSpec, tracking_names
from kubetune_operator import builders
from kubetune_operator.plan import make_plan
from kubetune_operator.settings import Settings
from kubetune_trainer.launch import ranks_environ
from kubetune_trainer.rank_env import RankEnv

from ..conftest import job


# 2: MLflow's names are global; on a cluster they are bound to the namespace unless the policy shares them
@pytest.mark.parametrize(
    ("tracking", "namespace", "shared", "names"),
    [
        (None, "team-a", False, ("team-a", "team-a.support-bot")),
        ({"registeredModel": "support-bot"}, "team-b", False, ("team-b", "team-b.support-bot")),
        ({"experiment": "team-b", "registeredModel": "team-b.bot"}, "team-a", False, ("team-a/team-b", "team-a.team-b.bot")),
        ({"experiment": "team-a/evals", "registeredModel": "team-a.bot"}, "team-a", False, ("team-a/evals", "team-a.bot")),
        ({"experiment": "shared", "registeredModel": "prod-bot"}, "team-a", True, ("shared", "prod-bot")),
        ({"experiment": "mine"}, "", False, ("mine", "support-bot")),  # kubetune run: as written
        (None, "", False, ("kubetune", "support-bot")),
    ],
)
def test_tracking_names_are_bound_to_the_namespace(
    tracking: dict[str, Any] | None, namespace: str, shared: bool, names: tuple[str, str]
) -> None:
    settings = TrackingSpec.model_validate(tracking) if tracking is not None else None
    assert tracking_names(settings, namespace, "support-bot", shared) == names


def _tracked_env(policy: Policy | None) -> dict[str, Any]:
    body = job(**{"spec.output.tracking": {"registeredModel": "team-b.bot"}})
    body["metadata"]["namespace"] = "team-a"
    result = validate_object(body, cluster=True)
    assert result.job is not None, result.problems
    plan = make_plan(body, result.job, Settings(), policy=policy)
    plan = dataclasses.replace(plan, mlflow_uri="http://mlflow.mlflow:5000", mlflow_secret="team-a-mlflow")
    container = builders.build_job(plan)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_only_the_policy_shares_tracking_names() -> None:
    assert "KUBETUNE_SHARED_TRACKING_NAMES" not in _tracked_env(None)
    assert "KUBETUNE_SHARED_TRACKING_NAMES" not in _tracked_env(Policy())
    assert _tracked_env(Policy(sharedTrackingNames=True))["KUBETUNE_SHARED_TRACKING_NAMES"] == "true"
    # the credentials are the Secret in the job's own namespace: a platform gives each team its own MLflow user
    assert _tracked_env(None)["MLFLOW_TRACKING_TOKEN"]["secretKeyRef"]["name"] == "team-a-mlflow"


@pytest.mark.parametrize("worker_rank", [0, 1])
def test_only_worker_0s_ranks_get_the_tracking_credentials(
    worker_rank: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key in TRACKING_CREDENTIALS:
        monkeypatch.setenv(key, "secret")
    spec = validate_object(job()).job
    assert spec is not None
    worker = WorkerEnv(tmp_path / "c", "j", "u", 2, 1, worker_rank, "m", 29500, None)
    ranks = RankEnv("m", tmp_path / "t.jsonl", None, tmp_path, tmp_path / "r", "json", tmp_path / "p")
    env = ranks_environ(spec.spec, worker, ranks)
    held = [k for k in TRACKING_CREDENTIALS if k in env]
    assert held == (list(TRACKING_CREDENTIALS) if worker_rank == 0 else []), held
    assert os.environ["MLFLOW_TRACKING_TOKEN"] == "secret"  # the launcher's own environment is not changed


# 7: every number a pod's word carries is finite and bounded before it reaches the status (an Infinity in a
# preflight report made every later status write fail); the walk covers each model the operator reads from a pod
POD_WORDS: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (Report, {"passed": True}),
    (ProgressLine, {"event": "progress", "step": 1, "totalSteps": 2}),
    (PreparingLine, {"event": "preparing", "records": 1, "of": 2, "tokens": 3, "recordsPerSecond": 1.0, "etaSeconds": 1.0}),
    (Summary, {"status": "Succeeded"}),
    (SummaryMetrics, {}),
    (TrackingOutcome, {}),
    (RankFailure, {"rank": 0, "reason": "TrainerError", "message": "x"}),
]


def _numeric_fields(model: type[BaseModel]) -> list[str]:
    out = []
    for name, info in model.model_fields.items():
        kinds = {
            typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a
            for a in typing.get_args(info.annotation) or (info.annotation,)
        }
        if kinds & {int, float} and bool not in kinds:
            out.append(name)
    return out


@pytest.mark.parametrize(("model", "base"), POD_WORDS, ids=[m.__name__ for m, _ in POD_WORDS])
def test_every_number_from_a_pod_is_finite_and_bounded(model: type[BaseModel], base: dict[str, Any]) -> None:
    model.model_validate_json(json.dumps(base))  # the base is valid
    fields = _numeric_fields(model)
    assert fields or model is TrackingOutcome
    for name in fields:
        for bad in ("Infinity", "NaN", "-Infinity", "1e300", str(2**64)):
            text = json.dumps(base)[:-1] + ("," if base else "") + f' "{name}": {bad}}}'
            with pytest.raises(ValueError):
                model.model_validate_json(text)
    if model is Report:  # and as the operator reads it from the termination message
        assert parse_report('{"passed": true, "gpuHours": Infinity}') is None


# 3: any pod with the job-name label reaches the operator's watch: only pods of Jobs it made are kept, each as a
# few bounded fields, and never more than ended.LIMIT of them
def _preempted(uid: str, job_uid: str, padding: int = 0) -> dict[str, Any]:
    return {
        "metadata": {
            "uid": uid,
            "name": uid,
            "annotations": {"batch.kubernetes.io/job-completion-index": "0", "junk": "x" * padding},
            "labels": {"kubetune.dev/job-name": "victim"},
            "ownerReferences": [{"kind": "Job", "uid": job_uid, "controller": True}],
        },
        "status": {
            "phase": "Failed",
            "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "x", "message": "m" * padding}],
            "containerStatuses": [
                {"name": "trainer", "state": {"terminated": {"exitCode": 75, "message": "y" * padding}}, "junk": "z" * padding}
            ],
        },
    }


def test_the_operator_keeps_only_its_own_jobs_ended_pods_and_little_of_each() -> None:
    from kubetune_operator import ended

    ended.clear()
    for i in range(50):  # a tenant's own Jobs making look-alike pods
        ended.seen(_preempted(f"forged-{i}", "tenant-job", padding=100_000))
    assert ended.with_ended("tenant-job", []) == []
    ended.ours("workers-job")
    for i in range(ended.LIMIT + 10):
        ended.seen(_preempted(f"p-{i}", "workers-job", padding=10_000 if i < 5 else 0))
    kept = ended.with_ended("workers-job", [])
    assert len(kept) == ended.LIMIT and kept[0]["metadata"]["uid"] == "p-10"  # the oldest dropped
    size = max(len(json.dumps(p)) for p in kept)
    assert size < 6000, size  # the termination message's limit and a few short fields, whatever the pod carried
    assert "junk" not in json.dumps(kept[0])
    ended.clear()


# 5: a preempted worker's seconds go into the status when its end is first seen, once, and stay there
def test_preempted_seconds_are_counted_once_into_the_status_and_survive_a_restart() -> None:
    from kubetune_operator import ended

    from ..test_preempted_status import passed_preflight, plan, preempted_pod, replacement, run
    from ..test_transition import job as training_job

    running = {**passed_preflight(), "phase": "Running"}
    pods = [preempted_pod(0, "p0"), preempted_pod(1, "p1"), replacement(0), replacement(1)]
    status, _ = run(plan(), previous=running, job=training_job(), pods=pods)
    assert status["usage"]["preemptedPodSeconds"] == 2 * 1800.0 and status["usage"]["preemptedPods"] == ["p0", "p1"]
    again, _ = run(plan(), previous=status, job=training_job(), pods=pods)  # seen again: not counted again
    assert again["usage"]["preemptedPodSeconds"] == 2 * 1800.0
    ended.clear()  # the operator restarts and the pods are gone: the seconds stay in the status
    later, _ = run(plan(), previous=again, job=training_job(), pods=[replacement(0), replacement(1)])
    assert later["usage"]["preemptedPodSeconds"] == 2 * 1800.0 and later["usage"]["podSeconds"] >= 2 * 1800.0


# 4: GPU-hours are billed at the type the workers ran on (their node's product label), not the one the spec selects;
# the GPU resource itself is the policy's choice
def test_gpu_hours_are_billed_at_the_type_the_workers_ran_on() -> None:
    import json as _json

    from kubetune_operator.plan import billed_on

    from ..test_preempted_status import passed_preflight, plan
    from ..test_transition import job as training_job
    from ..test_transition import pod, run

    table = {
        "NVIDIA-L4": {"memory": "24Gi", "tflops": 30, "pricePerHour": 0.8},
        "NVIDIA-H100-80GB-HBM3": {"memory": "80Gi", "tflops": 400, "pricePerHour": 4.0},
        "NVIDIA-B200": {"memory": "180Gi", "tflops": 900, "pricePerHour": 9.0},
    }
    settings = Settings(gpu_types=_json.dumps(table), default_gpu_type="NVIDIA-H100-80GB-HBM3")
    cheap = plan(
        **{"spec.workers": {"replicas": 1, "gpusPerWorker": 8, "nodeSelector": {"node.kubernetes.io/instance-type": "p5"}}}
    )
    cheap = dataclasses.replace(cheap, gpu_type="NVIDIA-L4", gpu_price=0.8)  # what a spec-side guess would give
    ran = billed_on(cheap, "NVIDIA-B200", settings)
    assert (ran.gpu_type, ran.gpu_price) == ("NVIDIA-B200", 9.0)
    assert billed_on(cheap, "", settings) == cheap  # nothing scheduled yet: unchanged
    assert billed_on(cheap, "NVIDIA-Unknown", settings).gpu_price == 4.0  # not in the table: the default type's price
    done = training_job(condition="Complete")
    worker = pod(0, "Succeeded", started="2026-11-26T11:00:00Z", ended="2026-11-26T12:00:00Z")
    status, _ = run(ran, previous={**passed_preflight(), "phase": "Running"}, job=done, pods=[worker])
    assert status["usage"]["gpuType"] == "NVIDIA-B200" and status["usage"]["estimatedCost"] == pytest.approx(8 * 9.0, rel=0.01)


def test_the_gpu_resource_is_the_policys_choice() -> None:
    from kubetune_api.policy import check

    body = job(**{"spec.workers": {"replicas": 1, "gpusPerWorker": 1, "gpuResourceName": "example.com/cheap-gpu"}})
    spec = validate_object(body).job
    assert spec is not None
    (problem,) = check(spec.spec, "team-a", Policy())
    assert problem.path == "spec.workers.gpuResourceName" and "allowed: nvidia.com/gpu" in str(problem)
    assert check(spec.spec, "team-a", Policy(gpuResourceNames=["nvidia.com/gpu", "example.com/cheap-gpu"])) == []
    default = validate_object(job()).job
    assert default is not None and check(default.spec, "team-a", Policy()) == []


# 8: the vllm command quotes every word people paste into a shell; the server runs as the serving account
def test_serving_output_is_quoted_and_runs_as_the_serving_account(tmp_path: Path) -> None:
    import shlex

    from kubetune_api import serve
    from kubetune_api.job import FineTuneJob

    from ..conftest import kubetune

    body = job(
        **{
            "spec.output.uri": "s3://adapters/team-a/$(id>/tmp/pwned)/",
            "spec.model.uri": "s3://models/x;id/",
            "spec.storage": {"serviceAccountName": "trainer-writes-adapters"},
        }
    )
    parsed = FineTuneJob.model_validate(body)
    lines = serve.vllm_command(parsed).splitlines()
    fetches = [line.split(": ", 1)[1] for line in lines if "aws s3 cp" in line]
    assert len(fetches) == 2
    for fetch in fetches:  # each source is one word, inside single quotes: $(...) and ; do nothing when pasted
        words = shlex.split(fetch)
        assert words[:4] == ["aws", "s3", "cp", "--recursive"] and len(words) == 6, words
        assert shlex.quote(words[4]) in fetch and shlex.quote(words[4]).startswith("'")
    assert "serviceAccountName" not in serve.llm_inference_service(parsed)["spec"]["template"]
    served = serve.llm_inference_service(parsed, service_account="adapter-reader")
    assert served["spec"]["template"]["serviceAccountName"] == "adapter-reader"
    policy = tmp_path / "policy.yaml"
    policy.write_text("servingServiceAccount: adapter-reader\n")
    manifest = tmp_path / "job.yaml"
    manifest.write_text(json.dumps(job(**{"spec.storage": {"serviceAccountName": "trainer-writes-adapters"}})))
    out = kubetune("serve", "--policy", str(policy), str(manifest))
    assert out.returncode == 0, out.stderr
    assert "serviceAccountName: adapter-reader" in out.stdout and "trainer-writes-adapters" not in out.stdout


# 8: the webhook answers the API server's certificate name unless the platform lists others (or says any)
def test_the_webhook_names_default_to_the_api_servers() -> None:
    from kubetune_operator.settings import client_names

    assert client_names("") == ("kube-apiserver-webhook-client",)
    assert client_names("a, b") == ("a", "b") and client_names("*") == ()


# 8: the MLflow client never carries its token to another host
def test_the_tracking_token_does_not_follow_a_redirect_to_another_host() -> None:
    import http.server
    import threading

    from kubetune_trainer.recipe.tracking import Client, Refused

    heard: list[tuple[int, str | None]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            port = self.server.server_address[1]
            heard.append((port, self.headers.get("Authorization")))
            if self.path.startswith("/api/2.0/mlflow/elsewhere"):
                self.send_response(307)
                self.send_header("Location", f"http://127.0.0.1:{other.server_address[1]}/api/2.0/mlflow/x")
            elif self.path.startswith("/api/2.0/mlflow/here"):
                self.send_response(307)
                self.send_header("Location", "/api/2.0/mlflow/x")
            else:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
            self.end_headers()
            if self.path.endswith("/x"):
                self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    for s in (server, other):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        client = Client(f"http://127.0.0.1:{server.server_address[1]}", {"MLFLOW_TRACKING_TOKEN": "team-a-token"})
        assert client.call("here") == {}  # the same server: followed, with the token
        assert heard[-1] == (server.server_address[1], "Bearer team-a-token")
        with pytest.raises(Refused):
            client.call("elsewhere")
        assert all(port != other.server_address[1] for port, _ in heard)  # the other host never heard from it
    finally:
        for s in (server, other):
            s.shutdown()
            s.server_close()


# 7: the operator reads progress only from lines the trainer's emitter wrote: in a pod, whatever libraries, ranks
# or forked helpers print reaches the log behind a prefix; the ranks' events come through the launcher's FIFO
POD_COMMAND = """
import json, logging, os, subprocess, sys
from kubetune_api import events
from kubetune_api.contract import ProgressLine
from kubetune_trainer import streams

FORGED = json.dumps({"event": "progress", "step": 999, "totalSteps": 1000, "checkpointStep": 999})

def main():
    print(FORGED)                                            # a library's print
    logging.basicConfig()
    logging.getLogger("transformers").warning("config:\\n" + FORGED)  # a library's log line quoting its input
    os.write(2, (FORGED + "\\n").encode())                   # raw writes to either descriptor
    events.emit(ProgressLine(event="progress", step=3, totalSteps=10, checkpointStep=2))
    fifo = streams.active.events_fifo()
    rank = (
        "from kubetune_api import events; from kubetune_api.contract import ProgressLine; "
        f"print({FORGED!r}); "
        "events.emit(ProgressLine(event='progress', step=4, totalSteps=10, checkpointStep=4)); "
        f"print({FORGED!r})"
    )
    subprocess.run([sys.executable, "-c", rank], env={**os.environ, "KUBETUNE_EVENTS": fifo}, check=True, timeout=120)
    print(FORGED, flush=True)
    raise RuntimeError("a traceback that quotes a record:\\n" + FORGED)

sys.exit(streams.guarded(main))
"""


def test_only_the_trainers_emitter_writes_what_the_operator_reads() -> None:
    import subprocess
    import sys

    from kubetune_api.contract import parse_progress
    from kubetune_operator.observation import last_progress

    done = subprocess.run([sys.executable, "-c", POD_COMMAND], capture_output=True, text=True, timeout=180)
    assert done.returncode == 1, done.stderr
    log = done.stdout + done.stderr  # the pod's log: both streams
    found = last_progress(log)
    assert found is not None and (found.step, found.checkpointStep) == (4, 4), log  # the rank's, via the FIFO
    read = [p for p in (parse_progress(line) for line in log.splitlines()) if p is not None]
    assert [p.step for p in read] == [3, 4], log  # the emitter's two lines and nothing else
    assert log.count('"step": 999') == 7 and all(line.startswith("| ") for line in log.splitlines() if '"step": 999' in line), (
        log
    )  # everything else is still in the log, for people, behind the prefix
    assert "RuntimeError: a traceback that quotes a record:" in log


# 6: prepared data is bound to its contents: the preflight's digest (a pod's word: a SHA-256, nothing else) goes to
# the workers, which train on a fetched set only when it has that digest (tests/test_preflight.py: a tampered set)
def test_the_prepared_sets_digest_goes_from_the_preflight_to_the_workers() -> None:
    from kubetune_trainer.data import prepared

    digest = "ab" * 32
    body = job()
    result = validate_object(body, cluster=True)
    assert result.job is not None
    plan = make_plan(body, result.job, Settings())
    (container,) = builders.build_job(plan, {}, digest)["spec"]["template"]["spec"]["containers"]
    assert {"name": "KUBETUNE_PREPARED_SHA256", "value": digest} in container["env"]
    (bare,) = builders.build_job(plan)["spec"]["template"]["spec"]["containers"]
    assert not any(e["name"] == "KUBETUNE_PREPARED_SHA256" for e in bare["env"])
    assert parse_report(json.dumps({"passed": True, "preparedSha256": digest})) is not None
    for forged in ("AB" * 32, "ab" * 31, "ab" * 32 + "\nx", "../etc"):
        assert parse_report(json.dumps({"passed": True, "preparedSha256": forged})) is None
    assert set(prepared.FILES) == {"meta.json"} | {f"{p}.{k}.npy" for p in prepared.PARTS for k in prepared.ARRAYS}


# 8: the hostPath cache's bound holds for the node: each namespace's cache records its total beside the others',
# and evicts its own entries until the node's total fits; a pod mounts only its namespace's part of the node directory
def test_the_node_cache_bound_is_the_nodes_not_each_namespaces(tmp_path: Path) -> None:
    from kubetune_trainer.storage.model_cache import COMPLETE, ModelCache

    usage = tmp_path / ".usage"

    def filled(namespace: str, sizes: list[int]) -> ModelCache:
        cache = ModelCache(tmp_path / namespace, max_bytes=1000, usage=usage)
        for i, size in enumerate(sizes):
            entry = cache.root / f"key{i}"
            entry.mkdir(parents=True)
            (entry / COMPLETE).write_text(json.dumps({"bytes": size}))
            (cache.root / f"key{i}.used").touch()
            os.utime(cache.root / f"key{i}.used", (1000 + i, 1000 + i))
        return cache

    a = filled("team-a", [300, 300])
    assert a.make_room(0, keep="") == [] and (usage / "team-a.bytes").read_text() == "600"
    b = filled("team-b", [200])
    assert b.make_room(300, keep="") == ["key0"]  # 600 of team-a's + 200 + 300 > 1000: its own oldest goes
    assert (usage / "team-b.bytes").read_text() == "300"
    (usage / "team-c.bytes").write_text("not a number")  # ignored, as is anything beyond USAGE_LIMIT
    assert a.make_room(100, keep="") == []  # 600 + 300 + 100 = 1000: fits
    body = job(**{"metadata.namespace": "team-a"})
    pod = builders.build_job(
        make_plan(body, validate_object(body, cluster=True).job, Settings(model_cache="hostPath:/var/lib/m"))  # type: ignore[arg-type]
    )["spec"]["template"]["spec"]
    mounts = pod["containers"][0]["volumeMounts"]
    # only this namespace's directory and the totals' record are mounted, each where it sits in the node directory
    models = [m for m in mounts if m["name"] == "models"]
    assert models == [
        {"name": "models", "mountPath": f"{builders.MODEL_CACHE_DIR}/team-a", "subPath": "team-a"},
        {"name": "models", "mountPath": f"{builders.MODEL_CACHE_DIR}/.usage", "subPath": ".usage"},
    ]
    env = builders.build_job(
        make_plan(job(), validate_object(job(), cluster=True).job, Settings(model_cache="hostPath:/var/lib/m"))  # type: ignore[arg-type]
    )["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "KUBETUNE_MODEL_CACHE_USAGE", "value": f"{builders.MODEL_CACHE_DIR}/.usage"} in env
