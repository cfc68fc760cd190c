"""Shared test helpers: paths, example manifests, and a small builder for FineTuneJob bodies."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub: a hub id fails at once, not after retries
EXAMPLES = [
    *sorted((ROOT / "examples").glob("*.yaml")),
    ROOT / "examples" / "kueue" / "finetunejob.yaml",
    ROOT / "examples" / "serving" / "finetunejob.yaml",
    ROOT / "examples" / "sft-then-dpo" / "sft.yaml",
    ROOT / "examples" / "sft-then-dpo" / "dpo.yaml",
]  # every FineTuneJob shipped

MINIMAL: dict[str, Any] = {
    "apiVersion": "kubetune.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "job"},
    "spec": {
        "model": {"uri": "s3://models/base/"},
        "dataset": {"train": "s3://data/train.jsonl"},
        "output": {"uri": "s3://out/job/"},
        # these objects do not exist: the cluster tests that use this body are about other things than the preflight
        "runPolicy": {"preflight": False},
    },
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """tests/security/ after the other tests of each run, and the audit test, which reads what the whole session
    did, last of all."""
    items.sort(key=lambda item: (item.get_closest_marker("audit") is not None, "/security/" in str(item.path)))


def job(**changes: Any) -> dict[str, Any]:
    """A minimal valid FineTuneJob body with dotted-path changes, e.g. job(**{"spec.lora.r": 8})."""
    body = copy.deepcopy(MINIMAL)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = body
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    spec = body.get("spec")
    policy = spec.get("runPolicy") if isinstance(spec, dict) else None
    if isinstance(policy, dict):  # a test that sets runPolicy keeps MINIMAL's preflight: false unless it says otherwise
        policy.setdefault("preflight", False)
    return body


def kubetune(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess, as a user would."""
    raw = subprocess.run(
        [sys.executable, "-m", "kubetune_cli", *args], input=stdin or b"", capture_output=True, cwd=ROOT, timeout=120
    )
    return subprocess.CompletedProcess(raw.args, raw.returncode, raw.stdout.decode(), raw.stderr.decode())


def dump(body: Any) -> bytes:
    from kubetune_api.manifests import dump as dump_yaml

    return dump_yaml(body).encode()


@pytest.fixture
def tmp_manifest(tmp_path: Path):  # type: ignore[no-untyped-def]
    def write(body: Any, name: str = "job.yaml") -> Path:
        path = tmp_path / name
        path.write_bytes(body if isinstance(body, bytes) else dump(body))
        return path

    return write


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real S3 server (SeaweedFS, built by `make testbed`) on 127.0.0.1 with signed requests, for the session."""
    from .s3server import start

    server = start(tmp_path_factory.mktemp("seaweedfs") / "weed.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """moto's S3 server, for what only it does: keep hostile object keys verbatim (tests/security/)."""
    from .s3server import start_moto

    server = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kubetune_trainer.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def stored(s3, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny model and datasets in S3, as a user would have them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kubetune_trainer import tiny

    for bucket in ("models", "data", "adapters"):
        s3.bucket(bucket)
    tmp = tmp_path_factory.mktemp("data")
    chat = tmp / "chat.parquet"
    pq.write_table(pa.Table.from_pylist(tiny.records(500, seed=3, fmt="chat")), chat)
    return {
        "model": s3.upload_dir(tiny_model, "models", "tiny-llama"),
        "train": s3.put("data", "pc/train.jsonl", tiny.write_jsonl(tmp / "t.jsonl", tiny.records(600, seed=1)).read_bytes()),
        "validation": s3.put("data", "pc/val.jsonl", tiny.write_jsonl(tmp / "v.jsonl", tiny.records(80, seed=2)).read_bytes()),
        "chat": s3.put("data", "chat/train.parquet", chat.read_bytes()),
    }


@pytest.fixture(scope="session")
def plane(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """etcd, kube-apiserver, controller manager and scheduler on 127.0.0.1 (built by hack/build-testbed.sh)."""
    from .cluster.plane import BIN, TOOLS, Plane, binaries_present

    if not binaries_present():
        pytest.fail(f"binaries missing from {BIN} or {TOOLS}: run `make testbed` (hack/build-testbed.sh, hack/install-tools.py)")
    started = __import__("time").monotonic()
    control = Plane.start(tmp_path_factory.mktemp("plane"))
    print(f"\ncontrol plane ready in {__import__('time').monotonic() - started:.1f}s ({control.timings})")
    yield control
    print(f"\ncontrol plane stopped in {control.stop():.1f}s")


@pytest.fixture(scope="session")
def node_agent(plane, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Two Nodes with 4 GPUs each whose pods run as local processes."""
    from .cluster.node_agent import NodeAgent

    assert plane.authority is not None
    serving = plane.authority.issue("node-agent", "node-agent", hosts=("127.0.0.1", "localhost"), server=True)
    agent = NodeAgent(
        plane.admin_kubeconfig, tmp_path_factory.mktemp("nodes"), ["node-1", "node-2"], serving.cert, serving.key
    ).start()
    yield agent
    agent.stop()


RELEASE = "kubetune"  # the chart's objects are named after the release: ServiceAccount kubetune-system/kubetune
RELEASE_NAMESPACE = "kubetune-system"


PLATFORM_VALUES = ROOT / "examples" / "platform" / "values.yaml"


@pytest.fixture(scope="session")
def platform_values(s3, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """The shipped platform values (examples/platform) with the tests' S3 endpoint allowed, as a platform lists its own
    object store in policy.endpoints: the chart's values and the operator's policy file."""
    import yaml

    values = yaml.safe_load(PLATFORM_VALUES.read_text())
    values["policy"]["endpoints"] = [*values["policy"].get("endpoints", []), s3.endpoint]
    # the tests' jobs use buckets of their own; the shipped per-namespace prefixes are checked offline
    # (tests/security/test_tenancy.py::test_the_shipped_platform_prefixes_keep_teams_apart)
    values["policy"]["readPrefixes"] = values["policy"]["writePrefixes"] = []
    path = tmp_path_factory.mktemp("platform") / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="session")
def crd(plane, platform_values: Path) -> None:  # type: ignore[no-untyped-def]
    """The chart installed with the real helm (its crds/ are this repository's crds/, byte for byte), with no
    operator replica: the tests run the operator themselves, under the chart's ServiceAccount and RBAC."""
    plane.helm(
        "install",
        RELEASE,
        str(ROOT / "charts" / "kubetune"),
        "-n",
        RELEASE_NAMESPACE,
        "--create-namespace",
        "--set",
        "replicas=0",
        "-f",  # the shipped platform policy (examples/platform), watching every namespace the tests use
        str(platform_values),
        "--set-json",
        "watchNamespaces=[]",
    )
    import time

    jsonpath = "jsonpath={.status.conditions[?(@.type=='Established')].status}"
    deadline = time.monotonic() + 60  # kubectl wait errors out while the CRD has no conditions yet, so poll
    while plane.kubectl("get", "crd/finetunejobs.kubetune.dev", "-o", jsonpath, check=False).stdout != "True":
        assert time.monotonic() < deadline, "the CRD never became Established"
        time.sleep(0.2)
    for namespace in ("team-a", "research"):
        plane.kubectl("create", "namespace", namespace, check=False)
    wait_until_admitting(plane)


def wait_until_admitting(plane, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    """The chart's ValidatingAdmissionPolicy fails closed (parameterNotFoundAction: Deny), and the API server sees a
    new or removed binding and its parameters a moment after helm does: wait until a valid job is admitted."""
    import time

    probe = dump(job(**{"metadata.name": "admission-probe"})).decode()
    deadline = time.monotonic() + timeout
    while (result := plane.kubectl("apply", "--dry-run=server", "-f", "-", input=probe, check=False)).returncode != 0:
        assert time.monotonic() < deadline, result.stderr
        time.sleep(0.3)


@pytest.fixture(scope="session")
def operator_kubeconfig(plane, crd, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A kubeconfig holding a token of the chart's ServiceAccount: the operator has exactly the chart's RBAC."""
    from .cluster.plane import kubeconfig

    token = plane.kubectl("create", "token", RELEASE, "-n", RELEASE_NAMESPACE, "--duration=24h").stdout.strip()
    path = tmp_path_factory.mktemp("operator") / "operator.kubeconfig"
    return kubeconfig(path, plane.server, plane.ca, token, f"system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}")


@pytest.fixture(scope="session")
def operator(plane, crd, operator_kubeconfig, platform_values, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The operator in-process (Kopf's KopfRunner) as the chart's ServiceAccount, under the chart's RBAC."""
    import os

    from kopf.testing import KopfRunner

    config = operator_kubeconfig
    saved = {
        k: os.environ.get(k)
        for k in (
            "KUBECONFIG",
            "KUBETUNE_SYNC_SECONDS",
            "KUBETUNE_WAIT_SECONDS",
            "KUBETUNE_METRICS_PORT",
            "KUBETUNE_TRAINER_IMAGE",
            "KUBETUNE_POLICY",
            "KUBETUNE_MODEL_CACHE_VOLUME",
            "KUBETUNE_GPU_TYPES",
        )
    }
    os.environ.update(
        {
            "KUBECONFIG": str(config),
            "KUBETUNE_SYNC_SECONDS": "2",
            "KUBETUNE_WAIT_SECONDS": "2",  # pending pods and TTLs looked at as often (production: 60)
            "KUBETUNE_METRICS_PORT": "0",
            "KUBETUNE_TRAINER_IMAGE": "local",
            "KUBETUNE_POLICY": str(platform_values),  # as the chart mounts its policy
            # the node's model cache (chart: trainer.modelCache.type hostPath): restarts and later jobs reuse models
            "KUBETUNE_MODEL_CACHE_VOLUME": f"hostPath:{tmp_path_factory.mktemp('node') / 'models'}",
            # the platform's GPU table (chart: preflight.gpuTypes), with a GPU too small for any model, for WontFit
            "KUBETUNE_GPU_TYPES": json.dumps(
                {
                    "NVIDIA-H100-80GB-HBM3": {"memory": "80Gi", "tflops": 400, "pricePerHour": 4.0},
                    "kubetune-test-tiny": {"memory": "8Mi", "tflops": 1},
                }
            ),
        }
    )
    import logging

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            runner.log.append(self.format(record))

    # every namespace but the fault tests' and the end-to-end tests', which run operators of their own
    namespaces = ["--namespace=default", "--namespace=team-a", "--namespace=research", "--namespace=queued"]
    runner = KopfRunner(["run", *namespaces, "--standalone", "-m", "kubetune_operator.handlers"], reraise=False)
    runner.log = []  # every operator log line, for the tests that search them for secrets
    collect = Collect()
    logging.getLogger().addHandler(collect)
    with runner:
        yield runner
    logging.getLogger().removeHandler(collect)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


TIERS = ("e2e", "images", "cluster", "trainer")  # a test's tier: the first of its markers here, else fast
_tier_seconds: dict[str, list[float]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Each test's time (setup, call, teardown: shared fixtures are paid by the first test that asks) by tier."""
    tier = next((t for t in TIERS if t in report.keywords), "fast")
    spent = _tier_seconds.setdefault(tier, [0.0, 0.0])
    spent[0] += report.duration
    if report.when == "call":
        spent[1] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Every run ends with the time each tier took (so every CI log shows where the time went)."""
    if not _tier_seconds:
        return
    terminalreporter.section("time by tier")
    for tier in ("fast", *reversed(TIERS)):
        if tier in _tier_seconds:
            seconds, count = _tier_seconds[tier]
            terminalreporter.write_line(f"{tier:<8} {int(count):>4} tests {seconds:8.1f} s")
