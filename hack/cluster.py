#!/usr/bin/env python3
"""The test control plane and node agent by hand: `hack/cluster.py up [DIR]` starts them in the background and
prints the admin kubeconfig; `hack/cluster.py down [DIR]` stops them. Build the binaries first (make testbed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def serve(directory: Path) -> None:
    from tests.cluster.node_agent import NodeAgent
    from tests.cluster.plane import Plane

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # handled by sigwait below
    import shutil

    shutil.rmtree(directory / "etcd", ignore_errors=True)  # a fresh cluster each time
    plane = Plane.start(directory)
    assert plane.authority is not None
    serving = plane.authority.issue("node-agent", "node-agent", hosts=("127.0.0.1",), server=True)
    agent = NodeAgent(plane.admin_kubeconfig, directory / "nodes", ["node-1", "node-2"], serving.cert, serving.key).start()
    (directory / "ready.json").write_text(json.dumps({"kubeconfig": str(plane.admin_kubeconfig), "timings": plane.timings}))
    signal.sigwait({signal.SIGINT, signal.SIGTERM})
    agent.stop()
    plane.stop()
    (directory / "ready.json").unlink(missing_ok=True)


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else "up"
    directory = Path(sys.argv[2] if len(sys.argv) > 2 else ROOT / ".cache" / "testbed" / "cluster").resolve()
    pidfile = directory / "pid"
    if command == "serve":
        serve(directory)
        return 0
    if command == "up":
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ready.json").unlink(missing_ok=True)
        log = (directory / "cluster.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, __file__, "serve", str(directory)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        pidfile.write_text(str(process.pid))
        for _ in range(600):
            if (directory / "ready.json").exists():
                info = json.loads((directory / "ready.json").read_text())
                print(f"export KUBECONFIG={info['kubeconfig']}   # ready in {info['timings']['ready']:.1f}s")
                return 0
            if process.poll() is not None:
                print((directory / "cluster.log").read_text()[-3000:], file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 1
    if command == "down":
        if not pidfile.exists():
            print("not running", file=sys.stderr)
            return 0
        pid = int(pidfile.read_text())
        try:
            os.kill(pid, signal.SIGTERM)
            for _ in range(150):
                os.kill(pid, 0)
                time.sleep(0.2)
        except ProcessLookupError:
            pass
        pidfile.unlink(missing_ok=True)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
