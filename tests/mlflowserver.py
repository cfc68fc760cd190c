"""A real MLflow tracking server and model registry for the tests: `mlflow server` from PyPI (the dev extra), on
127.0.0.1, with a SQLite backend and a local artifact root, started and stopped by the tests themselves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .s3server import free_port


@dataclass
class MlflowServer:
    uri: str
    process: subprocess.Popen[bytes]
    directory: Path
    port: int

    def client(self):  # type: ignore[no-untyped-def]
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start(directory: Path, port: int | None = None) -> MlflowServer:
    """`mlflow server` with its data under directory (the same directory and port start it again, data kept)."""
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = (directory / "mlflow.log").open("ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{directory / 'mlflow.db'}",
            "--default-artifact-root",
            str(directory / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "MLFLOW_HOME": str(directory)},
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited {process.returncode}: {(directory / 'mlflow.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    return MlflowServer(uri, process, directory, port)
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"mlflow server did not answer in 120 s: {(directory / 'mlflow.log').read_text()[-3000:]}")
