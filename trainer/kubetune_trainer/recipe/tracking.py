"""Rank 0's MLflow tracking: the run's parameters, tags, live curves and final metrics, and the model version a
succeeded run registers. Spoken over MLflow's REST API (2.0), from a background thread with a bounded queue: the
tracker being down or slow never fails or stalls training. What cannot be delivered is retried with backoff, the
oldest metrics dropped past the bound, and the trouble said in the progress lines (status.tracking.degraded).
Every attempt of a job (a gang restart, a resume after preemption) continues the same run, found by its tag
kubetune.run-key (the job's uid; for kubetune run, its output URI)."""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from kubetune_api import layout
from kubetune_api.contract import (
    ENV_NAMESPACE,
    ENV_PREFLIGHT,
    ENV_SHARED_NAMES,
    ProgressLine,
    TrackingOutcome,
    WorkerEnv,
    preflight_figures,
)
from kubetune_api.job import FineTuneJobSpec
from kubetune_api.metrics import Metrics
from kubetune_api.records import RunManifest
from kubetune_api.tracking import tracking_names

ENV_URI = "MLFLOW_TRACKING_URI"  # MLflow's own variables, so any MLflow client set up the same way agrees
ENV_TOKEN = "MLFLOW_TRACKING_TOKEN"
ENV_USERNAME = "MLFLOW_TRACKING_USERNAME"
ENV_PASSWORD = "MLFLOW_TRACKING_PASSWORD"
RUN_KEY = "kubetune.run-key"
QUEUE_LIMIT = 20_000  # requests held while the server is away; the oldest metric batches go first beyond it
TIMEOUT = 10.0  # seconds per request
CLOSE_SECONDS = 30.0  # the most the end of a run waits for what is queued
ENV_CLOSE = "KUBETUNE_TRACKING_CLOSE_SECONDS"  # another bound for that wait (the tests' server that goes away)


def close_seconds() -> float:
    try:
        return float(os.environ.get(ENV_CLOSE) or CLOSE_SECONDS)
    except ValueError:
        return CLOSE_SECONDS


BATCH = 500  # metrics per log-batch request (MLflow takes 1000)
PARAM_LIMIT = 6000  # characters of a parameter value MLflow keeps


class Unavailable(Exception):
    """The server could not be reached, or answered with an error worth retrying."""


class Refused(Exception):
    """The server answered the request with a permanent error (its words)."""


class _SameOrigin(urllib.request.HTTPRedirectHandler):
    """Redirects are followed only to the server's own scheme, host and port: the credentials go nowhere else."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        old, new = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if (old.scheme, old.netloc) != (new.scheme, new.netloc):
            return None  # refused: the 3xx is the answer (a permanent error)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_SameOrigin)


class Client:
    """The few calls of MLflow's REST API a run needs."""

    def __init__(self, uri: str, environ: dict[str, str]) -> None:
        self.base = uri.rstrip("/") + "/api/2.0/mlflow/"
        self.headers = {"Content-Type": "application/json"}
        if environ.get(ENV_TOKEN):
            self.headers["Authorization"] = f"Bearer {environ[ENV_TOKEN]}"
        elif environ.get(ENV_USERNAME):
            pair = f"{environ[ENV_USERNAME]}:{environ.get(ENV_PASSWORD, '')}".encode()
            self.headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()

    def call(self, path: str, body: dict[str, Any] | None = None, query: dict[str, str] | None = None) -> dict[str, Any]:
        url = self.base + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, headers=self.headers, method="POST" if data else "GET")
        try:
            with _OPENER.open(request, timeout=TIMEOUT) as response:
                answer = json.loads(response.read() or b"{}")
                return answer if isinstance(answer, dict) else {}
        except urllib.error.HTTPError as exc:
            try:
                said = json.loads(exc.read() or b"{}")
            except ValueError:
                said = {}
            code = str(said.get("error_code") or exc.code)
            if exc.code >= 500 or exc.code == 429:
                raise Unavailable(f"HTTP {exc.code} {code}") from None
            raise Refused(code) from None
        except (OSError, ValueError) as exc:  # refused, reset, timed out, not JSON
            raise Unavailable(type(exc).__name__) from None


def _flat(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), item, out)
    elif value is not None:
        text = json.dumps(value) if isinstance(value, list | bool) else str(value)
        out[prefix] = text[:PARAM_LIMIT]


def params_of(spec: FineTuneJobSpec) -> dict[str, str]:
    """The resolved spec as flat parameters (lora.r, training.learningRate, ...); storage is where, not what."""
    out: dict[str, str] = {}
    _flat("", spec.model_dump(mode="json", exclude={"storage", "runPolicy"}), out)
    return out


class Tracker:
    """One run's tracking, from rank 0. Calls return at once; a thread delivers."""

    def __init__(self, client: Client, experiment: str, run_key: str, run_name: str, model: str = "kubetune") -> None:
        self.client, self.experiment, self.run_key, self.run_name = client, experiment, run_key, run_name
        self.model = model  # the registered model a succeeded run's adapter is added to
        self.run_id: str | None = None
        self.trouble: str | None = None  # the newest reason deliveries are behind, cleared when they catch up
        self.dropped = 0
        self.registered: tuple[str, str] | None = None
        self._queue: collections.deque[tuple[Callable[[], object], bool]] = collections.deque()  # (work, a metric batch)
        self._lock = threading.Condition()
        self._closing = False
        self._stopped = False  # close's bound has passed: the thread ends (no thread of ours outlives the run)
        self._starting = False  # the run's start is queued, not yet delivered or refused
        self._deadline: float | None = None  # the end's bound, set by the first wait (started or close)
        self._thread = threading.Thread(target=self._deliver, name="kubetune-tracking", daemon=True)
        self._thread.start()

    # what the run says (any thread)

    def _put(self, work: Callable[[], object], metrics: bool = False) -> None:
        with self._lock:
            if len(self._queue) >= QUEUE_LIMIT and metrics:
                # the oldest metric batch goes; never the one being delivered (the first), nor the run's start,
                # tags, registration or end
                oldest = next((i for i, (_, batch) in enumerate(self._queue) if batch and i > 0), None)
                if oldest is not None:
                    del self._queue[oldest]
                    self.dropped += 1
            self._queue.append((work, metrics))
            self._lock.notify()

    def start(self, params: dict[str, str], tags: dict[str, str]) -> None:
        self._starting = True
        self._put(lambda: self._start(params, tags))

    def metrics(self, step: int, values: Mapping[str, float | None]) -> None:
        now = int(time.time() * 1000)
        batch = [{"key": k, "value": float(v), "timestamp": now, "step": step} for k, v in values.items() if v is not None]
        if batch:
            self._put(lambda: self._log(metrics=batch), metrics=True)

    def tags(self, tags: dict[str, str]) -> None:
        self._put(lambda: self._log(tags=[{"key": k, "value": v} for k, v in tags.items()]))

    def register(self, name: str, source: str, tags: dict[str, str]) -> None:
        self._put(lambda: self._register(name, source, tags))

    def finish(self, status: str) -> None:
        self._put(lambda: self.client.call("runs/update", {"run_id": self._run(), "status": status, "end_time": _ms()}))

    def on_progress(self, line: ProgressLine) -> None:
        self.metrics(line.step, {"loss": line.loss, "learningRate": line.learningRate, "tokensPerSecond": line.tokensPerSecond})

    def on_eval(self, step: int, model: str, result: dict[str, Any]) -> None:
        prefix = "base." if model == "base" else "eval."
        self.metrics(step, {prefix + k: v for k, v in result.items() if isinstance(v, int | float)})

    def degraded(self) -> str | None:
        """Why tracking is behind (for the progress lines), or None."""
        with self._lock:
            behind = len(self._queue)
        parts = [self.trouble] if self.trouble else []
        if self.dropped:
            parts.append(f"{self.dropped} metric batches dropped")
        if parts and behind:
            parts.append(f"{behind} requests waiting")
        return "; ".join(p for p in parts if p) or None

    def _until(self, seconds: float) -> float:
        """The end's waits share one bound: the first wait sets it, a later one may only shorten it."""
        ask = time.monotonic() + seconds
        self._deadline = ask if self._deadline is None else min(self._deadline, ask)
        return self._deadline

    def started(self, seconds: float | None = None) -> str | None:
        """The run's id, once its start is delivered: a run that trained faster than a slow server answered waits
        for it here (within the bound close shares), so metrics.json can name the run; None if it never came."""
        deadline = self._until(close_seconds() if seconds is None else seconds)
        with self._lock:
            while self.run_id is None and self._starting and time.monotonic() < deadline:
                self._lock.wait(timeout=0.2)
        return self.run_id

    def close(self, seconds: float | None = None) -> TrackingOutcome:
        """Wait (bounded) for what is queued, then say where the run went and what it registered."""
        deadline = self._until(close_seconds() if seconds is None else seconds)
        with self._lock:
            self._closing = True
            self._lock.notify()
            while self._queue and not self._stopped and time.monotonic() < deadline:  # a second close waits for nothing
                self._lock.wait(timeout=0.2)
            left = len(self._queue)
            self._stopped = True  # what is left is not delivered: the thread ends rather than retry into the exit
            self._lock.notify_all()
        self._thread.join(timeout=TIMEOUT + 1)  # a request in flight ends within its own timeout
        if left:
            self.trouble = f"{self.trouble or 'the tracking server is slow'}; {left} requests not delivered"
        name, version = self.registered or (None, None)
        return TrackingOutcome(
            experiment=self.experiment,
            runId=self.run_id,
            registeredModel=name,
            registeredVersion=version,
            degraded=self.degraded() if left or self.dropped or self.trouble else None,
        )

    # the delivering thread

    def _deliver(self) -> None:
        pause = 1.0
        while True:
            with self._lock:
                while not self._queue and not self._stopped:
                    self._lock.wait(timeout=1.0)
                if self._stopped:
                    return
                work = self._queue[0][0]
            try:
                work()
            except Unavailable as exc:
                self.trouble = f"the tracking server is unavailable ({exc}); retrying"
                with self._lock:  # close wakes it
                    if not self._stopped:
                        self._lock.wait(timeout=min(pause, 0.5) if self._closing else pause)
                pause = min(pause * 2, 30.0)
                continue
            except Refused as exc:  # a request the server will never take: said, and skipped
                self.trouble = f"the tracking server refused a request ({exc})"
            pause = 1.0
            with self._lock:
                self._queue.popleft()
                self._starting = False  # the start is the first request queued: delivered or refused now
                if not self._queue and self.trouble and self.trouble.endswith("retrying"):
                    self.trouble = None  # caught up
                self._lock.notify_all()

    def _run(self) -> str:
        if self.run_id is None:
            raise Refused("no run")
        return self.run_id

    def _experiment_id(self) -> str:
        try:
            found = self.client.call("experiments/get-by-name", query={"experiment_name": self.experiment})
            return str(found["experiment"]["experiment_id"])
        except Refused:
            try:
                return str(self.client.call("experiments/create", {"name": self.experiment})["experiment_id"])
            except Refused:  # created meanwhile by another job
                found = self.client.call("experiments/get-by-name", query={"experiment_name": self.experiment})
                return str(found["experiment"]["experiment_id"])

    def _start(self, params: dict[str, str], tags: dict[str, str]) -> None:
        experiment = self._experiment_id()
        search = {
            "experiment_ids": [experiment],
            "filter": f"tags.`{RUN_KEY}` = '{self.run_key}'",
            "max_results": 1,
        }
        runs = self.client.call("runs/search", search).get("runs") or []
        if runs:  # an earlier attempt's: continue it
            self.run_id = str(runs[0]["info"]["run_id"])
            self.client.call("runs/update", {"run_id": self.run_id, "status": "RUNNING"})
        else:
            body = {
                "experiment_id": experiment,
                "run_name": self.run_name,
                "start_time": _ms(),
                "tags": [{"key": RUN_KEY, "value": self.run_key}],
            }
            self.run_id = str(self.client.call("runs/create", body)["run"]["info"]["run_id"])
        items = list(params.items())
        for i in range(0, len(items), 100):
            self._log(params=[{"key": k, "value": v} for k, v in items[i : i + 100]])
        self._log(tags=[{"key": k, "value": v} for k, v in tags.items()])

    def _log(self, metrics: list[Any] | None = None, params: list[Any] | None = None, tags: list[Any] | None = None) -> None:
        run = self._run()
        metrics = metrics or []
        for i in range(0, max(len(metrics), 1), BATCH):
            body = {"run_id": run, "metrics": metrics[i : i + BATCH], "params": params or [], "tags": tags or []}
            try:
                self.client.call("runs/log-batch", body)
            except Refused:
                if not params:
                    raise
                # a parameter logged by an earlier attempt with another value (a resumed run): keep the first
                self.client.call("runs/log-batch", {**body, "params": []})
            params, tags = None, None

    def _register(self, name: str, source: str, tags: dict[str, str]) -> None:
        try:
            self.client.call("registered-models/create", {"name": name})
        except Refused as exc:
            if "ALREADY_EXISTS" not in str(exc):
                raise
        body = {
            "name": name,
            "source": source,
            "run_id": self._run(),
            "tags": [{"key": k, "value": v[:PARAM_LIMIT]} for k, v in tags.items()],
        }
        version = self.client.call("model-versions/create", body)["model_version"]["version"]
        self.registered = (name, str(version))


def _ms() -> int:
    return int(time.time() * 1000)


def start(spec: FineTuneJobSpec, worker: WorkerEnv, environ: Mapping[str, str] | None = None) -> Tracker | None:
    """Rank 0's tracker, its run found or created with the spec as parameters and the job's tags, when a tracking
    server is configured and the job did not opt out; None otherwise."""
    env = dict(os.environ if environ is None else environ)
    uri, settings = env.get(ENV_URI, ""), spec.output.tracking
    if not uri.startswith(("http://", "https://")) or (settings is not None and not settings.enabled):
        return None
    namespace = env.get(ENV_NAMESPACE) or None
    experiment, model = tracking_names(settings, namespace or "", worker.job_name, env.get(ENV_SHARED_NAMES) == "true")
    key = worker.job_uid or hashlib.sha256(f"{worker.job_name}\n{spec.output.uri}".encode()).hexdigest()[:32]
    tracker = Tracker(Client(uri, env), experiment, key, worker.job_name or "kubetune", model)
    figures = preflight_figures(env.get(ENV_PREFLIGHT, ""))
    estimates = {f"preflight.{k}": str(int(v)) if v.is_integer() else f"{v:.6g}" for k, v in figures.items()}
    tracker.start(params_of(spec) | estimates, run_tags(spec, worker, namespace))
    return tracker


def finished(tracker: Tracker, spec: FineTuneJobSpec, worker: WorkerEnv, metrics: Metrics, about: RunManifest) -> TrackingOutcome:
    """After _SUCCESS: the base-versus-adapter table and the run's totals, the model version (with its lineage:
    base model, dataset digests, spec digest, held-out metrics) unless the job opted out, the run finished."""
    step = metrics.train.steps
    table: dict[str, float | None] = {
        f"final.{k}": v for k, v in metrics.final.model_dump().items() if isinstance(v, int | float)
    }
    table |= {"train.loss": metrics.train.loss, "train.usefulTokensPerSecond": metrics.train.usefulTokensPerSecond}
    table |= task_metrics(metrics)
    tracker.metrics(step, table)  # the base model's are logged at step 0, as evaluated
    digests = {f"kubetune.dataset.{k}.sha256": v.sha256 for k, v in about.datasets.items()}
    tracker.tags({**digests, "kubetune.spec-sha256": about.specSha256})  # what exactly was trained
    table |= {f"base.{k}": v for k, v in metrics.base.model_dump().items() if isinstance(v, int | float)}
    settings = spec.output.tracking
    if settings is None or settings.registerModel:
        name = tracker.model
        lineage = {
            "kubetune.base-model": spec.model.uri,
            "kubetune.spec-sha256": about.specSha256,
            "kubetune.job-uid": worker.job_uid,
            "kubetune.namespace": os.environ.get(ENV_NAMESPACE, ""),
            **digests,
            **{f"heldout.{k}": str(v) for k, v in table.items() if k.startswith(("final.", "base.")) and v is not None},
            **{k: str(v) for k, v in table.items() if k.startswith("task.") and v is not None},
        }
        tracker.register(name, layout.adapter_uri(spec.output.uri), {k: v for k, v in lineage.items() if v})
    tracker.finish("FINISHED")
    return tracker.close()


def task_metrics(metrics: Metrics) -> dict[str, float | None]:
    """spec.evaluation.tasks as MLflow metrics (and the version's tags): task.<name>.<grader>.<base|adapter>, the
    grader's place added where a task grades twice with one type."""
    out: dict[str, float | None] = {}
    for name, result in (metrics.tasks or {}).items():
        for k, graded in enumerate(result.graders):
            kind = graded.grader if [g.grader for g in result.graders].count(graded.grader) == 1 else f"{graded.grader}{k}"
            out[f"task.{name}.{kind}.base"] = graded.base.score
            out[f"task.{name}.{kind}.adapter"] = graded.adapter.score
    return out


def run_tags(spec: FineTuneJobSpec, worker: WorkerEnv, namespace: str | None) -> dict[str, str]:
    tags = {
        "kubetune.job-name": worker.job_name,
        "kubetune.job-uid": worker.job_uid,
        "kubetune.namespace": namespace or "",
        "kubetune.base-model": spec.model.uri,
        "kubetune.dataset.train": spec.dataset.train,
        "kubetune.output-uri": spec.output.uri,
        "kubetune.adapter-uri": layout.adapter_uri(spec.output.uri),
    }
    if spec.dataset.validation:
        tags["kubetune.dataset.validation"] = spec.dataset.validation
    return {k: v for k, v in tags.items() if v}
