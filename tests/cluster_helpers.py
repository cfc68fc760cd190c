"""Helpers of the tests against a real API server: waiting, reading FineTuneJobs and their conditions."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from .s3server import S3Server


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


def ftj(plane, name: str, namespace: str = "default") -> dict[str, Any]:  # type: ignore[no-untyped-def]
    out = plane.kubectl("get", "ftj", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def condition(body: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (body.get("status") or {}).get("conditions", []) if c["type"] == type_), {})


def namespace_with_credentials(plane, s3: S3Server, namespace: str) -> str:  # type: ignore[no-untyped-def]
    plane.kubectl("create", "namespace", namespace, check=False)
    credentials(plane, namespace, "s3-credentials", s3.access_key, s3.secret_key)
    return namespace


def manifest(name: str, s3: S3Server, stored: dict[str, str], training: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"uri": stored["model"]},
            "dataset": {"train": stored["train"], "validation": stored["validation"], "maxSeqLength": 128},
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "training": {"learningRate": 3.0e-3, "microBatchSize": 8, **training},
            "deepspeed": {"zeroStage": 2},
            "workers": {"replicas": 2, "gpusPerWorker": 0},
            "storage": {
                "endpoint": s3.endpoint,
                "region": "us-east-1",
                "addressingStyle": "path",
                "credentialsSecret": "s3-credentials",
            },
            "output": {"uri": f"s3://adapters/e2e/{name}/"},
        },
    }


NAMESPACE = "e2e"


def credentials(plane, namespace: str, name: str, access_key: str, secret_key: str) -> None:  # type: ignore[no-untyped-def]
    """A credentials Secret in the namespace (storage.credentialsSecret names it), made once."""
    plane.kubectl(
        "create",
        "secret",
        "generic",
        name,
        "-n",
        namespace,
        f"--from-literal=AWS_ACCESS_KEY_ID={access_key}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={secret_key}",
        check=False,
    )
