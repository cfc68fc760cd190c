"""Kueue's controller manager, built from sigs.k8s.io/kueue v0.17.0 (hack/build-testbed.sh), run against the test
control plane: the real admission of queued Jobs by ClusterQueue quota.

Out of a cluster it runs as a Deployment would: its metrics certificate is mounted where the manager reads it
(/etc/kueue/metrics/certs, a Secret volume in a cluster; here a bind mount in a mount namespace of its own),
leader election off (one replica), only the batch/job integration, Jobs without a queue label left alone, the
on-demand visibility API off (it needs an aggregated API server), and ephemeral-storage requests not counted
against quota (the operator requests the cache volume's size)."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from .plane import BIN, Plane, free_port

CONFIG = """apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: kueue-system
health:
  healthProbeBindAddress: 127.0.0.1:{health}
metrics:
  bindAddress: "0"
webhook:
  host: 127.0.0.1
  port: {webhook}
  certDir: {certs}
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
manageJobsWithoutQueueName: false
resources:
  excludeResourcePrefixes: ["ephemeral-storage"]
integrations:
  frameworks: ["batch/job"]
"""


class Kueue:
    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process, self.log = process, log

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start(plane: Plane, directory: Path) -> Kueue:
    manager = BIN / "kueue-manager"
    if not manager.is_file():
        raise RuntimeError(f"{manager} is missing: run `make testbed` (hack/build-testbed.sh) first")
    assert plane.authority is not None
    directory.mkdir(parents=True, exist_ok=True)
    certs = directory / "certs"
    certs.mkdir(exist_ok=True)
    serving = plane.authority.issue(
        "kueue", "kueue-webhook-service.kueue-system.svc", hosts=("127.0.0.1", "localhost"), server=True
    )
    shutil.copy(serving.cert, certs / "tls.crt")
    shutil.copy(serving.key, certs / "tls.key")
    health = free_port()
    config = directory / "config.yaml"
    config.write_text(CONFIG.format(health=health, webhook=free_port(), certs=certs))
    script = (
        "set -e; mkdir -p /etc/kueue/metrics/certs; "
        f"mount --bind {certs} /etc/kueue/metrics/certs; "
        f"exec {manager} --config {config} --kubeconfig {plane.admin_kubeconfig} --feature-gates=VisibilityOnDemand=false"
    )
    log = directory / "kueue.log"
    process = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script], stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return Kueue(process, log)
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"Kueue did not become ready: {log.read_text()[-3000:]}")
        time.sleep(0.5)
