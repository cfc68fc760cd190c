"""`kubetune run MANIFEST`: the same trainer on this machine, no cluster; local processes stand in for workers."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

from kubetune_api.contract import CONFIG_FILE, DEEPSPEED_FILE, Summary, SummaryMetrics, WorkerEnv
from kubetune_api.ds_config import deepspeed_config
from kubetune_api.job import FineTuneJob
from kubetune_api.metrics import Metrics
from kubetune_trainer import terminal
from kubetune_trainer.launch import result_dir, run_worker
from kubetune_trainer.rank_env import METRICS_FILE
from kubetune_trainer.spec_io import dump_spec
from kubetune_trainer.tasks import table


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


LOG_NAME = "trainer.log"


def log_path(work_dir: Path) -> Path:
    return work_dir / LOG_NAME


def written_metrics(work_dir: Path) -> Metrics | None:
    """What rank 0 wrote to metrics.json, as the launcher kept it in work_dir (for the curves); None if it did not."""
    try:
        return Metrics.model_validate_json((result_dir(work_dir) / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None


def run(job: FineTuneJob, processes: int, progress: str, work_dir: Path) -> Summary:
    """Train `job` with `processes` local ranks; the config is written exactly as the operator mounts it. The
    ranks' stderr (library warnings, tracebacks, torch elastic's report) goes to work_dir/trainer.log."""
    spec = job.spec
    name = str(job.metadata.get("name", "local"))
    config_dir = work_dir / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / CONFIG_FILE).write_text(dump_spec(spec))
    (config_dir / DEEPSPEED_FILE).write_text(
        json.dumps(deepspeed_config(spec, processes, on_gpu=spec.workers.gpusPerWorker > 0), indent=2)
    )
    worker = WorkerEnv(
        config_path=config_dir / CONFIG_FILE,
        job_name=name,
        job_uid="",
        num_workers=1,
        procs_per_worker=processes,
        worker_rank=0,
        master_addr="127.0.0.1",
        master_port=free_port(),
        termination_log=work_dir / "termination-log",
    )
    log = log_path(work_dir)
    log.unlink(missing_ok=True)
    if progress == "bar":  # a person at a terminal: this process's events (data prepared, fetched) as words too
        terminal.install()
    return run_worker(spec, worker, progress=progress, work_dir=work_dir, log=log)


def print_report(summary: Summary, stream: Any = sys.stdout, metrics: Metrics | None = None, log: Path | None = None) -> None:
    if summary.status != "Succeeded":
        print(f"\nFailed: {summary.reason}: {summary.message}", file=stream)
        if log is not None and log.is_file():
            print(f"the full log, with every rank's output: {log}", file=stream)
        return
    drawn = metrics.curves if metrics is not None else None
    if drawn is not None and drawn.train:
        from kubetune_trainer.recipe.curves import sparkline

        print(f"\ntraining loss  {sparkline([p.loss for p in drawn.train if p.loss is not None])}", file=stream)
        if len(drawn.eval) > 1:
            print(f"held-out loss  {sparkline([p.evalLoss for p in drawn.eval if p.evalLoss is not None])}", file=stream)
    m = summary.metrics or SummaryMetrics()
    print("\nheld-out            base      adapter", file=stream)
    rows: tuple[tuple[str, Any, Any], ...] = (
        ("DPO loss", m.baseEvalLoss, m.evalLoss),
        ("pref. accuracy", m.basePreferenceAccuracy, m.preferenceAccuracy),
    )
    if m.preferenceAccuracy is None:
        rows = (
            ("loss", m.baseEvalLoss, m.evalLoss),
            ("perplexity", m.basePerplexity, m.perplexity),
            ("token accuracy", m.baseTokenAccuracy, m.tokenAccuracy),
        )
    for label, base, tuned in rows:
        if base is not None and tuned is not None:
            print(f"{label:<16}{base:>9.4f}  {tuned:>11.4f}", file=stream)
    if metrics is not None and metrics.tasks:
        print("\n" + "\n".join(table.lines(metrics.tasks)), file=stream)
    print(f"\nadapter: {summary.adapterUri}  ({summary.steps} steps)", file=stream)
