"""The second tenancy review (issue 21), one test per attack, in every layer it concerns: pydantic, the CRD's CEL
(offline, tests/schema_layer.py), the platform policy (offline, and as the ValidatingAdmissionPolicy's rules), the
operator's builders and status derivation, and the trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kubetune_api import validate_object
from kubetune_api.policy import Policy, PolicyError, check, load_policy
from kubetune_api.preflight_report import parse_report
from kubetune_api.status import FineTuneJobStatus
from kubetune_operator import builders
from kubetune_operator.observation import observe
from kubetune_operator.plan import make_plan
from kubetune_operator.settings import Settings
from kubetune_trainer.loaders import without_loaders

from ..conftest import job
from ..data_helpers import read_records
from ..schema_layer import error_paths

# 1, 2, 15: workers.env is an allow-list; each of these loads code, exposes devices, redirects traffic, changes
# torchrun's options or is a credential the old name heuristic let through
REFUSED_ENV = [
    "OPENSSL_CONF",
    "OPENSSL_MODULES",
    "CUDA_INJECTION64_PATH",
    "NCCL_NET_PLUGIN",
    "NCCL_TUNER_PLUGIN",
    "NCCL_PROFILER_PLUGIN",
    "GCONV_PATH",
    "PET_NPROC_PER_NODE",
    "HF_MODULES_CACHE",
    "HTTPS_PROXY",
    "http_proxy",
    "TMPDIR",
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "DB_PASS",
    "GITHUB_PAT",
    "SIGNING_KEY",
    "LD_PRELOAD",
    "PYTHONPATH",
    "KUBETUNE_CONFIG",
]


@pytest.mark.parametrize("name", REFUSED_ENV)
def test_env_outside_the_allow_list_is_refused_in_pydantic_and_the_crd(name: str) -> None:
    body = job(**{"spec.workers.env": [{"name": "NCCL_DEBUG", "value": "WARN"}, {"name": name, "value": "/x"}]})
    for cluster in (False, True):  # kubetune run refuses them too: they would load code on a laptop as well
        problems = validate_object(body, cluster=cluster).problems
        assert [p.path for p in problems] == ["spec.workers.env"], problems
        assert "may set only the variables the trainer honours" in problems[0].message
    assert error_paths(body) == ["spec.workers.env"]


def test_the_allowed_variables_pass_and_reach_the_pod() -> None:
    body = job(**{"spec.workers.env": [{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": "OMP_NUM_THREADS", "value": "4"}]})
    body["metadata"]["uid"] = "u-1"
    result = validate_object(body, cluster=True)
    assert result.job is not None and error_paths(body) == []
    env = _env(body)
    assert env["NCCL_DEBUG"] == "INFO" and env["PYTHONSAFEPATH"] == "1" and env["PYTHONNOUSERSITE"] == "1"


def test_the_launcher_drops_loader_variables_before_anything_reads_them() -> None:
    """Whatever put them in the pod (a platform's webhook, an image), the launcher drops them before ssl, hashlib or
    torch load, and the ranks' environment never has them."""
    planted = {"OPENSSL_CONF": "/x", "CUDA_INJECTION64_PATH": "/x.so", "LD_PRELOAD": "/x.so", "PET_NNODES": "9"}
    kept = without_loaders({**planted, "NCCL_DEBUG": "WARN", "PATH": "/usr/bin"})
    assert kept == {"NCCL_DEBUG": "WARN", "PATH": "/usr/bin"}
    names = sorted(planted)
    probe = (
        "import json, os, runpy\n"
        "import kubetune_trainer.launch as launch\n"
        f"launch.main = lambda: print(json.dumps(sorted(k for k in os.environ if k in {names!r}))) or 0\n"
        "runpy.run_module('kubetune_trainer', run_name='__main__')\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, **planted}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1].removeprefix("| ")) == []  # printed: behind the pod log's prefix
    # the drop happens before OpenSSL is loaded (it reads OPENSSL_CONF when it starts)
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, kubetune_trainer.loaders; print('_hashlib' in sys.modules)"],
        capture_output=True,
        text=True,
    )
    assert loaded.stdout.strip() == "False"


# 3, 10: local paths and dot segments in a cluster job; the same manifest is fine for kubetune run
LOCAL = [
    ({"spec.model.uri": "/var/cache/kubetune-models/team-b/abc/"}, "spec.model.uri"),
    ({"spec.model.uri": "../other/"}, "spec.model.uri"),
    ({"spec.dataset.train": "/var/cache/kubetune-models/"}, "spec.dataset.train"),
    ({"spec.dataset.validation": "./v.jsonl"}, "spec.dataset.validation"),
    ({"spec.output.uri": "/var/cache/kubetune-models/team-b/"}, "spec.output.uri"),
    ({"spec.dataset.train": "s3://datasets/team-a/../team-b/train.jsonl"}, "spec.dataset.train"),
    ({"spec.output.uri": "s3://adapters/team-a/./../team-b/"}, "spec.output.uri"),
    ({"spec.model.uri": "s3://models/team-a/.."}, "spec.model.uri"),
]


@pytest.mark.parametrize(("changes", "path"), LOCAL, ids=[c[1] + str(i) for i, c in enumerate(LOCAL)])
def test_local_paths_and_dot_segments_are_refused_in_every_cluster_layer(changes: dict[str, Any], path: str) -> None:
    body = job(**changes)
    problems = validate_object(body, cluster=True).problems
    assert [p.path for p in problems] == [path], problems
    assert "a cluster job" in problems[0].message
    assert error_paths(body) == [path]


def test_local_paths_stay_fine_for_kubetune_run() -> None:
    body = job(**{"spec.model.uri": "./models/tiny/", "spec.dataset.train": "./t.jsonl", "spec.output.uri": "./out/"})
    assert validate_object(body).problems == []


def test_hub_models_need_the_policy() -> None:
    spec = validate_object(job(**{"spec.model.uri": "meta-llama/Llama-3.2-1B"}), cluster=True).job
    assert spec is not None
    denied = check(spec.spec, "team-a", Policy())
    assert [p.path for p in denied] == ["spec.model.uri"] and "models from a hub" in denied[0].message
    assert check(spec.spec, "team-a", Policy(allowHubModels=True)) == []


@pytest.mark.parametrize(
    ("entries", "words"),
    [
        ("readPrefixes: ['s3://datasets/team']", "ends with /"),
        ("writePrefixes: ['s3://adapters/{namespace}']", "ends with /"),
        ("readPrefixes: ['s3://datasets/../']", "without . or .. segments"),
        ("images: ['registry.corp/kubetune']", "ends with /, : or @"),
    ],
)
def test_prefixes_match_whole_segments(tmp_path: Path, entries: str, words: str) -> None:
    """`s3://datasets/team` would cover `s3://datasets/team-b/`; an image prefix `registry.corp/kubetune` would cover
    `registry.corp/kubetune-evil/...`: such entries are refused when the policy is read."""
    path = tmp_path / "policy.yaml"
    path.write_text(entries + "\n")
    with pytest.raises(PolicyError, match=words):
        load_policy(path)


# 5: devices in workers.resources escape maxGpusPerJob and the ledger
@pytest.mark.parametrize("side", ["requests", "limits"])
@pytest.mark.parametrize("resource", ["nvidia.com/gpu", "amd.com/gpu", "example.com/none", "google.com/tpu", "rdma/ib"])
def test_devices_come_only_from_gpus_per_worker(resource: str, side: str) -> None:
    body = job(
        **{
            "spec.workers": {
                "replicas": 256,
                "gpusPerWorker": 0,
                "gpuResourceName": "example.com/none",
                "resources": {side: {resource: 8}},
            }
        }
    )
    problems = validate_object(body, cluster=True).problems
    assert [p.path for p in problems] == [f"spec.workers.resources.{side}"], problems
    assert "GPUs and other devices come from gpusPerWorker" in problems[0].message
    assert error_paths(body) == [f"spec.workers.resources.{side}"]


def test_plain_resources_pass() -> None:
    body = job(**{"spec.workers.resources": {"requests": {"cpu": "8", "memory": "64Gi", "ephemeral-storage": "1Ti"}}})
    assert validate_object(body, cluster=True).problems == [] and error_paths(body) == []


# 8: the endpoint is the platform's to allow, and takes no path
def test_an_endpoint_path_is_refused_in_both_layers() -> None:
    body = job(**{"spec.storage.endpoint": "https://s3.example.com/other-bucket"})
    assert [p.path for p in validate_object(body, cluster=True).problems] == ["spec.storage.endpoint"]
    assert error_paths(body) == ["spec.storage.endpoint"]


def test_endpoints_outside_the_policy_are_refused() -> None:
    spec = validate_object(job(**{"spec.storage.endpoint": "http://169.254.169.254"}), cluster=True).job
    assert spec is not None
    denied = check(spec.spec, "team-a", Policy(endpoints=["https://s3.corp.example"]))
    assert [p.path for p in denied] == ["spec.storage.endpoint"]
    assert "allowed: https://s3.corp.example" in denied[0].message
    assert check(spec.spec, "team-a", Policy(endpoints=["http://169.254.169.254"])) == []


# 15: a credential source can be required, and no Secret is allowed unless the policy names it
def test_credentials_are_named_by_the_policy_and_can_be_required() -> None:
    spec = validate_object(job(**{"spec.storage.credentialsSecret": "platform-root-keys"}), cluster=True).job
    assert spec is not None
    assert [p.path for p in check(spec.spec, "team-a", Policy())] == ["spec.storage.credentialsSecret"]
    bare = validate_object(job(), cluster=True).job
    assert bare is not None
    denied = check(bare.spec, "team-a", Policy(requireCredentialSource=True))
    assert [p.path for p in denied] == ["spec.storage"] and "requires a credential source" in denied[0].message


# 4: the node cache is keyed per namespace and bounded
def test_the_node_cache_is_per_namespace_and_bounded() -> None:
    body = job(**{"metadata.namespace": "team-a"})
    body["metadata"]["uid"] = "u-1"
    result = validate_object(body, cluster=True)
    assert result.job is not None
    plan = make_plan(body, result.job, Settings(model_cache="hostPath:/var/lib/kubetune/models"))
    env = {e["name"]: e.get("value") for e in builders.build_job(plan)["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBETUNE_MODEL_CACHE"] == f"{builders.MODEL_CACHE_DIR}/team-a"
    assert int(env["KUBETUNE_MODEL_CACHE_MAX_BYTES"]) == builders.HOSTPATH_MAX_BYTES


def test_unlisted_and_stale_files_never_stay_in_the_cache(tmp_path: Path) -> None:
    from kubetune_trainer.storage.base import Object
    from kubetune_trainer.storage.model_cache import COMPLETE, ModelCache, unlisted

    entry = tmp_path / "key"
    (entry / "sub").mkdir(parents=True)
    (entry / "config.json").write_text("{}")
    (entry / COMPLETE).write_text("{}")
    (entry / "adapter_config.json").write_text("{}")  # planted beside the model
    (entry / "sub" / "chat_template.jinja").write_text("x")
    objects = [Object("config.json", 2, "etag")]
    assert sorted(p.name for p in unlisted(entry, objects)) == ["adapter_config.json", "chat_template.jinja"]
    cache = ModelCache(tmp_path)
    stale = tmp_path / "old.partial"
    stale.mkdir()
    fresh = tmp_path / "new.partial"
    fresh.mkdir()
    old = time.time() - 2 * 24 * 3600
    os.utime(stale, (old, old))
    assert cache.evict_stale_partials() == ["old"]
    assert not stale.exists() and fresh.exists()


# 6: what the pods read is fixed with the Job
def test_the_job_records_what_its_pods_read() -> None:
    from kubetune_api.job import pods_digest
    from kubetune_operator.observation import reads_spec

    body = job(**{"spec.runPolicy": {"suspend": True}})
    body["metadata"]["uid"] = "u-1"
    result = validate_object(body, cluster=True)
    assert result.job is not None
    made = builders.build_job(make_plan(body, result.job, Settings()))
    assert made["metadata"]["annotations"][builders.SPEC_ANNOTATION] == pods_digest(result.job.spec)
    assert reads_spec(made, result.job.spec)
    changed = validate_object(job(**{"spec.model.uri": "s3://models/other/", "spec.runPolicy": {"suspend": True}}))
    assert changed.job is not None and not reads_spec(made, changed.job.spec)
    resumed = validate_object(job(**{"spec.runPolicy": {"suspend": False}}))  # runPolicy is the operator's alone
    assert resumed.job is not None and reads_spec(made, resumed.job.spec)


def test_an_operator_upgrade_reads_the_digest_an_earlier_version_recorded() -> None:
    """A Job made before output.serving existed carries the digest of every field, empty ones too: the upgraded
    operator reads it as the same spec (its workers go on), while a changed spec is still refused."""
    import hashlib

    from kubetune_api.job import FROZEN_SECTIONS
    from kubetune_operator.observation import reads_spec

    spec = validate_object(job()).job
    assert spec is not None
    earlier_sections = set(FROZEN_SECTIONS) - {"method", "evaluation"}  # spec.method and evaluation came later still
    before = spec.spec.model_dump(mode="json", include=earlier_sections)
    del before["output"]["serving"], before["output"]["tracking"]  # the spec as the earlier version dumped it
    del before["output"]["minPreferenceAccuracy"], before["model"]["adapter"], before["training"]["chunkedLoss"]
    del before["output"]["minTaskScore"]
    before["model"]["attnImplementation"] = "sdpa"  # the default then, stored by the API server
    digest = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:32]
    made = {"metadata": {"annotations": {builders.SPEC_ANNOTATION: digest}}}
    assert reads_spec(made, spec.spec)
    # the version before spec.method: empty fields left out, no method section
    previous = spec.spec.model_dump(mode="json", include=earlier_sections, exclude_none=True)
    previous["model"]["attnImplementation"] = "sdpa"
    digest = hashlib.sha256(json.dumps(previous, sort_keys=True).encode()).hexdigest()[:32]
    assert reads_spec({"metadata": {"annotations": {builders.SPEC_ANNOTATION: digest}}}, spec.spec)
    # a Job of the version before training.chunkedLoss and model.attnImplementation: auto (the default was sdpa)
    digest = hashlib.sha256(json.dumps(previous, sort_keys=True).encode()).hexdigest()[:32]
    explicit = validate_object(job(**{"spec.model.attnImplementation": "varlen"})).job
    assert explicit is not None and not reads_spec(
        {"metadata": {"annotations": {builders.SPEC_ANNOTATION: digest}}}, explicit.spec
    )
    other = validate_object(job(**{"spec.lora.r": 8})).job
    assert other is not None and not reads_spec(made, other.spec)


def test_the_crd_freezes_the_spec_once_the_workers_may_exist() -> None:
    from kubetune_api.crd import IMMUTABLE_RULE

    rule = IMMUTABLE_RULE["rule"]
    assert "oldSelf.status.phase == 'Preflight'" in rule and "self.spec.storage == oldSelf.spec.storage" in rule
    assert "self.spec.runPolicy" not in rule


# 11: a report's strings carry a record's keys: no terminal escapes reach status, conditions or Events
def test_preflight_report_strings_are_cleaned() -> None:
    hostile = "key \x1b]8;;https://evil.example\x07click\x1b]8;;\x07 \x1b[31mred\x1b[0m\x07"
    report = parse_report(
        json.dumps({"passed": False, "message": hostile, "checks": [{"name": "records", "ok": False, "message": hostile}]})
    )
    assert report is not None
    for text in (report.message or "", report.checks[0].message):
        assert "\x1b" not in text and "\x07" not in text and text == "key click red"


# 14: only worker 0's word says the job succeeded
def _pod(index: str, summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": f"p-{index}", "annotations": {"batch.kubernetes.io/job-completion-index": index}},
        "status": {"containerStatuses": [{"state": {"terminated": {"message": json.dumps(summary)}}}]},
    }


def test_success_and_metrics_come_from_worker_0_only() -> None:
    forged = {"event": "summary", "status": "Succeeded", "metrics": {"evalLoss": 0.01, "baseEvalLoss": 9.0}, "steps": 1}
    job_obj = {"metadata": {}, "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}
    seen = observe(job_obj, [_pod("1", forged)], workers=2)
    assert seen.state == "failed"
    seen = observe(job_obj, [_pod("0", forged)], workers=2)
    assert seen.state == "succeeded"


def test_the_termination_message_is_the_file_only() -> None:
    body = job()
    body["metadata"]["uid"] = "u-1"
    result = validate_object(body, cluster=True)
    assert result.job is not None
    container = builders.build_job(make_plan(body, result.job, Settings()))["spec"]["template"]["spec"]["containers"][0]
    assert container["terminationMessagePolicy"] == "File"


def _env(body: dict[str, Any]) -> dict[str, Any]:
    result = validate_object(body, cluster=True)
    assert result.job is not None
    container = builders.build_job(make_plan(body, result.job, Settings()))["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


# 15: the shipped platform values keep each team's data and adapters apart (the cluster tests' own buckets replace
# these prefixes in the fixture; here they are loaded as shipped)
def test_the_shipped_platform_prefixes_keep_teams_apart() -> None:
    policy = load_policy(Path(__file__).resolve().parents[2] / "examples" / "platform" / "values.yaml")
    assert policy.readPrefixes and policy.writePrefixes

    def denied(**changes: Any) -> list[str]:
        base = {
            "spec.model.uri": "s3://models/llama/",
            "spec.dataset.train": "s3://datasets/team-a/train.jsonl",
            "spec.output.uri": "s3://adapters/team-a/run-1/",
            "spec.storage": {},
        }
        result = validate_object(job(**{**base, **changes}), cluster=True)
        assert result.job is not None, result.problems
        return [p.path for p in check(result.job.spec, "team-a", policy)]

    assert denied() == []
    assert denied(**{"spec.dataset.train": "s3://datasets/team-b/train.jsonl"}) == ["spec.dataset.train"]
    assert denied(**{"spec.dataset.train": "s3://datasets/team-ab/train.jsonl"}) == ["spec.dataset.train"]
    assert denied(**{"spec.output.uri": "s3://adapters/team-b/run-1/"}) == ["spec.output.uri"]
    assert denied(**{"spec.model.uri": "s3://adapters/team-b/run-1/adapter/"}) == ["spec.model.uri"]
    assert denied(**{"spec.model.adapter": "s3://adapters/team-b/run-1/adapter/"}) == ["spec.model.adapter"]
    assert denied(**{"spec.model.adapter": "s3://adapters/team-a/run-0/adapter/"}) == []


# 15: a platform can require every job to go through a Kueue queue (offline and in the operator's check; the API
# server's rule: tests/security/test_policy_cluster.py)
def test_a_queue_can_be_required() -> None:
    from kubetune_api.names import QUEUE_LABEL
    from kubetune_api.policy import QUEUE_CEL, admission_policy

    spec = validate_object(job(), cluster=True).job
    assert spec is not None
    required = Policy(requireQueue=True, endpoints=["*"], credentialSecrets=["*"])
    (problem,) = check(spec.spec, "team-a", required, labels={})
    assert problem.path == "metadata.labels" and QUEUE_LABEL in str(problem)
    assert check(spec.spec, "team-a", required, labels={QUEUE_LABEL: ""})  # an empty queue name is no queue
    assert check(spec.spec, "team-a", required, labels={QUEUE_LABEL: "team-a-queue"}) == []
    assert check(spec.spec, "team-a", Policy(endpoints=["*"], credentialSecrets=["*"]), labels={}) == []
    expressions = [v["expression"] for v in admission_policy("p")["spec"]["validations"]]
    assert any(QUEUE_CEL in e for e in expressions)


# 15: GPU time is charged to the queue the Job was made with; relabelling the FineTuneJob afterwards changes nothing
def test_gpu_hours_go_to_the_jobs_queue_not_the_relabelled_finetunejob(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from kubetune_operator import effects, metrics

    monkeypatch.setattr(effects, "raw", lambda *args, **kwargs: None)  # the status patch itself: not under test
    monkeypatch.setattr(effects, "API", SimpleNamespace(custom=SimpleNamespace(patch_namespaced_custom_object_status=None)))
    body = {
        "metadata": {"namespace": "team-a", "name": "j", "labels": {"kueue.x-k8s.io/queue-name": "someone-elses"}},
        "status": {"usage": {"gpuHours": 1.0, "gpuType": "H100"}},
    }
    charged = metrics.GPU_HOURS.labels("team-a", "team-a-queue", "H100")
    elsewhere = metrics.GPU_HOURS.labels("team-a", "someone-elses", "H100")
    before, before_elsewhere = charged._value.get(), elsewhere._value.get()
    new = FineTuneJobStatus.model_validate({"usage": {"gpuHours": 3.5, "gpuType": "H100"}})
    effects.write_status(body, new, "team-a-queue")
    assert charged._value.get() - before == pytest.approx(2.5) and elsewhere._value.get() == before_elsewhere


# 9: in a cluster a checkpoint is resumed only when its record names exactly this FineTuneJob's uid
@pytest.mark.parametrize("record_uid", [None, "", "another-job-uid"])
def test_a_checkpoint_without_this_jobs_uid_is_never_resumed(record_uid: str | None) -> None:
    from kubetune_api.records import Identity
    from kubetune_trainer.errors import TrainerFailure
    from kubetune_trainer.recipe.checkpoint import check_identity

    record = Identity(specDigest="d" * 64, **({} if record_uid is None else {"jobUid": record_uid}))
    mine = Identity(specDigest="d" * 64, jobUid="this-job-uid")
    with pytest.raises(TrainerFailure, match="written by another FineTuneJob") as failed:
        check_identity(record, mine, "checkpoint step 10", {"d" * 64})
    assert failed.value.reason.value == "CheckpointMismatch"
    check_identity(record.model_copy(update={"jobUid": "this-job-uid"}), mine, "ok", {"d" * 64})
    check_identity(record, Identity(specDigest="d" * 64), "kubetune run", {"d" * 64})  # no cluster: no uid to compare


def test_an_upgraded_trainer_resumes_a_checkpoint_an_earlier_version_wrote() -> None:
    """A checkpoint record written before output.serving existed carries the digest of every field, empty ones too:
    still this spec's, so it is resumed; another spec's is not."""
    import hashlib

    from kubetune_api.records import Identity
    from kubetune_trainer.errors import TrainerFailure
    from kubetune_trainer.recipe.checkpoint import IDENTITY_SECTIONS, check_identity, identity, spec_digests

    spec = validate_object(job()).job
    assert spec is not None
    earlier_sections = [name for name in IDENTITY_SECTIONS if name != "method"]  # spec.method came later still
    sections = {name: getattr(spec.spec, name).model_dump(mode="json") for name in earlier_sections}
    del sections["output"]["serving"], sections["output"]["tracking"]  # as the earlier version dumped it
    del sections["output"]["minPreferenceAccuracy"], sections["model"]["adapter"], sections["training"]["chunkedLoss"]
    del sections["output"]["minTaskScore"]
    sections["model"]["attnImplementation"] = "sdpa"  # the default before auto: a local spec file that left it out
    earlier = Identity(specDigest=hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest(), jobUid="u")
    mine = identity(spec.spec, "u")
    assert earlier.specDigest != mine.specDigest
    check_identity(earlier, mine, "checkpoint step 10", spec_digests(spec.spec))
    previous = {name: getattr(spec.spec, name).model_dump(mode="json", exclude_none=True) for name in earlier_sections}
    previous["model"]["attnImplementation"] = "sdpa"
    digest = hashlib.sha256(json.dumps(previous, sort_keys=True).encode()).hexdigest()
    check_identity(Identity(specDigest=digest, jobUid="u"), mine, "checkpoint step 10", spec_digests(spec.spec))
    other = validate_object(job(**{"spec.lora.r": 8})).job
    assert other is not None
    with pytest.raises(TrainerFailure, match="written for another spec"):
        check_identity(earlier, identity(other.spec, "u"), "checkpoint step 10", spec_digests(other.spec))


# 12: hostile shapes of data are bad records (the job fails with the file and record), never a crash, a retry or
# all of the pod's memory
def test_deep_nesting_and_giant_files_and_lines_are_bad_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip

    from kubetune_trainer.data import reading
    from kubetune_trainer.errors import TrainerFailure

    def refused(path: Path) -> str:
        with pytest.raises(TrainerFailure) as failed:
            read_records(path, path.name)
        assert failed.value.reason.value == "BadRecord"
        return str(failed.value)

    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"text": "ok"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    assert "deep.jsonl line 2: nested too deeply" in refused(deep)
    deep_json = tmp_path / "deep.json"
    deep_json.write_text("[" + "{" * 0 + "[" * 100_000 + "]" * 100_000 + "]")
    assert "nested too deeply" in refused(deep_json)
    monkeypatch.setattr(reading, "MAX_LINE", 1024)
    monkeypatch.setattr(reading, "MAX_WHOLE_FILE", 4096)
    long_line = tmp_path / "long.jsonl.gz"
    long_line.write_bytes(gzip.compress(b'{"text": "' + b"x" * 10_000 + b'"}\n'))  # small compressed, large decompressed
    assert "line 1: longer than" in refused(long_line)
    bomb = tmp_path / "bomb.json.gz"
    bomb.write_bytes(gzip.compress(b'[{"text": "' + b"x" * 100_000 + b'"}]'))
    assert "once decompressed" in refused(bomb)


# 13: the TTL delete carries the uid precondition (a FineTuneJob created since under the same name is spared)
def test_the_ttl_delete_names_the_uid_it_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from kubernetes import client

    from kubetune_operator import effects

    calls: list[Any] = []

    def raw(function: Any, *args: Any, body: Any = None) -> None:
        calls.append(body)
        raise client.ApiException(status=409)  # the uid no longer matches: tolerated, nothing else deleted

    monkeypatch.setattr(effects, "raw", raw)
    monkeypatch.setattr(effects, "API", SimpleNamespace(custom=SimpleNamespace(delete_namespaced_custom_object=None)))
    body = {
        "metadata": {"namespace": "team-a", "name": "done", "uid": "uid-read"},
        "spec": {"runPolicy": {"ttlSecondsAfterFinished": 0}},
    }
    effects.delete_self(body["metadata"], "uid-read")
    (options,) = calls
    assert options.preconditions.uid == "uid-read"
