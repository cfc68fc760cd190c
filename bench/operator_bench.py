"""Operator benchmark (not a test): bursts of FineTuneJobs against the test control plane, no pods run.

Starts the control plane (tests/cluster/plane.py, no node agent) and installs the CRD. Then, for each operator
configuration in turn (Kopf's defaults as the baseline, then kubetune's), it runs
`kubetune operator` as a subprocess watching a namespace of its own, creates N suspended FineTuneJobs there at
once from 8 client threads, and prints p50/p99 time from create to children created (the Job appears) and to a
settled status (phase Suspended, Validated=True), the time from the end of the burst to the last settled job,
the operator's peak RSS and CPU seconds, its own reconcile-time histogram, and the ratios between the two.

  .venv/bin/python bench/operator_bench.py [--jobs 1000]       (build the binaries first: make testbed)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kubernetes import client, config, watch  # noqa: E402
from tests.cluster.plane import Plane, free_port  # noqa: E402

# the baseline is Kopf's defaults: Python's ThreadPoolExecutor default of min(32, cores + 4) threads, and a
# per-object worker kept 5 s after the object's last event
CONFIGURATIONS = {
    "baseline (Kopf's defaults)": {"KUBETUNE_WORKERS": str(min(32, (os.cpu_count() or 1) + 4)), "KUBETUNE_IDLE_SECONDS": "5"},
    "kubetune defaults": {},
}


def body(i: int) -> dict[str, object]:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": f"burst-{i:05d}"},
        "spec": {
            "model": {"uri": "s3://models/base/"},
            "dataset": {"train": "s3://data/train.jsonl"},
            "output": {"uri": f"s3://out/burst-{i:05d}/"},
            "runPolicy": {"suspend": True},
        },
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def events(list_fn: Callable[..., Any], *args: Any, done: threading.Event) -> Iterator[dict[str, Any]]:
    """Raw watch events (dicts, no client models) that survive a closed stream: it resumes from the last version."""
    version = ""
    while not done.is_set():
        try:
            for event in watch.Watch().stream(list_fn, *args, resource_version=version, timeout_seconds=60):
                obj = event["raw_object"]
                version = obj["metadata"]["resourceVersion"]
                yield obj
                if done.is_set():
                    return
        except Exception:  # a dropped stream under load: watch again from where it stopped
            time.sleep(0.2)


@dataclass
class Burst:
    accepted: float = 0.0  # seconds the API server took to accept the burst
    accepted_at: float = 0.0  # monotonic time the last create returned
    created: dict[str, float] = field(default_factory=dict)
    children: dict[str, float] = field(default_factory=dict)
    settled: dict[str, float] = field(default_factory=dict)
    peak_rss: int = 0
    cpu: float = 0.0
    reconcile: str = ""


def run_burst(plane: Plane, namespace: str, jobs: int, overrides: dict[str, str], timeout: float) -> Burst:
    plane.kubectl("create", "namespace", namespace)
    metrics_port = free_port()
    env = {
        **os.environ,
        **overrides,
        "KUBECONFIG": str(plane.admin_kubeconfig),
        "KUBETUNE_NAMESPACES": namespace,
        "KUBETUNE_METRICS_PORT": str(metrics_port),
        "KUBETUNE_HEALTH_PORT": str(free_port()),
    }
    operator = subprocess.Popen(
        [sys.executable, "-m", "kubetune_cli", "operator"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    result = Burst()
    done = threading.Event()
    try:
        process = psutil.Process(operator.pid)
        time.sleep(5)  # the operator's start-up is not part of the measurement
        api_client = config.new_client_from_config(str(plane.admin_kubeconfig))
        custom = client.CustomObjectsApi(api_client)

        def sample() -> None:
            while not done.is_set():
                result.peak_rss = max(result.peak_rss, process.memory_info().rss)
                time.sleep(0.2)

        def watch_jobs() -> None:  # Jobs read as plain JSON through the custom-objects client
            for obj in events(custom.list_namespaced_custom_object, "batch", "v1", namespace, "jobs", done=done):
                result.children.setdefault(obj["metadata"]["name"], time.monotonic())

        def watch_status() -> None:
            for obj in events(
                custom.list_namespaced_custom_object, "kubetune.dev", "v1alpha1", namespace, "finetunejobs", done=done
            ):
                status = obj.get("status") or {}
                validated = any(c["type"] == "Validated" and c["status"] == "True" for c in status.get("conditions", []))
                if status.get("phase") == "Suspended" and validated:
                    result.settled.setdefault(obj["metadata"]["name"], time.monotonic())

        for target in (sample, watch_jobs, watch_status):
            threading.Thread(target=target, daemon=True).start()
        time.sleep(1)
        cpu_before = sum(process.cpu_times()[:2])
        started = time.monotonic()

        def create(i: int) -> None:
            b = body(i)
            custom.create_namespaced_custom_object("kubetune.dev", "v1alpha1", namespace, "finetunejobs", b)
            result.created[str(b["metadata"]["name"])] = time.monotonic()  # type: ignore[index]

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(jobs)))
        result.accepted = time.monotonic() - started
        deadline = time.monotonic() + timeout
        while len(result.settled) < jobs and time.monotonic() < deadline:
            time.sleep(0.5)
        result.cpu = sum(process.cpu_times()[:2]) - cpu_before
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            lines = response.read().decode().splitlines()
        result.reconcile = reconcile_summary(lines)
        result.accepted_at = started + result.accepted
        return result
    finally:
        done.set()
        operator.kill()  # a graceful stop is not measured
        operator.wait()


def reconcile_summary(lines: list[str]) -> str:
    """p50/p99 upper bounds from the operator's kubetune_reconcile_seconds histogram."""
    buckets = [
        (float(line.split('le="')[1].split('"')[0]), float(line.rsplit(" ", 1)[1]))
        for line in lines
        if line.startswith("kubetune_reconcile_seconds_bucket")
    ]
    total = max((count for _, count in buckets), default=0.0)
    if not total:
        return "no syncs recorded"

    def bound(q: float) -> float:
        return next(le for le, count in sorted(buckets) if count >= q * total)

    return f"{int(total)} syncs, p50 <= {bound(0.5)}s, p99 <= {bound(0.99)}s"


def report(label: str, jobs: int, burst: Burst) -> dict[str, float]:
    to_children = [burst.children[n] - t for n, t in burst.created.items() if n in burst.children]
    to_settled = [burst.settled[n] - t for n, t in burst.created.items() if n in burst.settled]
    after_burst = max(burst.settled.values(), default=burst.accepted_at) - burst.accepted_at
    print(f"{label}: {jobs} FineTuneJobs created in {burst.accepted:.1f}s from 8 threads")
    for name, values in (("create -> children created", to_children), ("create -> settled status", to_settled)):
        if values:
            print(
                f"  {name:28} n={len(values)}  p50 {statistics.median(values):.2f}s  p99 {percentile(values, 0.99):.2f}s  max {max(values):.2f}s"
            )
    print(f"  last job settled {after_burst:.1f}s after the burst was accepted")
    print(f"  operator reconcile time: {burst.reconcile}")
    print(
        f"  operator peak RSS {burst.peak_rss / 2**20:.0f} MiB, CPU {burst.cpu:.1f}s ({1000 * burst.cpu / jobs:.1f} ms per job)"
    )
    return {
        "p99": percentile(to_settled, 0.99) if to_settled else float("nan"),
        "after": after_burst,
        "rss": burst.peak_rss,
        "cpu": burst.cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    plane = Plane.start(Path(tempfile.mkdtemp(prefix="kubetune-opbench-")))
    try:
        plane.kubectl("apply", "-f", str(ROOT / "crds" / "finetunejob.yaml"))
        jsonpath = "jsonpath={.status.conditions[?(@.type=='Established')].status}"
        while plane.kubectl("get", "crd/finetunejobs.kubetune.dev", "-o", jsonpath).stdout != "True":
            time.sleep(0.2)
        print(f"{os.cpu_count()} CPU cores, shared by etcd, kube-apiserver, the controllers, the operator and the client")
        figures = []
        for i, (label, overrides) in enumerate(CONFIGURATIONS.items()):
            burst = run_burst(plane, f"bench-{i}", args.jobs, overrides, args.timeout)
            figures.append(report(f"{label} {overrides or ''}".strip(), args.jobs, burst))
        base, tuned = figures
        print(
            f"kubetune / baseline: p99 create->settled {tuned['p99'] / base['p99']:.2f}x, "
            f"last settled after the burst {tuned['after'] / max(base['after'], 1e-9):.2f}x, "
            f"peak RSS {tuned['rss'] / base['rss']:.2f}x, CPU {tuned['cpu'] / base['cpu']:.2f}x"
        )
    finally:
        plane.stop()


if __name__ == "__main__":
    main()
