"""Operator benchmark (not a test): bursts of FineTuneJobs against the test control plane, and what the jobs cost
while they wait; with --steady N, the steady-state cost of N running jobs.

Starts the control plane (tests/cluster/plane.py: etcd, the API server, the controller manager and the scheduler;
no node) and installs the CRD. Then, for each path a new job takes today and each operator in turn (the baseline,
then this tree), it runs `kubetune operator` as a subprocess watching a namespace of its own, creates N
FineTuneJobs there at once from 8 client threads, and prints p50/p99 time from create to the first child that
shows the job's path (the training Job, or the preflight Job) and to the status that path settles in, the operator's
syncs, API requests and CPU per job for the burst; then, for --wait seconds, what the settled jobs cost while they
wait (syncs, API requests and CPU per job and minute), and the ratios between the two operators.

The paths: `suspended` (runPolicy.suspend, no preflight: a suspended Job, phase Suspended), `queued` (a Kueue queue
label, no preflight: a suspended, labelled Job, phase Queued; no Kueue runs, so it stays queued) and `preflight`
(the default: the preflight Job first, whose pod cannot be scheduled here, phase Preflight).

  .venv/bin/python bench/operator_bench.py [--jobs 300] [--paths suspended,queued,preflight] [--baseline REV]

The baseline is Kopf's defaults on this tree, or with --baseline REV the operator as it was at git revision REV
(checked out in a temporary worktree and put first on its PYTHONPATH). Build the binaries first: make testbed.

Steady state (--steady 300): N single-worker jobs Running on the test node agent's Nodes with faked containers
whose logs grow (bench/fleet.py: a megabyte of older lines, then a progress line every 5 s); once every job shows
progress, it measures for --window seconds the operator's CPU seconds per second, its API requests per second
(the API server's audit log of the operator's service account) and the bytes of pod logs it read per second
(what the kubelet served), for each configuration side by side.
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
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from kubernetes import client, config, watch  # noqa: E402
from tests.cluster.plane import Plane, free_port  # noqa: E402

# the steady state's baseline is Kopf's defaults: Python's ThreadPoolExecutor default of min(32, cores + 4) threads,
# and a per-object worker kept 5 s after the object's last event
KOPF_DEFAULTS = {"KUBETUNE_WORKERS": str(min(32, (os.cpu_count() or 1) + 4)), "KUBETUNE_IDLE_SECONDS": "5"}
CONFIGURATIONS = {"baseline (Kopf's defaults)": KOPF_DEFAULTS, "kubetune defaults": {}}

# a job's path: its spec, its labels, the first child that shows it (the Job's name suffix: "" the training Job,
# "-preflight" the preflight Job) and the phase it settles in
PATHS: dict[str, tuple[dict[str, object], dict[str, str], str, str]] = {
    "suspended": ({"runPolicy": {"suspend": True, "preflight": False}}, {}, "", "Suspended"),
    "queued": ({"runPolicy": {"preflight": False}}, {"kueue.x-k8s.io/queue-name": "team-gpus"}, "", "Queued"),
    "preflight": ({}, {}, "-preflight", "Preflight"),
}


def body(i: int, prefix: str = "burst", labels: dict[str, str] | None = None, **spec: object) -> dict[str, object]:
    """A FineTuneJob with the given spec sections."""
    name = f"{prefix}-{i:05d}"
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "model": {"uri": "s3://models/base/"},
            "dataset": {"train": "s3://data/train.jsonl"},
            "output": {"uri": f"s3://out/{name}/"},
            **spec,
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


@dataclass(frozen=True)
class Operator:
    label: str
    env: dict[str, str]
    path: tuple[str, ...] = ()  # put first on PYTHONPATH: another revision's packages


def start_operator(plane: Plane, namespace: str, operator: Operator, metrics_port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **operator.env,
        "KUBECONFIG": str(operator_kubeconfig(plane)),
        "KUBETUNE_NAMESPACES": namespace,
        "KUBETUNE_METRICS_PORT": str(metrics_port),
        "KUBETUNE_HEALTH_PORT": str(free_port()),
    }
    if operator.path:
        env["PYTHONPATH"] = os.pathsep.join([*operator.path, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    log = plane.audit_log.parent / f"operator-{namespace}.log"  # kept: what an operator said is read after a run
    return subprocess.Popen(
        [sys.executable, "-m", "kubetune_cli", "operator"], env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb")
    )


@dataclass
class Burst:
    accepted: float = 0.0  # seconds the API server took to accept the burst
    accepted_at: float = 0.0  # monotonic time the last create returned
    created: dict[str, float] = field(default_factory=dict)
    children: dict[str, float] = field(default_factory=dict)
    settled: dict[str, float] = field(default_factory=dict)
    peak_rss: int = 0
    cpu: float = 0.0  # operator CPU seconds from the first create to the last settled status
    syncs: float = 0.0
    requests: Counter[str] = field(default_factory=Counter)
    reconcile: str = ""
    wait: float = 0.0  # seconds the settled jobs were watched waiting
    wait_cpu: float = 0.0
    wait_syncs: float = 0.0
    wait_requests: Counter[str] = field(default_factory=Counter)


def scrape(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode().splitlines()


def sync_count(lines: list[str]) -> float:
    return next((float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("kubetune_reconcile_seconds_count")), 0.0)


def run_burst(plane: Plane, namespace: str, jobs: int, path: str, operator: Operator, timeout: float, wait: float) -> Burst:
    spec, labels, suffix, phase = PATHS[path]
    plane.kubectl("create", "namespace", namespace)
    metrics_port = free_port()
    process_ = start_operator(plane, namespace, operator, metrics_port)
    result = Burst()
    done = threading.Event()
    try:
        process = psutil.Process(process_.pid)
        time.sleep(5)  # the operator's start-up is not part of the measurement
        api_client = config.new_client_from_config(str(plane.admin_kubeconfig))
        custom = client.CustomObjectsApi(api_client)

        def sample() -> None:
            while not done.is_set():
                result.peak_rss = max(result.peak_rss, process.memory_info().rss)
                time.sleep(0.2)

        def watch_jobs() -> None:  # Jobs read as plain JSON through the custom-objects client
            for obj in events(custom.list_namespaced_custom_object, "batch", "v1", namespace, "jobs", done=done):
                name = obj["metadata"]["name"]
                if name.endswith(suffix) and (suffix or not name.endswith("-preflight")):
                    result.children.setdefault(name.removesuffix(suffix), time.monotonic())

        def watch_status() -> None:
            for obj in events(
                custom.list_namespaced_custom_object, "kubetune.dev", "v1alpha1", namespace, "finetunejobs", done=done
            ):
                status = obj.get("status") or {}
                validated = any(c["type"] == "Validated" and c["status"] == "True" for c in status.get("conditions", []))
                if status.get("phase") == phase and validated:
                    result.settled.setdefault(obj["metadata"]["name"], time.monotonic())

        for target in (sample, watch_jobs, watch_status):
            threading.Thread(target=target, daemon=True).start()
        time.sleep(1)
        cpu_before, syncs_before, wall_before = sum(process.cpu_times()[:2]), sync_count(scrape(metrics_port)), time.time()
        started = time.monotonic()

        def create(i: int) -> None:
            b = body(i, labels=labels, **spec)
            custom.create_namespaced_custom_object("kubetune.dev", "v1alpha1", namespace, "finetunejobs", b)
            result.created[str(b["metadata"]["name"])] = time.monotonic()  # type: ignore[index]

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(jobs)))
        result.accepted = time.monotonic() - started
        result.accepted_at = started + result.accepted
        deadline = time.monotonic() + timeout
        while len(result.settled) < jobs and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)  # the last sync's Event and Kopf's bookkeeping patch
        lines = scrape(metrics_port)
        result.cpu = sum(process.cpu_times()[:2]) - cpu_before
        result.syncs = sync_count(lines) - syncs_before
        result.reconcile = reconcile_summary(lines)
        wall_settled = time.time()
        result.requests = audited(plane, wall_before, wall_settled)
        # what the jobs cost while they wait
        cpu_settled, syncs_settled = sum(process.cpu_times()[:2]), sync_count(lines)
        time.sleep(wait)
        result.wait = wait
        result.wait_cpu = sum(process.cpu_times()[:2]) - cpu_settled
        result.wait_syncs = sync_count(scrape(metrics_port)) - syncs_settled
        time.sleep(1)  # requests in flight at the end of the window complete
        result.wait_requests = audited(plane, wall_settled, wall_settled + wait)
        return result
    finally:
        done.set()
        process_.kill()  # a graceful stop is not measured
        process_.wait()
        plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


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

    return f"p50 <= {bound(0.5)}s, p99 <= {bound(0.99)}s"


def report(label: str, jobs: int, burst: Burst) -> dict[str, float]:
    to_children = [burst.children[n] - t for n, t in burst.created.items() if n in burst.children]
    to_settled = [burst.settled[n] - t for n, t in burst.created.items() if n in burst.settled]
    after_burst = max(burst.settled.values(), default=burst.accepted_at) - burst.accepted_at
    print(f"  {label}: created in {burst.accepted:.1f}s")
    for name, values in (("create -> child created", to_children), ("create -> settled status", to_settled)):
        if values:
            print(
                f"    {name:25} n={len(values)}  p50 {statistics.median(values):.2f}s  p99 {percentile(values, 0.99):.2f}s  max {max(values):.2f}s"
            )
        else:
            print(f"    {name:25} n=0")
    print(f"    last job settled {after_burst:.1f}s after the burst was accepted; sync time {burst.reconcile}")
    per_minute = 60 / max(burst.wait, 1e-9) / jobs
    print(
        f"    burst: {burst.syncs / jobs:.1f} syncs, {burst.requests.total() / jobs:.1f} API requests, {1000 * burst.cpu / jobs:.1f} ms CPU "
        f"per job; peak RSS {burst.peak_rss / 2**20:.0f} MiB"
    )
    print(
        f"    waiting ({burst.wait:.0f}s): {burst.wait_syncs * per_minute:.2f} syncs, {burst.wait_requests.total() * per_minute:.2f} API "
        f"requests, {1000 * burst.wait_cpu * per_minute:.1f} ms CPU per job and minute"
    )
    for name, requests in (("burst", burst.requests), ("waiting", burst.wait_requests)):
        if requests:
            print(f"    {name} requests per job: " + ", ".join(f"{k} {v / jobs:.2f}" for k, v in requests.most_common(8)))
    return {
        "settled": len(to_settled),
        "p99": percentile(to_settled, 0.99) if to_settled else float("nan"),
        "rss": burst.peak_rss,
        "cpu": burst.cpu,
        "requests": burst.requests.total(),
        "wait_syncs": burst.wait_syncs,
        "wait_requests": burst.wait_requests.total(),
        "wait_cpu": burst.wait_cpu,
    }


def operator_kubeconfig(plane: Plane) -> Path:
    """A token of the chart's ServiceAccount (cluster-admin here): the audit log records its requests alone."""
    from tests.cluster.plane import kubeconfig

    plane.kubectl("create", "namespace", "kubetune-system", check=False)
    plane.kubectl("create", "serviceaccount", "kubetune", "-n", "kubetune-system", check=False)
    plane.kubectl(
        "create",
        "clusterrolebinding",
        "bench-operator",
        "--clusterrole=cluster-admin",
        "--serviceaccount=kubetune-system:kubetune",
        check=False,
    )
    token = plane.kubectl("create", "token", "kubetune", "-n", "kubetune-system", "--duration=24h").stdout.strip()
    path = plane.audit_log.parent / "bench-operator.kubeconfig"
    return kubeconfig(path, plane.server, plane.ca, token, "system:serviceaccount:kubetune-system:kubetune")


def audited(plane: Plane, start: float, end: float) -> Counter[str]:
    """The operator's requests the API server completed between two wall-clock times, by verb and resource (a
    watch is counted when it ends)."""
    import datetime
    import json

    user, count = "system:serviceaccount:kubetune-system:kubetune", Counter[str]()
    with plane.audit_log.open() as log:
        for line in log:
            event = json.loads(line)
            if event.get("stage") != "ResponseComplete" or event.get("user", {}).get("username") != user:
                continue
            at = datetime.datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
            if start <= at < end:
                ref = event.get("objectRef") or {}
                what = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
                code = (event.get("responseStatus") or {}).get("code", 0)
                count[f"{event.get('verb')} {what}" + (f" ({code})" if code >= 400 else "")] += 1
    return count


FLEET: dict[str, object] = {
    "workers": {"replicas": 1, "gpusPerWorker": 0, "cacheSize": "1Gi"},
    "runPolicy": {"preflight": False},
}


def run_steady(plane: Plane, agent: Any, namespace: str, jobs: int, overrides: dict[str, str], window: float) -> dict[str, float]:
    plane.kubectl("create", "namespace", namespace)
    operator = start_operator(plane, namespace, Operator(namespace, {**overrides, "KUBETUNE_PREFLIGHT": "false"}), free_port())
    try:
        process = psutil.Process(operator.pid)
        api_client = config.new_client_from_config(str(plane.admin_kubeconfig))
        custom = client.CustomObjectsApi(api_client)
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda i: custom.create_namespaced_custom_object(
                        "kubetune.dev", "v1alpha1", namespace, "finetunejobs", body(i, "fleet", **FLEET)
                    ),
                    range(jobs),
                )
            )
        deadline = time.monotonic() + 900
        while True:  # every job Running and showing progress
            items = custom.list_namespaced_custom_object("kubetune.dev", "v1alpha1", namespace, "finetunejobs")["items"]
            ready = sum(
                1 for o in items if (o.get("status") or {}).get("phase") == "Running" and (o.get("status") or {}).get("progress")
            )
            if ready >= jobs or time.monotonic() > deadline:
                break
            time.sleep(2)
        time.sleep(10)  # past the burst of first reads
        cpu, served, reads, wall = sum(process.cpu_times()[:2]), agent.served, agent.requests, time.time()
        time.sleep(window)
        cpu, served, reads = sum(process.cpu_times()[:2]) - cpu, agent.served - served, agent.requests - reads
        requests = audited(plane, wall, wall + window).total()
        return {
            "ready": ready,
            "cpu": cpu / window,
            "api": requests / window,
            "logBytes": served / window,
            "logReads": reads / window,
        }
    finally:
        operator.kill()
        operator.wait()
        plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def steady(plane: Plane, jobs: int, window: float) -> None:
    from fleet import OLD_LOG, FleetAgent

    assert plane.authority is not None
    serving = plane.authority.issue("fleet-agent", "fleet-agent", hosts=("127.0.0.1", "localhost"), server=True)
    nodes = [f"fleet-{i}" for i in range(2 * (jobs // 100 + 1))]
    agent = FleetAgent(plane.admin_kubeconfig, plane.audit_log.parent / "fleet", nodes, serving.cert, serving.key).start()
    stop = threading.Event()
    threading.Thread(target=agent.grow, args=(5.0, stop), daemon=True).start()
    print(f"{os.cpu_count()} CPU cores shared by the control plane, the fake nodes and the operator; {jobs} running jobs")
    rows = []
    try:
        for i, (label, overrides) in enumerate(CONFIGURATIONS.items()):
            row = run_steady(plane, agent, f"fleet-{i}", jobs, overrides, window)
            rows.append(row)
            print(
                f"{label:28} running {row['ready']:>4}  operator CPU {row['cpu']:.3f} s/s  API {row['api']:.1f} req/s  "
                f"pod logs {row['logBytes'] / 1024:.1f} KiB/s in {row['logReads']:.1f} reads/s"
            )
    finally:
        stop.set()
        agent.stop()
    base, tuned = rows
    whole = tuned["logReads"] * (OLD_LOG + window / 5 * 100)
    print(
        f"kubetune / baseline: CPU {tuned['cpu'] / max(base['cpu'], 1e-9):.2f}x, API {tuned['api'] / max(base['api'], 1e-9):.2f}x, "
        f"log bytes {tuned['logBytes'] / max(base['logBytes'], 1e-9):.2f}x; reading whole logs instead would move "
        f"{whole / 2**20:.0f} MiB/s ({OLD_LOG // 2**20} MiB per log and growing)"
    )


def baseline_operator(revision: str, into: Path) -> Operator:
    """The operator as it was at a git revision: a worktree of it, its packages first on the PYTHONPATH."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(into), revision], check=True, capture_output=True)
    packages = tuple(str(into / part) for part in ("api", "operator", "cli", "trainer"))
    return Operator(f"baseline (the operator at {revision})", {}, packages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--paths", default=",".join(PATHS), help="which of suspended, queued, preflight")
    parser.add_argument("--baseline", default="", metavar="REV", help="the operator at a git revision; default Kopf's defaults")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a burst may take to settle")
    parser.add_argument("--wait", type=float, default=60, help="seconds the settled jobs are watched waiting")
    parser.add_argument("--steady", type=int, default=0, metavar="N", help="the steady state of N running jobs instead")
    parser.add_argument("--window", type=float, default=60, help="seconds the steady state is measured")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kubetune-opbench-"))
    plane = Plane.start(work)
    baseline = (
        baseline_operator(args.baseline, work / "baseline")
        if args.baseline
        else Operator("baseline (Kopf's defaults)", KOPF_DEFAULTS)
    )
    operators = (baseline, Operator("this tree, kubetune's defaults", {}))
    try:
        plane.kubectl("apply", "-f", str(ROOT / "crds" / "finetunejob.yaml"))
        jsonpath = "jsonpath={.status.conditions[?(@.type=='Established')].status}"
        while plane.kubectl("get", "crd/finetunejobs.kubetune.dev", "-o", jsonpath, check=False).stdout != "True":
            time.sleep(0.2)
        if args.steady:
            steady(plane, args.steady, args.window)
            return
        print(f"{os.cpu_count()} CPU cores, shared by etcd, kube-apiserver, the controllers, the operator and the client")
        print(f"{args.jobs} FineTuneJobs per burst, from 8 client threads")
        ratios = []
        for n, path in enumerate(args.paths.split(",")):
            print(f"{path}: settles in phase {PATHS[path][3]}")
            base, tuned = (
                report(
                    operator.label,
                    args.jobs,
                    run_burst(plane, f"bench-{n}-{i}", args.jobs, path, operator, args.timeout, args.wait),
                )
                for i, operator in enumerate(operators)
            )
            ratios.append(
                f"  {path:10} settled {tuned['settled']:.0f}/{base['settled']:.0f}, p99 create->settled "
                f"{tuned['p99'] / base['p99']:.2f}x, burst API requests {tuned['requests'] / max(base['requests'], 1):.2f}x, "
                f"burst CPU {tuned['cpu'] / base['cpu']:.2f}x, peak RSS {tuned['rss'] / base['rss']:.2f}x; waiting: syncs "
                f"{tuned['wait_syncs']:.0f} vs {base['wait_syncs']:.0f}, API requests {tuned['wait_requests']:.0f} vs "
                f"{base['wait_requests']:.0f}, CPU {tuned['wait_cpu'] / max(base['wait_cpu'], 1e-9):.2f}x"
            )
        print("this tree / baseline:")
        print("\n".join(ratios))
    finally:
        plane.stop()
        if args.baseline:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / "baseline")], check=False)


if __name__ == "__main__":
    main()
