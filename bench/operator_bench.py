"""Operator benchmark (not a test): a burst of FineTuneJobs against the test control plane, no pods run.

Starts the control plane (tests/cluster/plane.py, no node agent), installs the CRD, runs `kubetune operator` as
a subprocess, creates N suspended FineTuneJobs at once from 8 client threads, and prints p50/p99 time from
create to children created (the Job appears) and to a settled status (phase Suspended, Validated=True), plus the
operator's peak RSS and CPU seconds.

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kubernetes import client, config, watch  # noqa: E402
from tests.cluster.plane import Plane, free_port  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    plane = Plane.start(Path(tempfile.mkdtemp(prefix="kubetune-opbench-")))
    operator = None
    try:
        plane.kubectl("apply", "-f", str(ROOT / "crds" / "finetunejob.yaml"))
        while (
            plane.kubectl(
                "get", "crd/finetunejobs.kubetune.dev", "-o", "jsonpath={.status.conditions[?(@.type=='Established')].status}"
            ).stdout
            != "True"
        ):
            time.sleep(0.2)
        env = {
            **os.environ,
            "KUBECONFIG": str(plane.admin_kubeconfig),
            "KUBETUNE_METRICS_PORT": "0",
            "KUBETUNE_HEALTH_PORT": str(free_port()),
        }
        operator = subprocess.Popen(
            [sys.executable, "-m", "kubetune_cli", "operator"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        process = psutil.Process(operator.pid)
        time.sleep(5)  # the operator's start-up is not part of the measurement
        api_client = config.new_client_from_config(str(plane.admin_kubeconfig))
        custom, batch = client.CustomObjectsApi(api_client), client.BatchV1Api(api_client)
        created: dict[str, float] = {}
        children: dict[str, float] = {}
        settled: dict[str, float] = {}
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], process.memory_info().rss)
                time.sleep(0.2)

        def watch_jobs() -> None:
            for event in watch.Watch().stream(batch.list_namespaced_job, "default", timeout_seconds=int(args.timeout)):
                children.setdefault(event["object"].metadata.name, time.monotonic())
                if done.is_set():
                    return

        def watch_status() -> None:
            for event in watch.Watch().stream(
                custom.list_namespaced_custom_object,
                "kubetune.dev",
                "v1alpha1",
                "default",
                "finetunejobs",
                timeout_seconds=int(args.timeout),
            ):
                obj = event["object"]
                status = obj.get("status") or {}
                validated = any(c["type"] == "Validated" and c["status"] == "True" for c in status.get("conditions", []))
                if status.get("phase") == "Suspended" and validated:
                    settled.setdefault(obj["metadata"]["name"], time.monotonic())
                if done.is_set() or len(settled) >= args.jobs:
                    return

        for target in (sample, watch_jobs, watch_status):
            threading.Thread(target=target, daemon=True).start()
        time.sleep(1)
        cpu_before = sum(process.cpu_times()[:2])
        started = time.monotonic()

        def create(i: int) -> None:
            b = body(i)
            custom.create_namespaced_custom_object("kubetune.dev", "v1alpha1", "default", "finetunejobs", b)
            created[str(b["metadata"]["name"])] = time.monotonic()  # type: ignore[index]

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(args.jobs)))
        accepted = time.monotonic() - started
        deadline = time.monotonic() + args.timeout
        while len(settled) < args.jobs and time.monotonic() < deadline:
            time.sleep(0.5)
        done.set()
        cpu = sum(process.cpu_times()[:2]) - cpu_before
        to_children = [children[n] - t for n, t in created.items() if n in children]
        to_settled = [settled[n] - t for n, t in created.items() if n in settled]
        print(
            f"{args.jobs} FineTuneJobs created in {accepted:.1f}s from 8 threads (2 CPU cores, the control plane on the same cores)"
        )
        for label, values in (("create -> children created", to_children), ("create -> settled status", to_settled)):
            if values:
                print(
                    f"  {label:28} n={len(values)}  p50 {statistics.median(values):.2f}s  p99 {percentile(values, 0.99):.2f}s  max {max(values):.2f}s"
                )
        print(f"  all settled {max(settled.values(), default=started) - started:.1f}s after the first create")
        print(f"  operator peak RSS {peak[0] / 2**20:.0f} MiB, CPU {cpu:.1f}s")
    finally:
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(10)
            except subprocess.TimeoutExpired:  # a graceful stop with a thousand timers takes a while; not measured
                operator.kill()
                operator.wait()
        plane.stop()


if __name__ == "__main__":
    main()
