"""End to end, with the images users run: the chart installed with the operator image (one replica, in the cluster,
talking to the API server with a projected service-account token and exactly the chart's RBAC) and the trainer
image as every worker's image (`make images` builds both; the node agent runs each pod from its image's root
filesystem, read-only, as uid 1000). `kubectl apply` a two-worker ZeRO-2 FineTuneJob; the operator creates the
gang, the trainer pods train against a real S3 server (SeaweedFS), and the status tells the story. Then a worker
is killed mid-training: the gang restarts once from its checkpoint, takes the base model from the node's cache
(zero bytes from storage), and still succeeds; and a job whose dataset
is missing fails at once, saying why. The Argo CD and Flux health checks in examples/gitops/ are run against
each of these real status objects."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from kubetune_api.manifests import dump

from .cluster import images
from .cluster.plane import IN_CLUSTER_OPERATOR_USER, free_port
from .cluster_helpers import NAMESPACE, condition, credentials, ftj, manifest, namespace_with_credentials, wait_for
from .conftest import ROOT
from .gitops_health import argocd_health, flux_health
from .s3server import S3Server
from .trainer_helpers import reloaded_eval_loss

pytestmark = pytest.mark.e2e
# a second release of the chart in a namespace of the same name, its operator watching only this module's namespace;
# the test cluster's audit log keeps its ServiceAccount's requests
RELEASE = IN_CLUSTER_OPERATOR_USER.rpartition(":")[2]


MLFLOW_SECRET = "mlflow-credentials"
MLFLOW_TOKEN = "kubetune-e2e-mlflow-token-not-to-be-seen"


@pytest.fixture(scope="module")
def mlflow(plane, namespace, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The platform's MLflow server (tracking and registry), and its credentials Secret in the jobs' namespace."""
    from .mlflowserver import start

    server = start(tmp_path_factory.mktemp("mlflow"))
    plane.kubectl(
        "create", "secret", "generic", MLFLOW_SECRET, "-n", NAMESPACE, f"--from-literal=MLFLOW_TRACKING_TOKEN={MLFLOW_TOKEN}"
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def operator(plane, crd, node_agent, namespace, mlflow, platform_values, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The chart's operator Deployment, one replica running the operator image in the cluster; its workers run the
    trainer image. Yields a function that returns the operator pod's log."""
    missing = images.missing(images.OPERATOR, images.TRAINER)
    if missing:
        pytest.fail(f"images missing from podman's store: {', '.join(missing)}: run `make images` (hack/build-images.sh)")
    models = tmp_path_factory.mktemp("node-models")
    models.chmod(0o1777)  # trainer.modelCache.path as docs/platform.md says: each namespace's subPath gets its mode
    repository, _, tag = images.OPERATOR.rpartition(":")
    health = free_port()
    installed = plane.helm(
        "install",
        RELEASE,
        str(ROOT / "charts" / "kubetune"),
        "-n",
        RELEASE,
        "--create-namespace",
        "--skip-crds",  # the first release's, shared by the cluster
        "-f",
        str(platform_values),
        "--set",
        f"image.repository={repository},image.tag={tag},image.pullPolicy=Never,trainer.image={images.TRAINER}",
        "--set",
        f"policy.enforce=false,syncSeconds=2,waitSeconds=2,healthPort={health},metrics.port={free_port()}",
        "--set",
        f"trainer.modelCache.type=hostPath,trainer.modelCache.path={models}",
        "--set",
        f"tracking.mlflow.uri={mlflow.uri},tracking.mlflow.credentialsSecret={MLFLOW_SECRET}",
        "--set-json",
        f"watchNamespaces={json.dumps([NAMESPACE])}",
        "--set-json",  # with a GPU too small for any model, for WontFit
        'preflight.gpuTypes={"NVIDIA-H100-80GB-HBM3": {"memory": "80Gi", "tflops": 400, "pricePerHour": 4.0},'
        ' "kubetune-test-tiny": {"memory": "8Mi", "tflops": 1}}',
        check=False,
    )
    assert installed.returncode == 0, installed.stderr

    def log() -> str:
        return str(plane.kubectl("logs", f"deploy/{RELEASE}", "-n", RELEASE, check=False).stdout)

    def serving() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    try:
        wait_for("the operator pod serving /healthz", serving, timeout=120)
    except AssertionError:
        pods = plane.kubectl("get", "pods", "-n", RELEASE, "-o", "jsonpath={.items[*].status}", check=False).stdout
        raise AssertionError(f"the in-cluster operator never became healthy:\n{pods[-3000:]}\n{log()[-3000:]}") from None
    yield log
    print(f"\nthe in-cluster operator's log (last 20 kB):\n{log()[-20000:]}")
    plane.helm("uninstall", RELEASE, "-n", RELEASE, "--wait", check=False)


@pytest.fixture(scope="module")
def namespace(plane, s3: S3Server) -> str:  # type: ignore[no-untyped-def]
    return namespace_with_credentials(plane, s3, NAMESPACE)


def finished(plane, name: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The job once it has ended, which must be in success."""
    wait_for(
        "a finished job",
        lambda: (ftj(plane, name, NAMESPACE).get("status") or {}).get("phase") in ("Succeeded", "Failed"),
        timeout=420,
    )
    final = ftj(plane, name, NAMESPACE)
    assert final["status"]["phase"] == "Succeeded", json.dumps(final.get("status"), indent=1)
    return final


def apply_and_wait(plane, body: dict[str, Any], tmp_path: Path) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    path = tmp_path / f"{body['metadata']['name']}.yaml"
    path.write_text(dump(body))
    plane.kubectl("apply", "-f", str(path))
    name = body["metadata"]["name"]
    early = wait_for(
        "the first condition", lambda: condition(ftj(plane, name, NAMESPACE), "Validated") and ftj(plane, name, NAMESPACE)
    )
    assert early["status"]["phase"] in ("Preflight", "Pending", "Running")
    assert argocd_health(early)[0] == "Progressing" and flux_health(early) == "InProgress"
    final = finished(plane, name)
    waited = plane.kubectl("wait", "--for=condition=Succeeded", f"ftj/{name}", "-n", NAMESPACE, "--timeout=10s", check=False)
    assert waited.returncode == 0, waited.stderr  # what a user's pipeline runs
    return final


def test_two_worker_job_succeeds_and_its_adapter_reloads(
    plane, operator, node_agent, s3, stored, tiny_model, namespace, mlflow, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    body = manifest("e2e", s3, stored, {"epochs": 2, "evalEverySteps": 10, "checkpointEverySteps": 10})
    body["spec"]["evaluation"] = {  # a task: its score reaches the status and kubectl get ftj (docs/evaluation.md)
        "tasks": [{"name": "answers", "graders": [{"type": "chrf"}], "generation": {"maxNewTokens": 8}, "limit": 16}]
    }
    final = apply_and_wait(plane, body, tmp_path)
    status = final["status"]
    assert 0.0 <= status["metrics"]["baseTaskScore"] <= 1.0 and 0.0 <= status["metrics"]["taskScore"] <= 1.0
    assert status["phase"] == "Succeeded" and status.get("restarts", 0) == 0
    # the preflight ran first, on a CPU, and counted the steps the trainer then took
    assert status["preflight"]["passed"] and condition(final, "Preflight")["status"] == "True"
    assert status["preflight"]["totalSteps"] == status["progress"]["totalSteps"]
    assert status["preflight"]["records"] == 600 and status["preflight"]["memoryPerGpuBytes"] > 0
    assert status["usage"]["podSeconds"] > 0 and status["usage"]["lostShare"] == 0
    assert status["metrics"]["evalLoss"] < status["metrics"]["baseEvalLoss"]
    assert status["adapterUri"] == "s3://adapters/e2e/e2e/adapter/"
    assert status["progress"]["summary"].endswith("(100%)") and status["completionTime"] and status["startTime"]
    assert condition(final, "Running")["status"] == "False" and condition(final, "Succeeded")["reason"] == "Completed"
    assert argocd_health(final) == ("Healthy", "Adapter written to s3://adapters/e2e/e2e/adapter/")
    assert flux_health(final) == "Current"
    table = plane.kubectl("get", "ftj", "e2e", "-n", NAMESPACE).stdout
    assert "Succeeded" in table and f"{status['metrics']['evalLoss']}" in table and "TASK" in table.splitlines()[0]
    # every pod ran from its image: the workers and the preflight from the trainer image, the operator from its own
    ran = {
        pod["metadata"]["name"]: pod["status"]["containerStatuses"][0]["imageID"]
        for ns in (NAMESPACE, RELEASE)
        for pod in json.loads(plane.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]
    }
    assert {n: i.partition("@")[0] for n, i in ran.items()} == {
        **{n: images.TRAINER for n in ran if n.startswith("e2e-")},
        **{n: images.OPERATOR for n in ran if n.startswith(RELEASE)},
    }
    assert len([n for n in ran if n.startswith("e2e-")]) == 3  # two workers and the preflight
    # the workers started from the dataset the preflight prepared and left in storage: nothing tokenized again
    workers = [n for n in ran if n.startswith("e2e-") and "preflight" not in n]
    for pod in workers:
        lines = plane.kubectl("logs", pod, "-n", NAMESPACE).stdout.splitlines()
        prepared = [json.loads(line) for line in lines if line.startswith('{"event": "prepared"')]
        assert [e["source"] for e in prepared] == ["storage"], (pod, prepared)
    # the operator in its pod authenticated as the chart's ServiceAccount with its projected token, and the chart's
    # namespaced RBAC (watchNamespaces: [e2e]) refused it nothing
    user = IN_CLUSTER_OPERATOR_USER
    audit = [json.loads(line) for line in plane.audit_log.read_text().splitlines() if f'"{user}"' in line]
    done = [e for e in audit if e.get("stage") == "ResponseComplete" and e["user"]["username"] == user]
    assert {"finetunejobs", "jobs", "configmaps"} <= {(e.get("objectRef") or {}).get("resource") for e in done}
    assert not [e for e in done if (e.get("responseStatus") or {}).get("code") == 403]
    reloaded = reloaded_eval_loss(s3, "s3://adapters/e2e/e2e/", tiny_model, body["spec"]["dataset"], _held_out(), tmp_path)
    assert reloaded == pytest.approx(status["metrics"]["evalLoss"], abs=2e-4)
    # no credential anywhere a user or a log collector can read
    texts = [
        plane.kubectl("get", "ftj,configmap,job,service,event", "-n", NAMESPACE, "-o", "yaml").stdout,
        *(
            plane.kubectl("logs", pod, "-n", NAMESPACE).stdout
            for pod in plane.kubectl("get", "pods", "-n", NAMESPACE, "-o", "name").stdout.split()
        ),
        operator(),
    ]
    for text in texts:
        assert s3.secret_key not in text and MLFLOW_TOKEN not in text
    _tracked_in_mlflow(mlflow, final, s3)


def test_dpo_continues_from_the_sft_jobs_adapter(plane, operator, node_agent, s3, stored, namespace, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SFT, then DPO: a second FineTuneJob names the first's status.adapterUri as model.adapter and trains on
    preference pairs, the SFT adapter its starting point and its reference."""
    from kubetune_trainer import tiny

    sft = ftj(plane, "e2e", NAMESPACE)  # the SFT job of the first test
    assert (sft.get("status") or {}).get("phase") == "Succeeded", sft.get("status")
    train = tiny.write_jsonl(tmp_path / "t.jsonl", tiny.preference_records(300, seed=31, fmt="preference-chat"))
    held = tiny.write_jsonl(tmp_path / "v.jsonl", tiny.preference_records(40, seed=32, fmt="preference-chat"))
    body = manifest("e2e-dpo", s3, stored, {"epochs": 1, "evalEverySteps": 0, "learningRate": 5e-3, "microBatchSize": 4})
    spec = body["spec"]
    spec["model"]["adapter"] = sft["status"]["adapterUri"]
    spec["method"] = {"type": "dpo", "dpo": {"beta": 0.1}}
    spec["dataset"] = {
        "train": s3.put("data", "e2e-dpo/train.jsonl", train.read_bytes()),
        "validation": s3.put("data", "e2e-dpo/val.jsonl", held.read_bytes()),
        "format": "preference",
        "maxSeqLength": 64,
    }
    spec["output"]["minPreferenceAccuracy"] = 0.9
    final = apply_and_wait(plane, body, tmp_path)
    status = final["status"]
    assert status["preflight"]["records"] == 300 and status["preflight"]["totalSteps"] == status["progress"]["totalSteps"]
    assert status["metrics"]["basePreferenceAccuracy"] == 0.5  # the SFT adapter is where it starts and its reference
    assert status["metrics"]["preferenceAccuracy"] >= 0.9 and status["metrics"]["rewardMargin"] > 0
    table = plane.kubectl("get", "ftj", "e2e-dpo", "-n", NAMESPACE).stdout
    assert "PREF ACC" in table and f"{status['metrics']['preferenceAccuracy']:g}" in table.splitlines()[1].split()
    manifest_json = json.loads(s3.get("s3://adapters/e2e/e2e-dpo/manifest.json"))
    assert manifest_json["startAdapter"]["uri"] == sft["status"]["adapterUri"]


def _tracked_in_mlflow(mlflow: Any, final: dict[str, Any], s3: S3Server) -> Any:
    """The job's MLflow run, read back with MLflow's own client: the curves step by step as metrics.json has them,
    the spec as parameters, the job's tags, and the adapter's registered version with its lineage."""
    tracking = final["status"]["tracking"]
    name, uid, out = final["metadata"]["name"], final["metadata"]["uid"], final["spec"]["output"]["uri"]
    # MLflow's names are global: bound to the namespace (the policy's sharedTrackingNames is off)
    assert tracking["experiment"] == NAMESPACE and tracking["registeredModel"] == f"{NAMESPACE}.{name}"
    assert "degraded" not in tracking
    client = mlflow.client()
    run = client.get_run(tracking["runId"])
    assert run.info.status == "FINISHED" and run.data.tags["kubetune.job-uid"] == uid
    assert run.data.tags["kubetune.namespace"] == NAMESPACE and run.data.params["workers.replicas"] == "2"
    assert run.data.params["preflight.totalSteps"] == str(final["status"]["preflight"]["totalSteps"])  # its estimates
    metrics = json.loads(s3.get(out + "metrics.json"))
    curve = {p["step"]: p["loss"] for p in metrics["curves"]["train"]}
    logged = {m.step: m.value for m in client.get_metric_history(tracking["runId"], "loss")}
    assert logged.keys() == curve.keys() and all(abs(logged[s] - curve[s]) < 1e-6 for s in curve)
    version = client.get_model_version(f"{NAMESPACE}.{name}", tracking["registeredVersion"])
    assert version.source == final["status"]["adapterUri"] and version.run_id == tracking["runId"]
    assert version.tags["kubetune.base-model"] == final["spec"]["model"]["uri"]
    assert version.tags["kubetune.namespace"] == NAMESPACE
    return run


def _held_out() -> list[dict[str, Any]]:
    from kubetune_trainer import tiny

    return tiny.records(80, seed=2)


def rank_process(index: str) -> psutil.Process | None:
    for process in psutil.process_iter(["cmdline"]):
        try:
            if (
                "kubetune_trainer.recipe.train" in " ".join(process.info["cmdline"] or [])
                and process.environ().get("JOB_COMPLETION_INDEX") == index
            ):
                return process
        except psutil.Error:
            continue
    return None


def s3_listing(s3: S3Server, uri: str) -> list[tuple[str, int, str]]:
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [(o["Key"], o["Size"], o["ETag"]) for page in pages for o in page.get("Contents", [])]


def test_killed_worker_restarts_the_gang_from_its_checkpoint(
    plane, operator, node_agent, s3, stored, namespace, mlflow, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    name = "e2e-restart"
    body = manifest(name, s3, stored, {"maxSteps": 150, "microBatchSize": 4, "evalEverySteps": 0, "checkpointEverySteps": 10})
    path = tmp_path / "restart.yaml"
    path.write_text(dump(body))
    plane.kubectl("apply", "-f", str(path))
    out = f"s3://adapters/e2e/{name}/"
    victim = wait_for("worker 1's rank", lambda: rank_process("1"), timeout=300)
    assert victim.uids().real == 1000 and victim.gids().real == 1000  # the pod's user, in the trainer image
    assert "NoNewPrivs:\t1" in Path(f"/proc/{victim.pid}/status").read_text()  # allowPrivilegeEscalation: false
    wait_for("checkpoint step 10", lambda: "checkpoints/step-000010/COMPLETE" in s3.keys(out), timeout=300)
    victim.send_signal(signal.SIGKILL)
    wait_for("the gang restart", lambda: (ftj(plane, name, NAMESPACE).get("status") or {}).get("restarts") == 1, timeout=120)
    restarting = ftj(plane, name, NAMESPACE)
    assert restarting["status"]["lastFailureReason"]
    final = finished(plane, name)
    assert final["status"]["restarts"] == 1 and final["status"]["progress"]["totalSteps"] == 150
    # the ledger: the first gang's pod time is lost, counted once; the second's is not
    usage = final["status"]["usage"]
    assert usage["closedAttempts"] == 1 and 0 < usage["restartedPodSeconds"] < usage["podSeconds"]
    assert 0 < usage["lostShare"] < 1 and usage["lostShare"] == pytest.approx(
        usage["restartedPodSeconds"] / usage["podSeconds"], abs=1e-3
    )
    assert usage["gpuHours"] == 0  # CPU workers: pod time, no GPU-hours
    assert "GPU-HOURS" in plane.kubectl("get", "ftj", name, "-n", NAMESPACE).stdout
    events = plane.kubectl(
        "get", "events", "-n", NAMESPACE, "--field-selector", f"involvedObject.name={name}", "-o", "json"
    ).stdout
    assert "GangRestarting" in events
    assert "_SUCCESS" in s3.keys(out)
    logs = "".join(
        plane.kubectl("logs", pod, "-n", NAMESPACE).stdout
        for pod in plane.kubectl(
            "get", "pods", "-n", NAMESPACE, "-l", f"kubetune.dev/job-name={name}", "-o", "name"
        ).stdout.split()
    )
    assert '"event": "resumed"' in logs  # the second gang continued from a checkpoint instead of starting over
    # the second gang continued the first's MLflow run: one run for the job, every step's loss in it
    run = _tracked_in_mlflow(mlflow, final, s3)
    client = mlflow.client()
    runs = client.search_runs([run.info.experiment_id], f"tags.`kubetune.job-uid` = '{final['metadata']['uid']}'")
    assert [r.info.run_id for r in runs] == [run.info.run_id]
    assert {m.step for m in client.get_metric_history(run.info.run_id, "loss")} >= set(range(1, 151))
    fetched = json.loads(s3.get(out + "metrics.json"))["fetch"]  # worker 0 of the gang that finished
    model_bytes = sum(size for _, size, _ in s3_listing(s3, stored["model"]))
    assert fetched["fromStorage"] == 0 and fetched["fromCache"] == model_bytes  # the node's cache, verified


def test_missing_dataset_fails_at_once_and_says_why(plane, operator, node_agent, s3, stored, namespace, tmp_path) -> None:  # type: ignore[no-untyped-def]
    name = "e2e-missing-data"
    body = manifest(name, s3, stored, {"maxSteps": 5})
    body["spec"]["dataset"]["train"] = "s3://data/nowhere/train.jsonl"
    path = tmp_path / "missing.yaml"
    path.write_text(dump(body))
    plane.kubectl("apply", "-f", str(path))
    wait_for(
        "a failed job",
        lambda: (ftj(plane, name, NAMESPACE).get("status") or {}).get("phase") == "Failed",
        timeout=300,
    )
    final = ftj(plane, name, NAMESPACE)
    failed = condition(final, "Failed")
    assert failed["reason"] == "DatasetMissing" and "s3://data/nowhere/train.jsonl" in failed["message"]
    assert final["status"].get("restarts", 0) == 0  # a retry cannot fix a missing object: no gang restart
    health, message = argocd_health(final)
    assert health == "Degraded" and message.startswith("DatasetMissing: ")
    assert flux_health(final) == "Failed"
    # the preflight found it on a CPU: no training Job, so no GPU was ever requested; its log is kept
    assert final["status"]["preflight"]["passed"] is False
    assert plane.kubectl("get", "job", name, "-n", NAMESPACE, check=False).returncode != 0
    pods = plane.kubectl("get", "pods", "-n", NAMESPACE, "-l", f"kubetune.dev/job-name={name}", "-o", "name").stdout.split()
    assert len(pods) == 1 and "nowhere" in plane.kubectl("logs", pods[0], "-n", NAMESPACE).stdout


def _failed_in_preflight(plane, name: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    wait_for("a failed job", lambda: (ftj(plane, name, NAMESPACE).get("status") or {}).get("phase") == "Failed", timeout=300)
    final = ftj(plane, name, NAMESPACE)
    assert condition(final, "Preflight")["status"] == "False"
    assert plane.kubectl("get", "job", name, "-n", NAMESPACE, check=False).returncode != 0  # no training Job, no GPU pod
    pods = plane.kubectl("get", "pods", "-n", NAMESPACE, "-l", f"kubetune.dev/job-name={name}", "-o", "json").stdout
    for pod in json.loads(pods)["items"]:
        assert pod["metadata"]["labels"].get("kubetune.dev/role") == "preflight"
        limits = pod["spec"]["containers"][0]["resources"].get("limits", {})
        assert not any("gpu" in key for key in limits), limits
    return final


def test_a_bad_record_a_job_too_big_and_an_unwritable_output_fail_in_preflight(
    plane, operator, node_agent, s3, stored, namespace, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    s3.put("data", "e2e/bad.jsonl", b'{"prompt": "a", "completion": "b"}\n' * 3 + b'{"prompt": "a"}\n')
    credentials(plane, NAMESPACE, "s3-readonly", s3.readonly_env["AWS_ACCESS_KEY_ID"], s3.readonly_env["AWS_SECRET_ACCESS_KEY"])
    bad = manifest("e2e-bad-record", s3, stored, {"maxSteps": 5})
    bad["spec"]["dataset"]["train"] = "s3://data/e2e/bad.jsonl"
    big = manifest("e2e-too-big", s3, stored, {"maxSteps": 5})
    big["spec"]["workers"] = {"replicas": 1, "gpusPerWorker": 1, "nodeSelector": {"nvidia.com/gpu.product": "kubetune-test-tiny"}}
    readonly = manifest("e2e-read-only", s3, stored, {"maxSteps": 5})
    readonly["spec"]["storage"]["credentialsSecret"] = "s3-readonly"
    for body in (bad, big, readonly):
        path = tmp_path / f"{body['metadata']['name']}.yaml"
        path.write_text(dump(body))
        plane.kubectl("apply", "-f", str(path))
    failed = condition(_failed_in_preflight(plane, "e2e-bad-record"), "Failed")
    assert failed["reason"] == "BadRecord" and "bad.jsonl record 4: missing field 'completion'" in failed["message"]
    final = _failed_in_preflight(plane, "e2e-too-big")
    failed = condition(final, "Failed")
    assert failed["reason"] == "WontFit" and "kubetune-test-tiny" in failed["message"], failed
    assert "needs about" in final["status"]["preflight"]["suggestion"]
    assert final["status"]["preflight"]["gpuType"] == "kubetune-test-tiny"
    failed = condition(_failed_in_preflight(plane, "e2e-read-only"), "Failed")
    assert failed["reason"] == "AccessDenied" and "s3://adapters/e2e/e2e-read-only/" in failed["message"], failed
