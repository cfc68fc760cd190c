"""`kubetune run MANIFEST [--processes N]`: train a FineTuneJob on this machine with no cluster."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kubetune_api.conditions import Reason
from kubetune_api.contract import EXIT_PREEMPTED

from . import manifest_input


def run(args: argparse.Namespace) -> int:
    job = manifest_input.one_job("run", args.manifest, "run")
    if isinstance(job, int):
        return job
    processes = args.processes or job.spec.workers.world_size
    if not os.environ.get("CUDA_VISIBLE_DEVICES") and job.spec.workers.gpusPerWorker == 0:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from kubetune_trainer.local import log_path, print_report, written_metrics
    from kubetune_trainer.local import run as run_local

    progress = args.progress if args.progress != "auto" else ("bar" if sys.stderr.isatty() else "json")
    work = Path(args.work_dir or Path(".kubetune") / str(job.metadata.get("name", "local")))
    print(
        f"kubetune run: {job.metadata.get('name')} with {processes} local process(es), ZeRO-{job.spec.deepspeed.zeroStage} "
        f"(log: {log_path(work)})",
        file=sys.stderr,
    )
    summary = run_local(job, processes, progress, work.resolve())
    print_report(summary, metrics=written_metrics(work.resolve()), log=log_path(work.resolve()))
    if summary.status == "Succeeded":
        return 0
    # stopped by a SIGTERM after checkpointing: the same command again resumes (75, EX_TEMPFAIL, as the pod exits)
    return EXIT_PREEMPTED if summary.reason == Reason.PREEMPTED else 1
