"""The operator's one way to the API server: the clients (every request bounded in time), reads that give the
server's JSON (None for 404), and the bounded read of the end of a pod's log."""

from __future__ import annotations

import json
from typing import Any

import kopf
from kubernetes import client, config

LOG_LIMIT = 64 * 1024  # bytes of rank 0's log read per sync
LOG_TIMEOUT = 5  # seconds a log read may take
REQUEST_TIMEOUT = (10, 60)  # seconds to connect, to read a response: no sync thread (holding its job's lock) waits longer


class Api:
    """The kubernetes clients, created once the operator has credentials."""

    core: client.CoreV1Api
    batch: client.BatchV1Api
    networking: client.NetworkingV1Api
    custom: client.CustomObjectsApi


API = Api()


class BoundedApiClient(client.ApiClient):  # type: ignore[misc]
    """Every request the operator makes through the kubernetes client carries a timeout (the client has none by
    default: a frozen API server would hold a sync thread, and its job's lock, for ever); a call that names its own
    keeps it."""

    def call_api(self, *args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return super().call_api(*args, _request_timeout=_request_timeout or REQUEST_TIMEOUT, **kwargs)


def connect(kubeconfig: str | None, workers: int) -> None:
    """The clients, from the pod's service account or else the kubeconfig named (read now, not at import time);
    one kept-alive connection per sync thread."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig)
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = workers
    api = BoundedApiClient(configuration)
    API.core, API.batch, API.custom = client.CoreV1Api(api), client.BatchV1Api(api), client.CustomObjectsApi(api)
    API.networking = client.NetworkingV1Api(api)


def raw(fn: Any, *args: Any, **kwargs: Any) -> bytes:
    """Call the API and return the response's bytes, skipping the client's models (they cost more CPU than the
    rest of a sync). The body is read and the connection given back to the pool, or the next call would
    open a new TLS connection."""
    response = fn(*args, _preload_content=False, **kwargs)
    try:
        return bytes(response.data)
    finally:
        response.release_conn()


def read(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """A read, or None for 404; any other error is retried by Kopf."""
    try:
        return fn(*args, **kwargs)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise kopf.TemporaryError(f"API error {exc.status}: {exc.reason}", delay=5) from exc


def read_json(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """A read as the API server's JSON, or None for 404."""
    data = read(raw, fn, *args, **kwargs)
    return None if data is None else json.loads(data)


def log_tail(pod: str, namespace: str, since_seconds: int) -> str:
    """The end of a pod's trainer log, bounded in lines, bytes and time: best effort ("" when the read fails)."""
    try:
        log = API.core.read_namespaced_pod_log(
            pod,
            namespace,
            container="trainer",
            tail_lines=100,
            limit_bytes=LOG_LIMIT,
            since_seconds=since_seconds,
            _request_timeout=LOG_TIMEOUT,
        )
    except Exception:
        return ""
    return log if isinstance(log, str) else ""
