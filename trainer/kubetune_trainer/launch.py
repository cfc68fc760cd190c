"""The pod's entry point: fetch model and data once per worker, start this worker's ranks with torchrun,
and leave one summary in the termination message.

In a pod: `python -m kubetune_trainer` (the environment and mounted config follow kubetune_api.contract).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from kubetune_api import events, layout
from kubetune_api._types import quantity_value
from kubetune_api.conditions import Reason
from kubetune_api.contract import (
    ENV_EVENTS,
    ENV_WORK_DIR,
    EXIT_PREEMPTED,
    RankFailure,
    Summary,
    WorkerEnv,
    drop_tracking_credentials,
)
from kubetune_api.job import FineTuneJobSpec
from kubetune_api.metrics import Metrics
from kubetune_trainer import rank_env, streams
from kubetune_trainer.data import prepared
from kubetune_trainer.errors import TrainerFailure
from kubetune_trainer.inputs import cache_dir, fetch_adapter, fetch_inputs, fetch_task_items
from kubetune_trainer.loaders import without_loaders
from kubetune_trainer.rank_env import RankEnv
from kubetune_trainer.recipe import outputs, report
from kubetune_trainer.signals import in_this_process
from kubetune_trainer.spec_io import load_spec
from kubetune_trainer.storage import Store
from kubetune_trainer.storage.model_cache import Entry


def prepare_output(spec: FineTuneJobSpec, store: Store) -> None:
    """Before any download: a finished output is never overwritten by accident, and with overwrite it starts afresh."""
    if not outputs.finished(spec, store):
        return  # nothing finished there: a restarted run resumes from its checkpoints
    for name in layout.RUN_FILES:  # _SUCCESS first (layout.py says why)
        target = layout.under(spec.output.uri, name)
        if store.exists(target):
            store.delete(target)
    for name in layout.RUN_PREFIXES:
        store.delete_prefix(layout.under(spec.output.uri, name))


def result_dir(work: Path) -> Path:
    """Where the ranks leave their results for the launcher (rank_env.METRICS_FILE, rank_env.FAILURE_FILES)."""
    return work / "results"


@dataclass(frozen=True)
class Outcome:
    """How this worker's ranks ended, from what they left in the result directory (rank 0's metrics, each failed
    rank's reason) and torchrun's exit code."""

    succeeded: bool
    metrics: Metrics | None = None  # rank 0's worker only
    reason: str = ""
    message: str = ""
    step: int | None = None


def _outcome(results: Path, returncode: int) -> Outcome:
    written = results / rank_env.METRICS_FILE
    if returncode == 0:  # rank 0's worker has the metrics; the other workers only finished their part
        return Outcome(True, Metrics.model_validate_json(written.read_text()) if written.is_file() else None)
    failures = []
    for path in sorted(results.glob(rank_env.FAILURE_FILES)):
        try:
            failures.append(RankFailure.model_validate_json(path.read_bytes()[:65536]))
        except ValueError:
            continue  # a rank died writing it; its exit code still fails the worker
    failures.sort(key=lambda f: (f.reason == Reason.TRAINER_ERROR.value, f.rank))
    if failures:
        first = failures[0]
        return Outcome(False, reason=first.reason, message=f"rank {first.rank}: {first.message}", step=first.step or None)
    return Outcome(
        False,
        reason=Reason.TRAINER_ERROR.value,
        message=f"a training process exited with code {returncode} and left no reason (killed?)",
    )


def _headline(metrics: Metrics) -> dict[str, float | None]:
    """The first task's first grader, base model and adapter: the score a status and `kubectl get ftj` show."""
    if not metrics.tasks:
        return {}
    first = next(iter(metrics.tasks.values())).headline()
    return {"baseTaskScore": first.base.score, "taskScore": first.adapter.score}


def final_summary(spec: FineTuneJobSpec, outcome: Outcome) -> Summary:
    if not outcome.succeeded:
        return report.summary("Failed", reason=outcome.reason, message=outcome.message, steps=outcome.step)
    metrics = outcome.metrics
    if not metrics:
        return report.summary("Succeeded", message="this worker's ranks finished; worker 0 reports the metrics")
    base, final, chosen, stopped = metrics.base, metrics.final, metrics.adapter, metrics.train.earlyStopping
    notes = [f"adapter from step {chosen.step} ({chosen.choice})"]
    if stopped:
        notes.append(f"stopped early at step {stopped.stoppedAtStep}: {stopped.reason}")
    return report.summary(
        "Succeeded",
        message="; ".join(notes),
        adapterUri=layout.adapter_uri(spec.output.uri),
        metrics={
            "baseEvalLoss": base.evalLoss,
            "evalLoss": final.evalLoss,
            "basePerplexity": base.perplexity,
            "perplexity": final.perplexity,
            "baseTokenAccuracy": base.tokenAccuracy,
            "tokenAccuracy": final.tokenAccuracy,
            "trainLoss": metrics.train.loss,
            "basePreferenceAccuracy": base.preferenceAccuracy,
            "preferenceAccuracy": final.preferenceAccuracy,
            "rewardMargin": final.rewardMargin,
            **_headline(metrics),
        },
        steps=metrics.train.steps,
        usefulTokensPerSecond=metrics.train.usefulTokensPerSecond,
        tracking=metrics.tracking.model_dump(exclude_none=True) if metrics.tracking is not None else None,
    )


def _stop_before_training(signum: int, frame: FrameType | None) -> None:
    """SIGTERM while the worker fetches and prepares: nothing is trained yet, so nothing is lost; end with a reason."""
    raise TrainerFailure(
        Reason.PREEMPTED, "stopped on SIGTERM (preempted, evicted or suspended) before training started; nothing to checkpoint"
    )


@contextlib.contextmanager
def _on_sigterm(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """A SIGTERM handler for a while (only the main thread may set one; elsewhere this does nothing)."""
    try:
        previous = signal.signal(signal.SIGTERM, in_this_process(handler))
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_ranks(command: list[str], env: dict[str, str], stderr: Any = None) -> int:
    """torchrun and this worker's ranks. A SIGTERM to this process (the pod's main one: the kubelet signals no other)
    goes to the ranks themselves, which agree on a step, checkpoint it and end (torchrun, signalled, would give them
    30 s and then kill them); a rank that starts after the signal gets it too."""
    process = subprocess.Popen(command, env=env, stderr=stderr)
    asked: list[bool] = []
    told: set[int] = set()

    def tell_ranks() -> None:
        with contextlib.suppress(psutil.Error):
            for rank in psutil.Process(process.pid).children():
                if rank.pid not in told:
                    with contextlib.suppress(psutil.Error):
                        rank.send_signal(signal.SIGTERM)
                    told.add(rank.pid)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        asked.append(True)
        tell_ranks()

    with _on_sigterm(on_sigterm):
        # watched, not bounded: training runs as long as it runs; a rank that stops making progress is ended by its
        # collectives' timeout (torch.distributed's, 30 minutes) and the deadline (runPolicy.activeDeadlineSeconds)
        while process.poll() is None:
            if asked:
                tell_ranks()
            time.sleep(0.2)
    return process.returncode


def ranks_environ(spec: FineTuneJobSpec, worker: WorkerEnv, ranks: RankEnv) -> dict[str, str]:
    """The environment torchrun and the ranks start with: this pod's, less what loads code and (but on worker 0) the
    tracking credentials, with the worker's and the ranks' contract variables."""
    # the ranks never see a variable that loads code, whatever put it in the pod (contract.LOADER_VARIABLES)
    env = {
        **without_loaders(os.environ),
        **worker.to_environ(),
        **ranks.to_environ(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    env["PYTHONSAFEPATH"] = "1"  # the working directory is never on the ranks' sys.path
    if worker.worker_rank != 0:  # only rank 0 of worker 0 tracks: no other worker's ranks hold the MLflow credentials
        drop_tracking_credentials(env)
    if streams.active is not None:  # in a pod: the ranks' event lines reach the log through the launcher only
        env[ENV_EVENTS] = streams.active.events_fifo()
    env[rank_env.PROCESS_START] = str(time.time())  # ranks report their start-up cost against it
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if spec.workers.gpusPerWorker == 0:
        env.setdefault("DS_ACCELERATOR", "cpu")
        env.setdefault("CUDA_VISIBLE_DEVICES", "")
    return env


def run_worker(
    spec: FineTuneJobSpec, worker: WorkerEnv, *, progress: str = "json", work_dir: Path | None = None, log: Path | None = None
) -> Summary:
    """Run this worker's ranks to the end; returns the summary (also written to the termination message). With
    `log`, everything the ranks and torchrun write to stderr (warnings, tracebacks, torch elastic's report) goes to
    that file instead of this process's stderr (`kubetune run`: the terminal keeps the progress and the outcome)."""
    work = work_dir or Path(tempfile.mkdtemp(prefix="kubetune-"))
    results = result_dir(work)
    shutil.rmtree(results, ignore_errors=True)
    results.mkdir(parents=True)
    entry: Entry | None = None
    try:
        with _on_sigterm(_stop_before_training):
            store = Store(spec.storage)
            prepare_output(spec, store)
            model, train, validation, entry = fetch_inputs(spec, store, cache_dir())
            adapter_dir = fetch_adapter(spec, store, cache_dir())
            items_dir = fetch_task_items(spec, store, cache_dir())
            if entry is not None:
                fetched = entry.fetched(spec.model.uri)
                events.emit(events.FetchLine(**fetched.model_dump()))  # how much came from the node's cache, from storage
                (work / rank_env.FETCH_FILE).write_text(fetched.model_dump_json())
            room = int(quantity_value(spec.workers.cacheSize))  # the prepared set is fetched into the pod's cache
            prepared_dir = prepared.for_worker(spec, model, train, validation, work, store, room)
    except Exception as exc:  # every failure before the ranks start still ends in one summary with a reason
        if entry is not None:
            entry.release()
        failure = exc if isinstance(exc, TrainerFailure) else TrainerFailure(Reason.TRAINER_ERROR, f"{type(exc).__name__}: {exc}")
        summary = report.summary("Failed", reason=failure.reason.value, message=failure.message)
        report.write_termination(worker.termination_log, summary)
        report.say(summary)
        return summary
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={worker.num_workers}",
        f"--node-rank={worker.worker_rank}",
        f"--nproc-per-node={worker.procs_per_worker}",
        f"--master-addr={worker.master_addr}",
        f"--master-port={worker.master_port}",
        "--max-restarts=0",  # a failed rank restarts the whole gang, which is the operator's job
        "-m",
        "kubetune_trainer.recipe.train",
    ]
    paths = RankEnv(model, train, validation, work, results, progress, prepared_dir, adapter_dir, items_dir=items_dir)
    env = ranks_environ(spec, worker, paths)
    try:
        if log is None:
            code = run_ranks(command, env)
        else:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("ab") as stream:
                code = run_ranks(command, env, stream)
    finally:
        if entry is not None:
            entry.release()  # the model is no longer in use here: the cache may evict it
    summary = final_summary(spec, _outcome(results, code))
    report.write_termination(worker.termination_log, summary)
    if worker.worker_rank == 0 or summary.status != "Succeeded":
        report.say(summary)
    return summary


def main() -> int:
    worker = WorkerEnv.from_environ()
    try:
        spec = load_spec(worker.config_path)
    except TrainerFailure as exc:
        summary = report.summary("Failed", reason=exc.reason.value, message=exc.message)
        report.write_termination(worker.termination_log, summary)
        report.say(summary)
        return 1
    work = Path(os.environ.get(ENV_WORK_DIR) or tempfile.mkdtemp(prefix="kubetune-"))
    summary = run_worker(spec, worker, progress="json", work_dir=work)
    if summary.status == "Succeeded":
        return 0
    return EXIT_PREEMPTED if summary.reason == Reason.PREEMPTED else 1
