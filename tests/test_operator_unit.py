"""The operator's pure parts: plan, builders and status derivation (fast tier, table-driven)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubetune_operator import builders, conditions, observation
from kubetune_operator.rbac import RULES

from .operator_helpers import plan_for


def container(job_obj: dict[str, Any]) -> dict[str, Any]:
    return job_obj["spec"]["template"]["spec"]["containers"][0]


def env_of(job_obj: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(job_obj)["env"]}


def test_indexed_job_one_pod_per_worker_with_the_contract() -> None:
    plan = plan_for(**{"spec.workers": {"replicas": 3, "gpusPerWorker": 8}})
    job_obj = builders.build_job(plan)
    spec = job_obj["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == ("Indexed", 3, 3, 0)
    env = env_of(job_obj)
    assert env["KUBETUNE_NUM_WORKERS"] == "3" and env["KUBETUNE_PROCS_PER_WORKER"] == "8"
    assert env["KUBETUNE_MASTER_ADDR"] == "job-0.job"
    assert container(job_obj)["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert container(job_obj)["command"] == ["python", "-m", "kubetune_trainer"]
    assert spec["template"]["spec"]["subdomain"] == builders.build_service(plan)["metadata"]["name"]
    assert job_obj["metadata"]["ownerReferences"][0] == {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "name": "job",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_pods_are_locked_down() -> None:
    pod = builders.build_job(plan_for())["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"
    }
    c = pod["containers"][0]["securityContext"]
    assert c == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def test_credentials_come_only_from_the_secret() -> None:
    plan = plan_for(**{"spec.storage": {"credentialsSecret": "s3-creds"}})
    env = env_of(builders.build_job(plan))
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY", "optional": False}
    }
    irsa = plan_for(**{"spec.storage": {"serviceAccountName": "trainer-irsa"}})
    job_obj = builders.build_job(irsa)
    assert job_obj["spec"]["template"]["spec"]["serviceAccountName"] == "trainer-irsa"
    assert not any(k.startswith("AWS_") for k in env_of(job_obj))


def test_the_tracking_server_and_its_credentials_come_from_the_platform_never_the_spec() -> None:
    import dataclasses

    tracked = dataclasses.replace(plan_for(), mlflow_uri="http://mlflow.mlflow:5000", mlflow_secret="mlflow-creds")
    env = env_of(builders.build_job(tracked))
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.mlflow:5000" and env["KUBETUNE_NAMESPACE"] == "team-a"
    for key in builders.TRACKING_KEYS:  # by reference, each optional: a token, or a user and password
        assert env[key] == {"secretKeyRef": {"name": "mlflow-creds", "key": key, "optional": True}}
    opted_out = plan_for(**{"spec.output.tracking": {"enabled": False}})
    opted_out = dataclasses.replace(opted_out, mlflow_uri="http://mlflow.mlflow:5000", mlflow_secret="mlflow-creds")
    assert not any(k.startswith("MLFLOW_") for k in env_of(builders.build_job(opted_out)))
    assert not any(k.startswith("MLFLOW_") for k in env_of(builders.build_job(plan_for())))  # no server configured
    # the preflight's figures go with the training Job, for the run; the preflight itself gets no tracking credentials
    figures = {"totalSteps": 40.0, "memoryPerGpuBytes": 11967488.0}
    assert json.loads(env_of(builders.build_job(tracked, figures))["KUBETUNE_PREFLIGHT"]) == figures
    preflight = builders.build_preflight_job(tracked)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert not any(e["name"].startswith("MLFLOW_") or e["name"] == "KUBETUNE_PREFLIGHT" for e in preflight)


@pytest.mark.parametrize(
    "raw",
    ['{"totalSteps": 40, "evil": "x", "records": "600"}', '{"totalSteps": 40, "gpuHours": NaN, "tokens": true}', "[40]", "{", ""],
)
def test_the_preflight_figures_a_run_reads_are_known_finite_numbers_only(raw: str) -> None:
    from kubetune_api.contract import preflight_figures

    figures = preflight_figures(raw)
    assert set(figures) <= {"totalSteps"} and all(v == 40.0 for v in figures.values())


@pytest.mark.parametrize(
    ("changes", "suspend", "queue"),
    [
        ({}, False, None),
        ({"spec.runPolicy": {"suspend": True}}, True, None),
        ({"metadata.labels": {"kueue.x-k8s.io/queue-name": "gpus"}}, True, "gpus"),
    ],
)
def test_suspend_and_kueue(changes: dict[str, Any], suspend: bool, queue: str | None) -> None:
    job_obj = builders.build_job(plan_for(**changes))
    assert job_obj["spec"]["suspend"] is suspend
    assert job_obj["metadata"]["labels"].get("kueue.x-k8s.io/queue-name") == queue
    assert "kueue.x-k8s.io/queue-name" not in job_obj["spec"]["template"]["metadata"]["labels"]


def test_placement_and_deadline_pass_through() -> None:
    plan = plan_for(
        **{
            "spec.workers": {
                "nodeSelector": {"gpu": "a100"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                "priorityClassName": "low",
            },
            "spec.runPolicy": {"activeDeadlineSeconds": 600},
        }
    )
    job_obj = builders.build_job(plan)
    pod = job_obj["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "a100"} and pod["priorityClassName"] == "low"
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert job_obj["spec"]["activeDeadlineSeconds"] == 600


def test_configmap_holds_the_resolved_spec_and_deepspeed_json() -> None:
    data = builders.build_configmap(plan_for(**{"spec.deepspeed": {"zeroStage": 3}}))["data"]
    assert "zeroStage: 3" in data["trainer.yaml"]
    assert json.loads(data["deepspeed.json"])["zero_optimization"]["stage"] == 3


def test_condition_time_moves_only_when_status_flips() -> None:
    first = conditions.set_condition([], "Running", False, "PodsPending", "waiting", 1)
    first[0].lastTransitionTime = "2000-01-01T00:00:00Z"
    same = conditions.set_condition(first, "Running", False, "Unschedulable", "no GPUs", 1)
    assert same[0].lastTransitionTime == "2000-01-01T00:00:00Z" and same[0].reason == "Unschedulable"
    flipped = conditions.set_condition(same, "Running", True, "Training", "2 workers", 1)
    assert flipped[0].lastTransitionTime != "2000-01-01T00:00:00Z"


def pod(
    index: int, phase: str, terminated: dict[str, Any] | None = None, waiting: dict[str, Any] | None = None
) -> dict[str, Any]:
    state = {"terminated": terminated} if terminated else ({"waiting": waiting} if waiting else {"running": {}})
    return {
        "metadata": {"name": f"job-{index}-x", "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
        "status": {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}]},
    }


def job_with(condition: str | None, reason: str = "", suspend: bool = False) -> dict[str, Any]:
    conditions = [{"type": condition, "status": "True", "reason": reason}] if condition else []
    return {"metadata": {"name": "job"}, "spec": {"suspend": suspend}, "status": {"conditions": conditions}}


SUCCESS = json.dumps({"event": "summary", "status": "Succeeded", "adapterUri": "s3://a/adapter/", "metrics": {"evalLoss": 1.0}})
FAILURE = json.dumps(
    {"event": "summary", "status": "Failed", "reason": "DatasetMissing", "message": "dataset not found: s3://d/x"}
)


@pytest.mark.parametrize(
    ("job_obj", "pods", "state", "reason"),
    [
        (None, [], "missing", ""),
        (job_with(None, suspend=True), [], "suspended", ""),
        (job_with(None), [pod(0, "Running"), pod(1, "Pending")], "pending", "PodsPending"),
        (job_with(None), [pod(0, "Running"), pod(1, "Running")], "running", ""),
        (job_with("Complete"), [pod(0, "Succeeded", {"exitCode": 0, "message": SUCCESS})], "succeeded", "Completed"),
        (
            job_with("Failed", "BackoffLimitExceeded"),
            [pod(1, "Failed", {"exitCode": 1, "message": FAILURE})],
            "failed",
            "DatasetMissing",
        ),
        (job_with("Failed", "DeadlineExceeded"), [], "failed", "DeadlineExceeded"),
        (
            job_with("Failed", "BackoffLimitExceeded"),
            [pod(0, "Succeeded", {"exitCode": 0, "message": SUCCESS}), pod(1, "Failed", {"exitCode": 137})],
            "succeeded",
            "Completed",
        ),
        (
            job_with(None),
            [pod(0, "Pending", waiting={"reason": "CreateContainerConfigError", "message": 'secret "s3" not found'})],
            "pending",
            "SecretMissing",
        ),
        (
            job_with(None),
            [pod(0, "Pending", waiting={"reason": "ImagePullBackOff", "message": "pull failed"})],
            "pending",
            "ImagePullFailed",
        ),
    ],
)
def test_observe(job_obj: dict[str, Any] | None, pods: list[dict[str, Any]], state: str, reason: str) -> None:
    obs = observation.observe(job_obj, pods, workers=2)
    assert (obs.state, obs.reason) == (state, reason)


def test_unschedulable_pods_show_the_schedulers_words() -> None:
    waiting = {
        "metadata": {"name": "job-0-x"},
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}
            ],
        },
    }
    assert observation.pending_reason([waiting]) == (
        "Unschedulable",
        "job-0-x: 0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
    )


def test_progress_from_rank0_lines() -> None:
    log = 'noise\n{"event": "progress", "step": 5, "totalSteps": 20, "epoch": 0.5, "loss": 2.0, "eta": "1m00s"}\n{"event": "eval"}\n'
    line = observation.last_progress(log)
    assert line is not None and observation.progress_status(line).summary == "5/20 (25%)"


def test_tracking_reaches_the_status_degraded_while_it_runs_and_its_run_at_the_end() -> None:
    from kubetune_api.contract import parse_summary
    from kubetune_api.status import FineTuneJobStatus

    said = '{"event": "progress", "step": 6, "totalSteps": 20, "trackingDegraded": "the tracking server is unavailable \\u001b[31m(URLError)"}'
    line = observation.last_progress(said + "\n")
    assert line is not None
    progress = observation.progress_status(line)
    assert progress.trackingDegraded == "the tracking server is unavailable (URLError)"  # escapes cleaned
    summary = parse_summary(
        '{"event": "summary", "status": "Succeeded", "steps": 20, "tracking": {"experiment": "team-a", "runId": "abc",'
        ' "registeredModel": "bot", "registeredVersion": "3"}}'
    )
    fields = observation.succeeded_fields(summary, "s3://out/bot/", progress)
    status = FineTuneJobStatus.model_validate(fields)
    assert status.tracking is not None and (status.tracking.runId, status.tracking.registeredVersion) == ("abc", "3")


def test_permanent_failures_do_not_restart() -> None:
    assert (
        "DatasetMissing" in observation.PERMANENT
        and "OutOfMemory" not in observation.PERMANENT
        and "TrainerError" not in observation.PERMANENT
    )


def test_rbac_never_reads_secrets() -> None:
    assert not any("secrets" in rule["resources"] for rule in RULES)


@pytest.mark.parametrize(
    ("env", "server"),
    [
        ({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}, "https://10.0.0.1:443"),
        ({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}, "https://[fd00::1]:6443"),
        ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, None),
        ({}, None),
    ],
)
def test_in_a_pod_the_operator_talks_to_the_api_server_the_kubelet_names(env: dict[str, str], server: str | None) -> None:
    from kubetune_operator.handlers import in_cluster_server

    assert in_cluster_server(env) == server


def test_the_rendered_deepspeed_json_is_the_derivation_the_trainer_runs() -> None:
    """The ConfigMap shows ds_config.deepspeed_config of the spec; the trainer calls the same function with what only
    the running job knows, and on the spec's world with bfloat16 gets the same config, bar a reduce bucket sized to the
    adapter (never larger)."""
    from kubetune_api.ds_config import deepspeed_config

    plan = plan_for(**{"spec.workers": {"replicas": 2, "gpusPerWorker": 4}})
    rendered = json.loads(builders.build_configmap(plan)["data"]["deepspeed.json"])
    ran = deepspeed_config(plan.spec, 8, on_gpu=True, bf16=True, trainable=4_000_000)
    assert (
        rendered["train_batch_size"]
        == ran["train_batch_size"]
        == 8 * plan.spec.training.microBatchSize * plan.spec.training.gradientAccumulationSteps
    )
    assert (
        ran["zero_optimization"].pop("reduce_bucket_size") == 4_000_000 < rendered["zero_optimization"].pop("reduce_bucket_size")
    )
    assert ran == rendered
    no_bf16 = deepspeed_config(plan.spec, 8, on_gpu=True, bf16=False)  # a GPU without bfloat16: float16, loss scaled
    assert "bf16" not in no_bf16 and no_bf16["fp16"]["enabled"]
    on_cpu = deepspeed_config(plan.spec, 2, on_gpu=False)
    assert "bf16" not in on_cpu and "fp16" not in on_cpu and on_cpu["optimizer"]["params"]["torch_adam"]


def test_the_trackers_bound_drops_the_oldest_metric_batches_never_the_runs_own_requests(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A tracking server that is away: past the bound the oldest metric batches go, while the request being
    delivered, the run's start and its end stay queued for when the server is back."""
    from kubetune_trainer.recipe import tracking

    monkeypatch.setattr(tracking, "QUEUE_LIMIT", 4)
    tracker = tracking.Tracker(tracking.Client("http://127.0.0.1:9", {}), "e", "key", "run")  # nothing listens
    tracker.start({}, {})
    for step in range(1, 8):
        tracker.metrics(step, {"loss": 1.0})
    tracker.finish("FINISHED")
    with tracker._lock:
        queued = [batch for _, batch in tracker._queue]
    assert queued[0] is False and queued[-1] is False and queued.count(True) == 3 and tracker.dropped == 4
    # the end's bound: close gives up on what the server never took, and the thread ends (none outlives the run)
    started = __import__("time").monotonic()
    said = tracker.close(seconds=1.0)
    assert __import__("time").monotonic() - started < 1.0 + tracking.TIMEOUT + 1
    assert said.runId is None and said.degraded and "not delivered" in said.degraded
    assert not tracker._thread.is_alive()


def test_every_api_request_of_the_operator_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kubernetes client waits for ever by default: an API server that takes the connection and never answers
    would hold a sync thread and its job's lock. The operator's client gives every request a timeout."""
    import socket
    import threading

    from kubernetes import client

    from kubetune_operator import kube

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (the kernel does), never answers
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{silent.getsockname()[1]}"
    configuration.retries = 0
    monkeypatch.setattr(kube, "REQUEST_TIMEOUT", (1, 1))
    api = client.CoreV1Api(kube.BoundedApiClient(configuration))
    raised: list[BaseException] = []

    def call() -> None:
        try:
            api.list_namespace()
        except Exception as exc:
            raised.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(120)  # a guard against this test hanging, not a speed check
    silent.close()
    assert not caller.is_alive(), "a request to a silent API server never ended"
    assert raised and "Read timed out" in str(raised[0]), raised
