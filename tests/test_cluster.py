"""The testbed itself, against the real API server: the CRD, examples and invalid manifests at admission, the status
subresource and printer columns, and an Indexed Job run by the real Job controller, scheduler and node agent."""

from __future__ import annotations

import json
import textwrap
import time
from typing import Any

import pytest
import yaml

from kubetune_api.manifests import dump

from .cases import INVALID_CASES, SCHEMA_CASES
from .conftest import EXAMPLES, job

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_passes_server_side_dry_run(plane, crd, example) -> None:  # type: ignore[no-untyped-def]
    result = plane.kubectl("apply", "--dry-run=server", "-f", str(example), check=False)
    if example.name.endswith("quickstart.yaml"):  # kubetune run's: local paths, which no cluster admits
        assert result.returncode != 0 and "local paths are for kubetune run only" in result.stderr, result.stderr
        return
    assert result.returncode == 0, result.stderr


CASES = [(changes, path) for changes, path in INVALID_CASES if changes in SCHEMA_CASES]


@pytest.mark.parametrize(("changes", "path"), CASES, ids=[",".join(c)[:60] for c, _ in CASES])
def test_invalid_manifests_are_rejected_with_the_field_path(plane, crd, changes: dict[str, Any], path: str) -> None:  # type: ignore[no-untyped-def]
    result = plane.kubectl("apply", "--dry-run=server", "-f", "-", input=dump(job(**changes)), check=False)
    assert result.returncode != 0, f"the API server accepted {changes}"
    assert path in result.stderr, result.stderr


def test_cel_rules_give_the_same_message_as_kubetune_validate(plane, crd) -> None:  # type: ignore[no-untyped-def]
    bad = job(**{"spec.dataset.validation": "s3://data/v.jsonl", "spec.dataset.validationSplit": 0.1})
    result = plane.kubectl("apply", "--dry-run=server", "-f", "-", input=dump(bad), check=False)
    assert "spec.dataset.validationSplit" in result.stderr
    assert "set either validation or validationSplit, not both" in result.stderr
    # the servability rules, spanning lora and output.serving
    served = job(**{"spec.lora.r": 32, "spec.output.serving": {"vllm": {}}})
    result = plane.kubectl("apply", "--dry-run=server", "-f", "-", input=dump(served), check=False)
    assert "spec.lora.r" in result.stderr
    assert "lora.r must be at most output.serving.vllm.maxLoraRank (the server's --max-lora-rank)" in result.stderr


def test_status_subresource_and_printer_columns(plane, crd) -> None:  # type: ignore[no-untyped-def]
    plane.kubectl("create", "namespace", "unwatched", check=False)  # no operator writes this job's status here
    plane.kubectl("apply", "-n", "unwatched", "-f", "-", input=dump(job(**{"metadata.name": "columns"})))
    status = {
        "status": {
            "phase": "Running",
            "progress": {"step": 120, "totalSteps": 900, "summary": "120/900 (13%)"},
            "metrics": {"evalLoss": 1.2345},
        }
    }
    plane.kubectl("patch", "-n", "unwatched", "ftj/columns", "--subresource=status", "--type=merge", "-p", json.dumps(status))
    table = plane.kubectl("get", "-n", "unwatched", "ftj", "columns").stdout
    assert table.split()[:5] == ["NAME", "PHASE", "PROGRESS", "EVAL", "LOSS"]
    assert "Running" in table and "120/900 (13%)" in table and "1.2345" in table
    spec_change = plane.kubectl(
        "patch", "-n", "unwatched", "ftj/columns", "--type=merge", "-p", json.dumps({"status": {"phase": "Failed"}})
    )
    assert spec_change.returncode == 0
    assert (
        plane.kubectl("get", "-n", "unwatched", "ftj/columns", "-o", "jsonpath={.status.phase}").stdout == "Running"
    )  # status only via subresource
    explain = plane.kubectl("explain", "ftj.spec.lora.r").stdout
    assert "Adapter rank" in explain
    plane.kubectl("delete", "-n", "unwatched", "ftj/columns")


POD_SCRIPT = textwrap.dedent(
    """
    import os, socket, time
    index = int(os.environ["JOB_COMPLETION_INDEX"])
    print("index", index, "config", open("/etc/demo/greeting").read().strip(), flush=True)
    if index == 0:
        server = socket.create_server(("0.0.0.0", 23456))
        server.settimeout(60)
        conn, _ = server.accept()
        print("pod 0 got", conn.recv(100).decode(), flush=True)
    else:
        for attempt in range(300):
            try:
                with socket.create_connection(("indexed-0.indexed-svc", 23456), timeout=2) as conn:
                    conn.sendall(b"hello from pod 1")
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise SystemExit("pod 0 unreachable")
    """
)


def test_indexed_job_runs_through_the_real_controllers(plane, node_agent) -> None:  # type: ignore[no-untyped-def]
    objects = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "indexed-config"}, "data": {"greeting": "hi"}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "indexed-svc"},
            "spec": {"clusterIP": "None", "selector": {"demo": "indexed"}, "ports": [{"port": 23456}]},
        },
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "indexed"},
            "spec": {
                "completionMode": "Indexed",
                "completions": 2,
                "parallelism": 2,
                "backoffLimit": 0,
                "template": {
                    "metadata": {"labels": {"demo": "indexed"}},
                    "spec": {
                        "subdomain": "indexed-svc",
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "main",
                                "image": "python",
                                "command": ["python", "-c", POD_SCRIPT],
                                "resources": {"limits": {"nvidia.com/gpu": 1}},
                                "volumeMounts": [{"name": "config", "mountPath": "/etc/demo"}],
                            }
                        ],
                        "volumes": [{"name": "config", "configMap": {"name": "indexed-config"}}],
                    },
                },
            },
        },
    ]
    plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
    result = plane.kubectl("wait", "--for=condition=Complete", "job/indexed", "--timeout=120s", check=False)
    pods = json.loads(plane.kubectl("get", "pods", "-l", "demo=indexed", "-o", "json").stdout)["items"]
    assert result.returncode == 0, json.dumps([p["status"] for p in pods])[:3000]
    assert sorted(p["spec"]["nodeName"] for p in pods)  # scheduled by the real scheduler onto the agent's nodes
    by_index = {p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p["metadata"]["name"] for p in pods}
    assert "index 0 config hi" in plane.kubectl("logs", by_index["0"]).stdout
    assert "pod 0 got hello from pod 1" in plane.kubectl("logs", by_index["0"]).stdout
    assert "index 1 config hi" in plane.kubectl("logs", by_index["1"]).stdout
    plane.kubectl("delete", "job/indexed", "--cascade=foreground", "--wait=true", "--timeout=60s")
    deadline = time.monotonic() + 60
    while plane.kubectl("get", "pods", "-l", "demo=indexed", "-o", "name").stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not plane.kubectl("get", "pods", "-l", "demo=indexed", "-o", "name").stdout.strip()
